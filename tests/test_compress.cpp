// Whole-model compression: method names, compress_model on the tiny parity fixtures, the
// compressed folder round trip (save -> load gives the same representation and the same logits),
// tied / untied heads, overrides, calibration, and clear errors for broken folders.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "compress/compress.h"
#include "engine/half.h"
#include "engine/safetensors.h"
#include "models/model.h"
#include "test_util.h"

using namespace minfer;
namespace fs = std::filesystem;

namespace {

const std::string kFix = "tests/fixtures/parity/";

std::vector<int32_t> some_ids(int64_t n, int64_t vocab, uint32_t seed = 7) {
  std::mt19937 rng(seed);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& i : ids) i = int32_t(rng() % uint32_t(vocab));
  return ids;
}

std::vector<float> run_logits(Model& m, const std::vector<int32_t>& ids) {
  RunState s = m.new_state(int64_t(ids.size()), int64_t(ids.size()));
  Tensor l = m.forward(s, ids.data(), int64_t(ids.size()), true);
  std::vector<float> out(static_cast<size_t>(l.numel()));
  m.backend().to_host(l, out.data());
  return out;
}

std::vector<float> run_encode(Model& m, const std::vector<int32_t>& ids) {
  RunState s = m.new_state(0, int64_t(ids.size()));
  Tensor h = m.encode(s, ids.data(), 1, int64_t(ids.size()));
  std::vector<float> out(static_cast<size_t>(h.numel()));
  m.backend().to_host(h, out.data());
  return out;
}

float max_diff(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  float d = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::fabs(a[i] - b[i]));
  return d;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  if (a.defined() != b.defined()) return false;
  if (!a.defined()) return true;
  return a.nbytes() == b.nbytes() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

const Quantized* weight_codes(const Linear& l) {
  if (auto* q = std::get_if<Quantized>(&l.repr)) return q;
  if (auto* o = std::get_if<Int8WithOutliers>(&l.repr)) return &o->w;
  if (auto* a = std::get_if<W8A8>(&l.repr)) return &a->w;
  return nullptr;
}

nlohmann::json read_json(const fs::path& p) {
  std::ifstream f(p);
  return nlohmann::json::parse(f);
}

void write_json(const fs::path& p, const nlohmann::json& j) {
  std::ofstream f(p);
  f << j.dump(2);
}

}  // namespace

TEST_CASE("compress: method names parse, print back, and reject what does not exist") {
  for (std::string n : {"f32",
                        "fp16",
                        "bf16",
                        "int8",
                        "int8-tensor",
                        "int8-g64",
                        "int4-g32",
                        "int4-g128-asym",
                        "nf4-g64",
                        "nf4-g64-dq",
                        "binary",
                        "ternary",
                        "ternary-row",
                        "llm-int8",
                        "w8a8",
                        "w8a8-static",
                        "ffn-20",
                        "heads-40+int8",
                        "layers-4+nf4-g64",
                        "ffn-12.5+heads-20+int4-g128"}) {
    CAPTURE(n);
    CompressSpec s = compress_spec_from_name(n);
    CHECK(compress_spec_name(s) == n);
  }
  CHECK(compress_spec_name(compress_spec_from_name("int4")) == "int4-g128");
  CHECK(compress_spec_name(compress_spec_from_name("nf4-dq")) == "nf4-g64-dq");
  // One spelling per format; a chain prints back as it was written.
  CHECK_THROWS_WITH_AS(compress_spec_from_name("f16"), doctest::Contains("did you mean fp16"),
                       Error);
  CHECK(compress_spec_from_name("int4-g64").steps.size() == 1);
  CHECK(compress_spec_from_name("llm-int8").last().method == "llm-int8");
  // Every registered method parses by its own name (the list --help and the docs print); prune
  // methods take their sparsity as an argument.
  for (const MethodInfo& m : method_registry()) {
    CAPTURE(std::string(m.name));
    // Structured, prune and low-rank steps need their amount ("ffn-20", "wanda-50", "lowrank-20").
    // kmeans takes its bits in the name ("kmeans4").
    const std::string arg = (m.options & (kOptAmount | kOptRank)) ? "-20"
                            : m.kind == MethodKind::Prune         ? "-50"
                            : (m.options & kOptBits)              ? "4"
                                                                  : "";
    CHECK(compress_spec_from_name(std::string(m.name) + arg).last().method == m.name);
  }
  // Chains: the grammar exists; only a last step may quantize (every registered method does).
  CHECK_THROWS_WITH_AS(compress_spec_from_name("int8+int4"), doctest::Contains("must come last"),
                       Error);
  CHECK_THROWS_WITH_AS(compress_spec_from_name("int8+"), doctest::Contains("empty step"), Error);
  CHECK(compress_spec_from_name("wanda-50+int8").steps.size() == 2);
  CHECK_THROWS_WITH_AS(compress_spec_from_name("int5"), doctest::Contains("unknown compression"),
                       Error);
  CHECK_THROWS_WITH_AS(compress_spec_from_name("int8-asym"), doctest::Contains("int4 option"),
                       Error);
  CHECK_THROWS_WITH_AS(compress_spec_from_name("int4-dq"), doctest::Contains("nf4 option"), Error);
  CHECK_THROWS_WITH_AS(compress_spec_from_name("binary-g64"), doctest::Contains("no group"), Error);
  CHECK_THROWS_WITH_AS(compress_spec_from_name("int4-x"), doctest::Contains("unknown option"),
                       Error);
  CHECK_THROWS_AS(compress_spec_from_name(""), Error);
  CHECK_THROWS_AS(compress_spec_from_name("int4-g99999999999"), Error);
  CompressSpec bad = compress_spec_from_name("int4");
  bad.keep = {{"*.mlp.*", "int5"}};
  CHECK_THROWS_WITH_AS(validate_compress_spec(bad), doctest::Contains("int5"), Error);
  bad.keep = {{"", "int8"}};
  CHECK_THROWS_WITH_AS(validate_compress_spec(bad), doctest::Contains("empty pattern"), Error);
}

