"""The LangGraph server's API as `handrail.remote.ServerInbox` reads and writes it: the SDK and
the in-process transport, the decisions a resume sends, and what the server's answers mean."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import httpx

import handrail.errors as errors
from handrail.errors import ApprovalError, HandrailError, ResumeError, UnknownCall
from handrail.review import Approve, HumanDecision, WaitingCall
from handrail.review.decisions import wire

__all__ = [
    "assistant_of",
    "bound",
    "complete",
    "detail_of",
    "entry",
    "in_process",
    "load_sdk",
    "raise_refusal",
]


def load_sdk() -> Any:
    """The ``langgraph_sdk`` package; `HandrailError` naming the extra when it is missing."""
    try:
        import langgraph_sdk.client
    except ImportError:
        raise HandrailError(
            "deciding on a LangGraph server needs its SDK: pip install 'handrail[server]'"
        ) from None
    return langgraph_sdk


def in_process() -> tuple[str, httpx.AsyncBaseTransport]:
    """The LangGraph server this code runs in, as a base URL and an in-process ASGI transport
    whose requests pass the server's auth middleware (no ``/noauth`` root path)."""
    try:
        from langgraph_api import config
        from langgraph_api.server import app
    except ImportError as exc:
        raise HandrailError(
            f"ServerInbox(None) runs inside a LangGraph server (langgraph dev, or a deployment "
            f"with http.app), but the server is not loaded here ({exc}); pass its URL"
        ) from None
    return f"http://langgraph-api{config.MOUNT_PREFIX or ''}", httpx.ASGITransport(app=app)


def complete(named: Iterable[str], calls: list[WaitingCall]) -> None:
    """Refuse decisions naming a call that does not wait, or leaving one out (the server takes
    one decision for each waiting call)."""
    thread_id = calls[0].thread_id
    ids = [c.tool_call_id for c in calls]
    given = list(named)
    unknown = [c for c in given if c not in ids]
    if unknown:
        raise UnknownCall(
            f"no call {unknown[0]!r} is waiting here; waiting calls: {ids}", thread_id=thread_id
        )
    missing = [c for c in ids if c not in given]
    if missing:
        raise ResumeError(
            f"the thread waits on {len(ids)} calls {ids} and takes one decision for each; "
            f"none given for {missing}",
            thread_id=thread_id,
        )


def bound(call: WaitingCall, args_hash: str | None) -> str:
    """The hash an approval of ``call`` names: the call's own when ``args_hash`` is none of it or
    a prefix of it (so the server still refuses other arguments), else ``args_hash``."""
    if args_hash is None or call.args_hash.startswith(args_hash.lower()):
        return call.args_hash
    return args_hash


def entry(decision: HumanDecision, call: WaitingCall) -> dict[str, Any]:
    """``decision`` for ``call`` as the resume payload carries it (an approval naming no args
    hash is bound to the call's)."""
    if isinstance(decision, Approve) and decision.args_hash is None:
        decision = Approve(args_hash=call.args_hash)
    return {**wire(decision), "tool_call_id": call.tool_call_id}


def assistant_of(found: Mapping[str, Any], calls: list[WaitingCall]) -> str:
    """The assistant (graph) that runs the thread: the thread's metadata, else the graph name
    the request was made by."""
    metadata = found.get("metadata") or {}
    name = metadata.get("assistant_id") or metadata.get("graph_id") or calls[0].graph
    if not name:
        raise HandrailError("the thread does not say which graph runs it")
    return str(name)


def raise_refusal(result: Mapping[str, Any], thread_id: str) -> None:
    """Raise what the server's graph refused: an error the run ended with, or the reason a
    fresh request carries (the graph asked again; the thread still waits)."""
    if "__error__" in result:
        error = result["__error__"] if isinstance(result["__error__"], Mapping) else {}
        name = str(error.get("error") or "an error")
        kind = getattr(errors, name, None)
        refusal = (
            kind if isinstance(kind, type) and issubclass(kind, ApprovalError) else ResumeError
        )
        raise refusal(f"the server refused: {name}: {error.get('message')}", thread_id=thread_id)
    for interrupt in result.get("__interrupt__") or []:
        value = interrupt.get("value") if isinstance(interrupt, Mapping) else None
        info = value.get("handrail") if isinstance(value, Mapping) else None
        if isinstance(info, Mapping) and info.get("error"):
            raise ResumeError(f"the server refused: {info['error']}", thread_id=thread_id)


def detail_of(response: httpx.Response) -> str:
    """What an error answer of the server says (its ``detail`` or ``message``), cut short."""
    try:
        body = response.json()
    except ValueError:
        body = response.text
    said = body.get("detail") or body.get("message") if isinstance(body, Mapping) else None
    return str(said or body)[:200]
