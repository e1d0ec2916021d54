// A kernel switch read from the environment (A/B timing, turning a load-time repack off).
#pragma once

#include <cstdlib>
#include <initializer_list>
#include <string>
#include <string_view>

#include "engine/error.h"

namespace minfer {

// The value of environment variable `name`, or `def` when it is unset. A value outside `allowed`
// is an error naming the variable, its value and the accepted ones ("MINFER_X='v': expected a, b
// or c"). Callers read it once (a function-local static).
inline std::string env_switch(const char* name, const char* def,
                              std::initializer_list<std::string_view> allowed) {
  const char* e = std::getenv(name);
  const std::string v = e ? e : def;
  std::string list;
  size_t i = 0;
  for (std::string_view a : allowed) {
    if (a == v) return v;
    list += std::string(i == 0 ? "" : i + 1 == allowed.size() ? " or " : ", ") + std::string(a);
    ++i;
  }
  MINFER_FAIL("{}='{}': expected {}", name, v, list);
}

}  // namespace minfer
