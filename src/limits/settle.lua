-- promptgate: the end of one request (see src/limits/redis.rs): gives back its permit and corrects its token
-- counters, in one call.
-- KEYS: first ARGV[2] permit sets (the member ARGV[3] is removed from each), then the token counters of the
-- window the tokens were counted in, corrected by ARGV[1] (negative: fewer tokens were used than estimated),
-- never below zero, keeping their expiry. A counter already expired (its window is long over) is left alone
-- rather than created without an expiry. KEYS share one hash tag (one Cluster slot).
local delta = tonumber(ARGV[1])
local sets = tonumber(ARGV[2])
for i = 1, sets do
  redis.call('ZREM', KEYS[i], ARGV[3])
end
if delta ~= 0 then
  for i = sets + 1, #KEYS do
    local v = redis.call('GET', KEYS[i])
    if v then
      local count = tonumber(v) + delta
      if count < 0 then count = 0 end
      redis.call('SET', KEYS[i], string.format('%d', count), 'KEEPTTL')
    end
  end
end
return 0
