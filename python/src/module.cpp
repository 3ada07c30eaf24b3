// painvrl._painvrl: the Python package's face of the engine (nanobind). It calls the same
// functions as the command line, so a run from Python is the run the CLI would make: training
// (run_training, resume_training, with the GIL released and SIGINT/SIGTERM turned into the
// engine's checkpoint-and-stop while it runs), the dataset loader with its checks, and
// ServedModel for recommendations and factor tables. Errors become Python exceptions with the
// engine's message: InputError -> ValueError, Interrupted -> KeyboardInterrupt, Diverged ->
// painvrl.DivergedError (a RuntimeError).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/function.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>
#include <signal.h>

#include <cstring>

#include "painvrl/cli/serve.h"
#include "painvrl/data/dataset.h"
#include "painvrl/data/error.h"
#include "painvrl/data/synth.h"
#include "painvrl/pipeline/checkpoint.h"
#include "painvrl/pipeline/config.h"
#include "painvrl/pipeline/signals.h"
#include "painvrl/pipeline/trainer.h"

namespace nb = nanobind;
using namespace painvrl;

namespace {

nb::object g_diverged;  // painvrl.DivergedError, set at import

// The engine's stop handlers for the length of a call (Python's own come back after it), and
// its log lines to `callback` under the GIL.
class EngineCall {
 public:
  explicit EngineCall(nb::object callback) : callback_(std::move(callback)) {
    sigaction(SIGINT, nullptr, &old_int_);
    sigaction(SIGTERM, nullptr, &old_term_);
    request_stop_for_testing(0);
    install_stop_handlers();
    set_quiet(true);  // the callback (or log.txt) has every line
    if (!callback_.is_none()) {
      set_log_sink([this](const std::string& line) {
        nb::gil_scoped_acquire gil;
        try {
          callback_(line);
        } catch (nb::python_error& e) {
          e.discard_as_unraisable("painvrl callback");
        }
      });
    }
  }
  ~EngineCall() {
    set_log_sink({});
    set_quiet(false);
    request_stop_for_testing(0);
    sigaction(SIGINT, &old_int_, nullptr);
    sigaction(SIGTERM, &old_term_, nullptr);
  }

 private:
  nb::object callback_;
  struct sigaction old_int_ {
  }, old_term_{};
};

template <class F>
void run_engine(nb::object callback, F&& body) {
  EngineCall call(std::move(callback));
  nb::gil_scoped_release release;
  body();
}

Config config_from(const std::string& preset, const std::string& toml_text) {
  Config c;
  if (!preset.empty()) apply_preset(c, preset);
  if (!toml_text.empty()) apply_toml(c, toml_text, "config");
  validate(c);
  return c;
}

using Pairs = nb::ndarray<nb::numpy, int32_t, nb::shape<-1, 2>>;
using Matrix = nb::ndarray<nb::numpy, float, nb::shape<-1, -1>>;

Pairs pairs_array(const PairList& p) {
  auto* data = new int32_t[p.size() * 2];
  for (size_t k = 0; k < p.size(); ++k) {
    data[2 * k] = p.user[k];
    data[2 * k + 1] = p.item[k];
  }
  nb::capsule owner(data, [](void* d) noexcept { delete[] static_cast<int32_t*>(d); });
  return Pairs(data, {p.size(), 2}, owner);
}

template <class T>
nb::ndarray<nb::numpy, T> owned(std::vector<T>&& v, std::initializer_list<size_t> shape) {
  auto* held = new std::vector<T>(std::move(v));
  nb::capsule owner(held, [](void* d) noexcept { delete static_cast<std::vector<T>*>(d); });
  return nb::ndarray<nb::numpy, T>(held->data(), shape, owner);
}

}  // namespace

