#!/usr/bin/env bash
# Audit benchmark: requests/s, latency and CPU per request (the gateway process, all threads) with the audit
# sinks on — the JSONL file with fsync after every batch, and the signed webhook fed from it (a local Python
# receiver) — versus audit off.
# Same run, same machine, alternating rounds; the ratio is the result. At the end it reports how many events
# the file holds and how many the webhook has received.
#
#   bash benches/audit.sh                  # defaults: 10 s per scenario, 32 connections, 2 rounds
#   DURATION=30s ROUNDS=4 bash benches/audit.sh
#   FSYNC=interval FSYNC_MS=10 WEBHOOK=0 bash benches/audit.sh   # the file alone, flushed every 10 ms
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-2}
source benches/common.sh

"${PIN_HELPER[@]}" python3 tests/python/webhook_receiver.py "$WORK/webhook.jsonl" "$WORK/webhook.down" >"$WORK/webhook.port" &
PIDS+=($!)
for _ in $(seq 1 100); do [ -s "$WORK/webhook.port" ] && break; sleep 0.05; done
HOOK_PORT=$(head -1 "$WORK/webhook.port")
export PROMPTGATE_WEBHOOK_SECRET=bench-secret

make_body 4096 "" >"$WORK/body4k.json"
start_gateway off "[audit]
enabled = false"
OFF_URL=$GW_URL
PID_A=$GW_PID
FSYNC=${FSYNC:-always}
FSYNC_MS=${FSYNC_MS:-1000}
WEBHOOK=${WEBHOOK:-1}
ON_TOML="[audit]
dir = \"$WORK/audit\"
fsync = \"$FSYNC\"
fsync_interval_ms = $FSYNC_MS"
if [ "$WEBHOOK" = 1 ]; then ON_TOML="$ON_TOML
[audit.webhook]
url = \"http://127.0.0.1:$HOOK_PORT/events\""; fi
start_gateway on "$ON_TOML"
ON_URL=$GW_URL
PID_B=$GW_PID

echo "# promptgate audit benchmark ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION, gateway threads=$GW_THREADS, $ROUNDS rounds; on = JSONL file, fsync=$FSYNC$([ "$FSYNC" = interval ] && echo " ${FSYNC_MS}ms"), webhook=$WEBHOOK)"
echo
compare_rounds "audit off" "$OFF_URL" "audit on" "$ON_URL" "$WORK/body4k.json"
sleep 2
events=$(cat "$WORK"/audit/events-*.jsonl | wc -l)
delivered=$(python3 -c "import json,os; p='$WORK/webhook.jsonl'; print(sum(len(json.loads(json.loads(l)['body'])['events']) for l in open(p)) if os.path.exists(p) else 0)")
echo "events in the file: $events; delivered to the webhook so far: $delivered"
