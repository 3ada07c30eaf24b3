// Tests of .npy reading and writing: round trips of every dtype, header layout, and hostile files
// (bad magic, truncated or oversized headers, huge shapes, wrong dtypes, non-finite values, ...)
// that must each give an InputError naming the file and the problem.
#include "painvrl/data/npy.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "painvrl/data/error.h"
#include "test_util.h"

namespace painvrl {
namespace {

using test::TempDir;
using test::write_file;

// The raw bytes of a run of values.
template <class T>
std::string raw_bytes(const std::vector<T>& values) {
  std::string bytes(values.size() * sizeof(T), '\0');
  if (!values.empty()) std::memcpy(bytes.data(), values.data(), bytes.size());
  return bytes;
}

// A header dict as numpy writes it.
std::string header_dict(const std::string& descr, const std::string& shape,
                        const std::string& fortran = "False") {
  return "{'descr': '" + descr + "', 'fortran_order': " + fortran + ", 'shape': " + shape + ", }";
}

// A whole .npy file: magic, version major.0, little-endian header length, the header (padded
// with spaces and a newline to a multiple of 64 bytes when `pad`), then `data`.
std::string npy_file(const std::string& dict, const std::string& data, int major = 1,
                     bool pad = true) {
  std::string header = dict;
  const size_t length_field = major == 1 ? 2 : 4;
  if (pad) {
    const size_t unpadded = 8 + length_field + header.size() + 1;
    header.append((64 - unpadded % 64) % 64, ' ');
    header += '\n';
  }
  std::string file = "\x93NUMPY";
  file += static_cast<char>(major);
  file += '\0';
  const auto length = static_cast<uint32_t>(header.size());
  for (size_t b = 0; b < length_field; ++b) file += static_cast<char>((length >> (8 * b)) & 0xff);
  return file + header + data;
}

std::string read_all(const std::string& path) { return test::read_bytes(path); }

// Runs `action`, which must throw an InputError whose message starts with `path` and contains
// `needle`.
template <class Action>
void expect_input_error(Action&& action, const std::string& path, const std::string& needle) {
  try {
    action();
    ADD_FAILURE() << "expected an InputError containing \"" << needle << "\"";
  } catch (const InputError& error) {
    const std::string message = error.what();
    EXPECT_EQ(message.rfind(path, 0), 0u) << "message does not start with the path: " << message;
    EXPECT_NE(message.find(needle), std::string::npos)
        << "message lacks \"" << needle << "\": " << message;
  }
}

void expect_read_error(const std::string& path, const std::string& needle) {
  expect_input_error([&] { read_npy(path); }, path, needle);
}

void expect_feature_error(const std::string& path, int64_t rows, const std::string& needle) {
  int64_t cols = -1;
  expect_input_error([&] { read_feature_npy(path, rows, cols); }, path, needle);
}

TEST(Npy, RoundTripFloat32) {
  TempDir dir("npy");
  const std::string path = dir / "f32.npy";
  const std::vector<float> values = {1.5f, -2.0f, 0.0f, 3.25f, 1e-3f, 7.0f};
  write_npy(path, values.data(), {2, 3});
  const NpyArray array = read_npy(path);
  EXPECT_EQ(array.dtype, NpyDtype::kFloat32);
  EXPECT_EQ(array.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(array.size(), 6);
  EXPECT_EQ(array.bytes.size(), 24u);
  EXPECT_EQ(array.to_float(), values);
  const std::vector<double> as_double = array.to_double();
  for (size_t i = 0; i < values.size(); ++i) EXPECT_EQ(as_double[i], double{values[i]});
  int64_t cols = 0;
  EXPECT_EQ(read_feature_npy(path, 2, cols), values);
  EXPECT_EQ(cols, 3);
}

TEST(Npy, RoundTripFloat64) {
  TempDir dir("npy");
  const std::string path = dir / "f64.npy";
  const std::vector<double> values = {0.1, -1e20, 2.5, 1.0 / 3.0};
  write_npy(path, values.data(), {4});
  const NpyArray array = read_npy(path);
  EXPECT_EQ(array.dtype, NpyDtype::kFloat64);
  EXPECT_EQ(array.shape, (std::vector<int64_t>{4}));
  EXPECT_EQ(array.to_double(), values);
  EXPECT_FLOAT_EQ(array.to_float()[3], 1.0f / 3.0f);
}

TEST(Npy, RoundTripInt64) {
  TempDir dir("npy");
  const std::string path = dir / "i64.npy";
  const std::vector<int64_t> values = {-5, 0, int64_t{1} << 40,
                                       std::numeric_limits<int64_t>::max()};
  write_npy(path, values.data(), {2, 2});
  const NpyArray array = read_npy(path);
  EXPECT_EQ(array.dtype, NpyDtype::kInt64);
  EXPECT_EQ(array.shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(array.to_int64(), values);
}

TEST(Npy, ReadsInt32) {
  TempDir dir("npy");
  const std::string path = dir / "i32.npy";
  const std::vector<int32_t> values = {7, -1, 2147483647, 0, 42};
  write_file(path, npy_file(header_dict("<i4", "(5,)"), raw_bytes(values)));
  const NpyArray array = read_npy(path);
  EXPECT_EQ(array.dtype, NpyDtype::kInt32);
  EXPECT_EQ(array.shape, (std::vector<int64_t>{5}));
  EXPECT_EQ(array.to_int64(), (std::vector<int64_t>{7, -1, 2147483647, 0, 42}));
}

TEST(Npy, IntegerConversionOfFloatsIsAnError) {
  TempDir dir("npy");
  const std::string path = dir / "f.npy";
  const std::vector<float> values = {1.0f};
  write_npy(path, values.data(), {1});
  EXPECT_THROW(read_npy(path).to_int64(), InputError);
}

TEST(Npy, WritesVersion1HeaderPaddedTo64Bytes) {
  TempDir dir("npy");
  const std::string path = dir / "pad.npy";
  const std::vector<float> values = {1, 2, 3, 4, 5, 6};
  write_npy(path, values.data(), {3, 2});
  const std::string file = read_all(path);
  ASSERT_GE(file.size(), 10u);
  EXPECT_EQ(file.substr(0, 6), "\x93NUMPY");
  EXPECT_EQ(file[6], '\x01');
  EXPECT_EQ(file[7], '\x00');
  const size_t header_length = static_cast<unsigned char>(file[8]) |
                               (static_cast<size_t>(static_cast<unsigned char>(file[9])) << 8);
  EXPECT_EQ((10 + header_length) % 64, 0u);
  EXPECT_EQ(file[10 + header_length - 1], '\n');
  EXPECT_EQ(file.substr(10, header_length)
                .rfind("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }", 0),
            0u);
  EXPECT_EQ(file.size(), 10 + header_length + 24);
}

TEST(Npy, ReadsVersions2And3) {
  TempDir dir("npy");
  const std::vector<float> values = {1.0f, 2.0f};
  for (const int major : {2, 3}) {
    const std::string path = dir / ("v" + std::to_string(major) + ".npy");
    write_file(path, npy_file(header_dict("<f4", "(1, 2)"), raw_bytes(values), major));
    const NpyArray array = read_npy(path);
    EXPECT_EQ(array.shape, (std::vector<int64_t>{1, 2}));
    EXPECT_EQ(array.to_float(), values);
  }
}

TEST(Npy, ReadsUnpaddedHeaderWithDoubleQuotesAndNoTrailingComma) {
  TempDir dir("npy");
  const std::string path = dir / "plain.npy";
  const std::vector<double> values = {4.0, 5.0};
  write_file(path, npy_file("{\"descr\": \"<f8\", \"shape\": (2,), \"fortran_order\": False}",
                            raw_bytes(values), 1, false));
  EXPECT_EQ(read_npy(path).to_double(), values);
}

TEST(Npy, EmptyAndScalarShapes) {
  TempDir dir("npy");
  const std::string empty_path = dir / "empty.npy";
  write_npy(empty_path, static_cast<const float*>(nullptr), {0, 4});
  const NpyArray empty = read_npy(empty_path);
  EXPECT_EQ(empty.shape, (std::vector<int64_t>{0, 4}));
  EXPECT_TRUE(empty.bytes.empty());
  int64_t cols = 0;
  EXPECT_TRUE(read_feature_npy(empty_path, 0, cols).empty());
  EXPECT_EQ(cols, 4);

  const std::string scalar_path = dir / "scalar.npy";
  const double value = 2.5;
  write_npy(scalar_path, &value, {});
  const NpyArray scalar = read_npy(scalar_path);
  EXPECT_TRUE(scalar.shape.empty());
  EXPECT_EQ(scalar.size(), 1);
  EXPECT_EQ(scalar.to_double(), (std::vector<double>{2.5}));
}

TEST(Npy, WriteRejectsNegativeShape) {
  TempDir dir("npy");
  const std::string path = dir / "bad.npy";
  const std::vector<float> values = {1.0f};
  expect_input_error([&] { write_npy(path, values.data(), {-1, 2}); }, path, "negative");
}

// ---- hostile files ---------------------------------------------------------------------------

TEST(NpyHostile, MissingFileAndDirectory) {
  TempDir dir("npy");
  expect_read_error(dir / "absent.npy", "cannot open");
  expect_read_error(dir.path.string(), "directory");
}

TEST(NpyHostile, EmptyFile) {
  TempDir dir("npy");
  const std::string path = dir / "empty.npy";
  write_file(path, "");
  expect_read_error(path, "the file is empty");
}

TEST(NpyHostile, BadMagic) {
  TempDir dir("npy");
  const std::string path = dir / "magic.npy";
  write_file(path, "PK\x03\x04 this is a zip file, not an npy file at all");
  expect_read_error(path, "bad magic string");
}

TEST(NpyHostile, TruncatedHeader) {
  TempDir dir("npy");
  const std::string path = dir / "short.npy";
  write_file(path, std::string("\x93NUMPY\x01\x00", 8));
  expect_read_error(path, "truncated header");
  write_file(path, std::string("\x93NUMPY\x01\x00\x46", 9));
  expect_read_error(path, "truncated header");
  write_file(path, "\x93NUM");
  expect_read_error(path, "truncated header");
}

TEST(NpyHostile, UnsupportedVersion) {
  TempDir dir("npy");
  const std::string path = dir / "v4.npy";
  std::string file = npy_file(header_dict("<f4", "(1,)"), raw_bytes(std::vector<float>{1}));
  file[6] = '\x04';
  write_file(path, file);
  expect_read_error(path, "unsupported .npy format version 4.0");
  file[6] = '\x01';
  file[7] = '\x01';
  write_file(path, file);
  expect_read_error(path, "unsupported .npy format version 1.1");
}

TEST(NpyHostile, HeaderLengthPastTheEnd) {
  TempDir dir("npy");
  const std::string path = dir / "past.npy";
  std::string file = npy_file(header_dict("<f4", "(1,)"), raw_bytes(std::vector<float>{1}));
  file[8] = '\x00';
  file[9] = '\x10';  // 4096 bytes of header in a file of about 80
  write_file(path, file);
  expect_read_error(path, "runs past the end of the file");
}

TEST(NpyHostile, OversizedHeader) {
  TempDir dir("npy");
  const std::string path = dir / "big_header.npy";
  std::string dict = header_dict("<f4", "(1,)");
  dict.append(20000, ' ');
  write_file(path, npy_file(dict, raw_bytes(std::vector<float>{1}), 2));
  expect_read_error(path, "oversized header");
}

TEST(NpyHostile, HugeDeclaredShapeIsNotAllocated) {
  TempDir dir("npy");
  const std::string path = dir / "huge.npy";
  write_file(path, npy_file(header_dict("<f4", "(1000000000000, 4)"), std::string(64, '\0')));
  expect_read_error(path, "expected 16000000000000 bytes of data");
  expect_feature_error(path, 1000000000000, "found 64");
  write_file(path, npy_file(header_dict("<f8", "(4000000000, 4000000000, 4000000000)"), ""));
  expect_read_error(path, "too large");
  write_file(path, npy_file(header_dict("<f4", "(99999999999999999999999, 1)"), ""));
  expect_read_error(path, "does not fit in 64 bits");
}

TEST(NpyHostile, WrongDtype) {
  TempDir dir("npy");
  const std::string path = dir / "dtype.npy";
  write_file(path, npy_file(header_dict("<i2", "(2,)"), std::string(4, '\0')));
  expect_read_error(path, "unsupported dtype '<i2'");
  write_file(path, npy_file(header_dict("|u1", "(2,)"), std::string(2, '\0')));
  expect_read_error(path, "unsupported dtype '|u1'");
  write_file(path, npy_file("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }",
                            std::string(4, '\0')));
  expect_read_error(path, "field 'descr'");
}

TEST(NpyHostile, FortranOrder) {
  TempDir dir("npy");
  const std::string path = dir / "fortran.npy";
  write_file(path, npy_file(header_dict("<f4", "(2, 3)", "True"), std::string(24, '\0')));
  expect_read_error(path, "Fortran order is not supported");
}

TEST(NpyHostile, BigEndian) {
  TempDir dir("npy");
  const std::string path = dir / "big_endian.npy";
  write_file(path, npy_file(header_dict(">f4", "(2, 3)"), std::string(24, '\0')));
  expect_read_error(path, "big-endian dtype '>f4'");
}

TEST(NpyHostile, MalformedHeaderDict) {
  TempDir dir("npy");
  const std::string path = dir / "dict.npy";
  const std::string data(8, '\0');
  write_file(path, npy_file("{'descr': '<f4', 'fortran_order': False, }", data));
  expect_read_error(path, "lacks the field 'shape'");
  write_file(path,
             npy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}", data));
  expect_read_error(path, "unknown field 'x'");
  write_file(path, npy_file("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, "
                            "'shape': (2,)}",
                            data));
  expect_read_error(path, "field 'descr' twice");
  write_file(path, npy_file(header_dict("<f4", "(2, -3)"), data));
  expect_read_error(path, "-3 is negative");
  write_file(path, npy_file(header_dict("<f4", "(2)"), data));
  expect_read_error(path, "trailing comma");
  write_file(path, npy_file(header_dict("<f4", "(2.0,)"), data));
  expect_read_error(path, "malformed .npy header");
  write_file(path, npy_file("['descr', '<f4']", data));
  expect_read_error(path, "malformed .npy header");
  write_file(path, npy_file(header_dict("<f4", "(2,)", "maybe"), data));
  expect_read_error(path, "expected True or False");
  write_file(path, npy_file(header_dict("<f4", "(2,)") + " junk", data));
  expect_read_error(path, "after the closing '}'");
  write_file(path, npy_file("{'descr': '<f4", data, 1, false));
  expect_read_error(path, "unterminated string");
}

TEST(NpyHostile, TruncatedData) {
  TempDir dir("npy");
  const std::string path = dir / "truncated.npy";
  write_file(path, npy_file(header_dict("<f4", "(2, 3)"), std::string(20, '\0')));
  expect_read_error(path, "truncated data: expected 24 bytes of data");
  expect_read_error(path, "found 20");
}

TEST(NpyHostile, TrailingBytes) {
  TempDir dir("npy");
  const std::string path = dir / "trailing.npy";
  write_file(path, npy_file(header_dict("<f4", "(2, 3)"), std::string(28, '\0')));
  expect_read_error(path, "4 unexpected trailing bytes");
}

TEST(NpyHostile, BinaryJunkNeverCrashes) {
  TempDir dir("npy");
  const std::string path = dir / "junk.npy";
  std::mt19937 random(12345);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_int_distribution<int> length(0, 300);
  for (int trial = 0; trial < 300; ++trial) {
    std::string junk(static_cast<size_t>(length(random)), '\0');
    for (char& c : junk) c = static_cast<char>(byte(random));
    if (trial % 2 == 0) {
      // Junk after a valid magic string and version, to reach the header checks.
      junk = std::string("\x93NUMPY", 6) + static_cast<char>(1 + trial % 3) + '\0' + junk;
    } else if (!junk.empty()) {
      junk[0] = 'J';
    }
    write_file(path, junk);
    EXPECT_THROW(read_npy(path), InputError) << "trial " << trial;
    int64_t cols = 0;
    EXPECT_THROW(read_feature_npy(path, 3, cols), InputError) << "trial " << trial;
  }
  std::string junk(1000, '\0');
  for (char& c : junk) c = static_cast<char>(byte(random));
  junk[0] = '\x7f';
  write_file(path, junk);
  expect_read_error(path, "bad magic string");
}

// The in-memory readers (used by tests/fuzz) agree with the file readers, valid or not.
TEST(NpyMemory, ParseAgreesWithRead) {
  TempDir dir("npy");
  const std::string path = dir / "m.npy";
  const std::vector<float> values = {1, 2, 3, 4, 5, 6};
  write_npy(path, values.data(), {3, 2});
  const std::string bytes = read_all(path);
  const NpyArray from_file = read_npy(path);
  const NpyArray from_memory = parse_npy(bytes, "mem.npy");
  EXPECT_EQ(from_memory.shape, from_file.shape);
  EXPECT_EQ(from_memory.bytes, from_file.bytes);
  int64_t cols = 0;
  EXPECT_EQ(parse_feature_npy(bytes, "mem.npy", 3, cols), values);
  EXPECT_EQ(cols, 2);
  expect_input_error([&] { parse_npy("", "mem.npy"); }, "mem.npy", "the file is empty");
  expect_input_error([&] { parse_npy(bytes.substr(0, bytes.size() - 1), "mem.npy"); }, "mem.npy",
                     "truncated data");
  expect_input_error([&] { parse_feature_npy(bytes, "mem.npy", 4, cols); }, "mem.npy",
                     "3 rows; expected 4");
  const std::string huge = npy_file(header_dict("<f4", "(1000000000000, 2)"), std::string(8, 0));
  expect_input_error([&] { parse_npy(huge, "mem.npy"); }, "mem.npy", "truncated data");
}

// ---- feature matrices ------------------------------------------------------------------------

TEST(NpyFeatures, Float64IsNarrowedToFloat) {
  TempDir dir("npy");
  const std::string path = dir / "f64.npy";
  const std::vector<double> values = {0.5, -0.25, 1e-3, 8.0};
  write_npy(path, values.data(), {2, 2});
  int64_t cols = 0;
  const std::vector<float> features = read_feature_npy(path, 2, cols);
  EXPECT_EQ(cols, 2);
  EXPECT_EQ(features, (std::vector<float>{0.5f, -0.25f, 1e-3f, 8.0f}));
}

TEST(NpyFeatures, NanValue) {
  TempDir dir("npy");
  const std::string path = dir / "nan.npy";
  std::vector<float> values(6, 1.0f);
  values[5] = std::numeric_limits<float>::quiet_NaN();
  write_npy(path, values.data(), {2, 3});
  expect_feature_error(path, 2, "row 1, column 2 is NaN");
  std::vector<double> doubles(6, 1.0);
  doubles[3] = std::nan("");
  write_npy(path, doubles.data(), {3, 2});
  expect_feature_error(path, 3, "row 1, column 1 is NaN");
}

TEST(NpyFeatures, InfValue) {
  TempDir dir("npy");
  const std::string path = dir / "inf.npy";
  std::vector<float> values(6, 1.0f);
  values[1] = std::numeric_limits<float>::infinity();
  values[4] = -std::numeric_limits<float>::infinity();
  write_npy(path, values.data(), {2, 3});
  expect_feature_error(path, 2, "row 0, column 1 is Inf");
  values[1] = 0.0f;
  write_npy(path, values.data(), {2, 3});
  expect_feature_error(path, 2, "row 1, column 1 is -Inf");
}

TEST(NpyFeatures, Float64OutsideFloatRange) {
  TempDir dir("npy");
  const std::string path = dir / "range.npy";
  const std::vector<double> values = {1.0, 1e300};
  write_npy(path, values.data(), {1, 2});
  expect_feature_error(path, 1, "outside the float32 range");
}

TEST(NpyFeatures, RowsMustMatch) {
  TempDir dir("npy");
  const std::string path = dir / "rows.npy";
  const std::vector<float> values(6, 1.0f);
  write_npy(path, values.data(), {3, 2});
  expect_feature_error(path, 4, "has 3 rows; expected 4");
}

TEST(NpyFeatures, MustBeTwoDimensional) {
  TempDir dir("npy");
  const std::string path = dir / "dims.npy";
  const std::vector<float> values(8, 1.0f);
  write_npy(path, values.data(), {8});
  expect_feature_error(path, 8, "expected a 2-D array");
  write_npy(path, values.data(), {2, 2, 2});
  expect_feature_error(path, 2, "expected a 2-D array");
}

TEST(NpyFeatures, MustBeFloat) {
  TempDir dir("npy");
  const std::string path = dir / "int.npy";
  const std::vector<int64_t> values = {1, 2, 3, 4};
  write_npy(path, values.data(), {2, 2});
  expect_feature_error(path, 2, "expected float32 ('<f4') or float64 ('<f8')");
}

TEST(NpyFeatures, ZeroColumnsIsAnError) {
  TempDir dir("npy");
  const std::string path = dir / "zero.npy";
  write_npy(path, static_cast<const float*>(nullptr), {3, 0});
  expect_feature_error(path, 3, "0 columns");
}

}  // namespace
}  // namespace painvrl
