// Dataset loading: the LightGCN, `user item` TSV and MMRec .inter readers (over a whole file's
// text, read from a regular file or given in memory; std::from_chars), dataset.toml or layout
// detection, id range checks, duplicate and held-out pair removal, item features with
// per-modality L2 normalisation, and the LightGCN writer.
#include "painvrl/data/dataset.h"

#include <toml++/toml.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <initializer_list>
#include <iterator>
#include <limits>
#include <optional>
#include <string_view>
#include <utility>

#include "painvrl/data/error.h"
#include "painvrl/data/io.h"
#include "painvrl/data/npy.h"

namespace painvrl {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kIdLimit = int64_t{1} << 31;  // ids must be below 2^31

// Bytes as readable text for error messages: control and non-ASCII bytes as \xNN, cut short.
std::string printable(std::string_view bytes, size_t max_chars = 40) {
  std::string text;
  for (const char c : bytes) {
    if (text.size() >= max_chars) {
      text += "...";
      break;
    }
    const auto byte = static_cast<unsigned char>(c);
    if (byte >= 0x20 && byte < 0x7f) {
      text += c;
    } else if (byte == '\t') {
      text += "\\t";
    } else {
      text += fmt::format("\\x{:02x}", byte);
    }
  }
  return text;
}

std::string_view trim_spaces(std::string_view text) {
  while (!text.empty() && text.front() == ' ') text.remove_prefix(1);
  while (!text.empty() && text.back() == ' ') text.remove_suffix(1);
  return text;
}

bool is_blank(std::string_view line) {
  return std::all_of(line.begin(), line.end(),
                     [](char c) { return c == ' ' || c == '\t' || c == '\v' || c == '\f'; });
}

// Splits a buffer into lines; "\r\n" and "\n" both end a line and a missing final newline is
// fine, so CRLF files and files without a last newline read exactly like LF files.
class LineReader {
 public:
  explicit LineReader(std::string_view text) : text_(text) {
    if (text_.substr(0, 3) == "\xEF\xBB\xBF") text_.remove_prefix(3);  // UTF-8 byte order mark
  }

  bool next(std::string_view& line) {
    if (pos_ >= text_.size()) return false;
    const size_t end = text_.find('\n', pos_);
    const size_t stop = end == std::string_view::npos ? text_.size() : end;
    line = text_.substr(pos_, stop - pos_);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    pos_ = stop + 1;
    ++line_number_;
    return true;
  }

  int64_t line_number() const { return line_number_; }

