"""Tool-call events: their JSON shape, once each across resumes, redaction, LangSmith and OTel.

Every test runs real graphs on a real SQLite file; the events are read back from the ``handrail``
logger (through `enable_json_logging`) and from the audit table, and must agree.
"""

from __future__ import annotations

import io
import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import tool
from langchain_core.tracers.base import BaseTracer
from langchain_core.tracers.schemas import Run
from langgraph.types import Command
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from support import CTX, TREASURER, call, config, per_call, turn

from handrail import Inbox, Policy, build_agent
from handrail.audit import AuditLog
from handrail.events import EVENT_KINDS, EVENT_SCHEMA, FIELDS
from handrail.graph import HandrailGraph
from handrail.logging import JsonFormatter, enable_json_logging
from handrail.redaction import REDACTED, restore
from handrail.review import EXPIRE
from handrail.state import args_hash
from handrail.testing import ScriptedChatModel
from handrail.tools import RateLimited, ServerError

ACCOUNT = "DE89-3704-0044-0532-0130-00"
SSN = "078-05-1120"
OPS = {"id": "ops-1", "roles": ["operator"]}

POLICY = Policy.from_yaml(
    """
rules:
  - {id: reads, tools: [lookup], effect: allow}
  - {id: small-payments, tools: [pay], effect: allow, when: "args.amount <= 100.0"}
  - {id: big-payments, tools: [pay], effect: ask, approvers: [treasurer],
     when: "args.amount > 100.0"}
  - {id: refunds, tools: [refund], effect: ask, approvers: [treasurer], expires_in: 1ms}
  - {id: no-wipes, tools: [wipe], effect: deny}
  - {id: reports, tools: [report], effect: allow}
tools:
  report: {redact: [response.body]}
  lookup: {redact: [args.account_number, response.body.ssn]}
  pay: {redact: [args.account_number], max_retries: 2, backoff: 1ms}
body_limit: 40
"""
)


class Died(BaseException):
    """The process dying inside a tool: nothing after it runs, nothing catches it."""


class Tools:
    """The tools of these tests; ``pay`` fails with ``failures`` in turn, then succeeds."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.paid: list[dict[str, Any]] = []

    def all(self) -> list[Any]:
        @tool
        def lookup(customer: str, account_number: str) -> dict[str, Any]:
            """Look a customer up."""
            return {"customer": customer, "ssn": SSN, "notes": "x" * 100}

        @tool
        def pay(to: str, amount: float, account_number: str = "") -> str:
            """Pay someone."""
            if self.failures:
                raise self.failures.pop(0)
            self.paid.append({"to": to, "amount": amount, "account_number": account_number})
            return f"paid {to} {amount}"

        @tool
        def refund(to: str) -> str:
            """Refund someone."""
            return f"refunded {to}"

        @tool
        def report(customer: str) -> str:
            """Fetch a customer's report."""
            raise ServerError(f"upstream 500 for customer with ssn {SSN}")

        @tool
        def wipe() -> str:
            """Wipe everything."""
            return "wiped"

        return [lookup, pay, refund, report, wipe]


def graph(db: Path, tools: Tools, *turns: AIMessage, **kwargs: Any) -> HandrailGraph:
    model = ScriptedChatModel([*turns, AIMessage("done")])
    return build_agent(model, tools.all(), POLICY, checkpointer=db, **kwargs)


@pytest.fixture
def logged() -> Iterator[io.StringIO]:
    """The ``handrail`` logger's JSON lines, as `enable_json_logging` writes them."""
    out = io.StringIO()
    handler = enable_json_logging(stream=out)
    yield out
    handler.close()
    import logging

    logging.getLogger("handrail").removeHandler(handler)


