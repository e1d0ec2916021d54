// make bench: single-threaded encode throughput (MB/s of UTF-8 input) on WikiText-2 test, for
// the default models' tokenizers (skipped when not installed) and the synthetic fixtures.
//   whole  the entire file as one text (what perplexity does); first run = cold word cache
//   lines  each line separately (the --lines mode); best of 3 after a warm-up
// The HF `tokenizers` reference figures were measured on the same machine with
// tests/fixtures/tokenizers/bench_hf_tokenizers.py (single thread) and are printed alongside.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

using Clock = std::chrono::steady_clock;

namespace {

struct Case {
  const char* name;
  std::string path;
  double hf_whole, hf_lines;  // HF tokenizers 0.23.3 MB/s (whole text, encode_batch of lines)
};

double seconds(const std::function<void()>& f) {
  auto t0 = Clock::now();
  f();
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

}  // namespace

int main() {
  const std::string wiki_path = "../shared/data/wikitext-2-raw/wiki.test.raw";
  if (!std::filesystem::exists(wiki_path)) {
    std::printf("bench_tokenizer: skipped (WikiText-2 not found at %s)\n", wiki_path.c_str());
    return 0;
  }
  std::string text;
  {
    std::ifstream f(wiki_path, std::ios::binary);
    std::ostringstream ss;
    ss << f.rdbuf();
    text = ss.str();
  }
  std::vector<std::string_view> lines;
  for (size_t pos = 0; pos < text.size();) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    lines.push_back(std::string_view(text).substr(pos, nl - pos));
    pos = nl + 1;
  }
  const double mb = static_cast<double>(text.size()) / 1e6;

  const char* h = std::getenv("MINFER_HOME");
  std::string home =
      (h && *h) ? h
                : std::string(std::getenv("HOME") ? std::getenv("HOME") : "") + "/.cache/minfer";
  const std::string fx = "tests/fixtures/tokenizers/";
  const std::vector<Case> cases = {
      {"smollm2 (GGUF)", home + "/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", 0.62, 0.90},
      {"minilm", home + "/minilm/tokenizer.json", 0.60, 0.72},
      {"synth-llama3", fx + "synth-llama3.tokenizer.json", 0.85, 1.54},
      {"synth-spm", fx + "synth-spm.tokenizer.json", 1.15, 1.51},
      {"synth-wordpiece", fx + "synth-wordpiece.tokenizer.json", 0.54, 0.78},
  };
  std::printf("tokenizer encode throughput, single thread, WikiText-2 test (%.2f MB, %zu lines)\n",
              mb, lines.size());
  std::printf("%-18s %12s %12s %12s %10s   %s\n", "tokenizer", "whole cold", "whole warm", "lines",
              "tokens", "HF tokenizers (whole / lines)");
  for (const Case& c : cases) {
    if (!std::filesystem::exists(c.path)) {
      std::printf("%-18s skipped (%s not found; run `make models`)\n", c.name, c.path.c_str());
      continue;
    }
    try {
      auto tok = minfer::Tokenizer::load(c.path);
      size_t ntok = 0;
      double cold = seconds([&] { ntok = tok->encode(text).size(); });
      double warm = 1e30, per_line = 1e30;
      for (int r = 0; r < 3; ++r) warm = std::min(warm, seconds([&] { tok->encode(text); }));
      std::vector<int32_t> ids;
      for (int r = 0; r < 3; ++r)
        per_line = std::min(per_line, seconds([&] {
                              for (std::string_view l : lines) {
                                ids.clear();
                                tok->encode_into(l, true, ids);
                              }
                            }));
      std::printf("%-18s %7.2f MB/s %7.2f MB/s %7.2f MB/s %10zu   %.2f / %.2f MB/s\n", c.name,
                  mb / cold, mb / warm, mb / per_line, ntok, c.hf_whole, c.hf_lines);
    } catch (const std::exception& e) {
      std::printf("%-18s error: %s\n", c.name, e.what());
    }
  }
  return 0;
}
