// Training checkpoints: a folder that is also a loadable model folder.
//   config.json           the student's config (Student::config_json: llama, gpt2 or bert)
//   model.safetensors     f32 master weights (HF names)
//   optimizer.safetensors AdamW moments "m.<name>", "v.<name>" (absent before the first step)
//   trainer_state.json    {"step", "data_position", "seed", ...}: where to resume
//   factors.safetensors   a low-rank student only: its factors "<weight>.u" / "<weight>.v" and
//                         their AdamW moments "m.<name>", "v.<name>" (train/lowrank_train.h);
//                         model.safetensors then holds W = U·V
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

// factors: the trainable factors of a low-rank student (null or empty: none).
void save_checkpoint(const std::string& dir, const Student& m, const TrainerState& s,
                     const ParamStore* factors = nullptr);
// Restores weights, moments and the state into m (whose config must match the checkpoint's
// parameter table: every tensor's name and shape), and the factors and their moments into
// `factors` when it is non-empty (the caller materializes W = U·V). Throws naming the file and
// tensor, and when the checkpoint has factors and the student none, or the reverse.
TrainerState load_checkpoint(const std::string& dir, Student& m, ParamStore* factors = nullptr);

}  // namespace minfer::train
