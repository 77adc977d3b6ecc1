"""What another policy would have decided: every call in the audit trail decided again.

`replay` reads the ``decided`` events of ``handrail_audit`` (read-only) and decides each call
again under a policy, with the tool and arguments the trail recorded and the roles of the
thread's requester (pinned in ``handrail_threads`` at the thread's first run, as every call of
the thread was decided for it). A call is one (thread, call id, args hash): an approver's edit,
decided anew, is a call of its own; a call decided more than once keeps its latest decision.

Not replayed, and said why: a call whose recorded arguments hold a redacted value (the policy's
``redact`` paths hide them, so what the new policy would see is not known), and a call whose
requester cannot be recovered (no thread, no pin, or a pin naming someone else), and a call a
limit of the policy covers whose total at the time is not kept (``handrail_limit_uses`` keeps the
window's total before each use it holds; a new limit, a call a ``then: deny`` limit refused, or a
use given back has none). Calls that failed the tool's schema (``invalid``) are counted apart: no
policy decides them.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from handrail.context import Actor
from handrail.policies.limits import explain_limits
from handrail.redaction import REDACTED
from handrail.storage import Store, Target, open_store

if TYPE_CHECKING:
    from handrail.policies.decision import Decision
    from handrail.policies.model import Policy

__all__ = ["NotReplayable", "ReplayReport", "ReplayedCall", "Transition", "replay"]

_PAGE = 512
"""Audit rows read per query."""
_CHUNK = 500
"""Threads whose requesters are read per query."""
_COLUMNS = "seq, at, thread_id, tool_call_id, tool, payload, decision, rule_id, agent_id, args_hash"


@dataclass(frozen=True, kw_only=True, slots=True)
class ReplayedCall:
    """One call whose effect the replayed policy would change."""

    thread_id: str | None
    tool_call_id: str
    tool: str
    at: str
    """When the call was decided (the ``decided`` event's timestamp)."""
    old_effect: str
    old_rule: str | None
    """The rule that decided it then (None: the policy default)."""
    new_effect: str
    new_rule: str | None
    """The rule that would decide it now (None: the policy default)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Transition:
    """How many calls of one tool go from one (effect, rule) to another."""

    tool: str
    old_effect: str
    old_rule: str | None
    new_effect: str
    new_rule: str | None
    calls: int


@dataclass(frozen=True, kw_only=True, slots=True)
class NotReplayable:
    """A call that could not be decided again, and why."""

    thread_id: str | None
    tool_call_id: str
    tool: str
    at: str
    kind: Literal["redacted", "actor", "limit"]
    """``redacted``: its recorded arguments hide values; ``actor``: its requester's roles are
    not known; ``limit``: a limit's total when it was decided is not kept."""
    reason: str
    """Why, in words: the redacted argument paths, or what is missing of the requester."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ReplayReport:
    """What `replay` found: the calls in the window, what would change, what could not be
    replayed."""

    since: datetime | None
    """The window's start (None: the whole trail)."""
    calls: int
    """Calls decided in the window (each (thread, call, args hash) once), invalid ones too."""
    replayed: int
    """Calls decided again."""
    unchanged: int
    """Replayed calls the policy gives the same effect (``rule_changed`` of them by another
    rule)."""
    rule_changed: int
    """Replayed calls with the same effect, decided by another rule."""
    changed: int
    """Replayed calls the policy gives another effect."""
    by_effect: dict[str, int]
    """The changed calls by change, e.g. ``{"allow→ask": 3}``."""
    transitions: tuple[Transition, ...]
    """The changed calls by tool, old and new effect and rule; most calls first."""
    samples: tuple[ReplayedCall, ...]
    """Some of the changed calls (the latest first), at most `replay`'s ``sample``."""
    invalid: int
    """Calls that failed the tool's schema: answered as bad requests, decided by no policy."""
    not_replayable: int
    """Calls not decided again (``redacted``, ``unknown_actor`` and ``limit_unknown``)."""
    redacted: int
    """Calls whose recorded arguments hold a redacted value."""
    unknown_actor: int
    """Calls whose requester's roles could not be recovered."""
    limit_unknown: int = 0
    """Calls a limit covers whose total at the time is not kept."""
    skipped: tuple[NotReplayable, ...]
    """The calls not replayed, named (the latest first), at most `replay`'s ``sample``."""

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (``since`` in ISO-8601)."""
        data = asdict(self)
        data["since"] = None if self.since is None else self.since.isoformat()
        return data


@dataclass(slots=True)
class _Row:
    seq: int
    at: str
    thread_id: str | None
    tool_call_id: str
    tool: str
    payload: str
    decision: str | None
    rule_id: str | None
    agent_id: str | None


def replay(
    policy: Policy, db: Target, *, since: datetime | None = None, sample: int = 20
) -> ReplayReport:
    """Decide every call in ``db``'s audit trail again under ``policy``; what would change.

    ``db`` is a SQLite file, a PostgreSQL URL or a `Store`, opened read-only (nothing is
    written, nothing created; a database without an audit trail has no calls). ``since`` (a
    naive datetime is UTC) keeps the calls decided at or after it. ``sample`` bounds the calls
    listed in ``samples`` and ``skipped`` (the counts cover every call). Raises `StorageError`
    for a database that cannot be opened.
    """
    since = _utc(since)
    owned = not isinstance(db, Store)
    store = open_store(db, readonly=True)
    try:
        calls = _latest_decisions(store, since)
        pins = _pins(store, {r.thread_id for r in calls if r.thread_id is not None})
        totals = _limit_totals(store) if policy.limits else {}
    finally:
        if owned:
            store.close()
    return _Replay(policy, pins, sample, totals).run(calls, since)


class _Replay:
    """One replay's counts, as the calls go by."""

    def __init__(
        self,
        policy: Policy,
        pins: Mapping[str, Actor],
        sample: int,
        totals: Mapping[tuple[str, str], dict[str, int | float]],
    ) -> None:
        self.policy, self.pins, self.sample, self.totals = policy, pins, sample, totals
        self.counts: Counter[str] = Counter()
        self.by_effect: Counter[str] = Counter()
        self.transitions: Counter[tuple[str, str, str | None, str, str | None]] = Counter()
        self.samples: list[ReplayedCall] = []
        self.skipped: list[NotReplayable] = []

    def run(self, calls: list[_Row], since: datetime | None) -> ReplayReport:
        for row in sorted(calls, key=lambda r: r.seq, reverse=True):
            self._one(row)
        c = self.counts
        ordered = sorted(self.transitions.items(), key=lambda kv: (-kv[1], _sort_key(kv[0])))
        return ReplayReport(
            since=since,
            calls=len(calls),
            replayed=c["unchanged"] + c["changed"],
            unchanged=c["unchanged"],
            rule_changed=c["rule_changed"],
            changed=c["changed"],
            by_effect=dict(sorted(self.by_effect.items(), key=lambda kv: (-kv[1], kv[0]))),
            transitions=tuple(
                Transition(
                    tool=tool, old_effect=oe, old_rule=orule, new_effect=ne, new_rule=nrule, calls=n
                )
                for (tool, oe, orule, ne, nrule), n in ordered
            ),
            samples=tuple(self.samples),
            invalid=c["invalid"],
            not_replayable=c["redacted"] + c["actor"] + c["limit"],
            redacted=c["redacted"],
            unknown_actor=c["actor"],
            limit_unknown=c["limit"],
            skipped=tuple(self.skipped),
        )

    def _one(self, row: _Row) -> None:
        if row.decision not in ("allow", "ask", "deny"):
            self.counts["invalid"] += 1
            return
        args = json.loads(row.payload)
        hidden = sorted(set(_redacted_paths(args, "args")))
        if hidden:
            self._skip(row, "redacted", f"redacted: {', '.join(hidden)}")
            return
        actor, why = self._actor(row)
        if actor is None:
            self._skip(row, "actor", why)
            return
        new = self._decide(row, args, actor)
        if new is None:
            return
        if new.effect == row.decision:
            self.counts["unchanged"] += 1
            self.counts["rule_changed"] += new.rule_id != row.rule_id
            return
        self.counts["changed"] += 1
        self.by_effect[f"{row.decision}→{new.effect}"] += 1
        self.transitions[(row.tool, row.decision, row.rule_id, new.effect, new.rule_id)] += 1
        if len(self.samples) < self.sample:
            self.samples.append(
                ReplayedCall(
                    thread_id=row.thread_id,
                    tool_call_id=row.tool_call_id,
                    tool=row.tool,
                    at=row.at,
                    old_effect=row.decision,
                    old_rule=row.rule_id,
                    new_effect=new.effect,
                    new_rule=new.rule_id,
                )
            )

    def _decide(self, row: _Row, args: dict[str, Any], actor: Actor) -> Decision | None:
        """The policy's decision on the call, its limits applied with the totals kept when it
        was decided; None (skipped) when a limit covering it has none kept."""
        limits = self.policy.limits_for(row.tool)
        if not limits:
            return self.policy.decide(row.tool, args, actor)
        kept = self.totals.get((row.thread_id or "", row.tool_call_id), {})
        counts = {lim.id for lim in self.policy.limits if lim.sum is None}
        usage = {k: int(v) if k in counts else v for k, v in kept.items()}
        missing = next((lim.id for lim in limits if lim.id not in usage), None)
        if missing is not None:
            why = f"the total of limit {missing!r} when the call was decided is not kept"
            self._skip(row, "limit", why)
            return None
        at = _instant(row.at)
        decision = self.policy.decide(row.tool, args, actor, now=at, usage=usage)
        return explain_limits(limits, decision, args, usage, at)[0]

    def _actor(self, row: _Row) -> tuple[Actor | None, str]:
        """The call's requester, or why it is not known."""
        if row.thread_id is None:
            return None, "the call has no thread, so no requester was pinned"
        pinned = self.pins.get(row.thread_id)
        if pinned is None:
            return None, f"no requester is pinned for thread {row.thread_id!r}"
        if row.agent_id is not None and row.agent_id != pinned.id:
            return None, (
                f"the call was made for {row.agent_id!r}, but the thread's pinned requester "
                f"is {pinned.id!r}"
            )
        return pinned, ""

    def _skip(self, row: _Row, kind: Literal["redacted", "actor", "limit"], reason: str) -> None:
        self.counts[kind] += 1
        if len(self.skipped) < self.sample:
            self.skipped.append(
                NotReplayable(
                    thread_id=row.thread_id,
                    tool_call_id=row.tool_call_id,
                    tool=row.tool,
                    at=row.at,
                    kind=kind,
                    reason=reason,
                )
            )


def _sort_key(key: tuple[str, str, str | None, str, str | None]) -> tuple[str, ...]:
    return tuple(part or "" for part in key)


def _latest_decisions(store: Store, since: datetime | None) -> list[_Row]:
    """The latest ``decided`` row of each (thread, call, args hash) decided at or after
    ``since``."""
    latest: dict[tuple[str | None, str, str | None], _Row] = {}
    for record in _decided_rows(store):
        seq, at, thread, call, tool, payload, decision, rule, agent, digest = record
        if since is not None and _instant(at) < since:
            continue
        latest[(thread, call, digest)] = _Row(
            seq=int(seq),
            at=str(at),
            thread_id=thread,
            tool_call_id=call,
            tool=tool,
            payload=payload,
            decision=decision,
            rule_id=rule,
            agent_id=agent,
        )
    return list(latest.values())


def _decided_rows(store: Store) -> Iterator[tuple[Any, ...]]:
    """The ``decided`` rows in ``seq`` order, a page at a time."""
    if not store.table_exists("handrail_audit"):
        return
    select = f"SELECT {_COLUMNS} FROM handrail_audit WHERE event = 'decided' AND seq > ?"
    last = 0
    while True:
        with store.read() as sql:
            page = sql.execute(f"{select} ORDER BY seq LIMIT {_PAGE}", (last,)).fetchall()
        yield from (tuple(r) for r in page)
        if len(page) < _PAGE:
            return
        last = int(page[-1][0])


def _limit_totals(store: Store) -> dict[tuple[str, str], dict[str, int | float]]:
    """The window's total before each use the limits' table holds, by call and limit."""
    if not store.table_exists("handrail_limit_uses"):
        return {}
    with store.read() as sql:
        rows = sql.execute(
            "SELECT thread_id, tool_call_id, limit_id, total FROM handrail_limit_uses"
        ).fetchall()
    found: dict[tuple[str, str], dict[str, int | float]] = {}
    for thread, call, limit_id, total in rows:
        found.setdefault((thread, call), {})[limit_id] = float(total)
    return found


def _pins(store: Store, threads: set[str]) -> dict[str, Actor]:
    """The pinned requester of each of ``threads`` that has one."""
    if not threads or not store.table_exists("handrail_threads"):
        return {}
    found: dict[str, Actor] = {}
    ordered = sorted(threads)
    for start in range(0, len(ordered), _CHUNK):
        chunk = ordered[start : start + _CHUNK]
        marks = ", ".join("?" * len(chunk))
        with store.read() as sql:
            rows = sql.execute(
                f"SELECT thread_id, actor FROM handrail_threads WHERE thread_id IN ({marks})",
                chunk,
            ).fetchall()
        for thread, actor in rows:
            found[str(thread)] = Actor.model_validate(json.loads(actor))
    return found


def _redacted_paths(value: Any, path: str) -> Iterator[str]:
    """The paths (``args.card.pan``, through lists without an index) holding `REDACTED`."""
    if isinstance(value, str) and value == REDACTED:
        yield path
    elif isinstance(value, Mapping):
        for key, child in value.items():
            yield from _redacted_paths(child, f"{path}.{key}")
    elif isinstance(value, list):
        for child in value:
            yield from _redacted_paths(child, path)


def _instant(at: str) -> datetime:
    """An audit row's timestamp as an aware datetime (naive is UTC)."""
    when = datetime.fromisoformat(at)
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _utc(when: datetime | None) -> datetime | None:
    """A naive datetime taken as UTC."""
    return when.replace(tzinfo=UTC) if when is not None and when.tzinfo is None else when
