// The data-parallel seam of the training loop: a group of P ranks (processes) that each train on
// their share of every global batch and sum their gradients (MPI_Allreduce semantics). The
// training code sees only this interface; the Open MPI implementation (train/mpi/comm_mpi.h) is
// built only when mpicxx is found (`make MPI=1`, the default then) and linked only into the
// distill tool, so the library, the tests and a machine without MPI need none of it.
#pragma once
#include <cstddef>
#include <cstdint>

namespace minfer::train {

class Comm {
 public:
  virtual ~Comm() = default;
  virtual int rank() const = 0;  // 0 .. size()-1; rank 0 writes outputs, logs, checkpoints
  virtual int size() const = 0;  // P ranks
  // x[0..n) <- the sum over all ranks of x[0..n), the same bits on every rank (in place,
  // collective: every rank calls it with the same n).
  virtual void allreduce_sum(float* x, size_t n) = 0;
  virtual void allreduce_sum(double* x, size_t n) = 0;
  // Every rank waits until all have arrived.
  virtual void barrier() = 0;
};

// Rows [begin, end) of a batch of B rows that rank r of P trains on: contiguous, sizes differ by
// at most one, ranks in order (so the P shares in rank order are the single-process batch).
struct RowShare {
  int64_t begin = 0, end = 0;
};
inline RowShare row_share(int64_t B, int rank, int P) {
  return {B * rank / P, B * (rank + 1) / P};
}

}  // namespace minfer::train
