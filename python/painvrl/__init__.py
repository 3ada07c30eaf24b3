"""painvrl from Python: train, evaluate and recommend with the same C++ engine as the command line.

    import painvrl
    data = painvrl.Dataset.load("runs/synth")              # or Dataset.from_arrays(pairs, ...)
    run = painvrl.train(data, model="painvrl", config={"epochs": 50})
    run.evaluate(data.test_pairs)                          # {"recall@20": ..., ...}
    items, scores = run.recommend([0, 1, 2], k=10)         # (3, 10) int32, float32

A run is a run directory, exactly what `painvrl train` writes (config.toml, metrics.jsonl,
summary.json, model.npy, mask.npy, log.txt); `Run.open(path)` reads one the CLI wrote. Errors
carry the CLI's messages: bad input raises ValueError, a missing file OSError, Ctrl-C
KeyboardInterrupt after the run saved a checkpoint (continue with `run.resume()`), a diverged run
DivergedError.
"""
import json
import os
import shutil
import tempfile
import weakref

# OpenMP threads that spin at barriers slow everything beside them; the CLI sets the same policy
# before libgomp starts (it reads the variable once, when the extension is loaded).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

from . import _painvrl  # noqa: E402

__all__ = ["Dataset", "Run", "train", "synth", "config_keys", "DivergedError"]


class DivergedError(RuntimeError):
    """The training became non-finite; the run directory keeps its last good checkpoint."""


_painvrl._set_diverged_error(DivergedError)


def synth(out, seed=1, users=1000, items=800):
    """Writes the built-in planted dataset (`painvrl synth --out OUT`: 1,000 users, 800 items,
    48 feature columns of which 16 invariant, 16 spurious, 16 noise) and returns it loaded."""
    _painvrl.synth(os.fspath(out), int(seed), int(users), int(items))
    return Dataset.load(out)


def config_keys():
    """{key: description} of every config key (the CLI's `painvrl keys`)."""
    return dict(_painvrl.config_keys())


class _TempDir:
    """A temporary directory removed when its owner is collected (or at exit)."""

    def __init__(self, prefix):
        self.name = tempfile.mkdtemp(prefix=prefix)
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.name, True)


# ---- datasets ----------------------------------------------------------------------------------

def _pairs(name, a, allow_none=True):
    if a is None:
        if allow_none:
            return None
        raise ValueError(f"{name}: required")
    a = np.asarray(a)
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"{name}: expected an array of shape (n, 2) of (user, item) ids, got "
                         f"shape {a.shape}")
    if a.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected integer ids, got dtype {a.dtype}")
    if a.size and a.min() < 0:
        row = int(np.argwhere(a < 0)[0][0])
        raise ValueError(f"{name}: row {row}: negative id {a[row].tolist()}")
    if a.size and a.max() > np.iinfo(np.int32).max:
        raise ValueError(f"{name}: ids must be below 2^31")
    return a.astype(np.int64, copy=False)


