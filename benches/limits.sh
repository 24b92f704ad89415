#!/usr/bin/env bash
# Limits benchmark: requests/s and latency of the gateway in gateway_keys mode with 1,000 distinct keys, limits
# on (every key with request, token and concurrency quotas, and a tenant quota over them, all set high enough
# never to refuse) versus limits off (the same 1,000 keys without quotas). wrk rotates the key on every
# request. Same run, same machine, alternating rounds; the ratio is the result. Asserts nothing about speed,
# only that every request got a 200 (a 429 would mean the run measured refusals).
#
#   bash benches/limits.sh                 # defaults: 10 s per scenario, 32 connections, 2 rounds
#   DURATION=30s ROUNDS=3 bash benches/limits.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-2}
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

echo "# promptgate limits benchmark ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION, gateway threads=$GW_THREADS, 1,000 keys rotated per request, $ROUNDS rounds)"
echo
compare_rounds "limits off" "$OFF_URL" "limits on" "$ON_URL" "$WORK/body4k.json" "$ROTATE"
