#include "train/checkpoint.h"

#include <cstring>
#include <filesystem>
#include <fstream>

#include "engine/model_folder.h"
#include "engine/safetensors.h"

namespace minfer::train {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

Tensor flat_copy(const ParamTensor& p, const float* src) {
  Tensor t = p.shape.size() == 1 ? Tensor::empty(DType::F32, {p.shape[0]})
                                 : Tensor::empty(DType::F32, {p.shape[0], p.shape[1]});
  std::memcpy(t.data<float>(), src, p.numel * sizeof(float));
  return t;
}

void restore(const SafetensorsFile& f, const std::string& name, const ParamTensor& p, float* dst) {
  const Tensor& t = f.get(name);
  MINFER_CHECK(t.dtype() == DType::F32 && size_t(t.numel()) == p.numel,
               "{}: tensor '{}' is {} {}, expected F32 with {} values", f.path(), name,
               dtype_name(t.dtype()), t.shape_str(), p.numel);
  std::memcpy(dst, t.data<float>(), p.numel * sizeof(float));
}

}  // namespace

void save_checkpoint(const std::string& dir, const Student& m, const TrainerState& s,
                     const ParamStore* factors) {
  StagingDir tmp(dir, /*force=*/true);
  write_json_file(tmp.path() / "config.json", m.config_json());
  save_safetensors((tmp.path() / "model.safetensors").string(), m.named_weights(),
                   {{"format", "pt"}});
  const ParamStore& P = m.params();
  if (!P.m().empty()) {
    std::vector<std::pair<std::string, Tensor>> opt;
    for (const ParamTensor& p : P.table()) {
      opt.emplace_back("m." + p.name, flat_copy(p, P.m().data() + p.offset));
      opt.emplace_back("v." + p.name, flat_copy(p, P.v().data() + p.offset));
    }
    save_safetensors((tmp.path() / "optimizer.safetensors").string(), opt);
  }
  if (factors && !factors->table().empty()) {
    std::vector<std::pair<std::string, Tensor>> fac;
    for (const ParamTensor& p : factors->table()) {
      fac.emplace_back(p.name, flat_copy(p, factors->weights().data() + p.offset));
      if (!factors->m().empty()) {
        fac.emplace_back("m." + p.name, flat_copy(p, factors->m().data() + p.offset));
        fac.emplace_back("v." + p.name, flat_copy(p, factors->v().data() + p.offset));
      }
    }
    save_safetensors((tmp.path() / "factors.safetensors").string(), fac);
  }
  json st = {
      {"step", s.step}, {"data_position", s.data_position}, {"seed", s.seed}, {"options", s.extra}};
  write_json_file(tmp.path() / "trainer_state.json", st);
  tmp.commit();
}

TrainerState load_checkpoint(const std::string& dir, Student& m, ParamStore* factors) {
  const fs::path d(dir);
  const fs::path sp = d / "trainer_state.json";
  std::ifstream in(sp);
  MINFER_CHECK(in.good(), "{}: not a training checkpoint (no trainer_state.json)", dir);
  json st;
  try {
    in >> st;
  } catch (const std::exception& e) {
    MINFER_FAIL("{}: malformed JSON: {}", sp.string(), e.what());
  }
  TrainerState s;
  try {
    s.step = st.at("step").get<int64_t>();
    s.data_position = st.at("data_position").get<int64_t>();
    s.seed = st.at("seed").get<uint64_t>();
    s.extra = st.value("options", json::object());
  } catch (const std::exception& e) {
    MINFER_FAIL("{}: {}", sp.string(), e.what());
  }
  auto wf = SafetensorsFile::open((d / "model.safetensors").string());
  ParamStore& P = m.params();
  for (const ParamTensor& p : P.table()) restore(*wf, p.name, p, P.weights().data() + p.offset);
  if (fs::exists(d / "optimizer.safetensors")) {
    auto of = SafetensorsFile::open((d / "optimizer.safetensors").string());
    P.allocate_moments();
    for (const ParamTensor& p : P.table()) {
      restore(*of, "m." + p.name, p, P.m().data() + p.offset);
      restore(*of, "v." + p.name, p, P.v().data() + p.offset);
    }
  }
  const bool has_factors = factors && !factors->table().empty();
  const fs::path ff = d / "factors.safetensors";
  MINFER_CHECK(has_factors == fs::exists(ff),
               "{}: the checkpoint {} factors.safetensors but the student is {} (resume with the "
               "student the run was started with)",
               dir, fs::exists(ff) ? "has" : "has no", has_factors ? "low-rank" : "not low-rank");
  if (has_factors) {
    auto f = SafetensorsFile::open(ff.string());
    for (const ParamTensor& p : factors->table())
      restore(*f, p.name, p, factors->weights().data() + p.offset);
    if (f->has("m." + factors->table().front().name)) {
      factors->allocate_moments();
      for (const ParamTensor& p : factors->table()) {
        restore(*f, "m." + p.name, p, factors->m().data() + p.offset);
        restore(*f, "v." + p.name, p, factors->v().data() + p.offset);
      }
    }
  }
  return s;
}

}  // namespace minfer::train
