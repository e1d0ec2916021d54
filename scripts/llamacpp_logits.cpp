// llama.cpp's side of scripts/llamacpp_greedy.sh: greedy generation through llama.cpp's C API
// (llama.h), printing token ids and top-2 margins as JSON, and optionally the logits of every
// prompt position. A reference harness built outside the repo's library against the llama.cpp
// build of bench/llamacpp.sh (the script compiles it); minfer never links it.
//
//   llamacpp_logits MODEL.gguf MODE N THREADS (--prompt TEXT | --ids 1,2,3) [--logits OUT.f32]
//                   [--one-by-one 1] [--repack 0]
//
// MODE: native (llama.cpp's defaults: F16 KV cache, flash attention auto) or q8 (F32 KV cache,
// flash attention off: the arithmetic closest to minfer's MINFER_GGML_PATH=q8). --prompt is
// tokenized by llama.cpp with the GGUF's add_bos / add_eos flags, no special-token parsing (as
// llama-completion -no-cnv). Greedy: the argmax of each step's logits (lowest id on a tie), N
// steps or until an end-of-generation token. Output, one JSON line on stdout:
//   {"prompt_ids": [...], "ids": [...], "margins": [...]}
// margins[i]: top-1 minus top-2 logit at step i (one more than ids when an end token stopped it).
// --logits: the prompt positions' logits, [T, V] float32 little-endian, row-major.
// --repack 0: no weight repacking (llama.cpp's extra CPU buffer types; on by default).
// --one-by-one 1: the prompt goes through one token per llama_decode call (each position's
// activations then form a batch of one, as in minfer's decode steps).
#include <llama.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

void quiet(ggml_log_level level, const char* text, void*) {
  if (level == GGML_LOG_LEVEL_ERROR) std::fputs(text, stderr);
}

