"""The check runner the OpenAI-SDK end-to-end scripts share (ci/e2e_openai*.py).

A check is a function decorated with `@checks("what it shows")`: it runs at once, its outcome
is printed (`ok`, with the time it took and what it returned, or `FAIL` with the exception)
and kept, and a failure does not stop the checks after it. `engine=True` marks a check that
needs a real engine; it is skipped, and listed as skipped, unless the runner was made with
`engine_surface=True`. `summary()` prints the count and gives the script's exit code.
"""

import time


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
