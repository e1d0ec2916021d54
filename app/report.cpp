#include "app/report.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "engine/error.h"

namespace minfer {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

bool ok_value(double v) {
  return std::isfinite(v);
}

// Display width of UTF-8 text: code points (the table holds no wide characters).
size_t width(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

std::string num(double v, int decimals) {
  if (!ok_value(v)) return "-";
  return fmt::format("{:.{}f}", v, decimals);
}

// Perplexities span 10 .. 1e6 across methods: keep ~5 significant digits without a long tail.
std::string ppl_str(double v) {
  if (!ok_value(v)) return "-";
  return fmt::format("{:.{}f}", v, v >= 1e4 ? 0 : v >= 1e3 ? 1 : v >= 100 ? 2 : 3);
}

std::string delta_str(double v) {
  if (!ok_value(v)) return "-";
  const double a = std::abs(v);
  return fmt::format("{:+.{}f}", v, a >= 1e4 ? 0 : a >= 1e3 ? 1 : a >= 100 ? 2 : 3);
}

struct Column {
  std::string head;
  bool right;  // numbers: right-aligned
};

std::vector<Column> columns(const BenchReport& r) {
  if (r.encoder)
    return {{"method", false},    {"bits/w", true},  {"file MB", true},     {"peak RSS MB", true},
            {"cos vs f32", true}, {"min cos", true}, {"encode tok/s", true}};
  return {{"method", false},       {"bits/w", true},       {"file MB", true},
          {"peak RSS MB", true},   {"ppl", true},          {"Δppl", true},
          {"prefill tok/s", true}, {"decode tok/s", true}, {"decode GB/s", true}};
}

std::vector<std::string> cells(const BenchReport& r, const BenchRow& x) {
  std::vector<std::string> c = {x.method, num(x.bits_per_weight, 2), num(x.file_mb, 1),
                                num(x.peak_rss_mb, 0)};
  if (r.encoder) {
    for (auto s : {num(x.cosine, 5), num(x.cosine_min, 5), num(x.prefill_tps, 1)}) c.push_back(s);
  } else {
    for (auto s : {ppl_str(x.ppl), delta_str(x.delta_ppl), num(x.prefill_tps, 1),
                   num(x.decode_tps, 1), num(x.decode_gbps, 1)})
      c.push_back(s);
  }
  if (bench_row_busy(x))  // the speed columns: timed on a busy machine
    for (size_t i = 6; i < c.size(); ++i)
      if (c[i] != "-") c[i] += '*';
  if (x.status != "ok") c[0] += " (" + x.status + ")";
  return c;
}

std::string xml_escape(const std::string& s) {
  std::string o;
  for (char ch : s) {
    switch (ch) {
      case '&':
        o += "&amp;";
        break;
      case '<':
        o += "&lt;";
        break;
      case '>':
        o += "&gt;";
        break;
      case '"':
        o += "&quot;";
        break;
      case '\'':
        o += "&apos;";
        break;
      default:
        o += ch;
    }
  }
  return o;
}

nlohmann::json row_to_j(const BenchRow& x) {
  // NaN serializes as null.
  return {{"method", x.method},
          {"status", x.status},
          {"note", x.note},
          {"bits_per_weight", x.bits_per_weight},
          {"linear_bpw", x.linear_bpw},
          {"file_mb", x.file_mb},
          {"peak_rss_mb", x.peak_rss_mb},
          {"eval_rss_mb", x.eval_rss_mb},
          {"compress_rss_mb", x.compress_rss_mb},
          {"compress_s", x.compress_s},
          {"eval_s", x.eval_s},
          {"ppl", x.ppl},
          {"delta_ppl", x.delta_ppl},
          {"cosine", x.cosine},
          {"cosine_min", x.cosine_min},
          {"prefill_tps", x.prefill_tps},
          {"decode_tps", x.decode_tps},
          {"weight_bytes_per_token", x.weight_bytes_per_token},
          {"decode_gbps", x.decode_gbps},
          {"load_cores", x.load_cores},
          {"busy", bench_row_busy(x)}};
}

double get_num(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return kNaN;
  MINFER_CHECK(it->is_number(), "bench JSON: '{}' should be a number or null, found {}", key,
               it->dump());
  return it->get<double>();
}

std::string get_str(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return "";
  MINFER_CHECK(it->is_string(), "bench JSON: '{}' should be a string, found {}", key, it->dump());
  return it->get<std::string>();
}

BenchRow row_from_j(const nlohmann::json& j) {
  MINFER_CHECK(j.is_object(), "bench JSON: a row should be an object, found {}", j.dump());
  BenchRow x;
  x.method = get_str(j, "method");
  MINFER_CHECK(!x.method.empty(), "bench JSON: row without a method: {}", j.dump());
  x.status = get_str(j, "status");
  if (x.status.empty()) x.status = "ok";
  x.note = get_str(j, "note");
  x.bits_per_weight = get_num(j, "bits_per_weight");
  x.linear_bpw = get_num(j, "linear_bpw");
  x.file_mb = get_num(j, "file_mb");
  x.peak_rss_mb = get_num(j, "peak_rss_mb");
  x.eval_rss_mb = get_num(j, "eval_rss_mb");
  x.compress_rss_mb = get_num(j, "compress_rss_mb");
  x.compress_s = get_num(j, "compress_s");
  x.eval_s = get_num(j, "eval_s");
  x.ppl = get_num(j, "ppl");
  x.delta_ppl = get_num(j, "delta_ppl");
  x.cosine = get_num(j, "cosine");
  x.cosine_min = get_num(j, "cosine_min");
  x.prefill_tps = get_num(j, "prefill_tps");
  x.decode_tps = get_num(j, "decode_tps");
  x.weight_bytes_per_token = get_num(j, "weight_bytes_per_token");
  x.decode_gbps = get_num(j, "decode_gbps");
  x.load_cores = get_num(j, "load_cores");
  return x;
}

// ---- SVG ----

// One plot axis: value -> pixel, linear or log10.
struct Axis {
  double lo = 0, hi = 1;  // value range
  double p0 = 0, p1 = 1;  // pixel range (p1 may be < p0 for y)
  bool log = false;
  double map(double v) const {
    double t = log ? (std::log10(v) - std::log10(lo)) / (std::log10(hi) - std::log10(lo))
                   : (v - lo) / (hi - lo);
    return p0 + t * (p1 - p0);
  }
};

// Axis over [mn, mx] with some room on both sides; log when the values span `log_ratio` or more.
Axis make_axis(double mn, double mx, double p0, double p1, double log_ratio) {
  Axis a;
  a.p0 = p0;
  a.p1 = p1;
  a.log = mn > 0 && mx / mn >= log_ratio;
  if (a.log) {
    a.lo = mn / 1.5;
    a.hi = mx * 1.5;
  } else {
    const double span = mx > mn ? mx - mn : std::max(std::abs(mx), 1.0);
    a.lo = mn - 0.1 * span;
    a.hi = mx + 0.1 * span;
    if (mn >= 0 && a.lo < 0) a.lo = 0;
  }
  return a;
}

// Tick values: 1-2-5 steps on a log axis spanning few decades, decades otherwise; ~5 "nice"
// (1, 2, 5 x 10^k) steps on a linear axis.
std::vector<double> ticks(const Axis& a) {
  std::vector<double> t;
  if (a.log) {
    const int e0 = int(std::floor(std::log10(a.lo))), e1 = int(std::ceil(std::log10(a.hi)));
    const bool fine = e1 - e0 <= 2;
    for (int e = e0; e <= e1; ++e)
      for (double m : fine ? std::vector<double>{1, 2, 5} : std::vector<double>{1}) {
        const double v = m * std::pow(10.0, e);
        if (v >= a.lo && v <= a.hi) t.push_back(v);
      }
    return t;
  }
  const double raw = (a.hi - a.lo) / 5;
  const double p = std::pow(10.0, std::floor(std::log10(raw)));
  const double step = raw / p < 1.5 ? p : raw / p < 3.5 ? 2 * p : raw / p < 7.5 ? 5 * p : 10 * p;
  for (double v = std::ceil(a.lo / step) * step; v <= a.hi + 1e-9 * step; v += step)
    t.push_back(std::abs(v) < 1e-12 * step ? 0.0 : v);
  return t;
}

std::string tick_label(double v) {
  const double a = std::abs(v);
  if (a != 0 && (a < 1e-3 || a >= 1e6)) {  // 1e-4, 2e-5: no zero-padded exponent
    const int e = int(std::floor(std::log10(a) + 1e-9));
    return fmt::format("{}{:.0f}e{}", v < 0 ? "-" : "", a / std::pow(10.0, e), e);
  }
  if (a >= 100 || a == std::floor(a)) return fmt::format("{:.0f}", v);
  return fmt::format("{:g}", v);
}

struct Box {
  double x0, y0, x1, y1;
  bool overlaps(const Box& o) const { return x0 < o.x1 && o.x0 < x1 && y0 < o.y1 && o.y0 < y1; }
};

constexpr double kCharW = 6.6;  // approx. advance of an 11 px sans-serif character

void axes_frame(std::string& s, const Axis& x, const Axis& y, const std::string& xlabel,
                const std::string& ylabel) {
  const double x0 = std::min(x.p0, x.p1), x1 = std::max(x.p0, x.p1);
  const double y0 = std::min(y.p0, y.p1), y1 = std::max(y.p0, y.p1);
  s += fmt::format(
      "<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" fill=\"none\" "
      "stroke=\"#444\"/>\n",
      x0, y0, x1 - x0, y1 - y0);
  for (double v : ticks(x)) {
    const double px = x.map(v);
    s += fmt::format(
        "<line x1=\"{0:.1f}\" y1=\"{1:.1f}\" x2=\"{0:.1f}\" y2=\"{2:.1f}\" stroke=\"#ddd\"/>\n"
        "<text x=\"{0:.1f}\" y=\"{3:.1f}\" text-anchor=\"middle\">{4}</text>\n",
        px, y0, y1, y1 + 14, xml_escape(tick_label(v)));
  }
  for (double v : ticks(y)) {
    const double py = y.map(v);
    s += fmt::format(
        "<line x1=\"{0:.1f}\" y1=\"{2:.1f}\" x2=\"{1:.1f}\" y2=\"{2:.1f}\" stroke=\"#ddd\"/>\n"
        "<text x=\"{3:.1f}\" y=\"{4:.1f}\" text-anchor=\"end\">{5}</text>\n",
        x0, x1, py, x0 - 5, py + 4, xml_escape(tick_label(v)));
  }
  s += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\">{}</text>\n",
                   (x0 + x1) / 2, y1 + 32, xml_escape(xlabel));
  s += fmt::format(
      "<text x=\"{0:.1f}\" y=\"{1:.1f}\" text-anchor=\"middle\" "
      "transform=\"rotate(-90 {0:.1f} {1:.1f})\">{2}</text>\n",
      x0 - 48, (y0 + y1) / 2, xml_escape(ylabel));
}

}  // namespace

