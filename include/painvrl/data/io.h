// Small file helpers: atomic writes (temporary file in the same directory, flush, rename) so that
// no reader ever sees a half-written output, and whole-file reads with clear errors.
#pragma once
#include <nlohmann/json_fwd.hpp>
#include <string>

namespace painvrl {

void write_text_atomic(const std::string& path, const std::string& text);
void write_bytes_atomic(const std::string& path, const void* data, size_t size);
std::string read_text_file(const std::string& path);  // throws InputError naming the path
// A JSON file; throws InputError naming the path when it is missing or not valid JSON.
nlohmann::json read_json_file(const std::string& path);
std::string temp_path_for(const std::string& path);  // "<path>.tmp.<pid>.<n>"

}  // namespace painvrl
