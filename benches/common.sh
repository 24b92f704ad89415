#!/usr/bin/env bash
# Shared by the load scripts (`source benches/common.sh`): installs wrk when missing, builds the gateway,
# starts the mock upstream, and defines start_gateway / start_nginx / wait_up / stop / cpu_ticks / make_body /
# run_wrk.
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
WRK_THREADS=${WRK_THREADS:-1}
GW_THREADS=${GW_THREADS:-1}
# wrk counts a request unanswered after this long as an error (and run_wrk fails on any error).
WRK_TIMEOUT=${WRK_TIMEOUT:-2s}

if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
if ! command -v wrk >/dev/null 2>&1; then
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wrk >/dev/null
fi
bash .ci/setup >/dev/null
cargo build --release --quiet
# BIN: the gateway under test (default: this build); the mock is always this build's.
MOCK_BIN=${CARGO_TARGET_DIR:-target}/release/promptgate
BIN=${BIN:-$MOCK_BIN}
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 1 200); do curl -sf -o /dev/null "$1" && return 0; sleep 0.05; done; echo "not ready: $1" >&2; exit 1; }

# PIN=1: the gateway (with its writer and webhook threads) runs on CPU 0, and wrk, the mock and helpers on
# the other CPUs, so a ratio measures the gateway's own cost rather than its helpers' competition for cores.
# (Command prefixes, not functions: a background function would leave `$!` naming a subshell, not the process.)
PIN=${PIN:-0}
PIN_GW=()
PIN_HELPER=()
if [ "$PIN" = 1 ]; then PIN_GW=(taskset -c 0); PIN_HELPER=(taskset -c "1-$(( $(nproc) - 1 ))"); fi

MOCK_PORT=$(port)
# MOCK_ARGS: more flags for the mock, e.g. `--echo` (every answer carries the request back: answers as large as
# the bodies sent).
read -r -a MOCK_EXTRA <<<"${MOCK_ARGS:-}"
"${PIN_HELPER[@]}" "$MOCK_BIN" mock --listen "127.0.0.1:$MOCK_PORT" --threads 1 "${MOCK_EXTRA[@]}" >/dev/null 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$MOCK_PORT/v1/models"

# start_gateway NAME EXTRA_TOML [BINARY] → sets GW_URL, GW_ADMIN (the admin address's URL) and GW_PID. Each gateway gets its own audit directory
# unless EXTRA_TOML configures [audit] (one gateway per directory). The gateway forwards to the mock
# (`--upstream`) unless EXTRA_TOML configures its own [[upstream]] pools (the flag would replace their URLs).
start_gateway() {
  local name=$1 extra=$2 bin=${3:-$BIN} gp ap
  local upstream=(--upstream "http://127.0.0.1:$MOCK_PORT")
  if [[ $extra == *"[[upstream]]"* ]]; then upstream=(); fi
  gp=$(port); ap=$(port)
  if [[ $extra != *"[audit]"* ]]; then extra="$extra
[audit]
dir = \"$WORK/$name-audit\""; fi
  printf '[server]\nthreads = %s\ngrace_period_seconds = 1\n%s\n' "$GW_THREADS" "$extra" >"$WORK/$name.toml"
  RUST_LOG=error "${PIN_GW[@]}" "$bin" run --config "$WORK/$name.toml" --listen "127.0.0.1:$gp" --admin "127.0.0.1:$ap" \
    "${upstream[@]}" >/dev/null 2>"$WORK/$name.log" &
  GW_PID=$!
  PIDS+=($GW_PID)
  wait_http "http://127.0.0.1:$ap/healthz"
  GW_URL="http://127.0.0.1:$gp"
  GW_ADMIN="http://127.0.0.1:$ap"
}

