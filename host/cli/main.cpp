// The `painvrl` command line: train (and --resume), recommend, export, sweep, debug-step, split,
// synth, inspect, keys, presets.
// Exit status: 0 success, 1 bad input (the message names the file, line or field), 2 internal
// error, 3 training diverged (a non-finite loss, gradient or mask), 75 stopped by SIGINT/SIGTERM
// with the state checkpointed (continue with --resume), 128 + signal after a second signal.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "painvrl/cli/commands.h"
#include "painvrl/cli/serve.h"
#include "painvrl/cli/sweep.h"
#include "painvrl/data/error.h"
#include "painvrl/data/io.h"
#include "painvrl/data/synth.h"
#include "painvrl/pipeline/checkpoint.h"
#include "painvrl/pipeline/config.h"
#include "painvrl/pipeline/signals.h"
#include "painvrl/pipeline/trainer.h"

using namespace painvrl;

namespace {

// OpenMP threads that spin-wait at barriers slow a run many times over when the cores are
// shared with another busy process (issue 18: 37x on two cores). libgomp reads OMP_WAIT_POLICY
// when it is loaded, before main, so when the user has not chosen a policy the program sets
// PASSIVE (threads sleep at barriers) and executes itself once more. An explicit
// OMP_WAIT_POLICY (e.g. ACTIVE on a dedicated machine) is left as it is.
void ensure_passive_openmp(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY")) return;
  if (setenv("OMP_WAIT_POLICY", "PASSIVE", 1) != 0) return;
  execv("/proc/self/exe", argv);  // returns only when it failed: run with the default policy
}

// After a command-line error: an option that is really a config key (`train --epochs 3`) gets a
// hint toward --set, since config keys are not options.
bool is_option(CLI::App* app, const std::string& flag) {
  if (app->get_option_no_throw(flag)) return true;
  for (CLI::App* sub : app->get_subcommands([](CLI::App*) { return true; })) {
    if (is_option(sub, flag)) return true;
  }
  return false;
}

void print_set_hint(CLI::App& app, int argc, char** argv) {
  for (int k = 1; k < argc; ++k) {
    const std::string arg = argv[k];
    if (arg.rfind("--", 0) != 0 || arg.size() < 3) continue;
    const std::string flag = arg.substr(0, arg.find('='));
    if (is_option(&app, flag)) continue;  // --method, --seed, ... are options too
    std::string name = flag.substr(2);
    std::replace(name.begin(), name.end(), '-', '_');
    for (const auto& [key, help] : config_keys()) {
      if (key != name) continue;
      std::string value = arg.find('=') != std::string::npos ? arg.substr(arg.find('=') + 1)
                          : k + 1 < argc                     ? std::string(argv[k + 1])
                                                             : std::string("VALUE");
      std::fprintf(stderr,
                   "hint: `%s` is a config key, not an option; set it with --set %s=%s "
                   "(`painvrl keys` lists the keys)\n",
                   name.c_str(), name.c_str(), value.c_str());
      return;
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  ensure_passive_openmp(argv);
  CLI::App app{"painvrl: PaInvRL and UltraGCN trainer for multimodal recommendation"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "painvrl 0.1.0");

  // train
  CLI::App* train = app.add_subcommand("train", "train a model and evaluate it by full ranking");
  std::string data_dir, out_dir, preset, config_file;
  std::string method;
  std::vector<std::string> overrides;
  bool overwrite = false, quiet = false;
  std::string resume_dir;
  train->add_option("--data", data_dir,
                    "dataset directory (with --resume: only if it moved; its content must match)");
  train->add_option("--method", method,
                    "ultragcn | ultragcn-mm | mostpop | invrl | painvrl (config key method)");
  train->add_option("--preset", preset, "shipped preset: paper | invrl | ultragcn-ml1m");
  std::string objective;
  bool no_attention = false;
  train->add_option("--objective", objective, "pareto | erm | irm (config key objective)");
  std::string device;
  train->add_option("--device", device,
                    "cpu | cuda | auto (config key device; auto: the CPU until the CUDA backend "
                    "has passed its device check; cuda: refused until then unless "
                    "PAINVRL_UNVERIFIED_CUDA=1)");
  train->add_flag("--no-attention", no_attention, "drop the attention MLPs (attention = false)");
  bool deterministic = false;
  train->add_flag("--deterministic", deterministic,
                  "CUDA backend: gradient rows summed in a fixed order instead of by atomics, "
                  "bit-identical runs (config key deterministic; the CPU always is)");
  train->add_option("--config", config_file, "TOML config file (applied after the preset)");
  train->add_option("--set", overrides, "key=value overrides (applied last)")->take_all();
  train->add_option("--out", out_dir, "run directory to create");
  train->add_option("--resume", resume_dir,
                    "continue the run in this directory from its newest usable checkpoint, with "
                    "its recorded config (only --set threads=N may change)");
  train->add_flag("--overwrite", overwrite, "replace an existing run directory");
  train->add_flag("--quiet", quiet, "no progress output");

  // recommend
  CLI::App* recommend = app.add_subcommand(
      "recommend", "top-K unseen items per user, with scores, from a trained run");
  RecommendOptions ro;
  recommend->add_option("RUNDIR", ro.run_dir, "a completed run directory")->required();
  recommend->add_option("--user", ro.users, "user id (repeatable)")->take_all();
  recommend->add_option("--users", ro.users_file,
                        "file with one user id per line ('#' comments and a 'user' header are "
                        "skipped)");
  recommend->add_option("--k", ro.k, "items per user")->capture_default_str();
  recommend->add_option("--out", ro.out_file, "write the TSV here (default: standard output)");
  recommend->add_option("--data", ro.data_dir,
                        "dataset directory, if it moved since training (its content must match)");

  // export
  CLI::App* exp = app.add_subcommand(
      "export", "write a trained run's embeddings, W, b and mask as NPY with export.json");
  ExportOptions eo;
  exp->add_option("RUNDIR", eo.run_dir, "a completed run directory")->required();
  exp->add_option("--out", eo.out_dir, "directory to create (default: RUNDIR/export)");
  exp->add_option("--data", eo.data_dir,
                  "dataset directory, if it moved since training (its content must match)");
  exp->add_flag("--overwrite", eo.overwrite, "replace an existing export directory");

  // debug-step
  CLI::App* dbg = app.add_subcommand(
      "debug-step", "run one mask-generation step and dump every input and output (.npy + JSON)");
  std::string dbg_data, dbg_out, dbg_preset, dbg_config;
  std::vector<std::string> dbg_overrides;
  bool dbg_random_mask = false, dbg_float = false;
  std::vector<double> dbg_pareto_state;
  dbg->add_option("--data", dbg_data, "dataset directory (with features)")->required();
  dbg->add_option("--out", dbg_out, "dump directory to create")->required();
  dbg->add_option("--preset", dbg_preset, "shipped preset");
  dbg->add_option("--config", dbg_config, "TOML config file");
  dbg->add_option("--set", dbg_overrides, "key=value overrides")->take_all();
  dbg->add_flag("--random-mask", dbg_random_mask, "start from a mask uniform in [0.1, 0.9]");
  dbg->add_flag("--float", dbg_float,
                "compute the step in float32 (the GPU's arithmetic) instead of double (the CPU "
                "trainer's)");
  dbg->add_option("--pareto-state", dbg_pareto_state,
                  "RMS_E,RMS_I,STEPS: the mask stage's normalisation state before the step "
                  "(pareto_normalize initial | running; default: the stage's first step)")
      ->delimiter(',')
      ->expected(3);

  // split
  CLI::App* split = app.add_subcommand("split", "write the OOD/IID or cold-item protocol datasets");
  std::string split_data, split_out, split_protocol = "ood", split_env = "him", split_config;
  std::vector<std::string> split_overrides;
  double cold_fraction = 0.2;
  int test_env = -1;
  split->add_option("--data", split_data, "source dataset directory")->required();
  split->add_option("--out", split_out, "directory to create")->required();
  split->add_option("--protocol", split_protocol, "ood | cold")->capture_default_str();
  split
      ->add_option("--environments", split_env,
                   "him (HIM with E = 2) | file (the dataset's environments.tsv)")
      ->capture_default_str();
  split->add_option("--cold-fraction", cold_fraction, "share of cold items (cold protocol)")
      ->capture_default_str();
  split->add_option("--test-env", test_env,
                    "environment id of the OOD test (default: the smallest environment)");
  split->add_option("--config", split_config, "TOML config for the HIM backbone");
  split->add_option("--set", split_overrides, "key=value overrides")->take_all();

  // synth
  CLI::App* synth = app.add_subcommand("synth", "write a synthetic dataset with a planted shift");
  SynthOptions so;
  std::string synth_out;
  synth->add_option("--out", synth_out, "directory to create")->required();
  synth->add_option("--seed", so.seed, "generator seed")->capture_default_str();
  synth->add_option("--users", so.users, "users")->capture_default_str();
  synth->add_option("--items", so.items, "items")->capture_default_str();
  synth->add_option("--latent", so.latent, "latent preference dimension")->capture_default_str();
  synth->add_option("--invariant", so.invariant, "invariant feature columns")
      ->capture_default_str();
  synth->add_option("--spurious", so.spurious, "spurious feature columns")->capture_default_str();
  synth->add_option("--noise", so.noise, "noise feature columns")->capture_default_str();
  synth->add_option("--per-user", so.per_user, "mean interactions per user")->capture_default_str();
  synth->add_option("--minority", so.minority, "share of the minority environment")
      ->capture_default_str();
  synth
      ->add_option("--spurious-strength", so.spurious_strength,
                   "weight of the environment-dependent preference")
      ->capture_default_str();
  synth->add_option("--mid-share", so.mid_share, "share of a third, middle environment")
      ->capture_default_str();
  synth
      ->add_option("--mid-strength", so.mid_strength,
                   "spurious sign/strength of the middle environment")
      ->capture_default_str();
  synth
      ->add_option("--env-strengths", so.env_strengths,
                   "spurious strength of each environment (replaces the three above)")
      ->delimiter(',');
  synth
      ->add_option("--env-shares", so.env_shares,
                   "share of each environment, as --env-strengths (environment 0 takes the rest)")
      ->delimiter(',');
  synth
      ->add_option("--shared-taste", so.shared_taste,
                   "weight of the spurious taste all users share")
      ->capture_default_str();
  synth
      ->add_option("--personal-taste", so.personal_taste,
                   "weight of each user's own spurious taste (0: popularity-like)")
      ->capture_default_str();
  synth->add_option("--view-noise", so.view_noise, "noise of the invariant and spurious views")
      ->capture_default_str();
  synth
      ->add_option("--modalities", so.modalities,
                   "1 (one content file) or 3 (visual, acoustic = the spurious block, textual)")
      ->capture_default_str();
  synth->add_option("--temperature", so.temperature, "softmax temperature of item choice")
      ->capture_default_str();
  synth
      ->add_option("--protocol", so.protocol,
                   "ood (train on all but the OOD environment; OOD, IID and cold-item tests) | "
                   "mixed (every pair split at random)")
      ->capture_default_str();
  synth->add_option("--cold-fraction", so.cold_fraction, "share of cold items (protocol ood)")
      ->capture_default_str();
  synth->add_option("--test-env", so.test_env,
                    "the OOD environment (default: the lowest spurious strength)");

  // inspect
  CLI::App* inspect = app.add_subcommand(
      "inspect", "print a dataset's counts and feature widths, or a finished run's results");
  std::string inspect_dir;
  inspect->add_option("DIR", inspect_dir, "dataset or run directory")->required();

  // sweep
  CLI::App* sweep = app.add_subcommand("sweep", "many runs from one spec, locally or on Slurm");
  sweep->require_subcommand(1);
  std::string sweep_spec, sweep_dir, sweep_executor = "local", sweep_id;
  int sweep_jobs = 1;
  bool sweep_no_submit = false;
  CLI::App* sw_plan = sweep->add_subcommand("plan", "expand a sweep spec into run directories");
  sw_plan->add_option("SPEC", sweep_spec, "sweep spec (TOML)")->required();
  sw_plan->add_option("--out", sweep_dir, "sweep directory (created or updated)")->required();
  CLI::App* sw_run = sweep->add_subcommand("run", "run the runs that are not done");
  sw_run->add_option("DIR", sweep_dir, "sweep directory")->required();
  sw_run->add_option("--executor", sweep_executor, "local | slurm")->capture_default_str();
  sw_run->add_option("--jobs", sweep_jobs, "local workers (one GPU each when GPUs are present)")
      ->capture_default_str();
  sw_run->add_flag("--no-submit", sweep_no_submit, "slurm: write the sbatch script only");
  CLI::App* sw_status = sweep->add_subcommand("status", "state of every run");
  sw_status->add_option("DIR", sweep_dir, "sweep directory")->required();
  CLI::App* sw_collect = sweep->add_subcommand("collect", "results.csv and results.md");
  sw_collect->add_option("DIR", sweep_dir, "sweep directory")->required();
  CLI::App* sw_exec =
      sweep->add_subcommand("exec", "start, resume or skip one run (workers use it)");
  sw_exec->add_option("DIR", sweep_dir, "sweep directory")->required();
  sw_exec->add_option("ID", sweep_id, "run id")->required();

  CLI::App* keys = app.add_subcommand("keys", "list the config keys with their defaults");
  CLI::App* presets = app.add_subcommand("presets", "list the shipped presets");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    if (code != 0) print_set_hint(app, argc, argv);
    return code == 0 ? 0 : 1;
  }

  std::string run_dir;  // of train, for the messages below
  try {
    if (*train && !resume_dir.empty()) {
      set_quiet(quiet);
      if (!out_dir.empty() || overwrite || !method.empty() || !preset.empty() ||
          !config_file.empty() || !objective.empty() || no_attention || !device.empty() ||
          deterministic) {
        input_error(
            "--resume {}: the run continues with the config it recorded; drop --out, "
            "--overwrite, --method, --preset, --config, --objective, --device, --no-attention "
            "and --deterministic",
            resume_dir);
      }
      Config probe;
      for (const std::string& o : overrides) {
        if (o.rfind("threads=", 0) != 0) {
          input_error("--resume: only --set threads=N may change when resuming, not '{}'", o);
        }
        apply_override(probe, o);
      }
      run_dir = resume_dir;
      install_stop_handlers();
      resume_training(RunOptions{data_dir, resume_dir, false},
                      overrides.empty() ? -1 : probe.threads);
    } else if (*train) {
      set_quiet(quiet);
      if (data_dir.empty()) input_error("train: --data DIR is required (or --resume RUNDIR)");
      if (out_dir.empty()) input_error("train: --out RUNDIR is required (or --resume RUNDIR)");
      Config config;
      if (!preset.empty()) apply_preset(config, preset);
      if (!config_file.empty()) apply_toml(config, read_text_file(config_file), config_file);
      if (!method.empty()) config.method = method;
      if (!objective.empty()) config.objective = objective;
      if (!device.empty()) config.device = device;
      if (no_attention) config.attention = false;
      if (deterministic) config.deterministic = true;
      for (const std::string& o : overrides) apply_override(config, o);
      run_dir = out_dir;
      install_stop_handlers();
      run_training(config, RunOptions{data_dir, out_dir, overwrite});
    } else if (*recommend) {
      run_recommend(ro);
    } else if (*exp) {
      run_export(eo);
    } else if (*dbg) {
      Config config;
      config.method = "painvrl";
      if (!dbg_preset.empty()) apply_preset(config, dbg_preset);
      if (!dbg_config.empty()) apply_toml(config, read_text_file(dbg_config), dbg_config);
      for (const std::string& o : dbg_overrides) apply_override(config, o);
      run_debug_step(config, dbg_data, dbg_out, dbg_random_mask, !dbg_float, dbg_pareto_state);
    } else if (*split) {
      Config config;
      if (!split_config.empty()) apply_toml(config, read_text_file(split_config), split_config);
      for (const std::string& o : split_overrides) apply_override(config, o);
      run_split(config, split_data, split_out, split_protocol, split_env, cold_fraction, test_env);
    } else if (*synth) {
      write_synthetic_dataset(synth_out, so);
      std::fprintf(stderr, "wrote synthetic dataset %s\n", synth_out.c_str());
    } else if (*inspect) {
      if (std::filesystem::exists(inspect_dir + "/summary.json")) {
        inspect_run(inspect_dir);
      } else {
        inspect_dataset(inspect_dir);
      }
    } else if (*sw_plan) {
      sweep_plan(sweep_spec, sweep_dir);
    } else if (*sw_run) {
      if (sweep_executor == "local") {
        sweep_run_local(sweep_dir, sweep_jobs);
      } else if (sweep_executor == "slurm") {
        sweep_run_slurm(sweep_dir, !sweep_no_submit);
      } else {
        input_error("--executor {}: expected local or slurm", sweep_executor);
      }
    } else if (*sw_status) {
      sweep_status(sweep_dir);
    } else if (*sw_collect) {
      sweep_collect(sweep_dir);
    } else if (*sw_exec) {
      run_dir = sweep_dir + "/runs/" + sweep_id + "/out";
      install_stop_handlers();
      return sweep_exec(sweep_dir, sweep_id);
    } else if (*keys) {
      const std::string defaults = to_toml(Config{});
      std::printf("%s\n", defaults.c_str());
      for (const auto& [name, help] : config_keys()) {
        std::printf("%-20s %s\n", name.c_str(), help.c_str());
      }
    } else if (*presets) {
      for (const auto& [name, text] : shipped_presets()) std::printf("%s\n", name.c_str());
    }
  } catch (const InputError& e) {
    log_final(fmt::format("error: {}", e.what()));
    return 1;
  } catch (const Interrupted& e) {
    if (run_dir.empty()) {  // sweep run: its message says how to go on
      log_final(fmt::format("interrupted: {}", e.what()));
    } else {
      log_final(fmt::format("interrupted: {}\ncontinue with: painvrl train --resume {}", e.what(),
                            run_dir));
    }
    return kExitInterrupted;
  } catch (const Diverged& e) {
    const auto saved = list_checkpoints(run_dir);
    log_final(fmt::format("diverged: {}\nthe last good checkpoint: {}", e.what(),
                          saved.empty() ? "none" : saved.front().second));
    return kExitDiverged;
  } catch (const std::exception& e) {
    log_final(fmt::format("internal error: {}", e.what()));
    return 2;
  }
  return 0;
}
