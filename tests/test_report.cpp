// The bench report (app/report.h): the Markdown table lines up and shows the right cells, Δppl
// comes from the f32 row, JSON round-trips through nlohmann, the SVG is well-formed with one point
// per measured row placed by its size and quality, and files are written atomically; and the
// bench tool itself on MiniLM when it is installed.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "app/default_data.h"
#include "app/model_hub.h"
#include "app/report.h"
#include "tests/test_util.h"

using namespace minfer;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

BenchRow row(const std::string& method, double bpw, double mb, double ppl, double dec) {
  BenchRow r;
  r.method = method;
  r.bits_per_weight = bpw;
  r.linear_bpw = bpw;
  r.file_mb = mb;
  r.peak_rss_mb = mb + 100;
  r.eval_rss_mb = mb + 300;
  r.compress_rss_mb = 700;
  r.compress_s = 3.5;
  r.eval_s = 30;
  r.ppl = ppl;
  r.cosine = kNaN;
  r.cosine_min = kNaN;
  r.prefill_tps = 400;
  r.decode_tps = dec;
  r.weight_bytes_per_token = mb * 1e6 * 0.8;
  r.decode_gbps = r.weight_bytes_per_token * dec / 1e9;
  return r;
}

BenchReport causal_report() {
  BenchReport r;
  r.model = "smollm2";
  r.arch = "llama";
  r.backend = "cpu";
  r.threads = 2;
  r.cpu = "Test CPU @ 1 GHz";
  r.date = "2025-01-01T00:00:00Z";
  r.load_avg = 0.5;
  r.text = "wiki.test.raw";
  r.eval_tokens = 16384;
  r.ctx = 512;
  r.prefill_tokens = 512;
  r.decode_tokens = 64;
  r.rows = {row("f32", 32, 538.1, 28.5218, 31.2), row("int8", 8.6, 150.2, 28.61, 60.4),
            row("int4", 4.9, 90.0, 31.077, 70.0), row("binary", 1.9, 40.5, 123456.7, 95.0)};
  BenchRow bad;
  bad.method = "w8a8-static";
  bad.status = "skipped";
  bad.note = "calibration runs causal LMs only";
  for (double* v :
       {&bad.bits_per_weight, &bad.linear_bpw, &bad.file_mb, &bad.peak_rss_mb, &bad.eval_rss_mb,
        &bad.compress_rss_mb, &bad.compress_s, &bad.eval_s, &bad.ppl, &bad.cosine, &bad.cosine_min,
        &bad.prefill_tps, &bad.decode_tps, &bad.weight_bytes_per_token, &bad.decode_gbps})
    *v = kNaN;
  r.rows.push_back(bad);
  bench_fill_baseline(r);
  return r;
}

