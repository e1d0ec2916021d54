// LoRA forward and backward (lora.h): four small OpenBLAS sgemms each way.
#include "train/lora.h"

#include <cblas.h>

#include <algorithm>
#include <sstream>

#include "engine/error.h"

namespace minfer::train {

std::string lora_module(const std::string& t) {
  if (t == "q" || t == "k" || t == "v" || t == "o") return "self_attn." + t + "_proj";
  if (t == "gate" || t == "up" || t == "down") return "mlp." + t + "_proj";
  MINFER_FAIL("--lora-targets: unknown target '{}' (expected q, k, v, o, gate, up, down)", t);
}

std::vector<std::string> parse_lora_targets(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    lora_module(item);  // checks the name
    MINFER_CHECK(std::find(out.begin(), out.end(), item) == out.end(),
                 "--lora-targets '{}': '{}' listed twice", s, item);
    out.push_back(item);
  }
  MINFER_CHECK(!out.empty(), "--lora-targets '{}': no targets (expected e.g. q,k,v,o)", s);
  return out;
}

void lora_forward(float* out, float* h, const float* inp, const float* A, const float* B,
                  float scale, int64_t N, int64_t I, int64_t O, int64_t r) {
  // h = inp · Aᵀ
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(N), int(r), int(I), 1.f, inp, int(I), A,
              int(I), 0.f, h, int(r));
  // out += scale · h · Bᵀ
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(N), int(O), int(r), scale, h, int(r), B,
              int(r), 1.f, out, int(O));
}

void lora_backward(float* dinp, float* dA, float* dB, float* h, float* dh, const float* dout,
                   const float* inp, const float* A, const float* B, float scale, int64_t N,
                   int64_t I, int64_t O, int64_t r) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(N), int(r), int(I), 1.f, inp, int(I), A,
              int(I), 0.f, h, int(r));
  // dB += scale · doutᵀ · h
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(O), int(r), int(N), scale, dout, int(O),
              h, int(r), 1.f, dB, int(r));
  // dh = scale · dout · B   [N, r]
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(N), int(r), int(O), scale, dout,
              int(O), B, int(r), 0.f, dh, int(r));
  // dA += dhᵀ · inp
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(r), int(I), int(N), 1.f, dh, int(r), inp,
              int(I), 1.f, dA, int(I));
  // dinp += dh · A
  if (dinp)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(N), int(I), int(r), 1.f, dh, int(r),
                A, int(I), 1.f, dinp, int(I));
}

}  // namespace minfer::train
