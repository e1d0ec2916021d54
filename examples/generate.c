/* generate: stream text from a causal LM through the C API.
 *
 *   cc generate.c $(pkg-config --cflags --libs minfer) -o generate
 *   ./generate MODEL "PROMPT" [N_TOKENS [TEMPERATURE [SEED]]]
 *
 * MODEL is a .gguf file, a Hugging Face-style folder or a compressed minfer folder. Pieces are
 * written as soon as each token is sampled (raw bytes: a character split across tokens is
 * completed by the next piece). Statistics go to stderr. */
#define _POSIX_C_SOURCE 200809L /* popen, clock_gettime */
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>

#include "minfer.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char** argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s MODEL PROMPT [N_TOKENS [TEMPERATURE [SEED]]]\n", argv[0]);
    return 2;
  }
  const int n_predict = argc > 3 ? atoi(argv[3]) : 64;
  minfer_sampler_params sp = minfer_sampler_default_params();
  if (argc > 4) sp.temperature = (float)atof(argv[4]);
  if (argc > 5) sp.seed = strtoull(argv[5], NULL, 10);

  double t0 = now_s();
  minfer_model* model;
  if (minfer_model_load(argv[1], NULL, &model) != MINFER_OK) {
    fprintf(stderr, "error: %s\n", minfer_last_error());
    return 1;
  }
  const double t_load = now_s() - t0;
  minfer_context_params cp = minfer_context_default_params();
  cp.n_ctx = 512;
  minfer_context* ctx;
  if (minfer_context_new(model, &cp, &ctx) != MINFER_OK) {
    fprintf(stderr, "error: %s\n", minfer_last_error());
    minfer_model_free(model);
    return 1;
  }

  /* -needed convention: ask for the size, then tokenize into a buffer of that size */
  int32_t n_prompt = -minfer_tokenize(model, argv[2], -1, NULL, 0, true);
  int32_t* prompt = n_prompt > 0 ? malloc(sizeof(int32_t) * (size_t)n_prompt) : NULL;
  int rc = 1;
  if (!prompt || minfer_tokenize(model, argv[2], -1, prompt, n_prompt, true) != n_prompt) {
    fprintf(stderr, "error: cannot tokenize the prompt: %s\n", minfer_last_error());
    goto done;
  }
  t0 = now_s();
  if (minfer_decode(ctx, prompt, n_prompt) != MINFER_OK) {
    fprintf(stderr, "error: %s\n", minfer_last_error());
    goto done;
  }
  const double t_prompt = now_s() - t0;

  t0 = now_s();
  int n_gen = 0;
  char piece[256];
  while (n_gen < n_predict) {
    int32_t tok = minfer_sample(ctx, &sp);
    if (tok < 0) {
      fprintf(stderr, "\nerror: %s\n", minfer_last_error());
      goto done;
    }
    if (minfer_token_is_eog(model, tok)) break;
    int32_t len = minfer_token_to_piece(model, tok, piece, (int32_t)sizeof piece);
    if (len > 0) fwrite(piece, 1, (size_t)len, stdout);
    fflush(stdout);
    ++n_gen;
    int st = minfer_decode(ctx, &tok, 1);
    if (st == MINFER_ERR_CONTEXT_FULL) break;
    if (st != MINFER_OK) {
      fprintf(stderr, "\nerror: %s\n", minfer_last_error());
      goto done;
    }
  }
  const double t_gen = now_s() - t0;
  printf("\n");
  fflush(stdout); /* the text ends before the statistics on a shared terminal */
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  fprintf(stderr,
          "minfer %s | load %.2f s | prompt %d tokens %.2f tok/s | generated %d tokens %.2f "
          "tok/s | peak RSS %.1f MB\n",
          minfer_version(), t_load, n_prompt, n_prompt / t_prompt, n_gen,
          n_gen ? n_gen / t_gen : 0.0, ru.ru_maxrss / 1024.0);
  rc = 0;
done:
  free(prompt);
  minfer_context_free(ctx);
  minfer_model_free(model);
  return rc;
}
