#include "m3/server/async_infer.h"

namespace m3::server {

InferenceOutcome outcome_of(RequestResult&& result) {
  InferenceOutcome outcome;
  outcome.timing = request_timing(result);
  if (result.error.empty()) {
    outcome.outputs = std::move(result.outputs);
    return outcome;
  }
  outcome.error = std::move(result.error);
  if (outcome.error == "cancelled")
    outcome.status = 499;
  else if (outcome.error == "shutting down")
    outcome.status = 503;
  else
    outcome.status = 500;
  return outcome;
}

}  // namespace m3::server
