#!/usr/bin/python3
"""tools/convert/from_mmgcn.py and from_mmrec.py on small generated inputs in the MMGCN/InvRL
layout (train.npy with item ids offset by the user count, val_full/test_full object arrays,
feat_v .npy, feat_a .pt, TikTok-style feat_t [2, nnz] index list) and the MMRec layout (.inter,
image_feat.npy, text_feat.npy): the pairs round-trip exactly, features are float32 copies,
`painvrl inspect` accepts the result, and bad input exits non-zero naming the file.
"""
import os
import sys
import tempfile
import unittest

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (PAINVRL_BIN, inspect, read_pairs_tsv, read_toml, run, run_py, tool,  # noqa: E402
                    write)

MMGCN = tool("convert", "from_mmgcn.py")
MMREC = tool("convert", "from_mmrec.py")
N_USERS, N_ITEMS = 7, 9


def make_interactions(seed=0):
    """train pairs [n, 2] and per-user held-out lists, 0-based, no offset."""
    rng = np.random.default_rng(seed)
    train, val, test = [], [], []
    for u in range(N_USERS):
        items = rng.permutation(N_ITEMS)[:6]
        train += [(u, int(i)) for i in items[:3]]
        val.append([u] + [int(i) for i in items[3:3 + u % 2]])  # some users: nothing
        test.append([u] + [int(i) for i in items[4:6]])
    train.append(train[0])  # a duplicate pair: kept, painvrl drops it with a count
    return np.array(train, dtype=np.int64), val, test


def object_array(lists):
    a = np.empty(len(lists), dtype=object)
    for k, x in enumerate(lists):
        a[k] = list(x)
    return a


def write_mmgcn(d, train, val, test, offset=N_USERS, pt=False, t_index=False):
    """The MMGCN layout in d; feat_a is a torch .pt file when pt (importing torch costs ~2 s)."""
    os.makedirs(d, exist_ok=True)
    stored = train.copy()
    stored[:, 1] += offset
    np.save(os.path.join(d, "train.npy"), stored)
    np.save(os.path.join(d, "val_full.npy"),
            object_array([[x[0]] + [i + offset for i in x[1:]] for x in val]), allow_pickle=True)
    np.save(os.path.join(d, "test_full.npy"),
            object_array([[x[0]] + [i + offset for i in x[1:]] for x in test]), allow_pickle=True)
    np.save(os.path.join(d, "user_item_dict.npy"), np.array({0: [1]}), allow_pickle=True)
    rng = np.random.default_rng(1)
    v = rng.normal(size=(N_ITEMS, 5))  # float64: converted to float32
    a = torch.tensor(rng.normal(size=(N_ITEMS, 3)), dtype=torch.float32)
    np.save(os.path.join(d, "feat_v.npy"), v)
    if pt:
        torch.save(a, os.path.join(d, "feat_a.pt"))
    else:
        np.save(os.path.join(d, "feat_a.npy"), a.numpy())
    if t_index:
        words = torch.tensor([[0, 0, 1, 2, 2, 2, 8], [3, 1, 0, 4, 4, 2, 1]], dtype=torch.long)
        torch.save(words, os.path.join(d, "feat_t.pt"))
    return v, a.numpy()


