// safetensors I/O: round trips through save_safetensors, a file written by the Python reference
// implementation (tests/fixtures/safetensors/make_reference.py), hand-built byte files for every
// kind of bad input, and WeightStore over single and sharded checkpoints.
#include <doctest/doctest.h>
#include <stdlib.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "engine/error.h"
#include "engine/safetensors.h"
#include "tests/test_util.h"

namespace {

namespace fs = std::filesystem;
using minfer::DType;
using minfer::SafetensorsFile;
using minfer::Storage;
using minfer::Tensor;
using minfer::WeightStore;

using TempDir = minfer::test::TempDir;

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  REQUIRE(out.good());
  out.write(bytes.data(), std::streamsize(bytes.size()));
  REQUIRE(out.good());
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.good());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string le64(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = char(uint8_t(n >> (8 * i)));
  return s;
}

// A safetensors file by hand: 8-byte little-endian header length, the header text, the data.
std::string st_bytes(const std::string& header, const std::string& data) {
  return le64(header.size()) + header + data;
}

template <typename T>
std::string bytes_of(std::initializer_list<T> values) {
  std::string s(values.size() * sizeof(T), '\0');
  std::memcpy(s.data(), values.begin(), s.size());
  return s;
}

// Runs f, expecting a minfer::Error; returns its message.
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const minfer::Error& e) {
    return e.what();
  }
  FAIL("expected a minfer::Error, nothing was thrown");
  return "";
}

// Writes `bytes` to dir/name and returns the message SafetensorsFile::open fails with.
std::string open_error(const TempDir& dir, const std::string& bytes,
                       const std::string& name = "bad.safetensors") {
  const std::string path = dir / name;
  write_file(path, bytes);
  return error_of([&] { SafetensorsFile::open(path); });
}

// CHECK that an error message contains `sub`, printing both when it does not.
#define CHECK_HAS(msg, sub)                            \
  CHECK_MESSAGE(                                       \
      std::string(msg).find(sub) != std::string::npos, \
      (std::string("\n  message: ") + std::string(msg) + "\n  lacks:   " + std::string(sub)))

// True when the tensor's bytes lie inside the file mapping (a view, not a copy).
bool is_view_of_map(const Tensor& t) {
  const auto& s = t.storage();
  if (!s || s->kind() != Storage::Kind::Mmap) return false;
  const auto* base = static_cast<const uint8_t*>(s->data());
  const auto* p = static_cast<const uint8_t*>(t.raw());
  return p >= base && p + t.nbytes() <= base + s->size();
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

template <typename T>
Tensor make(DType dt, std::initializer_list<int64_t> shape, std::initializer_list<T> values) {
  Tensor t = Tensor::empty(dt, shape);
  REQUIRE(t.nbytes() == values.size() * sizeof(T));
  if (values.size()) std::memcpy(t.raw(), values.begin(), t.nbytes());
  return t;
}

// One tensor entry in a hand-built header.
std::string entry(const std::string& name, const std::string& dtype, const std::string& shape,
                  const std::string& offsets) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape +
         ",\"data_offsets\":" + offsets + "}";
}

// A hand-built header object from entries.
std::string header(std::initializer_list<std::string> entries) {
  std::string s = "{";
  for (const std::string& e : entries) s.append(s.size() > 1 ? "," : "").append(e);
  return s.append("}");
}

}  // namespace

