#include "models/model.h"

#include <algorithm>
#include <filesystem>

#include "engine/compressed_folder.h"

namespace minfer {

RunState Model::new_state(int64_t max_ctx, int64_t max_tokens, int64_t logit_rows) const {
  const ModelConfig& c = cfg_;
  MINFER_CHECK(max_tokens > 0 && max_ctx >= 0, "new_state: bad sizes ctx {} tokens {}", max_ctx,
               max_tokens);
  if (kv_dtype_ != DType::F32 && c.causal() && !be_->kv_cache_f16())
    throw NotImplemented(fmt::format("an {} KV cache on the {} backend (it runs F32 caches only)",
                                     dtype_name(kv_dtype_), be_->name()));
  RunState s;
  s.max_ctx = max_ctx;
  s.max_tokens = max_tokens;
  const int64_t kv = c.n_kv_heads * c.head_dim, qd = c.n_heads * c.head_dim;
  const bool head_major = be_->kv_cache_head_major();
  if (c.causal())
    for (int64_t l = 0; l < c.n_layers; ++l) {
      const int64_t hkv = c.kv_heads_at(l), D = c.head_dim;  // pruned layers cache fewer heads
      for (std::vector<Tensor>* cache : {&s.k_cache, &s.v_cache})
        cache->push_back(head_major ? be_->alloc({hkv, max_ctx, D}, kv_dtype_)
                                    : be_->alloc({max_ctx, hkv * D}, kv_dtype_));
    }
  s.x = be_->alloc({max_tokens, c.hidden});
  s.xn = be_->alloc({max_tokens, c.hidden});
  s.qkv = be_->alloc({max_tokens, qd + 2 * kv});
  s.att = be_->alloc({max_tokens, qd});
  s.proj = be_->alloc({max_tokens, c.hidden});
  s.ff_a = be_->alloc({max_tokens, c.ffn});
  s.ff_b = be_->alloc({max_tokens, c.ffn});
  if (logit_rows < 0 || logit_rows > max_tokens) logit_rows = max_tokens;
  if (c.causal()) s.logits = be_->alloc({std::max<int64_t>(logit_rows, 1), c.vocab_size});
  s.ids.resize(size_t(max_tokens));
  return s;
}

void Model::set_kv_cache_dtype(DType t) {
  MINFER_CHECK(t == DType::F32 || t == DType::F16, "KV cache dtype: expected F32 or F16, found {}",
               dtype_name(t));
  kv_dtype_ = t;
}

size_t Model::weight_bytes() const {
  Model& m = const_cast<Model&>(*this);  // tensors() / linears() hand out mutable pointers
  size_t b = 0;
  std::vector<const void*> tables;
  for (const NamedTensor& t : m.tensors()) {
    b += t.t->nbytes();
    if (t.embedding) tables.push_back(t.t->raw());
  }
  // A table held in a block format: counted once, whether or not a head shares its blocks.
  for (const Linear* t : m.tables()) {
    b += t->weight_bytes();
    if (const GgmlBlocks* g = std::get_if<GgmlBlocks>(&t->repr)) tables.push_back(g->blocks.raw());
  }
  for (const Linear* w : m.linears()) {
    const void* raw = nullptr;
    if (const Dense* d = std::get_if<Dense>(&w->repr)) raw = d->w.raw();
    if (const GgmlBlocks* g = std::get_if<GgmlBlocks>(&w->repr)) raw = g->blocks.raw();
    const bool tied = raw && std::find(tables.begin(), tables.end(), raw) != tables.end();
    if (!tied) b += w->weight_bytes();
    b += w->bias.defined() ? w->bias.nbytes() : 0;
  }
  return b;
}

Tensor Model::forward(RunState&, const int32_t*, int64_t, bool) {
  MINFER_FAIL("model '{}' is an encoder: it has no causal forward (use encode)", cfg_.model_type);
}

Tensor Model::encode(RunState&, const int32_t*, int64_t, int64_t, const int32_t*, const int32_t*) {
  MINFER_FAIL("model '{}' is a causal LM: use forward, not encode", cfg_.model_type);
}

std::unique_ptr<Model> build_model(const ModelConfig& cfg, const WeightSource& src, Backend& be) {
  switch (cfg.arch) {
    case Arch::GPT2:
      return make_gpt2(cfg, src, be);
    case Arch::Llama:
      return make_llama(cfg, src, be);
    case Arch::Bert:
      return make_bert(cfg, src, be);
  }
  MINFER_FAIL("unknown architecture");
}

std::unique_ptr<Model> load_model(const std::string& path, Backend& be) {
  namespace fs = std::filesystem;
  MINFER_CHECK(fs::is_directory(path),
               "{}: not a model folder (expected config.json + "
               "*.safetensors)",
               path);
  const std::string cfg_path = (fs::path(path) / "config.json").string();
  MINFER_CHECK(fs::exists(cfg_path), "{}: missing config.json", path);
  ModelConfig cfg = load_config(cfg_path);
  if (is_compressed_folder(path)) {
    CompressedSource src(path);
    return build_model(cfg, src, be);
  }
  SafetensorsSource src(WeightStore::open(path));
  return build_model(cfg, src, be);
}

}  // namespace minfer
