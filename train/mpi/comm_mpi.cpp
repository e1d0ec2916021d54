// Comm over MPI (comm_mpi.h).
#include "train/mpi/comm_mpi.h"

#include <mpi.h>

#include <algorithm>
#include <climits>

#include "engine/error.h"

namespace minfer::train {

namespace {

void check(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  MINFER_CHECK(false, "{} failed: {}", call, std::string(msg, size_t(len)));
}

// MPI counts are int: large buffers go in chunks.
template <typename T>
void allreduce_chunks(T* x, size_t n, MPI_Datatype type) {
  const size_t chunk = size_t(INT_MAX) / 2;
  for (size_t i = 0; i < n; i += chunk) {
    const int c = int(std::min(chunk, n - i));
    check(MPI_Allreduce(MPI_IN_PLACE, x + i, c, type, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
  }
}

}  // namespace

MpiComm::MpiComm(int* argc, char*** argv) {
  int provided = 0;
  check(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  check(MPI_Comm_rank(MPI_COMM_WORLD, &rank_), "MPI_Comm_rank");
  check(MPI_Comm_size(MPI_COMM_WORLD, &size_), "MPI_Comm_size");
}

MpiComm::~MpiComm() {
  MPI_Finalize();
}

void MpiComm::allreduce_sum(float* x, size_t n) {
  allreduce_chunks(x, n, MPI_FLOAT);
}
void MpiComm::allreduce_sum(double* x, size_t n) {
  allreduce_chunks(x, n, MPI_DOUBLE);
}
void MpiComm::barrier() {
  check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");
}
void MpiComm::abort(int code) {
  MPI_Abort(MPI_COMM_WORLD, code);
  std::abort();
}

}  // namespace minfer::train
