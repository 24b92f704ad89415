#!/usr/bin/env bash
# Audit hash chain and write-ahead benchmark: the same 4 KB chat request through three gateways in the same run,
# audit file on with fsync = "always" for all three:
#   before      — BASE_BIN (a build before the chain, e.g. of an earlier commit), async; left out when BASE_BIN
#                 is not set;
#   chain       — this build, async (every line sealed into the hash chain);
#   write_ahead — this build, durability = "write_ahead" (an intent written and fsynced before the upstream).
# Per round and variant: latency at one connection (c=1: what a lone request pays) and throughput saturated
# (c=$CONNECTIONS). The order of the variants rotates each round. At the end the results are checked: both new
# directories verify (`promptgate audit verify`), and write_ahead holds one intent per forwarded request.
#
#   bash benches/audit_chain.sh                       # 5 s per run, 2 rounds
#   DURATION=10s ROUNDS=3 bash benches/audit_chain.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-2}
source benches/common.sh
BASE_BIN=${BASE_BIN:-}
SAT=$CONNECTIONS

make_body 4096 "" >"$WORK/body4k.json"
declare -A URL PID
variants=(chain write_ahead)
if [ -n "$BASE_BIN" ]; then
  start_gateway before "[audit]
dir = \"$WORK/before-audit\"" "$BASE_BIN"
  URL[before]=$GW_URL; PID[before]=$GW_PID
  variants=(before chain write_ahead)
else
  echo "(BASE_BIN not set: the build before the chain is left out)" >&2
fi
start_gateway chain "[audit]
dir = \"$WORK/chain-audit\""
URL[chain]=$GW_URL; PID[chain]=$GW_PID
start_gateway write_ahead "[audit]
dir = \"$WORK/wa-audit\"
durability = \"write_ahead\""
URL[write_ahead]=$GW_URL; PID[write_ahead]=$GW_PID

echo "# promptgate audit chain / write-ahead benchmark ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, wrk -t$WRK_THREADS -d$DURATION, c=1 and c=$SAT, gateway threads=$GW_THREADS, $ROUNDS rounds, fsync=always)"
echo
echo "| round | variant | c=1 req/s | c=1 p50 ms | c=1 p99 ms | c=$SAT req/s | c=$SAT p50 ms | c=$SAT p99 ms | CPU µs/req (c=$SAT) |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
n=${#variants[@]}
for r in $(seq 1 "$ROUNDS"); do
  for i in $(seq 0 $(( n - 1 ))); do
    v=${variants[$(( (i + r - 1) % n ))]}
    CONNECTIONS=1
    read -r rps1 p501 p991 < <(run_wrk "$v-$r-1" "${URL[$v]}" "$WORK/body4k.json")
    CONNECTIONS=$SAT
    read -r rps p50 p99 cpu < <(run_wrk "$v-$r-n" "${URL[$v]}" "$WORK/body4k.json" "" "${PID[$v]}")
    echo "| $r | $v | $rps1 | $p501 | $p991 | $rps | $p50 | $p99 | $cpu |"
  done
done
sleep 1
echo
for v in chain wa; do
  "$MOCK_BIN" audit verify "$WORK/$v-audit" | head -3 | sed "s|$WORK/||"
done
intents=$("$MOCK_BIN" audit query "$WORK/wa-audit" --type audit.intent | wc -l)
events=$("$MOCK_BIN" audit query "$WORK/wa-audit" | grep -vc '"type":"audit.intent"' || true)
echo "write_ahead: $intents intents, $events decision events"
if [ "$intents" -lt "$events" ]; then echo "write_ahead: fewer intents than events" >&2; exit 1; fi
