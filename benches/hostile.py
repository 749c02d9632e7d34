#!/usr/bin/env python3
"""The hostile soak: resound under a mix of attacks for a while, next to a well-behaved probe.

    cargo build --release
    benches/hostile.py [--secs 60] [--max-memory 64m] [--bin target/release/resound]

The server (echo, broadcast, UDP) runs pinned to CPU 0; the attackers and the probe to CPU 1.
Attackers, each in its own process, reconnecting whenever the server drops them:
  * broadcast: 100 receivers with a 4 KiB receive buffer that never read, and 2 senders of
    one-byte lines (TCP_NODELAY, one send per line) -- the attack that pinned 1.6 GB;
  * echo: 100 writers of 64 KiB chunks that never read;
  * churn: connect, one byte, close, as fast as it goes (the server runs --idle-timeout 3600);
  * UDP: 2 senders of 1 KiB datagrams that never read the replies.
The probe is one echo client doing a 64-byte round trip every 20 ms.

Every second: the server's RSS, its CPU share, the probe's median and worst round trip, and
evictions so far. At the end, the peaks. Nothing here is a pass/fail test: it is a measuring
instrument (the bounds themselves are tested in tests/hostile.rs).
"""

import argparse
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import threading
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def pin(cpu, nice=0):
    """Run on `cpu`; attackers also at the lowest priority, so that on a 2-core machine the
    probe sharing their CPU measures the server, not the attackers' hold on the CPU."""
    try:
        os.sched_setaffinity(0, {cpu})
        if nice:
            os.nice(nice)
    except OSError:
        pass


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_secs(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def forever(attack):
    """Run `attack` again whenever the server drops it, until the parent ends us."""
    while True:
        try:
            attack()
        except OSError:
            time.sleep(0.05)


def bcast_receivers(addr, n):
    pin(1, 19)
    held = []

    def attack():
        while len(held) < n:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(addr)
            held.append(s)
        # Never read; notice evictions by a failed send of nothing useful.
        time.sleep(0.5)
        for s in list(held):
            try:
                s.send(b"")
                if s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                    raise OSError
            except BlockingIOError:
                pass
            except OSError:
                held.remove(s)
                s.close()

    forever(attack)


def bcast_sender(addr):
    pin(1, 19)

    def attack():
        s = socket.create_connection(addr)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            s.send(b"\n")

    forever(attack)


def echo_writers(addr, n):
    pin(1, 19)
    chunk = b"x" * 65536

    def attack():
        socks = []
        for _ in range(n):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(addr)
            s.setblocking(False)
            socks.append(s)
        while socks:
            for s in list(socks):
                try:
                    s.send(chunk)
                except BlockingIOError:
                    pass
                except OSError:
                    socks.remove(s)
                    s.close()
            time.sleep(0.01)

    forever(attack)


def churn(addr):
    pin(1, 19)

    def attack():
        while True:
            s = socket.create_connection(addr)
            s.sendall(b"x")
            s.recv(1)
            s.close()

    forever(attack)


def udp_flood(addr):
    pin(1, 19)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    payload = b"u" * 1024
    while True:
        try:
            s.sendto(payload, addr)
        except OSError:
            time.sleep(0.001)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--secs", type=int, default=60)
    ap.add_argument("--max-memory", default="64m", help="'none': do not pass the flag (to run "
                    "a build that predates it)")
    ap.add_argument("--bin", default="target/release/resound")
    args = ap.parse_args()

    budget = [] if args.max_memory == "none" else ["--max-memory", args.max_memory]
    server = subprocess.Popen(
        ["taskset", "-c", "0", args.bin, "serve", "--echo", "127.0.0.1:0", "--broadcast",
         "127.0.0.1:0", "--udp", "127.0.0.1:0", "--idle-timeout", "3600"] + budget,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    addrs = {}
    while len(addrs) < 3:
        _, service, _, addr = server.stdout.readline().split()
        host, port = addr.rsplit(":", 1)
        addrs[service] = (host, int(port))
    evictions = [0]

    def count_evictions():
        for line in server.stderr:
            if "evicted" in line:
                evictions[0] += 1

    threading.Thread(target=count_evictions, daemon=True).start()
    pin(1)
    base_rss = rss_mib(server.pid)

    procs = [mp.Process(target=bcast_receivers, args=(addrs["broadcast"], 100)),
             mp.Process(target=bcast_sender, args=(addrs["broadcast"],)),
             mp.Process(target=bcast_sender, args=(addrs["broadcast"],)),
             mp.Process(target=echo_writers, args=(addrs["echo"], 100)),
             mp.Process(target=churn, args=(addrs["echo"],)),
             mp.Process(target=udp_flood, args=(addrs["udp"],)),
             mp.Process(target=udp_flood, args=(addrs["udp"],))]
    for p in procs:
        p.daemon = True
        p.start()

    probe = socket.create_connection(addrs["echo"])
    probe.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    probe.settimeout(10)
    msg = b"p" * 64
    print(f"server pid {server.pid}, base RSS {base_rss:.1f} MiB, --max-memory {args.max_memory}")
    print(f"{'t':>4} {'RSS MiB':>8} {'CPU %':>6} {'probe p50 ms':>13} {'probe max ms':>13} {'evicted':>8}")
    peak_rss, worst = 0.0, 0.0
    start = time.time()
    cpu0 = cpu_secs(server.pid)
    for sec in range(1, args.secs + 1):
        rtts = []
        t_end = start + sec
        while time.time() < t_end or not rtts:
            t = time.perf_counter()
            probe.sendall(msg)
            got = b""
            while len(got) < len(msg):
                got += probe.recv(len(msg) - len(got))
            rtts.append((time.perf_counter() - t) * 1000)
            time.sleep(0.02)
        cpu1 = cpu_secs(server.pid)
        rss = rss_mib(server.pid)
        rtts.sort()
        p50, mx = rtts[len(rtts) // 2], rtts[-1]
        peak_rss, worst = max(peak_rss, rss), max(worst, mx)
        print(f"{sec:>4} {rss:>8.1f} {100 * (cpu1 - cpu0):>6.0f} {p50:>13.2f} {mx:>13.2f} {evictions[0]:>8}")
        cpu0 = cpu1
        sys.stdout.flush()
    for p in procs:
        p.kill()
    time.sleep(2)
    after = rss_mib(server.pid)
    print(f"peak RSS {peak_rss:.1f} MiB (base {base_rss:.1f}), RSS 2 s after the attackers left "
          f"{after:.1f} MiB, worst probe round trip {worst:.1f} ms, evictions {evictions[0]}")
    server.send_signal(signal.SIGINT)
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.kill()


if __name__ == "__main__":
    main()