void bench_fill_baseline(BenchReport& r) {
  double base = kNaN;
  for (auto& x : r.rows)
    if (x.method == "f32" && x.status == "ok" && ok_value(x.ppl)) base = x.ppl;
  for (auto& x : r.rows)
    x.delta_ppl = (x.status == "ok" && ok_value(x.ppl) && ok_value(base)) ? x.ppl - base : kNaN;
}

std::string bench_table(const BenchReport& r) {
  const auto cols = columns(r);
  std::vector<std::vector<std::string>> body;
  std::vector<size_t> w(cols.size());
  for (size_t c = 0; c < cols.size(); ++c) w[c] = std::max<size_t>(3, width(cols[c].head));
  for (auto& x : r.rows) {
    body.push_back(cells(r, x));
    for (size_t c = 0; c < cols.size(); ++c) w[c] = std::max(w[c], width(body.back()[c]));
  }
  auto line = [&](const std::vector<std::string>& v) {
    std::string s = "|";
    for (size_t c = 0; c < cols.size(); ++c) {
      const size_t pad = w[c] - width(v[c]);
      s += ' ';
      if (cols[c].right) s.append(pad, ' ');
      s += v[c];
      if (!cols[c].right) s.append(pad, ' ');
      s += " |";
    }
    s += '\n';
    return s;
  };
  std::vector<std::string> head;
  for (auto& c : cols) head.push_back(c.head);
  std::string s = line(head);
  s += '|';
  for (size_t c = 0; c < cols.size(); ++c) {
    if (!cols[c].right) s += ':';
    s.append(w[c] + 1, '-');
    if (cols[c].right) s += ':';
    s += '|';
  }
  s += '\n';
  for (auto& v : body) s += line(v);
  return s;
}

