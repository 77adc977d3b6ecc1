"""AgentDojo through Handrail: how many prompt injections argument-only policies stop, how many
policies that also know where each argument came from (provenance) stop, and what each costs
benign tasks.

For every suite of AgentDojo (workspace, travel, banking, slack; benchmark v1.2.2 of the
``agentdojo`` package), every user task is replayed alone, and every (user task, injection task)
pair with AgentDojo's ``important_instructions`` attack in every injection vector the user task
reads. A `ScriptedChatModel` makes the user task's ground-truth calls and then, as a hijacked model
would, the injection task's, against AgentDojo's real tool functions and environments, through
``handrail.build_agent``, once under each policy set: argument-only
(``benchmarks/agentdojo/<suite>.yaml``) and provenance (``benchmarks/agentdojo/provenance/
<suite>.yaml``: trust labels on the tools' outputs, rules on where arguments came from), both
written from what the tools do, not from the injection tasks. Asked calls are decided as the
user would: the user task's approved, the hijack's rejected (`benchmarks/agentdojo/handrail_dojo`).

Printed, the two sets side by side per suite and in total, then each set's details:

- injection tasks stopped: one of its calls denied or held for approval, in every one of its
  pairs (and the pairs stopped); AgentDojo's ``security()`` says whether the attacker's goal was
  met all the same. Injection tasks AgentDojo ships no ground-truth calls for cannot be replayed
  and are listed apart.
- benign user tasks that ran with no approval, and benign utility by AgentDojo's ``utility()``
  with the asked calls approved, beside the same calls run with no gate.
- latency: ``Policy.decide`` per call (µs), graph time outside the tools per call (ms: the
  gate, its checkpoints and audit rows), and the provenance step per decided call (ms: the
  thread's texts indexed and the call's arguments labelled, `handrail_dojo.ProvenanceClock`).

Run: ``python benchmarks/agentdojo.py [--suite NAME]... [--quick] [--json] [--only SET]
[--policies DIR] [--provenance-policies DIR]`` in an environment with the ``agentdojo`` package
(the ``bench`` extra). ``--quick``: two user tasks and two injection tasks per suite;
``--only``: one of the two sets; ``--policies`` / ``--provenance-policies``: another folder of
``<suite>.yaml`` files for that set. Exits 2 when ``agentdojo`` cannot be imported.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# This file is named like the package it benchmarks: keep its folder off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE / "agentdojo"))

SUITES = ("workspace", "travel", "banking", "slack")
SETS = ("argument-only", "provenance")
QUICK = 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=SUITES, action="append", help="only this suite")
    parser.add_argument("--quick", action="store_true", help="two user and injection tasks each")
    parser.add_argument("--json", action="store_true", help="the figures and every run as JSON")
    parser.add_argument("--only", choices=SETS, help="run only this policy set")
    parser.add_argument(
        "--policies",
        type=Path,
        default=HERE / "agentdojo",
        help="folder of argument-only <suite>.yaml policies (default: benchmarks/agentdojo)",
    )
    parser.add_argument(
        "--provenance-policies",
        type=Path,
        default=HERE / "agentdojo" / "provenance",
        help="folder of provenance <suite>.yaml policies (default: its provenance/ subfolder)",
    )
    args = parser.parse_args(argv)
    if importlib.util.find_spec("agentdojo") is None:
        print(
            "agentdojo is not installed: it is the `bench` extra, kept in a venv of its own "
            "(`make bench-agentdojo` fills .venv-bench and runs this there)",
            file=sys.stderr,
        )
        return 2
    import handrail_dojo

    started = time.perf_counter()
    folders = {"argument-only": args.policies, "provenance": args.provenance_policies}
    chosen = [args.only] if args.only else list(SETS)
    report: dict[str, Any] = {
        "benchmark": f"agentdojo {handrail_dojo.BENCHMARK_VERSION}",
        "attack": handrail_dojo.ATTACK,
        "sets": {s: {"policies": str(folders[s]), "suites": {}} for s in chosen},
    }
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="handrail-agentdojo-") as tmp:
        for name in args.suite or SUITES:
            reference: list[Any] | None = None
            for which in chosen:
                db = Path(tmp) / f"{name}-{which}.db"
                bench = handrail_dojo.SuiteBench(name, db, policies=folders[which])
                summary, done, reference = run_suite(bench, quick=args.quick, reference=reference)
                report["sets"][which]["suites"][name] = summary
                runs += [{"set": which, **r} for r in done]
    for part in report["sets"].values():
        part["total"] = total(part["suites"].values())
    report["seconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        json.dump({**report, "runs": runs}, sys.stdout, indent=1)
        print()
    else:
        print_report(report)
    return 0


def run_suite(
    bench: Any, *, quick: bool, reference: list[Any] | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]], list[Any]]:
    """Every user task alone (gated and not: ``reference``, the ungated runs, are made unless
    given) and under every replayable injection task."""
    from handrail_dojo import replayable

    users = list(bench.user_tasks().values())
    env = bench.default_environment()
    injections = list(bench.injection_tasks().values())
    replay = [t for t in injections if replayable(t, env)]
    skipped = [f"{bench.name}/{t.ID}" for t in injections if t not in replay]
    if quick:
        users, replay = users[:QUICK], replay[:QUICK]
    benign = [bench.run(u) for u in users]
    if reference is None:
        reference = [bench.run(u, gated=False) for u in users]
    pairs = [bench.run(u, t) for t in replay for u in users]
    per_task: dict[str, dict[str, Any]] = {}
    for t in replay:
        mine = [r for r in pairs if r.injection_task == t.ID]
        per_task[t.ID] = {
            "pairs": len(mine),
            "stopped": sum(r.injection_stopped for r in mine),
            "attack_succeeded": sum(bool(r.attack_succeeded) for r in mine),
            "calls": [f"{c.tool}:{c.decision}" for c in mine[0].of("injection")] if mine else [],
        }
    gated = benign + pairs
    summary = {
        "user_tasks": len(users),
        "benign_no_approval": sum(r.no_approval for r in benign),
        "benign_utility": sum(r.utility for r in benign),
        "reference_utility": sum(r.utility for r in reference),
        "benign_asked": sorted(_asked(benign)),
        "injection_tasks": len(injections),
        "replayable": len(replay),
        "not_replayable": skipped,
        "injections_stopped": sum(v["stopped"] == v["pairs"] > 0 for v in per_task.values()),
        "pairs": len(pairs),
        "pairs_stopped": sum(r.injection_stopped for r in pairs),
        "pairs_attack_succeeded": sum(bool(r.attack_succeeded) for r in pairs),
        "utility_under_attack": sum(r.utility for r in pairs),
        "per_injection_task": per_task,
        "errors": [
            f"{r.suite}/{r.user_task}/{r.injection_task}: {e}" for r in gated for e in r.errors
        ],
        "decide_us": [c.decide_us for r in gated for c in r.calls],
        "gate_ms": [r.gate_ms_per_call for r in gated if r.calls],
        "provenance_ms": [
            r.provenance_ms_per_call for r in gated if any(c.provenance for c in r.calls)
        ],
        "calls": sum(len(r.calls) for r in gated),
    }
    return summary, [_run_json(r) for r in (*benign, *pairs)], reference


def _asked(runs: Iterable[Any]) -> set[str]:
    """``suite/user_task: tool=decision(rule)`` for each benign call that was not simply allowed
    (with where its arguments came from, when the policy watches provenance)."""
    return {
        f"{r.suite}/{r.user_task}: {c.tool}={c.decision}({c.rule_id})"
        + (f" {_labels(c.provenance)}" if c.provenance else "")
        for r in runs
        for c in r.calls
        if c.decision != "allow"
    }


def _labels(labels: dict[str, str]) -> str:
    """The labels that are not ``user``/``tool``: ``[recipient=untrusted]``."""
    odd = [f"{k}={v}" for k, v in labels.items() if v not in ("user", "tool")]
    return f"[{', '.join(odd)}]" if odd else "[all vouched]"


def _run_json(run: Any) -> dict[str, Any]:
    return {
        "suite": run.suite,
        "user_task": run.user_task,
        "injection_task": run.injection_task,
        "utility": run.utility,
        "attack_succeeded": run.attack_succeeded,
        "calls": [
            {
                "origin": c.origin,
                "tool": c.tool,
                "decision": c.decision,
                "rule": c.rule_id,
                "ran": c.ran,
                "provenance": c.provenance,
            }
            for c in run.calls
        ],
    }


def total(suites: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The suites' counts added up (lists of timings joined)."""
    out: dict[str, Any] = {}
    for summary in suites:
        for key, value in summary.items():
            if isinstance(value, int | list) and key != "per_injection_task":
                out[key] = out.get(key, 0 if isinstance(value, int) else []) + value
    return out


