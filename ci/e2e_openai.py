#!/usr/bin/env python3
"""End-to-end checks of the local cocoon network through the official OpenAI Python SDK.

Usage: e2e_openai.py DIR/urls.json [path/to/cocoon-client]

urls.json is written by `cocoon-host launch --local` once every service is ready. The checks:
models are listed and retrieved by id (an unknown id gets 404 model_not_found); the client's
and the proxy's /healthz and /readyz answer ok and ready; a streamed chat completion (stream_options.include_usage) yields text and a
usage chunk; a non-streamed one has content and usage; a legacy completion too; the proxy's
/jsonstats record for this client's account has exactly the token sums the SDK saw; bad inputs
get OpenAI errors with the right statuses (unknown field 400, malformed JSON 400, 10 MiB body
413, unknown model 404); a second cocoon-client that pins another proxy image is refused with the
named attestation reason; every process is still alive. Model output is never compared to fixed
text (the Q4_1 model's answers vary with rounding).
"""

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

import openai
from checks import Checks
from openai import OpenAI

check = Checks("e2e_openai")


class Seen:
    """Token usage the SDK reported, summed."""

    def __init__(self):
        self.prompt = 0
        self.completion = 0
        self.requests = 0

    def add(self, usage):
        assert usage is not None, "no usage"
        assert usage.prompt_tokens > 0, f"prompt_tokens {usage.prompt_tokens}"
        assert usage.completion_tokens > 0, f"completion_tokens {usage.completion_tokens}"
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
        self.prompt += usage.prompt_tokens
        self.completion += usage.completion_tokens
        self.requests += 1


