#!/usr/bin/env bash
# Tracing benchmark: requests/s, latency and CPU per request (the gateway process, all threads) with
# `[tracing]` on at sampling_ratio 1.0 — every request recorded, its spans exported over OTLP/HTTP to a local
# receiver (Python, answers 200 and counts bytes) — versus tracing off. Same run, same mock, alternating rounds.
# At the end: the spans the collector accepted and any dropped.
#
#   bash benches/tracing.sh                   # defaults: 10 s per round, 32 connections, 2 rounds
#   PIN=1 DURATION=6s ROUNDS=4 bash benches/tracing.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-2}
source benches/common.sh

OTLP_PORT=$(port)
"${PIN_HELPER[@]}" python3 - "$OTLP_PORT" <<'PY' >/dev/null 2>&1 &
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
PIDS+=($!)
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$OTLP_PORT") 2>/dev/null && break; sleep 0.05; done

make_body 4096 "" >"$WORK/body4k.json"
start_gateway off ""
OFF_URL=$GW_URL
PID_A=$GW_PID
start_gateway on "[tracing]
enabled = true
endpoint = \"http://127.0.0.1:$OTLP_PORT\"
sampling_ratio = 1.0"
ON_URL=$GW_URL
ON_ADMIN=$GW_ADMIN
PID_B=$GW_PID

echo "# promptgate: tracing on (ratio 1.0, OTLP/HTTP) vs off ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION, $ROUNDS rounds, PIN=$PIN, 4 KB chat body)"
echo
compare_rounds "off" "$OFF_URL" "on" "$ON_URL" "$WORK/body4k.json"
echo
curl -s "$ON_ADMIN/metrics" | grep -E '^promptgate_trace_(spans_exported|spans_dropped|export_errors)' || true
