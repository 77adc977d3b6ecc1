"""`build_workflow`: fixed steps, no model; an asked step stops for a human before it runs."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from langchain_core.tools import ToolException, tool
from langgraph.types import Command
from support import example

from handrail import Actor, Inbox, Policy, RunContext, Step, build_workflow
from handrail.audit import AuditLog
from handrail.errors import HandrailError
from handrail.tools.errors import ServerError

flow = example("compliance_workflow")
CTX = RunContext(actor=flow.BOT)
THREAD = {"configurable": {"thread_id": "change-1"}}
INPUT = {"inputs": {"country": "DE", "reason": "objection"}}
OFFICER = flow.OFFICER


def _notices(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [r[0] for r in conn.execute("SELECT text FROM notices")]


def test_the_change_waits_for_an_officer_then_every_step_runs(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="handrail")
    paused = flow.build(db).invoke(INPUT, THREAD, context=CTX)

    [action] = paused["__interrupt__"][0].value["action_requests"]
    assert action["name"] == "apply_change"
    assert action["args"] == {"ids": ["c1"], "reason": "objection"}  # made from earlier results
    assert flow.marketing_on(db) == ["c1", "c2"]  # not applied before the approval
    assert _notices(db) == []
    assert paused["results"]["find_records"] == ["c1"]

    done = flow.build(db).invoke(
        Command(resume={"decisions": [{"type": "approve"}], "approver": OFFICER}),
        THREAD,
        context=CTX,
    )
    assert done["status"] == "completed"
    assert list(done["results"]) == ["find_records", "propose_change", "apply_change", "notify"]
    assert flow.marketing_on(db) == ["c2"]
    assert _notices(db) == ["marketing off for 1 customers (objection)"]

    trail = AuditLog(db)
    assert trail.verify().ok
    rows = list(trail.export(thread_id="change-1"))
    succeeded = [r["tool"] for r in rows if r["event"] == "succeeded"]
    assert succeeded == ["find_records", "propose_change", "apply_change", "notify"]
    approved = [r for r in rows if r["event"] == "approval_decided"]
    assert [(r["tool"], r["approver"]) for r in approved] == [("apply_change", "olga")]
    logged = [r.getMessage() for r in caplog.records if r.name == "handrail"]
    assert len(logged) == len(rows)


def test_a_rejected_step_stops_the_workflow(db: Path) -> None:
    flow.build(db).invoke(INPUT, THREAD, context=CTX)
    reject = {"decisions": [{"type": "reject", "message": "legal hold"}], "approver": OFFICER}
    done = flow.build(db).invoke(Command(resume=reject), THREAD, context=CTX)

    assert done["status"] == "stopped"
    assert done["stopped_at"] == "apply_change"
    assert "legal hold" in done["reason"]
    assert list(done["results"]) == ["find_records", "propose_change"]
    assert flow.marketing_on(db) == ["c1", "c2"]
    assert _notices(db) == []  # the step after the rejected one never ran

    again = flow.build(db).invoke(INPUT, THREAD, context=CTX)  # a finished run stays finished
    assert again["status"] == "stopped" and _notices(db) == []


def test_the_inbox_decides_a_workflow_step(db: Path) -> None:
    flow.build(db).invoke(INPUT, THREAD, context=CTX)
    inbox = Inbox(db, graph=flow.build(db))
    [row] = inbox.pending()
    assert (row.graph, row.tool) == ("compliance_change", "apply_change")
    inbox.approve("change-1", approver=Actor(id="olga", roles=("compliance-officer",)))
    assert flow.marketing_on(db) == ["c2"]
    assert len(_notices(db)) == 1


def test_a_denied_step_stops_the_run_before_anything_after_it(db: Path) -> None:
    ran: list[str] = []

    @tool
    def first() -> str:
        """First."""
        ran.append("first")
        return "one"

    @tool
    def forbidden() -> str:
        """Never allowed."""
        ran.append("forbidden")
        return "two"

    @tool
    def last() -> str:
        """Last."""
        ran.append("last")
        return "three"

    policy = Policy.from_yaml(
        "version: 1\ndefault: deny\nrules:\n  - {id: ok, tools: [first, last], effect: allow}\n"
    )
    graph = build_workflow([first, forbidden, last], policy, checkpointer=db)
    out = graph.invoke({"inputs": {}}, THREAD, context=CTX)
    assert ran == ["first"]
    assert (out["status"], out["stopped_at"]) == ("stopped", "forbidden")
    assert "Denied by policy" in out["reason"]


def test_a_step_named_twice_or_no_steps_is_refused() -> None:
    @tool
    def once() -> str:
        """Once."""
        return "x"

    policy = Policy.from_yaml("version: 1\ndefault: allow\n")
    with pytest.raises(HandrailError, match="used twice: \\['once'\\]"):
        build_workflow([once, Step(once)], policy)
    with pytest.raises(HandrailError, match="at least one step"):
        build_workflow([], policy)


def test_a_failing_args_function_names_the_step(db: Path) -> None:
    @tool
    def echo(text: str) -> str:
        """Echo."""
        return text

    def missing(state: Any) -> dict[str, Any]:
        return {"text": state["inputs"]["nope"]}

    graph = build_workflow(
        [Step(echo, args=missing, name="say")], Policy.from_yaml("version: 1\ndefault: allow\n")
    )
    with pytest.raises(HandrailError, match=r"arguments of step 'say'.*nope"):
        graph.invoke({"inputs": {}}, context=CTX)


ALLOW_ALL = Policy.from_yaml(
    """
