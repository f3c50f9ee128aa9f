#!/usr/bin/env python3
"""Process-level fault tests of the inference path: real cocoon-proxy, cocoon-worker and
cocoon-client processes on loopback (simulated TEE, stub engine), and real signals.

Usage: e2e_faults.py BIN_DIR WORK_DIR

The services are started here (not by `cocoon-host launch --local`, whose supervisor stops every
service when one exits), but every file comes from cocoon-host: `launch --local --write-config`
writes the simulated platform, its root, the register files and the local configs (the image
hashes are read from those configs with tomllib), and `cocoon-host config` renders each
service's config from the service's own config type. Every listener binds port 0; addresses
are read from the ready lines. Each worker serves the stub model at 20 tokens/s (200 tokens),
slow enough to act mid-stream.

Scenarios, in this order (one proxy and one client throughout):

C  client disconnect stops the generation: worker-1 alone; an app streams a chat completion
   through cocoon-client, reads a few chunks and closes its socket. cocoon-client cancels the
   request at the proxy, which stops it at the worker: worker-1 must log `completion stopped
   by the proxy` for that request id within 1 s, the proxy must show no request active,
   nothing in flight and nothing abandoned, and it billed the work done.
B  worker killed before the first byte, a second worker available: worker-1 holds one slow
   stream, worker-2 joins and is SIGSTOPped, the request reaches it (the proxy's /jsonstats
   shows it in flight on worker-2), then worker-2 is SIGKILLed. The request must succeed
   through worker-1 within 1 s of the kill, with exactly one proxy retry. The pick is
   deterministic: the held stream (load 1/4 of capacity) multiplies worker-1's score by 1.5,
   and a fresh worker (no latency yet) scores lowest, beyond the proxy's 1.1 tie factor
   (proxy/src/registry.rs).
A  worker killed mid-stream: worker-1 alone streams; after 5 chunks it is SIGKILLed. The app's
   stream must end with an OpenAI error event (`data: {"error": ...}`) and then end, within
   1 s of the kill; proxy and client must still be running, and a new request must get a clear
   error at once (no worker serves the model).
D  worker hung mid-stream: worker-3 alone streams; after 5 chunks it is SIGSTOPped (its socket
   stays open). The proxy's keepalive must end the app's stream with an error event within
   keepalive interval + timeout + 1 s (2.5 s with the defaults); then worker-3 is SIGKILLed.
E  worker shut down mid-stream: worker-4 alone (`shutdown_drain_secs = 1`) streams; after 5
   chunks it gets SIGTERM. At its drain deadline it stops the generation and reports the work
   done: the app's stream ends with an OpenAI error event (`service_unavailable`), no [DONE],
   between 1 and 2 s after the signal; the proxy billed the tokens generated (its /jsonstats
   completion tokens grow by at least the chunks the app saw); worker-4 logs `completion ended
   by shutdown; its usage so far reported` and exits 0.

Measured times are printed as `figure:` lines. PIDs of started processes are appended to
WORK_DIR/pids, so the calling script can kill them even if this script dies.
"""

import datetime
import hashlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import traceback

MODEL = "cocoon-stub"
TOKENS = 200
TOKENS_PER_SECOND = 20.0
READY_SECS = 30
# The bound for a terminal error after a worker dies, and for cancellation.
BOUND_SECS = 1.0
# A hung worker is found by the proxy's keepalive (defaults: ping after 0.5 s of silence,
# gone 1 s later); the bound adds 1 s.
HUNG_BOUND_SECS = 0.5 + 1.0 + 1.0
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def config_rtmr3(text):
    """RTMR3 of a process that measured a config file with this text (one `config` event:
    measurements::runtime_log, computed here independently): digest = SHA-384(
    "cocoon/rtmr3-event/v1\\0" || u32le(6) || "config" || SHA-256(text)), extended into 48 zero
    bytes."""
    payload = hashlib.sha256(text.encode()).digest()
    name = b"config"
    digest = hashlib.sha384(
        b"cocoon/rtmr3-event/v1\0" + len(name).to_bytes(4, "little") + name + payload
    ).digest()
    return hashlib.sha384(b"\0" * 48 + digest).hexdigest()


class Failure(Exception):
    pass


def expect(cond, what):
    if not cond:
        raise Failure(what)


def log(msg):
    print(f"e2e-faults: {msg}", flush=True)


