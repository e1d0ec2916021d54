#include "compress/structured.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <numeric>
#include <regex>

#include "engine/error.h"
#include "engine/model_folder.h"
#include "engine/progress.h"
#include "models/eval.h"
#include "models/model.h"

namespace minfer {

using json = nlohmann::json;

namespace {

// ---- calibration -------------------------------------------------------------------------

class NormObserver final : public LinearObserver {
 public:
  explicit NormObserver(FeatureNorms& n) : n_(n) {}
  void observe(const Linear& w, const float* x, int64_t rows, int64_t ld) override {
    std::vector<double>& s = n_.sq[w.name];
    if (s.empty()) s.assign(size_t(w.in), 0.0);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < w.in; ++c) {
        const double v = x[r * ld + c];
        s[size_t(c)] += v * v;
      }
  }

 private:
  FeatureNorms& n_;
};

// Start of window i of n spread evenly over n_windows.
int64_t window_start(int i, int n, int64_t n_windows, int64_t len) {
  return (n_windows == n ? i : int64_t(i) * n_windows / n) * len;
}

int64_t clamp_len(const Model& m, int64_t seq_len) {
  return std::min(seq_len, m.config().max_pos);
}

// ---- what each Linear of a block is --------------------------------------------------------

enum class Role { Q, K, V, Qkv, O, Up, Down };

Role role_of(Arch arch, const std::string& name) {
  auto has = [&](const char* s) { return name.find(s) != std::string::npos; };
  switch (arch) {
    case Arch::Llama:
      if (has("self_attn.q_proj")) return Role::Q;
      if (has("self_attn.k_proj")) return Role::K;
      if (has("self_attn.v_proj")) return Role::V;
      if (has("self_attn.o_proj")) return Role::O;
      if (has("mlp.gate_proj") || has("mlp.up_proj")) return Role::Up;
      if (has("mlp.down_proj")) return Role::Down;
      break;
    case Arch::GPT2:
      if (has("attn.c_attn")) return Role::Qkv;
      if (has("attn.c_proj")) return Role::O;
      if (has("mlp.c_fc")) return Role::Up;
      if (has("mlp.c_proj")) return Role::Down;
      break;
    case Arch::Bert:
      if (has("attention.self.query")) return Role::Q;
      if (has("attention.self.key")) return Role::K;
      if (has("attention.self.value")) return Role::V;
      if (has("attention.output.dense")) return Role::O;
      if (has("intermediate.dense")) return Role::Up;
      if (has("output.dense")) return Role::Down;
      break;
  }
  MINFER_FAIL("structured pruning: cannot place linear '{}' in a {} block", name, arch_name(arch));
}

// "<prefix>layers.<l>.<rest>" (llama), "<prefix>h.<l>." (gpt2), "<prefix>encoder.layer.<l>."
// (bert) -> l and the name with another index; -1 for names outside the blocks.
const std::regex& block_re() {
  static const std::regex re(R"(^((?:.*\.)?(?:layers|h|layer)\.)(\d+)(\..*)$)");
  return re;
}

int64_t block_of(const std::string& name) {
  std::smatch mt;
  if (!std::regex_match(name, mt, block_re())) return -1;
  return std::stoll(mt[2].str());
}

std::string renumber(const std::string& name, int64_t l) {
  std::smatch mt;
  MINFER_CHECK(std::regex_match(name, mt, block_re()), "renumber: '{}' is not a block tensor",
               name);
  return mt[1].str() + std::to_string(l) + mt[3].str();
}

// The input of the Linear of block l with role r (its name in `m`).
const Linear& linear_of(Model& m, int64_t l, Role r) {
  for (const Linear* w : m.linears())
    if (block_of(w->name) == l && role_of(m.config().arch, w->name) == r) return *w;
  MINFER_FAIL("structured pruning: block {} has no {} projection", l,
              r == Role::O ? "attention output" : "FFN down");
}

// ||X_j||_2 * sum_i |W[i, j]| for every input feature j of `w` (Wanda's score summed over the
// output rows: Wanda-sp, FLAP Sec. 4).
std::vector<double> column_scores(const Linear& w, const FeatureNorms& norms) {
  auto it = norms.sq.find(w.name);
  MINFER_CHECK(it != norms.sq.end() && int64_t(it->second.size()) == w.in,
               "structured pruning: no calibration norms for '{}' (run calibrate_feature_norms "
               "on this model first)",
               w.name);
  const Tensor W = dequantize_weight(w);  // [out, in]
  const float* p = W.data<float>();
  std::vector<double> s(size_t(w.in), 0.0);
  for (int64_t i = 0; i < w.out; ++i)
    for (int64_t j = 0; j < w.in; ++j) s[size_t(j)] += std::fabs(p[i * w.in + j]);
  for (int64_t j = 0; j < w.in; ++j) s[size_t(j)] *= std::sqrt(it->second[size_t(j)]);
  return s;
}

// Indices of the k largest scores, ascending by index (stable for equal scores: lower index
// wins).
std::vector<int64_t> top_k(const std::vector<double>& s, int64_t k) {
  std::vector<int64_t> idx(s.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return s[a] > s[b]; });
  idx.resize(size_t(k));
  std::sort(idx.begin(), idx.end());
  return idx;
}

