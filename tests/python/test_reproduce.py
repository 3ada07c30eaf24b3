#!/usr/bin/python3
"""bench/reproduce on a tiny synthetic dataset with a one-epoch schedule: its metric function
against hand-computed values, a whole reproduction (tables with every row, valid PNG figures,
results.json agreeing with every run's own summary.json), and its self-check failing when a
recommendation list no longer matches the run.
"""
import importlib.machinery
import importlib.util
import json
import math
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import PAINVRL_BIN, SOURCE_DIR, run, write  # noqa: E402

SCRIPT = os.path.join(SOURCE_DIR, "bench", "reproduce")


def read_json(path):
    with open(path) as f:
        return json.load(f)


def read_text(path):
    with open(path) as f:
        return f.read()


def load_module():
    loader = importlib.machinery.SourceFileLoader("reproduce", SCRIPT)
    spec = importlib.util.spec_from_loader("reproduce", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


class Metrics(unittest.TestCase):
    def test_hand_computed(self):
        mod = load_module()
        ranked = {0: list(range(100)), 1: list(range(100, 0, -1))}
        held = {0: {2, 50}, 1: {100}}  # user 0: hits at ranks 3 and 51; user 1: rank 1
        m = mod.metrics_at(ranked, held)
        self.assertAlmostEqual(m["precision@10"], (1 / 10 + 1 / 10) / 2)
        self.assertAlmostEqual(m["recall@10"], (1 / 2 + 1) / 2)
        ndcg0 = (1 / math.log2(4)) / (1 + 1 / math.log2(3))
        self.assertAlmostEqual(m["ndcg@10"], (ndcg0 + 1.0) / 2)
        dcg0 = 1 / math.log2(4) + 1 / math.log2(52)
        self.assertAlmostEqual(m["ndcg@60"], (dcg0 / (1 + 1 / math.log2(3)) + 1.0) / 2)
        self.assertAlmostEqual(m["recall@60"], 1.0)


class EndToEnd(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="painvrl_reproduce_")
        cls.data = os.path.join(cls.tmp.name, "data")
        st, out = run([PAINVRL_BIN, "synth", "--out", cls.data, "--seed", "3", "--users", "90",
                       "--items", "70"])
        assert st == 0, out
        cls.work = os.path.join(cls.tmp.name, "work")
        cls.args = [sys.executable, SCRIPT, "--data", cls.data, "--out", cls.work, "--seeds",
                    "1", "2", "--envs", "3", "--jobs", "2", "--build",
                    os.path.dirname(PAINVRL_BIN), "--set", "dim=8", "epochs=2", "eval_every=1",
                    "pretrain_epochs=1", "outer_iterations=1", "him_rounds=1", "him_epochs=1",
                    "mask_epochs=1", "mask_batch=32", "attention_hidden=4",
                    "negatives=4", "threads=3"]
        cls.status, cls.output = run(cls.args, timeout=600)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_tables_figures_and_results(self):
        self.assertEqual(self.status, 0, self.output)
        res = os.path.join(self.work, "results")
        tables = read_text(os.path.join(res, "tables.md"))
        for heading in ("## Table 2", "## Table 3", "## RQ2", "## Figure 4", "## Mask mean"):
            self.assertIn(heading, tables)
        for task in ("IID", "OOD"):
            for label in ("UltraGCN", "UltraGCN+feat", "InvRL", "PaInvRL", "L_ERM", "L_IRM",
                          "L_ERM + L_IRM", "PaInvRL w/o attention", "PaInvRL unit-norm",
                          "PaInvRL unnormalised"):
                self.assertIn(f"| {task} | {label} |", tables)
        for png in ("fig2-recall-at-k.png", "fig3-mask.png", "fig4-environments.png",
                    "w-erm-trace.png"):
            with open(os.path.join(res, png), "rb") as f:
                self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n", png)
        results = read_json(os.path.join(res, "results.json"))["runs"]
        self.assertEqual(len(results), 2 * 9 + 1)  # 9 rows per seed, E = 3 once
        # --set threads=3 reaches every run (the cores split among the jobs would give 1 or 2).
        for key, r in results.items():
            config = read_text(os.path.join(self.work, r["run"], "config.toml"))
            self.assertIn("\nthreads = 3\n", config, key)
        for key, r in results.items():
            summary = read_json(os.path.join(self.work, r["run"], "summary.json"))
            for k in ("precision@10", "recall@10", "ndcg@10", "recall@20", "ndcg@20"):
                self.assertAlmostEqual(r["ood"][k], summary["test_at_best"][k], places=9,
                                       msg=f"{key} {k}")
            for k in range(10, 101, 10):  # the curves of Fig. 2 never fall with K
                if k > 10:
                    self.assertGreaterEqual(r["ood"][f"recall@{k}"],
                                            r["ood"][f"recall@{k - 10}"])
            if r["method"] == "painvrl":
                self.assertEqual(len(r["mask"]), 48)
                # w_ERM is traced for the Pareto objective only.
                pareto = not any(t in r["label"] for t in ("L_ERM", "L_IRM"))
                self.assertEqual(bool(r.get("w_erm")), pareto, key)
        # Unit-norm gradients: the min-norm weight of two unit vectors is exactly 1/2.
        self.assertEqual({round(w, 12) for w in results["PaInvRL unit-norm|1"]["w_erm"]}, {0.5})
        # The default running normalisation lets it move (the first step equals l2's 1/2).
        self.assertGreater(len({round(w, 6) for w in results["PaInvRL|1"]["w_erm"]}), 1)

    def test_self_check_refuses_lists_that_do_not_match_the_run(self):
        self.assertEqual(self.status, 0, self.output)
        lists = os.path.join(self.work, "runs", "PaInvRL-s2", "top100.tsv")
        lines = read_text(lists).splitlines(keepends=True)
        user = lines[1].split("\t")[0]
        # The user's list reversed: the same items, another ranking.
        mine = [l for l in lines[1:] if l.split("\t")[0] == user]
        others = [l for l in lines[1:] if l.split("\t")[0] != user]
        write(lists, lines[0] + "".join(mine[::-1] + others))
        st, out = run(self.args, timeout=600)
        self.assertNotEqual(st, 0, out)
        self.assertIn("PaInvRL|2", out)
        self.assertIn("differs from summary.json", out)
        os.remove(lists)  # rebuilt by the next invocation
        st, out = run(self.args, timeout=600)
        self.assertEqual(st, 0, out)


if __name__ == "__main__":
    unittest.main(verbosity=2)
