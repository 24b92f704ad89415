-- promptgate: corrects the token counters of one request's window by ARGV[1] (negative: fewer tokens were
-- used than estimated), never below zero, keeping their expiry. A counter already expired (its window is long
-- over) is left alone rather than created without an expiry. KEYS share one hash tag (one Cluster slot).
local delta = tonumber(ARGV[1])
for _, key in ipairs(KEYS) do
  local v = redis.call('GET', key)
  if v then
    local count = tonumber(v) + delta
    if count < 0 then count = 0 end
    redis.call('SET', key, string.format('%d', count), 'KEEPTTL')
  end
end
return 0
