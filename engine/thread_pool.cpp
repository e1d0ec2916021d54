#include "engine/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <string_view>
#include <thread>
#include <vector>

#include "engine/cpu_load.h"

namespace minfer {

namespace {

using Clock = std::chrono::steady_clock;

// A worker spins this long after its last chunk before it sleeps: the gap between two decode ops
// (a norm, a residual add) is a few microseconds, between two tokens some tens.
constexpr auto kSpin = std::chrono::microseconds(100);
// The caller, once its own chunks are done, spins this long for the workers' chunks, then yields
// its core (to a worker the OS preempted, if it shares the core).
constexpr auto kWaitSpin = std::chrono::microseconds(50);
// The load back-off re-reads the CPU counters at most this often.
constexpr auto kLoadPeriod = std::chrono::milliseconds(200);
constexpr int64_t kMaxChunksPerThread = 8;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

thread_local bool t_in_pool =
    false;  // inside a chunk (worker or caller): nested loops run serially

// One worker's wake-up word, on its own cache line: the caller stores the dispatch's generation.
struct alignas(64) Slot {
  std::atomic<uint32_t> gen{0};
};

class Pool {
 public:
  ~Pool() { stop_workers(); }

  void set_threads(int n) {
    std::lock_guard<std::mutex> cfg(cfg_mu_);
    std::lock_guard<std::mutex> run(run_mu_);
    n = n > 0 ? n : online_cpus();
    if (n == threads_.load()) return;
    stop_workers();
    threads_ = n;
    active_.store(n, std::memory_order_relaxed);
    slots_ = std::make_unique<Slot[]>(size_t(std::max(1, n - 1)));
    stop_.store(false);
    for (int i = 0; i + 1 < n; ++i) workers_.emplace_back([this, i] { worker(i); });
  }
  int threads() const { return threads_.load(std::memory_order_relaxed); }
  void set_backoff(bool on) {
    backoff_.store(on);
    if (!on) active_.store(threads_.load());
  }

  void pin_active(int n) {
    std::lock_guard<std::mutex> run(run_mu_);
    if (n > 0) {
      if (!pinned_) backoff_before_pin_ = backoff_.load();
      pinned_ = true;
      backoff_.store(false);
      active_.store(std::clamp(n, 1, threads_.load()));
    } else if (pinned_) {
      pinned_ = false;
      have_sample_ = false;
      active_.store(threads_.load());
      backoff_.store(backoff_before_pin_);
    }
  }

  int active_now() {
    std::unique_lock<std::mutex> lock(run_mu_, std::try_to_lock);
    if (lock.owns_lock()) update_load();  // else a dispatch runs and keeps the sample fresh
    return std::clamp(active_.load(std::memory_order_relaxed), 1, threads_.load());
  }

  PoolStats stats() const {
    PoolStats s;
    s.threads = threads_.load();
    s.active = active_.load();
    s.others_busy = others_busy_.load();
    s.dispatches = dispatches_.load();
    return s;
  }

  void run(int64_t n, int64_t chunks, pool_detail::ChunkFn fn, const void* ctx) {
    std::unique_lock<std::mutex> lock(run_mu_, std::try_to_lock);
    if (t_in_pool || threads_ <= 1 || !lock.owns_lock()) return serial(n, chunks, fn, ctx);
    update_load();
    const int act = std::min(threads_.load(), active_.load(std::memory_order_relaxed));
    if (act <= 1) return serial(n, chunks, fn, ctx);
    dispatches_.fetch_add(1, std::memory_order_relaxed);

    const uint32_t g = ++gen_;
    fn_ = fn;
    ctx_ = ctx;
    n_ = n;
    n_chunks_.store(chunks, std::memory_order_relaxed);
    done_.store(0, std::memory_order_relaxed);
    error_ = nullptr;
    next_.store(uint64_t(g) << 32, std::memory_order_release);
    for (int w = 0; w + 1 < act; ++w) {
      slots_[size_t(w)].gen.store(g, std::memory_order_release);
      slots_[size_t(w)].gen.notify_one();
    }
    t_in_pool = true;
    work(g);
    t_in_pool = false;
    // Wait for the chunks other threads claimed (never for a thread that has not started).
    const auto t0 = Clock::now();
    for (int it = 0; done_.load(std::memory_order_acquire) < chunks; ++it) {
      if (it < 64 || Clock::now() - t0 < kWaitSpin)
        cpu_relax();
      else
        std::this_thread::yield();
    }
    if (error_) std::rethrow_exception(error_);
  }

 private:
  static void serial(int64_t n, int64_t chunks, pool_detail::ChunkFn fn, const void* ctx) {
    const bool outer = !t_in_pool;
    t_in_pool = true;
    try {
      for (int64_t c = 0; c < chunks; ++c) fn(ctx, n * c / chunks, n * (c + 1) / chunks);
    } catch (...) {
      if (outer) t_in_pool = false;
      throw;
    }
    if (outer) t_in_pool = false;
  }

