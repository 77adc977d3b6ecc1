"""Deciding a thread hosted on a LangGraph server (``--server URL``), through ``langgraph-sdk``.

The server keeps the thread's checkpoints, so the decision is a run on the server: the waiting
request is read from the thread's interrupt, one decision per waiting call is sent as
``command={"resume": ...}``, and the server's graph checks it. ``--token`` (or
``$HANDRAIL_TOKEN``) is sent as the bearer token: behind Handrail's auth handler
(`handrail.auth.server`) the authenticated user is the approver, so the payload names none. On a
server that authenticates nobody (``HANDRAIL_AUTH=off``), ``--as ID --role ROLE`` names the
approver in the payload, as claimed.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from handrail.cli._parser import json_object
from handrail.cli._summary import summary
from handrail.errors import HandrailError, NothingPending, ResumeError, UnknownCall
from handrail.review.decisions import (
    Abort,
    Action,
    Approve,
    Edit,
    HumanDecision,
    Reject,
    Respond,
    Retry,
    Skip,
    wire,
)

_TIMEOUT_S = 120.0


def decide_on_server(args: argparse.Namespace) -> dict[str, Any]:
    """Decide ``args.thread`` on the server at ``args.server``; the decision's `summary`."""
    try:
        from langgraph_sdk import get_sync_client
        from langgraph_sdk.errors import APIStatusError
    except ImportError:
        raise HandrailError(
            "--server needs the LangGraph SDK: pip install 'handrail[server]'"
        ) from None
    import httpx

    headers = {"Authorization": f"Bearer {args.token}"} if args.token else None
    client = get_sync_client(url=args.server, api_key=None, headers=headers, timeout=_TIMEOUT_S)
    thread = args.thread
    try:
        found = client.threads.get(thread)
        request = _request(found, thread, args.server)
        calls = _calls(request, thread, getattr(args, "call", None))
        payload: dict[str, Any] = {"decisions": [_entry(args, c) for c in calls]}
        if args.approver and not args.token:
            payload["approver"] = {"id": args.approver, "roles": list(args.role)}
        assistant = _assistant(found, calls)
        result = client.runs.wait(thread, assistant, command={"resume": payload}, raise_error=False)
    except APIStatusError as exc:
        raise _http_error(exc.response.status_code, thread, args.server) from None
    except httpx.HTTPStatusError as exc:
        raise _http_error(exc.response.status_code, thread, args.server) from None
    except httpx.HTTPError as exc:
        raise HandrailError(f"--server {args.server}: {type(exc).__name__}: {exc}") from None
    if not isinstance(result, Mapping):
        raise HandrailError(f"--server {args.server}: unexpected answer {result!r:.200}")
    if "__error__" in result:
        error = result["__error__"]
        raise ResumeError(
            f"the server refused: {error.get('error')}: {error.get('message')}", thread_id=thread
        )
    return summary(args.command, thread, [(c["tool_call_id"], c["tool"]) for c in calls], result)


def _http_error(status: int, thread: str, server: str) -> HandrailError:
    if status == 401:
        return HandrailError(
            f"--server {server} answered 401: pass --token JWT (or set HANDRAIL_TOKEN)"
        )
    if status in (403, 404):
        return NothingPending(
            f"--server {server} answered {status}: no such thread, or not one your token sees",
            thread_id=thread,
        )
    return HandrailError(f"--server {server} answered HTTP {status} for thread {thread!r}")


def _request(found: Mapping[str, Any], thread: str, server: str) -> Mapping[str, Any]:
    """The thread's one Handrail request."""
    values = [
        i.get("value")
        for waiting in (found.get("interrupts") or {}).values()
        for i in waiting
        if isinstance(i.get("value"), Mapping) and "handrail" in i["value"]
    ]
    if not values:
        raise NothingPending(
            f"nothing is waiting on thread {thread!r} on {server}", thread_id=thread
        )
    if len(values) > 1:
        raise ResumeError(
            f"thread {thread!r} waits on {len(values)} requests at once; decide it through the "
            "server's API",
            thread_id=thread,
        )
    value: Mapping[str, Any] = values[0]
    return value


def _calls(
    request: Mapping[str, Any], thread: str, named: list[str] | None
) -> list[dict[str, Any]]:
    """The waiting calls, in the order their decisions are given; all of them must be named."""
    info = request["handrail"]
    ids: list[str] = list(info["tool_call_ids"])
    for call_id in named or []:
        if call_id not in ids:
            raise UnknownCall(
                f"no call {call_id!r} is waiting here; waiting calls: {ids}", thread_id=thread
            )
    if named is not None and set(named) != set(ids):
        raise ResumeError(
            f"the thread waits on {len(ids)} calls {ids} and takes one decision for each",
            thread_id=thread,
        )
    return [{**info["calls"][i], "tool_call_id": i} for i in ids]


def _decision(args: argparse.Namespace, call: Mapping[str, Any]) -> HumanDecision:
    verb = args.command
    if verb == "approve":
        full = str(call["args_hash"])
        prefix = (args.hash or "").lower()
        if prefix and len(prefix) < 12:
            raise HandrailError("--hash needs at least 12 characters of the args hash")
        return Approve(args_hash=full if not prefix or full.startswith(prefix) else prefix)
    if verb == "edit":
        new = json_object(args.args, "--args")
        return Edit(edited_action=Action(name=call["tool"], args=new))
    if verb == "reject":
        return Reject(message=args.reason)
    if verb == "respond":
        return Respond(message=args.message)
    if verb == "retry":
        return Retry()
    if verb == "skip":
        return Skip(message=args.message)
    return Abort(message=args.message)


def _entry(args: argparse.Namespace, call: Mapping[str, Any]) -> dict[str, Any]:
    return {**wire(_decision(args, call)), "tool_call_id": call["tool_call_id"]}


def _assistant(found: Mapping[str, Any], calls: list[dict[str, Any]]) -> str:
    """The assistant (graph) that runs the thread: the thread's metadata, else the graph name
    the request was made by."""
    metadata = found.get("metadata") or {}
    name = metadata.get("assistant_id") or metadata.get("graph_id") or calls[0].get("graph")
    if not name:
        raise HandrailError("the thread does not say which graph runs it")
    return str(name)
