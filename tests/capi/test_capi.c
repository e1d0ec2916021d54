/* The C API test: C11, uses only include/minfer.h. Run from the repository root by `make test`
 * (MINFER_BIN names the folder of the tools, to compare with run-model and embed).
 *
 * Always: the tiny GGUF fixture (tests/fixtures/gguf/tiny_llama.gguf: vocab 101, hidden 48,
 * 128 positions) for every function, the -needed conventions, misuse, loading from a buffer, two
 * contexts on one model from two threads, and greedy generation equal to run-model's.
 * When installed (~/.cache/minfer or $MINFER_HOME): SmolLM2 greedy generation equal to
 * run-model's, and MiniLM embeddings equal to the embed tool's. */
#define _POSIX_C_SOURCE 200809L /* popen, clock_gettime */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <threads.h>

#include "minfer.h"

static int g_pass, g_fail;

#define CHECK(cond)                                                                   \
  do {                                                                                \
    if (cond) {                                                                       \
      ++g_pass;                                                                       \
    } else {                                                                          \
      ++g_fail;                                                                       \
      fprintf(stderr, "FAIL %s:%d: %s (last error: %s)\n", __FILE__, __LINE__, #cond, \
              minfer_last_error());                                                   \
    }                                                                                 \
  } while (0)

#define TINY "tests/fixtures/gguf/tiny_llama.gguf"

static const char* bin_dir(void) {
  const char* b = getenv("MINFER_BIN");
  return b ? b : "build/bin";
}

static char* read_file(const char* path, size_t* size) {
  FILE* f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char* buf = malloc((size_t)n);
  if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
    free(buf);
    buf = NULL;
  }
  fclose(f);
  *size = (size_t)n;
  return buf;
}

static int file_exists(const char* path) {
  FILE* f = fopen(path, "rb");
  if (f) fclose(f);
  return f != NULL;
}

/* The "ids" array of run-model --json with the KV cache kv (f32 | f16). Returns the count (-1
 * when the tool failed). */
static int run_model_ids(const char* model, const char* prompt, int n, const char* kv, int32_t* ids,
                         int cap) {
  char cmd[4096];
  snprintf(cmd, sizeof cmd,
           "%s/run-model --model '%s' --prompt '%s' -n %d --temp 0 --threads 1 --kv-cache %s "
           "--json 2>/dev/null",
           bin_dir(), model, prompt, n, kv);
  FILE* p = popen(cmd, "r");
  if (!p) return -1;
  static char out[1 << 16];
  size_t len = fread(out, 1, sizeof out - 1, p);
  out[len] = 0;
  if (pclose(p) != 0) return -1;
  const char* s = strstr(out, "\"ids\":");
  if (!s) return -1;
  s = strchr(s, '[') + 1;
  int k = 0;
  while (k < cap) {
    while (*s == ' ' || *s == '\n' || *s == ',') ++s;
    if (*s == ']') break;
    char* end;
    long v = strtol(s, &end, 10);
    if (end == s) return -1;
    ids[k++] = (int32_t)v;
    s = end;
  }
  return k;
}

/* Greedy generation through the C API: prompt, then n tokens (no stop at end-of-generation:
 * the caller compares with run-model, which stops at EOS only). Returns the count. */
static int generate(minfer_context* ctx, const minfer_model* m, const char* prompt, int n,
                    int32_t* out) {
  int32_t ids[512];
  int32_t np = minfer_tokenize(m, prompt, -1, ids, 512, true);
  if (np <= 0) return -1;
  minfer_context_reset(ctx);
  if (minfer_decode(ctx, ids, np) != MINFER_OK) return -1;
  minfer_sampler_params sp = minfer_sampler_default_params();
  int k = 0;
  while (k < n) {
    int32_t t = minfer_sample(ctx, &sp);
    if (t < 0) return -1;
    out[k++] = t;
    if (k == n || minfer_n_past(ctx) >= minfer_n_ctx(ctx)) break;
    if (minfer_decode(ctx, &t, 1) != MINFER_OK) return -1;
  }
  return k;
}

