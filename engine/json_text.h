// Reading JSON files we are given (config.json, tokenizer.json, tokenizer_config.json, a
// safetensors header, a compressed folder's config): one parser with the checks every such file
// needs, so no reader trusts nlohmann's defaults on hostile input.
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <type_traits>

#include "engine/error.h"

namespace minfer {

// Deepest nesting accepted (objects and arrays). Model files nest a few levels; a limit keeps
// the recursive copies, dumps and visits nlohmann and our readers do from exhausting the stack.
inline constexpr int kMaxJsonDepth = 64;

// Parses `text` (RFC 8259 JSON). Throws minfer::Error "<origin>: <what> ..." for a syntax error
// (with nlohmann's position), nesting deeper than kMaxJsonDepth, or an object holding the same key
// twice (nlohmann and Python's json silently keep one of them; which one is meant is ambiguous).
nlohmann::json parse_json_text(std::string_view text, const std::string& origin,
                               const char* what = "file");

// Runs f(), a reader walking a JSON document parsed from `origin`, and turns any nlohmann
// exception that escapes it (a value read as the wrong type, an index into a non-array: a check a
// reader forgot) into a minfer::Error naming the file. A backstop only: readers check each field's
// type themselves and name the field (tokenizer/json_reader.h, engine/config.cpp).
template <typename F>
auto with_json_origin(const std::string& origin, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const nlohmann::json::exception& e) {
    throw Error(origin + ": unexpected JSON structure: " + e.what());
  }
}

// Reads `v` as T without nlohmann's silent conversions (1.5 -> 1, 1e300 -> UB for an integer,
// 1e300 -> inf for a float, true -> 1): integers must be JSON integers within T's range, floats
// JSON numbers within T's finite range, bools JSON booleans, strings JSON strings. Returns false
// (leaving *out alone) when `v` is not such a value.
template <typename T>
bool json_get(const nlohmann::json& v, T* out) {
  if constexpr (std::is_same_v<T, bool>) {
    if (!v.is_boolean()) return false;
    *out = v.get<bool>();
  } else if constexpr (std::is_integral_v<T>) {
    if (v.is_number_unsigned()) {
      const uint64_t u = v.get<uint64_t>();
      if (u > uint64_t(std::numeric_limits<T>::max())) return false;
      *out = T(u);
    } else if (v.is_number_integer()) {
      const int64_t s = v.get<int64_t>();
      if constexpr (std::is_signed_v<T>) {
        if (s < int64_t(std::numeric_limits<T>::min()) ||
            s > int64_t(std::numeric_limits<T>::max()))
          return false;
      } else {
        if (s < 0 || uint64_t(s) > uint64_t(std::numeric_limits<T>::max())) return false;
      }
      *out = T(s);
    } else {
      return false;
    }
  } else if constexpr (std::is_floating_point_v<T>) {
    if (!v.is_number()) return false;
    const double d = v.get<double>();
    if (!(std::fabs(d) <= double(std::numeric_limits<T>::max()))) return false;
    *out = T(d);
  } else if constexpr (std::is_same_v<T, std::string>) {
    if (!v.is_string()) return false;
    *out = v.get<std::string>();
  } else {
    static_assert(sizeof(T) == 0, "json_get: unsupported type");
  }
  return true;
}

}  // namespace minfer
