// Checkpoints and resume (the reliability issue): the file format refuses every corruption; a
// run stopped at any point (mid-epoch, between epochs, between stages of painvrl) and continued
// with resume ends bit-identical to an uninterrupted run (mask, model parameters, metrics, trace,
// environments); resuming from every checkpoint a run wrote does too; a corrupted newest
// checkpoint falls back to the older one with a warning; a changed dataset is refused. Through
// the program: SIGTERM stops a run with status 75 and `--resume` finishes it identically; a
// second signal exits at once and the checkpoints stay usable; a diverging run exits 3 naming
// the stage, epoch and step.
#include "painvrl/pipeline/checkpoint.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <thread>

#include "painvrl/data/error.h"
#include "painvrl/data/io.h"
#include "painvrl/data/synth.h"
#include "painvrl/pipeline/config.h"
#include "painvrl/pipeline/signals.h"
#include "painvrl/pipeline/trainer.h"
#include "test_util.h"

namespace painvrl {
namespace {

namespace fs = std::filesystem;
using test::run_program;
using test::TempDir;

using test::read_bytes;

// metrics.jsonl without the wall-clock field (train_seconds), one JSON text per line.
std::vector<std::string> metrics_lines(const std::string& path) {
  std::vector<std::string> out;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    nlohmann::json j = nlohmann::json::parse(line);
    j.erase("train_seconds");
    out.push_back(j.dump());
  }
  return out;
}

// Everything a run decides, byte for byte (timings excluded).
void expect_same_run(const std::string& want, const std::string& got, const std::string& what) {
  for (const std::string f : {"mask.npy", "model.npy", "trace.jsonl", "environments-0.tsv",
                              "environments-1.tsv", "config.toml"}) {
    ASSERT_EQ(fs::exists(want + "/" + f), fs::exists(got + "/" + f)) << what << ": " << f;
    if (!fs::exists(want + "/" + f)) continue;
    EXPECT_TRUE(read_bytes(want + "/" + f) == read_bytes(got + "/" + f)) << what << ": " << f;
  }
  EXPECT_EQ(metrics_lines(want + "/metrics.jsonl"), metrics_lines(got + "/metrics.jsonl")) << what;
  const auto a = nlohmann::json::parse(read_bytes(want + "/summary.json"));
  const auto b = nlohmann::json::parse(read_bytes(got + "/summary.json"));
  for (const char* key : {"test_at_best", "best_valid", "best_epoch", "mask_mean_by_modality"}) {
    EXPECT_EQ(a.value(key, nlohmann::json()), b.value(key, nlohmann::json()))
        << what << ": " << key;
  }
}

const char* kTinySettings[] = {"dim=8",
                               "negatives=4",
                               "batch_size=64",
                               "epochs=4",
                               "eval_every=1",
                               "pretrain_epochs=3",
                               "outer_iterations=2",
                               "envs=3",
                               "him_epochs=1",
                               "him_rounds=2",
                               "mask_epochs=3",
                               "mask_batch=32",
                               "attention_hidden=4",
                               "checkpoint_every=1",
                               "threads=1"};

Config tiny_config(const std::string& method) {
  Config c;
  c.method = method;
  for (const char* s : kTinySettings) apply_override(c, s);
  return c;
}

struct Fixture {
  TempDir tmp{"ckpt"};
  std::string data = tmp / "data";
  Fixture() {
    SynthOptions so;
    so.seed = 3;
    so.users = 200;
    so.items = 150;
    write_synthetic_dataset(data, so);
    set_quiet(true);
  }
  ~Fixture() {
    stop_after_polls_for_testing(0);
    set_quiet(false);
  }
  // An uninterrupted run; returns the number of stop polls it made.
  int64_t full_run(const Config& c, const std::string& out) {
    stop_after_polls_for_testing(0);
    run_training(c, RunOptions{data, out, false});
    return stop_after_polls_for_testing(0);
  }
};

// ---- the file ------------------------------------------------------------------------------

Checkpoint sample_checkpoint() {
  Checkpoint ck;
  ck.position = Position{"mask", 1, 2, 17};
  ck.meta["x"] = 0.1 + 0.2;  // a double that must round-trip exactly
  ck.put("f", std::vector<float>{1.5f, -2.f, 3e-30f});
  ck.put("d", std::vector<double>{1.0 / 3.0});
  ck.put("i", std::vector<int32_t>{7, -8});
  ck.put("empty", std::vector<float>{});
  return ck;
}

TEST(CheckpointFile, RoundTripsPositionMetaAndTensors) {
  const Checkpoint ck = sample_checkpoint();
  const Checkpoint back = Checkpoint::decode(ck.encode(), "mem");
  EXPECT_EQ(back.position.phase, "mask");
  EXPECT_EQ(back.position.outer, 1);
  EXPECT_EQ(back.position.epoch, 2);
  EXPECT_EQ(back.position.step, 17);
  EXPECT_EQ(back.meta["x"].get<double>(), 0.1 + 0.2);
  EXPECT_EQ(back.get<float>("f"), (std::vector<float>{1.5f, -2.f, 3e-30f}));
  EXPECT_EQ(back.get<double>("d"), (std::vector<double>{1.0 / 3.0}));
  EXPECT_EQ(back.get<int32_t>("i"), (std::vector<int32_t>{7, -8}));
  EXPECT_TRUE(back.get<float>("empty").empty());
  EXPECT_THROW(back.get<double>("f"), CheckpointError);  // wrong dtype
  EXPECT_THROW(back.get<float>("absent"), CheckpointError);
}

TEST(CheckpointFile, EveryFlippedByteAndEveryTruncationIsRefused) {
  const std::string good = sample_checkpoint().encode();
  for (size_t at = 0; at < good.size(); ++at) {
    std::string bad = good;
    bad[at] = char(bad[at] ^ 0x5a);
    EXPECT_THROW(Checkpoint::decode(bad, "flip"), CheckpointError) << "byte " << at;
  }
  for (size_t len = 0; len < good.size(); len += 7) {
    EXPECT_THROW(Checkpoint::decode(good.substr(0, len), "cut"), CheckpointError) << len;
  }
  // A newer format version with a valid checksum is refused by name.
  std::string future = good.substr(0, good.size() - 8);
  future[8] = char(kCheckpointVersion + 1);
  const uint64_t sum = hash64(future.data(), future.size());
  future.append(reinterpret_cast<const char*>(&sum), 8);
  try {
    Checkpoint::decode(future, "future.ckpt");
    ADD_FAILURE() << "a future version was accepted";
  } catch (const CheckpointError& e) {
    EXPECT_NE(std::string(e.what()).find("format version"), std::string::npos) << e.what();
  }
}

TEST(CheckpointStore, KeepsTheNewestAndIgnoresTemporaryFiles) {
  TempDir tmp("store");
  const std::string dir = tmp.path.string();
  CheckpointStore store(dir, 1, 2, "seed = 1\n", "data", 42);
  for (int k = 0; k < 5; ++k) {
    Checkpoint ck;
    ck.position.epoch = k;
    store.save(ck);
  }
  test::write_file(dir + "/checkpoint-000009.ckpt.tmp.1.2", "half a write");
  const auto files = list_checkpoints(dir);
  ASSERT_EQ(files.size(), 2u);
  EXPECT_EQ(files[0].first, 4);
  EXPECT_EQ(files[1].first, 3);
  const LoadedCheckpoint got = load_newest_checkpoint(dir, 42);
  EXPECT_EQ(got.checkpoint.position.epoch, 4);
  EXPECT_EQ(got.checkpoint.meta["config"], "seed = 1\n");
  // Another dataset: both refused, with the reason.
  try {
    load_newest_checkpoint(dir, 43);
    ADD_FAILURE() << "a checkpoint of another dataset was accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("content hash"), std::string::npos) << e.what();
  }
}

// ---- resume, in process --------------------------------------------------------------------

// Stops the run at the k-th poll (each training step, mask step and HIM step polls once), then
// resumes it; for k spread over the whole run: inside pretraining, HIM, mask generation and the
// final model, including the first poll of a stage (right after the previous stage's
// checkpoint).
TEST(Resume, PainvrlStoppedAnywhereEndsBitIdentical) {
  Fixture fx;
  const Config c = tiny_config("painvrl");
  const std::string want = fx.tmp / "full";
  const int64_t polls = fx.full_run(c, want);
  ASSERT_GT(polls, 20);
  std::vector<int64_t> ks = {
      1, 2, polls / 9, polls / 4, polls / 3, polls / 2, 2 * polls / 3, polls - 3, polls};
  std::set<std::string> phases;
  for (int64_t k : ks) {
    const std::string got = fx.tmp / ("stop" + std::to_string(k));
    stop_after_polls_for_testing(k);
    EXPECT_THROW(run_training(c, RunOptions{fx.data, got, false}), Interrupted) << "k " << k;
    stop_after_polls_for_testing(0);
    ASSERT_FALSE(fs::exists(got + "/summary.json"));
    phases.insert(load_newest_checkpoint(got, 0).checkpoint.position.phase);
    resume_training(RunOptions{"", got, false}, -1);
    expect_same_run(want, got, "stopped at poll " + std::to_string(k));
  }
  // The points cover every phase of the pipeline.
  for (const char* p : {"pretrain", "him", "mask", "final"}) EXPECT_TRUE(phases.count(p)) << p;
}

// Resuming from each checkpoint a run wrote (every stage end and every epoch), with the newer
// ones removed, ends where the uninterrupted run did.
TEST(Resume, FromEveryCheckpointOfAPainvrlRun) {
  Fixture fx;
  Config c = tiny_config("painvrl");
  c.method = "painvrl";
  c.checkpoint_keep = 0;  // keep them all
  const std::string want = fx.tmp / "full";
  fx.full_run(c, want);
  const auto all = list_checkpoints(want);
  ASSERT_GE(all.size(), 12u);
  // Under tools/sanitize (about 20 times slower) only the first checkpoint of each phase.
  const bool one_per_phase = std::getenv("PAINVRL_SANITIZED") != nullptr;
  std::set<std::string> phases;
  for (const auto& [seq, path] : all) {
    const std::string phase = Checkpoint::decode(read_text_file(path), path).position.phase;
    if (one_per_phase && phases.count(phase)) continue;
    const std::string got = fx.tmp / ("from" + std::to_string(seq));
    fs::copy(want, got, fs::copy_options::recursive);
    fs::remove(got + "/summary.json");
    for (const auto& [newer, p] : list_checkpoints(got)) {
      if (newer > seq) fs::remove(p);
    }
    phases.insert(load_newest_checkpoint(got, 0).checkpoint.position.phase);
    resume_training(RunOptions{"", got, false}, -1);
    expect_same_run(want, got, "from " + path);
  }
  EXPECT_EQ(phases, (std::set<std::string>{"start", "pretrain", "him", "mask", "final"}));
}

TEST(Resume, BaselineStoppedMidEpochEndsBitIdenticalOnAnotherThreadCount) {
  Fixture fx;
  Config c = tiny_config("ultragcn-mm");
  c.epochs = 6;
  const std::string want = fx.tmp / "full";
  const int64_t polls = fx.full_run(c, want);
  for (int64_t k : {polls / 3, polls / 2 + 1}) {
    const std::string got = fx.tmp / ("stop" + std::to_string(k));
    stop_after_polls_for_testing(k);
    EXPECT_THROW(run_training(c, RunOptions{fx.data, got, false}), Interrupted);
    stop_after_polls_for_testing(0);
    EXPECT_EQ(load_newest_checkpoint(got, 0).checkpoint.position.phase, "baseline");
    resume_training(RunOptions{"", got, false}, 2);  // threads do not change results
    expect_same_run(want, got, "baseline stopped at poll " + std::to_string(k));
  }
}

TEST(Resume, CorruptNewestCheckpointFallsBackToTheOlder) {
  Fixture fx;
  const Config c = tiny_config("painvrl");
  const std::string want = fx.tmp / "full";
  const int64_t polls = fx.full_run(c, want);
  for (const std::string damage : {"flip", "truncate"}) {
    const std::string got = fx.tmp / damage;
    stop_after_polls_for_testing(polls / 2);
    EXPECT_THROW(run_training(c, RunOptions{fx.data, got, false}), Interrupted);
    stop_after_polls_for_testing(0);
    const auto files = list_checkpoints(got);
    ASSERT_EQ(files.size(), 2u);
    std::string bytes = read_bytes(files[0].second);
    if (damage == "flip") {
      bytes[bytes.size() / 2] = char(bytes[bytes.size() / 2] ^ 1);
    } else {
      bytes.resize(bytes.size() - 100);
    }
    test::write_file(files[0].second, bytes);
    EXPECT_EQ(load_newest_checkpoint(got, 0).sequence, files[1].first);
    resume_training(RunOptions{"", got, false}, -1);
    expect_same_run(want, got, damage);
  }
}

// A tiny ultragcn run in `got`, stopped (as by SIGTERM) early in its first epochs.
void stopped_run(const Fixture& fx, const std::string& got) {
  stop_after_polls_for_testing(5);
  EXPECT_THROW(run_training(tiny_config("ultragcn"), RunOptions{fx.data, got, false}), Interrupted);
  stop_after_polls_for_testing(0);
}

TEST(Resume, ChangedDatasetOrMissingRunIsRefused) {
  Fixture fx;
  const std::string got = fx.tmp / "run";
  stopped_run(fx, got);
  // The same layout, other content.
  const std::string other = fx.tmp / "other";
  SynthOptions so;
  so.seed = 4;
  so.users = 200;
  so.items = 150;
  write_synthetic_dataset(other, so);
  try {
    resume_training(RunOptions{other, got, false}, -1);
    ADD_FAILURE() << "resumed on another dataset";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("content hash"), std::string::npos) << e.what();
  }
  EXPECT_THROW(resume_training(RunOptions{"", fx.tmp / "absent", false}, -1), InputError);
  fs::create_directories(fx.tmp / "empty");
  EXPECT_THROW(resume_training(RunOptions{"", fx.tmp / "empty", false}, -1), InputError);
}

