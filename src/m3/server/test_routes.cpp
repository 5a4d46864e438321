// /test/batch-gate: the TEST-ONLY control of the scheduler's BatchGate (batch_gate.h),
// routed only under `serve --test-batch-gate` (which needs M3_ENABLE_TEST_CONTROLS=1).
// GET shows what is held; POST {"release": N} lets N more batches run, {"open": true} all.
#include <fmt/format.h>

#include "m3/server/api_error.h"
#include "m3/server/json_body.h"
#include "m3/server/route.h"

namespace m3::server {

HttpResponse test_batch_gate(ServerContext& context, const HttpRequest& request) {
  Embedder* embedder = context.embedder.load();
  BatchGate* gate = embedder ? embedder->scheduler().test_gate() : nullptr;
  if (gate == nullptr) throw ApiError(503, "the model is still loading: no batch gate yet", "", "loading");
  if (request.method == "POST") {
    JsonBody body(request.body);
    if (auto n = optional_int(body.root(), "release")) {
      if (*n < 0) throw ApiError(422, "\"release\" must be a count of batches, 0 or more");
      gate->release(static_cast<uint64_t>(*n));
    }
    if (optional_bool(body.root(), "open").value_or(false)) gate->open();
  }
  const BatchGateState s = gate->state();
  HttpResponse response;
  response.body = fmt::format(R"({{"held":{},"passed":{},"permits":{},"open":{}}})", s.held, s.passed, s.permits,
                              s.open);
  return response;
}

}  // namespace m3::server