int64_t removed_count(int64_t n, double pct) {
  return int64_t(std::llround(double(n) * pct / 100.0));
}

// Kept query heads of one layer: H heads in Hkv groups of g = H / Hkv, head scores s. Keeps G'
// whole groups of g' heads each (see structured.h).
std::vector<int64_t> choose_heads(const std::vector<double>& s, int64_t Hkv, int64_t remove,
                                  int64_t layer, const std::string& step) {
  const int64_t H = int64_t(s.size()), g = H / Hkv;
  MINFER_CHECK(remove < H,
               "{}: removes {} of the {} heads of layer {} (a layer needs at least one head)", step,
               remove, H, layer);
  if (remove == 0) {
    std::vector<int64_t> all(static_cast<size_t>(H));
    std::iota(all.begin(), all.end(), 0);
    return all;
  }
  std::vector<int64_t> best;
  int64_t best_dist = -1, best_removed = 0;
  double best_score = 0;
  for (int64_t gk = 1; gk <= g; ++gk) {  // g' heads kept per group
    // Each group's top g' heads and their summed score.
    std::vector<std::vector<int64_t>> kept(static_cast<size_t>(Hkv));
    std::vector<double> gscore(size_t(Hkv), 0.0);
    for (int64_t G = 0; G < Hkv; ++G) {
      std::vector<double> sub(s.begin() + G * g, s.begin() + (G + 1) * g);
      for (int64_t h : top_k(sub, gk)) {
        kept[size_t(G)].push_back(G * g + h);
        gscore[size_t(G)] += sub[size_t(h)];
      }
    }
    for (int64_t Gk = 1; Gk <= Hkv; ++Gk) {  // G' groups kept
      const int64_t removed = H - Gk * gk;
      const int64_t dist = std::abs(removed - remove);
      std::vector<int64_t> groups = top_k(gscore, Gk);
      double score = 0;
      std::vector<int64_t> heads;
      for (int64_t G : groups) {
        score += gscore[size_t(G)];
        heads.insert(heads.end(), kept[size_t(G)].begin(), kept[size_t(G)].end());
      }
      const bool better = best_dist < 0 || dist < best_dist ||
                          (dist == best_dist && removed < best_removed) ||
                          (dist == best_dist && removed == best_removed && score > best_score);
      if (better) {
        best_dist = dist;
        best_removed = removed;
        best_score = score;
        best = heads;
      }
    }
  }
  std::sort(best.begin(), best.end());
  return best;
}