 private:
  std::string_view text_;
  size_t pos_ = 0;
  int64_t line_number_ = 0;
};

// How ids of one role are checked: below `limit`, which was declared in `declared_in` (empty
// when the limit is the format's 2^31).
struct IdRule {
  const char* role = "user";  // "user" or "item"
  int64_t limit = kIdLimit;
  std::string declared_in;
};

// Where a token came from, for error messages.
struct TokenPlace {
  const std::string& path;
  int64_t line;
  size_t column;  // 1-based field number on the line
};

[[noreturn]] void bad_id(std::string_view token, const IdRule& rule, const TokenPlace& place) {
  const std::string where =
      fmt::format("{}:{}: column {} ({})", place.path, place.line, place.column, rule.role);
  if (token.empty()) {
    input_error("{} is empty; expected a non-negative integer {} id", where, rule.role);
  }
  const bool all_digits = std::all_of(token.begin() + (token[0] == '-' ? 1 : 0), token.end(),
                                      [](char c) { return c >= '0' && c <= '9'; });
  const bool has_digits = token.size() > (token[0] == '-' ? 1u : 0u);
  if (all_digits && has_digits && token[0] == '-') {
    input_error("{}: negative {} id '{}'; expected a non-negative integer", where, rule.role,
                printable(token));
  }
  if (all_digits && has_digits) {
    if (!rule.declared_in.empty()) {
      input_error("{}: {} id {} is out of range; expected an id below n_{}s = {} (declared in {})",
                  where, rule.role, printable(token), rule.role, rule.limit, rule.declared_in);
    }
    input_error("{}: {} id {} is too large; expected a non-negative integer below {}", where,
                rule.role, printable(token), kIdLimit);
  }
  input_error("{}: '{}' is not an integer {} id; expected a non-negative integer", where,
              printable(token), rule.role);
}

inline int32_t parse_id(std::string_view token, const IdRule& rule, const TokenPlace& place) {
  int64_t value = 0;
  const char* last = token.data() + token.size();
  const auto [stop, status] = std::from_chars(token.data(), last, value);
  if (status == std::errc() && stop == last && value >= 0 && value < rule.limit) {
    return static_cast<int32_t>(value);
  }
  bad_id(token, rule, place);
}

// A data file's whole text. Only regular files are read: a device or a pipe named in
// dataset.toml might never end (/dev/zero) or block.
std::string read_data_file(const std::string& path) {
  std::error_code error;
  const fs::file_status status = fs::status(path, error);
  if (fs::exists(status) && !fs::is_regular_file(status) && !fs::is_directory(status)) {
    input_error("{}: not a regular file; expected a data file", path);
  }
  return read_text_file(path);
}

inline bool is_token_space(char c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

// The readers parse a file's whole text; `path` names it in errors. `largest_user` (if given) is
// raised to the largest user id listed, with or without items.
PairList lightgcn_pairs(std::string_view text, const std::string& path, const IdRule& users,
                        const IdRule& items, int64_t* largest_user = nullptr) {
  PairList pairs;
  pairs.user.reserve(text.size() / 5);
  pairs.item.reserve(text.size() / 5);
  LineReader lines(text);
  std::string_view line;
  while (lines.next(line)) {
    size_t pos = 0, column = 0;
    int32_t user = 0;
    while (true) {
      while (pos < line.size() && is_token_space(line[pos])) ++pos;
      if (pos == line.size()) break;
      size_t end = pos;
      while (end < line.size() && !is_token_space(line[end])) ++end;
      const std::string_view token = line.substr(pos, end - pos);
      ++column;
      const TokenPlace place{path, lines.line_number(), column};
      if (column == 1) {
        user = parse_id(token, users, place);
        if (largest_user) *largest_user = std::max<int64_t>(*largest_user, user);
      } else {
        pairs.push(user, parse_id(token, items, place));
      }
      pos = end;
    }
  }
  return pairs;
}

// Splits a line on tabs into `fields` (reused between lines), trimming spaces around each.
void split_tabs(std::string_view line, std::vector<std::string_view>& fields) {
  fields.clear();
  size_t start = 0;
  while (true) {
    const size_t tab = line.find('\t', start);
    if (tab == std::string_view::npos) {
      fields.push_back(trim_spaces(line.substr(start)));
      return;
    }
    fields.push_back(trim_spaces(line.substr(start, tab - start)));
    start = tab + 1;
  }
}

std::string join_fields(const std::vector<std::string_view>& fields) {
  std::string text;
  for (size_t i = 0; i < fields.size(); ++i) {
    text += fmt::format("{}'{}'", i ? ", " : "", printable(fields[i]));
  }
  return text;
}

PairList tsv_pairs(std::string_view text, const std::string& path, const IdRule& users,
                   const IdRule& items) {
  LineReader lines(text);
  std::string_view line;
  std::vector<std::string_view> fields;
  if (!lines.next(line)) {
    input_error("{}: the file is empty; expected a header line 'user<TAB>item'", path);
  }
  split_tabs(line, fields);
  if (fields.size() != 2 || fields[0] != "user" || fields[1] != "item") {
    input_error("{}:1: expected the header line 'user<TAB>item' (tab separated), found '{}'", path,
                printable(line, 80));
  }
  PairList pairs;
  pairs.user.reserve(text.size() / 10);
  pairs.item.reserve(text.size() / 10);
  while (lines.next(line)) {
    if (is_blank(line)) continue;
    split_tabs(line, fields);
    if (fields.size() != 2) {
      input_error("{}:{}: expected 2 tab-separated columns (user, item), found {}: '{}'", path,
                  lines.line_number(), fields.size(), printable(line, 80));
    }
    const int32_t user = parse_id(fields[0], users, {path, lines.line_number(), 1});
    const int32_t item = parse_id(fields[1], items, {path, lines.line_number(), 2});
    pairs.push(user, item);
  }
  return pairs;
}

void inter_splits(std::string_view text, const std::string& path, PairList splits[3],
                  const IdRule& users, const IdRule& items) {
  LineReader lines(text);
  std::string_view line;
  std::vector<std::string_view> fields;
  if (!lines.next(line)) {
    input_error(
        "{}: the file is empty; expected a tab-separated header with the columns userID, "
        "itemID and x_label",
        path);
  }
  split_tabs(line, fields);
  const size_t column_count = fields.size();
  const char* required[3] = {"userID", "itemID", "x_label"};
  size_t index[3] = {0, 0, 0};
  for (int r = 0; r < 3; ++r) {
    const auto count = std::count(fields.begin(), fields.end(), std::string_view(required[r]));
    if (count == 0) {
      input_error(
          "{}:1: the header lacks the column '{}'; expected tab-separated columns "
          "including userID, itemID and x_label, found {}",
          path, required[r], join_fields(fields));
    }
    if (count > 1) input_error("{}:1: the header has the column '{}' twice", path, required[r]);
    index[r] = static_cast<size_t>(
        std::find(fields.begin(), fields.end(), std::string_view(required[r])) - fields.begin());
  }
  for (int s = 0; s < 3; ++s) {
    splits[s] = PairList();
    splits[s].user.reserve(text.size() / 24);
    splits[s].item.reserve(text.size() / 24);
  }
  while (lines.next(line)) {
    if (is_blank(line)) continue;
    split_tabs(line, fields);
    const int64_t line_number = lines.line_number();
    if (fields.size() != column_count) {
      input_error("{}:{}: expected {} tab-separated columns as in the header, found {}", path,
                  line_number, column_count, fields.size());
    }
    const int32_t user = parse_id(fields[index[0]], users, {path, line_number, index[0] + 1});
    const int32_t item = parse_id(fields[index[1]], items, {path, line_number, index[1] + 1});
    const std::string_view label = fields[index[2]];
    if (label.size() != 1 || label[0] < '0' || label[0] > '2') {
      input_error("{}:{}: column {} (x_label): '{}'; expected 0 (train), 1 (valid) or 2 (test)",
                  path, line_number, index[2] + 1, printable(label));
    }
    splits[label[0] - '0'].push(user, item);
  }
}

// ---- dataset.toml / layout detection -----------------------------------------------------------

struct DatasetSpec {
  std::string name;
  std::string format;
  std::string train, valid, test, file;  // paths (joined with the directory)
  std::optional<int64_t> n_users, n_items;
  bool normalize = true;
  std::string test_candidates = "all";
  std::vector<TestSet> test_sets;    // file joined with the directory
  std::vector<Modality> modalities;  // file joined with the directory
  std::string toml_path;             // empty when the layout was detected
  std::string user_ids, item_ids;    // id map files (may be empty)
};

size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

std::string suggestion(std::string_view key, const std::vector<std::string_view>& known) {
  std::string_view best;
  size_t best_distance = 3;  // suggest only close matches
  for (const std::string_view candidate : known) {
    // The distance is at least the difference in length: skip the search for a long key.
    const size_t length_difference = key.size() > candidate.size() ? key.size() - candidate.size()
                                                                   : candidate.size() - key.size();
    if (length_difference >= best_distance) continue;
    const size_t distance = edit_distance(key, candidate);
    if (distance < best_distance) {
      best_distance = distance;
      best = candidate;
    }
  }
  return best.empty() ? std::string() : fmt::format(" (did you mean '{}'?)", best);
}

std::string join_names(const std::vector<std::string_view>& names) {
  std::string text;
  for (size_t i = 0; i < names.size(); ++i) text += fmt::format("{}{}", i ? ", " : "", names[i]);
  return text;
}

const char* toml_type_name(toml::node_type type) {
  switch (type) {
    case toml::node_type::none:
      return "nothing";
    case toml::node_type::table:
      return "a table";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::string:
      return "a string";
    case toml::node_type::integer:
      return "an integer";
    case toml::node_type::floating_point:
      return "a float";
    case toml::node_type::boolean:
      return "a boolean";
    case toml::node_type::date:
      return "a date";
    case toml::node_type::time:
      return "a time";
    case toml::node_type::date_time:
      return "a date-time";
  }
  return "an unknown value";
}

// Reads DIR/dataset.toml into a spec; every key is checked by name and type.
class SpecReader {
 public:
  SpecReader(const std::string& dir, const std::string& toml_path)
      : dir_(dir), toml_path_(toml_path) {}

  DatasetSpec read() {
    const std::string text = read_data_file(toml_path_);
    toml::table root;
#if TOML_EXCEPTIONS
    try {
      root = toml::parse(text, std::string_view(toml_path_));
    } catch (const toml::parse_error& error) {
      const auto& begin = error.source().begin;
      input_error("{}:{}:{}: invalid TOML: {}", toml_path_, begin.line, begin.column,
                  error.description());
    }
#else
    toml::parse_result result = toml::parse(text, std::string_view(toml_path_));
    if (!result) {
      const auto& begin = result.error().source().begin;
      input_error("{}:{}:{}: invalid TOML: {}", toml_path_, begin.line, begin.column,
                  result.error().description());
    }
    root = std::move(result).table();
#endif
    DatasetSpec spec;
    spec.toml_path = toml_path_;
    static const std::vector<std::string_view> kKeys = {
        "name",     "format",          "train",    "valid",     "test",
        "file",     "n_users",         "n_items",  "normalize", "test_set",
        "modality", "test_candidates", "user_ids", "item_ids"};
    for (auto&& [key_object, node] : root) {
      const std::string_view key = key_object.str();
      if (key == "name") {
        spec.name = nonempty_string(node, key);
      } else if (key == "format") {
        spec.format = nonempty_string(node, key);
        if (spec.format != "lightgcn" && spec.format != "tsv" && spec.format != "inter") {
          input_error(
              "{}:{}: key 'format': unknown format '{}'; expected \"lightgcn\", \"tsv\" or "
              "\"inter\"",
              toml_path_, line_of(node), printable(spec.format));
        }
      } else if (key == "train") {
        spec.train = data_path(nonempty_string(node, key));
      } else if (key == "valid") {
        spec.valid = data_path(nonempty_string(node, key));
      } else if (key == "test") {
        spec.test = data_path(nonempty_string(node, key));
      } else if (key == "file") {
        spec.file = data_path(nonempty_string(node, key));
      } else if (key == "user_ids") {
        spec.user_ids = data_path(nonempty_string(node, key));
      } else if (key == "item_ids") {
        spec.item_ids = data_path(nonempty_string(node, key));
      } else if (key == "n_users") {
        spec.n_users = count_value(node, key);
      } else if (key == "n_items") {
        spec.n_items = count_value(node, key);
      } else if (key == "normalize") {
        const auto* value = node.as_boolean();
        if (!value) wrong_type(node, key, "a boolean (true or false)");
        spec.normalize = value->get();
      } else if (key == "modality") {
        read_modalities(node, spec.modalities);
      } else if (key == "test_candidates") {
        spec.test_candidates = candidates_value(node, key);
      } else if (key == "test_set") {
        read_test_sets(node, spec.test_sets);
      } else {
        input_error("{}:{}: unknown key '{}'{}; expected one of {}", toml_path_, line_of(node),
                    printable(key), suggestion(key, kKeys), join_names(kKeys));
      }
    }
    check_required(spec, root);
    return spec;
  }

 private:
  static int64_t line_of(const toml::node& node) { return node.source().begin.line; }

  [[noreturn]] void wrong_type(const toml::node& node, std::string_view key,
                               std::string_view expected) const {
    input_error("{}:{}: key '{}': expected {}, found {}", toml_path_, line_of(node), key, expected,
                toml_type_name(node.type()));
  }

  std::string nonempty_string(const toml::node& node, std::string_view key) const {
    const auto* value = node.as_string();
    if (!value) wrong_type(node, key, "a string");
    if (value->get().empty()) {
      input_error("{}:{}: key '{}' is empty; expected a non-empty string", toml_path_,
                  line_of(node), key);
    }
    return value->get();
  }

  int64_t count_value(const toml::node& node, std::string_view key) const {
    const auto* value = node.as_integer();
    if (!value) wrong_type(node, key, "an integer");
    const int64_t count = value->get();
    if (count < 1 || count >= kIdLimit) {
      input_error("{}:{}: key '{}' = {}; expected an integer from 1 to {}", toml_path_,
                  line_of(node), key, count, kIdLimit - 1);
    }
    return count;
  }

  std::string data_path(const std::string& file) const { return (fs::path(dir_) / file).string(); }

  std::string candidates_value(const toml::node& node, std::string_view key) const {
    const std::string v = nonempty_string(node, key);
    if (v != "all" && v != "cold") {
      input_error("{}:{}: key '{}' = \"{}\"; expected \"all\" or \"cold\"", toml_path_,
                  line_of(node), key, printable(v));
    }
    return v;
  }

  void read_test_sets(const toml::node& node, std::vector<TestSet>& sets) const {
    const auto* array = node.as_array();
    if (!array) wrong_type(node, "test_set", "an array of tables ([[test_set]] sections)");
    static const std::vector<std::string_view> kKeys = {"name", "file", "candidates"};
    for (const toml::node& element : *array) {
      const auto* table = element.as_table();
      if (!table) wrong_type(element, "test_set", "a table ([[test_set]] with name and file)");
      TestSet set;
      for (auto&& [key_object, value] : *table) {
        const std::string_view key = key_object.str();
        if (key == "name") {
          set.name = nonempty_string(value, "test_set.name");
        } else if (key == "file") {
          set.file = data_path(nonempty_string(value, "test_set.file"));
        } else if (key == "candidates") {
          set.candidates = candidates_value(value, "test_set.candidates");
        } else {
          input_error("{}:{}: unknown key 'test_set.{}'{}; expected name, file and candidates",
                      toml_path_, line_of(value), printable(key), suggestion(key, kKeys));
        }
      }
      if (set.name.empty() || set.file.empty()) {
        input_error("{}:{}: [[test_set]] needs both 'name' and 'file'", toml_path_,
                    line_of(element));
      }
      for (const TestSet& earlier : sets) {
        if (earlier.name == set.name) {
          input_error("{}:{}: two [[test_set]] sections are named '{}'; names must differ",
                      toml_path_, line_of(element), printable(set.name));
        }
      }
      sets.push_back(std::move(set));
    }
  }

  void read_modalities(const toml::node& node, std::vector<Modality>& modalities) const {
    const auto* array = node.as_array();
    if (!array) wrong_type(node, "modality", "an array of tables ([[modality]] sections)");
    static const std::vector<std::string_view> kModalityKeys = {"name", "file"};
    for (const toml::node& element : *array) {
      const auto* table = element.as_table();
      if (!table) wrong_type(element, "modality", "a table ([[modality]] with name and file)");
      Modality modality;
      bool has_file = false;
      for (auto&& [key_object, value] : *table) {
        const std::string_view key = key_object.str();
        if (key == "name") {
          modality.name = nonempty_string(value, "modality.name");
        } else if (key == "file") {
          modality.file = data_path(nonempty_string(value, "modality.file"));
          has_file = true;
        } else {
          input_error("{}:{}: unknown key 'modality.{}'{}; expected name and file", toml_path_,
                      line_of(value), printable(key), suggestion(key, kModalityKeys));
        }
      }
      if (!has_file) {
        input_error("{}:{}: [[modality]] lacks the required key 'file' (the .npy feature matrix)",
                    toml_path_, line_of(element));
      }
      if (modality.name.empty()) modality.name = fs::path(modality.file).stem().string();
      for (const Modality& earlier : modalities) {
        if (earlier.name == modality.name) {
          input_error("{}:{}: two [[modality]] sections are named '{}'; names must differ",
                      toml_path_, line_of(element), printable(modality.name));
        }
      }
      modalities.push_back(std::move(modality));
    }
  }

  void check_required(const DatasetSpec& spec, const toml::table& root) const {
    if (spec.format.empty()) {
      input_error("{}: missing required key 'format' (\"lightgcn\", \"tsv\" or \"inter\")",
                  toml_path_);
    }
    if (spec.format == "inter") {
      for (const char* key : {"train", "valid", "test"}) {
        if (root.contains(key)) {
          input_error(
              "{}:{}: key '{}' does not apply to format = \"inter\" (one file, split by "
              "x_label); use 'file'",
              toml_path_, line_of(*root.get(key)), key);
        }
      }
      if (spec.file.empty()) {
        input_error("{}: missing required key 'file' (the .inter file) for format = \"inter\"",
                    toml_path_);
      }
      if (root.contains("test_set")) {
        input_error("{}:{}: [[test_set]] applies to the lightgcn and tsv formats only", toml_path_,
                    line_of(*root.get("test_set")));
      }
      return;
    }
    if (root.contains("file")) {
      input_error(
          "{}:{}: key 'file' applies only to format = \"inter\"; format = \"{}\" uses "
          "train, valid and test",
          toml_path_, line_of(*root.get("file")), spec.format);
    }
    if (spec.train.empty()) {
      input_error("{}: missing required key 'train' for format = \"{}\"", toml_path_, spec.format);
    }
    if (spec.test.empty()) {
      input_error("{}: missing required key 'test' for format = \"{}\"", toml_path_, spec.format);
    }
  }

  const std::string& dir_;
  const std::string& toml_path_;
};

// A regular file (after symlinks); false when nothing is there. A path that exists but cannot be
// followed (a symlink loop, a permission) is an error naming it, not "missing".
bool is_file(const fs::path& path) {
  std::error_code error;
  const fs::file_status status = fs::status(path, error);
  if (error && error != std::errc::no_such_file_or_directory &&
      error != std::errc::not_a_directory) {
    input_error("{}: cannot be read: {}", path.string(), error.message());
  }
  return fs::is_regular_file(status);
}

DatasetSpec detect_layout(const std::string& dir) {
  const fs::path root(dir);
  DatasetSpec spec;
  auto in_dir = [&](const char* name) { return (root / name).string(); };
  if (is_file(root / "train.txt") && is_file(root / "test.txt")) {
    spec.format = "lightgcn";
    spec.train = in_dir("train.txt");
    spec.test = in_dir("test.txt");
    if (is_file(root / "val.txt")) spec.valid = in_dir("val.txt");
    return spec;
  }
  if (is_file(root / "train.tsv") && is_file(root / "test.tsv")) {
    spec.format = "tsv";
    spec.train = in_dir("train.tsv");
    spec.test = in_dir("test.tsv");
    if (is_file(root / "val.tsv")) spec.valid = in_dir("val.tsv");
    return spec;
  }
  std::vector<std::string> inter_files, entries;
  std::error_code error;
  for (fs::directory_iterator it(root, error), end; !error && it != end; it.increment(error)) {
    const std::string name = it->path().filename().string();
    entries.push_back(name);
    if (it->path().extension() == ".inter" && is_file(it->path())) inter_files.push_back(name);
  }
  std::sort(inter_files.begin(), inter_files.end());
  std::sort(entries.begin(), entries.end());
  if (inter_files.size() == 1) {
    spec.format = "inter";
    spec.file = in_dir(inter_files[0].c_str());
    if (is_file(root / "u_id_mapping.csv")) spec.user_ids = in_dir("u_id_mapping.csv");
    if (is_file(root / "i_id_mapping.csv")) spec.item_ids = in_dir("i_id_mapping.csv");
    // An MMRec directory keeps its features in *_feat.npy beside the .inter file, with no
    // declaration of which rows they hold: they are not read without a dataset.toml, and saying
    // nothing would train a model without content as if the features were in.
    std::vector<std::string> feature_files;
    for (const std::string& name : entries) {
      if (name.size() > 9 && name.compare(name.size() - 9, 9, "_feat.npy") == 0)
        feature_files.push_back(name);
    }
    if (!feature_files.empty()) {
      log_warn(fmt::format(
          "{}: an MMRec layout; its feature files ({}) are not read without a dataset.toml, so "
          "the run has no item features; convert it with tools/convert/from_mmrec.py --source "
          "{} --out DIR",
          dir, fmt::join(feature_files, ", "), dir));
    }
    return spec;
  }
  if (inter_files.size() > 1) {
    input_error(
        "{}: found {} .inter files ({}); expected a single one, or a dataset.toml naming "
        "it with file = \"...\"",
        dir, inter_files.size(), fmt::join(inter_files, ", "));
  }
  std::string hint;
  if (is_file(root / "val.tsv") && is_file(root / "test.tsv")) {
    hint =
        "; val.tsv and test.tsv exist but train.tsv does not (to train on val.tsv, write a "
        "dataset.toml with format = \"tsv\", train = \"val.tsv\", test = \"test.tsv\")";
  } else if (is_file(root / "train.txt") || is_file(root / "train.tsv")) {
    hint = "; a training file exists but its test file (test.txt or test.tsv) is missing";
  }
  std::string found = "it is empty";
  if (!entries.empty()) {
    const size_t shown = std::min<size_t>(entries.size(), 12);
    std::vector<std::string> listed(entries.begin(), entries.begin() + shown);
    found = fmt::format("it holds {}{}", fmt::join(listed, ", "),
                        shown < entries.size() ? fmt::format(" and {} more", entries.size() - shown)
                                               : std::string());
  }
  input_error(
      "{}: no dataset layout recognised: looked for dataset.toml, train.txt + test.txt "
      "(LightGCN text, val.txt optional), train.tsv + test.tsv (user/item tables, val.tsv "
      "optional) and a single *.inter file (MMRec); {}{}",
      dir, found, hint);
}

// ---- id maps -------------------------------------------------------------------------------

// An id map: a header line, then `original<TAB>our id` per line (MMRec's u_id_mapping.csv and
// i_id_mapping.csv). Every one of our ids below `count` once at most; ids the map leaves out keep
// their number as their name (with a warning).
std::vector<std::string> read_id_map(const std::string& path, const char* role, int32_t count) {
  const std::string text = read_data_file(path);
  std::vector<std::string> names(static_cast<size_t>(count));
  std::vector<uint8_t> named(static_cast<size_t>(count), 0);
  int64_t line_no = 0, entries = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line_no == 1 || line.empty()) continue;  // the header
    const size_t tab = line.rfind('\t');
    if (tab == std::string_view::npos || tab == 0) {
      input_error("{}:{}: expected `original id<TAB>{} id`, found '{}'", path, line_no, role,
                  printable(line.substr(0, 80)));
    }
    const std::string_view ours = line.substr(tab + 1);
    int64_t id = -1;
    const auto [p, ec] = std::from_chars(ours.data(), ours.data() + ours.size(), id);
    if (ec != std::errc() || p != ours.data() + ours.size() || id < 0) {
      input_error("{}:{}: column 2: '{}' is not a {} id (a non-negative integer)", path, line_no,
                  printable(ours.substr(0, 40)), role);
    }
    if (id >= count) {
      input_error("{}:{}: {} id {} is out of range: the dataset has {} {}s", path, line_no, role,
                  id, count, role);
    }
    if (named[size_t(id)]) {
      input_error("{}:{}: {} id {} is mapped twice", path, line_no, role, id);
    }
    named[size_t(id)] = 1;
    names[size_t(id)] = std::string(line.substr(0, tab));
    ++entries;
  }
  if (entries < count) {
    log_warn(fmt::format("{}: maps {} of the {} {}s; the others keep their number as their id",
                         path, entries, count, role));
    for (int32_t k = 0; k < count; ++k) {
      if (!named[size_t(k)]) names[size_t(k)] = std::to_string(k);
    }
  }
  return names;
}

