"""Inference through the full chain (OpenAI client -> cocoon-client -> proxy -> worker, RA-TLS on
both hops) against bare mistral.rs on the same GGUF, same prompt, greedy, 64 tokens.

Usage: python3 ci/bench_chain.py ab CLIENT_URL MODEL ROUNDS GGUF   (network up and idle)
Runs the mistral.rs engine test in paced mode (COCOON_BENCH_PACED=1) as the bare baseline and
interleaves its rounds with rounds through the chain, alternating which goes first, so that
the machine's drift cancels out; figures are medians of the per-round pairs (the first pair
warms caches and is dropped). Prints figures; asserts nothing."""
import json
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.request

PROMPT = "Write a long story about a dragon who learns to sail."


def one(url, model):
    body = json.dumps({
        "model": model, "max_tokens": 64, "temperature": 0, "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": PROMPT}],
    }).encode()
    req = urllib.request.Request(url + "/chat/completions", body, {"content-type": "application/json"})
    start = time.perf_counter()
    first = None
    usage = None
    with urllib.request.urlopen(req) as r:
        for line in r:
            line = line.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if ev.get("usage"):
                usage = ev["usage"]
            for c in ev.get("choices", []):
                if c.get("delta", {}).get("content") and first is None:
                    first = time.perf_counter() - start
    total = time.perf_counter() - start
    return usage["completion_tokens"] / total, first * 1000, usage



BARE = re.compile(r"bare (\d+) tok in ([\d.]+)(ms|s|µs) = ([\d.]+) tok/s .*?first ([\d.]+)(ms|s|µs)\)")
UNIT = {"s": 1000.0, "ms": 1.0, "µs": 0.001}


def ab(url, model, rounds, gguf):
    env = dict(os.environ, COCOON_TEST_GGUF=gguf, COCOON_BENCH_ROUNDS=str(rounds + 1),
               COCOON_BENCH_PACED="1")
    bare = subprocess.Popen(
        ["cargo", "test", "--release", "-q", "-p", "cocoon-worker", "--test", "engine_mistralrs",
         "--", "--nocapture"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    pairs, chain_first, pending = [], True, None
    for line in bare.stdout:
        if line.startswith("bench paced: waiting for round"):
            r = int(line.rsplit(" ", 1)[1])
            chain_first = r % 2 == 0
            pending = one(url, model) if chain_first else None
            bare.stdin.write("\n")
            bare.stdin.flush()
            continue
        m = BARE.search(line)
        if m and line.startswith("bench round"):
            b = (float(m.group(4)), float(m.group(5)) * UNIT[m.group(6)])
            c = pending if chain_first else one(url, model)
            pairs.append((c, b))
    if bare.wait() != 0:
        sys.exit("bench_chain: the bare mistral.rs run failed")
    return pairs[1:]


if sys.argv[1] != "ab":
    sys.exit(__doc__)
pairs = ab(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
if not pairs:
    sys.exit("bench_chain: no rounds")
c_tps = statistics.median(c[0] for c, _ in pairs)
c_ttft = statistics.median(c[1] for c, _ in pairs)
b_tps = statistics.median(b[0] for _, b in pairs)
b_ttft = statistics.median(b[1] for _, b in pairs)
ratio = statistics.median(c[0] / b[0] for c, b in pairs)
dttft = statistics.median(c[1] - b[1] for c, b in pairs)
usage = pairs[0][0][2]
print(f"full chain   : {c_tps:.1f} tok/s, time to first token {c_ttft:.0f} ms (median of {len(pairs)}; usage {usage['prompt_tokens']}+{usage['completion_tokens']})")
print(f"bare mistralrs: {b_tps:.1f} tok/s, time to first token {b_ttft:.0f} ms (median of {len(pairs)})")
print("per-round ratios:", " ".join(f"{c[0] / b[0]:.3f}" for c, b in pairs))
print("per-round TTFT overheads (ms):", " ".join(f"{c[1] - b[1]:+.1f}" for c, b in pairs))
print(f"ratio tokens/s chain/bare = {ratio:.3f} (median of per-round pairs); TTFT overhead = {dttft:+.1f} ms (median of pairs)")
