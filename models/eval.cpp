#include "models/eval.h"

#include <fmt/ranges.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/json_text.h"
#include "engine/progress.h"
#include "tokenizer/unicode.h"

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
                            PplMethod method, int32_t bos, bool progress) {
  MINFER_CHECK(m.config().causal(), "perplexity needs a causal LM, '{}' is an encoder",
               m.config().model_type);
  MINFER_CHECK(ctx >= 2, "perplexity: --ctx must be at least 2, got {}", ctx);
  const int64_t N = int64_t(ids.size());
  const int64_t V = m.config().vocab_size;
  MINFER_CHECK(N >= 2, "perplexity: the text has {} tokens, need at least 2", N);
  MINFER_CHECK(bos >= -1 && bos < V, "perplexity: BOS id {} is outside the vocabulary [0, {})", bos,
               V);
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
    if (method == PplMethod::Llama && bos >= 0) window[0] = bos;
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
    for (int64_t j = W.first_scored; j < W.end; ++j)
      MINFER_CHECK(std::isfinite(row_nll[size_t(j - W.first_scored)]),
                   "perplexity: the logits that score token {} (position {} of window {}) are not "
                   "finite (NaN or inf): the model overflowed; no perplexity is reported",
                   j, j - 1 - W.begin, w);
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

const char* pooling_name(Pooling p) {
  switch (p) {
    case Pooling::Mean:
      return "mean";
    case Pooling::Cls:
      return "cls";
    case Pooling::Max:
      return "max";
    case Pooling::MeanSqrtLen:
      return "mean_sqrt_len";
    case Pooling::WeightedMean:
      return "weightedmean";
    case Pooling::LastToken:
      return "lasttoken";
  }
  return "?";
}

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

json read_json_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  MINFER_CHECK(f.good(), "{}: cannot open", p.string());
  std::stringstream ss;
  ss << f.rdbuf();
  json j = parse_json_text(ss.str(), p.string());
  MINFER_CHECK(j.is_object() || j.is_array(), "{}: expected a JSON object or list, found {}",
               p.string(), j.type_name());
  return j;
}

const char* kTransformer = "sentence_transformers.models.Transformer";
const char* kPooling = "sentence_transformers.models.Pooling";
const char* kNormalize = "sentence_transformers.models.Normalize";

}  // namespace