// ---- cleaning ------------------------------------------------------------------------------

inline uint64_t pair_key(int32_t user, int32_t item) {
  return (uint64_t{static_cast<uint32_t>(user)} << 32) | static_cast<uint32_t>(item);
}

// Removes repeated pairs, keeping each first occurrence in order; returns how many were dropped.
// `sorted_keys` receives the distinct pair keys, sorted.
int64_t drop_duplicates(PairList& pairs, std::vector<uint64_t>& sorted_keys) {
  const size_t count = pairs.size();
  sorted_keys.resize(count);
  for (size_t p = 0; p < count; ++p) sorted_keys[p] = pair_key(pairs.user[p], pairs.item[p]);
  std::sort(sorted_keys.begin(), sorted_keys.end());
  const auto unique_end = std::unique(sorted_keys.begin(), sorted_keys.end());
  const auto dropped = static_cast<int64_t>(sorted_keys.end() - unique_end);
  sorted_keys.erase(unique_end, sorted_keys.end());
  if (dropped == 0) return 0;
  std::vector<char> seen(sorted_keys.size(), 0);
  size_t kept = 0;
  for (size_t p = 0; p < count; ++p) {
    const uint64_t key = pair_key(pairs.user[p], pairs.item[p]);
    const size_t slot = static_cast<size_t>(
        std::lower_bound(sorted_keys.begin(), sorted_keys.end(), key) - sorted_keys.begin());
    if (seen[slot]) continue;
    seen[slot] = 1;
    pairs.user[kept] = pairs.user[p];
    pairs.item[kept] = pairs.item[p];
    ++kept;
  }
  pairs.user.resize(kept);
  pairs.item.resize(kept);
  return dropped;
}