// Loss of `m` on the calibration windows: causal LMs: mean NLL; encoders: 1 - mean cosine of
// the mean-pooled last hidden states against `ref` (filled on the first call when empty).
double calib_loss(Model& m, const std::vector<int32_t>& ids, int samples, int64_t seq_len,
                  std::vector<std::vector<float>>& ref) {
  const int64_t len = clamp_len(m, seq_len);
  const int64_t n_windows = int64_t(ids.size()) / len;
  MINFER_CHECK(n_windows >= 1, "calibration text has {} tokens, fewer than one window of {}",
               ids.size(), len);
  const int n = int(std::min<int64_t>(samples, n_windows));
  if (m.config().causal()) {
    std::vector<int32_t> win;
    for (int i = 0; i < n; ++i) {
      const int64_t w = window_start(i, n, n_windows, len);
      win.insert(win.end(), ids.begin() + w, ids.begin() + w + len);
    }
    return perplexity(m, win, len, len, PplMethod::HfSlidingWindow, false).mean_nll;
  }
  RunState s = m.new_state(0, len);
  const int64_t C = m.config().hidden;
  std::vector<float> hidden(size_t(len * C));
  double cos_sum = 0;
  const bool fill = ref.empty();
  for (int i = 0; i < n; ++i) {
    const int64_t w = window_start(i, n, n_windows, len);
    m.backend().to_host(m.encode(s, ids.data() + w, 1, len), hidden.data());
    std::vector<float> e = mean_pool_normalize(hidden.data(), 1, len, C, nullptr)[0];
    if (fill)
      ref.push_back(e);
    else
      cos_sum += cosine(e, ref[size_t(i)]);
  }
  return fill ? 0.0 : 1.0 - cos_sum / n;
}

// ---- applying a plan -------------------------------------------------------------------------

// Weights by HF name, as a WeightSource (shapes checked on the way out).
class MapSource final : public WeightSource {
 public:
  std::map<std::string, Tensor> t;
  bool has(const std::string& name) const override { return t.count(name) != 0; }
  Tensor tensor(const std::string& name, std::initializer_list<int64_t> shape) const override {
    auto it = t.find(name);
    MINFER_CHECK(it != t.end(), "structured pruning: no tensor '{}'", name);
    const Tensor& x = it->second;
    bool ok = x.ndim() == int(shape.size());
    int d = 0;
    for (int64_t s : shape) ok = ok && x.dim(d++) == s;
    MINFER_CHECK(ok, "structured pruning: tensor '{}' is {}, the pruned config expects {}", name,
                 x.shape_str(), fmt::format("[{}]", fmt::join(shape, ", ")));
    return x;
  }
  std::string describe() const override { return "structurally pruned weights"; }
};

// Rows `rows` and columns `cols` (all when empty) of W [out, in] f32, stored [out', in'] or
// transposed [in', out'] (GPT-2 Conv1D).
Tensor gather(const Tensor& W, const std::vector<int64_t>& rows, const std::vector<int64_t>& cols,
              bool transposed) {
  const int64_t out = W.dim(0), in = W.dim(1);
  std::vector<int64_t> r = rows, c = cols;
  if (r.empty()) {
    r.resize(size_t(out));
    std::iota(r.begin(), r.end(), 0);
  }
  if (c.empty()) {
    c.resize(size_t(in));
    std::iota(c.begin(), c.end(), 0);
  }
  const int64_t R = int64_t(r.size()), Cn = int64_t(c.size());
  Tensor o = transposed ? Tensor::empty(DType::F32, {Cn, R}) : Tensor::empty(DType::F32, {R, Cn});
  const float* src = W.data<float>();
  float* dst = o.data<float>();
  for (int64_t i = 0; i < R; ++i)
    for (int64_t j = 0; j < Cn; ++j) {
      const float v = src[r[size_t(i)] * in + c[size_t(j)]];
      if (transposed)
        dst[j * R + i] = v;
      else
        dst[i * Cn + j] = v;
    }
  return o;
}

Tensor gather_vec(const Tensor& b, const std::vector<int64_t>& idx) {
  const Tensor f = b.dtype() == DType::F32 ? b : b.to_f32();
  Tensor o = Tensor::empty(DType::F32, {int64_t(idx.size())});
  for (size_t i = 0; i < idx.size(); ++i) o.data<float>()[i] = f.data<float>()[idx[i]];
  return o;
}

