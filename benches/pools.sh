#!/usr/bin/env bash
# Balancing benchmark: the gateway's CPU per request and requests/s with one pool of 1 endpoint versus one pool of
# 3 endpoints, round robin and least connections, same run, alternating rounds. The three endpoints are one mock
# reached at 127.0.0.1, 127.0.0.2 and 127.0.0.3 (the mock listens on every address), so both sides talk to the
# same upstream process and the only difference is the pool: three members to balance over, three connection
# pools, three health checks. Asserts nothing about speed, only that every request got a 200 and that each
# 3-endpoint gateway holds connections to all three addresses right after its rounds (it did balance).
#
#   PIN=1 bash benches/pools.sh                 # defaults: 10 s per scenario, 32 connections, 2 rounds
#   PIN=1 ROUNDS=4 DURATION=6s bash benches/pools.sh
#
# Audit is off in every gateway here: its fsyncs are the noisiest part of a request, and this measures a part
# of a microsecond. Per-call costs without the network: `cargo bench --bench pools`.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-2}
source benches/common.sh

# One mock on every address (the shared one listens on 127.0.0.1 only), on the helpers' CPUs when pinned.
POOL_MOCK_PORT=$(port)
"${PIN_HELPER[@]}" "$MOCK_BIN" mock --listen "0.0.0.0:$POOL_MOCK_PORT" --threads 1 >/dev/null 2>&1 &
PIDS+=($!)
for a in 127.0.0.1 127.0.0.2 127.0.0.3; do wait_http "http://$a:$POOL_MOCK_PORT/v1/models"; done

# pool URLS BALANCE → the gateway's config: one [[upstream]] pool (health checks with their defaults), audit off.
pool() {
  printf '[[upstream]]\nname = "bench"\nurl = [%s]\nbalance = "%s"\n\n[audit]\nenabled = false\n' "$1" "$2"
}
ONE="\"http://127.0.0.1:$POOL_MOCK_PORT\""
THREE="\"http://127.0.0.1:$POOL_MOCK_PORT\", \"http://127.0.0.2:$POOL_MOCK_PORT\", \"http://127.0.0.3:$POOL_MOCK_PORT\""

make_body 4096 "" >"$WORK/body4k.json"
start_gateway one "$(pool "$ONE" round_robin)"
ONE_URL=$GW_URL
ONE_PID=$GW_PID
start_gateway three-rr "$(pool "$THREE" round_robin)"
RR_URL=$GW_URL
RR_PID=$GW_PID
start_gateway three-lc "$(pool "$THREE" least_connections)"
LC_URL=$GW_URL
LC_PID=$GW_PID

# check_spread NAME PID: gateway PID (3 endpoints) holds connections to all three addresses of the mock — it did
# balance. Run right after its rounds (idle upstream connections close after a minute).
check_spread() {
  local held
  held=$(ss -Htnp state established "( dport = :$POOL_MOCK_PORT )" | awk -v p="pid=$2," 'index($0, p) {print $4}' \
    | sed 's/:[0-9]*$//' | sort -u | tr '\n' ' ')
  echo "check: the $1 gateway holds connections to: ${held:-nothing}"
  if [ "$(wc -w <<<"$held")" != 3 ]; then echo "$1: expected connections to 3 endpoints" >&2; exit 1; fi
}

echo "# promptgate balancing benchmark ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION, gateway threads=$GW_THREADS, 4 KB chat, default rule pack, audit off, $ROUNDS rounds, PIN=$PIN)"
echo
echo "## 1 endpoint vs 3 endpoints, round robin"
echo
PID_A=$ONE_PID PID_B=$RR_PID compare_rounds "1 endpoint" "$ONE_URL" "3 endpoints" "$RR_URL" "$WORK/body4k.json"
check_spread round_robin "$RR_PID"
echo
echo "## 1 endpoint vs 3 endpoints, least connections"
echo
PID_A=$ONE_PID PID_B=$LC_PID compare_rounds "1 endpoint" "$ONE_URL" "3 endpoints" "$LC_URL" "$WORK/body4k.json"
check_spread least_connections "$LC_PID"
