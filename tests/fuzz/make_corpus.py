#!/usr/bin/python3
# Writes the seed corpora of the fuzz targets into tests/fuzz/corpus/<target>/: small valid inputs
# and near-valid ones (one field wrong). The files are kept in the repository; run this again only
# to change them. Needs numpy (Debian's python3-numpy, hence /usr/bin/python3) for the .npy
# seeds.
import io
import os
import shutil
import struct

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")
CONFIGS = os.path.join(HERE, "..", "..", "configs")


def put(target, name, data):
    os.makedirs(os.path.join(CORPUS, target), exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(CORPUS, target, name), "wb") as f:
        f.write(data)


def npy(array, version=None):
    buffer = io.BytesIO()
    if version is None:
        np.save(buffer, array)
    else:
        np.lib.format.write_array(buffer, array, version=version)
    return buffer.getvalue()


def raw_npy(header, data=b"", major=1):
    header = header.encode()
    header += b" " * ((-(10 + len(header) + 1)) % 64) + b"\n"
    length = struct.pack("<H", len(header)) if major == 1 else struct.pack("<I", len(header))
    return b"\x93NUMPY" + bytes([major, 0]) + length + header + data


def npy_seeds():
    t = "npy"
    features = np.array([[1, 0], [0, 1], [1, 1], [0.5, 2]], dtype=np.float32)
    put(t, "float32-2d.npy", npy(features))
    put(t, "float64-2d.npy", npy(features.astype(np.float64)))
    put(t, "int64-1d.npy", npy(np.arange(5, dtype=np.int64)))
    put(t, "int32-2d.npy", npy(np.arange(6, dtype=np.int32).reshape(2, 3)))
    put(t, "scalar.npy", npy(np.float32(3.5)))
    put(t, "empty-rows.npy", npy(np.zeros((0, 3), dtype=np.float32)))
    put(t, "version2.npy", npy(features, version=(2, 0)))
    put(t, "version3.npy", npy(features, version=(3, 0)))
    put(t, "nan.npy", npy(np.array([[1, np.nan], [0, 1]], dtype=np.float32)))
    put(t, "inf.npy", npy(np.array([[1, 2], [np.inf, 1]], dtype=np.float64)))
    put(t, "float64-overflow.npy", npy(np.array([[1e300, 1]], dtype=np.float64)))
    put(t, "fortran.npy", npy(np.asfortranarray(features.astype(np.float64))))
    put(t, "big-endian.npy", npy(features.astype(">f4")))
    put(t, "big-endian-f8.npy", npy(features.astype(">f8")))
    put(t, "big-endian-i8.npy", npy(np.arange(4, dtype=">i8")))
    put(t, "int16.npy", npy(np.arange(4, dtype=np.int16)))
    put(t, "huge-shape.npy",
        raw_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000, 2), }",
                b"\0" * 8))
    put(t, "truncated-data.npy", npy(features)[:-5])
    put(t, "truncated-header.npy", npy(features)[:40])
    put(t, "trailing-bytes.npy", npy(features) + b"xx")
    put(t, "double-quotes.npy",
        raw_npy('{"descr": "<f4", "fortran_order": False, "shape": (2,)}', b"\0" * 8))
    put(t, "negative-shape.npy",
        raw_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }", b""))


def interaction_seeds():
    t = "interactions"
    put(t, "lightgcn.txt", "0 1 2\n1 3\n2\n\n3 0 0\n4\t5  6 \n")
    put(t, "lightgcn-crlf.txt", "0 1 2\r\n1 3\r\n\r\n2 4")
    put(t, "lightgcn-bad.txt", "0 1 -2\n1 99999999999\n2 x\n")
    put(t, "empty.txt", "")
    put(t, "users-only.txt", "0\n1\n2\n")
    put(t, "pairs.tsv", "user\titem\n0\t5\n\n2\t1\n7\t0\n")
    put(t, "pairs-crlf.tsv", "\xef\xbb\xbfuser\titem\r\n0\t5\r\n2\t1")
    put(t, "pairs-bad.tsv", "user\titem\n0\t5\t9\n-1\t2\n")
    put(t, "x.inter", "userID\titemID\trating\tx_label\n0\t5\t4\t0\n1\t6\t3\t1\n2\t7\t5\t2\n")
    put(t, "x-crlf.inter", "itemID\tx_label\tuserID\r\n5\t0\t0\r\n6\t2\t1")
    put(t, "x-bad.inter", "userID\titemID\tx_label\n0\t5\t3\n1\t6\n")


