// Chat-template interpreter vs Python jinja2 as transformers configures it. Fixtures from
// tests/fixtures/chat/make_chat_fixtures.py: the published templates of SmolLM2, Qwen2.5, Qwen3,
// Llama-3, Llama-3.2, Mistral, Phi-3 and Gemma-2 over several conversations, and one small
// template per language piece. Plus the error paths, which jinja2 cannot give us as strings.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "tests/test_util.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

using minfer::ChatTemplate;
using minfer::ChatTemplateError;
using ojson = nlohmann::ordered_json;

namespace {

const char* kDir = "tests/fixtures/chat/";

ojson read_json(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  REQUIRE_MESSAGE(f.good(), "cannot open ", path);
  return ojson::parse(f);
}

std::string render(const std::string& tmpl, const ojson& ctx = ojson::object()) {
  return ChatTemplate(tmpl, "test").render(ctx, {false});
}

// The error a template gives, or "" when it renders.
std::string error_of(const std::string& tmpl, const ojson& ctx = ojson::object()) {
  try {
    render(tmpl, ctx);
  } catch (const ChatTemplateError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("chat template: published templates render exactly as jinja2 does") {
  const ojson all = read_json(std::string(kDir) + "chat_templates.expected.json");
  REQUIRE(all.size() >= 6);
  size_t n_cases = 0, n_raised = 0;
  for (const ojson& t : all) {
    const std::string name = t.at("name").get<std::string>();
    ChatTemplate ct(t.at("template").get<std::string>(), name);
    for (const ojson& c : t.at("cases")) {
      ojson ctx = {{"messages", c.at("messages")},
                   {"tools", nullptr},
                   {"documents", nullptr},
                   {"add_generation_prompt", c.at("add_generation_prompt")}};
      if (!t.at("bos_token").is_null()) ctx["bos_token"] = t.at("bos_token");
      if (!t.at("eos_token").is_null()) ctx["eos_token"] = t.at("eos_token");
      for (const auto& [k, v] : c.at("extra").items()) ctx[k] = v;
      CAPTURE(name);
      CAPTURE(c.dump());
      ++n_cases;
      if (c.contains("error")) {
        ++n_raised;
        try {
          ct.render(ctx, {false});
          FAIL("expected raise_exception: ", c.at("error").get<std::string>());
        } catch (const ChatTemplateError& e) {
          CHECK(e.raised_by_template());
          CHECK(e.message() == c.at("error").get<std::string>());
        }
      } else {
        CHECK(ct.render(ctx, {false}) == c.at("expected").get<std::string>());
      }
    }
  }
  CHECK(n_cases >= 100);
  CHECK(n_raised >= 6);
}

TEST_CASE("chat template: chat_template_context passes what apply_chat_template passes") {
  // Qwen2.5-Instruct: no system message -> its default system turn (the template writes the
  // newlines as the Jinja escape "\n", which a pattern match on real newlines misses).
  const ojson all = read_json(std::string(kDir) + "chat_templates.expected.json");
  for (const ojson& t : all) {
    if (t.at("name") != "qwen2.5" && t.at("name") != "llama-3") continue;
    const ojson& c = t.at("cases").at(0);  // [user "Hello there"], add_generation_prompt
    REQUIRE(c.at("messages").size() == 1);
    REQUIRE(c.at("add_generation_prompt") == true);
    ojson ctx = minfer::chat_template_context(
        {{"user", "Hello there"}}, true,
        t.at("bos_token").is_null() ? "" : t.at("bos_token").get<std::string>(),
        t.at("eos_token").is_null() ? "" : t.at("eos_token").get<std::string>());
    CHECK(ChatTemplate(t.at("template").get<std::string>()).render(ctx) ==
          c.at("expected").get<std::string>());
  }
}

TEST_CASE("chat template: each language piece renders as jinja2 does") {
  const ojson all = read_json(std::string(kDir) + "chat_units.expected.json");
  REQUIRE(all.at("cases").size() >= 30);
  for (const ojson& c : all.at("cases")) {
    CAPTURE(c.at("name").get<std::string>());
    CAPTURE(c.at("template").get<std::string>());
    CHECK(render(c.at("template").get<std::string>(), all.at("vars")) ==
          c.at("expected").get<std::string>());
  }
}

TEST_CASE("chat template: hand-checked pieces jinja2 alone cannot produce") {
  // {% generation %} is transformers' AssistantTracker extension: it renders its body.
  CHECK(render("a{% generation %}b{{ 1 + 1 }}{% endgeneration %}c") == "ab2c");
  // The ChatML default.
  ojson ctx = minfer::chat_template_context({{"system", "S"}, {"user", "U"}}, true, "", "");
  CHECK(render(minfer::kChatMLTemplate, ctx) ==
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n");
  // No bos_token given: the variable is undefined (prints empty), as in transformers.
  CHECK(ctx.contains("bos_token") == false);
  CHECK(render("[{{ bos_token }}]{{ bos_token is defined }}", ctx) == "[]False");
  // strftime_now is defined by default, as transformers defines it.
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  char year[8];
  std::strftime(year, sizeof year, "%Y", &tm);
  CHECK(ChatTemplate("{{ strftime_now('%Y') }}").render(ojson::object()) == year);
  CHECK(render("{{ strftime_now is defined }}") == "False");
  // Object key order is kept, as Python dicts keep it.
  CHECK(render("{{ x | tojson }}", ojson::parse(R"({"x": {"z": 1, "a": 2}})")) ==
        R"({"z": 1, "a": 2})");
}

TEST_CASE("chat template: errors name the construct and the line") {
  auto has = [](const std::string& err, const std::string& part) {
    CAPTURE(err);
    CHECK(err.find(part) != std::string::npos);
  };
  // Unknown filter, test, method, function.
  has(error_of("{{ 'a' | frobnicate }}"), "unknown filter 'frobnicate'");
  has(error_of("\n\n{{ 'a' | frobnicate }}"), "line 3");
  has(error_of("{{ 1 is frobbed }}"), "unknown test 'frobbed'");
  has(error_of("{{ 'a'.zfill(3) }}"), "unsupported method str.zfill()");
  has(error_of("{{ cycler(1, 2) }}"), "'cycler' is undefined");
  // Unclosed and mismatched blocks, tags, strings.
  has(error_of("{% for m in messages %}x"), "unclosed '{% for %}' block opened on line 1");
  has(error_of("{% if x %}a{% else %}b"), "unclosed '{% if %}' block");
  has(error_of("{% if x %}a{% endfor %}"), "unexpected '{% endfor %}'");
  has(error_of("{% endif %}"), "unexpected '{% endif %}' with no open block");
  has(error_of("{{ 'a' "), "unclosed tag");
  has(error_of("{{ 'abc }}"), "unterminated string literal");
  has(error_of("{# note"), "unclosed comment");
  has(error_of("{{ (1 + 2 }}"), "unbalanced '}'");
  has(error_of("{{ (1 + 2) ]}}"), "unbalanced ']'");
  has(error_of("{{ [1, 2 }}"), "unbalanced");
  // Statements and forms outside the subset.
  has(error_of("{% call foo() %}x{% endcall %}"), "unsupported statement '{% call %}'");
  has(error_of("{% include 'x.j2' %}"), "unsupported statement '{% include %}'");
  has(error_of("{% raw %}{{ x }}{% endraw %}"), "unsupported statement '{% raw %}'");
  has(error_of("{% for x in y recursive %}{% endfor %}"), "recursive for loops");
  // Runtime errors as Python raises them.
  has(error_of("{{ missing.attr }}"), "'missing' is undefined");
  has(error_of("{{ 'a' + 1 }}"), "unsupported operand type(s) for +: 'str' and 'int'");
  has(error_of("{{ 1 // 0 }}"), "division or modulo by zero");
  has(error_of("{{ 9223372036854775807 + 1 }}"), "integer overflow");
  has(error_of("{{ 2 ** 64 }}"), "integer overflow");
  has(error_of("{{ -(-9223372036854775807 - 1) }}"), "integer overflow");
  CHECK(render("{{ 2 ** 62 }} {{ (-3) ** 3 }} {{ 10 ** 0 }}") == "4611686018427387904 -27 1");
  CHECK(render("{{ range(9223372036854775806, 9223372036854775807, 10) | list }}") ==
        "[9223372036854775806]");
  has(error_of("{{ 1 < 'a' }}"), "'<' not supported");
  has(error_of("{{ missing | tojson }}"), "not JSON serializable");
  has(error_of("{{ n[1:] }}", {{"n", 7}}), "'int' object is not subscriptable");
  has(error_of("{% set ns = 1 %}{% set ns.x = 2 %}"), "is not a namespace()");
  // raise_exception: the template's own message, unchanged, and flagged as raised.
  try {
    render("{% if true %}{{ raise_exception('Conversation roles must alternate!') }}{% endif %}");
    FAIL("raise_exception did not throw");
  } catch (const ChatTemplateError& e) {
    CHECK(e.raised_by_template());
    CHECK(e.message() == "Conversation roles must alternate!");
    CHECK(std::string(e.what()).find("raised an error: Conversation roles must alternate!") !=
          std::string::npos);
  }
  // The origin names where the template came from.
  try {
    ChatTemplate("{% if %}", "model/tokenizer_config.json");
    FAIL("no syntax error");
  } catch (const ChatTemplateError& e) {
    CHECK(std::string(e.what()).rfind("model/tokenizer_config.json: line 1:", 0) == 0);
    CHECK_FALSE(e.raised_by_template());
  }
  // Context must be an object.
  CHECK_THROWS_AS(ChatTemplate("x").render(ojson::array()), ChatTemplateError);
}

TEST_CASE("chat template: deep nesting and long inputs stay bounded") {
  std::string deep;
  for (int k = 0; k < 200; ++k) deep += "{% if true %}";
  deep += "x";
  for (int k = 0; k < 200; ++k) deep += "{% endif %}";
  CHECK(render(deep) == "x");
  std::string deeper;
  for (int k = 0; k < 300; ++k) deeper += "{% if true %}";
  CHECK(error_of(deeper).find("nesting deeper than 256") != std::string::npos);
  CHECK(error_of("{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}")
            .find("nesting deeper than 256") != std::string::npos);
  CHECK(error_of("{{ range(100000000) | length }}").find("range() longer than") !=
        std::string::npos);
  CHECK(error_of("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}")
            .find("calls nested deeper than 64") != std::string::npos);
  CHECK(render("{% macro f(n) %}{% if n > 0 %}{{ n }}{{ f(n - 1) }}{% endif %}{% endmacro %}"
               "{{ f(3) }}") == "321");
  CHECK(error_of("{{ 'ab' * 1000000000000 }}").find("string repetition longer than") !=
        std::string::npos);
  // The step budget (RenderOptions::max_steps, 1e6 by default) ends a runaway loop; a small one
  // here keeps the test quick under the sanitizers (a million steps took minutes there).
  CHECK(ChatTemplate::RenderOptions{}.max_steps == 1000000);
  const ChatTemplate nested(
      "{% for i in range(200) %}{% for j in range(200) %}{% endfor %}{% endfor %}", "test");
  ChatTemplate::RenderOptions budget{false, 10000};
  CHECK_THROWS_WITH_AS(nested.render(ojson::object(), budget),
                       doctest::Contains("more than 10000 loop iterations and macro calls"),
                       ChatTemplateError);
  budget.max_steps = 200 + 200 * 200;  // exactly the outer and inner iterations
  CHECK(nested.render(ojson::object(), budget).empty());
  budget.max_steps = 200 + 200 * 200 - 1;
  CHECK_THROWS_AS(nested.render(ojson::object(), budget), ChatTemplateError);
  budget.max_steps = 0;
  CHECK_THROWS_WITH_AS(nested.render(ojson::object(), budget),
                       doctest::Contains("max_steps must be at least 1"), ChatTemplateError);
  CHECK(error_of("{% for i in range(100) %}{{ 'x' * 1000000 }}{% endfor %}")
            .find("output longer than") != std::string::npos);
}

TEST_CASE("real: SmolLM2 GGUF chat template is the published one in the fixture") {
  const char* h = std::getenv("MINFER_HOME");
  std::string home =
      h && *h ? h : std::string(std::getenv("HOME") ? std::getenv("HOME") : "") + "/.cache/minfer";
  const std::string gguf = home + "/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!std::filesystem::exists(gguf)) {
    MESSAGE("skipped: ", gguf, " not present");
    return;
  }
  auto tok = minfer::Tokenizer::load(gguf);
  const ojson all = read_json(std::string(kDir) + "chat_templates.expected.json");
  for (const ojson& t : all)
    if (t.at("name") == "smollm2")
      CHECK(tok->chat_template() == t.at("template").get<std::string>());
}

TEST_CASE("chat template: render_chat_prompt keeps one BOS and needs a template") {
  minfer::test::TempDir dir("chat");
  auto make = [&](const std::string& tokenizer_json, const ojson& config) {
    std::filesystem::remove_all(dir.path);
    std::filesystem::create_directories(dir.path);
    std::filesystem::copy_file(std::string("tests/fixtures/tokenizers/") + tokenizer_json,
                               dir / "tokenizer.json");
    if (!config.is_null()) std::ofstream(dir / "tokenizer_config.json") << config.dump();
    return minfer::Tokenizer::load(dir.path.string());
  };
  const ojson config = {{"chat_template",
                         "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}"
                         "{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}"},
                        {"bos_token", "<|begin_of_text|>"},
                        {"eos_token", "<|end_of_text|>"}};
  const std::vector<minfer::ChatMessage> msgs = {{"system", "S"}, {"user", "hi"}};
  {
    // synth-llama3 adds BOS itself: the template's BOS is dropped from the text, one BOS stays.
    auto tok = make("synth-llama3.tokenizer.json", config);
    REQUIRE(tok->bos_id() == 0);
    minfer::ChatPrompt p = minfer::render_chat_prompt(*tok, msgs);
    CHECK(p.text == "[system]S[user]hi[assistant]");
    CHECK_FALSE(p.chatml_default);
    CHECK(p.ids == tok->encode(p.text, true));
    CHECK(std::count(p.ids.begin(), p.ids.end(), 0) == 1);
    CHECK(p.ids.front() == 0);
    auto stop = minfer::chat_stop_ids(*tok);
    CHECK(std::find(stop.begin(), stop.end(), tok->eos_id()) != stop.end());
  }
  {
    // synth-qwen2 adds no BOS: the template's BOS stays in the text and is matched as a token.
    auto tok = make("synth-qwen2.tokenizer.json", config);
    minfer::ChatPrompt p = minfer::render_chat_prompt(*tok, msgs, false);
    CHECK(p.text == "<|begin_of_text|>[system]S[user]hi");
    CHECK(p.ids.front() == 0);
    CHECK(std::count(p.ids.begin(), p.ids.end(), 0) == 1);
  }
  {
    // No template and no ChatML tokens: an error, never a guessed format.
    auto tok = make("synth-llama3.tokenizer.json", nullptr);
    try {
      minfer::render_chat_prompt(*tok, msgs);
      FAIL("no error without a chat template");
    } catch (const minfer::Error& e) {
      CHECK(std::string(e.what()).find("has no chat template") != std::string::npos);
    }
  }
}

TEST_CASE("chat template: tokenizer_config.json list of named templates") {
  minfer::test::TempDir dir("chat-list");
  std::filesystem::copy_file("tests/fixtures/tokenizers/synth-qwen2.tokenizer.json",
                             dir / "tokenizer.json");
  auto load = [&](const ojson& templates) {
    std::ofstream(dir / "tokenizer_config.json") << ojson{{"chat_template", templates}}.dump();
    return minfer::Tokenizer::load(dir.path.string());
  };
  const std::vector<minfer::ChatMessage> msgs = {{"user", "hi"}};
  // "default" wins wherever it is in the list, as in transformers.
  auto tok = load(ojson::array({{{"name", "tool_use"}, {"template", "T"}},
                                {{"name", "default"}, {"template", "D{{ messages | length }}"}}}));
  CHECK(minfer::render_chat_prompt(*tok, msgs).text == "D1");
  // A single entry is used whatever its name.
  tok = load(ojson::array({{{"name", "rag"}, {"template", "R"}}}));
  CHECK(minfer::render_chat_prompt(*tok, msgs).text == "R");
  // Several and no default: loading works (plain text needs no template), chat is an error.
  tok =
      load(ojson::array({{{"name", "a"}, {"template", "A"}}, {{"name", "b"}, {"template", "B"}}}));
  CHECK(tok->encode("hi", false).size() > 0);
  try {
    minfer::render_chat_prompt(*tok, msgs);
    FAIL("no error for several templates without a default");
  } catch (const ChatTemplateError& e) {
    CHECK(e.message() ==
          "tokenizer_config.json has 2 named chat templates (a b) and none is named default; "
          "refusing to guess");
  }
  // Malformed: an error naming the file, at load.
  std::ofstream(dir / "tokenizer_config.json") << R"({"chat_template": 5})";
  CHECK_THROWS_WITH_AS(minfer::Tokenizer::load(dir.path.string()),
                       doctest::Contains("must be a string or a list of named templates"),
                       minfer::Error);
}
