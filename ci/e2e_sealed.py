#!/usr/bin/env python3
"""End-to-end encryption and receipts with real processes: cocoon-proxy, two cocoon-worker
(stub engine) and two cocoon-client processes on loopback with the simulated TEE; requests are
sealed to the workers (encryption is on by default in the client).

Usage: e2e_sealed.py BIN_DIR WORK_DIR

Every file comes from cocoon-host (`launch --local --write-config`, `cocoon-host config`); two
lines are added to the rendered configs: the proxy's development recording hook
`record_forwarded` (every byte it forwards, at the HTTP layer: proxy/src/record.rs) with a
durable ledger, and each client's `receipts_file`.

Scenarios, in this order:

canary   The stub engine echoes the words after `echo:`, so a random canary is in the prompt
         and in the completion. Chat (streaming and not) and completions through client A:
         each answer carries the canary; the proxy's recording holds the model name but not
         the canary, raw, as hex or as base64 (every alignment).
mixed    24 requests from both clients, four at a time: chat and completions, streaming and
         not, max_tokens from 1 to 100. All succeed; a non-streaming answer's usage equals its
         receipt's.
rotate   worker-1 stops and worker-2 (new keys) joins: each client's cached keys name only
         worker-1, the proxy answers 421 e2e_recipient_unavailable, the client fetches the keys
         again and reseals once; the request succeeds and is charged once.
leave    worker-2 (alone, slow: 100 tokens/s) streams to an app through client A; the app
         reads 3 chunks and closes its socket. Client A cancels the request at the proxy and
         reads the rest: worker-2 logs `completion stopped by the proxy` for that request id,
         and client A's receipt log gains that request's receipt (finish reason `cancelled`,
         the tokens generated so far) within 5 s — the charge the proxy makes for it is one
         the client can account for.
stall    An app stops reading a long stream (worker-3 streams up to 60,000 tokens of model
         `cocoon-long` at full speed; the app's socket has a 4 KiB receive buffer). Once client
         A's windows fill, the proxy sees its client take nothing for `client_stall_secs` (1 s
         here), stops the generation at worker-3 and bills it on its receipt. When the app
         reads again it gets what was queued and then an OpenAI error naming the limit, no
         `[DONE]`; client A's log gains the receipt (finish reason `cancelled`, at least the
         tokens the app received) from the proxy's copy, verified with worker-3's key — so the
         ledger scenario's sums still match.
ledger   Per client: every answered request has one verified receipt in the client's log; the
         proxy's debit for the account equals the sum of the log's costs (what the client
         computed from the receipts); the proxy verified every receipt (none invalid) and its
         durable ledger stored one per charge.
shutdown worker-2 streams to an app through client A; after 3 chunks the proxy gets SIGTERM
         (shutdown_drain_secs = 1). At the drain deadline the proxy stops the generation at
         worker-2 and bills its receipt: the app gets an OpenAI error event
         (`service_unavailable`) and no `[DONE]`, client A's receipt log gains the receipt
         (finish reason `cancelled`) and worker-2 logs `completion stopped by the proxy`; the
         proxy exits 0 within the drain and its 2 s flush.

PIDs of started processes are appended to WORK_DIR/pids.
"""

import base64
import http.client
import json
import os
import secrets
import signal
import socket
import sys
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_faults import Failure, Net, config_rtmr3, expect  # noqa: E402

MODEL = "cocoon-stub"
MODEL_LONG = "cocoon-long"
CLIENTS = ("a", "b")


def log(msg):
    print(f"e2e-sealed: {msg}", flush=True)


def insert_top(path, lines):
    """Adds top-level keys after the rendered header comments (before any table)."""
    with open(path) as f:
        rest = f.read().splitlines(keepends=True)
    head = []
    while rest and rest[0].startswith("#"):
        head.append(rest.pop(0))
    with open(path, "w") as f:
        f.write("".join(head) + "".join(l + "\n" for l in lines) + "".join(rest))


