// Errors at every boundary (files, shapes, token ids, CLI arguments) throw minfer::Error with the
// source location and the offending values. Tools catch it, print one line, exit non-zero.
#pragma once
#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace minfer {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

// Thrown by anything that is in scope but not written yet: never a silent stub.
class NotImplemented : public Error {
 public:
  explicit NotImplemented(const std::string& what) : Error("not implemented: " + what) {}
};

[[noreturn]] void throw_error(const char* file, int line, const std::string& msg);

}  // namespace minfer

// MINFER_CHECK(cond, "fmt {}", args...): throws minfer::Error "msg (file:line)" when cond is false.
#define MINFER_CHECK(cond, ...)                                              \
  do {                                                                       \
    if (!(cond)) [[unlikely]]                                                \
      ::minfer::throw_error(__FILE__, __LINE__, ::fmt::format(__VA_ARGS__)); \
  } while (0)

#define MINFER_FAIL(...) ::minfer::throw_error(__FILE__, __LINE__, ::fmt::format(__VA_ARGS__))

// Hot-loop checks: compiled out of release builds.
#ifdef NDEBUG
#define MINFER_DCHECK(cond, ...) \
  do {                           \
  } while (0)
#else
#define MINFER_DCHECK(cond, ...) MINFER_CHECK(cond, __VA_ARGS__)
#endif
