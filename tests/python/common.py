"""Helpers shared by the Python tests: paths, running a tool, reading what it wrote.

ctest passes PAINVRL_BIN (the built program) and PAINVRL_SOURCE_DIR; run by hand, the source
tree is found from this file and the program at build/painvrl.
"""
import os
import subprocess
import sys
import tomllib

import numpy as np

SOURCE_DIR = os.environ.get("PAINVRL_SOURCE_DIR") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
PAINVRL_BIN = os.environ.get("PAINVRL_BIN") or os.path.join(SOURCE_DIR, "build", "painvrl")


def tool(*parts):
    return os.path.join(SOURCE_DIR, "tools", *parts)


def run(args, timeout=120):
    """Runs a command; returns (exit status, stdout + stderr)."""
    p = subprocess.run([str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=timeout)
    return p.returncode, p.stdout


def run_py(script, *args, timeout=120):
    return run([sys.executable, script, *args], timeout=timeout)


def inspect(testcase, directory):
    """`painvrl inspect DIR` exits 0; returns its output."""
    testcase.assertTrue(os.access(PAINVRL_BIN, os.X_OK),
                        f"{PAINVRL_BIN}: the program is not built (set PAINVRL_BIN)")
    st, out = run([PAINVRL_BIN, "inspect", directory])
    testcase.assertEqual(st, 0, out)
    return out


def read_toml(path):
    with open(path, "rb") as fh:
        return tomllib.load(fh)


def read_pairs_tsv(path):
    with open(path) as fh:
        header = fh.readline()
        assert header == "user\titem\n", header
        return [tuple(int(x) for x in line.split("\t")) for line in fh if line.strip()]


def write(path, text):
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)


def cosine(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
