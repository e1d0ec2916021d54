// Chat templates: an interpreter for the subset of Jinja2 that Hugging Face chat templates use,
// rendering exactly what transformers' `apply_chat_template` renders.
//
//   minfer::ChatTemplate t(tok.chat_template(), "tokenizer_config.json");  // parses, or throws
//   std::string prompt = t.render(minfer::chat_template_context(
//       {{"system", "Be brief."}, {"user", "Hello"}}, /*add_generation_prompt=*/true, "<s>",
//       "</s>"));
//
// Semantics follow Jinja2 3.1 (https://jinja.palletsprojects.com/en/3.1.x/templates/) as
// transformers configures it (transformers/utils/chat_template_utils.py
// `_compile_jinja_template`): an ImmutableSandboxedEnvironment with trim_blocks=True,
// lstrip_blocks=True and the loopcontrols extension (break/continue); `tojson` is json.dumps with
// ensure_ascii=False and no key sorting; `raise_exception(msg)` aborts rendering with msg.
// Values behave as Python values do (truthiness, ==, str(), repr of lists and dicts, float repr).
// docs/tokenizers.md lists every statement, filter, test, method and global supported. Anything
// else is a ChatTemplateError naming the construct and its line: a template is never rendered
// differently from jinja2 without saying so.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "engine/error.h"

namespace minfer {

class Tokenizer;

// Syntax errors, unsupported constructs, runtime type errors and raise_exception() from the
// template. what() = "<origin>:<line>: <message>"; for raise_exception, message() is the text the
// template passed, unchanged.
class ChatTemplateError : public Error {
 public:
  ChatTemplateError(const std::string& what, std::string message, bool raised)
      : Error(what), message_(std::move(message)), raised_(raised) {}
  const std::string& message() const { return message_; }
  bool raised_by_template() const { return raised_; }  // raise_exception() was called

 private:
  std::string message_;
  bool raised_;
};

struct ChatMessage {
  std::string role;  // "system", "user", "assistant", "tool", ...
  std::string content;
};

class ChatTemplate {
 public:
  // Parses the whole template up front: syntax errors and unknown statements throw here.
  // `origin` names the template in errors (a file path or "GGUF tokenizer.chat_template").
  explicit ChatTemplate(const std::string& source, std::string origin = "chat template");
  ~ChatTemplate();
  ChatTemplate(ChatTemplate&&) noexcept;
  ChatTemplate& operator=(ChatTemplate&&) noexcept;

  struct RenderOptions {
    // Define strftime_now(format) (local time), as transformers does; off gives reproducible
    // output for templates that print today's date (they fall back to their own default).
    bool strftime_now = true;
    // Loop iterations plus macro calls one render may take (>= 1); past it the render throws
    // ChatTemplateError "more than N loop iterations and macro calls": a runaway template is an
    // error, never a hang. Published templates take about (messages x content parts + tools).
    int64_t max_steps = 1'000'000;
  };

  // Renders with the variables of `context` (a JSON object; objects keep their key order, as
  // Python dicts do). Unknown filters, tests, methods and type errors throw ChatTemplateError.
  // Thread-safe: rendering does not modify the parsed template.
  std::string render(const nlohmann::ordered_json& context, const RenderOptions& opt) const;
  std::string render(const nlohmann::ordered_json& context) const { return render(context, {}); }

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// The variables transformers' apply_chat_template passes: messages, tools = None,
// documents = None, add_generation_prompt, and bos_token / eos_token when the tokenizer has them
// (an empty string means "none": the variable is left undefined, as transformers does).
nlohmann::ordered_json chat_template_context(const std::vector<ChatMessage>& messages,
                                             bool add_generation_prompt,
                                             const std::string& bos_token,
                                             const std::string& eos_token);

// ChatML (<|im_start|>role\ncontent<|im_end|>\n ... <|im_start|>assistant\n), the format used
// when a model has ChatML special tokens but no template of its own.
extern const char* const kChatMLTemplate;

// A chat turn rendered with a tokenizer's own template and encoded.
struct ChatPrompt {
  std::string text;             // what the template rendered (after the BOS adjustment below)
  std::vector<int32_t> ids;     // encode(text, add_special=true)
  bool chatml_default = false;  // the tokenizer has no template; ChatML was used (see below)
};

// Renders `messages` with tok.chat_template() (bos_token / eos_token = the tokenizer's BOS/EOS
// token strings) and encodes the result with the tokenizer's own special-token rule. When the
// tokenizer adds BOS itself and the rendered text starts with the BOS string (Llama-3, Mistral
// and Gemma templates print bos_token), that leading BOS is dropped from the text first, so the
// prompt has exactly one BOS (llama.cpp common/chat.cpp does the same). A tokenizer without a
// template gets kChatMLTemplate if it has the special tokens <|im_start|> and <|im_end|>;
// otherwise this throws an Error saying the model has no chat template.
ChatPrompt render_chat_prompt(const Tokenizer& tok, const std::vector<ChatMessage>& messages,
                              bool add_generation_prompt = true);

// Ids that end an assistant turn: Tokenizer::eog_ids() (EOS, EOT, EOM and the special tokens
// <|im_end|>, <|eot_id|>, <|end|>, <end_of_turn>, ... of ChatML, Llama-3, Phi-3, Gemma).
std::vector<int32_t> chat_stop_ids(const Tokenizer& tok);

}  // namespace minfer