TEST_CASE("safetensors: round trip of every dtype with metadata is zero-copy") {
  TempDir dir;
  const std::string path = dir / "all.safetensors";
  // Ordered by falling dtype size (as the reference writer does) so every tensor is aligned.
  std::vector<std::pair<std::string, Tensor>> in = {
      {"f64", make<double>(DType::F64, {2}, {1.5, -2.25})},
      {"i64", make<int64_t>(DType::I64, {3}, {-1, 0, int64_t(1) << 40})},
      {"f32", make<float>(DType::F32, {2, 3}, {0, 1, 2, 3, 4, 5})},
      {"scalar", make<float>(DType::F32, {}, {7.5f})},
      {"empty", make<float>(DType::F32, {0, 3}, {})},
      {"i32", make<int32_t>(DType::I32, {1, 2, 1, 2}, {-7, 8, 9, -10})},
      {"f16", make<uint16_t>(DType::F16, {3}, {0x3C00, 0xC000, 0x7BFF})},
      {"bf16", make<uint16_t>(DType::BF16, {2, 2}, {0x3F80, 0xC020, 0x4049, 0x0000})},
      {"i16", make<int16_t>(DType::I16, {2}, {-32768, 32767})},
      {"i8", make<int8_t>(DType::I8, {3}, {-128, 0, 127})},
      {"u8", make<uint8_t>(DType::U8, {4}, {0, 1, 254, 255})},
      {"bool", make<uint8_t>(DType::BOOL, {2}, {1, 0})},
  };
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "h\xC3\xA9llo"}};
  minfer::save_safetensors(path, in, meta);
  CHECK_FALSE(fs::exists(path + ".tmp"));

  // The bytes follow the format, checked independently of our reader.
  const std::string raw = read_file(path);
  REQUIRE(raw.size() >= 8);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | uint8_t(raw[i]);
  CHECK(n % 8 == 0);
  size_t total = 0;
  for (auto& [name, t] : in) total += t.nbytes();
  CHECK(raw.size() == 8 + n + total);
  const auto hj = nlohmann::json::parse(raw.substr(8, n));
  CHECK(hj["__metadata__"]["note"] == "h\xC3\xA9llo");
  CHECK(hj["f32"]["dtype"] == "F32");
  CHECK(hj["f32"]["shape"] == nlohmann::json::array({2, 3}));
  CHECK(hj["f32"]["data_offsets"] == nlohmann::json::array({40, 64}));
  CHECK(hj["scalar"]["shape"] == nlohmann::json::array());
  CHECK(hj["bool"]["data_offsets"] == nlohmann::json::array({total - 2, total}));

  auto f = SafetensorsFile::open(path);
  CHECK(f->path() == path);
  CHECK(f->metadata() == meta);
  REQUIRE(f->tensors().size() == in.size());
  const Storage* map = f->get("f64").storage().get();
  for (auto& [name, t] : in) {
    CAPTURE_BINDING(name);
    REQUIRE(f->has(name));
    const Tensor& r = f->get(name);
    CHECK(r.dtype() == t.dtype());
    CHECK(r.shape_str() == t.shape_str());
    CHECK(same_bytes(r, t));
    CHECK(is_view_of_map(r));
    CHECK(r.storage().get() == map);  // one mapping shared by every tensor
  }
  CHECK(f->get("f32").data<float>()[5] == 5.0f);
  CHECK(f->get("scalar").ndim() == 0);
  CHECK(f->get("scalar").data<float>()[0] == 7.5f);

  // Saving over an existing file replaces it atomically: the old mapping stays valid.
  minfer::save_safetensors(path, {{"only", make<float>(DType::F32, {1}, {42.0f})}});
  CHECK_FALSE(fs::exists(path + ".tmp"));
  auto g = SafetensorsFile::open(path);
  CHECK(g->tensors().size() == 1);
  CHECK(g->metadata().empty());
  CHECK(g->get("only").data<float>()[0] == 42.0f);
  CHECK(f->get("f32").data<float>()[5] == 5.0f);
  const std::string raw2 = read_file(path);
  const nlohmann::json h2 = nlohmann::json::parse(raw2.substr(8, raw2.size() - 8 - 4));
  CHECK_FALSE(h2.contains("__metadata__"));  // empty metadata is not written
}

TEST_CASE("safetensors: misaligned tensors are read through an aligned copy") {
  TempDir dir;
  const std::string path = dir / "odd.safetensors";
  minfer::save_safetensors(path, {{"u8", make<uint8_t>(DType::U8, {3}, {1, 2, 3})},
                                  {"f32", make<float>(DType::F32, {2}, {-1.5f, 3.25f})}});
  auto f = SafetensorsFile::open(path);
  CHECK(is_view_of_map(f->get("u8")));
  const Tensor& t = f->get("f32");  // data offset 3: not 4-byte aligned
  CHECK(t.storage()->kind() == Storage::Kind::Host);
  CHECK(reinterpret_cast<uintptr_t>(t.raw()) % 4 == 0);
  CHECK(t.data<float>()[0] == -1.5f);
  CHECK(t.data<float>()[1] == 3.25f);
}

