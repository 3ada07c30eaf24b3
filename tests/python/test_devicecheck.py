#!/usr/bin/python3
"""tools/device-check --dry-run (issue 22): the steps' limits fit the deadline with a margin and
the stubbed run ends within the budget it prints; a run killed at a random moment leaves
OUT/steps.tsv naming every step it finished, in the budget's order; a deadline too short for
the limits is warned about."""
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import SOURCE_DIR  # noqa: E402

CHECK = os.path.join(SOURCE_DIR, "tools", "device-check")
ORDER = ["gpu-present", "gpu-tests", "memcheck", "racecheck", "whole-run", "lab-loss",
         "lab-small", "synth", "epoch-ours-content1", "epoch-torch-content1", "mask-ours",
         "mask-torch", "epoch-ours-content0", "epoch-torch-content0"]


def steps(out):
    path = os.path.join(out, "steps.tsv")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line.rstrip("\n").split("\t") for line in f if line.strip()]


class DryRun(unittest.TestCase):
    def run_check(self, out, step_seconds="0", **env):
        e = dict(os.environ, PAINVRL_DRY_STEP_SECONDS=step_seconds, **env)
        return subprocess.run([CHECK, "--dry-run", out], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=e, timeout=120)

    def test_the_budget_fits_and_every_step_is_recorded(self):
        with tempfile.TemporaryDirectory(prefix="painvrl_dc_") as tmp:
            t0 = time.monotonic()
            r = self.run_check(tmp, "0.1")
            wall = time.monotonic() - t0
            self.assertEqual(r.returncode, 0, r.stdout)
            m = re.search(r"budget: (\d+) s of step limits within a (\d+) s deadline \(margin "
                          r"(\d+) s, at least (\d+) s wanted\)", r.stdout)
            self.assertIsNotNone(m, r.stdout)
            budget, deadline, margin, wanted = map(int, m.groups())
            self.assertLessEqual(budget + wanted, deadline)
            self.assertLessEqual(deadline, 600 - 60)  # the device tool's limit per command
            self.assertLess(wall, budget)
            self.assertEqual([s[0] for s in steps(tmp)], ORDER)
            self.assertTrue(all(s[1] == "passed" for s in steps(tmp)), steps(tmp))
            md = open(os.path.join(tmp, "device-check.md")).read()
            self.assertIn("DRY RUN", md)
            for name in ORDER:
                self.assertIn(f"| {name} | passed |", md)

    def test_a_killed_run_leaves_the_steps_it_finished(self):
        rng = random.Random(22)
        for _ in range(3):
            with tempfile.TemporaryDirectory(prefix="painvrl_dc_") as tmp:
                e = dict(os.environ, PAINVRL_DRY_STEP_SECONDS="0.25")
                p = subprocess.Popen([CHECK, "--dry-run", tmp], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, env=e, start_new_session=True)
                # A random moment after the first step ended and before the last can have.
                deadline = time.monotonic() + 60
                while not steps(tmp) and p.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.02)
                time.sleep(rng.uniform(0.0, 0.25 * (len(ORDER) - 2)))
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                done = steps(tmp)
                self.assertGreater(len(done), 0)
                self.assertEqual([s[0] for s in done], ORDER[:len(done)])
                for s in done:
                    self.assertEqual(len(s), 3, s)
                    self.assertEqual(s[1], "passed")

    def test_a_deadline_below_the_limits_is_warned_about(self):
        with tempfile.TemporaryDirectory(prefix="painvrl_dc_") as tmp:
            r = self.run_check(tmp, PAINVRL_CHECK_SECONDS="300")
            self.assertIn("warning: the step limits exceed the deadline", r.stdout)


if __name__ == "__main__":
    unittest.main()
