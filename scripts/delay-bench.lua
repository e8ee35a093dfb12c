-- wrk script for scripts/delay-bench.sh: every request is the same size
-- (128 token ids, Normal priority), so the rules are compared on one load.
local counter = 0

request = function()
  counter = counter + 1
  local ids = {}
  for i = 1, 128 do ids[i] = tostring((counter * 7919 + i * 104729) % 32000) end
  local body = '{"tokens":[' .. table.concat(ids, ",") .. ']}'
  return wrk.format("POST", "/v1/infer", {["Content-Type"] = "application/json"}, body)
end

done = function(summary, latency, requests)
  io.write(string.format("RESULT rps=%.0f p50_us=%d p99_us=%d errors=%d non2xx=%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50), latency:percentile(99),
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status))
end
