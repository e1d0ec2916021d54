#include "train/params.h"

#include <algorithm>

#include "engine/error.h"

namespace minfer::train {

void ParamStore::add(const std::string& name, std::vector<int64_t> shape, bool decay) {
  MINFER_CHECK(!has(name), "parameter '{}' added twice", name);
  MINFER_CHECK(w_.empty(), "parameter '{}' added after allocate()", name);
  size_t n = 1;
  for (int64_t d : shape) {
    MINFER_CHECK(d > 0, "parameter '{}': dimension {} must be > 0", name, d);
    n *= size_t(d);
  }
  table_.push_back({name, std::move(shape), total_, n, decay});
  total_ += n;
}

void ParamStore::allocate() {
  w_.assign(total_, 0.f);
  g_.assign(total_, 0.f);
}

void ParamStore::allocate_moments() {
  if (m_.size() != total_) m_.assign(total_, 0.f);
  if (v_.size() != total_) v_.assign(total_, 0.f);
}

bool ParamStore::has(const std::string& name) const {
  return std::any_of(table_.begin(), table_.end(),
                     [&](const ParamTensor& p) { return p.name == name; });
}

const ParamTensor& ParamStore::find(const std::string& name) const {
  for (const ParamTensor& p : table_)
    if (p.name == name) return p;
  MINFER_FAIL("no trainable parameter named '{}'", name);
}

void ParamStore::zero_grad() {
  std::fill(g_.begin(), g_.end(), 0.f);
}

}  // namespace minfer::train
