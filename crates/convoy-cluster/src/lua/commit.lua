-- One collector pass's commit, atomic on the server (one round trip).
--
-- KEYS[1] frontends  ZSET  frontend id -> last heartbeat (ms, server time)
-- KEYS[2] capacity   HASH  worker id -> "slots,tokens"
-- KEYS[3] seen       ZSET  worker id -> last heartbeat (ms, server time)
-- KEYS[4] usage      HASH  this frontend's usage: worker id -> "slots,tokens"
-- ARGV[1] this frontend's id (name#epoch)
-- ARGV[2] liveness window, ms
-- ARGV[3] key prefix of every frontend's usage hash
-- ARGV[4] n, then n triples (worker, slots, tokens): this frontend's
--         usage now, absolute (releases already taken off)
-- then    m, then m triples (worker, slots, tokens): the grants asked, in
--         the order the collector formed them
--
-- Reply: {"fenced"} when this frontend's heartbeat is missing or older
-- than the window (it must rejoin under a new epoch); otherwise
-- {"ok", grants, w1, s1, t1, w2, ...} where grants is a string of "1"
-- (granted) and "0" (denied), one per grant asked, and each live worker
-- follows with what this frontend may hold there at most: its capacity
-- less what every other live frontend holds.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local me = ARGV[1]
local window = tonumber(ARGV[2])
local since = now - window

local beat = redis.call('ZSCORE', KEYS[1], me)
if (not beat) or tonumber(beat) < since then
  return {'fenced'}
end
redis.call('ZADD', KEYS[1], now, me)

local function parse(v)
  local s, tk = string.match(v, '^(%d+),(%d+)$')
  return tonumber(s), tonumber(tk)
end

-- What every other live frontend holds, per worker.
local held_s, held_t = {}, {}
for _, f in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], since, '+inf')) do
  if f ~= me then
    local kv = redis.call('HGETALL', ARGV[3] .. f)
    for i = 1, #kv, 2 do
      local s, tk = parse(kv[i + 1])
      if s then
        held_s[kv[i]] = (held_s[kv[i]] or 0) + s
        held_t[kv[i]] = (held_t[kv[i]] or 0) + tk
      end
    end
  end
end

-- This frontend's usage, as it says (absolute: a retried or repeated
-- commit sets the same value again).
local own_s, own_t = {}, {}
local i = 4
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  own_s[ARGV[i]] = tonumber(ARGV[i + 1])
  own_t[ARGV[i]] = tonumber(ARGV[i + 2])
  i = i + 3
end

local alive = {}
for _, w in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], since, '+inf')) do
  alive[w] = true
end
local cap_s, cap_t = {}, {}
local caps = redis.call('HGETALL', KEYS[2])
for j = 1, #caps, 2 do
  local s, tk = parse(caps[j + 1])
  if s then
    cap_s[caps[j]] = s
    cap_t[caps[j]] = tk
  end
end

-- Grants, in order: each only where the pool's free capacity covers it.
local grants = {}
local m = tonumber(ARGV[i]); i = i + 1
for k = 1, m do
  local w, s, tk = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  i = i + 3
  local ok = '0'
  if alive[w] and cap_s[w] then
    local used_s = (held_s[w] or 0) + (own_s[w] or 0)
    local used_t = (held_t[w] or 0) + (own_t[w] or 0)
    if used_s + s <= cap_s[w] and used_t + tk <= cap_t[w] then
      own_s[w] = (own_s[w] or 0) + s
      own_t[w] = (own_t[w] or 0) + tk
      ok = '1'
    end
  end
  grants[k] = ok
end

redis.call('DEL', KEYS[4])
local flat = {}
for w, s in pairs(own_s) do
  local tk = own_t[w] or 0
  if s > 0 or tk > 0 then
    flat[#flat + 1] = w
    flat[#flat + 1] = s .. ',' .. tk
  end
end
if #flat > 0 then
  redis.call('HSET', KEYS[4], unpack(flat))
end
-- A frontend that dies stops counting after the window; its fields go
-- with its hash some windows later.
redis.call('PEXPIRE', KEYS[4], window * 10)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window * 10)

local reply = {'ok', table.concat(grants)}
for w, _ in pairs(alive) do
  if cap_s[w] then
    reply[#reply + 1] = w
    reply[#reply + 1] = tostring(math.max(cap_s[w] - (held_s[w] or 0), 0))
    reply[#reply + 1] = tostring(math.max(cap_t[w] - (held_t[w] or 0), 0))
  end
end
return reply