// An edited RUN/config.toml is refused on --resume, naming each changed key with both values;
// a cosmetic edit (a comment) and a changed thread count are not changes; the restored file
// resumes.
TEST(Resume, EditedConfigFileIsRefusedNamingTheKeys) {
  Fixture fx;
  const std::string got = fx.tmp / "run";
  stopped_run(fx, got);
  const std::string path = got + "/config.toml", original = test::read_bytes(path);
  std::string edited = original;
  const size_t lr = edited.find("\nlr = ");
  ASSERT_NE(lr, std::string::npos) << edited;
  edited.replace(lr, edited.find('\n', lr + 1) - lr, "\nlr = 0.5");
  test::write_file(path, edited);
  try {
    resume_training(RunOptions{"", got, false}, -1);
    ADD_FAILURE() << "resumed with an edited config.toml";
  } catch (const InputError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("config.toml was edited"), std::string::npos) << what;
    EXPECT_NE(what.find("lr = 0.5 (the run's: "), std::string::npos) << what;
  }
  EXPECT_FALSE(fs::exists(got + "/summary.json"));
  test::write_file(path, "# my notes\n" + original);
  EXPECT_NO_THROW(resume_training(RunOptions{"", got, false}, 1));
  EXPECT_TRUE(fs::exists(got + "/summary.json"));
}

