// libFuzzer target: the config parser of host/pipeline/config.cpp. The input is read as a TOML
// config (apply_toml) and, line by line, as `--set key=value` overrides (apply_override); a config
// that validates must survive its resolved form: to_toml, read back, gives the same text. An
// InputError is the expected answer to bad input; any other exception, a crash, a leak, a sanitizer
// report or a broken round trip is a finding. Run by tools/fuzz.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

#include "painvrl/data/error.h"
#include "painvrl/pipeline/config.h"

namespace {

void check_round_trip(const painvrl::Config& config) {
  try {
    painvrl::validate(config);
  } catch (const painvrl::InputError&) {
    return;  // only valid configs are written out
  }
  const std::string text = painvrl::to_toml(config);
  painvrl::Config back;
  try {
    painvrl::apply_toml(back, text, "resolved");
  } catch (const painvrl::InputError& error) {
    std::fprintf(stderr, "resolved config does not read back: %s\n%s", error.what(), text.c_str());
    __builtin_trap();
  }
  if (painvrl::to_toml(back) != text) {
    std::fprintf(stderr, "resolved config changes when read back:\n%s---\n%s", text.c_str(),
                 painvrl::to_toml(back).c_str());
    __builtin_trap();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    painvrl::Config config;
    painvrl::apply_toml(config, text, "fuzz.toml");
    check_round_trip(config);
  } catch (const painvrl::InputError&) {
  }
  // Overrides: the first 4 lines, each cut to 64 bytes. Only the "did you mean" search depends
  // on a line's length (it costs time in the key's length), and long inputs would slow every run.
  painvrl::Config config;
  bool applied = false;
  size_t start = 0;
  for (int line = 0; line < 4 && start <= text.size(); ++line) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    try {
      painvrl::apply_override(config, text.substr(start, std::min<size_t>(end - start, 64)));
      applied = true;
    } catch (const painvrl::InputError&) {
    }
    start = end + 1;
  }
  if (applied) check_round_trip(config);
  return 0;
}