NB_MODULE(_painvrl, m) {
  m.doc() = "The painvrl engine (C++): training, loading and serving; see the painvrl package.";
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const InputError& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const Interrupted& e) {
      PyErr_SetString(PyExc_KeyboardInterrupt, e.what());
    } catch (const Diverged& e) {
      PyErr_SetString(g_diverged.is_valid() ? g_diverged.ptr() : PyExc_RuntimeError, e.what());
    }
  });
  m.def(
      "_set_diverged_error", [](nb::object cls) { g_diverged = std::move(cls); },
      "Registers the exception class a diverged run raises.");

  m.def(
      "train",
      [](const std::string& data_dir, const std::string& out_dir, const std::string& preset,
         const std::string& config_toml, bool overwrite, nb::object callback) {
        const Config c = config_from(preset, config_toml);
        run_engine(std::move(callback), [&] {
          run_training(c, RunOptions{data_dir, out_dir, overwrite});
        });
      },
      nb::arg("data_dir"), nb::arg("out_dir"), nb::arg("preset") = "", nb::arg("config_toml") = "",
      nb::arg("overwrite") = false, nb::arg("callback") = nb::none(),
      "Trains as `painvrl train --data DATA --out OUT [--preset P] --config TOML` does.");
  m.def(
      "resume",
      [](const std::string& run_dir, int threads, nb::object callback) {
        run_engine(std::move(callback), [&] {
          resume_training(RunOptions{"", run_dir, false}, threads);
        });
      },
      nb::arg("run_dir"), nb::arg("threads") = -1, nb::arg("callback") = nb::none(),
      "Continues a stopped run from its newest checkpoint, as `painvrl train --resume`.");
  m.def(
      "check_config",
      [](const std::string& preset, const std::string& config_toml) {
        return to_toml(config_from(preset, config_toml));
      },
      nb::arg("preset") = "", nb::arg("config_toml") = "",
      "The resolved config as TOML; raises ValueError naming a bad key or value.");
  m.def("config_keys", &config_keys, "Every config key with its description.");

  m.def(
      "synth",
      [](const std::string& out_dir, uint64_t seed, int32_t users, int32_t items) {
        SynthOptions o;
        o.seed = seed;
        o.users = users;
        o.items = items;
        nb::gil_scoped_release release;
        write_synthetic_dataset(out_dir, o);
      },
      nb::arg("out_dir"), nb::arg("seed") = SynthOptions{}.seed,
      nb::arg("users") = SynthOptions{}.users, nb::arg("items") = SynthOptions{}.items,
      "Writes `painvrl synth`'s planted dataset (its defaults unless told) into out_dir.");
  m.def(
      "load_dataset",
      [](const std::string& dir) {
        Dataset d;
        {
          nb::gil_scoped_release release;
          d = load_dataset(dir);
        }
        nb::dict out;
        out["name"] = d.name;
        out["n_users"] = d.n_users;
        out["n_items"] = d.n_items;
        out["train"] = pairs_array(d.train);
        out["valid"] = pairs_array(d.valid);
        out["test"] = pairs_array(d.test);
        out["feature_dim"] = d.feature_dim;
        if (d.feature_dim > 0) {
          out["features"] =
              owned(std::move(d.features), {size_t(d.n_items), size_t(d.feature_dim)});
        } else {
          out["features"] = nb::none();
        }
        nb::list mods;
        for (const Modality& mod : d.modalities) {
          mods.append(nb::make_tuple(mod.name, mod.offset, mod.width));
        }
        out["modalities"] = mods;
        out["user_ids"] = d.user_ids;
        out["item_ids"] = d.item_ids;
        return out;
      },
      nb::arg("dir"), "Loads and checks a dataset directory as the CLI does; a dict of arrays.");

  nb::class_<ServedModel>(m, "Model", "A finished run loaded for serving.")
      .def(nb::init<const std::string&, const std::string&>(), nb::arg("run_dir"),
           nb::arg("data_dir") = "")
      .def_prop_ro("method", &ServedModel::method)
      .def_prop_ro("n_users", [](const ServedModel& s) { return s.dataset().n_users; })
      .def_prop_ro("n_items", [](const ServedModel& s) { return s.dataset().n_items; })
      .def(
          "recommend",
          [](const ServedModel& s, nb::ndarray<const int32_t, nb::ndim<1>, nb::c_contig> users,
             int k, bool exclude_seen) {
            const size_t n = users.shape(0);
            std::vector<int32_t> items(n * size_t(std::max(k, 0)));
            std::vector<float> scores(items.size());
            {
              nb::gil_scoped_release release;
              s.recommend(users.data(), int64_t(n), k, exclude_seen, items.data(), scores.data());
            }
            return std::make_pair(owned(std::move(items), {n, size_t(k)}),
                                  owned(std::move(scores), {n, size_t(k)}));
          },
          nb::arg("users"), nb::arg("k"), nb::arg("exclude_seen") = true,
          "Top-k items and scores of each user: two (len(users), k) arrays (int32, float32).")
      .def(
          "factors",
          [](const ServedModel& s) {
            const size_t w = size_t(s.factor_width());
            std::vector<float> users(size_t(s.dataset().n_users) * w);
            std::vector<float> items(size_t(s.dataset().n_items) * w);
            if (w > 0) s.factors(users.data(), items.data());
            return std::make_pair(owned(std::move(users), {size_t(s.dataset().n_users), w}),
                                  owned(std::move(items), {size_t(s.dataset().n_items), w}));
          },
          "(user_rows, item_rows), float32, whose dot products are the model's scores.");
}