// Removes pairs whose key is in `train_keys` (sorted); returns how many were dropped.
int64_t drop_training_pairs(PairList& pairs, const std::vector<uint64_t>& train_keys) {
  size_t kept = 0;
  for (size_t p = 0; p < pairs.size(); ++p) {
    if (std::binary_search(train_keys.begin(), train_keys.end(),
                           pair_key(pairs.user[p], pairs.item[p]))) {
      continue;
    }
    pairs.user[kept] = pairs.user[p];
    pairs.item[kept] = pairs.item[p];
    ++kept;
  }
  const auto dropped = static_cast<int64_t>(pairs.size() - kept);
  pairs.user.resize(kept);
  pairs.item.resize(kept);
  return dropped;
}

int32_t max_id(const std::vector<int32_t>& ids) {
  return ids.empty() ? -1 : *std::max_element(ids.begin(), ids.end());
}

int64_t count_distinct(std::vector<int32_t> ids) {
  std::sort(ids.begin(), ids.end());
  return std::unique(ids.begin(), ids.end()) - ids.begin();
}

// L2-normalises columns [offset, offset + width) of each row; zero rows stay zero.
void normalize_block(std::vector<float>& features, int64_t rows, int64_t dim, int64_t offset,
                     int64_t width) {
  for (int64_t r = 0; r < rows; ++r) {
    float* row = features.data() + r * dim + offset;
    double squares = 0;
    for (int64_t c = 0; c < width; ++c) squares += double{row[c]} * row[c];
    if (squares <= 0) continue;
    const double scale = 1.0 / std::sqrt(squares);
    for (int64_t c = 0; c < width; ++c) row[c] = static_cast<float>(row[c] * scale);
  }
}