class FromMmgcn(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="painvrl_convert_")
        self.src = os.path.join(self.tmp.name, "tiktok")
        self.out = os.path.join(self.tmp.name, "out")
        self.train, self.val, self.test = make_interactions()

    def tearDown(self):
        self.tmp.cleanup()

    def convert(self, *args):
        return run_py(MMGCN, "--source", self.src, "--out", self.out, *args)

    def test_round_trip(self):
        v, a = write_mmgcn(self.src, self.train, self.val, self.test, pt=True, t_index=True)
        st, log = self.convert("--n-users", str(N_USERS), "--text-bow")
        self.assertEqual(st, 0, log)
        self.assertEqual(read_pairs_tsv(os.path.join(self.out, "train.tsv")),
                         [tuple(p) for p in self.train.tolist()])
        for name, lists in (("val.tsv", self.val), ("test.tsv", self.test)):
            want = [(x[0], i) for x in lists for i in x[1:]]
            self.assertEqual(read_pairs_tsv(os.path.join(self.out, name)), want, name)
        t = read_toml(os.path.join(self.out, "dataset.toml"))
        self.assertEqual((t["format"], t["n_users"], t["n_items"]), ("tsv", N_USERS, N_ITEMS))
        self.assertEqual((t["train"], t["valid"], t["test"]), ("train.tsv", "val.tsv", "test.tsv"))
        self.assertEqual([(m["name"], m["file"]) for m in t["modality"]],
                         [("visual", "visual.npy"), ("acoustic", "acoustic.npy"),
                          ("textual", "textual.npy")])
        got_v = np.load(os.path.join(self.out, "visual.npy"))
        got_a = np.load(os.path.join(self.out, "acoustic.npy"))  # from the .pt tensor
        self.assertEqual((got_v.dtype, got_a.dtype), (np.float32, np.float32))
        np.testing.assert_array_equal(got_v, v.astype(np.float32))
        np.testing.assert_array_equal(got_a, a)
        # feat_t.pt, a [2, nnz] (item, word) list -> bag-of-words counts, items x words.
        bow = np.load(os.path.join(self.out, "textual.npy"))
        self.assertEqual((bow.shape, bow.dtype), ((N_ITEMS, 5), np.float32))
        self.assertEqual(bow[2, 4], 2.0)
        self.assertEqual(bow[0].tolist(), [0, 1, 0, 1, 0])
        self.assertEqual(bow[8].tolist(), [0, 1, 0, 0, 0])
        self.assertEqual(bow[5].sum(), 0)
        out = inspect(self, self.out)
        self.assertIn(f"users        {N_USERS}", out)
        self.assertIn(f"items        {N_ITEMS}", out)
        self.assertIn("1 duplicate train", out)
        self.assertIn("textual", out)

    def test_index_list_refused_without_text_bow(self):
        write_mmgcn(self.src, self.train, self.val, self.test, t_index=True)
        st, log = self.convert()
        self.assertNotEqual(st, 0)
        self.assertIn("feat_t.pt: a [2, 7] integer (item, word) index list", log)
        self.assertIn("--text-bow", log)
        self.assertFalse(os.path.exists(self.out))

    def test_n_users_inferred_and_no_validation_file(self):
        write_mmgcn(self.src, self.train, self.val, self.test)
        os.unlink(os.path.join(self.src, "val_full.npy"))
        st, log = self.convert()
        self.assertEqual(st, 0, log)
        self.assertIn(f"n_users = {N_USERS}", log)
        self.assertIn("val_full.npy absent", log)
        t = read_toml(os.path.join(self.out, "dataset.toml"))
        self.assertEqual((t["n_users"], t["n_items"]), (N_USERS, N_ITEMS))
        self.assertNotIn("valid", t)
        self.assertEqual(read_pairs_tsv(os.path.join(self.out, "test.tsv")),
                         [(x[0], i) for x in self.test for i in x[1:]])
        inspect(self, self.out)

    def test_missing_file(self):
        write_mmgcn(self.src, self.train, self.val, self.test)
        os.unlink(os.path.join(self.src, "test_full.npy"))
        st, log = self.convert()
        self.assertNotEqual(st, 0)
        self.assertIn("test_full.npy: missing", log)
        self.assertFalse(os.path.exists(self.out))

    def test_item_below_the_user_offset(self):
        write_mmgcn(self.src, self.train, self.val, self.test, offset=N_USERS - 2)
        st, log = self.convert("--n-users", str(N_USERS))
        self.assertNotEqual(st, 0)
        self.assertIn("train.npy: row", log)
        self.assertIn("below the user offset 7", log)
        self.assertFalse(os.path.exists(self.out))

    def test_held_out_item_below_the_user_offset(self):
        test = [list(x) for x in self.test]
        test[3].append(-N_USERS)  # stored as 0
        write_mmgcn(self.src, self.train, self.val, test)
        st, log = self.convert("--n-users", str(N_USERS))
        self.assertNotEqual(st, 0)
        self.assertIn("test_full.npy: entry 3", log)
        self.assertIn("below the user offset", log)

    def test_wrong_feature_row_count(self):
        write_mmgcn(self.src, self.train, self.val, self.test)
        np.save(os.path.join(self.src, "feat_a.npy"), np.zeros((N_ITEMS + 1, 3)))
        st, log = self.convert("--n-users", str(N_USERS))
        self.assertNotEqual(st, 0)
        self.assertIn("feat_a.npy: 10 feature rows, expected one per item (9 items)", log)

    def test_item_past_the_features(self):
        train = self.train.copy()
        train[4, 1] = N_ITEMS  # one past the feature rows
        write_mmgcn(self.src, train, self.val, self.test)
        st, log = self.convert("--n-users", str(N_USERS))
        self.assertNotEqual(st, 0)
        self.assertIn("train.npy: row 4", log)
        self.assertIn("past the 9 items", log)

    def test_non_finite_feature_and_bad_train_shape(self):
        write_mmgcn(self.src, self.train, self.val, self.test)
        v = np.ones((N_ITEMS, 2))
        v[3, 1] = np.nan
        np.save(os.path.join(self.src, "feat_v.npy"), v)
        st, log = self.convert()
        self.assertNotEqual(st, 0)
        self.assertIn("feat_v.npy: non-finite value at row 3, column 1", log)
        np.save(os.path.join(self.src, "train.npy"), np.zeros((4, 3), dtype=np.int64))
        st, log = self.convert()
        self.assertNotEqual(st, 0)
        self.assertIn("train.npy: expected an integer array [N, 2]", log)


