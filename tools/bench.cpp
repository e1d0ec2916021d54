// bench: every compression method on one model, one row each: bits/weight, file size, peak RSS,
// quality (WikiText-2 perplexity and Δ against f32 for causal LMs; mean cosine of the sentence
// embeddings to the f32 model's for encoders), prefill and decode speed, and the GB/s of weight
// reads decode achieves. Prints a Markdown table; --json and --plot write the same rows.
//
// Each method runs in two forked processes, so every measurement has its own peak RSS and no
// method inherits another's memory: one loads the f32 model, compresses it (calibrating on
// WikiText-2 *validation* text when the method needs activation statistics) and saves a
// compressed folder; the other opens that folder the way any user would (open_model) and
// measures it. Results come back through a pipe as JSON. The parent never runs a model, so it
// stays small and never starts an OpenMP thread pool before forking.
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "app/default_data.h"
#include "app/model_hub.h"
#include "app/report.h"
#include "compress/compress.h"
#include "compress/rotate.h"
#include "compress/structured.h"
#include "engine/cpu_load.h"
#include "engine/progress.h"
#include "models/eval.h"
#include "models/loader.h"
#include "tools/common.h"

using namespace minfer;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

struct Options {
  std::string model, methods, work, json_path, plot_path, backend = "cpu", test_text, calib_text;
  int64_t max_tokens = 16384, ctx = 512, prefill = 512, decode = 64;
  int lines = 200, reps = 2, calib_samples = 4, threads = 0, device = 0;
  int64_t calib_len = 512;
  bool keep_files = false, quiet = false;
  std::string sparse_storage = "auto";  // pruned weights: auto | sparse | bitmask | csr | dense
  std::string kv_cache = "f32";         // causal models' KV cache: f32 | f16
};

// ---- small helpers ----

std::string find_text(const std::string& given, const char* file) {
  if (!given.empty()) return given;
  return find_wikitext(file, std::string("pass --") +
                                 (std::string(file) == "wiki.test.raw" ? "test" : "calib") +
                                 "-text FILE");
}

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  MINFER_CHECK(f.good(), "{}: cannot open text", path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

template <class T>
void write_vec(const std::string& path, const std::vector<T>& v) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(v.data()), std::streamsize(v.size() * sizeof(T)));
  MINFER_CHECK(f.good(), "{}: write failed", path);
}

template <class T>
std::vector<T> read_vec(const std::string& path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  MINFER_CHECK(f.good(), "{}: cannot open", path);
  const auto n = size_t(f.tellg());
  MINFER_CHECK(n % sizeof(T) == 0, "{}: {} bytes is not a whole number of elements", path, n);
  std::vector<T> v(n / sizeof(T));
  f.seekg(0);
  f.read(reinterpret_cast<char*>(v.data()), std::streamsize(n));
  MINFER_CHECK(f.good(), "{}: read failed", path);
  return v;
}

// The first `n` non-blank lines of WikiText (headings included), trimmed, ordered by length:
// embed_texts pads each batch to its longest text, and WikiText paragraphs run from 3 to 250+
// tokens, so batching similar lengths together halves the work. Every child uses this one order.
std::vector<std::string> wiki_lines(const std::string& path, int n) {
  std::ifstream f(path);
  MINFER_CHECK(f.good(), "{}: cannot open text", path);
  std::vector<std::string> out;
  for (std::string l; int(out.size()) < n && std::getline(f, l);) {
    const auto a = l.find_first_not_of(" \t\r");
    if (a == std::string::npos) continue;
    out.push_back(l.substr(a, l.find_last_not_of(" \t\r") - a + 1));
  }
  MINFER_CHECK(!out.empty(), "{}: no non-blank lines", path);
  std::stable_sort(out.begin(), out.end(),
                   [](const std::string& a, const std::string& b) { return a.size() < b.size(); });
  return out;
}

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  for (std::string l; std::getline(f, l);)
    if (l.rfind("model name", 0) == 0) {
      const auto c = l.find(':');
      if (c != std::string::npos) return l.substr(l.find_first_not_of(" \t", c + 1));
    }
  return "";
}

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char b[32];
  std::strftime(b, sizeof b, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return b;
}

// ---- forked children ----

struct ChildResult {
  json out;             // what the child sent (an object; {"error": ...} on failure)
  double rss_mb = 0;    // the child's peak RSS
  std::string failure;  // "" when it exited 0
};

