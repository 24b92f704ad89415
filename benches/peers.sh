#!/usr/bin/env bash
# promptgate side by side with what a platform team would pick instead, in one run on this machine: the same
# 4 KB chat body and the same mock upstream (`promptgate mock`) through
#   direct      client → mock, no gateway (the floor)
#   nginx       proxy_pass, 1 worker, a keep-alive upstream pool, bodies kept in memory, buffered access log
#   promptgate  inspection off + audit off, and the default rule pack + audit on (its default configuration)
#   LiteLLM     proxy (pip, pinned), 1 worker, one model routed to the mock as an OpenAI-compatible base
#   Portkey     gateway (npm, pinned), routed by its x-portkey-provider / x-portkey-custom-host headers
# Each gateway runs alone on CPU 0 (taskset; started before and stopped after its own measurements), wrk,
# the mocks and the stream client on the other CPU(s). Per gateway: saturated req/s (wrk, CONNECTIONS
# connections, DURATION) and its ratio to nginx; the gateway's CPU per request (its process tree's user +
# system time from /proc over the measured wrk run ÷ requests); latency at c=1 (wrk -c1: p50 / p99) and what
# it adds over direct; streamed time to first token (benches/ttft.py: to the first `data:` event carrying
# content, median of TTFT_SAMPLES) from a second mock that paces its deltas TOKEN_MS apart, and what it adds
# over direct. Every request must answer 200 and every stream must deliver the same text as direct.
#
# LiteLLM and Portkey are installed into PEERS_CACHE (a venv; an npm prefix) on first use; nginx with apt if
# missing. A peer that cannot be installed or started is skipped with a note, and the script still exits 0.
# Network needed on a fresh machine: the Debian, PyPI and npm registries. Not a test: it asserts nothing about
# speed, only that every answer arrived.
#
#   bash benches/peers.sh                               # 10 s per load run, 32 connections, 20 ms tokens
#   DURATION=3s TTFT_SAMPLES=5 bash benches/peers.sh    # a short look
set -euo pipefail
cd "$(dirname "$0")/.."

PIN=${PIN:-1}
PEERS_CACHE=${PEERS_CACHE:-$HOME/.cache/promptgate-peers}
# Pinned peers. LiteLLM: a recent release whose `proxy` extra resolves from PyPI here (the later ones checked
# pin litellm-proxy / litellm-proxy-extras / litellm-enterprise builds the registry does not serve). Portkey: the current
# release, with @hono/node-server held at the version the gateway's own repository patches (its package
# range lets npm pick a newer one, and with that one every streamed answer fails: Portkey-AI/gateway#1389).
LITELLM_VERSION=${LITELLM_VERSION:-1.108.7}
PORTKEY_VERSION=${PORTKEY_VERSION:-1.15.2}
PORTKEY_HONO_NODE_SERVER=${PORTKEY_HONO_NODE_SERVER:-1.13.5}
TOKEN_MS=${TOKEN_MS:-20}
TOKEN_CHUNKS=${TOKEN_CHUNKS:-17}
TTFT_SAMPLES=${TTFT_SAMPLES:-15}
START_TIMEOUT=${START_TIMEOUT:-180}
# A Python or Node peer saturated by 32 connections queues requests for longer than wrk's 2 s default.
WRK_TIMEOUT=${WRK_TIMEOUT:-10s}
source benches/common.sh
mkdir -p "$PEERS_CACHE"
LOAD_AT_START=$(cut -d' ' -f1-3 /proc/loadavg)

# The paced mock: the same answer text, cut in TOKEN_CHUNKS deltas of ~4 bytes (token-sized), TOKEN_MS apart.
STREAM_PORT=$(port)
"${PIN_HELPER[@]}" "$MOCK_BIN" mock --listen "127.0.0.1:$STREAM_PORT" --threads 1 --delay-ms "$TOKEN_MS" \
  --chunks "$TOKEN_CHUNKS" >/dev/null 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$STREAM_PORT/v1/models"
make_body 4096 "" >"$WORK/body4k.json"

note() { echo "peers: $*" >&2; NOTES+=("$*"); }
NOTES=()

