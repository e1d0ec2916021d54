#include "models/eval.h"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/progress.h"

namespace minfer {

namespace {

// -log softmax(row)[target], in double.
double nll(const float* row, int64_t V, int32_t target) {
  float mx = row[0];
  for (int64_t i = 1; i < V; ++i) mx = std::max(mx, row[i]);
  double z = 0;
  for (int64_t i = 0; i < V; ++i) z += std::exp(double(row[i]) - mx);
  return std::log(z) + mx - double(row[target]);
}

}  // namespace

PerplexityResult perplexity(Model& m, const std::vector<int32_t>& ids, int64_t ctx, int64_t stride,
                            PplMethod method, bool progress) {
  MINFER_CHECK(m.config().causal(), "perplexity needs a causal LM, '{}' is an encoder",
               m.config().model_type);
  MINFER_CHECK(ctx >= 2, "perplexity: --ctx must be at least 2, got {}", ctx);
  const int64_t N = int64_t(ids.size());
  const int64_t V = m.config().vocab_size;
  MINFER_CHECK(N >= 2, "perplexity: the text has {} tokens, need at least 2", N);
  Backend& be = m.backend();
  RunState s = m.new_state(ctx, ctx);
  std::vector<float> logits;
  std::vector<double> row_nll;
  std::vector<int32_t> window;
  PerplexityResult r;
  double nll_sum = 0;
  int64_t forwarded = 0;
  auto t0 = std::chrono::steady_clock::now();

  // Each entry: [begin, end) of the window and the first target index scored in it.
  struct Win {
    int64_t begin, end, first_scored;
  };
  std::vector<Win> wins;
  if (method == PplMethod::HfSlidingWindow) {
    MINFER_CHECK(stride >= 1 && stride <= ctx,
                 "perplexity: --stride must be in [1, ctx={}], "
                 "got {}",
                 ctx, stride);
    int64_t prev_end = 0;
    for (int64_t begin = 0; begin < N; begin += stride) {
      const int64_t end = std::min(begin + ctx, N);
      const int64_t trg = end - prev_end;  // new tokens this window scores
      wins.push_back({begin, end, std::max<int64_t>(begin + 1, end - trg)});
      prev_end = end;
      if (end == N) break;
    }
  } else {
    MINFER_CHECK(N >= ctx, "perplexity --method llama: need at least ctx={} tokens, have {}", ctx,
                 N);
    for (int64_t c = 0; c + ctx <= N; c += ctx) wins.push_back({c, c + ctx, c + ctx / 2 + 1});
  }

  Progress bar("perplexity", int64_t(wins.size()), progress);
  for (size_t w = 0; w < wins.size(); ++w) {
    const Win& W = wins[w];
    const int64_t T = W.end - W.begin;
    window.assign(ids.begin() + W.begin, ids.begin() + W.end);
    if (method == PplMethod::Llama && m.config().bos_id >= 0)
      window[0] = int32_t(m.config().bos_id);
    s.reset();
    Tensor lg = m.forward(s, window.data(), T, true);
    logits.resize(size_t(T * V));
    be.to_host(lg, logits.data());
    // Rows in parallel (a 512 x 49152 softmax is ~25M exp), summed in order: deterministic.
    const int64_t n_scored = W.end - W.first_scored;
    row_nll.resize(size_t(n_scored));
#pragma omp parallel for schedule(static) num_threads(be.threads())
    for (int64_t j = W.first_scored; j < W.end; ++j) {
      const int64_t row = j - 1 - W.begin;  // logits at j-1 predict token j
      row_nll[size_t(j - W.first_scored)] = nll(logits.data() + row * V, V, ids[size_t(j)]);
    }
    for (double v : row_nll) nll_sum += v;
    r.tokens_scored += n_scored;
    forwarded += T;
    char note[64];
    std::snprintf(note, sizeof note, "ppl %.4f", std::exp(nll_sum / double(r.tokens_scored)));
    bar.update(int64_t(w + 1), note);
  }
  bar.finish();
  r.windows = int64_t(wins.size());
  r.mean_nll = nll_sum / double(r.tokens_scored);
  r.ppl = std::exp(r.mean_nll);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.tokens_per_s = double(forwarded) / r.seconds;
  return r;
}

std::vector<std::vector<float>> mean_pool_normalize(const float* h, int64_t B, int64_t T, int64_t C,
                                                    const int32_t* mask) {
  std::vector<std::vector<float>> out(size_t(B), std::vector<float>(size_t(C), 0.f));
  for (int64_t b = 0; b < B; ++b) {
    double cnt = 0;
    std::vector<double> acc(size_t(C), 0.0);
    for (int64_t t = 0; t < T; ++t) {
      if (mask && !mask[b * T + t]) continue;
      cnt += 1;
      for (int64_t c = 0; c < C; ++c) acc[size_t(c)] += h[(b * T + t) * C + c];
    }
    // sentence-transformers: sum / clamp(count, 1e-9), then normalize with eps 1e-12.
    double norm = 0;
    for (auto& v : acc) {
      v /= std::max(cnt, 1e-9);  // separate statement: `(v /= n) * v` reads v unsequenced
      norm += v * v;
    }
    norm = std::max(std::sqrt(norm), 1e-12);
    for (int64_t c = 0; c < C; ++c) out[size_t(b)][size_t(c)] = float(acc[size_t(c)] / norm);
  }
  return out;
}

std::vector<std::vector<float>> embed_texts(Model& m, const Tokenizer& tok,
                                            const std::vector<std::string>& texts, int batch,
                                            int64_t max_len) {
  max_len = std::min(max_len, m.config().max_pos);
  std::vector<std::vector<int32_t>> enc;
  int64_t longest = 1;
  for (auto& t : texts) {
    auto ids = tok.encode(t, true);
    if (int64_t(ids.size()) > max_len) {
      const int32_t last = ids.back();
      ids.resize(size_t(max_len));
      ids.back() = last;
    }
    longest = std::max<int64_t>(longest, int64_t(ids.size()));
    enc.push_back(std::move(ids));
  }
  RunState s = m.new_state(0, int64_t(batch) * longest);
  std::vector<std::vector<float>> out;
  std::vector<int32_t> ids, mask;
  std::vector<float> hidden;
  const int32_t pad = m.config().pad_id >= 0 ? int32_t(m.config().pad_id) : 0;
  for (size_t b0 = 0; b0 < enc.size(); b0 += size_t(batch)) {
    const size_t nb = std::min(enc.size() - b0, size_t(batch));
    int64_t T = 1;
    for (size_t i = 0; i < nb; ++i) T = std::max<int64_t>(T, int64_t(enc[b0 + i].size()));
    ids.assign(nb * size_t(T), pad);
    mask.assign(nb * size_t(T), 0);
    for (size_t i = 0; i < nb; ++i)
      for (size_t t = 0; t < enc[b0 + i].size(); ++t) {
        ids[i * size_t(T) + t] = enc[b0 + i][t];
        mask[i * size_t(T) + t] = 1;
      }
    Tensor h = m.encode(s, ids.data(), int64_t(nb), T, mask.data());
    hidden.resize(size_t(h.numel()));
    m.backend().to_host(h, hidden.data());
    for (auto& e : mean_pool_normalize(hidden.data(), int64_t(nb), T, h.dim(1), mask.data()))
      out.push_back(std::move(e));
  }
  return out;
}

double cosine(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0, na = 0, nb = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    d += double(a[i]) * b[i];
    na += double(a[i]) * a[i];
    nb += double(b[i]) * b[i];
  }
  return d / std::max(std::sqrt(na * nb), 1e-30);
}

