#!/usr/bin/env python3
"""Serving benchmark on the real model (issue 11, "Measure"): prints figures, asserts nothing.

Usage: ci/bench_serving.py [BIN_DIR]   (default target/x86_64-unknown-linux-gnu/release)

For each worker capacity (1: one sequence at a time, no batching; 8: mistral.rs schedules up to
8 sequences together) it starts the local network (`cocoon-host launch --local`, real
SmolLM2-135M on CPU, simulated TEE), then sends 1, 8 and 32 concurrent streaming chat requests
(short prompts, 32 completion tokens, temperature 0) through the local client and prints:
time to first token p50/p99, the slowest request, and completion tokens per second over the
round. Requests beyond the capacity wait in the proxy's queue, so every request must complete.
Then, at capacity 8, `n` choices against the same work as separate requests: one request
with `n: 4` (the worker runs its choices one after another on one slot) against 4 concurrent
requests of one choice and against one request of one choice, alternated over 3 rounds; wall
time and its ratio to the one choice's. Run on an otherwise idle machine; figures go to
docs/performance.md.
"""

import concurrent.futures
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse

PROMPTS = [
    "Name three colors.",
    "What is the capital of France?",
    "Count from one to five.",
    "Give me a word that rhymes with cat.",
]
MAX_TOKENS = 32


def stream_once(base, model, i, choices=1):
    u = urllib.parse.urlparse(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=900)
    body = json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
            "n": choices,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    t0 = time.monotonic()
    conn.request("POST", u.path + "/chat/completions", body=body,
                 headers={"content-type": "application/json"})  # fmt: skip
    r = conn.getresponse()
    if r.status != 200:
        raise RuntimeError(f"status {r.status}: {r.read()[:200]!r}")
    first, tokens = None, 0
    for raw in r:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        ev = json.loads(line[6:])
        if "error" in ev:
            raise RuntimeError(ev["error"])
        if first is None and any(c["delta"].get("content") for c in ev.get("choices", [])):
            first = time.monotonic() - t0
        if ev.get("usage"):
            tokens = ev["usage"]["completion_tokens"]
    conn.close()
    return first if first is not None else time.monotonic() - t0, time.monotonic() - t0, tokens


def pct(sorted_vals, p):
    return sorted_vals[min(len(sorted_vals) - 1, round((len(sorted_vals) - 1) * p))]


def launch(bin_dir, capacity, workdir):
    out = open(os.path.join(workdir, "launcher.out"), "w")
    err = open(os.path.join(workdir, "launcher.err"), "w")
    p = subprocess.Popen(
        [os.path.join(bin_dir, "cocoon-host"), "launch", "--local", "--dir",
         os.path.join(workdir, "net"), "--port", "0", "--worker-capacity", str(capacity)],
        stdout=out, stderr=err,
    )  # fmt: skip
    urls = os.path.join(workdir, "net", "urls.json")
    deadline = time.monotonic() + 900
    while not os.path.exists(urls):
        if p.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"launch failed; see {workdir}")
        time.sleep(1)
    time.sleep(1)
    return p, json.load(open(urls))


def choices_rounds(urls):
    """One request of `n: 4` against 4 concurrent requests and against one choice."""
    base, model = urls["client"], urls["model"]

    def four_requests():
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            res = list(pool.map(lambda i: stream_once(base, model, 0), range(4)))
        return max(r[1] for r in res), sum(r[2] for r in res)

    shapes = {
        "one choice": lambda: stream_once(base, model, 0)[1:],
        "n=4, one request": lambda: stream_once(base, model, 0, choices=4)[1:],
        "4 concurrent requests": four_requests,
    }
    for rnd in range(3):
        got = {name: run() for name, run in shapes.items()}
        one = got["one choice"][0]
        print(
            f"choices round {rnd}: "
            + "; ".join(f"{k} {w:.2f} s ({t} tok, {w / one:.2f}x)" for k, (w, t) in got.items()),
            flush=True,
        )


def main():
    bin_dir = sys.argv[1] if len(sys.argv) > 1 else "target/x86_64-unknown-linux-gnu/release"
    rows = []
    for capacity in (1, 8):
        with tempfile.TemporaryDirectory() as d:
            p, urls = launch(bin_dir, capacity, d)
            try:
                stream_once(urls["client"], urls["model"], 0)  # warm-up
                for n in (1, 8, 32):
                    t0 = time.monotonic()
                    with concurrent.futures.ThreadPoolExecutor(n) as pool:
                        res = list(pool.map(lambda i: stream_once(urls["client"], urls["model"], i),
                                            range(n)))  # fmt: skip
                    wall = time.monotonic() - t0
                    ttft = sorted(r[0] for r in res)
                    tokens = sum(r[2] for r in res)
                    row = (capacity, n, pct(ttft, 0.5), pct(ttft, 0.99), max(r[1] for r in res),
                           tokens / wall)  # fmt: skip
                    rows.append(row)
                    print(
                        f"capacity {capacity:2} concurrent {n:2}: ttft p50 {row[2]:6.2f} s "
                        f"p99 {row[3]:6.2f} s, slowest {row[4]:6.2f} s, "
                        f"{row[5]:6.1f} completion tok/s",
                        flush=True,
                    )
                if capacity == 8:
                    choices_rounds(urls)
            finally:
                p.terminate()
                p.wait(timeout=120)
    print("\n| capacity | concurrent | TTFT p50 | TTFT p99 | slowest | completion tok/s |")
    print("|---|---|---|---|---|---|")
    for c, n, p50, p99, slow, tps in rows:
        print(f"| {c} | {n} | {p50:.2f} s | {p99:.2f} s | {slow:.2f} s | {tps:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
