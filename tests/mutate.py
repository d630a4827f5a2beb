"""Mutation driver for litestate/core.py (see tests/README.md).

Usage: python /tmp/mutate.py [--copy /tmp/mut] [--seed 20240611] [--n 200] [--list]
       [--target litestate/aio.py] [--lines 300-420,900-950]   (one module, some lines)
       [--tests tests/test_aio.py ...]                          (only these tests)
       python /tmp/mutate.py --only ID [ID ...]     (rerun selected mutants)
       python /tmp/mutate.py --show ID              (print the mutant's diff)

Mutants are generated from the AST of the copy's pristine core.py (restored from git
after every run), each one written with ast.unparse of the mutated tree; the pristine
module is also round-tripped through ast.unparse and checked to pass, so formatting
changes alone never count.
"""

from __future__ import annotations

import argparse
import ast
import copy
import difflib
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

CMD = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m",
       "not postgres and not mariadb", "tests/", "--deselect", "tests/test_tooling.py"]

CMP_SWAP = {ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
            ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Lt: ast.LtE, ast.LtE: ast.Lt,
            ast.Gt: ast.GtE, ast.GtE: ast.Gt}


def sites(tree: ast.AST) -> list[tuple[str, int, int, str]]:
    """Every mutation site: (kind, node index in ast.walk order, sub index, label)."""
    out = []
    for idx, node in enumerate(ast.walk(tree)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Compare):
            for j, op in enumerate(node.ops):
                if type(op) in CMP_SWAP:
                    out.append(("cmp", idx, j, f"L{line} {type(op).__name__}->"
                                f"{CMP_SWAP[type(op)].__name__}"))
        elif isinstance(node, ast.BoolOp):
            out.append(("boolop", idx, 0, f"L{line} {type(node.op).__name__} swap"))
        elif isinstance(node, ast.If | ast.While | ast.IfExp):
            out.append(("negate", idx, 0, f"L{line} negate {type(node).__name__} test"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
            out.append(("bool", idx, 0, f"L{line} {node.value}->{not node.value}"))
        elif isinstance(node, ast.Constant) and type(node.value) is int:
            out.append(("int", idx, 0, f"L{line} {node.value}->{node.value + 1}"))
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            out.append(("delcall", idx, 0, f"L{line} delete call statement"))
        elif isinstance(node, ast.Return) and node.value is not None and not (
                isinstance(node.value, ast.Constant) and node.value.value is None):
            out.append(("retnone", idx, 0, f"L{line} return -> return None"))
        elif isinstance(node, ast.Continue):
            out.append(("contbreak", idx, 0, f"L{line} continue->break"))
        elif isinstance(node, ast.Break):
            out.append(("contbreak", idx, 0, f"L{line} break->continue"))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            out.append(("dropnot", idx, 0, f"L{line} drop not"))
    return out


class _Replace(ast.NodeTransformer):
    def __init__(self, target: ast.AST, new: ast.AST | None) -> None:
        self.target, self.new = target, new

    def generic_visit(self, node: ast.AST) -> ast.AST:
        super().generic_visit(node)
        return node

    def visit(self, node: ast.AST) -> ast.AST | None:
        if node is self.target:
            return self.new
        return self.generic_visit(node)


def apply(tree: ast.Module, site: tuple[str, int, int, str]) -> ast.Module:
    kind, idx, j, _ = site
    tree = copy.deepcopy(tree)
    node: Any = list(ast.walk(tree))[idx]
    if kind == "cmp":
        node.ops[j] = CMP_SWAP[type(node.ops[j])]()
    elif kind == "boolop":
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    elif kind == "negate":
        node.test = ast.UnaryOp(op=ast.Not(), operand=node.test)
    elif kind == "bool":
        node.value = not node.value
    elif kind == "int":
        node.value += 1
    elif kind == "delcall":
        tree = cast(ast.Module, _Replace(node, ast.Pass()).visit(tree))
    elif kind == "retnone":
        node.value = ast.Constant(None)
    elif kind == "contbreak":
        tree = cast(ast.Module, _Replace(node, ast.Break() if isinstance(node, ast.Continue)
                        else ast.Continue()).visit(tree))
    elif kind == "dropnot":
        tree = cast(ast.Module, _Replace(node, node.operand).visit(tree))
    return ast.fix_missing_locations(tree)


def run(copy_root: Path, source: str, timeout: float, module: str, tests: list[str]
        ) -> tuple[str, float, str]:
    target = copy_root / module
    target.write_text(source)
    start = time.monotonic()
    cmd = CMD if not tests else [*CMD[:CMD.index("tests/")], *tests]
    try:
        proc = subprocess.run(cmd, cwd=copy_root, capture_output=True, text=True,
                              timeout=timeout)
        status = "survived" if proc.returncode == 0 else "killed"
        tail = (proc.stdout.strip().splitlines() or [""])[-1]
    except subprocess.TimeoutExpired:
        status, tail = "killed(timeout)", "timeout"
    return status, time.monotonic() - start, tail


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copy", default="/tmp/mut")
    ap.add_argument("--seed", type=int, default=20240611)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--timeout", type=float, default=60)
    ap.add_argument("--out", default="/tmp/mutants.jsonl")
    ap.add_argument("--only", type=int, nargs="*")
    ap.add_argument("--show", type=int)
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--target", default="litestate/core.py", help="the module to mutate")
    ap.add_argument("--lines", default="", help="only sites on these lines: 10-40,90-99")
    ap.add_argument("--tests", nargs="*", default=[], help="test files to run (default: all)")
    ns = ap.parse_args()
    root = Path(ns.copy)
    original = subprocess.run(["git", "show", f"HEAD:{ns.target}"], cwd=root,
                              capture_output=True, text=True, check=True).stdout
    tree = ast.parse(original)
    baseline = ast.unparse(tree)
    all_sites = sites(tree)
    if ns.lines:
        spans = [tuple(map(int, span.split("-"))) for span in ns.lines.split(",")]
        all_sites = [site for site in all_sites
                     if any(a <= int(site[3].split()[0][1:]) <= b for a, b in spans)]
    rng = random.Random(ns.seed)
    order = list(range(len(all_sites)))
    rng.shuffle(order)
    chosen = order[:ns.n]
    if ns.list:
        for i in chosen:
            print(i, all_sites[i][3])
        return
    if ns.show is not None:
        mutated = ast.unparse(apply(tree, all_sites[ns.show]))
        sys.stdout.writelines(difflib.unified_diff(baseline.splitlines(True),
                                                   mutated.splitlines(True), n=2))
        return
    ids = ns.only if ns.only else chosen
    print(f"{len(all_sites)} sites; seed {ns.seed}; running {len(ids)}", flush=True)
    try:
        if not ns.only:
            status, secs, tail = run(root, baseline, ns.timeout, ns.target, ns.tests)
            assert status == "survived", f"the unparsed baseline fails: {tail}"
            print(f"baseline passes in {secs:.1f}s", flush=True)
        with open(ns.out, "a") as out:
            for k, i in enumerate(ids):
                site = all_sites[i]
                mutated = ast.unparse(apply(tree, site))
                if mutated == baseline:
                    status, secs, tail = "noop", 0.0, ""
                else:
                    status, secs, tail = run(root, mutated, ns.timeout, ns.target, ns.tests)
                rec = {"id": i, "site": site[3], "kind": site[0], "status": status,
                       "secs": round(secs, 1), "tail": tail}
                out.write(json.dumps(rec) + "\n")
                out.flush()
                print(f"[{k + 1}/{len(ids)}] #{i} {site[3]}: {status} ({secs:.1f}s) {tail}",
                      flush=True)
    finally:
        (root / ns.target).write_text(original)


if __name__ == "__main__":
    main()