// Rows of the heads `heads` (each D wide), starting at row `base`.
std::vector<int64_t> head_rows(const std::vector<int64_t>& heads, int64_t D, int64_t base = 0) {
  std::vector<int64_t> r;
  for (int64_t h : heads)
    for (int64_t d = 0; d < D; ++d) r.push_back(base + h * D + d);
  return r;
}

void check_sorted_subset(const std::vector<int64_t>& v, int64_t n, const char* what, int64_t l) {
  MINFER_CHECK(!v.empty(), "structured plan: layer {} keeps no {} (at least one must stay)", l,
               what);
  for (size_t i = 0; i < v.size(); ++i)
    MINFER_CHECK(v[i] >= 0 && v[i] < n && (i == 0 || v[i] > v[i - 1]),
                 "structured plan: layer {}: {} indices must be ascending in [0, {}), found {}", l,
                 what, n, v[i]);
}

json int_list(const std::vector<int64_t>& v) {
  json a = json::array();
  for (int64_t x : v) a.push_back(x);
  return a;
}

}  // namespace

// ---- public ------------------------------------------------------------------------------

FeatureNorms calibrate_feature_norms(Model& m, const std::vector<int32_t>& ids, int samples,
                                     int64_t seq_len, bool progress) {
  MINFER_CHECK(samples > 0 && seq_len > 1,
               "calibration: need samples > 0 and seq_len > 1 (got {}, {})", samples, seq_len);
  const int64_t len = clamp_len(m, seq_len);
  MINFER_CHECK(int64_t(ids.size()) >= len,
               "calibration: the text has {} tokens, fewer than one window of {}", ids.size(), len);
  const int64_t n_windows = int64_t(ids.size()) / len;
  const int n = int(std::min<int64_t>(samples, n_windows));
  FeatureNorms norms;
  NormObserver obs(norms);
  const ScopedObserver observing(m.backend(), &obs);
  const bool causal = m.config().causal();
  RunState s = m.new_state(causal ? len : 0, len, 1);
  Progress bar("calibrate", n, progress);
  for (int i = 0; i < n; ++i) {
    const int32_t* w = ids.data() + window_start(i, n, n_windows, len);
    s.reset();
    if (causal)
      m.forward(s, w, len, false);
    else
      m.encode(s, w, 1, len);
    norms.tokens += len;
    bar.update(i + 1);
  }
  bar.finish();
  return norms;
}

StructuredPlan full_plan(const ModelConfig& c) {
  StructuredPlan p;
  for (int64_t l = 0; l < c.n_layers; ++l) {
    p.layers.push_back(l);
    std::vector<int64_t> h(size_t(c.heads_at(l))), f(size_t(c.ffn_at(l)));
    std::iota(h.begin(), h.end(), 0);
    std::iota(f.begin(), f.end(), 0);
    p.heads.push_back(std::move(h));
    p.ffn.push_back(std::move(f));
  }
  return p;
}