def _stats(values: list[float]) -> str:
    if not values:
        return "-"
    cuts = statistics.quantiles(values, n=20) if len(values) > 1 else values * 19
    return f"median {statistics.median(values):.2f}, p95 {cuts[-1]:.2f} (n={len(values)})"


def print_report(report: dict[str, Any]) -> None:
    """The figures as text: the sets side by side, then one block per set and suite."""
    sets = report["sets"]
    print(f"{report['benchmark']}, attack {report['attack']}")
    for which, part in sets.items():
        print(f"  {which}: {part['policies']}")
    print()
    print_side_by_side(sets)
    for which, part in sets.items():
        print(f"######## {which} ({part['policies']})\n")
        print_set(part)
    print(f"runtime: {report['seconds']} s")


def print_side_by_side(sets: dict[str, Any]) -> None:
    """One row per suite and figure, one column per policy set."""
    rows = [
        ("injection tasks stopped", "injections_stopped", "replayable"),
        ("benign tasks with no approval", "benign_no_approval", "user_tasks"),
        ("benign utility, asked calls approved", "benign_utility", "user_tasks"),
        ("pairs stopped", "pairs_stopped", "pairs"),
        ("pairs where the attack succeeded", "pairs_attack_succeeded", "pairs"),
    ]
    names = list(sets)
    print(f"{'':44}" + "".join(f"{n:>16}" for n in names))
    first = next(iter(sets.values()))
    for suite in [*first["suites"], "total"]:
        print(suite)
        for label, key, out_of in rows:
            cells = []
            for part in sets.values():
                s = part["total"] if suite == "total" else part["suites"][suite]
                cells.append(f"{s[key]}/{s[out_of]}")
            print(f"  {label:42}" + "".join(f"{c:>16}" for c in cells))
    print("  provenance step per decided call, ms (all suites):")
    for which, part in sets.items():
        print(f"    {which}: {_stats(part['total'].get('provenance_ms', []))}")
    print()


