#!/usr/bin/env bash
# Scaling out, measured: one broadcast room on 1 node vs 3 nodes bridged through Redis, and
# echo on 1 process vs 2 `--reuseport` processes, side by side in the same run.
#
# usage: [SENDERS=3] benches/cluster.sh [SECONDS (5)] [REPEATS (3)]
#        (also: cargo bench --bench scenarios -- cluster)
# needs: a release build (cargo build --release), redis-server, taskset, python3, and a
#        `resound bench` that takes several targets (`--target A,B,C`); LOADER=path/to/resound
#        picks another build of the load generator.
#
# Broadcast: 100 receivers + SENDERS senders, 64 B lines paced at 1000 lines/s in total (open loop:
# latency from each line's intended send time). The 3-node run spreads the connections round
# robin over the nodes, so each line reaches a third of its receivers locally and two thirds
# through Redis. Servers (nodes and Redis) on CPU 0, the load generator on CPU 1. CPU per
# delivered line = the nodes' CPU time (utime + stime, /proc) over the run / lines delivered;
# Redis's own on its line.
#
# Echo: 100 connections x 16 messages of 64 B in flight (closed loop). 1 process on CPU 0 with
# the load on CPU 1, against 2 `--reuseport` processes on CPUs 0 and 1 with the load on both:
# on this 2-core machine the load generator shares the cores with the servers, so the second
# figure says more about the sharing than about the servers.
#
# Every figure is a median over the repeats; runs alternate single / scaled-out.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
repeat=${2:-3}
senders=${SENDERS:-3}
bin=${BIN:-$PWD/target/release/resound}
loader=${LOADER:-$bin}
[[ -x $bin ]] || { echo "build first: cargo build --release" >&2; exit 2; }
command -v redis-server >/dev/null ||
    { echo "redis-server is missing: apt-get install -y redis-server" >&2; exit 2; }
"$loader" bench --help | grep -q 'ADDR\[,ADDR' || {
    echo "$loader: its 'bench' takes one --target; this needs --target A,B,C (set LOADER)" >&2
    exit 2
}

