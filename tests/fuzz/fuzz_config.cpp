// libFuzzer harness: config.json text through parse_config (engine/config.cpp). See
// docs/fuzzing.md.
#include "engine/config.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  minfer::fuzz::expect_clean(
      [&] { (void)minfer::parse_config(minfer::fuzz::as_string(data, size), "config.json"); });
  return 0;
}
