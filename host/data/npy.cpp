// NumPy .npy reading and writing. The header (magic, version, length, dict) is read and checked
// field by field, and the declared shape is matched against the bytes the file really holds
// before any data buffer is allocated; the same code reads a file or bytes in memory (fmemopen).
// Writes produce version 1.0 headers padded to 64 bytes.
#include "painvrl/data/npy.h"

#include <sys/stat.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <string_view>

#include "painvrl/data/error.h"
#include "painvrl/data/io.h"

namespace painvrl {
namespace {

static_assert(std::endian::native == std::endian::little,
              "painvrl reads and writes little-endian .npy data in place");

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicSize = 6;
// NumPy itself refuses headers over 10000 bytes when reading; legitimate headers of the dtypes
// supported here are under 1000 bytes.
constexpr uint64_t kMaxHeaderSize = 10000;
constexpr size_t kHeaderAlign = 64;
constexpr const char* kSupportedDtypes =
    "'<f4' (float32), '<f8' (float64), '<i4' (int32) or "
    "'<i8' (int64)";

struct FileCloser {
  void operator()(std::FILE* file) const { std::fclose(file); }
};
using FilePtr = std::unique_ptr<std::FILE, FileCloser>;

// Bytes as readable text: printable ASCII as is, everything else as \xNN, cut at max_chars.
std::string escape_bytes(std::string_view bytes, size_t max_chars = 80) {
  std::string escaped;
  for (size_t i = 0; i < bytes.size(); ++i) {
    if (escaped.size() >= max_chars) {
      escaped += "...";
      break;
    }
    const auto c = static_cast<unsigned char>(bytes[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      escaped += static_cast<char>(c);
    } else if (c == '\n') {
      escaped += "\\n";
    } else if (c == '\\') {
      escaped += "\\\\";
    } else {
      escaped += fmt::format("\\x{:02x}", c);
    }
  }
  return escaped;
}

// Python's repr of a shape tuple: (), (5,), (3, 4).
std::string shape_text(const std::vector<int64_t>& shape) {
  if (shape.size() == 1) return fmt::format("({},)", shape[0]);
  std::string text = "(";
  for (size_t i = 0; i < shape.size(); ++i) text += fmt::format("{}{}", i ? ", " : "", shape[i]);
  return text + ")";
}

int64_t item_size(NpyDtype dtype) {
  switch (dtype) {
    case NpyDtype::kFloat32:
    case NpyDtype::kInt32:
      return 4;
    case NpyDtype::kFloat64:
    case NpyDtype::kInt64:
      return 8;
  }
  return 0;
}

const char* dtype_descr(NpyDtype dtype) {
  switch (dtype) {
    case NpyDtype::kFloat32:
      return "<f4";
    case NpyDtype::kFloat64:
      return "<f8";
    case NpyDtype::kInt32:
      return "<i4";
    case NpyDtype::kInt64:
      return "<i8";
  }
  return "?";
}

const char* dtype_name(NpyDtype dtype) {
  switch (dtype) {
    case NpyDtype::kFloat32:
      return "float32";
    case NpyDtype::kFloat64:
      return "float64";
    case NpyDtype::kInt32:
      return "int32";
    case NpyDtype::kInt64:
      return "int64";
  }
  return "?";
}

// Element count of a shape, or false when it (or its byte size) overflows int64.
bool checked_byte_size(const std::vector<int64_t>& shape, int64_t itemsize, int64_t& count,
                       int64_t& bytes) {
  count = 1;
  for (const int64_t extent : shape) {
    if (extent < 0 || __builtin_mul_overflow(count, extent, &count)) return false;
  }
  return !__builtin_mul_overflow(count, itemsize, &bytes);
}

// An open regular file and its size.
struct InputFile {
  FilePtr file;
  int64_t size = 0;
};

InputFile open_input(const std::string& path) {
  std::FILE* raw = std::fopen(path.c_str(), "rb");
  if (!raw) input_error("{}: cannot open: {}", path, std::strerror(errno));
  InputFile input{FilePtr(raw), 0};
  struct stat info {};
  if (::fstat(::fileno(raw), &info) != 0) {
    input_error("{}: cannot stat: {}", path, std::strerror(errno));
  }
  if (S_ISDIR(info.st_mode)) input_error("{}: is a directory, expected an .npy file", path);
  if (!S_ISREG(info.st_mode)) input_error("{}: not a regular file, expected an .npy file", path);
  input.size = static_cast<int64_t>(info.st_size);
  return input;
}

// Bytes in memory as a read-only stream (fmemopen), so that the in-memory readers run exactly the
// code of the file readers after the open.
InputFile open_memory(std::string_view bytes, const std::string& name) {
  std::FILE* raw = ::fmemopen(const_cast<char*>(bytes.data()), bytes.size(), "rb");
  if (!raw) input_error("{}: cannot read the bytes in memory: {}", name, std::strerror(errno));
  return InputFile{FilePtr(raw), static_cast<int64_t>(bytes.size())};
}

void read_exact(std::FILE* file, void* destination, size_t size, const std::string& path,
                std::string_view what) {
  if (size == 0) return;
  if (std::fread(destination, 1, size, file) != size) {
    input_error("{}: could not read the {} ({} bytes): {}", path, what, size,
                std::ferror(file) ? std::strerror(errno) : "the file ended early");
  }
}

// What the header says, after every field has been checked against the file.
struct NpyHeader {
  NpyDtype dtype = NpyDtype::kFloat32;
  std::vector<int64_t> shape;
  int64_t element_count = 0;
  int64_t data_bytes = 0;
};

// A strict parser for the header dict, a Python literal such as
//   {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }
class HeaderDictParser {
 public:
  HeaderDictParser(std::string_view text, const std::string& path) : text_(text), path_(path) {}

  // Fills descr, fortran_order and shape; every key must appear exactly once.
  void parse(std::string& descr, bool& fortran_order, std::vector<int64_t>& shape) {
    bool seen_descr = false, seen_fortran = false, seen_shape = false;
    skip_space();
    expect('{', "a '{' opening the header dict");
    skip_space();
    while (!at('}')) {
      const std::string key = parse_string("a quoted key ('descr', 'fortran_order' or 'shape')");
      skip_space();
      expect(':', fmt::format("':' after the key '{}'", key));
      skip_space();
      if (key == "descr") {
        mark_seen(seen_descr, key);
        if (!at('\'') && !at('"')) {
          fail(
              fmt::format("field 'descr': expected a quoted dtype string such as '<f4' "
                          "(structured dtypes are not supported)"));
        }
        descr = parse_string("a quoted dtype string");
      } else if (key == "fortran_order") {
        mark_seen(seen_fortran, key);
        fortran_order = parse_bool(key);
      } else if (key == "shape") {
        mark_seen(seen_shape, key);
        shape = parse_shape();
      } else {
        input_error(
            "{}: .npy header has an unknown field '{}'; expected only 'descr', "
            "'fortran_order' and 'shape'",
            path_, escape_bytes(key));
      }
      skip_space();
      if (at(',')) {
        ++pos_;
        skip_space();
      } else if (!at('}')) {
        fail("expected ',' or '}' after a field's value");
      }
    }
    ++pos_;  // the closing '}'
    skip_space();
    if (pos_ != text_.size()) fail("unexpected bytes after the closing '}' of the header dict");
    if (!seen_descr) missing("descr");
    if (!seen_fortran) missing("fortran_order");
    if (!seen_shape) missing("shape");
  }

 private:
  bool at(char c) const { return pos_ < text_.size() && text_[pos_] == c; }

  void skip_space() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\t' ||
                                   text_[pos_] == '\r' || text_[pos_] == '\n')) {
      ++pos_;
    }
  }