/* run-model's ids must be a prefix of ours; where run-model stopped early, at EOS. */
static int same_as_run_model(const minfer_model* m, const int32_t* ours, int n_ours,
                             const int32_t* ref, int n_ref) {
  if (n_ref < 0 || n_ref > n_ours) return 0;
  for (int i = 0; i < n_ref; ++i)
    if (ours[i] != ref[i]) return 0;
  return n_ref == n_ours || minfer_token_is_eog(m, ours[n_ref]);
}

static void count_logs(int level, const char* msg, void* user) {
  (void)level;
  (void)msg;
  ++*(int*)user;
}

static void test_misuse(void) {
  CHECK(strcmp(minfer_version(), "0.1.0") == 0);
  CHECK(minfer_last_error() != NULL);
  minfer_model* m = (minfer_model*)1;
  CHECK(minfer_model_load(NULL, NULL, &m) == MINFER_ERR_INVALID_ARGUMENT);
  CHECK(m == NULL);
  CHECK(strlen(minfer_last_error()) > 0);
  CHECK(minfer_model_load(TINY, NULL, NULL) == MINFER_ERR_INVALID_ARGUMENT);
  CHECK(minfer_model_load("no/such/model.gguf", NULL, &m) == MINFER_ERR_LOAD);
  CHECK(strstr(minfer_last_error(), "no/such/model.gguf") != NULL);
  CHECK(minfer_model_load("tests/fixtures/gguf/tiny_unknown_arch.gguf", NULL, &m) ==
        MINFER_ERR_LOAD);
  CHECK(strstr(minfer_last_error(), "mamba") != NULL);
  minfer_model_params mp = minfer_model_default_params();
  mp.backend = "tpu";
  CHECK(minfer_model_load(TINY, &mp, &m) == MINFER_ERR_INVALID_ARGUMENT);
  mp = minfer_model_default_params();
  mp.n_threads = -2;
  CHECK(minfer_model_load(TINY, &mp, &m) == MINFER_ERR_INVALID_ARGUMENT);
  CHECK(minfer_model_load_from_buffer(NULL, 10, NULL, &m) == MINFER_ERR_INVALID_ARGUMENT);
  CHECK(minfer_model_load_from_buffer("GGUF", 0, NULL, &m) == MINFER_ERR_INVALID_ARGUMENT);
  static const char junk[64] = "this is not a model image, only some text in a buffer";
  CHECK(minfer_model_load_from_buffer(junk, sizeof junk, NULL, &m) == MINFER_ERR_LOAD);
  CHECK(m == NULL);

  minfer_model_free(NULL);
  minfer_context_free(NULL);
  minfer_context_reset(NULL);
  CHECK(minfer_n_vocab(NULL) == MINFER_ERR_INVALID_ARGUMENT);
  CHECK(minfer_n_embd(NULL) == MINFER_ERR_INVALID_ARGUMENT);
  CHECK(minfer_n_ctx_train(NULL) == MINFER_ERR_INVALID_ARGUMENT);
  CHECK(!minfer_model_is_encoder(NULL));
  CHECK(minfer_n_ctx(NULL) == -1 && minfer_n_past(NULL) == -1);
  minfer_context* c = (minfer_context*)1;
  CHECK(minfer_context_new(NULL, NULL, &c) == MINFER_ERR_INVALID_ARGUMENT);
  CHECK(c == NULL);
  int32_t t[4];
  CHECK(minfer_tokenize(NULL, "hi", -1, t, 4, true) == MINFER_INVALID_COUNT);
  char buf[8];
  CHECK(minfer_token_to_piece(NULL, 0, buf, 8) == MINFER_INVALID_COUNT);
  CHECK(!minfer_token_is_eog(NULL, 0));
  CHECK(minfer_decode(NULL, t, 1) == MINFER_ERR_INVALID_ARGUMENT);
  CHECK(minfer_get_logits(NULL) == NULL);
  CHECK(minfer_sample(NULL, NULL) == MINFER_ERR_INVALID_ARGUMENT);
  float e[4];
  CHECK(minfer_embed(NULL, "x", e, 4) == MINFER_ERR_INVALID_ARGUMENT);
}

