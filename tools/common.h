// Shared bits of the thin tool mains: error handling, peak RSS, timing.
#pragma once
#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <exception>
#include <functional>
#include <string>

#include "models/loader.h"

namespace minfer::tool {

// --dtype for GGUF inputs: "native" runs block-quantized weights (Q4_1, Q8_0, ...) as stored,
// "f32" dequantizes them at load (the f32 baseline). Other inputs ignore it.
inline void add_gguf_dtype(CLI::App& app, std::string& v) {
  app.add_option("--dtype", v,
                 "GGUF weights: native (run Q4_0/Q4_1/Q5_x/Q8_0/Q2_K..Q6_K blocks as stored, "
                 "zero-copy) | f32 (dequantize at load)")
      ->check(CLI::IsMember({"native", "f32"}));
}
inline GgufWeights gguf_weights(const std::string& v) {
  return v == "f32" ? GgufWeights::F32 : GgufWeights::Native;
}
// --kv-cache: the element type of a causal LM's KV cache (Model::set_kv_cache_dtype).
inline void add_kv_cache(CLI::App& app, std::string& v) {
  app.add_option("--kv-cache", v,
                 "KV cache: f32 (default) | f16 (half the cache memory and the bytes a decode "
                 "step reads from it; keys and values rounded to fp16; CPU and CUDA backends)")
      ->check(CLI::IsMember({"f32", "f16"}));
}
inline void set_kv_cache(Model& m, const std::string& v) {
  m.set_kv_cache_dtype(v == "f16" ? DType::F16 : DType::F32);
}
// Prints the loader's line on the weight formats (GGUF only) to stderr.
inline void say_weights(const LoadedModel& lm) {
  if (!lm.weights_summary.empty()) std::fprintf(stderr, "%s\n", lm.weights_summary.c_str());
}

inline double peak_rss_mb() {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return double(ru.ru_maxrss) / 1024.0;
}

inline double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Runs a tool body: CLI parse errors print help/usage, library errors print one line, exit 1.
inline int run(CLI::App& app, int argc, char** argv, const std::function<int()>& body) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    return body();
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "%s: error: %s\n", app.get_name().c_str(), e.what());
    return 1;
  }
}

}  // namespace minfer::tool
