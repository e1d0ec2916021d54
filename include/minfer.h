/* minfer.h: the C API of minfer, for embedding the engine in applications (C11, also valid C++).
 *
 * A short tour:
 *
 *   minfer_model_params mp = minfer_model_default_params();
 *   minfer_model *model;
 *   if (minfer_model_load("SmolLM2-135M-Instruct.Q4_1.gguf", &mp, &model) != MINFER_OK) {
 *     fprintf(stderr, "%s\n", minfer_last_error());
 *     return 1;
 *   }
 *   minfer_context_params cp = minfer_context_default_params();
 *   minfer_context *ctx;
 *   minfer_context_new(model, &cp, &ctx);
 *
 *   int32_t ids[512];
 *   int32_t n = minfer_tokenize(model, "The capital of France is", -1, ids, 512, true);
 *   minfer_decode(ctx, ids, n);                          // prompt into the KV cache
 *   minfer_sampler_params sp = minfer_sampler_default_params();  // greedy
 *   for (int i = 0; i < 32; ++i) {
 *     int32_t t = minfer_sample(ctx, &sp);               // from the last position's logits
 *     if (t < 0 || minfer_token_is_eog(model, t)) break;
 *     char piece[64];
 *     int32_t len = minfer_token_to_piece(model, t, piece, sizeof piece);
 *     fwrite(piece, 1, len > 0 ? len : 0, stdout);
 *     if (minfer_decode(ctx, &t, 1) != MINFER_OK) break;  // MINFER_ERR_CONTEXT_FULL at n_ctx
 *   }
 *   minfer_context_free(ctx);
 *   minfer_model_free(model);
 *
 * Conventions
 * - Every fallible call returns a status (MINFER_OK = 0, a negative MINFER_ERR_* otherwise) and
 *   sets a message for it that minfer_last_error() returns on the same thread. No C++ exception
 *   ever crosses this header; misuse (NULL handles, short buffers, token ids out of range, a
 *   decode past n_ctx, text that is not UTF-8) returns an error, never crashes.
 * - Functions that fill a caller's buffer (minfer_tokenize, minfer_token_to_piece) return the
 *   count written, or -needed (the count the buffer must hold) when it is too small; nothing
 *   useful is written then. On other errors they return MINFER_INVALID_COUNT (INT32_MIN).
 * - The free functions accept NULL.
 *
 * Threads and lifetimes
 * - One model is shared by any number of contexts. Every function may be called from any
 *   thread, as long as one context is not used by two threads at once. Forward passes of
 *   contexts on the same model take turns (each already uses all the model's n_threads);
 *   tokenization and sampling run concurrently.
 * - Free every context of a model before the model. Using a context, or a pointer returned by
 *   minfer_get_logits, after its model is freed is undefined behaviour. The pointer from
 *   minfer_get_logits is valid until the next minfer_decode / minfer_context_reset /
 *   minfer_context_free on that context.
 * - The log callback and its user pointer are process-wide and may be called from any thread
 *   that calls into the library.
 */
#ifndef MINFER_H
#define MINFER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#define MINFER_API __declspec(dllexport)
#else
#define MINFER_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define MINFER_VERSION_MAJOR 0
#define MINFER_VERSION_MINOR 1
#define MINFER_VERSION_PATCH 0

/* Status codes. */
enum {
  MINFER_OK = 0,
  MINFER_ERR_INVALID_ARGUMENT = -1, /* NULL handle, bad size, token id out of range, bad UTF-8 */
  MINFER_ERR_LOAD = -2,             /* the path or buffer is not a model this library reads */
  MINFER_ERR_CONTEXT_FULL = -3,     /* the tokens do not fit the context's n_ctx */
  MINFER_ERR_UNSUPPORTED = -4,      /* e.g. decode on an encoder, embed on a causal LM */
  MINFER_ERR_OUT_OF_MEMORY = -5,
  MINFER_ERR_INTERNAL = -6 /* any other failure; the message says what */
};

/* What count-returning functions return on an error that is not a short buffer. */
#define MINFER_INVALID_COUNT INT32_MIN

/* Log levels passed to the callback. */
enum { MINFER_LOG_DEBUG = 0, MINFER_LOG_INFO = 1, MINFER_LOG_WARN = 2, MINFER_LOG_ERROR = 3 };