static void test_tokens(minfer_model* m) {
  CHECK(minfer_n_vocab(m) == 101);
  CHECK(minfer_n_embd(m) == 48);
  CHECK(minfer_n_ctx_train(m) == 128);
  CHECK(!minfer_model_is_encoder(m));

  /* -needed: a size query, a short buffer, then the exact size */
  const char* text = "hello there";
  int32_t need = minfer_tokenize(m, text, -1, NULL, 0, true);
  CHECK(need < -1);
  int32_t ids[64];
  CHECK(minfer_tokenize(m, text, -1, ids, -need - 1, true) == need);
  CHECK(minfer_tokenize(m, text, -1, ids, -need, true) == -need);
  CHECK(ids[0] == 1); /* BOS */
  int32_t n_plain = minfer_tokenize(m, text, -1, ids, 64, false);
  CHECK(n_plain == -need - 1);
  CHECK(minfer_tokenize(m, text, 5, ids, 64, false) > 0); /* "hello" only */
  CHECK(minfer_tokenize(m, "", 0, ids, 64, false) == 0);
  CHECK(minfer_tokenize(m, text, -1, NULL, 4, true) == MINFER_INVALID_COUNT);
  CHECK(minfer_tokenize(m, NULL, -1, ids, 64, true) == MINFER_INVALID_COUNT);
  CHECK(minfer_tokenize(m, text, -1, ids, -3, true) == MINFER_INVALID_COUNT);
  /* not UTF-8: an error naming the byte, never a crash */
  CHECK(minfer_tokenize(m, "ab\xff\xfe", -1, ids, 64, true) == MINFER_INVALID_COUNT);
  CHECK(strstr(minfer_last_error(), "UTF-8") != NULL);
  CHECK(minfer_tokenize(m, "\xe2\x82", 2, ids, 64, true) == MINFER_INVALID_COUNT);

  /* pieces of consecutive tokens concatenate to the text */
  n_plain = minfer_tokenize(m, text, -1, ids, 64, false);
  char joined[128] = "";
  size_t jl = 0;
  for (int i = 0; i < n_plain; ++i) {
    char piece[16];
    int32_t l = minfer_token_to_piece(m, ids[i], piece, sizeof piece);
    CHECK(l > 0);
    if (l > 0 && jl + (size_t)l < sizeof joined) {
      memcpy(joined + jl, piece, (size_t)l);
      jl += (size_t)l;
    }
  }
  joined[jl] = 0;
  CHECK(strcmp(joined, text) == 0);
  char piece[4];
  int32_t tok_the = ids[n_plain - 1]; /* a multi-character piece */
  int32_t full = minfer_token_to_piece(m, tok_the, NULL, 0);
  CHECK(full < 0);
  CHECK(minfer_token_to_piece(m, tok_the, piece, -full) == -full);
  CHECK(minfer_token_to_piece(m, -1, piece, 4) == MINFER_INVALID_COUNT);
  CHECK(minfer_token_to_piece(m, 101, piece, 4) == MINFER_INVALID_COUNT);
  CHECK(minfer_token_to_piece(m, 0, NULL, 4) == MINFER_INVALID_COUNT);
  CHECK(minfer_token_to_piece(m, 2, piece, 3) == -4); /* special tokens give their text */
  CHECK(minfer_token_to_piece(m, 2, piece, 4) == 4 && memcmp(piece, "</s>", 4) == 0);

  CHECK(minfer_token_is_eog(m, 2)); /* EOS */
  CHECK(!minfer_token_is_eog(m, 1));
  CHECK(!minfer_token_is_eog(m, -5));
  CHECK(!minfer_token_is_eog(m, 1000));
}

static float max_abs_diff(const float* a, const float* b, int n) {
  float d = 0;
  for (int i = 0; i < n; ++i) d = fmaxf(d, fabsf(a[i] - b[i]));
  return d;
}

