#!/usr/bin/python3
"""The Python package (python/painvrl) against the CLI on the same data and seed: identical model
tables and metrics, from a directory and from arrays; bad arrays and bad configs raise
ValueError with the CLI's message and write nothing; Ctrl-C stops a run with a checkpoint and
resume() ends it identical to an uninterrupted run; a diverged run raises DivergedError.

ctest puts the build's python/ directory first on sys.path (PAINVRL_PYTHONPATH)."""
import os
import signal
import sys
import tempfile
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import PAINVRL_BIN, SOURCE_DIR, run  # noqa: E402

sys.path.insert(0, os.environ.get("PAINVRL_PYTHONPATH")
                or os.path.join(SOURCE_DIR, "build", "python"))
import numpy as np  # noqa: E402

import painvrl  # noqa: E402

TINY = {"dim": 8, "negatives": 4, "batch_size": 64, "epochs": 4, "eval_every": 1,
        "pretrain_epochs": 2, "outer_iterations": 1, "envs": 2, "him_epochs": 1,
        "him_rounds": 1, "mask_epochs": 2, "mask_batch": 64, "attention_hidden": 4}


def cli_args(config):
    args = []
    for k, v in config.items():
        args += ["--set", f"{k}={v}"]
    return args


def read(path):
    with open(path, "rb") as f:
        return f.read()


def metrics_without_time(path):
    import json
    rows = []
    with open(path) as f:
        for line in f:
            j = json.loads(line)
            j.pop("train_seconds", None)
            rows.append(j)
    return rows


