// Reading a format's JSON entry (a compressed folder's config.json, engine/formats/format.h):
// the pieces the formats' load() share. Kept out of format.h, which every Linear user includes,
// so that only the formats' sources parse nlohmann/json.hpp.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "engine/formats/format.h"
#include "engine/json_text.h"

namespace minfer {

// A required JSON field of type T in a format entry; throws naming `where` and the key.
template <typename T>
T meta_field(const json& j, const char* key, const std::string& where) {
  if (!j.is_object() || !j.contains(key))
    throw_meta_error(where, std::string("entry lacks '") + key + "'");
  T out{};
  if (!json_get(j.at(key), &out))
    throw_meta_error(
        where, std::string("field '") + key + "' has the wrong type (" + j.at(key).dump() + ")");
  return out;
}
}  // namespace minfer
