#!/usr/bin/env python3
"""Two Python frameworks apps build on, against the local network (issue 11: "tried as a new
user would, with real OpenAI clients and frameworks").

Usage: e2e_frameworks.py DIR/urls.json [--engine-surface]

* LangChain (`langchain-openai`'s ChatOpenAI and OpenAI classes, the most used Python
  framework): invoke, stream with the usage it reports equal to the proxy's bill, batch,
  several candidates of one prompt (`n`), tool
  binding with a round trip through a `ToolMessage`, a tool call cut short by `max_tokens`
  (an invalid tool call in LangChain's terms, never text), `with_structured_output` by JSON
  schema and by function calling, the Responses API (`use_responses_api=True`) with a tool
  call, and the legacy completions class with a batch.
* The OpenAI Agents SDK (`openai-agents`): an agent that calls a Python function tool and
  then answers (typed), on the Responses API (the SDK's default) and on chat completions; an
  agent with a typed (Pydantic) output; streamed run events. The SDK raises on a response
  that ends `incomplete` (cut by `max_tokens`), so its answers here are short or typed.

Model text is never compared to fixed strings (the real SmolLM2-135M); tool calls are forced
where a check needs one. Checks that need the real engine are marked `engine=True`. Sampling
is greedy (temperature 0) except where a check is about sampling (`n` candidates): what the
small model says then is the same on every run, so a check passes or fails on every run,
never now and then.
"""

import asyncio
import json
import sys
import urllib.request
from typing import Literal

from checks import Checks, valid_trip, valid_weather_args

check = Checks("e2e_frameworks", engine_surface="--engine-surface" in sys.argv[2:])