static void test_decode(minfer_model* m) {
  const int V = minfer_n_vocab(m);
  minfer_context_params cp = minfer_context_default_params();
  CHECK(cp.n_ctx > 0 && cp.n_batch > 0);
  cp.n_ctx = 16;
  cp.n_batch = 4;
  minfer_context* c;
  CHECK(minfer_context_new(m, &cp, &c) == MINFER_OK);
  CHECK(minfer_n_ctx(c) == 16 && minfer_n_past(c) == 0);
  CHECK(minfer_get_logits(c) == NULL);
  CHECK(minfer_sample(c, NULL) == MINFER_ERR_INVALID_ARGUMENT);

  int32_t ids[16];
  int32_t n = minfer_tokenize(m, "hello there", -1, ids, 16, true);
  CHECK(n > 4 && n < 16);
  int32_t bad[2] = {5, 101};
  CHECK(minfer_decode(c, bad, 2) == MINFER_ERR_INVALID_ARGUMENT);
  bad[1] = -1;
  CHECK(minfer_decode(c, bad, 2) == MINFER_ERR_INVALID_ARGUMENT);
  CHECK(minfer_decode(c, ids, 0) == MINFER_ERR_INVALID_ARGUMENT);
  CHECK(minfer_decode(c, NULL, 3) == MINFER_ERR_INVALID_ARGUMENT);
  CHECK(minfer_n_past(c) == 0);

  CHECK(minfer_decode(c, ids, n) == MINFER_OK); /* prefill in chunks of n_batch = 4 */
  CHECK(minfer_n_past(c) == n);
  const float* lg = minfer_get_logits(c);
  CHECK(lg != NULL);
  float chunked[101];
  int finite = 1;
  for (int i = 0; i < V; ++i) finite &= isfinite(lg[i]) != 0;
  CHECK(finite);
  memcpy(chunked, lg, sizeof chunked);

  /* the same prompt in one forward pass, on a second context of the same model */
  minfer_context_params cp1 = cp;
  cp1.n_batch = 16;
  minfer_context* c1;
  CHECK(minfer_context_new(m, &cp1, &c1) == MINFER_OK);
  CHECK(minfer_decode(c1, ids, n) == MINFER_OK);
  CHECK(max_abs_diff(chunked, minfer_get_logits(c1), V) < 1e-4f);
  /* token by token gives the same last logits too */
  minfer_context_reset(c1);
  CHECK(minfer_n_past(c1) == 0 && minfer_get_logits(c1) == NULL);
  for (int i = 0; i < n; ++i) CHECK(minfer_decode(c1, &ids[i], 1) == MINFER_OK);
  CHECK(max_abs_diff(chunked, minfer_get_logits(c1), V) < 1e-4f);

  /* greedy = argmax */
  int best = 0;
  for (int i = 1; i < V; ++i)
    if (chunked[i] > chunked[best]) best = i;
  CHECK(minfer_sample(c, NULL) == best);
  minfer_sampler_params sp = minfer_sampler_default_params();
  CHECK(sp.temperature == 0.f && sp.top_k == 40);
  CHECK(minfer_sample(c, &sp) == best);
  /* seeded sampling: in range, reproducible after a re-seed */
  sp.temperature = 1.5f;
  sp.top_k = 0;
  sp.top_p = 1.f;
  sp.seed = 42;
  int32_t draws[8];
  for (int i = 0; i < 8; ++i) {
    draws[i] = minfer_sample(c, &sp);
    CHECK(draws[i] >= 0 && draws[i] < V);
  }
  sp.seed = 43;
  (void)minfer_sample(c, &sp);
  sp.seed = 42; /* params changed: re-seeded */
  int same = 1;
  for (int i = 0; i < 8; ++i) same &= minfer_sample(c, &sp) == draws[i];
  CHECK(same);
  sp.temperature = NAN;
  CHECK(minfer_sample(c, &sp) == MINFER_ERR_INVALID_ARGUMENT);

  /* fill the context, then one more: a clear status, the context unchanged */
  int32_t t = best;
  while (minfer_n_past(c) < 16) CHECK(minfer_decode(c, &t, 1) == MINFER_OK);
  const float* before = minfer_get_logits(c);
  float last[101];
  memcpy(last, before, sizeof last);
  CHECK(minfer_decode(c, &t, 1) == MINFER_ERR_CONTEXT_FULL);
  CHECK(strstr(minfer_last_error(), "n_ctx") != NULL);
  CHECK(minfer_n_past(c) == 16);
  CHECK(minfer_get_logits(c) != NULL && max_abs_diff(last, minfer_get_logits(c), V) == 0.f);
  minfer_context_reset(c);
  CHECK(minfer_decode(c, ids, n) == MINFER_OK);
  CHECK(max_abs_diff(chunked, minfer_get_logits(c), V) == 0.f);

  float e[64];
  CHECK(minfer_embed(c, "hello", e, 64) == MINFER_ERR_UNSUPPORTED);

  /* n_ctx beyond the model's 128 positions is capped; 0 = the model's */
  cp.n_ctx = 100000;
  minfer_context* c2;
  CHECK(minfer_context_new(m, &cp, &c2) == MINFER_OK);
  CHECK(minfer_n_ctx(c2) == 128);
  minfer_context_free(c2);
  cp.n_ctx = 0;
  CHECK(minfer_context_new(m, &cp, &c2) == MINFER_OK);
  CHECK(minfer_n_ctx(c2) == 128);
  minfer_context_free(c2);
  cp.n_ctx = -1;
  CHECK(minfer_context_new(m, &cp, &c2) == MINFER_ERR_INVALID_ARGUMENT);

  minfer_context_free(c1);
  minfer_context_free(c);
}

