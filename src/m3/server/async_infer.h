// async_infer: submits sequences to the Scheduler as an Asio asynchronous operation. The
// scheduler's callback runs on a replica thread; the completion is posted back to the
// caller's executor (the connection's strand). Cancelling the operation (its cancellation
// slot, e.g. when the client disconnects) withdraws the request from the scheduler.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>

#include "m3/runtime/scheduler.h"
#include "m3/server/engine_hooks.h"
#include "m3/server/in_flight.h"

namespace m3::server {

struct InferenceOutcome {
  std::vector<M3Output> outputs;
  int status = 200;   // 429 queue full, 503 shutting down, 499 cancelled, 500 engine failure
  std::string error;  // empty on success
  std::optional<RequestTiming> timing;
  uint64_t registration = 0;  // its entry in InFlightRequests (0: none); the caller removes it
};

InferenceOutcome outcome_of(RequestResult&& result);

template <typename CompletionToken>
auto async_infer(Scheduler& scheduler, InFlightRequests& in_flight, std::vector<std::vector<int32_t>> sequences,
                 OutputRequest outputs, CompletionToken&& token) {
  auto initiation = [&scheduler, &in_flight](auto handler, std::vector<std::vector<int32_t>> sequences,
                                             OutputRequest outputs) {
    using Handler = decltype(handler);
    auto executor = boost::asio::get_associated_executor(handler);
    // The handler travels to whichever thread finishes the request, then back by post.
    struct State {
      Handler handler;
      boost::asio::executor_work_guard<decltype(executor)> work;
      uint64_t registration;
    };
    auto slot = boost::asio::get_associated_cancellation_slot(handler);
    auto state = std::make_shared<State>(State{std::move(handler), boost::asio::make_work_guard(executor), 0});
    auto finish = [state](InferenceOutcome&& outcome) {
      auto ex = state->work.get_executor();
      boost::asio::post(ex, [state, outcome = std::move(outcome)]() mutable {
        state->work.reset();
        outcome.registration = state->registration;  // set by the initiation, earlier on this executor
        std::move(state->handler)(std::move(outcome));
      });
    };
    std::shared_ptr<RequestHandle> handle;
    try {
      handle = scheduler.submit(std::move(sequences), outputs,
                                [finish](RequestResult&& result) { finish(outcome_of(std::move(result))); });
    } catch (const QueueFull& e) {
      finish(InferenceOutcome{{}, 429, e.what(), std::nullopt});
      return;
    } catch (const ShuttingDown& e) {
      finish(InferenceOutcome{{}, 503, e.what(), std::nullopt});
      return;
    } catch (const std::exception& e) {
      finish(InferenceOutcome{{}, 413, e.what(), std::nullopt});
      return;
    }
    state->registration = in_flight.add(handle);
    if (slot.is_connected()) {
      // cancel() runs the callback ("cancelled") now, or does nothing when it already ran.
      slot.assign([handle](boost::asio::cancellation_type) { handle->cancel(); });
    }
  };
  return boost::asio::async_initiate<CompletionToken, void(InferenceOutcome)>(initiation, token, std::move(sequences),
                                                                              outputs);
}

}  // namespace m3::server
