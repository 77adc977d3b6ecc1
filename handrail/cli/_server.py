"""Deciding a thread hosted on a LangGraph server (``--server URL``), through
`handrail.remote.ServerInbox`.

The server keeps the thread's checkpoints, so the decision is a run on the server, and the
server's graph checks it. ``--token`` (or ``$HANDRAIL_TOKEN``) is sent as the bearer token: behind
Handrail's auth handler (`handrail.auth.server`) the authenticated user is the approver, so the
payload names none. On a server that authenticates nobody (``HANDRAIL_AUTH=off``), ``--as ID
--role ROLE`` names the approver in the payload, as claimed.
"""

from __future__ import annotations

import argparse
from typing import Any

from handrail.cli._parser import json_object
from handrail.cli._summary import summary
from handrail.context import Actor
from handrail.errors import HandrailError, IdentityError, ResumeError
from handrail.remote import HASH_PREFIX, Resumed, ServerInbox


def decide_on_server(args: argparse.Namespace) -> dict[str, Any]:
    """Decide ``args.thread`` on the server at ``args.server``; the decision's `summary`."""
    claim = Actor(id=args.approver, roles=tuple(args.role)) if args.approver else None
    server = ServerInbox(args.server, token=args.token, claim=claim)
    try:
        done = _decide(server, args)
    except IdentityError as exc:
        raise HandrailError(f"{exc}: pass --token JWT (or set HANDRAIL_TOKEN)") from None
    decided = [(c.tool_call_id, c.tool) for c in done.calls]
    return summary(args.command, args.thread, decided, done.result)


def _decide(server: ServerInbox, args: argparse.Namespace) -> Resumed:
    verb, thread = args.command, args.thread
    calls: list[str] | None = getattr(args, "call", None)
    if verb == "approve":
        if args.hash and len(args.hash) < HASH_PREFIX:
            raise HandrailError(f"--hash needs at least {HASH_PREFIX} characters of the args hash")
        return server.approve(thread, call_id=calls, args_hash=args.hash or None)
    if verb == "edit":
        if not calls or len(calls) != 1:
            raise ResumeError("edit takes one --call", thread_id=thread)
        return server.edit(thread, calls[0], json_object(args.args, "--args"))
    if verb == "reject":
        return server.reject(thread, args.reason, call_id=calls)
    if verb == "respond":
        return server.respond(thread, args.message, call_id=calls)
    if verb == "retry":
        return server.retry(thread, call_id=calls)
    if verb == "skip":
        return server.skip(thread, args.message, call_id=calls)
    return server.abort(thread, args.message)