TEST_CASE("compress: every format survives save -> load with identical codes and logits") {
  auto be = make_cpu_backend(2);
  const std::vector<int32_t> ids = some_ids(12, 97);  // valid in every fixture's vocab
  for (std::string fix : {"llama", "llama_untied", "gpt2"}) {
    for (std::string method :
         {"fp16", "bf16", "int8", "int8-g32", "int4-g32", "int4-g64-asym", "nf4-g64-dq", "binary",
          "ternary", "llm-int8", "w8a8", "w8a8-static"}) {
      CAPTURE(fix);
      CAPTURE(method);
      auto ref = load_model(kFix + fix, *be);
      const std::vector<float> f32 = run_logits(*ref, ids);
      auto m = load_model(kFix + fix, *be);
      CompressSpec spec = compress_spec_from_name(method);
      ActStats stats;
      if (spec.uses_calibration()) stats = calibrate(*m, some_ids(64, 97, 3), 2, 32, false);
      CompressReport r = compress_model(*m, spec, stats.tokens ? &stats : nullptr, false);
      CHECK(r.bytes_after < r.bytes_before);
      CHECK(r.bits_per_weight > 0);
      const std::vector<float> mem = run_logits(*m, ids);
      // Compression changes the logits, but a working format keeps them aligned.
      double dot = 0, na = 0, nb = 0;
      for (size_t i = 0; i < f32.size(); ++i)
        dot += double(mem[i]) * f32[i], na += double(mem[i]) * mem[i],
            nb += double(f32[i]) * f32[i];
      const double cos = dot / std::sqrt(na * nb);
      const std::string& mm = spec.last().method;
      const bool four = mm == "int4" || mm == "nf4";
      const bool low = mm == "binary" || mm == "ternary";
      if (!low) CHECK(cos > (four ? 0.85 : 0.99));

      test::TempDir dir("compress");
      const std::string out = dir / "model";
      save_compressed(*m, nullptr, out, spec);
      REQUIRE(is_compressed_folder(out));
      for (auto& e : fs::directory_iterator(dir.path))  // no staging folder left behind
        CHECK(e.path().filename() == "model");
      auto back = load_model(out, *be);
      const std::vector<float> loaded = run_logits(*back, ids);
      CHECK(max_diff(loaded, mem) == 0.f);
      auto a = m->linears(), b = back->linears();
      REQUIRE(a.size() == b.size());
      for (size_t i = 0; i < a.size(); ++i) {
        CAPTURE(a[i]->name);
        CHECK(a[i]->repr.index() == b[i]->repr.index());
        CHECK(a[i]->weight_bytes() == b[i]->weight_bytes());
        const Quantized *qa = weight_codes(*a[i]), *qb = weight_codes(*b[i]);
        if (qa && qb) {
          CHECK(same_bytes(qa->codes, qb->codes));
          CHECK(same_bytes(qa->scales, qb->scales));
          CHECK(same_bytes(qa->zeros, qb->zeros));
          CHECK(same_bytes(qa->scale_codes, qb->scale_codes));
        }
      }
      CHECK(back->weight_bytes() == m->weight_bytes());
      // The file holds what the report says (plus the safetensors header).
      const size_t file = size_t(fs::file_size(fs::path(out) / "model.safetensors"));
      CHECK(file >= m->weight_bytes());
      CHECK(file < m->weight_bytes() + 64 * 1024);
    }
  }
}

