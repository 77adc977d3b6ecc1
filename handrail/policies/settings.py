"""How Handrail treats each tool, whatever the rules decide: retries, waits, idempotency, who
handles its escalations, its circuit breaker and what is hidden of it; and the durations they are
written with (``90s``, ``30m``, ``24h``, ``7d``)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["CircuitSettings", "ToolSettings", "parse_duration"]

_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+)s)?(?:(\d+)ms)?$")
_REDACT_PATH = re.compile(r"^(?:args(?:\.[^.\s]+)+|response\.body(?:\.[^.\s]+)*)$")


def parse_duration(value: object) -> object:
    """``90s``, ``30m``, ``24h``, ``7d``, ``250ms`` (or seconds as a number) as a `timedelta`."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"{value!r} is negative; a duration is 0 or more seconds")
        return timedelta(seconds=value)
    if isinstance(value, str):
        m = _DURATION.match(value.strip())
        if not m or not any(m.groups()):
            raise ValueError(
                f"{value!r} is not a duration like '250ms', '90s', '30m', '24h' or '7d'"
            )
        d, h, mi, s, ms = (int(g or 0) for g in m.groups())
        return timedelta(days=d, hours=h, minutes=mi, seconds=s, milliseconds=ms)
    return value


class CircuitSettings(BaseModel):
    """When a tool's circuit breaker opens, and for how long it fails calls fast."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    failures: int = Field(default=5, ge=1, le=1000, strict=True)
    """Consecutive failures (of kinds that say the API is unwell) that open the circuit."""
    cool_down: timedelta = timedelta(seconds=30)
    """How long an open circuit refuses calls before it lets one trial call through."""

    _cool_down = field_validator("cool_down", mode="before")(parse_duration)


class ToolSettings(BaseModel):
    """How Handrail treats one tool, whatever the rules decide."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_retries: int = Field(default=3, ge=0, le=100, strict=True)
    """Automatic retries after the first attempt, for 429s and transient failures. A human's
    ``retry`` of an escalation counts too, so after one the automatic budget may be spent."""
    backoff: timedelta = timedelta(milliseconds=500)
    """The first wait before retrying a transient failure; it doubles per retry, with jitter."""
    max_wait: timedelta = timedelta(seconds=30)
    """The longest single wait before a retry, whatever a Retry-After header asks."""
    idempotent: bool = False
    """True if running the tool twice with the same arguments is harmless: it skips the
    execution ledger, so a call whose outcome a crash lost is simply run again."""
    escalate_to: tuple[str, ...] = ()
    """Roles that may decide this tool's escalations; empty: the policy's ``escalate_to``."""
    circuit_breaker: CircuitSettings = CircuitSettings()
    """When repeated failures make calls to the tool fail fast."""
    output: Literal["trusted", "untrusted"] | None = None
    """Whether the tool's output is untrusted content (an inbox, a web page: text someone else
    wrote, which may carry injected instructions); absent: the policy's ``tool_output``."""
    untrusted_when: str | None = None
    """A CEL condition over the call's ``args`` under which one call's output is untrusted
    though the tool's is trusted (``args.channel.startsWith('External_')``: an outside
    organisation's channel). The arguments are the ones the call was decided with; when they
    are not known, or the condition fails or is no boolean, the output is untrusted."""
    redact: tuple[str, ...] = ()
    """Paths hidden from events, audit rows, approvers and traces: ``args.account_number`` (an
    argument), ``response.body.ssn`` (a key of a JSON result), ``response.body`` (all of it)."""

    _waits = field_validator("backoff", "max_wait", mode="before")(parse_duration)

    @field_validator("redact")
    @classmethod
    def _paths(cls, paths: tuple[str, ...]) -> tuple[str, ...]:
        for path in paths:
            if not _REDACT_PATH.match(path):
                raise ValueError(
                    f"{path!r} is not a redact path; use args.NAME[.KEY...], response.body or "
                    "response.body.KEY[.KEY...]"
                )
        return paths