class Package(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="painvrl_package_")
        cls.data = os.path.join(cls.tmp.name, "synth")
        st, out = run([PAINVRL_BIN, "synth", "--out", cls.data, "--seed", "3", "--users", "150",
                       "--items", "100"])
        assert st == 0, out

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def cli_run(self, name, method, config):
        out = os.path.join(self.tmp.name, name)
        st, log = run([PAINVRL_BIN, "train", "--method", method, "--data", self.data, "--out",
                       out, "--overwrite"] + cli_args(config))
        self.assertEqual(st, 0, log)
        return out

    def test_python_and_cli_runs_are_identical(self):
        for method in ("painvrl", "ultragcn-mm"):
            cli = self.cli_run(f"cli-{method}", method, TINY)
            data = painvrl.Dataset.load(self.data)
            r = painvrl.train(data, model=method, config=TINY)
            self.assertEqual(read(os.path.join(cli, "model.npy")),
                             read(os.path.join(r.path, "model.npy")), method)
            self.assertEqual(metrics_without_time(os.path.join(cli, "metrics.jsonl")),
                             metrics_without_time(os.path.join(r.path, "metrics.jsonl")), method)
            self.assertEqual(r.summary["test_at_best"], painvrl.Run.open(cli).summary[
                "test_at_best"])
            # evaluate() is the engine's evaluation: the run's own test metrics.
            got = r.evaluate(data.test_pairs, ks=(10, 20))
            for k, v in r.summary["test_at_best"].items():
                if k != "users":
                    self.assertAlmostEqual(got[k], v, places=9, msg=f"{method} {k}")
            # recommend() is the CLI's recommend.
            st, text = run([PAINVRL_BIN, "recommend", cli, "--user", "3", "--user", "7",
                            "--k", "5"])
            self.assertEqual(st, 0, text)
            rows = [line.split("\t") for line in text.splitlines()
                    if line and line[0].isdigit()]
            items, scores = r.recommend([3, 7], k=5)
            self.assertEqual(items.shape, (2, 5))
            self.assertEqual(items.dtype, np.int32)
            self.assertEqual([int(x[2]) for x in rows], items.reshape(-1).tolist())
            self.assertEqual([float(x[3]) for x in rows],
                             [float(f"{s:.9g}") for s in scores.reshape(-1)])
            # Factor tables whose products are the scores.
            u, it = r.user_factors, r.item_factors
            np.testing.assert_allclose((u[3] @ it.T)[items[0]], scores[0], rtol=1e-5)
            if method == "painvrl":
                self.assertEqual(r.mask.shape, (48,))

    def test_arrays_train_like_the_directory(self):
        data = painvrl.Dataset.load(self.data)
        raw = np.load(os.path.join(self.data, "features.npy"))
        arrays = painvrl.Dataset.from_arrays(
            data.train_pairs, features=raw, val_pairs=data.valid_pairs,
            test_pairs=data.test_pairs, item_blocks=[raw.shape[1]], n_users=data.n_users,
            n_items=data.n_items)
        self.assertEqual((arrays.n_users, arrays.n_items), (data.n_users, data.n_items))
        np.testing.assert_array_equal(arrays.features, data.features)
        cli = self.cli_run("cli-arrays", "ultragcn-mm", TINY)
        r = painvrl.train(arrays, model="ultragcn-mm", config=TINY)
        self.assertEqual(read(os.path.join(cli, "model.npy")),
                         read(os.path.join(r.path, "model.npy")))

    def test_bad_input_raises_the_cli_message_and_writes_nothing(self):
        data = painvrl.Dataset.load(self.data)
        out = os.path.join(self.tmp.name, "never")
        cases = [
            (lambda: painvrl.train(data, config={"negative": 3}, out=out),
             "unknown config key `negative`; did you mean `negatives`?"),
            (lambda: painvrl.train(data, config={"lr": float("inf")}, out=out), "lr"),
            (lambda: painvrl.train(data, model="nosuch", out=out), "method"),
            (lambda: painvrl.Dataset.from_arrays(np.zeros((3, 2), np.float32),
                                                 test_pairs=[[0, 1]]), "integer ids"),
            (lambda: painvrl.Dataset.from_arrays(np.zeros((3, 3), np.int64),
                                                 test_pairs=[[0, 1]]), "shape (n, 2)"),
            (lambda: painvrl.Dataset.from_arrays([[0, 1], [1, -2]], test_pairs=[[0, 1]]),
             "negative id"),
            (lambda: painvrl.Dataset.from_arrays([[0, 1], [1, 9]], test_pairs=[[0, 2]],
                                                 n_items=5), "item id 9 is out of range"),
            (lambda: painvrl.Dataset.from_arrays(
                [[0, 1], [1, 0]], test_pairs=[[0, 0]],
                features=np.array([[1.0, np.nan], [0.0, 1.0]], np.float32)), "is NaN"),
        ]
        for call, message in cases:
            with self.assertRaises(ValueError) as e:
                call()
            self.assertIn(message, str(e.exception))
            self.assertFalse(os.path.exists(out))
        with self.assertRaises(FileNotFoundError):
            painvrl.Dataset.load(os.path.join(self.tmp.name, "absent"))
        r = painvrl.train(data, model="ultragcn", config=TINY)
        with self.assertRaises(ValueError) as e:
            r.recommend([10 ** 6], k=3)
        self.assertIn("unknown user 1000000", str(e.exception))
        with self.assertRaises(ValueError):
            r.recommend([1.5], k=3)
        with self.assertRaises(ValueError):
            r.recommend([0], k=0)

    def test_interrupt_leaves_a_checkpoint_and_resume_ends_identical(self):
        config = dict(TINY, epochs=400, patience=0, eval_every=50)
        want = painvrl.train(self.data, model="ultragcn-mm", config=config)
        out = os.path.join(self.tmp.name, "interrupted")
        seen = []

        def callback(line):  # the first epoch line: the run is inside the training loop
            if "epoch" in line and not seen:
                seen.append(line)
                threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT)).start()
        with self.assertRaises(KeyboardInterrupt):
            painvrl.train(self.data, model="ultragcn-mm", config=config, out=out,
                          callback=callback)
        r = painvrl.Run.open(out)
        self.assertFalse(r.complete)
        r.resume()
        self.assertTrue(r.complete)
        self.assertEqual(read(os.path.join(want.path, "model.npy")),
                         read(os.path.join(out, "model.npy")))
        # Python's own SIGINT handling is back after the run.
        self.assertIs(signal.getsignal(signal.SIGINT), signal.default_int_handler)

    def test_diverged_run_raises(self):
        with self.assertRaises(painvrl.DivergedError):
            painvrl.train(self.data, model="ultragcn", config=dict(TINY, lr=1e38, epochs=1))

    def test_synth_is_the_clis(self):
        out = os.path.join(self.tmp.name, "py-synth")
        d = painvrl.synth(out, seed=3, users=150, items=100)
        self.assertEqual((d.n_users, d.n_items), (150, 100))
        for name in ("train.txt", "test.txt", "features.npy", "dataset.toml"):
            self.assertEqual(read(os.path.join(out, name)), read(os.path.join(self.data, name)))
        with self.assertRaises(ValueError):
            painvrl.synth(out)  # it exists: refused as the CLI refuses it

    def test_keys_and_metrics(self):
        keys = painvrl.config_keys()
        self.assertIn("mask_lambda", keys)
        r = painvrl.train(self.data, model="ultragcn", config=TINY)
        m = r.metrics
        self.assertEqual(len(m), TINY["epochs"])


if __name__ == "__main__":
    unittest.main()