SentenceEmbeddingConfig read_sentence_embedding_config(const std::string& model_path) {
  SentenceEmbeddingConfig st;
  const fs::path dir(model_path);
  if (!fs::is_directory(dir) || !fs::exists(dir / "modules.json")) return st;
  const fs::path mpath = dir / "modules.json";
  const json mods = read_json_file(mpath);
  MINFER_CHECK(mods.is_array() && !mods.empty(), "{}: expected a non-empty array of modules",
               mpath.string());
  st.normalize = false;
  bool have_transformer = false, have_pooling = false;
  std::vector<std::string> read = {"modules.json"};
  for (size_t i = 0; i < mods.size(); ++i) {
    const json& m = mods[i];
    MINFER_CHECK(m.is_object() && m.contains("type") && m["type"].is_string(),
                 "{}: module {} has no string 'type'", mpath.string(), i);
    const std::string type = m["type"].get<std::string>();
    const std::string sub = m.value("path", std::string());
    MINFER_CHECK(fs::path(sub).is_relative() && sub.find("..") == std::string::npos,
                 "{}: module path '{}' leaves the model folder", mpath.string(), sub);
    const fs::path mdir = dir / sub;
    if (type == kTransformer) {
      MINFER_CHECK(i == 0 && !have_transformer, "{}: the Transformer module must come first, once",
                   mpath.string());
      have_transformer = true;
      // Without max_seq_length sentence-transformers uses the model's position limit.
      st.max_seq_length = int64_t(1) << 40;
      const fs::path cp = mdir / "sentence_bert_config.json";
      if (!fs::exists(cp)) continue;
      const json c = read_json_file(cp);
      read.push_back((fs::path(sub) / "sentence_bert_config.json").string());
      if (c.contains("max_seq_length") && !c["max_seq_length"].is_null()) {
        MINFER_CHECK(
            c["max_seq_length"].is_number_integer() && c["max_seq_length"].get<int64_t>() >= 2,
            "{}: max_seq_length should be an integer >= 2, found {}", cp.string(),
            c["max_seq_length"].dump());
        st.max_seq_length = c["max_seq_length"].get<int64_t>();
      }
      if (c.contains("do_lower_case")) {
        MINFER_CHECK(c["do_lower_case"].is_boolean(), "{}: do_lower_case should be true or false",
                     cp.string());
        st.do_lower_case = c["do_lower_case"].get<bool>();
      }
    } else if (type == kPooling) {
      MINFER_CHECK(have_transformer && !have_pooling,
                   "{}: the Pooling module must follow the Transformer module, once",
                   mpath.string());
      have_pooling = true;
      const fs::path cp = mdir / "config.json";
      const json c = read_json_file(cp);
      read.push_back((fs::path(sub) / "config.json").string());
      static const std::pair<const char*, Pooling> kModes[] = {
          {"pooling_mode_cls_token", Pooling::Cls},
          {"pooling_mode_max_tokens", Pooling::Max},
          {"pooling_mode_mean_tokens", Pooling::Mean},
          {"pooling_mode_mean_sqrt_len_tokens", Pooling::MeanSqrtLen},
          {"pooling_mode_weightedmean_tokens", Pooling::WeightedMean},
          {"pooling_mode_lasttoken", Pooling::LastToken}};
      std::vector<std::string> on;
      for (const auto& [key, mode] : kModes) {
        if (!c.contains(key)) continue;
        MINFER_CHECK(c[key].is_boolean(), "{}: '{}' should be true or false, found {}", cp.string(),
                     key, c[key].dump());
        if (c[key].get<bool>()) {
          on.push_back(key);
          st.pooling = mode;
        }
      }
      for (const auto& item : c.items()) {
        const std::string& key = item.key();  // a named copy: clang 14 cannot capture a binding
        MINFER_CHECK(!key.starts_with("pooling_mode_") ||
                         std::any_of(std::begin(kModes), std::end(kModes),
                                     [&](const auto& e) { return key == e.first; }),
                     "{}: pooling mode '{}' is not supported (supported: cls_token, max_tokens, "
                     "mean_tokens, mean_sqrt_len_tokens, weightedmean_tokens, lasttoken)",
                     cp.string(), key);
      }
      MINFER_CHECK(
          on.size() == 1,
          "{}: exactly one pooling mode must be true, found {} ({}); sentence-transformers "
          "concatenates several modes, which is not supported",
          cp.string(), on.size(), fmt::join(on, ", "));
      if (c.contains("include_prompt"))
        MINFER_CHECK(c["include_prompt"] == true,
                     "{}: include_prompt = false (pooling without the prompt tokens) is not "
                     "supported",
                     cp.string());
    } else if (type == kNormalize) {
      MINFER_CHECK(have_pooling && i + 1 == mods.size(),
                   "{}: the Normalize module must come last, after Pooling", mpath.string());
      st.normalize = true;
    } else {
      MINFER_FAIL("{}: module {} has type '{}', which is not supported (supported: {}, {}, {})",
                  mpath.string(), i, type, kTransformer, kPooling, kNormalize);
    }
  }
  MINFER_CHECK(have_transformer && have_pooling, "{}: expected a Transformer and a Pooling module",
               mpath.string());
  st.source =
      fmt::format("{} ({} pooling{}, {} tokens{})", fmt::join(read, " + "),
                  pooling_name(st.pooling), st.normalize ? ", L2 normalisation" : "",
                  st.max_seq_length >= (int64_t(1) << 40) ? std::string("model's")
                                                          : std::to_string(st.max_seq_length),
                  st.do_lower_case ? ", lowercased" : "");
  return st;
}

