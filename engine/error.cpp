#include "engine/error.h"

#include <cstring>

namespace minfer {

void throw_error(const char* file, int line, const std::string& msg) {
  const char* base = std::strrchr(file, '/');
  throw Error(fmt::format("{} ({}:{})", msg, base ? base + 1 : file, line));
}

}  // namespace minfer
