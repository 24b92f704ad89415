#!/usr/bin/env bash
# Reload storm: the default rule pack, copied to a temporary directory, is rewritten every 100 ms — two valid
# versions alternating, every 5th write an invalid one — while wrk sends 4 KB chat bodies through the gateway.
# Properties:
#   - no failed request (wrk: every status 200, no socket error);
#   - every audit event names exactly one rules_version, and it is one of the two valid versions;
#   - both valid versions served requests (audit events and the x-promptgate-rules-version header);
#   - the invalid version never went live: refused reloads counted (promptgate_rules_reload_total{result="error"}
#     > 0), and /healthz, polled after every write, only ever named a valid version.
#
#   bash benches/faults/reload_storm.sh
#   DURATION=60 INTERVAL=0.05 WRITE_MODE=inplace bash benches/faults/reload_storm.sh
#
# Knobs: DURATION (seconds of storm, default 20), INTERVAL (seconds between writes, default 0.1),
# RELOAD_DEBOUNCE_MS (the gateway's rules.reload_debounce_ms, default 20: the debounce waits for this much
# quiet after the last change, so at the default 250 ms a write every 100 ms would hold every reload off until
# the storm ends), WRITE_MODE (rename: write a temporary file and rename it over the rule file, as deploy tools
# do — the default; inplace: truncate and rewrite the file), CONNECTIONS (wrk, default 16), GW_THREADS
# (default 2), plus BIN / BUILD / KEEP (see lib.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
source benches/faults/lib.sh
need_wrk

DURATION=${DURATION:-20}
INTERVAL=${INTERVAL:-0.1}
RELOAD_DEBOUNCE_MS=${RELOAD_DEBOUNCE_MS:-20}
WRITE_MODE=${WRITE_MODE:-rename}
CONNECTIONS=${CONNECTIONS:-16}
FAULTS=benches/faults/faults.py

# The three versions of one rule file (pii.toml): as shipped, with one comment more, and with a rule whose
# regex does not compile (the file still parses, so the reload gets as far as validation).
mkdir -p "$WORK/rules" "$WORK/versions"
cp -r rules/. "$WORK/rules/"
cp rules/pii.toml "$WORK/versions/a.toml"
{ cat rules/pii.toml; printf '\n# reload storm: version B differs from A by this comment only\n'; } >"$WORK/versions/b.toml"
{ cat rules/pii.toml; printf '\n[[rule]]\nid = "storm.invalid"\ndescription = "does not compile"\nregex = { pattern = %s }\naction = "block"\n' "'(unclosed'"; } >"$WORK/versions/invalid.toml"

# The versions as `promptgate check` names them: A and B must pass, the invalid one must not.
version_of() {
  rm -rf "$WORK/check" && cp -r "$WORK/rules" "$WORK/check" && cp "$WORK/versions/$1.toml" "$WORK/check/pii.toml"
  "$BIN" check "$WORK/check" | sed -n 's/.*version \([0-9a-f]*\) .*/\1/p'
}
V_A=$(version_of a)
V_B=$(version_of b)
if [ -z "$V_A" ] || [ -z "$V_B" ] || [ "$V_A" = "$V_B" ]; then echo "versions A/B not usable: '$V_A' '$V_B'" >&2; exit 2; fi
if version_of invalid | grep -q .; then echo "the invalid version passes promptgate check" >&2; exit 2; fi

start_mock
gateway_config "$WORK/gw.toml" "[rules]
dir = \"$WORK/rules\"
watch = true
reload_debounce_ms = $RELOAD_DEBOUNCE_MS

[audit]
dir = \"$WORK/audit\""
launch_gateway "$WORK/gw.toml" "$WORK/gw.log"
wait_http "$ADMIN_URL/healthz" || { echo "gateway did not start:"; cat "$WORK/gw.log"; exit 1; } >&2

make_body 4096 "" >"$WORK/body.json"
cat >"$WORK/storm.lua" <<LUA
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
local f = io.open("$WORK/body.json", "rb"); wrk.body = f:read("*a"); f:close()
bad = 0
a = 0
b = 0
other = 0
local threads = {}
setup = function(thread) table.insert(threads, thread) end
response = function(status, headers, body)
  if status ~= 200 then bad = bad + 1 end
  local v = headers["x-promptgate-rules-version"] or headers["X-Promptgate-Rules-Version"]
  if v == "$V_A" then a = a + 1 elseif v == "$V_B" then b = b + 1 else other = other + 1 end
end
done = function(summary, latency, requests)
  local t = {bad = 0, a = 0, b = 0, other = 0}
  for _, th in ipairs(threads) do
    for k, _ in pairs(t) do t[k] = t[k] + th:get(k) end
  end
  local e = summary.errors
  io.write(string.format("WRK %d %d %d %d %d %d %.1f\n", summary.requests, t.bad + e.status,
    e.connect + e.read + e.write + e.timeout, t.a, t.b, t.other, latency:percentile(99) / 1000))