void copy_sentence_embedding_files(const std::string& src, const std::string& dst) {
  const fs::path s(src), d(dst);
  if (!fs::is_directory(s) || !fs::exists(s / "modules.json")) return;
  auto copy = [&](const fs::path& rel) {
    if (!fs::exists(s / rel)) return;
    fs::create_directories((d / rel).parent_path());
    fs::copy_file(s / rel, d / rel, fs::copy_options::overwrite_existing);
  };
  copy("modules.json");
  copy("config_sentence_transformers.json");
  for (const json& m : read_json_file(s / "modules.json")) {
    const fs::path sub = m.is_object() ? fs::path(m.value("path", std::string())) : fs::path();
    MINFER_CHECK(sub.is_relative() && sub.string().find("..") == std::string::npos,
                 "{}: module path '{}' leaves the model folder", (s / "modules.json").string(),
                 sub.string());
    // The Transformer module's folder is the model itself (usually the root): only its
    // sentence_bert_config.json is ours to copy, never the model's config.json.
    if (m.value("type", std::string()) == kTransformer)
      copy(sub / "sentence_bert_config.json");
    else if (!sub.empty())
      copy(sub / "config.json");
  }
}

std::vector<std::vector<float>> pool_embeddings(const float* h, int64_t B, int64_t T, int64_t C,
                                                const int32_t* mask, Pooling pooling,
                                                bool normalize) {
  std::vector<std::vector<float>> out(size_t(B), std::vector<float>(size_t(C), 0.f));
  std::vector<double> acc(static_cast<size_t>(C));
  for (int64_t b = 0; b < B; ++b) {
    auto on = [&](int64_t t) { return !mask || mask[b * T + t] != 0; };
    auto row = [&](int64_t t) { return h + (b * T + t) * C; };
    std::fill(acc.begin(), acc.end(), pooling == Pooling::Max ? -INFINITY : 0.0);
    double cnt = 0;
    int64_t last = -1;
    for (int64_t t = 0; t < T; ++t) {
      if (!on(t)) continue;
      const double w = pooling == Pooling::WeightedMean ? double(t + 1) : 1.0;
      cnt += w;
      last = t;
      const float* x = row(t);
      if (pooling == Pooling::Max)
        for (int64_t c = 0; c < C; ++c) acc[size_t(c)] = std::max(acc[size_t(c)], double(x[c]));
      else if (pooling != Pooling::Cls && pooling != Pooling::LastToken)
        for (int64_t c = 0; c < C; ++c) acc[size_t(c)] += w * x[c];
    }
    if (pooling == Pooling::Cls || pooling == Pooling::LastToken) {
      const float* x = row(pooling == Pooling::Cls ? 0 : std::max<int64_t>(last, 0));
      for (int64_t c = 0; c < C; ++c) acc[size_t(c)] = x[c];
    } else if (pooling == Pooling::Mean || pooling == Pooling::WeightedMean) {
      for (auto& v : acc) v /= std::max(cnt, 1e-9);  // sentence-transformers clamps at 1e-9
    } else if (pooling == Pooling::MeanSqrtLen) {
      for (auto& v : acc) v /= std::sqrt(cnt);
    }
    double norm = 0;
    for (int64_t c = 0; c < C; ++c) {
      MINFER_CHECK(std::isfinite(acc[size_t(c)]),
                   "embedding of text {}: component {} is {} (the model's hidden states are not "
                   "finite)",
                   b, c, acc[size_t(c)]);
      norm += acc[size_t(c)] * acc[size_t(c)];
    }
    norm = normalize ? std::max(std::sqrt(norm), 1e-12) : 1.0;  // torch F.normalize eps
    for (int64_t c = 0; c < C; ++c) out[size_t(b)][size_t(c)] = float(acc[size_t(c)] / norm);
  }
  return out;
}