  [[noreturn]] void fail(std::string_view what) const {
    input_error("{}: malformed .npy header dict at byte {}: {} (header: \"{}\")", path_, pos_, what,
                escape_bytes(text_, 160));
  }

  [[noreturn]] void missing(std::string_view key) const {
    input_error(
        "{}: .npy header lacks the field '{}' (expected 'descr', 'fortran_order' and "
        "'shape')",
        path_, key);
  }

  void mark_seen(bool& seen, std::string_view key) const {
    if (seen) input_error("{}: .npy header has the field '{}' twice", path_, key);
    seen = true;
  }

  void expect(char c, std::string_view what) {
    if (!at(c)) fail(fmt::format("expected {}", what));
    ++pos_;
  }

  std::string parse_string(std::string_view what) {
    if (!at('\'') && !at('"')) fail(fmt::format("expected {}", what));
    const char quote = text_[pos_++];
    const size_t start = pos_;
    while (pos_ < text_.size() && text_[pos_] != quote) {
      if (text_[pos_] == '\\' || text_[pos_] == '\n') {
        fail("escapes and newlines are not allowed in strings");
      }
      ++pos_;
    }
    if (pos_ == text_.size()) fail("unterminated string");
    std::string value(text_.substr(start, pos_ - start));
    ++pos_;
    return value;
  }

