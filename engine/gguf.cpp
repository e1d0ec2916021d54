// GGUF v2/v3 reader. Layout (ggml docs/gguf.md), all little-endian:
//   "GGUF" | u32 version | u64 tensor_count | u64 kv_count
//   kv_count x { string key | u32 value type | value }       string = u64 length + bytes
//   tensor_count x { string name | u32 n_dims | u64 ne[n_dims] | u32 ggml type | u64 offset }
//   padding to general.alignment (default 32) | data section (offsets are relative to it)
// Every read goes through a bounds-checked cursor; every count and length is checked against the
// bytes left in the file before anything is allocated for it.
#include "engine/gguf.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "engine/error.h"

namespace minfer {

namespace {

constexpr uint64_t kDefaultAlignment = 32;
constexpr int kMaxArrayDepth = 8;  // nesting allowed for arrays of arrays (skipped, not stored)

// Smallest encoding of one value of each GGUF type, used to bound counts before allocating.
uint64_t min_encoded_size(uint32_t t) {
  switch (GgufType(t)) {
    case GgufType::UINT8:
    case GgufType::INT8:
    case GgufType::BOOL:
      return 1;
    case GgufType::UINT16:
    case GgufType::INT16:
      return 2;
    case GgufType::UINT32:
    case GgufType::INT32:
    case GgufType::FLOAT32:
      return 4;
    case GgufType::UINT64:
    case GgufType::INT64:
    case GgufType::FLOAT64:
    case GgufType::STRING:
      return 8;  // u64 length
    case GgufType::ARRAY:
      return 12;  // u32 element type + u64 count
  }
  return 0;
}

bool is_integer(uint32_t t) {
  switch (GgufType(t)) {
    case GgufType::UINT8:
    case GgufType::INT8:
    case GgufType::UINT16:
    case GgufType::INT16:
    case GgufType::UINT32:
    case GgufType::INT32:
    case GgufType::UINT64:
    case GgufType::INT64:
      return true;
    default:
      return false;
  }
}

class Cursor {
 public:
  Cursor(const std::string& path, const uint8_t* data, uint64_t size)
      : path_(path), data_(data), size_(size) {}

  uint64_t pos() const { return pos_; }
  uint64_t left() const { return size_ - pos_; }
  // Context for error messages: "metadata 'general.name'", "tensor 'blk.0.attn_q.weight'".
  std::string ctx;

