#include "engine/config.h"

#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/error.h"
#include "engine/json_text.h"
#include "engine/rope.h"

namespace minfer {

std::string_view arch_name(Arch a) {
  switch (a) {
    case Arch::GPT2:
      return "gpt2";
    case Arch::Llama:
      return "llama";
    case Arch::Bert:
      return "bert";
  }
  return "?";
}

namespace {

using json = nlohmann::json;

struct Reader {
  const std::string& path;
  const json& j;

  template <typename T>
  T req(const char* key) const {
    auto it = j.find(key);
    MINFER_CHECK(it != j.end() && !it->is_null(), "{}: missing field '{}'", path, key);
    return get<T>(key, *it);
  }
  template <typename T>
  T opt(const char* key, T def) const {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return def;
    return get<T>(key, *it);
  }
  template <typename T>
  T get(const char* key, const json& v) const {
    T out{};
    MINFER_CHECK(json_get(v, &out), "{}: field '{}' should be {}, found {}", path, key,
                 std::is_same_v<T, bool>       ? "a boolean"
                 : std::is_integral_v<T>       ? "an integer in range"
                 : std::is_floating_point_v<T> ? "a finite number in range"
                                               : "a string",
                 v.dump());
    return out;
  }
  int64_t id(const char* key) const {
    auto it = j.find(key);
    if (it == j.end() || !it->is_number_integer()) return -1;  // may be null or a list
    return it->get<int64_t>();
  }
};

Act parse_act(const std::string& path, const std::string& s) {
  if (s == "gelu" || s == "gelu_python") return Act::GeluErf;
  if (s == "gelu_new" || s == "gelu_pytorch_tanh" || s == "gelu_fast") return Act::GeluTanh;
  if (s == "silu" || s == "swish") return Act::Silu;
  MINFER_FAIL("{}: unsupported activation '{}'", path, s);
}

// A per-layer list `key` of n_layers integers in [1, max], or empty when absent.
std::vector<int64_t> per_layer_list(const std::string& path, const json& j, const char* key,
                                    int64_t n_layers, int64_t max, const char* max_key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return {};
  MINFER_CHECK(it->is_array() && int64_t(it->size()) == n_layers,
               "{}: '{}' must be a list of {} integers (one per layer), found {}", path, key,
               n_layers, it->dump());
  std::vector<int64_t> v;
  for (const json& e : *it) {
    MINFER_CHECK(e.is_number_integer() && e.get<int64_t>() >= 1 && e.get<int64_t>() <= max,
                 "{}: '{}' entries must be integers in [1, {}] ({}), found {}", path, key, max,
                 max_key, e.dump());
    v.push_back(e.get<int64_t>());
  }
  // Every layer at the standard field's value: the same as no list.
  if (std::all_of(v.begin(), v.end(), [&](int64_t x) { return x == max; })) v.clear();
  return v;
}

// Structured pruning's per-layer sizes (ModelConfig::layer_heads ...) and HF "pruned_heads".
void read_per_layer_sizes(const std::string& path, const json& j, ModelConfig& c) {
  const bool llama = c.arch == Arch::Llama;
  c.layer_heads = per_layer_list(path, j, "num_attention_heads_per_layer", c.n_layers, c.n_heads,
                                 llama ? "num_attention_heads" : "the unpruned head count");
  c.layer_kv_heads = per_layer_list(path, j, "num_key_value_heads_per_layer", c.n_layers,
                                    c.n_kv_heads, "num_key_value_heads");
  c.layer_ffn = per_layer_list(path, j, "intermediate_size_per_layer", c.n_layers, c.ffn,
                               "the intermediate size");
  auto ph = j.find("pruned_heads");
  if (ph != j.end() && !ph->is_null() && !ph->empty()) {
    MINFER_CHECK(!llama,
                 "{}: 'pruned_heads' is a gpt2 / bert field (llama records pruned heads "
                 "as num_attention_heads_per_layer)",
                 path);
    MINFER_CHECK(ph->is_object(), "{}: 'pruned_heads' must map a layer index to a list of heads",
                 path);
    c.pruned_heads.assign(size_t(c.n_layers), {});
    for (const auto& [k, v] : ph->items()) {
      int64_t l = -1;
      try {
        size_t used = 0;
        l = std::stoll(k, &used);
        if (used != k.size()) l = -1;
      } catch (const std::exception&) {
      }
      MINFER_CHECK(l >= 0 && l < c.n_layers, "{}: pruned_heads: '{}' is not a layer index < {}",
                   path, k, c.n_layers);
      MINFER_CHECK(v.is_array(), "{}: pruned_heads['{}'] must be a list of head indices", path, k);
      std::vector<int64_t>& hs = c.pruned_heads[size_t(l)];
      for (const json& h : v) {
        MINFER_CHECK(h.is_number_integer() && h.get<int64_t>() >= 0 && h.get<int64_t>() < c.n_heads,
                     "{}: pruned_heads['{}']: head {} is not in [0, {})", path, k, h.dump(),
                     c.n_heads);
        hs.push_back(h.get<int64_t>());
      }
      std::sort(hs.begin(), hs.end());
      MINFER_CHECK(
          std::adjacent_find(hs.begin(), hs.end()) == hs.end() && int64_t(hs.size()) < c.n_heads,
          "{}: pruned_heads['{}'] repeats a head or removes all {} heads", path, k, c.n_heads);
    }
    std::vector<int64_t> from_pruned;
    for (const auto& hs : c.pruned_heads) from_pruned.push_back(c.n_heads - int64_t(hs.size()));
    MINFER_CHECK(c.layer_heads.empty() || c.layer_heads == from_pruned,
                 "{}: num_attention_heads_per_layer disagrees with pruned_heads", path);
    c.layer_heads = from_pruned;
  }
  if (!llama) {
    MINFER_CHECK(c.layer_kv_heads.empty(),
                 "{}: 'num_key_value_heads_per_layer' is a llama field ({} has no GQA)", path,
                 c.model_type);
    MINFER_CHECK(!c.pruned_heads.empty() || std::all_of(c.layer_heads.begin(), c.layer_heads.end(),
                                                        [&](int64_t h) { return h == c.n_heads; }),
                 "{}: a {} model with fewer heads in a layer records which in 'pruned_heads'", path,
                 c.model_type);
    c.layer_kv_heads = c.layer_heads;
  } else if (!c.layer_heads.empty() || !c.layer_kv_heads.empty()) {
    if (c.layer_heads.empty()) c.layer_heads.assign(size_t(c.n_layers), c.n_heads);
    if (c.layer_kv_heads.empty()) c.layer_kv_heads.assign(size_t(c.n_layers), c.n_kv_heads);
    MINFER_CHECK(j.contains("head_dim"),
                 "{}: per-layer head counts need an explicit 'head_dim' (it is no longer "
                 "hidden_size / num_attention_heads)",
                 path);
    for (int64_t l = 0; l < c.n_layers; ++l)
      MINFER_CHECK(c.layer_heads[size_t(l)] % c.layer_kv_heads[size_t(l)] == 0,
                   "{}: layer {}: {} attention heads is not a multiple of {} key/value heads", path,
                   l, c.layer_heads[size_t(l)], c.layer_kv_heads[size_t(l)]);
  }
}

// RoPE settings of a llama-family config.json. transformers >= 5 nests them in
// "rope_parameters" ({"rope_type", "rope_theta", "factor", ...}); older files put "rope_theta"
// at the top level and the scaling in "rope_scaling" ({"type" or "rope_type", "factor", ...}).
// The keys each type reads are those of transformers' modeling_rope_utils; any other key, and
// any other type (dynamic, longrope, ...), is an error naming it: never silently ignored.
void read_rope(const std::string& path, const json& j, ModelConfig& c) {
  Reader r{path, j};
  c.rope_theta = r.opt<float>("rope_theta", 10000.f);
  MINFER_CHECK(r.opt<double>("partial_rotary_factor", 1.0) == 1.0,
               "{}: partial_rotary_factor {} (RoPE on part of each head) is not supported", path,
               r.opt<double>("partial_rotary_factor", 1.0));
  bool scaled = false;
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) continue;
    MINFER_CHECK(it->is_object(), "{}: '{}' must be an object, found {}", path, key, it->dump());
    const json& rp = *it;
    Reader q{path + ": " + key, rp};
    const std::string t = q.opt<std::string>("rope_type", q.opt<std::string>("type", "default"));
    if (rp.contains("rope_theta")) c.rope_theta = q.req<float>("rope_theta");
    MINFER_CHECK(q.opt<double>("partial_rotary_factor", 1.0) == 1.0,
                 "{}: {}.partial_rotary_factor {} (RoPE on part of each head) is not supported",
                 path, key, q.opt<double>("partial_rotary_factor", 1.0));
    std::vector<std::string> known = {"rope_type", "type", "rope_theta", "partial_rotary_factor"};
    RopeScaling rs;
    if (t == "default") {
      // transformers ignores the rest for default RoPE; so do we, but only these.
      known.insert(known.end(), {"factor", "original_max_position_embeddings"});
    } else if (t == "linear") {
      rs.type = RopeType::Linear;
      rs.factor = q.req<double>("factor");
      known.insert(known.end(), {"factor", "original_max_position_embeddings"});
    } else if (t == "llama3") {
      rs.type = RopeType::Llama3;
      rs.factor = q.req<double>("factor");
      rs.low_freq_factor = q.req<double>("low_freq_factor");
      rs.high_freq_factor = q.req<double>("high_freq_factor");
      known.insert(known.end(), {"factor", "low_freq_factor", "high_freq_factor",
                                 "original_max_position_embeddings"});
    } else if (t == "yarn") {
      rs.type = RopeType::Yarn;
      known.insert(known.end(),
                   {"factor", "original_max_position_embeddings", "beta_fast", "beta_slow",
                    "attention_factor", "mscale", "mscale_all_dim", "truncate"});
      // transformers treats a 0 / null beta as its default ("or 32", "or 1").
      if (double b = q.opt<double>("beta_fast", 0.0); b != 0) rs.beta_fast = b;
      if (double b = q.opt<double>("beta_slow", 0.0); b != 0) rs.beta_slow = b;
      rs.attention_factor = q.opt<double>("attention_factor", 0.0);
      rs.mscale = q.opt<double>("mscale", 0.0);
      rs.mscale_all_dim = q.opt<double>("mscale_all_dim", 0.0);
      rs.truncate = q.opt<bool>("truncate", true);
    } else {
      MINFER_FAIL("{}: {} type '{}' is not supported (supported: default, linear, llama3, yarn)",
                  path, key, t);
    }
    for (const auto& [k, v] : rp.items())
      MINFER_CHECK(std::find(known.begin(), known.end(), k) != known.end(),
                   "{}: {}: key '{}' is not read for rope type '{}' (read: {})", path, key, k, t,
                   fmt::format("{}", fmt::join(known, ", ")));
    if (rs.type == RopeType::Default) continue;
    MINFER_CHECK(!scaled || c.rope_scaling.type == rs.type,
                 "{}: rope_scaling and rope_parameters name different rope types", path);
    scaled = true;
    if (rs.type == RopeType::Llama3 || rs.type == RopeType::Yarn) {
      // transformers' standardize_rope_params: a top-level original_max_position_embeddings
      // (Phi-3) wins, then the nested one, then max_position_embeddings.
      rs.original_max_pos =
          r.opt<int64_t>("original_max_position_embeddings",
                         q.opt<int64_t>("original_max_position_embeddings", c.max_pos));
      if (rs.type == RopeType::Yarn)
        rs.factor = q.opt<double>("factor", double(c.max_pos) / double(rs.original_max_pos));
    }
    c.rope_scaling = rs;
  }
}