  bool parse_bool(std::string_view key) {
    if (text_.substr(pos_, 4) == "True") {
      pos_ += 4;
      return true;
    }
    if (text_.substr(pos_, 5) == "False") {
      pos_ += 5;
      return false;
    }
    fail(fmt::format("field '{}': expected True or False", key));
  }

  int64_t parse_extent() {
    const bool negative = at('-');
    if (negative) ++pos_;
    if (pos_ >= text_.size() || text_[pos_] < '0' || text_[pos_] > '9') {
      fail("field 'shape': expected a non-negative integer");
    }
    int64_t value = 0;
    const size_t start = pos_;
    while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') {
      if (__builtin_mul_overflow(value, int64_t{10}, &value) ||
          __builtin_add_overflow(value, int64_t{text_[pos_] - '0'}, &value)) {
        input_error("{}: .npy header field 'shape': the entry {}... does not fit in 64 bits", path_,
                    text_.substr(start, 20));
      }
      ++pos_;
    }
    if (negative) {
      input_error(
          "{}: .npy header field 'shape': entry -{} is negative; expected non-negative "
          "integers",
          path_, value);
    }
    return value;
  }

  std::vector<int64_t> parse_shape() {
    std::vector<int64_t> shape;
    expect('(', "field 'shape': a tuple such as (3, 4)");
    skip_space();
    bool trailing_comma = false;
    while (!at(')')) {
      if (shape.size() >= 64) fail("field 'shape': more than 64 dimensions");
      shape.push_back(parse_extent());
      skip_space();
      trailing_comma = false;
      if (at(',')) {
        ++pos_;
        trailing_comma = true;
        skip_space();
      } else if (!at(')')) {
        fail("field 'shape': expected ',' or ')' after an entry");
      }
    }
    if (shape.size() == 1 && !trailing_comma) {
      fail("field 'shape': a one-entry tuple needs a trailing comma, as in (5,)");
    }
    ++pos_;
    return shape;
  }

  std::string_view text_;
  const std::string& path_;
  size_t pos_ = 0;
};

NpyDtype parse_descr(const std::string& descr, const std::string& path) {
  if (descr == "<f4") return NpyDtype::kFloat32;
  if (descr == "<f8") return NpyDtype::kFloat64;
  if (descr == "<i4") return NpyDtype::kInt32;
  if (descr == "<i8") return NpyDtype::kInt64;
  if (!descr.empty() && descr[0] == '>') {
    // Name the little-endian twin of the file's own type (a float file gets a float answer).
    const std::string twin = "<" + descr.substr(1);
    if (twin == "<f4" || twin == "<f8" || twin == "<i4" || twin == "<i8") {
      input_error(
          "{}: .npy header field 'descr': big-endian dtype '{}' is not supported; expected its "
          "little-endian form '{}' (numpy: np.save(path, array.astype('{}')))",
          path, escape_bytes(descr), twin, twin);
    }
    input_error(
        "{}: .npy header field 'descr': big-endian dtype '{}' is not supported; expected "
        "little-endian {}",
        path, escape_bytes(descr), kSupportedDtypes);
  }
  input_error("{}: .npy header field 'descr': unsupported dtype '{}'; expected {}", path,
              escape_bytes(descr), kSupportedDtypes);
}

