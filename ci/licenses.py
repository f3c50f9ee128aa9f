#!/usr/bin/env python3
"""Licence check of everything linked into cocoon's binaries (docs/licenses.md).

Walks `cargo metadata` (all features, x86_64-unknown-linux-gnu) from the workspace members
that build programs along normal dependency edges only (dev- and build-dependencies are not
shipped), reads each crate's SPDX licence expression and checks that it can be satisfied
with licences from ALLOWED. A crate whose expression names a licence in neither ALLOWED nor
DENIED fails as "not reviewed": a new licence is a decision, written down here and in
docs/licenses.md, not something CI lets through.

  ci/licenses.py                  check the workspace (runs `cargo metadata --locked`)
  ci/licenses.py --metadata FILE  check a saved `cargo metadata --format-version 1` output
  ci/licenses.py --self-test      the checker's own tests (fake dependency graphs)

Exit status: 0 every shipped crate passes, 1 some do not (each named with its reason),
2 unusable input.
"""

import json
import re
import subprocess
import sys
from collections import Counter

TARGET = "x86_64-unknown-linux-gnu"

# Licences a shipped crate may be used under. Permissive ones, plus MPL-2.0 (weak, file-level
# copyleft: using unmodified MPL files in a larger work is allowed; changes to those files
# would have to be published). Listed in order of preference when an expression offers a
# choice.
ALLOWED = [
    "MIT",
    "Apache-2.0",
    "Apache-2.0 WITH LLVM-exception",
    "BSD-3-Clause",
    "BSD-2-Clause",
    "BSD-1-Clause",
    "ISC",
    "Zlib",
    "0BSD",
    "MIT-0",
    "CC0-1.0",
    "Unlicense",
    "BSL-1.0",
    "Unicode-3.0",
    "Unicode-DFS-2016",
    "CDLA-Permissive-2.0",
    "NCSA",
    "MPL-2.0",
]

# Licences no shipped crate may be used under: strong or network copyleft (the AGPL's
# network clause would reach every operator of a proxy or worker), and licences that restrict
# use.
DENIED = re.compile(
    r"^(AGPL|GPL|LGPL|SSPL|EUPL|OSL|CPAL|RPL|Sleepycat|CC-BY-SA|CC-BY-NC|BUSL|Commons-Clause)",
    re.IGNORECASE,
)


class Unusable(Exception):
    pass


def tokens(expr):
    # Old crates write "MIT/Apache-2.0" for "MIT OR Apache-2.0".
    expr = expr.replace("/", " OR ")
    out = re.findall(r"\(|\)|[A-Za-z0-9.+\-]+", expr)
    if "".join(out) != re.sub(r"\s+", "", expr):
        raise Unusable(f"licence expression {expr!r}: characters outside SPDX")
    return out


def parse(expr):
    """An SPDX expression as a tree: ("or", [...]), ("and", [...]) or ("id", "MIT")."""
    toks = tokens(expr)
    pos = 0

    def peek():
        return toks[pos] if pos < len(toks) else None

    def take():
        nonlocal pos
        if pos >= len(toks):
            raise Unusable(f"licence expression {expr!r} ends early")
        pos += 1
        return toks[pos - 1]

    def disjunction():
        terms = [conjunction()]
        while peek() == "OR":
            take()
            terms.append(conjunction())
        return terms[0] if len(terms) == 1 else ("or", terms)

    def conjunction():
        factors = [factor()]
        while peek() == "AND":
            take()
            factors.append(factor())
        return factors[0] if len(factors) == 1 else ("and", factors)

    def factor():
        t = take()
        if t == "(":
            inner = disjunction()
            if take() != ")":
                raise Unusable(f"licence expression {expr!r}: unbalanced parentheses")
            return inner
        if t in ("AND", "OR", "WITH", ")"):
            raise Unusable(f"licence expression {expr!r}: {t} where a licence belongs")
        if peek() == "WITH":
            take()
            return ("id", f"{t} WITH {take()}")
        return ("id", t)

    tree = disjunction()
    if pos != len(toks):
        raise Unusable(f"licence expression {expr!r}: trailing {toks[pos]!r}")
    return tree