/* The same model from a buffer (copied, and in place) gives bit-identical logits. */
static void test_buffer(minfer_model* file_model) {
  size_t size;
  char* bytes = read_file(TINY, &size);
  CHECK(bytes != NULL);
  if (!bytes) return;
  int32_t ids[16];
  int32_t n = minfer_tokenize(file_model, "hello there", -1, ids, 16, true);
  minfer_context* cf;
  CHECK(minfer_context_new(file_model, NULL, &cf) == MINFER_OK);
  CHECK(minfer_decode(cf, ids, n) == MINFER_OK);
  const int V = minfer_n_vocab(file_model);

  for (int in_place = 0; in_place < 2; ++in_place) {
    minfer_model_params mp = minfer_model_default_params();
    mp.use_buffer_in_place = in_place;
    /* in place: 64-byte aligned, kept alive until the model is freed; copied: freed (after
     * wiping it) as soon as the load returns */
    void* image = in_place ? aligned_alloc(64, (size + 63) / 64 * 64) : malloc(size);
    memcpy(image, bytes, size);
    minfer_model* m = NULL;
    CHECK(minfer_model_load_from_buffer(image, size, &mp, &m) == MINFER_OK);
    if (!in_place) {
      memset(image, 0, size);
      free(image);
    }
    if (!m) continue;
    CHECK(minfer_n_vocab(m) == V);
    minfer_context* c;
    CHECK(minfer_context_new(m, NULL, &c) == MINFER_OK);
    CHECK(minfer_decode(c, ids, n) == MINFER_OK);
    CHECK(max_abs_diff(minfer_get_logits(cf), minfer_get_logits(c), V) == 0.f);
    minfer_context_free(c);
    minfer_model_free(m);
    if (in_place) free(image);
  }
  /* a truncated image is an error, not a crash */
  minfer_model* m = NULL;
  memcpy(bytes, "GGUF", 4);
  CHECK(minfer_model_load_from_buffer(bytes, size / 2, NULL, &m) == MINFER_ERR_LOAD);
  CHECK(m == NULL);
  free(bytes);
  minfer_context_free(cf);
}

struct thread_job {
  minfer_model* m;
  const char* prompt;
  int n;
  int32_t out[64];
  int got;
};

static int thread_main(void* arg) {
  struct thread_job* j = arg;
  minfer_context* c;
  j->got = -1;
  if (minfer_context_new(j->m, NULL, &c) != MINFER_OK) return 1;
  for (int rep = 0; rep < 3; ++rep) j->got = generate(c, j->m, j->prompt, j->n, j->out);
  minfer_context_free(c);
  return 0;
}

/* An F16 KV cache: refused types, then greedy generation equal to run-model --kv-cache f16; the
 * setting stays with the model until changed back. */