// Display width of UTF-8 text (code points).
size_t width(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

std::vector<std::string> lines_of(const std::string& s) {
  std::vector<std::string> v;
  std::istringstream in(s);
  for (std::string l; std::getline(in, l);) v.push_back(l);
  return v;
}

// Display columns of every '|' in a line.
std::vector<size_t> bars_at(const std::string& l) {
  std::vector<size_t> v;
  size_t col = 0;
  for (unsigned char c : l) {
    if ((c & 0xC0) == 0x80) continue;
    if (c == '|') v.push_back(col);
    ++col;
  }
  return v;
}

// Cells of a table line, trimmed.
std::vector<std::string> cells_of(const std::string& l) {
  std::vector<std::string> v;
  size_t a = l.find('|');
  while (a != std::string::npos) {
    size_t b = l.find('|', a + 1);
    if (b == std::string::npos) break;
    std::string c = l.substr(a + 1, b - a - 1);
    c.erase(0, c.find_first_not_of(' '));
    c.erase(c.find_last_not_of(' ') + 1);
    v.push_back(c);
    a = b;
  }
  return v;
}

// Minimal XML well-formedness: balanced and properly nested tags, quoted attributes, no stray
// '<' or unknown entities in text. Returns "" when fine, else what is wrong.
std::string xml_problem(const std::string& s) {
  std::vector<std::string> stack;
  size_t i = 0;
  int roots = 0;
  while (i < s.size()) {
    if (s[i] == '&') {
      bool known = false;
      for (const char* e : {"&amp;", "&lt;", "&gt;", "&quot;", "&apos;"})
        if (s.compare(i, std::strlen(e), e) == 0) known = true;
      if (!known) return "unknown entity at " + std::to_string(i);
      ++i;
      continue;
    }
    if (s[i] != '<') {
      ++i;
      continue;
    }
    if (s.compare(i, 2, "<?") == 0) {
      size_t e = s.find("?>", i);
      if (e == std::string::npos) return "unterminated <?";
      i = e + 2;
      continue;
    }
    size_t e = i + 1;
    bool in_quote = false;
    while (e < s.size() && (in_quote || s[e] != '>')) {
      if (s[e] == '"') in_quote = !in_quote;
      if (in_quote && s[e] == '<') return "'<' inside an attribute at " + std::to_string(e);
      ++e;
    }
    if (e >= s.size()) return "unterminated tag at " + std::to_string(i);
    std::string tag = s.substr(i + 1, e - i - 1);
    if (tag.empty()) return "empty tag";
    if (tag[0] == '/') {
      if (stack.empty() || stack.back() != tag.substr(1)) return "mismatched </" + tag + ">";
      stack.pop_back();
    } else {
      const bool self = tag.back() == '/';
      const std::string name = tag.substr(0, tag.find_first_of(" /\n"));
      if (stack.empty()) ++roots;
      if (!self) stack.push_back(name);
    }
    i = e + 1;
  }
  if (!stack.empty()) return "unclosed <" + stack.back() + ">";
  if (roots != 1) return "expected one root element, found " + std::to_string(roots);
  return "";
}

size_t count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
  return n;
}

// Attribute value after `key="` starting at or after `from`.
double attr(const std::string& s, size_t from, const std::string& key) {
  size_t p = s.find(key + "=\"", from);
  REQUIRE(p != std::string::npos);
  return std::stod(s.substr(p + key.size() + 2));
}

bool same(double a, double b) {
  return (std::isnan(a) && std::isnan(b)) || a == b;
}

}  // namespace

TEST_CASE("report: Δppl comes from the f32 row, NaN without one") {
  BenchReport r = causal_report();
  CHECK(r.rows[0].delta_ppl == doctest::Approx(0.0));
  CHECK(r.rows[1].delta_ppl == doctest::Approx(28.61 - 28.5218));
  CHECK(r.rows[2].delta_ppl == doctest::Approx(31.077 - 28.5218));
  CHECK(std::isnan(r.rows[4].delta_ppl));  // skipped row
  r.rows.erase(r.rows.begin());
  bench_fill_baseline(r);
  for (auto& x : r.rows) CHECK(std::isnan(x.delta_ppl));
}

TEST_CASE("report: the Markdown table lines up and shows each row's values") {
  const BenchReport r = causal_report();
  const auto lines = lines_of(bench_table(r));
  REQUIRE(lines.size() == 2 + r.rows.size());
  const auto ref = bars_at(lines[0]);
  CHECK(ref.size() == 10);  // 9 columns
  for (auto& l : lines) CHECK(bars_at(l) == ref);
  for (auto& l : lines) CHECK(width(l) == width(lines[0]));
  CHECK(cells_of(lines[0]) == std::vector<std::string>{"method", "bits/w", "file MB", "peak RSS MB",
                                                       "ppl", "Δppl", "prefill tok/s",
                                                       "decode tok/s", "decode GB/s"});
  CHECK(cells_of(lines[1])[0].find_first_not_of(":-") == std::string::npos);
  CHECK(cells_of(lines[1])[4].back() == ':');  // numbers right-aligned
  CHECK(cells_of(lines[2]) == std::vector<std::string>{"f32", "32.00", "538.1", "638", "28.522",
                                                       "+0.000", "400.0", "31.2", "13.4"});
  CHECK(cells_of(lines[3])[4] == "28.610");
  CHECK(cells_of(lines[3])[5] == "+0.088");
  CHECK(cells_of(lines[5])[4] == "123457");  // large perplexities without decimals
  const auto skipped = cells_of(lines[6]);
  CHECK(skipped[0] == "w8a8-static (skipped)");
  for (size_t c = 1; c < skipped.size(); ++c) CHECK(skipped[c] == "-");

  const std::string md = bench_markdown(r);
  CHECK(md.find("Test CPU @ 1 GHz") != std::string::npos);
  CHECK(md.find("2 threads") != std::string::npos);
  CHECK(md.find("- w8a8-static: calibration runs causal LMs only") != std::string::npos);

  BenchReport e = r;
  e.encoder = true;
  e.arch = "bert";
  for (auto& x : e.rows) {
    x.cosine = 0.99;
    x.cosine_min = 0.9;
  }
  const auto el = lines_of(bench_table(e));
  CHECK(cells_of(el[0]) == std::vector<std::string>{"method", "bits/w", "file MB", "peak RSS MB",
                                                    "cos vs f32", "min cos", "encode tok/s"});
  CHECK(cells_of(el[3])[4] == "0.99000");
  for (auto& l : el) CHECK(bars_at(l) == bars_at(el[0]));
}

