// Error types. InputError: the user's data, config or command line is wrong; the program prints
// the message (which names the file, line or field and what was expected) and exits with status 1.
// Anything else escaping is a bug and exits with status 2.
#pragma once
#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace painvrl {

class InputError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

template <class... Args>
[[noreturn]] void input_error(fmt::format_string<Args...> f, Args&&... args) {
  throw InputError(fmt::format(f, std::forward<Args>(args)...));
}

// Warnings and progress go to stderr through one function so tests can silence them.
void log_info(const std::string& message);
void log_warn(const std::string& message);
void set_quiet(bool quiet);

}  // namespace painvrl
