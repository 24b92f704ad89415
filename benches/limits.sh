#!/usr/bin/env bash
# Limits benchmark: requests/s and latency of the gateway in gateway_keys mode with 1,000 distinct keys, limits
# on (every key with request, token and concurrency quotas, and a tenant quota over them, all set high enough
# never to refuse) versus limits off (the same 1,000 keys without quotas). wrk rotates the key on every
# request. Same run, same machine, alternating rounds; the ratio is the result. Asserts nothing about speed,
# only that every request got a 200 (a 429 would mean the run measured refusals).
#
# Then the Redis backend against the local one, same keys and quotas, same run (a private redis-server on a
# free port): req/s at c=$CONNECTIONS, latency at c=1 (what one request pays for its Redis round trip), one
# loopback Redis round trip for reference (redis-benchmark PING, one client), and a fleet: two Redis-backed
# gateways each loaded by its own wrk versus one gateway with one wrk. The Redis gateways run with
# `on_unavailable = "deny"`, so a Redis call that timed out fails the run (a 503) instead of quietly measuring
# the local fallback; the fallback counters are printed at the end as a check.
#
#   bash benches/limits.sh                 # defaults: 10 s per scenario, 32 connections, 2 rounds
#   DURATION=30s ROUNDS=3 bash benches/limits.sh
#   PARTS=redis bash benches/limits.sh     # only the Redis comparisons (PARTS=local: only limits off/on)
#   REDIS_TIMEOUT_MS=5 …                   # the Redis command timeout of the gateways (default 50)
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-2}
PARTS=${PARTS:-local,redis}
REDIS_TIMEOUT_MS=${REDIS_TIMEOUT_MS:-50}
source benches/common.sh

python3 - "$WORK" <<'PY'
import hashlib, sys
work = sys.argv[1]
def entry(i, limits):
    secret = f"pgk_bench_{i:04d}"
    sha = hashlib.sha256(secret.encode()).hexdigest()
    line = f'id = "bench-{i}"\nsha256 = "{sha}"\ntenant = "tenant-{i % 10}"\n'
    if limits:
        line += "limits = { requests_per_minute = 1000000000, tokens_per_minute = 1000000000000, max_concurrent = 10000 }\n"
    return "[[key]]\n" + line + "\n"
tenants = "".join(f'[[tenant]]\nid = "tenant-{t}"\nlimits = {{ requests_per_minute = 1000000000, max_concurrent = 100000 }}\n\n' for t in range(10))
open(f"{work}/keys-off.toml", "w").write("".join(entry(i, False) for i in range(1000)))
open(f"{work}/keys-on.toml", "w").write(tenants + "".join(entry(i, True) for i in range(1000)))
PY

ROTATE='local i = 0
request = function()
  i = (i % 1000)
  wrk.headers["authorization"] = string.format("Bearer pgk_bench_%04d", i)
  i = i + 1
  return wrk.format(nil, nil, nil, wrk.body)
end'

make_body 4096 "" >"$WORK/body4k.json"
start_gateway off "[auth]
mode = \"gateway_keys\"
keys_file = \"$WORK/keys-off.toml\""
OFF_URL=$GW_URL
PID_A=$GW_PID
start_gateway on "[auth]
mode = \"gateway_keys\"
keys_file = \"$WORK/keys-on.toml\""
ON_URL=$GW_URL
PID_B=$GW_PID

echo "# promptgate limits benchmark ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION, gateway threads=$GW_THREADS, 1,000 keys rotated per request, $ROUNDS rounds, PIN=$PIN)"
echo
if [[ $PARTS == *local* ]]; then
  echo "## limits off vs on (local backend)"
  echo
  compare_rounds "limits off" "$OFF_URL" "limits on" "$ON_URL" "$WORK/body4k.json" "$ROTATE"
  echo
fi
[[ $PARTS == *redis* ]] || exit 0

# A private Redis, on the helpers' CPUs when pinned.
command -v redis-server >/dev/null || { echo "redis-server missing (bash .ci/setup installs it)" >&2; exit 1; }
REDIS_PORT=$(port)
"${PIN_HELPER[@]}" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" \
  >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.05; done
redis-cli -p "$REDIS_PORT" ping >/dev/null
REDIS_TOML="[limits]
backend = \"redis\"
[limits.redis]
url = \"redis://127.0.0.1:$REDIS_PORT/0\"
timeout_ms = $REDIS_TIMEOUT_MS
on_unavailable = \"deny\""
KEYS_ON="[auth]
mode = \"gateway_keys\"
keys_file = \"$WORK/keys-on.toml\""
start_gateway redis "$KEYS_ON
$REDIS_TOML"
REDIS_URL=$GW_URL
REDIS_ADMIN=$GW_ADMIN
PID_A=$PID_B
PID_B=$GW_PID

echo "## local vs Redis backend, c=$CONNECTIONS (Redis command timeout $REDIS_TIMEOUT_MS ms)"
echo
compare_rounds "local" "$ON_URL" "redis" "$REDIS_URL" "$WORK/body4k.json" "$ROTATE"
echo

