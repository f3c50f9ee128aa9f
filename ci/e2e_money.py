#!/usr/bin/env python3
"""Money end to end with the official OpenAI SDK (issue "Money in the network", first Must-show).

Usage: e2e_money.py BIN_DIR

Starts `cocoon-host launch --local --payments --engine stub` (a local TON chain running Cocoon's
real contracts inside the launcher; proxy with its durable ledger and payments engine; worker
with payouts; a client contract funded and bound to the client's account), sends N requests
through the OpenAI SDK (chat, streamed chat with include_usage, legacy completions), and adds up
what the client owes from the usage it saw and the prices in urls.json — independently of the
Rust code: adjusted tokens per class = n * coefficient * multiplier // 10^7 (Cocoon's rule).
Then it waits for payments.json (written by the launcher from the chain once everything billed
is charged and paid out) and checks, all read from the chain:
  * the client contract's balance dropped by exactly what the client computed;
  * the worker owner received exactly adjusted tokens * worker_fee;
  * the proxy contract kept exactly adjusted tokens * (price - worker_fee).
Then the client's own checks: `account audit` of its receipt log against the chain (and of a
log missing one receipt: exit 3, naming the difference); `account charge` through the proxy's
client port (nothing due: the proxy charged everything); and the running client, which checks
the chain's charges against its receipts every few seconds ([account] in client.toml), stops
with exit 3 naming the difference once a receipt goes missing from its log.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import openai


def fail(msg):
    sys.exit(f"e2e_money: FAILED: {msg}")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def adjusted(usage, prices):
    """Adjusted tokens of one usage object (OpenAI shape), Cocoon's rounding per class."""
    m = prices["multipliers"]
    coef = prices["price_coefficient_milli"]
    prompt = usage.prompt_tokens
    completion = usage.completion_tokens
    details = getattr(usage, "prompt_tokens_details", None)
    cached = min(getattr(details, "cached_tokens", 0) or 0, prompt)
    details = getattr(usage, "completion_tokens_details", None)
    reasoning = min(getattr(details, "reasoning_tokens", 0) or 0, completion)
    adj = lambda n, mult: n * coef * mult // 10_000_000  # noqa: E731
    return (adj(prompt - cached, m["prompt"]) + adj(cached, m["cached"])
            + adj(completion - reasoning, m["completion"]) + adj(reasoning, m["reasoning"]))


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    bin_dir = sys.argv[1]
    tmp = tempfile.mkdtemp(prefix="cocoon-e2e-money-")
    net = os.path.join(tmp, "net")
    out = open(os.path.join(tmp, "launcher.out"), "w")
    host = subprocess.Popen(
        [os.path.join(bin_dir, "cocoon-host"), "launch", "--local", "--payments", "--engine",
         "stub", "--dir", net, "--port", str(free_port())],
        stdout=out, stderr=subprocess.STDOUT)
    ok = False
    try:
        urls_path = os.path.join(net, "urls.json")
        deadline = time.time() + 180
        while not os.path.exists(urls_path):
            if host.poll() is not None:
                fail(f"cocoon-host exited with {host.returncode} before the network was ready")
            if time.time() > deadline:
                fail("network not ready after 180 s")
            time.sleep(0.3)
        urls = json.load(open(urls_path))
        prices = urls["prices"]
        print(f"e2e_money: network ready; chain {urls['chain']}, client contract "
              f"{urls['client_contract']}")
        client = openai.OpenAI(base_url=urls["client"], api_key="unused", max_retries=0)
        model = urls["model"]
        owed = 0
        n = 0
        for max_tokens in (8, 16, 24):
            r = client.chat.completions.create(
                model=model, max_tokens=max_tokens,
                messages=[{"role": "user", "content": f"count to {max_tokens}"}])
            owed += adjusted(r.usage, prices)
            n += 1
        for max_tokens in (5, 30):
            stream = client.chat.completions.create(
                model=model, max_tokens=max_tokens, stream=True,
                stream_options={"include_usage": True},
                messages=[{"role": "system", "content": "be brief"},
                          {"role": "user", "content": "stream please"}])
            usage = None
            for chunk in stream:
                if chunk.usage is not None:
                    usage = chunk.usage
            if usage is None:
                fail("a streamed request without a usage chunk")
            owed += adjusted(usage, prices)
            n += 1
        r = client.completions.create(model=model, prompt="once upon a time", max_tokens=12)
        owed += adjusted(r.usage, prices)
        n += 1
        price, fee = prices["price_per_token"], prices["worker_fee_per_token"]
        print(f"e2e_money: {n} requests; the client computes {owed} adjusted tokens = "
              f"{owed * price} nanoton owed")

        pay_path = os.path.join(net, "payments.json")
        deadline = time.time() + 120
        figures = None
        while time.time() < deadline:
            if os.path.exists(pay_path):
                figures = json.load(open(pay_path))
                if figures["requests"] == n and figures["charged_tokens"] == owed:
                    break
            if host.poll() is not None:
                fail(f"cocoon-host exited with {host.returncode}")
            time.sleep(0.5)
        else:
            fail(f"payments did not settle for {n} requests / {owed} tokens within 120 s; "
                 f"last payments.json: {figures}")
        print("e2e_money: payments.json " + json.dumps(figures))
        checks = [
            ("client balance drop = what the client computed",
             figures["client_balance_before_nano"] - figures["client_balance_after_nano"],
             owed * price),
            ("charged_nano", figures["charged_nano"], owed * price),
            ("worker owner earned = tokens * worker_fee", figures["worker_earned_nano"],
             owed * fee),
            ("worker owner received (payout messages on chain)",
             figures["worker_owner_received_nano"], owed * fee),
            ("proxy contract kept = tokens * (price - worker_fee)", figures["proxy_kept_nano"],
             owed * (price - fee)),
            ("worker contract paid tokens", figures["paid_tokens"], owed),
        ]
        for what, got, want in checks:
            if got != want:
                fail(f"{what}: chain shows {got}, expected {want}")
            print(f"e2e_money: ok  {what}: {got}")

        # The client's own check: its receipt log (one verified worker receipt per request)
        # against what the chain shows charged to its contract.
        receipts = os.path.join(net, "receipts.jsonl")
        lines = [l for l in open(receipts) if l.strip()]
        if len(lines) != n:
            fail(f"the client logged {len(lines)} receipts for {n} requests")

        def audit(path):
            return subprocess.run(
                [os.path.join(bin_dir, "cocoon-client"), "account", "audit", "--chain",
                 urls["chain"], "--contract", urls["client_contract"], "--receipts", path],
                capture_output=True, text=True, timeout=60)

        a = audit(receipts)
        if a.returncode != 0 or f"receipts: {n} " not in a.stdout \
                or f"{owed} adjusted tokens" not in a.stdout \
                or f"charged on chain: {owed} tokens" not in a.stdout:
            fail(f"account audit: exit {a.returncode}\n{a.stdout}{a.stderr}")
        print(f"e2e_money: ok  account audit: {n} receipts justify the {owed} tokens charged")
        # A log missing one receipt: the chain shows more than the receipts justify.
        partial = os.path.join(tmp, "receipts-partial.jsonl")
        with open(partial, "w") as f:
            f.writelines(lines[1:])
        a = audit(partial)
        if a.returncode != 3 or f"the chain shows {owed} tokens charged" not in a.stderr:
            fail(f"account audit of a partial log: exit {a.returncode}\n{a.stdout}{a.stderr}")
        print(f"e2e_money: ok  account audit names the over-charge: {a.stderr.strip()}")

        # The client's own charge, through the proxy's client port over the attested
        # connection: the proxy charged everything itself already, so nothing is due.
        c = subprocess.run(
            [os.path.join(bin_dir, "cocoon-client"), "account", "charge",
             "--account-config", os.path.join(net, "account.toml"),
             "--client-config", os.path.join(net, "client.toml")],
            capture_output=True, text=True, timeout=60)
        if c.returncode != 0 or "no charge due" not in c.stdout:
            fail(f"account charge: exit {c.returncode}\n{c.stdout}{c.stderr}")
        print(f"e2e_money: ok  account charge: {c.stdout.strip()}")

        # The running client checks the chain's charges against its receipt log every few
        # seconds ([account] in client.toml). One receipt goes missing from its log: the chain
        # now shows more charged than the receipts justify, and the client stops, naming it.
        first = json.loads(lines[0])
        with open(receipts, "w") as f:
            f.writelines(lines[1:])
        # what the log without that line justifies (as the partial audit above showed)
        missing = owed - int(re.search(r"the receipts justify (\d+)", a.stderr).group(1))
        want = (f"over-charged: the chain shows {owed} tokens charged to this client contract, "
                f"the receipts justify {owed - missing}: {missing} tokens "
                f"({missing * price} nanoton) more")
        try:
            host.wait(timeout=30)
        except subprocess.TimeoutExpired:
            fail("the client did not stop within 30 s of the over-charge")
        out.flush()
        launcher = open(os.path.join(tmp, "launcher.out")).read()
        client_log = open(os.path.join(net, "logs", "client.log")).read()
        if want not in client_log or "client exited (exit status: 3)" not in launcher:
            fail(f"expected the client to stop with exit 3 naming: {want}\n"
                 f"launcher: {launcher[-2000:]}\nclient log: {client_log[-2000:]}")
        if host.returncode != 1:
            fail(f"cocoon-host exited with {host.returncode} when the client stopped (expected 1)")
        print(f"e2e_money: ok  the running client stops (exit 3): {want} "
              f"(request {first['request_id'][:12]}… dropped from its log)")
        ok = True
    finally:
        if host.poll() is None:
            host.send_signal(signal.SIGTERM)
            try:
                host.wait(timeout=60)
            except subprocess.TimeoutExpired:
                host.kill()
        out.close()
        if ok:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"e2e_money: files kept in {tmp}; launcher output:")
            print(open(os.path.join(tmp, "launcher.out")).read()[-4000:])
    if not ok:
        sys.exit(1)
    print("e2e_money: all checks passed")


if __name__ == "__main__":
    main()
