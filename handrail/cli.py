"""``handrail``: the command line.

``handrail demo`` runs the banking demo; ``handrail policy`` checks and explains policy files;
``handrail pending / show / approve / edit / reject / respond / expire`` operate the approvals
waiting in a database (``--db``: a SQLite file or a ``postgresql://`` URL); ``handrail audit
verify / head / export`` check and read its audit trail and ``handrail stats`` sums it up per tool
(these read-only commands never write to it); ``handrail db migrate`` creates or upgrades
Handrail's tables. Exit codes: 0 done, 1 the audit trail does not verify, 2 refused (one line
says why)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import re
import sqlite3
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from pydantic import ValidationError

from handrail import demo
from handrail.audit import (
    AuditLog,
    ToolStats,
    Verification,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
)
from handrail.auth import Token
from handrail.context import Actor
from handrail.errors import GraphNotFound, HandrailError
from handrail.graph import HandrailGraph
from handrail.inbox import Inbox
from handrail.policies import Policy
from handrail.policies.model import parse_duration
from handrail.review import PendingApproval
from handrail.storage import SCHEMA_VERSION, is_postgres_url, migrate
from handrail.storage._base import display

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="handrail", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run the banking demo (pause, resume in a new process)")
    p.add_argument("--db", default="handrail-demo.db", help="SQLite file or postgresql:// URL")
    p.add_argument("--resume", metavar="THREAD", help=argparse.SUPPRESS)

    p = sub.add_parser("policy", help="check or explain a policy file")
    psub = p.add_subparsers(dest="policy_command", required=True)
    c = psub.add_parser("check", help="parse and compile a policy; exit 2 naming what is wrong")
    c.add_argument("file", type=Path)
    e = psub.add_parser("explain", help="decide one call and show every rule's verdict")
    e.add_argument("file", type=Path)
    e.add_argument("--tool", required=True)
    e.add_argument("--args", default="{}", help="the call's arguments as JSON")
    e.add_argument("--actor", default="cli", help="the actor's id")
    e.add_argument("--role", action="append", default=[], help="an actor role (repeatable)")

    p = sub.add_parser("pending", help="list the approvals and escalations waiting, all threads")
    _db_and_graph(p, graph=False)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--kind", choices=["approval", "escalation"], help="only this kind of request")
    p.add_argument("--tool", help="only calls of this tool")
    p.add_argument("--role", dest="approver_role", help="only calls this approver role may decide")
    p.add_argument("--older-than", type=_duration, help="only requests older than this (30m, 2h)")

    p = sub.add_parser("show", help="the calls waiting on one thread, in decision order")
    p.add_argument("thread")
    _db_and_graph(p, graph=False)
    p.add_argument("--json", action="store_true", help="print JSON")

    for verb, text in [
        ("approve", "approve the thread's waiting calls (or those named with --call)"),
        ("edit", "run one waiting call with other arguments (decided by the policy again)"),
        ("reject", "refuse the thread's waiting calls; the model is told the reason"),
        ("respond", "answer the model in place of running the calls"),
        ("retry", "escalation: run the failed calls once more"),
        ("skip", "escalation: do not run the failed calls again; the model is told"),
        ("abort", "escalation: end the run; the failed calls are answered as aborted"),
    ]:
        p = sub.add_parser(verb, help=text)
        p.add_argument("thread")
        _db_and_graph(p)
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

    p = sub.add_parser("expire", help="resolve every request past its deadline as rejected")
    _db_and_graph(p)

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
    a.add_argument("--json", action="store_true", help="print the result as JSON")
    a = asub.add_parser("head", help="print the last row as SEQ:HASH (nothing for an empty log)")
    _db_and_graph(a, graph=False)
    a = asub.add_parser(
        "keygen", help="make an Ed25519 key pair for `audit sign`: PATH (private) and PATH.pub"
    )
    a.add_argument("--out", type=Path, required=True, metavar="PATH", help="the private key file")
    a = asub.add_parser("sign", help="sign the current head with a private key; kept in the db")
    _db_and_graph(a, graph=False)
    a.add_argument(
        "--key", type=Path, required=True, metavar="PRIVATE.pem", help="from `audit keygen`"
    )
    a = asub.add_parser("export", help="the audit rows, oldest first, one JSON object a line")
    _db_and_graph(a, graph=False)
    a.add_argument("--jsonl", action="store_true", required=True, help="JSON lines (required)")
    a.add_argument("--thread", help="only this thread's rows")
    a.add_argument("--tool", help="only this tool's rows")
    a.add_argument("--since", type=_when, metavar="WHEN", help="from this time (24h, 7d or ISO)")
    a.add_argument("--until", type=_when, metavar="WHEN", help="before this time (24h, 7d or ISO)")

    p = sub.add_parser("db", help="create or upgrade the tables in a database")
    dsub = p.add_subparsers(dest="db_command", required=True)
    m = dsub.add_parser(
        "migrate",
        help="create or upgrade Handrail's tables (and, on PostgreSQL, LangGraph's checkpoints)",
    )
    _db_and_graph(m, graph=False)

    p = sub.add_parser("stats", help="per tool: calls, decisions, approval waits, failures")
    _db_and_graph(p, graph=False)
    p.add_argument("--since", type=_when, metavar="WHEN", help="from this time (24h, 7d or ISO)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def _db_and_graph(p: argparse.ArgumentParser, *, graph: bool = True) -> None:
    p.add_argument(
        "--db",
        default="handrail.db",
        help="the SQLite file or postgresql:// URL (default: %(default)s)",
    )
    if graph:
        p.add_argument(
            "--graph",
            metavar="MODULE:FACTORY",
            help="the app's graph factory, called with --db "
            "(default: the 'handrail.graphs' entry point named after the paused graph)",
        )


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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            if args.resume:
                return demo.resume(args.db, args.resume)
            return demo.run(args.db)
        if args.command == "policy":
            return _policy(args)
        if args.command in ("audit", "stats"):
            return _audit(args)
        if args.command == "db":
            return _migrate(args)
        return _inbox(args)
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


def _existing(db: str) -> str:
    """``db`` as given, after checking that a SQLite file is there (a URL is checked on use)."""
    if not is_postgres_url(db) and not Path(db).exists():
        raise HandrailError(f"no database at {display(db)}")
    return db


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
    call_args = _json_object(args.args, "--args")
    actor = Actor(id=args.actor, roles=tuple(args.role))
    print(policy.explain(args.tool, call_args, actor))
    return 0


def _inbox(args: argparse.Namespace) -> int:
    inbox = Inbox(_existing(args.db))
    try:
        if args.command == "pending":
            older = args.older_than
            items = inbox.pending(
                tool=args.tool, approver_role=args.approver_role, older_than=older, kind=args.kind
            )
            print(json.dumps([_item(i) for i in items], indent=2) if args.json else _table(items))
            return 0
        if args.command == "show":
            items = inbox.show(args.thread)
            print(json.dumps([_item(i) for i in items], indent=2) if args.json else _detail(items))
            return 0
        graph = _load_graph(args.graph, args.db) if args.graph else None
        if args.command == "expire":
            done = inbox.expire(graph=graph)
            for item in done:
                print(f"expired: thread {item.thread_id} {item.tool} ({item.tool_call_id})")
            print(f"{len(done)} request(s) expired")
            return 0
        return _decide(inbox, args, graph)
    finally:
        inbox.close()


def _audit(args: argparse.Namespace) -> int:
    """``audit verify / head / export / keygen / sign`` and ``stats``.

    Every command but ``keygen`` needs the database to exist. All but ``sign`` open it read-only,
    so neither the file nor the audit table is ever created (no table: no rows). ``audit head``
    prints nothing for an empty log, and ``verify --head ''`` checks no head.
    """
    if args.command == "audit" and args.audit_command == "keygen":
        private, public = generate_keypair(args.out)
        key = key_id(load_public_key(public))
        print(f"key {key}: private key {private} (keep it secret), public key {public}")
        return 0
    _existing(args.db)
    if args.command == "audit" and args.audit_command == "sign":
        return _sign(args.db, load_private_key(args.key))
    head = _head_arg(getattr(args, "head", None))
    public_key = load_public_key(args.public_key) if getattr(args, "public_key", None) else None
    log = AuditLog(args.db, readonly=True)
    try:
        if args.command == "stats":
            stats = log.stats(since=args.since)
            if args.json:
                print(json.dumps([dataclasses.asdict(s) for s in stats], indent=2))
            else:
                print(_stats_table(stats))
            return 0
        if args.audit_command == "verify":
            result = log.verify(head, public_key=public_key)
            if args.json:
                print(json.dumps(dataclasses.asdict(result), indent=2))
            else:
                print(_verdict(result, head, public_key))
            return 0 if result.ok else 1
        if args.audit_command == "head":
            if (last := log.head()) is not None:
                print(last)
            return 0
        rows = log.export(thread_id=args.thread, tool=args.tool, since=args.since, until=args.until)
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
        return 0
    finally:
        log.close()


def _head_arg(text: str | None) -> str | None:
    """``--head``: ``SEQ:HASH`` or a bare hash (the old form), lower-cased; empty is no head."""
    head = (text or "").strip().lower() or None  # empty (an empty log's head): no check
    if head is not None and not re.fullmatch(r"(?:[1-9][0-9]*:)?[0-9a-f]{64}", head):
        raise HandrailError(
            "--head must be SEQ:HASH (or a 64-character hex hash), from `handrail audit head`"
        )
    return head


def _sign(db: str, key: Ed25519PrivateKey) -> int:
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
    print(f"{anchor.head} signed by {anchor.key_id}")
    return 0


def _verdict(result: Verification, head: str | None, public_key: Ed25519PublicKey | None) -> str:
    """``audit verify``'s lines: the verdict, then what the head and the key found."""
    if not result.ok:
        return f"audit failed: {result.problem}"
    lines = [f"audit ok: {result.rows} rows" + (f", head {result.head}" if result.head else "")]
    if head is not None:
        lines.append(f"{result.rows_after_head} row(s) added after head {head}")
    if public_key is not None:
        others = f"; {result.other_anchors} by other keys ignored" if result.other_anchors else ""
        lines.append(
            f"{result.anchors} checkpoint(s) signed by key {key_id(public_key)} hold, "
            f"the last {result.signed_head}{others}"
        )
    return "\n".join(lines)