TEST_CASE("report: JSON round-trips through nlohmann, NaN as null") {
  const BenchReport r = causal_report();
  const std::string text = bench_json(r);
  const nlohmann::json j = nlohmann::json::parse(text);
  REQUIRE(j["rows"].size() == r.rows.size());
  CHECK(j["threads"] == 2);
  CHECK(j["quality_metric"] == "perplexity");
  CHECK(j["rows"][1]["method"] == "int8");
  CHECK(j["rows"][1]["ppl"].get<double>() == r.rows[1].ppl);
  CHECK(j["rows"][4]["ppl"].is_null());
  CHECK(j["rows"][4]["status"] == "skipped");

  const BenchReport b = bench_from_json(text);
  CHECK(b.model == r.model);
  CHECK(b.arch == r.arch);
  CHECK(j["kv_cache"] == "f32");
  CHECK(b.kv_cache == "f32");
  CHECK(bench_markdown(r).find("KV cache") == std::string::npos);  // named only when not f32
  BenchReport h = r;
  h.kv_cache = "f16";
  CHECK(bench_from_json(bench_json(h)).kv_cache == "f16");
  CHECK(bench_markdown(h).find(", KV cache f16 |") != std::string::npos);
  CHECK(b.cpu == r.cpu);
  CHECK(b.date == r.date);
  CHECK(b.threads == r.threads);
  CHECK(b.eval_tokens == r.eval_tokens);
  CHECK(b.ctx == r.ctx);
  CHECK(b.encoder == r.encoder);
  REQUIRE(b.rows.size() == r.rows.size());
  for (size_t i = 0; i < r.rows.size(); ++i) {
    const BenchRow &x = r.rows[i], &y = b.rows[i];
    CHECK(x.method == y.method);
    CHECK(x.status == y.status);
    CHECK(x.note == y.note);
    CHECK(same(x.bits_per_weight, y.bits_per_weight));
    CHECK(same(x.file_mb, y.file_mb));
    CHECK(same(x.peak_rss_mb, y.peak_rss_mb));
    CHECK(same(x.ppl, y.ppl));
    CHECK(same(x.delta_ppl, y.delta_ppl));
    CHECK(same(x.cosine, y.cosine));
    CHECK(same(x.decode_tps, y.decode_tps));
    CHECK(same(x.decode_gbps, y.decode_gbps));
    CHECK(same(x.weight_bytes_per_token, y.weight_bytes_per_token));
    // One row alone (what the measuring process sends back) round-trips too.
    const BenchRow z = bench_row_from_json(bench_row_json(x));
    CHECK(z.method == x.method);
    CHECK(same(z.prefill_tps, x.prefill_tps));
    CHECK(same(z.compress_s, x.compress_s));
  }
  CHECK(bench_json(b) == text);
  CHECK_THROWS(bench_from_json("{\"rows\": 3}"));
  CHECK_THROWS(bench_row_from_json("{\"method\": \"int8\", \"ppl\": \"high\"}"));
  CHECK_THROWS(bench_row_from_json("not json"));
}