StructuredPlan plan_structured_step(Model& m, const MethodSpec& step, const FeatureNorms& norms,
                                    const std::vector<int32_t>& calib_ids, int samples,
                                    int64_t seq_len, bool progress) {
  MINFER_CHECK(step.info().kind == MethodKind::Structured,
               "plan_structured_step: '{}' is not a structured pruning step",
               method_spec_name(step));
  validate_method_spec(step);
  const ModelConfig& c = m.config();
  const std::string name = method_spec_name(step);
  StructuredPlan p = full_plan(c);
  if (step.method == "heads") {
    for (int64_t l = 0; l < c.n_layers; ++l) {
      const int64_t H = c.heads_at(l), Hkv = c.kv_heads_at(l), D = c.head_dim;
      const std::vector<double> col = column_scores(linear_of(m, l, Role::O), norms);
      std::vector<double> s(size_t(H), 0.0);
      for (int64_t h = 0; h < H; ++h)
        for (int64_t d = 0; d < D; ++d) s[size_t(h)] += col[size_t(h * D + d)];
      p.heads[size_t(l)] = choose_heads(s, Hkv, removed_count(H, step.amount), l, name);
    }
  } else if (step.method == "ffn") {
    for (int64_t l = 0; l < c.n_layers; ++l) {
      const int64_t F = c.ffn_at(l), k = removed_count(F, step.amount);
      MINFER_CHECK(k < F, "{}: removes {} of the {} FFN neurons of layer {} (one must stay)", name,
                   k, F, l);
      p.ffn[size_t(l)] = top_k(column_scores(linear_of(m, l, Role::Down), norms), F - k);
    }
  } else if (step.method == "layers") {
    const int64_t n = int64_t(std::llround(step.amount));
    MINFER_CHECK(n < c.n_layers, "{}: the model has {} blocks, at least one must stay", name,
                 c.n_layers);
    if (n == 0) return p;
    std::vector<std::vector<float>> ref;
    if (!c.causal()) calib_loss(m, calib_ids, samples, seq_len, ref);  // reference embeddings
    std::vector<double> loss(static_cast<size_t>(c.n_layers));
    Progress bar("rank blocks", c.n_layers, progress);
    for (int64_t l = 0; l < c.n_layers; ++l) {
      StructuredPlan q = full_plan(c);
      q.layers.erase(q.layers.begin() + l);
      std::unique_ptr<Model> without = apply_structured_plan(m, q);
      loss[size_t(l)] = calib_loss(*without, calib_ids, samples, seq_len, ref);
      bar.update(l + 1);
    }
    bar.finish();
    // Keep the blocks whose removal hurts most: drop the n with the lowest loss without them.
    p.layers = top_k(loss, c.n_layers - n);
  } else {
    throw NotImplemented(fmt::format("structured step '{}'", name));
  }
  return p;
}