// Gemma (GemmaForCausalLM) and Gemma-2 (Gemma2ForCausalLM) in transformers' modeling_gemma*.py:
// RMSNorm x (1 + w), embeddings x sqrt(C), a GeGLU MLP (gelu tanh), and for Gemma-2 the extra
// norms, soft-capping, query_pre_attn_scalar and sliding-window layers.
void read_gemma(const std::string& path, const json& j, ModelConfig& c) {
  Reader r{path, j};
  c.norm_unit_offset = true;
  c.embed_scale = true;
  // GemmaConfig turns the legacy hidden_act "gelu" into gelu_pytorch_tanh; Gemma-2's MLP reads
  // hidden_activation.
  const std::string act = c.model_type == "gemma2"
                              ? r.opt<std::string>("hidden_activation", "gelu_pytorch_tanh")
                              : r.opt<std::string>("hidden_act", "gelu_pytorch_tanh");
  c.act = act == "gelu" ? Act::GeluTanh : parse_act(path, act);
  MINFER_CHECK(!r.opt<bool>("use_bidirectional_attention", false),
               "{}: use_bidirectional_attention = true (an encoder Gemma) is not supported", path);
  if (c.model_type != "gemma2") return;
  c.sandwich_norms = true;
  const double qs = r.opt<double>("query_pre_attn_scalar", 256.0);
  MINFER_CHECK(qs > 0, "{}: query_pre_attn_scalar must be > 0, found {}", path, qs);
  c.attn_scale = float(std::pow(qs, -0.5));  // Gemma2Attention.scaling
  c.attn_softcap = r.opt<float>("attn_logit_softcapping", 0.f);
  c.final_softcap = r.opt<float>("final_logit_softcapping", 0.f);
  MINFER_CHECK(c.attn_softcap >= 0 && c.final_softcap >= 0,
               "{}: soft-capping values must be >= 0 (or null), found {} / {}", path,
               c.attn_softcap, c.final_softcap);
  c.sliding_window = r.opt<int64_t>("sliding_window", 0);
  MINFER_CHECK(c.sliding_window >= 0, "{}: sliding_window must be >= 0, found {}", path,
               c.sliding_window);
  // Gemma2Config: layer_types, default sliding on even layers ("sliding_attention" if (i + 1) % 2).
  c.layer_sliding.assign(size_t(std::max<int64_t>(c.n_layers, 0)), false);
  auto lt = j.find("layer_types");
  if (lt != j.end() && !lt->is_null()) {
    MINFER_CHECK(lt->is_array() && int64_t(lt->size()) == c.n_layers,
                 "{}: 'layer_types' must list {} layer types, found {}", path, c.n_layers,
                 lt->dump());
    for (size_t l = 0; l < lt->size(); ++l) {
      const json& t = (*lt)[l];
      MINFER_CHECK(t == "sliding_attention" || t == "full_attention",
                   "{}: layer_types[{}] = {} (supported: sliding_attention, full_attention)", path,
                   l, t.dump());
      c.layer_sliding[l] = t == "sliding_attention";
    }
  } else {
    for (size_t l = 0; l < c.layer_sliding.size(); ++l) c.layer_sliding[l] = (l + 1) % 2 != 0;
  }
  if (c.sliding_window == 0) c.layer_sliding.clear();  // null window: every layer full
}

}  // namespace

