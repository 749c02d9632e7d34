#!/usr/bin/env bash
# Where the receiving server's CPU goes for one large upload: `perf record` on `resound serve
# --files` (CPU 0) while `resound send` (CPU 1) sends SIZE_MIB of random data, then the samples
# grouped into stages: hashing, socket reads, file writes (page cache and filesystem), the TCP
# stack's other work (ACKs, softirq), and everything else (the loop, allocation, syscalls).
#
# usage: benches/file_stages.sh [SIZE_MIB (1024)]
# environment: BIN=path (default target/release/resound), SERVE_ARGS / SEND_ARGS as in
# file_transfer.sh. Needs perf (Debian: linux-perf); uses the cpu-clock software event, which
# works in VMs without hardware counters.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
size_mib=${1:-1024}
bin=${BIN:-$PWD/target/release/resound}
command -v perf >/dev/null || { echo "needs perf (Debian: linux-perf)" >&2; exit 2; }
[[ -x $bin ]] || { echo "build first: cargo build --release" >&2; exit 2; }

work=$(mktemp -d /tmp/resound-stages.XXXXXX)
server_pid="" # set once the server runs; the trap may fire before (set -u)
trap '[[ -z $server_pid ]] || kill "$server_pid" 2>/dev/null || true; rm -rf "$work"' EXIT
head -c $((size_mib << 20)) /dev/urandom > "$work/payload.bin"
cat "$work/payload.bin" > /dev/null
mkdir "$work/recv"
# shellcheck disable=SC2086 # word splitting of the extra arguments is intended
taskset -c 0 perf record -q -e cpu-clock -o "$work/perf.data" \
    "$bin" serve --files 127.0.0.1:0 --dir "$work/recv" ${SERVE_ARGS:-} \
    > "$work/out" 2> "$work/err" &
server_pid=$!
addr=$(listening_addr "$work/out" files)
# shellcheck disable=SC2086
taskset -c 1 "$bin" send "$work/payload.bin" --to "$addr" -q ${SEND_ARGS:-} > /dev/null
kill -INT "$server_pid"
wait "$server_pid" || true

perf report -i "$work/perf.data" --no-children --sort symbol -g none --stdio 2>/dev/null |
awk -v mib="$size_mib" '
    /^ *[0-9.]+%/ {
        pct = $1; sub("%", "", pct); sym = $3
        if (sym ~ /blake3|sha2|sha256|Sha256|compress/)                       stage = "hashing"
        else if (sym ~ /_copy_to_iter|tcp_recvmsg|skb_copy_datagram|tcp_rcv|sock_recvmsg/) stage = "socket reads"
        else if (sym ~ /copy_folio|ext4|filemap|folio|block_|page_cache|iomap|generic_perform_write|__mark_inode|mpage|xas_|balance_dirty/) stage = "file writes"
        else if (sym ~ /tcp_|ip_|__dev|net_rx|softirq|skb|napi|__netif|loopback/)  stage = "TCP stack (ACKs, softirq)"
        else                                                                    stage = "loop, allocation, syscalls"
        share[stage] += pct; total += pct
    }
    END {
        printf "%-28s %8s\n", "stage (receiving server)", "share"
        n = split("hashing|socket reads|file writes|TCP stack (ACKs, softirq)|loop, allocation, syscalls", order, "|")
        for (i = 1; i <= n; i++) printf "%-28s %7.1f%%\n", order[i], 100 * share[order[i]] / total
    }'