// Reads and checks the magic, version, header length and header dict, leaving `file` at the
// first data byte. Nothing is allocated beyond the (bounded) header text.
NpyHeader read_header(std::FILE* file, int64_t file_size, const std::string& path) {
  if (file_size == 0) {
    input_error(
        "{}: the file is empty (0 bytes); expected an .npy file starting with the magic "
        "string \\x93NUMPY",
        path);
  }
  unsigned char prefix[12] = {};
  const size_t first_bytes = static_cast<size_t>(std::min<int64_t>(file_size, 8));
  read_exact(file, prefix, first_bytes, path, "magic string and version");
  const size_t magic_compared = std::min(first_bytes, kMagicSize);
  if (std::memcmp(prefix, kMagic, magic_compared) != 0) {
    input_error(
        "{}: bad magic string: expected an .npy file starting with \\x93NUMPY, found "
        "\"{}\"",
        path, escape_bytes(std::string_view(reinterpret_cast<char*>(prefix), first_bytes)));
  }
  if (first_bytes < 8) {
    input_error(
        "{}: truncated header: the file has only {} bytes, too few for the magic string "
        "and format version (8 bytes)",
        path, file_size);
  }
  const int major = prefix[6], minor = prefix[7];
  if (major < 1 || major > 3 || minor != 0) {
    input_error("{}: unsupported .npy format version {}.{}; expected 1.0, 2.0 or 3.0", path, major,
                minor);
  }
  const int64_t length_field_size = major == 1 ? 2 : 4;
  const int64_t prefix_size = 8 + length_field_size;
  if (file_size < prefix_size) {
    input_error(
        "{}: truncated header: the file has only {} bytes, too few for the header length "
        "field of format version {}.0 ({} bytes)",
        path, file_size, major, prefix_size);
  }
  read_exact(file, prefix + 8, static_cast<size_t>(length_field_size), path, "header length");
  uint64_t header_size = uint64_t{prefix[8]} | (uint64_t{prefix[9]} << 8);
  if (major > 1) header_size |= (uint64_t{prefix[10]} << 16) | (uint64_t{prefix[11]} << 24);
  const uint64_t bytes_after_prefix = static_cast<uint64_t>(file_size - prefix_size);
  if (header_size > bytes_after_prefix) {
    input_error(
        "{}: truncated header: header length {} runs past the end of the file (only {} "
        "bytes follow the {}-byte prefix)",
        path, header_size, bytes_after_prefix, prefix_size);
  }
  if (header_size > kMaxHeaderSize) {
    input_error("{}: oversized header: header length {} is over the limit of {} bytes", path,
                header_size, kMaxHeaderSize);
  }
  std::string header_text(header_size, '\0');
  read_exact(file, header_text.data(), header_size, path, "header dict");

  std::string descr;
  bool fortran_order = false;
  NpyHeader header;
  HeaderDictParser(header_text, path).parse(descr, fortran_order, header.shape);
  header.dtype = parse_descr(descr, path);
  if (fortran_order) {
    input_error(
        "{}: .npy header field 'fortran_order' is True: Fortran order is not supported; "
        "save a C-ordered array (numpy.ascontiguousarray)",
        path);
  }
  if (!checked_byte_size(header.shape, item_size(header.dtype), header.element_count,
                         header.data_bytes)) {
    input_error(
        "{}: .npy header field 'shape': {} of dtype '{}' is too large (its byte size does "
        "not fit in 64 bits)",
        path, shape_text(header.shape), descr);
  }
  const int64_t data_offset = prefix_size + static_cast<int64_t>(header_size);
  const int64_t bytes_present = file_size - data_offset;
  if (header.data_bytes > bytes_present) {
    input_error(
        "{}: truncated data: expected {} bytes of data after the header (shape {} of "
        "dtype '{}'), found {}",
        path, header.data_bytes, shape_text(header.shape), descr, bytes_present);
  }
  if (header.data_bytes < bytes_present) {
    input_error(
        "{}: {} unexpected trailing bytes: expected {} bytes of data after the header "
        "(shape {} of dtype '{}'), found {}",
        path, bytes_present - header.data_bytes, header.data_bytes, shape_text(header.shape), descr,
        bytes_present);
  }
  return header;
}