SentencePooling load_sentence_pooling(const std::string& model_path) {
  namespace fs = std::filesystem;
  SentencePooling p;
  const fs::path dir(model_path);
  std::error_code ec;
  if (!fs::is_directory(dir, ec) || !fs::exists(dir / "modules.json", ec)) return p;
  auto read = [](const fs::path& f) {
    std::ifstream in(f);
    MINFER_CHECK(in.good(), "{}: cannot open", f.string());
    nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
    MINFER_CHECK(!j.is_discarded(), "{}: not valid JSON", f.string());
    return j;
  };
  const nlohmann::json mods = read(dir / "modules.json");
  MINFER_CHECK(mods.is_array(), "{}: expected a JSON array of modules",
               (dir / "modules.json").string());
  for (const auto& m : mods) {
    const std::string type = m.value("type", "");
    if (type == "sentence_transformers.models.Normalize") p.normalize = true;
    if (type != "sentence_transformers.models.Pooling") continue;
    const fs::path cfg = dir / m.value("path", "") / "config.json";
    const nlohmann::json c = read(cfg);
    std::vector<std::string> on;
    for (auto& [k, v] : c.items())
      if (k.rfind("pooling_mode_", 0) == 0 && v.is_boolean() && v.get<bool>()) on.push_back(k);
    MINFER_CHECK(on.size() == 1, "{}: expected exactly one pooling mode set, found {}",
                 cfg.string(), on.size());
    if (on[0] == "pooling_mode_mean_tokens")
      p.mode = SentencePooling::Mode::Mean;
    else if (on[0] == "pooling_mode_cls_token")
      p.mode = SentencePooling::Mode::Cls;
    else if (on[0] == "pooling_mode_max_tokens")
      p.mode = SentencePooling::Mode::Max;
    else if (on[0] == "pooling_mode_lasttoken")
      p.mode = SentencePooling::Mode::LastToken;
    else
      throw NotImplemented(cfg.string() + ": sentence pooling " + on[0]);
  }
  return p;
}

std::vector<float> pool_sentence(const float* h, int64_t T, int64_t C, const SentencePooling& p) {
  MINFER_CHECK(T > 0 && C > 0, "pool_sentence: {} tokens of width {}", T, C);
  std::vector<double> acc(size_t(C), 0.0);
  switch (p.mode) {
    case SentencePooling::Mode::Mean:  // sentence-transformers: sum / clamp(count, 1e-9)
      for (int64_t t = 0; t < T; ++t)
        for (int64_t c = 0; c < C; ++c) acc[size_t(c)] += h[t * C + c];
      for (auto& v : acc) v /= double(T);
      break;
    case SentencePooling::Mode::Cls:
      for (int64_t c = 0; c < C; ++c) acc[size_t(c)] = h[c];
      break;
    case SentencePooling::Mode::LastToken:
      for (int64_t c = 0; c < C; ++c) acc[size_t(c)] = h[(T - 1) * C + c];
      break;
    case SentencePooling::Mode::Max:
      for (int64_t c = 0; c < C; ++c) {
        double m = h[c];
        for (int64_t t = 1; t < T; ++t) m = std::max(m, double(h[t * C + c]));
        acc[size_t(c)] = m;
      }
      break;
  }
  double norm = 1.0;
  if (p.normalize) {
    norm = 0;
    for (double v : acc) norm += v * v;
    norm = std::max(std::sqrt(norm), 1e-12);
  }
  std::vector<float> out(static_cast<size_t>(C));
  for (int64_t c = 0; c < C; ++c) out[size_t(c)] = float(acc[size_t(c)] / norm);
  return out;
}

}  // namespace minfer