# c=1: each request alone, so the difference is what one request waits for Redis.
echo "## latency at c=1, local vs Redis backend"
echo
echo "| round | local p50 ms | p99 ms | redis p50 ms | p99 ms | added p50 µs | added p99 µs |"
echo "|---|---:|---:|---:|---:|---:|---:|"
SAVED_CONNECTIONS=$CONNECTIONS
CONNECTIONS=1
sum_p50=0; sum_p99=0
for r in $(seq 1 "$ROUNDS"); do
  if (( r % 2 )); then
    read -r _ l50 l99 < <(run_wrk "c1-local-$r" "$ON_URL" "$WORK/body4k.json" "$ROTATE")
    read -r _ r50 r99 < <(run_wrk "c1-redis-$r" "$REDIS_URL" "$WORK/body4k.json" "$ROTATE")
  else
    read -r _ r50 r99 < <(run_wrk "c1-redis-$r" "$REDIS_URL" "$WORK/body4k.json" "$ROTATE")
    read -r _ l50 l99 < <(run_wrk "c1-local-$r" "$ON_URL" "$WORK/body4k.json" "$ROTATE")
  fi
  a50=$(python3 -c "print(f'{($r50 - $l50) * 1000:.0f}')"); a99=$(python3 -c "print(f'{($r99 - $l99) * 1000:.0f}')")
  echo "| $r | $l50 | $l99 | $r50 | $r99 | $a50 | $a99 |"
  sum_p50=$((sum_p50 + a50)); sum_p99=$((sum_p99 + a99))
done
CONNECTIONS=$SAVED_CONNECTIONS
echo
echo "mean added at c=1 by the Redis backend: p50 $((sum_p50 / ROUNDS)) µs, p99 $((sum_p99 / ROUNDS)) µs"
echo

# One loopback round trip, for reference: PING from one client, back to back.
read -r rb_rps rb_p50 rb_p99 < <("${PIN_HELPER[@]}" redis-benchmark -p "$REDIS_PORT" -t ping -n 100000 -c 1 --csv \
  | awk -F'"' '/PING_MBULK/ {print $4, $10, $14}')
echo "one Redis round trip on loopback (redis-benchmark -t ping -c 1 -n 100000, PING_MBULK): $rb_rps req/s = $(python3 -c "print(f'{1e6 / $rb_rps:.0f}')") µs mean, p50 $(python3 -c "print(f'{$rb_p50 * 1000:.0f}')") µs, p99 $(python3 -c "print(f'{$rb_p99 * 1000:.0f}')") µs"
echo

# The fleet: a second Redis-backed gateway; both loaded at once, each by its own wrk, against one gateway alone.
start_gateway redis2 "$KEYS_ON
$REDIS_TOML"
REDIS2_URL=$GW_URL
REDIS2_ADMIN=$GW_ADMIN
echo "## fleet: two Redis-backed gateways (one Redis), each with its own wrk -c$CONNECTIONS, vs one gateway"
echo
echo "| round | one gateway req/s | two gateways req/s (first + second) | ratio (two ÷ one) |"
echo "|---|---:|---:|---:|"
sum_one=0; sum_two=0
for r in $(seq 1 "$ROUNDS"); do
  one() { read -r one_rps _ < <(run_wrk "fleet-one-$r" "$REDIS_URL" "$WORK/body4k.json" "$ROTATE"); }
  two() {
    run_wrk "fleet-a-$r" "$REDIS_URL" "$WORK/body4k.json" "$ROTATE" >"$WORK/fleet-a-$r.out" &
    local wa=$!
    run_wrk "fleet-b-$r" "$REDIS2_URL" "$WORK/body4k.json" "$ROTATE" >"$WORK/fleet-b-$r.out" &
    local wb=$!
    wait "$wa"; wait "$wb"
    read -r two_a _ <"$WORK/fleet-a-$r.out"; read -r two_b _ <"$WORK/fleet-b-$r.out"
  }
  if (( r % 2 )); then one; two; else two; one; fi
  total=$(python3 -c "print(f'{$two_a + $two_b:.1f}')")
  echo "| $r | $one_rps | $total ($two_a + $two_b) | $(python3 -c "print(f'{$total / $one_rps:.3f}')") |"
  sum_one=$(python3 -c "print($sum_one + $one_rps)"); sum_two=$(python3 -c "print($sum_two + $total)")
done
echo
echo "overall fleet ratio, two gateways ÷ one: $(python3 -c "print(f'{$sum_two/$sum_one:.3f}')") (on $(nproc) cores shared by the gateways, the wrks, the mock and Redis)"
echo

# Checks: the counts went to Redis, and nothing was decided by a fallback.
metric() { curl -sf "$1/metrics" | awk -v m="$2" 'index($0, m) == 1 {print $2; found=1} END {if (!found) print 0}'; }
dbsize=$(redis-cli -p "$REDIS_PORT" dbsize)
echo "checks: Redis holds $dbsize keys; evalsha calls $(redis-cli -p "$REDIS_PORT" info commandstats | awk -F'[=,]' '/cmdstat_evalsha/ {n=$2} END {print n+0}')"
if [ "$dbsize" = 0 ]; then echo "the Redis-backed gateways counted nothing in Redis" >&2; exit 1; fi
for g in "redis $REDIS_ADMIN" "redis2 $REDIS2_ADMIN"; do
  read -r name admin <<<"$g"
  fb=0
  for mode in local allow deny; do
    fb=$((fb + $(metric "$admin" "promptgate_limits_fallback_decisions_total{mode=\"$mode\"}" | cut -d. -f1)))
  done
  sum=$(metric "$admin" promptgate_limits_redis_seconds_sum); count=$(metric "$admin" promptgate_limits_redis_seconds_count)
  echo "  $name: fallback decisions $fb, Redis round trips $count, mean $(python3 -c "print(f'{$sum / max($count, 1) * 1e6:.0f}')") µs (gateway-measured, under load)"
done
