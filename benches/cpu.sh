#!/usr/bin/env bash
# CPU per request against nginx, in one run: what each request costs the gateway, beside nginx proxy_pass, at
# 1 KB, 4 KB and 64 KB chat bodies, with this build and (BASE_BIN) another in the same table. Paths, all to the
# same mock upstream (`promptgate mock --threads 1`) with the same bodies (`make_body SIZE`):
#   direct       client → mock, no gateway (the floor for latency)
#   nginx        proxy_pass (benches/common.sh start_nginx: 1 worker, keep-alive pool, bodies in memory,
#                buffered access log)
#   promptgate   `threads = 1`, four configurations named inspection/audit: off/off, off/on, on/off, on/on
#                (inspection off: `[inspect] enabled = false`; audit off: `[audit] enabled = false`; on/on is
#                the shipped default: the default rule pack, decision events to the JSONL file, fsync always,
#                in its own temporary directory)
# Each gateway runs alone on CPU 0 (taskset; started before and stopped after its own measurements), wrk and
# the mock on the other CPU(s). Per path and body size: req/s at c=CONNECTIONS (wrk, after a 2 s warm-up); the
# gateway's CPU per request (its process tree's user + system time from /proc over the measured run ÷
# requests) and its ratio to nginx's at that size; latency at c=1 (wrk -c1, LAT_DURATION: p50 / p99) and what
# it adds over direct. Every request must answer 200: the script fails otherwise. Not a test: it asserts
# nothing about speed.
#
# BASE_BIN: also runs the four promptgate configurations with that binary ("promptgate (base) …" rows). Each
# configuration's two builds run back to back, which one first alternating from one configuration to the next,
# and every even round runs the whole sequence in reverse, so drift over the run does not favour one side.
# ROUNDS: repeat everything; each cell is the median over rounds (CPU shows its min–max beside it).
# PATHS: which paths run (default all: "direct nginx off-off off-on on-off on-on").
# PROFILE=CONFIG (off-off … on-on, or base-on-on etc. for BASE_BIN): after that configuration's measured runs,
# one more wrk run (c=CONNECTIONS, DURATION, body PROFILE_SIZE, default 4096) under `perf record` attached to
# the gateway, outside the table. Writes to OUT (default $CARGO_TARGET_DIR/cpu-bench): perf.data, perf.folded
# (stacks folded, one line per stack), perf-top.txt (the top 40 functions by self time) and, when
# inferno-flamegraph is installed (`cargo install inferno`), perf.svg. PROFILE_CALLGRAPH: perf's --call-graph
# mode (default dwarf: the release build keeps no frame pointers, so `fp` stacks lose most callers).
# PROFILE_FREQ: samples per second (default 997; a 8 s run writes ~60 MB of dwarf stacks).
# Symbols: the release profile keeps line tables (`debug = "line-tables-only"`) and does not strip, so function
# names and dwarf unwinding work on a plain `cargo build --release`; see BENCHMARKS.md §18.
#
#   bash benches/cpu.sh                                             # ~5 min: 6 paths × 3 sizes × 15 s
#   BASE_BIN=/path/to/older/promptgate bash benches/cpu.sh          # ~8 min: before and after, one table
#   PROFILE=on-on PATHS=on-on SIZES=4096 bash benches/cpu.sh        # a profile of the shipped default at 4 KB
set -euo pipefail
cd "$(dirname "$0")/.."

PIN=${PIN:-1}
DURATION=${DURATION:-8s}
LAT_DURATION=${LAT_DURATION:-5s}
SIZES=${SIZES:-1024 4096 65536}
ROUNDS=${ROUNDS:-1}
PATHS=${PATHS:-direct nginx off-off off-on on-off on-on}
BASE_BIN=${BASE_BIN:-}
PROFILE=${PROFILE:-}
PROFILE_SIZE=${PROFILE_SIZE:-4096}
PROFILE_CALLGRAPH=${PROFILE_CALLGRAPH:-dwarf}
PROFILE_FREQ=${PROFILE_FREQ:-997}
source benches/common.sh
OUT=${OUT:-${CARGO_TARGET_DIR:-target}/cpu-bench}
mkdir -p "$OUT"
LOAD_AT_START=$(cut -d' ' -f1-3 /proc/loadavg)

