#!/usr/bin/env bash
# Many uploads at once: N concurrent `resound send` of SIZE_MIB each into one `resound serve
# --files` (one loop serves them all), next to N concurrent `cat | nc` pairs into N `nc -l`
# processes, alternating, in the same run. Receivers pinned to CPU 0, senders to CPU 1.
# Prints the aggregate throughput and the receiving side's CPU per GiB (the one server, or the
# N nc processes summed), median of RUNS.
#
# usage: benches/file_many.sh [N (10)] [SIZE_MIB (100)] [RUNS (3)]
# environment: BIN=path (default target/release/resound), SEND_ARGS / SERVE_ARGS.
# needs: a release build, OpenBSD netcat (nc), taskset, GNU time.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
n=${1:-10}
size_mib=${2:-100}
runs=${3:-3}
bin=${BIN:-$PWD/target/release/resound}
[[ -x $bin ]] || { echo "build first: cargo build --release" >&2; exit 2; }
command -v nc >/dev/null || { echo "needs nc (Debian: netcat-openbsd)" >&2; exit 2; }
[[ -x /usr/bin/time ]] || { echo "needs GNU time (/usr/bin/time; Debian: time)" >&2; exit 2; }

work=$(mktemp -d /tmp/resound-filemany.XXXXXX)
server_pid=""
trap '[[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null; rm -rf "$work"' EXIT
head -c $((size_mib << 20)) /dev/urandom > "$work/payload.bin"
cat "$work/payload.bin" > /dev/null
gib=$(echo "$n * $size_mib / 1024" | bc -l)

mkdir "$work/recv"
# shellcheck disable=SC2086
taskset -c 0 "$bin" serve --files 127.0.0.1:0 --dir "$work/recv" ${SERVE_ARGS:-} \
    > "$work/server.out" 2> "$work/server.err" &
server_pid=$!
addr=$(listening_addr "$work/server.out" files)

r_rate=(); r_cpu=(); n_rate=(); n_cpu=()
for run in $(seq "$runs"); do
    # resound: N senders into the one server.
    before=$(proc_cpu "$server_pid"); t0=$(now)
    pids=()
    for i in $(seq "$n"); do
        # shellcheck disable=SC2086
        taskset -c 1 "$bin" send "$work/payload.bin" --to "$addr" --name "r$run-$i" \
            -q ${SEND_ARGS:-} > /dev/null &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p"; done
    t1=$(now); after=$(proc_cpu "$server_pid")
    rm -f "$work/recv"/r*
    r_rate+=("$(echo "$gib * 1024 / ($t1 - $t0)" | bc -l)")
    r_cpu+=("$(echo "($after - $before) / $gib" | bc -l)")

    # nc: N pairs.
    rm -f "$work"/nc-*.time
    ports=(); rpids=()
    for i in $(seq "$n"); do
        p=$(free_port); ports+=("$p")
        taskset -c 0 /usr/bin/time -f '%U %S' -o "$work/nc-$i.time" nc -l 127.0.0.1 "$p" \
            > "$work/recv/nc-$i" &
        rpids+=($!)
    done
    for p in "${ports[@]}"; do
        for _ in $(seq 100); do ss -ltn | grep -q ":$p " && break; sleep 0.02; done
    done
    t0=$(now)
    spids=()
    for i in $(seq "$n"); do
        taskset -c 1 sh -c "cat '$work/payload.bin' | nc -N 127.0.0.1 ${ports[$((i - 1))]}" &
        spids+=($!)
    done
    for p in "${spids[@]}" "${rpids[@]}"; do wait "$p"; done
    t1=$(now)
    cpu=$(cat "$work"/nc-*.time | awk '{ s += $1 + $2 } END { print s }')
    rm -f "$work/recv"/nc-*
    n_rate+=("$(echo "$gib * 1024 / ($t1 - $t0)" | bc -l)")
    n_cpu+=("$(echo "$cpu / $gib" | bc -l)")
    printf 'run %d: resound %.0f MiB/s (server %.2f s CPU/GiB) | nc %.0f MiB/s (receivers %.2f s CPU/GiB)\n' \
        "$run" "${r_rate[-1]}" "${r_cpu[-1]}" "${n_rate[-1]}" "${n_cpu[-1]}"
done
printf 'median of %d runs, %d uploads of %d MiB at once:\n' "$runs" "$n" "$size_mib"
printf '  resound send x%d -> one serve   %6.0f MiB/s   receiver %.2f s CPU/GiB\n' "$n" \
    "$(median "${r_rate[@]}")" "$(median "${r_cpu[@]}")"
printf '  cat | nc x%d -> nc -l x%d        %6.0f MiB/s   receivers %.2f s CPU/GiB\n' "$n" "$n" \
    "$(median "${n_rate[@]}")" "$(median "${n_cpu[@]}")"
printf '  resound/nc throughput %.2fx\n' "$(echo "$(median "${r_rate[@]}") / $(median "${n_rate[@]}")" | bc -l)"
