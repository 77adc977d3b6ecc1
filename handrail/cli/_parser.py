"""The command line's parser, and the argument types and checks its commands share."""

from __future__ import annotations

import argparse
import json
import os
from datetime import UTC, datetime, timedelta
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from handrail.errors import HandrailError
from handrail.policies.settings import parse_duration
from handrail.storage import is_postgres_url
from handrail.storage._base import display

DECISIONS = ("approve", "edit", "reject", "respond", "retry", "skip", "abort")
"""The commands that decide a thread's waiting calls."""


def parser(description: str | None) -> argparse.ArgumentParser:
    """The ``handrail`` command's parser, its help led by ``description``."""
    parser = argparse.ArgumentParser(prog="handrail", description=description)
    parser.add_argument("--version", action="version", version=f"handrail {_version()}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log Handrail's events as JSON lines on stderr (stdout keeps the command's output)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run the banking demo (pause, resume in a new process)")
    p.add_argument("--db", default="handrail-demo.db", help="SQLite file or postgresql:// URL")
    p.add_argument(
        "--pause",
        action="store_true",
        help="stop at the approval and print the command that approves it",
    )
    p.add_argument("--resume", metavar="THREAD", help=argparse.SUPPRESS)

    _policy(sub)

    p = sub.add_parser("pending", help="list the approvals and escalations waiting, all threads")
    _db_and_graph(p, graph=False)
    _json(p)
    p.add_argument("--kind", choices=["approval", "escalation"], help="only this kind of request")
    p.add_argument("--tool", help="only calls of this tool")
    p.add_argument("--role", dest="approver_role", help="only calls this approver role may decide")
    p.add_argument("--older-than", type=_duration, help="only requests older than this (30m, 2h)")
    p.add_argument(
        "--limit",
        type=int,
        metavar="N",
        help="at most N calls, and the cursor of the next page (a table: 100 by default)",
    )
    p.add_argument("--after", metavar="CURSOR", help="the page after CURSOR (a next_cursor)")
    p.add_argument("--newest", action="store_true", help="newest request first")

    p = sub.add_parser("show", help="the calls waiting on one thread, in decision order")
    p.add_argument("thread")
    _db_and_graph(p, graph=False)
    _json(p)

    for verb, text in [
        ("approve", "approve the thread's waiting calls (or those named with --call)"),
        ("edit", "run one waiting call with other arguments (decided by the policy again)"),
        ("reject", "refuse the thread's waiting calls; the model is told the reason"),
        ("respond", "answer the model in place of running the calls"),
        ("retry", "escalation: run the failed calls once more"),
        ("skip", "escalation: do not run the failed calls again; the model is told"),
        ("abort", "escalation: end the run; the failed calls are answered as aborted"),
    ]:
        _decision(sub.add_parser(verb, help=text), verb)

    p = sub.add_parser("expire", help="resolve every request past its deadline as rejected")
    _db_and_graph(p)
    _json(p)

    _audit(sub)

    p = sub.add_parser("db", help="create or upgrade the tables in a database")
    dsub = p.add_subparsers(dest="db_command", required=True)
    m = dsub.add_parser(
        "migrate",
        help="create or upgrade Handrail's tables (and, on PostgreSQL, LangGraph's checkpoints)",
    )
    _db_and_graph(m, graph=False)
    _json(m)

    p = sub.add_parser("stats", help="per tool: calls, decisions, approval waits, failures")
    _db_and_graph(p, graph=False)
    p.add_argument("--since", type=_when, metavar="WHEN", help="from this time (24h, 7d or ISO)")
    _json(p)

    p = sub.add_parser("serve", help="serve the approvers' web inbox (needs handrail[web])")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (%(default)s)")
    p.add_argument("--port", type=int, default=8000, help="the port to listen on (%(default)s)")
    _db_and_graph(p, graph=False)

    p = sub.add_parser(
        "worker", help="expire overdue requests, send reminders, drain the notification outbox"
    )
    _db_and_graph(p)
    p.add_argument("--once", action="store_true", help="do what is due now, then exit")
    p.add_argument(
        "--interval",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="the pause after a pass that found nothing to do (%(default)s)",
    )
    return parser