void load_features(Dataset& dataset) {
  std::vector<std::vector<float>> blocks;
  int64_t dim = 0;
  for (Modality& modality : dataset.modalities) {
    int64_t cols = 0;
    blocks.push_back(read_feature_npy(modality.file, dataset.n_items, cols));
    modality.offset = dim;
    modality.width = cols;
    dim += cols;
  }
  dataset.feature_dim = dim;
  const int64_t rows = dataset.n_items;
  if (blocks.size() == 1) {
    dataset.features = std::move(blocks[0]);
  } else {
    dataset.features.assign(static_cast<size_t>(rows * dim), 0.0f);
    for (size_t m = 0; m < blocks.size(); ++m) {
      const Modality& modality = dataset.modalities[m];
      for (int64_t r = 0; r < rows; ++r) {
        std::copy_n(blocks[m].data() + r * modality.width, modality.width,
                    dataset.features.data() + r * dim + modality.offset);
      }
      std::vector<float>().swap(blocks[m]);
    }
  }
  if (!dataset.normalized) return;
  for (const Modality& modality : dataset.modalities) {
    normalize_block(dataset.features, rows, dim, modality.offset, modality.width);
  }
}

std::string directory_name(const std::string& dir) {
  fs::path path = fs::absolute(fs::path(dir)).lexically_normal();
  if (!path.has_filename()) path = path.parent_path();
  return path.filename().string();
}

