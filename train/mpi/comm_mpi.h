// Comm over MPI (MPI_COMM_WORLD; Open MPI from Debian): one process per rank, started by
// `mpirun -np P build/bin/distill ...`. Compiled only in an MPI build (make MPI=1), linked only
// into the distill tool.
#pragma once
#include "train/comm.h"

namespace minfer::train {

class MpiComm final : public Comm {
 public:
  // MPI_Init (MPI_Init_thread with MPI_THREAD_FUNNELED: OpenMP threads never call MPI); errors
  // return codes instead of aborting (MPI_ERRORS_RETURN), turned into exceptions naming the call.
  MpiComm(int* argc, char*** argv);
  ~MpiComm() override;  // MPI_Finalize
  MpiComm(const MpiComm&) = delete;
  MpiComm& operator=(const MpiComm&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void allreduce_sum(float* x, size_t n) override;
  void allreduce_sum(double* x, size_t n) override;
  void barrier() override;
  // After an error on one rank: MPI_Abort, so the other ranks do not wait forever in a
  // collective.
  [[noreturn]] void abort(int code);

 private:
  int rank_ = 0, size_ = 1;
};

}  // namespace minfer::train
