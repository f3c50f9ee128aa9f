#!/usr/bin/env python3
"""OpenAI's Responses API (`POST /v1/responses`) through the official OpenAI Python SDK.

Usage: e2e_openai_responses.py DIR/urls.json [--engine-surface]

Runs against the local network `cocoon-host launch --local` started (ci/e2e.sh): the local
client translates each request to chat completions and the chat stream back to Responses
events (client/src/openai/responses.rs). Real SmolLM2-135M, so text is compared only to itself
or to the shape a request constrains. With --engine-surface (a real engine) the checks that
need tools, JSON schemas and logprobs honoured by the engine run too. The checks:

* text, non-streamed and streamed: `output_text`, usage, ids; the stream's events in order
  (created, in_progress, item and part added, deltas, done events, completed), numbered, and
  the deltas add up to the final response; the SDK's `responses.stream()` helper accumulates
  the same text;
* a multi-turn `input` that passes a previous response's `output` back, with `instructions`;
* `max_output_tokens` reached: `status: "incomplete"`, reason `max_output_tokens`;
* a tool-calling round trip (`function_call` item, then `function_call_output`), streamed
  function-call arguments, `responses.parse` with a Pydantic `text_format` (json_schema), and
  logprobs through `include` and `top_logprobs`;
* every field accepted and ignored is accepted (`store`, `metadata`, `reasoning`,
  `include: ["reasoning.encrypted_content"]`, …), and what cannot be served is a 400 the SDK
  raises as `BadRequestError` naming the field (`previous_response_id`, a hosted tool, an
  image input); nothing is stored, so retrieving a response is a 404.
"""

import json
import sys
from typing import Literal

import openai
import pydantic
from checks import Checks, valid_weather_args
from checks import WEATHER_RESPONSES as WEATHER
from openai import OpenAI

check = Checks("e2e_openai_responses", engine_surface="--engine-surface" in sys.argv[2:])


class Trip(pydantic.BaseModel):
    # Closed choices and a range keep the 135M model's answer short enough to finish.
    city: Literal["Paris", "Rome", "Oslo"]
    days: int = pydantic.Field(ge=1, le=9)
    by_train: bool


def refused(fn, param):
    try:
        fn()
    except openai.BadRequestError as e:
        body = e.body if isinstance(e.body, dict) else {}
        assert body.get("param") == param, (param, body)
        return body.get("message", "")
    raise AssertionError(f"{param}: not refused")


