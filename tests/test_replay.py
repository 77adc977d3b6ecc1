"""A call asked for again under a new id after its model step was lost replays the lost call.

A provider's model gives a tool call a fresh id on every generation (`ScriptedChatModel` with
``fresh_ids=True`` does the same). Here a step is lost the way a crash loses it, without one:
the tool dies (a BaseException nothing catches) and the thread's checkpoints are deleted
(``delete_thread``), so the request sent again starts from nothing saved, as after a SIGKILL
under ``durability="exit"`` (``test_crash.py`` kills real processes). Real SQLite files.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Annotated, Any

import aiosqlite
import pytest
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import InjectedToolArg, tool
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, Send
from support import CTX, call, config, turn

from handrail import Inbox, Policy, RunContext, build_agent
from handrail.audit import AuditLog
from handrail.graph import HandrailGraph
from handrail.state import AgentState
from handrail.storage.checkpointer import STATE_TYPES
from handrail.storage.ledger import Ledger
from handrail.testing import ScriptedChatModel

POLICY = Policy.from_yaml(
    """
rules:
  - {id: small-payments, tools: [pay], roles: [ai-agent], effect: allow}
tools:
  pay: {idempotent: false}
"""
)
OPS = {"id": "ops-1", "roles": ["operator"]}
REQUEST = {"messages": [("user", "pay bob")]}


class Died(BaseException):
    """The process dying inside the tool: nothing after it runs, nothing catches it."""


class Bank:
    """``pay``: each payment kept with the idempotency key it was given; ``die`` makes the next
    payment the process's last."""

    def __init__(self) -> None:
        self.paid: list[tuple[str, float, str]] = []
        self.die = False

    def tool(self) -> Any:
        @tool
        def pay(to: str, amount: float, idempotency_key: Annotated[str, InjectedToolArg]) -> str:
            """Send money to someone."""
            self.paid.append((to, amount, idempotency_key))
            if self.die:
                self.die = False
                raise Died
            return "paid"

        return pay


def agent(db: Path, bank: Bank, *turns: AIMessage) -> HandrailGraph:
    model = ScriptedChatModel([*turns, AIMessage("done")], fresh_ids=True)
    return build_agent(model, [bank.tool()], POLICY, checkpointer=db)


def lose(graph: HandrailGraph, thread: str = "t-1") -> None:
    """Every step of the thread lost, as if none had been saved before the crash."""
    assert graph.checkpointer is not None
    graph.checkpointer.delete_thread(thread)


def audit(db: Path) -> list[tuple[str, str]]:
    log = AuditLog(db, readonly=True)
    try:
        assert log.verify().ok
        return [(r["tool_call_id"], r["event"]) for r in log.export(thread_id="t-1")]
    finally:
        log.close()


def ledger(db: Path) -> list[dict[str, Any]]:
    kept = Ledger(db)
    try:
        return kept.entries("t-1")
    finally:
        kept.close()


PAY = turn(call("pay", to="bob", amount=250))


def test_a_lost_call_that_succeeded_is_answered_from_the_ledger(tmp_path: Path) -> None:
    db, bank = tmp_path / "h.db", Bank()
    graph = agent(db, bank, PAY)
    first = graph.invoke(REQUEST, config(), context=CTX)
    (lost,) = first["calls"]
    assert first["messages"][-1].text == "done"
    lose(graph)

    again = graph.invoke(REQUEST, config(), context=CTX)
    (call_id,) = again["calls"]
    record = again["calls"][call_id]
    assert call_id != lost and record.replay_of == lost
    assert (record.status, record.result) == ("succeeded", "paid")
    assert [m.text for m in again["messages"] if isinstance(m, ToolMessage)] == ["paid"]
    assert len(bank.paid) == 1
    rows = {r["tool_call_id"]: r for r in ledger(db)}
    assert (rows[lost]["replayed_by"], rows[call_id]["replay_of"]) == (call_id, lost)
    assert [e for c, e in audit(db) if c == call_id] == ["decided", "replayed"]


def test_a_lost_call_of_unknown_outcome_goes_to_a_person_and_a_retry_keeps_its_key(
    tmp_path: Path,
) -> None:
    db, bank = tmp_path / "h.db", Bank()
    graph = agent(db, bank, PAY)
    bank.die = True
    with pytest.raises(Died):
        graph.invoke(REQUEST, config(), context=CTX)
    lose(graph)

    paused = graph.invoke(REQUEST, config(), context=CTX)["__interrupt__"][0].value["handrail"]
    (waiting,) = paused["calls"].values()
    assert (paused["kind"], waiting["error"]["kind"]) == ("escalation", "outcome_unknown")
    assert len(bank.paid) == 1
    retry = {"decisions": [{"type": "retry"}], "approver": OPS}
    done = graph.invoke(Command(resume=retry), config(), context=CTX)
    assert done["messages"][-1].text == "done"
    # the person's retry ran it again, with the key the lost attempt gave the API
    (first, second) = bank.paid
    assert first[2] == second[2]


