"""The ``handrail_approvals`` table: one row per asked tool call, in the checkpoints' SQLite file.

The approval node writes it (an upsert before ``interrupt()``, the outcome after the resume), so
the inbox lists open requests across threads with one indexed query instead of loading every
thread's checkpoint. A resume through a Handrail graph first *claims* the thread's open rows in
one transaction, so two processes resuming the same thread cannot both go on: the second is told
the request is already being decided. A claim whose process died is taken over.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from handrail._sqlite import connect
from handrail.context import Actor
from handrail.errors import AlreadyDecided, NothingPending
from handrail.redaction import redact
from handrail.state import ToolCallRecord

__all__ = ["ApprovalTable", "PendingApproval", "iso"]

CLAIM_LEASE = timedelta(minutes=10)
"""A claim is taken over when its process has died (same host) or after this long (any host).

A claim lasts from the resume's start until the approval node has applied the decision, which
does not include running the tool, so a live claim is seconds old."""

RowStatus = Literal["open", "deciding", "decided", "expired"]
Outcome = Literal["approve", "edit", "reject", "respond", "expire", "deny"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS handrail_approvals (
    thread_id     TEXT NOT NULL,
    tool_call_id  TEXT NOT NULL,
    seq           INTEGER NOT NULL,
    graph         TEXT NOT NULL,
    tool          TEXT NOT NULL,
    args          TEXT NOT NULL,
    args_hash     TEXT NOT NULL,
    rule_id       TEXT,
    approvers     TEXT NOT NULL,
    min_approvals INTEGER NOT NULL,
    approvals     TEXT NOT NULL,
    actor         TEXT NOT NULL,
    requested_at  TEXT NOT NULL,
    expires_at    TEXT,
    status        TEXT NOT NULL,
    claim         TEXT,
    claim_pid     INTEGER,
    claim_host    TEXT,
    claimed_at    TEXT,
    outcome       TEXT,
    decided_by    TEXT,
    decided_at    TEXT,
    PRIMARY KEY (thread_id, tool_call_id)
);
CREATE INDEX IF NOT EXISTS handrail_approvals_waiting
    ON handrail_approvals (requested_at) WHERE status IN ('open', 'deciding');
CREATE INDEX IF NOT EXISTS handrail_approvals_waiting_tool
    ON handrail_approvals (tool, requested_at) WHERE status IN ('open', 'deciding');
CREATE INDEX IF NOT EXISTS handrail_approvals_deadline
    ON handrail_approvals (expires_at) WHERE status IN ('open', 'deciding');
"""

_COLUMNS = (
    "thread_id, tool_call_id, graph, tool, args, args_hash, rule_id, approvers, min_approvals, "
    "approvals, actor, requested_at, expires_at, status, claim_pid, claim_host, claimed_at"
)


