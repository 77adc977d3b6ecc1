"""Handrail's tables, versioned: the same columns and constraints in SQLite and PostgreSQL.

Each `Migration` brings the schema from ``version - 1`` to ``version``; `Store.migrate` applies
the missing ones in one transaction and records them in ``handrail_schema``. Add a migration for
every change; never edit one that has shipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from handrail.storage._schema_audit import audit_rollup_tables
from handrail.storage._schema_limits import limit_tables

if TYPE_CHECKING:
    from handrail.storage._base import Sql

_SECRETS = (
    "CREATE TABLE IF NOT EXISTS handrail_secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL)"
)

_LEDGER = """
CREATE TABLE IF NOT EXISTS handrail_ledger (
    thread_id     TEXT NOT NULL,
    tool_call_id  TEXT NOT NULL,
    args_hash     TEXT NOT NULL,
    tool          TEXT NOT NULL,
    args          TEXT NOT NULL DEFAULT '{}',
    record        TEXT,
    attempt       INTEGER NOT NULL,
    started_at    TEXT NOT NULL,
    pid           INTEGER NOT NULL,
    host          TEXT NOT NULL,
    outcome       TEXT CHECK (outcome IN ('succeeded', 'failed')),
    result        TEXT,
    error         TEXT,
    finished_at   TEXT,
    PRIMARY KEY (thread_id, tool_call_id, args_hash)
)
"""

_APPROVALS = """
CREATE TABLE IF NOT EXISTS handrail_approvals (
    thread_id     TEXT NOT NULL,
    tool_call_id  TEXT NOT NULL,
    kind          TEXT NOT NULL DEFAULT 'approval',
    seq           INTEGER NOT NULL,
    tool          TEXT NOT NULL,
    args_hash     TEXT NOT NULL,
    approvers     TEXT NOT NULL,
    approvals     TEXT NOT NULL,
    item          TEXT NOT NULL,
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
)
"""
"""One row per asked call. ``item`` is the listing as JSON, written once per change so a listing
reads one text column per row. A row waits while its status is ``open`` or ``deciding`` (claimed)
and no outcome is recorded; a claimed row with an outcome is settled when its claim is released."""

_WAITING_INDEXES = [
    """CREATE INDEX IF NOT EXISTS handrail_approvals_waiting
    ON handrail_approvals (requested_at, thread_id, seq)
    WHERE status IN ('open', 'deciding') AND outcome IS NULL""",
    """CREATE INDEX IF NOT EXISTS handrail_approvals_waiting_tool
    ON handrail_approvals (tool, requested_at)
    WHERE status IN ('open', 'deciding') AND outcome IS NULL""",
    """CREATE INDEX IF NOT EXISTS handrail_approvals_deadline
    ON handrail_approvals (expires_at)
    WHERE status IN ('open', 'deciding') AND outcome IS NULL""",
]


def audit_columns(seq_type: str, float_type: str) -> str:
    """The audit table's columns (SQLite's INTEGER and REAL are PostgreSQL's BIGINT and DOUBLE
    PRECISION: PostgreSQL's REAL has 24 bits and would not give back the hashed value)."""
    return f"""
    seq           {seq_type} PRIMARY KEY,
    at            TEXT NOT NULL,
    event         TEXT NOT NULL,
    graph         TEXT NOT NULL,
    agent_id      TEXT,
    thread_id     TEXT,
    tool_call_id  TEXT NOT NULL,
    tool          TEXT NOT NULL,
    call_seq      INTEGER NOT NULL,
    payload       TEXT NOT NULL,
    response      TEXT,
    retry_count   INTEGER NOT NULL,
    decision      TEXT,
    rule_id       TEXT,
    approver      TEXT,
    duration_ms   {float_type},
    reason        TEXT,
    step          TEXT UNIQUE,
    prev_hash     TEXT NOT NULL,
    hash          TEXT NOT NULL
"""


SQLITE_AUDIT_COLUMNS = audit_columns("INTEGER", "REAL")

