"""`classify` turns what a tool raised (typed, builtin, httpx, requests) into a routed kind."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http import HTTPStatus
from pathlib import Path

import httpx
import pytest
import requests

import handrail.tools.errors
from handrail.state import CallError, ErrorKind
from handrail.tools.errors import (
    BadRequest,
    Forbidden,
    RateLimited,
    ServerError,
    ToolFailure,
    TransientError,
    classify,
    retry_after_seconds,
    status_kind,
)

URL = "https://api.example/x"

STATUS_KINDS: list[tuple[int, ErrorKind]] = [
    (400, "bad_request"),
    (401, "forbidden"),
    (403, "forbidden"),
    (404, "bad_request"),
    (408, "transient"),
    (422, "bad_request"),
    (429, "rate_limited"),
    (500, "server_error"),
    (501, "server_error"),
    (502, "transient"),
    (503, "transient"),
    (504, "transient"),
]


def httpx_status_error(
    status: int, headers: dict[str, str] | None = None, url: str = URL, body: str = ""
) -> httpx.HTTPStatusError:
    """The real error httpx raises for an error response."""
    response = httpx.Response(status, headers=headers, text=body, request=httpx.Request("GET", url))
    with pytest.raises(httpx.HTTPStatusError) as info:
        response.raise_for_status()
    return info.value


def requests_http_error(
    status: int, headers: dict[str, str] | None = None, reason: str | None = None
) -> requests.HTTPError:
    """The real error requests raises for an error response."""
    response = requests.Response()
    response.status_code = status
    response.headers.update(headers or {})
    response.url = URL
    response.reason = reason if reason is not None else HTTPStatus(status).phrase
    with pytest.raises(requests.HTTPError) as info:
        response.raise_for_status()
    return info.value


@pytest.mark.parametrize(("status", "kind"), STATUS_KINDS)
def test_status_kind_by_family(status: int, kind: ErrorKind) -> None:
    assert status_kind(status) == kind


@pytest.mark.parametrize("status", [100, 200, 302, 399, 600, 0])
def test_status_kind_outside_4xx_and_5xx_is_unknown(status: int) -> None:
    assert status_kind(status) == "unknown"


@pytest.mark.parametrize(("status", "kind"), STATUS_KINDS)
def test_httpx_status_error_classified_by_status(status: int, kind: ErrorKind) -> None:
    error = classify(httpx_status_error(status))
    assert error.kind == kind
    assert error.status_code == status
    assert error.message == f"HTTP {status} {HTTPStatus(status).phrase} from {URL}"


@pytest.mark.parametrize(("status", "kind"), STATUS_KINDS)
def test_requests_http_error_classified_by_status(status: int, kind: ErrorKind) -> None:
    error = classify(requests_http_error(status))
    assert error.kind == kind
    assert error.status_code == status
    assert error.message == f"HTTP {status} {HTTPStatus(status).phrase} from {URL}"


def test_requests_http_error_without_reason_uses_the_standard_phrase() -> None:
    response = requests.Response()
    response.status_code = 404
    response.url = URL
    with pytest.raises(requests.HTTPError) as info:
        response.raise_for_status()
    assert classify(info.value).message == f"HTTP 404 Not Found from {URL}"


def test_httpx_message_leaves_out_body_credentials_and_query() -> None:
    exc = httpx_status_error(
        500, url="https://user:pw@api.example/x?api_key=secret#frag", body="token=secret"
    )
    error = classify(exc)
    assert error.message == f"HTTP 500 Internal Server Error from {URL}"
    assert "secret" not in error.message
    assert "pw" not in error.message


def test_httpx_429_retry_after_seconds() -> None:
    error = classify(httpx_status_error(429, {"Retry-After": "2"}))
    assert error == CallError(
        kind="rate_limited",
        message=f"HTTP 429 Too Many Requests from {URL}",
        status_code=429,
        retry_after=2.0,
    )


def test_requests_429_retry_after_seconds() -> None:
    error = classify(requests_http_error(429, {"Retry-After": "2"}))
    assert error.kind == "rate_limited"
    assert error.retry_after == 2.0


def test_503_keeps_its_retry_after() -> None:
    for exc in (
        httpx_status_error(503, {"Retry-After": "7"}),
        requests_http_error(503, {"Retry-After": "7"}),
    ):
        error = classify(exc)
        assert (error.kind, error.status_code, error.retry_after) == ("transient", 503, 7.0)


def test_retry_after_is_ignored_on_other_statuses() -> None:
    assert classify(httpx_status_error(404, {"Retry-After": "5"})).retry_after is None
    assert classify(requests_http_error(500, {"Retry-After": "5"})).retry_after is None


def test_retry_after_http_date_via_httpx_and_requests() -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    for exc in (
        httpx_status_error(429, {"Retry-After": when}),
        requests_http_error(429, {"Retry-After": when}),
    ):
        retry_after = classify(exc).retry_after
        assert retry_after is not None
        assert 55 <= retry_after <= 60


def test_429_with_missing_or_garbage_retry_after_has_none() -> None:
    assert classify(httpx_status_error(429)).retry_after is None
    assert classify(httpx_status_error(429, {"Retry-After": "soon"})).retry_after is None
    assert classify(requests_http_error(429)).retry_after is None
    assert classify(requests_http_error(429, {"Retry-After": "later"})).retry_after is None


@pytest.mark.parametrize(("value", "seconds"), [("2", 2.0), ("0", 0.0), ("1.5", 1.5), (" 3 ", 3.0)])
def test_retry_after_seconds_delta(value: str, seconds: float) -> None:
    assert retry_after_seconds(value) == seconds


def test_retry_after_seconds_http_date_counts_from_now() -> None:
    now = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC)
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:30 GMT", now=now) == 30.0
    assert retry_after_seconds("Wed, 21 Oct 2015 08:28:00 +0100", now=now) == 0.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:29:00 GMT", now=now.replace(tzinfo=None)) == 60


def test_retry_after_seconds_past_date_is_zero() -> None:
    now = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC)
    assert retry_after_seconds("Wed, 21 Oct 2015 07:00:00 GMT", now=now) == 0.0


@pytest.mark.parametrize(
    "value", [None, "", "soon", "-5", "nan", "inf", "2 seconds", "Wed, 99 Oct 2015 07:28:00 GMT"]
)
def test_retry_after_seconds_unreadable_is_none(value: str | None) -> None:
    assert retry_after_seconds(value) is None


def raising(exc_type: type[httpx.TransportError]) -> Callable[[httpx.Request], httpx.Response]:
    """A MockTransport handler that fails the way a real transport would."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise exc_type("boom", request=request)

    return handler


