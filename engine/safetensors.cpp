// safetensors reader / writer. Format: https://huggingface.co/docs/safetensors (the Rust crate
// `safetensors` is the reference implementation; its checks are the model for ours).
//
// Reading trusts nothing: every length, offset, dtype and shape in the header is checked against
// the file before a Tensor view is made, so a truncated or hostile file gives an Error naming the
// file and the tensor, never an out-of-bounds read.
#include "engine/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "engine/error.h"
#include "engine/json_text.h"

namespace minfer {

namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

// Same cap as the reference implementation (MAX_HEADER_SIZE = 100_000_000): a header length
// larger than this is garbage, not a model.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

constexpr const char* kKnownDTypes = "F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL";

// A JSON value for an error message, cut short so a hostile header cannot flood the terminal.
std::string show(const json& v) {
  std::string s = v.dump(-1, ' ', false, json::error_handler_t::replace);
  if (s.size() > 80) s = s.substr(0, 77) + "...";
  return s;
}

// A non-negative JSON integer (signed or unsigned storage). Floats such as 2.0 are rejected, as
// the reference implementation does.
bool as_u64(const json& v, uint64_t* out) {
  if (v.is_number_unsigned()) {
    *out = v.get<uint64_t>();
    return true;
  }
  if (v.is_number_integer()) {
    const int64_t i = v.get<int64_t>();
    if (i < 0) return false;
    *out = uint64_t(i);
    return true;
  }
  return false;
}

std::string shape_to_str(const int64_t* dims, int ndim) {
  std::string s = "[";
  for (int i = 0; i < ndim; ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

// Parses JSON text: syntax errors, duplicate keys (a duplicated tensor name is ambiguous) and
// runaway nesting are Errors naming `path` (engine/json_text.h).
json parse_json(const std::string& path, const char* what, const char* begin, const char* end) {
  return parse_json_text(std::string_view(begin, size_t(end - begin)), path, what);
}

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// One tensor entry of the header, validated.
struct Entry {
  std::string name;
  DType dtype;
  int ndim;
  int64_t shape[kMaxDims];
  uint64_t begin, end;  // relative to the start of the data buffer
};

Entry parse_entry(const std::string& path, const std::string& name, const json& e,
                  uint64_t data_size) {
  Entry t{};
  t.name = name;
  MINFER_CHECK(e.is_object(),
               "{}: tensor '{}': expected an object {{dtype, shape, data_offsets}}, found {}", path,
               name, show(e));

  auto dt = e.find("dtype");
  MINFER_CHECK(dt != e.end(), "{}: tensor '{}': missing field 'dtype'", path, name);
  MINFER_CHECK(dt->is_string(), "{}: tensor '{}': dtype must be a string, found {}", path, name,
               show(*dt));
  const std::string& dname = dt->get_ref<const std::string&>();
  MINFER_CHECK(dtype_from_name(dname, &t.dtype),
               "{}: tensor '{}': unsupported dtype '{}' (expected one of {})", path, name, dname,
               kKnownDTypes);

  auto sh = e.find("shape");
  MINFER_CHECK(sh != e.end(), "{}: tensor '{}': missing field 'shape'", path, name);
  MINFER_CHECK(sh->is_array(),
               "{}: tensor '{}': shape must be an array of non-negative integers, found {}", path,
               name, show(*sh));
  MINFER_CHECK(
      sh->size() <= size_t(kMaxDims),
      "{}: tensor '{}': rank {} is not supported (expected at most {} dimensions), shape {}", path,
      name, sh->size(), kMaxDims, show(*sh));
  t.ndim = int(sh->size());
  bool any_zero = false;
  for (int i = 0; i < t.ndim; ++i) {
    uint64_t d = 0;
    MINFER_CHECK(as_u64((*sh)[i], &d) && d <= uint64_t(INT64_MAX),
                 "{}: tensor '{}': shape must be an array of non-negative integers, found {} "
                 "(dimension {} is {})",
                 path, name, show(*sh), i, show((*sh)[i]));
    t.shape[i] = int64_t(d);
    any_zero |= d == 0;
  }
  // Bytes the shape needs; overflow is an error, not a wrap-around. The non-zero dimensions must
  // multiply without overflow even when another dimension is 0, so that code elsewhere computing
  // numel() as a running product (dim 0 first) never overflows on a tensor we accepted.
  uint64_t need = dtype_size(t.dtype);
  for (int i = 0; i < t.ndim; ++i)
    MINFER_CHECK(t.shape[i] == 0 || (!__builtin_mul_overflow(need, uint64_t(t.shape[i]), &need) &&
                                     need <= uint64_t(INT64_MAX)),
                 "{}: tensor '{}': shape {} of {} is too large (its byte size overflows int64)",
                 path, name, shape_to_str(t.shape, t.ndim), dname);
  if (any_zero) need = 0;

  auto off = e.find("data_offsets");
  MINFER_CHECK(off != e.end(), "{}: tensor '{}': missing field 'data_offsets'", path, name);
  MINFER_CHECK(
      off->is_array() && off->size() == 2 && as_u64((*off)[0], &t.begin) &&
          as_u64((*off)[1], &t.end),
      "{}: tensor '{}': data_offsets must be [begin, end] (two non-negative integers), found {}",
      path, name, show(*off));
  MINFER_CHECK(t.begin <= t.end, "{}: tensor '{}': data_offsets [{}, {}] has begin > end", path,
               name, t.begin, t.end);
  MINFER_CHECK(t.end <= data_size,
               "{}: tensor '{}': data_offsets [{}, {}] run past the end of the data buffer "
               "(expected end <= {} bytes; is the file truncated?)",
               path, name, t.begin, t.end, data_size);
  MINFER_CHECK(t.end - t.begin == need,
               "{}: tensor '{}': shape {} of {} ({} bytes each) needs {} bytes, found data_offsets "
               "[{}, {}] holding {} bytes",
               path, name, shape_to_str(t.shape, t.ndim), dname, dtype_size(t.dtype), need, t.begin,
               t.end, t.end - t.begin);
  for (auto it = e.begin(); it != e.end(); ++it)
    MINFER_CHECK(it.key() == "dtype" || it.key() == "shape" || it.key() == "data_offsets",
                 "{}: tensor '{}': unexpected field '{}' (expected dtype, shape, data_offsets)",
                 path, name, it.key());
  return t;
}

// write(2) until done, retrying short writes and EINTR.
void write_all(int fd, const void* data, size_t n, const std::string& tmp) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, std::min<size_t>(n, size_t(1) << 30));
    if (w < 0 && errno == EINTR) continue;
    MINFER_CHECK(w > 0, "{}: write failed: {}", tmp,
                 w < 0 ? std::strerror(errno) : "wrote 0 bytes");
    p += w;
    n -= size_t(w);
  }
}

