#!/usr/bin/env python3
"""Added latency of payments: the same local network (`cocoon-host launch --local --engine stub`)
with and without `--payments`, measured in one run, alternating.

Usage: bench_payments.py BIN_DIR [REQUESTS] [ROUNDS]

Each round starts both networks (payments off, then on), sends REQUESTS sequential
non-streamed chat requests (max_tokens 1, so the stub engine's own time is ~5 ms) to each, and
records the client-observed latency. With payments on, every request is reserved against the
client contract's funds, billed through the durable ledger (group commit: the usage event is
sent only once the commit is on disk), anchored and charged on the local chain, and the worker
is paid — the last three off the request path. Prints p50/p90/p99 for both and the ratio.
"""

import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start(bin_dir, payments):
    d = tempfile.mkdtemp(prefix="cocoon-bench-pay-")
    args = [os.path.join(bin_dir, "cocoon-host"), "launch", "--local", "--engine", "stub",
            "--dir", d, "--port", str(free_port())]
    if payments:
        args.append("--payments")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    urls = os.path.join(d, "urls.json")
    deadline = time.time() + 120
    while not os.path.exists(urls):
        if proc.poll() is not None or time.time() > deadline:
            sys.exit(f"bench_payments: network (payments={payments}) did not start")
        time.sleep(0.2)
    return proc, json.load(open(urls))


def run(urls, n):
    host, port = urls["client"].removeprefix("http://").split("/")[0].split(":")
    conn = http.client.HTTPConnection(host, int(port))
    body = json.dumps({"model": urls["model"], "max_tokens": 1,
                       "messages": [{"role": "user", "content": "hi"}]})
    out = []
    for i in range(n + 5):
        t = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
        r = conn.getresponse()
        data = r.read()
        dt = time.perf_counter() - t
        if r.status != 200:
            sys.exit(f"bench_payments: status {r.status}: {data[:200]!r}")
        if i >= 5:  # warm-up
            out.append(dt * 1000)
    return out


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def main():
    bin_dir = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    off, on = [], []
    for _ in range(rounds):
        for payments, acc in ((False, off), (True, on)):
            proc, urls = start(bin_dir, payments)
            try:
                acc.extend(run(urls, n))
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
    print(f"bench_payments: {len(off)} requests each, sequential, stub engine (max_tokens 1)")
    for name, xs in (("payments off", off), ("payments on ", on)):
        print(f"  {name}: p50 {pct(xs, 0.5):.2f} ms  p90 {pct(xs, 0.9):.2f} ms  "
              f"p99 {pct(xs, 0.99):.2f} ms  mean {statistics.mean(xs):.2f} ms")
    print(f"  added p50 {pct(on, 0.5) - pct(off, 0.5):+.2f} ms "
          f"(ratio {pct(on, 0.5) / pct(off, 0.5):.2f}x), "
          f"p99 {pct(on, 0.99) - pct(off, 0.99):+.2f} ms")


if __name__ == "__main__":
    main()