def events(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def audit_rows(db: Path) -> list[dict[str, Any]]:
    with closing(sqlite3.connect(db)) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM handrail_audit ORDER BY seq")]


def steps(evs: list[dict[str, Any]], thread: str) -> list[tuple[str, str | None]]:
    return [(e["event"], e["decision"]) for e in evs if e["thread_id"] == thread]


def start(g: HandrailGraph, thread: str) -> dict[str, Any]:
    result: dict[str, Any] = g.invoke({"messages": [("user", "go")]}, config(thread), context=CTX)
    return result


def resume(g: HandrailGraph, thread: str, value: Any) -> dict[str, Any]:
    result: dict[str, Any] = g.invoke(Command(resume=value), config(thread), context=CTX)
    return result


def test_every_step_is_one_schema_valid_event_logged_and_audited_once(
    tmp_path: Path, logged: io.StringIO
) -> None:
    db = tmp_path / "h.db"
    tools = Tools(RateLimited(retry_after=0.001), ServerError("upstream 500"))
    # a: allowed, denied and invalid calls in one turn
    start(
        graph(
            db,
            tools,
            turn(
                call("lookup", customer="ann", account_number=ACCOUNT),
                call("wipe"),
                call("pay", to="bob", amount="lots"),
            ),
        ),
        "a",
    )
    # b: asked, edited down to an allowed amount, a 429 retried, then a 500 escalated, retried
    # by an operator; each resume from a new graph object, as from a new process
    b = turn(call("pay", to="bob", amount=500))
    start(graph(db, tools, b), "b")
    edit = {"type": "edit", "edited_action": {"name": "pay", "args": {"to": "bob", "amount": 50}}}
    resume(graph(db, tools, b), "b", {"decisions": [edit], "approver": TREASURER})
    resume(graph(db, tools, b), "b", {"decisions": [{"type": "retry"}], "approver": OPS})
    # c: a refund request that lapses and is resolved as expired
    start(graph(db, tools, turn(call("refund", to="cy"))), "c")
    resume(graph(db, tools, turn(call("refund", to="cy"))), "c", EXPIRE)
    # d: an asked call forged "approved" in state reaches execute, is refused and asked again
    d = graph(db, tools, turn(call("pay", to="eve", amount=900)))
    start(d, "d")
    (asked,) = d.get_state(config("d")).values["calls"].values()
    forged = {"calls": {asked.id: asked.update(status="approved", approvals=("alice",))}}
    d.update_state(config("d"), forged, as_node="policy_check")
    d.invoke(None, config("d"), context=CTX)
    assert not [p for p in tools.paid if p["to"] == "eve"]
    # e: the process dies inside pay and its steps are lost (as if none were saved); the request
    # is sent again, a provider-like model gives the call a new id: it replays the lost call
    tools.failures = [Died()]
    fay = turn(call("pay", to="fay", amount=60))
    model = ScriptedChatModel([fay, AIMessage("done")], fresh_ids=True)
    e = build_agent(model, tools.all(), POLICY, checkpointer=db)
    with pytest.raises(Died):
        start(e, "e")
    assert e.checkpointer is not None
    e.checkpointer.delete_thread("e")
    start(e, "e")
    assert not [p for p in tools.paid if p["to"] == "fay"]

    logged_events = events(logged)
    validator = jsonschema.Draft202012Validator(
        EVENT_SCHEMA, format_checker=jsonschema.FormatChecker()
    )
    for event in logged_events:
        validator.validate(event)
        assert list(event) == list(FIELDS)
    assert {e["event"] for e in logged_events} == set(EVENT_KINDS)

    assert steps(logged_events, "a") == [
        ("decided", "allow"),
        ("decided", "deny"),
        ("decided", "invalid"),
        ("started", "allow"),
        ("succeeded", "allow"),
    ]
    assert steps(logged_events, "b") == [
        ("decided", "ask"),
        ("approval_requested", "ask"),
        ("approval_decided", "edit"),
        ("decided", "allow"),
        ("started", "allow"),
        ("failed", "allow"),
        ("retried", "allow"),
        ("started", "allow"),
        ("failed", "allow"),
        ("escalated", "allow"),
        ("approval_requested", "allow"),
        ("approval_decided", "retry"),
        ("retried", "allow"),
        ("started", "allow"),
        ("succeeded", "allow"),
    ]
    assert steps(logged_events, "c") == [
        ("decided", "ask"),
        ("approval_requested", "ask"),
        ("expired", "expire"),
    ]
    assert steps(logged_events, "d") == [
        ("decided", "ask"),
        ("approval_requested", "ask"),
        ("approval_missing", "ask"),
        ("approval_requested", "ask"),
    ]
    # each call's events are numbered 0, 1, 2, ... with no gap and no repeat
    per_call: dict[str, list[int]] = {}
    for e in logged_events:
        per_call.setdefault(e["tool_call_id"] + e["thread_id"], []).append(e["call_seq"])
    assert all(seqs == list(range(len(seqs))) for seqs in per_call.values())

    # the audit holds exactly the logged events, in the same order, and its chain verifies
    rows = audit_rows(db)
    assert len(rows) == len(logged_events)
    for row, event in zip(rows, logged_events, strict=True):
        assert row["at"] == event["timestamp"]
        assert (row["event"], row["tool_call_id"], row["call_seq"]) == (
            event["event"],
            event["tool_call_id"],
            event["call_seq"],
        )
    trail = AuditLog(db)
    assert trail.verify().ok
    trail.close()

    b_events = [e for e in logged_events if e["thread_id"] == "b"]
    decided_edit = next(e for e in b_events if e["decision"] == "edit")
    assert decided_edit["approver"] == "alice" and decided_edit["duration_ms"] >= 0
    assert decided_edit["rule_id"] == "big-payments"
    failed_429, failed_500 = [e for e in b_events if e["event"] == "failed"]
    assert failed_429["response"]["status"] == "rate_limited"
    assert failed_500["response"] == {"status": "server_error", "body": "upstream 500"}
    assert failed_429["duration_ms"] >= 0
    retried = next(e for e in b_events if e["event"] == "retried")
    assert retried["retry_count"] == 1 and retried["duration_ms"] == pytest.approx(1, abs=0.01)
    human_retry = [e for e in b_events if e["event"] == "approval_decided"][-1]
    assert human_retry["approver"] == "ops-1"
    assert b_events[-1]["retry_count"] == 2 and b_events[-1]["response"]["status"] == "success"
    assert tools.paid == [{"to": "bob", "amount": 50.0, "account_number": ""}]
    escalated = next(e for e in b_events if e["event"] == "escalated")
    assert "server_error" in escalated["reason"]
    a_success = steps(logged_events, "a")[-1]
    assert a_success == ("succeeded", "allow")


def test_a_resume_in_the_same_process_without_an_audit_logs_nothing_twice(
    tmp_path: Path, logged: io.StringIO
) -> None:
    g = graph(tmp_path / "h.db", Tools(), turn(call("pay", to="bob", amount=500)), audit=False)
    start(g, "t")
    resume(g, "t", {"decisions": [{"type": "approve"}], "approver": TREASURER})
    kinds = Counter(e["event"] for e in events(logged))
    assert kinds == {
        "decided": 1,
        "approval_requested": 1,
        "approval_decided": 1,
        "started": 1,
        "succeeded": 1,
    }
    with closing(sqlite3.connect(tmp_path / "h.db")) as conn:
        (rows,) = conn.execute("SELECT count(*) FROM handrail_audit").fetchone()
    assert rows == 0  # the table is part of the schema; with audit off nothing is written to it


def test_marked_values_never_leak_into_events_audit_requests_or_the_inbox(
    tmp_path: Path, logged: io.StringIO
) -> None:
    db = tmp_path / "h.db"
    tools = Tools()
    lookup = turn(call("lookup", customer="ann", account_number=ACCOUNT))
    result = start(graph(db, tools, lookup), "r1")
    answer = next(m for m in result["messages"] if isinstance(m, ToolMessage))
    assert SSN in answer.text  # the model gets the real result; only what people see is hidden

    pay = turn(call("pay", to="bob", amount=500, account_number=ACCOUNT))
    paused = start(graph(db, tools, pay), "r2")
    request = paused["__interrupt__"][0].value
    assert request["action_requests"][0]["args"]["account_number"] == REDACTED
    (item,) = Inbox(db).pending()
    assert item.args["account_number"] == REDACTED
    # an edit that leaves the hidden value as shown keeps the real one
    shown = dict(request["action_requests"][0]["args"], amount=400)
    edit = {"type": "edit", "edited_action": {"name": "pay", "args": shown}}
    # the edit needs a treasurer again, and this treasurer approves it by editing it
    resume(graph(db, tools, pay), "r2", {"decisions": [edit], "approver": TREASURER})
    assert tools.paid == [{"to": "bob", "amount": 400.0, "account_number": ACCOUNT}]

    text = logged.getvalue()
    assert ACCOUNT not in text and SSN not in text
    assert REDACTED in text
    with closing(sqlite3.connect(db)) as conn:
        dump = "\n".join(
            json.dumps(row) for row in conn.execute("SELECT * FROM handrail_audit").fetchall()
        )
    assert ACCOUNT not in dump and SSN not in dump
    lookup_done = next(e for e in events(logged) if e["event"] == "succeeded")
    body = lookup_done["response"]["body"]
    assert body.startswith('{"customer": "ann", "ssn": "[redacted]"')
    assert body.endswith("more characters]")  # cut to the policy's body_limit of 40


def test_a_hidden_response_body_stays_hidden_in_the_failures_people_see(
    tmp_path: Path, logged: io.StringIO, spans: InMemorySpanExporter
) -> None:
    db = tmp_path / "h.db"
    paused = start(graph(db, Tools(), turn(call("report", customer="ann"))), "t")
    request = paused["__interrupt__"][0].value
    (item,) = Inbox(db).pending()
    shown = [
        logged.getvalue(),
        json.dumps(request),
        item.error.model_dump_json() if item.error else "",
        json.dumps([list(r.values()) for r in audit_rows(db)]),
        json.dumps([s.status.description for s in spans.get_finished_spans()]),
    ]
    assert request["handrail"]["kind"] == "escalation"
    assert per_call(request, "error")[0]["message"] == REDACTED
    for text in shown:
        assert SSN not in text
    answer = resume(
        graph(db, Tools(), turn(call("report", customer="ann"))),
        "t",
        {"decisions": [{"type": "skip"}], "approver": OPS},
    )
    told = [m.text for m in answer["messages"] if isinstance(m, ToolMessage)]
    assert told and SSN in told[0]  # the model is told what failed; only people's views hide it


def test_the_edit_of_a_hidden_value_to_a_new_value_uses_the_new_one(
    tmp_path: Path, logged: io.StringIO
) -> None:
    db = tmp_path / "h.db"
    tools = Tools()
    pay = turn(call("pay", to="bob", amount=500, account_number=ACCOUNT))
    start(graph(db, tools, pay), "t")
    args = {"to": "bob", "amount": 500, "account_number": "NEW-ACCOUNT"}
    edit = {"type": "edit", "edited_action": {"name": "pay", "args": args}}
    resume(graph(db, tools, pay), "t", {"decisions": [edit], "approver": TREASURER})
    assert tools.paid == [{"to": "bob", "amount": 500.0, "account_number": "NEW-ACCOUNT"}]
    assert "NEW-ACCOUNT" not in logged.getvalue()


class Runs(BaseTracer):
    """Keeps every finished run, as LangSmith's tracer would send it (offline)."""

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[Run] = []

    def _persist_run(self, run: Run) -> None:
        pass

    def _end_trace(self, run: Run) -> None:
        self.runs.append(run)
        super()._end_trace(run)


def test_node_runs_carry_handrail_tags_and_metadata_for_langsmith(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    tools = Tools()
    runs = Runs()
    g = graph(
        db,
        tools,
        turn(call("lookup", customer="ann", account_number=ACCOUNT), call("wipe")),
        turn(call("pay", to="bob", amount=500, account_number=ACCOUNT)),
    )
    cfg: Any = {**config("t"), "callbacks": [runs]}
    g.invoke({"messages": [("user", "go")]}, cfg, context=CTX)
    g.invoke(
        Command(resume={"decisions": [{"type": "approve"}], "approver": TREASURER}),
        cfg,
        context=CTX,
    )
    by_name: dict[str, list[Run]] = {}
    for run in runs.runs:
        by_name.setdefault(run.name, []).append(run)

    def meta(run: Run) -> dict[str, Any]:
        return {k: v for k, v in run.metadata.items() if k.startswith("handrail.")}

    denied = next(r for r in by_name["handrail.decided"] if meta(r)["handrail.tool"] == "wipe")
    assert meta(denied)["handrail.decision"] == "deny"
    assert meta(denied)["handrail.rule_id"] == "no-wipes"
    assert meta(denied)["handrail.thread_id"] == "t"
    assert {"handrail", "handrail:decided", "handrail:deny"} <= set(denied.tags or [])
    assert runs_parent_name(runs, denied) == "policy_check"

    (approved,) = by_name["handrail.approval_decided"]
    assert meta(approved) == {
        "handrail.event": "approval_decided",
        "handrail.tool": "pay",
        "handrail.tool_call_id": meta(approved)["handrail.tool_call_id"],
        "handrail.decision": "approve",
        "handrail.rule_id": "big-payments",
        "handrail.retry_count": 0,
        "handrail.approver": "alice",
        "handrail.thread_id": "t",
    }
    assert runs_parent_name(runs, approved) == "approval"

    (tool_run,) = by_name["pay"]
    assert meta(tool_run)["handrail.decision"] == "ask"
    assert meta(tool_run)["handrail.approver"] == "alice"
    assert "handrail:ask" in (tool_run.tags or [])
    (lookup_run,) = by_name["lookup"]
    assert meta(lookup_run)["handrail.rule_id"] == "reads"

    # what these runs show is redacted like the events
    for run in runs.runs:
        if run.name.startswith("handrail."):
            shown = json.dumps([run.inputs, run.outputs, run.metadata], default=str)
            assert ACCOUNT not in shown and SSN not in shown


def runs_parent_name(runs: Runs, run: Run) -> str:
    parent = next(r for r in runs.runs if r.id == run.parent_run_id)
    return parent.name


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    otel_trace.set_tracer_provider(provider)
    return exporter


def test_every_tool_run_is_an_opentelemetry_span(
    tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    spans.clear()
    tools = Tools(RateLimited(retry_after=0.001))
    g = graph(tmp_path / "h.db", tools, turn(call("pay", to="bob", amount=50), call("wipe")))
    start(g, "t")
    finished = spans.get_finished_spans()
    assert [s.name for s in finished] == ["handrail.tool pay", "handrail.tool pay"]
    failed, succeeded = finished
    assert failed.attributes is not None and succeeded.attributes is not None
    assert failed.attributes["handrail.outcome"] == "rate_limited"
    assert failed.status.status_code == otel_trace.StatusCode.ERROR
    assert succeeded.attributes["handrail.outcome"] == "success"
    assert succeeded.attributes["handrail.retry_count"] == 1
    assert succeeded.attributes["handrail.decision"] == "allow"
    assert succeeded.attributes["handrail.rule_id"] == "small-payments"
    assert succeeded.attributes["handrail.thread_id"] == "t"
    assert succeeded.status.status_code == otel_trace.StatusCode.UNSET


def test_the_json_formatter_keeps_other_records_one_json_object_a_line() -> None:
    import logging

    out = io.StringIO()
    first = enable_json_logging(stream=io.StringIO())
    second = enable_json_logging(stream=out)
    logger = logging.getLogger("handrail")
    try:
        assert [h for h in logger.handlers if isinstance(h.formatter, JsonFormatter)] == [second]
        logger.warning("plain %s", "message")
        line = json.loads(out.getvalue())
        assert line["message"] == "plain message" and line["level"] == "WARNING"
        assert line["logger"] == "handrail" and line["timestamp"].endswith("+00:00")
    finally:
        logger.removeHandler(second)
        first.close()


CHILD = Path(__file__).with_name("audit_child.py")


def child(db: Path, phase: str) -> subprocess.CompletedProcess[str]:
    """Run one phase of ``audit_child.py`` in a fresh process (some phases die by SIGKILL)."""
    return subprocess.run(
        [sys.executable, str(CHILD), str(db), phase],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_killed_edit_is_replayed_step_by_step_once_each(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    assert child(db, "start").returncode == 0
    killed = child(db, "edit-and-die-in-the-tool")  # durability="exit": nothing saved
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = child(db, "resume")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.split() == ["escalation"]
    rows = audit_rows(db)
    assert [(r["call_seq"], r["event"], r["decision"]) for r in rows] == [
        (0, "decided", "ask"),
        (1, "approval_requested", "ask"),
        (2, "approval_decided", "edit"),
        (3, "decided", "allow"),
        (4, "started", "allow"),
        (5, "failed", "allow"),
        (6, "escalated", "allow"),
        (7, "approval_requested", "allow"),
    ]
    assert json.loads(rows[5]["response"])["status"] == "outcome_unknown"
    assert {json.loads(r["payload"])["amount"] for r in rows[2:]} == {50.0}
    assert all(r["approver"] == "alice" for r in rows[2:])


def test_a_decision_a_crash_lost_and_the_different_one_taken_next_are_both_audited(
    tmp_path: Path,
) -> None:
    db = tmp_path / "h.db"
    assert child(db, "start").returncode == 0
    assert child(db, "reject-and-die-before-the-model").returncode == -signal.SIGKILL
    assert child(db, "resume").stdout.split() == ["approval"]  # the rejection was lost
    assert child(db, "approve-as-bob").returncode == 0
    rows = [(r["call_seq"], r["event"], r["decision"], r["approver"]) for r in audit_rows(db)]
    assert rows == [
        (0, "decided", "ask", None),
        (1, "approval_requested", "ask", None),
        (2, "approval_decided", "reject", "alice"),
        (2, "approval_decided", "approve", "bob"),
        (3, "started", "ask", "bob"),
        (4, "succeeded", "ask", "bob"),
    ]


def test_an_edit_keeps_hidden_values_through_nested_objects_and_lists() -> None:
    original = {"lines": [{"acct": "A-1", "amt": 1}, {"acct": "A-2", "amt": 1}], "card": {"pin": 7}}
    edited = {
        "lines": [{"acct": REDACTED, "amt": 2}, {"acct": "B-9", "amt": 3}],
        "card": {"pin": REDACTED},
    }
    assert restore(edited, original, ["args.lines.acct", "args.card.pin"]) == {
        "lines": [{"acct": "A-1", "amt": 2}, {"acct": "B-9", "amt": 3}],
        "card": {"pin": 7},
    }
    # a list whose length the edit changed cannot be paired item by item: left as edited
    shorter = {"lines": [{"acct": REDACTED, "amt": 2}]}
    assert restore(shorter, original, ["args.lines.acct"]) == shorter


def test_the_args_hash_next_to_hidden_values_is_keyed_so_they_cannot_be_guessed(
    tmp_path: Path,
) -> None:
    db = tmp_path / "h.db"
    pay = turn(call("pay", to="bob", amount=500, account_number="1234"))
    paused = start(graph(db, Tools(), pay), "t")
    shown = paused["__interrupt__"][0].value
    bound = per_call(shown, "args_hash")[0]
    real = {"to": "bob", "amount": 500.0, "account_number": "1234"}
    assert bound != args_hash("pay", real)  # hashing a guess without the file's key misses
    with closing(sqlite3.connect(db)) as conn:
        (key,) = conn.execute("SELECT value FROM handrail_secrets").fetchone()
    assert bound == args_hash("pay", real, bytes.fromhex(key))
    # the key is the file's: another process (a new graph on the file) binds the same way
    done = resume(
        graph(db, Tools(), pay),
        "t",
        {"decisions": [{"type": "approve", "args_hash": bound}], "approver": TREASURER},
    )
    assert done["calls"][shown["handrail"]["tool_call_ids"][0]].status == "succeeded"


def test_each_approver_of_a_two_person_rule_is_timed_from_their_own_ask(
    tmp_path: Path, logged: io.StringIO
) -> None:
    policy = Policy.from_yaml(
        "rules: [{id: two, tools: [pay], effect: ask, approvers: [treasurer], min_approvals: 2}]"
    )
    db = tmp_path / "h.db"

    def two_person() -> HandrailGraph:
        model = ScriptedChatModel([turn(call("pay", to="bob", amount=5)), AIMessage("done")])
        return build_agent(model, Tools().all(), policy, checkpointer=db)

    start(two_person(), "t")
    time.sleep(0.3)
    resume(two_person(), "t", {"decisions": [{"type": "approve"}], "approver": TREASURER})
    bob = {"id": "bob", "roles": ["treasurer"]}
    resume(two_person(), "t", {"decisions": [{"type": "approve"}], "approver": bob})
    first, second = [e for e in events(logged) if e["event"] == "approval_decided"]
    assert (first["approver"], second["approver"]) == ("alice", "bob")
    assert first["duration_ms"] >= 300 > second["duration_ms"]
    assert [e["event"] for e in events(logged)].count("approval_requested") == 2


def test_a_redacted_key_in_a_tool_answer_of_content_blocks_stays_hidden(db: Path) -> None:
    """Tools that answer with LangChain content blocks (as MCP tools do): the record keeps the
    text, so a ``response.body`` path still finds the key."""
    policy = Policy.from_yaml(
        """
version: 1
default: deny
rules:
  - {id: all, tools: [lookup_customer], effect: allow}
tools:
  lookup_customer: {redact: [response.body.ssn]}
"""
    )

    @tool
    def lookup_customer(customer: str) -> list[dict[str, str]]:
        """Look a customer up."""
        return [{"type": "text", "text": json.dumps({"name": customer, "ssn": "123-45-6789"})}]

    model = ScriptedChatModel([turn(call("lookup_customer", customer="carol")), AIMessage("ok")])
    out = build_agent(model, [lookup_customer], policy, checkpointer=db).invoke(
        {"messages": [("user", "x")]}, config("blocks"), context=CTX
    )
    [record] = out["calls"].values()
    assert json.loads(record.result or "") == {"name": "carol", "ssn": "123-45-6789"}
    [row] = [r for r in AuditLog(db).export() if r["event"] == "succeeded"]
    assert json.loads(row["response"]["body"]) == {"name": "carol", "ssn": REDACTED}