_SQLITE_AUDIT = [
    f"CREATE TABLE IF NOT EXISTS handrail_audit ({SQLITE_AUDIT_COLUMNS})",
    """CREATE TRIGGER IF NOT EXISTS handrail_audit_no_update BEFORE UPDATE ON handrail_audit
    BEGIN SELECT RAISE(ABORT, 'handrail_audit is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS handrail_audit_no_delete BEFORE DELETE ON handrail_audit
    BEGIN SELECT RAISE(ABORT, 'handrail_audit is append-only'); END""",
]

_POSTGRES_AUDIT = [
    f"CREATE TABLE IF NOT EXISTS handrail_audit ({audit_columns('BIGINT', 'DOUBLE PRECISION')})",
    """CREATE OR REPLACE FUNCTION handrail_audit_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'handrail_audit is append-only'; END $$""",
    """CREATE TRIGGER handrail_audit_no_change BEFORE UPDATE OR DELETE ON handrail_audit
    FOR EACH ROW EXECUTE FUNCTION handrail_audit_append_only()""",
    """CREATE TRIGGER handrail_audit_no_truncate BEFORE TRUNCATE ON handrail_audit
    FOR EACH STATEMENT EXECUTE FUNCTION handrail_audit_append_only()""",
]


def _sqlite_v1(sql: Sql) -> list[str]:
    """Version 1 on SQLite; a file written before versions were kept gets its missing columns."""
    statements = [_SECRETS, _LEDGER, _APPROVALS, *_WAITING_INDEXES, *_SQLITE_AUDIT]
    ledger = {r[1] for r in sql.execute("PRAGMA table_info(handrail_ledger)").fetchall()}
    if ledger and "record" not in ledger:
        statements.append("ALTER TABLE handrail_ledger ADD COLUMN record TEXT")
    approvals = {r[1] for r in sql.execute("PRAGMA table_info(handrail_approvals)").fetchall()}
    if approvals and "kind" not in approvals:
        statements.insert(
            0,
            "ALTER TABLE handrail_approvals ADD COLUMN kind TEXT NOT NULL DEFAULT 'approval'",
        )
    return statements


def _postgres_v1(sql: Sql) -> list[str]:
    return [_SECRETS, _LEDGER, _APPROVALS, *_WAITING_INDEXES, *_POSTGRES_AUDIT]


_THREADS = """
CREATE TABLE IF NOT EXISTS handrail_threads (
    thread_id     TEXT PRIMARY KEY,
    actor_id      TEXT NOT NULL,
    actor         TEXT NOT NULL,
    identified_by TEXT NOT NULL,
    graph         TEXT NOT NULL,
    pinned_at     TEXT NOT NULL
)
"""
"""The requester of each thread, pinned at its first run: ``actor_id`` is the normalised id,
``actor`` the `Actor` as JSON (id and roles) that every later run of the thread must name."""

_PROOFS = """
CREATE TABLE IF NOT EXISTS handrail_proofs (
    thread_id     TEXT NOT NULL,
    tool_call_id  TEXT NOT NULL,
    args_hash     TEXT NOT NULL,
    approver      TEXT NOT NULL,
    rule_id       TEXT,
    roles         TEXT NOT NULL,
    identified_by TEXT NOT NULL,
    decided_at    TEXT NOT NULL,
    kind          TEXT NOT NULL DEFAULT 'approve' CHECK (kind IN ('approve', 'retry')),
    attempt       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (thread_id, tool_call_id, args_hash, approver, kind, attempt)
)
"""
"""One row per approval a person gave: the call, the exact arguments (their hash), the
approver's normalised id and the roles they held. ``execute`` runs an asked call only when enough
distinct approvers are here for its arguments; state that says "approved" proves nothing. A
person's ``retry`` of an escalated call is a row too (``kind`` retry, the new ``attempt``): only
it lets a call whose last attempt's outcome is unknown run again."""

_ANCHORS = """
CREATE TABLE IF NOT EXISTS handrail_audit_anchors (
    seq           BIGINT PRIMARY KEY,
    hash          TEXT NOT NULL,
    signed_at     TEXT NOT NULL,
    key_id        TEXT NOT NULL,
    signature     TEXT NOT NULL
)
"""
"""Signed checkpoints of the audit chain (`handrail audit sign`): an Ed25519 signature over
``seq:hash``, checked with the public key alone."""

