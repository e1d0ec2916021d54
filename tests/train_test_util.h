// Helpers shared by the training tests.
#pragma once
#include <cstdint>
#include <string>

#include "train/distill.h"

namespace minfer::test {

// A tiny distillation run on the parity fixtures: loss 0.5 KD (T = 2) + 0.5 CE, sequences of 8
// tokens, peak lr 1e-2, no progress bar; the student, the step counts and the seed are the test's.
inline train::DistillOptions tiny_distill(const std::string& student, int64_t steps, int64_t batch,
                                          int64_t accum, int64_t warmup, uint64_t seed) {
  train::DistillOptions o;
  o.student = student;
  o.loss = {0.5f, 2.f, false};
  o.steps = steps;
  o.batch = batch;
  o.accum = accum;
  o.seq = 8;
  o.lr = 1e-2f;
  o.warmup = warmup;
  o.seed = seed;
  o.progress = false;
  return o;
}

}  // namespace minfer::test
