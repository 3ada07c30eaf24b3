// libFuzzer target: the interaction readers of host/data/dataset.cpp (LightGCN lines, the `user
// item` pairs TSV, MMRec .inter) on arbitrary text; every input goes through all three. An
// InputError is the expected answer to bad text; any other exception, a crash, a leak or a
// sanitizer report is a finding. Run by tools/fuzz.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "painvrl/data/dataset.h"
#include "painvrl/data/error.h"

namespace {

// Every pair a reader returns must hold two valid ids.
void check(const painvrl::PairList& pairs) {
  if (pairs.user.size() != pairs.item.size()) __builtin_trap();
  for (size_t p = 0; p < pairs.size(); ++p) {
    if (pairs.user[p] < 0 || pairs.item[p] < 0) __builtin_trap();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    check(painvrl::parse_lightgcn(text, "fuzz.txt"));
  } catch (const painvrl::InputError&) {
  }
  try {
    check(painvrl::parse_pairs_tsv(text, "fuzz.tsv"));
  } catch (const painvrl::InputError&) {
  }
  try {
    painvrl::PairList splits[3];
    painvrl::parse_inter(text, "fuzz.inter", splits);
    for (const painvrl::PairList& split : splits) check(split);
  } catch (const painvrl::InputError&) {
  }
  return 0;
}
