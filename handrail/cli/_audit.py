"""``handrail audit verify / head / export / keygen / sign`` and ``handrail stats``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sqlite3
import sys
from datetime import datetime

import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
)

from handrail.audit import (
    AuditLog,
    ToolStats,
    Verification,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
)
from handrail.cli._parser import existing
from handrail.cli._render import stats_table, verdict
from handrail.cli._tables import out
from handrail.errors import HandrailError
from handrail.storage._base import display
from handrail.storage._schema_audit import ROLLUPS


def run_audit(args: argparse.Namespace) -> int:
    """``audit verify / head / export / keygen / sign`` and ``stats``.

    Every command but ``keygen`` needs the database to exist. All but ``sign`` open it read-only,
    so neither the file nor the audit table is ever created (no table: no rows). ``audit head``
    prints nothing for an empty log, and ``verify --head ''`` checks no head.
    """
    if args.command == "audit" and args.audit_command == "keygen":
        private, public = generate_keypair(args.out)
        key = key_id(load_public_key(public))
        if args.json:
            keys = {"key_id": key, "private_key": str(private), "public_key": str(public)}
            print(json.dumps(keys))
        else:
            print(f"key {key}: private key {private} (keep it secret), public key {public}")
        return 0
    args.db = existing(args.db)
    if args.command == "audit" and args.audit_command == "sign":
        return _sign(args.db, load_private_key(args.key), as_json=args.json)
    head = _head_arg(getattr(args, "head", None))
    public_key = load_public_key(args.public_key) if getattr(args, "public_key", None) else None
    log = AuditLog(args.db, readonly=True)
    try:
        if args.command == "stats":
            stats = _stats(args.db, log, args.since)
            if args.json:
                print(json.dumps([dataclasses.asdict(s) for s in stats], indent=2))
            else:
                out(stats_table(stats))
            return 0
        if args.audit_command == "verify":
            result = log.verify(head, public_key=public_key, full=args.full)
            if args.json:
                print(json.dumps(dataclasses.asdict(result), indent=2))
            else:
                print(verdict(result, head, public_key))
                if result.vouched_by is not None:
                    print(_extent(result), file=sys.stderr)
            return 0 if result.ok else 1
        if args.audit_command == "head":
            last = log.head()
            if args.json:
                print(json.dumps({"head": last}))
            elif last is not None:
                print(last)
            return 0
        rows = log.export(thread_id=args.thread, tool=args.tool, since=args.since, until=args.until)
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
        return 0
    finally:
        log.close()


def _stats(db: str, log: AuditLog, since: datetime | None) -> list[ToolStats]:
    """``stats``, from the stored rollup. A database whose schema already has the rollups
    table (so nothing is created) is opened for writing, to keep the new rollup; any other, or
    one this user may read but not write, is only read (the rollup, if any, then does not
    move: the figures are the same)."""
    if since is not None or not log.store.table_exists(ROLLUPS):
        return log.stats(since=since)
    try:
        writer = AuditLog(db)
    except HandrailError:
        return log.stats()
    try:
        return writer.stats()
    except (sqlite3.Error, psycopg.Error):  # no right to write: read as before
        return log.stats()
    finally:
        writer.close()


def _extent(result: Verification) -> str:
    """Where a run from a checkpoint started (on stderr: stdout keeps the verdict's lines)."""
    start = result.checked_from - 1
    last = start + result.rows_checked
    checked = f"rows {start + 1}-{last}" if last > start else "no rows (none after it)"
    return (
        f"checked {checked} after the {result.vouched_by} at row {start}; rows 1-{start} "
        "were not read (--full recomputes every row)"
    )


def _head_arg(text: str | None) -> str | None:
    """``--head``: ``SEQ:HASH`` or a bare hash (the old form), lower-cased; empty is no head."""
    head = (text or "").strip().lower() or None  # empty (an empty log's head): no check
    if head is not None and not re.fullmatch(r"(?:[1-9][0-9]*:)?[0-9a-f]{64}", head):
        raise HandrailError(
            "--head must be SEQ:HASH (or a 64-character hex hash), from `handrail audit head`"
        )
    return head


def _sign(db: str, key: Ed25519PrivateKey, *, as_json: bool) -> int:
    """``audit sign``: refuses an empty log before opening the database for writing."""
    reader = AuditLog(db, readonly=True)
    try:
        empty = reader.head() is None
    finally:
        reader.close()
    if empty:
        raise HandrailError(f"{display(db)}: the audit log is empty: there is no head to sign")
    log = AuditLog(db)
    try:
        anchor = log.sign(key)
    finally:
        log.close()
    if as_json:
        print(json.dumps({"head": anchor.head, "key_id": anchor.key_id}))
    else:
        print(f"{anchor.head} signed by {anchor.key_id}")
    return 0
