#!/usr/bin/env python3
"""Attacks on the trust of the local network, with real processes (issue "Close the trust
holes", item 1): a genuine image with a host-written configuration must be refused.

Usage: e2e_attacks.py BIN_DIR WORK_DIR

The genuine network is `cocoon-host launch --local --engine stub`: its client pins the proxy's
image and RTMR3 (the proxy's config file, which the proxy process measures), and its proxy pins
the worker's image, RTMR3 and model. Then, with the same binaries (so the same image hashes):

P  rogue proxy: a copy of the proxy's config that accepts any worker configuration
   (`allow_any_config = true`, no RTMR3 or model pin) on other ports, reached by a client that
   uses the genuine client's policy. The client must refuse the proxy with `rtmr3 mismatch`
   before any prompt is sent (before this fix it pinned the image only and accepted it).
W  rogue worker: a copy of the worker's config with `engine = "upstream"` pointing at a host
   URL (a server outside any TEE that would see every prompt in plaintext). The genuine proxy
   must refuse it with `rtmr3_mismatch` (counted in /jsonstats `worker_rejections`) and keep
   routing to the genuine worker only.
G  GPU evidence: the local network's worker runs one simulated GPU and the genuine proxy lists
   it verified in /jsonstats, with the 3 OCSP answers of its chain (from the launcher's
   simulated responder) fresh. A proxy that pins no worker configuration (allow_any_config)
   but keeps the GPU requirement refuses a copy of the worker without `[gpu]` with
   `gpu_evidence` (the certificate carries none), a copy without `ocsp_url` with
   `gpu_evidence` naming OCSP, and registers the copy with its GPU and OCSP.
C  the client's own GPU check: a proxy that requires no GPU registers a copy of the worker
   without `[gpu]`; a client that pins both configurations (so nothing else refuses them) but
   whose worker policy requires GPU evidence fetches the proxy's worker directory, refuses
   the worker naming `gpu evidence`, and sends no prompt (the worker serves no request).
M  RTMR3 computed here independently (Python, from the file bytes) equals what the launcher
   pinned: the pin is a function of the config text alone.

The rogue configs are derived from the genuine ones by `cocoon-host config edit` (keys changed,
the rest kept, the result re-read as the service's own config type); configs are read here
with tomllib only.
"""

import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import tomllib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_faults import Failure, Net, config_rtmr3, expect  # noqa: E402

READY_SECS = 60
# The simulated NVIDIA root and reference values the proxy's and client's worker policies name.
GPU_FILES = ["sim-nvidia-root.der", "sim-gpu-refs.json"]


