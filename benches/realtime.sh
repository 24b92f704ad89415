#!/usr/bin/env bash
# Realtime benchmark: the latency a realtime session's text deltas gain through the gateway (default rule pack,
# audit on) against the mock directly, in alternating rounds of the same run, and the gateway's memory for
# SESSIONS idle sessions held open. Asserts nothing about speed.
#
#   bash benches/realtime.sh
#   ROUNDS=3 RESPONSES=20 DELTAS=50 SESSIONS=1000 PIN=1 bash benches/realtime.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
RESPONSES=${RESPONSES:-20}
DELTAS=${DELTAS:-50}
SESSIONS=${SESSIONS:-1000}
source benches/common.sh
python3 -c 'import websockets' 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check websockets
# Every session is one connection from 127.0.0.1, two file descriptors in the gateway.
ulimit -n 65536 2>/dev/null || true

# (The line lands in start_gateway's [server] table.)
start_gateway realtime "max_connections_per_ip = 100000"
echo "# promptgate realtime benchmark ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $ROUNDS rounds × $RESPONSES responses × $DELTAS deltas, PIN=$PIN)"
echo
"${PIN_HELPER[@]}" python3 benches/realtime.py "http://127.0.0.1:$MOCK_PORT" "$GW_URL" "$GW_PID" \
  "$ROUNDS" "$RESPONSES" "$DELTAS" "$SESSIONS"
