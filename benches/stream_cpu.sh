#!/usr/bin/env bash
# Stream CPU benchmark: the gateway's CPU time per streamed answer (500 chat chunks, default rule pack), this
# build against BASE_BIN (another build) in the same run, alternating rounds. Measured from outside: the
# gateway process's user + system time over STREAMS sequential streams ÷ STREAMS. Asserts nothing about speed;
# fails only if a stream did not arrive whole.
#
#   BASE_BIN=/path/to/older/promptgate bash benches/stream_cpu.sh
#   BASE_BIN=… STREAMS=300 ROUNDS=3 CHUNKS=500 PIN=1 bash benches/stream_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
STREAMS=${STREAMS:-300}
CHUNKS=${CHUNKS:-500}
source benches/common.sh
BASE_BIN=${BASE_BIN:?set BASE_BIN to the build to compare with}

start_gateway after "" "$BIN"
AFTER_URL=$GW_URL AFTER_PID=$GW_PID
start_gateway before "" "$BASE_BIN"
BEFORE_URL=$GW_URL BEFORE_PID=$GW_PID
HZ=$(getconf CLK_TCK)
BODY='{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}'

# streams URL N → fetches N streams one after the other; fails unless each ends with [DONE].
streams() {
  for _ in $(seq 1 "$2"); do
    curl -sfN "$1/v1/chat/completions" -H 'content-type: application/json' -H "x-mock-chunks: $CHUNKS" \
      -d "$BODY" | tail -c 16 | grep -q 'data: \[DONE\]' || { echo "a stream did not arrive whole" >&2; exit 1; }
  done
}
# per_stream URL PID → milliseconds of gateway CPU per stream over STREAMS streams (after a warm-up).
per_stream() {
  streams "$1" 20
  local a b
  a=$(cpu_ticks "$2"); streams "$1" "$STREAMS"; b=$(cpu_ticks "$2")
  python3 -c "print(f'{($b - $a) * 1000 / $HZ / $STREAMS:.3f}')"
}

echo "# promptgate stream CPU benchmark ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $STREAMS streams × $CHUNKS chunks per round, $ROUNDS rounds, PIN=$PIN)"
echo
echo "| round | before (ms/stream) | after (ms/stream) | after ÷ before |"
echo "|---|---:|---:|---:|"
for r in $(seq 1 "$ROUNDS"); do
  b=$(per_stream "$BEFORE_URL" "$BEFORE_PID")
  a=$(per_stream "$AFTER_URL" "$AFTER_PID")
  echo "| $r | $b | $a | $(python3 -c "print(f'{$a / $b:.3f}')") |"
done