def allowed(lic):
    # An exception only adds permissions: "X WITH e" is as allowed as X, never more.
    return lic in ALLOWED or lic.split(" WITH ")[0] in ALLOWED


def choose(tree):
    """The licences chosen to satisfy `tree` (a list), or why it cannot be (a string)."""
    kind, body = tree
    if kind == "id":
        if allowed(body):
            return [body]
        if DENIED.match(body):
            return f"{body} is not allowed in shipped binaries"
        return f"{body} is not reviewed (add it to ci/licenses.py and docs/licenses.md, or not)"
    if kind == "or":
        options = [choose(t) for t in body]
        ok = [o for o in options if isinstance(o, list)]
        if not ok:
            return "; ".join(options)
        # The most preferred choice.
        rank = lambda o: max(ALLOWED.index(l) if l in ALLOWED else len(ALLOWED) for l in o)
        return min(ok, key=rank)
    chosen = []
    for t in body:
        c = choose(t)
        if isinstance(c, str):
            return c
        chosen.extend(c)
    return chosen


def shipped(meta):
    """Package ids linked into the workspace's programs (normal dependency edges)."""
    packages = {p["id"]: p for p in meta["packages"]}
    nodes = {n["id"]: n for n in (meta.get("resolve") or {}).get("nodes", [])}
    if not nodes:
        raise Unusable("cargo metadata has no resolve graph")
    roots = [
        m
        for m in meta["workspace_members"]
        if any("bin" in t["kind"] for t in packages[m]["targets"])
    ]
    seen, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        for dep in nodes[pid]["deps"]:
            if any(k.get("kind") is None for k in dep.get("dep_kinds", [])):
                todo.append(dep["pkg"])
    return [packages[p] for p in sorted(seen)], [packages[r]["name"] for r in roots]


def check(meta):
    """(failures, counts, mpl, n, roots): failures as "name version: reason" lines."""
    pkgs, roots = shipped(meta)
    failures, counts, mpl = [], Counter(), []
    for p in pkgs:
        name = f"{p['name']} {p['version']}"
        expr = p.get("license")
        if not expr:
            failures.append(f"{name}: no SPDX licence expression (license-file: {p.get('license_file')})")
            continue
        try:
            c = choose(parse(expr))
        except Unusable as e:
            failures.append(f"{name}: {e}")
            continue
        if isinstance(c, str):
            failures.append(f"{name} ({expr}): {c}")
            continue
        for lic in set(c):
            counts[lic] += 1
        if "MPL-2.0" in c:
            mpl.append(p["name"])
    return failures, counts, mpl, len(pkgs), roots


def metadata_from_cargo():
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--locked", "--all-features",
         "--filter-platform", TARGET],
        check=True,
        stdout=subprocess.PIPE,
    ).stdout
    return json.loads(out)