def config_seeds():
    t = "config"
    for name in sorted(os.listdir(CONFIGS)):
        if name.endswith(".toml"):
            shutil.copy(os.path.join(CONFIGS, name), os.path.join(CORPUS, t, name))
    examples = os.path.join(CONFIGS, "examples")
    for name in sorted(os.listdir(examples)):
        if not name.endswith(".toml"):
            continue  # sweeps/ holds sweep specs, not configs
        shutil.copy(os.path.join(examples, name), os.path.join(CORPUS, t, "example-" + name))
    put(t, "small.toml", 'method = "ultragcn-mm"\ndim = 32\neval_ks = [5, 10]\nattention = false\n')
    put(t, "crlf.toml", 'method = "painvrl"\r\nkappa = 0.5\r\nselect_metric = "recall@20"')
    put(t, "overrides.txt", "dim=32\nkappa=0.5\neval_ks=5,10,50\nii_similarity=ultragcn\n"
        "eval_test_each=false\nseed=77\n")
    put(t, "unknown-key.toml", "batchsize = 3\n")
    put(t, "mistyped.toml", 'dim = "big"\nlr = [1]\n')
    # Regression inputs (host/pipeline/config.cpp, found in review): an integer key out of its type's range
    # was wrapped; an integer over 2^53 for a float key dereferenced an empty std::optional (which
    # this target's libstdc++ assertions turn into a crash).
    put(t, "out-of-range.toml", "dim = 4294967360\neval_ks = [10, 4294967316]\n")
    put(t, "nonfinite.toml", "lr = inf\nw1 = nan\nadam_eps = -inf\nmask_center = 2.0\n")
    put(t, "nonfinite-set.txt", "lr=inf\nkappa=nan\nw2=-1\n")
    put(t, "crash-integer-over-2p53.toml", "lr = 9007199254740993\n")
    put(t, "syntax.toml", "dim = = 3\n[table\n")


def dataset_seeds():
    t = "dataset_toml"
    put(t, "lightgcn.toml",
        'name = "tiny"\nformat = "lightgcn"\ntrain = "train.txt"\nvalid = "val.txt"\n'
        'test = "test.txt"\nn_users = 3\nn_items = 4\n[[modality]]\nname = "f"\nfile = "f.npy"\n'
        '[[modality]]\nname = "g"\nfile = "g.npy"\n')
    put(t, "tsv.toml", 'format = "tsv"\ntrain = "train.tsv"\ntest = "test.tsv"\nnormalize = false\n'
        '[[modality]]\nfile = "g.npy"\n')
    put(t, "inter.toml", 'format = "inter"\nfile = "x.inter"\n')
    put(t, "crlf.toml", 'format = "lightgcn"\r\ntrain = "train.txt"\r\ntest = "test.txt"')
    put(t, "missing-key.toml", 'format = "lightgcn"\ntrain = "train.txt"\n')
    put(t, "unknown-key.toml", 'format = "tsv"\ntrain = "train.tsv"\ntest = "test.tsv"\n'
        'n_user = 5\n')
    put(t, "out-of-range.toml", 'format = "lightgcn"\ntrain = "train.txt"\ntest = "test.txt"\n'
        'n_items = 2\n')
    put(t, "wrong-file.toml", 'format = "lightgcn"\ntrain = "f.npy"\ntest = "missing.txt"\n')


if __name__ == "__main__":
    if os.path.isdir(CORPUS):
        shutil.rmtree(CORPUS)
    os.makedirs(os.path.join(CORPUS, "config"))
    npy_seeds()
    interaction_seeds()
    config_seeds()
    dataset_seeds()
