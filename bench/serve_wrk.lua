-- wrk script for bench/serve_load.py --generator wrk: POSTs the JSON bodies of a file (one
-- per line, given after `--`) to /v1/embeddings round-robin, and prints one JSON line of
-- results (requests, errors, latency percentiles in microseconds) when done.
local bodies = {}
local counter = 0

function init(args)
  for line in io.lines(args[1]) do
    bodies[#bodies + 1] = line
  end
  counter = math.random(#bodies)
end

function request()
  counter = counter + 1
  return wrk.format("POST", "/v1/embeddings", { ["Content-Type"] = "application/json" },
                    bodies[(counter % #bodies) + 1])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "errors": {"connect": %d, "read": %d, "write": %d, "status": %d, ' ..
    '"timeout": %d}, "latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d}}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
