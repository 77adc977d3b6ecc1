"""How the command line shows things: waiting calls as a table, a detail or JSON; stats; a
run's outcome; an audit verification."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from handrail.audit import ToolStats, Verification, key_id
from handrail.review import PendingApproval


def listing_json(item: PendingApproval) -> dict[str, Any]:
    """A waiting call as ``--json`` prints it: the listing's model, and whether it expired."""
    return {**item.model_dump(mode="json"), "expired": item.expired()}


def listing_table(items: list[PendingApproval]) -> str:
    if not items:
        return "no approvals or escalations waiting"
    now = datetime.now(UTC)
    head = (
        "KIND",
        "THREAD",
        "CALL",
        "TOOL",
        "ARGS",
        "RULE",
        "APPROVERS",
        "OK",
        "ACTOR",
        "AGE",
        "EXPIRES",
    )
    rows = [head] + [
        (
            i.kind,
            i.thread_id or "-",
            i.tool_call_id,
            i.tool,
            short(json.dumps(i.args, sort_keys=True), 40),
            i.rule_id or "(default)",
            ",".join(i.approvers),
            f"{len(i.approvals)}/{i.min_approvals}",
            i.actor.id,
            age(now - i.requested_at),
            "expired" if i.expired(now) else age(i.expires_at - now) if i.expires_at else "-",
        )
        for i in items
    ]
    widths = [max(len(r[c]) for r in rows) for c in range(len(head))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join([*lines, f"{len(items)} call(s) waiting"])


def listing_detail(items: list[PendingApproval]) -> str:
    if not items:
        return "nothing is waiting on this thread"
    lines = [f"thread {items[0].thread_id} (graph {items[0].graph}), asked by {items[0].actor.id}"]
    for n, i in enumerate(items, 1):
        deadline = i.expires_at.isoformat() if i.expires_at else "none"
        if i.kind == "escalation" and i.error is not None:
            lines += [
                f"{n}. ESCALATION: {i.tool} call {i.tool_call_id} failed after {i.attempts} "
                f"attempt(s); decide with retry, skip or abort",
                f"   error      {i.error.kind}"
                + (f" (HTTP {i.error.status_code})" if i.error.status_code else "")
                + f": {i.error.message}",
                f"   args       {json.dumps(i.args, sort_keys=True)}",
                f"   deciders   one of {list(i.approvers)}",
                f"   requested  {i.requested_at.isoformat()}",
            ]
            continue
        lines += [
            f"{n}. {i.tool} call {i.tool_call_id}" + ("  [EXPIRED]" if i.expired() else ""),
            f"   args       {json.dumps(i.args, sort_keys=True)}",
            f"   args hash  {i.args_hash}",
            f"   rule       {i.rule_id or '(policy default)'}",
            f"   approvers  one of {list(i.approvers)}; approved {len(i.approvals)} of "
            f"{i.min_approvals}" + (f" (by {', '.join(i.approvals)})" if i.approvals else ""),
            f"   requested  {i.requested_at.isoformat()}",
            f"   expires    {deadline}",
        ]
    return "\n".join(lines)


def short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def age(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if abs(seconds) >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def latency(ms: float | None) -> str:
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms:.0f}ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f}s"
    return age(timedelta(milliseconds=ms))


def stats_table(stats: list[ToolStats]) -> str:
    if not stats:
        return "no tool calls audited"
    head = (
        "TOOL",
        "CALLS",
        "ALLOW",
        "ASK",
        "DENY",
        "P50",
        "P95",
        "RETRIES",
        "FAILURES",
        "ESCALATED",
    )
    rows = [head] + [
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
    widths = [max(len(r[c]) for r in rows) for c in range(len(head))]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def outcome(thread: str, result: dict[str, Any]) -> str:
    if result.get("__interrupt__"):
        info = result["__interrupt__"][0].value.get("handrail", {})
        waiting = ", ".join(info.get("tool_call_ids", [])) or "a decision"
        return f"thread {thread}: decided; it is waiting again for {waiting}"
    messages = result.get("messages") or []
    last = messages[-1].text if messages else ""
    return f"thread {thread}: decided; the run went on and ended: {last}"


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