  void need(uint64_t n, const char* what) const {
    if (n > left())
      MINFER_FAIL("{}: truncated while reading {}{}{} at offset {} (need {} bytes, {} left)", path_,
                  what, ctx.empty() ? "" : " of ", ctx, pos_, n, left());
  }
  template <typename T>
  T read(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  uint8_t u8(const char* what) { return read<uint8_t>(what); }
  uint32_t u32(const char* what) { return read<uint32_t>(what); }
  uint64_t u64(const char* what) { return read<uint64_t>(what); }
  std::string str(const char* what) {
    const uint64_t start = pos_;
    const uint64_t n = read<uint64_t>(what);
    if (n > left())
      MINFER_FAIL("{}: {}{}{}: string length {} at offset {} exceeds the {} bytes left in the file",
                  path_, what, ctx.empty() ? "" : " of ", ctx, n, start, left());
    std::string s(reinterpret_cast<const char*>(data_ + pos_), size_t(n));
    pos_ += n;
    return s;
  }
  // Checks that `count` values of at least `min_size` bytes each can fit in what is left.
  void check_count(uint64_t count, uint64_t min_size, const char* what) const {
    if (min_size != 0 && count > left() / min_size)
      MINFER_FAIL("{}: {}{}{}: count {} at offset {} cannot fit in the {} bytes left in the file",
                  path_, what, ctx.empty() ? "" : " of ", ctx, count, pos_, left());
  }

 private:
  const std::string& path_;
  const uint8_t* data_;
  uint64_t size_;
  uint64_t pos_ = 0;
};

std::string shape_str(const std::vector<int64_t>& ne) {
  return fmt::format("[{}]", fmt::join(ne, ", "));
}

}  // namespace

std::string gguf_type_name(uint32_t t) {
  static const char* const kNames[] = {"UINT8",  "INT8",    "UINT16", "INT16",  "UINT32",
                                       "INT32",  "FLOAT32", "BOOL",   "STRING", "ARRAY",
                                       "UINT64", "INT64",   "FLOAT64"};
  return t < std::size(kNames) ? kNames[t] : fmt::format("type {}", t);
}

namespace {

// Reads one value of type `type`. Arrays of arrays are validated and skipped (*nested = true).
void read_value(Cursor& c, const std::string& path, uint32_t type, int depth, GgufValue* out,
                uint32_t* elem_type, bool* nested) {
  switch (GgufType(type)) {
    case GgufType::UINT8:
      *out = uint64_t(c.read<uint8_t>("value"));
      return;
    case GgufType::INT8:
      *out = int64_t(c.read<int8_t>("value"));
      return;
    case GgufType::UINT16:
      *out = uint64_t(c.read<uint16_t>("value"));
      return;
    case GgufType::INT16:
      *out = int64_t(c.read<int16_t>("value"));
      return;
    case GgufType::UINT32:
      *out = uint64_t(c.read<uint32_t>("value"));
      return;
    case GgufType::INT32:
      *out = int64_t(c.read<int32_t>("value"));
      return;
    case GgufType::UINT64:
      *out = c.read<uint64_t>("value");
      return;
    case GgufType::INT64:
      *out = c.read<int64_t>("value");
      return;
    case GgufType::FLOAT32:
      *out = double(c.read<float>("value"));
      return;
    case GgufType::FLOAT64:
      *out = c.read<double>("value");
      return;
    case GgufType::BOOL: {
      const uint64_t at = c.pos();
      const uint8_t b = c.u8("value");
      MINFER_CHECK(b <= 1, "{}: {}: bool value {} at offset {} (expected 0 or 1)", path, c.ctx, b,
                   at);
      *out = b != 0;
      return;
    }
    case GgufType::STRING:
      *out = c.str("string value");
      return;
    case GgufType::ARRAY:
      break;
    default:
      MINFER_FAIL("{}: {}: unknown value type {} at offset {}", path, c.ctx, type, c.pos() - 4);
  }
  const uint32_t et = c.u32("array element type");
  const uint64_t count = c.u64("array length");
  const uint64_t min_size = min_encoded_size(et);
  MINFER_CHECK(min_size != 0, "{}: {}: unknown array element type {} at offset {}", path, c.ctx, et,
               c.pos() - 12);
  c.check_count(count, min_size, "array length");
  if (elem_type) *elem_type = et;
  if (GgufType(et) == GgufType::ARRAY) {
    MINFER_CHECK(depth < kMaxArrayDepth, "{}: {}: arrays nested deeper than {} levels", path, c.ctx,
                 kMaxArrayDepth);
    GgufValue skip;
    for (uint64_t i = 0; i < count; ++i) read_value(c, path, et, depth + 1, &skip, nullptr, nested);
    *nested = true;
    return;
  }
  if (GgufType(et) == GgufType::STRING) {
    std::vector<std::string> v;
    v.reserve(size_t(count));
    for (uint64_t i = 0; i < count; ++i) v.push_back(c.str("array element"));
    *out = std::move(v);
  } else if (GgufType(et) == GgufType::FLOAT32 || GgufType(et) == GgufType::FLOAT64) {
    std::vector<double> v(static_cast<size_t>(count));
    for (auto& x : v)
      x = GgufType(et) == GgufType::FLOAT32 ? double(c.read<float>("array element"))
                                            : c.read<double>("array element");
    *out = std::move(v);
  } else {  // integers and bools
    std::vector<int64_t> v(static_cast<size_t>(count));
    for (uint64_t i = 0; i < count; ++i) {
      GgufValue x;
      read_value(c, path, et, depth + 1, &x, nullptr, nested);
      if (auto* u = std::get_if<uint64_t>(&x)) {
        MINFER_CHECK(*u <= uint64_t(std::numeric_limits<int64_t>::max()),
                     "{}: {}: array element {} = {} does not fit in int64", path, c.ctx, i, *u);
        v[i] = int64_t(*u);
      } else if (auto* s = std::get_if<int64_t>(&x)) {
        v[i] = *s;
      } else {
        v[i] = std::get<bool>(x) ? 1 : 0;
      }
    }
    *out = std::move(v);
  }
}

}  // namespace

std::shared_ptr<GgufFile> GgufFile::open(const std::string& path) {
  return open_memory(std::make_shared<MmapFile>(path), path);
}

std::shared_ptr<GgufFile> GgufFile::open_memory(std::shared_ptr<Storage> bytes,
                                                const std::string& path) {
  MINFER_CHECK(bytes != nullptr, "{}: no bytes", path);
  auto f = std::make_shared<GgufFile>();
  f->path_ = path;
  f->map_ = std::move(bytes);
  const uint64_t size = f->map_->size();
  const uint8_t* m = static_cast<const uint8_t*>(f->map_->data());
  Cursor c(path, m, size);

  c.need(4, "magic");
  if (std::memcmp(m, "GGUF", 4) != 0)
    MINFER_FAIL(
        "{}: not a GGUF file (magic bytes {:02x} {:02x} {:02x} {:02x}, expected 47 47 55 46 "
        "\"GGUF\")",
        path, m[0], m[1], m[2], m[3]);
  c.read<uint32_t>("magic");
  const uint32_t version = c.u32("version");
  if (version == 1)
    MINFER_FAIL("{}: unsupported GGUF version 1 (minfer reads versions 2 and 3)", path);
  if (version != 2 && version != 3) {
    if ((version & 0xffffu) == 0 && (version >> 16) != 0)
      MINFER_FAIL("{}: big-endian GGUF (version field {:#010x}) is not supported", path, version);
    MINFER_FAIL("{}: unsupported GGUF version {} (minfer reads versions 2 and 3)", path, version);
  }
  f->version_ = version;
  const uint64_t n_tensors = c.u64("tensor count");
  const uint64_t n_kv = c.u64("metadata count");
  c.ctx = "header";
  c.check_count(n_kv, 8 + 4 + 1, "metadata count");  // key length + type + 1-byte value
  // Smallest tensor info: name length + n_dims + one dimension + type + offset.
  c.check_count(n_tensors, 8 + 4 + 8 + 4 + 8, "tensor count");

  for (uint64_t i = 0; i < n_kv; ++i) {
    c.ctx = fmt::format("metadata entry {}", i);
    std::string key = c.str("key");
    MINFER_CHECK(!f->has(key), "{}: duplicate metadata key '{}'", path, key);
    c.ctx = fmt::format("metadata '{}'", key);
    const uint32_t type = c.u32("value type");
    GgufValue v;
    uint32_t elem = 0;
    bool nested = false;
    read_value(c, path, type, 0, &v, &elem, &nested);
    if (nested) {
      f->nested_[key] = {type, elem};
    } else {
      f->types_[key] = {type, elem};
      f->kv_.emplace(std::move(key), std::move(v));
    }
  }

  uint64_t alignment = kDefaultAlignment;
  if (f->has("general.alignment")) {
    const auto& kt = f->types_.count("general.alignment") ? f->types_.at("general.alignment")
                                                          : f->nested_.at("general.alignment");
    MINFER_CHECK(is_integer(kt.type) && f->kv_.count("general.alignment"),
                 "{}: metadata 'general.alignment' has type {}, expected UINT32", path,
                 f->describe("general.alignment"));
    const int64_t a = f->get_int("general.alignment");
    MINFER_CHECK(a > 0 && (a & (a - 1)) == 0 && a <= (int64_t(1) << 30),
                 "{}: general.alignment = {} is not a power of two in [1, 2^30]", path, a);
    alignment = uint64_t(a);
  }

  c.ctx = "header";
  c.check_count(n_tensors, 8 + 4 + 8 + 4 + 8, "tensor count");
  std::vector<uint64_t> rel(static_cast<size_t>(n_tensors));
  f->infos_.reserve(size_t(n_tensors));
  for (uint64_t i = 0; i < n_tensors; ++i) {
    c.ctx = fmt::format("tensor info {}", i);
    GgufTensorInfo t;
    t.name = c.str("name");
    MINFER_CHECK(f->by_name_.count(t.name) == 0, "{}: duplicate tensor name '{}'", path, t.name);
    c.ctx = fmt::format("tensor '{}'", t.name);
    const uint32_t n_dims = c.u32("n_dims");
    MINFER_CHECK(n_dims >= 1 && n_dims <= 4, "{}: tensor '{}' has {} dimensions (expected 1 to 4)",
                 path, t.name, n_dims);
    uint64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t ne = c.u64("dimension");
      MINFER_CHECK(ne >= 1 && ne <= uint64_t(std::numeric_limits<int64_t>::max()),
                   "{}: tensor '{}' dimension {} is {} (expected >= 1)", path, t.name, d, ne);
      t.ne.push_back(int64_t(ne));
      MINFER_CHECK(!__builtin_mul_overflow(numel, ne, &numel) &&
                       numel <= uint64_t(std::numeric_limits<int64_t>::max()),
                   "{}: tensor '{}': element count of shape {}... overflows", path, t.name,
                   shape_str(t.ne));
    }
    t.type = c.u32("type");
    const uint64_t bs = ggml_block_size(t.type), ts = ggml_type_size(t.type);
    MINFER_CHECK(bs != 0, "{}: tensor '{}' has unsupported type {}", path, t.name, t.type);
    MINFER_CHECK(uint64_t(t.ne[0]) % bs == 0,
                 "{}: tensor '{}' (shape {}, type {}): ne[0] = {} is not a multiple of the block "
                 "size {}",
                 path, t.name, shape_str(t.ne), ggml_type_name(t.type), t.ne[0], bs);
    uint64_t nbytes = uint64_t(t.ne[0]) / bs;
    MINFER_CHECK(!__builtin_mul_overflow(nbytes, ts, &nbytes) &&
                     !__builtin_mul_overflow(nbytes, numel / uint64_t(t.ne[0]), &nbytes),
                 "{}: tensor '{}': byte size of shape {} overflows", path, t.name, shape_str(t.ne));
    t.nbytes = nbytes;
    rel[size_t(i)] = c.u64("data offset");
    f->by_name_[t.name] = f->infos_.size();
    f->infos_.push_back(std::move(t));
  }