die() { echo "cpu.sh: $*" >&2; exit 1; }
CONFIGS=(off-off off-on on-off on-on)
for p in $PATHS; do
  case $p in direct | nginx | off-off | off-on | on-off | on-on) ;; *) die "unknown path '$p' in PATHS" ;; esac
done
if [ -n "$BASE_BIN" ] && [ ! -x "$BASE_BIN" ]; then die "BASE_BIN=$BASE_BIN is not an executable"; fi
if [ -n "$PROFILE" ]; then
  case $PROFILE in
    off-off | off-on | on-off | on-on) [[ " $PATHS " == *" $PROFILE "* ]] || die "PROFILE=$PROFILE is not in PATHS" ;;
    base-*)
      if [ -z "$BASE_BIN" ] || [[ " $PATHS " != *" ${PROFILE#base-} "* ]]; then
        die "PROFILE=$PROFILE needs BASE_BIN and ${PROFILE#base-} in PATHS"
      fi
      ;;
    *) die "PROFILE=$PROFILE: expected one of ${CONFIGS[*]}, or base-<one of them>" ;;
  esac
  [[ " $SIZES " == *" $PROFILE_SIZE "* ]] || SIZES="$SIZES $PROFILE_SIZE"
  command -v perf >/dev/null || die "PROFILE needs perf (apt-get install linux-perf)"
fi

for size in $SIZES; do make_body "$size" "" >"$WORK/body-$size.json"; done

# config_toml CONFIG → the gateway's extra configuration (start_gateway gives audit, when on, its own directory).
config_toml() {
  case $1 in
    off-off) printf '[inspect]\nenabled = false\n[audit]\nenabled = false\n' ;;
    off-on) printf '[inspect]\nenabled = false\n' ;;
    on-off) printf '[audit]\nenabled = false\n' ;;
    on-on) printf '' ;;
  esac
}
label() {
  case $1 in
    direct) echo "direct → mock" ;;
    nginx) echo "nginx" ;;
    base-*) local c=${1#base-}; echo "promptgate (base) ${c/-//}" ;;
    *) echo "promptgate ${1/-//}" ;;
  esac
}

# The sequence of one round: direct and nginx, then each configuration, its two builds back to back, the
# build that goes first alternating from one configuration to the next.
SEQUENCE=()
for p in direct nginx; do
  if [[ " $PATHS " == *" $p "* ]]; then SEQUENCE+=("$p"); fi
done
i=0
for c in "${CONFIGS[@]}"; do
  [[ " $PATHS " == *" $c "* ]] || continue
  if [ -z "$BASE_BIN" ]; then SEQUENCE+=("$c")
  elif ((i % 2 == 0)); then SEQUENCE+=("$c" "base-$c")
  else SEQUENCE+=("base-$c" "$c"); fi
  i=$((i + 1))
done

# profile KEY URL PID: one wrk run under perf (attached to the gateway's process, on the helper CPUs), then
# the folded stacks, the self-time table and (with inferno) the flame graph.
profile() {
  local key=$1 url=$2 pid=$3 perf_pid out
  echo "cpu.sh: profiling $(label "$key") at $PROFILE_SIZE B (perf --call-graph $PROFILE_CALLGRAPH)" >&2
  "${PIN_HELPER[@]}" perf record -q -F "$PROFILE_FREQ" --call-graph "$PROFILE_CALLGRAPH" -p "$pid" -o "$OUT/perf.data" \
    2>"$WORK/perf-record.log" &
  perf_pid=$!
  sleep 0.5
  # The gateway is warm (its measured runs just ended): no warm-up, so perf sees the measured run only.
  out=$(WARMUP=0 run_wrk "profile" "$url" "$WORK/body-$PROFILE_SIZE.json" "" "$pid") || die "profile run failed"
  kill -INT "$perf_pid"; wait "$perf_pid" || true
  read -r PROFILE_RPS _ _ PROFILE_CPU <<<"$out"
  [ -s "$OUT/perf.data" ] || die "perf wrote no data: $(brief "$WORK/perf-record.log" 3)"
  perf report -i "$OUT/perf.data" --no-children --stdio -g none --sort dso,symbol >"$WORK/perf-report.txt" 2>/dev/null
  # (perf pads each line with empty columns: trimmed.)
  grep -E '^ +[0-9.]+%' "$WORK/perf-report.txt" | head -40 | sed -E 's/([[:space:]]+-)*[[:space:]]*$//' >"$OUT/perf-top.txt" || true
  if command -v inferno-collapse-perf >/dev/null; then
    perf script -i "$OUT/perf.data" 2>/dev/null | inferno-collapse-perf >"$OUT/perf.folded"
  else
    perf script -i "$OUT/perf.data" 2>/dev/null | fold_stacks >"$OUT/perf.folded"
  fi
  if command -v inferno-flamegraph >/dev/null; then
    inferno-flamegraph --title "$(label "$key"), $PROFILE_SIZE B body, c=$CONNECTIONS" <"$OUT/perf.folded" >"$OUT/perf.svg"
  fi
}

