-- The whole pool in one atomic read, so that no sample mixes one
-- frontend's usage before a commit with another's after it.
--
-- KEYS[1] capacity HASH, KEYS[2] info HASH, KEYS[3] seen ZSET,
-- KEYS[4] frontends ZSET
-- ARGV[1] key prefix of every frontend's usage hash
-- Reply: {now_ms, capacity (flat), info (flat), seen (flat, with scores),
--         frontends (flat, with scores), usage_1 (flat), usage_2, ...}
-- where usage_i belongs to the i-th frontend listed.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local fronts = redis.call('ZRANGE', KEYS[4], 0, -1, 'WITHSCORES')
local reply = {
  tostring(now),
  redis.call('HGETALL', KEYS[1]),
  redis.call('HGETALL', KEYS[2]),
  redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES'),
  fronts,
}
for i = 1, #fronts, 2 do
  reply[#reply + 1] = redis.call('HGETALL', ARGV[1] .. fronts[i])
end
return reply
