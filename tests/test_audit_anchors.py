"""Audit anchors: heads as ``SEQ:HASH``, checkpoints signed with an Ed25519 key that catch a
rewrite with only the public key, and the trail's meaning (a start of an asked call follows an
approval of the same arguments)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import stat
from collections.abc import Iterator
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from langgraph.types import Command
from support import CTX, Raw, agent, approve, call, config, edit, table_rows, turn
from test_audit import GENESIS, T0, event, insert, recompute, rows, six, unguard

from handrail import Policy
from handrail.audit import (
    AuditLog,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
)
from handrail.cli import main
from handrail.errors import HandrailError
from handrail.storage._sqlite import connect
from handrail.tools.demo import banking_tools

pytestmark = pytest.mark.backends("sqlite", "postgresql")

H1, H2 = "1" * 64, "2" * 64  # args hashes


@pytest.fixture
def log(db: str | Path) -> Iterator[AuditLog]:
    audit = AuditLog(db)
    yield audit
    audit.close()


@pytest.fixture
def full(log: AuditLog) -> AuditLog:
    """A log of six rows."""
    assert len(log.append(six())) == 6
    return log


@pytest.fixture
def key(tmp_path: Path) -> tuple[Path, Path]:
    """A key pair on disk: (private PEM, public PEM)."""
    return generate_keypair(tmp_path / "audit.pem")


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run the CLI, expect exit 2, nothing on stdout and one line on stderr; return it."""
    code, out, err = cli(capsys, *argv)
    assert (code, out) == (2, ""), (code, out, err)
    assert len(err.splitlines()) == 1 and err.startswith("handrail: "), err
    return err.strip()


def rewrite_from(db: str | Path, seq: int, **changes: Any) -> None:
    """Forge row ``seq`` with ``changes`` and recompute every hash after it: a chain that
    verifies on its own."""
    stored = rows(db)
    with closing(Raw(db)) as conn:
        unguard(conn)
        conn.execute("DELETE FROM handrail_audit WHERE seq >= ?", (seq,))
        prev = stored[seq - 2]["hash"] if seq > 1 else GENESIS
        for row in stored[seq - 1 :]:
            forged = {**row, **(changes if row["seq"] == seq else {}), "prev_hash": prev}
            forged["hash"] = prev = recompute(forged)
            insert(conn, forged)


def anchors(db: str | Path) -> list[dict[str, Any]]:
    return table_rows(db, "SELECT * FROM handrail_audit_anchors ORDER BY seq")


# -- heads ---------------------------------------------------------------------------------------