def self_test():
    def pkg(name, lic, deps=(), bin=False):
        return name, lic, deps, bin

    def meta(*specs):
        packages, nodes = [], []
        for name, lic, deps, is_bin in specs:
            pid = f"{name}-id"
            packages.append({
                "id": pid, "name": name, "version": "1.0.0", "license": lic,
                "license_file": None,
                "targets": [{"kind": ["bin"] if is_bin else ["lib"]}],
            })
            nodes.append({"id": pid, "deps": [
                {"pkg": f"{d}-id", "dep_kinds": [{"kind": k, "target": None}]} for d, k in deps
            ]})
        return {"packages": packages, "resolve": {"nodes": nodes},
                "workspace_members": [p["id"] for p in packages if p["targets"][0]["kind"] == ["bin"]]}

    cases = [
        # (what, metadata, expected failing crate names)
        ("permissive graph", meta(
            pkg("app", "MIT OR Apache-2.0", [("a", None), ("b", None)], bin=True),
            pkg("a", "Apache-2.0/MIT"), pkg("b", "(MIT OR Apache-2.0) AND Unicode-3.0"),
        ), []),
        ("AGPL through a normal dependency", meta(
            pkg("app", "MIT", [("a", None)], bin=True), pkg("a", "MIT", [("evil", None)]),
            pkg("evil", "AGPL-3.0-only"),
        ), ["evil"]),
        ("GPL only as a dev- or build-dependency", meta(
            pkg("app", "MIT", [("t", "dev"), ("b", "build")], bin=True),
            pkg("t", "GPL-3.0-or-later"), pkg("b", "GPL-2.0-only"),
        ), []),
        ("a choice that includes LGPL", meta(
            pkg("app", "MIT", [("a", None)], bin=True), pkg("a", "MIT OR Apache-2.0 OR LGPL-2.1-or-later"),
        ), []),
        ("GPL AND MIT", meta(
            pkg("app", "MIT", [("a", None)], bin=True), pkg("a", "GPL-3.0-only AND MIT"),
        ), ["a"]),
        ("an exception does not launder GPL", meta(
            pkg("app", "MIT", [("a", None), ("b", None)], bin=True),
            pkg("a", "GPL-2.0-only WITH Classpath-exception-2.0"),
            pkg("b", "Apache-2.0 WITH LLVM-exception"),
        ), ["a"]),
        ("an unreviewed licence", meta(
            pkg("app", "MIT", [("a", None)], bin=True), pkg("a", "WTFPL"),
        ), ["a"]),
        ("no licence field", meta(
            pkg("app", "MIT", [("a", None)], bin=True), pkg("a", None),
        ), ["a"]),
        ("a malformed expression", meta(
            pkg("app", "MIT", [("a", None), ("b", None)], bin=True),
            pkg("a", "(MIT OR Apache-2.0"), pkg("b", "MIT OR"),
        ), ["a", "b"]),
        ("a library crate of the workspace is not a root", meta(
            pkg("app", "MIT", [], bin=True), pkg("testlib", "MIT", [("g", None)]),
            pkg("g", "GPL-3.0-only"),
        ), []),
    ]
    bad = 0
    for what, m, expected in cases:
        failures, _, _, _, _ = check(m)
        got = sorted(f.split(" ")[0] for f in failures)
        if got != sorted(expected):
            print(f"self-test FAILED: {what}: failing {got}, expected {sorted(expected)}: {failures}")
            bad += 1
    assert choose(parse("Apache-2.0 OR MIT")) == ["MIT"], "preference order"
    if bad:
        return 1
    print(f"ci/licenses.py self-test: {len(cases)} cases passed")
    return 0


def main(argv):
    if argv[1:] == ["--self-test"]:
        return self_test()
    try:
        if len(argv) == 3 and argv[1] == "--metadata":
            with open(argv[2]) as f:
                meta = json.load(f)
        elif len(argv) == 1:
            meta = metadata_from_cargo()
        else:
            print(__doc__, file=sys.stderr)
            return 2
        failures, counts, mpl, n, roots = check(meta)
    except (Unusable, OSError, ValueError, KeyError, subprocess.CalledProcessError) as e:
        print(f"ci/licenses.py: unusable input: {e}", file=sys.stderr)
        return 2
    summary = ", ".join(f"{lic} {k}" for lic, k in counts.most_common())
    print(f"licences of the {n} crates linked into {', '.join(roots)} (all features, {TARGET}): {summary}")
    if mpl:
        print(f"MPL-2.0 (file-level copyleft; used unmodified): {', '.join(sorted(set(mpl)))}")
    if failures:
        print(f"{len(failures)} crate(s) fail the licence policy (docs/licenses.md):")
        for f in failures:
            print(f"  {f}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