@pytest.mark.parametrize(
    "exc_type",
    [
        httpx.ConnectTimeout,
        httpx.ReadTimeout,
        httpx.PoolTimeout,
        httpx.ConnectError,
        httpx.ReadError,
        httpx.RemoteProtocolError,
    ],
)
def test_httpx_timeouts_and_network_errors_are_transient(
    exc_type: type[httpx.TransportError],
) -> None:
    with (
        httpx.Client(transport=httpx.MockTransport(raising(exc_type))) as client,
        pytest.raises(exc_type) as info,
    ):
        client.get(URL)
    error = classify(info.value)
    assert error.kind == "transient"
    assert error.status_code is None
    assert error.message == f"{exc_type.__name__}: boom"


def test_httpx_errors_this_does_not_read_are_unknown() -> None:
    with pytest.raises(httpx.UnsupportedProtocol) as info:
        httpx.get("ftp://api.example/x")
    assert classify(info.value).kind == "unknown"


@pytest.mark.parametrize(
    "exc",
    [
        requests.Timeout("timed out"),
        requests.ConnectTimeout("timed out"),
        requests.ReadTimeout("timed out"),
        requests.ConnectionError("refused"),
    ],
)
def test_requests_timeouts_and_connection_errors_are_transient(
    exc: requests.RequestException,
) -> None:
    error = classify(exc)
    assert error.kind == "transient"
    assert error.message.startswith(f"{type(exc).__name__}: ")


def test_requests_http_error_without_response_is_unknown() -> None:
    error = classify(requests.HTTPError("no response"))
    assert error == CallError(kind="unknown", message="HTTPError: no response")


@pytest.mark.parametrize(
    "exc",
    [
        TimeoutError("took too long"),
        ConnectionError("dropped"),
        ConnectionResetError("reset by peer"),
        ConnectionRefusedError("refused"),
    ],
)
def test_builtin_timeouts_and_connection_errors_are_transient(exc: OSError) -> None:
    assert classify(exc) == CallError(kind="transient", message=str(exc))


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (
            RateLimited("slow down", retry_after=3),
            CallError(kind="rate_limited", message="slow down", status_code=429, retry_after=3),
        ),
        (RateLimited(), CallError(kind="rate_limited", message="RateLimited", status_code=429)),
        (TransientError("flaky"), CallError(kind="transient", message="flaky")),
        (
            TransientError("gateway", status_code=502),
            CallError(kind="transient", message="gateway", status_code=502),
        ),
        (ServerError("boom"), CallError(kind="server_error", message="boom", status_code=500)),
        (BadRequest("bad"), CallError(kind="bad_request", message="bad", status_code=400)),
        (
            BadRequest("gone", status_code=404),
            CallError(kind="bad_request", message="gone", status_code=404),
        ),
        (Forbidden("no"), CallError(kind="forbidden", message="no", status_code=403)),
        (ToolFailure("odd"), CallError(kind="unknown", message="odd")),
    ],
)
def test_typed_errors_keep_kind_status_and_retry_after(
    exc: ToolFailure, expected: CallError
) -> None:
    assert classify(exc) == expected


def test_other_exceptions_are_unknown_with_their_type_name() -> None:
    assert classify(ValueError("bad value")) == CallError(
        kind="unknown", message="ValueError: bad value"
    )
    assert classify(KeyError("k")).message == "KeyError: 'k'"
    assert classify(RuntimeError()).message == "RuntimeError: RuntimeError"


def test_errors_module_does_not_import_httpx_or_requests() -> None:
    source = Path(handrail.tools.errors.__file__).read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"httpx", "requests"}


def test_classify_works_without_httpx_or_requests_loaded() -> None:
    # Handrail's own dependencies (langgraph, langchain-core) load httpx and requests, so the
    # child drops them from sys.modules, as if no tool had imported them, before classifying.
    code = """
import sys
from handrail.tools.errors import classify
for name in [m for m in sys.modules if m.split(".")[0] in ("httpx", "requests")]:
    del sys.modules[name]
assert classify(ValueError("bad")).message == "ValueError: bad"
assert classify(TimeoutError("slow")).kind == "transient"
assert "httpx" not in sys.modules, "classify imported httpx"
assert "requests" not in sys.modules, "classify imported requests"
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