version: 1
default: deny
rules:
  - {id: all, tools: [charge, ship, fetch, apply], effect: allow}
tools:
  apply: {idempotent: false}
"""
)


def test_a_tool_that_reports_an_error_stops_the_workflow(db: Path) -> None:
    shipped: list[str] = []

    @tool
    def charge(order: str) -> str:
        """Charge the card."""
        raise ToolException("card declined")

    charge.handle_tool_error = True  # the tool answers with an error ToolMessage, not a raise

    @tool
    def ship(order: str) -> str:
        """Ship the order."""
        shipped.append(order)
        return "shipped"

    steps = [Step(charge, args={"order": "o1"}), Step(ship, args={"order": "o1"})]
    out = build_workflow(steps, ALLOW_ALL, checkpointer=db).invoke(
        {"inputs": {}}, THREAD, context=CTX
    )
    assert (out["status"], out["stopped_at"]) == ("stopped", "charge")
    assert "card declined" in out["reason"]
    assert shipped == []


def test_two_tools_with_one_name_are_refused() -> None:
    @tool("notify")
    def by_email(text: str) -> str:
        """Send an e-mail."""
        return "mail"

    @tool("notify")
    def by_sms(text: str) -> str:
        """Send a text."""
        return "sms"

    with pytest.raises(HandrailError, match="two tools are named 'notify'"):
        build_workflow([Step(by_email, name="email"), Step(by_sms, name="sms")], ALLOW_ALL)


def test_an_escalated_step_that_is_aborted_stops_the_workflow(db: Path) -> None:
    applied: list[int] = []

    @tool
    def fetch() -> list[int]:
        """Ids."""
        return [1, 2]

    @tool
    def apply(ids: list[int]) -> str:
        """Apply."""
        applied.append(len(ids))
        raise ServerError("boom", status_code=500)

    steps = [Step(fetch), Step(apply, args=lambda s: {"ids": s["results"]["fetch"]})]
    graph = build_workflow(steps, ALLOW_ALL, checkpointer=db)
    paused = graph.invoke({"inputs": {}}, THREAD, context=CTX)
    assert paused["__interrupt__"][0].value["handrail"]["kind"] == "escalation"
    abort = {"decisions": [{"type": "abort"}], "approver": {"id": "ops", "roles": ["operator"]}}
    out = graph.invoke(Command(resume=abort), THREAD, context=CTX)
    assert (out["status"], out["stopped_at"]) == ("stopped", "apply")
    assert "Aborted" in out["reason"]
    assert applied == [2]
