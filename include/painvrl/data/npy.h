// NumPy .npy reading and writing (format versions 1.0, 2.0, 3.0; little-endian, C order).
// Every header field is validated before anything is allocated: the declared shape must fit in
// the bytes the file actually holds, so a hostile header can never cause a large allocation or a
// read past the end.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace painvrl {

enum class NpyDtype { kFloat32, kFloat64, kInt64, kInt32 };

struct NpyArray {
  NpyDtype dtype = NpyDtype::kFloat32;
  std::vector<int64_t> shape;
  std::vector<unsigned char> bytes;  // the raw little-endian data, shape product * item size
  int64_t size() const;
  std::vector<float> to_float() const;    // float32/float64 -> float
  std::vector<double> to_double() const;  // float32/float64 -> double
  std::vector<int64_t> to_int64() const;  // int32/int64 -> int64
};

// Reads any supported dtype. Throws InputError naming `path` and the offending field.
NpyArray read_npy(const std::string& path);

// A feature matrix: float32 or float64, 2-D, expected_rows rows, every value finite.
// Returns row-major floats (rows x cols).
std::vector<float> read_feature_npy(const std::string& path, int64_t expected_rows, int64_t& cols);

// The same two readers over the bytes of an .npy file already in memory (the fuzz targets in
// tests/fuzz use them); `name` stands for the path in error messages. Every check is shared with
// the file readers.
NpyArray parse_npy(std::string_view bytes, const std::string& name);
std::vector<float> parse_feature_npy(std::string_view bytes, const std::string& name,
                                     int64_t expected_rows, int64_t& cols);

// Writes atomically (temporary file, then rename).
void write_npy(const std::string& path, const float* data, const std::vector<int64_t>& shape);
void write_npy(const std::string& path, const double* data, const std::vector<int64_t>& shape);
void write_npy(const std::string& path, const int64_t* data, const std::vector<int64_t>& shape);

}  // namespace painvrl