def main():
    urls = json.load(open(sys.argv[1]))
    base, model = urls["client"], urls["model"]

    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI, OpenAI
    from pydantic import BaseModel, Field

    def chat(**kw):
        kw.setdefault("max_tokens", 16)
        kw.setdefault("temperature", 0)
        return ChatOpenAI(model=model, base_url=base, api_key="local", max_retries=0, **kw)

    def billed_tokens():
        with urllib.request.urlopen(urls["jsonstats"], timeout=30) as r:
            rec = json.loads(r.read()).get("clients", {}).get(urls["account"]) or {}
        return rec.get("prompt_tokens", 0) + rec.get("completion_tokens", 0)

    # The shared weather tool's parameters (ci/e2e_tools.json) as Python types: each framework
    # makes its JSON schema (enums included) from the signature.
    City = Literal["Paris", "Rome", "Oslo"]
    Unit = Literal["celsius", "fahrenheit"]

    @tool
    def get_weather(city: City, unit: Unit) -> str:
        """The current weather in a city (unit: celsius or fahrenheit)."""
        return json.dumps({"city": city, "temp": 18, "unit": unit})

    class Trip(BaseModel):
        """A trip (the shared trip schema's fields: an enum, a bounded integer, a boolean, so
        that the constrained output is short and checkable)."""

        city: City = Field(description="the city")
        days: int = Field(ge=1, le=9, description="how many days")
        by_train: bool

    @check("langchain: invoke and stream")
    def lc_basic():
        m = chat().invoke("Say hello")
        assert isinstance(m.content, str) and m.content, m
        assert m.response_metadata.get("finish_reason") in ("stop", "length"), m.response_metadata
        text = "".join(c.content for c in chat().stream("Say hello"))
        assert text, "empty stream"
        return f"{m.usage_metadata}"

    @check("langchain: streamed usage equals the proxy's bill")
    def lc_usage():
        before = billed_tokens()
        usage = [c.usage_metadata for c in chat(stream_usage=True).stream("Count to five")]
        usage = [u for u in usage if u]
        assert len(usage) == 1, usage
        # The bill is written when the stream ends; allow the proxy a moment.
        for _ in range(50):
            if billed_tokens() - before == usage[0]["total_tokens"]:
                return f"{usage[0]['input_tokens']}+{usage[0]['output_tokens']} tokens, billed"
            asyncio.run(asyncio.sleep(0.1))
        raise AssertionError((billed_tokens() - before, usage))

    @check("langchain: batch of two")
    def lc_batch():
        out = chat().batch(["Say one", "Say two"])
        assert len(out) == 2 and all(isinstance(m.content, str) for m in out), out
        return f"{len(out)} answers"

    @check("langchain: n candidates of one prompt")
    def lc_candidates():
        result = chat(n=3, max_tokens=8, temperature=1).generate([[HumanMessage("Name a fruit.")]])
        texts = [g.text for g in result.generations[0]]
        assert len(texts) == 3 and all(isinstance(t, str) for t in texts), result
        return f"{len(texts)} candidates, {len(set(texts))} distinct"

    @check("langchain: bind_tools round trip through a ToolMessage", engine=True)
    def lc_tools():
        # strict: the arguments' schema closed (additionalProperties false), as OpenAI's strict
        # mode; without it the schema allows other keys, and a small model adds some.
        llm = chat(max_tokens=64).bind_tools([get_weather], tool_choice="get_weather", strict=True)
        ask = HumanMessage("What is the weather in Paris, in celsius?")
        m = llm.invoke([ask])
        assert len(m.tool_calls) == 1, (m.tool_calls, m.invalid_tool_calls, m.response_metadata)
        call = m.tool_calls[0]
        assert call["name"] == "get_weather", call
        valid_weather_args(call["args"])
        result = ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])
        answer = chat(max_tokens=32).bind_tools([get_weather]).invoke([ask, m, result])
        assert answer.content or answer.tool_calls, answer
        return f"called {call['args']}"

    @check("langchain: a tool call cut short by max_tokens is an invalid call, not text", engine=True)
    def lc_cut():
        m = chat(max_tokens=12).bind_tools([get_weather], tool_choice="get_weather").invoke(
            "What is the weather in Paris?"
        )
        assert not m.content, m.content
        assert m.response_metadata.get("finish_reason") == "length", m.response_metadata
        calls = m.tool_calls + m.invalid_tool_calls
        assert [c["name"] for c in calls] == ["get_weather"], calls
        return f"{len(m.invalid_tool_calls)} invalid, {len(m.tool_calls)} valid"

    @check("langchain: with_structured_output (json_schema, function_calling)", engine=True)
    def lc_structured():
        got = []
        for method in ("json_schema", "function_calling"):
            trip = (
                chat(max_tokens=60)
                .with_structured_output(Trip, method=method, strict=True)
                .invoke("Plan a 3 day trip to Rome by train.")
            )
            assert isinstance(trip, Trip), trip
            valid_trip(trip.model_dump())
            got.append(f"{method}: {trip}")
        return "; ".join(got)

    @check("langchain: the Responses API (text, stream, a tool call)", engine=True)
    def lc_responses():
        m = chat(use_responses_api=True).invoke("Say hello")
        assert m.text, m
        text = "".join(c.text for c in chat(use_responses_api=True).stream("Say hello"))
        assert text, "empty stream"
        llm = chat(use_responses_api=True, max_tokens=64).bind_tools(
            [get_weather], tool_choice="get_weather", strict=True
        )
        m = llm.invoke("What is the weather in Oslo?")
        assert len(m.tool_calls) == 1, (m.tool_calls, m.content)
        valid_weather_args(m.tool_calls[0]["args"])
        return f"called {m.tool_calls[0]['args']}"

    @check("langchain: legacy completions class with a batch")
    def lc_completions():
        llm = OpenAI(model=model, base_url=base, api_key="local", max_tokens=8, max_retries=0)
        one = llm.invoke("The sky is")
        two = llm.batch(["The sky is", "Grass is"])
        assert isinstance(one, str) and len(two) == 2, (one, two)
        return f"{one!r}"

    from agents import (
        Agent,
        ModelSettings,
        OpenAIChatCompletionsModel,
        OpenAIResponsesModel,
        Runner,
        function_tool,
        set_tracing_disabled,
    )
    from openai import AsyncOpenAI

    # Traces would go to OpenAI's servers: off.
    set_tracing_disabled(True)
    calls = []

    @function_tool
    def weather(city: City, unit: Unit) -> str:
        """The current weather in a city (unit: celsius or fahrenheit)."""
        calls.append((city, unit))
        return json.dumps({"city": city, "temp": 18, "unit": unit})

    class Report(BaseModel):
        """A weather report."""

        city: City
        temp: int = Field(ge=-60, le=60)
        unit: Unit

    def agent(model_class, settings=None, **kw):
        # Greedy, as the LangChain checks.
        settings = ModelSettings(temperature=0).resolve(settings)
        return Agent(
            name="assistant",
            instructions="You answer questions about the weather.",
            # A client per agent: each run below has an event loop of its own.
            model=model_class(
                model=model, openai_client=AsyncOpenAI(base_url=base, api_key="local", max_retries=0)
            ),
            model_settings=settings,
            **kw,
        )

    for api, model_class in (
        ("Responses", OpenAIResponsesModel),
        ("chat completions", OpenAIChatCompletionsModel),
    ):

        @check(f"agents: a function tool called, then a typed answer ({api})", engine=True)
        def agent_tool(model_class=model_class):
            calls.clear()
            a = agent(
                model_class,
                tools=[weather],
                # The answer typed, so that it is short (constrained JSON): the SDK raises on
                # an answer cut by max_tokens (`response.incomplete`), and free text from a
                # small model after a tool result can run long.
                output_type=Report,
                # Force the call on the first turn only (the SDK resets tool_choice after a
                # tool ran, so the second turn answers).
                settings=ModelSettings(tool_choice="weather", max_tokens=64),
            )
            r = Runner.run_sync(a, "What is the weather in Paris?", max_turns=4)
            assert len(calls) >= 1, calls
            valid_weather_args({"city": calls[0][0], "unit": calls[0][1]})
            assert isinstance(r.final_output, Report), r.final_output
            return f"weather{calls[0]} -> {r.final_output}"

    @check("agents: a typed (Pydantic) final output", engine=True)
    def agent_typed():
        a = agent(OpenAIResponsesModel, ModelSettings(max_tokens=60), output_type=Trip)
        r = Runner.run_sync(a, "Plan a 3 day trip to Rome by train.")
        assert isinstance(r.final_output, Trip), r.final_output
        valid_trip(r.final_output.model_dump())
        return f"{r.final_output}"

    @check("agents: a streamed run's events")
    def agent_streamed():
        async def run():
            # The SDK raises on a stream that ends `response.incomplete` (as against OpenAI): room
            # for the whole answer.
            a = agent(OpenAIResponsesModel, ModelSettings(max_tokens=160))
            r = Runner.run_streamed(a, "Say hello in three words.")
            kinds = set()
            async for ev in r.stream_events():
                kinds.add(ev.type)
            return kinds, r.final_output

        kinds, out = asyncio.run(run())
        assert "raw_response_event" in kinds, kinds
        assert isinstance(out, str), out
        return f"{sorted(kinds)}"

    return check.summary()


if __name__ == "__main__":
    sys.exit(main())
