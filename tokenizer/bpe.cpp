// Pipeline stage 4, the model: BPE (HF models/bpe/model.rs and word.rs): the merge table, the
// word cache, and merging a word's characters by rank.
#include "tokenizer/bpe.h"

#include <algorithm>
#include <climits>
#include <cstdio>
#include <queue>

#include "engine/error.h"
#include "tokenizer/unicode.h"

namespace minfer {

// ---- MergeTable ----
void MergeTable::reserve(size_t n) {
  size_t cap = 16;
  while (cap < n * 2) cap <<= 1;
  if (cap <= keys_.size()) return;
  std::vector<uint64_t> ok = std::move(keys_);
  std::vector<Value> ov = std::move(vals_);
  keys_.assign(cap, kEmpty);
  vals_.assign(cap, Value{0, 0});
  count_ = 0;
  for (size_t i = 0; i < ok.size(); ++i)
    if (ok[i] != kEmpty)
      insert(static_cast<int32_t>(ok[i] >> 32), static_cast<int32_t>(ok[i] & 0xffffffffu), ov[i]);
}

void MergeTable::grow() {
  reserve(keys_.empty() ? 8 : keys_.size());
}

void MergeTable::insert(int32_t a, int32_t b, Value v) {
  if ((count_ + 1) * 2 > keys_.size()) grow();
  uint64_t k = key(a, b);
  size_t mask = keys_.size() - 1;
  for (size_t i = hash(k) & mask;; i = (i + 1) & mask) {
    if (keys_[i] == k) {
      vals_[i] = v;
      return;
    }
    if (keys_[i] == kEmpty) {
      keys_[i] = k;
      vals_[i] = v;
      ++count_;
      return;
    }
  }
}

// ---- WordCache ----
bool WordCache::get(std::string_view w, uint64_t h, std::vector<int32_t>& out) const {
  if (slots_.empty()) return false;
  size_t mask = slots_.size() - 1;
  for (size_t i = h & mask;; i = (i + 1) & mask) {
    const Slot& s = slots_[i];
    if (s.hash == 0) return false;
    if (s.hash == h && s.key_len == w.size() && keys_.compare(s.key_off, s.key_len, w) == 0) {
      out.insert(out.end(), vals_.begin() + s.val_off, vals_.begin() + s.val_off + s.val_len);
      return true;
    }
  }
}

void WordCache::rehash(size_t cap) {
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(cap, Slot{});
  for (const Slot& s : old) {
    if (s.hash == 0) continue;
    for (size_t i = s.hash & (cap - 1);; i = (i + 1) & (cap - 1))
      if (slots_[i].hash == 0) {
        slots_[i] = s;
        break;
      }
  }
}

void WordCache::put(std::string_view w, uint64_t h, const std::vector<int32_t>& ids) {
  if (count_ >= kMaxEntries) return;
  if ((count_ + 1) * 2 > slots_.size()) rehash(slots_.empty() ? 1024 : slots_.size() * 2);
  size_t mask = slots_.size() - 1;
  for (size_t i = h & mask;; i = (i + 1) & mask) {
    Slot& s = slots_[i];
    if (s.hash == h && s.key_len == w.size() && keys_.compare(s.key_off, s.key_len, w) == 0) return;
    if (s.hash == 0) {
      s.hash = h;
      s.key_off = static_cast<uint32_t>(keys_.size());
      s.key_len = static_cast<uint32_t>(w.size());
      s.val_off = static_cast<uint32_t>(vals_.size());
      s.val_len = static_cast<uint32_t>(ids.size());
      keys_.append(w);
      vals_.insert(vals_.end(), ids.begin(), ids.end());
      ++count_;
      return;
    }
  }
}

// ---- BpeModel ----
BpeModel::BpeModel(Vocab vocab, const std::vector<std::pair<std::string, std::string>>& merges,
                   BpeOptions opt, const std::string& origin)
    : vocab_(std::move(vocab)), opt_(std::move(opt)) {
  if (opt_.unk_token) {
    auto it = vocab_.find(*opt_.unk_token);
    MINFER_CHECK(it != vocab_.end(), "{}: BPE unk_token '{}' is not in the vocabulary", origin,
                 *opt_.unk_token);
    unk_id_ = it->second;
  }
  merges_.reserve(merges.size());
  std::string joined;
  for (size_t r = 0; r < merges.size(); ++r) {
    const auto& [a, b] = merges[r];
    int32_t ia = lookup(a), ib = lookup(b);
    MINFER_CHECK(ia >= 0 && ib >= 0,
                 "{}: merge {} ('{}' '{}') uses a token missing from the vocabulary", origin, r, a,
                 b);
    joined.assign(a);
    if (!opt_.continuing_subword_prefix.empty() &&
        b.compare(0, opt_.continuing_subword_prefix.size(), opt_.continuing_subword_prefix) == 0)
      joined.append(b, opt_.continuing_subword_prefix.size());
    else
      joined.append(b);
    int32_t id = lookup(joined);
    MINFER_CHECK(id >= 0, "{}: merge {} ('{}' '{}') produces '{}', which is not in the vocabulary",
                 origin, r, a, b, joined);
    merges_.insert(ia, ib, {static_cast<int32_t>(r), id});
  }
  plain_chars_ = opt_.continuing_subword_prefix.empty() && opt_.end_of_word_suffix.empty();
  char_id_.assign(65536, -1);
  for (const auto& [tok, id] : vocab_) {
    if (tok.empty()) continue;
    int len;
    uint32_t cp = unicode::decode_at(tok, 0, &len);
    if (static_cast<size_t>(len) == tok.size() && cp < 65536) char_id_[cp] = id;
  }
  byte_id_.fill(-1);
  char name[8];
  for (int b = 0; b < 256; ++b) {
    snprintf(name, sizeof(name), "<0x%02X>", b);
    byte_id_[b] = lookup(name);
  }
}

void BpeModel::tokenize(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (opt_.ignore_merges ||
      (whole_newline_words_ && word.find_first_not_of('\n') == std::string_view::npos)) {
    int32_t id = lookup(word);
    if (id >= 0) {
      out.push_back(id);
      return;
    }
  }
  constexpr size_t kMaxCachedWord = 256;
  const bool cacheable = word.size() <= kMaxCachedWord;
  const uint64_t h = cacheable ? hash_bytes(word) : 0;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mu_);
    if (cache_.get(word, h, out)) return;
  }
  std::vector<int32_t> ids;
  merge_word(word, ids);
  out.insert(out.end(), ids.begin(), ids.end());
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mu_);
    cache_.put(word, h, ids);
  }
}

