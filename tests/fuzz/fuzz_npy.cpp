// libFuzzer target: the .npy reader (host/data/npy.cpp) on arbitrary bytes, through parse_npy and
// the feature-matrix reader parse_feature_npy. An InputError is the expected answer to bad bytes;
// any other exception, a crash, a leak or a sanitizer report is a finding. Run by tools/fuzz.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "painvrl/data/error.h"
#include "painvrl/data/npy.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  int64_t rows = 1;
  try {
    const painvrl::NpyArray array = painvrl::parse_npy(bytes, "fuzz.npy");
    if (!array.shape.empty()) rows = array.shape[0];
    if (array.dtype == painvrl::NpyDtype::kInt32 || array.dtype == painvrl::NpyDtype::kInt64) {
      (void)array.to_int64();
    } else {
      (void)array.to_float();
      (void)array.to_double();
    }
  } catch (const painvrl::InputError&) {
  }
  // The feature reader with the row count the header declares (when it could be read), so that
  // the dtype, shape and finiteness checks after the header are reached too.
  try {
    int64_t cols = 0;
    (void)painvrl::parse_feature_npy(bytes, "fuzz.npy", rows, cols);
  } catch (const painvrl::InputError&) {
  }
  return 0;
}