def log(msg):
    print(f"e2e-attacks: {msg}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post_chat(addr, model, timeout=30):
    host, port = addr
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        body = json.dumps(
            {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
        )
        c.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        r = c.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        c.close()


def client_addr(url):
    m = re.match(r"http://([^/:]+):(\d+)/v1", url)
    expect(m, f"unexpected client url {url}")
    return m.group(1), int(m.group(2))


def launch(bin_dir, net_dir, logs):
    out = open(os.path.join(logs, "launcher.out"), "wb")
    p = subprocess.Popen(
        [
            os.path.join(bin_dir, "cocoon-host"),
            "launch",
            "--local",
            "--engine",
            "stub",
            "--port",
            "0",
            "--dir",
            net_dir,
            "--bin-dir",
            bin_dir,
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    urls = os.path.join(net_dir, "urls.json")
    deadline = time.monotonic() + READY_SECS
    while not os.path.exists(urls):
        expect(p.poll() is None, f"launcher exited ({p.returncode}); see {logs}/launcher.out")
        expect(time.monotonic() < deadline, "local network not ready in time")
        time.sleep(0.1)
    with open(urls) as f:
        return p, json.load(f)


def copy(src_dir, dst_dir, names):
    os.makedirs(dst_dir, exist_ok=True)
    for n in names:
        shutil.copy(os.path.join(src_dir, n), os.path.join(dst_dir, n))


def read(path):
    with open(path) as f:
        return f.read()


def load_toml(path):
    with open(path, "rb") as f:
        return tomllib.load(f)


def edit(bin_dir, role, src, dst, sets=(), unsets=()):
    """`cocoon-host config edit`: `src` with the keys in `sets` ((key, TOML value) pairs) set and
    those in `unsets` removed, written to `dst`."""
    args = [os.path.join(bin_dir, "cocoon-host"), "config", "edit", "--role", role, src]
    for key, value in sets:
        args += ["--set", f"{key}={value}"]
    for key in unsets:
        args += ["--unset", key]
    subprocess.run(args + ["--out", dst], check=True)


def toml_str(s):
    """A TOML basic string (JSON string syntax is valid TOML for these ASCII values)."""
    return json.dumps(s)


def pinned(config, key):
    values = config["policy"].get(key, [])
    expect(len(values) == 1, f"config pins no single {key}: {values}")
    return values[0]


def scenario_m(net_dir):
    proxy = read(os.path.join(net_dir, "proxy.toml"))
    worker = read(os.path.join(net_dir, "worker.toml"))
    client = load_toml(os.path.join(net_dir, "client.toml"))
    proxy_config = tomllib.loads(proxy)
    worker_config = tomllib.loads(worker)
    expect(
        pinned(client, "rtmr3") == config_rtmr3(proxy),
        "the client's RTMR3 pin is not the proxy config's",
    )
    expect(
        pinned(proxy_config, "rtmr3") == config_rtmr3(worker),
        "the proxy's RTMR3 pin is not the worker config's",
    )
    expect(proxy_config["policy"].get("models"), "the proxy pins no model")
    expect(
        "rtmr3" not in worker_config["policy"],
        "the worker pins the proxy's RTMR3 (a hash cycle)",
    )
    log("M: pins equal an independent RTMR3 computation of each config file")


def start_proxy_copy(bin_dir, net_dir, d, unsets):
    """A copy of the genuine proxy in `d` on free ports that pins no worker configuration
    (`allow_any_config`) and drops `unsets` from its config; returns (its Net, its ports)."""
    copy(net_dir, d, ["sim-platform.json", "sim-root.der", "proxy-registers.json"] + GPU_FILES)
    ports = {k: free_port() for k in ("worker_listen", "client_listen", "admin_listen")}
    edit(
        bin_dir,
        "proxy",
        os.path.join(net_dir, "proxy.toml"),
        os.path.join(d, "proxy.toml"),
        sets=[(k, toml_str(f"127.0.0.1:{port}")) for k, port in ports.items()]
        + [("policy.allow_any_config", "true")],
        unsets=unsets,
    )
    proxy = Net(bin_dir, d)
    proxy.start(
        "proxy",
        [os.path.join(bin_dir, "cocoon-proxy"), "--config", "proxy.toml"],
        "cocoon-proxy: ready",
    )
    return proxy, ports


def start_client_copy(bin_dir, net_dir, c, proxy_port, sets=()):
    """A copy of the genuine client in `c` that uses the proxy on `proxy_port`, with `sets`
    changed; returns (its Net, the (host, port) of its OpenAI endpoint)."""
    copy(net_dir, c, ["sim-root.der", "client.key"] + GPU_FILES)
    edit(
        bin_dir,
        "client",
        os.path.join(net_dir, "client.toml"),
        os.path.join(c, "client.toml"),
        sets=[
            ("proxy", toml_str(f"127.0.0.1:{proxy_port}")),
            ("listen", toml_str("127.0.0.1:0")),
        ]
        + list(sets),
    )
    client = Net(bin_dir, c)
    line = client.start(
        "client",
        [os.path.join(bin_dir, "cocoon-client"), "serve", "--config", "client.toml"],
        "cocoon-client: ready ",
    )
    m = re.search(r"http://([^/\s]+)/v1", line)
    host, port = m.group(1).rsplit(":", 1)
    return client, (host, int(port))


def spawn_worker_copy(bin_dir, net_dir, wd, name, proxy_port, unsets):
    """A copy of the genuine worker named `name` in `wd`, dialing the proxy on `proxy_port`,
    with `unsets` dropped from its config (see `spawn_worker`)."""
    copy(net_dir, wd, ["sim-platform.json", "sim-root.der", "worker-registers.json"])
    edit(
        bin_dir,
        "worker",
        os.path.join(net_dir, "worker.toml"),
        os.path.join(wd, "worker.toml"),
        sets=[("name", toml_str(name)), ("proxies", f'["127.0.0.1:{proxy_port}"]')],
        unsets=unsets,
    )
    return spawn_worker(bin_dir, wd)


def scenario_p(bin_dir, net_dir, work, model):
    rogue, ports = start_proxy_copy(
        bin_dir, net_dir, os.path.join(work, "rogue-proxy"), ["policy.rtmr3", "policy.models"]
    )
    try:
        c = os.path.join(work, "rogue-client")
        client, addr = start_client_copy(bin_dir, net_dir, c, ports["client_listen"])
        try:
            status, body = post_chat(addr, model)
            expect(status != 200, f"the client used a proxy with another config: {body[:300]}")
            logs = "".join(client.log_lines("client"))
            expect(
                "rtmr3 mismatch" in body or "rtmr3 mismatch" in logs,
                f"refusal does not name rtmr3 (HTTP {status}): {body[:300]}",
            )
            log(f"P: client refused the reconfigured proxy (HTTP {status}): {body[:160]}")
        finally:
            client.stop_all()
    finally:
        rogue.stop_all()


def jsonstats(admin):
    host, port = admin.replace("http://", "").rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        c.request("GET", "/jsonstats")
        return json.loads(c.getresponse().read())
    finally:
        c.close()


def spawn_worker(bin_dir, d):
    """Starts `cocoon-worker --config worker.toml` in `d` (stderr to d/logs/worker.log). A
    worker prints its ready line only once a proxy accepted it, so nothing waits for it."""
    os.makedirs(os.path.join(d, "logs"), exist_ok=True)
    with open(os.path.join(d, "logs", "worker.log"), "wb") as err:
        return subprocess.Popen(
            [os.path.join(bin_dir, "cocoon-worker"), "--config", "worker.toml"],
            cwd=d,
            stdout=subprocess.DEVNULL,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )


def scenario_w(bin_dir, net_dir, work, urls):
    d = os.path.join(work, "rogue-worker")
    copy(net_dir, d, ["sim-platform.json", "sim-root.der", "worker-registers.json"])
    upstream = (
        f'[{{ name = {toml_str(urls["model"])}, engine = "upstream", '
        f'url = "http://127.0.0.1:{free_port()}", upstream_model = "any", '
        f'model_hash = "{"00" * 32}", max_completion_tokens = 64, max_context = 4096 }}]'
    )
    edit(
        bin_dir,
        "worker",
        os.path.join(net_dir, "worker.toml"),
        os.path.join(d, "worker.toml"),
        sets=[("name", toml_str("rogue-worker")), ("models", upstream)],
    )
    before = jsonstats(urls["admin"]).get("worker_rejections", {}).get("rtmr3_mismatch", 0)
    p = spawn_worker(bin_dir, d)
    try:
        s = wait_rejection(urls["admin"], "rtmr3_mismatch", before, p, "the rogue worker")
        n = s["worker_rejections"]["rtmr3_mismatch"]
        names = [w["name"] for w in s["workers"]]
        expect("rogue-worker" not in names, f"the rogue worker registered: {names}")
        log(f"W: proxy refused the upstream-configured worker (rtmr3_mismatch {n}); workers {names}")
    finally:
        p.terminate()
        p.wait(5)


def wait_rejection(admin, code, before, proc, what):
    deadline = time.monotonic() + 20
    while True:
        s = jsonstats(admin)
        n = s.get("worker_rejections", {}).get(code, 0)
        if n > before:
            return s
        expect(proc.poll() is None or time.monotonic() < deadline, f"{what} exited")
        expect(time.monotonic() < deadline, f"the proxy did not refuse {what}: {s}")
        time.sleep(0.1)


def scenario_g(bin_dir, net_dir, work, urls):
    genuine = jsonstats(urls["admin"])["workers"]
    gpus = genuine[0].get("gpus", [])
    expect(len(gpus) == 1, f"the genuine proxy lists no verified gpu: {genuine}")
    expect(gpus[0]["measurements_checked"] == 64, f"gpu not compared in full: {gpus}")
    expect("sim-nvidia-root" in gpus[0]["root"], f"gpu root: {gpus}")
    expect(gpus[0].get("ocsp_checked") == 3, f"gpu chain without ocsp: {gpus}")
    expect(gpus[0].get("ocsp_valid_until", 0) > time.time(), f"ocsp not fresh: {gpus}")
    d = os.path.join(work, "gpu-proxy")
    proxy, ports = start_proxy_copy(bin_dir, net_dir, d, ["policy.rtmr3"])
    admin = f"http://127.0.0.1:{ports['admin_listen']}"
    try:
        cfg = load_toml(os.path.join(d, "proxy.toml"))
        expect("gpu" in cfg["policy"], "gpu requirement lost")
        expect(cfg["policy"]["gpu"].get("require_ocsp") is True, "ocsp requirement lost")
        # The OCSP-less copy first: the proxy rate-limits its refusal log per reason, and the
        # first refusal is the one logged.
        for name, unsets in (
            ("ocsp-less-worker", ["gpu.ocsp_url"]),
            ("gpu-less-worker", ["gpu"]),
            ("gpu-worker", []),
        ):
            wd = os.path.join(work, name)
            before = jsonstats(admin).get("worker_rejections", {}).get("gpu_evidence", 0)
            p = spawn_worker_copy(bin_dir, net_dir, wd, name, ports["worker_listen"], unsets)
            try:
                if unsets:
                    s = wait_rejection(admin, "gpu_evidence", before, p, name)
                    names = [w["name"] for w in s["workers"]]
                    expect(name not in names, f"the {name} registered: {names}")
                    if name == "ocsp-less-worker":
                        logs = "".join(proxy.log_lines("proxy"))
                        expect("ocsp responses required" in logs, "refusal does not name ocsp")
                    log(f"G: proxy refused the {name}: {s['worker_rejections']}")
                else:
                    w = wait_registered(admin, name, p)
                    expect(len(w.get("gpus", [])) == 1, f"no verified gpu: {w}")
                    log("G: the same proxy registered the worker with its simulated gpu")
            finally:
                p.terminate()
                p.wait(5)
    finally:
        proxy.stop_all()


def wait_registered(admin, name, proc):
    deadline = time.monotonic() + 20
    while True:
        ws = [w for w in jsonstats(admin)["workers"] if w["name"] == name]
        if ws:
            return ws[0]
        expect(proc.poll() is None, f"{name} exited ({proc.returncode})")
        expect(time.monotonic() < deadline, f"{name} did not register")
        time.sleep(0.1)


def scenario_c(bin_dir, net_dir, work, model):
    d = os.path.join(work, "gpu-free-proxy")
    proxy, ports = start_proxy_copy(bin_dir, net_dir, d, ["policy.rtmr3", "policy.gpu"])
    admin = f"http://127.0.0.1:{ports['admin_listen']}"
    wd = os.path.join(work, "gpu-free-worker")
    worker = None
    try:
        cfg = load_toml(os.path.join(d, "proxy.toml"))
        expect("gpu" not in cfg["policy"], "gpu still required")
        worker = spawn_worker_copy(
            bin_dir, net_dir, wd, "gpu-free-worker", ports["worker_listen"], ["gpu"]
        )
        w = wait_registered(admin, "gpu-free-worker", worker)
        expect(not w.get("gpus"), f"the gpu-free worker lists gpus: {w}")
        log("C: a proxy that requires no gpu registered the worker without gpu evidence")
        # A client that trusts this proxy's and this worker's configurations (their RTMR3s
        # pinned, so that nothing else refuses them) and keeps the genuine client's GPU
        # requirement for workers.
        with open(os.path.join(d, "proxy.toml")) as f:
            proxy_rtmr3 = config_rtmr3(f.read())
        with open(os.path.join(wd, "worker.toml")) as f:
            worker_rtmr3 = config_rtmr3(f.read())
        client, addr = start_client_copy(
            bin_dir,
            net_dir,
            os.path.join(work, "gpu-client"),
            ports["client_listen"],
            [
                ("policy.rtmr3", f"[{toml_str(proxy_rtmr3)}]"),
                ("worker_policy.rtmr3", f"[{toml_str(worker_rtmr3)}]"),
            ],
        )
        try:
            cfg = load_toml(os.path.join(work, "gpu-client", "client.toml"))
            expect("gpu" in cfg.get("worker_policy", {}), f"client requires no gpu: {cfg}")
            status, body = post_chat(addr, model)
            expect(status != 200, f"the client sealed a prompt to a gpu-less worker: {body[:300]}")
            logs = "".join(client.log_lines("client"))
            expect(
                "rtmr3 mismatch" not in body + logs,
                f"the client refused the proxy instead (HTTP {status}): {body[:300]}",
            )
            expect(
                "gpu evidence" in body or "gpu evidence" in logs,
                f"refusal does not name gpu evidence (HTTP {status}): {body[:300]}",
            )
            stats = jsonstats(admin)
            served = [x for x in stats["workers"] if x["name"] == "gpu-free-worker"]
            expect(served, "the gpu-free worker left the proxy")
            expect(
                served[0].get("requests") == 0,
                f"a request reached the gpu-less worker: {served[0]}",
            )
            log(f"C: client refused the gpu-less worker, no prompt (HTTP {status}): {body[:200]}")
        finally:
            client.stop_all()
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(5)
        proxy.stop_all()


def main():
    bin_dir, work = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    net_dir = os.path.join(work, "net")
    logs = os.path.join(work, "logs")
    os.makedirs(logs, exist_ok=True)
    launcher, urls = launch(bin_dir, net_dir, logs)
    try:
        status, body = post_chat(client_addr(urls["client"]), urls["model"])
        expect(status == 200, f"the genuine network did not answer: {status} {body[:300]}")
        log("genuine network answers through its pinned proxy and worker")
        scenario_m(net_dir)
        scenario_p(bin_dir, net_dir, work, urls["model"])
        scenario_w(bin_dir, net_dir, work, urls)
        scenario_g(bin_dir, net_dir, work, urls)
        scenario_c(bin_dir, net_dir, work, urls["model"])
        status, body = post_chat(client_addr(urls["client"]), urls["model"])
        expect(status == 200, f"the genuine network stopped answering: {status} {body[:300]}")
        log("all attacks refused; the genuine network still answers")
    finally:
        launcher.terminate()
        try:
            launcher.wait(15)
        except subprocess.TimeoutExpired:
            launcher.kill()


if __name__ == "__main__":
    try:
        main()
    except Failure as e:
        log(f"FAILED: {e}")
        sys.exit(1)