// Splits the word into characters mapped to ids (merge_word in HF's model.rs), then merges.
void BpeModel::merge_word(std::string_view w, std::vector<int32_t>& ids) const {
  ids.clear();
  int32_t pending_unk = -1;  // a run of unknown characters not yet emitted (fuse_unk)
  std::string key;
  for (size_t i = 0; i < w.size();) {
    int len;
    uint32_t cp = unicode::decode_at(w, i, &len);
    std::string_view ch = w.substr(i, static_cast<size_t>(len));
    const bool is_first = i == 0;
    i += static_cast<size_t>(len);
    const bool is_last = i == w.size();
    int32_t id;
    std::string_view s = ch;
    if (plain_chars_) {
      id = cp < 65536 ? char_id_[cp] : lookup(ch);
    } else {
      key.clear();
      if (!is_first) key += opt_.continuing_subword_prefix;
      key += ch;
      if (is_last) key += opt_.end_of_word_suffix;
      s = key;
      id = lookup(key);
    }
    if (id >= 0) {
      if (pending_unk >= 0) {
        ids.push_back(pending_unk);
        pending_unk = -1;
      }
      ids.push_back(id);
      continue;
    }
    if (opt_.byte_fallback) {
      bool all = true;
      for (char c : s) all = all && byte_id_[static_cast<uint8_t>(c)] >= 0;
      if (all) {
        for (char c : s) ids.push_back(byte_id_[static_cast<uint8_t>(c)]);
        continue;
      }
    }
    if (unk_id_ >= 0) {
      if (pending_unk >= 0 && !opt_.fuse_unk) ids.push_back(pending_unk);
      pending_unk = unk_id_;
    }
    // No unk token: HF drops the character.
  }
  if (pending_unk >= 0) ids.push_back(pending_unk);
  if (ids.size() < 2) return;
  if (ids.size() <= 64)
    merge_small(ids);
  else
    merge_heap(ids);
}

