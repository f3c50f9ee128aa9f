#!/usr/bin/env python3
"""Compares the differential scenario's two runs (ci/ton-differential.sh).

usage: ton_differential.py REFERENCE.json TONSIM.json

REFERENCE.json is printed by tonsim/fixtures/reference/scenario.js (the official emulator,
@ton/sandbox), TONSIM.json by `cargo run -p cocoon-tonsim --example scenario` (tycho-executor).
Both list, per step, every transaction of a contract account (proxy, client, worker) and, at the
end, each contract's data-cell representation hash and balance. Every listed field is compared
exactly; none is excluded (treasury accounts are never listed, see tonsim/fixtures/README.md).
Exit codes: 0 all equal, 1 a disagreement (each printed as "step ..., account ..., field ..."),
2 unreadable or malformed input.
"""
import json
import sys

TX_FIELDS = ("account", "in_value", "exit", "skipped", "aborted", "fees", "out_values", "out_dsts")
FINAL_FIELDS = ("data_hash", "balance")


def load(path):
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        if not all(isinstance(doc.get(k), t) for k, t in (("steps", list), ("final", dict), ("accounts", dict))):
            raise ValueError("expected keys steps (list), final and accounts (objects)")
        return doc
    except (OSError, ValueError, AttributeError) as e:
        print(f"ton differential: cannot read {path}: {e}", file=sys.stderr)
        sys.exit(2)


def compare(ref, sim):
    """Returns (list of disagreement messages, number of transactions compared)."""
    names = {addr: name for name, addr in ref["accounts"].items()}

    def label(addr):
        return f"{names.get(addr, '?')} {addr}"

    errs = []
    if ref["accounts"] != sim["accounts"]:
        errs.append(f"contract addresses differ: sandbox {ref['accounts']}, tonsim {sim['accounts']}")
    if len(ref["steps"]) != len(sim["steps"]):
        errs.append(f"step count: sandbox {len(ref['steps'])}, tonsim {len(sim['steps'])}")
    compared = 0
    for i, (rs, ss) in enumerate(zip(ref["steps"], sim["steps"])):
        step = f"step {i + 1} '{rs['name']}'"
        if rs["name"] != ss["name"]:
            errs.append(f"{step}: step name: sandbox {rs['name']!r}, tonsim {ss['name']!r}")
            continue
        rt, st = rs["txs"], ss["txs"]
        if len(rt) != len(st):
            errs.append(
                f"{step}: contract transaction count: sandbox {len(rt)} "
                f"({[label(t['account']) for t in rt]}), tonsim {len(st)} "
                f"({[label(t['account']) for t in st]})"
            )
        for j, (a, b) in enumerate(zip(rt, st)):
            compared += 1
            for f in TX_FIELDS:
                if a.get(f) != b.get(f):
                    errs.append(
                        f"{step}, tx {j + 1}, account {label(a['account'])}, field {f}: "
                        f"sandbox {a.get(f)!r}, tonsim {b.get(f)!r}"
                    )
    for addr, a in ref["final"].items():
        b = sim["final"].get(addr)
        if b is None:
            errs.append(f"final state, account {label(addr)}: missing in tonsim")
            continue
        for f in FINAL_FIELDS:
            if a.get(f) != b.get(f):
                errs.append(
                    f"final state, account {label(addr)}, field {f}: "
                    f"sandbox {a.get(f)!r}, tonsim {b.get(f)!r}"
                )
    for addr in sim["final"].keys() - ref["final"].keys():
        errs.append(f"final state, account {label(addr)}: missing in sandbox")
    return errs, compared


def main(argv):
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    ref, sim = load(argv[1]), load(argv[2])
    errs, n = compare(ref, sim)
    for e in errs:
        print(f"MISMATCH {e}")
    verdict = "all equal" if not errs else f"{len(errs)} disagreement(s)"
    print(
        f"ton differential: {n} contract transactions in {len(ref['steps'])} steps and "
        f"{len(ref['final'])} final contract states (data hash, balance) compared: {verdict}"
    )
    return 1 if errs else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