work=$(mktemp -d /tmp/resound-cluster.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

hz=$(getconf CLK_TCK)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Wait (at most 10 s) until FILE has a line matching PATTERN.
wait_line() {
    for _ in $(seq 200); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
    echo "timed out waiting for '$2' in $1:" >&2; cat "$1" >&2; exit 1
}
# Start a server: NAME CPU ARGS...; sets $started to its pid.
start() {
    local name=$1 cpu=$2; shift 2
    taskset -c "$cpu" "$@" > "$work/$name.out" 2> "$work/$name.err" &
    started=$!
    pids+=("$started")
}
stop() { for p in "$@"; do kill "$p"; wait "$p" 2>/dev/null || true; done; }
# json FILE KEY.PATH -> value
json() { python3 -c 'import json,sys; v=json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."): v=v[k]
print(v)' "$1" "$2"; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# One broadcast run against TARGETS with the server pids NODES (and REDIS, or 0).
# Prints: p50 p99 deliveries nodes_cpu_s redis_cpu_s errors
bcast_run() {
    local targets=$1 nodes=$2 redis=$3 out=$work/bench.json
    local before=0 after=0 r0=0 r1=0
    for p in $nodes; do before=$((before + $(cpu_ticks "$p"))); done
    [[ $redis != 0 ]] && r0=$(cpu_ticks "$redis")
    taskset -c 1 "$loader" bench broadcast -t "$targets" -c 100 --senders "$senders" --rate 1000 \
        -d "$secs" --quiet --json > "$out"
    for p in $nodes; do after=$((after + $(cpu_ticks "$p"))); done
    [[ $redis != 0 ]] && r1=$(cpu_ticks "$redis")
    echo "$(json "$out" latency_us.p50) $(json "$out" latency_us.p99) $(json "$out" ops)" \
        "$(echo "($after - $before) / $hz" | bc -l) $(echo "($r1 - $r0) / $hz" | bc -l)" \
        "$(json "$out" errors)"
}

single=() cluster=() redis_cpu=()
for i in $(seq "$repeat"); do
    port=$(free_port)
    start single 0 "$bin" serve --broadcast "127.0.0.1:$port"
    s=$started
    wait_line "$work/single.out" listening
    single+=("$(bcast_run "127.0.0.1:$port" "$s" 0)")
    stop "$s"

    rport=$(free_port)
    start redis 0 redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no
    r=$started
    wait_line "$work/redis.out" "Ready to accept"
    targets=() nodes=()
    for n in a b c; do
        port=$(free_port)
        start "$n" 0 "$bin" serve --broadcast "127.0.0.1:$port" \
            --bridge "redis://127.0.0.1:$rport/bench"
        nodes+=("$started")
        targets+=("127.0.0.1:$port")
        wait_line "$work/$n.err" "bridge up"
    done
    cluster+=("$(bcast_run "$(IFS=,; echo "${targets[*]}")" "${nodes[*]}" "$r")")
    stop "${nodes[@]}" "$r"
    echo "run $i: 1 node [${single[-1]}]  3 nodes [${cluster[-1]}]" >&2
done

# Echo: 1 process vs 2 --reuseport processes.
echo_run() { # TARGET LOADER_CPUS PIDS... -> ops/s cpu_us_per_op errors
    local target=$1 cpus=$2; shift 2
    local before=0 after=0 out=$work/echo.json
    for p in "$@"; do before=$((before + $(cpu_ticks "$p"))); done
    taskset -c "$cpus" "$loader" bench echo -t "$target" -c 100 -p 16 -d "$secs" \
        --quiet --json > "$out"
    for p in "$@"; do after=$((after + $(cpu_ticks "$p"))); done
    local ops; ops=$(json "$out" ops)
    echo "$(json "$out" throughput_per_sec)" \
        "$(echo "($after - $before) / $hz * 1000000 / $ops" | bc -l)" "$(json "$out" errors)"
}
one=() two=()
for i in $(seq "$repeat"); do
    port=$(free_port)
    start w1 0 "$bin" serve --echo "127.0.0.1:$port" --reuseport
    w1=$started
    wait_line "$work/w1.out" listening
    one+=("$(echo_run "127.0.0.1:$port" 1 "$w1")")
    start w2 1 "$bin" serve --echo "127.0.0.1:$port" --reuseport
    w2=$started
    wait_line "$work/w2.out" listening
    two+=("$(echo_run "127.0.0.1:$port" 0,1 "$w1" "$w2")")
    stop "$w1" "$w2"
    echo "run $i: 1 worker [${one[-1]}]  2 workers [${two[-1]}]" >&2
done

col() { printf '%s\n' "${@:2}" | awk -v c="$1" '{print $c}' | median; }
per_line() { # deliveries in col 3, cpu s in col 4 -> µs per delivered line, per run
    printf '%s\n' "$@" | awk '{printf "%.4f\n", $4 * 1e6 / $3}' | median; }
sum_col() { printf '%s\n' "${@:2}" | awk -v c="$1" '{s += $c} END {print s}'; }
s_p99=$(col 2 "${single[@]}") c_p99=$(col 2 "${cluster[@]}")
s_cpu=$(per_line "${single[@]}") c_cpu=$(per_line "${cluster[@]}")
r_cpu=$(printf '%s\n' "${cluster[@]}" | awk '{printf "%.4f\n", $5 * 1e6 / $3}' | median)

echo
echo "broadcast: 100 receivers + $senders sender(s), 64 B lines at 1000 lines/s; medians of $repeat x $secs s"
echo "| setup | p50 µs | p99 µs | lines delivered | CPU µs per delivered line | errors |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
printf '| 1 node | %s | %s | %s | %.3f | %s |\n' "$(col 1 "${single[@]}")" "$s_p99" \
    "$(col 3 "${single[@]}")" "$s_cpu" "$(sum_col 6 "${single[@]}")"
printf '| 3 nodes + Redis (nodes summed) | %s | %s | %s | %.3f | %s |\n' \
    "$(col 1 "${cluster[@]}")" "$c_p99" "$(col 3 "${cluster[@]}")" "$c_cpu" \
    "$(sum_col 6 "${cluster[@]}")"
printf '| Redis alone (same runs) | | | | %.3f | |\n' "$r_cpu"
printf 'ratios (3 nodes / 1 node): p99 %.2fx (target <= 2), nodes CPU per line %.2fx (target <= 1.5)\n' \
    "$(echo "$c_p99 / $s_p99" | bc -l)" "$(echo "$c_cpu / $s_cpu" | bc -l)"

echo
echo "echo: 100 connections x 16 x 64 B in flight; medians of $repeat x $secs s"
echo "| setup | msgs/s | server CPU µs/msg (summed) | errors |"
echo "| --- | ---: | ---: | ---: |"
printf '| 1 process (CPU 0), load on CPU 1 | %.0f | %.3f | %s |\n' "$(col 1 "${one[@]}")" \
    "$(col 2 "${one[@]}")" "$(sum_col 3 "${one[@]}")"
printf '| 2 --reuseport processes (CPUs 0, 1), load on both | %.0f | %.3f | %s |\n' \
    "$(col 1 "${two[@]}")" "$(col 2 "${two[@]}")" "$(sum_col 3 "${two[@]}")"
