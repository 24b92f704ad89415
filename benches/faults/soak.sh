#!/usr/bin/env bash
# Soak: DURATION of steady, moderate mixed load through one gateway, sampling its resident memory.
# The mix, in turn on each connection's requests: a non-streamed chat completion (4 KB, clean), a streamed one
# (the mock streams 20 chunks 5 ms apart: x-mock-chunks / x-mock-delay-ms), one that gets redacted (an
# email), one that gets blocked (an AWS key id → 409), and an embeddings request.
# The gateway's VmRSS (/proc/PID/status; its RssAnon / RssFile split too) and open file descriptors are sampled
# every SAMPLE seconds.
# Properties:
#   - RSS after the warm-up stays within ±BAND of the first sample after it (min / max / first / last and a
#     table over time reported);
#   - no failed request beyond the expected 409s: every answer 200 or 409, no socket error, and no more 409s
#     than blocked requests sent (nor fewer than that minus the requests in flight when wrk stopped).
#
#   bash benches/faults/soak.sh                  # 30 minutes
#   DURATION=5m bash benches/faults/soak.sh       # a short validation run
#
# Knobs: DURATION (wrk's form: 30s, 5m, 1h; default 30m), WARMUP (seconds excluded from the band; default a
# third of DURATION, at least 60),
# SAMPLE (seconds between samples, default 10), BAND (default 0.10), CONNECTIONS (default 12) and DELAY_MS
# (each connection waits this long before each request, default 20: at most CONNECTIONS × 1000 / DELAY_MS
# requests a second — about 300 with the streams' own time, moderate on purpose: a soak looks for growth
# over time, not for the ceiling), MIX (the request kinds taken in turn, default clean,stream,redact,block,embed:
# a subset tells which kind a growth follows), AUDIT (1 — the default — or 0: decision events off),
# GW_THREADS (default 2), plus BIN / BUILD / KEEP (see lib.sh).
# Audit is on (fsync always) with 16 MiB segments and 4 kept, so rotation and removal run too.
set -euo pipefail
cd "$(dirname "$0")/../.."
source benches/faults/lib.sh
need_wrk

DURATION=${DURATION:-30m}
# The warm-up: the first third of the run, at least 60 s. The gateway's RSS climbs for several minutes under
# load before it levels off (RELIABILITY.md §4), so a fixed minute would measure the climb, not a leak.
DURATION_S=$(python3 -c "import sys; d = sys.argv[1]; print(int(float(d[:-1]) * {'s': 1, 'm': 60, 'h': 3600}[d[-1]]) if d[-1] in 'smh' else int(d))" "$DURATION")
WARMUP=${WARMUP:-$(( DURATION_S / 3 > 60 ? DURATION_S / 3 : 60 ))}
SAMPLE=${SAMPLE:-10}
BAND=${BAND:-0.10}
CONNECTIONS=${CONNECTIONS:-12}
DELAY_MS=${DELAY_MS:-20}
MIX=${MIX:-clean,stream,redact,block,embed}
AUDIT=${AUDIT:-1}
case ",$MIX," in *,redact,*) WANT_REDACT=1 ;; *) WANT_REDACT=0 ;; esac
FAULTS=benches/faults/faults.py

start_mock
gateway_config "$WORK/gw.toml" "[audit]
enabled = $([ "$AUDIT" = 1 ] && echo true || echo false)
dir = \"$WORK/audit\"
max_file_bytes = 16777216
keep_files = 4"
launch_gateway "$WORK/gw.toml" "$WORK/gw.log"
wait_http "$ADMIN_URL/healthz" || { echo "gateway did not start:"; cat "$WORK/gw.log"; exit 1; } >&2

make_body 4096 "" >"$WORK/clean.json"
python3 -c "import json,sys; b=json.load(open(sys.argv[1])); b['stream']=True; print(json.dumps(b), end='')" "$WORK/clean.json" >"$WORK/stream.json"
make_body 4096 "please email jane.doe@example.com" >"$WORK/redact.json"
make_body 4096 "my key is AKIAIOSFODNN7EXAMPLE" >"$WORK/block.json"
printf '{"model":"text-embedding-3-small","input":["the quarterly report covers revenue growth","and the plan for next year"]}' >"$WORK/embed.json"

