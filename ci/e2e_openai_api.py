#!/usr/bin/env python3
"""The OpenAI surface real apps send, through the official OpenAI Python SDK (issue 11).

Usage: e2e_openai_api.py DIR/urls.json [--engine-surface]

Without --engine-surface the checks that need the real engine (tools, response_format,
logprobs, seeds, the model's context, long prefills) are skipped and listed as such; ci/e2e.sh
passes it when it runs the real model and leaves it out with COCOON_E2E_ENGINE=stub (the stub
engine has no context length: its reservation refuses an oversized prompt with 413 first).

Runs against the local network that `cocoon-host launch --local` started (ci/e2e.sh): the real
SmolLM2-135M model, so text is never compared to fixed strings, only to itself (seeds) or to
the shape the request constrains (tool calls, JSON mode, JSON schema). The checks:

* a tool-calling round trip (the model is made to call a tool, the app answers with a `tool`
  message, the model answers), streamed and not; a call cut short by `max_tokens` comes back
  as a call with `finish_reason: "length"`, not as text;
* JSON mode and json_schema outputs that parse and validate;
* logprobs (natural log, top alternatives), streamed and not;
* the same seed at temperature 1 gives the same text, other seeds give other text;
* `n` choices, streamed and not (chat and completions with a batch); with a seed, choice `j`
  is the answer that seed + `j` gives alone;
* every field OpenAI apps send by default that cannot affect generation is accepted;
* roles `developer` and `tool`, assistant `content: null`, content parts with `cache_control`;
* completions with `prompt` as a list;
* a prompt over the context is refused with `context_length_exceeded`;
* 32 concurrent streams on one worker all complete (queued, not refused);
* a long prompt's stream carries keepalive comments to the app before its first token (the
  worker's, passed on by the proxy and the local client), and the app can leave after them;
* an app that gives up during the prefill of a long prompt (closes its socket before any
  byte): the proxy stops the generation at the worker, which is free again at once (a short
  request right after starts about as fast as alone), and the prompt is billed to the account
  (`requests.stopped`, the account's prompt tokens in the proxy's /jsonstats).
"""

import concurrent.futures
import http.client
import json
import socket
import sys
import time
import urllib.parse
import urllib.request

import openai
from checks import TRIP_SCHEMA, Checks, valid_trip, valid_weather_args
from checks import WEATHER_CHAT as WEATHER
from openai import OpenAI

check = Checks("e2e_openai_api", engine_surface="--engine-surface" in sys.argv[2:])


