#!/usr/bin/python3
"""Make a painvrl dataset from MovieLens-100K with the 19 genre flags as the item features.

    tools/convert/ml100k_genres.py --source ../shared/data/ml100k --out runs/ml100k-genres

Reads the MMRec split (ml100k.inter, referenced by absolute path, never copied: the data is
licensed), maps MMRec item ids to MovieLens movie ids through i_id_mapping.csv (whose `asin`
column starts with the 0-based movie index), and writes OUT/dataset.toml and OUT/genre.npy
(items x 19, float32, 0/1 flags; painvrl L2-normalises each row). Writes into a temporary
directory and renames it, so a failed run leaves nothing behind.
"""
import argparse
import csv
import os
import shutil
import sys
import tempfile

import numpy as np

GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
          "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
          "Romance", "Sci-Fi", "Thriller", "War", "Western"]


def fail(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


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

    flags = {}  # movie index (0-based) -> 19 flags
    with open(os.path.join(src, "items.csv"), newline="", encoding="utf-8") as fh:
        rows = csv.DictReader(fh)
        missing = [g for g in GENRES + ["movie id"] if g not in (rows.fieldnames or [])]
        if missing:
            fail(f"{src}/items.csv: header lacks columns {missing}")
        for line, row in enumerate(rows, start=2):
            try:
                flags[int(row["movie id"]) - 1] = [float(int(row[g])) for g in GENRES]
            except ValueError:
                fail(f"{src}/items.csv:{line}: expected integer movie id and 0/1 genre flags")
    item_to_movie = {}
    with open(os.path.join(src, "i_id_mapping.csv"), encoding="utf-8") as fh:
        header = fh.readline().rstrip("\r\n").split("\t")
        if header != ["asin", "itemID"]:
            fail(f"{src}/i_id_mapping.csv: expected header asin<TAB>itemID, got {header}")
        for line, text in enumerate(fh, start=2):
            parts = text.rstrip("\r\n").split("\t")
            try:
                item_to_movie[int(parts[1])] = int(parts[0].split("_", 1)[0])
            except (ValueError, IndexError):
                fail(f"{src}/i_id_mapping.csv:{line}: expected `<index>_<title><TAB><itemID>`")
    n_items = max(item_to_movie) + 1
    feats = np.zeros((n_items, len(GENRES)), dtype=np.float32)
    for item, movie in item_to_movie.items():
        if movie not in flags:
            fail(f"i_id_mapping.csv: item {item} maps to movie index {movie}, not in items.csv")
        feats[item] = flags[movie]

    parent = os.path.dirname(os.path.abspath(a.out)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".ml100k-genres.", dir=parent)
    try:
        np.save(os.path.join(tmp, "genre.npy"), feats)
        with open(os.path.join(tmp, "dataset.toml"), "w") as fh:
            fh.write("# MovieLens-100K (MMRec split) with genre flags; tools/convert/ml100k_genres.py\n"
                     f'name = "ml100k-genres"\nformat = "inter"\nfile = "{inter}"\n'
                     f"n_items = {n_items}\nnormalize = true\n"
                     '[[modality]]\nname = "genre"\nfile = "genre.npy"\n')
        os.rename(tmp, a.out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"wrote {a.out}: {n_items} items x {len(GENRES)} genre flags", file=sys.stderr)


if __name__ == "__main__":
    main()
