#!/usr/bin/python3
"""The synthetic benchmark of the PaInvRL issue: methods x test (IID, OOD, cold-IID, cold-OOD)
x P/R/NDCG@10,20 on `painvrl synth` data with a planted environment shift, like the paper's
Tables 2 and 3, plus the learned mask's mean over the invariant, spurious and noise blocks.

    bench/synthetic_table.py [--build build] [--out runs/synthetic-bench] [--seeds 1 2 3]
                             [--set key=value ...] [--methods ultragcn-mm painvrl ...]
                             [--synth "--minority 0.2 --mid-share 0.3"]

Every run's directory is kept under --out; the table is printed as Markdown. The splits use the
generator's own environments (`split --environments file`), so the benchmark measures the mask
learning, not the environment identification of the split.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys

import numpy as np

TESTS = [("iid", "split-ood/iid", "all"), ("ood", "split-ood/ood", "all"),
         ("cold-iid", "split-cold/cold-iid", "cold"), ("cold-ood", "split-cold/cold-ood", "cold")]
METRICS = ["precision@10", "recall@10", "ndcg@10", "precision@20", "recall@20", "ndcg@20"]


def run(cmd):
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-2000:]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--out", default="runs/synthetic-bench")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--methods", nargs="+",
                    default=["ultragcn", "ultragcn-mm", "invrl", "painvrl"])
    ap.add_argument("--set", nargs="*", default=[], help="key=value for every training run")
    ap.add_argument("--synth", default="",
                    help="extra `painvrl synth` flags as one string, e.g. '--mid-share 0.3'")
    a = ap.parse_args()
    exe = os.path.join(a.build, "painvrl")
    os.makedirs(a.out, exist_ok=True)
    results = {}  # (method, test) -> list of summaries
    masks = {}
    for seed in a.seeds:
        base = os.path.join(a.out, f"seed{seed}")
        data = os.path.join(base, "data")
        if not os.path.isdir(data):
            run([exe, "synth", "--out", data, "--seed", str(seed)] + shlex.split(a.synth))
        for proto in ("ood", "cold"):
            sp = os.path.join(base, f"split-{proto}")
            if not os.path.isdir(sp):
                run([exe, "split", "--data", data, "--out", sp, "--protocol", proto,
                     "--environments", "file", "--set", f"seed={seed}"])
        blocks = json.load(open(os.path.join(data, "manifest.json")))["blocks"]
        for method in a.methods:
            for test, rel, cand in TESTS:
                rd = os.path.join(base, f"{method}-{test}")
                if not os.path.isfile(os.path.join(rd, "summary.json")):
                    run([exe, "train", "--quiet", "--overwrite", "--method", method, "--data",
                         os.path.join(base, rel), "--out", rd, "--set", f"seed={seed}",
                         f"candidates={cand}"] + a.set)
                s = json.load(open(os.path.join(rd, "summary.json")))
                results.setdefault((method, test), []).append(s["test_at_best"])
                mp = os.path.join(rd, "mask.npy")
                if os.path.isfile(mp):
                    m = np.load(mp)
                    masks.setdefault(method, []).append(
                        {k: float(m[v[0]:v[1]].mean()) for k, v in blocks.items()})
    print(f"Seeds {a.seeds}; mean over seeds. Settings: {' '.join(a.set) or 'defaults'}\n")
    print("| method | test | " + " | ".join(METRICS) + " |")
    print("|---|---|" + "---|" * len(METRICS))
    for method in a.methods:
        for test, _, _ in TESTS:
            rs = results[(method, test)]
            vals = [np.mean([r[k] for r in rs]) for k in METRICS]
            print(f"| {method} | {test} | " + " | ".join(f"{v:.4f}" for v in vals) + " |")
    if masks:
        print("\n| method | mask mean: invariant | spurious | noise |\n|---|---|---|---|")
        for method, ms in masks.items():
            keys = ["invariant", "spurious", "noise"]
            print(f"| {method} | " + " | ".join(f"{np.mean([m[k] for m in ms]):.3f}"
                                              for k in keys) + " |")


if __name__ == "__main__":
    main()
