-- wrk script for `convoy serve`: POST /v1/infer with a rotating mix of
-- priorities and token lists, and a count of responses per status class
-- that `done` prints for scripts/load-test.sh to check.
local priorities = {"critical", "high", "normal", "normal", "low", "background"}
local counter = 0
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  ok, s429, s503, s504, s4xx, s5xx, other = 0, 0, 0, 0, 0, 0, 0
end

request = function()
  counter = counter + 1
  local n = 1 + (counter * 37) % 200
  local ids = {}
  for i = 1, n do ids[i] = tostring((counter * 7919 + i * 104729) % 32000) end
  local priority = priorities[1 + counter % #priorities]
  local body = '{"tokens":[' .. table.concat(ids, ",") .. '],"priority":"' .. priority .. '"}'
  local headers = {["Content-Type"] = "application/json"}
  -- Every other request names its priority in the header too, so a shed
  -- level is refused at the door, before its body is read: both kinds of
  -- refusal must be counted on both sides.
  if counter % 2 == 0 then headers["x-priority"] = priority end
  return wrk.format("POST", "/v1/infer", headers, body)
end

response = function(status, headers, body)
  if status == 200 then ok = ok + 1
  elseif status == 429 then s429 = s429 + 1
  elseif status == 503 then s503 = s503 + 1
  elseif status == 504 then s504 = s504 + 1
  elseif status >= 500 then s5xx = s5xx + 1
  elseif status >= 400 then s4xx = s4xx + 1
  else other = other + 1 end
end

done = function(summary, latency, requests)
  local t = {ok = 0, s429 = 0, s503 = 0, s504 = 0, s4xx = 0, s5xx = 0, other = 0}
  for _, thread in ipairs(threads) do
    for k, _ in pairs(t) do t[k] = t[k] + thread:get(k) end
  end
  io.write(string.format(
    "STATUS ok=%d s429=%d s503=%d s504=%d s4xx=%d s5xx=%d other=%d requests=%d errors_read=%d errors_timeout=%d p99_us=%d rps=%.0f\n",
    t.ok, t.s429, t.s503, t.s504, t.s4xx, t.s5xx, t.other, summary.requests,
    summary.errors.read, summary.errors.timeout, latency:percentile(99),
    summary.requests / (summary.duration / 1e6)))
end
