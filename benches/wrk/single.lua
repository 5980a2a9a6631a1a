-- wrk script: one `ingestion_complete` event per POST, each with a unique id,
-- the same ~190-byte shape sidewire-bench sends. A second, independent
-- generator for the single-event rows (wrk keeps its connections alive and
-- writes each request in one send).
--   wrk -t2 -c8 -d10s -s benches/wrk/single.lua http://127.0.0.1:8790 -- "$RANDOM$RANDOM"
local counter = 0
local run = tostring(os.time())
thread_id = 0 -- a global: setup() sets it in each thread's own state
local threads = 0

-- Pass a run name after `--` so that ids differ between runs in the same
-- second: wrk ... -s single.lua URL -- "$RANDOM$RANDOM"
function init(args)
  if args[1] then run = args[1] end
end
local filler = string.rep("x", 64)

function setup(thread)
  thread:set("thread_id", threads)
  threads = threads + 1
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"type":"ingestion_complete","id":"wrk-%s-%d-%d","source":"bench-%d","data":{"file":"uploads/report-%d.pdf","nodesCreated":%d,"durationMs":%d,"filler":"%s"}}',
    run, thread_id, counter, thread_id, counter, counter % 50, counter % 997, filler)
  return wrk.format("POST", "/api/v1/ingest", { ["Content-Type"] = "application/json" }, body)
end

local non202 = 0
function response(status, headers, body)
  if status ~= 202 then non202 = non202 + 1 end
end

function done(summary, latency, requests)
  io.write(string.format("RESULT wrk requests=%d req_per_s=%.0f p50_ms=%.2f p99_ms=%.2f errors=%d\n",
    summary.requests, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
