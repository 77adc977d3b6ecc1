"""``handrail``: the command line.

``handrail demo`` runs the banking demo (``--pause`` stops at the approval and prints the command
that approves it); ``handrail policy`` checks (lints), explains, tests and replays policy files
(what a new policy would change in the audited calls); ``handrail
pending / show / approve / edit / reject / respond / retry / skip / abort / expire`` operate the
approvals and escalations waiting in a database (``--db``, default ``$HANDRAIL_DB``: a SQLite file
or a ``postgresql://`` URL), deciding as ``--token`` (or ``$HANDRAIL_TOKEN``) proves, or as
``--as`` claims where the graph takes no tokens; a thread hosted on a LangGraph server is decided
there with ``--server URL``; ``handrail audit verify / head / export`` check and read its audit
trail and ``handrail stats`` sums it up per tool (these never write to it), ``handrail audit
keygen`` makes an Ed25519 key pair and ``handrail audit sign`` writes a signed checkpoint of the
trail's head; ``handrail db migrate`` creates or upgrades Handrail's tables; ``handrail serve``
serves the approvers' web inbox and ``handrail worker`` expires requests and sends notifications.
Every command that prints takes ``--json``. Exit codes: 0 done, 1 a check failed (the audit trail
does not verify, a policy does not compile or its lint finds an error, a policy test case does not
hold), 2 refused or not found (one line says why)."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sqlite3
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from handrail import demo
from handrail.cli._audit import run_audit
from handrail.cli._inbox import load_graph, run_inbox
from handrail.cli._parser import database, parser
from handrail.cli._policy import run_policy
from handrail.errors import HandrailError, PolicyError
from handrail.logging import enable_json_logging
from handrail.storage import SCHEMA_VERSION, migrate
from handrail.storage._base import display

__all__ = ["main"]

_BROKEN_PIPE = 141
"""The status of a command whose reader went away (128 + SIGPIPE, as a shell reports it)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args = parser(__doc__).parse_args(argv)
    try:
        with _logs(verbose=args.verbose):
            code = _dispatch(args)
            sys.stdout.flush()
        return code
    except BrokenPipeError:
        # The reader closed the pipe (`handrail audit export --jsonl | head -1`): stop quietly,
        # and point stdout at /dev/null so the interpreter's last flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return _BROKEN_PIPE
    except KeyboardInterrupt:
        print("handrail: interrupted", file=sys.stderr)
        return 130
    except PolicyError as exc:
        print(f"handrail: {exc}", file=sys.stderr)
        checking = args.command == "policy" and args.policy_command in ("check", "test")
        return 1 if checking else 2
    except HandrailError as exc:
        print(f"handrail: {exc}", file=sys.stderr)
        return 2
    except _database_errors() as exc:
        where = display(str(getattr(args, "db", None) or "the database"))
        print(f"handrail: {where}: {str(exc).strip()}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "demo":
        if args.resume:
            return demo.resume(args.db, args.resume)
        if args.pause:
            return demo.pause(args.db)
        return demo.run(args.db)
    if args.command == "policy":
        return run_policy(args)
    if args.command in ("audit", "stats"):
        return run_audit(args)
    if args.command == "db":
        return _migrate(args)
    if args.command == "serve":
        return _serve(args)
    if args.command == "worker":
        return _worker(args)
    return run_inbox(args)


@contextmanager
def _logs(*, verbose: bool) -> Iterator[None]:
    """While a command runs, Handrail's events go to stderr as JSON lines (``--verbose``) or
    nowhere; other warnings still reach stderr. Stdout carries only the command's output."""
    logger = logging.getLogger("handrail")
    if verbose:
        level = logger.level
        handler = enable_json_logging(stream=sys.stderr)
        logger.propagate, propagate = False, logger.propagate
        try:
            yield
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate
        return
    logger.addFilter(_no_events)
    try:
        yield
    finally:
        logger.removeFilter(_no_events)


def _no_events(record: logging.LogRecord) -> bool:
    """Drops Handrail's tool-call events (the command says what happened)."""
    return getattr(record, "handrail_event", None) is None


def _database_errors() -> tuple[type[Exception], ...]:
    """The drivers' own errors, reported in one line like Handrail's."""
    try:
        from psycopg import Error
    except ImportError:
        return (sqlite3.DatabaseError,)
    return (sqlite3.DatabaseError, Error)


def _migrate(args: argparse.Namespace) -> int:
    db = database(args.db)
    applied = migrate(db)
    shown = display(db)
    if args.json:
        print(json.dumps({"database": shown, "applied": applied, "version": SCHEMA_VERSION}))
        return 0
    if applied:
        print(f"{shown}: applied schema version(s) {', '.join(map(str, applied))}")
    print(f"{shown}: Handrail schema at version {SCHEMA_VERSION}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    db = database(args.db)
    serve = _extra("handrail.web", "serve", "`handrail serve` needs the web inbox", "web")
    serve(db, host=args.host, port=args.port)
    return 0


def _worker(args: argparse.Namespace) -> int:
    db = database(args.db)
    run_worker = _extra("handrail.worker", "run_worker", "`handrail worker`", "notify")
    graph = load_graph(args.graph, db) if args.graph else None
    return int(run_worker(db, once=args.once, interval=args.interval, graph=graph))


def _extra(module: str, name: str, what: str, extras: str) -> Any:
    """``module.name``, imported now: a command whose extras are not installed says which."""
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise HandrailError(f"{what} needs: pip install 'handrail[{extras}]' ({exc})") from None