template <class From, class To>
std::vector<To> convert_elements(const std::vector<unsigned char>& bytes, int64_t count) {
  std::vector<To> values(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) {
    From value;
    std::memcpy(&value, bytes.data() + i * static_cast<int64_t>(sizeof(From)), sizeof(From));
    values[i] = static_cast<To>(value);
  }
  return values;
}

template <class To>
std::vector<To> convert_array(const NpyArray& array) {
  const int64_t count = array.size();
  if (count < 0 || static_cast<uint64_t>(count) * static_cast<uint64_t>(item_size(array.dtype)) !=
                       array.bytes.size()) {
    input_error("npy array: {} bytes do not match shape {} of dtype {}", array.bytes.size(),
                shape_text(array.shape), dtype_name(array.dtype));
  }
  switch (array.dtype) {
    case NpyDtype::kFloat32:
      return convert_elements<float, To>(array.bytes, count);
    case NpyDtype::kFloat64:
      return convert_elements<double, To>(array.bytes, count);
    case NpyDtype::kInt32:
      return convert_elements<int32_t, To>(array.bytes, count);
    case NpyDtype::kInt64:
      return convert_elements<int64_t, To>(array.bytes, count);
  }
  return {};
}

[[noreturn]] void non_finite_value(const std::string& path, int64_t index, int64_t cols,
                                   double value) {
  const char* kind = std::isnan(value) ? "NaN" : (value > 0 ? "Inf" : "-Inf");
  input_error("{}: value at row {}, column {} is {}; expected every feature value to be finite",
              path, index / cols, index % cols, kind);
}

void write_npy_bytes(const std::string& path, const void* data, NpyDtype dtype,
                     const std::vector<int64_t>& shape) {
  int64_t count = 0, data_bytes = 0;
  for (const int64_t extent : shape) {
    if (extent < 0) {
      input_error("{}: cannot write .npy: negative extent in shape {}", path, shape_text(shape));
    }
  }
  if (!checked_byte_size(shape, item_size(dtype), count, data_bytes)) {
    input_error("{}: cannot write .npy: shape {} is too large", path, shape_text(shape));
  }
  if (data == nullptr && data_bytes > 0) input_error("{}: cannot write .npy: no data given", path);
  std::string header = fmt::format("{{'descr': '{}', 'fortran_order': False, 'shape': {}, }}",
                                   dtype_descr(dtype), shape_text(shape));
  // Pad with spaces so that magic (6) + version (2) + length (2) + header + '\n' is a multiple
  // of 64, as numpy does.
  const size_t unpadded = kMagicSize + 2 + 2 + header.size() + 1;
  header.append((kHeaderAlign - unpadded % kHeaderAlign) % kHeaderAlign, ' ');
  header += '\n';
  if (header.size() > 0xffff) input_error("{}: cannot write .npy: header too long", path);
  std::vector<unsigned char> file_bytes;
  file_bytes.reserve(10 + header.size() + static_cast<size_t>(data_bytes));
  file_bytes.insert(file_bytes.end(), kMagic, kMagic + kMagicSize);
  file_bytes.push_back(1);
  file_bytes.push_back(0);
  file_bytes.push_back(static_cast<unsigned char>(header.size() & 0xff));
  file_bytes.push_back(static_cast<unsigned char>(header.size() >> 8));
  file_bytes.insert(file_bytes.end(), header.begin(), header.end());
  const auto* data_begin = static_cast<const unsigned char*>(data);
  if (data_bytes > 0) file_bytes.insert(file_bytes.end(), data_begin, data_begin + data_bytes);
  write_bytes_atomic(path, file_bytes.data(), file_bytes.size());
}

}  // namespace

int64_t NpyArray::size() const {
  int64_t count = 1;
  for (const int64_t extent : shape) count *= extent;
  return count;
}

std::vector<float> NpyArray::to_float() const { return convert_array<float>(*this); }

std::vector<double> NpyArray::to_double() const { return convert_array<double>(*this); }

std::vector<int64_t> NpyArray::to_int64() const {
  if (dtype != NpyDtype::kInt32 && dtype != NpyDtype::kInt64) {
    input_error("npy array holds {} values; expected int32 or int64", dtype_name(dtype));
  }
  return convert_array<int64_t>(*this);
}

