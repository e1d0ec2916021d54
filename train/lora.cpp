// LoRA forward and backward (lora.h): four small OpenBLAS sgemms each way.
#include "train/lora.h"

#include <cblas.h>

#include <algorithm>
#include <sstream>

#include "engine/error.h"

namespace minfer::train {

namespace {
struct TargetTable {
  Arch arch;
  std::vector<std::pair<const char*, const char*>> rows;  // target, module
};
const std::vector<TargetTable>& target_tables() {
  static const std::vector<TargetTable> t{
      {Arch::Llama,
       {{"q", "self_attn.q_proj"},
        {"k", "self_attn.k_proj"},
        {"v", "self_attn.v_proj"},
        {"o", "self_attn.o_proj"},
        {"gate", "mlp.gate_proj"},
        {"up", "mlp.up_proj"},
        {"down", "mlp.down_proj"}}},
      {Arch::GPT2,
       {{"qkv", "attn.c_attn"}, {"o", "attn.c_proj"}, {"up", "mlp.c_fc"}, {"down", "mlp.c_proj"}}},
      {Arch::Bert,
       {{"q", "attention.self.query"},
        {"k", "attention.self.key"},
        {"v", "attention.self.value"},
        {"o", "attention.output.dense"},
        {"up", "intermediate.dense"},
        {"down", "output.dense"}}},
  };
  return t;
}
std::string names_of(const TargetTable& t) {
  std::string s;
  for (const auto& r : t.rows) s += (s.empty() ? "" : ", ") + std::string(r.first);
  return s;
}
}  // namespace

std::string lora_module(Arch arch, const std::string& t) {
  for (const TargetTable& tt : target_tables()) {
    if (tt.arch != arch) continue;
    for (const auto& r : tt.rows)
      if (t == r.first) return r.second;
    MINFER_FAIL("--lora-targets: unknown target '{}' for a {} student (expected {})", t,
                arch_name(arch), names_of(tt));
  }
  throw NotImplemented(
      fmt::format("LoRA for a {} student (llama, gpt2 and bert have it)", arch_name(arch)));
}

std::vector<std::string> default_lora_targets(Arch arch) {
  if (arch == Arch::GPT2) return {"qkv"};
  return {"q", "v"};
}

std::vector<std::string> parse_lora_targets(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    bool known = false;
    std::string all;
    for (const TargetTable& tt : target_tables()) {
      for (const auto& r : tt.rows) known |= item == r.first;
      all += fmt::format("{}{} ({})", all.empty() ? "" : "; ", names_of(tt), arch_name(tt.arch));
    }
    MINFER_CHECK(known, "--lora-targets: unknown target '{}' (expected {})", item, all);
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