def iso(moment: datetime) -> str:
    """A UTC timestamp as stored: fixed-width ISO-8601, so text order is time order."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True, kw_only=True, slots=True)
class PendingApproval:
    """One tool call waiting for a human, as the inbox lists it."""

    thread_id: str
    tool_call_id: str
    graph: str
    """The name of the graph that paused (used to find a factory to resume it with)."""
    tool: str
    args: dict[str, Any]
    """The call's arguments, with the policy's ``redact`` paths hidden."""
    args_hash: str
    """The hash an approval of this call is bound to."""
    rule_id: str | None
    approvers: tuple[str, ...]
    """Roles of which the approver must hold one."""
    min_approvals: int
    approvals: tuple[str, ...]
    """Ids of the approvers who approved so far."""
    actor: Actor
    """The requester: the actor the call was made for (it may not approve it)."""
    requested_at: datetime
    expires_at: datetime | None
    deciding: bool
    """A live process has claimed the request and is applying a decision to it."""

    def expired(self, now: datetime | None = None) -> bool:
        """Whether the request is past its deadline at ``now`` (default: the current time)."""
        return self.expires_at is not None and (now or datetime.now(UTC)) >= self.expires_at


class ApprovalTable:
    """Handrail's approval rows in the SQLite file at ``path`` (created on first use)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._conn = connect(self.path)
        self._lock = threading.Lock()
        with self._lock:
            self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    # -- written by the approval node ------------------------------------------------------------

    def open(
        self,
        thread_id: str,
        graph: str,
        actor: Actor,
        records: Sequence[ToolCallRecord],
        redactions: Iterable[tuple[str, Sequence[str]]],
        now: datetime,
    ) -> None:
        """Upsert a row per waiting call. Idempotent: the node runs again on every resume.

        A row that waits with the same arguments and approvals keeps its status and claim; a
        changed or decided one is opened afresh. ``requested_at`` is the first time it was asked.
        """
        paths = dict(redactions)
        rows = [
            (
                thread_id,
                r.id,
                seq,
                graph,
                r.name,
                json.dumps(redact(r.args, paths.get(r.name, ()), "args"), sort_keys=True),
                r.args_hash,
                r.rule_id,
                json.dumps(list(r.approvers)),
                r.min_approvals,
                json.dumps(list(r.approvals)),
                json.dumps(actor.as_dict()),
                iso(now),
                iso(r.expires_at) if r.expires_at else None,
            )
            for seq, r in enumerate(records)
        ]
        with self._transaction() as conn:
            conn.executemany(
                """
                INSERT INTO handrail_approvals (thread_id, tool_call_id, seq, graph, tool, args,
                    args_hash, rule_id, approvers, min_approvals, approvals, actor, requested_at,
                    expires_at, status)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'open')
                ON CONFLICT (thread_id, tool_call_id) DO UPDATE SET
                    seq = excluded.seq, graph = excluded.graph, tool = excluded.tool,
                    args = excluded.args, rule_id = excluded.rule_id,
                    approvers = excluded.approvers, min_approvals = excluded.min_approvals,
                    actor = excluded.actor, expires_at = excluded.expires_at,
                    outcome = NULL, decided_by = NULL, decided_at = NULL,
                    status = CASE WHEN status IN ('open', 'deciding')
                        AND args_hash = excluded.args_hash AND approvals = excluded.approvals
                        THEN status ELSE 'open' END,
                    claim = CASE WHEN status IN ('open', 'deciding')
                        AND args_hash = excluded.args_hash AND approvals = excluded.approvals
                        THEN claim END,
                    args_hash = excluded.args_hash, approvals = excluded.approvals
                """,
                rows,
            )

    def resolve(
        self,
        thread_id: str,
        outcomes: Sequence[tuple[ToolCallRecord, Outcome]],
        decided_by: str | None,
        now: datetime,
    ) -> None:
        """Mark calls decided (or expired). Idempotent, like everything after an interrupt."""
        with self._transaction() as conn:
            conn.executemany(
                """
                UPDATE handrail_approvals
                SET status = ?, outcome = ?, decided_by = ?, decided_at = ?, approvals = ?,
                    claim = NULL, claim_pid = NULL, claim_host = NULL, claimed_at = NULL
                WHERE thread_id = ? AND tool_call_id = ?
                """,
                [
                    (
                        "expired" if outcome == "expire" else "decided",
                        outcome,
                        decided_by,
                        iso(now),
                        json.dumps(list(r.approvals)),
                        thread_id,
                        r.id,
                    )
                    for r, outcome in outcomes
                ],
            )

    # -- claims, taken by a resume before LangGraph stores it -----------------------------------

    def claim(self, thread_id: str, now: datetime) -> tuple[str, list[str]] | None:
        """Claim the thread's waiting rows for one resume; returns the token and the call ids.

        Returns None when the table has no row for the thread at all (a thread paused by a graph
        without this table). Raises `AlreadyDecided` when another live process holds the claim
        or the thread's requests were all decided.
        """
        token = uuid.uuid4().hex
        with self._transaction() as conn:
            rows = conn.execute(
                "SELECT tool_call_id, status, claim, claim_pid, claim_host, claimed_at "
                "FROM handrail_approvals WHERE thread_id = ? ORDER BY seq",
                (thread_id,),
            ).fetchall()
            if not rows:
                return None
            waiting = [r for r in rows if r[1] in ("open", "deciding")]
            if not waiting:
                raise AlreadyDecided(
                    "the approval request was already decided", thread_id=thread_id
                )
            for _, status, _, pid, host, claimed_at in waiting:
                if status == "deciding" and _alive(pid, host, claimed_at, now):
                    raise AlreadyDecided(
                        f"a decision is being applied by process {pid} on {host} "
                        f"(since {claimed_at})",
                        thread_id=thread_id,
                    )
            conn.execute(
                "UPDATE handrail_approvals SET status = 'deciding', claim = ?, claim_pid = ?, "
                "claim_host = ?, claimed_at = ? "
                "WHERE thread_id = ? AND status IN ('open', 'deciding')",
                (token, os.getpid(), socket.gethostname(), iso(now), thread_id),
            )
        return token, [r[0] for r in waiting]

    def release(self, token: str) -> None:
        """Give back whatever of a claim the resume did not decide (it failed or was refused)."""
        with self._lock:
            self._conn.execute(
                "UPDATE handrail_approvals SET status = 'open', claim = NULL, claim_pid = NULL, "
                "claim_host = NULL, claimed_at = NULL WHERE claim = ? AND status = 'deciding'",
                (token,),
            )

    # -- read by the inbox ----------------------------------------------------------------------

    def waiting(
        self,
        *,
        thread_id: str | None = None,
        tool: str | None = None,
        approver_role: str | None = None,
        requested_before: datetime | None = None,
        expired_at: datetime | None = None,
        now: datetime | None = None,
    ) -> list[PendingApproval]:
        """Rows waiting for a decision, oldest first, filtered as given."""
        where = ["status IN ('open', 'deciding')"]
        params: list[Any] = []
        if thread_id is not None:
            where.append("thread_id = ?")
            params.append(thread_id)
        if tool is not None:
            where.append("tool = ?")
            params.append(tool)
        if approver_role is not None:
            where.append("EXISTS (SELECT 1 FROM json_each(approvers) WHERE value = ?)")
            params.append(approver_role)
        if requested_before is not None:
            where.append("requested_at < ?")
            params.append(iso(requested_before))
        if expired_at is not None:
            where.append("expires_at <= ?")
            params.append(iso(expired_at))
        sql = (
            f"SELECT {_COLUMNS} FROM handrail_approvals WHERE {' AND '.join(where)} "
            "ORDER BY requested_at, thread_id, seq"
        )
        with self._lock:
            rows = self._conn.execute(sql, params).fetchall()
        moment = now or datetime.now(UTC)
        return [_pending(row, moment) for row in rows]

    def nothing_waiting(self, thread_id: str | None) -> NothingPending:
        """The error for a decision on a thread with nothing waiting: decided already, or never."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT tool_call_id, outcome, decided_by FROM handrail_approvals "
                "WHERE thread_id = ? AND status IN ('decided', 'expired') ORDER BY seq",
                (thread_id,),
            ).fetchall()
        if not rows:
            return NothingPending("no approval is waiting on this thread", thread_id=thread_id)
        done = ", ".join(f"{c} ({o} by {who})" if who else f"{c} ({o})" for c, o, who in rows)
        return AlreadyDecided(f"nothing is waiting; already decided: {done}", thread_id=thread_id)


def _pending(row: tuple[Any, ...], now: datetime) -> PendingApproval:
    (thread, call, graph, tool, args, hash_, rule, approvers, min_approvals, approvals, actor,
     requested_at, expires_at, status, pid, host, claimed_at) = row  # fmt: skip
    return PendingApproval(
        thread_id=thread,
        tool_call_id=call,
        graph=graph,
        tool=tool,
        args=json.loads(args),
        args_hash=hash_,
        rule_id=rule,
        approvers=tuple(json.loads(approvers)),
        min_approvals=min_approvals,
        approvals=tuple(json.loads(approvals)),
        actor=Actor.model_validate_json(actor),
        requested_at=datetime.fromisoformat(requested_at),
        expires_at=datetime.fromisoformat(expires_at) if expires_at else None,
        deciding=status == "deciding" and _alive(pid, host, claimed_at, now),
    )


def _alive(pid: int | None, host: str | None, claimed_at: str | None, now: datetime) -> bool:
    """Whether the process holding a claim may still be applying it."""
    if pid is None or claimed_at is None:
        return False
    if now - datetime.fromisoformat(claimed_at) >= CLAIM_LEASE:
        return False
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