void validate_config(const ModelConfig& c, const std::string& origin) {
  auto in_range = [&](const char* what, int64_t v, int64_t lo, int64_t hi) {
    MINFER_CHECK(v >= lo && v <= hi, "{}: {} = {} is outside [{}, {}]", origin, what, v, lo, hi);
  };
  const ModelDims& m = kMaxModelDims;
  in_range("vocab size", c.vocab_size, 1, m.vocab);
  in_range("hidden size", c.hidden, 1, m.hidden);
  in_range("layer count", c.n_layers, 1, m.layers);
  in_range("attention head count", c.n_heads, 1, m.heads);
  in_range("key/value head count", c.n_kv_heads, 1, c.n_heads);
  in_range("head_dim", c.head_dim, 1, m.head_dim);
  in_range("intermediate size", c.ffn, 1, m.ffn);
  in_range("context length", c.max_pos, 1, m.positions);
  in_range("token type count", c.type_vocab, 0, m.vocab);
  MINFER_CHECK(c.n_heads % c.n_kv_heads == 0,
               "{}: num_attention_heads {} is not a multiple of num_key_value_heads {}", origin,
               c.n_heads, c.n_kv_heads);
  // Special-token ids index the vocabulary (-1: none).
  for (auto [what, id] : {std::pair{"bos_token_id", c.bos_id}, std::pair{"eos_token_id", c.eos_id},
                          std::pair{"pad_token_id", c.pad_id}})
    MINFER_CHECK(id >= -1 && id < c.vocab_size, "{}: {} = {} is not a token id (vocab size {})",
                 origin, what, id, c.vocab_size);
  MINFER_CHECK(std::isfinite(c.norm_eps) && c.norm_eps > 0,
               "{}: the normalization epsilon must be a positive finite number, found {}", origin,
               c.norm_eps);
  MINFER_CHECK(std::isfinite(c.rope_theta) && c.rope_theta > 0,
               "{}: rope_theta must be a positive finite number, found {}", origin, c.rope_theta);
}

