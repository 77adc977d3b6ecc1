"""Where events go: a signed webhook (`WebhookChannel`, over httpx) and every channel apprise
knows (`AppriseChannel`: e-mail, Slack, Teams ...), behind one small `Channel` protocol.

A webhook POSTs the event as JSON with these headers:

- ``Handrail-Event-Id`` and ``Idempotency-Key``: the event's stable id, the same on every
  attempt (a receiver that saw it already answers 2xx and does nothing);
- ``Handrail-Timestamp``: when this attempt was signed (Unix seconds);
- ``Handrail-Signature``: ``sha256=`` and the hex HMAC-SHA256, keyed by the shared secret, of
  ``"{timestamp}.{body}"``. `verify_signature` checks it for a receiver written in Python.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Protocol, TypeVar
from urllib.parse import quote, urlsplit

import httpx

from handrail.errors import DeliveryError
from handrail.notify._config import NotificationConfigError, Notifications, Webhook
from handrail.storage.outbox import OutboxEvent

__all__ = [
    "AppriseChannel",
    "Channel",
    "DeliveryError",
    "Message",
    "ReceiverRefused",
    "WebhookChannel",
    "channels_of",
    "sign",
    "verify_signature",
]

T = TypeVar("T")

ANSWER_KEPT = 200
"""How much of a failed webhook's answer is read and recorded (characters)."""

SIGNATURE_HEADER = "Handrail-Signature"
TIMESTAMP_HEADER = "Handrail-Timestamp"
EVENT_ID_HEADER = "Handrail-Event-Id"

_TITLES = {
    "opened": "Approval needed: {tool} (thread {thread})",
    "escalated": "Escalation: {tool} needs a decision (thread {thread})",
    "reminder": "Reminder: {tool} (thread {thread}) expires at {deadline}",
    "expired": "Expired: {tool} (thread {thread}) was not decided in time",
}


@dataclass(frozen=True, kw_only=True, slots=True)
class Message:
    """An event as it is sent: the event and the link to its request in the web inbox."""

    event: OutboxEvent
    link: str | None

    @classmethod
    def of(cls, event: OutboxEvent, base_url: str | None) -> Message:
        """The message for ``event``, linking under ``base_url`` (no link without one)."""
        link = None
        if base_url is not None:
            thread, call = (quote(p, safe="") for p in (event.thread_id, event.tool_call_id))
            link = f"{base_url}/threads/{thread}#call-{call}"
        return cls(event=event, link=link)

    def body(self) -> dict[str, Any]:
        """The webhook's JSON body."""
        e = self.event
        return {
            "id": e.event_id,
            "type": f"request.{e.event}",
            "occurred_at": e.occurred_at,
            "thread_id": e.thread_id,
            "tool_call_id": e.tool_call_id,
            "requested_at": e.requested_at,
            "link": self.link,
            "request": e.request,
        }

    def title(self) -> str:
        """A one-line subject for people."""
        r = self.event.request
        return _TITLES[self.event.event].format(
            tool=r.get("tool", "?"), thread=self.event.thread_id, deadline=r.get("expires_at")
        )

    def text(self) -> str:
        """What people read: the request's description, who may decide, and the link."""
        r = self.event.request
        lines = [str(r.get("description") or r.get("tool", ""))]
        if rule := r.get("rule_id"):
            lines.append(f"Rule: {rule}")
        if approvers := r.get("approvers"):
            lines.append(f"Approvers: {', '.join(approvers)}")
        if actor := r.get("actor"):
            lines.append(f"Requested by: {actor.get('id')}")
        if deadline := r.get("expires_at"):
            lines.append(f"Deadline: {deadline}")
        if self.link:
            lines.append(f"Open: {self.link}")
        return "\n".join(lines)


class Channel(Protocol):
    """Something that sends a message somewhere, or raises `DeliveryError`."""

    @property
    def name(self) -> str:
        """Stable across workers and restarts, without secrets: deliveries are keyed by it."""
        ...

    def send(self, message: Message) -> None:
        """Send ``message``; raise `DeliveryError` when it did not arrive."""
        ...


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Handrail-Signature`` value for ``body`` signed at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify_signature(
    secret: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    tolerance: timedelta = timedelta(minutes=5),
    now: datetime | None = None,
) -> bool:
    """Whether ``body`` with ``headers`` (as received) was signed with ``secret`` within
    ``tolerance`` of ``now``: for a receiver, before it trusts the event."""
    folded = {k.lower(): v for k, v in headers.items()}
    try:
        stamp = int(folded[TIMESTAMP_HEADER.lower()])
        given = folded[SIGNATURE_HEADER.lower()]
    except (KeyError, ValueError):
        return False
    at = now.timestamp() if now is not None else time.time()
    if abs(at - stamp) > tolerance.total_seconds():
        return False
    return hmac.compare_digest(given, sign(secret, stamp, body))