  // The data section starts at the end of the header rounded up to the alignment.
  const uint64_t header_end = c.pos();
  const uint64_t data_start = (header_end + alignment - 1) / alignment * alignment;
  for (size_t i = 0; i < f->infos_.size(); ++i) {
    GgufTensorInfo& t = f->infos_[i];
    MINFER_CHECK(rel[i] % alignment == 0,
                 "{}: tensor '{}' data offset {} is not a multiple of the alignment {}", path,
                 t.name, rel[i], alignment);
    MINFER_CHECK(
        data_start <= size && rel[i] <= size - data_start && t.nbytes <= size - data_start - rel[i],
        "{}: tensor '{}' data (offset {} + {} bytes after the data section start {}) lies "
        "beyond the end of the file ({} bytes)",
        path, t.name, rel[i], t.nbytes, data_start, size);
    t.offset = data_start + rel[i];
  }
  std::vector<const GgufTensorInfo*> order;
  for (const auto& t : f->infos_) order.push_back(&t);
  std::sort(order.begin(), order.end(),
            [](const auto* a, const auto* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < order.size(); ++i) {
    const GgufTensorInfo& a = *order[i - 1];
    const GgufTensorInfo& b = *order[i];
    MINFER_CHECK(b.offset >= a.offset + a.nbytes,
                 "{}: tensor data overlaps: '{}' occupies [{}, {}) and '{}' starts at {}", path,
                 a.name, a.offset, a.offset + a.nbytes, b.name, b.offset);
  }
  return f;
}

std::string GgufFile::describe(const std::string& key) const {
  auto it = types_.find(key);
  const KeyType kt = it != types_.end() ? it->second : nested_.at(key);
  if (GgufType(kt.type) == GgufType::ARRAY) return "array of " + gguf_type_name(kt.elem);
  return gguf_type_name(kt.type);
}

std::string GgufFile::type_of(const std::string& key) const {
  MINFER_CHECK(has(key), "{}: metadata '{}' missing", path_, key);
  return describe(key);
}

const GgufValue& GgufFile::lookup(const std::string& key) const {
  MINFER_CHECK(nested_.count(key) == 0,
               "{}: metadata '{}' is an array of arrays, which minfer does not read", path_, key);
  auto it = kv_.find(key);
  MINFER_CHECK(it != kv_.end(), "{}: metadata '{}' missing", path_, key);
  return it->second;
}

std::string GgufFile::get_str(const std::string& key) const {
  const GgufValue& v = lookup(key);
  const auto* s = std::get_if<std::string>(&v);
  MINFER_CHECK(s, "{}: metadata '{}' has type {}, expected STRING", path_, key, describe(key));
  return *s;
}

int64_t GgufFile::get_int(const std::string& key) const {
  const GgufValue& v = lookup(key);
  if (const auto* s = std::get_if<int64_t>(&v)) return *s;
  if (const auto* u = std::get_if<uint64_t>(&v)) {
    MINFER_CHECK(*u <= uint64_t(std::numeric_limits<int64_t>::max()),
                 "{}: metadata '{}' = {} does not fit in int64", path_, key, *u);
    return int64_t(*u);
  }
  MINFER_FAIL("{}: metadata '{}' has type {}, expected an integer", path_, key, describe(key));
}

double GgufFile::get_float(const std::string& key) const {
  const GgufValue& v = lookup(key);
  if (const auto* d = std::get_if<double>(&v)) return *d;
  if (const auto* s = std::get_if<int64_t>(&v)) return double(*s);
  if (const auto* u = std::get_if<uint64_t>(&v)) return double(*u);
  MINFER_FAIL("{}: metadata '{}' has type {}, expected a number", path_, key, describe(key));
}

bool GgufFile::get_bool(const std::string& key) const {
  const GgufValue& v = lookup(key);
  const auto* b = std::get_if<bool>(&v);
  MINFER_CHECK(b, "{}: metadata '{}' has type {}, expected BOOL", path_, key, describe(key));
  return *b;
}

const std::vector<std::string>& GgufFile::get_str_array(const std::string& key) const {
  const GgufValue& v = lookup(key);
  const auto* a = std::get_if<std::vector<std::string>>(&v);
  MINFER_CHECK(a, "{}: metadata '{}' has type {}, expected array of STRING", path_, key,
               describe(key));
  return *a;
}

std::vector<int64_t> GgufFile::get_int_array(const std::string& key) const {
  const GgufValue& v = lookup(key);
  const auto* a = std::get_if<std::vector<int64_t>>(&v);
  MINFER_CHECK(a, "{}: metadata '{}' has type {}, expected an array of integers", path_, key,
               describe(key));
  return *a;
}

std::vector<double> GgufFile::get_float_array(const std::string& key) const {
  const GgufValue& v = lookup(key);
  if (const auto* a = std::get_if<std::vector<double>>(&v)) return *a;
  const auto* a = std::get_if<std::vector<int64_t>>(&v);
  MINFER_CHECK(a && GgufType(types_.at(key).elem) != GgufType::BOOL,
               "{}: metadata '{}' has type {}, expected an array of numbers", path_, key,
               describe(key));
  return std::vector<double>(a->begin(), a->end());
}

int64_t GgufFile::get_int_or(const std::string& key, int64_t def) const {
  return has(key) ? get_int(key) : def;
}
double GgufFile::get_float_or(const std::string& key, double def) const {
  return has(key) ? get_float(key) : def;
}
std::string GgufFile::get_str_or(const std::string& key, const std::string& def) const {
  return has(key) ? get_str(key) : def;
}

const GgufTensorInfo* GgufFile::find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &infos_[it->second];
}

const GgufTensorInfo& GgufFile::info(const std::string& name) const {
  const GgufTensorInfo* t = find(name);
  MINFER_CHECK(t, "{}: tensor '{}' not found ({} tensors in the file)", path_, name, infos_.size());
  return *t;
}

namespace {
bool plain_dtype(uint32_t type, DType* out) {
  switch (GgmlType(type)) {
    case GgmlType::F32:
      *out = DType::F32;
      return true;
    case GgmlType::F16:
      *out = DType::F16;
      return true;
    case GgmlType::BF16:
      *out = DType::BF16;
      return true;
    case GgmlType::F64:
      *out = DType::F64;
      return true;
    case GgmlType::I8:
      *out = DType::I8;
      return true;
    case GgmlType::I16:
      *out = DType::I16;
      return true;
    case GgmlType::I32:
      *out = DType::I32;
      return true;
    case GgmlType::I64:
      *out = DType::I64;
      return true;
    default:
      return false;
  }
}

// ggml's ne is innermost-first; our shapes are row-major outermost-first.
int reversed_shape(const GgufTensorInfo& t, int64_t* shape) {
  const int nd = int(t.ne.size());
  for (int d = 0; d < nd; ++d) shape[d] = t.ne[size_t(nd - 1 - d)];
  return nd;
}
}  // namespace

Tensor GgufFile::view(const GgufTensorInfo& t) const {
  DType dt;
  MINFER_CHECK(plain_dtype(t.type, &dt),
               "{}: tensor '{}' has type {}; a zero-copy view needs F32, F16 or BF16 (use "
               "dequantize())",
               path_, t.name, ggml_type_name(t.type));
  MINFER_CHECK(t.offset <= map_->size() && t.nbytes <= map_->size() - t.offset,
               "{}: tensor '{}' is not a tensor of this file", path_, t.name);
  MINFER_CHECK(t.offset % dtype_size(dt) == 0,
               "{}: tensor '{}' data at offset {} is not aligned for {} (file alignment too "
               "small); use dequantize()",
               path_, t.name, t.offset, dtype_name(dt));
  int64_t shape[kMaxDims];
  const int nd = reversed_shape(t, shape);
  return Tensor(map_, size_t(t.offset), dt, shape, nd);
}

Tensor GgufFile::bytes_view(const GgufTensorInfo& t) const {
  MINFER_CHECK(t.offset <= map_->size() && t.nbytes <= map_->size() - t.offset,
               "{}: tensor '{}' is not a tensor of this file", path_, t.name);
  int64_t rows = 1;
  for (size_t i = 1; i < t.ne.size(); ++i) rows *= t.ne[i];
  MINFER_CHECK(rows > 0 && t.nbytes % uint64_t(rows) == 0,
               "{}: tensor '{}': {} bytes do not split into {} rows", path_, t.name, t.nbytes,
               rows);
  return Tensor(map_, size_t(t.offset), DType::U8, {rows, int64_t(t.nbytes / uint64_t(rows))});
}

Tensor GgufFile::dequantize(const GgufTensorInfo& t) const {
  MINFER_CHECK(ggml_can_dequantize(t.type),
               "{}: tensor '{}' has type {} ({}), which minfer cannot dequantize", path_, t.name,
               ggml_type_name(t.type), t.type);
  MINFER_CHECK(t.offset <= map_->size() && t.nbytes <= map_->size() - t.offset,
               "{}: tensor '{}' is not a tensor of this file", path_, t.name);
  int64_t shape[kMaxDims];
  const int nd = reversed_shape(t, shape);
  Tensor out = Tensor::empty(DType::F32, shape, nd);
  const int64_t ne0 = t.ne[0];
  const int64_t rows = out.numel() / ne0;
  const uint64_t row_bytes = t.nbytes / uint64_t(rows);
  const uint8_t* src = data(t);
  float* dst = out.data<float>();
#pragma omp parallel for schedule(static) if (rows * ne0 >= (int64_t(1) << 16))
  for (int64_t r = 0; r < rows; ++r)
    dequantize_row(t.type, src + r * row_bytes, dst + r * ne0, ne0);
  return out;
}

std::string gguf_to_hf_name(const std::string& name) {
  static const std::pair<const char*, const char*> kGlobal[] = {
      {"token_embd", "model.embed_tokens"},
      {"output_norm", "model.norm"},
      {"output", "lm_head"},
  };
  static const std::pair<const char*, const char*> kLayer[] = {
      {"attn_q", "self_attn.q_proj"},      {"attn_k", "self_attn.k_proj"},
      {"attn_v", "self_attn.v_proj"},      {"attn_qkv", "self_attn.qkv_proj"},
      {"attn_output", "self_attn.o_proj"}, {"ffn_gate", "mlp.gate_proj"},
      {"ffn_up", "mlp.up_proj"},           {"ffn_down", "mlp.down_proj"},
      {"attn_norm", "input_layernorm"},    {"ffn_norm", "post_attention_layernorm"},
  };
  const size_t dot = name.rfind('.');
  const std::string suffix = dot == std::string::npos ? "" : name.substr(dot);
  MINFER_CHECK(suffix == ".weight" || suffix == ".bias",
               "GGUF tensor '{}': expected a name ending in .weight or .bias", name);
  const std::string stem = name.substr(0, dot);
  for (const auto& [g, h] : kGlobal)
    if (stem == g) return h + suffix;
  if (stem.rfind("blk.", 0) == 0) {
    size_t i = 4;
    while (i < stem.size() && stem[i] >= '0' && stem[i] <= '9') ++i;
    if (i > 4 && i - 4 <= 9 && i < stem.size() && stem[i] == '.') {
      const std::string layer = stem.substr(4, i - 4);
      const std::string part = stem.substr(i + 1);
      for (const auto& [g, h] : kLayer)
        if (part == g) return fmt::format("model.layers.{}.{}{}", std::stoll(layer), h, suffix);
    }
  }
  MINFER_FAIL(
      "GGUF tensor '{}' has no Hugging Face llama name (known: token_embd, output_norm, "
      "output, blk.N.{{attn_q,attn_k,attn_v,attn_qkv,attn_output,attn_norm,ffn_gate,ffn_up,"
      "ffn_down,ffn_norm}})",
      name);
}

void unpermute_qk_rows(float* w, int64_t rows, int64_t cols, int64_t n_head) {
  MINFER_CHECK(n_head > 0 && rows > 0 && cols > 0 && rows % (2 * n_head) == 0,
               "unpermute_qk_rows: {} rows x {} cols cannot be split into {} heads of an even "
               "head size",
               rows, cols, n_head);
  const int64_t hd = rows / n_head, half = hd / 2;
  std::vector<float> tmp(size_t(hd * cols));
  for (int64_t h = 0; h < n_head; ++h) {
    float* head = w + h * hd * cols;
    std::copy(head, head + hd * cols, tmp.begin());
    for (int64_t j = 0; j < half; ++j)
      for (int64_t i = 0; i < 2; ++i)
        std::copy_n(tmp.begin() + (2 * j + i) * cols, cols, head + (i * half + j) * cols);
  }
}

}  // namespace minfer
