// libFuzzer harness: tokenizer.json text through Tokenizer::from_json_string, then a fixed text
// encoded and decoded with whatever tokenizer it describes. See docs/fuzzing.md.
#include "tests/fuzz/fuzz_util.h"
#include "tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  minfer::fuzz::expect_clean([&] {
    auto tok =
        minfer::Tokenizer::from_json_string(minfer::fuzz::as_string(data, size), "tokenizer.json");
    for (const char* text : {"Hello world! 123 héllo 日本語 <s>\n", "", " ", "a"}) {
      const auto ids = tok->encode(text, true);
      (void)tok->decode(ids, false);
      (void)tok->decode(ids, true);
    }
    (void)tok->to_hf_json();
  });
  return 0;
}