int fail(const char* what) {
  std::fprintf(stderr, "llamacpp_logits: %s\n", what);
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 7)
    return fail("usage: MODEL MODE N THREADS (--prompt TEXT | --ids a,b,c) [--logits OUT]");
  const std::string model_path = argv[1], mode = argv[2];
  const int n_gen = std::atoi(argv[3]), threads = std::atoi(argv[4]);
  if (mode != "native" && mode != "q8") return fail("MODE must be native or q8");
  std::string prompt, ids_arg, logits_path;
  bool have_prompt = false, one_by_one = false, repack = true;
  for (int i = 5; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    if (k == "--prompt") {
      prompt = argv[i + 1];
      have_prompt = true;
    } else if (k == "--ids") {
      ids_arg = argv[i + 1];
    } else if (k == "--repack") {
      repack = std::atoi(argv[i + 1]) != 0;
    } else if (k == "--one-by-one") {
      one_by_one = std::atoi(argv[i + 1]) != 0;
    } else if (k == "--logits") {
      logits_path = argv[i + 1];
    } else {
      return fail(("unknown option " + k).c_str());
    }
  }
  llama_log_set(quiet, nullptr);
  llama_backend_init();
  llama_model_params mp = llama_model_default_params();
  mp.use_extra_bufts = repack;
  llama_model* model = llama_model_load_from_file(model_path.c_str(), mp);
  if (!model) return fail("cannot load the model");
  const llama_vocab* vocab = llama_model_get_vocab(model);
  const int V = llama_vocab_n_tokens(vocab);

  std::vector<llama_token> toks;
  if (have_prompt) {
    toks.resize(prompt.size() + 8);
    const int n = llama_tokenize(vocab, prompt.data(), int(prompt.size()), toks.data(),
                                 int(toks.size()), true, false);
    if (n < 0) return fail("tokenize failed");
    toks.resize(size_t(n));
  } else {
    for (const char* p = ids_arg.c_str(); *p;) {
      char* end;
      toks.push_back(llama_token(std::strtol(p, &end, 10)));
      p = *end == ',' ? end + 1 : end;
      if (end == p && *p) return fail("bad --ids");
    }
  }
  if (toks.empty()) return fail("empty prompt");

  llama_context_params cp = llama_context_default_params();
  cp.n_ctx = uint32_t(toks.size() + size_t(n_gen) + 8);
  cp.n_batch = cp.n_ctx;
  cp.n_ubatch = cp.n_ctx;
  cp.n_threads = threads;
  cp.n_threads_batch = threads;
  cp.no_perf = true;
  if (mode == "q8") {
    cp.type_k = GGML_TYPE_F32;
    cp.type_v = GGML_TYPE_F32;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
  }
  llama_context* ctx = llama_init_from_model(model, cp);
  if (!ctx) return fail("cannot create a context");

  const int T = int(toks.size());
  llama_batch batch = llama_batch_init(T, 0, 1);
  for (int t = 0; t < T; ++t) {
    batch.token[t] = toks[size_t(t)];
    batch.pos[t] = t;
    batch.n_seq_id[t] = 1;
    batch.seq_id[t][0] = 0;
    batch.logits[t] = !logits_path.empty() || t == T - 1;
  }
  batch.n_tokens = T;
  std::vector<float> prompt_logits;
  if (one_by_one) {  // the prompt one token per decode call (as minfer's decode steps)
    for (int t = 0; t < T; ++t) {
      llama_token tok = toks[size_t(t)];
      if (llama_decode(ctx, llama_batch_get_one(&tok, 1)) != 0) return fail("decode failed");
      const float* l = llama_get_logits_ith(ctx, -1);
      prompt_logits.insert(prompt_logits.end(), l, l + V);
    }
  } else {
    if (llama_decode(ctx, batch) != 0) return fail("decode of the prompt failed");
    if (!logits_path.empty())
      for (int t = 0; t < T; ++t) {
        const float* l = llama_get_logits_ith(ctx, t);
        prompt_logits.insert(prompt_logits.end(), l, l + V);
      }
  }
  if (!logits_path.empty()) {
    FILE* f = std::fopen((logits_path + ".tmp").c_str(), "wb");
    if (!f) return fail("cannot write --logits");
    std::fwrite(prompt_logits.data(), sizeof(float), prompt_logits.size(), f);
    if (std::fclose(f) != 0 ||
        std::rename((logits_path + ".tmp").c_str(), logits_path.c_str()) != 0)
      return fail("cannot write --logits");
  }

  std::vector<llama_token> out;
  std::vector<float> margins;
  int last = one_by_one ? -1 : T - 1;
  for (int step = 0; step < n_gen; ++step) {
    const float* l = llama_get_logits_ith(ctx, last);
    int best = 0;
    for (int v = 1; v < V; ++v)
      if (l[v] > l[best]) best = v;
    float second = -INFINITY;
    for (int v = 0; v < V; ++v)
      if (v != best && l[v] > second) second = l[v];
    margins.push_back(l[best] - second);
    if (llama_vocab_is_eog(vocab, best)) break;
    out.push_back(best);
    if (step + 1 == n_gen) break;
    llama_token tok = best;
    llama_batch one = llama_batch_get_one(&tok, 1);
    if (llama_decode(ctx, one) != 0) return fail("decode failed");
    last = -1;
  }

  std::string js = "{\"prompt_ids\": [";
  for (size_t i = 0; i < toks.size(); ++i) js += (i ? ", " : "") + std::to_string(toks[i]);
  js += "], \"ids\": [";
  for (size_t i = 0; i < out.size(); ++i) js += (i ? ", " : "") + std::to_string(out[i]);
  js += "], \"margins\": [";
  for (size_t i = 0; i < margins.size(); ++i) {
    char b[32];
    std::snprintf(b, sizeof b, "%s%.6g", i ? ", " : "", double(margins[i]));
    js += b;
  }
  js += "]}";
  std::puts(js.c_str());
  llama_batch_free(batch);
  llama_free(ctx);
  llama_model_free(model);
  llama_backend_free();
  return 0;
}
