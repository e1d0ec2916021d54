// tokenizer.json reading helpers shared by every pipeline stage's parser: typed field access whose
// errors name the file (`origin`) and the field, e.g. "tokenizer.json: field 'lowercase' should be
// a boolean, found 1".
#pragma once
#include <fmt/format.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>

#include "engine/error.h"
#include "engine/json_text.h"
#include "tokenizer/unicode.h"

namespace minfer {

struct JsonReader {
  using json = nlohmann::json;
  std::string origin;

  [[noreturn]] void fail(const std::string& what) const { MINFER_FAIL("{}: {}", origin, what); }

  const json& field(const json& o, const char* key, const std::string& where) const {
    if (!o.is_object() || !o.contains(key)) fail(fmt::format("{} has no field '{}'", where, key));
    return o.at(key);
  }
  // A field that must be a JSON array (iterating a string or number would visit the value itself,
  // and indexing it throws nlohmann's type_error).
  const json& array(const json& o, const char* key, const std::string& where) const {
    const json& v = field(o, key, where);
    if (!v.is_array())
      fail(fmt::format("{}.{} should be a list, found {}", where, key, v.type_name()));
    return v;
  }
  // A field that must be a JSON object.
  const json& object(const json& o, const char* key, const std::string& where) const {
    const json& v = field(o, key, where);
    if (!v.is_object())
      fail(fmt::format("{}.{} should be an object, found {}", where, key, v.type_name()));
    return v;
  }
  std::string str(const json& o, const char* key, const std::string& where) const {
    const json& v = field(o, key, where);
    if (!v.is_string())
      fail(fmt::format("{}.{} should be a string, found {}", where, key, v.type_name()));
    return v.get<std::string>();
  }
  std::string str_or(const json& o, const char* key, const std::string& def) const {
    if (!o.is_object() || !o.contains(key) || o.at(key).is_null()) return def;
    if (!o.at(key).is_string())
      fail(fmt::format("field '{}' should be a string, found {}", key, o.at(key).type_name()));
    return o.at(key).get<std::string>();
  }
  bool boolean(const json& o, const char* key, bool def) const {
    if (!o.is_object() || !o.contains(key) || o.at(key).is_null()) return def;
    if (!o.at(key).is_boolean())
      fail(fmt::format("field '{}' should be a boolean, found {}", key, o.at(key).dump()));
    return o.at(key).get<bool>();
  }
  int64_t integer(const json& o, const char* key, int64_t def) const {
    if (!o.is_object() || !o.contains(key) || o.at(key).is_null()) return def;
    if (!o.at(key).is_number_integer())
      fail(fmt::format("field '{}' should be an integer, found {}", key, o.at(key).dump()));
    return o.at(key).get<int64_t>();
  }
  // The component's "type"; `where` names the stage ("normalizer", "decoder", ...).
  std::string type(const json& o, const std::string& where) const {
    if (!o.is_object()) fail(fmt::format("{} should be an object, found {}", where, o.type_name()));
    return str(o, "type", where);
  }
  // {"String": "x"} or {"Regex": "..."} -> (is_regex, text)
  std::pair<bool, std::string> pattern(const json& o, const std::string& where) const {
    const json& p = field(o, "pattern", where);
    if (p.is_object() && p.size() == 1 && p.contains("String") && p.at("String").is_string())
      return {false, p.at("String").get<std::string>()};
    if (p.is_object() && p.size() == 1 && p.contains("Regex") && p.at("Regex").is_string())
      return {true, p.at("Regex").get<std::string>()};
    fail(fmt::format("{}.pattern should be {{\"String\": ...}} or {{\"Regex\": ...}}, found {}",
                     where, p.dump()));
  }
  // A string field holding exactly one character (UTF-8).
  std::string one_char(const json& o, const char* key, const std::string& where) const {
    std::string s = str(o, key, where);
    if (unicode::find_invalid_utf8(s) != std::string::npos || unicode::count_chars(s) != 1)
      fail(fmt::format("{}.{} should be a single character, found '{}'", where, key, s));
    return s;
  }
};

}  // namespace minfer
