// `painvrl recommend` and `painvrl export`: load a completed run (summary.json, config.toml,
// model.npy with the best-validation parameters, mask.npy) and the dataset it was trained on,
// then rank unseen items per user or write the learned tables as NPY.
// Scores (Eq. 15): s(u, i) = <Pt_u, T_i> + <Pf_u, W (m * f_i) + b>, computed with the same CPU
// functions evaluation uses (cpu::build_item_rows, cpu::score_users), so a recommendation list is
// exactly the ranking the run's test metrics were computed from.
#include "painvrl/cli/serve.h"

#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <numeric>

#include "painvrl/backend/model.h"
#include "painvrl/cpu/ultragcn_loss.h"
#include "painvrl/data/dataset.h"
#include "painvrl/data/error.h"
#include "painvrl/data/io.h"
#include "painvrl/data/npy.h"
#include "painvrl/data/output_dir.h"
#include "painvrl/pipeline/config.h"
#include "painvrl/pipeline/stages.h"
#include "painvrl/pipeline/trainer.h"

namespace painvrl {
namespace {

namespace fs = std::filesystem;

struct TrainedRun {
  std::string method;
  nlohmann::json summary;
  Config config;
  ParamLayout layout;
  std::vector<float> params;  // (layout.total,) best-validation parameters; empty for mostpop
  std::vector<float> mask;    // (d,) invariant methods only
  Dataset data;
  std::vector<float> item_features;  // (n_items, d) m * f, content models only
};

template <class T>
T summary_field(const nlohmann::json& j, const std::string& key, const std::string& path) {
  if (!j.contains(key)) input_error("{}: field '{}' is missing", path, key);
  try {
    return j.at(key).get<T>();
  } catch (const nlohmann::json::exception&) {
    input_error("{}: field '{}' has the wrong type", path, key);
  }
}

// Loads everything recommend and export need and checks that it fits together.
TrainedRun load_run(const std::string& run_dir, const std::string& data_override) {
  std::error_code ec;
  if (run_dir.empty()) input_error("a run directory is required");
  if (!fs::is_directory(run_dir, ec)) input_error("{}: no such run directory", run_dir);
  const std::string summary_path = run_dir + "/summary.json";
  if (!fs::exists(summary_path, ec)) {
    if (fs::exists(run_dir + "/config.toml", ec)) {
      input_error(
          "{}: the run has not finished (no summary.json); continue it with painvrl train "
          "--resume {}",
          run_dir, run_dir);
    }
    input_error("{}: not a painvrl run directory (no summary.json)", run_dir);
  }
  cpu::use_single_threaded_blas();  // the thread count evaluation scored with
  TrainedRun r;
  r.summary = read_json_file(summary_path);
  r.method = summary_field<std::string>(r.summary, "method", summary_path);
  const std::string config_path = run_dir + "/config.toml";
  apply_toml(r.config, read_text_file(config_path), config_path);

  if (r.method != "mostpop") {
    if (!r.summary.contains("model")) {
      input_error("{}: no 'model' entry (the run selected no model)", summary_path);
    }
    const nlohmann::json& m = r.summary["model"];
    const std::string where = summary_path + " model";
    r.layout = ParamLayout::make(
        summary_field<int32_t>(m, "n_users", where), summary_field<int32_t>(m, "n_items", where),
        summary_field<int32_t>(m, "dim", where), summary_field<int64_t>(m, "feat_dim", where),
        summary_field<bool>(m, "content", where));
    for (const auto& [key, value] : {std::pair<const char*, int64_t>{"pt", r.layout.pt},
                                     {"pf", r.layout.pf},
                                     {"t", r.layout.t},
                                     {"w", r.layout.w},
                                     {"b", r.layout.b},
                                     {"total", r.layout.total}}) {
      if (summary_field<int64_t>(m, key, where) != value) {
        input_error("{}: offset '{}' is {}, the layout implies {}", where, key,
                    m[key].get<int64_t>(), value);
      }
    }
    const std::string model_path = run_dir + "/model.npy";
    const NpyArray a = read_npy(model_path);
    if (a.shape.size() != 1 || a.shape[0] != r.layout.total) {
      input_error("{}: expected {} float values (the layout in summary.json), found shape {}",
                  model_path, r.layout.total, fmt::format("{}", fmt::join(a.shape, "x")));
    }
    r.params = a.to_float();
    for (size_t i = 0; i < r.params.size(); ++i) {
      if (!std::isfinite(r.params[i])) input_error("{}: value {} is not finite", model_path, i);
    }
    if (r.method == "painvrl" || r.method == "invrl") {
      const std::string mask_path = run_dir + "/mask.npy";
      const NpyArray mk = read_npy(mask_path);
      if (mk.shape.size() != 1 || mk.shape[0] != r.layout.feat_dim) {
        input_error("{}: expected a mask of {} values (d), found shape {}", mask_path,
                    r.layout.feat_dim, fmt::format("{}", fmt::join(mk.shape, "x")));
      }
      r.mask = mk.to_float();
    }
  }

  // The dataset: the one recorded (absolute path) unless --data says where it moved to.
  std::string data_dir = data_override;
  if (data_dir.empty()) {
    data_dir = r.summary.value("dataset_path", r.summary.value("dataset", std::string()));
  }
  LoadOptions load;
  load.normalize = r.config.normalize_features;
  load.load_features = r.layout.content;
  r.data = load_dataset(data_dir, load);
  if (r.method != "mostpop" &&
      (r.data.n_users != r.layout.n_users || r.data.n_items != r.layout.n_items ||
       (r.layout.content && r.data.feature_dim != r.layout.feat_dim))) {
    input_error(
        "dataset {} has {} users, {} items, d = {}; the model in {} was trained on {} users, {} "
        "items, d = {}",
        data_dir, r.data.n_users, r.data.n_items, r.data.feature_dim, run_dir, r.layout.n_users,
        r.layout.n_items, r.layout.feat_dim);
  }
  if (r.summary.contains("dataset_hash")) {
    const std::string want = r.summary["dataset_hash"].get<std::string>();
    const std::string have = fmt::format("{:016x}", dataset_content_hash(r.data));
    if (want != have) {
      input_error(
          "dataset {} has content hash {}, but the run {} was trained on content hash {}: not "
          "the same data",
          data_dir, have, run_dir, want);
    }
  }
  if (r.layout.content) {
    r.item_features = r.mask.empty() ? r.data.features
                                     : scale_columns(r.data.features, r.layout.feat_dim, r.mask);
  }
  return r;
}

// A user id from text; the error names `where` and the valid range.
int32_t parse_user(std::string_view text, int32_t n_users, const std::string& where) {
  int64_t u = -1;
  const auto [end, err] = std::from_chars(text.data(), text.data() + text.size(), u);
  if (err != std::errc() || end != text.data() + text.size()) {
    input_error("{}: '{}' is not a user id (expected an integer)", where, text);
  }
  if (u < 0 || u >= n_users) {
    input_error("{}: unknown user {} (the dataset has users 0 to {})", where, u, n_users - 1);
  }
  return int32_t(u);
}

std::vector<int32_t> read_users_file(const std::string& path, int32_t n_users) {
  const std::string text = read_text_file(path);
  std::vector<int32_t> users;
  size_t pos = 0;
  for (int64_t line_no = 1; pos < text.size(); ++line_no) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + pos, end - pos);
    pos = end + 1;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    while (!line.empty() && (line.front() == ' ' || line.front() == '\t')) line.remove_prefix(1);
    while (!line.empty() && (line.back() == ' ' || line.back() == '\t')) line.remove_suffix(1);
    if (line.empty() || line.front() == '#') continue;
    if (line_no == 1 && line == "user") continue;  // a header, as recommend writes
    users.push_back(parse_user(line, n_users, fmt::format("{} line {}", path, line_no)));
  }
  if (users.empty()) input_error("{}: no user ids in the file", path);
  return users;
}

}  // namespace

