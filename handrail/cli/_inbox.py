"""``handrail pending / show / approve / edit / reject / respond / retry / skip / abort /
expire``: the inbox from a shell."""

from __future__ import annotations

import argparse
import importlib
import json

from pydantic import ValidationError

from handrail.auth import Token
from handrail.cli._parser import existing, json_object
from handrail.cli._render import listing_detail, listing_json, listing_table, outcome
from handrail.context import Actor
from handrail.errors import GraphNotFound, HandrailError
from handrail.graph import HandrailGraph
from handrail.inbox import Inbox


def run_inbox(args: argparse.Namespace) -> int:
    inbox = Inbox(existing(args.db))
    try:
        if args.command == "pending":
            older = args.older_than
            items = inbox.pending(
                tool=args.tool, approver_role=args.approver_role, older_than=older, kind=args.kind
            )
            print(
                json.dumps([listing_json(i) for i in items], indent=2)
                if args.json
                else listing_table(items)
            )
            return 0
        if args.command == "show":
            items = inbox.show(args.thread)
            print(
                json.dumps([listing_json(i) for i in items], indent=2)
                if args.json
                else listing_detail(items)
            )
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
        new_args = json_object(args.args, "--args")
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
    print(outcome(thread, result))
    return 0


def _full_hash(inbox: Inbox, thread: str, calls: list[str] | None, prefix: str) -> str:
    """The full args hash that ``prefix`` (as shown by `handrail show`) abbreviates."""
    if len(prefix) < 12:
        raise HandrailError("--hash needs at least 12 characters of the args hash")
    rows = [r for r in inbox.show(thread) if calls is None or r.tool_call_id in calls]
    if len(rows) == 1 and rows[0].args_hash.startswith(prefix):
        return rows[0].args_hash
    return prefix


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
