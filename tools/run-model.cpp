// run-model: generate text from a causal LM, streaming tokens as they are produced.
#include <algorithm>
#include <limits>
#include <nlohmann/json.hpp>

#include "app/model_hub.h"
#include "engine/cpu_load.h"
#include "engine/sampler.h"
#include "models/loader.h"
#include "tokenizer/chat_template.h"
#include "tools/common.h"

using namespace minfer;

namespace {

// Largest minus second-largest of logits[0, V): how close a greedy choice was (0 = a tie).
// Used to judge a difference from another engine: a small margin means arithmetic order decides.
float top2_margin(const float* logits, int64_t V) {
  float a = -std::numeric_limits<float>::infinity(), b = a;
  for (int64_t i = 0; i < V; ++i) {
    if (logits[i] > a) {
      b = a;
      a = logits[i];
    } else if (logits[i] > b) {
      b = logits[i];
    }
  }
  return a - b;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Generate text with a causal language model. The stats line (stderr; --json: load_cores, "
      "busy) says when other processes kept the CPU busy while it ran.",
      "run-model"};
  std::string model, prompt, system, backend = "cpu";
  int n = 64, top_k = 40, threads = 0, device = 0;
  float temp = 0.8f, top_p = 0.95f;
  uint64_t seed = 0;
  bool chat = false, json = false;
  app.add_option("--model,-m", model, "smollm2 | HF folder (config.json + *.safetensors) | .gguf")
      ->required();
  app.add_option("--prompt,-p", prompt, "prompt text")->required();
  app.add_option("-n,--n-predict", n, "tokens to generate")->check(CLI::Range(1, 1 << 20));
  app.add_option("--temp", temp, "temperature (0 = greedy)")->check(CLI::Range(0.f, 100.f));
  app.add_option("--top-k", top_k, "keep the k most likely tokens (0 = all)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--top-p", top_p, "nucleus sampling mass")->check(CLI::Range(0.f, 1.f));
  app.add_option("--seed", seed, "sampling seed");
  app.add_flag("--chat", chat,
               "render the prompt as a user turn with the model's chat template (Jinja, from "
               "tokenizer_config.json or GGUF tokenizer.chat_template; ChatML when the model has "
               "none but has ChatML tokens)");
  app.add_option("--system", system, "system message for --chat (default: the template's own)");
  app.add_option("--threads,-t", threads,
                 "threads (default: OMP_NUM_THREADS or all cores; decode uses fewer while other "
                 "processes keep the cores busy, unless MINFER_POOL_BACKOFF=0)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--backend", backend, "cpu | cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  std::string dtype = "native", kv_cache = "f32";
  tool::add_gguf_dtype(app, dtype);
  tool::add_kv_cache(app, kv_cache);
  app.add_option("--device", device, "GPU index for --backend cuda")->check(CLI::NonNegativeNumber);
  app.add_flag("--json", json,
               "print one JSON object instead of streaming text (ids, text, speeds, and margins: "
               "top-1 minus top-2 logit at each sampling step, one more than ids when an end "
               "token stopped it)");
  return tool::run(app, argc, argv, [&] {
    // Other processes' load, sampled over the model load (our own CPU time excluded) and again
    // over the timed generation: the stats line says when the speeds come from a busy machine.
    const CpuTimes at_start = read_cpu_times();
    auto be = make_backend(backend, threads, device);
    LoadedModel lm = open_named_model(model, *be, true, tool::gguf_weights(dtype));
    tool::say_weights(lm);
    Model& m = *lm.model;
    tool::set_kv_cache(m, kv_cache);
    const ModelConfig& c = m.config();
    MINFER_CHECK(c.causal(), "{}: '{}' is an encoder, run-model needs a causal LM (try embed)",
                 lm.path, c.model_type);
    MINFER_CHECK(chat || system.empty(), "--system needs --chat");
    std::vector<int32_t> ids, stop;
    if (chat) {
      std::vector<ChatMessage> messages;
      if (!system.empty()) messages.push_back({"system", system});
      messages.push_back({"user", prompt});
      ChatPrompt cp = render_chat_prompt(*lm.tokenizer, messages);
      if (cp.chatml_default)
        std::fprintf(stderr, "note: %s has no chat template; using ChatML (it has the tokens)\n",
                     lm.path.c_str());
      ids = std::move(cp.ids);
      stop = chat_stop_ids(*lm.tokenizer);
    } else {
      ids = lm.tokenizer->encode(prompt, true);
    }
    MINFER_CHECK(!ids.empty(), "the prompt encodes to no tokens");
    const int64_t P = int64_t(ids.size());
    int64_t ctx = std::min<int64_t>(c.max_pos, P + n);
    if (P >= c.max_pos) {
      // Learned positions (GPT-2) end at max_pos. RoPE positions past the trained length are
      // computable: transformers and llama.cpp run them with a warning, and so do we.
      MINFER_CHECK(c.arch == Arch::Llama,
                   "prompt of {} tokens does not fit the model's {} positions", P, c.max_pos);
      std::fprintf(stderr,
                   "warning: the prompt (%lld tokens) is longer than the %lld positions the model "
                   "was trained for; running past them, output quality may degrade\n",
                   static_cast<long long>(P), static_cast<long long>(c.max_pos));
      ctx = P + n;
    }
    RunState s = m.new_state(ctx, int64_t(ids.size()), 1);
    Sampler sampler({temp, top_k, top_p, seed});
    StreamDecoder dec(*lm.tokenizer);
    std::vector<float> logits(size_t(c.vocab_size));
    std::vector<int32_t> out;
    std::vector<float> margins;  // --json: top-1 minus top-2 logit at each generated token
    std::string generated;

    const CpuTimes at_timing = read_cpu_times();
    const double load_before = others_busy_cores(at_start, at_timing);
    double t0 = tool::now_s();
    Tensor lg = m.forward(s, ids.data(), int64_t(ids.size()), false);
    be->to_host(lg, logits.data());
    const double t_prompt = tool::now_s() - t0;
    t0 = tool::now_s();
    // Stop on any end-of-generation token (as llama.cpp does), config.json's eos when the
    // tokenizer names none.
    if (stop.empty()) stop = lm.tokenizer->eog_ids();
    const int32_t eos = lm.tokenizer->eos_id() >= 0 ? lm.tokenizer->eos_id() : int32_t(c.eos_id);
    while (int64_t(out.size()) < n) {
      const int32_t next = sampler.sample(logits.data(), c.vocab_size, s.n_past);
      if (json) margins.push_back(top2_margin(logits.data(), c.vocab_size));
      if (next == eos || std::find(stop.begin(), stop.end(), next) != stop.end()) break;
      out.push_back(next);
      const std::string piece = dec.push(next);
      generated += piece;
      if (!json) {
        std::fputs(piece.c_str(), stdout);
        std::fflush(stdout);
      }
      if (s.n_past >= ctx) break;
      lg = m.forward(s, &next, 1, false);
      be->to_host(lg, logits.data());
    }
    const std::string tail = dec.flush();
    generated += tail;
    const double t_gen = tool::now_s() - t0;
    const double prompt_tps = double(ids.size()) / t_prompt;
    const double gen_tps = out.empty() ? 0.0 : double(out.size()) / t_gen;
    const double load_cores =
        std::max(load_before, others_busy_cores(at_timing, read_cpu_times()));  // -1: unknown
    const bool busy = load_cores >= 0.25;
    if (json) {
      nlohmann::json j = {{"model", lm.path},
                          {"prompt_tokens", ids.size()},
                          {"generated_tokens", out.size()},
                          {"text", generated},
                          {"ids", out},
                          {"margins", margins},
                          {"load_s", lm.load_seconds},
                          {"prompt_tok_per_s", prompt_tps},
                          {"gen_tok_per_s", gen_tps},
                          {"peak_rss_mb", tool::peak_rss_mb()},
                          {"kv_cache", kv_cache},
                          {"load_cores", load_cores >= 0 ? nlohmann::json(load_cores) : nullptr},
                          {"cpus", online_cpus()},
                          {"busy", busy}};
      std::printf("%s\n", j.dump(2).c_str());
    } else {
      std::printf("%s\n", tail.c_str());
    }
    std::fflush(stdout);  // the text ends before the stats line on a shared terminal
    std::fprintf(stderr,
                 "load %.2f s | prompt %zu tokens %.1f tok/s | generated %zu tokens %.1f tok/s | "
                 "peak RSS %.1f MB\n",
                 lm.load_seconds, ids.size(), prompt_tps, out.size(), gen_tps, tool::peak_rss_mb());
    if (busy)
      std::fprintf(stderr,
                   "busy machine: other processes kept %.1f of %d CPU cores busy while this ran; "
                   "the speeds above are lower than this machine gives\n",
                   load_cores, online_cpus());
    return 0;
  });
}
