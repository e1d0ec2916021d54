// Pipeline stage 4, the model: BPE, byte-level (GPT-2, LLaMA-3) and SentencePiece-style (byte
// fallback to <0xNN>, fuse_unk), with the semantics of Hugging Face `tokenizers`
// (models/bpe/model.rs, models/bpe/word.rs). Also the vocabulary map every model uses.
// WordPiece, WordLevel and the choice between models are in models.h.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace minfer {

// 64-bit hash of a byte string (8 bytes per step, multiply-xorshift mixing); never 0.
inline uint64_t hash_bytes(std::string_view s) noexcept {
  const char* p = s.data();
  size_t n = s.size(), i = 0;
  uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xff51afd7ed558ccdull);
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    __builtin_memcpy(&w, p + i, 8);
    h = (h ^ w) * 0xbf58476d1ce4e5b9ull;
    h ^= h >> 31;
  }
  if (i < n) {
    uint64_t w = 0;
    __builtin_memcpy(&w, p + i, n - i);
    h = (h ^ w) * 0x94d049bb133111ebull;
    h ^= h >> 29;
  }
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 32;
  return h | 1;
}

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept {
    return static_cast<size_t>(hash_bytes(s));
  }
};
using Vocab = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

// Open-addressing map from a pair of token ids to (merge rank, merged token id).
class MergeTable {
 public:
  struct Value {
    int32_t rank;
    int32_t id;
  };
  void reserve(size_t n);
  void insert(int32_t a, int32_t b, Value v);  // a later insert of the same pair overwrites
  const Value* find(int32_t a, int32_t b) const {
    if (keys_.empty()) return nullptr;
    uint64_t k = key(a, b);
    size_t mask = keys_.size() - 1;
    for (size_t i = hash(k) & mask;; i = (i + 1) & mask) {
      if (keys_[i] == k) return &vals_[i];
      if (keys_[i] == kEmpty) return nullptr;
    }
  }
  size_t size() const { return count_; }

 private:
  static constexpr uint64_t kEmpty = ~0ull;
  static uint64_t key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  static size_t hash(uint64_t k) { return static_cast<size_t>((k * 0x9E3779B97F4A7C15ull) >> 20); }
  void grow();
  std::vector<uint64_t> keys_;
  std::vector<Value> vals_;
  size_t count_ = 0;
};

// Word -> ids cache: open addressing over one key arena and one value arena (no allocation per
// entry). Stops growing at kMaxEntries words.
class WordCache {
 public:
  static constexpr size_t kMaxEntries = 1 << 18;
  // Appends the cached ids of `w` to `out`; false when absent.
  bool get(std::string_view w, uint64_t h, std::vector<int32_t>& out) const;
  void put(std::string_view w, uint64_t h, const std::vector<int32_t>& ids);

 private:
  struct Slot {
    uint64_t hash = 0;  // 0 = empty
    uint32_t key_off = 0, key_len = 0, val_off = 0, val_len = 0;
  };
  void rehash(size_t cap);
  std::vector<Slot> slots_;
  std::string keys_;
  std::vector<int32_t> vals_;
  size_t count_ = 0;
};

struct BpeOptions {
  std::optional<std::string> unk_token;
  std::string continuing_subword_prefix;
  std::string end_of_word_suffix;
  bool fuse_unk = false;
  bool byte_fallback = false;
  bool ignore_merges = false;
};

class BpeModel {
 public:
  // `merges` are pairs of token strings in rank order. Throws naming `origin` when a merge
  // refers to a token (or a merged token) that is not in the vocabulary.
  BpeModel(Vocab vocab, const std::vector<std::pair<std::string, std::string>>& merges,
           BpeOptions opt, const std::string& origin);
  // Appends the ids of one pre-tokenized word.
  void tokenize(std::string_view word, std::vector<int32_t>& out) const;

  const Vocab& vocab() const { return vocab_; }
  const BpeOptions& options() const { return opt_; }
  // A word made only of '\n' that is in the vocabulary becomes that one token, as if merges were
  // ignored for it (llama.cpp's Gemma 4 rule, PR 21343); off by default.
  void set_whole_newline_words(bool on) { whole_newline_words_ = on; }
  size_t num_merges() const { return merges_.size(); }

 private:
  int32_t lookup(std::string_view s) const {
    auto it = vocab_.find(s);
    return it == vocab_.end() ? -1 : it->second;
  }
  bool whole_newline_words_ = false;
  void merge_word(std::string_view word, std::vector<int32_t>& ids) const;
  void merge_small(std::vector<int32_t>& ids) const;
  void merge_heap(std::vector<int32_t>& ids) const;

  Vocab vocab_;
  BpeOptions opt_;
  MergeTable merges_;
  int32_t unk_id_ = -1;
  std::vector<int32_t> char_id_;      // [65536] id of a one-code-point token, -1 if none
  std::array<int32_t, 256> byte_id_;  // id of "<0xNN>", -1 if none
  bool plain_chars_ = true;           // no prefix/suffix: char_id_ applies

  // Word cache: word -> ids. Guarded by a mutex; encode() is const and may run concurrently.
  mutable std::mutex cache_mu_;
  mutable WordCache cache_;
};

}  // namespace minfer
