// Scheduler: bounded token queue -> window-sorted, starvation-free packed batches ->
// per-request reassembly. The batching rule is described in scheduler.h. Callbacks always
// run outside the mutex, so they may submit or cancel.
#include "m3/runtime/scheduler.h"

#include <algorithm>
#include <chrono>
#include <future>
#include <limits>

#include <spdlog/spdlog.h>

namespace m3 {
namespace {

constexpr int32_t kPadTokenId = 1;  // XLM-R <pad>: positions count from it

// The request is finished and only this thread holds its callback now.
void invoke(Request& request, RequestResult&& result) {
  if (!request.callback) return;
  try {
    request.callback(std::move(result));
  } catch (const std::exception& e) {
    spdlog::error("callback of request {} threw: {}", request.id, e.what());
  } catch (...) {
    spdlog::error("callback of request {} threw", request.id);
  }
  request.callback = nullptr;  // release what it captured (a connection, a promise)
}

// A batch computes the union of its requests' heads; each request keeps what it asked for.
void strip(M3Output& output, const OutputRequest& wanted) {
  if (!wanted.dense) output.dense = {};
  if (!wanted.sparse) output.lexical = {};
  if (!wanted.token_weights) output.token_weights = {};
  if (!wanted.scores) output.scores = {};
  if (!wanted.colbert) {
    output.colbert = {};
    output.colbert_rows = 0;
  }
}

// Returns the request's total tokens; throws before anything is queued.
int64_t validate(const std::vector<std::vector<int32_t>>& sequences, const SchedulerOptions& options) {
  if (sequences.empty()) m3::fail("request has no sequences");
  if (sequences.size() > std::numeric_limits<uint32_t>::max()) m3::fail("request has too many sequences");
  int64_t total = 0;
  for (size_t i = 0; i < sequences.size(); ++i) {
    const auto n = static_cast<int64_t>(sequences[i].size());
    if (n < 2) m3::fail("sequence {} has {} tokens; a tokenized text has at least 2 (<s> and </s>)", i, n);
    if (n > options.max_seq_len)
      m3::fail("sequence {} has {} tokens, more than max_seq_len {}", i, n, options.max_seq_len);
    total += n;
  }
  if (total > options.max_queue_tokens)
    m3::fail("request has {} tokens, more than the queue holds (max_queue_tokens {})", total, options.max_queue_tokens);
  return total;
}

// The result of a request whose every sequence is done, with its timing.
RequestResult completed_result(Request& request) {
  RequestResult result{std::move(request.outputs), {}};
  const auto now = std::chrono::steady_clock::now();
  result.queue_seconds = std::chrono::duration<double>(request.started - request.submitted).count();
  result.inference_seconds = std::chrono::duration<double>(now - request.started).count();
  return result;
}

}  // namespace

bool RequestHandle::cancel() {
  std::shared_ptr<Request> cancelled;
  {
    std::lock_guard lock(link_->mutex);
    if (link_->scheduler == nullptr) return false;  // destroyed: it finished everything
    cancelled = link_->scheduler->withdraw(request_);
  }
  if (!cancelled) return false;
  invoke(*cancelled, RequestResult{{}, "cancelled"});
  return true;
}

Scheduler::Scheduler(const SchedulerOptions& options) : options_(options) {
  if (options.max_seq_len < 2) m3::fail("max_seq_len {} is too small (at least 2)", options.max_seq_len);
  if (options.max_batch_tokens < options.max_seq_len)
    m3::fail("max_batch_tokens {} is smaller than max_seq_len {}: the longest sequences would never fit a batch",
             options.max_batch_tokens, options.max_seq_len);
  if (options.max_batch_tokens > std::numeric_limits<int32_t>::max())
    m3::fail("max_batch_tokens {} is too large (at most {})", options.max_batch_tokens,
             std::numeric_limits<int32_t>::max());
  if (options.max_queue_tokens < options.max_seq_len)
    m3::fail("max_queue_tokens {} is smaller than max_seq_len {}: the longest sequences would never be queued",
             options.max_queue_tokens, options.max_seq_len);
  if (options.sort_window == 0) m3::fail("sort_window must be at least 1");
  if (options.max_overtakes < 0) m3::fail("max_overtakes must not be negative");
  link_ = std::make_shared<SchedulerLink>();
  link_->scheduler = this;
  if (options.test_batch_gate) gate_ = std::make_unique<BatchGate>();
}

Scheduler::~Scheduler() {
  {
    std::lock_guard lock(link_->mutex);  // waits for a cancel() in progress
    link_->scheduler = nullptr;
  }
  std::vector<std::shared_ptr<Request>> orphans;
  {
    std::lock_guard lock(mutex_);
    shutting_down_ = true;
    for (const Entry& entry : queue_)
      if (orphans.empty() || orphans.back() != entry.request) orphans.push_back(entry.request);
    for (auto& request : orphans) {
      if (request->finished) continue;
      finish_locked(*request);
      ++stats_.requests_failed;
    }
  }
  space_cv_.notify_all();
  work_cv_.notify_all();
  if (gate_) gate_->open();
  for (auto& request : orphans) invoke(*request, RequestResult{{}, "shutting down"});
}

std::shared_ptr<RequestHandle> Scheduler::submit(std::vector<std::vector<int32_t>> sequences,
                                                 const OutputRequest& outputs, RequestCallback on_done) {
  return enqueue(std::move(sequences), outputs, std::move(on_done), false);
}

std::shared_ptr<RequestHandle> Scheduler::submit_wait(std::vector<std::vector<int32_t>> sequences,
                                                      const OutputRequest& outputs, RequestCallback on_done) {
  return enqueue(std::move(sequences), outputs, std::move(on_done), true);
}

std::vector<M3Output> Scheduler::run(std::vector<std::vector<int32_t>> sequences, const OutputRequest& outputs) {
  // Shared so the promise outlives set_value even when this thread returns first.
  auto promise = std::make_shared<std::promise<RequestResult>>();
  auto future = promise->get_future();
  submit_wait(std::move(sequences), outputs,
              [promise](RequestResult&& result) { promise->set_value(std::move(result)); });
  RequestResult result = future.get();
  if (!result.error.empty()) throw Error(result.error);
  return std::move(result.outputs);
}

std::shared_ptr<RequestHandle> Scheduler::enqueue(std::vector<std::vector<int32_t>>&& sequences,
                                                  const OutputRequest& outputs, RequestCallback&& on_done, bool wait) {
  const int64_t tokens = validate(sequences, options_);
  const size_t count = sequences.size();
  auto request = std::make_shared<Request>();
  request->wanted = outputs;
  request->callback = std::move(on_done);
  request->submitted = std::chrono::steady_clock::now();
  request->outputs.resize(count);

  std::unique_lock lock(mutex_);
  if (!no_replica_.empty()) throw NoReplicaLeft(no_replica_);
  if (shutting_down_) throw ShuttingDown("shutting down: no new requests are accepted");
  auto fits = [&] { return stats_.queued_tokens + tokens <= options_.max_queue_tokens; };
  if (wait) {
    // Tickets keep waiters in arrival order: the head waits for room, the rest for it.
    const uint64_t ticket = next_ticket_++;
    ++stats_.waiting_submitters;
    space_cv_.wait(lock, [&] { return shutting_down_ || !no_replica_.empty() || (ticket == serving_ticket_ && fits()); });
    --stats_.waiting_submitters;
    if (!no_replica_.empty()) throw NoReplicaLeft(no_replica_);
    if (shutting_down_) throw ShuttingDown("shutting down: no new requests are accepted");
    ++serving_ticket_;
  } else if (stats_.waiting_submitters > 0 || !fits()) {
    ++stats_.requests_rejected;
    throw QueueFull(fmt::format("queue full: {} of {} tokens queued, the request needs {}", stats_.queued_tokens,
                                options_.max_queue_tokens, tokens));
  }

  request->id = next_request_id_++;
  request->sequences = std::move(sequences);
  request->queued = count;
  request->queued_tokens = tokens;
  for (size_t i = 0; i < count; ++i)
    queue_.push_back(Entry{request, static_cast<uint32_t>(i), static_cast<int32_t>(request->sequences[i].size()),
                           next_serial_++, 0});
  ++stats_.queued_requests;
  ++stats_.requests_submitted;
  stats_.queued_sequences += count;
  stats_.queued_tokens += tokens;
  lock.unlock();

  work_cv_.notify_one();  // next_batch wakes further replicas while work remains
  if (wait) space_cv_.notify_all();  // the next waiter may fit as well
  return std::shared_ptr<RequestHandle>(new RequestHandle(std::move(request), link_));
}

bool Scheduler::next_batch(Batch& batch) { return take_batch(batch, true); }

bool Scheduler::try_next_batch(Batch& batch) { return take_batch(batch, false); }

bool Scheduler::take_batch(Batch& batch, bool wait) {
  // A batch neither completed nor failed would leave its requests waiting forever.
  if (!batch.items.empty()) fail(batch, "internal error: a replica dropped its batch");
  batch.clear();
  // A batch holds at most sort_window sequences of at least 2 tokens each.
  const auto max_items = std::min<size_t>(options_.sort_window, static_cast<size_t>(options_.max_batch_tokens / 2));
  if (batch.packed.token_ids.capacity() < static_cast<size_t>(options_.max_batch_tokens)) {
    batch.packed.token_ids.reserve(options_.max_batch_tokens);
    batch.packed.positions.reserve(options_.max_batch_tokens);
    batch.packed.cu_seqlens.reserve(max_items + 1);
    batch.items.reserve(max_items);
    batch.incoming_.reserve(max_items);
    batch.finished_.reserve(max_items);
  }

  std::unique_lock lock(mutex_);
  if (wait) work_cv_.wait(lock, [&] { return !queue_.empty() || shutting_down_; });
  if (queue_.empty()) return false;  // nothing queued now (or shut down and drained)
  form_batch(batch);
  const bool more = !queue_.empty();
  const auto observer = batch_observer_;
  lock.unlock();
  if (more) work_cv_.notify_one();
  space_cv_.notify_all();
  if (gate_) gate_->pass();  // test only: held here, in flight, until the test releases it

  for (const auto& ids : batch.incoming_) batch.packed.add(ids, kPadTokenId);
  batch.incoming_.clear();  // frees the request's copy of the ids, off the lock
  if (observer) (*observer)(batch.packed.tokens(), batch.items.size());
  return true;
}

void Scheduler::form_batch(Batch& batch) {
  const size_t window = std::min(options_.sort_window, queue_.size());
  const auto now = std::chrono::steady_clock::now();
  taken_.assign(window, 0);
  int64_t budget = options_.max_batch_tokens;
  uint64_t newest = 0;  // latest serial taken: untaken entries older than it are overtaken
  auto take = [&](size_t i) {
    taken_[i] = 1;
    budget -= queue_[i].tokens;
    newest = std::max(newest, queue_[i].serial);
  };

  // Starving sequences first, FIFO. If one does not fit, the batch stops there: taking
  // anything queued after it would overtake it again.
  size_t first = 0;
  bool blocked = false;
  for (; first < window && queue_[first].overtakes >= options_.max_overtakes; ++first) {
    if (queue_[first].tokens > budget) {
      blocked = true;
      break;
    }
    // A sequence back from a device fault runs alone, so a second fault names its request.
    if (queue_[first].request->faulted) {
      if (first == 0) take(first);
      blocked = true;
      break;
    }
    take(first);
  }

  if (!blocked && first < window) {
    // The oldest remaining sequence anchors; the closest lengths around it fill the budget.
    // order_: window positions by length, longest first, older first among equals, so the
    // anchor's equals all sit on its right and everything on its left is longer.
    order_.clear();
    for (size_t i = first; i < window; ++i) order_.push_back(static_cast<uint32_t>(i));
    std::sort(order_.begin(), order_.end(), [&](uint32_t a, uint32_t b) {
      return queue_[a].tokens != queue_[b].tokens ? queue_[a].tokens > queue_[b].tokens : a < b;
    });
    const int32_t anchor_len = queue_[first].tokens;
    const auto anchor = static_cast<ptrdiff_t>(std::find(order_.begin(), order_.end(), first) - order_.begin());
    ptrdiff_t left = anchor - 1;  // next longer candidate
    auto right = static_cast<size_t>(anchor);  // next shorter-or-equal candidate (the anchor first)
    while (budget >= 2) {
      if (left >= 0 && queue_[order_[left]].tokens > budget) left = -1;  // longer ones fit even less
      while (right < order_.size() && queue_[order_[right]].tokens > budget) ++right;  // shorter ones may fit
      const bool has_left = left >= 0;
      const bool has_right = right < order_.size();
      if (!has_left && !has_right) break;
      bool pick_left = !has_right;
      if (has_left && has_right) {
        const int32_t longer = queue_[order_[left]].tokens - anchor_len;
        const int32_t shorter = anchor_len - queue_[order_[right]].tokens;
        pick_left = longer < shorter || (longer == shorter && order_[left] < order_[right]);
      }
      if (pick_left) take(order_[left--]);
      else take(order_[right++]);
    }
  }

  // Move the taken sequences into the batch (FIFO order), compact the rest of the window.
  batch.number = stats_.batches_formed++;
  size_t kept = 0;
  for (size_t i = 0; i < window; ++i) {
    Entry& entry = queue_[i];
    if (!taken_[i]) {
      if (entry.serial < newest) ++entry.overtakes;
      if (kept != i) queue_[kept] = std::move(entry);
      ++kept;
      continue;
    }
    Request& request = *entry.request;
    if (request.started == std::chrono::steady_clock::time_point{}) request.started = now;
    batch.incoming_.push_back(std::move(request.sequences[entry.index]));
    batch.outputs.dense |= request.wanted.dense;
    batch.outputs.sparse |= request.wanted.sparse;
    batch.outputs.colbert |= request.wanted.colbert;
    batch.outputs.token_weights |= request.wanted.token_weights;
    batch.outputs.scores |= request.wanted.scores;
    --request.queued;
    request.queued_tokens -= entry.tokens;
    ++request.in_flight;
    if (request.queued == 0) --stats_.queued_requests;
    --stats_.queued_sequences;
    stats_.queued_tokens -= entry.tokens;
    ++stats_.in_flight_sequences;
    stats_.tokens_batched += static_cast<uint64_t>(entry.tokens);
    batch.items.push_back(Batch::Item{std::move(entry.request), entry.index, entry.serial});
  }
  queue_.erase(queue_.begin() + static_cast<ptrdiff_t>(kept), queue_.begin() + static_cast<ptrdiff_t>(window));
}

void Scheduler::complete(Batch& batch, std::vector<M3Output>&& outputs) {
  if (outputs.size() != batch.items.size()) {
    fail(batch, fmt::format("internal error: the replica returned {} outputs for a batch of {} sequences",
                            outputs.size(), batch.items.size()));
    return;
  }
  for (size_t i = 0; i < outputs.size(); ++i) strip(outputs[i], batch.items[i].request->wanted);  // wanted is const
  auto& finished = batch.finished_;
  {
    std::lock_guard lock(mutex_);
    for (size_t i = 0; i < outputs.size(); ++i) {
      Request& request = *batch.items[i].request;
      --request.in_flight;
      --stats_.in_flight_sequences;
      if (request.finished) continue;  // cancelled or failed meanwhile: discard
      request.outputs[batch.items[i].index] = std::move(outputs[i]);
      if (request.queued == 0 && request.in_flight == 0) {
        request.finished = true;
        ++stats_.requests_completed;
        finished.push_back(batch.items[i].request);
      }
    }
  }
  for (auto& request : finished) invoke(*request, completed_result(*request));
  finished.clear();
  batch.clear();
}

void Scheduler::fail(Batch& batch, std::string error) {
  auto& finished = batch.finished_;
  {
    std::lock_guard lock(mutex_);
    for (auto& item : batch.items) {
      Request& request = *item.request;
      --request.in_flight;
      --stats_.in_flight_sequences;
      if (request.finished) continue;
      finish_locked(request);
      ++stats_.requests_failed;
      finished.push_back(item.request);
    }
  }
  space_cv_.notify_all();
  for (auto& request : finished) invoke(*request, RequestResult{{}, error});
  finished.clear();
  batch.clear();
}

void Scheduler::finish_locked(Request& request) {
  request.finished = true;
  if (request.queued > 0) {
    std::erase_if(queue_, [&](const Entry& entry) { return entry.request.get() == &request; });
    --stats_.queued_requests;
    stats_.queued_sequences -= request.queued;
    stats_.queued_tokens -= request.queued_tokens;
    request.queued = 0;
    request.queued_tokens = 0;
  }
  request.sequences.clear();
  request.outputs.clear();
}

std::shared_ptr<Request> Scheduler::withdraw(const std::shared_ptr<Request>& request) {
  {
    std::lock_guard lock(mutex_);
    if (request->finished) return nullptr;
    finish_locked(*request);
    ++stats_.requests_cancelled;
  }
  space_cv_.notify_all();
  return request;
}

void Scheduler::shutdown() {
  {
    std::lock_guard lock(mutex_);
    shutting_down_ = true;
  }
  work_cv_.notify_all();
  space_cv_.notify_all();
  if (gate_) gate_->open();
}

void Scheduler::set_replicas(int count) {
  std::lock_guard lock(mutex_);
  stats_.replicas = count;
}

void Scheduler::requeue(Batch& batch, const std::string& why) {
  auto& failed = batch.finished_;
  {
    std::lock_guard lock(mutex_);
    ++stats_.batches_requeued;
    // Back to the front in reverse, so the batch keeps its FIFO order there; marked as
    // starving, they go first and are never overtaken again.
    for (size_t i = batch.items.size(); i-- > 0;) {
      const Batch::Item& item = batch.items[i];
      Request& request = *item.request;
      --request.in_flight;
      --stats_.in_flight_sequences;
      if (request.finished) continue;
      if (request.faulted) {  // its second fault: it fails rather than meet another device
        finish_locked(request);
        ++stats_.requests_failed;
        failed.push_back(item.request);
        continue;
      }
      const int32_t begin = batch.packed.seq_begin(static_cast<int32_t>(i));
      const int32_t length = batch.packed.seq_len(static_cast<int32_t>(i));
      request.sequences[item.index].assign(batch.packed.token_ids.begin() + begin,
                                           batch.packed.token_ids.begin() + begin + length);
      if (request.queued == 0) ++stats_.queued_requests;
      ++request.queued;
      request.queued_tokens += length;
      ++stats_.queued_sequences;
      stats_.queued_tokens += length;
      queue_.push_front(Entry{item.request, item.index, length, item.serial, options_.max_overtakes});
    }
    for (const Batch::Item& item : batch.items) item.request->faulted = true;
  }
  work_cv_.notify_all();
  space_cv_.notify_all();
  const std::string error = fmt::format("a device failed twice while running this request: {}", why);
  for (auto& request : failed) invoke(*request, RequestResult{{}, error});
  failed.clear();
  batch.clear();
}

void Scheduler::replica_lost(const std::string& why) {
  std::vector<std::shared_ptr<Request>> failed;
  {
    std::lock_guard lock(mutex_);
    ++stats_.replicas_lost;
    if (stats_.replicas_lost < stats_.replicas) return;
    no_replica_ = fmt::format("no replica left: {}", why);
    for (const Entry& entry : queue_) failed.push_back(entry.request);
    std::sort(failed.begin(), failed.end());  // a request's sequences may be anywhere in the queue
    failed.erase(std::unique(failed.begin(), failed.end()), failed.end());
    for (auto& request : failed) {
      finish_locked(*request);
      ++stats_.requests_failed;
    }
  }
  space_cv_.notify_all();  // submit_wait callers now throw NoReplicaLeft
  for (auto& request : failed) invoke(*request, RequestResult{{}, no_replica_});
}

void Scheduler::set_batch_observer(BatchObserver observer) {
  auto shared = observer ? std::make_shared<const BatchObserver>(std::move(observer)) : nullptr;
  std::lock_guard lock(mutex_);
  batch_observer_ = std::move(shared);
}

SchedulerStats Scheduler::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

}  // namespace m3
