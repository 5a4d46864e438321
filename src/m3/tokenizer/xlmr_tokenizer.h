// XlmrTokenizer: XLM-RoBERTa tokenization on libsentencepiece, with the fairseq id
// mapping and special tokens of transformers' XLMRobertaTokenizer (M3-SPEC.md).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace m3 {

class XlmrTokenizer {
 public:
  static constexpr int32_t kCls = 0;   // <s>
  static constexpr int32_t kPad = 1;   // <pad>
  static constexpr int32_t kEos = 2;   // </s>
  static constexpr int32_t kUnk = 3;   // <unk>
  static constexpr int32_t kFairseqOffset = 1;

  // Loads `<dir>/sentencepiece.bpe.model`; throws m3::Error naming the file.
  static XlmrTokenizer load(const std::filesystem::path& model_dir);
  XlmrTokenizer(XlmrTokenizer&&) noexcept;
  XlmrTokenizer& operator=(XlmrTokenizer&&) noexcept;
  ~XlmrTokenizer();

  // `<s> pieces </s>`. With max_length > 0 the pieces are cut so the total including
  // both specials is at most max_length; `truncated` (if given) says whether that cut.
  // `text` must be valid UTF-8 (checked by the caller's input layer).
  std::vector<int32_t> encode(std::string_view text, size_t max_length = 0,
                              bool* truncated = nullptr) const;

  // The token string of an id ("<s>", "▁hello", ...).
  std::string id_to_piece(int32_t id) const;
  int32_t mask_id() const { return vocab_size() - 1; }
  // SentencePiece pieces + fairseq offset + <mask>, as XLMRobertaTokenizer.vocab_size.
  int32_t vocab_size() const;

 private:
  XlmrTokenizer();
  void append_pieces(std::string_view segment, std::vector<int32_t>& ids) const;

  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
};

}  // namespace m3