struct ServedModel::Impl {
  TrainedRun run;
  std::vector<float> item_rows;   // (n_items, D or 2D) [T_i, W (m * f_i) + b]; empty for mostpop
  std::vector<float> popularity;  // (n_items,) training counts, mostpop only
  UserItemCsr seen;               // the users' training items
};

ServedModel::ServedModel(const std::string& run_dir, const std::string& data_dir)
    : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.run = load_run(run_dir, data_dir);
  const TrainedRun& r = m.run;
  m.seen = UserItemCsr::build(r.data.train, r.data.n_users);
  if (r.method == "mostpop") {
    m.popularity.assign(size_t(r.data.n_items), 0.0f);
    for (size_t p = 0; p < r.data.train.size(); ++p)
      m.popularity[size_t(r.data.train.item[p])] += 1;
  } else {
    cpu::build_item_rows<float>(r.layout, r.params.data(),
                                r.layout.content ? r.item_features.data() : nullptr, m.item_rows);
  }
}

ServedModel::~ServedModel() = default;

const Dataset& ServedModel::dataset() const { return impl_->run.data; }
const std::string& ServedModel::method() const { return impl_->run.method; }
int64_t ServedModel::factor_width() const {
  const ParamLayout& L = impl_->run.layout;
  return impl_->run.method == "mostpop" ? 0 : (L.content ? 2 * L.dim : L.dim);
}