_AUDIT_V2 = [
    "ALTER TABLE handrail_audit ADD COLUMN args_hash TEXT",
    "ALTER TABLE handrail_audit ADD COLUMN identified_by TEXT",
]
"""The audit's new columns: the call's args hash (so `verify` can check that every start of an
asked call follows an approval of the same arguments) and how a decision's approver was
identified. Rows written before them hold NULL, and hash as they did."""


_AUDIT_CALLS = (
    "CREATE INDEX IF NOT EXISTS handrail_audit_call ON handrail_audit (thread_id, tool_call_id)"
)
"""One call's rows (``export --thread``, a call's next event number after a forged state)."""

_SQLITE_ANCHORS_GUARD = [
    """CREATE TRIGGER IF NOT EXISTS handrail_audit_anchors_no_update
    BEFORE UPDATE ON handrail_audit_anchors
    BEGIN SELECT RAISE(ABORT, 'handrail_audit_anchors is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS handrail_audit_anchors_no_delete
    BEFORE DELETE ON handrail_audit_anchors
    BEGIN SELECT RAISE(ABORT, 'handrail_audit_anchors is append-only'); END""",
]

_POSTGRES_ANCHORS_GUARD = [
    """CREATE TRIGGER handrail_audit_anchors_no_change
    BEFORE UPDATE OR DELETE ON handrail_audit_anchors
    FOR EACH ROW EXECUTE FUNCTION handrail_audit_append_only()""",
    """CREATE TRIGGER handrail_audit_anchors_no_truncate BEFORE TRUNCATE ON handrail_audit_anchors
    FOR EACH STATEMENT EXECUTE FUNCTION handrail_audit_append_only()""",
]


def _sqlite_v2(sql: Sql) -> list[str]:
    return [_THREADS, _PROOFS, _ANCHORS, *_AUDIT_V2, _AUDIT_CALLS, *_SQLITE_ANCHORS_GUARD]


def _postgres_v2(sql: Sql) -> list[str]:
    return [_THREADS, _PROOFS, _ANCHORS, *_AUDIT_V2, _AUDIT_CALLS, *_POSTGRES_ANCHORS_GUARD]


_LEDGER_V3 = [
    "ALTER TABLE handrail_ledger ADD COLUMN checkpoints TEXT",
    "ALTER TABLE handrail_ledger ADD COLUMN replayed_by TEXT",
    "ALTER TABLE handrail_ledger ADD COLUMN replay_of TEXT",
    "ALTER TABLE handrail_ledger ADD COLUMN taken INTEGER NOT NULL DEFAULT 0",
    "CREATE INDEX IF NOT EXISTS handrail_ledger_args "
    "ON handrail_ledger (thread_id, args_hash, started_at)",
]
"""The checkpoints (JSON, by namespace) each attempt's step started from, the call that took a
row over, and for a call that replays a lost one, that call (``replay_of``) and whether the row's
attempt is still the one taken over (``taken``): see `handrail.storage._replays`. Rows written
before them are never taken for a lost call."""


def _v3(sql: Sql) -> list[str]:
    return list(_LEDGER_V3)


_OUTBOX = [
    """
    CREATE TABLE IF NOT EXISTS handrail_outbox (
        event_id      TEXT PRIMARY KEY,
        event         TEXT NOT NULL
            CHECK (event IN ('opened', 'escalated', 'reminder', 'expired')),
        thread_id     TEXT NOT NULL,
        tool_call_id  TEXT NOT NULL,
        requested_at  TEXT NOT NULL,
        occurred_at   TEXT NOT NULL,
        payload       TEXT NOT NULL,
        fanned_out_at TEXT
    )
    """,
    """CREATE INDEX IF NOT EXISTS handrail_outbox_new
    ON handrail_outbox (occurred_at) WHERE fanned_out_at IS NULL""",
    """CREATE INDEX IF NOT EXISTS handrail_outbox_request
    ON handrail_outbox (thread_id, tool_call_id, event, requested_at)""",
    """
    CREATE TABLE IF NOT EXISTS handrail_deliveries (
        event_id        TEXT NOT NULL,
        channel         TEXT NOT NULL,
        status          TEXT NOT NULL DEFAULT 'pending'
            CHECK (status IN ('pending', 'delivered', 'failed')),
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at TEXT NOT NULL,
        lease           TEXT,
        leased_until    TEXT,
        last_error      TEXT,
        delivered_at    TEXT,
        history         TEXT NOT NULL DEFAULT '[]',
        PRIMARY KEY (event_id, channel)
    )
    """,
    """CREATE INDEX IF NOT EXISTS handrail_deliveries_due
    ON handrail_deliveries (next_attempt_at) WHERE status = 'pending'""",
]
"""The notification outbox (`handrail.storage.outbox`): one row per event about a request
(opened, escalated, a reminder, expired), written in the transaction that changed the request;
and one delivery per event and channel, which a worker leases, sends and records (every attempt
in ``history``)."""