def raw_post(base, path, body, timeout=120):
    u = urllib.parse.urlparse(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request(
            "POST", u.path + path, body=body, headers={"content-type": "application/json"}
        )
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def error_code(body):
    return json.loads(body)["error"]["code"]


def get_json(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def main():
    urls = json.load(open(sys.argv[1]))
    client_bin = sys.argv[2] if len(sys.argv) > 2 else None
    base, model = urls["client"], urls["model"]
    print(f"e2e_openai: {base} model {model} account {urls['account'][:16]}…", flush=True)
    sdk = OpenAI(base_url=base, api_key="local", max_retries=0, timeout=600)
    seen = Seen()
    messages = [{"role": "user", "content": "Name three colors."}]

    def record():
        rec = get_json(urls["jsonstats"]).get("clients", {}).get(urls["account"]) or {}
        return rec.get("prompt_tokens", 0), rec.get("completion_tokens", 0), rec

    # Compared as deltas: the account may have been used before this run.
    base_prompt, base_completion, _ = record()

    @check("models.list contains the model")
    def models():
        ids = [m.id for m in sdk.models.list().data]
        assert model in ids, ids
        return str(ids)

    @check("models.retrieve returns the model object")
    def retrieve():
        m = sdk.models.retrieve(model)
        assert m.id == model, m
        assert m.object == "model", m
        assert m.owned_by == "cocoon", m
        assert isinstance(m.created, int) and m.created > 0, m
        return f"{m.id} created {m.created}"

    @check("models.retrieve of an unknown id -> 404 model_not_found")
    def retrieve_unknown():
        try:
            sdk.models.retrieve("no-such-org/no-such-model")
        except openai.NotFoundError as e:
            assert e.status_code == 404
            assert e.code == "model_not_found", e.body
            return e.message
        raise AssertionError("found")

    @check("client and proxy /healthz and /readyz")
    def probes():
        root = base[: -len("/v1")] if base.endswith("/v1") else base
        for url in (root, urls["admin"]):
            assert get_json(f"{url}/healthz") == {"status": "ok"}, url
            ready = get_json(f"{url}/readyz")
            assert ready == {"status": "ready", "reasons": []}, (url, ready)
        return f"{root}, {urls['admin']}"

    @check("streamed chat completion with include_usage")
    def streamed():
        stream = sdk.chat.completions.create(
            model=model,
            messages=messages,
            max_tokens=24,
            stream=True,
            stream_options={"include_usage": True},
        )
        text, usage, chunks = "", None, 0
        for chunk in stream:
            chunks += 1
            if chunk.usage is not None:
                assert usage is None, "two usage chunks"
                usage = chunk.usage
            for c in chunk.choices:
                if c.delta is not None and c.delta.content:
                    text += c.delta.content
        assert text.strip(), "no text"
        seen.add(usage)
        return f"{chunks} chunks, {len(text)} chars, usage {usage.prompt_tokens}+{usage.completion_tokens}"

    @check("non-streamed chat completion")
    def non_streamed():
        r = sdk.chat.completions.create(model=model, messages=messages, max_tokens=24)
        assert r.object == "chat.completion", r.object
        content = r.choices[0].message.content
        assert content and content.strip(), "no content"
        assert r.choices[0].finish_reason in ("stop", "length"), r.choices[0].finish_reason
        seen.add(r.usage)
        return f"{len(content)} chars, usage {r.usage.prompt_tokens}+{r.usage.completion_tokens}"

    @check("legacy completion")
    def legacy():
        r = sdk.completions.create(model=model, prompt="The sky is", max_tokens=12)
        assert r.choices[0].text.strip(), "no text"
        seen.add(r.usage)
        return f"usage {r.usage.prompt_tokens}+{r.usage.completion_tokens}"

    def stats_match():
        want = (seen.prompt, seen.completion)
        deadline = time.monotonic() + 10
        while True:
            prompt, completion, rec = record()
            got = (prompt - base_prompt, completion - base_completion)
            if got == want or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert rec, "no /jsonstats record for the account"
        assert got == want, f"billed {got}, sdk saw {want}"
        # The main job seals every request to the worker: billing rests on worker receipts.
        req = get_json(urls["jsonstats"]).get("requests", {})
        assert req.get("receipts_valid", 0) >= 3, req
        assert req.get("receipts_invalid", 0) == 0, req
        return (
            f"prompt {want[0]}, completion {want[1]}, cost {rec.get('cost_nano')} nano so far; "
            f"{req['receipts_valid']} worker receipts verified"
        )

    check("proxy /jsonstats bills exactly the usage the SDK saw")(stats_match)

    @check("unknown field -> 400")
    def unknown_field():
        try:
            sdk.chat.completions.create(
                model=model, messages=messages, max_tokens=8, extra_body={"surprise": 1}
            )
        except openai.BadRequestError as e:
            assert e.status_code == 400
            return e.message
        raise AssertionError("accepted")

    @check("malformed json -> 400")
    def malformed():
        status, body = raw_post(base, "/chat/completions", b'{"model": "x", "messages": [')
        assert status == 400, (status, body[:200])
        assert error_code(body) == "invalid_request", body[:200]

    @check("10 MiB body -> 413")
    def too_large():
        filler = "x" * (10 << 20)
        body = json.dumps(
            {"model": model, "messages": [{"role": "user", "content": filler}]}
        ).encode()
        status, resp = raw_post(base, "/chat/completions", body)
        assert status == 413, (status, resp[:200])
        assert error_code(resp) == "payload_too_large", resp[:200]

    @check("unknown model -> 404")
    def wrong_model():
        try:
            sdk.chat.completions.create(model="no-such-model", messages=messages, max_tokens=8)
        except openai.NotFoundError as e:
            assert e.status_code == 404
            return e.message
        raise AssertionError("accepted")

    check("failed requests billed nothing")(stats_match)

    if client_bin:

        @check("a client pinning another proxy image is refused with the reason")
        def wrong_image():
            with tempfile.TemporaryDirectory() as d:
                s = socket.socket()
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
                s.close()
                # The config is rendered by cocoon-host (next to cocoon-client) from the
                # client's own config type. A client must pin a runtime configuration too; the
                # image is checked first, so the refusal names it.
                shutil.copy(os.path.join(urls["dir"], "sim-root.der"), d)
                cfg = os.path.join(d, "client.toml")
                subprocess.run(
                    [
                        os.path.join(os.path.dirname(client_bin), "cocoon-host"),
                        "config", "client", "--mode", "local",
                        "--listen", f"127.0.0.1:{port}", "--proxy", urls["proxy_clients"],
                        "--image", "00" * 32, "--rtmr3", "00" * 48,
                        "--encryption", "off", "--out", cfg,
                    ],
                    check=True,
                )  # fmt: skip
                p = subprocess.Popen(
                    [client_bin, "serve", "--config", cfg],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                )
                try:
                    line = p.stdout.readline()
                    assert line.startswith("cocoon-client: ready"), line
                    status, body = raw_post(
                        line.split()[-1],
                        "/chat/completions",
                        json.dumps({"model": model, "messages": messages}).encode(),
                    )
                finally:
                    p.terminate()
                    p.wait(timeout=30)
                assert status == 502, (status, body[:300])
                err = json.loads(body)["error"]
                assert err["code"] == "attestation_rejected", err
                assert f"image hash {urls['proxy_image']} not among" in err["message"], err
                return err["message"]

    @check("every process is still alive")
    def alive():
        for role, pid in urls["pids"].items():
            assert pid is not None, role
            os.kill(pid, 0)  # raises if gone

    return check.summary()


if __name__ == "__main__":
    sys.exit(main())