bool bench_row_busy(const BenchRow& x) {
  return ok_value(x.load_cores) && x.load_cores >= kBusyCores;
}

std::string bench_busy_note(const BenchReport& r) {
  std::string names;
  double worst = 0;
  for (auto& x : r.rows)
    if (bench_row_busy(x)) {
      names += (names.empty() ? "" : ", ") + x.method;
      worst = std::max(worst, x.load_cores);
    }
  if (names.empty()) return "";
  return fmt::format(
      "BUSY MACHINE: other processes kept up to {:.1f} of {} CPU cores busy while the speeds of {} "
      "were timed (marked *): those figures are lower than this machine gives and vary from run "
      "to run",
      worst, r.cpus > 0 ? std::to_string(r.cpus) : "?", names);
}

std::string bench_markdown(const BenchReport& r) {
  std::string s = fmt::format(
      "model {} ({}) | backend {}, {} threads{} | CPU {} | {} | load {:.2f}\n", r.model, r.arch,
      r.backend, r.threads, r.kv_cache == "f32" ? "" : ", KV cache " + r.kv_cache,
      r.cpu.empty() ? "?" : r.cpu, r.date, r.load_avg);
  if (r.encoder)
    s += fmt::format(
        "quality: mean cosine of mean-pooled embeddings to the f32 model's over {} lines of {}; "
        "encode: one sequence of {} tokens, best of N\n\n",
        r.eval_tokens, r.text, r.prefill_tokens);
  else
    s += fmt::format(
        "perplexity: {} tokens of {}, windows of {}; prefill: one forward of {} tokens, best of "
        "N; decode: {} tokens one at a time after it; GB/s = Linear weight bytes per token x "
        "decode tok/s\n\n",
        r.eval_tokens, r.text, r.ctx, r.prefill_tokens, r.decode_tokens);
  s += bench_table(r);
  if (const std::string busy = bench_busy_note(r); !busy.empty()) s += "\n**" + busy + ".**\n";
  bool first = true;
  for (auto& x : r.rows) {
    if (x.note.empty()) continue;
    s += fmt::format("{}- {}: {}\n", first ? "\n" : "", x.method, x.note);
    first = false;
  }
  return s;
}

