// The C API (include/minfer.h) over the library. Every entry point validates its arguments,
// runs the library inside one guard that turns every exception into a status code plus a
// thread-local message, and never lets an exception cross into C.
#include "minfer.h"

#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/error.h"
#include "engine/sampler.h"
#include "models/eval.h"
#include "models/loader.h"

using namespace minfer;

struct minfer_model {
  std::unique_ptr<Backend> be;
  LoadedModel lm;
  int n_threads = 0;
  SentencePooling pooling;
  std::vector<uint8_t> eog;  // per tokenizer id: ends generation
  // Forward passes on one model take turns: the backend's scratch buffers and thread settings
  // are shared, and each pass already uses all n_threads.
  std::mutex forward_mu;
};

struct minfer_context {
  minfer_model* model = nullptr;
  RunState state;
  int64_t n_ctx = 0, n_batch = 0;
  std::vector<float> logits;  // [V] of the last position of the last decode
  bool has_logits = false;
  std::optional<Sampler> sampler;
  minfer_sampler_params sampler_params{};
};

namespace {

// An error this file raises with its own status code.
struct ApiError {
  int code;
  std::string msg;
};

template <class... A>
[[noreturn]] void api_fail(int code, fmt::format_string<A...> f, A&&... a) {
  throw ApiError{code, fmt::format(f, std::forward<A>(a)...)};
}

thread_local std::string t_last_error;

using LogFn = void (*)(int, const char*, void*);
std::mutex g_log_mu;
LogFn g_log_cb = nullptr;
void* g_log_user = nullptr;

void log_msg(int level, const std::string& msg) noexcept {
  try {
    std::lock_guard<std::mutex> lock(g_log_mu);
    if (g_log_cb) {
      g_log_cb(level, msg.c_str(), g_log_user);
    } else if (level >= MINFER_LOG_WARN) {
      std::fprintf(stderr, "minfer: %s: %s\n", level >= MINFER_LOG_ERROR ? "error" : "warning",
                   msg.c_str());
    }
  } catch (...) {  // a lock failure: the message is dropped, never an exception into C
  }
}

// Runs f; maps what it throws to a status (code_for_error for minfer::Error), records the
// message for minfer_last_error, and returns the status (MINFER_OK when f returned).
template <class F>
int guarded(const char* fn, int code_for_error, F&& f) noexcept {
  int code = MINFER_OK;
  std::string msg;
  try {
    f();
    return MINFER_OK;
  } catch (const ApiError& e) {
    code = e.code, msg = e.msg;
  } catch (const NotImplemented& e) {
    code = MINFER_ERR_UNSUPPORTED, msg = e.what();
  } catch (const Error& e) {
    code = code_for_error, msg = e.what();
  } catch (const std::bad_alloc&) {
    code = MINFER_ERR_OUT_OF_MEMORY, msg = "out of memory";
  } catch (const std::exception& e) {
    code = MINFER_ERR_INTERNAL, msg = e.what();
  } catch (...) {
    code = MINFER_ERR_INTERNAL, msg = "unknown exception";
  }
  try {
    t_last_error = std::string(fn) + ": " + msg;
    log_msg(MINFER_LOG_DEBUG, t_last_error);
  } catch (...) {
    code = MINFER_ERR_OUT_OF_MEMORY;
  }
  return code;
}

void need(bool ok, const char* what) {
  if (!ok) api_fail(MINFER_ERR_INVALID_ARGUMENT, "{}", what);
}

// End-of-generation tokens besides EOS: end-of-turn markers of the chat templates in use.
minfer_model* finish_load(std::unique_ptr<minfer_model> m) {
  const ModelConfig& c = m->lm.model->config();
  const Tokenizer& tok = *m->lm.tokenizer;
  m->eog.assign(size_t(tok.vocab_size()), 0);
  // The tokenizer's end-of-generation set (eos, eot, eom, end-of-turn specials); config.json's
  // eos_token_id when the tokenizer names no EOS.
  for (const int32_t id : tok.eog_ids()) m->eog[size_t(id)] = 1;
  if (tok.eos_id() < 0 && c.eos_id >= 0 && c.eos_id < tok.vocab_size())
    m->eog[size_t(c.eos_id)] = 1;
  if (!c.causal()) m->pooling = load_sentence_pooling(m->lm.path);
  log_msg(MINFER_LOG_INFO,
          fmt::format("loaded {}: {} ({} layers, hidden {}, vocab {}, {} backend) in {:.2f} s",
                      m->lm.path, c.model_type, c.n_layers, c.hidden, c.vocab_size, m->be->name(),
                      m->lm.load_seconds));
  return m.release();
}

std::unique_ptr<minfer_model> new_model(const minfer_model_params* p) {
  const minfer_model_params d = minfer_model_default_params();
  if (!p) p = &d;
  const std::string backend = p->backend ? p->backend : "cpu";
  if (backend != "cpu" && backend != "cuda")
    api_fail(MINFER_ERR_INVALID_ARGUMENT, "backend '{}': expected \"cpu\" or \"cuda\"", backend);
  if (p->n_threads < 0)
    api_fail(MINFER_ERR_INVALID_ARGUMENT, "n_threads {}: expected >= 0", p->n_threads);
  if (p->device < 0) api_fail(MINFER_ERR_INVALID_ARGUMENT, "device {}: expected >= 0", p->device);
  auto m = std::make_unique<minfer_model>();
  m->n_threads = p->n_threads;
  try {
    m->be = make_backend(backend, p->n_threads, p->device);
  } catch (const Error& e) {
    api_fail(MINFER_ERR_UNSUPPORTED, "{}", e.what());
  }
  return m;
}

int32_t count_or_needed(size_t n, int32_t cap) {
  if (n > size_t(std::numeric_limits<int32_t>::max()))
    api_fail(MINFER_ERR_INVALID_ARGUMENT, "result of {} elements does not fit an int32_t", n);
  return int32_t(n) <= cap ? int32_t(n) : -int32_t(n);
}

}  // namespace

