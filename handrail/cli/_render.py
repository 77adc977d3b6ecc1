"""How the command line shows things: waiting calls as a table, a detail or JSON; stats; a
policy's explanation; an audit verification. Tables fit the terminal (`handrail.cli._tables`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from rich.console import Group, RenderableType
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from handrail.audit import ToolStats, Verification, key_id
from handrail.cli._tables import Col, fitted
from handrail.policies.decision import Explanation
from handrail.review import PendingApproval


def listing_json(item: PendingApproval) -> dict[str, Any]:
    """A waiting call as ``--json`` prints it: the listing's model, and whether it expired."""
    return {**item.model_dump(mode="json"), "expired": item.expired()}


_LISTING = (
    Col("THREAD", least=9, give=2),
    Col("CALL", least=10, give=3),
    Col("TOOL", least=10, give=4),
    Col("ARGS", least=8, give=0),
    Col("WHY", least=12, give=1),
    Col("WHO", least=8, give=5),
    Col("AGE", right=True),
    Col("DUE", right=True),
)


def listing_table(items: list[PendingApproval]) -> RenderableType:
    """``pending``: one line per waiting call; WHY is the rule that asked (for an escalation, the
    kind of error), WHO the roles that may decide (and the approvals so far where several are
    needed), DUE the time left."""
    if not items:
        return Text("no approvals or escalations waiting")
    now = datetime.now(UTC)
    rows = [
        (
            i.thread_id or "-",
            i.tool_call_id,
            i.tool,
            json.dumps(i.args, sort_keys=True, ensure_ascii=False),
            _why(i),
            ",".join(i.approvers)
            + (f" {len(i.approvals)}/{i.min_approvals}" if i.min_approvals > 1 else ""),
            age(now - i.requested_at),
            "expired" if i.expired(now) else age(i.expires_at - now) if i.expires_at else "-",
        )
        for i in items
    ]
    return Group(fitted(_LISTING, rows), Text(f"{len(items)} call(s) waiting"))


def _why(item: PendingApproval) -> str:
    if item.kind == "escalation":
        return item.error.kind if item.error is not None else "escalated"
    return item.rule_id or "(default)"


def listing_detail(items: list[PendingApproval]) -> RenderableType:
    """``show``: each waiting call of one thread, field by field (long values wrap)."""
    first = items[0]
    parts: list[RenderableType] = [
        Text(f"thread {first.thread_id} (graph {first.graph}), asked by {first.actor.id}")
    ]
    for n, i in enumerate(items, 1):
        grid = Table.grid(padding=(0, 2))
        grid.add_column(no_wrap=True)
        grid.add_column(overflow="fold")
        if i.kind == "escalation":
            title = (
                f"{n}. ESCALATION: {i.tool} call {i.tool_call_id} failed after {i.attempts} "
                "attempt(s); decide with retry, skip or abort"
            )
            if i.error is not None:
                code = f" (HTTP {i.error.status_code})" if i.error.status_code else ""
                grid.add_row("error", f"{i.error.kind}{code}: {i.error.message}")
        else:
            title = f"{n}. {i.tool} call {i.tool_call_id}" + ("  [EXPIRED]" if i.expired() else "")
        grid.add_row("args", json.dumps(i.args, sort_keys=True, ensure_ascii=False))
        grid.add_row("args hash", i.args_hash)
        if i.kind == "approval":
            grid.add_row("rule", i.rule_id or "(policy default)")
            approved = f" (by {', '.join(i.approvals)})" if i.approvals else ""
            grid.add_row(
                "approvers",
                f"one of {', '.join(i.approvers)}; approved {len(i.approvals)} of "
                f"{i.min_approvals}{approved}",
            )
        else:
            grid.add_row("deciders", f"one of {', '.join(i.approvers)}")
        grid.add_row("requested", i.requested_at.isoformat(timespec="seconds"))
        expires = i.expires_at.isoformat(timespec="seconds") if i.expires_at else "none"
        grid.add_row("expires", expires)
        grid.add_row("decide", ", ".join(i.allowed_decisions))
        parts += [Text(title), Padding(grid, (0, 0, 0, 3), expand=False)]
    return Group(*parts)


def explanation(result: Explanation) -> RenderableType:
    """``policy explain``: the decision, then every rule's verdict and every limit's state
    (reasons wrap)."""
    d = result.decision
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("", no_wrap=True)
    table.add_column("RULE", no_wrap=True, overflow="ellipsis", max_width=24)
    table.add_column("EFFECT", no_wrap=True)
    table.add_column("WHY", overflow="fold")
    for t in result.rules:
        table.add_row("✓" if t.matched else "·", t.rule_id, t.effect, t.reason)
    for lim in result.limits:
        table.add_row("✓" if lim.over else "·", lim.limit_id, f"limit→{lim.effect}", lim.reason)
    return Group(Text(f"decision: {d.effect} ({d.reason})"), table)


def age(delta: timedelta) -> str:
    """A short age or time left: ``45s``, ``12m``, ``3h``, ``2d``."""
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if abs(seconds) >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def latency(ms: float | None) -> str:
    """A wait in milliseconds, shortly."""
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms:.0f}ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f}s"
    return age(timedelta(milliseconds=ms))


_STATS = (
    Col("TOOL", least=10, give=1),
    Col("CALLS", right=True),
    Col("ALLOW", right=True),
    Col("ASK", right=True),
    Col("DENY", right=True),
    Col("P50", right=True),
    Col("P95", right=True),
    Col("RETRIES", right=True),
    Col("FAILURES", least=10, give=0),
    Col("ESCALATED", right=True),
)


def stats_table(stats: list[ToolStats]) -> RenderableType:
    """``stats``: one line per tool."""
    if not stats:
        return Text("no tool calls audited")
    rows = [
        (
            s.tool,
            str(s.calls),
            str(s.allowed),
            str(s.asked),
            str(s.denied),
            latency(s.approval_p50_ms),
            latency(s.approval_p95_ms),
            str(s.retries),
            ",".join(f"{kind}={n}" for kind, n in s.failures.items()) or "-",
            str(s.escalations),
        )
        for s in stats
    ]
    return fitted(_STATS, rows)


def verdict(result: Verification, head: str | None, public_key: Ed25519PublicKey | None) -> str:
    """``audit verify``'s lines: the verdict, then what the head and the key found."""
    if not result.ok:
        return f"audit failed: {result.problem}"
    lines = [f"audit ok: {result.rows} rows" + (f", head {result.head}" if result.head else "")]
    if head is not None:
        lines.append(f"{result.rows_after_head} row(s) added after head {head}")
    if public_key is not None:
        others = f"; {result.other_anchors} by other keys ignored" if result.other_anchors else ""
        lines.append(
            f"{result.anchors} checkpoint(s) signed by key {key_id(public_key)} hold, "
            f"the last {result.signed_head}{others}"
        )
    return "\n".join(lines)