TEST_CASE("report: the SVG is well-formed, one point per measured row, placed by size/quality") {
  BenchReport r = causal_report();
  r.model = "a<b&\"c\"";  // escaped in the title
  const std::string svg = bench_svg(r);
  CHECK(xml_problem(svg) == "");
  CHECK(svg.rfind("<svg", 200) != std::string::npos);
  CHECK(count(svg, "class=\"point\"") == 4);  // the skipped row has no point
  CHECK(count(svg, "class=\"label\"") == 4);
  CHECK(count(svg, "class=\"bar\"") == 4);
  CHECK(svg.find("a&lt;b&amp;&quot;c&quot;") != std::string::npos);
  CHECK(svg.find("(log)") != std::string::npos);  // ppl spans 28 .. 1e5
  // Points in row order: a smaller file is further left; a lower perplexity is further down (SVG y
  // grows downwards).
  std::vector<double> cx, cy;
  for (size_t p = svg.find("class=\"point\""); p != std::string::npos;
       p = svg.find("class=\"point\"", p + 1)) {
    cx.push_back(attr(svg, p, "cx"));
    cy.push_back(attr(svg, p, "cy"));
  }
  REQUIRE(cx.size() == 4);
  CHECK(cx[0] > cx[1]);
  CHECK(cx[1] > cx[2]);
  CHECK(cx[2] > cx[3]);
  CHECK(cy[0] > cy[1]);  // 28.52 below 28.61
  CHECK(cy[1] > cy[2]);
  CHECK(cy[2] > cy[3]);
  // Bars: a faster method is a taller bar.
  std::vector<double> bh;
  for (size_t p = svg.find("class=\"bar\""); p != std::string::npos;
       p = svg.find("class=\"bar\"", p + 1))
    bh.push_back(attr(svg, p, "height"));
  REQUIRE(bh.size() == 4);
  CHECK(bh[0] < bh[1]);
  CHECK(bh[1] < bh[2]);
  CHECK(bh[2] < bh[3]);

  // Encoder: 1 - cosine, with the lossless row (cosine 1) still drawn.
  BenchReport e = causal_report();
  e.encoder = true;
  e.arch = "bert";
  const double cos[] = {1.0, 0.9999, 0.99, 0.5};
  for (size_t i = 0; i < 4; ++i) e.rows[i].cosine = e.rows[i].cosine_min = cos[i];
  const std::string esvg = bench_svg(e);
  CHECK(xml_problem(esvg) == "");
  CHECK(count(esvg, "class=\"point\"") == 4);
  CHECK(esvg.find("1 - cosine") != std::string::npos);

  BenchReport none = causal_report();
  none.rows.resize(0);
  CHECK(xml_problem(bench_svg(none)) == "");
}

TEST_CASE("report: speeds timed on a busy machine are marked in the table, JSON and plot") {
  BenchReport r = causal_report();
  r.cpus = 2;
  // Quiet for f32 and int8 (0.1 cores, below kBusyCores), busy for int4 and binary.
  r.rows[0].load_cores = 0.0;
  r.rows[1].load_cores = 0.1;
  r.rows[2].load_cores = 1.93;
  r.rows[3].load_cores = 0.5;
  const auto lines = lines_of(bench_table(r));
  CHECK(cells_of(lines[2])[7] == "31.2");  // quiet: plain
  CHECK(cells_of(lines[3])[6] == "400.0");
  CHECK(cells_of(lines[4])[6] == "400.0*");  // busy: every speed cell starred
  CHECK(cells_of(lines[4])[7] == "70.0*");
  CHECK(cells_of(lines[4])[8] == "5.0*");    // 72 MB x 70 tok/s
  CHECK(cells_of(lines[4])[4] == "31.077");  // quality is not a speed
  for (auto& l : lines) CHECK(width(l) == width(lines[0]));
  const std::string note = bench_busy_note(r);
  CHECK(note.find("1.9 of 2 CPU cores") != std::string::npos);
  CHECK(note.find("int4, binary") != std::string::npos);
  CHECK(note.find("int8") == std::string::npos);
  CHECK(bench_markdown(r).find("**" + note + ".**") != std::string::npos);

  const nlohmann::json j = nlohmann::json::parse(bench_json(r));
  CHECK(j["busy"] == true);
  CHECK(j["busy_note"] == note);
  CHECK(j["cpus"] == 2);
  CHECK(j["rows"][2]["busy"] == true);
  CHECK(j["rows"][1]["busy"] == false);
  CHECK(j["rows"][2]["load_cores"].get<double>() == 1.93);
  CHECK(j["rows"][4]["load_cores"].is_null());  // never measured
  const BenchReport b = bench_from_json(bench_json(r));
  CHECK(b.cpus == 2);
  CHECK(b.rows[2].load_cores == 1.93);
  CHECK(std::isnan(b.rows[4].load_cores));

  const std::string svg = bench_svg(r);
  CHECK(xml_problem(svg) == "");
  CHECK(count(svg, "class=\"busy\"") == 1);
  CHECK(svg.find("1.9 of 2 CPU cores busy while 2 of 4 rows were timed") != std::string::npos);
  CHECK(count(svg, "fill=\"#aaaaaa\"") == 2);  // the two busy rows' bars

  // Nothing measured, or a quiet machine: no note anywhere.
  const BenchReport quiet = causal_report();
  CHECK(bench_busy_note(quiet) == "");
  CHECK(bench_markdown(quiet).find("BUSY") == std::string::npos);
  CHECK(count(bench_svg(quiet), "class=\"busy\"") == 0);
  CHECK(nlohmann::json::parse(bench_json(quiet))["busy"] == false);
}

