#!/usr/bin/env python3
"""What end-to-end encryption costs on the full chain: one local network (real cocoon-proxy,
cocoon-worker with the stub engine, simulated TEE, RA-TLS on both hops) and two cocoon-client
processes on it, one sealing every request to the worker (the default) and one with
`encryption = "off"`; requests alternate between them in one run, so both see the same proxy,
worker and machine state.

Usage: bench_e2e.py BIN_DIR [REQUESTS] [ROUNDS] [--memory-ledger]

The proxy keeps the durable ledger (receipts are stored with each charge) unless
--memory-ledger.

Per mode and shape, ROUNDS × REQUESTS sequential requests through the client's local OpenAI
endpoint (HTTP/1.1 keep-alive):
  short   non-streamed chat, max_tokens 1: the fixed cost (sealing, opening, receipt signing
          and verifying, directory lookups are cached);
  stream  streamed chat, 64 tokens: time to first token and to the end (every token is one
          sealed chunk).
CPU: user+system time of each process (/proc/PID/stat) over each mode's requests, per
request. The proxy does no cryptography on encrypted bodies; its figure shows what larger
(base64, padded) frames cost it. Prints p50/p90/p99 and the on/off ratios.
"""

import http.client
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_faults import Net  # noqa: E402
from e2e_sealed import MODEL, Sealed  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_ms(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / TICK


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def short(conn):
    body = json.dumps({"model": MODEL, "max_tokens": 1,
                       "messages": [{"role": "user", "content": "hi there"}]})
    t = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    if r.status != 200:
        sys.exit(f"bench_e2e: status {r.status}: {data[:200]!r}")
    return (time.perf_counter() - t) * 1000, None


def stream(conn):
    body = json.dumps({"model": MODEL, "max_tokens": 64, "stream": True,
                       "messages": [{"role": "user", "content": "count"}]})
    t = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
    r = conn.getresponse()
    if r.status != 200:
        sys.exit(f"bench_e2e: status {r.status}: {r.read()[:200]!r}")
    first = None
    while True:
        line = r.readline()
        if not line:
            break
        if first is None and line.startswith(b"data:") and b"content" in line:
            first = (time.perf_counter() - t) * 1000
        if line.strip() == b"data: [DONE]":
            r.read()
            break
    return (time.perf_counter() - t) * 1000, first


def main():
    flags = [a for a in sys.argv[1:] if a.startswith("--")]
    pos = [a for a in sys.argv[1:] if not a.startswith("--")]
    bin_dir = os.path.abspath(pos[0])
    n = int(pos[1]) if len(pos) > 1 else 200
    rounds = int(pos[2]) if len(pos) > 2 else 3
    net = Net(bin_dir, tempfile.mkdtemp(prefix="cocoon-bench-e2e-"))
    s = Sealed(net, record=False, ledger="--memory-ledger" not in flags)
    try:
        net.prepare()
        s.start_proxy()
        s.config_worker("worker-1", tokens=64, tokens_per_second=1_000_000)
        s.start_worker("worker-1")
        s.start_client("on", encryption=True)
        s.start_client("off", encryption=False)
        procs = {name: net.procs[name].pid for name in ("proxy", "worker-1")}
        conns = {m: http.client.HTTPConnection(*s.clients[m]) for m in ("on", "off")}
        res = {(m, k): [] for m in ("on", "off") for k in ("short", "stream", "ttft")}
        cpu = {(m, p): 0.0 for m in ("on", "off") for p in ("client", "proxy", "worker-1")}
        count = {"on": 0, "off": 0}
        for m in ("on", "off"):  # warm-up: handshakes, directory
            for _ in range(10):
                short(conns[m])
                stream(conns[m])
        for _ in range(rounds):
            for m in ("off", "on"):
                pids = dict(procs, client=net.procs[f"client-{m}"].pid)
                before = {p: cpu_ms(pid) for p, pid in pids.items()}
                for _ in range(n):
                    res[(m, "short")].append(short(conns[m])[0])
                    total, first = stream(conns[m])
                    res[(m, "stream")].append(total)
                    res[(m, "ttft")].append(first)
                for p, pid in pids.items():
                    cpu[(m, p)] += cpu_ms(pid) - before[p]
                count[m] += 2 * n
        print(f"bench_e2e: {rounds} x {n} requests of each shape per mode, alternating, stub engine, "
              f"{'durable' if s.ledger else 'memory'} ledger")
        for k, what in (("short", "short (max_tokens 1)"), ("ttft", "stream: first token"),
                        ("stream", "stream: 64 tokens, total")):
            off, on = res[("off", k)], res[("on", k)]
            print(f"  {what}")
            for m, xs in (("off", off), ("on ", on)):
                print(f"    encryption {m}: p50 {pct(xs, 0.5):.2f} ms  p90 {pct(xs, 0.9):.2f} ms  "
                      f"p99 {pct(xs, 0.99):.2f} ms  mean {statistics.mean(xs):.2f} ms")
            print(f"    added p50 {pct(on, 0.5) - pct(off, 0.5):+.2f} ms "
                  f"(ratio {pct(on, 0.5) / pct(off, 0.5):.2f}x)")
        print("  CPU per request (short + stream averaged), ms")
        for p in ("client", "proxy", "worker-1"):
            off = cpu[("off", p)] / count["off"]
            on = cpu[("on", p)] / count["on"]
            print(f"    {p:9}: off {off:.3f}  on {on:.3f}  ratio {on / off if off else float('nan'):.2f}x")
    finally:
        net.stop_all()


if __name__ == "__main__":
    main()