# measure KEY → the results of the peer just started (PEER_URL, PEER_PID, PEER_LUA: wrk script text setting
# its extra headers; PEER_STREAM_URL, PEER_STREAM_MODEL, PEER_HEADERS: the stream client's), or 1 if a run failed.
declare -A LABEL RPS CPU P50 P99 TTFT TTFT_RANGE TEXT
measure() {
  local key=$1 out rps cpu p50 p99 ttft lo hi text
  out=$(run_wrk "$key-load" "$PEER_URL" "$WORK/body4k.json" "$PEER_LUA" "$PEER_PID") || return 1
  read -r rps _ _ cpu <<<"$out"
  out=$(CONNECTIONS=1 run_wrk "$key-c1" "$PEER_URL" "$WORK/body4k.json" "$PEER_LUA") || return 1
  read -r _ p50 p99 <<<"$out"
  out=$("${PIN_HELPER[@]}" python3 benches/ttft.py "$PEER_STREAM_URL" "$TTFT_SAMPLES" "$PEER_STREAM_MODEL" \
    "${PEER_HEADERS[@]}") || return 1
  read -r ttft lo hi text <<<"$out"
  RPS[$key]=$rps CPU[$key]=$cpu P50[$key]=$p50 P99[$key]=$p99 TTFT[$key]=$ttft TTFT_RANGE[$key]="$lo–$hi" TEXT[$key]=$text
}

ORDER=()
run_peer() { # run_peer KEY LABEL START_FUNCTION: start, measure, stop; a failure skips the peer with a note.
  local key=$1 p
  LABEL[$key]=$2
  PEER_PID="" PEER_STREAM_MODEL=gpt-4o-mini
  if ! "$3"; then
    note "$2 skipped: ${SKIP_WHY:-it did not start}"
  elif ! measure "$key"; then
    note "$2 skipped: a measurement failed (see the lines above)"
  else
    ORDER+=("$key")
  fi
  [ -n "$PEER_PID" ] && stop "$PEER_PID"
  for p in "${PEER_EXTRA_PIDS[@]}"; do stop "$p"; done
  PEER_EXTRA_PIDS=()
  SKIP_WHY=""
  return 0
}
PEER_EXTRA_PIDS=()
PEER_HEADERS=()

# --- direct: no gateway; the mocks themselves.
start_direct() {
  PEER_URL="http://127.0.0.1:$MOCK_PORT" PEER_STREAM_URL="http://127.0.0.1:$STREAM_PORT" PEER_LUA="" PEER_HEADERS=()
}

# --- nginx (benches/common.sh configures it): two servers in one nginx, one per mock.
start_nginx_peer() {
  start_nginx "$MOCK_PORT" "$STREAM_PORT" || { SKIP_WHY=$NGINX_WHY; return 1; }
  PEER_PID=$NGINX_PID PEER_URL=${NGINX_URLS[0]} PEER_STREAM_URL=${NGINX_URLS[1]} PEER_LUA="" PEER_HEADERS=()
}

