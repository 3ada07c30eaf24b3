#!/usr/bin/python3
"""The docs check (issue 20): every config key (`painvrl keys`), preset (`painvrl presets`),
subcommand and option (`--help` of each subcommand, sweep's included) the program knows appears
in the README or a docs page it links, and every key of the README's config table and every
option of its command synopsis is one the program knows. The checker is tested on a README with
a key removed and one with an unknown key added, so that it can fail.
"""
import os
import re
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import PAINVRL_BIN, SOURCE_DIR, run  # noqa: E402


def program_output(*args):
    st, out = run([PAINVRL_BIN, *args])
    if st != 0:
        raise AssertionError(f"painvrl {' '.join(args)}: exit {st}\n{out}")
    return out


def known_keys():
    """The keys `painvrl keys` describes (its second part: `name  help` lines)."""
    out = program_output("keys")
    described = out.split("\n\n", 1)[1] if "\n\n" in out else out
    return sorted({line.split()[0] for line in described.splitlines() if line.strip()})


def known_presets():
    return sorted(p for p in program_output("presets").split() if p)


def subcommands(path=()):
    """[(path, help text)] for every subcommand, nested ones (sweep plan, ...) included."""
    text = program_output(*path, "--help")
    found = [(path, text)]
    if "Subcommands:" in text:
        for line in text.split("Subcommands:", 1)[1].splitlines():
            m = re.match(r"^  (\S+)\s", line)
            if m:
                found += subcommands(path + (m.group(1),))
    return found


def options_of(help_text):
    return sorted(set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", help_text)) - {"--help"})


def documentation():
    """The README and every docs/*.md page it links."""
    readme = open(os.path.join(SOURCE_DIR, "README.md"), encoding="utf-8").read()
    texts = [readme]
    for page in sorted(set(re.findall(r"\((docs/[\w./-]+\.md)\)", readme))):
        path = os.path.join(SOURCE_DIR, page)
        if os.path.isfile(path):
            texts.append(open(path, encoding="utf-8").read())
    return readme, "\n".join(texts)


def table_keys(readme):
    """The keys of the README's `## Config keys` table: its first column, a key or a
    comma-separated list of keys, in backticks or bare."""
    section = readme.split("## Config keys", 1)[1]
    section = section.split("\n## ", 1)[0]
    keys = []
    for line in section.splitlines():
        if not line.startswith("|") or line.startswith("| ---"):
            continue
        for name in line.split("|")[1].split(","):
            name = name.strip().strip("`")
            if re.fullmatch(r"[a-z][a-z0-9_]*", name) and name != "key":
                keys.append(name)
    return keys


def synopsis(readme):
    """{subcommand path: its synopsis text}: the first indented block of `## Command line`, each
    `painvrl ...` line with the more indented lines that continue it."""
    section = readme.split("## Command line", 1)[1].split("\n## ", 1)[0]
    block = []
    for line in section.splitlines():
        if line.startswith("    "):
            block.append(line)
        elif block:
            break
    entries = {}
    current = None
    for line in block:
        m = re.match(r"^    painvrl ((?:[a-z][a-z-]*)(?: (?:plan|run|status|collect|exec))?)", line)
        if m:
            current = m.group(1)
            entries[current] = entries.get(current, "") + line.split("#", 1)[0] + "\n"
        elif current and line.startswith("      "):
            entries[current] += line + "\n"
    return entries


def synopsis_options(readme):
    return sorted(set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)",
                                 "\n".join(synopsis(readme).values()))))


# Subcommands run by other commands, documented in the text, not the synopsis.
HIDDEN = {("sweep", "exec")}


def check(readme, docs, keys, presets, commands):
    """The problems, one line each ([] when the docs and the program agree)."""
    problems = []
    in_table = set(table_keys(readme))
    for k in keys:
        if k not in in_table:
            problems.append(f"config key `{k}` is not in the README's config table")
    for k in sorted(in_table - set(keys)):
        problems.append(f"the README's config table lists `{k}`, which the program does not know")
    for p in presets:
        if not re.search(rf"(?<![\w-]){re.escape(p)}(?![\w-])", docs):
            problems.append(f"preset `{p}` is not documented")
    every_option = set()
    entries = synopsis(readme)
    for path, text in commands:
        name = " ".join(path)
        if path and not re.search(r"painvrl " + re.escape(name) + r"(?![\w-])", docs):
            problems.append(f"subcommand `painvrl {name}` is not documented")
        shown = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", entries.get(name, "")))
        for opt in options_of(text):
            every_option.add(opt)
            if not path:
                continue  # the program's own --version
            if path in HIDDEN:
                if not re.search(rf"{re.escape(opt)}(?![\w-])", docs):
                    problems.append(f"option {opt} of `painvrl {name}` is not documented")
            elif opt not in shown:
                problems.append(f"option {opt} of `painvrl {name}` is not in the README's synopsis")
    for opt in synopsis_options(readme):
        if opt not in every_option:
            problems.append(f"the README's synopsis shows {opt}, which no subcommand has")
    return problems


class Docs(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.readme, cls.docs = documentation()
        cls.keys = known_keys()
        cls.presets = known_presets()
        cls.commands = subcommands()

    def test_the_program_sees_what_it_should(self):
        for k in ("lr", "mask_lambda", "pareto_normalize", "memory_limit_gb", "invrl_alpha"):
            self.assertIn(k, self.keys)
        self.assertIn("paper", self.presets)
        paths = [" ".join(p) for p, _ in self.commands]
        for c in ("train", "sweep plan", "sweep run", "synth", "split"):
            self.assertIn(c, paths)

    def test_docs_and_program_agree(self):
        problems = check(self.readme, self.docs, self.keys, self.presets, self.commands)
        self.assertEqual(problems, [], "\n".join(problems))

    def test_the_check_fails_on_an_undocumented_or_unknown_key(self):
        key = "mask_lambda"
        row = next(line for line in self.readme.splitlines()
                   if re.match(rf"^\|[^|]*\b{key}\b[^|]*\|", line))
        without = self.readme.replace(row + "\n", "")
        problems = check(without, without, self.keys, self.presets, self.commands)
        self.assertIn(f"config key `{key}` is not in the README's config table", problems)
        # A key the program gains without documentation.
        problems = check(self.readme, self.docs, self.keys + ["brand_new_key"], self.presets,
                         self.commands)
        self.assertIn("config key `brand_new_key` is not in the README's config table", problems)
        # A key documented that the program does not know.
        extra = self.readme.replace(row, row + "\n| `no_such_key` | 1 | nothing |")
        problems = check(extra, extra, self.keys, self.presets, self.commands)
        self.assertIn("the README's config table lists `no_such_key`, which the program does "
                      "not know", problems)
        # An option the program gains without documentation.
        commands = self.commands + [(("train",), "  --brand-new-flag   new\n")]
        problems = check(self.readme, self.docs, self.keys, self.presets, commands)
        self.assertIn("option --brand-new-flag of `painvrl train` is not in the README's synopsis",
                      problems)


if __name__ == "__main__":
    unittest.main()
