"""Errors a tool may raise to say how it failed, and the classifier that reads any exception.

Tools raise these, or let any exception escape: `classify` also reads builtin timeouts and dropped
connections, and the HTTP errors of ``httpx`` and ``requests`` when a tool uses them (Handrail
imports neither and depends on neither). The ``classify_error`` node routes on the kind:

- ``rate_limited`` (429): waits for the API's Retry-After (capped), then retries.
- ``transient`` (timeouts, dropped connections, 408/502/503/504): backs off with jitter, retries.
- ``server_error`` (500 and other 5xx) and ``unknown``: escalate to a human, as the call may
  have had effects.
- ``bad_request`` (other 4xx): goes back to the model, which should change its arguments.
- ``forbidden`` (401/403): fails without retry.
- ``circuit_open``: the tool's circuit breaker refused the call; fails fast.
- ``outcome_unknown``: the execution ledger holds an intent with no outcome; escalates.
"""

from __future__ import annotations

import contextlib
import math
import sys
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from types import ModuleType
from urllib.parse import urlsplit, urlunsplit

from handrail.state import CallError, ErrorKind

__all__ = [
    "BadRequest",
    "Forbidden",
    "RateLimited",
    "ServerError",
    "ToolFailure",
    "TransientError",
    "classify",
    "retry_after_seconds",
    "status_kind",
]

_TRANSIENT_STATUSES = frozenset({408, 502, 503, 504})
_RETRY_AFTER_STATUSES = frozenset({429, 503})


class ToolFailure(Exception):
    """Base of the failures a tool can raise to name its kind."""

    kind: ErrorKind = "unknown"
    default_status: int | None = None

    def __init__(self, message: str = "", *, status_code: int | None = None) -> None:
        self.status_code = status_code if status_code is not None else self.default_status
        """The HTTP status the tool's API answered, if any."""
        super().__init__(message or type(self).__name__)


class RateLimited(ToolFailure):
    """The API refused for rate limiting (HTTP 429); retry after ``retry_after`` seconds."""

    kind = "rate_limited"
    default_status = 429

    def __init__(
        self, message: str = "", *, retry_after: float | None = None, status_code: int | None = None
    ) -> None:
        self.retry_after = retry_after
        """Seconds the API asked to wait (its Retry-After header), if it said."""
        super().__init__(message, status_code=status_code)


class TransientError(ToolFailure):
    """A failure worth retrying: timeout, dropped connection, 502/503/504."""

    kind = "transient"


class ServerError(ToolFailure):
    """The API failed on its side (HTTP 500): the outcome may be unknown."""

    kind = "server_error"
    default_status = 500


class BadRequest(ToolFailure):
    """The call was wrong (HTTP 4xx, validation): the model should change its arguments."""

    kind = "bad_request"
    default_status = 400


class Forbidden(ToolFailure):
    """The API refused the credentials (HTTP 401/403): retrying will not help."""

    kind = "forbidden"
    default_status = 403


def status_kind(status: int) -> ErrorKind:
    """The kind of failure an HTTP status means (``unknown`` for anything but 4xx and 5xx)."""
    if status == 429:
        return "rate_limited"
    if status in _TRANSIENT_STATUSES:
        return "transient"
    if status in (401, 403):
        return "forbidden"
    if 400 <= status < 500:
        return "bad_request"
    if 500 <= status < 600:
        return "server_error"
    return "unknown"


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from an HTTP Retry-After header, or None if it is missing or unreadable.

    The header holds delta-seconds (``"2"``; ``"1.5"`` is tolerated) or an HTTP-date, read as the
    seconds from ``now`` (default: the current time; never negative). Naive datetimes are UTC.
    """
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    delta = _as_utc(when) - _as_utc(now if now is not None else datetime.now(UTC))
    return max(0.0, delta.total_seconds())


def classify(exc: BaseException) -> CallError:
    """Turn any exception a tool raised into a classified `CallError`.

    Reads Handrail's `ToolFailure` classes, builtin timeouts and connection errors, and the
    errors of ``httpx`` and ``requests`` if those libraries are already imported.
    """
    message = str(exc) or type(exc).__name__
    if isinstance(exc, ToolFailure):
        return CallError(
            kind=exc.kind,
            message=message,
            status_code=exc.status_code,
            retry_after=exc.retry_after if isinstance(exc, RateLimited) else None,
        )
    if isinstance(exc, TimeoutError | ConnectionError):
        return CallError(kind="transient", message=message)
    httpx = sys.modules.get("httpx")
    if httpx is not None and (error := _from_httpx(httpx, exc)) is not None:
        return error
    requests = sys.modules.get("requests")
    if requests is not None and (error := _from_requests(requests, exc)) is not None:
        return error
    return CallError(kind="unknown", message=f"{type(exc).__name__}: {message}")


def _from_httpx(httpx: ModuleType, exc: BaseException) -> CallError | None:
    """Classify an ``httpx`` error, or None if ``exc`` is not one this reads."""
    if isinstance(exc, httpx.HTTPStatusError):
        response = exc.response
        return _http_status_error(
            response.status_code,
            response.reason_phrase,
            str(exc.request.url),
            response.headers.get("retry-after"),
        )
    if isinstance(exc, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError):
        return _transport_error(exc)
    return None


def _from_requests(requests: ModuleType, exc: BaseException) -> CallError | None:
    """Classify a ``requests`` error, or None if ``exc`` is not one this reads."""
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        response = exc.response
        return _http_status_error(
            response.status_code, response.reason, response.url, response.headers.get("retry-after")
        )
    if isinstance(exc, requests.Timeout | requests.ConnectionError):
        return _transport_error(exc)
    return None


def _http_status_error(
    status: int, reason: str | None, url: str | None, retry_after: str | None
) -> CallError:
    """A `CallError` for an HTTP error response; the message never holds the response body."""
    if not reason:
        with contextlib.suppress(ValueError):
            reason = HTTPStatus(status).phrase
    message = f"HTTP {status} {reason}" if reason else f"HTTP {status}"
    if url and (safe_url := _safe_url(url)):
        message += f" from {safe_url}"
    return CallError(
        kind=status_kind(status),
        message=message,
        status_code=status,
        retry_after=retry_after_seconds(retry_after) if status in _RETRY_AFTER_STATUSES else None,
    )


def _transport_error(exc: BaseException) -> CallError:
    """A transient `CallError` for a library's timeout or connection failure."""
    text = str(exc)
    name = type(exc).__name__
    return CallError(kind="transient", message=f"{name}: {text}" if text else name)


def _safe_url(url: str) -> str | None:
    """``url`` without credentials, query or fragment, which may hold secrets (None if invalid)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _as_utc(moment: datetime) -> datetime:
    """``moment`` with UTC as its timezone if it has none."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
