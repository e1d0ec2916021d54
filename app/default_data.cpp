// Default data (app/default_data.h).
#include "app/default_data.h"

#include <cstdlib>
#include <filesystem>
#include <system_error>

#include "engine/error.h"

namespace fs = std::filesystem;

namespace minfer {

namespace {

bool is_file(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

// The folder searched above the running program, for the error message ("" when unknown).
fs::path program_dir() {
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  return ec ? fs::path() : exe.parent_path();
}

const fs::path kSub = fs::path("shared") / "data" / "wikitext-2-raw";

// locate_wikitext, with `how` (may be empty) added to the error for a $MINFER_WIKITEXT folder
// without the file.
std::string lookup(const std::string& file, const std::string& how) {
  if (const char* e = std::getenv("MINFER_WIKITEXT"); e && *e) {
    const fs::path p = fs::path(e) / file;
    MINFER_CHECK(is_file(p), "WikiText-2 {} not found: MINFER_WIKITEXT={} has no such file{}{}",
                 file, e, how.empty() ? "" : "; ", how);
    return p.string();
  }
  for (const fs::path& d : {".." / kSub, kSub})
    if (is_file(d / file)) return (d / file).string();
  for (fs::path a = program_dir(); !a.empty(); a = a.parent_path()) {
    if (is_file(a / kSub / file)) return (a / kSub / file).string();
    if (a == a.root_path()) break;
  }
  return "";
}

}  // namespace

std::string locate_wikitext(const std::string& file) {
  return lookup(file, "");
}

std::string find_wikitext(const std::string& file, const std::string& how) {
  std::string p = lookup(file, how);
  if (!p.empty()) return p;
  const fs::path start = program_dir();
  MINFER_FAIL(
      "WikiText-2 {} not found in ../{} or {} (from the working directory) nor in {} above {}; {}, "
      "or set MINFER_WIKITEXT to the wikitext-2-raw folder",
      file, kSub.string(), kSub.string(), kSub.string(),
      start.empty() ? std::string("the program") : start.string(), how);
}

}  // namespace minfer
