"""``handrail policy check / explain / test / replay / history``: a policy file's lint, one
call's explanation, its test cases (with JUnit XML for CI), what it would change in the calls of an
audit trail, and the policy versions an audit trail has seen. With ``--graph MODULE:FACTORY`` the
app's tools are known: check looks their names and argument schemas up, explain and test coerce
the arguments through the tool's schema as a real run does. Replay and history read the database
named by ``--db`` and never write to it."""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from handrail.audit import AuditLog
from handrail.auth import Directory
from handrail.cli._inbox import load_graph
from handrail.cli._parser import existing, json_object
from handrail.cli._render import explanation
from handrail.cli._tables import Col, fitted, out
from handrail.context import Actor
from handrail.errors import HandrailError
from handrail.guard import HandrailGraph
from handrail.policies import CaseResult, Finding, Policy, load_cases, run_cases
from handrail.policies.replay import ReplayReport, replay
from handrail.storage.limits import LimitTable

__all__ = ["run_policy"]

Coerce = Callable[[str, Mapping[str, Any]], dict[str, Any]]


def run_policy(args: argparse.Namespace) -> int:
    """Run ``handrail policy ...``; the exit status."""
    if args.policy_command == "history":
        return _history(args)
    if not args.file.exists():
        raise HandrailError(f"no policy file at {args.file}")
    policy = Policy.from_file(args.file)
    if args.policy_command == "replay":
        return _replay(args, policy)
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
    now = datetime.now(UTC)
    usage = None
    if args.db is not None and policy.limits:
        table = LimitTable(existing(args.db))
        try:
            scopes = [  # a per-thread total is known only for a thread named
                (lim, lim.scope(actor.id, args.thread))
                for lim in policy.limits
                if lim.per != "thread" or args.thread is not None
            ]
            usage = table.totals(scopes, now)
        finally:
            table.close()
    result = policy.explain(args.tool, call_args, actor, now=now, usage=usage)
    if args.json:
        shown = {**dataclasses.asdict(result), "args": call_args}
        print(json.dumps(shown, default=str, indent=2))
    else:
        parts: list[RenderableType] = [explanation(result)]
        if args.thread is None and any(lim.per == "thread" for lim in policy.limits_for(args.tool)):
            parts.append(Text("a per: thread limit's total is read with --thread THREAD_ID"))
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


# -- replay ------------------------------------------------------------------------------------


def _replay(args: argparse.Namespace, policy: Policy) -> int:
    report = replay(policy, existing(args.db), since=args.since, sample=max(args.sample, 0))
    if args.json:
        print(json.dumps({"file": str(args.file), **report.as_dict()}, indent=2))
    else:
        out(*_replay_text(args.file, report))
    return 0


_TRANSITIONS = (
    Col("TOOL", least=10, give=2),
    Col("CHANGE", least=10, give=3),
    Col("FROM RULE", least=9, give=0),
    Col("TO RULE", least=9, give=1),
    Col("CALLS", right=True),
)
_CHANGED = (
    Col("THREAD", least=9, give=0),
    Col("CALL", least=8, give=1),
    Col("TOOL", least=10, give=3),
    Col("CHANGE", least=10, give=4),
    Col("RULES", least=12, give=2),
)


def _rule(rule_id: str | None) -> str:
    return rule_id or "(default)"


def _replay_text(file: Path, r: ReplayReport) -> list[RenderableType]:
    """The summary, then the changes by tool and rule, some changed calls, the calls skipped."""
    window = "" if r.since is None else f" since {r.since.isoformat(timespec='seconds')}"
    changes = ", ".join(f"{change} {n}" for change, n in r.by_effect.items())
    lines = [
        f"{file}: {r.replayed} of {r.calls} call(s){window} decided again: "
        f"{r.changed} would change{f' ({changes})' if changes else ''}, {r.unchanged} unchanged"
        + (f" ({r.rule_changed} by another rule)" if r.rule_changed else "")
    ]
    if r.not_replayable:
        lines.append(
            f"{r.not_replayable} call(s) not replayable: {r.redacted} with redacted arguments, "
            f"{r.unknown_actor} whose requester's roles are not known, {r.limit_unknown} whose "
            "limit totals at the time are not kept"
        )
    if r.invalid:
        lines.append(f"{r.invalid} invalid call(s) (bad requests no policy decides) left out")
    parts: list[RenderableType] = [Text(line) for line in lines]
    if r.transitions:
        rows = [
            (
                t.tool,
                f"{t.old_effect}→{t.new_effect}",
                _rule(t.old_rule),
                _rule(t.new_rule),
                str(t.calls),
            )
            for t in r.transitions
        ]
        parts += [Text(""), fitted(_TRANSITIONS, rows)]
    if r.samples:
        rows = [
            (
                c.thread_id or "-",
                c.tool_call_id,
                c.tool,
                f"{c.old_effect}→{c.new_effect}",
                f"{_rule(c.old_rule)}→{_rule(c.new_rule)}",
            )
            for c in r.samples
        ]
        more = r.changed - len(r.samples)
        parts += [Text(""), fitted(_CHANGED, rows)]
        if more:
            parts.append(Text(f"and {more} more changed call(s) (--sample N lists more)"))
    if r.skipped:
        named = [(c.thread_id or "-", c.tool_call_id, c.tool, c.reason) for c in r.skipped]
        more = r.not_replayable - len(r.skipped)
        parts += [
            Text(""),
            Text("not replayable:"),
            _wrapping(("THREAD", "CALL", "TOOL", "WHY"), named),
        ]
        if more:
            parts.append(Text(f"and {more} more not replayable (--sample N lists more)"))
    return parts


# -- history -----------------------------------------------------------------------------------

_VERSIONS = (
    Col("POLICY DIGEST", least=12, give=0),
    Col("FIRST SEEN", least=10, give=1),
    Col("LAST SEEN", least=10, give=2),
    Col("DECISIONS", right=True),
    Col("ROWS", right=True),
)


def _history(args: argparse.Namespace) -> int:
    log = AuditLog(existing(args.db), readonly=True)
    try:
        versions = log.policy_history()
    finally:
        log.close()
    if args.json:
        print(json.dumps([dataclasses.asdict(v) for v in versions], indent=2))
        return 0
    if not versions:
        print("no audited events: no policy version seen")
        return 0
    rows = [
        (
            v.digest or "(not recorded)",
            v.first_seen,
            v.last_seen,
            str(v.decisions),
            str(v.rows),
        )
        for v in versions
    ]
    out(fitted(_VERSIONS, rows))
    return 0