void ServedModel::factors(float* user_rows, float* item_rows) const {
  const TrainedRun& r = impl_->run;
  const ParamLayout& L = r.layout;
  const int64_t width = factor_width(), D = L.dim;
  for (int64_t u = 0; u < L.n_users; ++u) {
    std::copy_n(r.params.data() + L.pt + u * D, D, user_rows + u * width);
    if (L.content) std::copy_n(r.params.data() + L.pf + u * D, D, user_rows + u * width + D);
  }
  std::copy(impl_->item_rows.begin(), impl_->item_rows.end(), item_rows);
}

void ServedModel::recommend(const int32_t* users, int64_t n_users, int k, bool exclude_seen,
                            int32_t* items_out, float* scores_out) const {
  const Impl& m = *impl_;
  const TrainedRun& r = m.run;
  const int32_t n_items = r.data.n_items;
  if (k < 1 || k > n_items) {
    input_error("k = {}: expected 1 to {} (the number of items)", k, n_items);
  }
  for (int64_t b = 0; b < n_users; ++b) {
    if (users[b] < 0 || users[b] >= r.data.n_users) {
      input_error("unknown user {} (the dataset has users 0 to {})", users[b], r.data.n_users - 1);
    }
  }
  constexpr int64_t kBlock = 256;
  std::vector<float> scores;                          // (block, n_items)
  std::vector<int32_t> order;                         // (n_items,) unseen items of a user
  std::vector<uint8_t> excluded(size_t(n_items), 0);  // (n_items,) 1: in the user's training
  for (int64_t first = 0; first < n_users; first += kBlock) {
    const int64_t count = std::min<int64_t>(kBlock, n_users - first);
    scores.resize(size_t(count) * size_t(n_items));
    if (r.method == "mostpop") {
      for (int64_t b = 0; b < count; ++b) {
        std::copy(m.popularity.begin(), m.popularity.end(), scores.begin() + b * n_items);
      }
    } else {
      cpu::score_users<float>(r.layout, r.params.data(), m.item_rows, users + first, count,
                              scores.data());
    }
    for (int64_t b = 0; b < count; ++b) {
      const int32_t u = users[first + b];
      const float* s = scores.data() + b * n_items;
      if (exclude_seen) {
        for (int64_t p = m.seen.offsets[u]; p < m.seen.offsets[u + 1]; ++p)
          excluded[m.seen.items[p]] = 1;
      }
      order.clear();
      for (int32_t i = 0; i < n_items; ++i) {
        if (!excluded[size_t(i)]) order.push_back(i);
      }
      const size_t kept = std::min(order.size(), size_t(k));
      // Best first; equal scores by item id, so the list is the same on every machine.
      std::partial_sort(order.begin(), order.begin() + kept, order.end(),
                        [&](int32_t a, int32_t c) { return s[a] != s[c] ? s[a] > s[c] : a < c; });
      int32_t* items = items_out + (first + b) * k;
      float* row_scores = scores_out + (first + b) * k;
      for (size_t rank = 0; rank < size_t(k); ++rank) {
        items[rank] = rank < kept ? order[rank] : -1;
        row_scores[rank] = rank < kept ? s[order[rank]] : std::numeric_limits<float>::quiet_NaN();
      }
      if (exclude_seen) {
        for (int64_t p = m.seen.offsets[u]; p < m.seen.offsets[u + 1]; ++p)
          excluded[m.seen.items[p]] = 0;
      }
    }
  }
}

