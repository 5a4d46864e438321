// The TEI-compatible routes: /embed (dense), /embed_sparse (lexical weights), /embed_all
// (ColBERT vectors, one per token after <s>), /similarity, /tokenize and /decode.
#include "m3/server/json_writer.h"
#include "m3/server/route.h"
#include "m3/server/tei_api.h"
#include "m3/server/tokenize_inputs.h"

namespace m3::server {
namespace {

using Encoder = std::function<std::string(const std::vector<M3Output>&)>;

RouteResult tei_job(ServerContext& context, Embedder& embedder, const TeiEmbedRequest& request,
                    const OutputRequest& outputs, Encoder encode) {
  check_outputs(embedder, outputs);
  LengthRule rule;
  rule.max_length = embedder.max_seq_len();
  rule.truncate = request.truncate.value_or(context.options.auto_truncate);
  rule.truncate_left = request.truncate_left;
  TokenizedInputs tokenized = tokenize_inputs(embedder.tokenizer(), request.inputs, rule, "inputs");

  InferenceJob job;
  job.outputs = outputs;
  job.tokens = tokenized.tokens;
  const auto hidden = static_cast<uint64_t>(embedder.config().hidden_size);
  if (outputs.colbert)
    job.response_bytes = json_bytes_for_floats(static_cast<uint64_t>(job.tokens) * hidden);
  else if (outputs.sparse)
    job.response_bytes = static_cast<uint64_t>(job.tokens) * kSparseBytesPerToken;
  else
    job.response_bytes = json_bytes_for_floats(tokenized.sequences.size() * hidden);
  job.sequences = std::move(tokenized.sequences);
  job.respond = [encode = std::move(encode)](std::vector<M3Output>&& results) {
    HttpResponse response;
    response.body = encode(results);
    return response;
  };
  return {{}, std::move(job)};
}

}  // namespace

RouteResult tei_embed(ServerContext& context, ServedModel& model, const HttpRequest& http) {
  Embedder& embedder = *model.engine;
  const TeiEmbedRequest request = parse_tei_embed_request(http.body, model.limits);
  return tei_job(context, embedder, request, {true, false, false},
                 [dims = request.dimensions, normalize = request.normalize](const std::vector<M3Output>& o) {
                   return tei_embed_response(o, dims, normalize);
                 });
}

RouteResult tei_embed_sparse(ServerContext& context, ServedModel& model, const HttpRequest& http) {
  Embedder& embedder = *model.engine;
  const TeiEmbedRequest request = parse_tei_embed_request(http.body, model.limits);
  return tei_job(context, embedder, request, {false, true, false},
                 [](const std::vector<M3Output>& o) { return tei_sparse_response(o); });
}

RouteResult tei_embed_all(ServerContext& context, ServedModel& model, const HttpRequest& http) {
  Embedder& embedder = *model.engine;
  const TeiEmbedRequest request = parse_tei_embed_request(http.body, model.limits);
  const int64_t hidden = embedder.config().hidden_size;
  return tei_job(context, embedder, request, {false, false, true},
                 [hidden](const std::vector<M3Output>& o) { return tei_all_response(o, hidden); });
}

RouteResult tei_similarity(ServerContext& context, ServedModel& model, const HttpRequest& http) {
  Embedder& embedder = *model.engine;
  const TeiEmbedRequest request = parse_tei_similarity_request(http.body, model.limits);
  return tei_job(context, embedder, request, {true, false, false},
                 [](const std::vector<M3Output>& o) { return tei_similarity_response(o); });
}

RouteResult tei_decode(ServerContext& context, ServedModel& model, const HttpRequest& http) {
  Embedder& embedder = *model.engine;
  const TeiDecodeRequest request = parse_tei_decode_request(http.body, model.limits);
  RouteResult result;
  std::string& out = result.response.body;
  out = "[";
  for (size_t i = 0; i < request.ids.size(); ++i) {
    if (i) out += ',';
    append_json_string(out, embedder.tokenizer().decode(request.ids[i], request.skip_special_tokens));
  }
  out += ']';
  return result;
}

RouteResult tei_tokenize(ServerContext& context, ServedModel& model, const HttpRequest& http) {
  Embedder& embedder = *model.engine;
  const TeiTokenizeRequest request = parse_tei_tokenize_request(http.body, model.limits);
  const XlmrTokenizer& tokenizer = embedder.tokenizer();
  std::vector<std::vector<TeiToken>> tokens;
  tokens.reserve(request.inputs.size());
  for (const Input& input : request.inputs) {
    std::vector<ByteRange> offsets;
    std::vector<int32_t> ids = tokenizer.encode(input.text, 0, nullptr, false, &offsets);
    size_t first = 0, last = ids.size();
    if (!request.add_special_tokens) ++first, --last;
    auto& list = tokens.emplace_back();
    list.reserve(last - first);
    for (size_t k = first; k < last; ++k) {
      // As TEI (tokenizers' special-tokens mask): the <s> and </s> added around the text are
      // special, their own text with no offsets; every other token, special-token strings
      // in the text included, is the bytes of the input it stands for (what Dify cuts at).
      if (k == 0 || k + 1 == ids.size()) {
        list.push_back(TeiToken{ids[k], tokenizer.id_to_piece(ids[k]), true, std::nullopt});
      } else {
        const ByteRange at = offsets[k];
        list.push_back(TeiToken{ids[k], input.text.substr(at.begin, at.end - at.begin), false, at});
      }
    }
  }
  RouteResult result;
  result.response.body = tei_tokenize_response(tokens);
  return result;
}

}  // namespace m3::server