def _v4(sql: Sql) -> list[str]:
    return list(_OUTBOX)


_WEB_SESSIONS = [
    """
    CREATE TABLE IF NOT EXISTS handrail_web_sessions (
        id_hash     TEXT PRIMARY KEY,
        token       TEXT NOT NULL,
        csrf        TEXT NOT NULL,
        created_at  TEXT NOT NULL,
        expires_at  TEXT NOT NULL
    )
    """,
    """CREATE INDEX IF NOT EXISTS handrail_web_sessions_expiry
    ON handrail_web_sessions (expires_at)""",
]
"""The web inbox's sign-in sessions (`handrail.storage.web_sessions`): the SHA-256 hash of each
session's id (the id itself is only in the browser's cookie), the token it signed in with, its
CSRF token, and when it was made and ends."""


def _v5(sql: Sql) -> list[str]:
    return list(_WEB_SESSIONS)


_AUDIT_V6 = "ALTER TABLE handrail_audit ADD COLUMN policy_digest TEXT"
"""The digest of the policy each audited step was taken under (`Policy.digest`). Rows written
before it hold NULL, and hash as they did."""


def _v6(sql: Sql) -> list[str]:
    return [_AUDIT_V6]


_POLICY_DIGESTS_V7 = [
    "ALTER TABLE handrail_approvals ADD COLUMN policy_digest TEXT",
    "ALTER TABLE handrail_proofs ADD COLUMN policy_digest TEXT",
]
"""The digest of a policy (`Policy.digest`) on each request and each approval: for a request,
that of the policy whose decision asked it (an escalation: the one that let the call run); for
an approval, that of the policy the approval was checked under. Rows written before them hold
NULL."""


def _v7(sql: Sql) -> list[str]:
    return list(_POLICY_DIGESTS_V7)


_WAITING_KEY_V9 = [
    "DROP INDEX IF EXISTS handrail_approvals_waiting",
    """CREATE INDEX handrail_approvals_waiting
    ON handrail_approvals (requested_at, thread_id, seq, tool_call_id)
    WHERE status IN ('open', 'deciding') AND outcome IS NULL""",
]
"""The waiting index ends with ``tool_call_id``: the listing's order becomes a total one (two
requests of one thread asked in the same microsecond tie on the other three columns), so a page
of it can start after any row by seeking the index (`handrail.storage._pages`)."""


def _v9(sql: Sql) -> list[str]:
    return list(_WAITING_KEY_V9)


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema version: the statements that reach it, per dialect."""

    version: int
    sqlite: Callable[[Sql], list[str]]
    postgresql: Callable[[Sql], list[str]]

    def steps(self, dialect: str, sql: Sql) -> list[str]:
        """The statements for ``dialect``, given the database as it is."""
        build: Any = self.sqlite if dialect == "sqlite" else self.postgresql
        statements: list[str] = build(sql)
        return statements


MIGRATIONS = [
    Migration(1, _sqlite_v1, _postgres_v1),
    Migration(2, _sqlite_v2, _postgres_v2),
    Migration(3, _v3, _v3),
    Migration(4, _v4, _v4),
    Migration(5, _v5, _v5),
    Migration(6, _v6, _v6),
    Migration(7, _v7, _v7),
    Migration(8, limit_tables, limit_tables),
    Migration(9, _v9, _v9),
    Migration(10, audit_rollup_tables, audit_rollup_tables),
]
"""Every version, in order."""

SCHEMA_VERSION = MIGRATIONS[-1].version
"""The schema this Handrail reads and writes."""