TEST_CASE("safetensors: reads the file written by the Python reference implementation") {
  // Values as written by tests/fixtures/safetensors/make_reference.py.
  auto f = SafetensorsFile::open("tests/fixtures/safetensors/reference.safetensors");
  CHECK(f->metadata() ==
        std::map<std::string, std::string>{{"format", "pt"}, {"generator", "make_reference.py"}});
  CHECK(f->tensors().size() == 11);
  for (const auto& [name, t] : f->tensors()) {
    CAPTURE_BINDING(name);
    CHECK(is_view_of_map(t));
  }

  const Tensor& a = f->get("f32_arange");
  REQUIRE(a.dtype() == DType::F32);
  REQUIRE(a.shape_str() == "[2, 3]");
  for (int i = 0; i < 6; ++i) CHECK(a.data<float>()[i] == float(i));

  const Tensor& h = f->get("f16_vals");
  REQUIRE(h.dtype() == DType::F16);
  REQUIRE(h.shape_str() == "[4]");
  const uint16_t f16_bits[] = {0x3800, 0xBC00, 0x4000, 0x7BFF};  // 0.5, -1, 2, 65504
  for (int i = 0; i < 4; ++i) CHECK(h.data<uint16_t>()[i] == f16_bits[i]);

  const Tensor& b = f->get("bf16_vals");
  REQUIRE(b.dtype() == DType::BF16);
  REQUIRE(b.shape_str() == "[3]");
  const uint16_t bf16_bits[] = {0x3F80, 0xC020, 0x4049};  // 1, -2.5, 3.140625
  for (int i = 0; i < 3; ++i) CHECK(b.data<uint16_t>()[i] == bf16_bits[i]);
  const Tensor bf = b.to_f32();
  CHECK(bf.data<float>()[2] == 3.140625f);

  const Tensor& d = f->get("f64_scalar");
  REQUIRE(d.dtype() == DType::F64);
  CHECK(d.ndim() == 0);
  CHECK(d.numel() == 1);
  CHECK(d.data<double>()[0] == -0.125);

  const Tensor& i64 = f->get("i64_vals");
  REQUIRE(i64.dtype() == DType::I64);
  REQUIRE(i64.shape_str() == "[2, 2]");
  const int64_t i64v[] = {-1, 0, 1, int64_t(1) << 40};
  for (int i = 0; i < 4; ++i) CHECK(i64.data<int64_t>()[i] == i64v[i]);

  const Tensor& i32 = f->get("i32_arange");
  REQUIRE(i32.dtype() == DType::I32);
  REQUIRE(i32.shape_str() == "[2, 1, 2]");
  for (int i = 0; i < 4; ++i) CHECK(i32.data<int32_t>()[i] == i - 2);

  const Tensor& i16 = f->get("i16_vals");
  REQUIRE(i16.dtype() == DType::I16);
  CHECK(i16.data<int16_t>()[0] == -32768);
  CHECK(i16.data<int16_t>()[1] == 0);
  CHECK(i16.data<int16_t>()[2] == 32767);

  const Tensor& i8 = f->get("i8_vals");
  REQUIRE(i8.dtype() == DType::I8);
  const int8_t i8v[] = {-128, -1, 0, 127};
  for (int i = 0; i < 4; ++i) CHECK(i8.data<int8_t>()[i] == i8v[i]);

  const Tensor& u8 = f->get("u8_arange");
  REQUIRE(u8.dtype() == DType::U8);
  REQUIRE(u8.shape_str() == "[5]");
  for (int i = 0; i < 5; ++i) CHECK(u8.data<uint8_t>()[i] == 50 * i);

  const Tensor& bo = f->get("bool_vals");
  REQUIRE(bo.dtype() == DType::BOOL);
  CHECK(bo.data<uint8_t>()[0] == 1);
  CHECK(bo.data<uint8_t>()[1] == 0);
  CHECK(bo.data<uint8_t>()[2] == 1);

  const Tensor& e = f->get("f32_empty");
  CHECK(e.shape_str() == "[0, 4]");
  CHECK(e.numel() == 0);

  const std::string m = error_of([&] { f->get("nope"); });
  CHECK_HAS(m, "reference.safetensors");
  CHECK_HAS(m, "missing tensor 'nope'");
}

