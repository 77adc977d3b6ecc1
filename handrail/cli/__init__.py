"""``handrail``: the command line.

``handrail demo`` runs the banking demo; ``handrail policy`` checks and explains policy files;
``handrail pending / show / approve / edit / reject / respond / retry / skip / abort / expire``
operate the approvals and escalations waiting in a database (``--db``: a SQLite file or a
``postgresql://`` URL), deciding as ``--token`` (or ``HANDRAIL_TOKEN``) proves, or as ``--as``
claims where the graph takes no tokens; ``handrail audit verify / head / export`` check and read
its audit trail and ``handrail stats`` sums it up per tool (these never write to it), ``handrail
audit keygen`` makes an Ed25519 key pair and ``handrail audit sign`` writes a signed checkpoint
of the trail's head; ``handrail db migrate`` creates or upgrades Handrail's tables. Exit codes:
0 done, 1 the audit trail does not verify, 2 refused (one line says why)."""

from __future__ import annotations

import argparse
import sqlite3
import sys
from collections.abc import Sequence

from handrail import demo
from handrail.cli._audit import run_audit
from handrail.cli._inbox import run_inbox
from handrail.cli._parser import json_object, parser
from handrail.context import Actor
from handrail.errors import HandrailError
from handrail.policies import Policy
from handrail.storage import SCHEMA_VERSION, migrate
from handrail.storage._base import display

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args = parser(__doc__).parse_args(argv)
    try:
        if args.command == "demo":
            if args.resume:
                return demo.resume(args.db, args.resume)
            return demo.run(args.db)
        if args.command == "policy":
            return _policy(args)
        if args.command in ("audit", "stats"):
            return run_audit(args)
        if args.command == "db":
            return _migrate(args)
        return run_inbox(args)
    except HandrailError as exc:
        print(f"handrail: {exc}", file=sys.stderr)
        return 2
    except _database_errors() as exc:
        where = display(str(getattr(args, "db", "the database")))
        print(f"handrail: {where}: {str(exc).strip()}", file=sys.stderr)
        return 2


def _database_errors() -> tuple[type[Exception], ...]:
    """The drivers' own errors, reported in one line like Handrail's."""
    try:
        from psycopg import Error
    except ImportError:
        return (sqlite3.DatabaseError,)
    return (sqlite3.DatabaseError, Error)


def _migrate(args: argparse.Namespace) -> int:
    applied = migrate(args.db)
    shown = display(args.db)
    if applied:
        print(f"{shown}: applied schema version(s) {', '.join(map(str, applied))}")
    print(f"{shown}: Handrail schema at version {SCHEMA_VERSION}")
    return 0


def _policy(args: argparse.Namespace) -> int:
    policy = Policy.from_file(args.file)
    if args.policy_command == "check":
        print(f"{args.file}: ok, {len(policy.rules)} rule(s), default {policy.default}")
        return 0
    call_args = json_object(args.args, "--args")
    actor = Actor(id=args.actor, roles=tuple(args.role))
    print(policy.explain(args.tool, call_args, actor))
    return 0