def test_a_head_is_seq_and_hash_and_verify_counts_the_rows_after_it(
    full: AuditLog, db: str | Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kept = full.head()
    assert kept == f"6:{rows(db)[-1]['hash']}"
    full.append([event("started", call="c9", seq=0), event("started", call="c9", seq=1)])
    result = full.verify(head=kept)
    assert (result.ok, result.rows, result.rows_after_head) == (True, 8, 2)
    assert result.head == full.head() and result.head != kept
    code, out, _ = cli(capsys, "audit", "verify", "--db", str(db), "--head", str(kept))
    assert code == 0
    assert out.splitlines() == [
        f"audit ok: 8 rows, head {full.head()}",
        f"2 row(s) added after head {kept}",
    ]
    assert cli(capsys, "audit", "head", "--db", str(db)) == (0, f"{full.head()}\n", "")
    code, out, _ = cli(capsys, "audit", "verify", "--db", str(db), "--head", str(kept), "--json")
    assert code == 0 and json.loads(out) == dataclasses.asdict(full.verify(head=kept))
    assert json.loads(out)["rows_after_head"] == 2
    code, out, _ = cli(
        capsys, "audit", "verify", "--db", str(db), "--head", "9:" + "a" * 64, "--json"
    )
    assert code == 1 and json.loads(out)["ok"] is False


def test_a_head_whose_row_was_rewritten_is_caught_at_that_row(
    full: AuditLog, db: str | Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kept = full.head()
    rewrite_from(db, 2, approver="mallory")
    assert full.verify().ok
    result = full.verify(head=kept)
    assert not result.ok and result.bad_row == 6 and result.rows == 5
    code, out, _ = cli(capsys, "audit", "verify", "--db", str(db), "--head", str(kept))
    assert code == 1 and out.startswith("audit failed: row 6: its hash is not the one of head")


@pytest.mark.parametrize("head", ["0:" + "a" * 64, "x:" + "a" * 64, "6:", "6:xyz", "a" * 63])
def test_a_malformed_head_is_refused(
    full: AuditLog, db: str | Path, capsys: pytest.CaptureFixture[str], head: str
) -> None:
    line = refused(capsys, "audit", "verify", "--db", str(db), "--head", head)
    assert line.startswith("handrail: --head must be SEQ:HASH")
    if ":" in head:
        with pytest.raises(HandrailError, match="is not SEQ:HASH"):
            full.verify(head=head)


# -- keys and signing ----------------------------------------------------------------------------


def test_keygen_writes_a_private_and_a_public_pem_and_never_overwrites(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_path = tmp_path / "k.pem"
    code, out, _ = cli(capsys, "audit", "keygen", "--out", str(out_path))
    public = tmp_path / "k.pem.pub"
    assert code == 0 and str(out_path) in out and str(public) in out
    assert stat.S_IMODE(out_path.stat().st_mode) == 0o600
    assert out_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    private_key = serialization.load_pem_private_key(out_path.read_bytes(), password=None)
    assert isinstance(private_key, Ed25519PrivateKey)
    raw = private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert f"key {hashlib.sha256(raw).hexdigest()[:16]}:" in out
    before = out_path.read_bytes(), public.read_bytes()
    assert "exists" in refused(capsys, "audit", "keygen", "--out", str(out_path))
    assert (out_path.read_bytes(), public.read_bytes()) == before
    lone = tmp_path / "lone.pem"
    Path(f"{lone}.pub").write_text("taken")
    assert "lone.pem.pub exists" in refused(capsys, "audit", "keygen", "--out", str(lone))
    assert not lone.exists()


def test_sign_keeps_a_checkpoint_anyone_can_check_from_the_spec(
    full: AuditLog, db: str | Path, key: tuple[Path, Path]
) -> None:
    private = load_private_key(key[0])
    anchor = full.sign(private, now=T0)
    seq, digest = str(full.head()).split(":")
    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert anchors(db) == [
        {
            "seq": 6,
            "hash": digest,
            "signed_at": "2024-03-01T10:00:00+00:00",
            "key_id": hashlib.sha256(raw).hexdigest()[:16],
            "signature": anchor.signature,
        }
    ]
    assert (anchor.head, anchor.key_id) == (full.head(), key_id(private))
    # checked here with cryptography alone, from the documented message
    public = load_public_key(key[1])
    public.verify(
        base64.b64decode(anchor.signature), f"handrail-audit-anchor:v1:{seq}:{digest}".encode()
    )
    assert full.sign(private) == anchor and len(anchors(db)) == 1  # the same head again: kept
    other = Ed25519PrivateKey.generate()
    with pytest.raises(
        HandrailError, match=f"row 6 already has a checkpoint, by key {anchor.key_id}"
    ):
        full.sign(other)
    readonly = AuditLog(db, readonly=True)
    try:
        with pytest.raises(HandrailError, match="read-only"):
            readonly.sign(private)
        assert readonly.anchors() == [anchor]
    finally:
        readonly.close()


def test_signing_an_empty_log_is_refused(
    log: AuditLog,
    db: str | Path,
    key: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(HandrailError, match="the audit log is empty: there is no head to sign"):
        log.sign(load_private_key(key[0]))
    line = refused(capsys, "audit", "sign", "--db", str(db), "--key", str(key[0]))
    assert line.endswith("the audit log is empty: there is no head to sign")
    assert anchors(db) == []
    missing = tmp_path / "missing.db"
    line = refused(capsys, "audit", "sign", "--db", str(missing), "--key", str(key[0]))
    assert line == f"handrail: no database at {missing}" and not missing.exists()


def test_cli_signs_and_verifies_with_the_public_key(
    full: AuditLog, db: str | Path, key: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    kid = key_id(load_public_key(key[1]))
    db_args = ("--db", str(db))
    assert cli(capsys, "audit", "sign", *db_args, "--key", str(key[0])) == (
        0,
        f"{full.head()} signed by {kid}\n",
        "",
    )
    code, out, _ = cli(capsys, "audit", "verify", *db_args, "--public-key", str(key[1]))
    assert code == 0
    assert out.splitlines() == [
        f"audit ok: 6 rows, head {full.head()}",
        f"1 checkpoint(s) signed by key {kid} hold, the last {full.head()}",
    ]


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "cannot read the key"),
        (b"junk", "not a PEM private key"),
        ("public", "not a PEM private key"),
        ("encrypted", "the private key is encrypted"),
    ],
)
def test_cli_sign_refuses_a_bad_key(
    full: AuditLog,
    db: str | Path,
    key: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: Any,
    says: str,
) -> None:
    bad = tmp_path / "bad.pem"
    if content == "public":
        bad.write_bytes(key[1].read_bytes())
    elif content == "encrypted":
        pem = load_private_key(key[0]).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
        bad.write_bytes(pem)
    elif content is not None:
        bad.write_bytes(content)
    assert says in refused(capsys, "audit", "sign", "--db", str(db), "--key", str(bad))
    assert anchors(db) == []
    line = refused(capsys, "audit", "verify", "--db", str(db), "--public-key", str(key[0]))
    assert "not a PEM public key (a private key: give its .pub file)" in line


# -- what a signed checkpoint catches ------------------------------------------------------------


def test_a_rewrite_before_the_last_checkpoint_is_caught_with_only_the_public_key(
    log: AuditLog, db: str | Path, key: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    log.append(six()[:4])
    anchor = log.sign(load_private_key(key[0]))
    log.append(six()[4:])
    public = load_public_key(key[1])
    assert log.verify(public_key=public).ok
    rewrite_from(db, 2, reason="approved by the board", approver="mallory")
    assert log.verify().ok  # every later hash recomputed: the chain alone cannot tell
    result = log.verify(public_key=public)
    assert not result.ok and result.bad_row == 4 and result.rows == 3
    assert result.problem == (
        f"row 4: its hash is not the one signed by key {anchor.key_id} at {anchor.signed_at}: "
        "the log was rewritten at or before row 4"
    )
    db_args = ("--db", str(db))
    assert cli(capsys, "audit", "verify", *db_args)[0] == 0
    code, out, err = cli(capsys, "audit", "verify", *db_args, "--public-key", str(key[1]))
    assert (code, out, err) == (1, f"audit failed: {result.problem}\n", "")


def test_a_rewrite_after_the_last_checkpoint_needs_a_later_one(
    log: AuditLog, db: str | Path, key: tuple[Path, Path]
) -> None:
    log.append(six()[:4])
    signed = log.sign(load_private_key(key[0]))
    log.append(six()[4:])
    kept, public = log.head(), load_public_key(key[1])
    result = log.verify(public_key=public)
    assert result.ok and result.signed_head == signed.head and result.anchors == 1
    rewrite_from(db, 5, approver="mallory")
    assert log.verify(public_key=public).ok  # after the last signed row: not covered
    assert not log.verify(head=kept).ok  # a head kept elsewhere is


def test_truncation_past_a_checkpoint_is_caught(
    full: AuditLog, db: str | Path, key: tuple[Path, Path]
) -> None:
    full.sign(load_private_key(key[0]))
    with closing(Raw(db)) as conn:
        unguard(conn)
        conn.execute("DELETE FROM handrail_audit WHERE seq > 4")
    assert full.verify().ok
    result = full.verify(public_key=load_public_key(key[1]))
    assert not result.ok and result.bad_row is None and result.rows == 4
    assert result.problem is not None and result.problem.startswith("the checkpoint at row 6")
    assert "past the end of the log (row 4): rows were removed" in result.problem


def forge_signature(conn: Raw, kid: str, digest: str) -> None:
    """A checkpoint of row 6 in the key's name, with a signature that is not the key's."""
    stranger = Ed25519PrivateKey.generate()
    signature = base64.b64encode(stranger.sign(f"handrail-audit-anchor:v1:6:{digest}".encode()))
    conn.execute(
        "INSERT INTO handrail_audit_anchors VALUES (?, ?, ?, ?, ?)",
        (6, digest, "2024-03-02T00:00:00+00:00", kid, signature.decode()),
    )


def move_anchor(conn: Raw, kid: str, digest: str) -> None:
    """The row-4 checkpoint moved to row 6 (its signature is over 4)."""
    conn.execute("UPDATE handrail_audit_anchors SET seq = 6, hash = ? WHERE seq = 4", (digest,))


def rehash_anchor(conn: Raw, kid: str, digest: str) -> None:
    """The row-4 checkpoint's hash replaced by the forged chain's."""
    (forged,) = conn.execute("SELECT hash FROM handrail_audit WHERE seq = 4").fetchone()
    conn.execute("UPDATE handrail_audit_anchors SET hash = ? WHERE seq = 4", (forged,))


def garble_signature(conn: Raw, kid: str, digest: str) -> None:
    conn.execute("UPDATE handrail_audit_anchors SET signature = 'not base64!' WHERE seq = 4")


@pytest.mark.parametrize(
    ("forge", "seq"),
    [(forge_signature, 6), (move_anchor, 6), (rehash_anchor, 4), (garble_signature, 4)],
)
def test_a_forged_or_edited_checkpoint_is_caught(
    log: AuditLog, db: str | Path, key: tuple[Path, Path], forge: Any, seq: int
) -> None:
    log.append(six()[:4])
    anchor = log.sign(load_private_key(key[0]))
    log.append(six()[4:])
    if forge is rehash_anchor:
        rewrite_from(db, 2, approver="mallory")
    with closing(Raw(db)) as conn:
        if forge is not forge_signature:
            unguard(conn, "handrail_audit_anchors")
        forge(conn, anchor.key_id, rows(db)[5]["hash"])
    assert log.verify().ok
    result = log.verify(public_key=load_public_key(key[1]))
    assert not result.ok and result.bad_row is None, result
    assert result.problem == (
        f"the checkpoint at row {seq} claiming key {anchor.key_id} does not verify with it "
        "(forged or edited)"
    )


def test_checkpoints_by_other_keys_are_ignored_and_counted(
    log: AuditLog, db: str | Path, key: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    mine, theirs, nobody = (
        load_private_key(key[0]),
        Ed25519PrivateKey.generate(),
        Ed25519PrivateKey.generate(),
    )
    log.append(six()[:3])
    log.sign(theirs)
    log.append(six()[3:])
    log.sign(mine)
    result = log.verify(public_key=mine.public_key())
    assert (result.ok, result.anchors, result.other_anchors) == (True, 1, 1)
    assert result.signed_head == log.head()
    theirs_result = log.verify(public_key=theirs.public_key())
    assert theirs_result.ok and theirs_result.signed_head == f"3:{rows(db)[2]['hash']}"
    result = log.verify(public_key=nobody.public_key())
    assert not result.ok and result.rows == 6 and result.bad_row is None
    assert result.problem == f"no checkpoint signed by key {key_id(nobody)} (2 by other keys)"
    code, out, _ = cli(capsys, "audit", "verify", "--db", str(db), "--public-key", str(key[1]))
    assert code == 0 and out.splitlines()[1].endswith("; 1 by other keys ignored")


def test_a_readonly_database_without_checkpoints_fails_with_a_key(
    tmp_path: Path, key: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "checkpoints.db"
    with closing(connect(other)) as conn:
        conn.execute("CREATE TABLE checkpoints (x)")
    code, out, _ = cli(capsys, "audit", "verify", "--db", str(other), "--public-key", str(key[1]))
    kid = key_id(load_public_key(key[1]))
    assert (code, out) == (1, f"audit failed: no checkpoint signed by key {kid}\n")
    with closing(connect(other)) as conn:
        assert [n for (n,) in conn.execute("SELECT name FROM sqlite_master")] == ["checkpoints"]


# -- the trail's meaning -------------------------------------------------------------------------


def asked(
    *decisions: tuple[str, str | None, str, str],
    started: tuple[str, str] = ("t-1", "c1"),
    start_hash: str | None = H1,
) -> list[Any]:
    """An asked call: decided, requested, then ``approval_decided`` rows given as (decision,
    args hash, thread, call), then the start of ``started`` (thread, call) with ``start_hash``."""
    thread, call_id = started
    seq = iter(range(100))
    return [
        event(
            "decided",
            thread=thread,
            call=call_id,
            seq=next(seq),
            decision="ask",
            args_hash=start_hash,
        ),
        event(
            "approval_requested",
            thread=thread,
            call=call_id,
            seq=next(seq),
            decision="ask",
            args_hash=start_hash,
        ),
        *(
            event(
                "approval_decided",
                thread=t,
                call=c,
                seq=next(seq),
                decision=d,
                args_hash=h,
                approver="alice",
            )
            for d, h, t, c in decisions
        ),
        event(
            "started",
            thread=thread,
            call=call_id,
            seq=next(seq),
            decision="ask",
            args_hash=start_hash,
        ),
    ]


UNAPPROVED = {
    "no approval": asked(),
    "another args hash": asked(("approve", H2, "t-1", "c1")),
    "rejected": asked(("reject", H1, "t-1", "c1")),
    "responded": asked(("respond", H1, "t-1", "c1")),
    "another thread": asked(("approve", H1, "t-2", "c1")),
    "another call": asked(("approve", H1, "t-1", "c9")),
    "an approval without an args hash": asked(("approve", None, "t-1", "c1")),
    "an approval after the start": [
        *asked(),
        event("approval_decided", call="c1", seq=9, decision="approve", args_hash=H1),
    ],
}


@pytest.mark.parametrize("events", UNAPPROVED.values(), ids=UNAPPROVED.keys())
def test_a_start_of_an_asked_call_without_an_approval_of_its_args_is_caught(
    log: AuditLog, db: str | Path, capsys: pytest.CaptureFixture[str], events: list[Any]
) -> None:
    log.append(six())  # other rows first: the bad one is named by its seq
    assert len(log.append(events)) == len(events)
    bad = 6 + next(i for i, e in enumerate(events, 1) if e.event == "started")
    result = log.verify()
    problem = (
        f"row {bad}: 'started' of an asked call (tool transfer_funds) with no approval of the "
        "same arguments"
    )
    assert (result.ok, result.bad_row, result.rows, result.problem) == (
        False,
        bad,
        bad - 1,
        problem,
    )
    assert result.head == f"{bad - 1}:{rows(db)[bad - 2]['hash']}"
    code, out, _ = cli(capsys, "audit", "verify", "--db", str(db))
    assert (code, out) == (1, f"audit failed: {problem}\n")


APPROVED = {
    "approved": asked(("approve", H1, "t-1", "c1")),
    "edited to these args": asked(("edit", H1, "t-1", "c1")),
    "approved twice (two approvers)": asked(
        ("approve", H1, "t-1", "c1"), ("approve", H1, "t-1", "c1")
    ),
    "a retry after an escalation": [
        *asked(("approve", H1, "t-1", "c1")),
        event("failed", call="c1", seq=10, decision="ask", args_hash=H1),
        event("approval_decided", call="c1", seq=11, decision="retry", args_hash=H1),
        event("started", call="c1", seq=12, decision="ask", args_hash=H1),
    ],
    "written before schema v2 (no args hash)": asked(start_hash=None),
    "allowed, not asked": [event("started", call="c1", decision="allow", args_hash=H1)],
    "an approval missing, refused": [
        *asked()[:-1],
        event("approval_missing", call="c1", seq=5, decision="ask", args_hash=H1),
    ],
}


@pytest.mark.parametrize("events", APPROVED.values(), ids=APPROVED.keys())
def test_a_start_after_an_approval_of_its_args_verifies(log: AuditLog, events: list[Any]) -> None:
    assert len(log.append(events)) == len(events)
    assert log.verify().ok


@pytest.mark.parametrize("decide", ["approve", "edit"])
def test_a_real_graph_s_trail_verifies_and_is_checked(
    db: str | Path, policy: Policy, decide: str
) -> None:
    graph = agent(
        db, banking_tools(db), policy, turn(call("transfer_funds", to="carol", amount=5000.0))
    )
    assert "__interrupt__" in graph.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    resume = (
        approve()
        if decide == "approve"
        else edit("transfer_funds", {"to": "carol", "amount": 6000.0})
    )
    graph.invoke(Command(resume=resume), config(), context=CTX)
    trail = AuditLog(db, readonly=True)
    try:
        started = [r for r in trail.export() if r["event"] == "started"]
        assert [(r["decision"], r["args_hash"] is not None) for r in started] == [("ask", True)]
        assert trail.verify().ok
    finally:
        trail.close()
    (approval,) = [r["seq"] for r in rows(db) if r["event"] == "approval_decided"]
    # the approval now names other arguments, every hash recomputed: only the meaning is wrong
    rewrite_from(db, approval, args_hash=H2)
    trail = AuditLog(db, readonly=True)
    try:
        result = trail.verify()
    finally:
        trail.close()
    assert not result.ok and result.bad_row == started[0]["seq"], result
    assert "'started' of an asked call (tool transfer_funds) with no approval" in str(
        result.problem
    )


def test_the_signing_time_is_kept_in_utc(full: AuditLog, key: tuple[Path, Path]) -> None:
    paris = datetime(2024, 3, 1, 11, 0, tzinfo=timezone(timedelta(hours=1)))
    assert full.sign(load_private_key(key[0]), now=paris).signed_at == "2024-03-01T10:00:00+00:00"
