#!/usr/bin/python3
"""Make a painvrl dataset from MovieLens-100K with the 19 genre flags as the item features.

    tools/convert/ml100k_genres.py --source ../shared/data/ml100k --out runs/ml100k-genres

Reads the MMRec split (ml100k.inter, referenced by absolute path, never copied: the data is
licensed), maps MMRec item ids to MovieLens movie ids through i_id_mapping.csv (whose `asin`
column starts with the 0-based movie index), and writes OUT/dataset.toml and OUT/genre.npy
(items x 19, float32, 0/1 flags; painvrl L2-normalises each row). Writes into a temporary
directory and renames it, so a failed run leaves nothing behind.

The readers here (read_items_csv, read_item_mapping, genre_matrix) are also used by
tools/features/build_movielens.py, which adds text embeddings of the titles and plot summaries.
"""
import argparse
import csv
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dsutil import Staging, dataset_toml, fail, run_main, save_npy, write_text  # noqa: E402

GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
          "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
          "Romance", "Sci-Fi", "Thriller", "War", "Western"]


def read_items_csv(path, text_columns=()):
    """items.csv -> {movie index (0-based): {"flags": [19 floats], column: text, ...}}."""
    items = {}
    try:
        fh = open(path, newline="", encoding="utf-8")
    except OSError as e:
        fail(f"{path}: cannot read ({e.strerror})")
    with fh:
        rows = csv.DictReader(fh)
        missing = [g for g in GENRES + ["movie id"] + list(text_columns)
                   if g not in (rows.fieldnames or [])]
        if missing:
            fail(f"{path}: header lacks columns {missing}")
        for row in rows:
            line = rows.line_num  # the row's last line (quoted fields may span lines)
            try:
                movie = int(row["movie id"]) - 1
                flags = [float(int(row[g])) for g in GENRES]
            except (ValueError, TypeError):
                fail(f"{path}:{line}: expected integer movie id and 0/1 genre flags")
            if movie < 0 or any(f not in (0.0, 1.0) for f in flags):
                fail(f"{path}:{line}: movie id must be >= 1 and genre flags 0 or 1")
            if movie in items:
                fail(f"{path}:{line}: movie id {movie + 1} appears twice")
            entry = {"flags": flags}
            for c in text_columns:
                entry[c] = (row[c] or "").strip()
            items[movie] = entry
    return items


def read_item_mapping(path):
    """i_id_mapping.csv (`asin<TAB>itemID`, asin = `<movie index>_<title>`) -> {item: movie}."""
    item_to_movie = {}
    try:
        fh = open(path, encoding="utf-8")
    except OSError as e:
        fail(f"{path}: cannot read ({e.strerror})")
    with fh:
        header = fh.readline().rstrip("\r\n").split("\t")
        if header != ["asin", "itemID"]:
            fail(f"{path}:1: expected header asin<TAB>itemID, got {header}")
        for line, text in enumerate(fh, start=2):
            parts = text.rstrip("\r\n").split("\t")
            try:
                item, movie = int(parts[1]), int(parts[0].split("_", 1)[0])
            except (ValueError, IndexError):
                fail(f"{path}:{line}: expected `<index>_<title><TAB><itemID>`")
            if item < 0 or item in item_to_movie:
                fail(f"{path}:{line}: itemID {item} negative or repeated")
            item_to_movie[item] = movie
    if not item_to_movie:
        fail(f"{path}: no items")
    return item_to_movie


def genre_matrix(item_to_movie, items, mapping_path="i_id_mapping.csv"):
    """float32 [n_items, 19] of 0/1 flags; every item id 0..max must be mapped."""
    n_items = max(item_to_movie) + 1
    if len(item_to_movie) != n_items:
        gap = min(set(range(n_items)) - set(item_to_movie))
        fail(f"{mapping_path}: itemIDs are not contiguous (no row for item {gap})")
    feats = np.zeros((n_items, len(GENRES)), dtype=np.float32)
    for item, movie in item_to_movie.items():
        if movie not in items:
            fail(f"{mapping_path}: item {item} maps to movie index {movie}, not in items.csv")
        feats[item] = items[movie]["flags"]
    return feats


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", required=True, help="the ml100k folder (ml100k.inter, items.csv)")
    ap.add_argument("--out", required=True, help="dataset directory to create")
    a = ap.parse_args()
    src = os.path.abspath(a.source)
    inter = os.path.join(src, "ml100k.inter")
    for f in (inter, os.path.join(src, "items.csv"), os.path.join(src, "i_id_mapping.csv")):
        if not os.path.isfile(f):
            fail(f"{f}: missing")
    if os.path.exists(a.out):
        fail(f"--out {a.out}: exists; choose a new directory")

    items = read_items_csv(os.path.join(src, "items.csv"))
    mapping = os.path.join(src, "i_id_mapping.csv")
    feats = genre_matrix(read_item_mapping(mapping), items, mapping)
    n_items = feats.shape[0]
    with Staging(a.out) as tmp:
        save_npy(os.path.join(tmp, "genre.npy"), feats)
        write_text(os.path.join(tmp, "dataset.toml"), dataset_toml(
            comments=["MovieLens-100K (MMRec split) with genre flags; "
                      "tools/convert/ml100k_genres.py"],
            name="ml100k-genres", fmt="inter", splits={"file": inter}, n_users=None,
            n_items=n_items, modalities=[("genre", "genre.npy")]))
    print(f"wrote {a.out}: {n_items} items x {len(GENRES)} genre flags", file=sys.stderr)


if __name__ == "__main__":
    run_main(main)