// ---- through the program -------------------------------------------------------------------

std::string tiny_args() {
  std::string s = " --set";
  for (const char* k : kTinySettings) s += std::string(" ") + k;
  return s;
}

using test::spawn_program;

int wait_status(pid_t pid) {
  int st = 0;
  ::waitpid(pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

// Waits (at most 120 s) until `dir` holds a checkpoint numbered `seq` or higher.
bool wait_for_checkpoint(const std::string& dir, int64_t seq) {
  for (int k = 0; k < 12000; ++k) {
    const auto files = list_checkpoints(dir);
    if (!files.empty() && files[0].first >= seq) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

TEST(Cli, SigtermCheckpointsAndResumeFinishesTheSameRun) {
  TempDir tmp("sig");
  const std::string data = tmp / "data";
  ASSERT_EQ(run_program("synth --out " + data + " --seed 3 --users 200 --items 150").status, 0);
  // Long enough pretraining that the signal lands inside it, with margin on fast machines.
  const std::string args =
      "train --method painvrl --data " + data + tiny_args() + " pretrain_epochs=100 --out ";
  const std::string want = tmp / "full";
  ASSERT_EQ(run_program(args + want).status, 0);

  const std::string got = tmp / "part";
  const pid_t pid = spawn_program(args + got, tmp / "part.log");
  ASSERT_TRUE(wait_for_checkpoint(got, 2));
  ::kill(pid, SIGTERM);
  EXPECT_EQ(wait_status(pid), kExitInterrupted) << read_bytes(tmp / "part.log");
  const std::string log = read_bytes(tmp / "part.log");
  EXPECT_NE(log.find("painvrl train --resume " + got), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(got + "/summary.json"));
  const auto r = run_program("train --resume " + got);
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("resuming " + got + " from"), std::string::npos) << r.output;
  expect_same_run(want, got, "SIGTERM");
  // A finished run has nothing to resume.
  const auto again = run_program("train --resume " + got);
  EXPECT_EQ(again.status, 0);
  EXPECT_NE(again.output.find("complete"), std::string::npos) << again.output;

  // A corrupted newest checkpoint: the older one is used, with a warning naming the file.
  const std::string bad = tmp / "bad";
  const pid_t pid2 = spawn_program(args + bad, tmp / "bad.log");
  ASSERT_TRUE(wait_for_checkpoint(bad, 3));
  ::kill(pid2, SIGTERM);
  EXPECT_EQ(wait_status(pid2), kExitInterrupted);
  const auto files = list_checkpoints(bad);
  ASSERT_EQ(files.size(), 2u);
  std::string bytes = read_bytes(files[0].second);
  bytes[40] = char(bytes[40] ^ 0x10);
  test::write_file(files[0].second, bytes);
  const auto r2 = run_program("train --resume " + bad);
  ASSERT_EQ(r2.status, 0) << r2.output;
  EXPECT_NE(r2.output.find("checkpoint refused: " + files[0].second), std::string::npos)
      << r2.output;
  EXPECT_NE(r2.output.find("resuming from the older checkpoint " + files[1].second),
            std::string::npos)
      << r2.output;
  expect_same_run(want, bad, "corrupted newest");

  // A second signal exits at once (128 + SIGINT) unless the first already finished; either way
  // the checkpoints stay usable and resume ends the same.
  const std::string twice = tmp / "twice";
  const pid_t pid3 = spawn_program(args + twice, tmp / "twice.log");
  ASSERT_TRUE(wait_for_checkpoint(twice, 2));
  ::kill(pid3, SIGTERM);
  for (int k = 0;
       k < 1000 && read_bytes(tmp / "twice.log").find("stop requested") == std::string::npos; ++k) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ::kill(pid3, SIGINT);
  const int st = wait_status(pid3);
  EXPECT_TRUE(st == 128 + SIGINT || st == kExitInterrupted) << st;
  const auto r3 = run_program("train --resume " + twice);
  ASSERT_EQ(r3.status, 0) << r3.output;
  expect_same_run(want, twice, "two signals");
}

// A full disk (here a file-size limit of 20 KB, smaller than any checkpoint with parameters)
// stops the run with status 1 naming the file; the earlier checkpoint stays usable and no
// temporary file is left behind.
TEST(Cli, FullDiskWhileCheckpointingKeepsThePreviousCheckpoint) {
  TempDir tmp("full");
  const std::string data = tmp / "data";
  ASSERT_EQ(run_program("synth --out " + data + " --seed 3 --users 200 --items 150").status, 0);
  const std::string args = "train --method painvrl --data " + data + tiny_args() + " --out ";
  const std::string want = tmp / "want";
  ASSERT_EQ(run_program(args + want).status, 0);
  const std::string got = tmp / "got";
  const std::string cmd = "trap '' XFSZ; ulimit -f 40; exec " + std::string(PAINVRL_BIN) + " " +
                          args + got + " > " + (tmp / "got.log") + " 2>&1";
  const int st = std::system(("/bin/sh -c \"" + cmd + "\"").c_str());
  ASSERT_TRUE(WIFEXITED(st));
  EXPECT_EQ(WEXITSTATUS(st), 1) << read_bytes(tmp / "got.log");
  const std::string log = read_bytes(tmp / "got.log");
  EXPECT_NE(log.find("cannot write " + got + "/checkpoint-000001.ckpt"), std::string::npos) << log;
  for (const auto& e : fs::directory_iterator(got)) {
    EXPECT_EQ(e.path().string().find(".tmp."), std::string::npos) << e.path();
  }
  const auto files = list_checkpoints(got);
  ASSERT_EQ(files.size(), 1u);
  EXPECT_EQ(files[0].first, 0);
  const auto r = run_program("train --resume " + got);
  ASSERT_EQ(r.status, 0) << r.output;
  expect_same_run(want, got, "after a full disk");
}

TEST(Cli, DivergenceExitsThreeNamingTheStep) {
  TempDir tmp("div");
  const std::string data = tmp / "data";
  ASSERT_EQ(run_program("synth --out " + data + " --seed 3 --users 100 --items 80").status, 0);
  const auto r = run_program("train --method ultragcn --data " + data + " --out " + (tmp / "run") +
                             " --set init_std=1e30 threads=1");
  EXPECT_EQ(r.status, kExitDiverged) << r.output;
  EXPECT_NE(r.output.find("baseline epoch 0 step 0: the training loss is not finite"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("checkpoint-000000.ckpt"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(tmp / "run/summary.json"));
}

TEST(Cli, ResumeRefusesConfigChanges) {
  TempDir tmp("rc");
  for (const std::string extra : {" --set lr=1", " --method painvrl", " --out x"}) {
    const auto r = run_program("train --resume " + (tmp / "run") + extra);
    EXPECT_EQ(r.status, 1) << extra << r.output;
    EXPECT_NE(r.output.find("--resume"), std::string::npos) << r.output;
  }
}

}  // namespace
}  // namespace painvrl