TEST_CASE("compress: the LM head is int8 by default and untied; fp16 keeps it tied") {
  auto be = make_cpu_backend(2);
  const int64_t V = 101;
  {
    auto m = load_model(kFix + "llama", *be);
    compress_model(*m, compress_spec_from_name("int4-g32"), nullptr, false);
    Linear* head = m->linears().back();
    CHECK(head->name == "lm_head.weight");
    REQUIRE(std::holds_alternative<Quantized>(head->repr));
    CHECK(std::get<Quantized>(head->repr).scheme == QScheme::Int8);
    CHECK(head->out == V);
    test::TempDir dir("head");
    save_compressed(*m, nullptr, dir / "m", compress_spec_from_name("int4-g32"));
    auto st = SafetensorsFile::open(dir / "m/model.safetensors");
    CHECK(st->has("lm_head.weight.codes"));
    CHECK(st->get("model.embed_tokens.weight").dtype() == DType::F16);
    CHECK(read_json(fs::path(dir.path) / "m/config.json")["tie_word_embeddings"] == false);
  }
  {
    auto m = load_model(kFix + "llama", *be);
    CompressReport r = compress_model(*m, compress_spec_from_name("fp16"), nullptr, false);
    Linear* head = m->linears().back();
    REQUIRE(std::holds_alternative<Dense>(head->repr));
    CHECK(std::get<Dense>(head->repr).w.dtype() == DType::F16);
    test::TempDir dir("head16");
    save_compressed(*m, nullptr, dir / "m", compress_spec_from_name("fp16"));
    auto st = SafetensorsFile::open(dir / "m/model.safetensors");
    CHECK_FALSE(st->has("lm_head.weight"));
    // Every weight in half precision but the f32 norm vectors, tied head counted once.
    CHECK(r.bits_per_weight > 16.0);
    CHECK(r.bits_per_weight < 16.3);
  }
  {  // --keep overrides the head default and the method per layer
    auto m = load_model(kFix + "llama", *be);
    CompressSpec s = compress_spec_from_name("int4-g32");
    s.keep = {{"lm_head.weight", "fp16"}, {"*.mlp.down_proj.weight", "int8"}};
    compress_model(*m, s, nullptr, false);
    for (Linear* w : m->linears()) {
      CAPTURE(w->name);
      if (w->name.find("down_proj") != std::string::npos)
        CHECK(std::get<Quantized>(w->repr).scheme == QScheme::Int8);
      else if (w->name.find("layers") != std::string::npos)
        CHECK(std::get<Quantized>(w->repr).scheme == QScheme::Int4);
      else
        CHECK(std::holds_alternative<Dense>(w->repr));  // tied fp16 head
    }
  }
}

TEST_CASE("compress: BERT (encoder) round trip keeps the hidden states") {
  auto be = make_cpu_backend(2);
  const std::vector<int32_t> ids = some_ids(9, 103);
  auto ref = load_model(kFix + "bert", *be);
  const std::vector<float> f32 = run_encode(*ref, ids);
  auto m = load_model(kFix + "bert", *be);
  CompressSpec spec = compress_spec_from_name("int8");
  compress_model(*m, spec, nullptr, false);
  const std::vector<float> mem = run_encode(*m, ids);
  CHECK(max_diff(mem, f32) < 0.05f);
  test::TempDir dir("bert");
  save_compressed(*m, nullptr, dir / "m", spec);
  auto back = load_model(dir / "m", *be);
  CHECK(max_diff(run_encode(*back, ids), mem) == 0.f);
  CHECK_THROWS_WITH_AS(calibrate(*m, ids, 1, 4, false), doctest::Contains("causal"), Error);
}