typedef struct minfer_model minfer_model;
typedef struct minfer_context minfer_context;

typedef struct minfer_model_params {
  int32_t n_threads;   /* threads for every kernel (BLAS included); 0 = OMP_NUM_THREADS or cores */
  const char* backend; /* "cpu" (default) or "cuda" (a library built with CUDA=1) */
  int32_t device;      /* GPU index for "cuda" */
  /* minfer_model_load_from_buffer only: use the caller's bytes in place instead of copying them
   * once. The buffer must then stay valid and unchanged until minfer_model_free, and start at a
   * 64-byte aligned address (otherwise it is copied anyway). */
  bool use_buffer_in_place;
} minfer_model_params;

typedef struct minfer_context_params {
  int32_t n_ctx;   /* positions of the KV cache (causal LMs) or the longest input (encoders);
                      0 = the model's n_ctx_train. Capped at n_ctx_train. Default 2048. */
  int32_t n_batch; /* most tokens one forward pass takes; longer decodes are split. Default 512 */
} minfer_context_params;

typedef struct minfer_sampler_params {
  float temperature; /* <= 0: greedy (argmax). Default 0 */
  int32_t top_k;     /* keep the k most likely tokens; <= 0: all. Default 40 */
  float top_p;       /* nucleus: smallest set with this probability mass; >= 1: off. Default 0.95 */
  uint64_t seed;     /* seed of the context's random generator. Default 0 */
} minfer_sampler_params;

/* "0.1.0" (the library's version). Never NULL. */
MINFER_API const char* minfer_version(void);

/* Message of the last failed call on this thread ("" when none has failed). Valid until the next
 * failing call on this thread. Never NULL. */
MINFER_API const char* minfer_last_error(void);

/* Routes the library's messages (level, one line without newline, user) to cb. Before any call,
 * or after minfer_log_set(NULL, NULL), warnings and errors go to stderr. To silence the library,
 * pass a callback that does nothing. Calls are serialized; the callback must not call
 * minfer_log_set. */
MINFER_API void minfer_log_set(void (*cb)(int level, const char* msg, void* user), void* user);

/* ---- Models ---------------------------------------------------------------------------------- */

MINFER_API minfer_model_params minfer_model_default_params(void);

/* Loads a model: a Hugging Face-style folder (config.json + *.safetensors + tokenizer.json), a
 * compressed minfer folder, or a .gguf file (llama architecture). Never downloads anything.
 * p may be NULL (defaults). On success *out holds the model; on failure *out is NULL. */
MINFER_API int minfer_model_load(const char* path, const minfer_model_params* p,
                                 minfer_model** out);

/* Loads a model from an image in memory: a GGUF file (llama architecture, with its tokenizer in
 * the metadata), or a single-file safetensors model whose "__metadata__" holds "config.json" and
 * "tokenizer.json" (the files' text). The bytes are copied once into an aligned buffer the model
 * owns (the caller may free them on return), unless p->use_buffer_in_place. */
MINFER_API int minfer_model_load_from_buffer(const void* data, size_t size,
                                             const minfer_model_params* p, minfer_model** out);

MINFER_API void minfer_model_free(minfer_model* model);

/* Model sizes; MINFER_ERR_INVALID_ARGUMENT (-1) for a NULL model. */
MINFER_API int32_t minfer_n_vocab(const minfer_model* model);     /* token ids are [0, n_vocab) */
MINFER_API int32_t minfer_n_embd(const minfer_model* model);      /* hidden size (embedding dim) */
MINFER_API int32_t minfer_n_ctx_train(const minfer_model* model); /* positions it was trained for */
/* true for encoders (minfer_embed), false for causal LMs (minfer_decode). */
MINFER_API bool minfer_model_is_encoder(const minfer_model* model);

/* KV-cache element types (minfer_model_set_kv_type). */
enum { MINFER_KV_F32 = 0, MINFER_KV_F16 = 1 };
/* The element type of the KV caches of the contexts created from now on (existing contexts keep
 * theirs): MINFER_KV_F32 (the default) or MINFER_KV_F16 (half the cache memory, and half the bytes
 * a decode step reads from it; keys and values rounded to fp16 where they are written, as
 * llama.cpp's default cache). Encoders have no KV cache and keep the setting unused. Returns
 * MINFER_ERR_INVALID_ARGUMENT for a NULL model or another type, MINFER_ERR_UNSUPPORTED where the
 * model's backend runs F32 caches only. Not to be called while another thread creates a context
 * on the same model. */
