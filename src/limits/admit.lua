-- promptgate: the admission of one request, all or none, in one round trip (see src/limits/redis.rs).
--
-- KEYS, three per subject (the caller first, then its tenant), all under one hash tag (one Cluster slot):
--   KEYS[3i-2]  the subject's permit set (sorted set: member = permit id, score = lease expiry, server ms)
--   KEYS[3i-1]  the prefix of its request counters (one string per window: <prefix>:<window index>)
--   KEYS[3i]    the prefix of its token counters (likewise)
-- The window counters are named from the declared prefixes by appending the window index, which only the
-- server's clock decides here; they share the prefixes' hash tag, so they live on the same slot.
-- ARGV: window ms, lease ms, permit id, token estimate, then per subject: max concurrent, requests per window,
-- tokens per window (0: no such quota).
--
-- Checks in the local limiter's order (concurrency of every subject, then requests, then tokens), then takes
-- everything. Replies (integers):
--   admitted: {1, now ms, window, reset ms, req limit, req remaining, tok limit, tok remaining}
--   refused:  {0, now ms, window, reset ms, req limit, req remaining, tok limit, tok remaining,
--              kind (1 requests, 2 tokens, 3 concurrency), subject index, limit, retry ms, subject remaining}
-- The limit/remaining pairs are the first subject's (the headers); a limit of 0 means no such quota.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local member = ARGV[3]
local tokens = tonumber(ARGV[4])
local n = #KEYS / 3
local w = math.floor(now / window)
local reset = (w + 1) * window - now
local keep = window * 2

local conc, req, tok = {}, {}, {}
for i = 1, n do
  conc[i] = tonumber(ARGV[4 + 3 * i - 2])
  req[i] = tonumber(ARGV[4 + 3 * i - 1])
  tok[i] = tonumber(ARGV[4 + 3 * i])
end

local function used(key)
  return tonumber(redis.call('GET', key .. ':' .. w) or '0')
end

local function left(limit, count)
  if count >= limit then return 0 end
  return limit - count
end

-- The first subject's standing, as its counters are now.
local function standing()
  local rl, rr, tl, tr = req[1], 0, tok[1], 0
  if rl > 0 then rr = left(rl, used(KEYS[2])) end
  if tl > 0 then tr = left(tl, used(KEYS[3])) end
  return rl, rr, tl, tr
end

local function refuse(kind, i, limit, retry, remaining)
  local rl, rr, tl, tr = standing()
  return {0, now, w, reset, rl, rr, tl, tr, kind, i, limit, retry, remaining}
end

for i = 1, n do
  if conc[i] > 0 then
    local set = KEYS[3 * i - 2]
    redis.call('ZREMRANGEBYSCORE', set, '-inf', now)
    if redis.call('ZCARD', set) >= conc[i] then
      -- No window to wait for: a permit frees when some request ends.
      return refuse(3, i, conc[i], 1000, 0)
    end
  end
end
for i = 1, n do
  if req[i] > 0 then
    local count = used(KEYS[3 * i - 1])
    if count + 1 > req[i] then
      return refuse(1, i, req[i], reset, left(req[i], count))
    end
  end
end
for i = 1, n do
  if tok[i] > 0 then
    local count = used(KEYS[3 * i])
    -- Refused when this request does not fit, or when nothing is left (an empty estimate).
    if count + tokens > tok[i] or (tokens == 0 and count >= tok[i]) then
      return refuse(2, i, tok[i], reset, left(tok[i], count))
    end
  end
end

for i = 1, n do
  if conc[i] > 0 then
    local set = KEYS[3 * i - 2]
    redis.call('ZADD', set, now + lease, member)
    redis.call('PEXPIRE', set, lease * 2)
  end
  if req[i] > 0 then
    local key = KEYS[3 * i - 1] .. ':' .. w
    redis.call('INCR', key)
    redis.call('PEXPIRE', key, keep)
  end
  if tok[i] > 0 then
    -- Created even for an empty estimate, so a settlement has a counter to correct.
    local key = KEYS[3 * i] .. ':' .. w
    redis.call('INCRBY', key, tokens)
    redis.call('PEXPIRE', key, keep)
  end
end
local rl, rr, tl, tr = standing()
return {1, now, w, reset, rl, rr, tl, tr}