TEST_CASE("compress: calibration records max |x| per input feature of every linear") {
  auto be = make_cpu_backend(2);
  auto m = load_model(kFix + "llama", *be);
  ActStats st = calibrate(*m, some_ids(100, 101), 3, 16, false);
  CHECK(st.tokens == 48);
  CHECK(st.absmax.size() == m->linears().size());
  for (Linear* w : m->linears()) {
    CAPTURE(w->name);
    REQUIRE(st.absmax.count(w->name));
    const std::vector<float>& a = st.absmax[w->name];
    CHECK(int64_t(a.size()) == w->in);
    CHECK(*std::max_element(a.begin(), a.end()) > 0.f);
  }
  // q, k and v read the same normed input: identical statistics.
  const std::string p = "model.layers.1.self_attn.";
  CHECK(st.absmax[p + "q_proj.weight"] == st.absmax[p + "k_proj.weight"]);
  CHECK(st.absmax[p + "q_proj.weight"] == st.absmax[p + "v_proj.weight"]);
  // A static w8a8 scale is the calibration max over features / 127.
  CompressSpec s = compress_spec_from_name("w8a8-static");
  CHECK_THROWS_WITH_AS(compress_model(*m, s, nullptr, false), doctest::Contains("calibration"),
                       Error);
  compress_model(*m, s, &st, false);
  for (Linear* w : m->linears()) {
    if (w->name == "lm_head.weight") continue;
    CAPTURE(w->name);
    const std::vector<float>& a = st.absmax[w->name];
    CHECK(std::get<W8A8>(w->repr).act_scale ==
          doctest::Approx(*std::max_element(a.begin(), a.end()) / 127.f));
  }
  // The observer is removed after calibration: a later forward records nothing more.
  CHECK(st.tokens == 48);
}

TEST_CASE("compress: broken compressed folders fail with the tensor and what was expected") {
  auto be = make_cpu_backend(2);
  auto m = load_model(kFix + "llama", *be);
  CompressSpec spec = compress_spec_from_name("int4-g32");
  compress_model(*m, spec, nullptr, false);
  test::TempDir dir("broken");
  const fs::path good = fs::path(dir.path) / "good";
  save_compressed(*m, nullptr, good.string(), spec);
  const std::string q = "model.layers.0.self_attn.q_proj.weight";
  auto variant = [&](const std::string& tag, auto&& edit) {
    const fs::path d = fs::path(dir.path) / tag;
    fs::copy(good, d);
    nlohmann::json j = read_json(d / "config.json");
    edit(j);
    write_json(d / "config.json", j);
    return d.string();
  };
  CHECK_THROWS_WITH_AS(
      load_model(
          variant("scheme", [&](auto& j) { j["quantization"]["tensors"][q]["scheme"] = "int5"; }),
          *be),
      doctest::Contains("unknown quantization scheme 'int5'"), Error);
  CHECK_THROWS_WITH_AS(
      load_model(variant("group", [&](auto& j) { j["quantization"]["tensors"][q]["group"] = 16; }),
                 *be),
      doctest::Contains(q.c_str()), Error);
  CHECK_THROWS_WITH_AS(
      load_model(variant("shape", [&](auto& j) { j["quantization"]["tensors"][q]["out"] = 7; }),
                 *be),
      doctest::Contains("expects"), Error);
  CHECK_THROWS_WITH_AS(
      load_model(
          variant("repr", [&](auto& j) { j["quantization"]["tensors"][q]["repr"] = "magic"; }),
          *be),
      doctest::Contains("unknown representation 'magic'"), Error);
  CHECK_THROWS_WITH_AS(
      load_model(variant("version", [&](auto& j) { j["quantization"]["version"] = 9; }), *be),
      doctest::Contains("version 9"), Error);
  CHECK_THROWS_WITH_AS(
      load_model(variant("field", [&](auto& j) { j["quantization"]["tensors"][q].erase("group"); }),
                 *be),
      doctest::Contains("lacks 'group'"), Error);
  // Saving over an existing folder needs force; a failed save leaves the old folder intact.
  CHECK_THROWS_WITH_AS(save_compressed(*m, nullptr, good.string(), spec),
                       doctest::Contains("already exists"), Error);
  CHECK(is_compressed_folder(good.string()));
  save_compressed(*m, nullptr, good.string(), spec, /*force=*/true);
  CHECK(load_model(good.string(), *be) != nullptr);
}