// Repeatedly merges the adjacent pair of lowest rank (leftmost on ties): the same order as
// HF's heap (Word::merge_all), computed by a linear scan, which is faster for short words.
void BpeModel::merge_small(std::vector<int32_t>& ids) const {
  constexpr int32_t kNone = INT32_MAX;
  int32_t rank[64];
  int32_t next_id[64];
  size_t n = ids.size();
  for (size_t k = 0; k + 1 < n; ++k) {
    const MergeTable::Value* m = merges_.find(ids[k], ids[k + 1]);
    rank[k] = m ? m->rank : kNone;
    next_id[k] = m ? m->id : -1;
  }
  while (n > 1) {
    size_t best = 0;
    int32_t br = kNone;
    for (size_t k = 0; k + 1 < n; ++k)
      if (rank[k] < br) {
        br = rank[k];
        best = k;
      }
    if (br == kNone) break;
    ids[best] = next_id[best];
    for (size_t k = best + 1; k + 1 < n; ++k) {
      ids[k] = ids[k + 1];
      rank[k] = rank[k + 1];
      next_id[k] = next_id[k + 1];
    }
    --n;
    auto refresh = [&](size_t k) {
      const MergeTable::Value* m = merges_.find(ids[k], ids[k + 1]);
      rank[k] = m ? m->rank : kNone;
      next_id[k] = m ? m->id : -1;
    };
    if (best > 0) refresh(best - 1);
    if (best + 1 < n) refresh(best);
  }
  ids.resize(n);
}

// HF's Word::merge_all: a min-heap of (rank, position) over a linked list of symbols.
void BpeModel::merge_heap(std::vector<int32_t>& ids) const {
  struct Sym {
    int32_t id, prev, next;
    bool alive;
  };
  struct Merge {
    int32_t rank, pos, new_id;
    bool operator<(const Merge& o) const {  // std::priority_queue is a max-heap
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  const int32_t n = static_cast<int32_t>(ids.size());
  std::vector<Sym> sym(static_cast<size_t>(n));
  for (int32_t k = 0; k < n; ++k) sym[k] = {ids[k], k - 1, k + 1 < n ? k + 1 : -1, true};
  std::vector<Merge> init;
  init.reserve(static_cast<size_t>(n));
  for (int32_t k = 0; k + 1 < n; ++k)
    if (const MergeTable::Value* m = merges_.find(ids[k], ids[k + 1]))
      init.push_back({m->rank, k, m->id});
  std::priority_queue<Merge> q(std::less<Merge>(), std::move(init));
  while (!q.empty()) {
    Merge top = q.top();
    q.pop();
    Sym& cur = sym[top.pos];
    if (!cur.alive || cur.next < 0) continue;
    Sym& right = sym[cur.next];
    const MergeTable::Value* m = merges_.find(cur.id, right.id);
    if (!m || m->id != top.new_id) continue;  // stale entry
    cur.id = top.new_id;
    right.alive = false;
    cur.next = right.next;
    if (cur.next >= 0) sym[cur.next].prev = top.pos;
    if (cur.prev >= 0)
      if (const MergeTable::Value* p = merges_.find(sym[cur.prev].id, cur.id))
        q.push({p->rank, cur.prev, p->id});
    if (cur.next >= 0)
      if (const MergeTable::Value* p = merges_.find(cur.id, sym[cur.next].id))
        q.push({p->rank, top.pos, p->id});
  }
  ids.clear();
  for (int32_t k = 0; k >= 0; k = sym[k].next) ids.push_back(sym[k].id);
}

}  // namespace minfer