TEST_CASE("safetensors: hand-built files without padding and with gaps are read") {
  TempDir dir;
  // Unpadded header (29 + ... bytes), two tensors with 4 unused bytes between them.
  const std::string hdr =
      header({entry("a", "F32", "[2]", "[0,8]"), entry("b", "I16", "[1,1]", "[12,14]")});
  const std::string data =
      bytes_of<float>({1.0f, -2.0f}) + std::string(4, '\xAA') + bytes_of<int16_t>({-300});
  const std::string path = dir / "hand.safetensors";
  write_file(path, st_bytes(hdr, data));
  auto f = SafetensorsFile::open(path);
  CHECK(f->metadata().empty());
  CHECK(f->get("a").shape_str() == "[2]");
  CHECK(f->get("b").shape_str() == "[1, 1]");
  CHECK(f->get("b").dtype() == DType::I16);
  CHECK(f->get("b").data<int16_t>()[0] == -300);
  // Header + data of odd length: 'a' sits at an odd file offset, still read correctly.
  CHECK(f->get("a").to_f32().data<float>()[0] == 1.0f);
  CHECK(f->get("a").to_f32().data<float>()[1] == -2.0f);

  // An empty header object is a valid file with no tensors.
  write_file(path, st_bytes("{}      ", ""));
  CHECK(SafetensorsFile::open(path)->tensors().empty());
}

TEST_CASE("safetensors: truncated files and bad header lengths are rejected") {
  TempDir dir;
  std::string m = open_error(dir, "", "empty.safetensors");
  CHECK_HAS(m, "empty.safetensors");
  CHECK_HAS(m, "file is 0 bytes");
  CHECK_HAS(m, "expected at least the 8-byte header length");

  m = open_error(dir, std::string("\x10\0\0\0\0", 5), "short.safetensors");
  CHECK_HAS(m, "short.safetensors");
  CHECK_HAS(m, "file is 5 bytes");

  // Header length larger than the file.
  m = open_error(dir, le64(1000) + "{}", "long.safetensors");
  CHECK_HAS(m, "long.safetensors");
  CHECK_HAS(m, "header length 1000 runs past the end of the file (10 bytes, so at most 2)");

  // A length that would overflow 8 + N.
  m = open_error(dir, le64(~uint64_t(0)) + "{}");
  CHECK_HAS(m, "header length 18446744073709551615 runs past the end of the file");

  // A valid file cut short inside the header, then inside the data.
  const std::string hdr = header({entry("w", "F32", "[4]", "[0,16]")});
  const std::string full = st_bytes(hdr, bytes_of<float>({1, 2, 3, 4}));
  m = open_error(dir, full.substr(0, 20), "cut_header.safetensors");
  CHECK_HAS(m, "cut_header.safetensors");
  CHECK_HAS(m, fmt::format("header length {} runs past the end of the file", hdr.size()));
  m = open_error(dir, full.substr(0, full.size() - 3), "cut_data.safetensors");
  CHECK_HAS(m, "cut_data.safetensors");
  CHECK_HAS(m, "tensor 'w'");
  CHECK_HAS(m, "data_offsets [0, 16] run past the end of the data buffer (expected end <= 13");

  m = error_of([&] { SafetensorsFile::open(dir / "does_not_exist.safetensors"); });
  CHECK_HAS(m, "does_not_exist.safetensors");
  CHECK_HAS(m, "cannot open");
}