// Runs `body` in a forked child and returns what it printed to the pipe as JSON.
ChildResult run_child(const std::function<json()>& body) {
  int fds[2];
  MINFER_CHECK(pipe(fds) == 0, "pipe() failed: {}", std::strerror(errno));
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t pid = fork();
  MINFER_CHECK(pid >= 0, "fork() failed: {}", std::strerror(errno));
  if (pid == 0) {
    close(fds[0]);
    int code = 0;
    std::string out;
    try {
      out = body().dump();
    } catch (const std::exception& e) {
      out = json{{"error", e.what()}}.dump();
      code = 1;
    }
    for (size_t off = 0; off < out.size();) {
      const ssize_t n = write(fds[1], out.data() + off, out.size() - off);
      if (n <= 0) break;
      off += size_t(n);
    }
    close(fds[1]);
    std::fflush(stderr);
    _exit(code);  // no atexit handlers or static destructors of the parent's state
  }
  close(fds[1]);
  std::string text;
  char buf[4096];
  for (ssize_t n; (n = read(fds[0], buf, sizeof buf)) != 0;) {
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) break;
    text.append(buf, size_t(n));
  }
  close(fds[0]);
  int status = 0;
  struct rusage ru {};
  while (wait4(pid, &status, 0, &ru) < 0 && errno == EINTR) {
  }
  ChildResult r;
  r.rss_mb = double(ru.ru_maxrss) / 1024.0;
  try {
    r.out = text.empty() ? json::object() : json::parse(text);
  } catch (const json::exception&) {
    r.out = json::object();
  }
  if (WIFSIGNALED(status))
    r.failure = fmt::format("crashed ({})", strsignal(WTERMSIG(status)));
  else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    r.failure = r.out.contains("error") ? r.out["error"].get<std::string>()
                                        : fmt::format("exit status {}", WEXITSTATUS(status));
  return r;
}

double self_peak_rss_mb() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return double(ru.ru_maxrss) / 1024.0;
}

double best_of(int reps, const std::function<void()>& f) {
  double best = 1e300;
  for (int i = 0; i < std::max(reps, 1); ++i) {
    const double t0 = tool::now_s();
    f();
    best = std::min(best, tool::now_s() - t0);
  }
  return best;
}

// Child 0: everything every method shares, computed once from the original model: the token ids
// of the test text (speed + perplexity), the calibration ids, and for encoders the f32 reference
// embeddings.
json prepare(const Options& o, const std::string& work, bool any_calib) {
  auto be = make_backend(o.backend, o.threads, o.device);
  LoadedModel lm = open_named_model(o.model, *be, true, GgufWeights::F32);  // the f32 baseline
  const ModelConfig& c = lm.model->config();
  const std::string test = find_text(o.test_text, "wiki.test.raw");
  json info = {{"arch", std::string(arch_name(c.arch))},
               {"causal", c.causal()},
               {"threads", be->threads()},
               {"backend", be->name()},
               {"test_text", test},
               {"max_pos", c.max_pos}};
  std::vector<int32_t> ids = lm.tokenizer->encode(read_text(test), true);
  info["text_tokens"] = ids.size();
  if (c.causal()) {
    const size_t keep = o.max_tokens > 0 ? size_t(o.max_tokens) : ids.size();
    MINFER_CHECK(ids.size() >= 2, "{}: the text encodes to {} tokens", test, ids.size());
    info["eval_tokens"] = std::min(keep, ids.size());
    ids.resize(std::min(ids.size(), std::max(keep, size_t(o.prefill + o.decode))));
    write_vec(work + "/test_ids.bin", ids);
  } else {
    ids.resize(std::min(ids.size(), size_t(std::min(o.prefill, c.max_pos))));
    write_vec(work + "/test_ids.bin", ids);
    const auto texts = wiki_lines(test, o.lines);
    info["eval_tokens"] = texts.size();
    std::vector<float> flat;
    for (auto& e :
         embed_texts(*lm.model, *lm.tokenizer, texts, read_sentence_embedding_config(lm.path)))
      flat.insert(flat.end(), e.begin(), e.end());
    write_vec(work + "/ref_emb.bin", flat);
  }
  if (any_calib) {
    const std::string valid = find_text(o.calib_text, "wiki.valid.raw");
    if (c.causal()) {
      write_vec(work + "/calib_ids.bin", lm.tokenizer->encode(read_text(valid), true));
    } else {  // whole lines, as compress --calibrate takes them: ids end to end + their lengths
      std::vector<int32_t> flat, lens;
      for (const auto& q : encoder_calibration_sequences(
               *lm.tokenizer, read_text(valid), read_sentence_embedding_config(lm.path), c.max_pos,
               int64_t(o.calib_samples) * o.calib_len)) {
        flat.insert(flat.end(), q.begin(), q.end());
        lens.push_back(int32_t(q.size()));
      }
      write_vec(work + "/calib_ids.bin", flat);
      write_vec(work + "/calib_lens.bin", lens);
    }
    info["calib_text"] = valid;
  }
  return info;
}