// The id count for one role: declared, or the largest id + 1 over all splits (and over
// `largest_listed`, an id listed without pairs).
int32_t id_count(const std::optional<int64_t>& declared, const char* role, const std::string& dir,
                 std::initializer_list<const std::vector<int32_t>*> id_lists,
                 int64_t largest_listed = -1) {
  if (declared) return static_cast<int32_t>(*declared);
  int64_t largest = largest_listed;
  for (const auto* ids : id_lists) largest = std::max<int64_t>(largest, max_id(*ids));
  if (largest + 1 >= kIdLimit) {
    input_error("{}: the largest {} id is {}, so n_{}s would be {}; expected fewer than {} {}s",
                dir, role, largest, role, largest + 1, kIdLimit, role);
  }
  return static_cast<int32_t>(largest + 1);
}

}  // namespace

UserItemCsr UserItemCsr::build(const PairList& pairs, int32_t n_users) {
  if (n_users < 0) input_error("UserItemCsr: n_users = {} is negative", n_users);
  if (pairs.user.size() != pairs.item.size()) {
    input_error("UserItemCsr: {} users but {} items in the pair list", pairs.user.size(),
                pairs.item.size());
  }
  UserItemCsr csr;
  csr.offsets.assign(static_cast<size_t>(n_users) + 1, 0);
  for (const int32_t user : pairs.user) {
    if (user < 0 || user >= n_users) {
      input_error("UserItemCsr: user id {} is out of range; expected 0 <= id < n_users = {}", user,
                  n_users);
    }
    ++csr.offsets[static_cast<size_t>(user) + 1];
  }
  for (int32_t u = 0; u < n_users; ++u) csr.offsets[u + 1] += csr.offsets[u];
  csr.items.resize(pairs.size());
  std::vector<int64_t> cursor(csr.offsets.begin(), csr.offsets.end() - 1);
  for (size_t p = 0; p < pairs.size(); ++p) csr.items[cursor[pairs.user[p]]++] = pairs.item[p];
  for (int32_t u = 0; u < n_users; ++u) {
    std::sort(csr.items.begin() + csr.offsets[u], csr.items.begin() + csr.offsets[u + 1]);
  }
  return csr;
}

