#!/usr/bin/env bash
# Helpers shared by the file benchmarks (file_transfer.sh, file_many.sh, file_stages.sh). Sourced
# from the repository's root, `source benches/lib.sh`; it runs nothing by itself.

# Seconds since the epoch, to the nanosecond.
now() { date +%s.%N; }

# CPU seconds (user + system) the kernel has charged process $1 so far (/proc/PID/stat, at the
# clock tick's resolution, 10 ms).
proc_cpu() { awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$1/stat"; }

# The median of the arguments (numbers; the lower middle one of an even count).
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# A free loopback port, for a receiver that can neither be given port 0 nor say which port it
# got (`nc -l`): bind port 0, print the port, close. Another process may take it in between;
# resound itself is therefore started on port 0, and its address read with `listening_addr`.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# The address `resound serve` printed for SERVICE (`listening SERVICE tcp ADDR`) in FILE, its
# standard output; waits up to 5 s for the line. Fails, saying so, if it never comes.
listening_addr() { # FILE SERVICE
    local addr=""
    for _ in $(seq 100); do
        addr=$(awk -v s="$2" '$1 == "listening" && $2 == s { print $4; exit }' "$1" 2>/dev/null)
        [[ -n $addr ]] && break
        sleep 0.05
    done
    [[ -n $addr ]] || { echo "resound serve printed no 'listening $2' line in $1" >&2; return 1; }
    echo "$addr"
}
