-- wrk script for scripts/flood-probe.sh: the flood, every request
-- Background priority (in the x-priority header and the body), 128 token
-- ids, so the server can tell it from the probe before reading the body.
local counter = 0

request = function()
  counter = counter + 1
  local ids = {}
  for i = 1, 128 do ids[i] = tostring((counter * 7919 + i * 104729) % 32000) end
  local body = '{"priority":"background","tokens":[' .. table.concat(ids, ",") .. ']}'
  return wrk.format("POST", "/v1/infer",
    {["Content-Type"] = "application/json", ["x-priority"] = "background"}, body)
end

local statuses = {}
response = function(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

done = function(summary, latency, requests)
  io.write(string.format("FLOOD rps=%.0f p50_us=%d p99_us=%d errors=%d non2xx=%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50), latency:percentile(99),
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status))
end