// Removes the temporary file unless the write finished and was renamed into place.
struct TmpFile {
  std::string path;
  int fd = -1;
  bool committed = false;
  ~TmpFile() {
    if (fd >= 0) ::close(fd);
    if (!committed) ::unlink(path.c_str());
  }
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// SafetensorsFile

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  return open_memory(std::make_shared<MmapFile>(path), path);
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::open_memory(std::shared_ptr<Storage> image,
                                                              const std::string& path) {
  MINFER_CHECK(image != nullptr, "{}: no bytes", path);
  auto f = std::make_shared<SafetensorsFile>();
  f->path_ = path;
  f->map_ = std::move(image);
  const uint64_t file_size = f->map_->size();
  const uint8_t* bytes = static_cast<const uint8_t*>(f->map_->data());

  MINFER_CHECK(file_size >= 8,
               "{}: file is {} bytes, too short for a safetensors file (expected at least the "
               "8-byte header length)",
               path, file_size);
  const uint64_t n = read_u64_le(bytes);
  MINFER_CHECK(n <= file_size - 8,
               "{}: header length {} runs past the end of the file ({} bytes, so at most {}); "
               "truncated or not a safetensors file",
               path, n, file_size, file_size - 8);
  MINFER_CHECK(n <= kMaxHeaderBytes, "{}: header length {} exceeds the {} byte limit", path, n,
               kMaxHeaderBytes);
  const char* hbegin = reinterpret_cast<const char*>(bytes + 8);
  const json header = parse_json(path, "header", hbegin, hbegin + n);
  MINFER_CHECK(header.is_object(), "{}: header must be a JSON object, found {}", path,
               header.type_name());

  const uint64_t data_start = 8 + n;
  const uint64_t data_size = file_size - data_start;
  std::vector<Entry> entries;
  entries.reserve(header.size());
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      MINFER_CHECK(it->is_object(), "{}: __metadata__ must be an object of strings, found {}", path,
                   show(*it));
      for (auto m = it->begin(); m != it->end(); ++m) {
        MINFER_CHECK(m->is_string(), "{}: __metadata__ value for '{}' must be a string, found {}",
                     path, m.key(), show(*m));
        f->metadata_[m.key()] = m->get<std::string>();
      }
      continue;
    }
    entries.push_back(parse_entry(path, it.key(), *it, data_size));
  }

  // No two tensors may share bytes. Empty tensors occupy nothing and cannot overlap.
  std::vector<const Entry*> order;
  for (const Entry& e : entries)
    if (e.end > e.begin) order.push_back(&e);
  std::sort(order.begin(), order.end(), [](const Entry* a, const Entry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  for (size_t i = 1; i < order.size(); ++i) {
    const Entry& a = *order[i - 1];
    const Entry& b = *order[i];
    MINFER_CHECK(b.begin >= a.end,
                 "{}: tensors '{}' (bytes [{}, {})) and '{}' (bytes [{}, {})) overlap in the data "
                 "buffer",
                 path, a.name, a.begin, a.end, b.name, b.begin, b.end);
  }

  for (const Entry& e : entries) {
    const uint64_t abs = data_start + e.begin;
    if (abs % dtype_size(e.dtype) == 0) {
      f->tensors_.emplace(e.name, Tensor(f->map_, abs, e.dtype, e.shape, e.ndim));
    } else {
      // The format does not align tensors (the reference writer only keeps them aligned by
      // sorting on dtype size), and reading a float through a misaligned pointer is undefined
      // behaviour. Such a tensor gets an aligned host copy; aligned ones stay zero-copy views.
      Tensor t = Tensor::empty(e.dtype, e.shape, e.ndim);
      std::memcpy(t.raw(), bytes + abs, e.end - e.begin);
      f->tensors_.emplace(e.name, std::move(t));
    }
  }
  return f;
}

const Tensor& SafetensorsFile::get(const std::string& name) const {
  auto it = tensors_.find(name);
  MINFER_CHECK(it != tensors_.end(), "{}: missing tensor '{}'", path_, name);
  return it->second;
}

// ---------------------------------------------------------------------------------------------
// WeightStore

namespace {

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  MINFER_CHECK(in.good(), "{}: cannot open: {}", path, std::strerror(errno));
  std::stringstream ss;
  ss << in.rdbuf();
  MINFER_CHECK(!in.bad(), "{}: read failed", path);
  return ss.str();
}

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

WeightStore WeightStore::from_file(std::shared_ptr<SafetensorsFile> file) {
  MINFER_CHECK(file != nullptr, "WeightStore::from_file: no file");
  WeightStore ws;
  ws.source_ = file->path();
  ws.files_.push_back(std::move(file));
  for (const auto& [name, t] : ws.files_[0]->tensors()) ws.index_.emplace(name, 0);
  return ws;
}

WeightStore WeightStore::open(const std::string& path) {
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  MINFER_CHECK(fs::exists(st),
               "{}: no such file or folder (expected a .safetensors file or a "
               "model folder)",
               path);

  std::string single, index_path;
  if (fs::is_directory(st)) {
    // Same preference as transformers: the single file first, then the sharded index.
    const fs::path dir(path);
    if (fs::exists(dir / "model.safetensors", ec)) {
      single = (dir / "model.safetensors").string();
    } else if (fs::exists(dir / "model.safetensors.index.json", ec)) {
      index_path = (dir / "model.safetensors.index.json").string();
    } else {
      MINFER_FAIL("{}: folder has neither model.safetensors nor model.safetensors.index.json",
                  path);
    }
  } else if (ends_with(path, ".index.json")) {
    index_path = path;
  } else {
    single = path;
  }

  WeightStore ws;
  if (!single.empty()) {
    ws.files_.push_back(SafetensorsFile::open(single));
    ws.source_ = single;
    for (const auto& [name, t] : ws.files_[0]->tensors()) ws.index_.emplace(name, 0);
    return ws;
  }

  const std::string text = read_text(index_path);
  const json j = parse_json(index_path, "index", text.data(), text.data() + text.size());
  MINFER_CHECK(j.is_object(), "{}: expected a JSON object, found {}", index_path, j.type_name());
  auto wm = j.find("weight_map");
  MINFER_CHECK(wm != j.end(), "{}: missing field 'weight_map'", index_path);
  MINFER_CHECK(wm->is_object(),
               "{}: 'weight_map' must be an object {{tensor: shard file}}, found {}", index_path,
               show(*wm));
  MINFER_CHECK(!wm->empty(), "{}: 'weight_map' is empty", index_path);

  // Shard file name -> the tensors the index puts there. std::map: shards open in name order,
  // so model-00001-of-N comes first (its metadata is metadata()).
  std::map<std::string, std::vector<std::string>> shards;
  for (auto it = wm->begin(); it != wm->end(); ++it) {
    MINFER_CHECK(it->is_string(),
                 "{}: weight_map entry for tensor '{}' must be a file name, found {}", index_path,
                 it.key(), show(*it));
    const std::string& shard = it->get_ref<const std::string&>();
    const fs::path sp(shard);
    bool escapes = shard.empty() || sp.is_absolute();
    for (const auto& part : sp) escapes |= part == "..";
    MINFER_CHECK(!escapes,
                 "{}: tensor '{}': shard file '{}' must be a relative name inside the model folder",
                 index_path, it.key(), shard);
    shards[shard].push_back(it.key());
  }

  const fs::path dir = fs::path(index_path).parent_path();
  std::string names;
  size_t listed = 0;
  for (const auto& [shard, tensors] : shards) {
    const std::string shard_path = (dir / shard).string();
    std::shared_ptr<SafetensorsFile> f;
    try {
      f = SafetensorsFile::open(shard_path);
    } catch (const Error& e) {
      MINFER_FAIL("{}: shard '{}' (holding tensor '{}' and {} more) cannot be read: {}", index_path,
                  shard, tensors.front(), tensors.size() - 1, e.what());
    }
    for (const std::string& t : tensors)
      MINFER_CHECK(f->has(t),
                   "{}: weight_map puts tensor '{}' in shard {}, but that file has no such tensor",
                   index_path, t, shard_path);
    const size_t fi = ws.files_.size();
    for (const auto& [name, t] : f->tensors()) {
      auto [it, fresh] = ws.index_.emplace(name, fi);
      MINFER_CHECK(fresh, "{}: tensor '{}' appears in two shards: {} and {}", index_path, name,
                   ws.files_[it->second]->path(), shard_path);
    }
    ws.files_.push_back(std::move(f));
    if (listed < 4) names += (listed ? ", " : "") + shard;
    ++listed;
  }
  if (listed > 4) names += fmt::format(" and {} more", listed - 4);
  ws.source_ = fmt::format("{} (shards: {})", index_path, names);
  return ws;
}

bool WeightStore::has(const std::string& name) const {
  return index_.count(name) != 0;
}

const Tensor& WeightStore::get(const std::string& name) const {
  auto it = index_.find(name);
  MINFER_CHECK(it != index_.end(), "{}: missing tensor '{}'", source_, name);
  return files_[it->second]->get(name);
}

const Tensor& WeightStore::get(const std::string& name,
                               std::initializer_list<int64_t> shape) const {
  const Tensor& t = get(name);
  bool same = int(shape.size()) == t.ndim();
  for (int i = 0; same && i < t.ndim(); ++i) same = shape.begin()[i] == t.dim(i);
  MINFER_CHECK(same, "{}: tensor '{}': expected shape {} (from config.json), found {}",
               file_of(name), name, shape_to_str(shape.begin(), int(shape.size())), t.shape_str());
  return t;
}

std::vector<std::string> WeightStore::names() const {
  std::vector<std::string> out;
  out.reserve(index_.size());
  for (const auto& [name, fi] : index_) out.push_back(name);
  return out;
}

const std::string& WeightStore::file_of(const std::string& name) const {
  auto it = index_.find(name);
  MINFER_CHECK(it != index_.end(), "{}: missing tensor '{}'", source_, name);
  return files_[it->second]->path();
}

const std::map<std::string, std::string>& WeightStore::metadata() const {
  static const std::map<std::string, std::string> kEmpty;
  return files_.empty() ? kEmpty : files_.front()->metadata();
}

std::string WeightStore::describe() const {
  return source_;
}

// ---------------------------------------------------------------------------------------------
// Writing

void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  // ordered_json keeps __metadata__ first and the tensors in the order given.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    auto& m = header["__metadata__"] = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
  }
  uint64_t offset = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& [name, t] = tensors[i];
    MINFER_CHECK(!name.empty(), "{}: tensor #{} has an empty name", path, i);
    MINFER_CHECK(name != "__metadata__", "{}: '__metadata__' is reserved, not a tensor name", path);
    MINFER_CHECK(!header.contains(name), "{}: tensor '{}' is given twice", path, name);
    MINFER_CHECK(t.defined(), "{}: tensor '{}' has no storage", path, name);
    MINFER_CHECK(!t.on_device(), "{}: tensor '{}' is in device memory; copy it to the host first",
                 path, name);
    MINFER_CHECK(t.is_contiguous(), "{}: tensor '{}' {} is not contiguous; clone() it first", path,
                 name, t.shape_str());
    auto shape = nlohmann::ordered_json::array();
    for (int d = 0; d < t.ndim(); ++d) shape.push_back(t.dim(d));
    const uint64_t nb = t.nbytes();
    auto& e = header[name] = nlohmann::ordered_json::object();
    e["dtype"] = std::string(dtype_name(t.dtype()));
    e["shape"] = std::move(shape);
    e["data_offsets"] = nlohmann::ordered_json::array({offset, offset + nb});
    offset += nb;
  }

  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::ordered_json::exception& e) {
    MINFER_FAIL("{}: cannot write the header (tensor names and metadata must be UTF-8): {}", path,
                e.what());
  }
  // Pad with spaces to a multiple of 8 so the data buffer starts 8-byte aligned, as the
  // reference writer does.
  text.append((8 - text.size() % 8) % 8, ' ');

  TmpFile tmp{path + ".tmp"};
  tmp.fd = ::open(tmp.path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (tmp.fd < 0) {
    const int err = errno;
    tmp.committed = true;  // nothing was created, nothing to remove
    MINFER_FAIL("{}: cannot create {}: {}", path, tmp.path, std::strerror(err));
  }
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = uint8_t(uint64_t(text.size()) >> (8 * i));
  write_all(tmp.fd, len, 8, tmp.path);
  write_all(tmp.fd, text.data(), text.size(), tmp.path);
  for (const auto& [name, t] : tensors)
    if (t.nbytes() > 0) write_all(tmp.fd, t.raw(), t.nbytes(), tmp.path);
  MINFER_CHECK(::fsync(tmp.fd) == 0, "{}: fsync failed: {}", tmp.path, std::strerror(errno));
  const int rc = ::close(tmp.fd);
  tmp.fd = -1;
  MINFER_CHECK(rc == 0, "{}: close failed: {}", tmp.path, std::strerror(errno));
  MINFER_CHECK(::rename(tmp.path.c_str(), path.c_str()) == 0, "{}: cannot rename {} over it: {}",
               path, tmp.path, std::strerror(errno));
  tmp.committed = true;
  // Make the rename itself durable; best effort (some file systems refuse fsync on folders).
  std::string dir = fs::path(path).parent_path().string();
  if (dir.empty()) dir = ".";
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace minfer
