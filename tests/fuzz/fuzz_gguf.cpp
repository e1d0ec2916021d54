// libFuzzer harness: a GGUF image read from memory (header, metadata, tensor infos), then what
// loading does with the metadata: the typed getters, the model config (config_from_gguf), the
// tokenizer (tokenizer.ggml.*, encoding a fixed text) and dequantization of small tensors.
// See docs/fuzzing.md.
#include "engine/gguf.h"
#include "engine/gguf_source.h"
#include "tests/fuzz/fuzz_util.h"
#include "tokenizer/tokenizer.h"

using namespace minfer;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::shared_ptr<GgufFile> f;
  fuzz::expect_clean([&] { f = GgufFile::open_memory(borrowed_storage(data, size), "fuzz.gguf"); });
  if (!f) return 0;
  for (const auto& [key, v] : f->metadata()) {
    fuzz::expect_clean([&, k = key] { (void)f->type_of(k); });
    fuzz::expect_clean([&, k = key] { (void)f->get_int(k); });
    fuzz::expect_clean([&, k = key] { (void)f->get_float(k); });
    fuzz::expect_clean([&, k = key] { (void)f->get_str(k); });
    fuzz::expect_clean([&, k = key] { (void)f->get_int_array(k); });
    fuzz::expect_clean([&, k = key] { (void)f->get_float_array(k); });
  }
  fuzz::expect_clean([&] { (void)config_from_gguf(*f); });
  fuzz::expect_clean([&] {
    auto tok = Tokenizer::from_gguf(*f);
    const auto ids = tok->encode("Hello world, <s> 123 héllo\n", true);
    (void)tok->decode(ids, false);
  });
  for (const auto& t : f->tensors()) {
    if (t.nbytes > (1u << 20)) continue;
    fuzz::expect_clean([&] { (void)f->dequantize(t); });
  }
  return 0;
}
