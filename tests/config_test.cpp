// Config keys: TOML and --set parsing, errors that name the key and suggest the nearest one,
// presets, and the resolved config round-tripping through to_toml.
#include "painvrl/pipeline/config.h"

#include <gtest/gtest.h>

#include "painvrl/data/error.h"

namespace painvrl {
namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

TEST(Config, OverridesSetTypedValues) {
  Config c;
  apply_override(c, "dim=32");
  apply_override(c, "kappa=0.5");
  apply_override(c, "eval_ks=5,10,50");
  apply_override(c, "ii_similarity=ultragcn");
  apply_override(c, "eval_test_each=false");
  EXPECT_EQ(c.dim, 32);
  EXPECT_DOUBLE_EQ(c.kappa, 0.5);
  EXPECT_EQ(c.eval_ks, (std::vector<int>{5, 10, 50}));
  EXPECT_EQ(c.ii_similarity, "ultragcn");
  EXPECT_FALSE(c.eval_test_each);
}

TEST(Config, UnknownKeySuggestsNearest) {
  Config c;
  const std::string e = error_of([&] { apply_override(c, "negative=5"); });
  EXPECT_NE(e.find("unknown config key `negative`"), std::string::npos) << e;
  EXPECT_NE(e.find("did you mean `negatives`"), std::string::npos) << e;
  const std::string t = error_of([&] { apply_toml(c, "batchsize = 3\n", "my.toml"); });
  EXPECT_NE(t.find("my.toml"), std::string::npos) << t;
  EXPECT_NE(t.find("`batch_size`"), std::string::npos) << t;
}

// Names other trainers use for our keys are far from ours by edit distance; they get our name.
TEST(Config, OtherTrainersNamesSuggestOurKey) {
  Config c;
  for (const auto& [other, ours] :
       std::vector<std::pair<std::string, std::string>>{{"learning_rate", "lr"},
                                                        {"Learning_Rate", "lr"},
                                                        {"embedding_size", "dim"},
                                                        {"num_epochs", "epochs"},
                                                        {"weight_decay", "gamma_emb"}}) {
    const std::string e = error_of([&] { apply_override(c, other + "=1"); });
    EXPECT_NE(e.find("did you mean `" + ours + "`"), std::string::npos) << other << ": " << e;
  }
}

TEST(Config, MistypedValuesNameTheKey) {
  Config c;
  EXPECT_NE(error_of([&] { apply_override(c, "dim=abc"); }).find("dim"), std::string::npos);
  EXPECT_NE(error_of([&] { apply_override(c, "dim"); }).find("key=value"), std::string::npos);
  EXPECT_NE(error_of([&] { apply_toml(c, "dim = \"big\"\n", "x.toml"); }).find("dim"),
            std::string::npos);
  EXPECT_NE(error_of([&] { apply_toml(c, "dim = = 3\n", "x.toml"); }).find("x.toml:1"),
            std::string::npos);
  Config bad;
  bad.select_metric = "recall@50";
  EXPECT_NE(error_of([&] { validate(bad); }).find("select_metric"), std::string::npos);
  bad = Config{};
  bad.l2 = "some";
  EXPECT_NE(error_of([&] { validate(bad); }).find("`l2`"), std::string::npos);
}

// Found in review for tests/fuzz/fuzz_config: a TOML integer was cast to the key's type, so
// dim = 2^32 + 64 silently became 64.
TEST(Config, OutOfRangeIntegersAreErrorsNotWrapped) {
  Config c;
  std::string e = error_of([&] { apply_toml(c, "dim = 4294967360\n", "x.toml"); });
  EXPECT_NE(e.find("x.toml: key `dim`: 4294967360 is out of range; expected an integer from "
                   "-2147483648 to 2147483647"),
            std::string::npos)
      << e;
  e = error_of([&] { apply_toml(c, "eval_ks = [10, 4294967316]\n", "x.toml"); });
  EXPECT_NE(e.find("key `eval_ks`: 4294967316 is out of range"), std::string::npos) << e;
  e = error_of([&] { apply_toml(c, "seed = -1\n", "x.toml"); });
  EXPECT_NE(e.find("key `seed`: -1 is out of range; expected an integer from 0"), std::string::npos)
      << e;
  EXPECT_NE(error_of([&] { apply_override(c, "dim=4294967360"); }).find("--set dim"),
            std::string::npos);
  EXPECT_EQ(c.dim, 64);
  EXPECT_EQ(c.eval_ks, (std::vector<int>{10, 20}));
  EXPECT_EQ(c.seed, 2233u);
}

// Found in review, and fatal in tests/fuzz/fuzz_config (built with libstdc++ assertions): toml++'s
// value<double>() is empty for an integer a double cannot hold exactly (above 2^53), and the empty
// optional was dereferenced.
TEST(Config, EveryIntegerIsANumberForAFloatKey) {
  Config c;
  apply_toml(c, "lr = 9007199254740993\nkappa = 2\n", "x.toml");
  EXPECT_DOUBLE_EQ(c.lr, 9007199254740992.0);
  EXPECT_DOUBLE_EQ(c.kappa, 2.0);
}

TEST(Config, LongUnknownKeyStillGetsASuggestion) {
  Config c;
  const std::string key = "negatives" + std::string(5000, 'x');
  const std::string e = error_of([&] { apply_override(c, key + "=3"); });
  EXPECT_NE(e.find("unknown config key `" + key + "`"), std::string::npos);
  EXPECT_NE(e.find("did you mean `negatives`"), std::string::npos);
}

// CRLF line endings and a missing final newline read exactly like the LF file.
TEST(Config, LineEndingsReadAlike) {
  const std::string lf =
      "# a config\nmethod = \"painvrl\"\n\ndim = 32\neval_ks = [5,\n  10]\nkappa = 0.5\n";
  Config expected;
  apply_toml(expected, lf, "lf.toml");
  EXPECT_EQ(expected.dim, 32);
  std::string crlf;
  for (const char ch : lf) crlf += ch == '\n' ? std::string("\r\n") : std::string(1, ch);
  for (const std::string& text :
       {crlf, lf.substr(0, lf.size() - 1), crlf.substr(0, crlf.size() - 2)}) {
    Config c;
    apply_toml(c, text, "variant.toml");
    EXPECT_EQ(to_toml(c), to_toml(expected));
  }
}

TEST(Config, PresetsLoadAndValidate) {
  for (const char* name : {"paper", "invrl", "ultragcn-ml1m"}) {
    Config c;
    apply_preset(c, name);
    EXPECT_NO_THROW(validate(c)) << name;
  }
  Config c;
  apply_preset(c, "ultragcn-ml1m");
  EXPECT_EQ(c.dim, 128);
  EXPECT_EQ(c.negatives, 200);
  EXPECT_DOUBLE_EQ(c.gamma_emb, 5e-5);  // UltraGCN's gamma 1e-4 on half the sum of squares
  EXPECT_EQ(c.ii_similarity, "ultragcn");
  EXPECT_NE(error_of([&] { apply_preset(c, "nope"); }).find("ultragcn-ml1m"), std::string::npos);
}

TEST(Config, ResolvedConfigRoundTrips) {
  Config c;
  apply_preset(c, "ultragcn-ml1m");
  apply_override(c, "seed=77");
  apply_override(c, "init_std=0.0003");
  Config back;
  apply_toml(back, to_toml(c), "resolved");
  EXPECT_EQ(to_toml(back), to_toml(c));
  EXPECT_EQ(back.seed, 77u);
  EXPECT_DOUBLE_EQ(back.init_std, 0.0003);
  EXPECT_DOUBLE_EQ(back.w1, 1e-7);
  // Floats in their shortest round-trip form: what the user would write, not 17 digits.
  const std::string text = to_toml(c);
  EXPECT_NE(text.find("\nadam_beta1 = 0.9\n"), std::string::npos) << text;
  EXPECT_NE(text.find("\ninit_std = 0.0003\n"), std::string::npos) << text;
  EXPECT_EQ(text.find("00000000"), std::string::npos) << text;
  EXPECT_NE(to_toml(c, true).find("\nadam_beta1 = 0.90000000000000002\n"), std::string::npos);
}

}  // namespace
}  // namespace painvrl
