"""`Inbox`: every call waiting for a human in a database, across threads, decided by thread ID.

A call waits for an *approval* (the policy asked: approve, edit, reject, respond) or after an
*escalation* (it failed in a way only a human can settle: retry, skip, abort).

The listing comes from Handrail's ``handrail_approvals`` table, which the approval node keeps
exact as requests open, are decided and expire; no checkpoint is loaded to list it. A decision
resumes the thread in this process through a `HandrailGraph`, so it is checked (approver role,
separation of duties, expiry, args hash) and claimed before anything is stored::

    inbox = Inbox("handrail.db", graph=graph)          # or Inbox("postgresql://…", graph=graph)
    for item in inbox.pending(approver_role="treasurer"):
        inbox.approve(item.thread_id, approver=Actor(id="alice", roles=["treasurer"]))

The approver is checked by the graph's trust (`handrail.auth.Trust`): with a directory, an
``Actor(id="alice")`` gets the directory's roles (roles it claims beyond them are refused); with a
token authenticator, pass ``approver=Token(jwt)``; with neither, the id and roles are taken as
claimed, and the audit says so.

Without ``graph=``, the graph is rebuilt from a factory registered for the name the paused graph
was built with (`Inbox.register`, or an entry point in the ``handrail.graphs`` group); a factory
takes the database (the SQLite path or PostgreSQL URL the inbox was opened on) and returns the
graph.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.types import Command

from handrail.auth import Token
from handrail.context import Actor, RunContext
from handrail.errors import AlreadyDecided, GraphNotFound, ResumeError, UnknownCall
from handrail.guard import HandrailGraph
from handrail.review import (
    EXPIRE,
    Abort,
    Action,
    Approve,
    Edit,
    HumanDecision,
    PendingApproval,
    Reject,
    RequestKind,
    Respond,
    Retry,
    Skip,
)
from handrail.review.decisions import wire
from handrail.storage.approvals import ApprovalTable

__all__ = ["ENTRY_POINT_GROUP", "GraphFactory", "Inbox", "PendingApproval"]

ENTRY_POINT_GROUP = "handrail.graphs"
"""Entry points in this group map a graph's name to a factory ``(db: str) -> graph``."""

GraphFactory = Callable[[str], HandrailGraph]
"""Builds the app's graph on the given database (a SQLite path or a PostgreSQL URL)."""


