"""The ``approval`` node: one interrupt for every asked call of a turn, and the checked resume.

The review itself (the waiting calls, the checks of a resume value, what each decision does, the
proofs) is `handrail.review`, shared with the middleware; this node wires it to the graph: it
finds the turn's waiting calls, keeps the approvals table beside the checkpoints exact (a row per
waiting call, upserted before the interrupt; the outcome after the resume), and routes on.

The node does nothing with side effects before ``interrupt()`` but idempotent upserts (LangGraph
re-runs it from the first line on resume). A value that fails the checks is answered with a
fresh interrupt carrying the reason, never an exception: an exception would leave the bad value
in the checkpoint's pending writes and every later resume of the thread would replay it. Callers
that go through a Handrail graph's ``invoke``/``stream`` get the same checks *before* anything
is written, as a typed error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END
from langgraph.runtime import Runtime
from langgraph.types import Command, interrupt

from handrail.context import Actor, RunContext
from handrail.events import Batch
from handrail.nodes._gate import Gate, call_id, turn_calls
from handrail.nodes._lineage import RunLineage
from handrail.review.turn import Round, recover, review_round, waiting_calls
from handrail.review.waiting import RequestKind, WaitingCall
from handrail.state import ToolCallRecord
from handrail.storage.approvals import ApprovalTable
from handrail.storage.ledger import Ledger

__all__ = ["make_approval_node"]


def make_approval_node(
    gate: Gate,
    table: ApprovalTable | None = None,
    graph_name: str = "handrail_agent",
    ledger: Ledger | None = None,
) -> Callable[[Mapping[str, Any], RunnableConfig, Runtime[RunContext]], Command[str]]:
    """Pause for the turn's asked (or escalated) calls; apply the checked decisions on resume.

    Asked calls come first: escalations only arise once the turn's calls have run. With a
    ``table``, each waiting call has a row there (written before the interrupt, as an upsert) and
    its outcome is recorded after the resume, so the inbox stays exact. An approval that a crash
    took out of the checkpoint is not asked for again when the ``ledger`` saw the call begin or
    the ``table`` or Handrail's store recorded it (`handrail.review.turn.recover`).
    """

    def approval(
        state: Mapping[str, Any], config: RunnableConfig, runtime: Runtime[RunContext]
    ) -> Command[str]:
        actor = gate.requester(runtime, config)
        events = gate.events.batch(config, actor.id)
        known = gate.records(state)
        turn = [known[call_id(c)] for c in turn_calls(state["messages"]) if call_id(c) in known]
        waiting = [r for r in turn if r.status == "awaiting_approval"]
        kind: RequestKind = "approval" if waiting else "escalation"
        if not waiting:
            waiting = [r for r in turn if r.status == "escalated"]
        thread = events.thread_id
        recovered: dict[str, ToolCallRecord] = {}
        if kind == "approval" and thread is not None:
            recovered = recover(gate, waiting, events, actor, table, ledger)
            waiting = [r for r in waiting if r.id not in recovered]
        if not waiting:
            events.publish()
            return Command(
                update={gate.key: recovered},
                goto=gate.route({**known, **recovered}, state["messages"]),
            )

        holds = RunLineage(state, gate.key, config).knows
        done = ask_once(
            gate, waiting, events, actor, kind=kind, graph=graph_name, table=table, holds=holds
        )
        records = {**recovered, **done.records}
        update = {gate.key: records, "messages": done.messages}
        if done.aborted:
            # The model gets no further turn; a workflow's `steps` node records the stop.
            return Command(update=update, goto=END if gate.done == "agent" else gate.done)
        return Command(update=update, goto=gate.route({**known, **records}, state["messages"]))

    return approval


def ask_once(
    gate: Gate,
    waiting: list[ToolCallRecord],
    events: Batch,
    actor: Actor,
    *,
    kind: RequestKind,
    graph: str,
    table: ApprovalTable | None,
    holds: Callable[[str], bool],
) -> Round:
    """Ask about ``waiting`` (the turn's asked calls, or its escalated ones) in one interrupt,
    until a valid decision comes; what it decided.

    ``holds`` tells the calls the run's state holds: a row of the thread's for the same tool and
    arguments as one opened now, for a call the state does not hold, is a lost step's and is
    closed as superseded (`ApprovalTable.open`).
    """
    thread = events.thread_id

    def opened(calls: list[WaitingCall], asked: Batch) -> None:
        if table is not None and thread is not None:
            table.open(thread, calls, datetime.now(UTC), holds=holds, events=asked)
        else:
            asked.publish()

    done = review_round(
        gate,
        waiting,
        events,
        actor,
        kind=kind,
        graph=graph,
        ask=interrupt,
        server=gate.trust.server(events.config),
        opened=opened,
    )
    if table is None or thread is None:
        gate.proofs.add(done.proofs, events=events)
    else:  # the proofs, the decisions' events and the outcomes in one commit
        now = datetime.now(UTC)
        by = done.approver.id if done.approver else None
        still = waiting_calls(gate, done.still(), thread, graph, actor, kind)
        table.resolve(thread, done.decided, by, now, proofs=done.proofs, events=events, still=still)
    return done
