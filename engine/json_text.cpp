#include "engine/json_text.h"

#include <set>
#include <vector>

#include "engine/error.h"

namespace minfer {

using json = nlohmann::json;

json parse_json_text(std::string_view text, const std::string& origin, const char* what) {
  std::vector<std::set<std::string>> keys;  // one set per open object
  std::string duplicate;
  bool too_deep = false;
  json::parser_callback_t cb = [&](int depth, json::parse_event_t ev, json& parsed) {
    if (ev == json::parse_event_t::object_start || ev == json::parse_event_t::array_start) {
      // `depth` counts the enclosing values; past the limit, stop parsing at once.
      if (depth >= kMaxJsonDepth) {
        too_deep = true;
        throw std::runtime_error("too deep");
      }
      if (ev == json::parse_event_t::object_start) keys.emplace_back();
    } else if (ev == json::parse_event_t::object_end) {
      if (!keys.empty()) keys.pop_back();
    } else if (ev == json::parse_event_t::key && !keys.empty() && duplicate.empty()) {
      const std::string& k = parsed.get_ref<const std::string&>();
      if (!keys.back().insert(k).second) duplicate = k;
    }
    return true;
  };
  json j;
  try {
    j = json::parse(text.begin(), text.end(), cb, /*allow_exceptions=*/true);
  } catch (const json::exception& e) {
    MINFER_FAIL("{}: {} is not valid JSON: {}", origin, what, e.what());
  } catch (const std::runtime_error&) {
    if (!too_deep) throw;
    MINFER_FAIL("{}: {} nests objects/arrays deeper than {} levels", origin, what, kMaxJsonDepth);
  }
  MINFER_CHECK(duplicate.empty(), "{}: {} has the key '{}' more than once", origin, what,
               duplicate);
  return j;
}

}  // namespace minfer
