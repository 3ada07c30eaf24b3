#!/usr/bin/python3
"""Convert a dataset in the MMRec toolkit's layout into a painvrl dataset directory.

    tools/convert/from_mmrec.py --source DIR --out OUT [--inter FILE] [--n-users N]
                                [--n-items N] [--feature NAME=FILE ...] [--overwrite]

The layout (MMRec: src/utils/dataset.py, src/common/abstract_recommender.py), in DIR:
  NAME.inter      tab separated, a header naming at least userID, itemID, x_label (other
                  columns such as rating and timestamp are ignored); 0-based ids, no offset;
                  x_label 0 = train, 1 = validation, 2 = test
  image_feat.npy  float [n_items, d] -> modality "visual"   (row i = itemID i)
  text_feat.npy   float [n_items, d] -> modality "text"
  or other files named with --feature NAME=FILE (relative to DIR; .npy or .pt).
painvrl reads a .inter file itself; this writes the explicit layout so that the splits, counts
and features are checked once and the directory is self-contained: OUT/train.tsv, val.tsv,
test.tsv (header `user<TAB>item`, pairs in file order), one float32 NPY per modality and
dataset.toml (format "tsv"). n_items defaults to the feature row count, n_users to the largest
userID + 1. Refuses, naming the file: a missing file, a malformed line, an x_label other than
0/1/2, an itemID past the items, a feature matrix whose row count is not n_items.
"""
import argparse
import glob
import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dsutil import (Staging, check_features, dataset_toml, fail, load_array,  # noqa: E402
                    parse_converter_args, parse_feature_args, read_inter, run_main, save_npy,
                    write_pairs_tsv, write_text)

DEFAULT_FEATURES = [("visual", "image_feat.npy"), ("text", "text_feat.npy")]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", required=True, help="folder with NAME.inter and *_feat.npy")
    ap.add_argument("--out", required=True, help="dataset directory to create")
    ap.add_argument("--inter", help="the .inter file (default: the only *.inter in --source)")
    ap.add_argument("--n-users", type=int, help="the user count (default: largest userID + 1)")
    ap.add_argument("--n-items", type=int, help="the item count (default: feature rows)")
    ap.add_argument("--feature", action="append", metavar="NAME=FILE",
                    help="a modality file relative to --source; replaces image/text_feat.npy")
    a, src = parse_converter_args(ap, "the .inter file's stem")
    if a.inter:
        inter = os.path.join(src, a.inter)
        if not os.path.isfile(inter):
            fail(f"{inter}: missing")
    else:
        found = sorted(glob.glob(os.path.join(src, "*.inter")))
        if len(found) != 1:
            fail(f"{src}: {'no' if not found else len(found)} *.inter files; "
                 f"{'expected one' if not found else 'name one with --inter'}")
        inter = found[0]

    _, rows = read_inter(inter)
    if len(rows) == 0:
        fail(f"{inter}: no interactions")
    bad = np.nonzero(rows[:, 2] > 2)[0]
    if len(bad):
        fail(f"{inter}: data row {bad[0] + 1}: x_label {rows[bad[0], 2]}; expected 0 (train), "
             "1 (validation) or 2 (test)")
    if not (rows[:, 2] == 0).any():
        fail(f"{inter}: no training rows (x_label 0)")

    specs = parse_feature_args(a.feature) or [
        (n, f) for n, f in DEFAULT_FEATURES if os.path.isfile(os.path.join(src, f))]
    feats = [(n, os.path.join(src, f), load_array(os.path.join(src, f))) for n, f in specs]
    if not feats:
        print(f"note: no features in {src} (image_feat.npy, text_feat.npy)", file=sys.stderr)
    n_items = a.n_items
    if n_items is None:
        n_items = feats[0][2].shape[0] if feats and feats[0][2].ndim == 2 \
            else int(rows[:, 1].max()) + 1
    mats = [(n, check_features(p, arr, n_items)) for n, p, arr in feats]
    bad = np.nonzero(rows[:, 1] >= n_items)[0]
    if len(bad):
        fail(f"{inter}: data row {bad[0] + 1}: itemID {rows[bad[0], 1]} is past the {n_items} "
             "items (the feature row count or --n-items)")
    n_users = a.n_users or int(rows[:, 0].max()) + 1
    bad = np.nonzero(rows[:, 0] >= n_users)[0]
    if len(bad):
        fail(f"{inter}: data row {bad[0] + 1}: userID {rows[bad[0], 0]} >= --n-users {n_users}")

    files = {0: ("train", "train.tsv"), 1: ("valid", "val.tsv"), 2: ("test", "test.tsv")}
    name = a.name or os.path.splitext(os.path.basename(inter))[0]
    with Staging(a.out, a.overwrite) as tmp:
        used = {}
        for label, (key, f) in files.items():
            pairs = rows[rows[:, 2] == label][:, :2]
            if len(pairs) or label != 1:
                write_pairs_tsv(os.path.join(tmp, f), pairs)
                used[key] = f
        for mname, m in mats:
            save_npy(os.path.join(tmp, f"{mname}.npy"), m)
        # MMRec's maps from its 0-based ids back to the original ones go along, so that
        # `painvrl recommend` and `export` can name users and items as the source does.
        id_maps = {}
        for key, f in (("user_ids", "u_id_mapping.csv"), ("item_ids", "i_id_mapping.csv")):
            if os.path.isfile(os.path.join(src, f)):
                shutil.copyfile(os.path.join(src, f), os.path.join(tmp, f))
                id_maps[key] = f
        write_text(os.path.join(tmp, "dataset.toml"), dataset_toml(
            comments=[f"Converted from the MMRec layout ({inter})",
                      "by tools/convert/from_mmrec.py."],
            name=name, fmt="tsv", splits=used, n_users=n_users, n_items=n_items,
            modalities=[(m, f"{m}.npy") for m, _ in mats], id_maps=id_maps))
    counts = ", ".join(f"{k} {int((rows[:, 2] == lab).sum())}" for lab, (k, _) in files.items())
    mods = ", ".join(f"{m} {x.shape[1]}" for m, x in mats) or "none"
    print(f"wrote {a.out}: {n_users} users, {n_items} items; pairs {counts}; modalities {mods}",
          file=sys.stderr)


if __name__ == "__main__":
    run_main(main)