class ReceiverRefused(DeliveryError):
    """A receiver's answer that says when to try again (``Retry-After``) or not to (410 Gone)."""

    def __init__(
        self, channel: str, problem: str, *, final: bool, retry_after: timedelta | None
    ) -> None:
        super().__init__(channel, problem)
        self.final = final
        """The receiver is gone: no attempt follows."""
        self.retry_after = retry_after
        """How long the receiver asked to wait before the next attempt."""


class WebhookChannel:
    """POSTs each event as signed JSON to a `Webhook`; any answer but 2xx is a failure.

    An attempt takes at most ``timeout`` seconds in all, however slowly the receiver answers;
    redirects are not followed; at most `ANSWER_KEPT` characters of an answer are read.
    """

    def __init__(self, hook: Webhook, *, timeout: float) -> None:
        self._hook = hook
        self._timeout = timeout
        self._tls = httpx.create_ssl_context()
        parts = urlsplit(hook.url)
        digest = hashlib.sha256(hook.url.encode()).hexdigest()[:12]
        self.name = hook.name or f"webhook:{parts.hostname}:{digest}"
        """The channel's name: the webhook's, or its host and a hash of its URL."""

    def send(self, message: Message) -> None:
        body = json.dumps(message.body(), sort_keys=True).encode()
        stamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "handrail-notify",
            EVENT_ID_HEADER: message.event.event_id,
            "Idempotency-Key": message.event.event_id,
            TIMESTAMP_HEADER: str(stamp),
            SIGNATURE_HEADER: sign(self._hook.secret, stamp, body),
        }
        try:
            status, said, wait = _run(
                lambda: asyncio.wait_for(self._post(body, headers), self._timeout)
            )
        except TimeoutError:
            raise DeliveryError(self.name, f"timed out after {self._timeout:g} s") from None
        except httpx.HTTPError as error:
            raise DeliveryError(self.name, f"{type(error).__name__}: {error}") from None
        if 200 <= status < 300:
            return
        problem = f"HTTP {status}: {said}"
        if status == 410 or wait is not None:
            raise ReceiverRefused(self.name, problem, final=status == 410, retry_after=wait)
        raise DeliveryError(self.name, problem)

    async def _post(
        self, body: bytes, headers: dict[str, str]
    ) -> tuple[int, str, timedelta | None]:
        """POST ``body``: the status, the start of the answer, and its ``Retry-After``."""
        async with (
            httpx.AsyncClient(timeout=self._timeout, verify=self._tls) as client,
            client.stream("POST", self._hook.url, content=body, headers=headers) as answer,
        ):
            said = b""
            async for chunk in answer.aiter_bytes():
                said += chunk
                if len(said) >= ANSWER_KEPT:
                    break
            text = said[:ANSWER_KEPT].decode("utf-8", errors="replace")
            return answer.status_code, text, _retry_after(answer.headers.get("Retry-After"))


class AppriseChannel:
    """Sends each event's title and text through one apprise URL (e-mail, Slack, Teams ...)."""

    def __init__(self, url: str, *, timeout: float) -> None:
        import apprise

        plugin = apprise.Apprise.instantiate(url)
        if plugin is None:
            scheme = url.partition("://")[0] or url[:12]
            raise NotificationConfigError(
                "apprise_urls", f"apprise cannot use a {scheme}:// URL as given (see its wiki)"
            )
        self._apprise = apprise.Apprise()
        self._apprise.add(plugin)
        self._timeout = timeout
        digest = hashlib.sha256(url.encode()).hexdigest()[:12]
        self.name = f"apprise:{plugin.service_name}:{digest}"
        """The channel's name: apprise's service and a hash of the URL."""

    def send(self, message: Message) -> None:
        import apprise

        capture: Any = apprise.LogCapture  # untyped
        with capture(level=logging.WARNING) as logs:
            sent = self._apprise.notify(
                body=message.text(), title=message.title(), timeout=self._timeout
            )
        if not sent:
            said = " ".join(line.split(" - ", 2)[-1] for line in logs.getvalue().splitlines())
            raise DeliveryError(self.name, said or "apprise could not send the notification")


def channels_of(notifications: Notifications) -> list[Channel]:
    """The channels ``notifications`` configures; refuses two channels with one name."""
    found: list[Channel] = [
        *(WebhookChannel(h, timeout=notifications.timeout) for h in notifications.webhooks),
        *(AppriseChannel(u, timeout=notifications.timeout) for u in notifications.apprise_urls),
    ]
    names = [c.name for c in found]
    if dups := sorted({n for n in names if names.count(n) > 1}):
        raise NotificationConfigError("webhooks", f"two channels are named {dups[0]!r}")
    return found


def _run(coroutine: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``coroutine()`` to its end on a loop of its own: in this thread, or in another when
    this one runs an event loop already (a notebook, an async app)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine())
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(coroutine())).result()


def _retry_after(value: str | None) -> timedelta | None:
    """A ``Retry-After`` header (seconds, or an HTTP date) as a wait; None when absent or
    unreadable."""
    if value is None:
        return None
    if value.strip().isdigit():
        return timedelta(seconds=int(value))
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(moment - datetime.now(UTC), timedelta(0))
