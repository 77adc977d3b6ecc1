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
graph. A ``create_agent`` agent with `HandrailMiddleware` keeps the same rows: give the inbox
``handrail.guard(agent)``.

Every deciding method has an async twin (``aapprove``, ``aedit``, ``areject``, ``arespond``,
``aretry``, ``askip``, ``aabort``, ``adecide``, ``aexpire``) for graphs that run asynchronously
(an ``AsyncSqliteSaver``, async-only tools). Each decision is written once, as a script
(`handrail.nodes._effects`) that the method drives in the calling thread and its twin from the
event loop (`handrail._inbox_resume`). The sync method refuses an async-only graph with
`AsyncOnlyGraph`, naming the twin; the twin resumes a graph whose saver is synchronous in a
worker thread.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from handrail._inbox_resume import (
    ENTRY_POINT_GROUP,
    AsyncOnlyGraph,
    GraphFactory,
    Graphs,
    Result,
    approver_claim,
    awaited,
    blocking,
    decision_entry,
    resume,
)
from handrail.auth import Token
from handrail.context import Actor
from handrail.errors import AlreadyDecided, ResumeError, UnknownCall
from handrail.guard import HandrailGraph
from handrail.nodes._effects import Call, Script
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
from handrail.storage._pages import Filters
from handrail.storage.approvals import ApprovalTable, PageError

__all__ = [
    "ENTRY_POINT_GROUP",
    "AsyncOnlyGraph",
    "GraphFactory",
    "Inbox",
    "PageError",
    "PendingApproval",
    "PendingPage",
]

log = logging.getLogger("handrail")


@dataclass(frozen=True, slots=True)
class PendingPage:
    """One page of waiting calls (`Inbox.pending_page`)."""

    items: list[PendingApproval]
    """The page's calls, in the listing's order."""
    next_cursor: str | None
    """Pass it as ``after`` for the next page; None when no call follows this page."""