PairList read_lightgcn(const std::string& path) {
  return parse_lightgcn(read_data_file(path), path);
}

PairList read_pairs_tsv(const std::string& path) {
  return parse_pairs_tsv(read_data_file(path), path);
}

void read_inter(const std::string& path, PairList splits[3]) {
  parse_inter(read_data_file(path), path, splits);
}

PairList parse_lightgcn(std::string_view text, const std::string& origin) {
  return lightgcn_pairs(text, origin, IdRule{"user", kIdLimit, {}}, IdRule{"item", kIdLimit, {}});
}

PairList parse_pairs_tsv(std::string_view text, const std::string& origin) {
  return tsv_pairs(text, origin, IdRule{"user", kIdLimit, {}}, IdRule{"item", kIdLimit, {}});
}

void parse_inter(std::string_view text, const std::string& origin, PairList splits[3]) {
  inter_splits(text, origin, splits, IdRule{"user", kIdLimit, {}}, IdRule{"item", kIdLimit, {}});
}

void write_lightgcn(const std::string& path, const PairList& pairs, int32_t n_users) {
  const UserItemCsr csr = UserItemCsr::build(pairs, n_users);
  fmt::memory_buffer text;
  for (int32_t u = 0; u < n_users; ++u) {
    if (csr.degree(u) == 0) continue;
    fmt::format_to(std::back_inserter(text), "{}", u);
    for (int64_t k = csr.offsets[u]; k < csr.offsets[u + 1]; ++k) {
      fmt::format_to(std::back_inserter(text), " {}", csr.items[k]);
    }
    text.push_back('\n');
  }
  write_bytes_atomic(path, text.data(), text.size());
}