// Child 1 per method: f32 model -> (calibrate) -> compress -> save to `dir`.
json compress_child(const Options& o, const std::string& work, const std::string& method,
                    const std::string& dir) {
  auto be = make_backend(o.backend, o.threads, o.device);
  LoadedModel lm = open_named_model(o.model, *be, true, GgufWeights::F32);  // the f32 baseline
  Model& m = *lm.model;
  CompressSpec spec = compress_spec_from_name(method);
  spec.sparse_storage = sparse_storage_from_name(o.sparse_storage);
  const double t0 = tool::now_s();
  json out = json::object();
  if (has_structured_steps(spec)) {  // heads / ffn / layers: a smaller model first
    const auto ids = read_vec<int32_t>(work + "/calib_ids.bin");
    lm.model = prune_structured(m, spec, ids, o.calib_samples,
                                std::min(o.calib_len, m.config().max_pos), false);
  }
  Model& mc = *lm.model;
  rotate_for_spec(mc, spec);  // before calibration (compress/rotate.h)
  ActStats stats;
  const ActStats* sp = nullptr;
  std::vector<int32_t> ids;  // calibration tokens (GPTQ -seq runs its windows again per block)
  if (spec.uses_calibration()) {
    ids = read_vec<int32_t>(work + "/calib_ids.bin");
    const double tc = tool::now_s();
    try {
      if (mc.config().causal()) {
        stats = calibrate(mc, ids, o.calib_samples, std::min(o.calib_len, mc.config().max_pos),
                          false, spec.needs_gram());
      } else {
        std::vector<std::vector<int32_t>> seqs;
        size_t at = 0;
        for (int32_t n : read_vec<int32_t>(work + "/calib_lens.bin")) {
          MINFER_CHECK(n >= 0 && at + size_t(n) <= ids.size(),
                       "{}: calib_lens.bin does not match "
                       "calib_ids.bin",
                       work);
          seqs.emplace_back(ids.begin() + ptrdiff_t(at), ids.begin() + ptrdiff_t(at + size_t(n)));
          at += size_t(n);
        }
        stats = calibrate_encoder(mc, seqs, false, spec.needs_gram());
      }
      sp = &stats;
      out["calib_seconds"] = tool::now_s() - tc;
    } catch (const std::exception& e) {
      // Static activation scales cannot exist without calibration; LLM.int8() can still find
      // its outliers at run time.
      if (spec.needs_calibration())
        return {{"skip", fmt::format("calibration failed: {}", e.what())}};
      out["note"] = fmt::format("no calibration ({}): outliers found at run time only", e.what());
    }
  }
  const SequentialCalibration seq{&ids, o.calib_samples,
                                  std::min(o.calib_len, mc.config().max_pos)};
  const CompressReport rep =
      compress_model(mc, spec, sp, false, mc.config().causal() && !ids.empty() ? &seq : nullptr);
  save_compressed(mc, lm.tokenizer.get(), dir, spec, /*force=*/true, lm.path);
  out["bits_per_weight"] = rep.bits_per_weight;
  out["linear_bpw"] = rep.linear_bpw;
  out["seconds"] = tool::now_s() - t0;
  out["peak_rss_mb"] = tool::peak_rss_mb();
  return out;
}

// Other processes' load around a timing: a 0.5 s sample before it starts (while this process
// sleeps) and the timed window itself; cores() is the larger, NaN where /proc is unreadable.
struct LoadProbe {
  MachineLoad before = measure_machine_load(0.5);
  CpuTimes start = read_cpu_times();
  double cores() const {
    const double during = others_busy_cores(start, read_cpu_times());
    if (!before.measured && during < 0) return kNaN;
    return std::max(before.measured ? before.others_busy : 0.0, during);
  }
};

