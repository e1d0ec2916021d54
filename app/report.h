// The compression benchmark's results (`bench`): one row per method, and the three ways they are
// written out: a Markdown table, JSON (round-trips), and an SVG plot (quality against file size,
// decode speed as bars). Kept in the library so tests reach the formatting without running models.
//
// Missing values (a failed or skipped row, decode of an encoder, Δppl without an f32 row) are NaN
// in memory, "-" in the table and null in JSON. Sizes are in MB = 1e6 bytes.
#pragma once
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace minfer {

inline constexpr double kBenchNaN = std::numeric_limits<double>::quiet_NaN();

struct BenchRow {
  std::string method;          // compress_spec_from_name spelling, e.g. "int4-g64", "f32"
  std::string status = "ok";   // ok | skipped | failed
  std::string note;            // why a row was skipped or failed
  double bits_per_weight = 0;  // every weight, embeddings included (CompressReport)
  double linear_bpw = 0;       // the transformer-block linears only
  double file_mb = 0;          // *.safetensors of the saved folder
  double peak_rss_mb = 0;      // the measuring process after load + prefill + decode
  double eval_rss_mb = 0;      // the measuring process at the end (perplexity logits included)
  double compress_rss_mb = 0;  // the compressing process (f32 model + calibration + packing)
  double compress_s = 0;       // calibrate + compress + save
  double eval_s = 0;           // the quality pass (perplexity or embeddings)
  // Quality: causal LMs.
  double ppl = 0;
  double delta_ppl = 0;  // ppl - ppl of the f32 row
  // Quality: encoders (mean pooled embeddings against the f32 model's).
  double cosine = 0;      // mean over the texts
  double cosine_min = 0;  // worst text
  // Speed.
  double prefill_tps = 0;  // one forward of the prefill tokens (encoders: one sequence), best of N
  double decode_tps = 0;   // one token at a time through the KV cache (NaN for encoders)
  double weight_bytes_per_token = 0;  // bytes of every Linear (lm_head included) read per token
  double decode_gbps = 0;             // weight_bytes_per_token x decode_tps / 1e9
  // CPU cores other processes kept busy while this row's speed was timed (the larger of a 0.5 s
  // sample just before and the timed window itself; engine/cpu_load.h). NaN: not measured.
  double load_cores = kBenchNaN;
};

// Other processes' load at or above which a row's speeds count as taken on a busy machine (a
// quarter of a core: enough to slow a 2-thread decode measurably).
constexpr double kBusyCores = 0.25;
bool bench_row_busy(const BenchRow& x);

struct BenchReport {
  std::string model;  // as given (smollm2, a folder, a .gguf)
  std::string arch;   // llama | gpt2 | bert
  bool encoder = false;
  std::string backend;
  std::string kv_cache = "f32";  // the causal rows' KV cache element type: f32 | f16
  int threads = 0;
  std::string cpu;   // /proc/cpuinfo "model name"
  std::string date;  // UTC, ISO 8601
  double load_avg = 0;
  int cpus = 0;             // online CPUs (the load figures' scale)
  std::string text;         // evaluation text
  int64_t eval_tokens = 0;  // tokens (causal) or texts (encoder) evaluated
  int64_t ctx = 0;          // perplexity window
  int64_t prefill_tokens = 0, decode_tokens = 0;
  std::vector<BenchRow> rows;
};

// Fills delta_ppl of every row from the "f32" row (NaN when there is none or it failed).
void bench_fill_baseline(BenchReport& r);

// The rows whose speeds were timed on a busy machine, and a sentence saying so ("" when none).
std::string bench_busy_note(const BenchReport& r);

// A Markdown pipe table, every column padded to one width so it also reads as plain text,
// preceded by a line describing the machine and followed by the notes of skipped/failed rows.
// Speeds timed on a busy machine carry a '*' and the busy note follows the table.
std::string bench_markdown(const BenchReport& r);
// The table alone (no header line, no notes).
std::string bench_table(const BenchReport& r);

std::string bench_json(const BenchReport& r);  // pretty-printed
BenchReport bench_from_json(const std::string& text);
std::string bench_row_json(const BenchRow& row);  // one line
BenchRow bench_row_from_json(const std::string& text);

// Two panels: quality (perplexity, or 1 - cosine for encoders) against file MB, one labelled
// point per measured row, log axes where the values span a decade or more; and decode tok/s
// (encode tok/s for encoders) per method as bars. Bars timed on a busy machine are grey and the
// busy note is printed in red under the title.
std::string bench_svg(const BenchReport& r);

// One line series of a curves plot: (x, y) points in x order.
struct CurveSeries {
  std::string name;
  std::vector<std::pair<double, double>> points;
};

// Line plots in one panel (training curves: x = optimizer step, y = loss), one colour and legend
// entry per series; the y axis is logarithmic when the values span a decade or more. Points that
// are not finite are skipped. Throws when no series has a finite point.
std::string curves_svg(const std::string& title, const std::string& xlabel,
                       const std::string& ylabel, const std::vector<CurveSeries>& series);

// The curves of a `distill` training log (training_log.json: its "steps" and "eval" arrays), one
// series per entry of `which`, named "<label> <what>":
//   "loss" (the training loss), "kd" (the KL part, before α·T²), "ce" (training cross-entropy),
//   per optimizer step, each the trailing mean of the last `smooth` (>= 1) steps; "kd" is left
//   out when the run's alpha is 0 and "ce" when it is 1 (the log holds zeros there);
//   "eval": the held-out NLL at each evaluation (an encoder log: the held-out embedding MSE).
// `source` names the log in errors. Throws for text that is not JSON, a log without these arrays
// or with a value that is not a number, an unknown series name, or smooth < 1.
std::vector<CurveSeries> training_log_curves(const std::string& json_text, const std::string& label,
                                             const std::vector<std::string>& which, int smooth,
                                             const std::string& source);

// Writes `path.tmp` then renames it over `path`, so a reader never sees half a file.
void write_file_atomic(const std::string& path, const std::string& content);

}  // namespace minfer
