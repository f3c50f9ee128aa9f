#!/usr/bin/env python3
"""Where a relayed request's time goes, hop by hop (diagnostic for the relay benchmark).

Run the relay benchmark's latency rows with the bare relay, nginx off, many requests:

    COCOON_BENCH_BARE=1 COCOON_BENCH_NGINX=/nonexistent COCOON_BENCH_ROWS=latency \
        COCOON_BENCH_LATENCY_REQUESTS=3000 target/.../relay-<hash> --bench &

then, as root, while it runs: `relay_chain.py <pid of the bench> [seconds]`. It records the
socket system calls of the bench process with `perf` (kernel tracepoints, ~1 us each), pairs
the process's own loopback sockets through /proc/net/tcp, and for each relay thread
(`proxy-rt` for cocoon, `bare-rt` for the bare relay) follows every sequential request:

    client write -> relay read -> relay write -> upstream read -> upstream writes ->
    relay read -> relay write -> client read

printing the median of each step in microseconds. "relay req" and "relay resp" are the
relay's own work on the critical path (read to write, both directions); the steps between
threads are wake-ups; "up first" is the upstream's time from the request to its first write.
"""

import bisect
import collections
import os
import statistics
import subprocess
import sys
import tempfile

EVENTS = ",".join(
    "syscalls:" + e
    for e in [
        "sys_enter_recvfrom",
        "sys_exit_recvfrom",
        "sys_enter_writev",
        "sys_enter_sendto",
    ]
)
RELAYS = ["proxy-rt", "bare-rt"]


def sockets(pid):
    """fd -> (local port, remote port) of the process's TCP sockets."""
    inode_port = {}
    for line in open("/proc/net/tcp").readlines()[1:]:
        f = line.split()
        local, remote, inode = f[1], f[2], f[9]
        inode_port[inode] = (int(local.split(":")[1], 16), int(remote.split(":")[1], 16))
    fds = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            ports = inode_port.get(target[8:-1])
            if ports:
                fds[int(fd)] = ports
    return fds


def record(pid, seconds):
    data = tempfile.mktemp(suffix=".perf")
    # perf ends the recording by signalling itself: its exit status says nothing.
    subprocess.run(
        ["perf", "record", "-q", "-e", EVENTS, "-p", str(pid), "-o", data, "--", "sleep", str(seconds)],
        check=False,
    )
    out = subprocess.run(
        ["perf", "script", "-i", data, "-F", "comm,tid,time,event,trace"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    os.unlink(data)
    return out


def parse(text):
    """[(time, comm, 'r'|'w', fd, bytes read)] in time order."""
    events, pending = [], {}
    for line in text.splitlines():
        p = line.split()
        if len(p) < 5:
            continue
        comm, tid, t, ev = p[0], p[1], float(p[2].rstrip(":")), p[3]
        if ev.startswith("syscalls:sys_enter_recvfrom"):
            pending[tid] = int(p[5].rstrip(","), 16)
        elif ev.startswith("syscalls:sys_exit_recvfrom"):
            n = int(p[4], 16)
            if 0 < n < 1 << 31:
                events.append((t, comm, "r", pending.get(tid), n))
        elif ev.startswith(("syscalls:sys_enter_writev", "syscalls:sys_enter_sendto")):
            events.append((t, comm, "w", int(p[5].rstrip(","), 16), 0))
    return events


def chain(events, fds, relay):
    mine = [e for e in events if e[1] == relay]
    if not mine:
        return None
    # The relay's client socket: where it reads the requests (a few hundred bytes); its
    # upstream socket: where it writes next.
    sizes = collections.Counter(e[3] for e in mine if e[2] == "r" and 150 <= e[4] <= 400)
    if not sizes:
        return None
    rc = sizes.most_common(1)[0][0]
    outs = collections.Counter(e[3] for e in mine if e[2] == "w" and e[3] != rc)
    ru = outs.most_common(1)[0][0]
    peer = {ports: fd for fd, ports in fds.items()}
    cfd = peer.get(tuple(reversed(fds.get(rc, (0, 0)))))
    uf = peer.get(tuple(reversed(fds.get(ru, (0, 0)))))
    if cfd is None or uf is None:
        return None

    def times(who, kind, fd):
        return [
            e[0]
            for e in events
            if e[2] == kind and e[3] == fd and (e[1] == relay) == (who == "relay")
        ]

    cw, cr = times("bench", "w", cfd), times("bench", "r", cfd)
    rr_c, rw_u = times("relay", "r", rc), times("relay", "w", ru)
    rr_u, rw_c = times("relay", "r", ru), times("relay", "w", rc)
    ur, uw = times("bench", "r", uf), times("bench", "w", uf)

    def after(xs, t):
        i = bisect.bisect_right(xs, t)
        return xs[i] if i < len(xs) else None

    def before(xs, t):
        i = bisect.bisect_left(xs, t)
        return xs[i - 1] if i > 0 else None

    starts = []
    for t in cw:
        pr, pw = before(cr, t), before(cw, t)
        if pr is not None and (pw is None or pw < pr):
            starts.append(t)
    rows = []
    for s1, nxt in zip(starts, starts[1:]):
        s3 = after(rw_u, s1)
        if s3 is None or s3 > nxt:
            continue
        s2 = before(rr_c, s3)
        s4 = after(ur, s3)
        s5 = after(uw, s4) if s4 else None
        s9 = before(cr, nxt)
        s8 = before(rw_c, s9) if s9 else None
        s7 = before(rr_u, s8) if s8 else None
        s6 = before(uw, s7) if s7 else None
        steps = [s1, s2, s3, s4, s5, s6, s7, s8, s9]
        if None in steps or steps != sorted(steps):
            continue
        rows.append([b - a for a, b in zip(steps, steps[1:])] + [s9 - s1])
    return rows


NAMES = [
    "client -> relay",
    "relay req",
    "relay -> upstream",
    "up first",
    "up rest",
    "upstream -> relay",
    "relay resp",
    "relay -> client",
    "total",
]


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    pid = int(sys.argv[1])
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 6
    fds = sockets(pid)
    events = parse(record(pid, seconds))
    results = {r: chain(events, fds, r) for r in RELAYS}
    results = {r: rows for r, rows in results.items() if rows}
    if not results:
        sys.exit("no relayed request seen (is the latency row running?)")
    print("median microseconds per step (" + ", ".join(f"{r}: {len(v)} requests" for r, v in results.items()) + ")")
    print(f"  {'step':<18}" + "".join(f"{r:>10}" for r in results))
    for i, name in enumerate(NAMES):
        cells = "".join(f"{statistics.median(v[i] for v in rows) * 1e6:>10.1f}" for rows in results.values())
        print(f"  {name:<18}{cells}")


if __name__ == "__main__":
    main()