std::string bench_row_json(const BenchRow& row) {
  return row_to_j(row).dump();
}

BenchRow bench_row_from_json(const std::string& text) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    MINFER_FAIL("bench JSON row does not parse ({}): '{}'", e.what(), text.substr(0, 200));
  }
  return row_from_j(j);
}

std::string bench_json(const BenchReport& r) {
  nlohmann::json rows = nlohmann::json::array();
  for (auto& x : r.rows) rows.push_back(row_to_j(x));
  nlohmann::json j = {{"model", r.model},
                      {"arch", r.arch},
                      {"encoder", r.encoder},
                      {"backend", r.backend},
                      {"kv_cache", r.kv_cache},
                      {"threads", r.threads},
                      {"cpu", r.cpu},
                      {"date", r.date},
                      {"load_avg", r.load_avg},
                      {"cpus", r.cpus},
                      {"busy", !bench_busy_note(r).empty()},
                      {"busy_note", bench_busy_note(r)},
                      {"text", r.text},
                      {"eval_tokens", r.eval_tokens},
                      {"ctx", r.ctx},
                      {"prefill_tokens", r.prefill_tokens},
                      {"decode_tokens", r.decode_tokens},
                      {"quality_metric", r.encoder ? "cosine" : "perplexity"},
                      {"rows", rows}};
  return j.dump(2) + "\n";
}

BenchReport bench_from_json(const std::string& text) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    MINFER_FAIL("bench JSON does not parse: {}", e.what());
  }
  MINFER_CHECK(j.is_object() && j.contains("rows") && j["rows"].is_array(),
               "bench JSON: expected an object with a \"rows\" array");
  BenchReport r;
  r.model = get_str(j, "model");
  r.arch = get_str(j, "arch");
  r.encoder = j.value("encoder", false);
  r.backend = get_str(j, "backend");
  if (const std::string kv = get_str(j, "kv_cache"); !kv.empty()) r.kv_cache = kv;
  r.threads = j.value("threads", 0);
  r.cpu = get_str(j, "cpu");
  r.date = get_str(j, "date");
  r.load_avg = get_num(j, "load_avg");
  r.cpus = j.value("cpus", 0);
  r.text = get_str(j, "text");
  r.eval_tokens = j.value("eval_tokens", int64_t(0));
  r.ctx = j.value("ctx", int64_t(0));
  r.prefill_tokens = j.value("prefill_tokens", int64_t(0));
  r.decode_tokens = j.value("decode_tokens", int64_t(0));
  for (auto& row : j["rows"]) r.rows.push_back(row_from_j(row));
  return r;
}

