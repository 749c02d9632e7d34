#!/usr/bin/env bash
# Throughput of one large file over loopback: `resound send` into `resound serve --files`, next to
# `cat FILE | nc` into `nc -l > out`, alternating, in the same run. Receivers are pinned to CPU 0,
# senders to CPU 1. Prints each run and the medians.
#
# usage: benches/file_transfer.sh [SIZE_MIB (1024)] [RUNS (5)]
# needs: a release build (cargo build --release), OpenBSD netcat (nc), taskset, sha256sum.
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}
runs=${2:-5}
bin=$PWD/target/release/resound
[[ -x $bin ]] || { echo "build first: cargo build --release" >&2; exit 2; }
command -v nc >/dev/null || { echo "needs nc (Debian: netcat-openbsd)" >&2; exit 2; }

work=$(mktemp -d /tmp/resound-filebench.XXXXXX)
server_pid=""
cleanup() {
    [[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

src=$work/payload.bin
head -c $((size_mib << 20)) /dev/urandom > "$src"
cat "$src" > /dev/null # in the page cache for both contenders

# A free port: bind 0, print it, close.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }

mkdir -p "$work/received"
port=$(free_port)
taskset -c 0 "$bin" serve --files "127.0.0.1:$port" --dir "$work/received" \
    > "$work/server.out" 2> "$work/server.err" &
server_pid=$!
for _ in $(seq 100); do grep -q listening "$work/server.out" && break; sleep 0.05; done

resound_times=()
nc_times=()
for run in $(seq "$runs"); do
    rm -f "$work/received/payload.bin"
    t0=$(now)
    taskset -c 1 "$bin" send "$src" --to "127.0.0.1:$port" --quiet > /dev/null
    t1=$(now)
    resound_times+=("$(echo "$t1 - $t0" | bc -l)")

    nport=$(free_port)
    rm -f "$work/nc.out"
    taskset -c 0 nc -l 127.0.0.1 "$nport" > "$work/nc.out" &
    nc_pid=$!
    for _ in $(seq 100); do ss -ltn "sport = :$nport" | grep -q LISTEN && break; sleep 0.02; done
    t0=$(now)
    taskset -c 1 bash -c "cat '$src' | nc -N 127.0.0.1 $nport"
    wait "$nc_pid"
    t1=$(now)
    nc_times+=("$(echo "$t1 - $t0" | bc -l)")
    cmp -s "$src" "$work/nc.out" || { echo "nc run $run: output differs" >&2; exit 1; }
    printf 'run %d: resound %.3f s, nc %.3f s\n' "$run" "${resound_times[-1]}" "${nc_times[-1]}"
done
cmp -s "$src" "$work/received/payload.bin" || { echo "resound: stored file differs" >&2; exit 1; }

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
r=$(median "${resound_times[@]}")
n=$(median "${nc_times[@]}")
awk -v r="$r" -v n="$n" -v mib="$size_mib" 'BEGIN {
    printf "median of %d MiB: resound send %.3f s (%.0f MiB/s), cat|nc %.3f s (%.0f MiB/s); resound/nc throughput %.2fx\n",
        mib, r, mib / r, n, mib / n, n / r
}'