class Inbox:
    """Open approval requests in the database ``db`` (a SQLite file path or a ``postgresql://``
    URL), and their decisions by thread ID."""

    def __init__(self, db: str | Path, *, graph: HandrailGraph | None = None) -> None:
        self._table = ApprovalTable(db)
        self.db = self._table.store.url
        """The database holding the checkpoints and Handrail's tables (a path or a URL)."""
        self._graphs = Graphs(self._table.store, self.db, graph)

    def close(self) -> None:
        """Close the inbox's connection to the database."""
        self._table.close()

    def register(self, name: str, factory: GraphFactory) -> None:
        """Resume threads paused by the graph called ``name`` with ``factory(db)``."""
        self._graphs.register(name, factory)

    # -- reading --------------------------------------------------------------------------------

    def pending(
        self,
        tool: str | None = None,
        approver_role: str | None = None,
        older_than: timedelta | None = None,
        kind: RequestKind | None = None,
        *,
        limit: int | None = None,
        after: str | None = None,
        newest_first: bool = False,
    ) -> list[PendingApproval]:
        """Calls waiting for a decision across all threads, oldest request first.

        ``approver_role`` keeps the calls that role may decide; ``older_than`` keeps requests
        asked at least that long ago; ``kind`` keeps approvals or escalations. Requests past their
        deadline are listed until they are resolved (`expire`); `PendingApproval.expired` tells
        them apart. ``limit``, ``after`` and ``newest_first`` take one page of the listing, as
        `pending_page` does (which also gives the next page's cursor); without them, every call.
        """
        filters = (tool, approver_role, older_than, kind)
        return self.pending_page(
            *filters, limit=limit, after=after, newest_first=newest_first
        ).items

    def pending_page(
        self,
        tool: str | None = None,
        approver_role: str | None = None,
        older_than: timedelta | None = None,
        kind: RequestKind | None = None,
        *,
        limit: int | None = 50,
        after: str | None = None,
        newest_first: bool = False,
    ) -> PendingPage:
        """One page of `pending`: up to ``limit`` calls (None: all) after the cursor ``after``
        (None: from the first), oldest request first (``newest_first``: newest first), with the
        filters of `pending` (give a cursor with the filters and order of its page)::

            page = inbox.pending_page(limit=100)
            while page.next_cursor is not None:
                page = inbox.pending_page(limit=100, after=page.next_cursor)

        A page seeks its first row on an index: it costs the same at any depth and any size of
        the table, and a call decided between two pages moves no other one out of them (each
        call waiting throughout is listed once). Raises `PageError` (a `ValueError`) for a
        cursor that no page gave out, or a limit below 1.
        """
        before = datetime.now(UTC) - older_than if older_than is not None else None
        kept = Filters(kind=kind, tool=tool, approver_role=approver_role, requested_before=before)
        page = self._table.waiting_page(limit=limit, after=after, newest_first=newest_first, **kept)
        return PendingPage([PendingApproval.of(r) for r in page.rows], page.next_cursor)

    def show(self, thread_id: str) -> list[PendingApproval]:
        """The calls waiting on one thread, in the order its decisions must be given."""
        return [PendingApproval.of(row) for row in self._table.waiting(thread_id=thread_id)]

    # -- deciding: each decision is one script; the method runs it here, its twin is awaited ---

    @blocking("aapprove")
    def approve(
        self,
        thread_id: str,
        *,
        approver: Actor | Token,
        call_id: str | Sequence[str] | None = None,
        args_hash: str | None = None,
        graph: HandrailGraph | None = None,
    ) -> Script[Result]:
        """Approve the thread's waiting calls (or those named), bound to the arguments listed.

        Each approval names the args hash from the listing (or ``args_hash``, for one call), so
        it cannot run other arguments than the ones the approver saw. Returns the run's result.
        """
        waiting, rows = self._named(thread_id, call_id)
        if args_hash is not None and len(rows) != 1:
            raise ResumeError("args_hash binds one call; name it with call_id", thread_id=thread_id)
        decisions = {r.tool_call_id: Approve(args_hash=args_hash or r.args_hash) for r in rows}
        return (yield from self._deciding(thread_id, decisions, approver, graph, waiting))

    aapprove = awaited(approve)

    @blocking("aedit")
    def edit(
        self,
        thread_id: str,
        call_id: str,
        args: Mapping[str, Any],
        *,
        approver: Actor | Token,
        graph: HandrailGraph | None = None,
    ) -> Script[Result]:
        """Run call ``call_id`` with ``args`` instead; the policy decides the new arguments."""
        waiting, named = self._named(thread_id, call_id)
        decision = Edit(edited_action=Action(name=named[0].tool, args=dict(args)))
        return (yield from self._deciding(thread_id, {call_id: decision}, approver, graph, waiting))

    aedit = awaited(edit)

    @blocking("areject")
    def reject(
        self,
        thread_id: str,
        reason: str,
        *,
        approver: Actor | Token,
        call_id: str | Sequence[str] | None = None,
        graph: HandrailGraph | None = None,
    ) -> Script[Result]:
        """Refuse the thread's waiting calls (or those named); the model is told ``reason``."""
        return (yield from self._each(thread_id, call_id, Reject(message=reason), approver, graph))

    areject = awaited(reject)

    @blocking("arespond")
    def respond(
        self,
        thread_id: str,
        message: str,
        *,
        approver: Actor | Token,
        call_id: str | Sequence[str] | None = None,
        graph: HandrailGraph | None = None,
    ) -> Script[Result]:
        """Answer the model with ``message`` in place of running the calls."""
        decision = Respond(message=message)
        return (yield from self._each(thread_id, call_id, decision, approver, graph))

    arespond = awaited(respond)

    @blocking("aretry")
    def retry(
        self,
        thread_id: str,
        *,
        approver: Actor | Token,
        call_id: str | Sequence[str] | None = None,
        graph: HandrailGraph | None = None,
    ) -> Script[Result]:
        """Escalation: run the failed calls (or those named) once more, as a new attempt."""
        return (yield from self._each(thread_id, call_id, Retry(), approver, graph))

    aretry = awaited(retry)

    @blocking("askip")
    def skip(
        self,
        thread_id: str,
        message: str = "skipped by the operator",
        *,
        approver: Actor | Token,
        call_id: str | Sequence[str] | None = None,
        graph: HandrailGraph | None = None,
    ) -> Script[Result]:
        """Escalation: do not run the failed calls again; the model is told they were skipped."""
        return (yield from self._each(thread_id, call_id, Skip(message=message), approver, graph))

    askip = awaited(skip)

    @blocking("aabort")
    def abort(
        self,
        thread_id: str,
        message: str = "aborted by the operator",
        *,
        approver: Actor | Token,
        graph: HandrailGraph | None = None,
    ) -> Script[Result]:
        """Escalation: end the run; every escalated call is answered as aborted."""
        return (yield from self._each(thread_id, None, Abort(message=message), approver, graph))

    aabort = awaited(abort)

    @blocking("adecide")
    def decide(
        self,
        thread_id: str,
        decisions: Mapping[str, HumanDecision],
        *,
        approver: Actor | Token,
        graph: HandrailGraph | None = None,
    ) -> Script[Result]:
        """Resume ``thread_id`` with one decision per waiting call, keyed by tool call id."""
        waiting = self._waiting(thread_id)
        return (yield from self._deciding(thread_id, decisions, approver, graph, waiting))

    adecide = awaited(decide)

    @blocking("aexpire")
    def expire(self, *, graph: HandrailGraph | None = None) -> Script[list[PendingApproval]]:
        """Resolve every request past its deadline as rejected; returns the calls resolved.

        The model of each thread is told that the request expired, and the thread goes on. A
        thread that another process is deciding meanwhile is left to it; a thread that cannot be
        resumed (its graph is not found, it waits on several interrupts) is logged on the
        ``handrail`` logger and left waiting, and the sweep goes on with the others.
        """
        lapsed = [PendingApproval.of(r) for r in self._table.waiting(expired_at=datetime.now(UTC))]
        done: list[PendingApproval] = []
        for thread in dict.fromkeys(r.thread_id for r in lapsed):
            rows = [r for r in lapsed if r.thread_id == thread]
            try:
                target = yield from self._graph(rows[0], graph)
                yield from resume(target, rows[0], EXPIRE)
            except AlreadyDecided:
                continue  # another process is deciding or decided it: nothing left to expire
            except Exception as exc:  # one thread's trouble never stops the sweep
                log.warning("could not expire thread %r: %s: %s", thread, type(exc).__name__, exc)
                continue
            done.extend(rows)
        return done

    aexpire = awaited(expire)

    # -- internals ------------------------------------------------------------------------------

    def _deciding(
        self,
        thread_id: str,
        decisions: Mapping[str, HumanDecision],
        approver: Actor | Token,
        graph: HandrailGraph | None,
        rows: list[PendingApproval],
    ) -> Script[Result]:
        """Resume the thread with ``decisions``, one per call it waits on (``rows``, just read)."""
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
            "decisions": [decision_entry(decisions[r.tool_call_id], r) for r in rows],
            "approver": approver_claim(approver),
        }
        target = yield from self._graph(rows[0], graph)
        return (yield from resume(target, rows[0], payload))

    def _each(
        self,
        thread_id: str,
        call_id: str | Sequence[str] | None,
        decision: HumanDecision,
        approver: Actor | Token,
        graph: HandrailGraph | None,
    ) -> Script[Result]:
        waiting, rows = self._named(thread_id, call_id)
        decisions = dict.fromkeys((r.tool_call_id for r in rows), decision)
        return (yield from self._deciding(thread_id, decisions, approver, graph, waiting))

    def _graph(self, row: PendingApproval, graph: HandrailGraph | None) -> Script[HandrailGraph]:
        """The graph for ``row``'s thread, found (or built by its factory) in the caller's
        thread: on the event loop, for a factory that opens an async saver there."""
        found: HandrailGraph = yield Call(lambda: self._graphs.find(row.graph, graph))
        return found

    def _waiting(self, thread_id: str) -> list[PendingApproval]:
        rows = [PendingApproval.of(row) for row in self._table.waiting(thread_id=thread_id)]
        if not rows:
            raise self._table.nothing_waiting(thread_id)
        return rows

    def _named(
        self, thread_id: str, call_id: str | Sequence[str] | None
    ) -> tuple[list[PendingApproval], list[PendingApproval]]:
        """The thread's waiting calls (one read), and those ``call_id`` names (all for None)."""
        rows = self._waiting(thread_id)
        if call_id is None:
            return rows, rows
        wanted = [call_id] if isinstance(call_id, str) else list(call_id)
        by_id = {r.tool_call_id: r for r in rows}
        for c in wanted:
            if c not in by_id:
                raise UnknownCall(
                    f"no call {c!r} is waiting here; waiting calls: {list(by_id)}",
                    thread_id=thread_id,
                )
        return rows, [by_id[c] for c in wanted]