std::string curves_svg(const std::string& title, const std::string& xlabel,
                       const std::string& ylabel, const std::vector<CurveSeries>& series) {
  double xmn = 1e300, xmx = -1e300, ymn = 1e300, ymx = -1e300;
  for (const CurveSeries& c : series)
    for (const auto& [x, y] : c.points)
      if (std::isfinite(x) && std::isfinite(y)) {
        xmn = std::min(xmn, x), xmx = std::max(xmx, x);
        ymn = std::min(ymn, y), ymx = std::max(ymx, y);
      }
  MINFER_CHECK(xmn <= xmx, "curves plot '{}': no finite point", title);
  // Room on the right for the legend's longest name (~6.5 px a character at font size 11).
  size_t longest = 0;
  for (const CurveSeries& c : series) longest = std::max(longest, width(c.name));
  const double x0 = 80, x1 = 600, y0 = 50, y1 = 370, H = 440,
               W = std::max(760.0, x1 + 52 + 6.5 * double(longest));
  std::string s = fmt::format(
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0:.0f}\" height=\"{1:.0f}\" "
      "viewBox=\"0 0 {0:.0f} {1:.0f}\" font-family=\"sans-serif\" font-size=\"11\">\n"
      "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      "<text x=\"{2:.0f}\" y=\"24\" text-anchor=\"middle\" font-size=\"14\">{3}</text>\n",
      W, H, (x0 + x1) / 2, xml_escape(title));
  const Axis xa = make_axis(xmn, xmx, x0, x1, 1e300);  // steps: always linear
  const Axis ya = make_axis(ymn, ymx, y1, y0, 10);
  axes_frame(s, xa, ya, xlabel, ylabel);
  static const char* kColours[] = {"#1f77b4", "#d62728", "#2ca02c",
                                   "#9467bd", "#ff7f0e", "#8c564b"};
  for (size_t k = 0; k < series.size(); ++k) {
    const char* col = kColours[k % std::size(kColours)];
    std::string pts;
    for (const auto& [x, y] : series[k].points)
      if (std::isfinite(x) && std::isfinite(y) && (!ya.log || y > 0))
        pts += fmt::format("{:.1f},{:.1f} ", xa.map(x), ya.map(y));
    if (series[k].points.size() == 1 || pts.empty()) {
      for (const auto& [x, y] : series[k].points)
        if (std::isfinite(x) && std::isfinite(y))
          s += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"3\" fill=\"{}\"/>\n", xa.map(x),
                           ya.map(y), col);
    } else {
      s += fmt::format(
          "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{}\"/>\n", col, pts);
      for (const auto& [x, y] : series[k].points)  // markers for sparse series (evaluations)
        if (series[k].points.size() <= 12 && std::isfinite(x) && std::isfinite(y))
          s += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"3\" fill=\"{}\"/>\n", xa.map(x),
                           ya.map(y), col);
    }
    const double ly = y0 + 10 + 18 * double(k);
    s += fmt::format(
        "<line x1=\"{0:.0f}\" y1=\"{1:.0f}\" x2=\"{2:.0f}\" y2=\"{1:.0f}\" stroke=\"{3}\" "
        "stroke-width=\"2\"/>\n<text x=\"{4:.0f}\" y=\"{5:.0f}\">{6}</text>\n",
        x1 + 15, ly, x1 + 40, col, x1 + 46, ly + 4, xml_escape(series[k].name));
  }
  s += "</svg>\n";
  return s;
}