def figure(msg):
    print(f"figure: {msg}", flush=True)


class Net:
    """The processes of the test network and the files they use."""

    def __init__(self, bin_dir, work):
        self.bin = bin_dir
        self.dir = work
        self.logs = os.path.join(work, "logs")
        os.makedirs(self.logs, exist_ok=True)
        self.procs = {}  # name -> Popen
        self.killed = set()  # names this script killed on purpose

    # ---- files ----

    def read(self, name):
        with open(os.path.join(self.dir, name)) as f:
            return f.read()

    def toml(self, name):
        with open(os.path.join(self.dir, name), "rb") as f:
            return tomllib.load(f)

    def host(self, *args):
        """Runs `cocoon-host ARGS` (its output is discarded; failures raise)."""
        subprocess.run(
            [os.path.join(self.bin, "cocoon-host"), *args],
            check=True,
            stdout=subprocess.DEVNULL,
            cwd=self.dir,
        )

    def prepare(self):
        """Platform, its root, registers and image hashes: the local network's files."""
        self.host(
            "launch",
            "--local",
            "--write-config",
            "--engine",
            "stub",
            "--port",
            "0",
            "--dir",
            self.dir,
            "--bin-dir",
            self.bin,
        )
        for f in ("sim-platform.json", "sim-root.der", "proxy-registers.json", "worker-registers.json"):
            expect(os.path.exists(os.path.join(self.dir, f)), f"--write-config wrote no {f}")
        # Each config pins the other role's image (derived by cocoon-host from the binary).
        self.worker_image = self.toml("proxy.toml")["policy"]["images"][0]
        self.proxy_image = self.toml("worker.toml")["policy"]["images"][0]

    # ---- processes ----

    def start(self, name, args, ready):
        """Starts `args` (stdout and stderr to logs/NAME.{out,log}) and waits for a stdout
        line starting with `ready`; returns that line."""
        out_path = os.path.join(self.logs, f"{name}.out")
        env = dict(os.environ, NO_COLOR="1", RUST_LOG=os.environ.get("RUST_LOG", "info"))
        with open(out_path, "wb") as out, open(os.path.join(self.logs, f"{name}.log"), "wb") as err:
            p = subprocess.Popen(
                args, cwd=self.dir, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env
            )
        self.procs[name] = p
        with open(os.path.join(self.dir, "pids"), "a") as f:
            f.write(f"{p.pid}\n")
        deadline = time.monotonic() + READY_SECS
        while time.monotonic() < deadline:
            with open(out_path, "r", errors="replace") as f:
                for line in f:
                    if line.startswith(ready):
                        return line.strip()
            if p.poll() is not None:
                raise Failure(f"{name} exited ({p.returncode}) before it was ready")
            time.sleep(0.02)
        raise Failure(f"{name}: no `{ready}` line within {READY_SECS} s")

    def start_proxy(self):
        # Workers are configured after the proxy (their configs name its port), so the
        # fault tests accept any worker configuration; ci/e2e_attacks.py tests the pins.
        self.host(
            "config", "proxy", "--mode", "local", "--name", "faults-proxy",
            "--worker-listen", "127.0.0.1:0", "--client-listen", "127.0.0.1:0",
            "--admin-listen", "127.0.0.1:0", "--max-prompt-tokens", "4096",
            "--default-balance-nano", "1000000000000",
            "--image", self.worker_image, "--allow-any-config",
            "--out", "proxy.toml",
        )  # fmt: skip
        self.launch_proxy()

    def launch_proxy(self):
        """Starts cocoon-proxy with proxy.toml; reads its three addresses from the ready line."""
        line = self.start(
            "proxy",
            [os.path.join(self.bin, "cocoon-proxy"), "--config", "proxy.toml"],
            "cocoon-proxy: ready",
        )
        m = re.search(r"workers (\S+), clients (\S+), admin ([^)\s]+)", line)
        expect(m, f"unexpected proxy ready line: {line}")
        self.worker_port, self.client_port, self.admin = m.groups()

    def start_worker(self, name, top=()):
        """Renders NAME.toml (with the top-level lines `top` added) and starts the worker."""
        self.host(
            "config", "worker", "--mode", "local", "--name", name,
            "--proxy", self.worker_port, "--capacity", "4", "--image", self.proxy_image,
            "--model", MODEL, "--engine", "stub", "--max-completion-tokens", "512",
            "--stub-tokens", str(TOKENS), "--stub-tokens-per-second", str(TOKENS_PER_SECOND),
            "--out", f"{name}.toml",
        )  # fmt: skip
        if top:
            path = os.path.join(self.dir, f"{name}.toml")
            with open(path) as f:
                text = f.read()
            with open(path, "w") as f:
                f.write("".join(l + "\n" for l in top) + text)
        self.launch_worker(name)

    def launch_worker(self, name):
        """Starts cocoon-worker with NAME.toml and waits until the proxy lists it."""
        self.start(
            name,
            [os.path.join(self.bin, "cocoon-worker"), "--config", f"{name}.toml"],
            "cocoon-worker: ready",
        )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if self.worker_stats(name):
                return
            time.sleep(0.02)
        raise Failure(f"{name} is ready but not in the proxy's /jsonstats")

    def start_client(self):
        self.host(
            "config", "client", "--mode", "local", "--listen", "127.0.0.1:0",
            "--proxy", self.client_port, "--image", self.proxy_image,
            "--rtmr3", config_rtmr3(self.read("proxy.toml")),
            # Workers here restart with changed configs (RTMR3); the fault harness tests the
            # proxy's failure paths in plaintext mode. Encrypted runs: e2e.sh, local.sh.
            "--encryption", "off",
            "--out", "client.toml",
        )  # fmt: skip
        self.client, _ = self.launch_client("client", "client.toml")

    def launch_client(self, name, config):
        """Creates the account key of CONFIG (printing its account id), starts `cocoon-client
        serve` on it; returns ((host, port) of its local endpoint, account id)."""
        client = os.path.join(self.bin, "cocoon-client")
        with open(os.path.join(self.logs, f"{name}-account.log"), "wb") as err:
            out = subprocess.run(
                [client, "account", "--config", config],
                cwd=self.dir,
                check=True,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        account = out.stdout.strip()
        expect(len(account) == 64, f"{name}: account id {out.stdout!r}")
        line = self.start(name, [client, "serve", "--config", config], "cocoon-client: ready ")
        m = re.search(r"http://([^/\s]+)/v1", line)
        expect(m, f"unexpected client ready line: {line}")
        host, port = m.group(1).rsplit(":", 1)
        return (host, int(port)), account

    def kill(self, name, sig=signal.SIGKILL):
        if sig == signal.SIGKILL:
            self.killed.add(name)
        os.kill(self.procs[name].pid, sig)

    def assert_alive(self):
        """Every process not killed on purpose still runs."""
        for name, p in self.procs.items():
            if name not in self.killed:
                expect(p.poll() is None, f"{name} died (exit {p.returncode}); see {self.logs}")

    def stop_all(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
                p.send_signal(signal.SIGCONT)  # a stopped process handles SIGTERM only then
        deadline = time.monotonic() + 5
        for p in self.procs.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    # ---- observation ----

    def jsonstats(self):
        host, port = self.admin.rsplit(":", 1)
        c = http.client.HTTPConnection(host, int(port), timeout=5)
        try:
            c.request("GET", "/jsonstats")
            r = c.getresponse()
            expect(r.status == 200, f"/jsonstats: status {r.status}")
            return json.loads(r.read())
        finally:
            c.close()

    def worker_stats(self, name):
        for w in self.jsonstats()["workers"]:
            if w["name"] == name:
                return w
        return None

    def log_lines(self, name):
        with open(os.path.join(self.logs, f"{name}.log"), "r", errors="replace") as f:
            return [ANSI.sub("", line) for line in f]


class Stream:
    """A streaming chat completion through cocoon-client, read event by event."""

    def __init__(self, net, max_tokens, timeout=10):
        self.conn = http.client.HTTPConnection(*net.client, timeout=timeout)
        body = json.dumps(
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": "count slowly"}],
                "max_tokens": max_tokens,
                "stream": True,
            }
        )
        self.conn.request(
            "POST", "/v1/chat/completions", body, {"Content-Type": "application/json"}
        )
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.request_id = self.resp.getheader("x-request-id")
        self.text = ""
        self.chunks = 0
        self.done = False
        self.error = None

    def next_event(self):
        """The next event's data, or None at the end of the body."""
        data = []
        while True:
            line = self.resp.readline()
            if not line:
                return "\n".join(data) if data else None
            line = line.decode().rstrip("\r\n")
            if line == "":
                if data:
                    return "\n".join(data)
                continue
            if line.startswith("data:"):
                data.append(line[5:].lstrip(" "))

    def read(self, max_events=None):
        """Reads up to `max_events` events (all if None); returns False at the end of the body."""
        n = 0
        while max_events is None or n < max_events:
            ev = self.next_event()
            if ev is None:
                return False
            n += 1
            if ev == "[DONE]":
                self.done = True
                continue
            obj = json.loads(ev)
            if "error" in obj:
                self.error = obj["error"]
                continue
            self.chunks += 1
            for ch in obj.get("choices", []):
                self.text += ch.get("delta", {}).get("content") or ""
        return True

    def close(self):
        self.conn.close()


def wait_for(what, pred, secs):
    """Polls `pred` every 5 ms; returns the seconds it took to hold."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < secs:
        if pred():
            return time.monotonic() - t0
        time.sleep(0.005)
    raise Failure(f"{what}: not within {secs} s")


def log_time(line):
    """The wall-clock time (Unix seconds) of a tracing log line."""
    stamp = line.split(" ", 1)[0]
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def scenario_c(net):
    log("C: client disconnect stops the generation (worker-1 alone)")
    s = Stream(net, max_tokens=TOKENS)
    expect(s.status == 200, f"status {s.status}")
    expect(s.request_id, "no x-request-id header")
    s.read(3)
    expect(s.chunks == 3 and not s.done, "expected 3 chunks of a running stream")
    t_close, wall_close = time.monotonic(), time.time()
    s.conn.sock.shutdown(socket.SHUT_RDWR)
    s.close()
    marker = f"request_id={s.request_id}"

    def cancel_line():
        return next(
            (
                l
                for l in net.log_lines("worker-1")
                if marker in l and "completion stopped by the proxy" in l
            ),
            None,
        )

    wait_for("worker-1 logs the stop", lambda: cancel_line() is not None, 5)
    line = cancel_line()
    # The worker's own timestamp: exact, not bounded by this script's polling.
    secs = log_time(line) - wall_close
    expect(
        not any(marker in l and "completion done" in l for l in net.log_lines("worker-1")),
        "the cancelled request also logged `completion done`",
    )
    wait_for(
        "proxy: no active request, nothing in flight",
        lambda: (st := net.jsonstats())["requests"]["active"] == 0
        and all(w["in_flight"] == 0 for w in st["workers"]),
        5,
    )
    idle = time.monotonic() - t_close
    st = net.jsonstats()
    expect(st["requests"]["abandoned"] == 0, f"abandoned {st['requests']['abandoned']}")
    billed = sum(c["completion_tokens"] for c in st["clients"].values())
    expect(billed > 0, "the stopped request's work was not billed")
    d = re.search(r"duration_ms=(\d+)", line)
    figure(f"app disconnect -> worker stops the generation (worker log) {secs * 1000:.1f} ms")
    figure(f"app disconnect -> proxy idle (/jsonstats, 5 ms polling) {idle * 1000:.0f} ms")
    log(
        f"C: the generation ran {d.group(1) if d else '?'} ms of a "
        f"{TOKENS / TOKENS_PER_SECOND:.0f} s stream"
    )
    expect(secs <= BOUND_SECS, f"cancellation took {secs:.3f} s (bound {BOUND_SECS} s)")
    expect(idle <= BOUND_SECS, f"proxy idle after {idle:.3f} s (bound {BOUND_SECS} s)")
    net.assert_alive()


def scenario_b(net):
    log("B: worker killed before the first byte, a second worker available")
    hold = Stream(net, max_tokens=TOKENS)
    expect(hold.status == 200, f"hold stream: status {hold.status}")
    hold.read(2)
    w1 = net.worker_stats("worker-1")
    expect(w1["in_flight"] == 1, f"worker-1 in flight {w1['in_flight']}, expected 1")
    net.start_worker("worker-2")
    retries0 = net.jsonstats()["requests"]["retries"]
    net.kill("worker-2", signal.SIGSTOP)
    result = {}

    # The request blocks until an answer: send it from a thread so the kill can happen while
    # the proxy waits on worker-2.
    def request():
        try:
            s = Stream(net, max_tokens=5)
            # cocoon-client answers once the first event arrived.
            result["t_first"] = time.monotonic()
            result["status"] = s.status
            if s.status == 200:
                s.read()
            result["stream"] = s
        except Exception as e:  # noqa: BLE001 - reported below
            result["exc"] = e
        result["t_end"] = time.monotonic()

    th = threading.Thread(target=request, daemon=True)
    th.start()
    try:
        wait_for(
            "the proxy forwards the request to the stopped worker-2",
            lambda: (net.worker_stats("worker-2") or {}).get("in_flight") == 1,
            3,
        )
    except Failure:
        w = net.worker_stats("worker-1")
        raise Failure(
            f"request not in flight on worker-2 (worker-1 in flight {w and w['in_flight']}): "
            "the proxy did not pick the fresh worker"
        ) from None
    time.sleep(0.2)  # the request sits unanswered at the stopped worker
    expect("t_end" not in result, "the request ended while worker-2 was stopped")
    t_kill = time.monotonic()
    net.kill("worker-2")
    th.join(10)
    expect(not th.is_alive(), "request still running 10 s after the kill")
    expect("exc" not in result, f"request failed: {result.get('exc')!r}")
    s = result["stream"]
    expect(result["status"] == 200, f"status {result['status']}")
    expect(s.error is None, f"stream error: {s.error}")
    expect(s.done and s.chunks >= 5, f"stream incomplete (done {s.done}, {s.chunks} chunks)")
    expect(s.text == "".join(f"tok{i} " for i in range(5)), f"unexpected text {s.text!r}")
    first, secs = result["t_first"] - t_kill, result["t_end"] - t_kill
    expect(
        any(
            f"request_id={s.request_id}" in l and "completion done" in l
            for l in net.log_lines("worker-1")
        ),
        "worker-1 did not complete the retried request",
    )
    st = net.jsonstats()
    expect(
        st["requests"]["retries"] == retries0 + 1,
        f"proxy retries {st['requests']['retries']}, expected {retries0 + 1}",
    )
    expect(
        all(w["name"] != "worker-2" for w in st["workers"]),
        "the killed worker-2 is still registered",
    )
    figure(f"worker killed before the first byte -> first byte via worker-1 {first * 1000:.0f} ms")
    figure(
        f"worker killed before the first byte -> complete answer via worker-1 "
        f"(5 tokens at {TOKENS_PER_SECOND:.0f}/s) {secs * 1000:.0f} ms"
    )
    expect(first <= BOUND_SECS, f"first byte {first:.3f} s after the kill (bound {BOUND_SECS} s)")
    hold.close()
    wait_for(
        "worker-1 idle after the hold stream closed",
        lambda: (net.worker_stats("worker-1") or {}).get("in_flight") == 0,
        5,
    )
    net.assert_alive()


def fault_mid_stream(net, worker, sig):
    """Streams through `worker` (the only one), sends it `sig` after 5 chunks and reads the
    rest; returns (seconds to the error event, seconds to the end of the response)."""
    s = Stream(net, max_tokens=TOKENS)
    expect(s.status == 200, f"status {s.status}")
    s.read(5)
    expect(
        s.chunks == 5 and s.error is None and not s.done, "expected 5 chunks of a running stream"
    )
    t_sig = time.monotonic()
    net.kill(worker, sig)
    t_error = None
    while True:
        ev = s.next_event()
        if ev is None:
            break
        if ev == "[DONE]":
            raise Failure(f"stream ended with [DONE] after {worker} got {sig.name}")
        obj = json.loads(ev)
        if "error" in obj and t_error is None:
            t_error = time.monotonic()
            s.error = obj["error"]
    t_end = time.monotonic()
    s.close()
    expect(t_error is not None, "the stream ended without an error event")
    expect(s.error.get("message"), f"error event without a message: {s.error}")
    log(f"error event {json.dumps(s.error)}")
    return t_error - t_sig, t_end - t_sig


def scenario_a(net):
    log("A: worker killed mid-stream (worker-1 alone)")
    err_secs, end_secs = fault_mid_stream(net, "worker-1", signal.SIGKILL)
    figure(f"worker SIGKILL mid-stream -> app gets the error event {err_secs * 1000:.0f} ms")
    figure(f"worker SIGKILL mid-stream -> end of the response {end_secs * 1000:.0f} ms")
    expect(err_secs <= BOUND_SECS, f"error event after {err_secs:.3f} s (bound {BOUND_SECS} s)")
    expect(end_secs <= BOUND_SECS, f"response ended after {end_secs:.3f} s (bound {BOUND_SECS} s)")
    net.assert_alive()
    # No worker left: a new request gets a clear error at once, not a hang.
    t0 = time.monotonic()
    c = http.client.HTTPConnection(*net.client, timeout=5)
    body = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    )
    c.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    payload = json.loads(r.read())
    c.close()
    secs = time.monotonic() - t0
    expect(400 <= r.status < 600 and "error" in payload, f"status {r.status}: {payload}")
    log(
        f"A: request with no worker left: {r.status} {payload['error'].get('code')} "
        f"in {secs * 1000:.0f} ms"
    )
    expect(secs <= BOUND_SECS, f"request with no worker took {secs:.3f} s")
    net.assert_alive()


def scenario_d(net):
    # Not a kill: the worker's socket stays open, so only the proxy's HTTP/2 keepalive
    # (worker_keepalive_interval_ms + worker_keepalive_timeout_ms) can tell it is gone.
    log("D: worker hung mid-stream (SIGSTOP; worker-3 alone)")
    net.start_worker("worker-3")
    err_secs, end_secs = fault_mid_stream(net, "worker-3", signal.SIGSTOP)
    figure(f"worker SIGSTOP mid-stream -> app gets the error event {err_secs * 1000:.0f} ms")
    expect(
        err_secs <= HUNG_BOUND_SECS,
        f"error event after {err_secs:.3f} s (bound {HUNG_BOUND_SECS} s: keepalive + 1 s)",
    )
    expect(end_secs <= HUNG_BOUND_SECS, f"response ended after {end_secs:.3f} s")
    expect(net.worker_stats("worker-3") is None, "the hung worker-3 is still registered")
    net.kill("worker-3")
    net.assert_alive()


def scenario_e(net):
    log("E: worker shut down mid-stream (SIGTERM; worker-4 alone, drain 1 s)")
    net.start_worker("worker-4", top=["shutdown_drain_secs = 1"])
    before = sum(c["completion_tokens"] for c in net.jsonstats()["clients"].values())
    s = Stream(net, max_tokens=TOKENS)
    expect(s.status == 200, f"status {s.status}")
    s.read(5)
    expect(s.chunks == 5 and s.error is None, "expected 5 chunks of a running stream")
    t_sig = time.monotonic()
    net.killed.add("worker-4")
    net.kill("worker-4", signal.SIGTERM)
    s.read()
    secs = time.monotonic() - t_sig
    s.close()
    expect(not s.done, "[DONE] after the worker's drain deadline")
    expect(s.error is not None, "the stream ended without an error event")
    expect(s.error.get("code") == "service_unavailable", f"error {s.error}")
    expect(1.0 <= secs < 2.0, f"the stream ended {secs:.2f} s after SIGTERM")
    billed = sum(c["completion_tokens"] for c in net.jsonstats()["clients"].values()) - before
    expect(billed >= s.chunks - 1, f"billed {billed} completion tokens for {s.chunks} chunks")
    code = net.procs["worker-4"].wait(10)
    expect(code == 0, f"worker-4 exit {code}")
    marker = f"request_id={s.request_id}"
    expect(
        any(
            marker in l and "completion ended by shutdown; its usage so far reported" in l
            for l in net.log_lines("worker-4")
        ),
        "worker-4 did not log that it reported the usage at its deadline",
    )
    figure(f"worker SIGTERM mid-stream (drain 1 s) -> app gets the error event {secs * 1000:.0f} ms")
    log(f"E: {billed} completion tokens billed for the {s.chunks} chunks the app saw")
    net.assert_alive()


def main():
    if len(sys.argv) != 3:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    net = Net(os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2]))
    # SIGTERM (from ci/e2e-faults.sh on interrupt) unwinds through `finally`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t0 = time.monotonic()
    try:
        net.prepare()
        net.start_proxy()
        net.start_client()
        net.start_worker("worker-1")
        log(f"network up in {time.monotonic() - t0:.1f} s (proxy admin {net.admin})")
        for scenario in (scenario_c, scenario_b, scenario_a, scenario_d, scenario_e):
            scenario(net)
    except Failure as e:
        log(f"FAILED: {e}")
        return 1
    except Exception:  # noqa: BLE001 - a timeout or a broken connection is a failure too
        traceback.print_exc()
        log("FAILED: unexpected exception (a hang shows up as a socket timeout)")
        return 1
    finally:
        net.stop_all()
    log(f"all scenarios passed in {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