namespace {

NpyArray read_npy_from(const InputFile& input, const std::string& path) {
  const NpyHeader header = read_header(input.file.get(), input.size, path);
  NpyArray array;
  array.dtype = header.dtype;
  array.shape = header.shape;
  array.bytes.resize(static_cast<size_t>(header.data_bytes));
  read_exact(input.file.get(), array.bytes.data(), array.bytes.size(), path, "array data");
  return array;
}

std::vector<float> read_feature_npy_from(const InputFile& input, const std::string& path,
                                         int64_t expected_rows, int64_t& cols) {
  std::FILE* file = input.file.get();
  const NpyHeader header = read_header(file, input.size, path);
  if (header.dtype != NpyDtype::kFloat32 && header.dtype != NpyDtype::kFloat64) {
    input_error(
        "{}: feature matrix has dtype {} ('{}'); expected float32 ('<f4') or float64 "
        "('<f8')",
        path, dtype_name(header.dtype), dtype_descr(header.dtype));
  }
  if (header.shape.size() != 2) {
    input_error("{}: feature matrix has shape {} ({}-D); expected a 2-D array (items, features)",
                path, shape_text(header.shape), header.shape.size());
  }
  const int64_t rows = header.shape[0];
  if (rows != expected_rows) {
    input_error("{}: feature matrix has {} rows; expected {} (one per item)", path, rows,
                expected_rows);
  }
  cols = header.shape[1];
  if (cols == 0 && rows > 0) {
    input_error("{}: feature matrix has shape {}: 0 columns; expected at least one feature column",
                path, shape_text(header.shape));
  }
  const int64_t count = header.element_count;
  std::vector<float> values(static_cast<size_t>(count));
  if (header.dtype == NpyDtype::kFloat32) {
    read_exact(file, values.data(), static_cast<size_t>(header.data_bytes), path, "feature data");
    for (int64_t i = 0; i < count; ++i) {
      if (!std::isfinite(values[i])) non_finite_value(path, i, cols, values[i]);
    }
    return values;
  }
  // float64: read in chunks, check, narrow.
  constexpr int64_t kChunk = 1 << 16;
  std::vector<double> chunk(static_cast<size_t>(std::min(count, kChunk)));
  for (int64_t start = 0; start < count; start += kChunk) {
    const int64_t n = std::min(kChunk, count - start);
    read_exact(file, chunk.data(), static_cast<size_t>(n) * sizeof(double), path, "feature data");
    for (int64_t k = 0; k < n; ++k) {
      const double value = chunk[k];
      const int64_t index = start + k;
      if (!std::isfinite(value)) non_finite_value(path, index, cols, value);
      if (std::fabs(value) > std::numeric_limits<float>::max()) {
        input_error("{}: value {} at row {}, column {} is outside the float32 range", path, value,
                    index / cols, index % cols);
      }
      values[index] = static_cast<float>(value);
    }
  }
  return values;
}

}  // namespace

NpyArray read_npy(const std::string& path) { return read_npy_from(open_input(path), path); }

std::vector<float> read_feature_npy(const std::string& path, int64_t expected_rows, int64_t& cols) {
  return read_feature_npy_from(open_input(path), path, expected_rows, cols);
}

NpyArray parse_npy(std::string_view bytes, const std::string& name) {
  return read_npy_from(open_memory(bytes, name), name);
}

std::vector<float> parse_feature_npy(std::string_view bytes, const std::string& name,
                                     int64_t expected_rows, int64_t& cols) {
  return read_feature_npy_from(open_memory(bytes, name), name, expected_rows, cols);
}

void write_npy(const std::string& path, const float* data, const std::vector<int64_t>& shape) {
  write_npy_bytes(path, data, NpyDtype::kFloat32, shape);
}

void write_npy(const std::string& path, const double* data, const std::vector<int64_t>& shape) {
  write_npy_bytes(path, data, NpyDtype::kFloat64, shape);
}

void write_npy(const std::string& path, const int64_t* data, const std::vector<int64_t>& shape) {
  write_npy_bytes(path, data, NpyDtype::kInt64, shape);
}

}  // namespace painvrl