MINFER_API int minfer_model_set_kv_type(minfer_model* model, int32_t type);

/* ---- Contexts -------------------------------------------------------------------------------- */

MINFER_API minfer_context_params minfer_context_default_params(void);

/* A context: one sequence's KV cache, activation buffers, logits and sampler state. p may be
 * NULL (defaults). */
MINFER_API int minfer_context_new(minfer_model* model, const minfer_context_params* p,
                                  minfer_context** out);
MINFER_API void minfer_context_free(minfer_context* ctx);
/* Clears the KV cache (the next decode starts at position 0), the logits, and re-seeds the
 * sampler. NULL is ignored. */
MINFER_API void minfer_context_reset(minfer_context* ctx);
MINFER_API int32_t minfer_n_ctx(const minfer_context* ctx);  /* KV positions; -1 for NULL */
MINFER_API int32_t minfer_n_past(const minfer_context* ctx); /* positions used; -1 for NULL */

/* ---- Tokens ---------------------------------------------------------------------------------- */

/* Text (UTF-8, text_len bytes, or up to its NUL when text_len < 0) -> token ids, following the
 * model's tokenizer (Hugging Face tokenizers / GGUF vocabulary). add_special adds BOS/EOS or
 * [CLS] ... [SEP] as the tokenizer's post-processor says. Returns the count, -needed when n_max is
 * smaller, MINFER_INVALID_COUNT on error (NULL model or text, invalid UTF-8). */
MINFER_API int32_t minfer_tokenize(const minfer_model* model, const char* text, int32_t text_len,
                                   int32_t* tokens, int32_t n_max, bool add_special);

/* The bytes token adds to a text (possibly part of a UTF-8 character: concatenate the pieces of
 * consecutive tokens before displaying them as characters). Special tokens give their text. Not
 * NUL-terminated. Returns the length, -needed when len is smaller, MINFER_INVALID_COUNT for a
 * NULL model or a token out of range. */
MINFER_API int32_t minfer_token_to_piece(const minfer_model* model, int32_t token, char* buf,
                                         int32_t len);

/* true when generation should stop at token (the model's EOS, and end-of-turn tokens such as
 * ChatML's <|im_end|>). false for NULL or an id out of range. */
MINFER_API bool minfer_token_is_eog(const minfer_model* model, int32_t token);

/* ---- Generation ------------------------------------------------------------------------------ */

/* Runs n tokens at positions n_past .. n_past + n - 1 and appends them to the KV cache. Checks
 * everything first: on any error the context is unchanged. MINFER_ERR_CONTEXT_FULL when
 * n_past + n > n_ctx (reset, or start a context with a larger n_ctx). */
MINFER_API int minfer_decode(minfer_context* ctx, const int32_t* tokens, int32_t n);

/* Logits of the last position of the last decode: n_vocab floats. NULL (with an error message)
 * before the first decode or after a reset. */
MINFER_API const float* minfer_get_logits(minfer_context* ctx);

MINFER_API minfer_sampler_params minfer_sampler_default_params(void);

/* The next token from the last logits: greedy, or temperature -> top-k -> top-p -> a draw from
 * the context's generator (seeded with p->seed on first use, after a reset, and whenever the
 * params change). p may be NULL (greedy). Returns the token id, or a negative MINFER_ERR_*. */
MINFER_API int32_t minfer_sample(minfer_context* ctx, const minfer_sampler_params* p);

/* ---- Embeddings ------------------------------------------------------------------------------ */

/* Sentence embedding of text (UTF-8, NUL-terminated) with an encoder model, pooled as the model
 * folder declares (sentence-transformers' 1_Pooling/config.json: mean, CLS or max; mean when
 * absent) and L2-normalised when its modules.json lists a Normalize module. Input longer than
 * the context's n_ctx keeps its first n_ctx - 1 tokens and the final special token. Writes
 * minfer_n_embd floats to out; n_out smaller is MINFER_ERR_INVALID_ARGUMENT. */
MINFER_API int minfer_embed(minfer_context* ctx, const char* text, float* out, int32_t n_out);

#ifdef __cplusplus
}
#endif

#endif /* MINFER_H */
