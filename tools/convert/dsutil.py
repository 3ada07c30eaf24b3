"""Shared pieces of the dataset writers in tools/convert/ and tools/features/.

An input error is raised as InputError("FILE[:LINE]: what is wrong") and reported by run_main()
as one `error: ...` line with exit status 1. A dataset directory is written into a hidden
staging directory beside the target and renamed into place at the end, so a failed or
interrupted run leaves nothing that looks like a dataset; every NPY inside is itself written to a
temporary name and renamed.
"""
import json
import os
import shutil
import sys
import tempfile

import numpy as np


class InputError(Exception):
    pass


def fail(msg):
    raise InputError(msg)


def run_main(fn):
    """Runs fn(); an InputError becomes `error: MSG` on stderr and exit status 1."""
    try:
        fn()
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def save_npy(path, arr):
    """Writes arr (C order, little-endian) to path via a temporary file and a rename."""
    arr = np.ascontiguousarray(arr)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def check_features(path, arr, n_items=None):
    """A modality matrix as painvrl reads it: 2-D, finite, one row per item; returns float32."""
    arr = np.asarray(arr)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating)
                                   or np.issubdtype(arr.dtype, np.integer)
                                   or arr.dtype == np.bool_):
        fail(f"{path}: features must be numeric, got dtype {arr.dtype}")
    if arr.ndim != 2:
        fail(f"{path}: features must be 2-D [items, dims], got shape {tuple(arr.shape)}")
    if n_items is not None and arr.shape[0] != n_items:
        fail(f"{path}: {arr.shape[0]} feature rows, expected one per item ({n_items} items)")
    if arr.shape[1] == 0:
        fail(f"{path}: features have no columns")
    out = arr.astype(np.float32)
    bad = ~np.isfinite(out)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        fail(f"{path}: non-finite value at row {r}, column {c} "
             f"({int(bad.sum())} non-finite values as float32)")
    return out


def load_array(path, allow_pickle=False):
    """An array from .npy (numpy) or .pt (a tensor saved with torch.save) -> numpy array."""
    if not os.path.isfile(path):
        fail(f"{path}: missing")
    if path.endswith(".pt") or path.endswith(".pth"):
        try:
            import torch
        except ImportError:
            fail(f"{path}: reading .pt files needs PyTorch (Debian's python3-torch)")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many kinds for a bad file
            fail(f"{path}: not a readable torch tensor file ({type(e).__name__}: {e})")
        if not isinstance(obj, torch.Tensor):
            fail(f"{path}: holds a {type(obj).__name__}, expected a tensor")
        if obj.is_sparse:
            obj = obj.to_dense()
        return obj.detach().cpu().numpy()
    try:
        return np.load(path, allow_pickle=allow_pickle)
    except ValueError as e:
        if "pickle" in str(e):
            fail(f"{path}: an object (pickled) array; expected a plain numeric array")
        fail(f"{path}: not a readable .npy file ({e})")
    except (OSError, EOFError) as e:
        fail(f"{path}: not a readable .npy file ({e})")


def parse_feature_args(specs):
    """--feature NAME=PATH (repeatable) -> [(name, path)]."""
    out = []
    for s in specs or []:
        name, sep, path = s.partition("=")
        if not sep or not name or not path:
            fail(f"--feature {s!r}: expected NAME=PATH")
        if any(name == n for n, _ in out):
            fail(f"--feature {s!r}: modality {name!r} given twice")
        out.append((name, path))
    return out


def parse_converter_args(ap, default_name):
    """Adds the options every converter shares (--name, --overwrite), parses, and checks --source
    (a directory) and --n-users / --n-items (at least 1). Returns (args, absolute source)."""
    ap.add_argument("--name", help=f"dataset name (default: {default_name})")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    a = ap.parse_args()
    src = os.path.abspath(a.source)
    if not os.path.isdir(src):
        fail(f"--source {a.source}: not a directory")
    for flag in ("n_users", "n_items"):
        v = getattr(a, flag)
        if v is not None and v < 1:
            fail(f"--{flag.replace('_', '-')} must be >= 1")
    return a, src


def toml_str(s):
    """A TOML basic string (JSON's escapes are valid TOML escapes)."""
    return json.dumps(str(s))