class Sealed:
    def __init__(self, net, record=True, ledger=True):
        self.net = net
        self.record = record
        self.ledger = ledger
        self.clients = {}  # name -> (host, port)
        self.accounts = {}  # name -> account id
        self.rtmr3 = {}

    def start_proxy(self):
        n = self.net
        n.host(
            "config", "proxy", "--mode", "local", "--name", "sealed-proxy",
            "--worker-listen", "127.0.0.1:0", "--client-listen", "127.0.0.1:0",
            "--admin-listen", "127.0.0.1:0", "--max-prompt-tokens", "4096",
            "--default-balance-nano", "1000000000000",
            "--image", n.worker_image, "--allow-any-config",
            "--out", "proxy.toml",
        )  # fmt: skip
        path = os.path.join(n.dir, "proxy.toml")
        # Short, for scenarios shutdown and stall.
        insert_top(path, ["shutdown_drain_secs = 1", "client_stall_secs = 1"])
        if self.record:
            insert_top(path, ['record_forwarded = "forwarded.log"'])
        if self.ledger:
            with open(path, "a") as f:
                f.write('\n[ledger]\npath = "ledger.redb"\n\n[keys]\ndir = "keys"\npassphrase_file = "keys.pass"\n')
        pass_path = os.path.join(n.dir, "keys.pass")
        with open(pass_path, "w") as f:
            f.write(secrets.token_hex(16))
        os.chmod(pass_path, 0o600)
        n.launch_proxy()

    def config_worker(self, name, tokens=24, tokens_per_second=2000, model=MODEL, context=None):
        max_completion = context - 100 if context else 512
        self.net.host(
            "config", "worker", "--mode", "local", "--name", name,
            "--proxy", self.net.worker_port, "--capacity", "4", "--image", self.net.proxy_image,
            "--model", model, "--engine", "stub", "--max-completion-tokens", str(max_completion),
            "--stub-tokens", str(tokens), "--stub-tokens-per-second", str(tokens_per_second),
            "--out", f"{name}.toml",
        )  # fmt: skip
        if context:
            # The stub advertises a 4096-token context unless its model entry says otherwise.
            path = os.path.join(self.net.dir, f"{name}.toml")
            with open(path) as f:
                text = f.read()
            key = f"max_completion_tokens = {max_completion}"
            expect(text.count(key) == 1, f"{name}.toml: no single `{key}`")
            with open(path, "w") as f:
                f.write(text.replace(key, f"{key}\nmax_context = {context}"))
        self.rtmr3[name] = config_rtmr3(self.net.read(f"{name}.toml"))

    def start_worker(self, name):
        self.net.launch_worker(name)

    def start_client(self, c, encryption=True):
        n = self.net
        cfg = f"client-{c}.toml"
        args = [
            "config", "client", "--mode", "local", "--listen", "127.0.0.1:0",
            "--proxy", n.client_port, "--image", n.proxy_image,
            "--rtmr3", config_rtmr3(n.read("proxy.toml")),
            "--account-key-file", f"client-{c}.key",
            "--out", cfg,
        ]  # fmt: skip
        if encryption:
            args += ["--worker-image", n.worker_image]
            for r in self.rtmr3.values():
                args += ["--worker-rtmr3", r]
        else:
            args += ["--encryption", "off"]
        n.host(*args)
        if encryption:
            insert_top(os.path.join(n.dir, cfg), [f'receipts_file = "receipts-{c}.jsonl"'])
        self.clients[c], self.accounts[c] = n.launch_client(f"client-{c}", cfg)

    # ---- requests ----

    def request(self, c, path, body):
        """One request through client `c`; returns (status, text, usage, request id)."""
        conn = http.client.HTTPConnection(*self.clients[c], timeout=30)
        try:
            conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            r = conn.getresponse()
            rid = r.getheader("x-request-id")
            raw = r.read()
        finally:
            conn.close()
        if r.status != 200:
            return r.status, raw.decode(errors="replace"), None, rid
        if not body.get("stream"):
            obj = json.loads(raw)
            ch = obj["choices"][0]
            text = ch.get("text") if "text" in ch else ch["message"]["content"]
            return 200, text, obj.get("usage"), rid
        text, done, usage = "", False, None
        for line in raw.decode().splitlines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                continue
            obj = json.loads(data)
            expect("error" not in obj, f"stream error: {obj}")
            if obj.get("usage"):
                usage = obj["usage"]
            for ch in obj.get("choices", []):
                text += ch.get("text") or (ch.get("delta") or {}).get("content") or ""
        expect(done, "stream ended without [DONE]")
        return 200, text, usage, rid

    def ask(self, c, kind, stream, max_tokens, prompt):
        if kind == "chat":
            path = "/v1/chat/completions"
            body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}]}
        else:
            path = "/v1/completions"
            body = {"model": MODEL, "prompt": prompt}
        body.update({"max_tokens": max_tokens, "stream": stream})
        if stream:
            body["stream_options"] = {"include_usage": True}
        return self.request(c, path, body)

    def receipts(self, c):
        path = os.path.join(self.net.dir, f"receipts-{c}.jsonl")
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return [json.loads(l) for l in f if l.strip()]


