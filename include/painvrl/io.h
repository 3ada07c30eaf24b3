// Small file helpers: atomic writes (temporary file in the same directory, flush, rename) so that
// no reader ever sees a half-written output, and whole-file reads with clear errors.
#pragma once
#include <string>

namespace painvrl {

void write_text_atomic(const std::string& path, const std::string& text);
void write_bytes_atomic(const std::string& path, const void* data, size_t size);
std::string read_text_file(const std::string& path);  // throws InputError naming the path
std::string temp_path_for(const std::string& path);   // "<path>.tmp.<pid>.<n>"

}  // namespace painvrl