def dataset_toml(*, name, fmt, splits, n_users, n_items, modalities, comments=(), normalize=True,
                 id_maps=None):
    """Text of a dataset.toml. splits: {"train": file, "valid": file, "test": file} for lightgcn /
    tsv, or {"file": file} for inter; modalities: [(name, file), ...]; id_maps: {"user_ids":
    file, "item_ids": file} (the dataset's own ids, a header and `original<TAB>id` lines)."""
    lines = [f"# {c}" if c else "#" for c in comments]
    lines += [f"name = {toml_str(name)}", f"format = {toml_str(fmt)}"]
    for k, v in splits.items():
        lines.append(f"{k} = {toml_str(v)}")
    if n_users is not None:
        lines.append(f"n_users = {int(n_users)}")
    if n_items is not None:
        lines.append(f"n_items = {int(n_items)}")
    lines.append(f"normalize = {'true' if normalize else 'false'}")
    for k, v in (id_maps or {}).items():
        lines.append(f"{k} = {toml_str(v)}")
    for mname, mfile in modalities:
        lines += ["", "[[modality]]", f"name = {toml_str(mname)}", f"file = {toml_str(mfile)}"]
    return "\n".join(lines) + "\n"


def write_text(path, text):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_pairs_tsv(path, pairs):
    """pairs: int array [n, 2] -> `user<TAB>item` header and one pair per line."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="ascii", newline="\n") as fh:
        fh.write("user\titem\n")
        if len(pairs):
            np.savetxt(fh, pairs, fmt="%d", delimiter="\t")
    os.replace(tmp, path)


class Staging:
    """with Staging(out, overwrite) as tmp: write files into tmp; on success tmp becomes out."""

    def __init__(self, out, overwrite=False):
        self.out = os.path.abspath(out)
        self.overwrite = overwrite
        if os.path.lexists(self.out):
            if not overwrite:
                fail(f"--out {out}: exists; choose a new directory or pass --overwrite")
            if not os.path.isdir(self.out) or os.path.islink(self.out):
                fail(f"--out {out}: exists and is not a directory")
        self.tmp = None

    def __enter__(self):
        parent = os.path.dirname(self.out)
        os.makedirs(parent, exist_ok=True)
        self.tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(self.out)}.", dir=parent)
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        os.chmod(self.tmp, 0o755)
        old = None
        if os.path.exists(self.out):
            old = f"{self.tmp}.old"
            os.rename(self.out, old)
        os.rename(self.tmp, self.out)
        if old:
            shutil.rmtree(old, ignore_errors=True)
        return False


def read_lightgcn(path, what="pairs"):
    """LightGCN text (`user item item ...` per line) -> int64 array [n, 2], in file order."""
    users, items = [], []
    try:
        fh = open(path, encoding="ascii", newline="")
    except OSError as e:
        fail(f"{path}: cannot read ({e.strerror})")
    with fh:
        for line, text in enumerate(fh, start=1):
            parts = text.split()
            if not parts:
                continue
            try:
                ids = [int(p) for p in parts]
            except ValueError:
                fail(f"{path}:{line}: expected integer ids `user item item ...`")
            if min(ids) < 0:
                fail(f"{path}:{line}: negative id")
            users.extend([ids[0]] * (len(ids) - 1))
            items.extend(ids[1:])
    return np.array([users, items], dtype=np.int64).T.reshape(-1, 2)


def read_inter(path, need=("userID", "itemID", "x_label")):
    """An MMRec .inter file -> (header list, int64 array [n, len(need)]) of the needed columns."""
    try:
        fh = open(path, encoding="utf-8", newline="")
    except OSError as e:
        fail(f"{path}: cannot read ({e.strerror})")
    rows = []
    with fh:
        header = fh.readline().rstrip("\r\n").split("\t")
        missing = [c for c in need if c not in header]
        if missing:
            fail(f"{path}:1: header lacks column(s) {', '.join(missing)} "
                 f"(tab separated, got {header})")
        cols = [header.index(c) for c in need]
        for line, text in enumerate(fh, start=2):
            text = text.rstrip("\r\n")
            if not text:
                continue
            parts = text.split("\t")
            if len(parts) != len(header):
                fail(f"{path}:{line}: {len(parts)} fields, the header has {len(header)}")
            try:
                vals = [int(parts[c]) for c in cols]
            except ValueError:
                fail(f"{path}:{line}: expected integers in columns {', '.join(need)}")
            if min(vals) < 0:
                fail(f"{path}:{line}: negative id")
            rows.append(vals)
    return header, np.array(rows, dtype=np.int64).reshape(-1, len(need))