void run_recommend(const RecommendOptions& o) {
  if (o.users.empty() && o.users_file.empty()) {
    input_error("recommend: give --user U or --users FILE");
  }
  const ServedModel model(o.run_dir, o.data_dir);
  const Dataset& data = model.dataset();
  const int32_t n_items = data.n_items;
  if (o.k < 1 || o.k > n_items) {
    input_error("--k {}: expected 1 to {} (the number of items)", o.k, n_items);
  }
  std::vector<int32_t> users;
  for (int64_t u : o.users) {
    users.push_back(parse_user(std::to_string(u), data.n_users, "--user"));
  }
  if (!o.users_file.empty()) {
    const std::vector<int32_t> more = read_users_file(o.users_file, data.n_users);
    users.insert(users.end(), more.begin(), more.end());
  }
  std::vector<int32_t> items(users.size() * size_t(o.k));  // (users, k)
  std::vector<float> scores(items.size());                 // (users, k)
  model.recommend(users.data(), int64_t(users.size()), o.k, true, items.data(), scores.data());

  // With the dataset's id maps, each row also names the user and the item by the dataset's ids.
  const bool named = !data.user_ids.empty() || !data.item_ids.empty();
  auto user_name = [&](int32_t u) {
    return data.user_ids.empty() ? std::to_string(u) : data.user_ids[size_t(u)];
  };
  auto item_name = [&](int32_t i) {
    return data.item_ids.empty() ? std::to_string(i) : data.item_ids[size_t(i)];
  };
  std::string out =
      named ? "user\trank\titem\tscore\tuser_id\titem_id\n" : "user\trank\titem\tscore\n";
  for (size_t b = 0; b < users.size(); ++b) {
    for (int rank = 0; rank < o.k; ++rank) {
      const int32_t item = items[b * size_t(o.k) + size_t(rank)];
      if (item < 0) break;  // the user has fewer unseen items than k
      out += fmt::format("{}\t{}\t{}\t{:.9g}", users[b], rank + 1, item,
                         scores[b * size_t(o.k) + size_t(rank)]);
      out += named ? fmt::format("\t{}\t{}\n", user_name(users[b]), item_name(item)) : "\n";
    }
  }
  if (o.out_file.empty()) {
    std::fwrite(out.data(), 1, out.size(), stdout);
  } else {
    write_text_atomic(o.out_file, out);
  }
}