def main():
    urls = json.load(open(sys.argv[1]))
    base, model = urls["client"], urls["model"]
    sdk = OpenAI(base_url=base, api_key="local", max_retries=0, timeout=600)
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    forced = {"type": "function", "function": {"name": "get_weather"}}

    def ask_weather(max_tokens, **kw):
        """The weather question with get_weather's call forced."""
        return sdk.chat.completions.create(
            model=model, messages=ask, tools=[WEATHER], tool_choice=forced, max_tokens=max_tokens,
            **kw,
        )  # fmt: skip

    @check("tool call round trip (non-streamed)", engine=True)
    def tool_round_trip():
        r = ask_weather(64)
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls", choice.finish_reason
        calls = choice.message.tool_calls
        assert calls and len(calls) == 1, calls
        call = calls[0]
        assert call.type == "function" and call.function.name == "get_weather", call
        args = json.loads(call.function.arguments)
        valid_weather_args(args)
        assert call.id, "no call id"
        follow = ask + [
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp": 18})},
        ]
        r2 = sdk.chat.completions.create(
            model=model, messages=follow, tools=[WEATHER], max_tokens=32, temperature=0
        )
        c2 = r2.choices[0]
        assert c2.finish_reason in ("stop", "length", "tool_calls"), c2.finish_reason
        assert c2.message.content or c2.message.tool_calls, "empty answer"
        return f"called get_weather({args}); answer finish {c2.finish_reason}"

    @check("tool call streamed: deltas assemble into a valid call", engine=True)
    def tool_streamed():
        stream = sdk.chat.completions.create(
            model=model,
            messages=ask,
            tools=[WEATHER],
            tool_choice="required",
            max_tokens=64,
            stream=True,
        )
        name, arguments, finish, ids = "", "", None, set()
        for chunk in stream:
            for c in chunk.choices:
                for tc in c.delta.tool_calls or []:
                    if tc.id:
                        ids.add(tc.id)
                    if tc.function and tc.function.name:
                        name += tc.function.name
                    if tc.function and tc.function.arguments:
                        arguments += tc.function.arguments
                finish = c.finish_reason or finish
        assert finish == "tool_calls", finish
        assert name == "get_weather", name
        assert len(ids) == 1, ids
        valid_weather_args(json.loads(arguments))
        return arguments

    @check("a tool call cut short by max_tokens: the call so far, finish length", engine=True)
    def tool_cut_short():
        # OpenAI returns a call cut short as a call (its arguments incomplete), not as text.
        r = ask_weather(12)
        choice = r.choices[0]
        assert choice.finish_reason == "length", choice.finish_reason
        assert not choice.message.content, choice.message.content
        calls = choice.message.tool_calls
        assert calls and calls[0].function.name == "get_weather", calls
        stream = ask_weather(12, stream=True)
        names, text, finish = [], "", None
        for chunk in stream:
            for c in chunk.choices:
                text += c.delta.content or ""
                names += [tc.function.name for tc in c.delta.tool_calls or [] if tc.function]
                finish = c.finish_reason or finish
        assert (finish, text, names) == ("length", "", ["get_weather"]), (finish, text, names)
        return f"arguments so far {calls[0].function.arguments!r}"

    @check("JSON mode output parses as a JSON object", engine=True)
    def json_mode():
        r = sdk.chat.completions.create(
            model=model,
            messages=[
                {"role": "system", "content": "Reply in JSON."},
                {"role": "user", "content": "Give a name and an age."},
            ],
            response_format={"type": "json_object"},
            max_tokens=200,
            # Greedy: what is checked is the constraint, not sampling (seeds are checked
            # below). Sampled at temperature 1, the 135M model sometimes writes one string
            # past max_tokens, and a truncated object does not parse.
            temperature=0,
        )
        content = r.choices[0].message.content
        obj = json.loads(content)
        assert isinstance(obj, dict), obj
        assert r.choices[0].finish_reason == "stop", r.choices[0].finish_reason
        return content[:80]

    @check("json_schema output parses and validates", engine=True)
    def json_schema():
        r = sdk.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Plan a short trip."}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "trip", "schema": TRIP_SCHEMA, "strict": True},
            },
            max_tokens=100,
        )
        obj = json.loads(r.choices[0].message.content)
        valid_trip(obj)
        return json.dumps(obj)

    @check("logprobs with top_logprobs (non-streamed and streamed)", engine=True)
    def logprobs():
        r = sdk.chat.completions.create(
            model=model, messages=ask, max_tokens=8, logprobs=True, top_logprobs=3
        )
        content = r.choices[0].logprobs.content
        assert content, "no logprobs"
        # The end-of-sequence token is counted (computed and billed) but has no visible
        # token, so it has no logprobs entry (docs/openai-compatibility.md).
        eos = 1 if r.choices[0].finish_reason == "stop" else 0
        assert len(content) == r.usage.completion_tokens - eos, (len(content), r.usage, eos)
        for t in content:
            assert t.logprob <= 0.0, t
            assert len(t.top_logprobs) == 3, t
            tops = [x.logprob for x in t.top_logprobs]
            assert tops == sorted(tops, reverse=True), tops
            assert t.logprob <= tops[0] + 1e-4, (t.logprob, tops)
        stream = sdk.chat.completions.create(
            model=model,
            messages=ask,
            max_tokens=8,
            logprobs=True,
            top_logprobs=2,
            stream=True,
            stream_options={"include_usage": True},
        )
        n, usage, finish = 0, None, None
        for chunk in stream:
            usage = chunk.usage or usage
            for c in chunk.choices:
                finish = c.finish_reason or finish
                if c.logprobs and c.logprobs.content:
                    n += len(c.logprobs.content)
        eos = 1 if finish == "stop" else 0
        assert n == usage.completion_tokens - eos, (n, usage, finish)
        return f"{len(content)} tokens, first {content[0].token!r} {content[0].logprob:.3f}"

    @check("seed: same seed at temperature 1 gives the same text", engine=True)
    def seeded():
        def gen(seed):
            r = sdk.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": "Write a sentence about the sea."}],
                max_tokens=24,
                temperature=1.0,
                seed=seed,
            )
            return r.choices[0].message.content

        a, b = gen(42), gen(42)
        assert a == b, (a, b)
        others = {gen(s) for s in (43, 44, 45)}
        assert others - {a}, "every seed gave the same text"
        return repr(a[:60])

    @check("n choices: one per index, each with its role, streamed and not")
    def n_choices():
        msgs = [{"role": "user", "content": "Name a colour."}]
        r = sdk.chat.completions.create(model=model, messages=msgs, n=3, max_tokens=8)
        assert [c.index for c in r.choices] == [0, 1, 2], r.choices
        for c in r.choices:
            assert c.message.role == "assistant" and c.finish_reason in ("stop", "length"), c
        assert r.usage.completion_tokens >= 3, r.usage
        stream = sdk.chat.completions.create(
            model=model, messages=msgs, n=2, max_tokens=8, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        roles, finishes, usage = {}, {}, None
        for chunk in stream:
            usage = chunk.usage or usage
            for c in chunk.choices:
                if c.delta.role:
                    roles[c.index] = c.delta.role
                if c.finish_reason:
                    finishes[c.index] = c.finish_reason
        assert roles == {0: "assistant", 1: "assistant"}, roles
        assert sorted(finishes) == [0, 1], finishes
        assert usage and usage.completion_tokens >= 2, usage
        # Completions: n for each prompt of a batch, choice p*n + j.
        c = sdk.completions.create(model=model, prompt=["Once", "The sky"], n=2, max_tokens=4)
        assert [x.index for x in c.choices] == [0, 1, 2, 3], c.choices
        return f"chat 3 + 2 (streamed), completions 2 × 2; usage {r.usage.completion_tokens}"

    @check("n choices with a seed: choice j is what seed + j gives alone", engine=True)
    def n_choices_seeded():
        msgs = [{"role": "user", "content": "Write a sentence about the sea."}]

        def gen(seed, n=1):
            r = sdk.chat.completions.create(
                model=model, messages=msgs, max_tokens=16, temperature=1.0, seed=seed, n=n
            )
            return [c.message.content for c in r.choices]

        both = gen(42, n=2)
        alone = gen(42) + gen(43)
        assert both == alone, (both, alone)
        return repr(both[1][:60])

    @check("fields that cannot affect generation are accepted")
    def ignored_fields():
        r = sdk.chat.completions.create(
            model=model,
            messages=[
                {"role": "developer", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Hello", "cache_control": {"type": "ephemeral"}}
                    ],
                },
            ],
            max_tokens=8,
            store=False,
            metadata={"app": "e2e"},
            service_tier="auto",
            user="e2e-user",
            parallel_tool_calls=False,
            tools=[WEATHER],
            tool_choice="none",
            response_format={"type": "text"},
            logit_bias={"0": -1},
            reasoning_effort="low",
        )
        assert r.choices[0].finish_reason in ("stop", "length"), r.choices[0].finish_reason
        return f"finish {r.choices[0].finish_reason}"

    @check("completions: prompt as a list")
    def prompt_list():
        r = sdk.completions.create(model=model, prompt=["The sky is"], max_tokens=6)
        assert len(r.choices) == 1 and r.choices[0].text, r.choices
        r = sdk.completions.create(model=model, prompt=["The sky is", "Grass is"], max_tokens=6)
        assert sorted(c.index for c in r.choices) == [0, 1], r.choices
        return f"{len(r.choices)} choices, usage {r.usage.prompt_tokens}+{r.usage.completion_tokens}"

    @check("a prompt over the context -> 400 context_length_exceeded", engine=True)
    def too_long():
        words = "hello " * 40000
        try:
            sdk.chat.completions.create(
                model=model, messages=[{"role": "user", "content": words}], max_tokens=4
            )
        except openai.BadRequestError as e:
            assert e.code == "context_length_exceeded", (e.code, e.message)
            return e.message[:100]
        raise AssertionError("accepted")

    def get_json(url):
        with urllib.request.urlopen(url, timeout=30) as r:
            return json.loads(r.read())

    def ttft(messages):
        t = time.monotonic()
        stream = sdk.chat.completions.create(
            model=model, messages=messages, max_tokens=4, stream=True
        )
        first = None
        for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.monotonic() - t
        return first if first is not None else time.monotonic() - t

    def billed():
        st = get_json(urls["jsonstats"])
        rec = st.get("clients", {}).get(urls["account"]) or {}
        return st["requests"]["stopped"], rec.get("prompt_tokens", 0)

    def send_long_prompt():
        """Sends a streamed request of ~1,000 prompt tokens (tens of seconds of prefill on a
        CPU) on a connection of its own; returns the connection, nothing read yet."""
        long_text = " ".join(["apple banana cherry"] * 330)
        u = urllib.parse.urlsplit(base)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        body = {
            "model": model,
            "messages": [{"role": "user", "content": long_text}],
            "max_tokens": 8,
            "stream": True,
        }
        conn.request(
            "POST", u.path.rstrip("/") + "/chat/completions", json.dumps(body),
            {"Content-Type": "application/json"},
        )  # fmt: skip
        return conn

    @check("an app that gives up mid-prefill frees the worker; the prompt is billed", engine=True)
    def give_up_mid_prefill():
        short = [{"role": "user", "content": "Say hi."}]
        alone = ttft(short)

        stopped0, prompt0 = billed()
        conn = send_long_prompt()
        time.sleep(3)  # the prefill is under way; nothing has been answered yet
        conn.sock.shutdown(socket.SHUT_RDWR)
        conn.close()
        t_left = time.monotonic()
        deadline = t_left + 10
        while billed()[0] == stopped0:
            assert time.monotonic() < deadline, "the proxy did not stop the request"
            time.sleep(0.05)
        stop_secs = time.monotonic() - t_left
        after = ttft(short)
        stopped, prompt = billed()
        assert stopped == stopped0 + 1, (stopped0, stopped)
        assert prompt - prompt0 >= 900, f"billed {prompt - prompt0} prompt tokens"
        assert stop_secs < 1.0, f"stopped {stop_secs:.2f} s after the app left"
        assert after <= 3 * alone + 3, f"short request ttft {after:.2f} s after, {alone:.2f} s alone"
        return (
            f"stopped and billed {stop_secs * 1000:.0f} ms after the app left "
            f"({prompt - prompt0} prompt tokens); short request ttft {alone:.2f} s alone, "
            f"{after:.2f} s right after"
        )

    def cancelled():
        return get_json(urls["jsonstats"])["requests"]["cancelled"]

    @check("a long prefill streams keepalive comments to the app before the first token", engine=True)
    def keepalive_during_prefill():
        cancelled0, prompt0 = cancelled(), billed()[1]
        t = time.monotonic()
        conn = send_long_prompt()
        resp = conn.getresponse()  # the head comes with the worker's first keepalive
        head_secs = time.monotonic() - t
        assert resp.status == 200, resp.status
        assert resp.getheader("content-type", "").startswith("text/event-stream")
        while True:
            line = resp.fp.readline()
            assert line, "stream ended during the prefill"
            assert not line.startswith(b"data:"), f"a token before a keepalive: {line[:80]!r}"
            if line.startswith(b": keepalive"):
                break
        # The app gives up after the comment (the response has started): cocoon-client
        # cancels the request at the proxy, which has the worker stop it; the prompt is billed.
        conn.sock.shutdown(socket.SHUT_RDWR)
        conn.close()
        t_left = time.monotonic()
        while cancelled() == cancelled0:
            assert time.monotonic() < t_left + 10, "the request was not cancelled"
            time.sleep(0.05)
        stop_secs = time.monotonic() - t_left
        while billed()[1] - prompt0 < 900:
            assert time.monotonic() < t_left + 10, f"billed {billed()[1] - prompt0} prompt tokens"
            time.sleep(0.05)
        return (
            f"head and first keepalive after {head_secs:.1f} s; the app left, cancelled "
            f"{stop_secs * 1000:.0f} ms after"
        )

    @check("32 concurrent streams on one worker all complete")
    def many_streams():
        def one(i):
            t = time.monotonic()
            stream = sdk.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": f"Count to {i % 5 + 2}."}],
                max_tokens=8,
                stream=True,
            )
            first = None
            for chunk in stream:
                if first is None and chunk.choices and chunk.choices[0].delta.content:
                    first = time.monotonic() - t
            return first or (time.monotonic() - t), time.monotonic() - t

        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            results = list(pool.map(one, range(32)))
        ttft = sorted(r[0] for r in results)
        total = max(r[1] for r in results)
        return f"ttft p50 {ttft[15]:.2f} s, p99 {ttft[-1]:.2f} s, all done in {total:.1f} s"

    return check.summary()


if __name__ == "__main__":
    sys.exit(main())
