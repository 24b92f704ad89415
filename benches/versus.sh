#!/usr/bin/env bash
# Two builds of the gateway side by side, same run, same mock, same config: BASE_BIN (e.g. a build of an
# earlier commit) against this build, in alternating rounds (the order flips each round). Reports each
# round and the overall req/s ratio this ÷ base, with inspection on (default pack) and off, 4 KB chat body.
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
  start_gateway "this-$mode" "$extra"
  THIS_URL=$GW_URL
  echo
  echo "## inspection $mode"
  echo
  compare_rounds "base" "$BASE_URL" "this" "$THIS_URL" "$WORK/body4k.json"
done
