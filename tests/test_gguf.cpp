// GGUF reader and GGML dequantization:
//  - one hand-built block per quant type, checked against values worked out by hand from the
//    format definition (ggml-common.h / ggml-quants.c), with byte offsets written out here rather
//    than taken from our structs;
//  - a file written by gguf-py (tests/fixtures/gguf/make_gguf_fixtures.py): every metadata value
//    type, and dequantization bit-exact against gguf-py's numpy dequantizers;
//  - hand-built byte files for every kind of bad input, and the fixture cut at every length;
//  - SmolLM2-135M Q4_1 (when downloaded) against values gguf-py recorded;
//  - the llama GGUF -> Hugging Face name map and the inverse of the Q/K row permutation.
#include <doctest/doctest.h>
#include <stdlib.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "engine/error.h"
#include "engine/gguf.h"
#include "engine/safetensors.h"
#include "tests/test_util.h"

namespace {

namespace fs = std::filesystem;
using minfer::DType;
using minfer::GgufFile;
using minfer::Tensor;

const std::string kFixtures = "tests/fixtures/gguf/";

using TempDir = minfer::test::TempDir;

void write_file(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  REQUIRE(out.good());
  out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  REQUIRE(out.good());
}

std::vector<uint8_t> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.good());
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

// The message of the minfer::Error thrown by f, or "" (and a failed check) when none is thrown.
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const minfer::Error& e) {
    return e.what();
  }
  FAIL_CHECK("expected a minfer::Error");
  return "";
}

// Little-endian GGUF byte builder.
struct Bytes {
  std::vector<uint8_t> b;
  Bytes& raw(const void* p, size_t n) {
    const size_t old = b.size();
    b.resize(old + n);
    if (n) std::memcpy(b.data() + old, p, n);
    return *this;
  }
  template <typename T>
  Bytes& put(T v) {
    uint8_t tmp[sizeof(T)];
    std::memcpy(tmp, &v, sizeof(T));
    return raw(tmp, sizeof(T));  // the test host is little-endian, like GGUF
  }
  Bytes& u8(uint8_t v) { return put(v); }
  Bytes& u32(uint32_t v) { return put(v); }
  Bytes& u64(uint64_t v) { return put(v); }
  Bytes& str(const std::string& s) {
    u64(s.size());
    return raw(s.data(), s.size());
  }
  Bytes& header(uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
    raw("GGUF", 4);
    u32(version);
    u64(n_tensors);
    return u64(n_kv);
  }
  Bytes& kv_str(const std::string& key, const std::string& v) { return str(key).u32(8).str(v); }
  Bytes& kv_u32(const std::string& key, uint32_t v) { return str(key).u32(4).u32(v); }
  Bytes& tensor(const std::string& name, std::vector<uint64_t> ne, uint32_t type, uint64_t off) {
    str(name).u32(uint32_t(ne.size()));
    for (uint64_t n : ne) u64(n);
    return u32(type).u64(off);
  }
  Bytes& pad(size_t align) {
    while (b.size() % align) b.push_back(0);
    return *this;
  }
  Bytes& zeros(size_t n) {
    b.insert(b.end(), n, 0);
    return *this;
  }
};

std::vector<float> dequant(uint32_t type, const std::vector<uint8_t>& block, int64_t n) {
  std::vector<float> y(size_t(n), -12345.f);
  minfer::dequantize_row(type, block.data(), y.data(), n);
  return y;
}

void put16(std::vector<uint8_t>& b, size_t off, uint16_t v) {
  b[off] = uint8_t(v & 0xff);
  b[off + 1] = uint8_t(v >> 8);
}

// fp16 bit patterns used below.
constexpr uint16_t kHalfOne = 0x3C00, kHalfHalf = 0x3800, kHalfQuarter = 0x3400,
                   kHalfEighth = 0x3000, kHalfTwo = 0x4000, kHalfMinusOne = 0xBC00;

uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