TEST_CASE("compress: -f16s keeps the codes, rounds the scales to fp16 and stores them as F16") {
  auto be = make_cpu_backend(2);
  const std::vector<int32_t> ids = some_ids(12, 97);
  for (std::string base : {"int4-g32-asym", "int4-g32", "int8"}) {
    CAPTURE(base);
    auto ma = load_model(kFix + "llama", *be), mb = load_model(kFix + "llama", *be);
    const CompressSpec sa = compress_spec_from_name(base),
                       sb = compress_spec_from_name(base + "-f16s");
    CHECK(compress_spec_name(sb) == compress_spec_name(sa) + "-f16s");
    compress_model(*ma, sa, nullptr, false);
    compress_model(*mb, sb, nullptr, false);
    const std::vector<Linear*> la = ma->linears(), lb = mb->linears();
    int checked = 0;
    for (size_t i = 0; i < la.size(); ++i) {
      if (la[i]->name == "lm_head.weight") continue;  // the head: int8 by default, f32 scales
      CAPTURE(la[i]->name);
      const Quantized &qa = std::get<Quantized>(la[i]->repr),
                      &qb = std::get<Quantized>(lb[i]->repr);
      CHECK(same_bytes(qa.codes, qb.codes));
      CHECK(same_bytes(qa.zeros, qb.zeros));
      REQUIRE(qa.scales.numel() == qb.scales.numel());
      for (int64_t k = 0; k < qa.scales.numel(); ++k) {
        // An fp16 value (its fp16 round trip is exact) within half an fp16 ulp (2^-11 relative,
        // normal range) of the f32 scale: the nearest one.
        const float a = qa.scales.data<float>()[k], b = qb.scales.data<float>()[k];
        REQUIRE(f16_to_f32(f32_to_f16(b)) == b);
        REQUIRE(std::fabs(double(b) - a) <= std::ldexp(std::fabs(double(a)), -11));
      }
      CHECK(linear_format(*lb[i]) == linear_format(*la[i]) + "-f16s");
      CHECK(la[i]->weight_bytes() - lb[i]->weight_bytes() == size_t(2 * qa.scales.numel()));
      ++checked;
    }
    CHECK(checked == 7 * int(ma->config().n_layers));
    // fp16 scales move each weight by at most 2^-11 of its scale's step: the logits barely move.
    const std::vector<float> ya = run_logits(*ma, ids), yb = run_logits(*mb, ids);
    float amax = 0;
    for (float v : ya) amax = std::max(amax, std::fabs(v));
    CHECK(max_diff(ya, yb) < 2e-3f * amax);
    CHECK(max_diff(ya, yb) > 0.f);  // something was rounded

    // Saved as F16 in the file, loaded back to the same F32 values and logits.
    test::TempDir dir("f16s");
    const std::string out = dir / "model";
    save_compressed(*mb, nullptr, out, sb);
    auto file = SafetensorsFile::open(out + "/model.safetensors");
    const std::string probe = "model.layers.0.self_attn.q_proj.weight.scales";
    REQUIRE(file->has(probe));
    CHECK(file->get(probe).dtype() == DType::F16);
    CHECK(file->get("lm_head.weight.scales").dtype() == DType::F32);
    auto back = load_model(out, *be);
    CHECK(max_diff(run_logits(*back, ids), yb) == 0.f);
    CHECK(back->weight_bytes() == mb->weight_bytes());
    const size_t bytes = size_t(fs::file_size(fs::path(out) / "model.safetensors"));
    CHECK(bytes >= mb->weight_bytes());
    CHECK(bytes < mb->weight_bytes() + 64 * 1024);
    for (size_t i = 0; i + 1 < la.size(); ++i)
      CHECK(linear_format(*back->linears()[i]) == linear_format(*lb[i]));
  }
  // A scale beyond fp16's range is refused by name, not written as inf (the kind of
  // ../bugs/compress-fp16-overflow): int8 of weights up to 1e7 has scales near 78740 > 65504.
  {
    Tensor w = Tensor::empty(DType::F32, {4, 64});
    for (int64_t i = 0; i < w.numel(); ++i) w.data<float>()[i] = (i % 2 ? 1e7f : -3.f);
    const Linear l = make_dense("big.weight", w, 64, 4);
    const std::string e =
        test::error_of([&] { compress_linear(l, compress_spec_from_name("int8-f16s"), nullptr); });
    CHECK(e.find("'big.weight'") != std::string::npos);
    CHECK(e.find("65504") != std::string::npos);
    CHECK_NOTHROW(compress_linear(l, compress_spec_from_name("int8"), nullptr));
  }
  // Where there is no per-group f32 scale to round, or the method has none.
  for (const char* bad : {"nf4-dq-f16s", "int8-tensor-f16s", "binary-f16s", "kmeans4-f16s",
                          "fp16-f16s", "w8a8-f16s"}) {
    CAPTURE(bad);
    CHECK_THROWS_AS(compress_spec_from_name(bad), Error);
  }
  CHECK_THROWS_WITH_AS(compress_spec_from_name("nf4-dq-f16s"), doctest::Contains("-f16s"), Error);
  CHECK(compress_spec_name(compress_spec_from_name("int4-gptq-g64-asym-f16s")) ==
        "int4-gptq-g64-asym-f16s");
}
