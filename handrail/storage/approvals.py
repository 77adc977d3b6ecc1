"""The ``handrail_approvals`` table: one row per call waiting for a human, beside the checkpoints.

A call waits for an approval (the policy asked) or after an escalation (it failed in a way only a
human can settle); both are rows here, told apart by ``kind``.

The approval node writes it (an upsert before ``interrupt()``, the outcome after the resume), so
the inbox lists open requests across threads with one indexed query instead of loading every
thread's checkpoint. A resume through a Handrail graph first *claims* the thread's open rows in
one transaction, so two processes resuming the same thread cannot both go on: the second is told
the request is already being decided. The claim is released when the run stops, after LangGraph
has saved the decision; only then do the rows settle as decided or open again, so no other resume
can slip in between the table and the checkpoint. A claim whose process died is taken over.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Unpack

from handrail.errors import AlreadyDecided, NothingPending
from handrail.state import ToolCallRecord
from handrail.storage import Table, Target
from handrail.storage._approval_rows import (
    UPSERT,
    Listed,
    Listing,
    Outcome,
    Recording,
    iso,
    standing,
    superseded,
    upsert_rows,
)
from handrail.storage._base import Sql
from handrail.storage._claims import (
    NO_CLAIM,
    SETTLED,
    abandon,
    abandoned,
    alive,
    settle_dead,
)
from handrail.storage._pages import Filters, PageError, RowPage, read_page, read_waiting
from handrail.storage.outbox import expired_in, opened_in
from handrail.storage.proofs import Proof, keep_in

__all__ = ["ApprovalTable", "Listed", "Listing", "Outcome", "PageError", "RowPage", "iso"]

_REOPEN = "'open', outcome = NULL, decided_by = NULL, decided_at = NULL"


class ApprovalTable(Table):
    """Handrail's approval rows at ``db``: a SQLite file, a PostgreSQL URL or a `Store`.

    Every write to one thread's rows holds that thread's lock, so a claim reads and changes the
    rows in one step whichever process runs it.
    """

    def __init__(self, db: Target) -> None:
        super().__init__(db)

    # -- written by the approval node ------------------------------------------------------------

    def open(
        self,
        thread_id: str,
        calls: Sequence[Listing],
        now: datetime,
        *,
        holds: Callable[[str], bool] | None = None,
        events: Recording | None = None,
    ) -> bool:
        """Upsert a row per waiting call. Idempotent: the node runs again on every resume.

        A row that is waiting keeps its status and claim (a claimed row is settled by the claim's
        release, after the checkpoint is saved); a decided one is opened afresh. ``requested_at``
        is when the call was first asked with these arguments; ``policy_digest`` the digest of
        the policy whose decision asked (the call's, `WaitingCall.policy_digest`).

        ``holds`` says whether the run's state holds a call. The thread's other open requests
        for the same tool and arguments as one opened now, for calls it does not hold, are
        closed as ``superseded``: a crash lost the step that asked for them (the model, asked
        again, gave its calls new ids), and no resume of the thread can decide them any more.

        A call that was not waiting already gets an ``opened`` (or ``escalated``) event in the
        notification outbox, in the same transaction (`handrail.storage.outbox.opened_in`).

        ``events`` (the step's `handrail.events.Batch`, its ``approval_requested`` events added)
        are recorded in the same transaction as the rows, so a waiting row means its request is
        in the audit. When every row already stands as it would be written and no request is
        superseded (the re-run of the step after a resume), nothing is written and the events
        are dropped: the commit that wrote the rows recorded them. Returns whether it wrote.
        """
        rows = upsert_rows(thread_id, calls, now)
        with self.store.read() as sql:
            if standing(sql, thread_id, rows, calls, holds, events):
                if events is not None:
                    events.drop()
                return False
        with self.store.transaction(_lock(thread_id)) as sql:
            opened_in(sql, thread_id, calls, now)
            sql.executemany(UPSERT, rows)
            if holds is not None:
                _supersede(sql, thread_id, calls, holds, now)
            recorded = events.publish_in(sql) if events is not None else []
        if events is not None:
            events.announce(recorded)
        return True

    def resolve(
        self,
        thread_id: str,
        outcomes: Sequence[tuple[ToolCallRecord, Outcome]],
        decided_by: str | None,
        now: datetime,
        *,
        proofs: Sequence[Proof] = (),
        events: Recording | None = None,
        still: Sequence[Listing] = (),
    ) -> None:
        """Record the outcome of decided calls. Idempotent, like everything after an interrupt.

        An unclaimed row (a resume that bypassed the claim) is settled at once; a claimed row
        keeps its claim and is settled by `release`, once the run has saved the decision. An
        expiry writes an ``expired`` event to the notification outbox in the same transaction,
        and so are the decision's ``proofs`` (`handrail.storage.proofs`, in this database) and
        ``events`` (its audit rows) kept, and the rows of the calls ``still`` waiting (a rule
        that needs another approver) written as `open` writes them.
        """
        with self.store.transaction(_lock(thread_id)) as sql:
            keep_in(sql, proofs, now)
            sql.executemany(
                """
                UPDATE handrail_approvals
                SET outcome = ?, decided_by = ?, decided_at = ?, approvals = ?,
                    status = CASE WHEN status = 'deciding' THEN 'deciding' ELSE ? END
                WHERE thread_id = ? AND tool_call_id = ?
                """,
                [
                    (
                        outcome,
                        decided_by,
                        iso(now),
                        json.dumps(list(r.approvals)),
                        "expired" if outcome == "expire" else "decided",
                        thread_id,
                        r.id,
                    )
                    for r, outcome in outcomes
                ],
            )
            expired_in(sql, thread_id, [r.id for r, o in outcomes if o == "expire"], now)
            if still:
                opened_in(sql, thread_id, still, now)
                sql.executemany(UPSERT, upsert_rows(thread_id, still, now))
            recorded = events.publish_in(sql) if events is not None else []  # last: the audit's
        if events is not None:  # lock is held for the rest of the transaction
            events.announce(recorded)

    # -- claims, taken by a resume before LangGraph stores it -----------------------------------

    def claim(self, thread_id: str, calls: Sequence[str], now: datetime) -> str | None:
        """Claim the rows of one request (its ``calls``) for one resume; returns the token.

        Call it after checking the resume against the thread's checkpoint: a claim left by a
        process that died is taken over, and whatever outcome it recorded for these calls is
        dropped, since the checkpoint still waits for them. Rows of earlier requests that a dead
        claimant decided are settled as it decided them. Returns None when the table has no row
        for the request (a thread paused by a graph without this table). Raises
        `AlreadyDecided` when another live process holds the claim or the calls were decided.
        """
        token = uuid.uuid4().hex
        wanted = set(calls)
        with self.store.transaction(_lock(thread_id)) as sql:
            rows = sql.execute(
                "SELECT tool_call_id, status, claim_pid, claim_host, claimed_at, claim "
                "FROM handrail_approvals WHERE thread_id = ? ORDER BY seq",
                (thread_id,),
            ).fetchall()
            mine = [r for r in rows if r[0] in wanted]
            if not mine:
                return None
            settle_dead(sql, thread_id, now, keep=wanted)
            waiting = [r for r in mine if r[1] in ("open", "deciding")]
            if not waiting:
                raise AlreadyDecided(
                    "the approval request was already decided", thread_id=thread_id
                )
            for _, status, pid, host, claimed_at, held in waiting:
                if (
                    status == "deciding"
                    and not abandoned(held)
                    and alive(pid, host, claimed_at, now)
                ):
                    raise AlreadyDecided(
                        f"a decision is being applied by process {pid} on {host} "
                        f"(since {claimed_at})",
                        thread_id=thread_id,
                    )
            sql.executemany(
                "UPDATE handrail_approvals SET status = 'deciding', claim = ?, claim_pid = ?, "
                "claim_host = ?, claimed_at = ?, outcome = NULL, decided_by = NULL, "
                "decided_at = NULL WHERE thread_id = ? AND tool_call_id = ? "
                "AND status IN ('open', 'deciding')",
                [
                    (token, os.getpid(), socket.gethostname(), iso(now), thread_id, r[0])
                    for r in waiting
                ],
            )
        return token

    def approved(self, thread_id: str, call_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
        """Calls among ``call_ids`` whose approval is recorded here: args hash and approver.

        After a crash the table can hold a decision that the checkpoint lost (LangGraph saves
        it in the background under ``durability="async"``); the approval node applies it
        instead of asking again.
        """
        if not call_ids:
            return {}
        marks = ", ".join("?" * len(call_ids))
        with self.store.read() as sql:
            rows = sql.execute(
                f"SELECT tool_call_id, args_hash, decided_by FROM handrail_approvals "
                f"WHERE thread_id = ? AND tool_call_id IN ({marks}) AND kind = 'approval' "
                f"AND outcome = 'approve'",
                (thread_id, *call_ids),
            ).fetchall()
        return {c: (h, by) for c, h, by in rows}

    def release(self, token: str, *, reopen: bool = False) -> None:
        """End a claim once its run has stopped: decided rows settle, the others wait again.

        ``reopen``: the run failed before its checkpoint saved the decision, so every row of
        the claim waits again, whatever outcome the run recorded.
        """
        settle = _REOPEN if reopen else SETTLED
        with self.store.transaction() as sql:
            sql.execute(
                f"UPDATE handrail_approvals SET status = {settle}, {NO_CLAIM} "
                "WHERE claim = ? AND status = 'deciding'",
                (token,),
            )

    def abandon(self, token: str, *, reopen: bool) -> None:
        """A claim whose release failed (the database is locked, unreachable): this process
        takes it over at once, and a background thread releases it as soon as the database can
        be written, so no other process waits out the lease."""
        abandon(token, lambda: self.release(token, reopen=reopen))

    def settle(self, thread_id: str | None, now: datetime) -> None:
        """Settle the rows a dead claimant decided, once the checkpoint shows nothing waiting."""
        with self.store.transaction(_lock(thread_id)) as sql:
            settle_dead(sql, thread_id, now)

    # -- read by the inbox ----------------------------------------------------------------------

    def waiting(
        self, *, newest_first: bool = False, limit: int | None = None, **filters: Unpack[Filters]
    ) -> list[Listed]:
        """Calls waiting for a decision that ``filters`` keep (`Filters`: a thread or threads,
        a kind, a tool, an approver role, ...), oldest request first (``newest_first``: newest
        first), the first ``limit`` of them; one thread's calls in their request's order."""
        return read_waiting(self.store, filters, newest_first=newest_first, limit=limit)

    def waiting_page(
        self,
        *,
        limit: int | None,
        after: str | None = None,
        before: str | None = None,
        offset: int = 0,
        newest_first: bool = False,
        **filters: Unpack[Filters],
    ) -> RowPage:
        """One page of `waiting`: up to ``limit`` calls after the cursor ``after`` (or just
        before ``before``; neither: from the first), and the cursors of the pages beside it
        (`handrail.storage._pages`). A page seeks its first row on the waiting index, so it
        costs the same at any depth. Raises `PageError` for a cursor no page gave out."""
        return read_page(
            self.store,
            filters,
            limit=limit,
            after=after,
            before=before,
            offset=offset,
            newest_first=newest_first,
        )

    def nothing_waiting(self, thread_id: str | None) -> NothingPending:
        """The error for a decision on a thread whose checkpoint has no request waiting."""
        with self.store.read() as sql:
            rows = sql.execute(
                "SELECT tool_call_id, status, outcome, decided_by, claim_pid, claim_host, "
                "claimed_at FROM handrail_approvals WHERE thread_id = ? ORDER BY seq",
                (thread_id,),
            ).fetchall()
        now = datetime.now(UTC)
        listed = [r[0] for r in rows if r[1] in ("open", "deciding") and r[2] is None]
        if listed:
            return NothingPending(
                f"the inbox lists {listed}, but the thread's checkpoint holds no request: its "
                "process stopped before the request was saved; run the thread on with "
                "graph.invoke(None, config) to ask again",
                thread_id=thread_id,
            )
        done = [r for r in rows if r[2] is not None]
        if not done:
            return NothingPending("no approval is waiting on this thread", thread_id=thread_id)
        said = ", ".join(f"{r[0]} ({r[2]} by {r[3]})" if r[3] else f"{r[0]} ({r[2]})" for r in done)
        live = [r for r in done if r[1] == "deciding" and alive(r[4], r[5], r[6], now)]
        if live:
            return AlreadyDecided(
                f"already decided: {said}; process {live[0][4]} on {live[0][5]} is running it on",
                thread_id=thread_id,
            )
        if any(r[1] == "deciding" for r in done):
            return AlreadyDecided(
                f"already decided: {said}, but the process applying the decision stopped before "
                "it finished; run the thread on with graph.invoke(None, config)",
                thread_id=thread_id,
            )
        return AlreadyDecided(f"nothing is waiting; already decided: {said}", thread_id=thread_id)


def _supersede(
    sql: Sql, thread_id: str, opened: Sequence[Listing], holds: Callable[[str], bool], now: datetime
) -> None:
    """Close the thread's open (unclaimed, undecided) rows that ask again what a row opened now
    asks (the same tool and arguments) for a call the run does not hold: the request of a lost
    step. A request of another branch of the graph (a fan-out) asks for something else, or is
    held by its own branch's state, and stays open."""
    stale = [(iso(now), thread_id, c) for c in superseded(sql, thread_id, opened, holds)]
    sql.executemany(
        "UPDATE handrail_approvals SET status = 'decided', outcome = 'superseded', "
        "decided_at = ? WHERE thread_id = ? AND tool_call_id = ?",
        stale,
    )


def _lock(thread_id: str | None) -> str:
    """The lock of one thread's approval rows."""
    return f"handrail_approvals {thread_id}"
