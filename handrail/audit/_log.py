"""`AuditLog`: the ``handrail_audit`` table and its signed checkpoints."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import datetime
from functools import partial
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from handrail.audit._anchors import Anchor, key_id, sign_head
from handrail.audit._calls import approved_before, history, row_hash
from handrail.audit._chain import COLUMNS, GENESIS, INSERT, Sealable, seal, sealable, utc, within
from handrail.audit._rollup import COLUMNS as ROLLED
from handrail.audit._rollup import Rollup, StatsFold, load_rollup, store_rollup
from handrail.audit._stats import PolicyVersion, ToolStats
from handrail.audit._verify import ChainCheck, Verification, choose_start, parse_head
from handrail.errors import HandrailError
from handrail.events import ToolEvent
from handrail.storage import Sql, Table, Target
from handrail.storage._base import columns, display
from handrail.storage._schema_audit import ROLLUPS

__all__ = ["AuditLog"]

_PAGE = 512
"""Rows read per query by the streaming readers (the lock is released between pages)."""

_ANCHOR_COLUMNS = "seq, hash, signed_at, key_id, signature"


class AuditLog(Table):
    """The ``handrail_audit`` table at ``db``: a SQLite file, a PostgreSQL URL or a `Store`.

    ``readonly=True`` opens the database for reading only: nothing is created, a database
    without the table reads as an empty log, and `append` and `sign` refuse.
    """

    def __init__(self, db: Target, *, readonly: bool = False) -> None:
        super().__init__(db, readonly=readonly)
        self.readonly = readonly
        """Opened for reading only."""
        self._empty = readonly and not self.store.table_exists("handrail_audit")
        self._missing = frozenset() if not readonly or self._empty else self._lacking()
        self._select = self._columns(COLUMNS)
        self._has_rollups: bool | None = None

    def append(self, events: Sequence[ToolEvent | Sealable]) -> list[ToolEvent]:
        """Record ``events`` in order, in one transaction; returns those actually recorded.

        An event already in the log (same thread_id, tool_call_id, call_seq and event) is
        skipped: a replay of a step that was recorded. It takes no ``seq`` and no place in the
        chain. Rows are made (`sealable`) before the transaction, which only links them."""
        if not events:
            return []
        self._writable()
        ready = [sealable(event) for event in events]
        # One writer at a time, in every process: two appends never chain off the same row.
        with self.store.transaction("handrail_audit") as sql:
            return self.append_in(sql, ready)

    def append_in(self, sql: Sql, events: Sequence[ToolEvent | Sealable]) -> list[ToolEvent]:
        """`append` inside the caller's transaction ``sql`` on this log's store: the events are
        recorded by the commit that records the caller's own write (the execution ledger's
        intent, or its outcome), one commit instead of two. Pass events made `sealable`
        before the transaction, and it only links them."""
        if not events:
            return []
        self._writable()
        ready = [sealable(event) for event in events]
        self.store.lock_in(sql, "handrail_audit")
        recorded: list[ToolEvent] = []
        seq, prev = _last(sql) or (0, GENESIS)
        for item in ready:
            row = seal(item, seq + 1, prev)
            if sql.execute(INSERT, row).rowcount:
                seq, prev = seq + 1, row["hash"]
                recorded.append(item.event)
        return recorded

    sealable = staticmethod(sealable)
    """``event``'s row, made ready for `append_in` to link (`handrail.audit._chain.sealable`)."""

    def holds_in(self, sql: Sql, events: Sequence[ToolEvent]) -> bool:
        """Whether every one of ``events`` is recorded already (its step is in the log), read
        inside ``sql`` on this log's store; False for an event of no thread (never a replay)."""
        steps = [event.step() for event in events]
        if not steps or None in steps:
            return not steps
        marks = ", ".join("?" * len(steps))
        (found,) = sql.execute(
            f"SELECT count(*) FROM handrail_audit WHERE step IN ({marks})", steps
        ).fetchone()
        return int(found) == len(set(steps))

    def head(self) -> str | None:
        """The last row as ``SEQ:HASH`` (None for an empty log). Keep it somewhere the
        database's writers cannot reach, to check later with ``verify(head=...)``."""
        if self._empty:
            return None
        with self.store.read() as sql:
            last = _last(sql)
        return None if last is None else f"{last[0]}:{last[1]}"

    def next_call_seq(self, thread_id: str, tool_call_id: str) -> int:
        """The ``call_seq`` the call's next event takes: one past its last recorded event."""
        if self._empty:
            return 0
        with self.store.read() as sql:
            (last,) = sql.execute(
                "SELECT max(call_seq) FROM handrail_audit WHERE thread_id = ? AND tool_call_id = ?",
                (thread_id, tool_call_id),
            ).fetchone()
        return 0 if last is None else int(last) + 1

    def count(self) -> int:
        """The number of rows."""
        if self._empty:
            return 0
        with self.store.read() as sql:
            return int(sql.execute("SELECT count(*) FROM handrail_audit").fetchone()[0])

    def sign(self, private_key: Ed25519PrivateKey, *, now: datetime | None = None) -> Anchor:
        """Sign the current head with ``private_key`` and keep the checkpoint in
        ``handrail_audit_anchors``; returns it.

        From then on anyone holding the public key checks, with ``verify(public_key=...)``,
        that no row up to this one was rewritten. Only rows that verify are signed: the log is
        verified first (from the last checkpoint signed with this key, or whole before the
        first), and the head that run reached is signed (rows appended meanwhile are left to the
        next checkpoint). Refuses (`HandrailError`) a log that does not verify, naming the
        problem, an empty log, and a head already signed by another key (one checkpoint per
        row); signing a head again with the same key returns the checkpoint kept.
        """
        self._writable()
        public_key = private_key.public_key()
        mine = key_id(public_key)
        signed = any(anchor.key_id == mine for anchor in self.anchors())
        checked = self.verify(public_key=public_key) if signed else self.verify()
        if not checked.ok:
            raise HandrailError(
                f"{display(self.store.url)}: the audit log does not verify, so it is not signed: "
                f"{checked.problem}"
            )
        if checked.head is None:
            raise HandrailError(
                f"{display(self.store.url)}: the audit log is empty: there is no head to sign"
            )
        seq, digest = checked.head.split(":", 1)
        with self.store.transaction("handrail_audit") as sql:
            anchor = sign_head(private_key, int(seq), digest, now=now)
            inserted = sql.execute(
                f"INSERT INTO handrail_audit_anchors ({_ANCHOR_COLUMNS}) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (seq) DO NOTHING",
                (anchor.seq, anchor.hash, anchor.signed_at, anchor.key_id, anchor.signature),
            ).rowcount
            if inserted:
                return anchor
            kept = _anchor(
                sql.execute(
                    f"SELECT {_ANCHOR_COLUMNS} FROM handrail_audit_anchors WHERE seq = ?",
                    (anchor.seq,),
                ).fetchone()
            )
        same = kept.key_id == anchor.key_id and kept.hash == anchor.hash
        if same and kept.holds(private_key.public_key()):
            return kept
        raise HandrailError(
            f"row {kept.seq} already has a checkpoint, by key {kept.key_id}: "
            "sign again once rows are appended"
        )

    def anchors(self) -> list[Anchor]:
        """Every signed checkpoint, by seq (none in a database without the table)."""
        if self.readonly and not self.store.table_exists("handrail_audit_anchors"):
            return []
        with self.store.read() as sql:
            found = sql.execute(
                f"SELECT {_ANCHOR_COLUMNS} FROM handrail_audit_anchors ORDER BY seq"
            ).fetchall()
        return [_anchor(row) for row in found]

    def verify(
        self,
        head: str | None = None,
        *,
        public_key: Ed25519PublicKey | None = None,
        full: bool = False,
    ) -> Verification:
        """Recompute the chain in ``seq`` order (streaming) and report the first bad row: from the
        first row, or (the default, when a head or a key is given) from a checkpoint.

        Proves: each row's contents hash to its ``hash``, each ``prev_hash`` is the previous
        row's hash, and ``seq`` runs 1, 2, 3, … So an edit, a removed row, an inserted row or a
        reordering is found at the first row it touches, unless whoever did it also rewrote
        every row after it. And the trail makes sense: every ``started`` of an asked call
        (``decision`` ask) follows, in its thread and call, an ``approval_decided`` approve or
        edit of the same ``args_hash`` (rows without an args hash, older than schema version 2,
        are not checked).

        Cannot prove, alone: that nothing was rewritten or cut off at the end. The chain has no
        key, so anyone who can write the database can recompute every hash from an edit
        onwards, or drop the last rows, and it verifies. Two things catch that:

        - ``head``: a ``SEQ:HASH`` taken earlier with `head` and kept outside the database. Row
          SEQ must still be there with that hash; the result then says how many rows came
          after it (``rows_after_head``). A bare hash (the old form) must be some row's.
        - ``public_key``: the checkpoints signed with its private key (`sign`) must exist, each
          signature must hold, and each checkpoint's row must have the hash that was signed.
          So any rewrite at or before the last signed row is caught by whoever holds only the
          public key. Checkpoints by other keys are counted, not checked.

        **From a checkpoint** (``full=False``, the default, with a ``SEQ:HASH`` head or a key):
        the run starts after the latest of the given head and the last checkpoint signed with
        the key. Before any row is recomputed, that checkpoint's signature must hold and its
        row (and the head's row) must still have the recorded hash; then only the rows after
        the start are recomputed, their chain going on from that hash, so the cost does not
        grow with the rows before it. The result says where (`Verification.checked_from`,
        ``rows_checked``, ``vouched_by``); ``rows`` still counts every row up to the last
        that verified. What the start vouches for: rewriting a row before it so that the chain
        still holds changes every later hash up to the start's, and is caught. What it does
        not: a row before the start edited *without* fixing the hashes is not read, so only
        ``full=True`` finds it; the earlier checkpoints by the key are not re-checked either.
        Run ``full=True`` from time to time (and before signing, so a checkpoint only ever
        vouches for rows that verified). When the start does not hold (no checkpoint by the
        key, a signature that fails, a checkpoint or head past the end of the log, a row
        whose hash is not the one recorded), the run is a full one, which names the problem
        as it always did; a bare-hash head is also always checked by a full run. With neither
        a head nor a key, the run is full: no checkpoint in the database itself is trusted
        (a ``SEQ:HASH`` stored beside the rows proves nothing against whoever can write them).

        The meaning check from a checkpoint: a ``started`` of an asked call after the start
        whose approval is not among the rows read is looked up, by thread and call (the
        ``handrail_audit_call`` index), among the rows at or before the start: an approval
        there (approve or edit of the same args hash) counts, as it would on a full run. Those
        rows are taken as found, like every row before the start.
        """
        parsed = None if head is None else parse_head(head)
        mine: list[Anchor] = []
        others = 0
        if public_key is not None:
            kid = key_id(public_key)
            anchors = self.anchors()
            mine = [a for a in anchors if a.key_id == kid]
            others = len(anchors) - len(mine)
        start = None
        if not full and not self._empty:
            start = choose_start(parsed, public_key, mine, partial(row_hash, self.store))
        check = ChainCheck(
            head=parsed,
            public_key=public_key,
            anchors=mine if start is None else mine[-1:],
            other_anchors=others,
            start=start,
            anchor_count=len(mine),
            approved_before=partial(approved_before, self.store),
        )
        where, params = ("", ()) if start is None else ("seq > ?", (start.seq,))
        for record in self._scan(self._select, where, params):
            failed = check.feed(record)
            if failed is not None:
                return failed
        return check.result()

    def export(
        self,
        *,
        thread_id: str | None = None,
        tool: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> Iterator[dict[str, Any]]:
        """The rows in ``seq`` order as dicts (payload and response parsed back), streaming.

        Filters: one thread, one tool, and the window ``since <= at < until`` (compared as
        instants; a naive datetime is taken as UTC).
        """
        clauses, params = [], []
        if thread_id is not None:
            clauses.append("thread_id = ?")
            params.append(thread_id)
        if tool is not None:
            clauses.append("tool = ?")
            params.append(tool)
        since, until = utc(since), utc(until)
        for record in self._scan(self._select, " AND ".join(clauses), params):
            if not within(record[1], since, until):
                continue
            row = dict(zip(COLUMNS, record, strict=True))
            row["payload"] = json.loads(row["payload"])
            if row["response"] is not None:
                row["response"] = json.loads(row["response"])
            yield row

    def stats(self, *, since: datetime | None = None) -> list[ToolStats]:
        """Per tool (sorted by name): calls, first decisions, approval waits, retries, failures
        and escalations, over the events at or after ``since`` (a naive datetime is UTC).

        A call's decision is its first ``decided`` event (a later one, after an edit, is not a
        new call), counted when that event is in the window.

        Without ``since``, from a stored rollup (``handrail_audit_rollups``, once the schema has
        it): the figures over the rows up to a seq, with only the rows after it read, and each
        of their calls looked up once by thread and call; a writable log then keeps the new
        rollup. So the cost follows the rows appended since the last call, not the log's size.
        A rollup whose row is gone or has another hash (the log was cut or rewritten) is
        ignored, and the figures counted from the first row. With ``since``, every row is read.
        The percentiles are exact up to `Waits.EXACT` distinct waits per tool, then within 1%.
        """
        since = utc(since)
        kept = self._rollups() and since is None
        rollup = load_rollup(self.store) if kept else None
        fold = StatsFold(
            {} if rollup is None else rollup.tallies,
            after=0 if rollup is None else rollup.seq,
            history=partial(history, self.store),
            since=since,
        )
        where, params = ("", ()) if rollup is None else ("seq > ?", (rollup.seq,))
        for record in self._scan(f"{ROLLED}, seq", where, params):
            fold.add(record)
        if kept and not self.readonly and fold.last is not None:
            store_rollup(self.store, Rollup(*fold.last, tallies=fold.tallies))
        return fold.results()

    def policy_history(self) -> list[PolicyVersion]:
        """Every policy version the trail has seen, by first seen: its digest, its first and
        last rows' timestamps, and how many calls it decided (rows from before digests were
        recorded make one entry, digest None)."""
        seen: dict[str | None, PolicyVersion] = {}
        for at, event, digest in self._scan(self._columns(("at", "event", "policy_digest"))):
            version = seen.get(digest)
            if version is None:
                version = seen[digest] = PolicyVersion(digest=digest, first_seen=at, last_seen=at)
            version.last_seen = at
            version.rows += 1
            version.decisions += event == "decided"
        return list(seen.values())

    def _rollups(self) -> bool:
        """Whether the database keeps rollups (its schema has the table)."""
        if self._has_rollups is None:
            self._has_rollups = not self._empty and self.store.table_exists(ROLLUPS)
        return self._has_rollups

    def _lacking(self) -> frozenset[str]:
        """The columns a database not yet migrated lacks (read-only: nothing is migrated)."""
        with self.store.read() as sql:
            found = set(columns(sql.execute("SELECT * FROM handrail_audit LIMIT 0")))
        return frozenset(COLUMNS) - found

    def _columns(self, names: Sequence[str]) -> str:
        """``names`` for a SELECT, those the table lacks read as NULL."""
        return ", ".join(f"NULL AS {n}" if n in self._missing else n for n in names)

    def _writable(self) -> None:
        if self.readonly:
            raise HandrailError(f"{display(self.store.url)}: the audit log was opened read-only")

    def _scan(
        self, columns: str, where: str = "", params: Sequence[Any] = ()
    ) -> Iterator[tuple[Any, ...]]:
        """``SELECT columns … WHERE where`` in ``seq`` order, a page at a time (no lock held
        between pages, so a consumer may append meanwhile)."""
        if self._empty:
            return
        select = f"SELECT {columns}, seq FROM handrail_audit WHERE {where or 'TRUE'}"
        first = f"{select} ORDER BY seq LIMIT {_PAGE}"
        rest = f"{select} AND seq > ? ORDER BY seq LIMIT {_PAGE}"
        last: int | None = None
        while True:
            with self.store.read() as sql:
                if last is None:
                    page = sql.execute(first, params).fetchall()
                else:
                    page = sql.execute(rest, (*params, last)).fetchall()
            for record in page:
                yield record[:-1]
            if len(page) < _PAGE:
                return
            last = page[-1][-1]


def _last(sql: Sql) -> tuple[int, str] | None:
    """The last row's seq and hash."""
    row = sql.execute("SELECT seq, hash FROM handrail_audit ORDER BY seq DESC LIMIT 1").fetchone()
    return None if row is None else (int(row[0]), str(row[1]))


def _anchor(row: Sequence[Any]) -> Anchor:
    seq, digest, signed_at, key, signature = row
    return Anchor(
        seq=int(seq),
        hash=str(digest),
        signed_at=str(signed_at),
        key_id=str(key),
        signature=str(signature),
    )
