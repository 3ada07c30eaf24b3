#!/usr/bin/python3
"""Convert a dataset in the MMGCN / InvRL layout into a painvrl dataset directory.

    tools/convert/from_mmgcn.py --source DIR --out OUT [--n-users N] [--n-items N]
                                [--feature NAME=FILE ...] [--text-bow] [--overwrite]

The layout (MMGCN's Dataset.py, InvRL's tiktok/load_data.py), all in DIR:
  train.npy       integer array [N, 2] of (user, item + n_users): item ids are stored offset
                  by the number of users, users first
  val_full.npy,   object arrays, one entry per user: [user, item + n_users, item + n_users, ...]
  test_full.npy   (pickled Python lists; val_full.npy may be absent)
  feat_v, feat_a, feat_t (.npy or .pt, a tensor saved by torch.save): one row per item
                  -> modalities "visual", "acoustic", "textual"; or name the files with
                  --feature NAME=FILE (relative to DIR), e.g. MMGCN's Movielens
                  --feature visual=FeatureVideo_normal.npy
  user_item_dict.npy, adj_dict.npy: ignored (derived from train.npy)
TikTok's feat_t is not a feature matrix but a [2, nnz] (item, word) index list from which
MMGCN/InvRL learn word embeddings; --text-bow turns it into a dense bag-of-words count matrix
(items x words), otherwise it is refused.

Writes OUT/train.tsv, val.tsv, test.tsv (header `user<TAB>item`, pairs in input order, offset
removed), one float32 NPY per modality, and dataset.toml (format "tsv", n_users, n_items).
n_users defaults to the largest user id + 1 (pass --n-users when trailing users have no
pairs: the offset must be exact); n_items to the feature row count. Refuses, naming the file: a
missing file, an item id below the user offset or past the items, a feature matrix whose row
count is not n_items, non-finite features.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dsutil import (Staging, check_features, dataset_toml, fail, load_array,  # noqa: E402
                    parse_converter_args, parse_feature_args, run_main, save_npy,
                    write_pairs_tsv, write_text)

DEFAULT_FEATURES = [("visual", "feat_v"), ("acoustic", "feat_a"), ("textual", "feat_t")]
BOW_LIMIT = 1 << 28  # elements of a dense bag-of-words matrix (1 GiB as float32)


def load_train(path):
    arr = load_array(path, allow_pickle=True)
    if arr.dtype == object:  # some copies hold a pickled list of pairs
        try:
            arr = np.array(arr.tolist(), dtype=np.int64)
        except (ValueError, TypeError):
            fail(f"{path}: expected an integer array [N, 2] of (user, item + n_users)")
    if not np.issubdtype(arr.dtype, np.integer) or arr.ndim != 2 or arr.shape[1] != 2:
        fail(f"{path}: expected an integer array [N, 2] of (user, item + n_users), got "
             f"{arr.dtype} {tuple(arr.shape)}")
    if len(arr) == 0:
        fail(f"{path}: no training pairs")
    return arr.astype(np.int64)


def load_full(path):
    """val_full/test_full -> int64 [n, 2] (user, stored item) and the entry index of each pair."""
    arr = load_array(path, allow_pickle=True)
    if arr.dtype != object and not (np.issubdtype(arr.dtype, np.integer) and arr.ndim == 2):
        fail(f"{path}: expected an object array of [user, item + n_users, ...] lists")
    users, items, where = [], [], []
    for k, entry in enumerate(arr):
        try:
            ids = [int(x) for x in np.asarray(entry).reshape(-1)]
            exact = all(float(x) == int(x) for x in np.asarray(entry).reshape(-1))
        except (ValueError, TypeError):
            fail(f"{path}: entry {k}: expected integers [user, item + n_users, ...]")
        if not ids or not exact:
            fail(f"{path}: entry {k}: expected a non-empty list of integers [user, item, ...]")
        users += [ids[0]] * (len(ids) - 1)
        items += ids[1:]
        where += [k] * (len(ids) - 1)
    pairs = np.array([users, items], dtype=np.int64).T.reshape(-1, 2)
    return pairs, np.array(where, dtype=np.int64)


def bag_of_words(path, idx, n_items):
    if idx.shape[1] == 0:
        fail(f"{path}: empty (item, word) index list")
    if idx.min() < 0:
        fail(f"{path}: negative index in the (item, word) list")
    n_items = n_items or int(idx[0].max()) + 1
    if idx[0].max() >= n_items:
        fail(f"{path}: item {int(idx[0].max())} in the (item, word) list, but {n_items} items")
    n_words = int(idx[1].max()) + 1
    if n_items * n_words > BOW_LIMIT:
        fail(f"{path}: a dense bag of words would be {n_items} x {n_words}, too large")
    bow = np.zeros((n_items, n_words), dtype=np.float32)
    np.add.at(bow, (idx[0], idx[1]), 1.0)
    return bow


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", required=True, help="folder with train.npy, val_full.npy, ...")
    ap.add_argument("--out", required=True, help="dataset directory to create")
    ap.add_argument("--n-users", type=int, help="the user count (= the item id offset)")
    ap.add_argument("--n-items", type=int, help="the item count (default: feature rows)")
    ap.add_argument("--feature", action="append", metavar="NAME=FILE",
                    help="a modality file (.npy/.pt) relative to --source; replaces feat_v/a/t")
    ap.add_argument("--text-bow", action="store_true",
                    help="turn a [2, nnz] (item, word) index list into bag-of-words counts")
    a, src = parse_converter_args(ap, "OUT's base name")

    train_p = os.path.join(src, "train.npy")
    test_p = os.path.join(src, "test_full.npy")
    val_p = os.path.join(src, "val_full.npy")
    for p in (train_p, test_p):
        if not os.path.isfile(p):
            fail(f"{p}: missing")
    splits = {"train": (train_p, load_train(train_p), None)}
    if os.path.isfile(val_p):
        splits["valid"] = (val_p, *load_full(val_p))
    else:
        print(f"note: {val_p} absent; the dataset has no validation split", file=sys.stderr)
    splits["test"] = (test_p, *load_full(test_p))

    # Features: explicit --feature, else whichever of feat_v / feat_a / feat_t exist.
    specs = parse_feature_args(a.feature)
    if not specs:
        for name, stem in DEFAULT_FEATURES:
            found = [f for f in (stem + ".npy", stem + ".pt")
                     if os.path.isfile(os.path.join(src, f))]
            if len(found) > 1:
                fail(f"{src}: both {found[0]} and {found[1]}; name one with --feature")
            if found:
                specs.append((name, found[0]))
    feats = []
    for name, f in specs:
        p = os.path.join(src, f)
        feats.append((name, p, load_array(p)))

    n_items = a.n_items
    bow = []
    for name, p, arr in feats:
        if np.issubdtype(arr.dtype, np.integer) and arr.ndim == 2 and arr.shape[0] == 2 \
                and arr.shape[1] != 2 and n_items != 2:
            if not a.text_bow:
                fail(f"{p}: a [2, {arr.shape[1]}] integer (item, word) index list, not a feature "
                     "matrix (TikTok's feat_t); pass --text-bow for bag-of-words counts, or "
                     "leave it out with --feature for the other modalities")
            bow.append(name)
            continue
        if n_items is None and arr.ndim == 2:
            n_items = arr.shape[0]
    stored_max = max(int(s[1][:, 1].max()) for s in splits.values() if len(s[1]))
    n_users = a.n_users
    if n_users is None:
        n_users = 1 + max(int(s[1][:, 0].max()) for s in splits.values() if len(s[1]))
        print(f"n_users = {n_users} (largest user id + 1; pass --n-users if that is not the "
              "item id offset)", file=sys.stderr)
    if n_items is None:
        n_items = stored_max - n_users + 1
        if n_items < 1:
            fail(f"{train_p}: item ids are not offset by n_users = {n_users}")

    # Remove the offset and check every id.
    out_pairs = {}
    for split, (p, pairs, where) in splits.items():
        def at(r):
            return f"row {r}" if where is None else f"entry {where[r]}"
        users, stored = pairs[:, 0], pairs[:, 1]
        bad = np.nonzero(users < 0)[0]
        if len(bad):
            fail(f"{p}: {at(bad[0])}: negative user id {users[bad[0]]}")
        bad = np.nonzero(users >= n_users)[0]
        if len(bad):
            fail(f"{p}: {at(bad[0])}: user id {users[bad[0]]} >= n_users = {n_users}")
        bad = np.nonzero(stored < n_users)[0]
        if len(bad):
            fail(f"{p}: {at(bad[0])}: item id {stored[bad[0]]} is below the user offset "
                 f"{n_users} (items are stored as item + n_users; check --n-users)")
        bad = np.nonzero(stored - n_users >= n_items)[0]
        if len(bad):
            fail(f"{p}: {at(bad[0])}: item id {stored[bad[0]]} - {n_users} = "
                 f"{stored[bad[0]] - n_users} is past the {n_items} items (check --n-users and "
                 "the feature row counts)")
        out_pairs[split] = np.stack([users, stored - n_users], axis=1)

    mats = []
    for name, p, arr in feats:
        if name in bow:
            mats.append((name, bag_of_words(p, arr.astype(np.int64), n_items)))
        else:
            mats.append((name, check_features(p, arr, n_items)))

    files = {"train": "train.tsv", "valid": "val.tsv", "test": "test.tsv"}
    name = a.name or os.path.basename(os.path.abspath(a.out))
    with Staging(a.out, a.overwrite) as tmp:
        for split, pairs in out_pairs.items():
            write_pairs_tsv(os.path.join(tmp, files[split]), pairs)
        for mname, m in mats:
            save_npy(os.path.join(tmp, f"{mname}.npy"), m)
        write_text(os.path.join(tmp, "dataset.toml"), dataset_toml(
            comments=[f"Converted from the MMGCN/InvRL layout in {src}",
                      f"by tools/convert/from_mmgcn.py (item ids were stored + {n_users})."]
            + [f"{m}.npy: bag-of-words counts from the (item, word) index list" for m in bow],
            name=name, fmt="tsv", splits={k: files[k] for k in out_pairs}, n_users=n_users,
            n_items=n_items, modalities=[(m, f"{m}.npy") for m, _ in mats]))
    counts = ", ".join(f"{k} {len(v)}" for k, v in out_pairs.items())
    mods = ", ".join(f"{m} {x.shape[1]}" for m, x in mats) or "none"
    print(f"wrote {a.out}: {n_users} users, {n_items} items; pairs {counts}; modalities {mods}",
          file=sys.stderr)


if __name__ == "__main__":
    run_main(main)