end
LUA

before_err=$(metric 'promptgate_rules_reload_total{result="error"}')
wrk -t1 -c"$CONNECTIONS" -d"$((DURATION + 2))s" -s "$WORK/storm.lua" "$GW_URL/v1/chat/completions" >"$WORK/wrk.out" &
WRK_PID=$!
sleep 1
python3 "$FAULTS" storm-writer --target "$WORK/rules/pii.toml" --a "$WORK/versions/a.toml" --b "$WORK/versions/b.toml" \
  --invalid "$WORK/versions/invalid.toml" --admin "$ADMIN_URL" --duration "$DURATION" --interval "$INTERVAL" \
  --mode "$WRITE_MODE" >"$WORK/writer.out"
wait "$WRK_PID"
sleep 1
reload_ok=$(metric 'promptgate_rules_reload_total{result="ok"}')
reload_unchanged=$(metric 'promptgate_rules_reload_total{result="unchanged"}')
reload_err=$(( $(metric 'promptgate_rules_reload_total{result="error"}') - before_err ))
final_live=$(python3 -c "import json,urllib.request; print(json.load(urllib.request.urlopen('$ADMIN_URL/healthz'))['rules']['version'])")
# SIGTERM: the audit writer drains its queue before the gateway exits.
kill -TERM "$GW_PID"; wait "$GW_PID" || true
python3 "$FAULTS" events "$WORK/audit" >"$WORK/events.out"

read -r _ requests failed sockerr hdr_a hdr_b hdr_other p99 < <(grep "^WRK" "$WORK/wrk.out" || echo "WRK 0 0 0 0 0 0 0")
kv() { awk -v k="$1" '$1 == k { print $2 }' "$2"; }
ev_a=$(awk -v v="$V_A" '$1 == "version" && $2 == v { print $3 }' "$WORK/events.out"); ev_a=${ev_a:-0}
ev_b=$(awk -v v="$V_B" '$1 == "version" && $2 == v { print $3 }' "$WORK/events.out"); ev_b=${ev_b:-0}
ev_total=$(kv total "$WORK/events.out")
ev_bad=$(kv malformed "$WORK/events.out")
ev_other=$(awk -v a="$V_A" -v b="$V_B" '$1 == "version" && $2 != a && $2 != b { n += $3 } END { print n + 0 }' "$WORK/events.out")
live_other=$(awk -v a="$V_A" -v b="$V_B" '$1 == "live" && $2 != a && $2 != b { n += $3 } END { print n + 0 }' "$WORK/writer.out")
live_polls=$(awk '$1 == "live" { n += $3 } END { print n + 0 }' "$WORK/writer.out")

echo "# reload storm ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, ${DURATION}s, a write every ${INTERVAL}s ($WRITE_MODE), debounce ${RELOAD_DEBOUNCE_MS} ms, wrk -c$CONNECTIONS)"
echo
echo "version A $V_A, version B $V_B; writes: A $(kv writes_a "$WORK/writer.out"), B $(kv writes_b "$WORK/writer.out"), invalid $(kv writes_invalid "$WORK/writer.out");" \
  "reloads: ok $reload_ok, unchanged $reload_unchanged, error $reload_err; wrk: $requests requests, p99 $p99 ms"
echo
echo "| property | verdict | figures |"
echo "|---|---|---|"
verdict "no failed request" "$([ "$failed" = 0 ] && [ "$sockerr" = 0 ] && [ "$requests" -gt 0 ] && echo 1)" "$requests requests, $failed non-200, $sockerr socket errors"
verdict "every event names one valid rules_version" "$([ "$ev_bad" = 0 ] && [ "$ev_other" = 0 ] && [ "$ev_total" -gt 0 ] && echo 1)" "$ev_total events, $ev_bad malformed, $ev_other with another version"
verdict "both valid versions served" "$([ "$ev_a" -gt 0 ] && [ "$ev_b" -gt 0 ] && [ "$hdr_a" -gt 0 ] && [ "$hdr_b" -gt 0 ] && echo 1)" "events A $ev_a / B $ev_b; response headers A $hdr_a / B $hdr_b / other $hdr_other"
verdict "invalid version refused" "$([ "$reload_err" -gt 0 ] && echo 1)" "promptgate_rules_reload_total{result=\"error\"} +$reload_err"
verdict "live version always valid" "$([ "$live_other" = 0 ] && [ "$hdr_other" = 0 ] && [ "$live_polls" -gt 0 ] && case $final_live in "$V_A"|"$V_B") echo 1;; esac)" "$live_polls /healthz polls, $live_other naming another version; live at the end: $final_live"
exit "$FAILED"
