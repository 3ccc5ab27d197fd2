#!/bin/bash
# What an OpenCode costs in memory and time under agent work, with the environment given.
#
#   bench/opencode-memory/run.sh LABEL [VAR=VALUE ...]
#   e.g. bench/opencode-memory/run.sh gc-1g BUN_JSC_forceRAMSize=1073741824
#
# Starts the pinned OpenCode (node_modules/.bin/opencode, `npm install` first) directly with a
# home of its own and a stand-in model (mock_model.py), sends ten prompts in new sessions one
# after the other (each reply 2000 chunks, about 100 KB), and prints the time they took, the
# CPU OpenCode used, its peak RSS (VmHWM) and its RSS 15 s later. Before the prompts it
# measures an instance as a person who has it open leaves it: the web UI loaded, a session
# and a terminal created, 15 s to settle (RSS of OpenCode and the terminal's shell). Everything
# it starts is ended when it exits. See bench/RESULTS.md for what was measured with it.
set -euo pipefail
label=${1:?usage: run.sh LABEL [VAR=VALUE ...]}
shift
here=$(cd "$(dirname "$0")" && pwd)
opencode=$here/../../node_modules/.bin/opencode
[ -x "$opencode" ] || { echo "run.sh: $opencode not found; run npm install first" >&2; exit 2; }
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

python3 "$here/mock_model.py" 2000 > "$work/model.port" &
pids+=($!)
until [ -s "$work/model.port" ]; do sleep 0.1; done
model=$(head -1 "$work/model.port")

mkdir -p "$work/home/work"
config='{"model":"mock/m1","small_model":"mock/m1","provider":{"mock":{"npm":"@ai-sdk/openai-compatible","options":{"baseURL":"http://127.0.0.1:'$model'/v1","apiKey":"unused"},"models":{"m1":{}}}}}'
(cd "$work/home/work" && exec env -i PATH=/usr/bin:/bin HOME="$work/home" \
    OPENCODE_SERVER_PASSWORD=bench OPENCODE_CONFIG_CONTENT="$config" "$@" \
    "$opencode" serve --hostname 127.0.0.1 --port 0 --pure) > "$work/opencode.log" 2>&1 &
pid=$!
pids+=($pid)
for _ in $(seq 1 600); do grep -q "listening on" "$work/opencode.log" && break; sleep 0.1; done
addr=$(grep -o '127.0.0.1:[0-9]*' "$work/opencode.log" | head -1)
[ -n "$addr" ] || { echo "run.sh: OpenCode did not start:" >&2; cat "$work/opencode.log" >&2; exit 1; }
api() { curl -sf -u opencode:bench -H 'content-type: application/json' "$@"; }
api "http://$addr/global/health" > /dev/null

# Every process of the instance: OpenCode and what it started (the terminal's shell).
tree_rss() {
    local total=0 p
    for p in $(pgrep -P "$1") ; do total=$((total + $(tree_rss "$p"))); done
    echo $((total + $(awk '/^Rss/ {print $2}' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0)))
}
curl -sf -u opencode:bench "http://$addr/" > /dev/null
api -X POST -d '{}' "http://$addr/session" > /dev/null
api -X POST -d '{}' "http://$addr/pty" > /dev/null
sleep 15
open=$(tree_rss "$pid")
shells=$(pgrep -P "$pid" | wc -l)

ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
cpu0=$(ticks); t0=$(date +%s%N)
full=0
for i in $(seq 1 10); do
    session=$(api -X POST -d '{}' "http://$addr/session" | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
    api -X POST -d '{"parts":[{"type":"text","text":"write a long answer"}]}' \
        "http://$addr/session/$session/message" > "$work/reply$i.json"
    grep -q word1999 "$work/reply$i.json" && full=$((full + 1))
done
cpu1=$(ticks); t1=$(date +%s%N)
peak=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
sleep 15
after=$(awk '/^Rss/ {print $2}' "/proc/$pid/smaps_rollup")
hz=$(getconf CLK_TCK)
echo "$label: open $((open / 1024)) MB ($shells child processes); 10 replies in $(( (t1 - t0) / 1000000 )) ms, CPU $(( (cpu1 - cpu0) * 1000 / hz )) ms," \
    "peak RSS $((peak / 1024)) MB, RSS 15 s later $((after / 1024)) MB, full replies $full/10"
