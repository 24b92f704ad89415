#!/usr/bin/env bash
# Load benchmark: requests/s and latency p50/p99 of client → mock directly, client → gateway (inspection off)
# → mock, and client → gateway (default rule pack) → mock, for 4 KB and 64 KB chat bodies, clean and with one
# match (an email, redacted), all measured in one run on this machine and reported as ratios: gateway ÷ direct,
# and inspection on ÷ inspection off for the same body. Not a test: it asserts nothing about speed,
# only that every request succeeded (a fast run full of errors is not a result).
#
#   bash benches/load.sh                 # defaults: 10 s per scenario, 32 connections
#   DURATION=30s CONNECTIONS=64 bash benches/load.sh
#
# Load generator: wrk (Debian package; installed if missing). Mock, gateway and wrk share the machine's cores,
# so absolute numbers mean little; the ratio, measured in the same run, is the result.
set -euo pipefail
cd "$(dirname "$0")/.."

source benches/common.sh

make_body 4096 "" >"$WORK/body4k.json"
make_body 4096 "please email jane.doe@example.com" >"$WORK/body4k-match.json"
make_body 64000 "" >"$WORK/body64k.json"
make_body 64000 "please email jane.doe@example.com" >"$WORK/body64k-match.json"
start_gateway off "[inspect]
enabled = false"
OFF_URL=$GW_URL
start_gateway on ""
ON_URL=$GW_URL

ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
size() { wc -c <"$1" | tr -d ' '; }

echo "# promptgate load benchmark ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION, gateway threads=$GW_THREADS)"
echo
echo "| scenario | body | req/s | p50 ms | p99 ms | baseline | req/s ratio | p50 ratio | p99 ratio |"
echo "|---|---|---:|---:|---:|---|---:|---:|---:|"
read -r d_rps d_p50 d_p99 < <(run_wrk direct "http://127.0.0.1:$MOCK_PORT" "$WORK/body4k.json")
echo "| direct → mock | $(size "$WORK/body4k.json") B clean | $d_rps | $d_p50 | $d_p99 | — | 1.00 | 1.00 | 1.00 |"
for body in body4k body4k-match body64k body64k-match; do
  read -r o_rps o_p50 o_p99 < <(run_wrk "off-$body" "$OFF_URL" "$WORK/$body.json")
  read -r i_rps i_p50 i_p99 < <(run_wrk "on-$body" "$ON_URL" "$WORK/$body.json")
  label="$(size "$WORK/$body.json") B $([[ $body == *match ]] && echo 'one match' || echo clean)"
  if [ "$body" = body4k ]; then
    echo "| gateway, inspection off → mock | $label | $o_rps | $o_p50 | $o_p99 | direct | $(ratio "$o_rps" "$d_rps") | $(ratio "$o_p50" "$d_p50") | $(ratio "$o_p99" "$d_p99") |"
  else
    echo "| gateway, inspection off → mock | $label | $o_rps | $o_p50 | $o_p99 | — | | | |"
  fi
  echo "| gateway, default pack → mock | $label | $i_rps | $i_p50 | $i_p99 | inspection off, same body | $(ratio "$i_rps" "$o_rps") | $(ratio "$i_p50" "$o_p50") | $(ratio "$i_p99" "$o_p99") |"
done
