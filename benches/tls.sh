#!/usr/bin/env bash
# The client edge's protocols under load: one gateway (default rule pack) serving plaintext HTTP/1.1, h2c
# (server.h2c), HTTP/1.1 over TLS and HTTP/2 over TLS (a [[server.tls]] listener, certificate made here),
# driven by one load generator, h2load, for all four so the ratios to plaintext HTTP/1.1 compare like with
# like; the mock upstream behind. Not a test: it asserts nothing about speed, only that every request got a 2xx.
#
#   bash benches/tls.sh                      # defaults: 10 s per scenario, 32 connections, 1 stream each
#   DURATION=30 CONNECTIONS=64 STREAMS=4 bash benches/tls.sh
#
# h2load is Debian's nghttp2-client (installed if missing); the certificate is made with the openssl CLI.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v h2load >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nghttp2-client >/dev/null
fi
source benches/common.sh
SECONDS_RUN=${DURATION%s}
STREAMS=${STREAMS:-1}

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=127.0.0.1 \
  -addext subjectAltName=IP:127.0.0.1 -keyout "$WORK/gw.key" -out "$WORK/gw.crt" 2>/dev/null
TLS_PORT=$(port)
start_gateway edge "h2c = true
[[server.tls]]
listen = \"127.0.0.1:$TLS_PORT\"
cert_file = \"$WORK/gw.crt\"
key_file = \"$WORK/gw.key\""
PLAIN=$GW_URL
TLS="https://127.0.0.1:$TLS_PORT"
make_body 4096 "" >"$WORK/body4k.json"

# run_h2load NAME URL [--h1] → "rps mean_ms"; exits when any request did not get a 2xx.
run_h2load() {
  local name=$1 url=$2; shift 2
  local args=(-c "$CONNECTIONS" -m "$STREAMS" -t 1 -d "$WORK/body4k.json" -H 'content-type: application/json' "$@")
  "${PIN_HELPER[@]}" h2load "${args[@]}" -D 2 "$url/v1/chat/completions" >/dev/null
  "${PIN_HELPER[@]}" h2load "${args[@]}" -D "$SECONDS_RUN" "$url/v1/chat/completions" >"$WORK/$name.out"
  python3 - "$WORK/$name.out" "$name" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", text).group(1))
done = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", text)
codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
if int(done.group(4)) or int(done.group(5)) or int(codes.group(3)) or int(codes.group(4)) or int(codes.group(1)) == 0:
    sys.exit(f"{sys.argv[2]}: not every request succeeded:\n{text}")
m = re.search(r"time for request:\s+([\d.]+)(\w+)\s+([\d.]+)(\w+)\s+([\d.]+)(\w+)", text)
mean, unit = float(m.group(5)), m.group(6)
mean_ms = mean / 1000 if unit == "us" else mean * 1000 if unit == "s" else mean
print(f"{rps:.1f} {mean_ms:.2f}")
PY
}

echo "# promptgate client-edge benchmark ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, h2load -c$CONNECTIONS -m$STREAMS -D$SECONDS_RUN, gateway threads=$GW_THREADS, 4 KB chat body, default rules)"
echo
echo "| client edge | req/s | mean ms | req/s ÷ plaintext h1 |"
echo "|---|---:|---:|---:|"
read -r base_rps base_ms < <(run_h2load h1 "$PLAIN" --h1)
echo "| plaintext HTTP/1.1 | $base_rps | $base_ms | 1.00 |"
for s in "h2c|$PLAIN|" "TLS HTTP/1.1|$TLS|--h1" "TLS HTTP/2|$TLS|"; do
  IFS='|' read -r label url flag <<<"$s"
  read -r rps ms < <(run_h2load "x" "$url" ${flag:+"$flag"})
  echo "| $label | $rps | $ms | $(python3 -c "print(f'{$rps/$base_rps:.2f}')") |"
done