class Dataset:
    """A dataset as the engine sees it: train/valid/test (user, item) pairs, int32 (n, 2); the
    item features, float32 (n_items, d) after the engine's per-modality row normalisation, or
    None; n_users, n_items; `path`, the directory it was read from."""

    def __init__(self, path, info, keep=None):
        self.path = os.path.abspath(path)
        self.name = info["name"]
        self.n_users = int(info["n_users"])
        self.n_items = int(info["n_items"])
        self.train_pairs = info["train"]
        self.valid_pairs = info["valid"]
        self.test_pairs = info["test"]
        self.features = info["features"]
        self.modalities = list(info["modalities"])  # [(name, first column, width)]
        self.user_ids = list(info["user_ids"]) or None
        self.item_ids = list(info["item_ids"]) or None
        self._keep = keep  # the temporary directory of from_arrays, alive as long as this

    def __repr__(self):
        d = 0 if self.features is None else self.features.shape[1]
        return (f"Dataset({self.name!r}: {self.n_users} users, {self.n_items} items, "
                f"{len(self.train_pairs)} train / {len(self.valid_pairs)} valid / "
                f"{len(self.test_pairs)} test pairs, d = {d})")

    @classmethod
    def load(cls, path):
        """Reads a dataset directory in any layout the CLI reads (dataset.toml, LightGCN text,
        pairs TSV, MMRec .inter), with the CLI's checks and messages."""
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path}: dataset directory not found")
        return cls(path, _painvrl.load_dataset(os.fspath(path)))

    @classmethod
    def from_arrays(cls, train_pairs, features=None, val_pairs=None, test_pairs=None,
                    item_blocks=None, n_users=None, n_items=None, name="arrays"):
        """A dataset from numpy arrays: pairs (n, 2) of integer (user, item) ids; features
        (n_items, d) float32 or float64 (row-normalised per block by the engine, as files are);
        item_blocks: the widths of the feature blocks (modalities), summing to d (default: one
        block). The arrays are written to a temporary directory the Dataset keeps and read back
        by the engine's own loader, so they are checked as files are."""
        train = _pairs("train_pairs", train_pairs, allow_none=False)
        valid = _pairs("val_pairs", val_pairs)
        test = _pairs("test_pairs", test_pairs)
        if test is None:
            raise ValueError("test_pairs: required (the engine evaluates on them)")
        every = [p for p in (train, valid, test) if p is not None and len(p)]
        n_users = n_users or int(max(p[:, 0].max() for p in every)) + 1
        feats = None
        if features is not None:
            feats = np.asarray(features)
            if feats.ndim != 2:
                raise ValueError(f"features: expected shape (n_items, d), got {feats.shape}")
            if feats.dtype not in (np.float32, np.float64):
                raise ValueError(f"features: expected float32 or float64, got dtype {feats.dtype}")
            n_items = n_items or feats.shape[0]
        n_items = n_items or int(max(p[:, 1].max() for p in every)) + 1
        keep = _TempDir("painvrl_arrays_")
        d = keep.name

        def write_pairs(fname, pairs):
            with open(os.path.join(d, fname), "w") as f:
                f.write("user\titem\n")
                f.write("".join(f"{u}\t{i}\n" for u, i in pairs.tolist()))

        lines = [f'name = "{name}"', 'format = "tsv"', 'train = "train.tsv"', 'test = "test.tsv"',
                 f"n_users = {n_users}", f"n_items = {n_items}"]
        write_pairs("train.tsv", train)
        write_pairs("test.tsv", test)
        if valid is not None:
            write_pairs("val.tsv", valid)
            lines.append('valid = "val.tsv"')
        if feats is not None:
            blocks = list(item_blocks) if item_blocks is not None else [feats.shape[1]]
            if sum(blocks) != feats.shape[1] or min(blocks) < 1:
                raise ValueError(f"item_blocks {blocks}: expected positive widths summing to "
                                 f"d = {feats.shape[1]}")
            start = 0
            for k, width in enumerate(blocks):
                np.save(os.path.join(d, f"block{k}.npy"),
                        np.ascontiguousarray(feats[:, start:start + width]))
                lines += ["", "[[modality]]", f'name = "block{k}"', f'file = "block{k}.npy"']
                start += width
        with open(os.path.join(d, "dataset.toml"), "w") as f:
            f.write("\n".join(lines) + "\n")
        return cls(d, _painvrl.load_dataset(d), keep=keep)


# ---- runs --------------------------------------------------------------------------------------

def _toml_value(key, v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(key, x) for x in v) + "]"
    raise ValueError(f"config key `{key}`: cannot write {v!r} ({type(v).__name__}) as a value")


def _config_toml(model, config):
    items = dict(config or {})
    if model is not None:
        items["method"] = model
    return "".join(f"{k} = {_toml_value(k, v)}\n" for k, v in items.items())


def _progress(callback):
    """The engine's log lines to `callback(line)`; without one, a tqdm bar when tqdm is
    installed (fed by the whole-run share of the progress lines), else nothing."""
    if callback is not None:
        return callback, None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None, None
    import re
    bar = tqdm(total=100, unit="%", desc="painvrl")
    pattern = re.compile(r"\[run (\d+)%")

    def on_line(line):
        m = pattern.search(line)
        if m:
            bar.update(max(0, int(m.group(1)) - bar.n))
    return on_line, bar


