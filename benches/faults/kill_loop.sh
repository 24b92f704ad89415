#!/usr/bin/env bash
# Kill loop: ROUNDS times (default 50) — start the gateway with audit on (webhook off), send load for about a
# second, `kill -9` it while requests are in flight, and start it again on the same audit directory.
# After every kill, before the restart, the complete event lines written since the last kill are recorded
# (event_id and a hash of the line) and a trailing line without its newline is counted as torn (the gateway
# cuts such a line off when it opens the directory again, by design). At the end, after a clean stop:
# Properties:
#   - no crash loop: every start became ready (/healthz) within START_TIMEOUT;
#   - every event line complete before a kill is still in the files, byte for byte, after all the restarts;
#   - every line of the final files parses, no event_id appears twice, no torn line is left.
#
#   bash benches/faults/kill_loop.sh
#   ROUNDS=200 LOAD_SECONDS=2 FSYNC=interval bash benches/faults/kill_loop.sh
#
# Knobs: ROUNDS (default 50), LOAD_SECONDS (load before each kill, default 1), CONNECTIONS (wrk, default 8),
# FSYNC (audit.fsync: always — the default — or interval), START_TIMEOUT (seconds, default 10), GW_THREADS
# (default 2), plus BIN / BUILD / KEEP (see lib.sh). kill -9 loses nothing the kernel already has, so a torn
# line needs the kill to land inside the writer's write; a few per 50 rounds is typical, zero is possible.
set -euo pipefail
cd "$(dirname "$0")/../.."
source benches/faults/lib.sh
need_wrk

ROUNDS=${ROUNDS:-50}
LOAD_SECONDS=${LOAD_SECONDS:-1}
CONNECTIONS=${CONNECTIONS:-8}
FSYNC=${FSYNC:-always}
START_TIMEOUT=${START_TIMEOUT:-10}
FAULTS=benches/faults/faults.py

start_mock
# One config for every round: the same ports and the same audit directory, as a supervisor would restart it.
gateway_config "$WORK/gw.toml" "[audit]
dir = \"$WORK/audit\"
fsync = \"$FSYNC\"

[audit.webhook]
url = \"\""

# A mix: clean, redacted (an email) and blocked (a key) requests, so events of every kind are being written.
make_body 4096 "" >"$WORK/clean.json"
make_body 4096 "please email jane.doe@example.com" >"$WORK/redact.json"
make_body 4096 "my key is AKIAIOSFODNN7EXAMPLE" >"$WORK/block.json"
cat >"$WORK/kill.lua" <<LUA
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
local bodies = {}
for _, name in ipairs({"clean", "redact", "block"}) do
  local f = io.open("$WORK/" .. name .. ".json", "rb"); table.insert(bodies, f:read("*a")); f:close()
end
local i = 0
request = function()
  i = i + 1
  return wrk.format(nil, nil, nil, bodies[(i % 3) + 1])
end
LUA

starts=0
ready=0
slowest=0
for round in $(seq 1 "$ROUNDS"); do
  t0=$(date +%s%N)
  launch_gateway "$WORK/gw.toml" "$WORK/gw.log"
  starts=$((starts + 1))
  if ! wait_http "$ADMIN_URL/healthz" "$((START_TIMEOUT * 20))"; then
    echo "round $round: the gateway did not become ready within ${START_TIMEOUT}s; its log:" >&2
    tail -20 "$WORK/gw.log" >&2
    kill -9 "$GW_PID" 2>/dev/null || true
    break
  fi
  ready=$((ready + 1))
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  [ "$ms" -gt "$slowest" ] && slowest=$ms
  # Load for LOAD_SECONDS + 1, killed after LOAD_SECONDS: the kill lands while requests are in flight.
  wrk -t1 -c"$CONNECTIONS" -d"$((LOAD_SECONDS + 1))s" -s "$WORK/kill.lua" "$GW_URL/v1/chat/completions" >/dev/null 2>&1 &
  wrk_pid=$!
  sleep "$LOAD_SECONDS"
  kill -9 "$GW_PID"
  wait "$GW_PID" 2>/dev/null || true
  wait "$wrk_pid" 2>/dev/null || true
  python3 "$FAULTS" audit-snap --dir "$WORK/audit" --state "$WORK/state.json" --ids "$WORK/ids.txt" >>"$WORK/snaps.out"
done

# A last start, which repairs the last kill's torn line, then a clean stop.
launch_gateway "$WORK/gw.toml" "$WORK/gw.log"
starts=$((starts + 1))
if wait_http "$ADMIN_URL/healthz" "$((START_TIMEOUT * 20))"; then ready=$((ready + 1)); fi
kill -TERM "$GW_PID"; wait "$GW_PID" 2>/dev/null || true
python3 "$FAULTS" audit-verify --dir "$WORK/audit" --state "$WORK/state.json" --ids "$WORK/ids.txt" >"$WORK/verify.out"
kv() { awk -v k="$1" '$1 == k { print $2 }' "$WORK/verify.out"; }
cuts=$(grep -c 'was cut short' "$WORK/gw.log" || true)
panics=$(grep -ci 'panick' "$WORK/gw.log" || true)

echo "# kill loop ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $ROUNDS rounds of ${LOAD_SECONDS}s load then kill -9, wrk -c$CONNECTIONS, audit fsync=$FSYNC)"
echo
echo "starts $starts (slowest to ready: $slowest ms); events recorded before the kills: $(kv recorded_before_kills);" \
  "torn last lines at a kill: $(kv torn_at_kills) (the gateway logged $cuts cuts at start); events at the end: $(kv final_events)"
echo
echo "| property | verdict | figures |"
echo "|---|---|---|"
verdict "every start became ready" "$([ "$ready" = "$starts" ] && [ "$ready" = $((ROUNDS + 1)) ] && echo 1)" "$ready of $starts starts ready; $panics panics in the log"
verdict "complete lines survive the restarts" "$([ "$(kv missing)" = 0 ] && [ "$(kv changed)" = 0 ] && [ "$(kv unparseable_before_kills)" = 0 ] && echo 1)" "$(kv missing) missing, $(kv changed) changed, $(kv unparseable_before_kills) unparseable complete lines at the kills"
verdict "final files whole" "$([ "$(kv final_unparseable)" = 0 ] && [ "$(kv final_torn)" = 0 ] && echo 1)" "$(kv final_unparseable) unparseable lines, $(kv final_torn) torn"
verdict "no duplicated event_id" "$([ "$(kv duplicates)" = 0 ] && echo 1)" "$(kv duplicates) duplicates"
exit "$FAILED"