static void test_kv_f16(minfer_model* m, const char* path, const char* prompt, int n) {
  CHECK(minfer_model_set_kv_type(NULL, MINFER_KV_F16) == MINFER_ERR_INVALID_ARGUMENT);
  CHECK(minfer_model_set_kv_type(m, 7) == MINFER_ERR_INVALID_ARGUMENT);
  CHECK(strstr(minfer_last_error(), "KV type 7") != NULL);
  CHECK(minfer_model_set_kv_type(m, MINFER_KV_F16) == MINFER_OK);
  int32_t ours[64], rm[64];
  minfer_context* c;
  CHECK(minfer_context_new(m, NULL, &c) == MINFER_OK);
  int got = generate(c, m, prompt, n, ours);
  CHECK(got == n);
  minfer_context_free(c);
  int n_rm = run_model_ids(path, prompt, n, "f16", rm, 64);
  CHECK(n_rm > 0);
  CHECK(same_as_run_model(m, ours, got, rm, n_rm));
  printf("test-capi: %s greedy with an F16 KV cache, %d tokens: %s run-model --kv-cache f16\n",
         path, n_rm, same_as_run_model(m, ours, got, rm, n_rm) ? "identical to" : "DIFFERENT from");
  /* The setting reaches the cache: after the same prompt the logits differ from an F32 cache's
   * (by the fp16 rounding of the keys and values). */
  int32_t ids[64];
  int32_t np = minfer_tokenize(m, prompt, -1, ids, 64, true);
  CHECK(np > 0);
  const int32_t nv = minfer_n_vocab(m);
  float* l16 = malloc(sizeof(float) * (size_t)nv);
  minfer_context *c16, *c32;
  CHECK(minfer_context_new(m, NULL, &c16) == MINFER_OK);
  CHECK(minfer_model_set_kv_type(m, MINFER_KV_F32) == MINFER_OK);
  CHECK(minfer_context_new(m, NULL, &c32) == MINFER_OK); /* c16 keeps its F16 cache */
  CHECK(minfer_decode(c16, ids, np) == MINFER_OK);
  memcpy(l16, minfer_get_logits(c16), sizeof(float) * (size_t)nv);
  CHECK(minfer_decode(c32, ids, np) == MINFER_OK);
  CHECK(memcmp(l16, minfer_get_logits(c32), sizeof(float) * (size_t)nv) != 0);
  free(l16);
  minfer_context_free(c16);
  minfer_context_free(c32);
}

static void test_threads_and_run_model(minfer_model* m, const char* path, const char* prompt,
                                       int n) {
  int32_t ref[64];
  minfer_context* c;
  CHECK(minfer_context_new(m, NULL, &c) == MINFER_OK);
  int got = generate(c, m, prompt, n, ref);
  CHECK(got == n);
  minfer_context_free(c);

  int32_t rm[64];
  int n_rm = run_model_ids(path, prompt, n, "f32", rm, 64);
  CHECK(n_rm > 0);
  CHECK(same_as_run_model(m, ref, got, rm, n_rm));
  printf("test-capi: %s greedy, %d tokens: %s run-model\n", path, n_rm,
         same_as_run_model(m, ref, got, rm, n_rm) ? "identical to" : "DIFFERENT from");

  /* two contexts on the one model, from two threads at once */
  struct thread_job jobs[2] = {{m, prompt, n, {0}, 0}, {m, prompt, n, {0}, 0}};
  thrd_t th[2];
  for (int i = 0; i < 2; ++i) CHECK(thrd_create(&th[i], thread_main, &jobs[i]) == thrd_success);
  for (int i = 0; i < 2; ++i) thrd_join(th[i], NULL);
  for (int i = 0; i < 2; ++i) {
    CHECK(jobs[i].got == got);
    CHECK(memcmp(jobs[i].out, ref, sizeof(int32_t) * (size_t)n) == 0);
  }
}

static void test_smollm2(const char* home) {
  char path[2048];
  snprintf(path, sizeof path, "%s/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", home);
  if (!file_exists(path)) {
    printf("test-capi: SKIPPED smollm2 (%s not installed; `make models`)\n", path);
    return;
  }
  minfer_model* m;
  CHECK(minfer_model_load(path, NULL, &m) == MINFER_OK);
  if (!m) return;
  CHECK(minfer_n_vocab(m) == 49152);
  int32_t im_end[4];
  CHECK(minfer_tokenize(m, "<|im_end|>", -1, im_end, 4, false) == 1);
  CHECK(minfer_token_is_eog(m, im_end[0]));
  /* a multi-byte character split across byte-level tokens comes back whole */
  int32_t ids[32];
  const char* text = "Caf\xc3\xa9 \xe2\x82\xac 12";
  int32_t k = minfer_tokenize(m, text, -1, ids, 32, false);
  char joined[64];
  size_t jl = 0;
  for (int i = 0; i < k; ++i) {
    int32_t l = minfer_token_to_piece(m, ids[i], joined + jl, (int32_t)(sizeof joined - jl));
    CHECK(l >= 0);
    if (l > 0) jl += (size_t)l;
  }
  joined[jl] = 0;
  CHECK(strcmp(joined, text) == 0);
  test_threads_and_run_model(m, path, "The capital of France is", 24);
  minfer_model_free(m);
}

