"""Per-tool circuit breakers: stop hammering an API that is down, and fail its calls fast.

When a tool's API keeps failing (timeouts, 5xx, 429s), retrying every call from every graph thread
only adds load to a service that is already unwell and makes each agent wait out its own backoff.
A `CircuitBreaker` counts each tool's consecutive failures; at the tool's
``circuit_breaker.failures`` it *opens* and refuses the tool's calls without running them (the
caller reports them as ``circuit_open``) for ``circuit_breaker.cool_down``. After the cool-down it
is *half-open*: it lets exactly one trial call through, and that call's outcome closes it again or
re-opens it for a fresh cool-down.

One breaker is shared by every graph thread (and every OS thread) of the process that holds it,
since they all call the same APIs; ``build_agent(..., circuit_breaker=...)`` lets several graphs
share one. The state lives in memory only: a restarted process starts with every circuit closed.

How each `ErrorKind` is recorded:

- ``rate_limited``, ``transient``, ``server_error``, ``unknown``: the API is unwell (or the tool
  failed in a way nobody classified), so the failure counts; while half-open it re-opens the
  circuit.
- ``bad_request``, ``tool_error``, ``forbidden``: the API answered; the call was wrong. It does
  not count and does not reset the count while closed; while half-open it closes the circuit,
  because the API is up.
- ``circuit_open``, ``outcome_unknown``: says nothing about the API (the call did not run here, or
  a crash lost its outcome). Ignored while closed; while half-open it ends the trial without a
  verdict, so the next call becomes the trial.

Only a trial ends an open circuit: outcomes recorded while the circuit is open with no trial in
flight (calls admitted before it opened, finishing late) are ignored. A trial whose outcome is
never recorded (its caller was cancelled) is presumed lost after the tool's cool-down, and the next
call becomes the trial, so a circuit cannot stay half-open forever.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Literal, assert_never

from handrail.policies.settings import CircuitSettings
from handrail.state import ErrorKind

__all__ = ["CircuitBreaker", "CircuitState"]

CircuitState = Literal["closed", "open", "half_open"]
"""Closed: calls run. Open: calls fail fast. Half-open: the cool-down is over; one trial runs."""

_Verdict = Literal["success", "failure", "answered", "neutral"]


def _verdict(kind: ErrorKind) -> _Verdict:
    """What an outcome of ``kind`` says about the tool's API (see the module docstring)."""
    match kind:
        case "rate_limited" | "transient" | "server_error" | "unknown":
            return "failure"
        case "bad_request" | "tool_error" | "forbidden":
            return "answered"
        case "circuit_open" | "outcome_unknown":
            return "neutral"
        case _:
            assert_never(kind)


class _Circuit:
    """One tool's breaker state; only touched under `CircuitBreaker`'s lock."""

    __slots__ = ("failures", "open_until", "trial_at")

    def __init__(self) -> None:
        self.failures = 0
        """Consecutive counted failures while closed."""
        self.open_until: float | None = None
        """None: closed. Otherwise the clock reading at which the cool-down ends."""
        self.trial_at: float | None = None
        """When the half-open trial in flight was admitted; None: no trial in flight."""


class CircuitBreaker:
    """Per-tool circuit breakers shared by every thread (and OS thread) of one process using it.

    ``clock`` returns seconds on a clock that never goes back (`time.monotonic` unless given).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._circuits: dict[str, _Circuit] = {}

    def admit(self, tool: str, settings: CircuitSettings) -> float | None:
        """None: the call may run. A float: the circuit is open; seconds until it lets a trial
        call through (fail fast).

        While half-open the first caller gets None and becomes the trial; later callers get the
        seconds left until that trial is presumed lost (``settings.cool_down`` after it began),
        always more than 0. A caller given None must `record` the call's outcome.
        """
        with self._lock:
            circuit = self._circuits.get(tool)
            if circuit is None or circuit.open_until is None:
                return None
            now = self._clock()
            if now < circuit.open_until:
                return circuit.open_until - now
            if circuit.trial_at is not None:
                lost_at = circuit.trial_at + settings.cool_down.total_seconds()
                if now < lost_at:
                    return lost_at - now
            circuit.trial_at = now
            return None

    def record(self, tool: str, settings: CircuitSettings, kind: ErrorKind | None) -> None:
        """Record the outcome of a call `admit` let run: ``kind`` None for a success.

        While closed, a success resets the count and a counted failure (``rate_limited``,
        ``transient``, ``server_error``, ``unknown``) adds one; ``settings.failures`` in a row open
        the circuit for ``settings.cool_down``. While half-open the outcome is the trial's: a
        counted failure re-opens the circuit for a fresh cool-down, a success, ``bad_request`` or
        ``forbidden`` closes it, ``circuit_open`` or ``outcome_unknown`` frees the trial slot.
        While open with no trial in flight the outcome is a late one and is ignored.
        """
        verdict: _Verdict = "success" if kind is None else _verdict(kind)
        with self._lock:
            circuit = self._circuits.get(tool)
            if circuit is None:
                if verdict != "failure":
                    return
                circuit = self._circuits[tool] = _Circuit()
            if circuit.open_until is None:
                if verdict == "success":
                    circuit.failures = 0
                elif verdict == "failure":
                    circuit.failures += 1
                    if circuit.failures >= settings.failures:
                        self._open(circuit, settings)
            elif circuit.trial_at is not None:
                if verdict == "failure":
                    self._open(circuit, settings)
                elif verdict == "neutral":
                    circuit.trial_at = None
                else:
                    circuit.failures = 0
                    circuit.open_until = circuit.trial_at = None

    def state(self, tool: str) -> CircuitState:
        """Whether ``tool``'s circuit is closed, open (in its cool-down) or half-open."""
        with self._lock:
            circuit = self._circuits.get(tool)
            if circuit is None or circuit.open_until is None:
                return "closed"
            if circuit.trial_at is None and self._clock() < circuit.open_until:
                return "open"
            return "half_open"

    def reset(self, tool: str | None = None) -> None:
        """Close ``tool``'s circuit and forget its failures; every tool's if ``tool`` is None."""
        with self._lock:
            if tool is None:
                self._circuits.clear()
            else:
                self._circuits.pop(tool, None)

    def _open(self, circuit: _Circuit, settings: CircuitSettings) -> None:
        """Open ``circuit`` for ``settings.cool_down`` from now (the caller holds the lock)."""
        circuit.failures = 0
        circuit.open_until = self._clock() + settings.cool_down.total_seconds()
        circuit.trial_at = None
