#!/usr/bin/env bash
# Slow clients and header floods, with a normal client beside them:
#   (a) SLOW_HEADS connections (default 48) each sending a request head one byte every DRIP seconds;
#   (b) SLOW_BODIES connections (default 16) each sending a complete head, then the body one byte every DRIP s;
#   (c) FLOODERS connections (default 2) of each kind sending, in a loop, a 70 KiB head and a head of 150 headers;
#   and a normal client sending one chat request a second on a fresh connection.
# Each slow connection starts over when it is cut, for DURATION seconds.
# Properties:
#   - every slow head is cut (408 or closed) within server.header_timeout_ms of its first byte + SLACK;
#   - every slow body is cut (408 or closed) within limits.body_timeout_ms of its head + SLACK;
#   - every flood head gets 431 (or a close: the gateway may answer before the client has finished sending);
#   - the normal client's requests all get 200, with p99 latency ≤ MAX_P99_MS (p50 and p99 reported).
#
#   bash benches/faults/slowloris.sh
#   HEADER_TIMEOUT_MS=10000 BODY_TIMEOUT_MS=30000 DURATION=120 bash benches/faults/slowloris.sh
#
# Knobs: HEADER_TIMEOUT_MS and BODY_TIMEOUT_MS (written into the gateway's config; defaults 6000 and 8000,
# short so a run takes about a minute — the product defaults are 10000 and 30000), DRIP (seconds between
# dribbled bytes, default 5), DURATION (seconds of attack, default 30), SLACK (seconds, default 2),
# SLOW_HEADS, SLOW_BODIES, FLOODERS, MAX_P99_MS (default 1000), GW_THREADS (default 2), plus BIN / BUILD / KEEP
# (see lib.sh). limits.max_header_bytes (60 KiB), limits.max_headers (100) and server.max_connections_per_ip
# (1000) stay at their defaults: every client here comes from 127.0.0.1, so a per-address cap below the number
# of slow connections would refuse them (503) before they could be slow.
set -euo pipefail
cd "$(dirname "$0")/../.."
source benches/faults/lib.sh

HEADER_TIMEOUT_MS=${HEADER_TIMEOUT_MS:-6000}
BODY_TIMEOUT_MS=${BODY_TIMEOUT_MS:-8000}
DRIP=${DRIP:-5}
DURATION=${DURATION:-30}
SLACK=${SLACK:-2}
SLOW_HEADS=${SLOW_HEADS:-48}
SLOW_BODIES=${SLOW_BODIES:-16}
FLOODERS=${FLOODERS:-2}
MAX_P99_MS=${MAX_P99_MS:-1000}

start_mock
SERVER_EXTRA="header_timeout_ms = $HEADER_TIMEOUT_MS" gateway_config "$WORK/gw.toml" "[limits]
body_timeout_ms = $BODY_TIMEOUT_MS

[audit]
dir = \"$WORK/audit\""
launch_gateway "$WORK/gw.toml" "$WORK/gw.log"
wait_http "$ADMIN_URL/healthz" || { echo "gateway did not start:"; cat "$WORK/gw.log"; exit 1; } >&2

echo "# slowloris ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, ${DURATION}s: $SLOW_HEADS slow heads, $SLOW_BODIES slow bodies, a byte every ${DRIP}s, $FLOODERS flooders of each kind; header_timeout_ms=$HEADER_TIMEOUT_MS, body_timeout_ms=$BODY_TIMEOUT_MS, slack ${SLACK}s)"
echo
rc=0
python3 benches/faults/faults.py slowloris --port "${GW_URL##*:}" --duration "$DURATION" --drip "$DRIP" \
  --slow-heads "$SLOW_HEADS" --slow-bodies "$SLOW_BODIES" --flooders "$FLOODERS" \
  --header-timeout "$(python3 -c "print($HEADER_TIMEOUT_MS / 1000)")" --body-timeout "$(python3 -c "print($BODY_TIMEOUT_MS / 1000)")" \
  --slack "$SLACK" --max-p99-ms "$MAX_P99_MS" || rc=$?
echo
# What the gateway counted, as a cross-check of what the clients saw.
curl -sf "$ADMIN_URL/metrics" | grep -E '^promptgate_(edge_refused_total|connections_open|requests_total)' | sed 's/^/    /' || true
exit "$rc"