cat >"$WORK/soak.lua" <<LUA
local function slurp(name) local f = io.open("$WORK/" .. name .. ".json", "rb"); local s = f:read("*a"); f:close(); return s end
local json_h = {["content-type"] = "application/json"}
local stream_h = {["content-type"] = "application/json", ["x-mock-chunks"] = "20", ["x-mock-delay-ms"] = "5"}
local kinds = {
  clean = {"/v1/chat/completions", json_h, slurp("clean")},
  stream = {"/v1/chat/completions", stream_h, slurp("stream")},
  redact = {"/v1/chat/completions", json_h, slurp("redact")},
  block = {"/v1/chat/completions", json_h, slurp("block")},
  embed = {"/v1/embeddings", json_h, slurp("embed")},
}
local reqs = {}
for name in string.gmatch("$MIX", "[^,]+") do table.insert(reqs, kinds[name]) end
local i = 0
sent_block = 0
s200 = 0
s409 = 0
sother = 0
redacted = 0
local threads = {}
setup = function(thread) table.insert(threads, thread) end
delay = function() return $DELAY_MS end
request = function()
  i = i + 1
  local r = reqs[(i % #reqs) + 1]
  if r == kinds.block then sent_block = sent_block + 1 end
  return wrk.format("POST", r[1], r[2], r[3])
end
response = function(status, headers, body)
  if status == 200 then s200 = s200 + 1 elseif status == 409 then s409 = s409 + 1 else sother = sother + 1 end
  local d = headers["x-promptgate-decision"] or headers["X-Promptgate-Decision"]
  if d == "redact" or d == "redacted" then redacted = redacted + 1 end
end
done = function(summary, latency, requests)
  local t = {sent_block = 0, s200 = 0, s409 = 0, sother = 0, redacted = 0}
  for _, th in ipairs(threads) do
    for k, _ in pairs(t) do t[k] = t[k] + th:get(k) end
  end
  local e = summary.errors
  io.write(string.format("SOAK %d %.1f %d %d %d %d %d %d %.1f %.1f\n", summary.requests,
    summary.requests / (summary.duration / 1e6), t.s200, t.s409, t.sother, t.sent_block, t.redacted,
    e.connect + e.read + e.write + e.timeout, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
LUA

fds_before=$(ls "/proc/$GW_PID/fd" | wc -l)
python3 "$FAULTS" rss --pid "$GW_PID" --out "$WORK/rss.txt" --every "$SAMPLE" &
SAMPLER=$!
PIDS+=($SAMPLER)
cpu0=$(awk '{print $14 + $15}' "/proc/$GW_PID/stat")
wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --timeout 10s -s "$WORK/soak.lua" "$GW_URL" >"$WORK/wrk.out" 2>&1 || true
cpu1=$(awk '{print $14 + $15}' "/proc/$GW_PID/stat")
fds_after=$(ls "/proc/$GW_PID/fd" | wc -l)
kill "$SAMPLER" 2>/dev/null || true
wait "$SAMPLER" 2>/dev/null || true
decisions=$(curl -sf "$ADMIN_URL/metrics" | awk '/^promptgate_requests_total/ { split($1, a, "decision=\""); split(a[2], b, "\""); n[b[1]] += $2 } END { for (k in n) printf "%s %d, ", k, n[k] }')

read -r _ requests rps s200 s409 sother sent_block redacted sockerr p50 p99 < <(grep '^SOAK' "$WORK/wrk.out" || echo "SOAK 0 0 0 0 0 0 0 0 0 0")
echo "# soak ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $DURATION (warm-up ${WARMUP}s), wrk -c$CONNECTIONS with ${DELAY_MS} ms between requests per connection, gateway threads=${GW_THREADS:-2}, mix $MIX, audit $([ "$AUDIT" = 1 ] && echo on || echo off))"
echo
echo "$requests requests, $rps req/s, p50 $p50 ms, p99 $p99 ms; gateway CPU $(python3 -c "print(f'{($cpu1 - $cpu0) / $(getconf CLK_TCK):.0f}')") s;" \
  "open fds $fds_before → $fds_after; decisions (gateway metrics): ${decisions%, }"
echo
rc=0
python3 "$FAULTS" rss-report "$WORK/rss.txt" --warmup "$WARMUP" --band "$BAND" || rc=1
echo
echo "| property | verdict | figures |"
echo "|---|---|---|"
verdict "RSS within ±$(python3 -c "print(int($BAND * 100))") % after warm-up" "$([ "$rc" = 0 ] && echo 1)" "see the table above"
verdict "no failed request beyond the expected 409s" "$([ "$requests" -gt 0 ] && [ "$sother" = 0 ] && [ "$sockerr" = 0 ] && [ "$s409" -le "$sent_block" ] && [ "$s409" -ge $((sent_block - CONNECTIONS)) ] && { [ "$WANT_REDACT" = 0 ] || [ "$redacted" -gt 0 ]; } && echo 1)" \
  "200: $s200, 409: $s409 (blocked requests sent: $sent_block), other: $sother, socket errors: $sockerr; answers marked redacted: $redacted"
exit "$FAILED"
