"""``handrail policy check / explain / test``: a policy file's lint, one call's explanation,
and its test cases (with JUnit XML for CI). With ``--graph MODULE:FACTORY`` the app's tools are
known: check looks their names and argument schemas up, explain and test coerce the arguments
through the tool's schema as a real run does."""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from handrail.auth import Directory
from handrail.cli._inbox import load_graph
from handrail.cli._parser import json_object
from handrail.cli._render import explanation
from handrail.cli._tables import out
from handrail.context import Actor
from handrail.errors import HandrailError
from handrail.guard import HandrailGraph
from handrail.policies import CaseResult, Finding, Policy, load_cases, run_cases

__all__ = ["run_policy"]

Coerce = Callable[[str, Mapping[str, Any]], dict[str, Any]]


def run_policy(args: argparse.Namespace) -> int:
    """Run ``handrail policy ...``; the exit status."""
    if not args.file.exists():
        raise HandrailError(f"no policy file at {args.file}")
    policy = Policy.from_file(args.file)
    with _graph(args.graph) as graph:
        if args.policy_command == "check":
            return _check(args, policy, graph)
        coerce = _coercer(graph)
        if args.policy_command == "test":
            return _test(args, policy, coerce)
        return _explain(args, policy, coerce)


@contextmanager
def _graph(spec: str | None) -> Iterator[HandrailGraph | None]:
    """The app's graph, built on a throwaway database (nothing is written where it runs)."""
    if spec is None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="handrail-policy-") as tmp:
        yield load_graph(spec, str(Path(tmp) / "check.db"))


def _coercer(graph: HandrailGraph | None) -> Coerce | None:
    if graph is None:
        return None
    gate = graph.handrail_gate

    def coerce(tool: str, call_args: Mapping[str, Any]) -> dict[str, Any]:
        if tool not in gate.tools:
            known = ", ".join(sorted(gate.tools)) or "none"
            raise HandrailError(f"the graph has no tool {tool!r}; its tools: {known}")
        try:
            return gate.coerce(tool, call_args)
        except ValidationError as exc:
            raise HandrailError(
                f"arguments for {tool!r} do not fit its schema (a run answers them as a bad "
                f"request, never deciding them): {exc.errors()[0]['msg']} at "
                f"{'.'.join(map(str, exc.errors()[0]['loc'])) or 'the top'}"
            ) from None

    return coerce


# -- check -------------------------------------------------------------------------------------


def _check(args: argparse.Namespace, policy: Policy, graph: HandrailGraph | None) -> int:
    directory = Directory.from_file(args.directory) if args.directory else None
    if directory is None and graph is not None:
        directory = graph.handrail_gate.trust.directory
    tools = list(graph.handrail_gate.tools.values()) if graph is not None else None
    findings = policy.lint(tools=tools, directory=directory)
    errors = sum(f.level == "error" for f in findings)
    if args.json:
        print(
            json.dumps(
                {
                    "file": str(args.file),
                    "ok": not errors,
                    "rules": [r.id for r in policy.rules],
                    "default": policy.default.effect,
                    "findings": [dataclasses.asdict(f) for f in findings],
                }
            )
        )
        return 1 if errors else 0
    summary = (
        f"{args.file}: {'ok' if not errors else 'errors'}, {len(policy.rules)} rule(s), "
        f"default {policy.default.effect}"
        + (f"; {errors} error(s), {len(findings) - errors} warning(s)" if findings else "")
    )
    if findings:
        out(_findings_table(findings), Text(summary))
    else:
        print(summary)
    return 1 if errors else 0


def _findings_table(findings: list[Finding]) -> RenderableType:
    rows = [(f.level, f.rule_id or "-", f.field or "-", f.message) for f in findings]
    return _wrapping(("LEVEL", "RULE", "FIELD", "PROBLEM"), rows)


def _wrapping(headers: tuple[str, ...], rows: Sequence[Sequence[str]]) -> Table:
    """A table whose last column wraps (the sentence that matters is never cut) and whose
    others are cut with an ellipsis, as ``policy explain``'s."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for header in headers[:-1]:
        table.add_column(header, no_wrap=True, overflow="ellipsis", max_width=24)
    table.add_column(headers[-1], overflow="fold", ratio=1)
    for row in rows:
        table.add_row(*row)
    return table


# -- explain -----------------------------------------------------------------------------------


def _explain(args: argparse.Namespace, policy: Policy, coerce: Coerce | None) -> int:
    call_args = json_object(args.args, "--args")
    if coerce is not None:
        call_args = coerce(args.tool, call_args)
    actor = Actor(id=args.actor, roles=tuple(args.role))
    result = policy.explain(args.tool, call_args, actor)
    if args.json:
        shown = {**dataclasses.asdict(result), "args": call_args}
        print(json.dumps(shown, default=str, indent=2))
    else:
        parts: list[RenderableType] = [explanation(result)]
        if coerce is not None:
            parts.insert(
                0, Text(f"args (as the tool's schema gives them): {json.dumps(call_args)}")
            )
        out(Group(*parts))
    return 0


# -- test --------------------------------------------------------------------------------------


def _test(args: argparse.Namespace, policy: Policy, coerce: Coerce | None) -> int:
    cases = load_cases(args.cases)
    results = run_cases(policy, cases, coerce=coerce)
    failed = [r for r in results if not r.ok]
    if args.junit is not None:
        _junit(results, args.file, args.junit)
    if args.json:
        print(json.dumps({"cases": len(results), "failed": [_case_json(r) for r in failed]}))
    else:
        verdict = f"{len(results) - len(failed)} of {len(results)} case(s) hold"
        if failed:
            out(_failures_table(failed), Text(f"{verdict}; {len(failed)} failed"))
        else:
            print(verdict)
    return 1 if failed else 0


def _case_json(r: CaseResult) -> dict[str, Any]:
    return {
        "name": r.name,
        "case": r.case.model_dump(mode="json", exclude_none=True),
        "effect": r.decision.effect,
        "rule": r.rule,
        "reason": r.decision.reason,
    }


def _failures_table(failed: list[CaseResult]) -> RenderableType:
    rows = [
        (
            r.name,
            r.case.expect + (f" {r.case.rule}" if r.case.rule else ""),
            f"{r.decision.effect} {r.rule}",
            f"{json.dumps(r.case.args, sort_keys=True, ensure_ascii=False)} as "
            f"[{', '.join(r.case.roles)}]: {r.decision.reason}",
        )
        for r in failed
    ]
    return _wrapping(("CASE", "EXPECTED", "GOT", "CALL AND WHY"), rows)


def _junit(results: list[CaseResult], policy_file: Path, path: Path) -> None:
    """JUnit XML: one testcase per case, a failure element for each that does not hold."""
    failures = sum(not r.ok for r in results)
    suite = ET.Element(
        "testsuite",
        name=f"handrail policy {policy_file.name}",
        tests=str(len(results)),
        failures=str(failures),
        errors="0",
    )
    for r in results:
        case = ET.SubElement(suite, "testcase", classname=policy_file.stem, name=r.name)
        if not r.ok:
            failure = ET.SubElement(case, "failure", message=r.problem)
            failure.text = f"{r.problem}: {r.decision.reason}"
    root = ET.Element("testsuites", tests=str(len(results)), failures=str(failures))
    root.append(suite)
    ET.indent(root)
    path.write_text(ET.tostring(root, encoding="unicode") + "\n", encoding="utf-8")