std::unique_ptr<Model> apply_structured_plan(Model& m, const StructuredPlan& plan) {
  const ModelConfig& c = m.config();
  const int64_t L = c.n_layers, D = c.head_dim;
  MINFER_CHECK(int64_t(plan.heads.size()) == L && int64_t(plan.ffn.size()) == L,
               "structured plan: {} head lists and {} FFN lists for a model of {} blocks",
               plan.heads.size(), plan.ffn.size(), L);
  MINFER_CHECK(!plan.layers.empty(), "structured plan: no block left (at least one must stay)");
  for (size_t i = 0; i < plan.layers.size(); ++i)
    MINFER_CHECK(plan.layers[i] >= 0 && plan.layers[i] < L &&
                     (i == 0 || plan.layers[i] > plan.layers[i - 1]),
                 "structured plan: kept blocks must be ascending in [0, {}), found {}", L,
                 plan.layers[i]);
  // Per kept block: kept kv heads (GQA groups with a kept query head, all the same size).
  std::vector<std::vector<int64_t>> kv(static_cast<size_t>(L));
  for (int64_t l = 0; l < L; ++l) {
    const auto& hs = plan.heads[size_t(l)];
    check_sorted_subset(hs, c.heads_at(l), "attention heads", l);
    check_sorted_subset(plan.ffn[size_t(l)], c.ffn_at(l), "FFN neurons", l);
    const int64_t g = c.heads_at(l) / c.kv_heads_at(l);
    std::map<int64_t, int64_t> per_group;
    for (int64_t h : hs) per_group[h / g] += 1;
    for (const auto& [G, cnt] : per_group) {
      kv[size_t(l)].push_back(G);
      MINFER_CHECK(cnt == per_group.begin()->second,
                   "structured plan: layer {} keeps {} query heads of KV group {} and {} of "
                   "group {}: every kept group must keep as many (one group size per layer)",
                   l, cnt, G, per_group.begin()->second, per_group.begin()->first);
    }
  }
  std::vector<int64_t> new_index(static_cast<size_t>(L), -1);
  for (size_t i = 0; i < plan.layers.size(); ++i) new_index[size_t(plan.layers[i])] = int64_t(i);

  MapSource src;
  std::vector<const void*> tables;
  for (const Model::NamedTensor& t : m.tensors()) {
    if (t.embedding) tables.push_back(t.t->raw());
    const int64_t l = block_of(t.name);
    if (l < 0)
      src.t[t.name] = *t.t;
    else if (new_index[size_t(l)] >= 0)
      src.t[renumber(t.name, new_index[size_t(l)])] = *t.t;
  }
  for (const Linear* w : m.linears()) {
    const int64_t l = block_of(w->name);
    if (l < 0) {
      const Dense* d = std::get_if<Dense>(&w->repr);
      if (d && std::find(tables.begin(), tables.end(), d->w.raw()) != tables.end())
        continue;  // a head tied to its embedding table: the model ties it again
      src.t[w->name] = gather(dequantize_weight(*w), {}, {}, false);
      MINFER_CHECK(!w->bias.defined(), "structured pruning: '{}' has a bias (not supported)",
                   w->name);
      continue;
    }
    if (new_index[size_t(l)] < 0) continue;  // a dropped block
    const Role r = role_of(c.arch, w->name);
    const auto& hs = plan.heads[size_t(l)];
    const auto& fs = plan.ffn[size_t(l)];
    std::vector<int64_t> rows, cols;
    switch (r) {
      case Role::Q:
        rows = head_rows(hs, D);
        break;
      case Role::K:
      case Role::V:
        rows = head_rows(kv[size_t(l)], D);
        break;
      case Role::Qkv: {  // GPT-2 fused q | k | v, each H_l * D wide
        const int64_t A = c.heads_at(l) * D;
        for (int64_t part = 0; part < 3; ++part) {
          std::vector<int64_t> pr = head_rows(hs, D, part * A);
          rows.insert(rows.end(), pr.begin(), pr.end());
        }
        break;
      }
      case Role::O:
        cols = head_rows(hs, D);
        break;
      case Role::Up:
        rows = fs;
        break;
      case Role::Down:
        cols = fs;
        break;
    }
    // GPT-2 reads its projections as Conv1D [in, out] whatever format they were stored in.
    const bool transposed = c.arch == Arch::GPT2;
    const std::string wn = renumber(w->name, new_index[size_t(l)]);
    src.t[wn] = gather(dequantize_weight(*w), rows, cols, transposed);
    if (w->bias.defined()) {
      std::vector<int64_t> all(static_cast<size_t>(w->out));
      std::iota(all.begin(), all.end(), 0);
      src.t[wn.substr(0, wn.size() - 7) + ".bias"] = gather_vec(w->bias, rows.empty() ? all : rows);
    }
  }

  // The new config: per-layer counts, and the config.json text that records them.
  ModelConfig n = c;
  n.n_layers = int64_t(plan.layers.size());
  n.layer_heads.clear();
  n.layer_kv_heads.clear();
  n.layer_ffn.clear();
  std::vector<std::vector<int64_t>> pruned;  // gpt2 / bert: original indices removed
  for (int64_t l : plan.layers) {
    n.layer_heads.push_back(int64_t(plan.heads[size_t(l)].size()));
    n.layer_kv_heads.push_back(c.arch == Arch::Llama ? int64_t(kv[size_t(l)].size())
                                                     : n.layer_heads.back());
    n.layer_ffn.push_back(int64_t(plan.ffn[size_t(l)].size()));
    if (c.arch != Arch::Llama) {
      // Current head index -> original index (heads removed earlier are not in this model).
      std::vector<int64_t> orig;
      const std::vector<int64_t> before =
          c.pruned_heads.empty() ? std::vector<int64_t>{} : c.pruned_heads[size_t(l)];
      for (int64_t h = 0; h < c.n_heads; ++h)
        if (!std::binary_search(before.begin(), before.end(), h)) orig.push_back(h);
      std::vector<int64_t> removed = before;
      for (int64_t i = 0; i < int64_t(orig.size()); ++i)
        if (!std::binary_search(plan.heads[size_t(l)].begin(), plan.heads[size_t(l)].end(), i))
          removed.push_back(orig[size_t(i)]);
      std::sort(removed.begin(), removed.end());
      pruned.push_back(removed);
    }
  }
  auto uniform = [](const std::vector<int64_t>& v) {
    return std::all_of(v.begin(), v.end(), [&](int64_t x) { return x == v[0]; });
  };
  auto max_of = [](const std::vector<int64_t>& v) { return *std::max_element(v.begin(), v.end()); };
  n.ffn = max_of(n.layer_ffn);
  if (c.arch == Arch::Llama) {
    n.n_heads = max_of(n.layer_heads);
    n.n_kv_heads = max_of(n.layer_kv_heads);
  } else {
    n.pruned_heads = pruned;
    const bool any = std::any_of(pruned.begin(), pruned.end(), [](auto& v) { return !v.empty(); });
    if (!any) n.pruned_heads.clear();
  }
  json j = c.source_json.empty() ? llama_config_json(c, "float32")
                                 : json::parse(c.source_json, nullptr, false);
  MINFER_CHECK(j.is_object(), "structured pruning: the model's config.json is not an object");
  j["num_attention_heads_per_layer"] = int_list(n.layer_heads);
  j["intermediate_size_per_layer"] = int_list(n.layer_ffn);
  switch (c.arch) {
    case Arch::Llama:
      j["num_hidden_layers"] = n.n_layers;
      j["num_attention_heads"] = n.n_heads;
      j["num_key_value_heads"] = n.n_kv_heads;
      j["head_dim"] = D;  // no longer hidden_size / num_attention_heads
      j["intermediate_size"] = n.ffn;
      j["num_key_value_heads_per_layer"] = int_list(n.layer_kv_heads);
      break;
    case Arch::GPT2:
      j["n_layer"] = n.n_layers;
      j["n_inner"] = n.ffn;
      break;
    case Arch::Bert:
      j["num_hidden_layers"] = n.n_layers;
      j["intermediate_size"] = n.ffn;
      break;
  }
  if (c.arch != Arch::Llama) {
    json ph = json::object();  // HF PreTrainedModel.prune_heads: {"layer": [original heads]}
    for (size_t l = 0; l < n.pruned_heads.size(); ++l)
      if (!n.pruned_heads[l].empty()) ph[std::to_string(l)] = int_list(n.pruned_heads[l]);
    j["pruned_heads"] = ph;
  }
  // Uniform layers: the standard fields say it all (a plain Hugging Face config).
  if (uniform(n.layer_ffn)) n.layer_ffn.clear();
  if (c.arch == Arch::Llama && uniform(n.layer_heads) && uniform(n.layer_kv_heads)) {
    n.layer_heads.clear();
    n.layer_kv_heads.clear();
  }
  n.source_json = j.dump(2);
  return build_model(n, src, m.backend());
}

bool has_structured_steps(const CompressSpec& spec) {
  return std::any_of(spec.steps.begin(), spec.steps.end(),
                     [](const MethodSpec& s) { return s.info().kind == MethodKind::Structured; });
}

std::unique_ptr<Model> prune_structured(Model& m, const CompressSpec& spec,
                                        const std::vector<int32_t>& calib_ids, int samples,
                                        int64_t seq_len, bool progress) {
  std::unique_ptr<Model> cur;
  for (const MethodSpec& step : spec.steps) {
    if (step.info().kind != MethodKind::Structured) continue;
    Model& in = cur ? *cur : m;
    FeatureNorms norms;
    if (step.method != "layers")
      norms = calibrate_feature_norms(in, calib_ids, samples, seq_len, progress);
    const StructuredPlan plan =
        plan_structured_step(in, step, norms, calib_ids, samples, seq_len, progress);
    cur = apply_structured_plan(in, plan);
  }
  return cur;
}

}  // namespace minfer
