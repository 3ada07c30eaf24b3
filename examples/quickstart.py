#!/usr/bin/python3
"""tools/quickstart from Python: the built-in synthetic dataset, PaInvRL and ultragcn-mm with the
defaults, their IID / OOD Recall@20 and the mask per planted block. Run it after
`pip install .` (README), from the repository root: examples/quickstart.py [DATA_DIR]"""
import json
import os
import sys

import numpy as np

import painvrl

data_dir = sys.argv[1] if len(sys.argv) > 1 else "runs/synth"
data = painvrl.Dataset.load(data_dir) if os.path.isdir(data_dir) else painvrl.synth(data_dir)
kinds = json.load(open(os.path.join(data_dir, "manifest.json")))["column_kinds"]
for model in ("ultragcn-mm", "painvrl"):
    run = painvrl.train(data, model=model)
    s = run.summary
    line = (f"{model:12s} OOD R@20 {s['test_at_best']['recall@20']:.4f}  "
            f"IID R@20 {s['test_sets_at_best']['iid']['recall@20']:.4f}")
    if run.mask is not None:
        m = run.mask
        line += "  mask " + "  ".join(
            f"{k} {np.mean([m[c] for c, kk in enumerate(kinds) if kk == k]):.2f}"
            for k in ("invariant", "spurious", "noise"))
    print(line)
    items, scores = run.recommend([0, 1], k=5)
    print("  top-5 of users 0 and 1:", items.tolist())
