#!/usr/bin/env bash
# Fair while streaming: an echo client's latency on a server that is also receiving large
# uploads, against the same client on the same server idle. The probe is `resound bench echo -c 1
# --rate 1000` (open loop: latency from each message's intended send time) on CPU 1 at nice -5;
# the server on CPU 0; the uploads (`resound send` of SIZE_MIB, one after the other, each under a
# new name) share the server's CPU at nice 19, so that the probe's core measures the server and
# not a busy neighbour (on loopback the sender's softirq work runs on the sender's core).
#
# usage: benches/file_fairness.sh [SIZE_MIB (1024)] [PROBES (3)]
# environment: BIN=path (default target/release/resound); DIR=path where the server stores the
# uploads (default: a temporary directory under /tmp). With DIR on tmpfs (/dev/shm) the writes
# only fill the page cache; on a disk, writeback throttling can stall the loop's write(2), and
# every other client with it (the price of synchronous disk writes on the loop's thread).
# Prints each probe's p99 idle and during the uploads, and the medians.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
size_mib=${1:-1024}
probes=${2:-3}
bin=${BIN:-$PWD/target/release/resound}
[[ -x $bin ]] || { echo "build first: cargo build --release" >&2; exit 2; }

work=$(mktemp -d /tmp/resound-fairness.XXXXXX)
server_pid="" uploads_pid=""
cleanup() {
    [[ -z $uploads_pid ]] || kill "$uploads_pid" 2>/dev/null || true
    pkill -f "send $work/payload.bin" 2>/dev/null || true
    [[ -z $server_pid ]] || kill "$server_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
head -c $((size_mib << 20)) /dev/urandom > "$work/payload.bin"
recv=${DIR:-$work/recv}
mkdir -p "$recv"
taskset -c 0 "$bin" serve --files 127.0.0.1:0 --echo 127.0.0.1:0 --dir "$recv" \
    > "$work/server.out" 2> "$work/server.err" &
server_pid=$!
echo_addr=$(listening_addr "$work/server.out" echo)
files_addr=$(listening_addr "$work/server.out" files)

p99() { # one probe: its p99 in µs
    taskset -c 1 nice -n -5 "$bin" bench echo -t "$echo_addr" -c 1 --rate 1000 -d 3 -q 2>&1 |
        grep -oE 'p99 [0-9]+' | awk '{ print $2 }'
}
idle=(); busy=()
for _ in $(seq "$probes"); do idle+=("$(p99)"); done
(
    i=0
    while true; do
        i=$((i + 1))
        taskset -c 0 nice -n 19 "$bin" send "$work/payload.bin" --to "$files_addr" --name "up$i" \
            -q > /dev/null 2>&1 || true
        rm -f "$recv/up$i"
    done
) &
uploads_pid=$!
for _ in $(seq "$probes"); do busy+=("$(p99)"); done
stored=$(grep -c stored "$work/server.err" || true)
echo "echo p99 (µs), idle:            ${idle[*]}"
echo "echo p99 (µs), during uploads:  ${busy[*]}   ($stored uploads of $size_mib MiB stored meanwhile)"
printf 'medians: idle %s, during uploads %s: %.2fx\n' "$(median "${idle[@]}")" "$(median "${busy[@]}")" \
    "$(echo "$(median "${busy[@]}") / $(median "${idle[@]}")" | bc -l)"