def main():
    urls = json.load(open(sys.argv[1]))
    base, model = urls["client"], urls["model"]
    sdk = OpenAI(base_url=base, api_key="local", max_retries=0, timeout=600)

    @check("text, non-streamed: output_text, usage, ids")
    def text():
        r = sdk.responses.create(model=model, input="Say hello to the sea.", max_output_tokens=24)
        assert r.object == "response" and r.id.startswith("resp_"), (r.object, r.id)
        assert r.status in ("completed", "incomplete"), r.status
        assert r.output and r.output[0].type == "message", r.output
        msg = r.output[0]
        assert msg.role == "assistant" and msg.id.startswith("msg_"), msg
        assert r.output_text == "".join(c.text for c in msg.content if c.type == "output_text")
        assert r.usage.input_tokens > 0 and 0 < r.usage.output_tokens <= 24, r.usage
        assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens, r.usage
        assert r.store is False, r.store
        return f"{r.status}, {r.usage.output_tokens} tokens: {r.output_text[:40]!r}"

    @check("text, streamed: events in order, numbered, deltas add up")
    def streamed():
        stream = sdk.responses.create(
            model=model, input="Name three colours.", max_output_tokens=24, stream=True
        )
        events = list(stream)
        kinds = [e.type for e in events]
        assert kinds[:2] == ["response.created", "response.in_progress"], kinds[:4]
        assert kinds[-1] in ("response.completed", "response.incomplete"), kinds[-3:]
        seqs = [e.sequence_number for e in events]
        assert seqs == list(range(len(events))), seqs
        for k in (
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
        ):
            assert k in kinds, (k, kinds)
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        final = events[-1].response
        assert final.output_text == text, (final.output_text, text)
        assert final.usage and final.usage.output_tokens > 0, final.usage
        done = [e for e in events if e.type == "response.output_text.done"][0]
        assert done.text == text, (done.text, text)

        # The SDK's own accumulator. Its get_final_response() needs `response.completed`:
        # greedy, a short answer ends well inside the limit (a response cut by
        # max_output_tokens ends with `response.incomplete`, as OpenAI's do).
        with sdk.responses.stream(
            model=model, input="Name three animals.", max_output_tokens=200, temperature=0
        ) as s:
            deltas = "".join(
                e.delta for e in s if e.type == "response.output_text.delta"
            )
            got = s.get_final_response()
        assert got.output_text == deltas, (got.output_text, deltas)
        return f"{len(events)} events, {text[:40]!r}"

    @check("multi-turn input with instructions and a previous output passed back")
    def multi_turn():
        first = sdk.responses.create(
            model=model,
            instructions="You are brief.",
            input=[{"role": "user", "content": "Pick a fruit."}],
            max_output_tokens=16,
            temperature=0,
        )
        follow = [{"role": "user", "content": "Pick a fruit."}]
        follow += [item.model_dump(exclude_none=True) for item in first.output]
        follow += [{"role": "user", "content": [{"type": "input_text", "text": "Why?"}]}]
        second = sdk.responses.create(
            model=model, instructions="You are brief.", input=follow, max_output_tokens=16
        )
        assert second.instructions == "You are brief.", second.instructions
        assert second.usage.input_tokens > first.usage.input_tokens, (
            first.usage,
            second.usage,
        )
        return f"input tokens {first.usage.input_tokens} -> {second.usage.input_tokens}"

    @check("max_output_tokens reached: incomplete, reason max_output_tokens")
    def incomplete():
        r = sdk.responses.create(
            model=model,
            input="Count from one to fifty in words.",
            max_output_tokens=3,
            temperature=0,
        )
        assert r.status == "incomplete", r.status
        assert r.incomplete_details.reason == "max_output_tokens", r.incomplete_details
        assert r.usage.output_tokens == 3, r.usage
        return repr(r.output_text)

    @check("tool call round trip: function_call item, then function_call_output", engine=True)
    def tools():
        ask = [{"role": "user", "content": "What is the weather in Paris?"}]
        r = sdk.responses.create(
            model=model,
            input=ask,
            tools=[WEATHER],
            tool_choice={"type": "function", "name": "get_weather"},
            max_output_tokens=64,
        )
        calls = [o for o in r.output if o.type == "function_call"]
        assert len(calls) == 1, r.output
        call = calls[0]
        assert call.name == "get_weather" and call.call_id and call.id.startswith("fc_"), call
        args = json.loads(call.arguments)
        valid_weather_args(args)
        follow = ask + [o.model_dump(exclude_none=True) for o in r.output]
        follow.append(
            {
                "type": "function_call_output",
                "call_id": call.call_id,
                "output": json.dumps({"temp": 18}),
            }
        )
        r2 = sdk.responses.create(
            model=model, input=follow, tools=[WEATHER], max_output_tokens=32, temperature=0
        )
        assert r2.output, r2
        assert r2.status in ("completed", "incomplete"), r2.status
        return f"called get_weather({args}); then {r2.output[0].type}"

    @check("a function call cut short by max_output_tokens: an incomplete call item", engine=True)
    def tool_cut_short():
        r = sdk.responses.create(
            model=model, input="What is the weather in Paris?", tools=[WEATHER],
            tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=12,
        )  # fmt: skip
        assert r.status == "incomplete", r.status
        assert r.incomplete_details.reason == "max_output_tokens", r.incomplete_details
        kinds = [(o.type, o.status) for o in r.output]
        assert kinds == [("function_call", "incomplete")], kinds
        assert r.output[0].name == "get_weather" and not r.output_text, r.output
        return f"arguments so far {r.output[0].arguments!r}"

    @check("tool call streamed: arguments deltas assemble into a valid call", engine=True)
    def tools_streamed():
        stream = sdk.responses.create(
            model=model,
            input="What is the weather in Rome?",
            tools=[WEATHER],
            tool_choice="required",
            max_output_tokens=64,
            stream=True,
        )
        events = list(stream)
        added = [
            e
            for e in events
            if e.type == "response.output_item.added" and e.item.type == "function_call"
        ]
        assert len(added) == 1, [e.type for e in events]
        args = "".join(
            e.delta for e in events if e.type == "response.function_call_arguments.delta"
        )
        done = [e for e in events if e.type == "response.function_call_arguments.done"][0]
        assert done.arguments == args, (done.arguments, args)
        valid_weather_args(json.loads(args))
        final = events[-1].response
        assert final.output[-1].arguments == args, final.output
        return args

    @check("responses.parse with a Pydantic text_format (json_schema)", engine=True)
    def parsed():
        r = sdk.responses.parse(
            model=model,
            input="Plan a short trip.",
            text_format=Trip,
            max_output_tokens=100,
        )
        trip = r.output_parsed
        assert isinstance(trip, Trip), trip
        return trip.model_dump_json()

    @check("logprobs through include and top_logprobs", engine=True)
    def logprobs():
        r = sdk.responses.create(
            model=model,
            input="Say hello.",
            max_output_tokens=8,
            include=["message.output_text.logprobs"],
            top_logprobs=2,
        )
        part = r.output[0].content[0]
        assert part.logprobs, part
        for t in part.logprobs:
            assert t.logprob <= 0.0 and len(t.top_logprobs) == 2, t
        return f"{len(part.logprobs)} tokens, first {part.logprobs[0].token!r}"

    @check("fields that cannot affect generation are accepted")
    def ignored():
        r = sdk.responses.create(
            model=model,
            input=[
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": "Hello"},
            ],
            max_output_tokens=8,
            store=True,
            metadata={"app": "e2e"},
            user="e2e-user",
            safety_identifier="e2e",
            prompt_cache_key="e2e",
            service_tier="auto",
            reasoning={"effort": "low"},
            include=["reasoning.encrypted_content"],
            truncation="disabled",
            parallel_tool_calls=True,
            background=False,
            text={"format": {"type": "text"}, "verbosity": "medium"},
            tools=[WEATHER],
            tool_choice="none",
        )
        assert r.status in ("completed", "incomplete"), r.status
        assert r.metadata == {"app": "e2e"}, r.metadata
        return r.status

    @check("what cannot be served: 400 naming the field; nothing stored (404)")
    def refusals():
        refused(
            lambda: sdk.responses.create(
                model=model, input="x", previous_response_id="resp_123"
            ),
            "previous_response_id",
        )
        refused(
            lambda: sdk.responses.create(
                model=model, input="x", tools=[{"type": "web_search_preview"}]
            ),
            "tools[0].type",
        )
        refused(
            lambda: sdk.responses.create(
                model=model,
                input=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "input_image", "image_url": "https://example.com/a.png"}
                        ],
                    }
                ],
            ),
            "input[0].content[0].type",
        )
        try:
            sdk.responses.retrieve("resp_123")
            raise AssertionError("retrieve succeeded")
        except openai.NotFoundError:
            pass
        return "previous_response_id, web_search_preview, input_image refused; retrieve 404"

    return check.summary()


if __name__ == "__main__":
    sys.exit(main())
