// libFuzzer harness: a chat template and its variables. The input is the template source, then
// (after the first NUL byte, optional) the rendering context as JSON: an object such as
// {"messages": [{"role": "user", "content": "hi"}], "add_generation_prompt": true}; without one
// (or when it is not a JSON object) a fixed two-turn conversation is used. Errors must be
// ChatTemplateError (a minfer::Error). See docs/fuzzing.md.
#include "tests/fuzz/fuzz_util.h"
#include "tokenizer/chat_template.h"

using namespace minfer;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto parts = fuzz::split_nul(data, size);
  const std::string& source = parts.first;
  const std::string& ctx_text = parts.second;
  nlohmann::ordered_json ctx =
      nlohmann::ordered_json::parse(ctx_text, nullptr, /*allow_exceptions=*/false);
  if (!ctx.is_object())
    ctx = chat_template_context({{"system", "Be brief."}, {"user", "Hello"}, {"assistant", "Hi!"}},
                                true, "<s>", "</s>");
  fuzz::expect_clean([&] {
    ChatTemplate t(source, "fuzz template");
    ChatTemplate::RenderOptions opt;
    opt.strftime_now = false;
    (void)t.render(ctx, opt);
  });
  return 0;
}