# cpu_ticks PID → user + system CPU time so far, in clock ticks, of the process (all its threads: workers, the
# audit writer, the webhook) and of its descendants — live ones, and reaped ones through their parents' children
# times — so a server that forks workers (as Python and Node servers may) is measured whole.
cpu_ticks() {
  python3 - "$1" <<'PY'
import os, sys
parent, ticks = {}, {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    except OSError:
        continue  # exited while we looked
    parent[int(pid)] = int(rest[1])
    ticks[int(pid)] = sum(int(x) for x in rest[11:15])  # utime, stime, cutime, cstime
tree, todo = set(), [int(sys.argv[1])]
while todo:
    p = todo.pop()
    tree.add(p)
    todo.extend(c for c, pp in parent.items() if pp == p and c not in tree)
print(sum(ticks.get(p, 0) for p in tree))
PY
}

# wait_up URL PID → 0 once URL answers anything over HTTP, 1 if PID died or START_TIMEOUT (s) passed first.
wait_up() {
  local deadline=$((SECONDS + ${START_TIMEOUT:-60}))
  while ((SECONDS < deadline)); do
    curl -s -o /dev/null "$1" && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.2
  done
  return 1
}

# stop PID: ends the process and whatever it forked (nginx's worker, a Python server's children). The parent
# first (so nginx's master does not replace a worker it sees die), then the children listed before it went.
stop() {
  local child children
  children=$(pgrep -P "$1" || true)
  kill "$1" 2>/dev/null || true
  for child in $children; do stop "$child"; done
  wait "$1" 2>/dev/null || true
}

brief() { tail -n "${2:-1}" "$1" | tr '\n' ' ' | cut -c1-240; } # brief FILE [LINES]: a log's last words, for a note

# start_nginx UPSTREAM_PORT… → the reference proxy: one nginx (installed with apt when missing), pinned like a
# gateway (PIN_GW), with one server per upstream port, each a proxy_pass to 127.0.0.1:PORT. Sets NGINX_PID and
# NGINX_URLS (one URL per upstream port, in order); returns 1 with NGINX_WHY set when it cannot install or
# start. Configured as a production proxy would be, and as fairly as we can: one worker, a keep-alive pool to
# the upstream, bodies kept in memory, a buffered access log, streamed answers passed as they arrive.
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
start_nginx() {
  NGINX_WHY="" NGINX_URLS=() NGINX_PID=""
  if [ ! -x "$NGINX" ]; then
    $SUDO apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nginx-light >"$WORK/nginx-install.log" 2>&1 ||
      { NGINX_WHY="apt-get install nginx-light failed: $(brief "$WORK/nginx-install.log" 1)"; return 1; }
    NGINX=$(command -v nginx || echo /usr/sbin/nginx)
  fi
  local dir up p i=0 upstreams="" servers=""
  dir=$(mktemp -d "$WORK/nginx.XXXX")
  mkdir -p "$dir/logs"
  for up in "$@"; do
    p=$(port)
    upstreams+="  upstream u$i { server 127.0.0.1:$up; keepalive 64; }"$'\n'
    servers+="  server { listen 127.0.0.1:$p; location / { proxy_pass http://u$i; } }"$'\n'
    NGINX_URLS+=("http://127.0.0.1:$p")
    i=$((i + 1))
  done
  cat >"$dir/nginx.conf" <<NGINX
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/logs/error.log error;
events { worker_connections 4096; }
http {
  # One line per request, written in 64 KB batches (at least every second), as a production proxy would log.
  access_log $dir/logs/access.log combined buffer=64k flush=1s;
  # Bodies up to 1 MB stay in memory: never a temp file for the benchmarks' bodies (64 KB at most).
  client_body_buffer_size 1m;
  client_max_body_size 1m;
  client_body_temp_path $dir/body; proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi; uwsgi_temp_path $dir/uwsgi; scgi_temp_path $dir/scgi;
$upstreams
  # Streamed answers pass through as they arrive (what an SSE proxy needs); keep-alive both ways.
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  proxy_buffering off;
$servers}
NGINX
  "${PIN_GW[@]}" "$NGINX" -p "$dir" -c "$dir/nginx.conf" -e "$dir/logs/error.log" -g 'daemon off;' \
    >"$dir/stderr.log" 2>&1 &
  NGINX_PID=$!
  PIDS+=("$NGINX_PID")
  wait_up "${NGINX_URLS[0]}/" "$NGINX_PID" || { NGINX_WHY="nginx did not start: $(brief "$dir/stderr.log" 2)"; return 1; }
}

# make_body SIZE PLANT: a chat body of about SIZE bytes of prose, with PLANT (if any) in the middle.
make_body() {
  python3 - "$1" "$2" <<'PY'
import json, sys
size, plant = int(sys.argv[1]), sys.argv[2]
words = "the quarterly report covers revenue growth across regions and the plan for next year ".split()
text, i = [], 0
while len(" ".join(text)) < size - 120 - len(plant):
    text.append(words[i % len(words)]); i += 1
if plant:
    text.insert(len(text) // 2, plant)
print(json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": " ".join(text)}]}), end="")
PY
}

# run_wrk NAME URL BODYFILE [LUA] [PID] → prints "rps p50_ms p99_ms", and with PID a fourth field: the CPU
# time process PID spent per request over the measured run (µs; warm-up excluded). LUA: extra script text
# (e.g. a `request` function that varies headers). WARMUP: the warm-up run's length (default 2s; 0: none).
run_wrk() {
  local name=$1 url=$2 body=$3 extra=${4:-} pid=${5:-}
  cat >"$WORK/$name.lua" <<LUA
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
local f = io.open("$body", "rb"); wrk.body = f:read("*a"); f:close()
-- Any answer but 200 counts as a failure (wrk's own status errors count only 4xx and 5xx). The count lives in
-- each thread's Lua state; done() runs in the main one and reads it through the threads setup() kept.
bad = 0
local threads = {}
setup = function(thread) table.insert(threads, thread) end
response = function(status, headers, body) if status ~= 200 then bad = bad + 1 end end
done = function(summary, latency, requests)
  local failed = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  for _, t in ipairs(threads) do failed = failed + t:get("bad") end
  io.write(string.format("RESULT %.1f %.3f %.3f %d %d\n", summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, failed, summary.requests))
end
$extra
LUA
  # A short warm-up fills connection pools and caches.
  if [ "${WARMUP:-2s}" != 0 ]; then
    "${PIN_HELPER[@]}" wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${WARMUP:-2s}" -s "$WORK/$name.lua" \
      "$url/v1/chat/completions" >/dev/null
  fi
  local out before=0 after=0
  [ -n "$pid" ] && before=$(cpu_ticks "$pid")
  out=$("${PIN_HELPER[@]}" wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$DURATION" --timeout "$WRK_TIMEOUT" -s "$WORK/$name.lua" \
    "$url/v1/chat/completions" | grep '^RESULT')
  [ -n "$pid" ] && after=$(cpu_ticks "$pid")
  read -r _ rps p50 p99 errors total <<<"$out"
  if [ "$errors" != "0" ]; then echo "$name: $errors of $total requests failed" >&2; exit 1; fi
  if [ -n "$pid" ]; then
    echo "$rps $p50 $p99 $(python3 -c "print(f'{($after - $before) * 1e6 / $(getconf CLK_TCK) / $total:.1f}')")"
  else
    echo "$rps $p50 $p99"
  fi
}


# compare_rounds LABEL_A URL_A LABEL_B URL_B BODYFILE [LUA]: ROUNDS alternating rounds of A and B (the order
# flips each round, so neither side always gets the warmer slot); prints a table and the overall B ÷ A ratio.
# With PID_A and PID_B set (the two gateways' processes), also each side's CPU time per request.
compare_rounds() {
  local la=$1 ua=$2 lb=$3 ub=$4 body=$5 lua=${6:-} sum_a=0 sum_b=0 cpu_a=0 cpu_b=0 r
  local pa=${PID_A:-} pb=${PID_B:-}
  if [ -n "$pa" ]; then
    echo "| round | $la req/s | p50 ms | p99 ms | CPU µs/req | $lb req/s | p50 ms | p99 ms | CPU µs/req | req/s ratio ($lb ÷ $la) |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  else
    echo "| round | $la req/s | p50 ms | p99 ms | $lb req/s | p50 ms | p99 ms | req/s ratio ($lb ÷ $la) |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
  fi
  for r in $(seq 1 "${ROUNDS:-2}"); do
    if (( r % 2 )); then
      read -r a_rps a_p50 a_p99 a_cpu < <(run_wrk "a-$r" "$ua" "$body" "$lua" "$pa")
      read -r b_rps b_p50 b_p99 b_cpu < <(run_wrk "b-$r" "$ub" "$body" "$lua" "$pb")
    else
      read -r b_rps b_p50 b_p99 b_cpu < <(run_wrk "b-$r" "$ub" "$body" "$lua" "$pb")
      read -r a_rps a_p50 a_p99 a_cpu < <(run_wrk "a-$r" "$ua" "$body" "$lua" "$pa")
    fi
    if [ -n "$pa" ]; then
      echo "| $r | $a_rps | $a_p50 | $a_p99 | $a_cpu | $b_rps | $b_p50 | $b_p99 | $b_cpu | $(python3 -c "print(f'{$b_rps/$a_rps:.3f}')") |"
      cpu_a=$(python3 -c "print($cpu_a + $a_cpu)"); cpu_b=$(python3 -c "print($cpu_b + $b_cpu)")
    else
      echo "| $r | $a_rps | $a_p50 | $a_p99 | $b_rps | $b_p50 | $b_p99 | $(python3 -c "print(f'{$b_rps/$a_rps:.3f}')") |"
    fi
    sum_a=$(python3 -c "print($sum_a + $a_rps)"); sum_b=$(python3 -c "print($sum_b + $b_rps)")
  done
  echo
  echo "overall req/s ratio, $lb ÷ $la: $(python3 -c "print(f'{$sum_b/$sum_a:.3f}')")"
  if [ -n "$pa" ]; then
    echo "mean CPU per request: $la $(python3 -c "print(f'{$cpu_a/${ROUNDS:-2}:.1f}')") µs, $lb $(python3 -c "print(f'{$cpu_b/${ROUNDS:-2}:.1f}')") µs, ratio $lb ÷ $la: $(python3 -c "print(f'{$cpu_b/$cpu_a:.3f}')")"
  fi
}