// Child 2 per method: open the saved folder and measure it.
json measure_child(const Options& o, const std::string& work, const std::string& dir) {
  auto be = make_backend(o.backend, o.threads, o.device);
  const std::vector<int32_t> ids = read_vec<int32_t>(work + "/test_ids.bin");
  MINFER_CHECK(!ids.empty(), "{}/test_ids.bin is empty", work);
  LoadedModel lm = open_model(dir, *be, /*with_tokenizer=*/false);
  Model& m = *lm.model;
  tool::set_kv_cache(m, o.kv_cache);
  const ModelConfig& c = m.config();
  double wbytes = 0;
  for (const Linear* l : m.linears())
    wbytes += double(l->weight_bytes() + (l->bias.defined() ? l->bias.nbytes() : 0));
  json out = {{"weight_bytes_per_token", wbytes}, {"load_s", lm.load_seconds}};
  // The speed tokens: real text, repeated if the text is shorter than prefill + decode.
  auto tok = [&](int64_t i) { return ids[size_t(i) % ids.size()]; };

  if (c.causal()) {
    const int64_t P = o.prefill, D = o.decode;
    MINFER_CHECK(P + D <= c.max_pos, "--prefill {} + --decode {} exceed the model's {} positions",
                 P, D, c.max_pos);
    std::vector<int32_t> sp(size_t(P + D));
    for (int64_t i = 0; i < P + D; ++i) sp[size_t(i)] = tok(i);
    std::vector<float> logits(size_t(c.vocab_size));
    {
      RunState s = m.new_state(P + D, P, 1);
      const LoadProbe probe;
      // to_host after each call: the work is done (and a GPU synchronised) before the clock stops.
      const double tp = best_of(o.reps, [&] {
        s.reset();
        be->to_host(m.forward(s, sp.data(), P, false), logits.data());
      });
      const double t0 = tool::now_s();
      for (int64_t i = 0; i < D; ++i)
        be->to_host(m.forward(s, sp.data() + P + i, 1, false), logits.data());
      const double td = tool::now_s() - t0;
      out["prefill_tps"] = double(P) / tp;
      out["decode_tps"] = D > 0 ? double(D) / td : kNaN;
      out["load_cores"] = probe.cores();
    }
    out["peak_rss_mb"] = self_peak_rss_mb();
    const double t1 = tool::now_s();
    const int64_t n = o.max_tokens > 0 ? std::min<int64_t>(o.max_tokens, int64_t(ids.size()))
                                       : int64_t(ids.size());
    const std::vector<int32_t> eval(ids.begin(), ids.begin() + n);
    const PerplexityResult r =
        perplexity(m, eval, std::min(o.ctx, c.max_pos), std::min(o.ctx, c.max_pos),
                   PplMethod::HfSlidingWindow, /*bos=*/-1, false);
    out["ppl"] = r.ppl;
    out["eval_s"] = tool::now_s() - t1;
  } else {
    const int64_t T = std::min<int64_t>(int64_t(ids.size()), std::min(o.prefill, c.max_pos));
    {
      RunState s = m.new_state(0, T);
      std::vector<float> hidden(size_t(T * c.hidden));
      const LoadProbe probe;
      const double te =
          best_of(o.reps, [&] { be->to_host(m.encode(s, ids.data(), 1, T), hidden.data()); });
      out["prefill_tps"] = double(T) / te;
      out["load_cores"] = probe.cores();
    }
    out["peak_rss_mb"] = self_peak_rss_mb();
    const double t1 = tool::now_s();
    const std::string test = find_text(o.test_text, "wiki.test.raw");
    const auto texts = wiki_lines(test, o.lines);
    const auto tokzr = Tokenizer::from_json_file((fs::path(dir) / "tokenizer.json").string());
    const auto emb = embed_texts(m, *tokzr, texts, read_sentence_embedding_config(dir));
    const auto ref = read_vec<float>(work + "/ref_emb.bin");
    MINFER_CHECK(!emb.empty() && ref.size() == emb.size() * emb[0].size(),
                 "reference embeddings: {} floats for {} x {} embeddings", ref.size(), emb.size(),
                 emb.empty() ? 0 : emb[0].size());
    double sum = 0, mn = 1e300;
    const size_t C = emb[0].size();
    for (size_t i = 0; i < emb.size(); ++i) {
      const std::vector<float> r(ref.begin() + i * C, ref.begin() + (i + 1) * C);
      const double cs = cosine(emb[i], r);
      sum += cs;
      mn = std::min(mn, cs);
    }
    out["cosine"] = sum / double(emb.size());
    out["cosine_min"] = mn;
    out["eval_s"] = tool::now_s() - t1;
  }
  out["eval_rss_mb"] = self_peak_rss_mb();
  return out;
}