void run_export(const ExportOptions& o) {
  const TrainedRun r = load_run(o.run_dir, o.data_dir);
  if (r.method == "mostpop") {
    input_error("{}: a mostpop run has no learned parameters to export", o.run_dir);
  }
  const std::string out = o.out_dir.empty() ? o.run_dir + "/export" : o.out_dir;
  std::error_code ec;
  // Not the dataset or anything holding it, nor the run itself; --overwrite replaces only an
  // export painvrl wrote (the default, RUN/export, lies inside the run: that is allowed).
  check_output_dir("--out", out, {r.data.dir}, o.overwrite, "export", is_export_entry);
  if (fs::weakly_canonical(fs::absolute(o.run_dir)) == fs::weakly_canonical(fs::absolute(out)) ||
      fs::weakly_canonical(fs::absolute(o.run_dir))
              .lexically_relative(fs::weakly_canonical(fs::absolute(out)))
              .native()
              .rfind("..", 0) != 0) {
    input_error("--out {}: is or holds the run {}; choose a directory apart from it", out,
                o.run_dir);
  }
  // Everything goes to a directory beside the destination, renamed into place at the end.
  const std::string tmp = temp_path_for(out);
  fs::create_directories(tmp, ec);
  if (ec) input_error("--out {}: cannot create {}: {}", out, tmp, ec.message());
  try {
    const ParamLayout& L = r.layout;
    const int64_t D = L.dim, d = L.feat_dim;
    const float* p = r.params.data();
    nlohmann::json files = nlohmann::json::object();
    auto put = [&](const std::string& name, const float* data, std::vector<int64_t> shape,
                   const std::string& what) {
      write_npy(tmp + "/" + name, data, shape);
      files[name] = {{"shape", shape}, {"holds", what}};
    };
    put("user_id_embeddings.npy", p + L.pt, {L.n_users, D}, "Pt, the users' ID embeddings");
    put("item_id_embeddings.npy", p + L.t, {L.n_items, D}, "T, the items' ID embeddings");
    std::string score = "s(u, i) = <Pt_u, T_i>";
    if (L.content) {
      put("user_content_embeddings.npy", p + L.pf, {L.n_users, D},
          "Pf, the users' content embeddings");
      put("W.npy", p + L.w, {D, d}, "W, the content projection");
      put("b.npy", p + L.b, {D}, "b, the content projection's bias");
      std::vector<float> rows;  // (n_items, 2D): [T_i, W (m * f_i) + b]
      cpu::build_item_rows<float>(L, p, r.item_features.data(), rows);
      std::vector<float> content(size_t(L.n_items) * size_t(D));  // (n_items, D)
      for (int64_t j = 0; j < L.n_items; ++j) {
        std::copy_n(rows.begin() + j * 2 * D + D, D, content.begin() + j * D);
      }
      put("item_content_embeddings.npy", content.data(), {L.n_items, D},
          r.mask.empty() ? "W f_i + b for every item" : "W (m * f_i) + b for every item");
      score += " + <Pf_u, item_content_i>";
    }
    if (!r.mask.empty()) put("mask.npy", r.mask.data(), {d}, "m, the learned feature mask");
    // The dataset's own ids of the rows, when it has id maps.
    auto put_ids = [&](const std::string& name, const std::vector<std::string>& ids,
                       const char* role) {
      if (ids.empty()) return;
      std::string text = fmt::format("row\t{}_id\n", role);
      for (size_t k = 0; k < ids.size(); ++k) text += fmt::format("{}\t{}\n", k, ids[k]);
      write_text_atomic(tmp + "/" + name, text);
      files[name] = {{"rows", ids.size()},
                     {"holds", fmt::format("the dataset's id of each {} row", role)}};
    };
    put_ids("user_ids.tsv", r.data.user_ids, "user");
    put_ids("item_ids.tsv", r.data.item_ids, "item");
    const nlohmann::json manifest = {
        {"run", fs::absolute(o.run_dir).lexically_normal().string()},
        {"method", r.method},
        {"dataset", r.data.dir},
        {"score", score + " (item_content_i = W (m * f_i) + b; m = 1 without a mask)"},
        {"exclude_seen", "items of the user's training split"},
        {"files", files}};
    write_text_atomic(tmp + "/export.json", manifest.dump(2) + "\n");
    mark_output_dir(tmp, "export");
    const std::string aside = move_aside("--out", out);  // the old export, removed last
    fs::rename(tmp, out, ec);
    if (ec) {
      if (!aside.empty()) fs::rename(aside, out, ec);
      input_error("--out {}: cannot rename {} into place: {}", out, tmp, ec.message());
    }
    remove_replaced(aside);
  } catch (...) {
    std::error_code ignore;
    fs::remove_all(tmp, ignore);
    throw;
  }
  std::fprintf(stderr, "exported %s to %s\n", o.run_dir.c_str(), out.c_str());
}

}  // namespace painvrl