static void test_minilm(const char* home) {
  char path[2048];
  snprintf(path, sizeof path, "%s/minilm", home);
  char cfg[2100];
  snprintf(cfg, sizeof cfg, "%s/config.json", path);
  if (!file_exists(cfg)) {
    printf("test-capi: SKIPPED minilm (%s not installed; `make models`)\n", path);
    return;
  }
  minfer_model* m;
  CHECK(minfer_model_load(path, NULL, &m) == MINFER_OK);
  if (!m) return;
  CHECK(minfer_model_is_encoder(m));
  CHECK(minfer_n_embd(m) == 384);
  minfer_context* c;
  CHECK(minfer_context_new(m, NULL, &c) == MINFER_OK);
  CHECK(minfer_n_ctx(c) == 512);
  float e[384], small[8];
  int32_t one = 5;
  CHECK(minfer_decode(c, &one, 1) == MINFER_ERR_UNSUPPORTED);
  CHECK(minfer_embed(c, "A man is eating food.", small, 8) == MINFER_ERR_INVALID_ARGUMENT);
  CHECK(minfer_embed(c, "caf\xe9", e, 384) == MINFER_ERR_INVALID_ARGUMENT);
  CHECK(minfer_embed(c, "A man is eating food.", e, 384) == MINFER_OK);
  double norm = 0;
  for (int i = 0; i < 384; ++i) norm += (double)e[i] * e[i];
  CHECK(fabs(sqrt(norm) - 1.0) < 1e-5); /* modules.json lists Normalize */

  /* the embed tool's vector for the same sentence */
  char cmd[4096];
  snprintf(cmd, sizeof cmd, "echo 'A man is eating food.' | %s/embed --model '%s' 2>/dev/null",
           bin_dir(), path);
  FILE* p = popen(cmd, "r");
  double dot = 0, nref = 0;
  int k = 0;
  for (double v; k < 384 && p && fscanf(p, "%lf", &v) == 1; ++k) {
    dot += v * e[k];
    nref += v * v;
  }
  if (p) pclose(p);
  CHECK(k == 384);
  double cosv = dot / sqrt(nref * norm);
  CHECK(cosv > 0.999999);
  printf("test-capi: minilm embedding vs the embed tool: cosine %.8f\n", cosv);
  /* a second, longer sentence: same context, no state carried over */
  float e2[384];
  CHECK(minfer_embed(c, "A man is eating a piece of bread.", e2, 384) == MINFER_OK);
  double d12 = 0;
  for (int i = 0; i < 384; ++i) d12 += (double)e[i] * e2[i];
  CHECK(d12 > 0.5 && d12 < 0.999);
  minfer_context_free(c);
  minfer_model_free(m);
}

int main(void) {
  test_misuse();

  int logs = 0;
  minfer_log_set(count_logs, &logs);
  minfer_model* m;
  CHECK(minfer_model_load(TINY, NULL, &m) == MINFER_OK);
  CHECK(logs > 0); /* the load is reported at INFO */
  minfer_log_set(NULL, NULL);
  if (m) {
    test_tokens(m);
    test_decode(m);
    test_buffer(m);
    test_threads_and_run_model(m, TINY, "hello there", 20);
    test_kv_f16(m, TINY, "hello there", 20);
    minfer_model_free(m);
  }

  const char* home = getenv("MINFER_HOME");
  char def[1024];
  if (!home) {
    snprintf(def, sizeof def, "%s/.cache/minfer", getenv("HOME") ? getenv("HOME") : ".");
    home = def;
  }
  if (getenv("MINFER_CAPI_TINY_ONLY")) { /* emulated runs (qemu): the fixture only */
    printf("test-capi: SKIPPED smollm2 and minilm (MINFER_CAPI_TINY_ONLY)\n");
  } else {
    test_smollm2(home);
    test_minilm(home);
  }

  printf("test-capi: %d checks passed, %d failed\n", g_pass, g_fail);
  return g_fail == 0 ? 0 : 1;
}