std::vector<std::vector<float>> mean_pool_normalize(const float* h, int64_t B, int64_t T, int64_t C,
                                                    const int32_t* mask) {
  return pool_embeddings(h, B, T, C, mask, Pooling::Mean, true);
}

namespace {

// One text as embed_texts encodes it (lowercase, special tokens, HF-style truncation to max_len).
std::vector<int32_t> encode_for_embedding(const Tokenizer& tok, const std::string& t,
                                          const SentenceEmbeddingConfig& st, int64_t max_len) {
  auto ids = tok.encode(st.do_lower_case ? unicode::lowercase(t) : t, true);
  if (int64_t(ids.size()) > max_len) {
    const int32_t last = ids.back();
    ids.resize(size_t(max_len));
    // HF truncation keeps the post-processor's suffix ([SEP]); with none, it just cuts.
    if (!tok.special_suffix().empty()) ids.back() = last;
  }
  return ids;
}

}  // namespace

std::vector<std::vector<int32_t>> encoder_calibration_sequences(const Tokenizer& tok,
                                                                const std::string& text,
                                                                const SentenceEmbeddingConfig& st,
                                                                int64_t max_pos, int64_t tokens) {
  MINFER_CHECK(tokens >= 1, "encoder calibration: need at least 1 token, got {}", tokens);
  const int64_t max_len = std::min(st.max_seq_length, max_pos);
  MINFER_CHECK(max_len >= 2, "encoder calibration: max_seq_length {} leaves no room for text",
               max_len);
  std::vector<std::vector<int32_t>> all;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);) {
    const auto a = l.find_first_not_of(" \t\r");
    if (a == std::string::npos) continue;
    all.push_back(
        encode_for_embedding(tok, l.substr(a, l.find_last_not_of(" \t\r") - a + 1), st, max_len));
  }
  MINFER_CHECK(!all.empty(), "encoder calibration: the calibration text has no non-blank line");
  const int64_t n = int64_t(all.size());
  int64_t total = 0;
  for (const auto& s : all) total += int64_t(s.size());
  MINFER_CHECK(total >= tokens,
               "encoder calibration: the calibration text's {} lines give {} tokens (each at most "
               "{}), fewer than the {} asked for; give a longer text or fewer samples / tokens",
               n, total, max_len, tokens);
  for (int64_t k = 1;; ++k) {  // k = n takes every line, which reaches `tokens`
    int64_t got = 0;
    for (int64_t i = 0; i < k; ++i) got += int64_t(all[size_t(i * n / k)].size());
    if (got < tokens && k < n) continue;
    std::vector<std::vector<int32_t>> out;
    for (int64_t i = 0; i < k; ++i) out.push_back(all[size_t(i * n / k)]);
    return out;
  }
}

std::vector<std::vector<float>> embed_texts(Model& m, const Tokenizer& tok,
                                            const std::vector<std::string>& texts,
                                            const SentenceEmbeddingConfig& st, int batch) {
  MINFER_CHECK(batch >= 1, "embed: batch must be >= 1, found {}", batch);
  const int64_t max_len = std::min(st.max_seq_length, m.config().max_pos);
  MINFER_CHECK(max_len >= 2, "embed: max_seq_length {} leaves no room for text", max_len);
  std::vector<std::vector<int32_t>> enc;
  int64_t longest = 1;
  for (auto& t : texts) {
    auto ids = encode_for_embedding(tok, t, st, max_len);
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
    try {
      for (auto& e : pool_embeddings(hidden.data(), int64_t(nb), T, h.dim(1), mask.data(),
                                     st.pooling, st.normalize))
        out.push_back(std::move(e));
    } catch (const Error& e) {
      MINFER_FAIL("embed: batch starting at text {}: {}", b0, e.what());
    }
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
    std::stringstream ss;
    ss << in.rdbuf();
    return parse_json_text(ss.str(), f.string());
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