extern "C" {

const char* minfer_version(void) {
#define MINFER_STR2(x) #x
#define MINFER_STR(x) MINFER_STR2(x)
  return MINFER_STR(MINFER_VERSION_MAJOR) "." MINFER_STR(MINFER_VERSION_MINOR) "." MINFER_STR(
      MINFER_VERSION_PATCH);
}

const char* minfer_last_error(void) {
  return t_last_error.c_str();
}

void minfer_log_set(void (*cb)(int, const char*, void*), void* user) {
  std::lock_guard<std::mutex> lock(g_log_mu);
  g_log_cb = cb;
  g_log_user = cb ? user : nullptr;
}

minfer_model_params minfer_model_default_params(void) {
  minfer_model_params p;
  p.n_threads = 0;
  p.backend = "cpu";
  p.device = 0;
  p.use_buffer_in_place = false;
  return p;
}

int minfer_model_load(const char* path, const minfer_model_params* p, minfer_model** out) {
  if (out) *out = nullptr;
  return guarded(__func__, MINFER_ERR_LOAD, [&] {
    need(out != nullptr, "out is NULL");
    need(path != nullptr, "path is NULL");
    auto m = new_model(p);
    m->lm = open_model(path, *m->be, /*with_tokenizer=*/true);
    *out = finish_load(std::move(m));
  });
}

int minfer_model_load_from_buffer(const void* data, size_t size, const minfer_model_params* p,
                                  minfer_model** out) {
  if (out) *out = nullptr;
  return guarded(__func__, MINFER_ERR_LOAD, [&] {
    need(out != nullptr, "out is NULL");
    need(data != nullptr, "data is NULL");
    need(size > 0, "size is 0");
    auto m = new_model(p);
    std::shared_ptr<Storage> image;
    const bool aligned = reinterpret_cast<uintptr_t>(data) % 64 == 0;
    if (p && p->use_buffer_in_place && aligned) {
      image = borrowed_storage(data, size);
    } else {
      if (p && p->use_buffer_in_place)
        log_msg(MINFER_LOG_INFO, "model buffer is not 64-byte aligned: copied once");
      image = host_storage(size);  // the one copy; every tensor then views it
      std::memcpy(image->data(), data, size);
    }
    m->lm = open_model_image(std::move(image), *m->be, "<buffer>");
    *out = finish_load(std::move(m));
  });
}

void minfer_model_free(minfer_model* model) {
  delete model;
}

int32_t minfer_n_vocab(const minfer_model* m) {
  return m ? int32_t(m->lm.model->config().vocab_size) : MINFER_ERR_INVALID_ARGUMENT;
}
int32_t minfer_n_embd(const minfer_model* m) {
  return m ? int32_t(m->lm.model->config().hidden) : MINFER_ERR_INVALID_ARGUMENT;
}
int32_t minfer_n_ctx_train(const minfer_model* m) {
  return m ? int32_t(std::min<int64_t>(m->lm.model->config().max_pos, INT32_MAX))
           : MINFER_ERR_INVALID_ARGUMENT;
}
bool minfer_model_is_encoder(const minfer_model* m) {
  return m && !m->lm.model->config().causal();
}

int minfer_model_set_kv_type(minfer_model* model, int32_t type) {
  return guarded(__func__, MINFER_ERR_INTERNAL, [&] {
    need(model != nullptr, "model is NULL");
    if (type != MINFER_KV_F32 && type != MINFER_KV_F16)
      api_fail(MINFER_ERR_INVALID_ARGUMENT,
               "KV type {}: expected MINFER_KV_F32 ({}) or MINFER_KV_F16 ({})", type,
               int(MINFER_KV_F32), int(MINFER_KV_F16));
    Model& m = *model->lm.model;
    if (type == MINFER_KV_F16 && !m.backend().kv_cache_f16())
      api_fail(MINFER_ERR_UNSUPPORTED, "not implemented: an F16 KV cache on the {} backend",
               m.backend().name());
    m.set_kv_cache_dtype(type == MINFER_KV_F16 ? DType::F16 : DType::F32);
  });
}

minfer_context_params minfer_context_default_params(void) {
  minfer_context_params p;
  p.n_ctx = 2048;
  p.n_batch = 512;
  return p;
}

int minfer_context_new(minfer_model* model, const minfer_context_params* p, minfer_context** out) {
  if (out) *out = nullptr;
  return guarded(__func__, MINFER_ERR_INTERNAL, [&] {
    need(out != nullptr, "out is NULL");
    need(model != nullptr, "model is NULL");
    const minfer_context_params d = minfer_context_default_params();
    if (!p) p = &d;
    if (p->n_ctx < 0 || p->n_batch < 0)
      api_fail(MINFER_ERR_INVALID_ARGUMENT, "n_ctx {} / n_batch {}: expected >= 0", p->n_ctx,
               p->n_batch);
    const ModelConfig& c = model->lm.model->config();
    int64_t n_ctx = p->n_ctx == 0 ? c.max_pos : p->n_ctx;
    if (n_ctx > c.max_pos) {
      log_msg(MINFER_LOG_INFO,
              fmt::format("n_ctx {} capped at the model's n_ctx_train {}", n_ctx, c.max_pos));
      n_ctx = c.max_pos;
    }
    auto ctx = std::make_unique<minfer_context>();
    ctx->model = model;
    ctx->n_ctx = n_ctx;
    ctx->n_batch = std::min<int64_t>(p->n_batch == 0 ? 512 : p->n_batch, n_ctx);
    if (c.causal()) {
      ctx->state = model->lm.model->new_state(n_ctx, ctx->n_batch, /*logit_rows=*/1);
      ctx->logits.resize(size_t(c.vocab_size));
    } else {
      ctx->state = model->lm.model->new_state(0, n_ctx);  // one sequence of up to n_ctx tokens
    }
    *out = ctx.release();
  });
}

void minfer_context_free(minfer_context* ctx) {
  delete ctx;
}

void minfer_context_reset(minfer_context* ctx) {
  if (!ctx) return;
  ctx->state.reset();
  ctx->has_logits = false;
  ctx->sampler.reset();
}

int32_t minfer_n_ctx(const minfer_context* ctx) {
  return ctx ? int32_t(ctx->n_ctx) : -1;
}
int32_t minfer_n_past(const minfer_context* ctx) {
  return ctx ? int32_t(ctx->state.n_past) : -1;
}

int32_t minfer_tokenize(const minfer_model* model, const char* text, int32_t text_len,
                        int32_t* tokens, int32_t n_max, bool add_special) {
  int32_t r = MINFER_INVALID_COUNT;
  guarded(__func__, MINFER_ERR_INVALID_ARGUMENT, [&] {
    need(model != nullptr, "model is NULL");
    need(text != nullptr, "text is NULL");
    need(n_max >= 0, "n_max is negative");
    need(tokens != nullptr || n_max == 0, "tokens is NULL with n_max > 0");
    const size_t len = text_len < 0 ? std::strlen(text) : size_t(text_len);
    std::vector<int32_t> ids =
        model->lm.tokenizer->encode(std::string_view(text, len), add_special);
    r = count_or_needed(ids.size(), n_max);
    if (r >= 0 && !ids.empty()) std::memcpy(tokens, ids.data(), ids.size() * sizeof(int32_t));
  });
  return r;
}

int32_t minfer_token_to_piece(const minfer_model* model, int32_t token, char* buf, int32_t len) {
  int32_t r = MINFER_INVALID_COUNT;
  guarded(__func__, MINFER_ERR_INVALID_ARGUMENT, [&] {
    need(model != nullptr, "model is NULL");
    need(len >= 0, "len is negative");
    need(buf != nullptr || len == 0, "buf is NULL with len > 0");
    const Tokenizer& tok = *model->lm.tokenizer;
    if (token < 0 || token >= tok.vocab_size())
      api_fail(MINFER_ERR_INVALID_ARGUMENT, "token {} is out of range [0, {})", token,
               tok.vocab_size());
    const std::string piece = tok.piece(token);
    r = count_or_needed(piece.size(), len);
    if (r >= 0 && !piece.empty()) std::memcpy(buf, piece.data(), piece.size());
  });
  return r;
}

bool minfer_token_is_eog(const minfer_model* model, int32_t token) {
  return model && token >= 0 && size_t(token) < model->eog.size() && model->eog[size_t(token)];
}

int minfer_decode(minfer_context* ctx, const int32_t* tokens, int32_t n) {
  return guarded(__func__, MINFER_ERR_INTERNAL, [&] {
    need(ctx != nullptr, "ctx is NULL");
    need(tokens != nullptr, "tokens is NULL");
    need(n > 0, "n must be > 0");
    Model& m = *ctx->model->lm.model;
    const ModelConfig& c = m.config();
    if (!c.causal())
      api_fail(MINFER_ERR_UNSUPPORTED, "'{}' is an encoder: use minfer_embed", c.model_type);
    for (int32_t i = 0; i < n; ++i)
      if (tokens[i] < 0 || tokens[i] >= c.vocab_size)
        api_fail(MINFER_ERR_INVALID_ARGUMENT, "tokens[{}] = {} is out of range [0, {})", i,
                 tokens[i], c.vocab_size);
    if (ctx->state.n_past + n > ctx->n_ctx)
      api_fail(MINFER_ERR_CONTEXT_FULL,
               "context full: {} positions used + {} new tokens > n_ctx {} (reset the context or "
               "create one with a larger n_ctx)",
               ctx->state.n_past, n, ctx->n_ctx);
    const int64_t n_past0 = ctx->state.n_past;
    try {
      std::lock_guard<std::mutex> lock(ctx->model->forward_mu);
      if (ctx->model->n_threads > 0) m.backend().set_threads(ctx->model->n_threads);
      Tensor lg;
      for (int64_t i = 0; i < n; i += ctx->n_batch) {
        const int64_t T = std::min<int64_t>(ctx->n_batch, n - i);
        lg = m.forward(ctx->state, tokens + i, T, /*all_logits=*/false);
      }
      m.backend().to_host(lg, ctx->logits.data());
    } catch (...) {
      ctx->state.n_past = n_past0;  // positions past n_past are never read
      ctx->has_logits = false;
      throw;
    }
    ctx->has_logits = true;
  });
}

const float* minfer_get_logits(minfer_context* ctx) {
  const float* r = nullptr;
  guarded(__func__, MINFER_ERR_INVALID_ARGUMENT, [&] {
    need(ctx != nullptr, "ctx is NULL");
    if (!ctx->has_logits)
      api_fail(MINFER_ERR_INVALID_ARGUMENT, "no logits: decode tokens first (none since the {})",
               ctx->state.n_past ? "last failed decode" : "context was created or reset");
    r = ctx->logits.data();
  });
  return r;
}

minfer_sampler_params minfer_sampler_default_params(void) {
  minfer_sampler_params p;
  p.temperature = 0.f;
  p.top_k = 40;
  p.top_p = 0.95f;
  p.seed = 0;
  return p;
}

int32_t minfer_sample(minfer_context* ctx, const minfer_sampler_params* p) {
  int32_t r = MINFER_ERR_INVALID_ARGUMENT;
  const int st = guarded(__func__, MINFER_ERR_INTERNAL, [&] {
    need(ctx != nullptr, "ctx is NULL");
    if (!ctx->has_logits)
      api_fail(MINFER_ERR_INVALID_ARGUMENT, "no logits to sample from: decode tokens first");
    const minfer_sampler_params d = minfer_sampler_default_params();
    if (!p) p = &d;
    if (!std::isfinite(p->temperature) || !std::isfinite(p->top_p) || p->top_p <= 0.f)
      api_fail(MINFER_ERR_INVALID_ARGUMENT, "temperature {} / top_p {}: expected finite, top_p > 0",
               p->temperature, p->top_p);
    const minfer_sampler_params& s = ctx->sampler_params;
    if (!ctx->sampler || s.temperature != p->temperature || s.top_k != p->top_k ||
        s.top_p != p->top_p || s.seed != p->seed) {
      ctx->sampler.emplace(SamplerParams{p->temperature, p->top_k, p->top_p, p->seed});
      ctx->sampler_params = *p;
    }
    r = ctx->sampler->sample(ctx->logits.data(), int64_t(ctx->logits.size()));
  });
  return st == MINFER_OK ? r : st;
}

int minfer_embed(minfer_context* ctx, const char* text, float* out, int32_t n_out) {
  return guarded(__func__, MINFER_ERR_INTERNAL, [&] {
    need(ctx != nullptr, "ctx is NULL");
    need(text != nullptr, "text is NULL");
    need(out != nullptr, "out is NULL");
    minfer_model& mm = *ctx->model;
    Model& m = *mm.lm.model;
    const ModelConfig& c = m.config();
    if (c.causal())
      api_fail(MINFER_ERR_UNSUPPORTED,
               "'{}' is a causal LM: minfer_embed needs an encoder (e.g. a BERT "
               "sentence-transformers model)",
               c.model_type);
    if (n_out < c.hidden)
      api_fail(MINFER_ERR_INVALID_ARGUMENT, "n_out {} is smaller than n_embd {}", n_out, c.hidden);
    std::vector<int32_t> ids;
    try {
      ids = mm.lm.tokenizer->encode(text, /*add_special=*/true);
    } catch (const Error& e) {
      api_fail(MINFER_ERR_INVALID_ARGUMENT, "{}", e.what());
    }
    need(!ids.empty(), "the text encodes to no tokens");
    if (int64_t(ids.size()) > ctx->n_ctx) {  // HF truncation: keep the final special token
      const int32_t last = ids.back();
      ids.resize(size_t(ctx->n_ctx));
      ids.back() = last;
    }
    const int64_t T = int64_t(ids.size());
    std::vector<float> hidden;
    {
      std::lock_guard<std::mutex> lock(mm.forward_mu);
      if (mm.n_threads > 0) m.backend().set_threads(mm.n_threads);
      Tensor h = m.encode(ctx->state, ids.data(), 1, T);
      hidden.resize(size_t(h.numel()));
      m.backend().to_host(h, hidden.data());
    }
    const std::vector<float> e = pool_sentence(hidden.data(), T, c.hidden, mm.pooling);
    std::memcpy(out, e.data(), e.size() * sizeof(float));
  });
}

}  // extern "C"
