// compress: converts a model's weights to a compressed format and writes a minfer model folder
// that run-model, perplexity, embed and bench load directly.
#include "compress/compress.h"

#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "app/model_hub.h"
#include "compress/rotate.h"
#include "compress/structured.h"
#include "models/eval.h"
#include "models/loader.h"
#include "tools/common.h"

using namespace minfer;

int main(int argc, char** argv) {
  CLI::App app{
      "Compress a model (every Linear to one format, embeddings kept in half precision) and "
      "write a model folder that run-model / perplexity / embed / bench load.",
      "compress"};
  std::string model, method, out, calib_path, embed_format, head_format;
  std::vector<std::string> keep;
  int group = 0, calib_samples = 32, threads = 0;
  int64_t calib_len = 512;
  float threshold = 6.f;
  double energy = 0;
  bool per_tensor = false, asym = false, dq = false, ternary_row = false, weighted = false,
       force = false, json_out = false, quiet = false;
  app.add_option("--model,-m", model, "smollm2 | minilm | HF folder | .gguf | minfer folder")
      ->required();
  app.add_option("--method", method,
                 "a method, options folded in (int4-g64, nf4-dq, w8a8-static, ...), or a chain "
                 "applied left to right (a+b). Methods:\n" +
                     methods_help())
      ->required();
  app.add_option("--group", group,
                 "weights per scale along a row (int8, int4: 32/64/128; nf4), per centroid table "
                 "(kmeans: a multiple of 16; default one table per row)")
      ->check(CLI::Range(1, 1 << 20));
  bool per_channel = false;
  app.add_flag("--per-channel", per_channel, "int8: one scale per output row (the default)");
  app.add_flag("--per-tensor", per_tensor, "int8: one scale for the whole matrix");
  app.add_flag("--asym", asym,
               "int4, int4-gptq, int4-awq: an integer zero point per group (min/max; with -clip: "
               "searched range) (= -asym)");
  app.add_flag("--double-quant", dq, "nf4: 8-bit block-256 scales (QLoRA), ~4.127 bits/weight");
  app.add_flag("--ternary-per-row", ternary_row, "ternary: mean|w| per row instead of per tensor");
  app.add_flag("--weighted", weighted,
               "kmeans: weigh each input by its calibration mean x^2 (SqueezeLLM-style; needs "
               "--calibrate); the same as the method suffix -weighted");
  bool act_order = false, clip_search = false, true_sequential = false, refit = false;
  double damp_pct = -1, alpha = -1;
  app.add_flag("--act-order", act_order,
               "GPTQ: round columns by descending diag(XtX), static group scales (= -act)");
  app.add_flag("--true-sequential", true_sequential,
               "GPTQ: each block's XtX from the calibration windows run through the earlier "
               "blocks already quantized, not the float model's (one extra pass of the windows "
               "per block; = -seq)");
  app.add_flag("--refit-scales", refit,
               "GPTQ: after the column sweep, each row's group scales refitted to its codes by "
               "least squares on the calibration XtX (= -refit)");
  app.add_option("--damp", damp_pct, "GPTQ: dampening, percent of mean diag(XtX) (default 1)");
  app.add_flag("--clip-search", clip_search,
               "int4 / int3 / nf4 / GPTQ: per-group scale search weighted by the calibration "
               "inputs' sum x^2 (= -clip)");
  app.add_option("--alpha", alpha,
                 "int4-awq: fixed alpha instead of the grid search; w8a8-static-sq: SmoothQuant "
                 "migration strength (default 0.5); in [0, 1]");
  app.add_option("--energy", energy,
                 "lowrank, lowrank-aw: per matrix the smallest rank keeping this fraction of the "
                 "squared singular values (the method is then given without a size, e.g. "
                 "--method lowrank-aw+int8 --energy 0.9)")
      ->check(CLI::Range(1e-9, 1.0));
  app.add_option("--threshold", threshold, "llm-int8: |x| outlier threshold")
      ->check(CLI::PositiveNumber);
  app.add_option(
      "--calibrate", calib_path,
      "calibration text (e.g. ../shared/data/wikitext-2-raw/wiki.valid.raw): needed "
      "by w8a8-static and lowrank-aw (XᵀX of each linear's inputs); llm-int8 keeps f16 weight "
      "columns for its outlier features");
  app.add_option("--calib-samples", calib_samples,
                 "calibration windows (encoders: whole lines of the text, evenly spread, until "
                 "calib-samples x calib-len tokens)")
      ->check(CLI::Range(1, 100000));
  app.add_option("--calib-len", calib_len, "tokens per calibration window")
      ->check(CLI::Range(int64_t(2), int64_t(1) << 20));
  std::string sparse_storage = "auto";
  app.add_option("--sparse-storage", sparse_storage,
                 "pruned weights: auto (sparse where the measured decode crossover says it is "
                 "faster), sparse (a sparse format, compressed-tensors layout: 2:4 values + 2-bit "
                 "indices after a 2:4 step, the sparse-bitmask format otherwise), bitmask (the "
                 "sparse-bitmask format always), csr (CSR with 16-bit column indices in memory, "
                 "the sparse-bitmask layout on disk; at most 65536 inputs), dense")
      ->check(CLI::IsMember({"auto", "sparse", "bitmask", "csr", "dense"}));
  std::string prune_scope;
  app.add_option("--prune-scope", prune_scope,
                 "magnitude-<pct>: compare |w| per output row (default), per layer, or over the "
                 "whole model")
      ->check(CLI::IsMember({"row", "layer", "global"}));
  app.add_option("--keep", keep,
                 "PATTERN=FORMAT override by HF weight name glob, e.g. "
                 "'*.mlp.down_proj.weight=int8' or 'lm_head.weight=fp16' (repeatable)");
  app.add_option("--embed-format", embed_format,
                 "embedding tables: f32 | fp16 | bf16 (fp16 refuses values beyond +-65504: use "
                 "bf16 then)")
      ->check(CLI::IsMember({"f32", "fp16", "bf16"}));
  app.add_option("--head-format", head_format,
                 "LM head format (default int8 for integer methods; any method name)");
  app.add_option("--out,-o", out, "output folder")->required();
  app.add_flag("--force", force, "replace an existing output folder");
  app.add_option("--threads,-t", threads, "threads")->check(CLI::NonNegativeNumber);
  app.add_flag("--json", json_out, "print the report as JSON");
  app.add_flag("--quiet,-q", quiet, "no progress bars");
  return tool::run(app, argc, argv, [&] {
    const double t0 = tool::now_s();
    double calib_secs = 0;
    if (energy > 0) {
      // --energy E = the size "-e<E>" on every low-rank step of the chain.
      std::string chain;
      bool any = false;
      for (size_t b = 0; b <= method.size();) {
        size_t e = std::min(method.find('+', b), method.size());
        std::string step = method.substr(b, e - b);
        if (step == "lowrank" || step == "lowrank-aw") {
          step += fmt::format("-e{}", energy);
          any = true;
        } else
          MINFER_CHECK(!step.starts_with("lowrank"),
                       "--energy sets the size of '{}': give the method without one (lowrank or "
                       "lowrank-aw)",
                       step);
        chain += (chain.empty() ? "" : "+") + step;
        b = e + 1;
      }
      MINFER_CHECK(any, "--energy: the chain '{}' has no low-rank step (lowrank, lowrank-aw)",
                   method);
      method = chain;
    }
    CompressSpec spec = compress_spec_from_name(method);
    // The option flags set the chain's last step (the quantizer).
    MethodSpec& last = spec.last();
    if (group) last.quant.group = group;
    MINFER_CHECK(!(per_channel && per_tensor), "--per-channel and --per-tensor exclude each other");
    if (per_tensor) last.quant.per_channel = false;
    if (asym) last.quant.asymmetric = true;
    if (dq) last.quant.double_quant = true;
    if (ternary_row) last.quant.ternary_per_row = true;
    if (weighted) last.codebook.weighted = true;
    if (clip_search) last.clip_search = true;
    if (act_order) last.act_order = true;
    if (true_sequential) last.sequential = true;
    if (refit && last.refit == 0) last.refit = 1;
    if (damp_pct != -1) {
      MINFER_CHECK(std::isfinite(damp_pct) && damp_pct > 0 && damp_pct < 100,
                   "--damp: percent of mean diag(XtX) in (0, 100), got {}", damp_pct);
      last.damp = damp_pct / 100.0;
    }
    if (alpha != -1) {
      MINFER_CHECK(std::isfinite(alpha) && alpha >= 0 && alpha <= 1,
                   "--alpha must be in [0, 1], got {}", alpha);
      last.alpha = alpha;
    }
    for (MethodSpec& step : spec.steps) step.threshold = threshold;
    spec.sparse_storage = sparse_storage_from_name(sparse_storage);
    if (!prune_scope.empty()) {
      bool any = false;
      for (MethodSpec& step : spec.steps)
        if (step.is_prune()) {
          step.prune.scope = prune_scope == "layer"    ? PruneScope::Layer
                             : prune_scope == "global" ? PruneScope::Global
                                                       : PruneScope::Row;
          any = true;
        }
      MINFER_CHECK(any, "--prune-scope: the chain '{}' has no prune step", method);
    }
    spec.embed_format = embed_format;
    spec.head_format = head_format;
    for (const std::string& k : keep) {
      const size_t eq = k.rfind('=');
      MINFER_CHECK(eq != std::string::npos && eq > 0 && eq + 1 < k.size(),
                   "--keep '{}': expected PATTERN=FORMAT", k);
      spec.keep.emplace_back(k.substr(0, eq), k.substr(eq + 1));
      compress_spec_from_name(spec.keep.back().second);  // validate before loading anything
    }
    validate_compress_spec(spec);  // before loading anything
    MINFER_CHECK(!(spec.needs_calibration() && calib_path.empty()),
                 "{} needs --calibrate FILE (activation scales come from a calibration pass)",
                 compress_spec_name(spec));
    const bool structured = has_structured_steps(spec);
    MINFER_CHECK(!(structured && calib_path.empty()),
                 "{} needs --calibrate FILE (head / neuron / block importance comes from a "
                 "calibration pass, e.g. wiki.valid.raw)",
                 compress_spec_name(spec));
    if (!force)
      MINFER_CHECK(!std::filesystem::exists(out),
                   "{}: output already exists (pass --force to replace it)", out);

    auto be = make_backend("cpu", threads);
    // A folder without tokenizer.json (e.g. a bare checkpoint) compresses too, unless calibration
    // needs text turned into ids.
    const std::string resolved = resolve_model(model);
    const bool has_tok =
        !std::filesystem::is_directory(resolved) ||
        std::filesystem::exists(std::filesystem::path(resolved) / "tokenizer.json");
    MINFER_CHECK(has_tok || calib_path.empty(), "{}: --calibrate needs the model's tokenizer.json",
                 resolved);
    // Compression starts from f32 weights: a GGUF input is dequantized at load.
    LoadedModel lm = open_model(resolved, *be, has_tok, GgufWeights::F32);
    const bool encoder = !lm.model->config().causal();
    MINFER_CHECK(!(structured && encoder),
                 "{}: head / neuron / block removal is calibrated on causal LMs only, and '{}' is "
                 "a '{}' model",
                 compress_spec_name(spec), resolved, lm.model->config().model_type);
    // A rotation (compress/rotate.h) before any calibration: the data-aware steps see the rotated
    // model's activations. With structured steps it runs after them (below).
    RotateReport rot;
    if (!structured) rot = rotate_for_spec(*lm.model, spec);
    ActStats stats;
    const ActStats* sp = nullptr;
    std::vector<int32_t> ids;  // the calibration text's tokens (causal LMs)
    if (!calib_path.empty()) {
      std::ifstream f(calib_path, std::ios::binary);
      MINFER_CHECK(f.good(), "{}: cannot open calibration text", calib_path);
      std::stringstream ss;
      ss << f.rdbuf();
      bool gram = spec.needs_gram();
      for (const auto& [pat, f] : spec.keep) gram = gram || compress_spec_from_name(f).needs_gram();
      if (encoder) {  // sentences, encoded as embed does, calib_samples x calib_len tokens
        const auto seqs = encoder_calibration_sequences(
            *lm.tokenizer, ss.str(), read_sentence_embedding_config(resolved),
            lm.model->config().max_pos, int64_t(calib_samples) * calib_len);
        const double tc = tool::now_s();
        stats = calibrate_encoder(*lm.model, seqs, !quiet, gram);
        calib_secs = tool::now_s() - tc;
        sp = &stats;
      }
      if (!encoder) ids = lm.tokenizer->encode(ss.str(), true);
      if (structured) {  // whole-model steps first: the quantizers see the smaller model
        lm.model = prune_structured(*lm.model, spec, ids, calib_samples, calib_len, !quiet);
        rot = rotate_for_spec(*lm.model, spec);  // then a rotation (compress/rotate.h)
      }
      if (!encoder && (spec.uses_calibration() || !structured)) {
        const double tc = tool::now_s();
        stats = calibrate(*lm.model, ids, calib_samples, calib_len, !quiet, gram);
        calib_secs = tool::now_s() - tc;
        sp = &stats;
      }
    }
    const SequentialCalibration seq{&ids, calib_samples, calib_len};
    CompressReport r = compress_model(*lm.model, spec, sp, !quiet, ids.empty() ? nullptr : &seq);
    save_compressed(*lm.model, lm.tokenizer.get(), out, spec, force, lm.path);
    const size_t file_bytes = model_file_bytes(out);
    const double secs = tool::now_s() - t0;

    std::map<std::string, std::pair<int, size_t>> by_format;
    for (const TensorReport& t : r.tensors) {
      by_format[t.format].first += 1;
      by_format[t.format].second += t.bytes;
    }
    if (json_out) {
      nlohmann::json j = {{"model", lm.path},
                          {"method", compress_spec_name(spec)},
                          {"out", out},
                          {"bytes_before", r.bytes_before},
                          {"bytes_after", r.bytes_after},
                          {"file_bytes", file_bytes},
                          {"params", r.params},
                          {"bits_per_weight", r.bits_per_weight},
                          {"linear_bits_per_weight", r.linear_bpw},
                          {"calibration_tokens", stats.tokens},
                          {"calibration_seconds", calib_secs},
                          {"smooth_seconds", r.smooth_seconds},
                          {"sequential_calibration_seconds", r.sequential_seconds},
                          {"smooth_alpha", r.smooth_alpha},
                          {"rotation_dim", rot.dim},
                          {"rotation_head_dim", rot.head_dim},
                          {"rotation_seconds", rot.seconds},
                          {"seconds", secs},
                          {"peak_rss_mb", tool::peak_rss_mb()}};
      nlohmann::json ts = nlohmann::json::array();
      for (const TensorReport& t : r.tensors)
        ts.push_back({{"name", t.name},
                      {"format", t.format},
                      {"params", t.params},
                      {"bytes", t.bytes},
                      {"rel_err", t.rel_err}});
      j["tensors"] = ts;
      std::printf("%s\n", j.dump(2).c_str());
      return 0;
    }
    std::printf("%s -> %s (%s)\n", lm.path.c_str(), out.c_str(), compress_spec_name(spec).c_str());
    std::printf("weights: %.1f MB -> %.1f MB (%.2fx), file %.1f MB\n", r.bytes_before / 1e6,
                r.bytes_after / 1e6, double(r.bytes_before) / double(r.bytes_after),
                file_bytes / 1e6);
    std::printf("bits/weight: %.3f over all %lld parameters, %.3f over the block linears\n",
                r.bits_per_weight, (long long)r.params, r.linear_bpw);
    for (const auto& [f, c] : by_format)
      std::printf("  %-14s %4d tensors %9.1f MB\n", f.c_str(), c.first, c.second / 1e6);
    double worst = 0;
    std::string worst_name;
    for (const TensorReport& t : r.tensors)
      if (t.rel_err > worst) worst = t.rel_err, worst_name = t.name;
    if (!worst_name.empty())
      std::printf("largest relative error ||W - W'||/||W||: %.4f (%s)\n", worst,
                  worst_name.c_str());
    if (stats.tokens > 0)
      std::printf("calibration: %lld tokens, %.1f s (deterministic: windows evenly spaced)\n",
                  (long long)stats.tokens, calib_secs);
    if (r.sequential_seconds > 0)
      std::printf("true-sequential calibration: %.1f s (each block run on the kept windows)\n",
                  r.sequential_seconds);
    if (rot.dim > 0 || rot.head_dim > 0)
      std::printf("rotation:%s%s, %d linears, %.1f s%s\n",
                  rot.dim ? fmt::format(" residual stream {0} x {0}", rot.dim).c_str() : "",
                  rot.head_dim ? fmt::format(" heads {0} x {0}", rot.head_dim).c_str() : "",
                  rot.linears, rot.seconds, rot.untied ? "; the tied head is now lm_head" : "");
    if (r.smooth_sites > 0) {
      std::map<double, int> hist;  // α -> consumers
      for (const auto& [name, a] : r.smooth_alpha) ++hist[a];
      std::string h;
      for (const auto& [a, n] : hist) h += fmt::format(" {:g}:{}", a, n);
      std::printf("channel scaling: %d folds, %.1f s; alpha:consumers%s\n", r.smooth_sites,
                  r.smooth_seconds, h.c_str());
    }
    std::printf("%.1f s, peak RSS %.0f MB\n", secs, tool::peak_rss_mb());
    return 0;
  });
}
