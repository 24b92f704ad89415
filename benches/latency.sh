#!/usr/bin/env bash
# Latency at concurrency 1: one connection, requests back to back (wrk -c1), so each request's latency is the
# whole cost of its path with nothing queued behind it. Reports p50 / p99 of client → mock directly and through
# the gateway — inspection off and with the default rule pack, each with audit off and with the audit defaults
# (every event to the JSONL file, fsync per batch) — and what the gateway adds (gateway − direct). 4 KB chat
# body. Not a test: it asserts only that every request succeeded.
#
#   PIN=1 bash benches/latency.sh                          # gateway on CPU 0, wrk and the mock on CPU 1
#   PIN=1 BIN=path/to/other/promptgate bash benches/latency.sh   # the same for another build
set -euo pipefail
cd "$(dirname "$0")/.."

CONNECTIONS=1
WRK_THREADS=1
source benches/common.sh

make_body 4096 "" >"$WORK/body4k.json"
added() { python3 -c "print(f'{($1 - $2) * 1000:.0f}')"; }
echo "# promptgate latency at c=1 ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, wrk -t1 -c1 -d$DURATION, gateway $BIN, threads=$GW_THREADS, PIN=$PIN)"
echo
echo "| path | p50 ms | p99 ms | added p50 µs | added p99 µs |"
echo "|---|---:|---:|---:|---:|"
read -r _ d_p50 d_p99 < <(run_wrk direct "http://127.0.0.1:$MOCK_PORT" "$WORK/body4k.json")
echo "| direct → mock | $d_p50 | $d_p99 | — | — |"
for inspection in off on; do
  for audit in off on; do
    extra="[inspect]
enabled = $([ $inspection = on ] && echo true || echo false)"
    if [ $audit = off ]; then extra="$extra
[audit]
enabled = false"; fi
    start_gateway "i$inspection-a$audit" "$extra"
    read -r _ p50 p99 < <(run_wrk "i$inspection-a$audit" "$GW_URL" "$WORK/body4k.json")
    label="inspection $([ $inspection = on ] && echo 'on (default pack)' || echo off), audit $audit"
    echo "| gateway, $label → mock | $p50 | $p99 | $(added "$p50" "$d_p50") | $(added "$p99" "$d_p99") |"
  done
done
