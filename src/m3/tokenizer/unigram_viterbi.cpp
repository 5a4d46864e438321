#include "m3/tokenizer/unigram_viterbi.h"

#include <algorithm>
#include <deque>
#include <limits>

#include "m3/core/error.h"

namespace m3 {
namespace {

constexpr std::string_view kWordMarker = "\u2581";  // "▁"
constexpr double kUnkPenalty = 10.0;                 // tokenizers' K_UNK_PENALTY

size_t char_length(std::string_view text, size_t at) {
  const auto lead = static_cast<unsigned char>(text[at]);
  const size_t n = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
  return std::min(n, text.size() - at);
}

// What SentencePiece's normalizer (identity rule, normalizer.cc) makes of `in`: leading
// spaces dropped, "▁" prepended, a run of spaces kept as one, trailing ones (and any
// trailing "▁") dropped, spaces escaped as "▁". `origin` (if given) gets, per output byte,
// where its character starts in `in`, plus one entry past the end (norm_to_orig).
void spm_text(std::string_view in, const SpmWhitespace& ws, std::string& out, std::vector<uint32_t>* origin) {
  out.clear();
  if (origin) origin->clear();
  size_t consumed = 0;
  if (ws.remove_extra_whitespaces) {
    while (consumed < in.size() && in[consumed] == ' ') ++consumed;
  }
  if (consumed == in.size()) {
    if (origin) origin->push_back(static_cast<uint32_t>(consumed));
    return;
  }
  const std::string_view space = ws.escape_whitespaces ? kWordMarker : " ";
  out.reserve(in.size() + in.size() / 2 + space.size());
  const auto emit = [&](std::string_view bytes, size_t from) {
    out += bytes;
    if (origin) origin->insert(origin->end(), bytes.size(), static_cast<uint32_t>(from));
  };
  if (ws.add_dummy_prefix) emit(space, consumed);
  bool prev_space = ws.remove_extra_whitespaces;
  while (consumed < in.size()) {
    const size_t len = char_length(in, consumed);
    if (in[consumed] == ' ') {
      if (!prev_space) emit(space, consumed);
      prev_space = true;
    } else {
      emit(in.substr(consumed, len), consumed);
      prev_space = false;
    }
    consumed += len;
    if (!ws.remove_extra_whitespaces) prev_space = false;
  }
  if (ws.remove_extra_whitespaces) {
    while (out.size() >= space.size() && out.compare(out.size() - space.size(), space.size(), space) == 0) {
      const size_t length = out.size() - space.size();
      out.resize(length);
      if (origin) {
        consumed = (*origin)[length];
        origin->resize(length);
      }
    }
  }
  if (origin) origin->push_back(static_cast<uint32_t>(consumed));
}

// Per end position of a word: the best path ending there (tokenizers' BestPathNode).
struct BestPath {
  double score = 0;
  int32_t start = -1;  // -1: no path yet
  int32_t id = 0;
};

}  // namespace

UnigramViterbi::UnigramViterbi(const std::vector<std::pair<std::string_view, double>>& vocab, int32_t unk_id,
                               SpmWhitespace whitespace)
    : unk_id_(unk_id), whitespace_(whitespace) {
  if (vocab.empty() || unk_id < 0 || static_cast<size_t>(unk_id) >= vocab.size()) {
    fail("unigram vocabulary of {} pieces has no unknown piece {}", vocab.size(), unk_id);
  }
  scores_.reserve(vocab.size());
  double min_score = std::numeric_limits<double>::infinity();
  std::vector<std::pair<std::string_view, int32_t>> keys;
  keys.reserve(vocab.size());
  for (size_t id = 0; id < vocab.size(); ++id) {
    scores_.push_back(vocab[id].second);
    min_score = std::min(min_score, vocab[id].second);
    keys.emplace_back(vocab[id].first, static_cast<int32_t>(id));
  }
  unk_score_ = min_score - kUnkPenalty;
  // Sorted by bytes, a repeated piece's last id last: it is the one kept.
  std::sort(keys.begin(), keys.end(), [](const auto& a, const auto& b) {
    const int c = a.first.compare(b.first);
    return c != 0 ? c < 0 : a.second < b.second;
  });
  // Breadth first over ranges of keys sharing a prefix of `depth` bytes.
  struct Range {
    uint32_t low, high, depth;
  };
  std::deque<Range> pending{{0, static_cast<uint32_t>(keys.size()), 0}};
  first_.push_back(0);
  while (!pending.empty()) {
    auto [low, high, depth] = pending.front();
    pending.pop_front();
    int32_t here = -1;
    while (low < high && keys[low].first.size() == depth) here = keys[low++].second;
    piece_.push_back(here);
    while (low < high) {
      const auto label = static_cast<uint8_t>(keys[low].first[depth]);
      uint32_t end = low + 1;
      while (end < high && static_cast<uint8_t>(keys[end].first[depth]) == label) ++end;
      labels_.push_back(label);
      pending.push_back({low, end, depth + 1});
      low = end;
    }
    first_.push_back(static_cast<uint32_t>(labels_.size()));
  }
  for (uint32_t e = first_[0]; e < first_[1]; ++e) root_[labels_[e]] = e + 1;
}

uint32_t UnigramViterbi::child(uint32_t node, uint8_t label) const {
  if (node == 0) return root_[label];
  const uint8_t* lo = labels_.data() + first_[node];
  const uint8_t* hi = labels_.data() + first_[node + 1];
  const uint8_t* at = hi - lo <= 8 ? std::find(lo, hi, label) : std::lower_bound(lo, hi, label);
  return at != hi && *at == label ? static_cast<uint32_t>(at - labels_.data()) + 1 : 0;
}

int32_t UnigramViterbi::find(std::string_view piece) const {
  uint32_t node = 0;
  for (char c : piece) {
    node = child(node, static_cast<uint8_t>(c));
    if (node == 0) return -1;
  }
  return piece_[node];
}

void UnigramViterbi::encode(std::string_view normalized, std::vector<int32_t>& ids,
                            std::vector<SpmPiece>* pieces) const {
  thread_local std::string text;
  thread_local std::vector<uint32_t> origin;
  spm_text(normalized, whitespace_, text, pieces ? &origin : nullptr);
  // Metaspace's split (MergedWithNext): a word runs from a "▁" to the next one.
  for (size_t begin = 0; begin < text.size();) {
    const size_t from = text.compare(begin, kWordMarker.size(), kWordMarker) == 0 ? begin + kWordMarker.size() : begin;
    const size_t end = std::min(text.find(kWordMarker, from), text.size());
    encode_word(text, begin, end, pieces ? &origin : nullptr, ids, pieces);
    begin = end;
  }
  if (text.capacity() > (size_t{1} << 20)) std::string().swap(text);
  if (origin.capacity() > (size_t{1} << 18)) std::vector<uint32_t>().swap(origin);
}

// tokenizers' encode_optimized: starts visited in increasing order, at each the pieces
// that prefix the rest of the word shortest first, a path replacing the best one ending
// at the same place only when its score is strictly greater; an unknown character (no
// piece of exactly that character starts there) costs unk_score_; consecutive unknown
// pieces are fused into one token, whose id is its string's, else unk_id_.
void UnigramViterbi::encode_word(std::string_view text, size_t begin, size_t end,
                                 const std::vector<uint32_t>* origin, std::vector<int32_t>& ids,
                                 std::vector<SpmPiece>* pieces) const {
  const std::string_view word = text.substr(begin, end - begin);
  const size_t size = word.size();
  thread_local std::vector<BestPath> best;
  best.assign(size + 1, BestPath{});
  const auto relax = [](BestPath& target, double score, size_t start, int32_t id) {
    if (target.start < 0 || score > target.score) target = {score, static_cast<int32_t>(start), id};
  };
  for (size_t start = 0; start < size;) {
    const double here = best[start].score;
    const size_t mblen = char_length(word, start);
    bool has_single = false;
    uint32_t node = 0;
    for (size_t at = start; at < size; ++at) {
      node = child(node, static_cast<uint8_t>(word[at]));
      if (node == 0) break;
      const int32_t id = piece_[node];
      if (id < 0) continue;
      relax(best[at + 1], scores_[id] + here, start, id);
      has_single = has_single || at + 1 - start == mblen;
    }
    if (!has_single) relax(best[start + mblen], unk_score_ + here, start, unk_id_);
    start += mblen;
  }
  // Back from the end: (start, id) of each path node, the last first.
  thread_local std::vector<std::pair<size_t, int32_t>> tokens;
  tokens.clear();
  for (size_t at = size; at > 0;) {
    const auto start = static_cast<size_t>(best[at].start);
    tokens.emplace_back(start, best[at].id);
    at = start;
  }
  // Tokens, last first: a run of unknown nodes is one.
  const size_t first_id = ids.size();
  size_t token_end = size;
  for (size_t k = 0; k < tokens.size();) {
    size_t run = k + 1;
    size_t token_begin = tokens[k].first;
    int32_t id = tokens[k].second;
    if (id == unk_id_) {
      while (run < tokens.size() && tokens[run].second == unk_id_) token_begin = tokens[run++].first;
      if (run > k + 1) {
        const int32_t known = find(word.substr(token_begin, token_end - token_begin));
        id = known >= 0 ? known : unk_id_;
      }
    }
    ids.push_back(id);
    if (pieces) {
      pieces->push_back({(*origin)[begin + token_begin], (*origin)[begin + token_end],
                         token_begin == 0 && word.substr(0, kWordMarker.size()) == kWordMarker});
    }
    token_end = token_begin;
    k = run;
  }
  std::reverse(ids.begin() + static_cast<ptrdiff_t>(first_id), ids.end());
  if (pieces) std::reverse(pieces->end() - static_cast<ptrdiff_t>(ids.size() - first_id), pieces->end());
  if (best.capacity() > (size_t{1} << 16)) std::vector<BestPath>().swap(best);
}

}  // namespace m3