@pytest.mark.parametrize("durability", ["sync", "async", "exit"])
def test_the_same_call_in_a_later_turn_runs_again(tmp_path: Path, durability: Any) -> None:
    db, bank = tmp_path / "h.db", Bank()
    graph = agent(db, bank, PAY, AIMessage("done"), PAY)
    graph.invoke(REQUEST, config(), context=CTX, durability=durability)
    out = graph.invoke(REQUEST, config(), context=CTX, durability=durability)
    assert [r.replay_of for r in out["calls"].values()] == [None, None]
    assert len(bank.paid) == 2 and out["messages"][-1].text == "done"


def test_two_same_calls_of_a_lost_turn_replay_one_each(tmp_path: Path) -> None:
    db, bank = tmp_path / "h.db", Bank()
    twice = turn(call("pay", to="bob", amount=250), call("pay", to="bob", amount=250))
    graph = agent(db, bank, twice)
    lost = set(graph.invoke(REQUEST, config(), context=CTX)["calls"])
    lose(graph)
    again = graph.invoke(REQUEST, config(), context=CTX)["calls"].values()
    assert {r.replay_of for r in again} == lost
    assert len(bank.paid) == 2


def test_a_replay_lost_in_turn_is_replayed_once_more_never_run(tmp_path: Path) -> None:
    db, bank = tmp_path / "h.db", Bank()
    graph = agent(db, bank, PAY)
    (lost,) = graph.invoke(REQUEST, config(), context=CTX)["calls"]
    lose(graph)
    graph.invoke(REQUEST, config(), context=CTX)
    lose(graph)
    (record,) = graph.invoke(REQUEST, config(), context=CTX)["calls"].values()
    assert (record.replay_of, record.status) == (lost, "succeeded")
    assert len(bank.paid) == 1
    assert sum(1 for r in ledger(db) if r["replayed_by"] is None) == 1


def test_an_async_graph_replays_a_lost_call_through_its_async_saver(tmp_path: Path) -> None:
    """Under ``ainvoke`` the ledger's steps run in a worker thread and ask the async saver for
    the lost call's checkpoint from there."""
    db, bank = tmp_path / "h.db", Bank()

    async def main() -> tuple[str, dict[str, Any]]:
        async with aiosqlite.connect(db) as conn:
            saver = AsyncSqliteSaver(
                conn, serde=JsonPlusSerializer(allowed_msgpack_modules=STATE_TYPES)
            )
            model = ScriptedChatModel([PAY, AIMessage("done")], fresh_ids=True)
            graph = build_agent(model, [bank.tool()], POLICY, checkpointer=saver, db=db)
            (lost,) = (await graph.ainvoke(REQUEST, config(), context=CTX))["calls"]
            await saver.adelete_thread("t-1")
            again = await graph.ainvoke(REQUEST, config(), context=CTX)
            return lost, again

    lost, again = asyncio.run(main())
    (record,) = again["calls"].values()
    assert (record.replay_of, record.status, len(bank.paid)) == (lost, "succeeded", 1)


