"""A compliance data change as a fixed workflow: no model decides what happens next.

``find_records`` → ``propose_change`` → approval → ``apply_change`` → ``notify``. The policy lets
the read and the proposal run, asks a compliance officer before the change is applied (the run
stops there, checkpointed, until someone decides by thread ID), and lets the notice go out.
A rejected change stops the workflow: nothing is applied and nobody is notified. Every step is
an event on the ``handrail`` logger and a row of the audit table.

Run it: ``python examples/compliance_workflow.py`` (offline).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, tool
from langgraph.types import Command

from handrail import Actor, HandrailGraph, Policy, RunContext, Step, build_workflow
from handrail.storage import open_store

POLICY = Policy.from_yaml(
    """
version: 1
default: deny
rules:
  - id: reads-and-proposals
    tools: [find_records, propose_change, notify]
    roles: [compliance-bot]
    effect: allow
  - id: data-changes-need-an-officer
    tools: [apply_change]
    roles: [compliance-bot]
    effect: ask
    approvers: [compliance-officer]
    expires_in: 72h
tools:
  apply_change: {idempotent: false}
  notify: {idempotent: false}
"""
)
"""Reads and proposals run; applying a change waits for a compliance officer."""

NAME = "compliance_change"
"""The workflow's graph name (in the inbox, the audit and ``langgraph.json``)."""

BOT = Actor(id="compliance-bot", roles=("compliance-bot",))
OFFICER = {"id": "olga", "roles": ["compliance-officer"]}

_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS customers (id TEXT PRIMARY KEY, country TEXT, marketing INTEGER)",
    "CREATE TABLE IF NOT EXISTS notices (text TEXT NOT NULL)",
    "INSERT INTO customers VALUES ('c1', 'DE', 1), ('c2', 'FR', 1), ('c3', 'DE', 0) "
    "ON CONFLICT DO NOTHING",
]


def compliance_tools(db: str | Path) -> list[BaseTool]:
    """The four tools over a small customer table in ``db`` (a SQLite file, or a PostgreSQL URL
    migrated for Handrail), reached through Handrail's storage seam."""
    store = open_store(db)
    with store.transaction("compliance_example") as sql:
        for statement in _SCHEMA:
            sql.execute(statement)

    @tool
    def find_records(country: str) -> list[str]:
        """Customers in ``country`` who still receive marketing."""
        with store.read() as sql:
            rows = sql.execute(
                "SELECT id FROM customers WHERE country = ? AND marketing = 1 ORDER BY id",
                (country,),
            ).fetchall()
        return [r[0] for r in rows]

    @tool
    def propose_change(ids: list[str], reason: str) -> dict[str, Any]:
        """A change that turns marketing off for ``ids``, with the reason, for review."""
        return {"ids": ids, "set": {"marketing": 0}, "reason": reason}

    @tool
    def apply_change(ids: list[str], reason: str) -> str:
        """Turn marketing off for ``ids`` (a data change: needs an officer's approval)."""
        with store.transaction() as sql:
            sql.executemany("UPDATE customers SET marketing = 0 WHERE id = ?", [(i,) for i in ids])
        return f"marketing off for {len(ids)} customers ({reason})"

    @tool
    def notify(text: str) -> str:
        """Send the data-protection team a notice."""
        with store.transaction() as sql:
            sql.execute("INSERT INTO notices (text) VALUES (?)", (text,))
        return "notice sent"

    return [find_records, propose_change, apply_change, notify]


def steps(db: str | Path) -> list[Step]:
    """The four steps, each tool's arguments made from the run's inputs and earlier results."""
    find, propose, apply, notify = compliance_tools(db)
    return [
        Step(find, args=lambda s: {"country": s["inputs"]["country"]}),
        Step(
            propose,
            args=lambda s: {"ids": s["results"]["find_records"], "reason": s["inputs"]["reason"]},
        ),
        Step(
            apply,
            args=lambda s: {k: s["results"]["propose_change"][k] for k in ("ids", "reason")},
        ),
        Step(notify, args=lambda s: {"text": s["results"]["apply_change"]}),
    ]


def build(db: str | Path) -> HandrailGraph:
    """The workflow, checkpointed (with its approvals, ledger and audit) in ``db``."""
    return build_workflow(steps(db), POLICY, checkpointer=db, name=NAME)


def marketing_on(db: str | Path) -> list[str]:
    """Customers who still receive marketing."""
    with open_store(db).read() as sql:
        rows = sql.execute("SELECT id FROM customers WHERE marketing = 1 ORDER BY id").fetchall()
    return [r[0] for r in rows]


def main(db: Path) -> dict[str, Any]:
    """Start the change, stop at the approval, approve it from a fresh graph, finish."""
    config: RunnableConfig = {"configurable": {"thread_id": "gdpr-2026-11"}}
    ctx = RunContext(actor=BOT)
    start = {"inputs": {"country": "DE", "reason": "objection under GDPR Art. 21"}}
    paused = build(db).invoke(start, config, context=ctx)
    action = paused["__interrupt__"][0].value["action_requests"][0]
    print("waiting for an officer:", action["name"], json.dumps(action["args"]))
    print("still on before approval:", marketing_on(db))
    approve = {"decisions": [{"type": "approve"}], "approver": OFFICER}
    done: dict[str, Any] = build(db).invoke(Command(resume=approve), config, context=ctx)
    print("status:", done["status"], "| results:", json.dumps(done["results"]))
    print("still on after:", marketing_on(db))
    return done


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tmp) / "compliance.db")
