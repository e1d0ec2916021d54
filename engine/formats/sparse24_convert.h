// Conversions of a 2:4 SparseBitmask whose mask lost exact-zero kept weights into Sparse24
// (engine/formats/sparse24.h), for the CPU backend's upload (kernels/cpu/sparse24.h
// sparse24_upload). Exact ones (every group keeps 2) are sparse24_from_bitmask.
#pragma once
#include <string>

#include "engine/formats/sparse24.h"

namespace minfer {

// True when every group of 4 inputs of every row of `r` keeps at most 2 (K % 4 == 0, at most
// K / 2 values per row): a 2:4-pruned weight whose mask lost the exact-zero kept weights (a
// bitmask is W != 0, so a kept weight that rounded to 0 has no bit).
bool sparse_is_at_most_2of4(const SparseBitmask& r);
// Such a SparseBitmask as Sparse24 with new values: a group keeping fewer than 2 takes the lowest
// free positions with value 0 (as sparse24_from_dense), the values re-packed into a new child
// [out, in / 2] (f32 / fp16 / bf16: copied with +0 inserted; int8 codes, per row or per tensor:
// copied with code 128, weight 0 exactly, inserted, the scales shared). The same W, dequantized
// bit for bit. Errors name `name`: in % 4 != 0, more values per row than in / 2, a group keeping
// more than 2 (row, inputs), values of another format.
Sparse24 sparse24_from_bitmask_repacked(const SparseBitmask& r, const std::string& name);

}  // namespace minfer
