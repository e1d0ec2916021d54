// Shared by the libFuzzer harnesses (docs/fuzzing.md). A harness feeds bytes to one reader and
// accepts exactly one outcome for bad input: a minfer::Error (the project's error type, with a
// message). Anything else — a crash, a sanitizer report, a leak, an exception of another type
// (std::out_of_range, nlohmann::json::type_error, std::bad_alloc from a huge count, ...) — escapes
// the harness and libFuzzer reports it as a finding.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "engine/error.h"

namespace minfer::fuzz {

// Runs f(); a minfer::Error is the expected answer to malformed input and is swallowed. Its
// message must say something (every error names the file/key/argument).
template <typename F>
void expect_clean(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    if (std::string_view(e.what()).empty()) __builtin_trap();
  }
}

inline std::string as_string(const uint8_t* data, size_t size) {
  return std::string(reinterpret_cast<const char*>(data), size);
}

// Splits the input at its first NUL byte: (before, after). No NUL: (all, "").
inline std::pair<std::string, std::string> split_nul(const uint8_t* data, size_t size) {
  const std::string s = as_string(data, size);
  const size_t z = s.find('\0');
  if (z == std::string::npos) return {s, std::string()};
  return {s.substr(0, z), s.substr(z + 1)};
}

}  // namespace minfer::fuzz
