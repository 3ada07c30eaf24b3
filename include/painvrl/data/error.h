// Error types. InputError: the user's data, config or command line is wrong; the program prints
// the message (which names the file, line or field and what was expected) and exits with status 1.
// Anything else escaping is a bug and exits with status 2.
#pragma once
#include <fmt/format.h>

#include <functional>
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
// Every line also goes, with a time stamp, to the file set_log_file names (a run's log.txt,
// appended to); lines logged before it is named are kept and written first.
void log_info(const std::string& message);
void log_warn(const std::string& message);
void log_final(const std::string& message);  // the command's last word (error, interrupted, ...)
// Progress lines of long loops (epochs, evaluations, HIM rounds, mask epochs): always in the log
// file; on stderr when it is a terminal or PAINVRL_PROGRESS=all (never with --quiet), so that the
// log of a batch job has the lines of log_info only, about one per stage.
void log_progress(const std::string& message);
void set_quiet(bool quiet);
void set_log_file(const std::string& path);  // "" closes it
// Also hands every line (progress included, whatever --quiet says) to `sink`, e.g. the Python
// package's callback; an empty function removes it.
void set_log_sink(std::function<void(const std::string&)> sink);

}  // namespace painvrl
