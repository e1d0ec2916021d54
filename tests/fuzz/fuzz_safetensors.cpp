// libFuzzer harness: a safetensors image (8-byte header length, JSON header, data) read from
// memory, then every tensor's metadata and bytes touched. See docs/fuzzing.md.
#include <numeric>

#include "engine/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  minfer::fuzz::expect_clean([&] {
    auto f = minfer::SafetensorsFile::open_memory(minfer::borrowed_storage(data, size), "fuzz.st");
    size_t sum = 0;
    for (const auto& [name, t] : f->tensors()) {
      const auto* b = static_cast<const uint8_t*>(t.raw());
      for (size_t i = 0; i < t.nbytes(); ++i) sum += b[i];  // every byte must be inside the image
    }
    for (const auto& [k, v] : f->metadata()) sum += k.size() + v.size();
    if (sum == 1) __asm__ volatile("");
  });
  return 0;
}