double num(const json& j, const char* k) {
  auto it = j.find(k);
  return it != j.end() && it->is_number() ? it->get<double>() : kNaN;
}

BenchRow empty_row(const std::string& method) {
  BenchRow r;
  r.method = method;
  for (double* v :
       {&r.bits_per_weight, &r.linear_bpw, &r.file_mb, &r.peak_rss_mb, &r.eval_rss_mb,
        &r.compress_rss_mb, &r.compress_s, &r.eval_s, &r.ppl, &r.delta_ppl, &r.cosine,
        &r.cosine_min, &r.prefill_tps, &r.decode_tps, &r.weight_bytes_per_token, &r.decode_gbps})
    *v = kNaN;
  return r;
}

std::vector<std::string> split_methods(const std::string& list) {
  std::vector<std::string> v;
  std::stringstream ss(list);
  for (std::string m; std::getline(ss, m, ',');) {
    m.erase(0, m.find_first_not_of(' '));
    m.erase(m.find_last_not_of(' ') + 1);
    if (!m.empty()) v.push_back(m);
  }
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Compress one model with each method and measure it: bits/weight, file MB, peak RSS, "
      "WikiText-2 perplexity and Δ vs f32 (encoders: mean cosine of the embeddings to the f32 "
      "model's), prefill / decode tok/s and decode GB/s of weight reads. Prints a Markdown "
      "table; --json / --plot write the rows. Other processes' CPU load is measured around each "
      "timing (0.5 s before it and during it); speeds taken while they kept a quarter of a core "
      "or more busy are marked * and flagged as from a busy machine in the table, JSON and plot.",
      "bench"};
  Options o;
  app.option_defaults()->always_capture_default();
  app.add_option("--model,-m", o.model, "smollm2 | minilm | HF folder | .gguf (the f32 baseline)")
      ->required();
  app.add_option("--methods", o.methods,
                 fmt::format("comma list of compression methods or chains (e.g. int4-g64, "
                             "nf4-dq, w8a8-static); default: {}\nmethods:\n{}",
                             fmt::join(default_bench_methods(), ","), methods_help()));
  app.add_option("--max-tokens", o.max_tokens,
                 "perplexity over the first N tokens of the test text (0 = all)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--lines", o.lines, "encoders: non-blank WikiText lines for the cosine")
      ->check(CLI::Range(1, 1 << 20));
  app.add_option("--ctx", o.ctx, "perplexity window (non-overlapping windows)")
      ->check(CLI::Range(int64_t(2), int64_t(1) << 20));
  app.add_option("--prefill", o.prefill, "tokens in the prefill timing (encoders: sequence length)")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 20));
  app.add_option("--decode", o.decode, "tokens decoded one at a time after the prefill")
      ->check(CLI::Range(int64_t(0), int64_t(1) << 20));
  app.add_option("--reps", o.reps, "prefill timing: best of N")->check(CLI::Range(1, 100));
  app.add_option(
         "--calib-samples", o.calib_samples,
         "calibration windows (w8a8-static, llm-int8, wanda, lowrank-aw, GPTQ, heads / ffn "
         "/ layers pruning) from WikiText-2 validation; encoders: whole lines, evenly spread, "
         "until calib-samples x calib-len tokens")
      ->check(CLI::Range(1, 4096));
  app.add_option("--calib-len", o.calib_len, "tokens per calibration window")
      ->check(CLI::Range(int64_t(2), int64_t(1) << 20));
  app.add_option("--test-text", o.test_text,
                 "evaluation text (default: WikiText-2 wiki.test.raw from $MINFER_WIKITEXT, else "
                 "../shared/data/wikitext-2-raw or beside the checkout)");
  app.add_option("--calib-text", o.calib_text,
                 "calibration text (default: WikiText-2 wiki.valid.raw, found as --test-text's)");
  app.add_option("--json", o.json_path, "also write the rows as JSON to FILE");
  app.add_option("--plot", o.plot_path,
                 "also write a plot to FILE.svg (quality vs file size, decode speed bars)");
  app.add_option("--work", o.work,
                 "folder for the compressed models (default: a new folder under $TMPDIR)");
  app.add_flag("--keep-files", o.keep_files, "keep the compressed folders");
  app.add_option("--threads,-t", o.threads,
                 "threads (default: OMP_NUM_THREADS or all cores; decode uses fewer while other "
                 "processes keep the cores busy, unless MINFER_POOL_BACKOFF=0)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--sparse-storage", o.sparse_storage,
                 "pruned weights of every method: auto (sparse where the measured decode crossover "
                 "says it is faster), sparse, bitmask, csr, dense (as compress --sparse-storage)")
      ->check(CLI::IsMember({"auto", "sparse", "bitmask", "csr", "dense"}));
  app.add_option("--backend", o.backend, "cpu | cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  tool::add_kv_cache(app, o.kv_cache);
  app.add_option("--device", o.device, "GPU index for --backend cuda")
      ->check(CLI::NonNegativeNumber);
  app.add_flag("--quiet,-q", o.quiet, "no progress on stderr");
  return tool::run(app, argc, argv, [&] {
    // Everything that can be wrong with the arguments fails here, before minutes of work.
    if (!o.plot_path.empty()) {
      const std::string ext = fs::path(o.plot_path).extension().string();
      if (ext == ".png" || ext == ".PNG") throw NotImplemented("PNG plots; use --plot FILE.svg");
      MINFER_CHECK(ext == ".svg" || ext == ".SVG", "--plot {}: expected a .svg file name",
                   o.plot_path);
    }
    std::vector<std::string> methods;
    if (!o.methods.empty()) {
      methods = split_methods(o.methods);
      MINFER_CHECK(!methods.empty(), "--methods '{}' names no method", o.methods);
    }
    bool user_work = !o.work.empty();
    std::string work = o.work;
    if (user_work) {
      fs::create_directories(work);
    } else {
      std::string t = (fs::temp_directory_path() / "minfer-bench-XXXXXX").string();
      MINFER_CHECK(mkdtemp(t.data()) != nullptr, "cannot create a folder under {}: {}",
                   fs::temp_directory_path().string(), std::strerror(errno));
      work = t;
    }
    // Our own files only: with --work the folder itself may hold other things.
    std::vector<std::string> created;
    auto cleanup = [&] {
      if (o.keep_files) return;
      std::error_code ec;
      for (auto& p : created) fs::remove_all(p, ec);
      if (!user_work) fs::remove_all(work, ec);
    };
    const bool tty = isatty(2);
    auto say = [&](const std::string& line) {
      if (o.quiet) return;
      std::fprintf(stderr, "%s%s\n", tty ? "\r\033[K" : "", line.c_str());
    };

    struct Cleanup {
      std::function<void()> f;
      ~Cleanup() { f(); }
    } guard{cleanup};

    for (auto f : {"test_ids.bin", "calib_ids.bin", "calib_lens.bin", "ref_emb.bin"})
      created.push_back(work + "/" + f);
    bool any_calib = methods.empty();  // the default list has w8a8-static and llm-int8
    for (auto& m : methods) {
      const CompressSpec cs = compress_spec_from_name(m);  // also validates
      if (cs.uses_calibration() || has_structured_steps(cs)) any_calib = true;
    }
    {
      std::set<std::string> seen;
      for (auto& m : methods) MINFER_CHECK(seen.insert(m).second, "--methods: '{}' twice", m);
    }

    const double t_start = tool::now_s();
    say(fmt::format("bench: preparing {} (tokenizing the texts{})", o.model,
                    any_calib ? ", calibration ids" : ""));
    ChildResult prep = run_child([&] { return prepare(o, work, any_calib); });
    MINFER_CHECK(prep.failure.empty(), "{}: {}", o.model, prep.failure);
    const json& info = prep.out;
    BenchReport rep;
    rep.model = o.model;
    rep.arch = info.value("arch", "");
    rep.encoder = !info.value("causal", true);
    rep.backend = info.value("backend", o.backend);
    rep.kv_cache = o.kv_cache;
    rep.threads = info.value("threads", 0);
    rep.cpu = cpu_model();
    rep.date = utc_now();
    double la[1] = {0};
    rep.load_avg = getloadavg(la, 1) == 1 ? la[0] : kNaN;
    rep.cpus = online_cpus();
    rep.text = info.value("test_text", "");
    rep.eval_tokens = info.value("eval_tokens", int64_t(0));
    rep.ctx = rep.encoder ? 0 : std::min(o.ctx, info.value("max_pos", o.ctx));
    rep.prefill_tokens =
        rep.encoder ? std::min(o.prefill, info.value("max_pos", o.prefill)) : o.prefill;
    rep.decode_tokens = rep.encoder ? 0 : o.decode;
    if (methods.empty()) methods = default_bench_methods();

    Progress bar("bench", int64_t(methods.size()) * 2, !o.quiet);
    for (size_t i = 0; i < methods.size(); ++i) {
      const std::string& method = methods[i];
      BenchRow row = empty_row(method);
      const std::string dir = work + "/" + method;
      created.push_back(dir);
      const double t0 = tool::now_s();
      bar.update(int64_t(2 * i), method + ": compressing");
      ChildResult cr = run_child([&] { return compress_child(o, work, method, dir); });
      row.compress_rss_mb = cr.rss_mb;
      if (!cr.failure.empty()) {
        row.status = "failed";
        row.note = "compress: " + cr.failure;
      } else if (cr.out.contains("skip")) {
        row.status = "skipped";
        row.note = cr.out["skip"].get<std::string>();
      } else {
        row.bits_per_weight = num(cr.out, "bits_per_weight");
        row.linear_bpw = num(cr.out, "linear_bpw");
        row.compress_s = num(cr.out, "seconds");
        row.note = cr.out.value("note", "");
        row.file_mb = double(model_file_bytes(dir)) / 1e6;
        bar.update(int64_t(2 * i + 1), method + ": measuring");
        ChildResult mr = run_child([&] { return measure_child(o, work, dir); });
        if (!mr.failure.empty()) {
          row.status = "failed";
          row.note = "measure: " + mr.failure;
        } else {
          const json& j = mr.out;
          row.peak_rss_mb = num(j, "peak_rss_mb");
          row.eval_rss_mb = mr.rss_mb;
          row.eval_s = num(j, "eval_s");
          row.prefill_tps = num(j, "prefill_tps");
          row.weight_bytes_per_token = num(j, "weight_bytes_per_token");
          if (rep.encoder) {
            row.cosine = num(j, "cosine");
            row.cosine_min = num(j, "cosine_min");
          } else {
            row.ppl = num(j, "ppl");
            row.decode_tps = num(j, "decode_tps");
            row.decode_gbps = row.weight_bytes_per_token * row.decode_tps / 1e9;
          }
          row.load_cores = num(j, "load_cores");
        }
      }
      if (!o.keep_files) {
        std::error_code ec;
        fs::remove_all(dir, ec);
      }
      if (row.status == "ok")
        say(fmt::format("{}: {:.2f} bits/w, {:.1f} MB, {}, prefill {:.1f} tok/s{} ({:.0f} s)",
                        method, row.bits_per_weight, row.file_mb,
                        rep.encoder ? fmt::format("cos {:.5f}", row.cosine)
                                    : fmt::format("ppl {:.4f}", row.ppl),
                        row.prefill_tps,
                        rep.encoder ? "" : fmt::format(", decode {:.1f} tok/s", row.decode_tps),
                        tool::now_s() - t0) +
            (bench_row_busy(row)
                 ? fmt::format(" [busy machine: other processes used {:.1f} cores]", row.load_cores)
                 : ""));
      else
        say(fmt::format("{}: {}: {}", method, row.status, row.note));
      rep.rows.push_back(std::move(row));
    }
    bar.finish();
    bench_fill_baseline(rep);

    std::printf("%s", bench_markdown(rep).c_str());
    std::fflush(stdout);
    if (!o.json_path.empty()) {
      write_file_atomic(o.json_path, bench_json(rep));
      say("bench: wrote " + o.json_path);
    }
    if (!o.plot_path.empty()) {
      write_file_atomic(o.plot_path, bench_svg(rep));
      say("bench: wrote " + o.plot_path);
    }
    if (o.keep_files) say("bench: compressed models kept in " + work);
    say(fmt::format("bench: {:.0f} s", tool::now_s() - t_start));
    bool any_ok = false;
    for (auto& r : rep.rows) any_ok = any_ok || r.status == "ok";
    return any_ok ? 0 : 1;
  });
}