class Run:
    """A run directory: what `painvrl train` wrote. Attributes read it lazily."""

    def __init__(self, path, keep=None):
        self.path = os.path.abspath(path)
        self._keep = keep  # the temporary directory of train(out=None)
        self._model = None
        self._factors = None

    def __repr__(self):
        state = "complete" if self.complete else "not finished"
        return f"Run({self.path!r}, {state})"

    @classmethod
    def open(cls, path):
        """A run directory the CLI (or train) wrote."""
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path}: no such run directory")
        if not os.path.isfile(os.path.join(path, "config.toml")):
            raise ValueError(f"{path}: not a painvrl run directory (no config.toml)")
        return cls(path)

    @property
    def complete(self):
        return os.path.isfile(os.path.join(self.path, "summary.json"))

    @property
    def summary(self):
        with open(os.path.join(self.path, "summary.json")) as f:
            return json.load(f)

    @property
    def config(self):
        import tomllib
        with open(os.path.join(self.path, "config.toml"), "rb") as f:
            return tomllib.load(f)

    @property
    def metrics(self):
        """metrics.jsonl: a list of dicts (one per evaluation), or a pandas DataFrame of the
        flattened fields when pandas is installed."""
        rows = []
        with open(os.path.join(self.path, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        try:
            import pandas as pd
        except ImportError:
            return rows
        return pd.json_normalize(rows)

    @property
    def mask(self):
        """The learned feature mask, float32 (d,), or None (methods without one)."""
        p = os.path.join(self.path, "mask.npy")
        return np.load(p) if os.path.isfile(p) else None

    def _served(self):
        if self._model is None:
            if not self.complete:
                raise ValueError(f"{self.path}: the run has not finished (no summary.json); "
                                 "continue it with run.resume()")
            self._model = _painvrl.Model(self.path)
        return self._model

    def _factor_tables(self):
        if self._factors is None:  # both tables come from one call; built once per Run
            self._factors = self._served().factors()
        return self._factors

    @property
    def user_factors(self):
        """float32 (n_users, W): [Pt_u, Pf_u] (W = D, or 2D for the content models)."""
        return self._factor_tables()[0]

    @property
    def item_factors(self):
        """float32 (n_items, W): [T_i, W (m * f_i) + b]; scores = user_factors @ item_factors.T"""
        return self._factor_tables()[1]

    def recommend(self, users, k=10, exclude_seen=True):
        """Top-k items of each user, best first (ties by item id), never a training item of the
        user when exclude_seen: (items int32 (n, k), scores float32 (n, k)), padded with -1 and
        NaN when a user has fewer candidates."""
        u = np.ascontiguousarray(np.atleast_1d(np.asarray(users)))
        if u.dtype.kind not in "iu":
            raise ValueError(f"users: expected integer ids, got dtype {u.dtype}")
        if u.ndim != 1:
            raise ValueError(f"users: expected a 1-d array of user ids, got shape {u.shape}")
        if u.size and (u.min() < 0 or u.max() > np.iinfo(np.int32).max):
            raise ValueError(f"users: ids must be in [0, 2^31), got {u.min()}..{u.max()}")
        return self._served().recommend(u.astype(np.int32, copy=False), int(k), bool(exclude_seen))

    def evaluate(self, test_pairs, ks=(10, 20)):
        """Full-ranking Precision, Recall and NDCG@K over the users of test_pairs (each user's
        training items excluded), as the engine's evaluation computes them: a dict
        {"precision@10": ..., "recall@10": ..., "ndcg@10": ..., ..., "users": n}."""
        pairs = _pairs("test_pairs", test_pairs, allow_none=False)
        ks = sorted({int(k) for k in ks})
        held = {}
        for u, i in pairs.tolist():
            held.setdefault(u, set()).add(i)
        users = np.array(sorted(held), dtype=np.int32)
        out = {f"{m}@{k}": 0.0 for k in ks for m in ("precision", "recall", "ndcg")}
        if len(users) == 0:
            raise ValueError("test_pairs: no pairs to evaluate")
        items, _ = self.recommend(users, k=max(ks))
        discount = 1.0 / np.log2(np.arange(2, max(ks) + 2))
        for row, u in zip(items, users.tolist()):
            truth = held[u]
            hits = np.array([i in truth for i in row.tolist()], dtype=np.float64)
            for k in ks:
                h = hits[:k]
                out[f"precision@{k}"] += h.sum() / k
                out[f"recall@{k}"] += h.sum() / len(truth)
                ideal = discount[:min(len(truth), k)].sum()
                out[f"ndcg@{k}"] += (h * discount[:k]).sum() / ideal
        n = len(users)
        out = {key: v / n for key, v in out.items()}
        out["users"] = n
        return out

    def resume(self, threads=None, callback=None):
        """Continues a stopped run from its newest checkpoint (`painvrl train --resume`)."""
        on_line, bar = _progress(callback)
        try:
            _painvrl.resume(self.path, -1 if threads is None else int(threads), on_line)
        finally:
            if bar is not None:
                bar.close()
        self._model = self._factors = None
        return self


def train(dataset, model="painvrl", config=None, preset=None, out=None, overwrite=False,
          callback=None):
    """Trains `model` (ultragcn | ultragcn-mm | mostpop | invrl | painvrl) on `dataset` (a
    Dataset or a dataset directory) as `painvrl train` does: defaults, then `preset`, then
    `config` ({key: value}, the keys of `painvrl keys`), checked before anything is written.
    `out`: the run directory to create (None: a temporary one, kept as long as the Run).
    `callback(line)` receives every log line. Returns the Run."""
    path = dataset.path if isinstance(dataset, Dataset) else os.fspath(dataset)
    toml_text = _config_toml(model, config)
    _painvrl.check_config(preset or "", toml_text)  # ValueError before any directory exists
    keep = None
    if out is None:
        keep = _TempDir("painvrl_run_")
        out = os.path.join(keep.name, "run")
    on_line, bar = _progress(callback)
    try:
        _painvrl.train(path, os.fspath(out), preset or "", toml_text, bool(overwrite), on_line)
    finally:
        if bar is not None:
            bar.close()
    return Run(out, keep=keep)
