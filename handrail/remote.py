"""`ServerInbox`: deciding threads hosted on a LangGraph server, through the server's own API
(``langgraph-sdk``).

The server keeps the thread's checkpoints (`handrail.Inbox` would find none), so a decision is a
run on the server: the waiting request is read from the thread's interrupt, one decision per
waiting call is sent as ``command={"resume": ...}``, and the server's graph checks it. The token is
the bearer header: behind Handrail's auth handler (`handrail.auth.server`) the authenticated user
is the approver, and the payload names none::

    server = ServerInbox("http://127.0.0.1:2024", token=alice_jwt)
    server.approve(thread_id)                      # or: await server.aapprove(thread_id)

``ServerInbox(None, token=...)`` decides from inside the server's own process (a custom route of
``langgraph.json``'s ``http.app``, such as the web inbox): requests go to the server's ASGI app in
process, **through its auth middleware**. (``langgraph_sdk.get_client(url=None)`` would skip
authentication altogether: its loopback is mounted under ``/noauth``, so the run would have no
authenticated user and no approver.) In process, only the async methods work.

On a server that authenticates nobody (``HANDRAIL_AUTH=off``), ``claim=Actor(...)`` names the
approver in the payload, and the audit records it as claimed.

A refusal raises a Handrail error and leaves the thread waiting: ``401`` `IdentityError`; ``403``
or ``404`` (the token does not reach the thread) and a thread with nothing waiting
`NothingPending`; ``409`` (another run holds the thread) `AlreadyDecided`; a decision the graph
refuses, the error it raised (`ApproverNotAuthorized`, `SelfApproval`, ...) or, when the graph
asked again with the reason, `ResumeError`; anything else `HandrailError`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

import httpx

from handrail._inbox_resume import approver_claim
from handrail._server_api import (
    assistant_of,
    bound,
    complete,
    detail_of,
    entry,
    in_process,
    load_sdk,
    raise_refusal,
)
from handrail.context import Actor
from handrail.errors import (
    AlreadyDecided,
    HandrailError,
    IdentityError,
    NothingPending,
    ResumeError,
)
from handrail.nodes._effects import Call, Script, arun, run
from handrail.review import (
    Abort,
    Action,
    Approve,
    Edit,
    HumanDecision,
    Reject,
    Respond,
    Retry,
    Skip,
    WaitingCall,
    calls_of,
)
from handrail.review.decisions import SKIPPED

__all__ = ["HASH_PREFIX", "Resumed", "ServerInbox"]

HASH_PREFIX = 12
"""The fewest characters of an args hash that an approval may name."""

P = ParamSpec("P")
T = TypeVar("T")
Client = Any
"""A ``langgraph_sdk`` client, sync or async: the same methods, answered or awaited."""
Choice = Callable[[list[WaitingCall]], Mapping[str, HumanDecision]]
"""The decisions, keyed by tool call id, given the calls the thread waits on."""
Named = str | list[str] | None
"""The waiting calls a decision names (it must name them all: one decision each), or None."""


@dataclass(frozen=True, slots=True)
class Resumed:
    """A thread resumed on the server with a decision."""

    thread_id: str
    calls: tuple[WaitingCall, ...]
    """The calls decided, in the order their decisions were given."""
    result: dict[str, Any]
    """The run's result: the thread's state as JSON (with ``__interrupt__`` if it waits
    again)."""


def _twins(
    script: Callable[Concatenate[ServerInbox, Client, P], Script[T]],
) -> tuple[
    Callable[Concatenate[ServerInbox, P], T],
    Callable[Concatenate[ServerInbox, P], Coroutine[Any, Any, T]],
]:
    """A decision's script as a method driven in the calling thread with a sync client, and as
    its async twin driven from the event loop with an async client."""

    def method(self: ServerInbox, /, *args: P.args, **kwargs: P.kwargs) -> T:
        with self._sync_client() as client:
            return run(script(self, client, *args, **kwargs))

    async def twin(self: ServerInbox, /, *args: P.args, **kwargs: P.kwargs) -> T:
        async with self._async_client() as client:
            return await arun(script(self, client, *args, **kwargs))

    signature = inspect.signature(script)
    shown = signature.replace(
        parameters=[p for p in signature.parameters.values() if p.name != "client"],
        return_annotation=inspect.Signature.empty,
    )
    for prefix, made in (("", method), ("a", twin)):
        functools.update_wrapper(made, script)
        made.__name__ = prefix + script.__name__.lstrip("_")
        made.__qualname__ = f"ServerInbox.{made.__name__}"
        made.__signature__ = shown  # type: ignore[union-attr]
    return method, twin


class ServerInbox:
    """Decisions on the threads of the LangGraph server at ``url`` (None: the server this code
    runs in), sent with ``token`` as the bearer credentials.

    ``headers`` are sent with every request (a proxy's, say); ``claim`` names the approver in the
    payload for a server without authentication; ``timeout`` bounds each request, the run a
    decision resumes included, in seconds. Every deciding method has an async twin (``aapprove``
    ...), one script for both; without ``url``, only the twins work.
    """

    def __init__(
        self,
        url: str | None,
        *,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
        claim: Actor | None = None,
        timeout: float = 120.0,
    ) -> None:
        self.url = url
        """The server's URL (None: in process)."""
        self.where = url or "this LangGraph server"
        """The server, as errors name it."""
        self.claim = claim
        """The approver the payload names when no token is sent."""
        self._headers = dict(headers or {})
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._token = bool(token)
        self._timeout = timeout

    # -- deciding: one script each, driven by the method and awaited by its twin ----------------

    def _approve(
        self,
        client: Client,
        thread_id: str,
        *,
        call_id: Named = None,
        args_hash: str | None = None,
    ) -> Script[Resumed]:
        """Approve the thread's waiting calls, each bound to its arguments' hash as the server
        lists it, or to ``args_hash`` (the whole hash or at least its first 12 characters) for a
        thread that waits on one call."""
        if args_hash is not None and len(args_hash) < HASH_PREFIX:
            raise HandrailError(f"an args hash needs at least {HASH_PREFIX} characters")

        def choose(calls: list[WaitingCall]) -> dict[str, HumanDecision]:
            if args_hash is not None and len(calls) != 1:
                raise ResumeError(
                    f"args_hash binds one call; the thread waits on {len(calls)}",
                    thread_id=thread_id,
                )
            return {c.tool_call_id: Approve(args_hash=bound(c, args_hash)) for c in calls}

        return (yield from self._deciding(client, thread_id, choose, call_id))

    approve, aapprove = _twins(_approve)

    def _edit(
        self, client: Client, thread_id: str, call_id: str, args: Mapping[str, Any]
    ) -> Script[Resumed]:
        """Run call ``call_id`` with ``args`` instead; the server's policy decides them."""

        def choose(calls: list[WaitingCall]) -> dict[str, HumanDecision]:
            tool = {c.tool_call_id: c.tool for c in calls}.get(call_id, "")
            return {call_id: Edit(edited_action=Action(name=tool, args=dict(args)))}

        return (yield from self._deciding(client, thread_id, choose))

    edit, aedit = _twins(_edit)

    def _reject(
        self, client: Client, thread_id: str, reason: str, *, call_id: Named = None
    ) -> Script[Resumed]:
        """Refuse the thread's waiting calls; the model is told ``reason``."""
        return (yield from self._each(client, thread_id, Reject(message=reason), call_id))

    reject, areject = _twins(_reject)

    def _respond(
        self, client: Client, thread_id: str, message: str, *, call_id: Named = None
    ) -> Script[Resumed]:
        """Answer the model with ``message`` in place of running the calls."""
        return (yield from self._each(client, thread_id, Respond(message=message), call_id))

    respond, arespond = _twins(_respond)

    def _retry(self, client: Client, thread_id: str, *, call_id: Named = None) -> Script[Resumed]:
        """Escalation: run the failed calls once more."""
        return (yield from self._each(client, thread_id, Retry(), call_id))

    retry, aretry = _twins(_retry)

    def _skip(
        self,
        client: Client,
        thread_id: str,
        message: str = SKIPPED,
        *,
        call_id: Named = None,
    ) -> Script[Resumed]:
        """Escalation: do not run the failed calls again; the model is told ``message``."""
        return (yield from self._each(client, thread_id, Skip(message=message), call_id))

    skip, askip = _twins(_skip)

    def _abort(
        self, client: Client, thread_id: str, message: str = "aborted by the operator"
    ) -> Script[Resumed]:
        """Escalation: end the run; every escalated call is answered with ``message``."""
        return (yield from self._each(client, thread_id, Abort(message=message), None))

    abort, aabort = _twins(_abort)

    def _decide(
        self, client: Client, thread_id: str, decisions: Mapping[str, HumanDecision]
    ) -> Script[Resumed]:
        """Resume ``thread_id`` with one decision per waiting call, keyed by tool call id (an
        approval naming no args hash is bound to the one the server lists)."""
        return (yield from self._deciding(client, thread_id, lambda _: decisions))

    decide, adecide = _twins(_decide)

    # -- internals ------------------------------------------------------------------------------

    def _each(
        self, client: Client, thread_id: str, decision: HumanDecision, call_id: Named
    ) -> Script[Resumed]:
        def choose(calls: list[WaitingCall]) -> dict[str, HumanDecision]:
            return dict.fromkeys((c.tool_call_id for c in calls), decision)

        return (yield from self._deciding(client, thread_id, choose, call_id))

    def _deciding(
        self, client: Client, thread_id: str, choose: Choice, call_id: Named = None
    ) -> Script[Resumed]:
        """Read the thread's request, send ``choose``'s decisions (after checking that the calls
        named, if any, are the waiting ones), and what the run gave."""
        try:
            found = yield Call(lambda: client.threads.get(thread_id))
            calls = calls_of(self._request(found, thread_id))
            if call_id is not None:
                complete([call_id] if isinstance(call_id, str) else call_id, calls)
            decisions = choose(calls)
            complete(decisions, calls)
            payload: dict[str, Any] = {
                "decisions": [entry(decisions[c.tool_call_id], c) for c in calls]
            }
            if self.claim is not None and not self._token:
                payload["approver"] = approver_claim(self.claim)
            command = {"resume": payload}
            assistant = assistant_of(found, calls)
            result = yield Call(
                lambda: client.runs.wait(thread_id, assistant, command=command, raise_error=False)
            )
        except httpx.HTTPStatusError as exc:
            raise self._refused(exc.response, thread_id) from None
        except httpx.HTTPError as exc:
            raise HandrailError(f"{self.where}: {type(exc).__name__}: {exc}") from None
        if not isinstance(result, Mapping):
            raise HandrailError(f"{self.where}: unexpected answer {result!r:.200}")
        raise_refusal(result, thread_id)
        return Resumed(thread_id=thread_id, calls=tuple(calls), result=dict(result))

    def _request(self, found: Mapping[str, Any], thread_id: str) -> Mapping[str, Any]:
        """The thread's one Handrail request."""
        values = [
            i.get("value")
            for waiting in (found.get("interrupts") or {}).values()
            for i in waiting
            if isinstance(i.get("value"), Mapping) and "handrail" in i["value"]
        ]
        if not values:
            raise NothingPending(
                f"nothing is waiting on thread {thread_id!r} on {self.where}", thread_id=thread_id
            )
        if len(values) > 1:
            raise ResumeError(
                f"the thread waits on {len(values)} requests at once; decide it through the "
                "server's API",
                thread_id=thread_id,
            )
        value: Mapping[str, Any] = values[0]
        return value

    def _refused(self, response: httpx.Response, thread_id: str) -> HandrailError:
        status = response.status_code
        said = f"{self.where} answered {status}"
        detail = detail_of(response)
        if status == 401:
            return IdentityError(f"{said}: send a valid token ({detail})")
        if status in (403, 404):
            detail = "no such thread, or not one your token reaches"
        kind = {403: NothingPending, 404: NothingPending, 409: AlreadyDecided, 422: ResumeError}
        if status in kind:
            return kind[status](f"{said}: {detail}", thread_id=thread_id)
        return HandrailError(f"{said} for thread {thread_id!r}: {detail}")

    def _sync_client(self) -> Client:
        if self.url is None:
            raise HandrailError(
                "ServerInbox(None) decides in the server's own process, from its event loop: "
                "await the async methods (aapprove, areject, ...)"
            )
        sdk = load_sdk()
        return sdk.get_sync_client(
            url=self.url, api_key=None, headers=self._headers, timeout=self._timeout
        )

    def _async_client(self) -> Client:
        sdk = load_sdk()
        if self.url is not None:
            return sdk.get_client(
                url=self.url, api_key=None, headers=self._headers, timeout=self._timeout
            )
        base, transport = in_process()
        http = httpx.AsyncClient(
            base_url=base, transport=transport, headers=self._headers, timeout=self._timeout
        )
        return sdk.client.LangGraphClient(http)
