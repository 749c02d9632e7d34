#!/usr/bin/env bash
# Throughput and CPU cost of one large file over loopback: `resound send` into
# `resound serve --files`, next to `cat FILE | nc` into `nc -l > out`, alternating, in the same
# run. Receivers are pinned to CPU 0, senders to CPU 1. Prints each run and the medians: wall
# time, and CPU seconds (user + system) per GiB of the sender and of the receiver on each side.
#
# usage: benches/file_transfer.sh [SIZE_MIB (1024)] [RUNS (5)]
# environment:
#   BIN=path        the resound binary (default target/release/resound), e.g. an older build
#   SEND_ARGS=...   extra arguments for `resound send` (e.g. --sendfile on)
#   SERVE_ARGS=...  extra arguments for `resound serve` (e.g. --hash sha256)
#   NC=0            skip the nc runs
# needs: a release build (cargo build --release), OpenBSD netcat (nc), taskset, GNU time.
#
# CPU is what the kernel charges each process (getrusage for the ones that exit, /proc/PID/stat
# for the server, at 10 ms resolution). On loopback, most of TCP's receive path runs in the
# sender's system call, so it is charged to the sender: compare senders with senders.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
size_mib=${1:-1024}
runs=${2:-5}
bin=${BIN:-$PWD/target/release/resound}
send_args=${SEND_ARGS:-}
serve_args=${SERVE_ARGS:-}
with_nc=${NC:-1}
[[ -x $bin ]] || { echo "build first: cargo build --release" >&2; exit 2; }
[[ $with_nc == 0 ]] || command -v nc >/dev/null || { echo "needs nc (Debian: netcat-openbsd)" >&2; exit 2; }
[[ -x /usr/bin/time ]] || { echo "needs GNU time (/usr/bin/time; Debian: time)" >&2; exit 2; }

work=$(mktemp -d /tmp/resound-filebench.XXXXXX)
server_pid=""
cleanup() {
    [[ -z $server_pid ]] || kill "$server_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

src=$work/payload.bin
head -c $((size_mib << 20)) /dev/urandom > "$src"
cat "$src" > /dev/null # in the page cache for both contenders

# user + system seconds from a GNU time output file written with -f '%U %S'.
time_cpu() { awk '{ print $1 + $2 }' "$1"; }
sub() { echo "$1 - $2" | bc -l; }

mkdir -p "$work/received"
# shellcheck disable=SC2086 # word splitting of the extra arguments is intended
taskset -c 0 "$bin" serve --files 127.0.0.1:0 --dir "$work/received" $serve_args \
    > "$work/server.out" 2> "$work/server.err" &
server_pid=$!
addr=$(listening_addr "$work/server.out" files)

r_wall=(); r_send=(); r_recv=(); n_wall=(); n_send=(); n_recv=()
for run in $(seq "$runs"); do
    rm -f "$work/received/payload.bin"
    s0=$(proc_cpu "$server_pid")
    t0=$(now)
    # shellcheck disable=SC2086
    /usr/bin/time -f '%U %S' -o "$work/send.time" \
        taskset -c 1 "$bin" send "$src" --to "$addr" --quiet $send_args > "$work/send.out"
    t1=$(now)
    # The server's CPU is read once it has answered `done`, which `send` waited for.
    s1=$(proc_cpu "$server_pid")
    r_wall+=("$(sub "$t1" "$t0")")
    r_send+=("$(time_cpu "$work/send.time")")
    r_recv+=("$(sub "$s1" "$s0")")
    line=$(printf 'run %d: resound %.3f s (send %.2f s CPU, serve %.2f s CPU)' "$run" \
        "${r_wall[-1]}" "${r_send[-1]}" "${r_recv[-1]}")

    if [[ $with_nc != 0 ]]; then
        nport=$(free_port)
        rm -f "$work/nc.out"
        /usr/bin/time -f '%U %S' -o "$work/nc-recv.time" \
            taskset -c 0 nc -l 127.0.0.1 "$nport" > "$work/nc.out" &
        nc_pid=$!
        for _ in $(seq 100); do ss -ltn "sport = :$nport" | grep -q LISTEN && break; sleep 0.02; done
        t0=$(now)
        /usr/bin/time -f '%U %S' -o "$work/nc-send.time" \
            taskset -c 1 bash -c "cat '$src' | nc -N 127.0.0.1 $nport"
        wait "$nc_pid"
        t1=$(now)
        n_wall+=("$(sub "$t1" "$t0")")
        n_send+=("$(time_cpu "$work/nc-send.time")")
        n_recv+=("$(time_cpu "$work/nc-recv.time")")
        cmp -s "$src" "$work/nc.out" || { echo "nc run $run: output differs" >&2; exit 1; }
        line+=$(printf ' | nc %.3f s (cat|nc %.2f s CPU, nc -l %.2f s CPU)' \
            "${n_wall[-1]}" "${n_send[-1]}" "${n_recv[-1]}")
    fi
    echo "$line"
done
cmp -s "$src" "$work/received/payload.bin" || { echo "resound: stored file differs" >&2; exit 1; }
echo "resound send said: $(cat "$work/send.out")"

summary() { # name wall send recv
    awk -v name="$1" -v w="$2" -v s="$3" -v r="$4" -v mib="$size_mib" 'BEGIN {
        gib = mib / 1024
        printf "  %-28s %7.3f s %6.0f MiB/s   sender %.2f s CPU/GiB   receiver %.2f s CPU/GiB\n",
            name, w, mib / w, s / gib, r / gib
    }'
}
echo "median of $runs runs, $size_mib MiB:"
rw=$(median "${r_wall[@]}")
summary "resound send -> serve" "$rw" "$(median "${r_send[@]}")" "$(median "${r_recv[@]}")"
if [[ $with_nc != 0 ]]; then
    nw=$(median "${n_wall[@]}")
    summary "cat | nc -> nc -l" "$nw" "$(median "${n_send[@]}")" "$(median "${n_recv[@]}")"
    awk -v r="$rw" -v n="$nw" 'BEGIN { printf "  resound/nc throughput %.2fx\n", n / r }'
fi
