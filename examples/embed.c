/* embed: sentence embeddings through the C API, and their cosine similarities.
 *
 *   cc embed.c $(pkg-config --cflags --libs minfer) -lm -o embed
 *   printf 'A man is eating food.\nA man eats bread.\nThe sky is blue.\n' | ./embed MODEL
 *
 * MODEL is an encoder folder (e.g. sentence-transformers all-MiniLM-L6-v2): pooling and
 * normalization follow its modules.json. Prints each sentence's first values, then the matrix. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "minfer.h"

#define MAX_SENTENCES 64

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s MODEL < sentences.txt\n", argv[0]);
    return 2;
  }
  minfer_model* model;
  if (minfer_model_load(argv[1], NULL, &model) != MINFER_OK) {
    fprintf(stderr, "error: %s\n", minfer_last_error());
    return 1;
  }
  const int32_t dim = minfer_n_embd(model);
  minfer_context* ctx;
  if (minfer_context_new(model, NULL, &ctx) != MINFER_OK) {
    fprintf(stderr, "error: %s\n", minfer_last_error());
    minfer_model_free(model);
    return 1;
  }
  float* emb = malloc(sizeof(float) * (size_t)dim * MAX_SENTENCES);
  char line[4096];
  int n = 0, rc = 0;
  while (emb && n < MAX_SENTENCES && fgets(line, sizeof line, stdin)) {
    line[strcspn(line, "\r\n")] = 0;
    if (!line[0]) continue;
    if (minfer_embed(ctx, line, emb + (size_t)n * (size_t)dim, dim) != MINFER_OK) {
      fprintf(stderr, "error: %s\n", minfer_last_error());
      rc = 1;
      break;
    }
    const float* e = emb + (size_t)n * (size_t)dim;
    printf("[%d] %.6f %.6f %.6f ... (%d values) %s\n", n, e[0], e[1], e[2], dim, line);
    ++n;
  }
  for (int a = 0; a < n && rc == 0; ++a) {
    for (int b = 0; b < n; ++b) {
      double dot = 0, na = 0, nb = 0;
      for (int i = 0; i < dim; ++i) {
        const double x = emb[(size_t)a * (size_t)dim + (size_t)i];
        const double y = emb[(size_t)b * (size_t)dim + (size_t)i];
        dot += x * y, na += x * x, nb += y * y;
      }
      printf("%7.4f ", dot / sqrt(na * nb));
    }
    printf("\n");
  }
  free(emb);
  minfer_context_free(ctx);
  minfer_model_free(model);
  return rc;
}
