#!/usr/bin/env bash
# Two builds of the gateway side by side, same run, same mock, same config: BASE_BIN (e.g. a build of an
# earlier commit) against this build, in alternating rounds (the order flips each round). Reports each
# round, the overall req/s ratio this ÷ base and each gateway's CPU time per request (its process, all
# threads, from /proc), with inspection on (default pack) and off, 4 KB chat body.
#
#   BASE_BIN=/path/to/old/promptgate PIN=1 ROUNDS=4 DURATION=6s bash benches/versus.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-4}
source benches/common.sh
: "${BASE_BIN:?set BASE_BIN to the promptgate binary to compare against}"

make_body 4096 "" >"$WORK/body4k.json"
echo "# promptgate: this build vs $BASE_BIN ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION, $ROUNDS rounds, PIN=$PIN)"
for mode in on off; do
  extra=""
  if [ "$mode" = off ]; then extra="[inspect]
enabled = false"; fi
  start_gateway "base-$mode" "$extra" "$BASE_BIN"
  BASE_URL=$GW_URL
  PID_A=$GW_PID
  start_gateway "this-$mode" "$extra"
  THIS_URL=$GW_URL
  PID_B=$GW_PID
  echo
  echo "## inspection $mode"
  echo
  compare_rounds "base" "$BASE_URL" "this" "$THIS_URL" "$WORK/body4k.json"
done