Dataset load_dataset(const std::string& dir, const LoadOptions& options) {
  std::error_code error;
  const bool exists = fs::exists(dir, error);
  if (error && error != std::errc::no_such_file_or_directory) {
    input_error("{}: cannot read the dataset directory: {}", dir, error.message());
  }
  if (!exists) input_error("{}: dataset directory not found", dir);
  if (!fs::is_directory(dir, error)) {
    input_error("{}: not a directory; expected a dataset directory", dir);
  }
  if (options.normalize < -1 || options.normalize > 1) {
    input_error("{}: normalize override {} is invalid; expected -1 (as the dataset says), 0 or 1",
                dir, options.normalize);
  }
  const std::string toml_path = (fs::path(dir) / "dataset.toml").string();
  DatasetSpec spec = is_file(toml_path) ? SpecReader(dir, toml_path).read() : detect_layout(dir);

  Dataset dataset;
  dataset.dir = dir;
  dataset.name = spec.name.empty() ? directory_name(dir) : spec.name;
  dataset.format = spec.format;
  dataset.normalized = options.normalize == -1 ? spec.normalize : options.normalize == 1;
  dataset.modalities = spec.modalities;
  dataset.test_candidates = spec.test_candidates;
  dataset.test_sets = spec.test_sets;

  const IdRule users{"user", spec.n_users.value_or(kIdLimit), spec.n_users ? toml_path : ""};
  const IdRule items{"item", spec.n_items.value_or(kIdLimit), spec.n_items ? toml_path : ""};
  std::string train_source = spec.train, valid_source = spec.valid, test_source = spec.test;
  int64_t largest_listed_user = -1;  // LightGCN lines may list a user without items
  if (spec.format == "inter") {
    PairList splits[3];
    inter_splits(read_data_file(spec.file), spec.file, splits, users, items);
    dataset.train = std::move(splits[0]);
    dataset.valid = std::move(splits[1]);
    dataset.test = std::move(splits[2]);
    train_source = spec.file + " (x_label 0)";
    valid_source = spec.file + " (x_label 1)";
    test_source = spec.file + " (x_label 2)";
  } else if (spec.format == "lightgcn") {
    auto read = [&](const std::string& path) {
      return lightgcn_pairs(read_data_file(path), path, users, items, &largest_listed_user);
    };
    dataset.train = read(spec.train);
    if (!spec.valid.empty()) dataset.valid = read(spec.valid);
    dataset.test = read(spec.test);
    for (TestSet& set : dataset.test_sets) set.pairs = read(set.file);
  } else {
    auto read = [&](const std::string& path) {
      return tsv_pairs(read_data_file(path), path, users, items);
    };
    dataset.train = read(spec.train);
    if (!spec.valid.empty()) dataset.valid = read(spec.valid);
    dataset.test = read(spec.test);
    for (TestSet& set : dataset.test_sets) set.pairs = read(set.file);
  }
  if (dataset.train.size() == 0) {
    input_error("{}: no training pairs; expected at least one (user, item) pair", train_source);
  }

  int64_t largest_set_user = largest_listed_user, largest_set_item = -1;
  for (const TestSet& set : dataset.test_sets) {
    largest_set_user = std::max<int64_t>(largest_set_user, max_id(set.pairs.user));
    largest_set_item = std::max<int64_t>(largest_set_item, max_id(set.pairs.item));
  }
  dataset.n_users =
      id_count(spec.n_users, "user", dir,
               {&dataset.train.user, &dataset.valid.user, &dataset.test.user}, largest_set_user);
  dataset.n_items =
      id_count(spec.n_items, "item", dir,
               {&dataset.train.item, &dataset.valid.item, &dataset.test.item}, largest_set_item);

  DataReport& report = dataset.report;
  std::vector<uint64_t> train_keys, scratch_keys;
  report.duplicate_train = drop_duplicates(dataset.train, train_keys);
  report.duplicate_valid = drop_duplicates(dataset.valid, scratch_keys);
  report.duplicate_test = drop_duplicates(dataset.test, scratch_keys);
  const std::pair<int64_t, const std::string*> duplicates[] = {
      {report.duplicate_train, &train_source},
      {report.duplicate_valid, &valid_source},
      {report.duplicate_test, &test_source}};
  for (const auto& [count, source] : duplicates) {
    if (count > 0) log_warn(fmt::format("{}: dropped {} duplicate pairs", *source, count));
  }
  const int64_t valid_in_train = drop_training_pairs(dataset.valid, train_keys);
  const int64_t test_in_train = drop_training_pairs(dataset.test, train_keys);
  report.heldout_in_train = valid_in_train + test_in_train;
  for (TestSet& set : dataset.test_sets) {
    const int64_t dup = drop_duplicates(set.pairs, scratch_keys);
    const int64_t rep = drop_training_pairs(set.pairs, train_keys);
    if (dup + rep > 0) {
      log_warn(fmt::format("{}: dropped {} duplicate pairs and {} that repeat a training pair",
                           set.file, dup, rep));
    }
  }
  // Metrics over no users are not results: a test file with nothing left to evaluate is refused.
  auto require_test_pairs = [](const PairList& pairs, const std::string& source, int64_t read) {
    if (pairs.size() > 0) return;
    input_error(
        "{}: no test pairs{}; expected at least one held-out (user, item) pair that is not a "
        "training pair",
        source, read > 0 ? fmt::format(" left (all {} repeat training pairs)", read) : "");
  };
  require_test_pairs(dataset.test, test_source, test_in_train);
  for (const TestSet& set : dataset.test_sets) require_test_pairs(set.pairs, set.file, 0);
  if (report.heldout_in_train > 0) {
    log_warn(
        fmt::format("{}: dropped {} held-out pairs that repeat a training pair ({} valid, {} "
                    "test)",
                    dir, report.heldout_in_train, valid_in_train, test_in_train));
  }

  int64_t train_users = 0;
  for (size_t k = 0; k < train_keys.size(); ++k) {
    if (k == 0 || (train_keys[k] >> 32) != (train_keys[k - 1] >> 32)) ++train_users;
  }
  report.users_without_train = dataset.n_users - train_users;
  report.items_without_train = dataset.n_items - count_distinct(dataset.train.item);
  if (report.users_without_train > 0) {
    log_warn(fmt::format("{}: {} of {} users have no training pairs", dir,
                         report.users_without_train, dataset.n_users));
  }
  bool declares_cold = dataset.test_candidates == "cold";
  for (const TestSet& set : dataset.test_sets) declares_cold |= set.candidates == "cold";
  if (report.items_without_train > 0) {
    // Expected in the cold-item protocol, where those items are the cold test's candidates.
    const std::string msg =
        fmt::format("{}: {} of {} items have no training pairs{}", dir, report.items_without_train,
                    dataset.n_items, declares_cold ? " (its cold tests rank among them)" : "");
    if (declares_cold) {
      log_info(msg);
    } else {
      log_warn(msg);
    }
  }

  if (!spec.user_ids.empty())
    dataset.user_ids = read_id_map(spec.user_ids, "user", dataset.n_users);
  if (!spec.item_ids.empty())
    dataset.item_ids = read_id_map(spec.item_ids, "item", dataset.n_items);
  if (options.load_features) load_features(dataset);
  return dataset;
}

}  // namespace painvrl
