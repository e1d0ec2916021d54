// The decode thread pool (engine/thread_pool.h) and the CPU load readings (engine/cpu_load.h):
// every item runs exactly once whatever the thread count and back-off, nested and failing loops
// behave, and the kernels on the pool give the same bits on 1, 2 and 3 threads.
#include <doctest/doctest.h>

#include <atomic>
#include <cstring>
#include <functional>
#include <random>
#include <stdexcept>
#include <thread>
#include <vector>

#include "compress/quantize.h"
#include "engine/backend.h"
#include "engine/cpu_load.h"
#include "engine/thread_pool.h"

using namespace minfer;

namespace {

// Restores the pool's thread count and back-off when a test case ends.
struct PoolGuard {
  int threads = pool_threads();
  ~PoolGuard() {
    set_pool_threads(threads);
    set_pool_backoff(true);
  }
};

std::vector<float> randn(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = nd(rng);
  return v;
}

}  // namespace

TEST_CASE("pool: every item runs exactly once, in chunks that tile [0, n)") {
  PoolGuard guard;
  for (int threads : {1, 2, 3, 5}) {
    for (bool backoff : {false, true}) {
      set_pool_threads(threads);
      set_pool_backoff(backoff);
      CHECK(pool_threads() == threads);
      for (int64_t n : {1, 2, 7, 64, 1000, 100003}) {
        for (int64_t min_work : {int64_t(1), int64_t(1) << 10, int64_t(1) << 15}) {
          std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
          for (auto& h : hits) h.store(0);
          std::atomic<int64_t> chunks{0};
          for (int rep = 0; rep < 3; ++rep)
            parallel_for(n, 16, min_work, [&](int64_t b, int64_t e) {
              REQUIRE(0 <= b);
              REQUIRE(b < e);
              REQUIRE(e <= n);
              chunks.fetch_add(1);
              for (int64_t i = b; i < e; ++i) hits[size_t(i)].fetch_add(1);
            });
          int64_t bad = 0;
          for (auto& h : hits) bad += h.load() != 3;
          CHECK_MESSAGE(bad == 0, "threads ", threads, " n ", n, " min_work ", min_work);
          // At most 8 chunks per configured thread, and a chunk has >= min_work units of work.
          CHECK(chunks.load() <= 3 * std::min<int64_t>(n, 8 * threads));
          if (n * 16 < min_work) CHECK(chunks.load() == 3);
        }
      }
    }
  }
  parallel_for(0, 1, 1, [](int64_t, int64_t) { FAIL("called for an empty range"); });
}

TEST_CASE("pool: a loop inside a chunk runs serially; an exception reaches the caller") {
  PoolGuard guard;
  set_pool_threads(2);
  set_pool_backoff(false);
  std::vector<int> out(size_t(64 * 64), 0);
  parallel_for(64, 1 << 20, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      parallel_for(64, 1 << 20, 1, [&](int64_t b2, int64_t e2) {
        for (int64_t j = b2; j < e2; ++j) out[size_t(i * 64 + j)] += int(i * 64 + j);
      });
  });
  for (size_t i = 0; i < out.size(); ++i) REQUIRE(out[i] == int(i));

  CHECK_THROWS_WITH_AS(parallel_for(1000, 1 << 20, 1,
                                    [&](int64_t b, int64_t e) {
                                      if (b <= 500 && 500 < e) throw std::runtime_error("item 500");
                                    }),
                       "item 500", std::runtime_error);
  // The pool still works after a failed loop.
  std::atomic<int64_t> sum{0};
  parallel_for(1000, 1 << 20, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) sum += i;
  });
  CHECK(sum.load() == 999 * 1000 / 2);
}

TEST_CASE("pool: two threads calling at once both get every item (one runs serially)") {
  PoolGuard guard;
  set_pool_threads(3);
  set_pool_backoff(false);
  const int64_t n = 5000;
  const int reps = 300;
  std::vector<int> a(static_cast<size_t>(n), 0), b(static_cast<size_t>(n), 0);
  auto caller = [&](std::vector<int>& v) {
    for (int r = 0; r < reps; ++r)
      parallel_for(n, 64, 1024, [&](int64_t lo, int64_t hi) {
        for (int64_t i = lo; i < hi; ++i) v[size_t(i)] += 1;
      });
  };
  std::thread t1(caller, std::ref(a)), t2(caller, std::ref(b));
  t1.join();
  t2.join();
  int64_t bad = 0;
  for (int64_t i = 0; i < n; ++i) bad += a[size_t(i)] != reps || b[size_t(i)] != reps;
  CHECK(bad == 0);
}