ModelConfig load_config(const std::string& path) {
  std::ifstream f(path);
  MINFER_CHECK(f.good(), "{}: cannot open config", path);
  std::stringstream ss;
  ss << f.rdbuf();
  return parse_config(ss.str(), path);
}

namespace {
ModelConfig parse_config_json(const json& j, const std::string& text, const std::string& path);
}  // namespace

ModelConfig parse_config(const std::string& text, const std::string& path) {
  const json j = parse_json_text(text, path, "config");
  return with_json_origin(path, [&] { return parse_config_json(j, text, path); });
}

namespace {
ModelConfig parse_config_json(const json& j, const std::string& text, const std::string& path) {
  MINFER_CHECK(j.is_object(), "{}: not a JSON object (found {})", path, j.type_name());
  Reader r{path, j};
  ModelConfig c;
  c.source_json = text;
  c.model_type = r.req<std::string>("model_type");
  if (c.model_type == "gpt2") {
    c.arch = Arch::GPT2;
    c.vocab_size = r.req<int64_t>("vocab_size");
    c.hidden = r.req<int64_t>("n_embd");
    c.n_layers = r.req<int64_t>("n_layer");
    c.n_heads = r.req<int64_t>("n_head");
    c.n_kv_heads = c.n_heads;
    // n_inner = null means 4 * n_embd (checked after n_embd is bounded, below).
    c.ffn = r.opt<int64_t>("n_inner", 0);
    if (c.ffn == 0 && c.hidden > 0 && c.hidden <= kMaxModelDims.hidden) c.ffn = 4 * c.hidden;
    c.max_pos = r.req<int64_t>("n_positions");
    c.act = parse_act(path, r.opt<std::string>("activation_function", "gelu_new"));
    c.norm = Norm::LayerNorm;
    c.norm_eps = r.opt<float>("layer_norm_epsilon", 1e-5f);
    c.tie_embeddings = r.opt<bool>("tie_word_embeddings", true);
    c.attn_bias = c.mlp_bias = true;
    c.bos_id = r.id("bos_token_id");
    c.eos_id = r.id("eos_token_id");
    // Fields that change GPT-2's attention math, which gpt2.cpp does not implement.
    MINFER_CHECK(r.opt<bool>("scale_attn_weights", true),
                 "{}: scale_attn_weights = false (attention without 1/sqrt(head_dim)) is not "
                 "supported",
                 path);
    MINFER_CHECK(!r.opt<bool>("scale_attn_by_inverse_layer_idx", false),
                 "{}: scale_attn_by_inverse_layer_idx = true is not supported", path);
  } else if (c.model_type == "llama" || c.model_type == "qwen2" || c.model_type == "mistral" ||
             c.model_type == "phi3" || c.model_type == "gemma" || c.model_type == "gemma2") {
    c.arch = Arch::Llama;
    c.vocab_size = r.req<int64_t>("vocab_size");
    c.hidden = r.req<int64_t>("hidden_size");
    c.n_layers = r.req<int64_t>("num_hidden_layers");
    c.n_heads = r.req<int64_t>("num_attention_heads");
    c.n_kv_heads = r.opt<int64_t>("num_key_value_heads", c.n_heads);
    c.ffn = r.req<int64_t>("intermediate_size");
    c.max_pos = r.opt<int64_t>("max_position_embeddings", 2048);
    c.act = parse_act(path, r.opt<std::string>("hidden_act", "silu"));
    c.norm = Norm::RmsNorm;
    c.norm_eps = r.opt<float>("rms_norm_eps", 1e-6f);
    read_rope(path, j, c);
    const bool gemma = c.model_type == "gemma" || c.model_type == "gemma2";
    c.tie_embeddings = r.opt<bool>("tie_word_embeddings", gemma);
    c.attn_bias = r.opt<bool>("attention_bias", c.model_type == "qwen2");
    c.mlp_bias = r.opt<bool>("mlp_bias", false);
    c.head_dim = r.opt<int64_t>("head_dim", 0);
    c.bos_id = r.id("bos_token_id");
    c.eos_id = r.id("eos_token_id");
    c.pad_id = r.id("pad_token_id");
    // Sliding-window attention (Mistral's sliding_window; Qwen2's when use_sliding_window):
    // within the window it is full attention, so the window becomes the position limit and a
    // longer sequence is an error, never silently full attention.
    const bool swa = c.model_type == "qwen2" ? r.opt<bool>("use_sliding_window", false)
                                             : c.model_type == "mistral" || c.model_type == "phi3";
    if (swa && j.contains("sliding_window") && j.at("sliding_window").is_number_integer()) {
      const int64_t w = j.at("sliding_window").get<int64_t>();
      MINFER_CHECK(w > 0, "{}: sliding_window must be > 0, found {}", path, w);
      if (c.model_type == "qwen2")
        MINFER_CHECK(r.opt<int64_t>("max_window_layers", c.n_layers) >= c.n_layers,
                     "{}: sliding-window attention on some layers only (max_window_layers) is "
                     "not supported",
                     path);
      c.max_pos = std::min(c.max_pos, w);
    }
    if (gemma) read_gemma(path, j, c);
  } else if (c.model_type == "bert") {
    c.arch = Arch::Bert;
    c.vocab_size = r.req<int64_t>("vocab_size");
    c.hidden = r.req<int64_t>("hidden_size");
    c.n_layers = r.req<int64_t>("num_hidden_layers");
    c.n_heads = r.req<int64_t>("num_attention_heads");
    c.n_kv_heads = c.n_heads;
    c.ffn = r.req<int64_t>("intermediate_size");
    c.max_pos = r.req<int64_t>("max_position_embeddings");
    c.type_vocab = r.opt<int64_t>("type_vocab_size", 2);
    c.act = parse_act(path, r.opt<std::string>("hidden_act", "gelu"));
    c.norm = Norm::LayerNorm;
    c.norm_eps = r.opt<float>("layer_norm_eps", 1e-12f);
    std::string pe = r.opt<std::string>("position_embedding_type", "absolute");
    MINFER_CHECK(pe == "absolute", "{}: position_embedding_type '{}' not supported", path, pe);
    MINFER_CHECK(!r.opt<bool>("is_decoder", false),
                 "{}: is_decoder = true (a causal BERT) is not supported", path);
    c.attn_bias = c.mlp_bias = true;
    c.pad_id = r.id("pad_token_id");
  } else {
    MINFER_FAIL(
        "{}: unknown model_type '{}' (supported: gpt2, llama, qwen2, mistral, phi3, gemma, "
        "gemma2, bert)",
        path, c.model_type);
  }
  if (c.head_dim == 0) {
    MINFER_CHECK(c.n_heads > 0 && c.hidden > 0 && c.hidden % c.n_heads == 0,
                 "{}: hidden size {} is not divisible by the number of heads {}", path, c.hidden,
                 c.n_heads);
    c.head_dim = c.hidden / c.n_heads;
  }
  validate_config(c, path);
  read_per_layer_sizes(path, j, c);
  if (c.arch == Arch::Llama) rope_table(c.rope_theta, c.head_dim, c.rope_scaling, path);  // checks
  return c;
}
}  // namespace

}  // namespace minfer
