#!/usr/bin/env bash
# Soak: ~9000 connections with churn and traffic for several minutes against one
# `resound serve`, sampling the server's memory and descriptors. The server must end where it
# started: RSS flat while the load is steady, no descriptor leaked once the load is gone, and no
# error reported by any load generator.
#
# usage: benches/soak.sh [SECONDS (300)]
# needs: a release build (cargo build --release), taskset.
#
# Load, each its own `resound bench` process (one process stays under the 20000-descriptor limit):
#   idle       8100 connections held for the whole run
#   echo        500 connections, 5000 messages/s in total (open loop)
#   broadcast   400 receivers + 2 senders, 200 lines/s (80 000 deliveries/s)
#   connect     20 at a time, 1000 connect/echo/close cycles per second
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-300}
bin=$PWD/target/release/resound
[[ -x $bin ]] || { echo "build first: cargo build --release" >&2; exit 2; }

work=$(mktemp -d /tmp/resound-soak.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    [[ -n ${server:-} ]] && kill "$server" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
echo_port=$(free_port)
bcast_port=$(free_port)
taskset -c 0 "$bin" serve --echo "127.0.0.1:$echo_port" --broadcast "127.0.0.1:$bcast_port" \
    --stats-interval 10 > "$work/server.out" 2> "$work/server.err" &
server=$!
for _ in $(seq 100); do [[ $(grep -c listening "$work/server.out") == 2 ]] && break; sleep 0.05; done

rss() { awk '/^VmRSS/ {print $2}' "/proc/$server/status"; }
fds() { ls "/proc/$server/fd" | wc -l; }
fds_before=$(fds)
rss_before=$(rss)
echo "server pid $server: ${rss_before} KiB RSS, $fds_before descriptors before the load"

run_bench() { # name, args...
    local name=$1; shift
    taskset -c 1 "$bin" bench "$@" --quiet --json > "$work/$name.json" 2> "$work/$name.err" &
    pids+=($!)
}
run_bench idle idle -t "127.0.0.1:$echo_port" -c 8100 -d "$secs" --warmup 0 --connect-rate 5000
run_bench echo echo -t "127.0.0.1:$echo_port" -c 500 --rate 5000 -d "$secs"
run_bench broadcast broadcast -t "127.0.0.1:$bcast_port" -c 400 --senders 2 --rate 200 -d "$secs"
run_bench connect connect -t "127.0.0.1:$echo_port" -c 20 --connect-rate 1000 -d "$secs"

printf '%8s %10s %8s %8s\n' "t (s)" "RSS (KiB)" "fds" "conns"
samples=()
start=$(date +%s)
while :; do
    sleep 10
    t=$(( $(date +%s) - start ))
    conns=$(grep -o 'conns=[0-9]*' "$work/server.err" | tail -1 | cut -d= -f2)
    r=$(rss); f=$(fds)
    printf '%8d %10d %8d %8s\n' "$t" "$r" "$f" "${conns:-?}"
    # Steady state: after the first minute (setup and warm-up), before the load ends.
    if (( t >= 60 && t <= secs )); then samples+=("$r"); fi
    alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    (( alive )) || break
done

status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
for name in idle echo broadcast connect; do
    printf '%-10s ' "$name"
    python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
print("%10d ops  %10.0f/s  errors %d  open %d" % (r["ops"], r["throughput_per_sec"], r["errors"], r["open"]))
' "$work/$name.json" || { cat "$work/$name.err"; status=1; }
done

# Once every client is gone the server must be back to its own descriptors.
for _ in $(seq 50); do (( $(fds) == fds_before )) && break; sleep 0.2; done
fds_after=$(fds)
rss_after=$(rss)
min=$(printf '%s\n' "${samples[@]}" | sort -n | head -1)
max=$(printf '%s\n' "${samples[@]}" | sort -n | tail -1)
echo "steady-state RSS: min $min KiB, max $max KiB (spread $(( max - min )) KiB over ${#samples[@]} samples)"
echo "after the load: $rss_after KiB RSS, $fds_after descriptors (before: $fds_before)"
grep -E 'stats:' "$work/server.err" | tail -1
(( fds_after == fds_before )) || { echo "descriptor leak: $fds_before -> $fds_after" >&2; status=1; }
if grep -q -E 'ERROR|panicked' "$work/server.err"; then
    grep -E 'ERROR|panicked' "$work/server.err" >&2
    status=1
fi
exit $status
