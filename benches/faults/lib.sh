#!/usr/bin/env bash
# Shared by the fault scripts (`source benches/faults/lib.sh` from the repository root). Unlike
# benches/common.sh it builds nothing by default and starts no gateway: each fault script restarts, kills or
# reconfigures its gateway itself, so it gets the pieces instead — ports, readiness, a config writer, the
# mock upstream, a chat body, a metric reader.
#
# Knobs shared by every script:
#   BIN=path/to/promptgate   the gateway under test (default: $CARGO_TARGET_DIR/release/promptgate, else
#                            target/release/promptgate); the mock is the same binary.
#   BUILD=1                  run `cargo build --release --bin promptgate` first.
#   KEEP=1                   keep the temporary directory (configs, logs, audit files) and print its path.
set -euo pipefail

if [ "${BUILD:-0}" = 1 ]; then cargo build --release --quiet --bin promptgate; fi
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/promptgate}
if [ ! -x "$BIN" ]; then echo "no gateway binary at $BIN (build it, or set BIN= / BUILD=1)" >&2; exit 2; fi
for tool in curl python3; do
  command -v "$tool" >/dev/null || { echo "$tool is required" >&2; exit 2; }
done

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  local p
  # Only processes still children of this shell: a pid of one killed earlier may have been reused since.
  for p in "${PIDS[@]}"; do
    if [ "$(ps -o ppid= -p "$p" 2>/dev/null | tr -d ' ')" = "$$" ]; then kill "$p" 2>/dev/null || true; fi
  done
  wait 2>/dev/null || true
  if [ "${KEEP:-0}" = 1 ]; then echo "kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_http URL [TRIES]: 0 once URL answers 2xx, 1 after TRIES × 50 ms (default 10 s).
wait_http() {
  local i
  for i in $(seq 1 "${2:-200}"); do curl -sf -o /dev/null "$1" && return 0; sleep 0.05; done
  return 1
}

# start_mock: the mock upstream on an ephemeral port → MOCK_URL.
start_mock() {
  local mp
  mp=$(port)
  "$BIN" mock --listen "127.0.0.1:$mp" --threads "${MOCK_THREADS:-1}" >/dev/null 2>&1 &
  PIDS+=($!)
  MOCK_URL="http://127.0.0.1:$mp"
  wait_http "$MOCK_URL/v1/models" || { echo "mock upstream did not start" >&2; exit 1; }
}

# gateway_config FILE TOML: writes a gateway config with fresh listen/admin ports (→ GW_URL, ADMIN_URL),
# the mock as upstream, and TOML appended (whole sections; it must not repeat [server] or [upstream]).
# SERVER_EXTRA and UPSTREAM_EXTRA (environment): lines added to those two sections, e.g.
# UPSTREAM_EXTRA="read_timeout_ms = 30000".
gateway_config() {
  local file=$1 extra=$2 gp ap
  gp=$(port); ap=$(port)
  GW_URL="http://127.0.0.1:$gp"
  ADMIN_URL="http://127.0.0.1:$ap"
  cat >"$file" <<TOML
[server]
listen = "127.0.0.1:$gp"
admin = "127.0.0.1:$ap"
threads = ${GW_THREADS:-2}
grace_period_seconds = 1
${SERVER_EXTRA:-}

[upstream]
url = "$MOCK_URL"
${UPSTREAM_EXTRA:-}

$extra
TOML
}

# launch_gateway CONFIG LOG: starts the gateway in the background → GW_PID (not waited for).
launch_gateway() {
  RUST_LOG=${RUST_LOG:-warn} "$BIN" run --config "$1" >/dev/null 2>>"$2" &
  GW_PID=$!
  PIDS+=($GW_PID)
}

# metric NAME_WITH_LABELS: the value of one series on /metrics (0 when absent).
metric() {
  curl -sf "$ADMIN_URL/metrics" | awk -v m="$1" '$1 == m { print $2; found = 1 } END { if (!found) print 0 }'
}

# make_body SIZE PLANT: a chat body of about SIZE bytes of prose, with PLANT (if any) in the middle.
make_body() {
  python3 - "$1" "${2:-}" <<'PY'
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

# need_wrk: installs wrk (Debian package) when missing.
need_wrk() {
  command -v wrk >/dev/null 2>&1 && return 0
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wrk >/dev/null
}

# verdict NAME OK(0/1) DETAIL: one row of the result table; a failed row makes the script exit 1 at the end.
FAILED=0
verdict() {
  local mark=pass
  if [ "$2" != 1 ]; then mark=FAIL; FAILED=1; fi
  printf '| %s | %s | %s |\n' "$1" "$mark" "$3"
}