std::vector<CurveSeries> training_log_curves(const std::string& json_text, const std::string& label,
                                             const std::vector<std::string>& which, int smooth,
                                             const std::string& source) {
  MINFER_CHECK(smooth >= 1, "{}: smoothing over {} steps (must be >= 1)", source, smooth);
  nlohmann::json log;
  try {
    log = nlohmann::json::parse(json_text);
  } catch (const nlohmann::json::exception& e) {
    throw Error(fmt::format("{}: not JSON ({})", source, e.what()));
  }
  MINFER_CHECK(log.is_object() && log.contains("steps") && log["steps"].is_array() &&
                   log.contains("eval") && log["eval"].is_array(),
               "{}: not a distill training log (expected an object with 'steps' and 'eval' arrays)",
               source);
  auto number = [&](const nlohmann::json& entry, const char* key, const char* array) {
    MINFER_CHECK(entry.is_object() && entry.contains(key) && entry[key].is_number(),
                 "{}: an entry of '{}' has no number '{}'", source, array, key);
    return entry[key].get<double>();
  };
  double alpha = 0.5;
  if (log.contains("options") && log["options"].is_object() && log["options"].contains("alpha") &&
      log["options"]["alpha"].is_number())
    alpha = log["options"]["alpha"].get<double>();
  std::vector<CurveSeries> out;
  for (const std::string& w : which) {
    CurveSeries c;
    if (w == "eval") {
      c.name = label + " eval";
      for (const auto& e : log["eval"]) {
        const bool encoder = e.is_object() && !e.contains("nll") && e.contains("mse");
        c.points.emplace_back(number(e, "step", "eval"),
                              number(e, encoder ? "mse" : "nll", "eval"));
        if (encoder) c.name = label + " eval MSE";
      }
      if (c.name == label + " eval") c.name = label + " eval NLL";
    } else if (w == "loss" || w == "kd" || w == "ce") {
      if ((w == "kd" && alpha == 0) || (w == "ce" && alpha == 1)) continue;
      c.name = label + (w == "loss" ? " loss" : w == "kd" ? " KD" : " train CE");
      if (smooth > 1) c.name += fmt::format(" (mean of {})", smooth);
      std::vector<double> ys;
      for (const auto& e : log["steps"]) {
        ys.push_back(number(e, w.c_str(), "steps"));
        const size_t n = std::min(ys.size(), size_t(smooth));
        double sum = 0;
        for (size_t i = ys.size() - n; i < ys.size(); ++i) sum += ys[i];
        c.points.emplace_back(number(e, "step", "steps"), sum / double(n));
      }
    } else {
      throw Error(
          fmt::format("{}: unknown series '{}' (expected loss, kd, ce or eval)", source, w));
    }
    out.push_back(std::move(c));
  }
  return out;
}