class Inbox:
    """Open approval requests in the database ``db`` (a SQLite file path or a ``postgresql://``
    URL), and their decisions by thread ID."""

    def __init__(self, db: str | Path, *, graph: HandrailGraph | None = None) -> None:
        self._table = ApprovalTable(db)
        self.db = self._table.store.url
        """The database holding the checkpoints and Handrail's tables (a path or a URL)."""
        self._graph = graph
        self._factories: dict[str, GraphFactory] = {}
        self._built: dict[str, HandrailGraph] = {}

    def close(self) -> None:
        """Close the inbox's connection to the database."""
        self._table.close()

    def register(self, name: str, factory: GraphFactory) -> None:
        """Resume threads paused by the graph called ``name`` with ``factory(db)``."""
        self._factories[name] = factory

    # -- reading --------------------------------------------------------------------------------

    def pending(
        self,
        tool: str | None = None,
        approver_role: str | None = None,
        older_than: timedelta | None = None,
        kind: RequestKind | None = None,
    ) -> list[PendingApproval]:
        """Calls waiting for a decision across all threads, oldest request first.

        ``approver_role`` keeps the calls that role may decide; ``older_than`` keeps requests
        asked at least that long ago; ``kind`` keeps approvals or escalations. Requests past their
        deadline are listed until they are resolved (`expire`); `PendingApproval.expired` tells
        them apart.
        """
        before = datetime.now(UTC) - older_than if older_than is not None else None
        rows = self._table.waiting(
            kind=kind, tool=tool, approver_role=approver_role, requested_before=before
        )
        return [PendingApproval.of(row) for row in rows]

    def show(self, thread_id: str) -> list[PendingApproval]:
        """The calls waiting on one thread, in the order its decisions must be given."""
        return [PendingApproval.of(row) for row in self._table.waiting(thread_id=thread_id)]

    # -- deciding -------------------------------------------------------------------------------

    def approve(
        self,
        thread_id: str,
        *,
        approver: Actor | Token,
        call_id: str | Sequence[str] | None = None,
        args_hash: str | None = None,
        graph: HandrailGraph | None = None,
    ) -> dict[str, Any]:
        """Approve the thread's waiting calls (or those named), bound to the arguments listed.

        Each approval names the args hash from the listing (or ``args_hash``, for one call), so
        it cannot run other arguments than the ones the approver saw. Returns the run's result.
        """
        rows = self._named(thread_id, call_id)
        if args_hash is not None and len(rows) != 1:
            raise ResumeError("args_hash binds one call; name it with call_id", thread_id=thread_id)
        return self.decide(
            thread_id,
            {r.tool_call_id: Approve(args_hash=args_hash or r.args_hash) for r in rows},
            approver=approver,
            graph=graph,
        )

    def edit(
        self,
        thread_id: str,
        call_id: str,
        args: Mapping[str, Any],
        *,
        approver: Actor | Token,
        graph: HandrailGraph | None = None,
    ) -> dict[str, Any]:
        """Run call ``call_id`` with ``args`` instead; the policy decides the new arguments."""
        rows = {r.tool_call_id: r for r in self._named(thread_id, call_id)}
        action = Action(name=rows[call_id].tool, args=dict(args))
        return self.decide(
            thread_id, {call_id: Edit(edited_action=action)}, approver=approver, graph=graph
        )

    def reject(
        self,
        thread_id: str,
        reason: str,
        *,
        approver: Actor | Token,
        call_id: str | Sequence[str] | None = None,
        graph: HandrailGraph | None = None,
    ) -> dict[str, Any]:
        """Refuse the thread's waiting calls (or those named); the model is told ``reason``."""
        return self._each(thread_id, call_id, Reject(message=reason), approver, graph)

    def respond(
        self,
        thread_id: str,
        message: str,
        *,
        approver: Actor | Token,
        call_id: str | Sequence[str] | None = None,
        graph: HandrailGraph | None = None,
    ) -> dict[str, Any]:
        """Answer the model with ``message`` in place of running the calls."""
        return self._each(thread_id, call_id, Respond(message=message), approver, graph)

    def retry(
        self,
        thread_id: str,
        *,
        approver: Actor | Token,
        call_id: str | Sequence[str] | None = None,
        graph: HandrailGraph | None = None,
    ) -> dict[str, Any]:
        """Escalation: run the failed calls (or those named) once more, as a new attempt."""
        return self._each(thread_id, call_id, Retry(), approver, graph)

    def skip(
        self,
        thread_id: str,
        message: str = "skipped by the operator",
        *,
        approver: Actor | Token,
        call_id: str | Sequence[str] | None = None,
        graph: HandrailGraph | None = None,
    ) -> dict[str, Any]:
        """Escalation: do not run the failed calls again; the model is told they were skipped."""
        return self._each(thread_id, call_id, Skip(message=message), approver, graph)

    def abort(
        self,
        thread_id: str,
        message: str = "aborted by the operator",
        *,
        approver: Actor | Token,
        graph: HandrailGraph | None = None,
    ) -> dict[str, Any]:
        """Escalation: end the run; every escalated call is answered as aborted."""
        return self._each(thread_id, None, Abort(message=message), approver, graph)

    def decide(
        self,
        thread_id: str,
        decisions: Mapping[str, HumanDecision],
        *,
        approver: Actor | Token,
        graph: HandrailGraph | None = None,
    ) -> dict[str, Any]:
        """Resume ``thread_id`` with one decision per waiting call, keyed by tool call id."""
        rows = self._waiting(thread_id)
        ids = [r.tool_call_id for r in rows]
        unknown = [c for c in decisions if c not in ids]
        if unknown:
            raise UnknownCall(
                f"no call {unknown[0]!r} is waiting here; waiting calls: {ids}",
                thread_id=thread_id,
            )
        missing = [c for c in ids if c not in decisions]
        if missing:
            raise ResumeError(
                f"the thread waits on {len(ids)} calls {ids} and takes one decision for each; "
                f"none given for {missing}",
                thread_id=thread_id,
            )
        payload = {
            "decisions": [_payload(r.tool_call_id, decisions[r.tool_call_id], r) for r in rows],
            "approver": _claim(approver),
        }
        return self._resume(rows[0], payload, graph)

    def expire(self, *, graph: HandrailGraph | None = None) -> list[PendingApproval]:
        """Resolve every request past its deadline as rejected; returns the calls resolved.

        The model of each thread is told that the request expired, and the thread goes on. A
        thread that another process is deciding meanwhile is left to it.
        """
        lapsed = [PendingApproval.of(r) for r in self._table.waiting(expired_at=datetime.now(UTC))]
        done: list[PendingApproval] = []
        for thread in dict.fromkeys(r.thread_id for r in lapsed):
            rows = [r for r in lapsed if r.thread_id == thread]
            try:
                self._resume(rows[0], EXPIRE, graph)
            except AlreadyDecided:
                continue  # another process is deciding or decided it: nothing left to expire
            done.extend(rows)
        return done

    # -- internals ------------------------------------------------------------------------------

    def _waiting(self, thread_id: str) -> list[PendingApproval]:
        rows = [PendingApproval.of(row) for row in self._table.waiting(thread_id=thread_id)]
        if not rows:
            raise self._table.nothing_waiting(thread_id)
        return rows

    def _each(
        self,
        thread_id: str,
        call_id: str | Sequence[str] | None,
        decision: HumanDecision,
        approver: Actor | Token,
        graph: HandrailGraph | None,
    ) -> dict[str, Any]:
        rows = self._named(thread_id, call_id)
        decisions = dict.fromkeys((r.tool_call_id for r in rows), decision)
        return self.decide(thread_id, decisions, approver=approver, graph=graph)

    def _named(self, thread_id: str, call_id: str | Sequence[str] | None) -> list[PendingApproval]:
        rows = self._waiting(thread_id)
        if call_id is None:
            return rows
        wanted = [call_id] if isinstance(call_id, str) else list(call_id)
        by_id = {r.tool_call_id: r for r in rows}
        for c in wanted:
            if c not in by_id:
                raise UnknownCall(
                    f"no call {c!r} is waiting here; waiting calls: {list(by_id)}",
                    thread_id=thread_id,
                )
        return [by_id[c] for c in wanted]

    def _resume(
        self, row: PendingApproval, payload: dict[str, Any], graph: HandrailGraph | None
    ) -> dict[str, Any]:
        target = self._graph_for(row.graph, graph)
        config: RunnableConfig = {"configurable": {"thread_id": row.thread_id}}
        result: dict[str, Any] = target.invoke(
            Command(resume=payload), config, context=RunContext(actor=row.actor)
        )
        return result

    def _graph_for(self, name: str, graph: HandrailGraph | None) -> HandrailGraph:
        found = graph or self._graph or self._built.get(name)
        if found is None:
            factory = self._factories.get(name) or _entry_point(name)
            if factory is None:
                raise GraphNotFound(
                    f"no graph to resume {name!r} threads with: pass graph=, call "
                    f"Inbox.register({name!r}, factory), or declare an entry point "
                    f"{name} = 'module:factory' in the {ENTRY_POINT_GROUP!r} group"
                )
            found = self._built[name] = factory(self.db)
        if not isinstance(found, HandrailGraph):
            raise GraphNotFound(
                f"the graph for {name!r} is a {type(found).__name__}, not a HandrailGraph "
                f"(build it with handrail.build_agent)"
            )
        table = found.handrail_table
        if table is None or not table.store.same(self._table.store):
            raise GraphNotFound(
                f"the graph for {name!r} does not keep its checkpoints in {self._table.store}"
            )
        return found


def _claim(approver: Actor | Token) -> dict[str, Any]:
    """The resume payload's approver: a token, or an id (with the roles it claims, if any)."""
    if isinstance(approver, Token):
        return {"token": approver.jwt}
    return (
        {"id": approver.id, "roles": list(approver.roles)}
        if approver.roles
        else {"id": approver.id}
    )


def _payload(call_id: str, decision: HumanDecision, row: PendingApproval) -> dict[str, Any]:
    """The decision for ``row`` on the wire, naming its call (an approval bound to the listed
    arguments unless it names a hash of its own)."""
    if isinstance(decision, Approve) and decision.args_hash is None:
        decision = Approve(args_hash=row.args_hash)
    return {**wire(decision), "tool_call_id": call_id}


def _entry_point(name: str) -> GraphFactory | None:
    for ep in entry_points(group=ENTRY_POINT_GROUP, name=name):
        factory: GraphFactory = ep.load()
        return factory
    return None