# --- promptgate: one gateway per mock (the load one is the measured process).
start_promptgate() { # start_promptgate EXTRA_TOML
  local extra=$1
  start_gateway "pg$RANDOM" "$extra"
  PEER_PID=$GW_PID PEER_URL=$GW_URL
  MOCK_PORT=$STREAM_PORT start_gateway "pg$RANDOM" "$extra"
  PEER_EXTRA_PIDS=("$GW_PID") PEER_STREAM_URL=$GW_URL PEER_LUA="" PEER_HEADERS=()
}
start_promptgate_bare() { start_promptgate "[inspect]
enabled = false
[audit]
enabled = false"; }
start_promptgate_default() { start_promptgate ""; }

# --- LiteLLM proxy: a venv in the cache; two models (one per mock); a master key, because it refuses to
# start without one; no database (spend logs, keys and budgets need one); the bundled model cost map instead
# of fetching it at start; LITELLM_LOG=ERROR. Its usage telemetry is off by default in this version.
LITELLM_KEY=sk-$(python3 -c 'import secrets; print(secrets.token_hex(24))')
start_litellm() {
  local venv=$PEERS_CACHE/litellm-$LITELLM_VERSION p
  if [ ! -f "$venv/.installed" ]; then
    rm -rf "$venv"
    { python3 -m venv "$venv" && "$venv/bin/pip" install -q "litellm[proxy]==$LITELLM_VERSION"; } \
      >"$WORK/litellm-install.log" 2>&1 ||
      { SKIP_WHY="pip install litellm[proxy]==$LITELLM_VERSION failed: $(brief "$WORK/litellm-install.log" 1)"; return 1; }
    touch "$venv/.installed"
  fi
  p=$(port)
  cat >"$WORK/litellm.yaml" <<YAML
model_list:
  - model_name: gpt-4o-mini
    litellm_params: { model: openai/gpt-4o-mini, api_base: "http://127.0.0.1:$MOCK_PORT/v1", api_key: sk-mock }
  - model_name: gpt-4o-mini-paced
    litellm_params: { model: openai/gpt-4o-mini, api_base: "http://127.0.0.1:$STREAM_PORT/v1", api_key: sk-mock }
general_settings:
  master_key: $LITELLM_KEY
YAML
  (cd "$WORK" && unset DATABASE_URL && LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_LOG=ERROR exec "${PIN_GW[@]}" \
    "$venv/bin/litellm" --config "$WORK/litellm.yaml" --host 127.0.0.1 --port "$p" --num_workers 1 \
    >"$WORK/litellm.log" 2>&1) &
  PEER_PID=$!
  wait_up "http://127.0.0.1:$p/health/liveliness" "$PEER_PID" ||
    { SKIP_WHY="LiteLLM did not start: $(brief "$WORK/litellm.log" 3)"; return 1; }
  PEER_URL="http://127.0.0.1:$p" PEER_STREAM_URL="http://127.0.0.1:$p"
  PEER_LUA="wrk.headers[\"authorization\"] = \"Bearer $LITELLM_KEY\""
  PEER_HEADERS=("authorization:Bearer $LITELLM_KEY") PEER_STREAM_MODEL=gpt-4o-mini-paced
}

# --- Portkey gateway: the npm package in the cache, started headless (no console UI, no log stream); a
# small preload binds its listener to loopback (it listens on every address otherwise). Routed per request.
start_portkey() {
  local dir=$PEERS_CACHE/portkey-$PORTKEY_VERSION p
  if ! command -v npm >/dev/null; then SKIP_WHY="node/npm not installed"; return 1; fi
  if [ ! -f "$dir/.installed" ]; then
    rm -rf "$dir"; mkdir -p "$dir"
    cat >"$dir/package.json" <<JSON
{
  "private": true,
  "dependencies": { "@portkey-ai/gateway": "$PORTKEY_VERSION" },
  "overrides": { "@hono/node-server": "$PORTKEY_HONO_NODE_SERVER" }
}
JSON
    (cd "$dir" && npm install --no-audit --no-fund --ignore-scripts) >"$WORK/portkey-install.log" 2>&1 ||
      { SKIP_WHY="npm install @portkey-ai/gateway@$PORTKEY_VERSION failed: $(brief "$WORK/portkey-install.log" 2)"; return 1; }
    touch "$dir/.installed"
  fi
  cat >"$WORK/loopback.mjs" <<'JS'
import net from 'node:net';
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === 'number') args.splice(1, 0, '127.0.0.1');
  return listen.apply(this, args);
};
JS
  p=$(port)
  "${PIN_GW[@]}" node --import "$WORK/loopback.mjs" "$dir/node_modules/@portkey-ai/gateway/build/start-server.js" \
    --port="$p" --headless >"$WORK/portkey.log" 2>&1 &
  PEER_PID=$!
  wait_up "http://127.0.0.1:$p/" "$PEER_PID" ||
    { SKIP_WHY="Portkey did not start: $(brief "$WORK/portkey.log" 3)"; return 1; }
  PEER_URL="http://127.0.0.1:$p" PEER_STREAM_URL="http://127.0.0.1:$p"
  PEER_LUA="wrk.headers[\"x-portkey-provider\"] = \"openai\"
