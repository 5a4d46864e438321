// JSON lines for the CLI, with FlagEmbedding's keys: dense_vecs, lexical_weights
// (token id string -> weight), colbert_vecs. Floats print in their shortest
// round-trip form.
#pragma once

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "m3/model/m3_output.h"
#include "m3/model/scoring.h"

namespace m3 {

std::string m3_output_json(const M3Output& output, const OutputRequest& request, int64_t hidden);
// The same object appended to `out`, handed to `flush` (which empties it) each time it
// passes about 256 KiB, so a long text's ColBERT vectors never sit in memory as text whole.
void write_m3_output_json(const ResultView& output, const OutputRequest& request, int64_t hidden, std::string& out,
                          const std::function<void(std::string&)>& flush);
std::string scores_json(const PairScores& scores);
// The five keys of scores_json, without the braces (for responses that add their own).
void append_score_fields(std::string& out, const PairScores& scores);
// {"input_ids": [...]} plus "tokens" (the pieces) and "offsets" ([begin, end) bytes of the
// text per token) when given.
std::string tokens_json(const std::vector<int32_t>& ids, const std::vector<std::string>& pieces,
                        const std::vector<std::pair<uint32_t, uint32_t>>& offsets = {});

}  // namespace m3
