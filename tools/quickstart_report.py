#!/usr/bin/python3
"""The table and figure `tools/quickstart` ends with: Recall@20 on the IID, OOD and cold-OOD tests
of each run, and the learned mask's mean over the planted invariant, spurious and noise columns
(from the dataset's manifest.json, written by `painvrl synth`); the figure shows the same and the
mask column by column.

    tools/quickstart_report.py DATASET PNG LABEL=RUNDIR [LABEL=RUNDIR ...]
"""
import json
import os
import sys

import numpy as np

TESTS = [("IID", "iid"), ("OOD", None), ("cold-OOD", "cold-ood")]  # None: the main test (OOD)
KINDS = ["invariant", "spurious", "noise"]


def recall(summary, test):
    block = summary.get("test_at_best") if test is None else \
        summary.get("test_sets_at_best", {}).get(test)
    return None if block is None else block.get("recall@20")


def main():
    if len(sys.argv) < 4:
        raise SystemExit(__doc__)
    data, png, runs = sys.argv[1], sys.argv[2], [a.split("=", 1) for a in sys.argv[3:]]
    kinds = json.load(open(os.path.join(data, "manifest.json"))).get("column_kinds", [])
    rows = []
    for label, rd in runs:
        summary = json.load(open(os.path.join(rd, "summary.json")))
        mask_path = os.path.join(rd, "mask.npy")
        mask = np.load(mask_path) if os.path.isfile(mask_path) else None
        by_kind = {}
        if mask is not None and len(kinds) == len(mask):
            for k in KINDS:
                cols = [c for c, kind in enumerate(kinds) if kind == k]
                if cols:
                    by_kind[k] = float(np.mean(mask[cols]))
        rows.append((label, [recall(summary, t) for _, t in TESTS], by_kind, mask))

    def cell(v, digits):
        return "-" if v is None else f"{v:.{digits}f}"
    header = ["method"] + [f"{name} R@20" for name, _ in TESTS] + [f"mask {k}" for k in KINDS]
    table = [[label] + [cell(r, 4) for r in recalls] + [cell(by_kind.get(k), 2) for k in KINDS]
             for label, recalls, by_kind, _ in rows]
    widths = [max(len(str(r[c])) for r in [header] + table) for c in range(len(header))]
    for r in [header, ["-" * w for w in widths]] + table:
        print("  ".join(str(v).ljust(w) if c == 0 else str(v).rjust(w)
                        for c, (v, w) in enumerate(zip(r, widths))))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.8 / len(rows)
    for k, (label, recalls, _, _) in enumerate(rows):
        xs = [t + (k - (len(rows) - 1) / 2) * width for t in range(len(TESTS))]
        left.bar(xs, [r or 0 for r in recalls], width, label=label)
    left.set_xticks(range(len(TESTS)), [name for name, _ in TESTS])
    left.set_ylabel("Recall@20")
    left.set_title("test sets")
    left.legend(fontsize=8)
    colours = {"invariant": "tab:green", "spurious": "tab:red", "noise": "tab:grey"}
    for k, (label, _, _, mask) in enumerate(rows):
        if mask is None:
            continue
        marker = "o^sv"[k % 4]
        for kind in KINDS:
            cols = [c for c, kd in enumerate(kinds) if kd == kind]
            right.scatter(cols, mask[cols], s=14, marker=marker, color=colours[kind],
                          label=f"{label}: {kind}")
    right.set_xlabel("feature column")
    right.set_ylabel("mask")
    right.set_ylim(-0.05, 1.05)
    right.set_title("learned mask, by planted kind")
    right.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(png)), exist_ok=True)
    tmp = png + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, png)
    print(f"\nfigure: {png}")


if __name__ == "__main__":
    main()
