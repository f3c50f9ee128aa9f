"""The check runner the OpenAI-SDK end-to-end scripts share (ci/e2e_openai*.py).

A check is a function decorated with `@checks("what it shows")`: it runs at once, its outcome
is printed (`ok`, with the time it took and what it returned, or `FAIL` with the exception)
and kept, and a failure does not stop the checks after it. `engine=True` marks a check that
needs a real engine; it is skipped, and listed as skipped, unless the runner was made with
`engine_surface=True`. `summary()` prints the count and gives the script's exit code.

Also the function tool and JSON schema the scripts send (ci/e2e_tools.json, shared with the
JavaScript SDK's checks in ci/e2e-js) and their validators.
"""

import json
import pathlib
import time

_TOOLS = json.loads((pathlib.Path(__file__).parent / "e2e_tools.json").read_text())

# The weather tool in the chat completions form and in the Responses form.
WEATHER_CHAT = {"type": "function", "function": _TOOLS["weather"]}
WEATHER_RESPONSES = {"type": "function", **_TOOLS["weather"], "strict": True}
TRIP_SCHEMA = _TOOLS["trip_schema"]


def valid_weather_args(args):
    assert set(args) == {"city", "unit"}, args
    assert args["city"] in ("Paris", "Rome", "Oslo"), args
    assert args["unit"] in ("celsius", "fahrenheit"), args


def valid_trip(obj):
    assert isinstance(obj, dict), obj
    assert set(obj) == {"city", "days", "by_train"}, obj
    assert obj["city"] in ("Paris", "Rome", "Oslo"), obj
    assert isinstance(obj["days"], int) and 1 <= obj["days"] <= 9, obj
    assert isinstance(obj["by_train"], bool), obj


class Checks:
    def __init__(self, script, engine_surface=False):
        self.script = script
        self.engine_surface = engine_surface
        self.results = []  # (name, ok)

    def __call__(self, name, engine=False):
        def run(fn):
            if engine and not self.engine_surface:
                print(f"skip  {name} (needs --engine-surface)", flush=True)
                return fn
            t = time.monotonic()
            try:
                detail = fn() or ""
                self.results.append((name, True))
                print(f"ok    {name} ({time.monotonic() - t:.1f} s) {detail}", flush=True)
            except Exception as e:  # noqa: BLE001 - report every failure and go on
                self.results.append((name, False))
                print(f"FAIL  {name}: {e!r}", flush=True)
            return fn

        return run

    def summary(self):
        failed = [name for name, ok in self.results if not ok]
        passed = len(self.results) - len(failed)
        print(f"{self.script}: {passed} passed, {len(failed)} failed", flush=True)
        return 1 if failed else 0
