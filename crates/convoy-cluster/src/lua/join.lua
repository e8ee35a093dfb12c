-- A frontend joins the pool under a fresh epoch: a new id that no old
-- reservation is held under, so a restarted or fenced frontend cannot
-- revive what it held before.
--
-- KEYS[1] epoch counter, KEYS[2] frontends ZSET
-- ARGV[1] the frontend's name
-- Reply: its id, name#epoch.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id = ARGV[1] .. '#' .. redis.call('INCR', KEYS[1])
redis.call('ZADD', KEYS[2], now, id)
return id