@pytest.mark.filterwarnings("ignore:ShallowPostgresSaver is deprecated")
def test_saved_means_the_very_checkpoint_even_on_a_saver_that_keeps_only_the_latest(
    postgres: str,
) -> None:
    """``ShallowPostgresSaver`` answers any checkpoint id with the thread's latest: an earlier
    step that is gone must count as lost (else a lost call would run again)."""
    from langgraph.checkpoint.base import empty_checkpoint
    from langgraph.checkpoint.postgres.shallow import ShallowPostgresSaver
    from psycopg import Connection
    from psycopg.rows import dict_row

    from handrail.nodes._lineage import RunLineage

    schema = f"s_{uuid.uuid4().hex[:12]}"
    with Connection.connect(postgres, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    url = f"{postgres}?options=-csearch_path%3D{schema}"
    with Connection.connect(url, autocommit=True, row_factory=dict_row) as conn:
        saver = ShallowPostgresSaver(conn)  # type: ignore[arg-type]
        saver.setup()
        thread = {"configurable": {"thread_id": "t-1", "checkpoint_ns": ""}}
        first, latest = empty_checkpoint(), empty_checkpoint()
        saver.put(thread, first, {}, {})  # type: ignore[arg-type]
        saver.put(thread, latest, {}, {})  # type: ignore[arg-type]
        now = empty_checkpoint()["id"]  # the step running the call
        run = {
            "configurable": {
                "thread_id": "t-1",
                "__pregel_checkpointer": saver,
                "checkpoint_map": {"": now},
            }
        }
        lineage = RunLineage({}, "calls", run)  # type: ignore[arg-type]
        assert not lineage.lost({"": latest["id"]})
        assert lineage.lost({"": first["id"]})


def test_a_forged_replay_of_gives_a_call_no_other_calls_idempotency_key(tmp_path: Path) -> None:
    """``replay_of`` in a record is the ledger's word, not the state's: a record forged to name an
    earlier call gets its own key, so an API that deduplicates by key does not drop it."""
    db, bank = tmp_path / "h.db", Bank()
    asks = Policy.from_yaml(
        "rules:\n  - {id: pay, tools: [pay], roles: [ai-agent], effect: ask, "
        "approvers: [treasurer]}\n"
    )
    model = ScriptedChatModel([PAY, AIMessage("done"), PAY, AIMessage("done")], fresh_ids=True)
    graph = build_agent(model, [bank.tool()], asks, checkpointer=db)
    yes = {"decisions": [{"type": "approve"}], "approver": {"id": "al", "roles": ["treasurer"]}}
    (first,) = graph.invoke(REQUEST, config(), context=CTX)["calls"]
    graph.invoke(Command(resume=yes), config(), context=CTX)
    paused = graph.invoke(REQUEST, config(), context=CTX)
    second = next(c for c in paused["calls"] if c != first)
    forged = paused["calls"][second].update(replay_of=first)
    graph.update_state(config(), {"calls": {second: forged}}, as_node="policy_check")
    assert "__interrupt__" in graph.invoke(None, config(), context=CTX)  # asked again
    graph.invoke(Command(resume=yes), config(), context=CTX)
    (_, _, one), (_, _, two) = bank.paid
    assert one != two


@pytest.mark.parametrize("durability", ["sync", "async", "exit"])
def test_fan_out_workers_making_the_same_call_in_one_step_both_run(
    tmp_path: Path, durability: Any
) -> None:
    """Two ``Send`` branches of one step run `build_agent` and each pays bob 250: two payments.
    Neither branch's state holds the other's call, and their step is the same one."""
    db, bank = tmp_path / "h.db", Bank()
    worker = agent(db, bank, PAY)
    parent = StateGraph(AgentState, context_schema=RunContext)
    parent.add_node("worker", worker)
    invoices = [Send("worker", {"messages": [("user", f"invoice {i}")]}) for i in (1, 2)]
    parent.add_conditional_edges(START, lambda _: invoices)
    parent.add_edge("worker", END)
    graph = parent.compile(checkpointer=worker.checkpointer)
    out = graph.invoke({"messages": []}, config(), context=CTX, durability=durability)
    assert [r.replay_of for r in out["calls"].values()] == [None, None]
    assert len(bank.paid) == 2


def test_requests_of_parallel_branches_both_wait_in_the_inbox(tmp_path: Path) -> None:
    """Two agents as parallel branches of one thread ask at once: opening one branch's request
    supersedes nothing of the other's (another tool and arguments)."""
    db = tmp_path / "h.db"
    asks = Policy.from_yaml(
        "rules:\n  - {id: all, tools: [pay, refund], roles: [ai-agent], effect: ask, "
        "approvers: [treasurer]}\n"
    )

    @tool
    def refund(to: str, amount: float) -> str:
        """Refund someone."""
        return "refunded"

    pays = ScriptedChatModel([PAY, AIMessage("done")], fresh_ids=True)
    refunds = ScriptedChatModel(
        [turn(call("refund", to="eve", amount=70)), AIMessage("done")], fresh_ids=True
    )
    a = build_agent(pays, [Bank().tool()], asks, checkpointer=db)
    b = build_agent(refunds, [refund], asks, db=db)
    parent = StateGraph(AgentState, context_schema=RunContext)
    parent.add_node("payments", a)
    parent.add_node("refunds", b)
    parent.add_edge(START, "payments")
    parent.add_edge(START, "refunds")
    graph = parent.compile(checkpointer=a.checkpointer)
    asked = graph.invoke(REQUEST, config(), context=CTX)["__interrupt__"]
    inbox = Inbox(db)
    try:
        assert sorted(p.tool for p in inbox.pending()) == ["pay", "refund"]
        yes = {"decisions": [{"type": "approve"}], "approver": {"id": "al", "roles": ["treasurer"]}}
        out = graph.invoke(Command(resume={i.id: yes for i in asked}), config(), context=CTX)
        assert sorted(r.status for r in out["calls"].values()) == ["succeeded", "succeeded"]
        assert inbox.pending() == []
    finally:
        inbox.close()