def _policy(sub: Any) -> None:
    p = sub.add_parser(
        "policy", help="check, explain, test or replay a policy file; list the versions seen"
    )
    psub = p.add_subparsers(dest="policy_command", required=True)
    c = psub.add_parser(
        "check",
        help="parse, compile and lint a policy (unknown tools, roles and arguments, type "
        "mismatches, rules that never decide); exit 1 on an error",
    )
    c.add_argument("file", type=Path)
    _policy_graph(c)
    c.add_argument(
        "--directory",
        type=Path,
        metavar="FILE",
        help="the people and their roles (YAML or JSON, as Directory.from_file reads it): "
        "roles no one holds are errors",
    )
    _json(c)
    e = psub.add_parser("explain", help="decide one call and show every rule's verdict")
    e.add_argument("file", type=Path)
    e.add_argument("--tool", required=True)
    e.add_argument("--args", default="{}", help="the call's arguments as JSON")
    e.add_argument("--actor", default="cli", help="the actor's id")
    e.add_argument("--role", action="append", default=[], help="an actor role (repeatable)")
    e.add_argument(
        "--db",
        help="the SQLite file or postgresql:// URL whose limit totals the call adds to (without "
        "it, limits show what the call adds and usage[...] is empty)",
    )
    e.add_argument("--thread", help="the thread the call is made in (for per: thread limits)")
    _policy_graph(e)
    _json(e)
    t = psub.add_parser(
        "test", help="decide each case of CASES.yaml; exit 1 when one does not hold"
    )
    t.add_argument("file", type=Path)
    t.add_argument("cases", type=Path, metavar="CASES.yaml")
    t.add_argument("--junit", type=Path, metavar="FILE", help="also write JUnit XML (for CI)")
    _policy_graph(t)
    _json(t)
    r = psub.add_parser(
        "replay",
        help="decide every call in the audit trail again under a policy; print what would change",
    )
    r.add_argument("file", type=Path, metavar="NEW.yaml")
    _db_and_graph(r, graph=False)
    r.add_argument(
        "--since", type=_when, metavar="WHEN", help="only calls decided from this time (30d or ISO)"
    )
    r.add_argument(
        "--sample",
        type=int,
        default=20,
        metavar="N",
        help="list at most N changed calls and N calls not replayed (%(default)s)",
    )
    _json(r)
    h = psub.add_parser(
        "history",
        help="the policy versions (digests) the audit trail has seen: first and last seen, "
        "how many calls each decided",
    )
    _db_and_graph(h, graph=False)
    _json(h)


def _policy_graph(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--graph",
        metavar="MODULE:FACTORY",
        help="the app's graph factory (built on a throwaway database): its tools' names and "
        "argument schemas; arguments are coerced as a run coerces them",
    )


def _decision(p: argparse.ArgumentParser, verb: str) -> None:
    p.add_argument("thread")
    _db_and_graph(p)
    p.add_argument(
        "--server",
        metavar="URL",
        default=os.environ.get("HANDRAIL_SERVER"),
        help="decide a thread hosted on this LangGraph server (default: $HANDRAIL_SERVER)",
    )
    p.add_argument(
        "--token",
        default=os.environ.get("HANDRAIL_TOKEN"),
        help="your signed token (JWT; default: $HANDRAIL_TOKEN): who you are and your roles",
    )
    p.add_argument(
        "--as",
        dest="approver",
        metavar="ID",
        help="your id, where the graph takes no tokens (a directory gives your roles; with "
        "neither, the audit records it as claimed)",
    )
    p.add_argument("--role", action="append", default=[], help="a role you claim (repeatable)")
    _json(p)
    if verb != "abort":
        p.add_argument(
            "--call",
            action="append",
            required=verb == "edit",
            help="a waiting call's id (repeatable; default: every waiting call)",
        )
    if verb == "approve":
        p.add_argument("--hash", help="the args hash you approve (from `handrail show`)")
    elif verb == "edit":
        p.add_argument("--args", required=True, help="the new arguments as a JSON object")
    elif verb == "reject":
        p.add_argument("--reason", required=True, help="what the model is told")
    elif verb == "respond":
        p.add_argument("--message", required=True, help="the answer the model gets")
    elif verb in ("skip", "abort"):
        said = {"skip": "skipped", "abort": "aborted"}[verb]
        p.add_argument(
            "--message", default=f"{said} by the operator", help="what the model is told"
        )


