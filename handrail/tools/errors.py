"""Errors a tool may raise to say how it failed, and the classifier that reads any exception.

Tools raise these (or plain exceptions); the ``classify_error`` node routes on the kind:
``rate_limited`` waits for Retry-After and retries, everything else goes back to the model.
"""

from __future__ import annotations

from handrail.state import CallError, ErrorKind

__all__ = [
    "BadRequest",
    "Forbidden",
    "RateLimited",
    "ServerError",
    "ToolFailure",
    "TransientError",
    "classify",
]


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


def classify(exc: BaseException) -> CallError:
    """Turn any exception a tool raised into a classified `CallError`."""
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
    return CallError(kind="unknown", message=f"{type(exc).__name__}: {message}")