std::string bench_svg(const BenchReport& r) {
  const double W = 1000, H = 470;
  // Panel frames (pixels): quality left, speed right; room below for rotated method names.
  const double ax0 = 80, ax1 = 470, py0 = 50, py1 = 370;
  const double bx0 = 570, bx1 = 970;
  std::string s = fmt::format(
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0:.0f}\" height=\"{1:.0f}\" "
      "viewBox=\"0 0 {0:.0f} {1:.0f}\" font-family=\"sans-serif\" font-size=\"11\">\n"
      "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
      W, H);
  s += fmt::format(
      "<text x=\"{:.0f}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">{}</text>\n", W / 2,
      xml_escape(fmt::format("minfer bench: {} ({}), {} {} threads, {}", r.model, r.arch, r.backend,
                             r.threads, r.date)));
  // The plot's note, short enough for one line of the 1000 px title area.
  int n_busy = 0, n_rows = 0;
  double worst = 0;
  for (auto& x : r.rows) {
    n_rows += x.status == "ok";
    if (bench_row_busy(x)) ++n_busy, worst = std::max(worst, x.load_cores);
  }
  if (n_busy > 0)
    s += fmt::format(
        "<text class=\"busy\" x=\"{:.0f}\" y=\"36\" text-anchor=\"middle\" font-size=\"10\" "
        "fill=\"#c00000\">{}</text>\n",
        W / 2,
        xml_escape(fmt::format("BUSY MACHINE: other processes kept up to {:.1f} of {} CPU cores "
                               "busy while {} of {} rows were timed (grey bars, *): speeds are low",
                               worst, r.cpus > 0 ? std::to_string(r.cpus) : "?", n_busy, n_rows)));

  // Panel 1: quality against size.
  struct Pt {
    const BenchRow* row;
    double x, y;
  };
  std::vector<Pt> pts;
  for (auto& x : r.rows) {
    if (x.status != "ok" || !ok_value(x.file_mb) || x.file_mb <= 0) continue;
    const double q = r.encoder ? 1.0 - x.cosine : x.ppl;
    if (ok_value(q)) pts.push_back({&x, x.file_mb, q});
  }
  const std::string ylabel =
      r.encoder ? "1 - cosine to f32 (lower is better)" : "perplexity (lower is better)";
  s += fmt::format(
      "<text x=\"{:.0f}\" y=\"{:.0f}\" text-anchor=\"middle\" font-size=\"12\">{}</text>\n",
      (ax0 + ax1) / 2, py0 - 12, r.encoder ? "embedding quality vs size" : "perplexity vs size");
  if (!pts.empty()) {
    double xmn = 1e300, xmx = -1e300, ymn = 1e300, ymx = -1e300;
    // 1 - cosine is 0 for a lossless format: floor it so a log axis can show it.
    double ypos = 1e300;
    for (auto& p : pts) {
      xmn = std::min(xmn, p.x);
      xmx = std::max(xmx, p.x);
      if (p.y > 0) ypos = std::min(ypos, p.y);
    }
    const double floor_y = r.encoder ? std::max(1e-9, ypos < 1e300 ? ypos / 10 : 1e-9) : 0;
    for (auto& p : pts) {
      if (r.encoder) p.y = std::max(p.y, floor_y);
      ymn = std::min(ymn, p.y);
    }
    // A broken method (binary, ternary without training: perplexity in the thousands) would squash
    // every useful point onto one line: perplexities above kOffScale x the best one are drawn in a
    // band along the top edge with their value instead.
    constexpr double kOffScale = 5;
    const double cap = r.encoder ? 1e300 : ymn * kOffScale;
    bool off_any = false;
    for (auto& p : pts) {
      if (p.y > cap)
        off_any = true;
      else
        ymx = std::max(ymx, p.y);
    }
    const double band = off_any ? 30 : 0;  // pixels reserved at the top for off-scale points
    const Axis xa = make_axis(xmn, xmx, ax0, ax1, 8);
    const Axis ya = make_axis(ymn, ymx, py1, py0 + band, 10);
    axes_frame(s, xa, ya, std::string("file MB") + (xa.log ? " (log)" : ""),
               ylabel + (ya.log ? " (log)" : ""));
    if (off_any)
      s += fmt::format(
          "<line x1=\"{0:.1f}\" y1=\"{1:.1f}\" x2=\"{2:.1f}\" y2=\"{1:.1f}\" stroke=\"#999\" "
          "stroke-dasharray=\"4 3\"/>\n",
          ax0, py0 + band - 4, ax1);
    auto px = [&](const Pt& p) { return xa.map(p.x); };
    auto py = [&](const Pt& p) { return p.y > cap ? py0 + band / 2 : ya.map(p.y); };
    auto label = [&](const Pt& p) {
      if (p.y > cap) return fmt::format("{} ({}) \u2191", p.row->method, ppl_str(p.y));
      if (r.encoder && 1.0 - p.row->cosine < floor_y) return p.row->method + " (\u2248 0)";
      return p.row->method;
    };
    std::vector<Box> placed;  // points first, so labels never cover one
    for (auto& p : pts) placed.push_back({px(p) - 4, py(p) - 4, px(p) + 4, py(p) + 4});
    for (auto& p : pts)
      s += fmt::format(
          "<circle class=\"point\" cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"4\" fill=\"{}\"><title>{}: "
          "{:.1f} MB, {}</title></circle>\n",
          px(p), py(p), p.y > cap ? "#d62728" : "#1f77b4", xml_escape(p.row->method), p.x,
          r.encoder ? fmt::format("cos {:.6f}", p.row->cosine) : fmt::format("ppl {:.4f}", p.y));
    // Each label takes the first free spot inside the frame: right or left of its point, then
    // rows further above and below (with a leader line once it is away from the point).
    std::vector<const Pt*> order;
    for (auto& p : pts) order.push_back(&p);
    std::sort(order.begin(), order.end(),
              [&](const Pt* a, const Pt* b) { return py(*a) < py(*b); });
    const Box frame{ax0, py0, ax1, py1};
    for (const Pt* p : order) {
      const std::string text = label(*p);
      const double w = kCharW * double(width(text)), cx = px(*p), cy = py(*p);
      Box best{cx + 6, cy - 8, cx + 6 + w, cy + 4};
      bool found = false;
      for (int k = 0; k <= 24 && !found; ++k)
        for (int sign : {1, -1}) {
          if (k == 0 && sign < 0) continue;
          const double dy = sign * 13.0 * k;
          for (double lx : {cx + 6, cx - 6 - w}) {
            Box b{lx, cy - 8 + dy, lx + w, cy + 4 + dy};
            bool ok = b.x0 >= frame.x0 + 2 && b.x1 <= frame.x1 - 2 && b.y0 >= frame.y0 + 1 &&
                      b.y1 <= frame.y1 - 1;
            for (auto& o : placed) ok = ok && !b.overlaps(o);
            if (ok) {
              best = b;
              found = true;
              break;
            }
          }
          if (found) break;
        }
      placed.push_back(best);
      if (std::abs((best.y0 + best.y1) / 2 - cy) > 8)
        s += fmt::format(
            "<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#aaa\" "
            "stroke-width=\"0.7\"/>\n",
            cx, cy, best.x0 > cx ? best.x0 - 1 : best.x1 + 1, (best.y0 + best.y1) / 2);
      s += fmt::format("<text class=\"label\" x=\"{:.1f}\" y=\"{:.1f}\">{}</text>\n", best.x0,
                       best.y1 - 2, xml_escape(text));
    }
  } else {
    s += fmt::format(
        "<text x=\"{:.0f}\" y=\"{:.0f}\" text-anchor=\"middle\">no measured rows</text>\n",
        (ax0 + ax1) / 2, (py0 + py1) / 2);
  }

  // Panel 2: speed per method as bars.
  std::vector<std::pair<const BenchRow*, double>> bars;
  for (auto& x : r.rows) {
    const double v = r.encoder ? x.prefill_tps : x.decode_tps;
    bars.push_back({&x, x.status == "ok" && ok_value(v) ? v : kNaN});
  }
  const std::string speed = r.encoder ? "encode tok/s" : "decode tok/s";
  s += fmt::format(
      "<text x=\"{:.0f}\" y=\"{:.0f}\" text-anchor=\"middle\" font-size=\"12\">{}</text>\n",
      (bx0 + bx1) / 2, py0 - 12, speed + " (higher is better)");
  double vmax = 0;
  for (auto& [row, v] : bars)
    if (ok_value(v)) vmax = std::max(vmax, v);
  Axis va{0, vmax > 0 ? vmax * 1.15 : 1, py1, py0, false};
  s += fmt::format(
      "<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" fill=\"none\" "
      "stroke=\"#444\"/>\n",
      bx0, py0, bx1 - bx0, py1 - py0);
  for (double v : ticks(va)) {
    const double py = va.map(v);
    s += fmt::format(
        "<line x1=\"{0:.1f}\" y1=\"{2:.1f}\" x2=\"{1:.1f}\" y2=\"{2:.1f}\" stroke=\"#ddd\"/>\n"
        "<text x=\"{3:.1f}\" y=\"{4:.1f}\" text-anchor=\"end\">{5}</text>\n",
        bx0, bx1, py, bx0 - 5, py + 4, xml_escape(tick_label(v)));
  }
  s += fmt::format(
      "<text x=\"{0:.1f}\" y=\"{1:.1f}\" text-anchor=\"middle\" "
      "transform=\"rotate(-90 {0:.1f} {1:.1f})\">{2}</text>\n",
      bx0 - 45, (py0 + py1) / 2, xml_escape(speed));
  const double slot = bars.empty() ? 0 : (bx1 - bx0) / double(bars.size());
  for (size_t i = 0; i < bars.size(); ++i) {
    const auto& [row, v] = bars[i];
    const double cx = bx0 + slot * (double(i) + 0.5);
    if (ok_value(v)) {
      const double top = va.map(v), bw = slot * 0.7;
      s += fmt::format(
          "<rect class=\"bar\" x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" "
          "fill=\"{}\"><title>{}: {:.1f} tok/s{}</title></rect>\n",
          cx - bw / 2, top, bw, py1 - top, bench_row_busy(*row) ? "#aaaaaa" : "#ff7f0e",
          xml_escape(row->method), v,
          bench_row_busy(*row)
              ? fmt::format(" (busy machine: others used {:.1f} cores)", row->load_cores)
              : "");
      s += fmt::format(
          "<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\" "
          "font-size=\"9\">{:.{}f}{}</text>\n",
          cx, top - 3, v, v < 10 ? 1 : 0, bench_row_busy(*row) ? "*" : "");
    } else {
      s += fmt::format(
          "<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\" font-size=\"9\">n/a</text>\n", cx,
          py1 - 3);
    }
    s += fmt::format(
        "<text x=\"{0:.1f}\" y=\"{1:.1f}\" text-anchor=\"end\" "
        "transform=\"rotate(-45 {0:.1f} {1:.1f})\">{2}</text>\n",
        cx + 3, py1 + 12, xml_escape(row->method));
  }
  s += "</svg>\n";
  return s;
}

void write_file_atomic(const std::string& path, const std::string& content) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    MINFER_CHECK(f.good(), "{}: cannot open for writing", tmp);
    f.write(content.data(), std::streamsize(content.size()));
    f.flush();
    MINFER_CHECK(f.good(), "{}: write failed ({} bytes)", tmp, content.size());
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    const std::string why = ec.message();
    std::filesystem::remove(tmp, ec);
    MINFER_FAIL("{}: cannot rename {} over it: {}", path, tmp, why);
  }
}

}  // namespace minfer