TEST_CASE("safetensors: malformed headers are rejected") {
  TempDir dir;
  std::string m = open_error(dir, st_bytes("{\"a\": {\"dtype\": ", ""), "json.safetensors");
  CHECK_HAS(m, "json.safetensors");
  CHECK_HAS(m, "header is not valid JSON");

  m = open_error(dir, st_bytes("[1, 2]", ""));
  CHECK_HAS(m, "bad.safetensors");
  CHECK_HAS(m, "header must be a JSON object, found array");

  m = open_error(dir, st_bytes("\"text\"", ""));
  CHECK_HAS(m, "header must be a JSON object, found string");

  m = open_error(
      dir,
      st_bytes(header({entry("w", "U8", "[1]", "[0,1]"), entry("w", "U8", "[1]", "[1,2]")}), "ab"));
  CHECK_HAS(m, "header has the key 'w' more than once");

  m = open_error(dir, st_bytes("{\"w\": [1, 2]}", ""));
  CHECK_HAS(m, "tensor 'w': expected an object {dtype, shape, data_offsets}, found [1,2]");

  m = open_error(dir, st_bytes("{\"w\": {\"dtype\": \"F32\", \"shape\": [1]}}", "abcd"));
  CHECK_HAS(m, "tensor 'w': missing field 'data_offsets'");

  m = open_error(dir, st_bytes("{\"w\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", "abcd"));
  CHECK_HAS(m, "tensor 'w': missing field 'dtype'");

  m = open_error(dir, st_bytes("{\"w\": {\"dtype\": \"F32\", \"data_offsets\": [0, 4]}}", "abcd"));
  CHECK_HAS(m, "tensor 'w': missing field 'shape'");

  m = open_error(dir, st_bytes("{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": "
                               "[0, 4], \"extra\": 1}}",
                               "abcd"));
  CHECK_HAS(m, "tensor 'w': unexpected field 'extra'");
}

TEST_CASE("safetensors: unknown dtypes and bad shapes are rejected") {
  TempDir dir;
  for (const char* dt : {"F8_E4M3", "Q4", "f32"}) {
    CAPTURE(dt);
    const std::string m =
        open_error(dir, st_bytes(header({entry("model.layers.0.w", dt, "[1]", "[0,1]")}), "x"),
                   "dt.safetensors");
    CHECK_HAS(m, "dt.safetensors");
    CHECK_HAS(m, "tensor 'model.layers.0.w'");
    CHECK_HAS(m, fmt::format("unsupported dtype '{}'", dt));
    CHECK_HAS(m, "expected one of F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL");
  }
  std::string m = open_error(
      dir, st_bytes("{\"w\": {\"dtype\": 5, \"shape\": [1], \"data_offsets\": [0, 1]}}", "x"));
  CHECK_HAS(m, "tensor 'w': dtype must be a string, found 5");

  m = open_error(dir, st_bytes(header({entry("neg", "F32", "[-1,2]", "[0,0]")}), ""));
  CHECK_HAS(m, "bad.safetensors");
  CHECK_HAS(m,
            "tensor 'neg': shape must be an array of non-negative integers, found [-1,2] "
            "(dimension 0 is -1)");

  m = open_error(dir, st_bytes(header({entry("frac", "F32", "[2.5]", "[0,8]")}), "abcdefgh"));
  CHECK_HAS(m, "tensor 'frac': shape must be an array of non-negative integers, found [2.5]");

  m = open_error(dir, st_bytes(header({entry("str", "F32", "\"2x3\"", "[0,24]")}), ""));
  CHECK_HAS(m, "tensor 'str': shape must be an array of non-negative integers, found \"2x3\"");

  m = open_error(dir, st_bytes(header({entry("r5", "U8", "[1,1,1,1,1]", "[0,1]")}), "x"));
  CHECK_HAS(m, "tensor 'r5': rank 5 is not supported (expected at most 4 dimensions)");

  m = open_error(
      dir, st_bytes(header({entry("big", "F32", "[4294967296,4294967296,4]", "[0,4]")}), "abcd"));
  CHECK_HAS(m,
            "tensor 'big': shape [4294967296, 4294967296, 4] of F32 is too large (its byte "
            "size overflows int64)");
  // 2^61 floats = 2^63 bytes: fits in uint64 but not in int64.
  m = open_error(dir,
                 st_bytes(header({entry("big", "F32", "[2305843009213693952]", "[0,4]")}), ""));
  CHECK_HAS(m, "tensor 'big': shape [2305843009213693952] of F32 is too large");
  // A zero dimension does not excuse the others: numel() elsewhere is a running product.
  m = open_error(dir,
                 st_bytes(header({entry("z", "F32", "[4294967296,4294967296,0]", "[0,0]")}), ""));
  CHECK_HAS(m, "tensor 'z': shape [4294967296, 4294967296, 0] of F32 is too large");

  // Empty tensors with a large (but representable) other dimension are fine.
  const std::string ok = dir / "zero.safetensors";
  write_file(ok, st_bytes(header({entry("z", "F32", "[0,4294967296]", "[0,0]"),
                                  entry("y", "U8", "[2,0,3]", "[0,0]")}),
                          ""));
  auto zf = SafetensorsFile::open(ok);
  CHECK(zf->get("z").numel() == 0);
  CHECK(zf->get("z").shape_str() == "[0, 4294967296]");
  CHECK(zf->get("y").numel() == 0);
}