# fold_stacks: `perf script` output → one line per distinct stack ("comm;outer;…;inner samples"), the format
# of inferno-collapse-perf and flamegraph.pl's stackcollapse-perf.pl (used when inferno is missing).
fold_stacks() {
  python3 -c '
import collections, re, sys
counts, comm, frames = collections.Counter(), None, []
def flush():
    if comm is not None:
        counts[";".join([comm] + frames[::-1])] += 1
for line in sys.stdin:
    line = line.rstrip("\n")
    if not line.strip():
        flush(); comm, frames = None, []
    elif not line[0].isspace():  # a sample: "comm pid[/tid] time: period event:" (a comm may hold spaces)
        m = re.match(r"(.*?)\s+\d+(?:/\d+)?\s", line)
        comm, frames = (m.group(1) if m else line.split()[0]).replace(" ", "_").replace(";", ":"), []
    else:
        m = re.match(r"\s*[0-9a-f]+\s+(.*?)(\+0x[0-9a-f]+)?\s+\((.*)\)$", line)
        sym = m.group(1) if m else line.strip()
        frames.append((sym if sym != "[unknown]" else "[unknown " + (m.group(3) if m else "?") + "]").replace(";", ":"))
flush()
for stack, n in sorted(counts.items()):
    print(stack, n)
'
}

RAW=$OUT/raw.tsv
printf 'round\tpath\tsize\trps\tcpu_us\tp50_ms\tp99_ms\n' >"$RAW"
PROFILE_RPS="" PROFILE_CPU=""

# measure KEY URL [PID] ROUND: every size at c=CONNECTIONS (with the CPU of PID's tree) and at c=1.
measure() {
  local key=$1 url=$2 pid=$3 round=$4 size out rps cpu p50 p99
  for size in $SIZES; do
    out=$(run_wrk "$key-$size" "$url" "$WORK/body-$size.json" "" "$pid") || die "$(label "$key") at $size B failed"
    read -r rps _ _ cpu <<<"$out"
    # The c=1 run follows the loaded one, so the path is warm: no second warm-up.
    out=$(CONNECTIONS=1 WARMUP=0 DURATION=$LAT_DURATION run_wrk "$key-$size-c1" "$url" "$WORK/body-$size.json") ||
      die "$(label "$key") at $size B, c=1, failed"
    read -r _ p50 p99 <<<"$out"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$key" "$size" "$rps" "${cpu:--}" "$p50" "$p99" >>"$RAW"
  done
}