def _stats_table(stats: list[ToolStats]) -> str:
    if not stats:
        return "no tool calls audited"
    head = (
        "TOOL",
        "CALLS",
        "ALLOW",
        "ASK",
        "DENY",
        "P50",
        "P95",
        "RETRIES",
        "FAILURES",
        "ESCALATED",
    )
    rows = [head] + [
        (
            s.tool,
            str(s.calls),
            str(s.allowed),
            str(s.asked),
            str(s.denied),
            _latency(s.approval_p50_ms),
            _latency(s.approval_p95_ms),
            str(s.retries),
            ",".join(f"{kind}={n}" for kind, n in s.failures.items()) or "-",
            str(s.escalations),
        )
        for s in stats
    ]
    widths = [max(len(r[c]) for r in rows) for c in range(len(head))]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def _latency(ms: float | None) -> str:
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms:.0f}ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f}s"
    return _age(timedelta(milliseconds=ms))


def _decide(inbox: Inbox, args: argparse.Namespace, graph: HandrailGraph | None) -> int:
    approver: Actor | Token
    if args.token:
        approver = Token(args.token)
    elif args.approver is None:
        raise HandrailError("say who decides: --token JWT (or $HANDRAIL_TOKEN), or --as ID")
    else:
        try:
            approver = Actor(id=args.approver, roles=tuple(args.role))
        except ValidationError:
            raise HandrailError("--as needs a non-empty approver id") from None
    thread = args.thread
    calls: list[str] | None = getattr(args, "call", None)
    if args.command == "approve":
        bound = _full_hash(inbox, thread, calls, args.hash) if args.hash else None
        result = inbox.approve(
            thread, approver=approver, call_id=calls, args_hash=bound, graph=graph
        )
    elif args.command == "edit":
        if calls is None or len(calls) != 1:
            raise HandrailError("edit takes exactly one --call")
        new_args = _json_object(args.args, "--args")
        result = inbox.edit(thread, calls[0], new_args, approver=approver, graph=graph)
    elif args.command == "reject":
        result = inbox.reject(thread, args.reason, approver=approver, call_id=calls, graph=graph)
    elif args.command == "respond":
        result = inbox.respond(thread, args.message, approver=approver, call_id=calls, graph=graph)
    elif args.command == "retry":
        result = inbox.retry(thread, approver=approver, call_id=calls, graph=graph)
    elif args.command == "skip":
        result = inbox.skip(thread, args.message, approver=approver, call_id=calls, graph=graph)
    else:
        result = inbox.abort(thread, args.message, approver=approver, graph=graph)
    print(_outcome(thread, result))
    return 0