TEST_CASE("safetensors: bad data_offsets are rejected") {
  TempDir dir;
  const std::string data16(16, '\0');
  std::string m = open_error(dir, st_bytes(header({entry("w", "F32", "[8]", "[0,32]")}), data16),
                             "oob.safetensors");
  CHECK_HAS(m, "oob.safetensors");
  CHECK_HAS(m,
            "tensor 'w': data_offsets [0, 32] run past the end of the data buffer (expected "
            "end <= 16 bytes");

  m = open_error(dir, st_bytes(header({entry("w", "F32", "[0]", "[12,8]")}), data16));
  CHECK_HAS(m, "tensor 'w': data_offsets [12, 8] has begin > end");

  m = open_error(dir, st_bytes(header({entry("w", "F32", "[2,3]", "[0,16]")}), data16),
                 "size.safetensors");
  CHECK_HAS(m, "size.safetensors");
  CHECK_HAS(m,
            "tensor 'w': shape [2, 3] of F32 (4 bytes each) needs 24 bytes, found "
            "data_offsets [0, 16] holding 16 bytes");

  m = open_error(
      dir,
      st_bytes(header({entry("a", "F32", "[2]", "[0,8]"), entry("b", "F32", "[2]", "[4,12]")}),
               data16),
      "overlap.safetensors");
  CHECK_HAS(m, "overlap.safetensors");
  CHECK_HAS(m, "tensors 'a' (bytes [0, 8)) and 'b' (bytes [4, 12)) overlap");

  // Overlap also found when the header lists the later tensor first.
  m = open_error(dir, st_bytes(header({entry("late", "U8", "[8]", "[8,16]"),
                                       entry("early", "U8", "[10]", "[0,10]")}),
                               data16));
  CHECK_HAS(m, "tensors 'early' (bytes [0, 10)) and 'late' (bytes [8, 16)) overlap");

  for (const char* off : {"[0]", "[0,4,8]", "[-4,0]", "[0.0,4]", "\"0-4\""}) {
    CAPTURE(off);
    m = open_error(dir, st_bytes(header({entry("w", "F32", "[1]", off)}), data16));
    CHECK_HAS(m,
              "tensor 'w': data_offsets must be [begin, end] (two non-negative integers), found");
  }
}

TEST_CASE("safetensors: bad metadata is rejected") {
  TempDir dir;
  std::string m =
      open_error(dir, st_bytes("{\"__metadata__\": {\"format\": \"pt\", \"step\": 3}}", ""),
                 "meta.safetensors");
  CHECK_HAS(m, "meta.safetensors");
  CHECK_HAS(m, "__metadata__ value for 'step' must be a string, found 3");

  m = open_error(dir, st_bytes("{\"__metadata__\": [\"pt\"]}", ""));
  CHECK_HAS(m, "__metadata__ must be an object of strings, found [\"pt\"]");
}

