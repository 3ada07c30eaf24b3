#!/usr/bin/python3
"""tools/check-layout: the repository passes it, and a tree with each kind of violation fails it
with a message naming the file and the rule (an include that points up, a scheduler that grows
or writes a file, a folder docs/architecture.md does not name)."""
import os
import shutil
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import SOURCE_DIR, run  # noqa: E402

CHECK = os.path.join(SOURCE_DIR, "tools", "check-layout")


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


class Layout(unittest.TestCase):
    def test_the_repository_passes(self):
        st, out = run([sys.executable, CHECK, SOURCE_DIR])
        self.assertEqual(st, 0, out)

    def test_violations_are_named(self):
        with tempfile.TemporaryDirectory(prefix="painvrl_layout_") as tmp:
            for rel in ("host", "include/painvrl", "kernels", "docs"):
                src = os.path.join(SOURCE_DIR, rel)
                shutil.copytree(src, os.path.join(tmp, rel))
            shutil.copy(os.path.join(SOURCE_DIR, "README.md"), tmp)
            st, out = run([sys.executable, CHECK, tmp])
            self.assertEqual(st, 0, out)  # the copy passes as the repository does
            # 1. The CPU backend reaching up into the pipeline's configuration.
            cpu = os.path.join(tmp, "host", "cpu", "cpu_loss.cpp")
            text = open(cpu).read()
            write(cpu, '#include "painvrl/pipeline/config.h"\n' + text)
            # 2. A kernel including the command line's header.
            write(os.path.join(tmp, "kernels", "extra.cu"), '#include "painvrl/cli/serve.h"\n')
            # 3. The scheduler saving a file.
            sched = os.path.join(tmp, "host", "pipeline", "algorithm1.cpp")
            text = open(sched).read()
            marker = "  MaskSettings ms = mask_settings_from(c);\n"
            self.assertIn(marker, text)
            write(sched, text.replace(marker, marker + '  write_text_atomic("x", "y");\n'))
            # 4. A folder the architecture page does not name.
            write(os.path.join(tmp, "host", "serving", "x.cpp"), "// x\n")
            st, out = run([sys.executable, CHECK, tmp])
            self.assertNotEqual(st, 0, out)
            self.assertIn("host/cpu/cpu_loss.cpp:1: the cpu layer includes painvrl/pipeline/",
                          out)
            self.assertIn("kernels/extra.cu:1: the cuda layer includes painvrl/cli/", out)
            self.assertIn("checkpoint, file or signal code in the scheduler ('write')", out)
            self.assertIn("docs/architecture.md: does not name host/serving/", out)
            self.assertIn("host/serving/x.cpp: unknown layer 'serving'", out)
            # 5. A scheduler longer than 80 lines.
            text = open(sched).read().replace('  write_text_atomic("x", "y");\n',
                                              "  // padding\n" * 80)
            write(sched, text)
            st, out = run([sys.executable, CHECK, tmp])
            self.assertRegex(out, r"run_algorithm1 is \d+ lines \(at most 80\)")


if __name__ == "__main__":
    unittest.main(verbosity=2)
