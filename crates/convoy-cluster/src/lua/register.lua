-- A worker host registers its workers and keeps them alive (its
-- heartbeat: the whole registration again, so a restarted Redis learns
-- them back at the next beat).
--
-- KEYS[1] capacity HASH (worker -> "slots,tokens")
-- KEYS[2] info HASH (worker -> JSON: address, lane, speed, cost, host)
-- KEYS[3] seen ZSET (worker -> last heartbeat, ms)
-- ARGV: n, then n quadruples (worker, slots, tokens, info JSON)
-- Reply: the server time, ms.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[1])
local i = 2
for _ = 1, n do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1] .. ',' .. ARGV[i + 2])
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 3])
  redis.call('ZADD', KEYS[3], now, ARGV[i])
  i = i + 4
end
return now