TEST_CASE("safetensors: WeightStore over one file or a model folder") {
  TempDir dir;
  fs::create_directory(dir.path / "model");
  const std::string path = dir / "model/model.safetensors";
  Tensor up = Tensor::empty(DType::F32, {1536, 575});
  up.data<float>()[1536 * 575 - 1] = 3.0f;
  minfer::save_safetensors(path,
                           {{"model.layers.0.mlp.up_proj.weight", up},
                            {"model.norm.weight", make<float>(DType::F32, {2}, {1, 2})}},
                           {{"format", "pt"}});

  for (const std::string& p : {path, dir / "model"}) {
    CAPTURE(p);
    const WeightStore ws = WeightStore::open(p);
    CHECK(ws.describe() == path);
    CHECK(ws.names() ==
          std::vector<std::string>{"model.layers.0.mlp.up_proj.weight", "model.norm.weight"});
    CHECK(ws.has("model.norm.weight"));
    CHECK_FALSE(ws.has("lm_head.weight"));
    CHECK(ws.file_of("model.norm.weight") == path);
    CHECK(ws.metadata().at("format") == "pt");
    CHECK(ws.get("model.norm.weight", {2}).data<float>()[1] == 2.0f);
    CHECK(ws.get("model.layers.0.mlp.up_proj.weight", {1536, 575}).data<float>()[1536 * 575 - 1] ==
          3.0f);

    std::string m = error_of([&] { ws.get("lm_head.weight"); });
    CHECK_HAS(m, path + ": missing tensor 'lm_head.weight'");

    m = error_of([&] { ws.get("model.layers.0.mlp.up_proj.weight", {1536, 576}); });
    CHECK_HAS(m, path +
                     ": tensor 'model.layers.0.mlp.up_proj.weight': expected shape [1536, 576] "
                     "(from config.json), found [1536, 575]");
    m = error_of([&] { ws.get("model.norm.weight", {1, 2}); });
    CHECK_HAS(m, "tensor 'model.norm.weight': expected shape [1, 2] (from config.json), found [2]");
  }

  fs::create_directory(dir.path / "empty");
  std::string m = error_of([&] { WeightStore::open(dir / "empty"); });
  CHECK_HAS(m, "empty: folder has neither model.safetensors nor model.safetensors.index.json");
  m = error_of([&] { WeightStore::open(dir / "nowhere"); });
  CHECK_HAS(m, "nowhere: no such file or folder");
}

TEST_CASE("safetensors: sharded checkpoints") {
  TempDir dir;
  const std::string s1 = "model-00001-of-00002.safetensors";
  const std::string s2 = "model-00002-of-00002.safetensors";
  minfer::save_safetensors(dir / s1,
                           {{"embed.weight", make<float>(DType::F32, {2, 2}, {1, 2, 3, 4})},
                            {"layers.0.w", make<uint16_t>(DType::BF16, {2}, {0x3F80, 0x4000})}},
                           {{"format", "pt"}, {"shard", "1"}});
  minfer::save_safetensors(dir / s2, {{"layers.1.w", make<int8_t>(DType::I8, {3}, {-1, 0, 1})}},
                           {{"format", "pt"}, {"shard", "2"}});
  const std::string index = dir / "model.safetensors.index.json";
  auto write_index = [&](const nlohmann::json& weight_map) {
    write_file(
        index,
        nlohmann::json{{"metadata", {{"total_size", 27}}}, {"weight_map", weight_map}}.dump(2));
  };
  const nlohmann::json good = {{"embed.weight", s1}, {"layers.0.w", s1}, {"layers.1.w", s2}};
  write_index(good);

  for (const std::string& p : {dir / "", index}) {
    CAPTURE(p);
    const WeightStore ws = WeightStore::open(p);
    CHECK(ws.names() == std::vector<std::string>{"embed.weight", "layers.0.w", "layers.1.w"});
    CHECK(ws.file_of("embed.weight") == dir / s1);
    CHECK(ws.file_of("layers.1.w") == dir / s2);
    CHECK(ws.metadata().at("shard") == "1");
    CHECK(ws.get("embed.weight", {2, 2}).data<float>()[3] == 4.0f);
    CHECK(ws.get("layers.0.w").data<uint16_t>()[1] == 0x4000);
    CHECK(ws.get("layers.1.w", {3}).data<int8_t>()[0] == -1);
    CHECK(is_view_of_map(ws.get("layers.1.w")));
    CHECK_HAS(ws.describe(), "model.safetensors.index.json (shards: " + s1 + ", " + s2 + ")");
    const std::string m = error_of([&] { ws.get("lm_head.weight"); });
    CHECK_HAS(m, "model.safetensors.index.json (shards: " + s1 + ", " + s2 +
                     "): missing tensor 'lm_head.weight'");
    const std::string s = error_of([&] { ws.get("layers.1.w", {4}); });
    CHECK_HAS(s,
              dir / s2 + ": tensor 'layers.1.w': expected shape [4] (from config.json), found [3]");
  }

  // A shard file that is not there.
  nlohmann::json missing = good;
  missing["lm_head.weight"] = "model-00003-of-00003.safetensors";
  write_index(missing);
  std::string m = error_of([&] { WeightStore::open(dir.path.string()); });
  CHECK_HAS(m,
            "model.safetensors.index.json: shard 'model-00003-of-00003.safetensors' (holding "
            "tensor 'lm_head.weight' and 0 more) cannot be read");
  CHECK_HAS(m, "cannot open");

  // The index puts a tensor in a shard that lacks it.
  nlohmann::json absent = good;
  absent["layers.2.w"] = s2;
  write_index(absent);
  m = error_of([&] { WeightStore::open(dir.path.string()); });
  CHECK_HAS(m, "weight_map puts tensor 'layers.2.w' in shard " + dir / s2 +
                   ", but that file has no such tensor");

  // The same tensor in two shards.
  minfer::save_safetensors(dir / s2, {{"layers.1.w", make<int8_t>(DType::I8, {1}, {5})},
                                      {"embed.weight", make<float>(DType::F32, {1}, {0})}});
  write_index(good);
  m = error_of([&] { WeightStore::open(dir.path.string()); });
  CHECK_HAS(m, "tensor 'embed.weight' appears in two shards: " + dir / s1 + " and " + dir / s2);

  // Malformed indexes.
  write_file(index, "{\"weight_map\": ");
  m = error_of([&] { WeightStore::open(dir.path.string()); });
  CHECK_HAS(m, "model.safetensors.index.json: index is not valid JSON");
  write_file(index, "{\"metadata\": {}}");
  m = error_of([&] { WeightStore::open(dir.path.string()); });
  CHECK_HAS(m, "model.safetensors.index.json: missing field 'weight_map'");
  write_index(nlohmann::json{{"w", 3}});
  m = error_of([&] { WeightStore::open(dir.path.string()); });
  CHECK_HAS(m, "weight_map entry for tensor 'w' must be a file name, found 3");
  write_index(nlohmann::json{{"w", "../outside.safetensors"}});
  m = error_of([&] { WeightStore::open(dir.path.string()); });
  CHECK_HAS(m,
            "tensor 'w': shard file '../outside.safetensors' must be a relative name inside "
            "the model folder");
}

