// Training checkpoints: a folder that is also a loadable model folder.
//   config.json           the student's config (Student::config_json: llama, gpt2 or bert)
//   model.safetensors     f32 master weights (HF names)
//   optimizer.safetensors AdamW moments "m.<name>", "v.<name>" (absent before the first step)
//   trainer_state.json    {"step", "data_position", "seed", ...}: where to resume
// Written to a temporary sibling folder and renamed over `dir` (an older checkpoint there is
// replaced only once the new one is complete).
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "train/student.h"

namespace minfer::train {

struct TrainerState {
  int64_t step = 0;           // optimizer steps done
  int64_t data_position = 0;  // training sequences consumed (the data order is a function of it)
  uint64_t seed = 0;
  nlohmann::json extra;  // options the run was started with (checked on resume by the caller)
};

void save_checkpoint(const std::string& dir, const Student& m, const TrainerState& s);
// Restores weights, moments and the state into m (whose config must match the checkpoint's
// parameter table: every tensor's name and shape). Throws naming the file and tensor.
TrainerState load_checkpoint(const std::string& dir, Student& m);

}  // namespace minfer::train