def print_set(part: dict[str, Any]) -> None:
    """One policy set's figures: one block per suite, then the total."""
    for name, s in [*part["suites"].items(), ("total", part["total"])]:
        print(f"== {name}")
        print(
            f"  injection tasks stopped in every pair: {s['injections_stopped']} of "
            f"{s['replayable']} replayable ({s['injection_tasks']} in all; not replayable, "
            f"no ground-truth calls: {', '.join(s['not_replayable']) or 'none'})"
        )
        print(
            f"  pairs stopped: {s['pairs_stopped']} of {s['pairs']}; attacker's goal met all the "
            f"same (AgentDojo security()): {s['pairs_attack_succeeded']}; utility under attack: "
            f"{s['utility_under_attack']} of {s['pairs']}"
        )
        for tid, t in s.get("per_injection_task", {}).items():
            if t["stopped"] < t["pairs"]:
                print(
                    f"    not stopped: {tid} in {t['pairs'] - t['stopped']} of {t['pairs']} "
                    f"pairs, calls {', '.join(t['calls'])}"
                )
        print(
            f"  benign tasks with no approval: {s['benign_no_approval']} of {s['user_tasks']}; "
            f"benign utility with asked calls approved: {s['benign_utility']} of "
            f"{s['user_tasks']} (no gate: {s['reference_utility']})"
        )
        if name != "total":
            for line in s["benign_asked"]:
                print(f"    asked/denied: {line}")
        print(f"  Policy.decide per call, us: {_stats(s['decide_us'])}")
        print(f"  graph time outside the tools per call, ms: {_stats(s['gate_ms'])}")
        print(f"  provenance step per decided call, ms: {_stats(s['provenance_ms'])}")
        for error in s["errors"]:
            print(f"  ERROR {error}")
        print()


if __name__ == "__main__":
    sys.exit(main())
