// tokenize: text -> token ids (or tokens, or counts) with a model's tokenizer.
//
//   tokenize --tokenizer smollm2 --text notes.txt            ids of the whole file, one line
//   echo "Hello world" | tokenize --tokenizer ~/.cache/minfer/minilm --tokens --lines
//
// By default the whole input is one text (newlines included). --lines tokenizes each line
// separately (without its "\n") and prints one output line per input line.
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>

#include "app/model_hub.h"
#include "engine/error.h"
#include "tokenizer/tokenizer.h"
#include "tools/common.h"

using namespace minfer;

namespace {

// Tokens are printed as JSON-style escaped strings so that spaces, newlines and control
// characters stay visible and the output stays one line per text.
std::string quote(const std::string& s) {
  std::string o = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      o.push_back('\\');
      o.push_back(static_cast<char>(c));
    } else if (c == '\n') {
      o += "\\n";
    } else if (c == '\t') {
      o += "\\t";
    } else if (c == '\r') {
      o += "\\r";
    } else if (c < 0x20 || c == 0x7f) {
      o += fmt::format("\\u{:04x}", c);
    } else {
      o.push_back(static_cast<char>(c));
    }
  }
  return o + "\"";
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Tokenize text with a model's tokenizer.", "tokenize"};
  std::string tok_path, text_path = "-";
  bool lines = false, tokens = false, count = false, ids_flag = false, no_special = false,
       info = false;
  app.add_option(
         "--tokenizer,-t", tok_path,
         "tokenizer.json, a model folder, a .gguf file, or a default model name (smollm2, minilm)")
      ->required();
  app.add_option("--text,-f", text_path, "input file (- = stdin)");
  app.add_flag("--lines", lines, "tokenize each line separately; one output line per input line");
  auto* g = app.add_option_group("output", "what to print (default --ids)");
  g->add_flag("--ids", ids_flag, "token ids, space separated");
  g->add_flag("--tokens", tokens, "token strings, quoted, space separated");
  g->add_flag("--count", count, "number of tokens");
  g->require_option(0, 1);
  app.add_flag("--no-special", no_special, "add no BOS/EOS/[CLS]/[SEP]");
  app.add_flag("--info", info, "print a summary of the tokenizer on stderr");
  return tool::run(app, argc, argv, [&] {
    // A path is used as given; otherwise a default model's short name (not fetched here).
    std::string path = tok_path;
    if (!std::filesystem::exists(path)) {
      MINFER_CHECK(find_default_model(tok_path) != nullptr,
                   "--tokenizer '{}': no such file or folder, and not a default model name "
                   "(smollm2, minilm)",
                   tok_path);
      path = resolve_model(tok_path, /*fetch_if_missing=*/false);
    }
    auto tok = Tokenizer::load(path);
    if (info)
      std::fprintf(stderr, "tokenizer: %s: %s\n", tok->origin().c_str(), tok->describe().c_str());

    std::string text;
    if (text_path == "-") {
      text.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
    } else {
      std::ifstream f(text_path, std::ios::binary);
      MINFER_CHECK(f.good(), "cannot open '{}'", text_path);
      text.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
    }

    std::string out;
    auto emit = [&](std::string_view t) {
      std::vector<int32_t> ids = tok->encode(t, !no_special);
      if (count) {
        out += std::to_string(ids.size());
      } else {
        for (size_t i = 0; i < ids.size(); ++i) {
          if (i) out.push_back(' ');
          out += tokens ? quote(tok->id_to_token(ids[i])) : std::to_string(ids[i]);
        }
      }
      out.push_back('\n');
      if (out.size() > (1 << 20)) {
        std::fwrite(out.data(), 1, out.size(), stdout);
        out.clear();
      }
    };
    if (!lines) {
      emit(text);
    } else {
      size_t pos = 0;
      size_t lineno = 0;
      while (pos < text.size()) {
        size_t nl = text.find('\n', pos);
        if (nl == std::string::npos) nl = text.size();
        ++lineno;
        try {
          emit(std::string_view(text).substr(pos, nl - pos));
        } catch (const Error& e) {
          MINFER_FAIL("line {}: {}", lineno, e.what());
        }
        pos = nl + 1;
      }
    }
    std::fwrite(out.data(), 1, out.size(), stdout);
    return 0;
  });
}