TEST_CASE("pool: decode kernels give the same bits on 1, 2 and 3 threads") {
  PoolGuard guard;
  // int8 / int4 / nf4 / f32 linears and decode attention, T = 1 and 3 rows of x.
  const int64_t K = 320, N = 1000, T = 3;
  const std::vector<float> w = randn(N * K, 7), x = randn(T * K, 8);
  Tensor wt = Tensor::empty(DType::F32, {N, K});
  std::memcpy(wt.data<float>(), w.data(), w.size() * 4);
  const Linear dense = make_dense("w", wt, K, N);
  std::vector<Linear> ls = {dense};
  for (const char* m : {"int8", "int4", "nf4"}) {
    QuantSpec s;
    s.method = m;
    ls.push_back(quantize_linear(dense, s));
  }
  const int64_t H = 4, Hkv = 2, D = 64, S = 300;
  const std::vector<float> kv = randn(2 * S * Hkv * D, 9), q = randn(T * H * D, 10);
  auto run = [&](int threads) {
    auto be = make_cpu_backend(threads);
    set_pool_backoff(false);
    std::vector<float> all;
    for (const Linear& l : ls)
      for (int64_t rows : {int64_t(1), T}) {
        Tensor xi = Tensor::empty(DType::F32, {rows, K}), y = Tensor::empty(DType::F32, {rows, N});
        std::memcpy(xi.data<float>(), x.data(), size_t(rows * K) * 4);
        be->linear(y, xi, l);
        all.insert(all.end(), y.data<float>(), y.data<float>() + rows * N);
      }
    Tensor qt = Tensor::empty(DType::F32, {T, H * D}), kt = Tensor::empty(DType::F32, {S, Hkv * D}),
           vt = Tensor::empty(DType::F32, {S, Hkv * D}), o = Tensor::empty(DType::F32, {T, H * D});
    std::memcpy(qt.data<float>(), q.data(), q.size() * 4);
    std::memcpy(kt.data<float>(), kv.data(), size_t(S * Hkv * D) * 4);
    std::memcpy(vt.data<float>(), kv.data() + S * Hkv * D, size_t(S * Hkv * D) * 4);
    AttentionArgs a;
    a.n_heads = H;
    a.n_kv_heads = Hkv;
    a.head_dim = D;
    a.pos0 = S - T;
    be->attention(o, qt, kt, vt, a);
    all.insert(all.end(), o.data<float>(), o.data<float>() + T * H * D);
    return all;
  };
  const std::vector<float> one = run(1);
  for (int threads : {2, 3}) {
    const int64_t d0 = pool_stats().dispatches;
    const std::vector<float> many = run(threads);
    CHECK(pool_stats().dispatches > d0);  // the loops did run on more than one thread
    REQUIRE(many.size() == one.size());
    CHECK_MESSAGE(std::memcmp(many.data(), one.data(), one.size() * 4) == 0, threads, " threads");
  }
}

TEST_CASE("cpu load: /proc readings are consistent") {
  const CpuTimes a = read_cpu_times();
#if defined(__linux__)
  REQUIRE(a.ok);
  CHECK(a.busy >= 0);
  CHECK(a.total >= a.busy);
  CHECK(a.self >= 0);
#endif
  const MachineLoad m = measure_machine_load(0.1);
  CHECK(m.cpus >= 1);
  if (m.measured) {
    CHECK(m.others_busy >= 0);
    CHECK(m.others_busy <= m.cpus);
  }
  // No time passed: no figure.
  CHECK(others_busy_cores(a, a) == -1);
  CpuTimes bad;
  CHECK(others_busy_cores(bad, a) == -1);
  // Another process kept one of the machine's CPUs busy for the whole window; ours used none.
  CpuTimes a0 = a;
  a0.ok = true;
  CpuTimes b = a0;
  b.total = a0.total + 100 * online_cpus();
  b.busy = a0.busy + 100;
  CHECK(others_busy_cores(a0, b) == doctest::Approx(1.0));
  b.self = a0.self + 100;  // the busy time was ours
  CHECK(others_busy_cores(a0, b) == doctest::Approx(0.0));
}