TEST_CASE("report: write_file_atomic replaces the file and leaves no temporary") {
  test::TempDir dir("report");
  const std::string p = dir / "out.json";
  write_file_atomic(p, "first");
  write_file_atomic(p, "second, longer");
  std::ifstream f(p);
  std::string got((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  CHECK(got == "second, longer");
  CHECK_FALSE(std::filesystem::exists(p + ".tmp"));
  CHECK_THROWS(write_file_atomic(dir / "no-such-dir/out.json", "x"));
}

// The tool end to end on the small encoder: forked compress + measure processes, the JSON file,
// the table. Needs the built tools (`make test` sets MINFER_BIN) and MiniLM installed; the f32
// row must reproduce the reference embeddings and int8 must stay close but not identical.
TEST_CASE("real: bench tool on MiniLM f32 and int8") {
  const char* bin = std::getenv("MINFER_BIN");
  if (!bin || !*bin) {
    MESSAGE("skipping: MINFER_BIN is not set (run through `make test`)");
    return;
  }
  // `make asan-test` builds the one tool its cases need (distill), not bench.
  if (!std::filesystem::exists(std::string(bin) + "/bench")) {
    MESSAGE("skipping: " << bin << "/bench is not built");
    return;
  }
  try {
    resolve_model("minilm", false);
  } catch (const std::exception& e) {
    MESSAGE("skipping: minilm is not installed (" << std::string(e.what()) << ")");
    return;
  }
  if (!std::filesystem::exists("../shared/data/wikitext-2-raw/wiki.test.raw")) {
    MESSAGE("skipping: WikiText-2 test text not found");
    return;
  }
  test::TempDir dir("bench");
  const std::string js = dir / "out.json", svg = dir / "out.svg";
  const std::string cmd = fmt::format(
      "{}/bench -m minilm --methods f32,int8 --lines 8 --prefill 32 --reps 1 -t 2 -q --work {} "
      "--json {} --plot {} 2>&1",
      bin, dir / "work", js, svg);
  FILE* p = popen(cmd.c_str(), "r");
  REQUIRE(p != nullptr);
  std::string out;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  const int rc = pclose(p);
  INFO(out);
  REQUIRE(rc == 0);
  CHECK(out.find("| f32 ") != std::string::npos);
  CHECK(out.find("| int8 ") != std::string::npos);
  std::ifstream f(js);
  const BenchReport r = bench_from_json(
      std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()));
  CHECK(r.encoder);
  CHECK(r.arch == "bert");
  CHECK(r.eval_tokens == 8);
  REQUIRE(r.rows.size() == 2);
  const BenchRow &a = r.rows[0], &b = r.rows[1];
  CHECK(a.status == "ok");
  CHECK(b.status == "ok");
  CHECK(a.bits_per_weight == doctest::Approx(32.0));
  CHECK(a.cosine > 0.999999);
  CHECK(b.cosine > 0.99);
  CHECK(b.cosine < 0.999999);
  CHECK(b.cosine_min <= b.cosine);
  CHECK(b.file_mb < a.file_mb / 2.5);
  CHECK(b.bits_per_weight < 16);
  CHECK(a.prefill_tps > 0);
  CHECK(a.peak_rss_mb > 0);
  CHECK(std::isnan(a.decode_tps));
  // The compressed folders are removed afterwards; the plot is there.
  CHECK_FALSE(std::filesystem::exists(dir / "work/f32"));
  CHECK_FALSE(std::filesystem::exists(dir / "work/int8"));
  CHECK(std::filesystem::exists(svg));
}

TEST_CASE(
    "default data: WikiText-2 from $MINFER_WIKITEXT, the working directory, or beside the "
    "program") {
  namespace fs = std::filesystem;
  // Made before `restore`, so removed after the working directory is back (TMPDIR may be
  // relative: test shards).
  test::TempDir tmp("wikitext");
  const fs::path dir = fs::absolute(tmp.path);
  // The working directory and $MINFER_WIKITEXT come back however the case ends.
  struct Restore {
    fs::path cwd = fs::current_path();
    bool had_env = std::getenv("MINFER_WIKITEXT") != nullptr;
    std::string env = had_env ? std::getenv("MINFER_WIKITEXT") : "";
    ~Restore() {
      std::error_code ec;
      fs::current_path(cwd, ec);
      if (had_env)
        ::setenv("MINFER_WIKITEXT", env.c_str(), 1);
      else
        ::unsetenv("MINFER_WIKITEXT");
    }
  } restore;
  const fs::path saved_cwd = restore.cwd;
  auto touch = [](const fs::path& p) {
    fs::create_directories(p.parent_path());
    std::ofstream(p) << "text\n";
  };
  // $MINFER_WIKITEXT, and then only it.
  touch(dir / "env" / "wiki.test.raw");
  ::setenv("MINFER_WIKITEXT", (dir / "env").c_str(), 1);
  CHECK(find_wikitext("wiki.test.raw", "pass --text FILE") ==
        (dir / "env" / "wiki.test.raw").string());
  const std::string env_msg =
      "MINFER_WIKITEXT=" + (dir / "env").string() + " has no such file; pass --calib-text FILE";
  CHECK_THROWS_WITH(find_wikitext("wiki.valid.raw", "pass --calib-text FILE"),
                    doctest::Contains(env_msg.c_str()));
  CHECK_THROWS_WITH(locate_wikitext("wiki.valid.raw"), doctest::Contains("MINFER_WIKITEXT="));
  ::unsetenv("MINFER_WIKITEXT");
  // From the working directory: ../shared/data first, then shared/data.
  touch(dir / "a" / "shared" / "data" / "wikitext-2-raw" / "wiki.valid.raw");
  fs::create_directories(dir / "a" / "checkout");
  fs::current_path(dir / "a" / "checkout");
  CHECK(locate_wikitext("wiki.valid.raw") == "../shared/data/wikitext-2-raw/wiki.valid.raw");
  fs::current_path(dir / "a");
  CHECK(locate_wikitext("wiki.valid.raw") == "shared/data/wikitext-2-raw/wiki.valid.raw");
  // Nowhere: "" for the optional default, an error saying where it looked and what to pass.
  fs::current_path(dir);
  CHECK(locate_wikitext("wiki.none.raw").empty());
  CHECK_THROWS_WITH(find_wikitext("wiki.none.raw", "pass --text FILE"),
                    doctest::Contains("pass --text FILE, or set MINFER_WIKITEXT"));
  // Beside the program: this test binary's folders upward, from any working directory. Only
  // where this checkout has the data beside it (the development layout, ../shared/data).
  const fs::path beside = fs::weakly_canonical(saved_cwd / ".." / "shared" / "data" /
                                               "wikitext-2-raw" / "wiki.test.raw");
  if (fs::exists(beside) && fs::exists(saved_cwd / "build" / "bin"))
    CHECK(fs::weakly_canonical(locate_wikitext("wiki.test.raw")) == beside);
}