def b64_variants(canary):
    """Base64 text that any occurrence of `canary` in base64-encoded data must contain: for
    each of the three alignments, the characters that depend only on the canary's bytes."""
    out = []
    for pad in range(3):
        enc = base64.b64encode(b"\0" * pad + canary).decode()
        # Character j encodes bits [6j, 6j + 6): keep those inside the canary's bits.
        first = -(-pad * 8 // 6)
        end = (pad + len(canary)) * 8 // 6
        out.append(enc[first:end])
    return out


def scenario_canary(s):
    log("canary: prompt and completion carry a random canary; the proxy's recording must not")
    canary = "cnry" + secrets.token_hex(8)
    prompt = f"echo: {canary}"
    for kind, stream in (("chat", True), ("chat", False), ("completions", False)):
        status, text, _, _ = s.ask("a", kind, stream, 4, prompt)
        expect(status == 200, f"{kind} stream={stream}: status {status}: {text[:200]}")
        expect(canary in text, f"{kind} stream={stream}: the answer lacks the canary: {text!r}")
    with open(os.path.join(s.net.dir, "forwarded.log"), "rb") as f:
        rec = f.read()
    expect(rec.count(b"=== to-worker body") >= 3, "the recording holds no request bodies")
    expect(rec.count(b"=== from-worker data") >= 3, "the recording holds no response data")
    expect(MODEL.encode() in rec, "the model name (a routing header) is not in the recording")
    cb = canary.encode()
    needles = {
        "raw": [cb],
        "hex": [cb.hex().encode(), cb.hex().upper().encode()],
        "base64": [v.encode() for v in b64_variants(cb)],
        "base64url": [v.replace("+", "-").replace("/", "_").encode() for v in b64_variants(cb)],
    }
    for form, ns in needles.items():
        for n in ns:
            expect(n not in rec, f"the canary ({form}) is in the proxy's recording")
    # The control: each search finds the canary where it is.
    for pad in range(3):
        blob = b"x" * pad + cb + b"tail"
        expect(any(v.encode() in base64.b64encode(blob) for v in b64_variants(cb)), "b64 control")
        expect(cb.hex().encode() in blob.hex().encode(), "hex control")
    log(f"canary: {len(rec)} recorded bytes, model name present, canary absent in every form")


def scenario_mixed(s):
    log("mixed: 24 requests from two clients, four at a time")
    shapes = []
    for i in range(24):
        c = CLIENTS[i % 2]
        kind = "chat" if i % 3 else "completions"
        stream = i % 4 in (1, 2)
        max_tokens = (1, 5, 24, 100)[i % 4]
        shapes.append((c, kind, stream, max_tokens, f"request {i} " + "w " * (i % 7)))
    results = [None] * len(shapes)

    def run(i):
        try:
            results[i] = s.ask(*shapes[i])
        except Exception as e:  # noqa: BLE001 - reported below
            results[i] = (0, repr(e), None, None)

    for start in range(0, len(shapes), 4):
        ts = [threading.Thread(target=run, args=(i,)) for i in range(start, start + 4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    by_id = {}
    for c in CLIENTS:
        for r in s.receipts(c):
            by_id[r["request_id"]] = r
    for i, (status, text, usage, rid) in enumerate(results):
        c, kind, stream, max_tokens, _ = shapes[i]
        expect(status == 200, f"request {i} ({kind}, stream={stream}): {status} {text[:200]}")
        expect(usage, f"request {i}: no usage")
        expect(usage["completion_tokens"] == min(24, max_tokens), f"request {i}: {usage}")
        r = by_id.get(rid)
        expect(r, f"request {i} (id {rid}): no receipt in client {c}'s log")
        for k in ("prompt_tokens", "completion_tokens"):
            expect(r["usage"][k] == usage[k], f"request {i}: receipt {r['usage']} vs {usage}")
    log("mixed: 24/24 answered, each with a receipt equal to its usage")


def scenario_rotate(s):
    log("rotate: worker-1 stops, worker-2 (new keys) joins; cached keys name worker-1 only")
    n = s.net
    n.killed.add("worker-1")
    n.procs["worker-1"].terminate()
    n.procs["worker-1"].wait(10)
    deadline = time.monotonic() + 10
    while n.jsonstats()["workers"]:
        expect(time.monotonic() < deadline, "worker-1 still registered")
        time.sleep(0.05)
    s.start_worker("worker-2")
    before = n.jsonstats()["requests"]["by_status"].get("421", 0)
    for c in CLIENTS:
        status, text, usage, _ = s.ask(c, "chat", False, 5, "after rotation")
        expect(status == 200, f"client {c} after rotation: {status} {text[:300]}")
    after = n.jsonstats()["requests"]["by_status"].get("421", 0)
    expect(after - before == 2, f"expected one 421 per client, saw {after - before}")
    log("rotate: each client got one 421, refreshed the keys, resealed and was answered")


def open_chat_stream(s, model, max_tokens, prompt, timeout=30, rcvbuf=None):
    """Sends a streaming chat through client A and reads its response head (200 expected), on a
    socket with receive buffer `rcvbuf` if given; returns the connection, the response and its
    request id."""
    conn = http.client.HTTPConnection(*s.clients["a"], timeout=timeout)
    if rcvbuf is not None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout)
        sock.connect(s.clients["a"])
        conn.sock = sock
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": True,
    }
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = conn.getresponse()
    if r.status != 200:
        # (Read only on failure: reading the body is what the stall scenario must not do.)
        expect(False, f"status {r.status}: {r.read()[:300]!r}")
    return conn, r, r.getheader("x-request-id")


def read_to_end(r):
    """Reads a streaming response to its end; returns its content chunks, its error (or None)
    and whether `[DONE]` came."""
    chunks, error, done = 0, None, False
    while True:
        line = r.readline()
        if not line:
            break
        if line.startswith(b"data: [DONE]"):
            done = True
        elif line.startswith(b"data:") and b'"error"' in line:
            error = json.loads(line[5:])["error"]
        elif line.startswith(b"data:") and b'"content"' in line:
            chunks += 1
    return chunks, error, done


def slow_stream(s):
    """A 400-token streaming chat through client A, read up to its third content chunk;
    returns the connection, the response and its request id."""
    conn, r, rid = open_chat_stream(s, MODEL, 400, "count slowly")
    chunks = 0
    while chunks < 3:
        line = r.readline()
        expect(line, "stream ended early")
        if line.startswith(b"data:") and b'"content"' in line:
            chunks += 1
    return conn, r, rid


def stopped_receipt(s, rid, tokens_at_least=3, tokens_below=400):
    """Waits (5 s at most) for request `rid`'s receipt in client A's log; checks it is for a
    stopped generation of [tokens_at_least, tokens_below) completion tokens and returns them."""
    deadline = time.monotonic() + 5
    receipt = None
    while receipt is None:
        receipt = next((x for x in s.receipts("a") if x["request_id"] == rid), None)
        if receipt is None:
            expect(time.monotonic() < deadline, f"no receipt for {rid} in client a's log within 5 s")
            time.sleep(0.02)
    expect(receipt["finish_reason"] == "cancelled", f"finish reason {receipt['finish_reason']}")
    tokens = receipt["usage"]["completion_tokens"]
    expect(tokens_at_least <= tokens < tokens_below, f"receipt for {tokens} completion tokens")
    return tokens


def expect_stopped_by_proxy(s, worker, rid):
    """`worker` logged that the proxy stopped request `rid`."""
    marker = f"request_id={rid}"
    expect(
        any(marker in l and "completion stopped by the proxy" in l for l in s.net.log_lines(worker)),
        f"{worker} did not log `completion stopped by the proxy`",
    )


def scenario_leave(s):
    log("leave: an app closes its socket mid-stream (worker-2, 100 tokens/s)")
    conn, r, rid = slow_stream(s)
    t_close = time.monotonic()
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    done = stopped_receipt(s, rid)
    took = time.monotonic() - t_close
    expect_stopped_by_proxy(s, "worker-2", rid)
    log(f"leave: stopped after {done} of 400 tokens; the receipt reached client a's log {took * 1000:.0f} ms after the app left")


def scenario_shutdown(s):
    log("shutdown: SIGTERM to the proxy while worker-2 streams to an app (drain 1 s)")
    conn, r, rid = slow_stream(s)
    t_term = time.monotonic()
    s.net.killed.add("proxy")
    s.net.kill("proxy", signal.SIGTERM)
    _, error, done = read_to_end(r)
    t_end = time.monotonic()
    conn.close()
    expect(error is not None, "the app's stream ended without an error event")
    expect(error.get("code") == "service_unavailable", f"error {error}")
    expect(not done, "[DONE] after a stream stopped at the drain deadline")
    took = t_end - t_term
    expect(1.0 <= took < 3.0, f"the stream ended {took:.2f} s after SIGTERM")
    code = s.net.procs["proxy"].wait(10)
    expect(code == 0, f"proxy exit {code}")
    tokens = stopped_receipt(s, rid)
    expect_stopped_by_proxy(s, "worker-2", rid)
    log(f"shutdown: stopped at the deadline after {tokens} of 400 tokens, the app got the error {took:.2f} s after SIGTERM; receipt in client a's log; proxy exit 0")


def scenario_stall(s):
    log("stall: an app stops reading a 60,000-token stream (worker-3 at full speed, client_stall_secs = 1)")
    s.start_worker("worker-3")
    stalls0 = s.net.jsonstats()["requests"]["client_stalls"]
    conn, r, rid = open_chat_stream(s, MODEL_LONG, 60000, "count for a long time", timeout=60, rcvbuf=4096)
    # Not reading: the client's windows fill, then the proxy's stall limit acts.
    deadline = time.monotonic() + 30
    while s.net.jsonstats()["requests"]["client_stalls"] == stalls0:
        expect(time.monotonic() < deadline, "the proxy never saw the app's client stall")
        time.sleep(0.05)
    t_cut = time.monotonic()
    chunks, error, done = read_to_end(r)
    conn.close()
    expect(error is not None, "the app's stream ended without an error event")
    expect("client_stall_secs" in error.get("message", ""), f"error {error}")
    expect(not done, "[DONE] after a stream cut for not reading")
    # At least what the app received: it asked for the tokens in the buffers too.
    tokens = stopped_receipt(s, rid, tokens_at_least=max(chunks, 1), tokens_below=60000)
    expect_stopped_by_proxy(s, "worker-3", rid)
    log(f"stall: stopped after {tokens} of 60000 tokens ({chunks} reached the app), read {time.monotonic() - t_cut:.2f} s after the cut; error names client_stall_secs; receipt (the proxy's copy) in client a's log")


def scenario_ledger(s):
    st = s.net.jsonstats()
    total = 0
    for c in CLIENTS:
        lines = s.receipts(c)
        acct = s.accounts[c]
        debit = st["clients"].get(acct, {})
        cost = sum(r["cost_nano"] for r in lines)
        expect(debit.get("requests") == len(lines), f"client {c}: proxy billed {debit.get('requests')} requests, {len(lines)} receipts")
        expect(debit.get("cost_nano") == cost, f"client {c}: proxy debit {debit.get('cost_nano')} nano, receipts sum {cost}")
        stored = st.get("receipts_stored", {}).get(acct)
        expect(stored == len(lines), f"client {c}: ledger stored {stored} receipts, client has {len(lines)}")
        log(f"ledger: client {c}: {len(lines)} receipts, {cost} nano = proxy debit")
        total += len(lines)
    req = st["requests"]
    expect(req["receipts_valid"] == total, f"proxy verified {req['receipts_valid']} receipts, clients hold {total}")
    expect(req["receipts_invalid"] == 0, f"{req['receipts_invalid']} invalid receipts")
    expect(total > 20, f"only {total} receipts")


def main():
    if len(sys.argv) != 3:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    net = Net(os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2]))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    s = Sealed(net)
    t0 = time.monotonic()
    try:
        net.prepare()
        s.start_proxy()
        s.config_worker("worker-1")
        # Slow enough for an app to leave mid-stream (scenario leave).
        s.config_worker("worker-2", tokens=400, tokens_per_second=100)
        # Fast and long enough to fill an app's and its client's windows (scenario stall).
        s.config_worker("worker-3", tokens=60000, tokens_per_second=0, model=MODEL_LONG, context=100000)
        s.start_worker("worker-1")
        for c in CLIENTS:
            s.start_client(c)
        log(f"network up in {time.monotonic() - t0:.1f} s")
        scenario_canary(s)
        scenario_mixed(s)
        scenario_rotate(s)
        scenario_leave(s)
        scenario_stall(s)
        scenario_ledger(s)
        net.assert_alive()
        scenario_shutdown(s)
    except Failure as e:
        log(f"FAILED: {e} (logs in {net.logs})")
        return 1
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        log(f"FAILED: unexpected exception (logs in {net.logs})")
        return 1
    finally:
        net.stop_all()
    log(f"all scenarios passed in {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