def _full_hash(inbox: Inbox, thread: str, calls: list[str] | None, prefix: str) -> str:
    """The full args hash that ``prefix`` (as shown by `handrail show`) abbreviates."""
    if len(prefix) < 12:
        raise HandrailError("--hash needs at least 12 characters of the args hash")
    rows = [r for r in inbox.show(thread) if calls is None or r.tool_call_id in calls]
    if len(rows) == 1 and rows[0].args_hash.startswith(prefix):
        return rows[0].args_hash
    return prefix


def _outcome(thread: str, result: dict[str, Any]) -> str:
    if result.get("__interrupt__"):
        info = result["__interrupt__"][0].value.get("handrail", {})
        waiting = ", ".join(info.get("tool_call_ids", [])) or "a decision"
        return f"thread {thread}: decided; it is waiting again for {waiting}"
    messages = result.get("messages") or []
    last = messages[-1].text if messages else ""
    return f"thread {thread}: decided; the run went on and ended: {last}"


def _load_graph(spec: str, db: str) -> HandrailGraph:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise GraphNotFound(f"--graph must be MODULE:FACTORY, not {spec!r}")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise GraphNotFound(f"--graph {spec}: {exc}") from None
    try:
        graph = factory(db)
    except Exception as exc:
        raise GraphNotFound(f"--graph {spec} failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(graph, HandrailGraph):
        raise GraphNotFound(
            f"--graph {spec} returned a {type(graph).__name__}, not a HandrailGraph"
        )
    return graph


def _json_object(text: str, flag: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise HandrailError(f"{flag} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise HandrailError(f"{flag} must be a JSON object")
    return value


def _item(item: PendingApproval) -> dict[str, Any]:
    """A waiting call as ``--json`` prints it: the listing's model, and whether it expired."""
    return {**item.model_dump(mode="json"), "expired": item.expired()}


def _table(items: list[PendingApproval]) -> str:
    if not items:
        return "no approvals or escalations waiting"
    now = datetime.now(UTC)
    head = (
        "KIND",
        "THREAD",
        "CALL",
        "TOOL",
        "ARGS",
        "RULE",
        "APPROVERS",
        "OK",
        "ACTOR",
        "AGE",
        "EXPIRES",
    )
    rows = [head] + [
        (
            i.kind,
            i.thread_id or "-",
            i.tool_call_id,
            i.tool,
            _short(json.dumps(i.args, sort_keys=True), 40),
            i.rule_id or "(default)",
            ",".join(i.approvers),
            f"{len(i.approvals)}/{i.min_approvals}",
            i.actor.id,
            _age(now - i.requested_at),
            "expired" if i.expired(now) else _age(i.expires_at - now) if i.expires_at else "-",
        )
        for i in items
    ]
    widths = [max(len(r[c]) for r in rows) for c in range(len(head))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join([*lines, f"{len(items)} call(s) waiting"])


def _detail(items: list[PendingApproval]) -> str:
    if not items:
        return "nothing is waiting on this thread"
    lines = [f"thread {items[0].thread_id} (graph {items[0].graph}), asked by {items[0].actor.id}"]
    for n, i in enumerate(items, 1):
        deadline = i.expires_at.isoformat() if i.expires_at else "none"
        if i.kind == "escalation" and i.error is not None:
            lines += [
                f"{n}. ESCALATION: {i.tool} call {i.tool_call_id} failed after {i.attempts} "
                f"attempt(s); decide with retry, skip or abort",
                f"   error      {i.error.kind}"
                + (f" (HTTP {i.error.status_code})" if i.error.status_code else "")
                + f": {i.error.message}",
                f"   args       {json.dumps(i.args, sort_keys=True)}",
                f"   deciders   one of {list(i.approvers)}",
                f"   requested  {i.requested_at.isoformat()}",
            ]
            continue
        lines += [
            f"{n}. {i.tool} call {i.tool_call_id}" + ("  [EXPIRED]" if i.expired() else ""),
            f"   args       {json.dumps(i.args, sort_keys=True)}",
            f"   args hash  {i.args_hash}",
            f"   rule       {i.rule_id or '(policy default)'}",
            f"   approvers  one of {list(i.approvers)}; approved {len(i.approvals)} of "
            f"{i.min_approvals}" + (f" (by {', '.join(i.approvals)})" if i.approvals else ""),
            f"   requested  {i.requested_at.isoformat()}",
            f"   expires    {deadline}",
        ]
    return "\n".join(lines)


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _age(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if abs(seconds) >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


if __name__ == "__main__":
    sys.exit(main())