for round in $(seq 1 "$ROUNDS"); do
  order=("${SEQUENCE[@]}")
  if ((round % 2 == 0)); then
    order=()
    for ((j = ${#SEQUENCE[@]} - 1; j >= 0; j--)); do order+=("${SEQUENCE[j]}"); done
  fi
  for key in "${order[@]}"; do
    echo "cpu.sh: round $round/$ROUNDS, $(label "$key")" >&2
    case $key in
      direct) measure direct "http://127.0.0.1:$MOCK_PORT" "" "$round" ;;
      nginx)
        start_nginx "$MOCK_PORT" || die "$NGINX_WHY"
        measure nginx "${NGINX_URLS[0]}" "$NGINX_PID" "$round"
        stop "$NGINX_PID"
        ;;
      *)
        bin=$BIN
        if [[ $key == base-* ]]; then bin=$BASE_BIN; fi
        start_gateway "$key-r$round" "$(config_toml "${key#base-}")" "$bin"
        measure "$key" "$GW_URL" "$GW_PID" "$round"
        if [ "$key" = "$PROFILE" ] && [ "$round" = 1 ]; then profile "$key" "$GW_URL" "$GW_PID"; fi
        stop "$GW_PID"
        ;;
    esac
  done
done

# The table: medians over rounds, per path and size; sizes in blocks, paths in the order of the first round.
V_NGINX=$("$NGINX" -v 2>&1 | sed 's/^nginx version: nginx\///') || true
V_PG="$("$BIN" --version | cut -d' ' -f2) ($(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD 2>/dev/null || echo ', with changes'))"
V_BASE=""
[ -n "$BASE_BIN" ] && V_BASE=", base $(basename "$BASE_BIN") ($("$BASE_BIN" --version | cut -d' ' -f2))"
{
  echo "# CPU per request against nginx ($(date -u +%Y-%m-%dT%H:%MZ), promptgate $V_PG$V_BASE, $(nproc) cores, load average at start $LOAD_AT_START)"
  echo
  echo "wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION --timeout $WRK_TIMEOUT (after a 2 s warm-up) for req/s and CPU, then wrk -t1 -c1 -d$LAT_DURATION for latency;"
  echo "$ROUNDS round(s), median per cell; PIN=$PIN (each gateway alone on CPU 0, wrk + mock on the rest); nginx $V_NGINX; gateway threads = $GW_THREADS."
  echo "promptgate rows: inspection/audit (on/on = the shipped default: default rule pack, JSONL audit file, fsync always)."
  echo
  python3 - "$RAW" "$ROUNDS" "$CONNECTIONS" "${SEQUENCE[@]}" <<'PY'
import csv, statistics, sys
raw, rounds, connections, order = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
rows = list(csv.DictReader(open(raw), delimiter="\t"))
def label(k):
    if k == "direct": return "direct → mock"
    if k == "nginx": return "nginx"
    if k.startswith("base-"): return "promptgate (base) " + k[5:].replace("-", "/")
    return "promptgate " + k.replace("-", "/")
cell = {}
for r in rows:
    cell.setdefault((r["path"], int(r["size"])), []).append(r)
med = lambda rs, f: statistics.median(float(r[f]) for r in rs)
sizes = sorted({s for _, s in cell})
print("| body | path | req/s (c=%s) | CPU µs/req%s | CPU ÷ nginx | p50 c=1 ms | p99 c=1 ms | added p50 µs | added p99 µs |"
      % (connections, " (min–max)" if rounds > 1 else ""))
print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
for size in sizes:
    nginx = cell.get(("nginx", size))
    direct = cell.get(("direct", size))
    for key in order:
        rs = cell.get((key, size))
        if not rs: continue
        cpu, ratio = "—", "—"
        if rs[0]["cpu_us"] != "-":
            cpu = f"{med(rs, 'cpu_us'):.1f}"
            if rounds > 1:
                vals = [float(r["cpu_us"]) for r in rs]
                cpu += f" ({min(vals):.1f}–{max(vals):.1f})"
            if nginx:
                ratio = f"{med(rs, 'cpu_us') / med(nginx, 'cpu_us'):.2f}"
        a50 = a99 = "—"
        if direct and key != "direct":
            a50 = f"{(med(rs, 'p50_ms') - med(direct, 'p50_ms')) * 1000:+.0f}"
            a99 = f"{(med(rs, 'p99_ms') - med(direct, 'p99_ms')) * 1000:+.0f}"
        kb = f"{size // 1024} KB" if size % 1024 == 0 else f"{size} B"
        print(f"| {kb} | {label(key)} | {med(rs, 'rps'):.0f} | {cpu} | {ratio} | {med(rs, 'p50_ms'):.3f} | {med(rs, 'p99_ms'):.3f} | {a50} | {a99} |")
PY
  if [ -n "$PROFILE" ]; then
    echo
    echo "Profile: $(label "$PROFILE"), $PROFILE_SIZE B body, under perf (outside the table): $PROFILE_RPS req/s, $PROFILE_CPU µs/req."
    echo "Written to $OUT: perf.data, perf.folded, perf-top.txt$([ -s "$OUT/perf.svg" ] && echo ", perf.svg")."
  fi
} | tee "$OUT/table.md"