std::string minfer_home() {
  if (const char* h = std::getenv("MINFER_HOME"); h && *h) return h;
  const char* home = std::getenv("HOME");
  return std::string(home ? home : ".") + "/.cache/minfer";
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Hand-computed blocks

TEST_CASE("gguf: hand-computed Q4_0 block") {
  // 2 bytes fp16 d | 16 bytes qs; weight j = low nibble of qs[j], weight j+16 = high nibble.
  std::vector<uint8_t> b(18);
  put16(b, 0, kHalfHalf);  // d = 0.5
  for (int j = 0; j < 16; ++j) b[2 + j] = uint8_t(j | (15 - j) << 4);
  // y = 0.5 * (q - 8): low nibbles 0..15, high nibbles 15..0
  const float expect[32] = {-4,  -3.5, -3,   -2.5, -2,   -1.5, -1,   -0.5, 0,    0.5, 1,
                            1.5, 2,    2.5,  3,    3.5,  3.5,  3,    2.5,  2,    1.5, 1,
                            0.5, 0,    -0.5, -1,   -1.5, -2,   -2.5, -3,   -3.5, -4};
  const auto y = dequant(2, b, 32);
  for (int i = 0; i < 32; ++i) CHECK_MESSAGE(y[i] == expect[i], "weight " << i);
  CHECK(minfer::ggml_block_size(2) == 32);
  CHECK(minfer::ggml_type_size(2) == 18);
}

TEST_CASE("gguf: hand-computed Q4_1 block") {
  // fp16 d | fp16 m | 16 bytes qs; y = d * q + m.
  std::vector<uint8_t> b(20);
  put16(b, 0, kHalfQuarter);   // d = 0.25
  put16(b, 2, kHalfMinusOne);  // m = -1
  for (int j = 0; j < 16; ++j) b[4 + j] = uint8_t(j | (j / 2) << 4);
  const float expect[32] = {-1,    -0.75, -0.5, -0.25, 0,    0.25, 0.5, 0.75,  1,     1.25, 1.5,
                            1.75,  2,     2.25, 2.5,   2.75, -1,   -1,  -0.75, -0.75, -0.5, -0.5,
                            -0.25, -0.25, 0,    0,     0.25, 0.25, 0.5, 0.5,   0.75,  0.75};
  const auto y = dequant(3, b, 32);
  for (int i = 0; i < 32; ++i) CHECK_MESSAGE(y[i] == expect[i], "weight " << i);
}

TEST_CASE("gguf: hand-computed Q5_0 block") {
  // fp16 d | u32 qh (bit j = 5th bit of weight j) | 16 bytes qs; y = d * (q - 16).
  std::vector<uint8_t> b(22);
  put16(b, 0, kHalfTwo);  // d = 2
  b[2] = 0x0F;            // weights 0-3
  b[3] = 0x00;
  b[4] = 0xF0;                                         // weights 20-23
  b[5] = 0x80;                                         // weight 31
  for (int j = 0; j < 16; ++j) b[6 + j] = uint8_t(j);  // low nibble j, high nibble 0
  const float expect[32] = {0,   2,  4,   6,   -24, -22, -20, -18, -16, -14, -12,
                            -10, -8, -6,  -4,  -2,  -32, -32, -32, -32, 0,   0,
                            0,   0,  -32, -32, -32, -32, -32, -32, -32, 0};
  const auto y = dequant(6, b, 32);
  for (int i = 0; i < 32; ++i) CHECK_MESSAGE(y[i] == expect[i], "weight " << i);
}

TEST_CASE("gguf: hand-computed Q5_1 block") {
  // fp16 d | fp16 m | u32 qh | 16 bytes qs; y = d * q + m.
  std::vector<uint8_t> b(24);
  put16(b, 0, kHalfOne);   // d = 1
  put16(b, 2, kHalfHalf);  // m = 0.5
  b[4] = 0x01;             // weight 0
  b[6] = 0x01;             // weight 16
  for (int j = 0; j < 16; ++j) b[8 + j] = uint8_t((15 - j) | j << 4);
  const float expect[32] = {31.5, 14.5, 13.5, 12.5, 11.5, 10.5, 9.5,  8.5,  7.5,  6.5, 5.5,
                            4.5,  3.5,  2.5,  1.5,  0.5,  16.5, 1.5,  2.5,  3.5,  4.5, 5.5,
                            6.5,  7.5,  8.5,  9.5,  10.5, 11.5, 12.5, 13.5, 14.5, 15.5};
  const auto y = dequant(7, b, 32);
  for (int i = 0; i < 32; ++i) CHECK_MESSAGE(y[i] == expect[i], "weight " << i);
}

TEST_CASE("gguf: hand-computed Q8_0 blocks (two blocks in one row)") {
  // fp16 d | 32 x int8; y = d * q.
  std::vector<uint8_t> b(68);
  put16(b, 0, kHalfEighth);  // d = 0.125, q = 4j - 64 -> y = 0.5 j - 8
  for (int j = 0; j < 32; ++j) b[2 + j] = uint8_t(int8_t(4 * j - 64));
  put16(b, 34, kHalfMinusOne);  // d = -1, q = j - 16 -> y = 16 - j
  for (int j = 0; j < 32; ++j) b[36 + j] = uint8_t(int8_t(j - 16));
  const auto y = dequant(8, b, 64);
  for (int j = 0; j < 32; ++j) {
    CHECK_MESSAGE(y[j] == 0.5f * float(j) - 8.0f, "weight " << j);
    CHECK_MESSAGE(y[32 + j] == float(16 - j), "weight " << 32 + j);
  }
}

TEST_CASE("gguf: hand-computed Q2_K block") {
  // scales[16] @0 | qs[64] @16 | fp16 d @80 | fp16 dmin @82 (84 bytes).
  std::vector<uint8_t> b(84);
  for (int i = 0; i < 16; ++i) b[i] = uint8_t(i | (15 - i) << 4);  // sc = i, m = 15 - i
  for (int k = 0; k < 64; ++k) b[16 + k] = k < 32 ? 0x1B : 0xE4;   // 2-bit fields 3,2,1,0 / 0,1,2,3
  put16(b, 80, kHalfHalf);                                         // d = 0.5
  put16(b, 82, kHalfQuarter);                                      // dmin = 0.25
  const auto y = dequant(10, b, 256);
  // weight 5: qs[5] bits 0-1 = 3, sub-block 0 (sc 0, m 15): 0.5*0*3 - 0.25*15
  CHECK(y[5] == -3.75f);
  // weight 20: qs[20] bits 0-1 = 3, sub-block 1 (sc 1, m 14): 0.5*1*3 - 0.25*14
  CHECK(y[20] == -2.0f);
  // weight 40: qs[8] bits 2-3 = 2, sub-block 2 (sc 2, m 13): 0.5*2*2 - 0.25*13
  CHECK(y[40] == -1.25f);
  // weight 127: qs[31] bits 6-7 = 0, sub-block 7 (sc 7, m 8): -0.25*8
  CHECK(y[127] == -2.0f);
  // weight 200 = 128 + 32*2 + 8: qs[40] bits 4-5 = 2, sub-block 12 (sc 12, m 3): 12 - 0.75
  CHECK(y[200] == 11.25f);
  // weight 255: qs[63] bits 6-7 = 3, sub-block 15 (sc 15, m 0): 0.5*15*3
  CHECK(y[255] == 22.5f);
  CHECK(minfer::ggml_type_size(10) == 84);
}

TEST_CASE("gguf: hand-computed Q3_K block") {
  // hmask[32] @0 | qs[64] @32 | scales[12] @96 | fp16 d @108 (110 bytes).
  std::vector<uint8_t> b(110);
  for (int l = 0; l < 32; ++l) b[l] = l < 16 ? 0x0F : 0xF0;
  for (int k = 0; k < 64; ++k) b[32 + k] = 0xE4;  // 2-bit fields 0,1,2,3 at shifts 0,2,4,6
  for (int k = 0; k < 8; ++k) b[96 + k] = uint8_t(k | (15 - k) << 4);
  b[104] = 0x00;             // high 2 bits of scales 0,4,8,12 = 0
  b[105] = 0x55;             // of scales 1,5,9,13 = 1
  b[106] = 0xAA;             // of scales 2,6,10,14 = 2
  b[107] = 0xFF;             // of scales 3,7,11,15 = 3
  put16(b, 108, kHalfHalf);  // d = 0.5
  const auto y = dequant(11, b, 256);
  // weight 20: q2 = 0, hmask[20] bit 0 = 0 -> q = -4; scale 1 = (1 | 1<<4) - 32 = -15
  CHECK(y[20] == 0.5f * -15 * -4);
  // weight 35: q2 = 1 (shift 2), hmask[3] bit 1 = 1 -> q = 1; scale 2 = 34 - 32 = 2
  CHECK(y[35] == 1.0f);
  // weight 100: q2 = 3, hmask[4] bit 3 = 1 -> 3; scale 6 = (6 | 2<<4) - 32 = 6
  CHECK(y[100] == 9.0f);
  // weight 180 = 128 + 32 + 20: q2 = 1, hmask[20] bit 5 = 1 -> 1; scale 11 = (12 | 3<<4) - 32 = 28
  CHECK(y[180] == 14.0f);
  // weight 200 = 128 + 64 + 8: q2 = 2, hmask[8] bit 6 = 0 -> -2; scale 12 = (11 | 0) - 32 = -21
  CHECK(y[200] == 21.0f);
  // weight 255: q2 = 3, hmask[31] bit 7 = 1 -> 3; scale 15 = (8 | 3<<4) - 32 = 24
  CHECK(y[255] == 36.0f);
}

namespace {
// Q4_K / Q5_K scale bytes: sub-block (sc, m) = (1,5) (2,6) (3,7) (4,8) (25,34) (10,3) (11,4) (12,5)
const uint8_t kK4Scales[12] = {0x41, 2, 3, 4, 0x85, 6, 7, 8, 0x29, 0x3A, 0x4B, 0x5C};
}  // namespace

TEST_CASE("gguf: hand-computed Q4_K block") {
  // fp16 d @0 | fp16 dmin @2 | scales[12] @4 | qs[128] @16 (144 bytes).
  std::vector<uint8_t> b(144);
  put16(b, 0, kHalfHalf);     // d = 0.5
  put16(b, 2, kHalfQuarter);  // dmin = 0.25
  std::memcpy(&b[4], kK4Scales, 12);
  for (int i = 0; i < 128; ++i) b[16 + i] = uint8_t(i);
  const auto y = dequant(12, b, 256);
  CHECK(y[0] == -1.25f);    // qs[0] low = 0, sub 0: 0 - 0.25*5
  CHECK(y[5] == 1.25f);     // qs[5] low = 5: 0.5*1*5 - 1.25
  CHECK(y[37] == -1.5f);    // qs[5] high = 0, sub 1: -0.25*6
  CHECK(y[84] == 4.25f);    // qs[52]=0x34 low 4, sub 2: 0.5*3*4 - 0.25*7
  CHECK(y[150] == 66.5f);   // qs[86]=0x56 low 6, sub 4: 0.5*25*6 - 0.25*34
  CHECK(y[180] == 24.25f);  // qs[84]=0x54 high 5, sub 5: 0.5*10*5 - 0.25*3
  CHECK(y[200] == 43.0f);   // qs[104]=0x68 low 8, sub 6: 0.5*11*8 - 0.25*4
  CHECK(y[255] == 40.75f);  // qs[127]=0x7F high 7, sub 7: 0.5*12*7 - 0.25*5
}

TEST_CASE("gguf: hand-computed Q5_K block") {
  // fp16 d @0 | fp16 dmin @2 | scales[12] @4 | qh[32] @16 | qs[128] @48 (176 bytes).
  std::vector<uint8_t> b(176);
  put16(b, 0, kHalfHalf);
  put16(b, 2, kHalfQuarter);
  std::memcpy(&b[4], kK4Scales, 12);
  for (int l = 0; l < 32; ++l) b[16 + l] = 0xA5;  // 5th bits of sub-blocks 0,2,5,7 set
  for (int i = 0; i < 128; ++i) b[48 + i] = uint8_t(i);
  const auto y = dequant(13, b, 256);
  CHECK(y[0] == 6.75f);      // q = 0 + 16, sub 0: 0.5*1*16 - 1.25
  CHECK(y[37] == -1.5f);     // q = 0, sub 1 (bit 1 clear)
  CHECK(y[84] == 28.25f);    // q = 4 + 16, sub 2: 0.5*3*20 - 1.75
  CHECK(y[150] == 66.5f);    // q = 6, sub 4 (bit 4 clear)
  CHECK(y[180] == 104.25f);  // q = 5 + 16, sub 5: 0.5*10*21 - 0.75
  CHECK(y[200] == 43.0f);    // q = 8, sub 6 (bit 6 clear)
  CHECK(y[255] == 136.75f);  // q = 7 + 16, sub 7: 0.5*12*23 - 1.25
}

TEST_CASE("gguf: hand-computed Q6_K block") {
  // ql[128] @0 | qh[64] @128 | int8 scales[16] @192 | fp16 d @208 (210 bytes).
  std::vector<uint8_t> b(210);
  for (int i = 0; i < 128; ++i) b[i] = uint8_t(i);
  for (int i = 0; i < 64; ++i) b[128 + i] = 0xE4;  // 2-bit fields 0,1,2,3
  for (int i = 0; i < 16; ++i) b[192 + i] = uint8_t(int8_t(i - 8));
  put16(b, 208, kHalfHalf);  // d = 0.5
  const auto y = dequant(14, b, 256);
  CHECK(y[0] == 128.0f);    // ql[0] low 0 | 0<<4 = 0 -> -32; scale[0] = -8: 0.5*-8*-32
  CHECK(y[40] == 24.0f);    // ql[40]=0x28 low 8 | 1<<4 = 24 -> -8; scale[2] = -6
  CHECK(y[90] == -1.5f);    // ql[26]=0x1A high 1 | 2<<4 = 33 -> 1; scale[5] = -3
  CHECK(y[127] == -9.5f);   // ql[63]=0x3F high 3 | 3<<4 = 51 -> 19; scale[7] = -1
  CHECK(y[145] == -15.5f);  // ql[81]=0x51 low 1 | 0 -> -31; scale[9] = 1
  CHECK(y[255] == 80.5f);   // ql[127]=0x7F high 7 | 3<<4 = 55 -> 23; scale[15] = 7
}

TEST_CASE("gguf: hand-computed Q8_K block") {
  // f32 d @0 | int8 qs[256] @4 | int16 bsums[16] @260 (292 bytes).
  std::vector<uint8_t> b(292);
  const uint32_t d = f32_bits(0.25f);
  std::memcpy(&b[0], &d, 4);
  for (int i = 0; i < 256; ++i) b[4 + i] = uint8_t(int8_t(i - 128));
  const auto y = dequant(15, b, 256);
  for (int i = 0; i < 256; ++i) CHECK_MESSAGE(y[i] == 0.25f * float(i - 128), "weight " << i);
}

TEST_CASE("gguf: dequantize_row rejects bad sizes and unsupported types") {
  std::vector<uint8_t> b(64);
  std::vector<float> y(64);
  CHECK(error_of([&] {
          minfer::dequantize_row(2, b.data(), y.data(), 16);
        }).find("not a multiple of the block size 32") != std::string::npos);
  CHECK(error_of([&] { minfer::dequantize_row(20, b.data(), y.data(), 32); }).find("IQ4_NL") !=
        std::string::npos);
  CHECK(error_of([&] { minfer::dequantize_row(99, b.data(), y.data(), 32); }).find("type 99") !=
        std::string::npos);
  CHECK(minfer::ggml_type_name(14) == "Q6_K");
  CHECK(minfer::ggml_type_name(99) == "type 99");
  CHECK(minfer::ggml_block_size(99) == 0);
}

// ---------------------------------------------------------------------------------------------
// The gguf-py fixture

TEST_CASE("gguf: metadata of every value type matches what gguf-py wrote") {
  auto f = GgufFile::open(kFixtures + "types.gguf");
  CHECK(f->version() == 3);
  CHECK(f->metadata().size() == 30);  // 31 keys minus the nested array, which is not stored
  CHECK(f->get_str("general.architecture") == "llama");
  CHECK(f->get_int("general.alignment") == 64);
  CHECK(f->get_int("llama.block_count") == 2);
  CHECK(f->get_int("test.u8") == 200);
  CHECK(f->get_int("test.i8") == -100);
  CHECK(f->get_int("test.u16") == 60000);
  CHECK(f->get_int("test.i16") == -30000);
  CHECK(f->get_int("test.u32") == 4000000000LL);
  CHECK(f->get_int("test.i32") == -2000000000LL);
  CHECK(f->get_float("test.f32") == double(0.1f));
  CHECK(f->get_float("test.u8") == 200.0);
  CHECK(f->get_bool("test.bool_true") == true);
  CHECK(f->get_bool("test.bool_false") == false);
  CHECK(f->get_str("test.str") == "h\xc3\xa9llo w\xc3\xb6rld \xe2\x9c\x93");
  CHECK(f->get_str("test.empty_str").empty());
  CHECK(f->get_int("test.u64_small") == 123456789012LL);
  CHECK(f->get_float("test.u64") == 9223372036854775813.0);
  CHECK(error_of([&] { f->get_int("test.u64"); }).find("does not fit in int64") !=
        std::string::npos);
  CHECK(f->get_int("test.i64") == -(int64_t(1) << 62) - 7);
  CHECK(f->get_float("test.f64") == 2.718281828459045);
  CHECK(f->get_int_array("test.arr_u8") == std::vector<int64_t>{1, 2, 255});
  CHECK(f->get_int_array("test.arr_i8") == std::vector<int64_t>{-128, 0, 127});
  CHECK(f->get_int_array("test.arr_u16") == std::vector<int64_t>{0, 65535});
  CHECK(f->get_int_array("test.arr_i16") == std::vector<int64_t>{-32768, 32767});
  CHECK(f->get_int_array("test.arr_u32") == std::vector<int64_t>{4294967295LL, 7});
  CHECK(f->get_int_array("test.arr_i32") == std::vector<int64_t>{-1, 0, 2147483647});
  CHECK(f->get_int_array("test.arr_u64") == std::vector<int64_t>{INT64_MAX});
  CHECK(f->get_int_array("test.arr_i64") == std::vector<int64_t>{INT64_MIN, 5});
  CHECK(f->get_float_array("test.arr_f32") == std::vector<double>{0.5, -1.25, double(0.1f)});
  const auto f64 = f->get_float_array("test.arr_f64");
  REQUIRE(f64.size() == 3);
  CHECK(f64[0] == 1e300);
  CHECK((f64[1] == 0.0 && std::signbit(f64[1])));
  CHECK(f64[2] == 0.1);
  CHECK(f->get_float_array("test.arr_i32") == std::vector<double>{-1, 0, 2147483647});
  CHECK(f->get_int_array("test.arr_bool") == std::vector<int64_t>{1, 0, 1});
  CHECK(f->get_str_array("test.arr_str") == std::vector<std::string>{"a", "", "\xc3\xbc\xc3\x9f"});
  CHECK(f->type_of("test.u16") == "UINT16");
  CHECK(f->type_of("test.arr_str") == "array of STRING");
  CHECK(f->type_of("test.arr_nested") == "array of ARRAY");
  CHECK(f->has("test.arr_nested"));
  CHECK(error_of([&] { f->get_int_array("test.arr_nested"); }).find("array of arrays") !=
        std::string::npos);

  // defaults and errors
  CHECK(f->get_int_or("nope", 7) == 7);
  CHECK(f->get_float_or("nope", 1.5) == 1.5);
  CHECK(f->get_str_or("nope", "x") == "x");
  CHECK(f->get_int_or("test.i8", 7) == -100);
  const std::string missing = error_of([&] { f->get_str("llama.context_length"); });
  CHECK(missing.find("types.gguf") != std::string::npos);
  CHECK(missing.find("metadata 'llama.context_length' missing") != std::string::npos);
  const std::string wrong = error_of([&] { f->get_str("test.u32"); });
  CHECK(wrong.find("types.gguf") != std::string::npos);
  CHECK(wrong.find("'test.u32' has type UINT32, expected STRING") != std::string::npos);
  CHECK(error_of([&] { f->get_int("test.str"); }).find("has type STRING, expected an integer") !=
        std::string::npos);
  CHECK(error_of([&] { f->get_bool("test.u8"); }).find("expected BOOL") != std::string::npos);
  CHECK(error_of([&] { f->get_float("test.bool_true"); }).find("expected a number") !=
        std::string::npos);
  CHECK(error_of([&] {
          f->get_str_array("test.arr_u8");
        }).find("has type array of UINT8, expected array of STRING") != std::string::npos);
  CHECK(error_of([&] { f->get_int_array("test.arr_f32"); }).find("array of FLOAT32") !=
        std::string::npos);
  CHECK(error_of([&] { f->get_float_array("test.arr_bool"); }).find("array of BOOL") !=
        std::string::npos);
  CHECK(error_of([&] { f->get_int_or("test.str", 1); }).find("expected an integer") !=
        std::string::npos);
}

TEST_CASE("gguf: dequantization is bit-exact with gguf-py for every type") {
  auto f = GgufFile::open(kFixtures + "types.gguf");
  auto ref = minfer::SafetensorsFile::open(kFixtures + "expected.safetensors");
  struct Want {
    const char* name;
    uint32_t type;
    std::vector<int64_t> ne;
  };
  const Want wants[] = {
      {"f32_3d", 0, {8, 3, 2}}, {"f32_vec", 0, {16}},   {"f16", 1, {16, 4}},
      {"bf16", 30, {16, 3}},    {"q8_0", 8, {64, 3}},   {"q8_0_4d", 8, {32, 2, 1, 2}},
      {"q4_0", 2, {64, 3}},     {"q4_1", 3, {64, 3}},   {"q5_0", 6, {64, 3}},
      {"q5_1", 7, {64, 3}},     {"q2_k", 10, {256, 2}}, {"q3_k", 11, {256, 2}},
      {"q4_k", 12, {256, 2}},   {"q5_k", 13, {256, 2}}, {"q6_k", 14, {256, 2}},
  };
  REQUIRE(f->tensors().size() == std::size(wants));
  REQUIRE(ref->tensors().size() == std::size(wants));
  for (const Want& w : wants) {
    const std::string name = w.name;
    CAPTURE(name);
    const auto& t = f->info(w.name);
    CHECK(t.type == w.type);
    CHECK(t.ne == w.ne);
    CHECK(t.offset % 64 == 0);  // general.alignment = 64
    const Tensor& e = ref->get(w.name);
    REQUIRE(e.dtype() == DType::F32);
    const Tensor y = f->dequantize(t);
    REQUIRE(y.dtype() == DType::F32);
    REQUIRE(y.ndim() == e.ndim());
    for (int d = 0; d < y.ndim(); ++d) CHECK(y.dim(d) == e.dim(d));
    REQUIRE(y.numel() == e.numel());
    int64_t mismatches = 0, first = -1;
    for (int64_t i = 0; i < y.numel(); ++i) {
      if (f32_bits(y.data<float>()[i]) != f32_bits(e.data<float>()[i])) {
        if (first < 0) first = i;
        ++mismatches;
      }
    }
    CHECK_MESSAGE(mismatches == 0, "first mismatch at "
                                       << first << ": got "
                                       << (first >= 0 ? y.data<float>()[first] : 0) << " want "
                                       << (first >= 0 ? e.data<float>()[first] : 0));
    if (w.type == 0 || w.type == 1 || w.type == 30) {  // zero-copy view agrees too
      const Tensor v = f->view(t);
      CHECK(v.dtype() == (w.type == 0 ? DType::F32 : w.type == 1 ? DType::F16 : DType::BF16));
      CHECK(v.storage().get() != nullptr);
      CHECK(v.raw() == static_cast<const void*>(f->data(t)));
      const Tensor vf = v.to_f32();
      CHECK(std::memcmp(vf.raw(), e.raw(), e.nbytes()) == 0);
    } else {
      CHECK(error_of([&] { f->view(t); }).find("use dequantize()") != std::string::npos);
    }
  }
  CHECK(f->find("nope") == nullptr);
  const std::string nf = error_of([&] { f->info("nope"); });
  CHECK(nf.find("types.gguf: tensor 'nope' not found") != std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// Hand-built files: good and bad

TEST_CASE("gguf: hand-built v2 and v3 files with the default alignment") {
  TempDir dir;
  for (uint32_t version : {2u, 3u}) {
    CAPTURE(version);
    Bytes g;
    g.header(version, 2, 2).kv_str("general.architecture", "llama");
    g.str("empty.arr").u32(9).u32(4).u64(0);  // an empty UINT32 array
    g.tensor("a", {4, 2}, 0, 0).tensor("b", {3}, 1, 32);
    g.pad(32);  // no general.alignment: the data section starts at the next multiple of 32
    const size_t data = g.b.size();
    for (int i = 0; i < 8; ++i) g.put(float(i) * 1.5f);                   // a: 32 bytes
    g.put(uint16_t(0x3C00)).put(uint16_t(0xC000)).put(uint16_t(0x3800));  // b: 1, -2, 0.5
    const std::string path = dir / "v.gguf";
    write_file(path, g.b);
    auto f = GgufFile::open(path);
    CHECK(f->version() == version);
    CHECK(f->get_int_array("empty.arr").empty());
    const auto& a = f->info("a");
    CHECK(a.offset == data);
    CHECK(a.nbytes == 32);
    const Tensor va = f->view(a);
    REQUIRE(va.ndim() == 2);
    CHECK(va.dim(0) == 2);
    CHECK(va.dim(1) == 4);
    for (int i = 0; i < 8; ++i) CHECK(va.data<float>()[i] == float(i) * 1.5f);
    CHECK(f->info("b").offset == data + 32);
    const Tensor yb = f->dequantize(f->info("b"));
    REQUIRE(yb.ndim() == 1);
    REQUIRE(yb.numel() == 3);
    CHECK(yb.data<float>()[0] == 1.0f);
    CHECK(yb.data<float>()[1] == -2.0f);
    CHECK(yb.data<float>()[2] == 0.5f);
  }
}

namespace {
std::string open_error(const TempDir& dir, const Bytes& g) {
  const std::string path = dir / "bad.gguf";
  write_file(path, g.b);
  const std::string msg = error_of([&] { GgufFile::open(path); });
  CHECK_MESSAGE(msg.find(path + ": ") != std::string::npos,
                "message does not name the file: " << msg);
  return msg;
}
#define CHECK_HAS(msg, sub) CHECK_MESSAGE((msg).find(sub) != std::string::npos, (msg))

// Header + one kv, no tensors.
Bytes one_kv() {
  return Bytes().header(3, 0, 1);
}
// Header + general.architecture, then the given tensor infos, then padding and `data` bytes.
Bytes with_tensors(uint64_t n, const std::function<void(Bytes&)>& infos, size_t data) {
  Bytes g;
  g.header(3, n, 1).kv_str("general.architecture", "llama");
  infos(g);
  return g.pad(32).zeros(data);
}
}  // namespace

TEST_CASE("gguf: bad headers and metadata give clear errors") {
  TempDir dir;
  {  // sanity: the builders make a file that opens
    const std::string path = dir / "ok.gguf";
    write_file(path, with_tensors(
                         1,
                         [](Bytes& g) {
                           g.tensor("w", {8, 2}, 0, 0);
                         },
                         64)
                         .b);
    CHECK(GgufFile::open(path)->tensors().size() == 1);
  }
  CHECK_HAS(open_error(dir, Bytes()), "truncated while reading magic at offset 0");
  {
    Bytes g;
    g.raw("GGML", 4).u32(3).u64(0).u64(0);
    CHECK_HAS(open_error(dir, g), "not a GGUF file (magic bytes 47 47 4d 4c");
  }
  CHECK_HAS(open_error(dir, Bytes().header(1, 0, 0)), "unsupported GGUF version 1");
  CHECK_HAS(open_error(dir, Bytes().header(4, 0, 0)), "unsupported GGUF version 4");
  CHECK_HAS(open_error(dir, Bytes().header(0x03000000u, 0, 0)), "big-endian GGUF");
  {
    Bytes g;
    g.raw("GGUF", 4).u32(3).u32(0);
    CHECK_HAS(open_error(dir, g), "truncated while reading tensor count at offset 8");
  }
  CHECK_HAS(open_error(dir, Bytes().header(3, 0, uint64_t(1) << 60)),
            "metadata count of header: count 1152921504606846976");
  CHECK_HAS(open_error(dir, Bytes().header(3, uint64_t(1) << 40, 0)), "tensor count of header");
  // huge string lengths: key and value
  CHECK_HAS(open_error(dir, one_kv().u64(UINT64_MAX).zeros(16)),
            "key of metadata entry 0: string length 18446744073709551615 at offset 24 exceeds");
  CHECK_HAS(open_error(dir, one_kv().str("k").u32(8).u64(uint64_t(1) << 40).zeros(8)),
            "metadata 'k': string length 1099511627776");
  // huge array counts, for fixed-size and string elements
  CHECK_HAS(open_error(dir, one_kv().str("arr").u32(9).u32(4).u64(uint64_t(1) << 62).zeros(16)),
            "array length of metadata 'arr': count 4611686018427387904");
  CHECK_HAS(open_error(dir, one_kv().str("arr").u32(9).u32(8).u64(uint64_t(1) << 40).zeros(16)),
            "array length of metadata 'arr'");
  CHECK_HAS(open_error(dir, one_kv().str("k").u32(13).u32(0)),
            "metadata 'k': unknown value type 13");
  CHECK_HAS(open_error(dir, one_kv().str("k").u32(9).u32(77).u64(1).u32(0)),
            "metadata 'k': unknown array element type 77");
  CHECK_HAS(open_error(dir, one_kv().str("k").u32(7).u8(2)), "metadata 'k': bool value 2");
  {
    // 10 levels of "ARRAY of ARRAY, 1 element" then an empty UINT8 array
    Bytes g = one_kv().str("deep").u32(9);
    for (int i = 0; i < 10; ++i) g.u32(9).u64(1);
    g.u32(0).u64(0);
    CHECK_HAS(open_error(dir, g), "metadata 'deep': arrays nested deeper than 8 levels");
  }
  {
    Bytes g;
    g.header(3, 0, 2).kv_u32("k", 1).kv_u32("k", 2);
    CHECK_HAS(open_error(dir, g), "duplicate metadata key 'k'");
  }
  {
    Bytes g;
    g.header(3, 0, 1).kv_u32("general.alignment", 24);
    CHECK_HAS(open_error(dir, g), "general.alignment = 24 is not a power of two");
    Bytes h;
    h.header(3, 0, 1).kv_str("general.alignment", "32");
    CHECK_HAS(open_error(dir, h), "'general.alignment' has type STRING, expected UINT32");
  }
  {  // a cut inside a string value
    Bytes g = one_kv().str("k").u32(8).u64(10);
    g.raw("abc", 3);
    CHECK_HAS(open_error(dir, g),
              "metadata 'k': string length 10 at offset 37 exceeds the 3 bytes");
  }
}

TEST_CASE("gguf: bad tensor infos give clear errors") {
  TempDir dir;
  CHECK_HAS(open_error(dir, with_tensors(
                                1,
                                [](Bytes& g) {
                                  g.tensor("w", {1, 1, 1, 1, 1}, 0, 0);
                                },
                                64)),
            "tensor 'w' has 5 dimensions (expected 1 to 4)");
  CHECK_HAS(open_error(dir, with_tensors(
                                1, [](Bytes& g) { g.tensor("w", {}, 0, 0); }, 64)),
            "tensor 'w' has 0 dimensions");
  CHECK_HAS(open_error(dir, with_tensors(
                                1,
                                [](Bytes& g) {
                                  g.tensor("w", {8, 0}, 0, 0);
                                },
                                64)),
            "tensor 'w' dimension 1 is 0");
  CHECK_HAS(open_error(dir, with_tensors(
                                1,
                                [](Bytes& g) {
                                  const uint64_t big = uint64_t(1) << 32;
                                  g.tensor("w", {big, big, big}, 0, 0);
                                },
                                64)),
            "tensor 'w': element count of shape [4294967296, 4294967296]... overflows");
  CHECK_HAS(open_error(dir, with_tensors(
                                1,
                                [](Bytes& g) {
                                  g.tensor("w", {8, 2}, 99, 0);
                                },
                                64)),
            "tensor 'w' has unsupported type 99");
  CHECK_HAS(
      open_error(dir, with_tensors(
                          1, [](Bytes& g) { g.tensor("w", {16}, 2, 0); }, 64)),
      "tensor 'w' (shape [16], type Q4_0): ne[0] = 16 is not a multiple of the block size 32");
  CHECK_HAS(open_error(dir, with_tensors(
                                1,
                                [](Bytes& g) {
                                  g.tensor("w", {8, 2}, 0, uint64_t(1) << 40);
                                },
                                64)),
            "tensor 'w' data (offset 1099511627776 + 64 bytes");
  CHECK_HAS(open_error(dir, with_tensors(
                                1,
                                [](Bytes& g) {
                                  g.tensor("w", {8, 2}, 0, 0);
                                },
                                60)),
            "tensor 'w' data (offset 0 + 64 bytes after the data section start");
  CHECK_HAS(open_error(dir, with_tensors(
                                1,
                                [](Bytes& g) {
                                  g.tensor("w", {8, 2}, 0, 8);
                                },
                                96)),
            "tensor 'w' data offset 8 is not a multiple of the alignment 32");
  CHECK_HAS(open_error(dir, with_tensors(
                                2,
                                [](Bytes& g) {
                                  g.tensor("a", {8, 2}, 0, 0).tensor("b", {8}, 0, 32);
                                },
                                96)),
            "tensor data overlaps: 'a' occupies");
  CHECK_HAS(
      open_error(dir,
                 with_tensors(
                     2, [](Bytes& g) { g.tensor("a", {8}, 0, 0).tensor("a", {8}, 0, 32); }, 96)),
      "duplicate tensor name 'a'");
  {  // a cut inside the tensor infos
    Bytes g;
    g.header(3, 1, 0).str("a_long_tensor_name").u32(2).u64(8);
    CHECK_HAS(open_error(dir, g),
              "truncated while reading dimension of tensor 'a_long_tensor_name' at offset 62 (need "
              "8 bytes, 0 left)");
  }
  {  // a type that can be sized but not dequantized still opens
    const std::string path = dir / "iq.gguf";
    write_file(path, with_tensors(
                         1, [](Bytes& g) { g.tensor("w", {64}, 20, 0); }, 64)
                         .b);
    auto f = GgufFile::open(path);
    CHECK(f->info("w").nbytes == 36);
    const std::string msg = error_of([&] { f->dequantize(f->info("w")); });
    CHECK_HAS(msg, path + ": tensor 'w' has type IQ4_NL (20), which minfer cannot dequantize");
    CHECK_HAS(error_of([&] { f->view(f->info("w")); }), "tensor 'w' has type IQ4_NL");
  }
}

TEST_CASE("gguf: the fixture cut at every length fails cleanly") {
  const std::string fixture = kFixtures + "types.gguf";
  const auto full = read_file(fixture);
  uint64_t data_end = 0;  // gguf-py pads the file after the last tensor
  const auto whole = GgufFile::open(fixture);
  for (const auto& t : whole->tensors()) data_end = std::max(data_end, t.offset + t.nbytes);
  REQUIRE(data_end <= full.size());
  TempDir dir;
  const std::string path = dir / "cut.gguf";
  size_t in_header = 0, in_data = 0;
  write_file(path, full);
  for (size_t n = full.size(); n-- > 0;) {  // shrink the one file rather than write thousands
    fs::resize_file(path, n);
    std::string msg;
    try {
      GgufFile::open(path);
    } catch (const minfer::Error& e) {
      msg = e.what();
    }
    CAPTURE(n);
    if (n >= data_end) {  // only padding was cut
      CHECK_MESSAGE(msg.empty(), msg);
      continue;
    }
    REQUIRE_MESSAGE(!msg.empty(), "a file cut to " << n << " bytes opened");
    REQUIRE_MESSAGE(msg.find(path + ": ") != std::string::npos, msg);
    if (msg.find("truncated while reading") != std::string::npos ||
        msg.find("exceeds the") != std::string::npos || msg.find("cannot fit") != std::string::npos)
      ++in_header;
    else if (msg.find("beyond the end of the file") != std::string::npos)
      ++in_data;
    else
      FAIL_CHECK("unexpected message: " << msg);
  }
  MESSAGE("cuts: " << in_header << " fail in the header, " << in_data << " in the data");
  CHECK(in_header > 1000);
  CHECK(in_data > 1000);
}

// ---------------------------------------------------------------------------------------------
// A real model

TEST_CASE("gguf: SmolLM2-135M Q4_1 agrees with gguf-py") {
  const std::string path = minfer_home() + "/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!fs::exists(path)) {
    MESSAGE("skipped: " << path << " absent (download it with fetch-model smollm2)");
    return;
  }
  std::ifstream in(kFixtures + "smollm2_q4_1_ref.json");
  REQUIRE(in.good());
  const nlohmann::json ref = nlohmann::json::parse(in);
  auto f = GgufFile::open(path);
  CHECK(f->get_str("general.architecture") == "llama");
  CHECK(f->get_int("llama.block_count") == 30);
  CHECK(ref["block_count"] == 30);
  CHECK(f->tensors().size() == ref["tensor_count"].get<size_t>());

  for (const auto& [name, r] : ref["tensors"].items()) {
    CAPTURE_BINDING(name);
    const auto& t = f->info(name);
    CHECK(minfer::ggml_type_name(t.type) == r["type"].get<std::string>());
    CHECK(t.ne == r["ne"].get<std::vector<int64_t>>());
    const Tensor y = f->dequantize(t);
    const float* p = y.data<float>();
    const auto first = r["first"].get<std::vector<double>>();
    for (size_t i = 0; i < first.size(); ++i) CHECK(p[i] == float(first[i]));
    double sum = 0;
    for (int64_t i = 0; i < y.numel(); ++i) sum += p[i];
    CHECK(std::abs(sum - r["sum"].get<double>()) <= 1e-9 * r["sum_abs"].get<double>() + 1e-12);
  }

  const auto& q = f->info("blk.0.attn_q.weight");
  CHECK(q.type == 3);  // Q4_1
  const Tensor y = f->dequantize(q);
  REQUIRE(y.ndim() == 2);
  CHECK(y.dim(0) == q.ne[1]);
  CHECK(y.dim(1) == q.ne[0]);
  const auto row0 = ref["attn_q_row0"].get<std::vector<double>>();
  REQUIRE(int64_t(row0.size()) == y.dim(1));
  double s = 0;
  for (size_t i = 0; i < row0.size(); ++i) {
    CHECK(y.data<float>()[i] == float(row0[i]));
    s += y.data<float>()[i];
  }
  CHECK(s == doctest::Approx(ref["attn_q_row0_sum"].get<double>()).epsilon(1e-12));
  for (const auto& sample : ref["attn_q_samples"]) {
    const int64_t i = sample[0].get<int64_t>();
    CHECK(y.data<float>()[i] == float(sample[1].get<double>()));
  }
}

// ---------------------------------------------------------------------------------------------
// Name map and Q/K permutation

TEST_CASE("gguf: llama tensor names map to Hugging Face names") {
  using minfer::gguf_to_hf_name;
  CHECK(gguf_to_hf_name("token_embd.weight") == "model.embed_tokens.weight");
  CHECK(gguf_to_hf_name("output_norm.weight") == "model.norm.weight");
  CHECK(gguf_to_hf_name("output.weight") == "lm_head.weight");
  CHECK(gguf_to_hf_name("blk.0.attn_q.weight") == "model.layers.0.self_attn.q_proj.weight");
  CHECK(gguf_to_hf_name("blk.12.attn_k.weight") == "model.layers.12.self_attn.k_proj.weight");
  CHECK(gguf_to_hf_name("blk.3.attn_v.bias") == "model.layers.3.self_attn.v_proj.bias");
  CHECK(gguf_to_hf_name("blk.29.attn_output.weight") == "model.layers.29.self_attn.o_proj.weight");
  CHECK(gguf_to_hf_name("blk.1.ffn_gate.weight") == "model.layers.1.mlp.gate_proj.weight");
  CHECK(gguf_to_hf_name("blk.1.ffn_up.weight") == "model.layers.1.mlp.up_proj.weight");
  CHECK(gguf_to_hf_name("blk.1.ffn_down.weight") == "model.layers.1.mlp.down_proj.weight");
  CHECK(gguf_to_hf_name("blk.7.attn_norm.weight") == "model.layers.7.input_layernorm.weight");
  CHECK(gguf_to_hf_name("blk.7.ffn_norm.weight") ==
        "model.layers.7.post_attention_layernorm.weight");
  CHECK(gguf_to_hf_name("blk.2.attn_qkv.weight") == "model.layers.2.self_attn.qkv_proj.weight");
  for (const char* bad : {"rope_freqs.weight", "blk.x.attn_q.weight", "blk.0.attn_qkvx.weight",
                          "blk..attn_q.weight", "token_embd", "blk.0.attn_q.scales"}) {
    CAPTURE(bad);
    CHECK_HAS(error_of([&] { gguf_to_hf_name(bad); }), std::string("'") + bad + "'");
  }
}

TEST_CASE("gguf: unpermute_qk_rows inverts convert_hf_to_gguf's Q/K permutation") {
  // HF->GGUF: w.reshape(n_head, 2, hd/2, cols).swapaxes(1, 2).reshape(rows, cols), so GGUF row
  // h*hd + 2*j + i is HF row h*hd + i*(hd/2) + j.
  const int64_t n_head = 3, hd = 4, rows = n_head * hd, cols = 5;
  std::vector<float> hf(size_t(rows * cols)), gg(hf.size());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) hf[size_t(r * cols + c)] = float(100 * r + c);
  for (int64_t h = 0; h < n_head; ++h)
    for (int64_t j = 0; j < hd / 2; ++j)
      for (int64_t i = 0; i < 2; ++i)
        for (int64_t c = 0; c < cols; ++c)
          gg[size_t((h * hd + 2 * j + i) * cols + c)] =
              hf[size_t((h * hd + i * (hd / 2) + j) * cols + c)];
  // head 0 of the GGUF matrix holds HF rows 0, 2, 1, 3; head 1 holds 4, 6, 5, 7
  CHECK(gg[size_t(1 * cols)] == 200.0f);
  CHECK(gg[size_t(2 * cols)] == 100.0f);
  CHECK(gg[size_t(5 * cols + 4)] == 604.0f);
  minfer::unpermute_qk_rows(gg.data(), rows, cols, n_head);
  CHECK(gg == hf);
  CHECK_HAS(error_of([&] { minfer::unpermute_qk_rows(gg.data(), 10, cols, 3); }),
            "10 rows x 5 cols cannot be split into 3 heads");
}