  // Claims and runs chunks of dispatch g until none is left (or a newer dispatch began).
  void work(uint32_t g) {
    for (;;) {
      uint64_t v = next_.load(std::memory_order_acquire);
      if (uint32_t(v >> 32) != g) return;
      const int64_t idx = int64_t(v & 0xffffffffu);
      if (idx >= n_chunks_.load(std::memory_order_relaxed)) return;
      if (!next_.compare_exchange_weak(v, v + 1, std::memory_order_acq_rel)) continue;
      // The job's fields stay valid: the dispatch cannot end before this chunk counts as done.
      const int64_t nc = n_chunks_.load(std::memory_order_relaxed);
      try {
        fn_(ctx_, n_ * idx / nc, n_ * (idx + 1) / nc);
      } catch (...) {
        std::lock_guard<std::mutex> l(err_mu_);
        if (!error_) error_ = std::current_exception();
      }
      done_.fetch_add(1, std::memory_order_release);
    }
  }

  void worker(int id) {
    Slot& s = slots_[size_t(id)];
    uint32_t seen = s.gen.load(std::memory_order_acquire);
    t_in_pool = true;
    for (;;) {
      uint32_t g = s.gen.load(std::memory_order_acquire);
      const auto t0 = Clock::now();
      for (int it = 0; g == seen && !stop_.load(std::memory_order_relaxed); ++it) {
        cpu_relax();
        if ((it & 63) == 63 && Clock::now() - t0 > kSpin) {
          s.gen.wait(seen, std::memory_order_acquire);  // futex sleep until the caller stores
        }
        g = s.gen.load(std::memory_order_acquire);
      }
      if (stop_.load()) return;
      seen = g;
      work(g);
    }
  }

  void stop_workers() {
    stop_.store(true);
    for (int i = 0; i + 1 < threads_.load() && slots_; ++i) {
      slots_[size_t(i)].gen.fetch_add(1);
      slots_[size_t(i)].gen.notify_one();
    }
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  // Every kLoadPeriod: the cores other processes kept busy since the last reading decide how many
  // threads take part (round(cores - others), at least 1, at most threads()).
  void update_load() {
    if (!backoff_.load(std::memory_order_relaxed)) return;
    const auto now = Clock::now();
    if (have_sample_ && now - sample_time_ < kLoadPeriod) return;
    const CpuTimes t = read_cpu_times();
    if (have_sample_) {
      const double o = others_busy_cores(sample_, t);
      if (o >= 0) {
        others_busy_.store(o);
        const long free = std::lround(double(online_cpus()) - o);
        active_.store(int(std::clamp<long>(free, 1, threads_.load())));
      }
    }
    sample_ = t;
    sample_time_ = now;
    have_sample_ = t.ok;
  }

  std::mutex cfg_mu_, run_mu_, err_mu_;
  std::atomic<int> threads_{1};  // read without the lock by chunks_for()
  std::vector<std::thread> workers_;
  std::unique_ptr<Slot[]> slots_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> backoff_{true};
  std::atomic<int> active_{1};
  bool pinned_ = false, backoff_before_pin_ = true;  // pin_active (tests), under run_mu_

  // The current dispatch. next_ packs (generation << 32) | next chunk index; the job's fields are
  // written before next_ is released and read only by a thread that claimed one of its chunks.
  uint32_t gen_ = 0;
  alignas(64) std::atomic<uint64_t> next_{0};
  alignas(64) std::atomic<int64_t> done_{0};
  std::atomic<int64_t> n_chunks_{0};
  pool_detail::ChunkFn fn_ = nullptr;
  const void* ctx_ = nullptr;
  int64_t n_ = 0;
  std::exception_ptr error_;

  // Load back-off state (touched by the dispatching thread under run_mu_).
  bool have_sample_ = false;
  CpuTimes sample_;
  Clock::time_point sample_time_;
  std::atomic<double> others_busy_{0};
  std::atomic<int64_t> dispatches_{0};
};

Pool& pool() {
  static Pool* p = [] {
    auto* q = new Pool();  // never destroyed: workers may outlive static destructors' order
    if (const char* s = std::getenv("MINFER_POOL_BACKOFF"); s && std::string_view(s) == "0")
      q->set_backoff(false);
    return q;
  }();
  return *p;
}

}  // namespace

namespace pool_detail {

void run(int64_t n, int64_t chunks, ChunkFn fn, const void* ctx) {
  pool().run(n, chunks, fn, ctx);
}

void pin_active_for_testing(int n) {
  pool().pin_active(n);
}

int64_t chunks_for(int64_t n, int64_t work_per_item, int64_t min_work) {
  const int t = pool().threads();
  if (t <= 1 || n <= 1) return 1;
  const double total = double(n) * double(std::max<int64_t>(1, work_per_item));
  const int64_t by_work = int64_t(total / double(std::max<int64_t>(1, min_work)));
  return std::clamp<int64_t>(std::min(by_work, kMaxChunksPerThread * t), 1, n);
}

}  // namespace pool_detail

void set_pool_threads(int n) {
  pool().set_threads(n);
}
int pool_threads() {
  return pool().threads();
}
void set_pool_backoff(bool on) {
  pool().set_backoff(on);
}
PoolStats pool_stats() {
  return pool().stats();
}
int pool_active_threads() {
  return pool().active_now();
}

}  // namespace minfer