wrk.headers[\"x-portkey-custom-host\"] = \"http://127.0.0.1:$MOCK_PORT/v1\"
wrk.headers[\"authorization\"] = \"Bearer sk-mock\""
  PEER_HEADERS=("x-portkey-provider:openai" "x-portkey-custom-host:http://127.0.0.1:$STREAM_PORT/v1")
}

run_peer direct "direct → mock" start_direct
run_peer nginx "nginx" start_nginx_peer
run_peer pg-bare "promptgate, inspection off, audit off" start_promptgate_bare
run_peer pg-default "promptgate, default pack, audit on" start_promptgate_default
run_peer litellm "LiteLLM" start_litellm
run_peer portkey "Portkey" start_portkey

# Versions, as run.
V_NGINX=$("$NGINX" -v 2>&1 | sed 's/^nginx version: nginx\///') || true
V_PG="$("$BIN" --version | cut -d' ' -f2) ($(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
V_LITELLM=$("$PEERS_CACHE/litellm-$LITELLM_VERSION/bin/python" -c 'import importlib.metadata as m; print(m.version("litellm"))' 2>/dev/null || echo "not installed")
V_PORTKEY=$(node -p "require('$PEERS_CACHE/portkey-$PORTKEY_VERSION/node_modules/@portkey-ai/gateway/package.json').version" 2>/dev/null || echo "not installed")
V_NODE=$(node --version 2>/dev/null || echo none)

ms_added() { python3 -c "print(f'{($1 - $2) * 1000:+.0f}')"; }
echo "# promptgate side by side ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, load average at start $LOAD_AT_START)"
echo
echo "wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION (after a 2 s warm-up) and -c1 -d$DURATION, $(wc -c <"$WORK/body4k.json" | tr -d ' ') B chat body;"
echo "streams: $TOKEN_CHUNKS deltas $TOKEN_MS ms apart, TTFT median of $TTFT_SAMPLES. PIN=$PIN (gateway on CPU 0, wrk + mocks + client on the rest)."
echo "Versions: promptgate $V_PG, nginx $V_NGINX, LiteLLM $V_LITELLM (Python $(python3 -c 'import platform; print(platform.python_version())')), Portkey gateway $V_PORTKEY (Node $V_NODE)."
echo
echo "| path | req/s (c=$CONNECTIONS) | ÷ nginx | CPU µs/req | req/s per core | gateway core busy | p50 c=1 ms | p99 c=1 ms | added p50 µs | added p99 µs | TTFT ms (min–max) | added TTFT ms |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for key in "${ORDER[@]}"; do
  ratio="—"
  if [ -n "${RPS[nginx]:-}" ]; then ratio=$(python3 -c "print(f'{${RPS[$key]} / ${RPS[nginx]}:.2f}')"); fi
  cpu=${CPU[$key]:-—} busy="—" per_core="—"
  # CPU per request × requests per second: how much of its core the gateway used under load (near 100 %: the
  # gateway was the bound; well under: wrk and the mock on the other core were).
  # One core's worth of CPU ÷ CPU per request: what the gateway would serve with a core to itself.
  if [ -n "${CPU[$key]:-}" ]; then
    busy=$(python3 -c "print(f'{${CPU[$key]} * ${RPS[$key]} / 1e4:.0f} %')")
    per_core=$(python3 -c "print(f'{1e6 / ${CPU[$key]}:.0f}')")
  fi
  added50="—" added99="—" addttft="—"
  if [ "$key" != direct ] && [ -n "${P50[direct]:-}" ]; then
    added50=$(ms_added "${P50[$key]}" "${P50[direct]}")
    added99=$(ms_added "${P99[$key]}" "${P99[direct]}")
    addttft=$(python3 -c "print(f'{${TTFT[$key]} - ${TTFT[direct]}:+.1f}')")
  fi
  ttft="${TTFT[$key]} (${TTFT_RANGE[$key]})"
  if [ -n "${TEXT[direct]:-}" ] && [ "${TEXT[$key]}" != "${TEXT[direct]}" ]; then ttft="$ttft, text differs"; fi
  echo "| ${LABEL[$key]} | ${RPS[$key]} | $ratio | $cpu | $per_core | $busy | ${P50[$key]} | ${P99[$key]} | $added50 | $added99 | $ttft | $addttft |"
done
for n in "${NOTES[@]}"; do echo; echo "Note: $n"; done
exit 0