class FromMmrec(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="painvrl_convert_")
        self.src = os.path.join(self.tmp.name, "baby")
        self.out = os.path.join(self.tmp.name, "out")
        os.makedirs(self.src)
        rng = np.random.default_rng(2)
        self.rows = []
        for u in range(N_USERS):
            for k, i in enumerate(rng.permutation(N_ITEMS)[:5]):
                self.rows.append((u, int(i), [0, 0, 0, 1, 2][k]))
        rng.shuffle(self.rows)
        self.image = rng.normal(size=(N_ITEMS, 6)).astype(np.float32)
        self.text = rng.normal(size=(N_ITEMS, 4))
        np.save(os.path.join(self.src, "image_feat.npy"), self.image)
        np.save(os.path.join(self.src, "text_feat.npy"), self.text)
        self.write_inter(self.rows)

    def tearDown(self):
        self.tmp.cleanup()

    def write_inter(self, rows, header="userID\titemID\trating\ttimestamp\tx_label"):
        write(os.path.join(self.src, "baby.inter"), header + "\n" + "".join(
            f"{u}\t{i}\t5.0\t{1500000000 + k}\t{x}\n" for k, (u, i, x) in enumerate(rows)))

    def convert(self, *args):
        return run_py(MMREC, "--source", self.src, "--out", self.out, *args)

    def test_round_trip(self):
        st, log = self.convert()
        self.assertEqual(st, 0, log)
        for label, name in enumerate(["train.tsv", "val.tsv", "test.tsv"]):
            want = [(u, i) for u, i, x in self.rows if x == label]
            self.assertEqual(read_pairs_tsv(os.path.join(self.out, name)), want, name)
        t = read_toml(os.path.join(self.out, "dataset.toml"))
        self.assertEqual((t["name"], t["format"], t["n_users"], t["n_items"]),
                         ("baby", "tsv", N_USERS, N_ITEMS))
        self.assertEqual([m["name"] for m in t["modality"]], ["visual", "text"])
        np.testing.assert_array_equal(np.load(os.path.join(self.out, "visual.npy")), self.image)
        text = np.load(os.path.join(self.out, "text.npy"))
        self.assertEqual(text.dtype, np.float32)
        np.testing.assert_array_equal(text, self.text.astype(np.float32))
        out = inspect(self, self.out)
        self.assertIn(f"pairs        train {3 * N_USERS}  valid {N_USERS}  test {N_USERS}", out)

    def test_id_maps_travel_and_name_the_recommendations(self):
        write(os.path.join(self.src, "u_id_mapping.csv"),
              "user_id\tuserID\n" + "".join(f"U{u:03d}x\t{u}\n" for u in range(N_USERS)))
        write(os.path.join(self.src, "i_id_mapping.csv"),
              "asin\titemID\n" + "".join(f"{i}_Item {i}\t{i}\n" for i in range(N_ITEMS)))
        st, log = self.convert()
        self.assertEqual(st, 0, log)
        t = read_toml(os.path.join(self.out, "dataset.toml"))
        self.assertEqual((t["user_ids"], t["item_ids"]), ("u_id_mapping.csv", "i_id_mapping.csv"))
        run_dir = os.path.join(self.tmp.name, "run")
        st, log = run([PAINVRL_BIN, "train", "--method", "ultragcn", "--data", self.out, "--out",
                       run_dir, "--set", "epochs=1", "--set", "dim=4", "--set", "negatives=2"])
        self.assertEqual(st, 0, log)
        st, out = run([PAINVRL_BIN, "recommend", run_dir, "--user", "3", "--k", "2"])
        self.assertEqual(st, 0, out)
        lines = [line for line in out.splitlines() if line and not line.startswith("warning")]
        self.assertEqual(lines[0], "user\trank\titem\tscore\tuser_id\titem_id")
        for line in lines[1:]:
            u, _, i, _, uid, iid = line.split("\t")
            self.assertEqual((uid, iid), (f"U{int(u):03d}x", f"{i}_Item {i}"))
        st, out = run([PAINVRL_BIN, "export", run_dir])
        self.assertEqual(st, 0, out)
        with open(os.path.join(run_dir, "export", "item_ids.tsv")) as f:
            self.assertEqual(f.read().splitlines()[:2], ["row\titem_id", "0\t0_Item 0"])
        # A map that names an id twice, or past the count, is refused naming the line.
        write(os.path.join(self.out, "u_id_mapping.csv"), "h\tx\na\t1\nb\t1\n")
        st, out = run([PAINVRL_BIN, "inspect", self.out])
        self.assertEqual(st, 1, out)
        self.assertIn("u_id_mapping.csv:3: user id 1 is mapped twice", out)

    def test_feature_option_and_pt_file(self):
        torch.save(torch.ones(N_ITEMS, 2), os.path.join(self.src, "v.pt"))
        st, log = self.convert("--feature", "vision=v.pt", "--name", "x")
        self.assertEqual(st, 0, log)
        t = read_toml(os.path.join(self.out, "dataset.toml"))
        self.assertEqual([m["file"] for m in t["modality"]], ["vision.npy"])
        inspect(self, self.out)

    def test_bad_x_label(self):
        rows = list(self.rows)
        rows[5] = (rows[5][0], rows[5][1], 3)
        self.write_inter(rows)
        st, log = self.convert()
        self.assertNotEqual(st, 0)
        self.assertIn("baby.inter: data row 6: x_label 3", log)
        self.assertFalse(os.path.exists(self.out))

    def test_wrong_feature_row_count(self):
        np.save(os.path.join(self.src, "text_feat.npy"), np.zeros((N_ITEMS - 1, 4)))
        st, log = self.convert()
        self.assertNotEqual(st, 0)
        self.assertIn("text_feat.npy: 8 feature rows, expected one per item (9 items)", log)

    def test_item_past_the_features(self):
        rows = list(self.rows)
        rows[2] = (rows[2][0], N_ITEMS + 3, 0)
        self.write_inter(rows)
        st, log = self.convert()
        self.assertNotEqual(st, 0)
        self.assertIn("baby.inter: data row 3: itemID 12", log)

    def test_malformed_line_and_header(self):
        with open(os.path.join(self.src, "baby.inter"), "a") as fh:
            fh.write("1\tx\t5\t0\t0\n")
        st, log = self.convert()
        self.assertNotEqual(st, 0)
        self.assertIn(f"baby.inter:{len(self.rows) + 2}:", log)
        self.write_inter(self.rows, header="user\titem\tx_label")
        st, log = self.convert()
        self.assertNotEqual(st, 0)
        self.assertIn("baby.inter:1: header lacks column(s) userID, itemID", log)

    def test_missing_inter(self):
        os.unlink(os.path.join(self.src, "baby.inter"))
        st, log = self.convert()
        self.assertNotEqual(st, 0)
        self.assertIn("no *.inter files", log)
        st, log = self.convert("--inter", "baby.inter")
        self.assertNotEqual(st, 0)
        self.assertIn("baby.inter: missing", log)


if __name__ == "__main__":
    unittest.main(verbosity=2)