TEST_CASE("safetensors: failed saves say why and leave nothing behind") {
  TempDir dir;
  const Tensor ok = make<float>(DType::F32, {2, 2}, {1, 2, 3, 4});

  const std::string nodir = dir / "no/such/dir/out.safetensors";
  std::string m = error_of([&] { minfer::save_safetensors(nodir, {{"w", ok}}); });
  CHECK_HAS(m, nodir + ": cannot create " + nodir + ".tmp: No such file or directory");
  CHECK_FALSE(fs::exists(nodir + ".tmp"));

  // Rename fails (the target is a non-empty folder) after the tmp file was fully written: the
  // tmp file must be removed.
  fs::create_directories(dir.path / "taken" / "child");
  const std::string taken = dir / "taken";
  m = error_of([&] { minfer::save_safetensors(taken, {{"w", ok}}); });
  CHECK_HAS(m, taken + ": cannot rename " + taken + ".tmp over it");
  CHECK_FALSE(fs::exists(taken + ".tmp"));

  const std::string out = dir / "out.safetensors";
  m = error_of([&] { minfer::save_safetensors(out, {{"col", ok.slice(1, 0, 1)}}); });
  CHECK_HAS(m, out + ": tensor 'col' [2, 1] is not contiguous");
  m = error_of([&] { minfer::save_safetensors(out, {{"w", ok}, {"w", ok}}); });
  CHECK_HAS(m, "tensor 'w' is given twice");
  m = error_of([&] { minfer::save_safetensors(out, {{"__metadata__", ok}}); });
  CHECK_HAS(m, "'__metadata__' is reserved");
  m = error_of([&] { minfer::save_safetensors(out, {{"", ok}}); });
  CHECK_HAS(m, "tensor #0 has an empty name");
  m = error_of([&] { minfer::save_safetensors(out, {{"undef", Tensor()}}); });
  CHECK_HAS(m, "tensor 'undef' has no storage");
  m = error_of([&] { minfer::save_safetensors(out, {{"bad\xFF", ok}}); });
  CHECK_HAS(m, "must be UTF-8");
  CHECK_FALSE(fs::exists(out));
  CHECK_FALSE(fs::exists(out + ".tmp"));

  // Nothing but the folders made above is left in the temp folder.
  std::vector<std::string> left;
  for (const auto& e : fs::directory_iterator(dir.path)) left.push_back(e.path().filename());
  CHECK(left == std::vector<std::string>{"taken"});
}
