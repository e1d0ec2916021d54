// make bench: decode attention (one query token) at depth S on SmolLM2-135M's shape (30 layers, 9
// query heads over 3 KV heads of 64), through the CPU backend's attention op, with F32 and F16 KV
// caches in the two layouts the op takes: head-major [Hkv, max_ctx, D] ("heads", what the CPU
// backend's models allocate) and rows [max_ctx, Hkv*D] ("rows"), each a view of the first S
// positions of a cache with room for S + 128. Between tokens 64 MB are streamed through the
// caches, as a real decode's weights do, so each token reads its KV cache from memory. Prints
// milliseconds per token (all 30 layers, median and minimum of the timed tokens) and the cache
// bytes read per second; layouts alternate token by token, so load changes hit both alike.
// Usage: bench_attention_decode [THREADS=2] [DEPTHS=128,512,2048] [CACHES=f32,f16] [TOKENS=25]
//        [LAYOUTS=heads,rows]
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/half.h"

using namespace minfer;

namespace {

volatile long g_sink;

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

}  // namespace

// A whole number in [1, max], or -1.
int64_t parse_positive(const std::string& s, int64_t max) {
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  return !s.empty() && end && *end == '\0' && errno == 0 && v > 0 && v <= max ? int64_t(v) : -1;
}

int main(int argc, char** argv) {
  const char* usage =
      "usage: bench_attention_decode [THREADS=2] [DEPTHS=128,512,2048] [CACHES=f32,f16] "
      "[TOKENS=25] [LAYOUTS=heads,rows]\n";
  if (argc > 1 && (std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0)) {
    std::printf("%s", usage);
    return 0;
  }
  // Every argument checked before anything runs.
  const int64_t threads = argc > 1 ? parse_positive(argv[1], 1024) : 2;
  const int64_t tokens = argc > 4 ? parse_positive(argv[4], 100000) : 25;
  const std::vector<std::string> depth_args = split(argc > 2 ? argv[2] : "128,512,2048");
  const std::vector<std::string> caches = split(argc > 3 ? argv[3] : "f32,f16");
  const std::vector<std::string> layouts = split(argc > 5 ? argv[5] : "heads,rows");
  std::vector<int64_t> depths;
  for (const std::string& d : depth_args) depths.push_back(parse_positive(d, int64_t(1) << 20));
  std::string bad;
  if (threads < 1)
    bad = "THREADS must be a whole number in [1, 1024], found '" + std::string(argv[1]) + "'";
  if (tokens < 1)
    bad = "TOKENS must be a whole number in [1, 100000], found '" + std::string(argv[4]) + "'";
  for (size_t i = 0; i < depths.size(); ++i)
    if (depths[i] < 1)
      bad = "each depth must be a whole number in [1, 1048576], found '" + depth_args[i] + "'";
  if (depths.empty()) bad = "no depth given";
  for (const std::string& c : caches)
    if (c != "f32" && c != "f16") bad = "each cache must be f32 or f16, found '" + c + "'";
  if (caches.empty()) bad = "no cache type given";
  for (const std::string& l : layouts)
    if (l != "heads" && l != "rows") bad = "each layout must be heads or rows, found '" + l + "'";
  if (layouts.empty()) bad = "no layout given";
  if (!bad.empty()) {
    std::fprintf(stderr, "bench_attention_decode: %s\n%s", bad.c_str(), usage);
    return 2;
  }
  auto be = make_cpu_backend(int(threads));
  const int64_t L = 30, H = 9, Hkv = 3, D = 64;
  std::vector<char> flush(size_t(64) << 20, 1);
  long sink = 0;
  std::printf(
      "decode attention, SmolLM2-135M shape (30 layers, %lld:%lld heads, D %lld), %d threads, "
      "median of %d tokens\n",
      (long long)H, (long long)Hkv, (long long)D, int(threads), int(tokens));
  std::printf("%-6s %-5s %-6s %12s %12s %10s %8s\n", "depth", "cache", "layout", "ms/token",
              "min ms", "cache MB", "GB/s");
  for (const int64_t S : depths) {
    for (const std::string& cs : caches) {
      const bool f16 = cs == "f16";
      const DType dt = f16 ? DType::F16 : DType::F32;
      // Keys and values in [-1, 1) from a linear congruential sequence (cheap; any values do).
      uint32_t state = 12345;
      auto next = [&] {
        state = state * 1664525u + 1013904223u;
        return float(state >> 8) / float(1u << 23) - 1.f;
      };
      // ks[layout][layer]: the same values in each layout (element i of the row layout's first
      // S rows is element i of the head-major one's, in another place: the figures compare
      // layouts, not values).
      const int64_t cap = S + 128;
      std::vector<std::vector<Tensor>> ks(layouts.size()), vs(layouts.size());
      for (int64_t l = 0; l < L; ++l) {
        Tensor k = Tensor::empty(dt, {Hkv, cap, D}), v = Tensor::empty(dt, {Hkv, cap, D});
        for (int64_t i = 0; i < k.numel(); ++i) {
          if (f16) {
            k.data<uint16_t>()[i] = f32_to_f16(next());
            v.data<uint16_t>()[i] = f32_to_f16(next());
          } else {
            k.data<float>()[i] = next();
            v.data<float>()[i] = next();
          }
        }
        for (size_t li = 0; li < layouts.size(); ++li) {
          const bool heads = layouts[li] == "heads";
          Tensor kl = heads ? k : k.view({cap, Hkv * D}), vl = heads ? v : v.view({cap, Hkv * D});
          ks[li].push_back(kl.slice(heads ? 1 : 0, 0, S));
          vs[li].push_back(vl.slice(heads ? 1 : 0, 0, S));
        }
      }
      Tensor q = Tensor::empty(DType::F32, {1, H * D}), o = Tensor::empty(DType::F32, {1, H * D});
      for (int64_t i = 0; i < q.numel(); ++i) q.data<float>()[i] = 0.1f * next();
      const AttentionArgs a{H, Hkv, D, 1, S - 1, true, nullptr, 0.f};
      std::vector<std::vector<double>> ts(layouts.size());
      for (int64_t rep = 0; rep < tokens + 2; ++rep)
        for (size_t li = 0; li < layouts.size(); ++li) {
          for (size_t i = 0; i < flush.size(); i += 64) sink += flush[i]++;
          const auto t0 = std::chrono::steady_clock::now();
          for (int64_t l = 0; l < L; ++l)
            be->attention(o, q, ks[li][size_t(l)], vs[li][size_t(l)], a);
          const double t =
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
          if (rep >= 2) ts[li].push_back(t);  // two warm-up tokens
        }
      for (size_t li = 0; li < layouts.size(); ++li) {
        std::sort(ts[li].begin(), ts[li].end());
        const double med = ts[li][ts[li].size() / 2];
        const double bytes = double(L) * double(S) * double(Hkv * D) * 2 * (f16 ? 2 : 4);
        std::printf("%-6lld %-5s %-6s %12.3f %12.3f %10.1f %8.2f\n", (long long)S, cs.c_str(),
                    layouts[li].c_str(), med * 1e3, ts[li][0] * 1e3, bytes / 1e6,
                    bytes / med / 1e9);
      }
    }
  }
  g_sink = sink;  // keeps the streaming reads
  return 0;
}
