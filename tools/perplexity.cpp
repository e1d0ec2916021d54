// perplexity: WikiText-2 perplexity of a causal LM, the Hugging Face sliding-window way (default)
// or llama.cpp's way (--method llama).
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "app/default_data.h"
#include "app/model_hub.h"
#include "models/eval.h"
#include "models/loader.h"
#include "tools/common.h"

using namespace minfer;

int main(int argc, char** argv) {
  CLI::App app{"Perplexity of a causal LM on a text (WikiText-2 raw test by default).",
               "perplexity"};
  std::string model, text_path, method = "hf", backend = "cpu";
  int64_t ctx = 512, stride = -1, max_tokens = 0;
  int threads = 0, device = 0;
  bool json = false, quiet = false;
  app.add_option("--model,-m", model, "smollm2 | HF folder (config.json + *.safetensors) | .gguf")
      ->required();
  app.add_option("--text,-f", text_path,
                 "text file (default: WikiText-2 wiki.test.raw from $MINFER_WIKITEXT, else "
                 "../shared/data/wikitext-2-raw or beside the checkout)");
  app.add_option("--ctx,-c", ctx, "window length in tokens")
      ->check(CLI::Range(int64_t(2), int64_t(1) << 20));
  app.add_option("--stride", stride, "window advance (default: ctx, i.e. non-overlapping)")
      ->check(CLI::PositiveNumber);
  app.add_option("--max-tokens", max_tokens, "only the first N tokens of the text (0 = all)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--method", method,
                 "hf (sliding window) | llama (llama.cpp's chunks, second half scored, BOS over "
                 "each chunk's first token only when the tokenizer adds BOS)")
      ->check(CLI::IsMember({"hf", "llama"}));
  app.add_option("--threads,-t", threads, "threads")->check(CLI::NonNegativeNumber);
  app.add_option("--backend", backend, "cpu | cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  std::string dtype = "native", kv_cache = "f32";
  tool::add_gguf_dtype(app, dtype);
  tool::add_kv_cache(app, kv_cache);
  app.add_option("--device", device, "GPU index")->check(CLI::NonNegativeNumber);
  app.add_flag("--json", json, "print the result as JSON");
  app.add_flag("--quiet,-q", quiet, "no progress bar");
  return tool::run(app, argc, argv, [&] {
    if (text_path.empty()) text_path = find_wikitext("wiki.test.raw", "pass --text FILE");
    std::ifstream f(text_path, std::ios::binary);
    MINFER_CHECK(f.good(), "{}: cannot open text", text_path);
    std::stringstream ss;
    ss << f.rdbuf();
    auto be = make_backend(backend, threads, device);
    LoadedModel lm = open_named_model(model, *be, true, tool::gguf_weights(dtype));
    tool::say_weights(lm);
    tool::set_kv_cache(*lm.model, kv_cache);
    std::vector<int32_t> ids = lm.tokenizer->encode(ss.str(), true);
    const size_t all = ids.size();
    if (max_tokens > 0 && size_t(max_tokens) < ids.size()) ids.resize(size_t(max_tokens));
    if (stride < 0) stride = ctx;
    PerplexityResult r =
        perplexity(*lm.model, ids, ctx, stride,
                   method == "llama" ? PplMethod::Llama : PplMethod::HfSlidingWindow,
                   lm.tokenizer->added_bos(), !quiet);
    if (json) {
      nlohmann::json j = {{"model", lm.path},
                          {"text", text_path},
                          {"method", method},
                          {"kv_cache", kv_cache},
                          {"ctx", ctx},
                          {"stride", stride},
                          {"text_tokens", all},
                          {"tokens", ids.size()},
                          {"tokens_scored", r.tokens_scored},
                          {"ppl", r.ppl},
                          {"mean_nll", r.mean_nll},
                          {"seconds", r.seconds},
                          {"tokens_per_s", r.tokens_per_s},
                          {"peak_rss_mb", tool::peak_rss_mb()}};
      std::printf("%s\n", j.dump(2).c_str());
    } else {
      std::printf(
          "model %s\ntext %s (%zu tokens, using %zu)\nmethod %s ctx %lld stride %lld\n"
          "ppl %.4f\nmean NLL %.6f\ntokens scored %lld\ntokens/s %.1f\npeak RSS %.1f MB\n",
          lm.path.c_str(), text_path.c_str(), all, ids.size(), method.c_str(), (long long)ctx,
          (long long)stride, r.ppl, r.mean_nll, (long long)r.tokens_scored, r.tokens_per_s,
          tool::peak_rss_mb());
    }
    return 0;
  });
}