def _audit(sub: Any) -> None:
    p = sub.add_parser("audit", help="verify, export, take or sign the head of the audit trail")
    asub = p.add_subparsers(dest="audit_command", required=True)
    a = asub.add_parser(
        "verify",
        help="recompute the hash chain and check the approvals; exit 1 naming the first bad row",
    )
    _db_and_graph(a, graph=False)
    a.add_argument(
        "--head",
        metavar="SEQ:HASH",
        help="a head kept from `handrail audit head`: row SEQ must still have HASH "
        "(catches truncation and rewriting); prints the rows added since",
    )
    a.add_argument(
        "--public-key",
        type=Path,
        metavar="PUBLIC.pem",
        help="check the checkpoints signed with this key's private key (`handrail audit sign`): "
        "one must exist, and every row up to the last must be as signed",
    )
    a.add_argument(
        "--full",
        action="store_true",
        help="recompute every row; by default, with --head or --public-key, only the rows after "
        "the later of the head and the last checkpoint are (its row must still have its hash)",
    )
    _json(a)
    a = asub.add_parser("head", help="print the last row as SEQ:HASH (nothing for an empty log)")
    _db_and_graph(a, graph=False)
    _json(a)
    a = asub.add_parser(
        "keygen", help="make an Ed25519 key pair for `audit sign`: PATH (private) and PATH.pub"
    )
    a.add_argument("--out", type=Path, required=True, metavar="PATH", help="the private key file")
    _json(a)
    a = asub.add_parser("sign", help="sign the current head with a private key; kept in the db")
    _db_and_graph(a, graph=False)
    a.add_argument(
        "--key", type=Path, required=True, metavar="PRIVATE.pem", help="from `audit keygen`"
    )
    _json(a)
    a = asub.add_parser("export", help="the audit rows, oldest first, one JSON object a line")
    _db_and_graph(a, graph=False)
    a.add_argument("--jsonl", action="store_true", required=True, help="JSON lines (required)")
    a.add_argument("--thread", help="only this thread's rows")
    a.add_argument("--tool", help="only this tool's rows")
    a.add_argument("--since", type=_when, metavar="WHEN", help="from this time (24h, 7d or ISO)")
    a.add_argument("--until", type=_when, metavar="WHEN", help="before this time (24h, 7d or ISO)")


def _json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON (for scripts) instead of text")


def _db_and_graph(p: argparse.ArgumentParser, *, graph: bool = True) -> None:
    p.add_argument(
        "--db",
        default=os.environ.get("HANDRAIL_DB"),
        help="the SQLite file or postgresql:// URL (default: $HANDRAIL_DB)",
    )
    if graph:
        p.add_argument(
            "--graph",
            metavar="MODULE:FACTORY",
            help="the app's graph factory, called with --db; MODULE is imported from the "
            "current directory too (default: the 'handrail.graphs' entry point named after the "
            "paused graph)",
        )


def _version() -> str:
    try:
        return version("handrail")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _duration(text: str) -> timedelta:
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    assert isinstance(value, timedelta)
    return value


def _when(text: str) -> datetime:
    """A duration back from now (``30m``, ``24h``, ``7d``) or an ISO-8601 time (naive is UTC)."""
    try:
        delta = parse_duration(text)
    except ValueError:
        pass
    else:
        assert isinstance(delta, timedelta)
        return datetime.now(UTC) - delta
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a duration (30m, 24h, 7d) nor an ISO-8601 time"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def json_object(text: str, flag: str) -> dict[str, Any]:
    """``text`` parsed as the JSON object a flag takes; an error naming ``flag`` otherwise."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise HandrailError(f"{flag} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise HandrailError(f"{flag} must be a JSON object")
    return value


def database(db: str | None) -> str:
    """The database a command works on: ``--db``, or ``$HANDRAIL_DB`` (the parser's default)."""
    if not db:
        raise HandrailError(
            "no database given: pass --db PATH (a SQLite file or a postgresql:// URL) "
            "or set HANDRAIL_DB"
        )
    return db


def existing(db: str | None) -> str:
    """The database as given, after checking that a SQLite file is there (a URL is checked on
    use)."""
    given = database(db)
    if not is_postgres_url(given) and not Path(given).exists():
        raise HandrailError(f"no database at {display(given)}")
    return given
