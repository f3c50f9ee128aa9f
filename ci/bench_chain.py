"""Inference through the full chain (OpenAI client -> cocoon-client -> proxy -> worker, RA-TLS on
both hops) against bare mistral.rs on the same GGUF, same prompt, greedy, 64 tokens.

Usage: python3 ci/bench_chain.py chain CLIENT_URL MODEL ROUNDS > chain.json   (network up)
       python3 ci/bench_chain.py report chain.json BARE_LOG               (network stopped)
BARE_LOG is the output of the mistral.rs engine test (bench rounds of bare mistral.rs) run on
the same machine right after the chain rounds. Prints figures; asserts nothing."""
import json
import re
import statistics
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



if sys.argv[1] == "chain":
    url, model, rounds = sys.argv[2], sys.argv[3], int(sys.argv[4])
    rounds_out = [one(url, model) for _ in range(rounds + 1)][1:]  # first round warms caches
    print(json.dumps(rounds_out))
    sys.exit(0)

chain = json.load(open(sys.argv[2]))
bare_log = sys.argv[3]
bare = []
pat = re.compile(r"bare (\d+) tok in ([\d.]+)(ms|s|µs) = ([\d.]+) tok/s .*?first ([\d.]+)(ms|s|µs)\)")
unit = {"s": 1000.0, "ms": 1.0, "µs": 0.001}
for line in open(bare_log, encoding="utf-8"):
    m = pat.search(line)
    if m:
        bare.append((float(m.group(4)), float(m.group(5)) * unit[m.group(6)]))
bare = bare[1:] if len(bare) > 1 else bare
if not bare:
    sys.exit("bench_chain: no bare mistral.rs rounds found in " + bare_log)
c_tps = statistics.median(t for t, _, _ in chain)
c_ttft = statistics.median(f for _, f, _ in chain)
b_tps = statistics.median(t for t, _ in bare)
b_ttft = statistics.median(f for _, f in bare)
print(f"full chain   : {c_tps:.1f} tok/s, time to first token {c_ttft:.0f} ms (median of {len(chain)}; usage {chain[0][2]['prompt_tokens']}+{chain[0][2]['completion_tokens']})")
print(f"bare mistralrs: {b_tps:.1f} tok/s, time to first token {b_ttft:.0f} ms (median of {len(bare)})")
print(f"ratio tokens/s chain/bare = {c_tps / b_tps:.3f}; TTFT overhead = {c_ttft - b_ttft:+.1f} ms")
