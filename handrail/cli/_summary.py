"""What a decision ran, said in a few lines (or as JSON): each decided call's tool, what became
of it (ran and succeeded, failed, waits again, was not run) and its retries, then how the run
went on (what the thread waits for now, or the run's last message). Works on a local graph's
result (messages and `ToolCallRecord` objects) and on a LangGraph server's (the same state as
JSON)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.messages import BaseMessage

from handrail.state import ToolCallRecord

__all__ = ["summary", "summary_lines"]

_PAST = {
    "approve": "approved",
    "edit": "edited",
    "reject": "rejected",
    "respond": "answered",
    "retry": "retried",
    "skip": "skipped",
    "abort": "aborted",
}


def summary(
    verb: str, thread: str, decided: Sequence[tuple[str, str]], result: Mapping[str, Any]
) -> dict[str, Any]:
    """The decision ``verb`` on ``thread``'s calls ``decided`` (call id, tool), given the run's
    ``result``: each call's outcome, what the thread waits for now, and the model's last text."""
    records = result.get("calls") or {}
    calls = []
    for call_id, tool in decided:
        raw = records.get(call_id)
        record = ToolCallRecord.model_validate(raw) if raw is not None else None
        calls.append(
            {
                "call_id": call_id,
                "tool": tool,
                "decision": verb,
                "status": record.status if record else None,
                "runs": _runs(record),
                "retries": record.retry_count if record else 0,
                "error": record.error.model_dump(mode="json") if record and record.error else None,
                "outcome": _outcome(record)
                if record
                else _answered(call_id, result.get("messages") or []),
            }
        )
    waiting = _waiting(result)
    return {
        "thread_id": thread,
        "decision": verb,
        "calls": calls,
        "waiting": waiting,
        "ended": not waiting,
        "final_message": None if waiting else _last_text(result.get("messages") or []),
    }


def summary_lines(said: Mapping[str, Any]) -> list[str]:
    """`summary` as lines for a person."""
    past = _PAST.get(said["decision"], said["decision"])
    lines = [f"{past} {c['tool']} (call {c['call_id']}) → {c['outcome']}" for c in said["calls"]]
    thread = said["thread_id"]
    if said["waiting"]:
        waiting = ", ".join(said["waiting"])
        lines.append(f"thread {thread}: decided; it is waiting again for {waiting}")
    else:
        lines.append(f"thread {thread}: the run went on and ended: {said['final_message'] or ''}")
    return lines


def _runs(record: ToolCallRecord | None) -> int:
    if record is None or record.status not in ("succeeded", "failed", "escalated"):
        return 0
    return record.retry_count + 1


def _times(n: int) -> str:
    return {1: "once", 2: "twice"}.get(n, f"{n} times")


def _answered(call_id: str, messages: Sequence[Any]) -> str:
    """The outcome of a call whose record the state does not hold (a graph that keeps no
    ``calls``): what its tool message says."""
    for m in messages:
        fields = m if isinstance(m, Mapping) else getattr(m, "__dict__", {})
        if fields.get("type") == "tool" and fields.get("tool_call_id") == call_id:
            return f"its tool message is marked {fields.get('status') or 'success'}"
    return "no outcome in the thread's state yet"


def _outcome(record: ToolCallRecord) -> str:
    ran = _runs(record)
    retries = f" ({record.retry_count} retr{'y' if record.retry_count == 1 else 'ies'})"
    tried = _times(ran) + (retries if record.retry_count else "")
    error = f"{record.error.kind}: {record.error.message}" if record.error else "an error"
    if record.status == "succeeded":
        return f"ran {tried}, succeeded"
    if record.status == "failed":
        return f"ran {tried}, failed ({error})"
    if record.status == "escalated":
        return f"ran {tried}, failed ({error}); waits for retry, skip or abort"
    if record.decision == "deny":
        return f"not run: the policy denies it ({record.rule_id or 'default'})"
    if record.status == "awaiting_approval":
        return f"waits for more approvals ({len(record.approvals)} of {record.min_approvals})"
    if record.status == "rejected":
        return "not run"
    return f"not run yet ({record.status})"


def _waiting(result: Mapping[str, Any]) -> list[str]:
    """The call ids the thread's new interrupt waits on (none: the run ended)."""
    ids: list[str] = []
    for interrupt in result.get("__interrupt__") or []:
        value = interrupt.get("value") if isinstance(interrupt, Mapping) else interrupt.value
        info = value.get("handrail", {}) if isinstance(value, Mapping) else {}
        ids += info.get("tool_call_ids", []) or ["a decision"]
    return ids


def _last_text(messages: Sequence[Any]) -> str | None:
    """The text of the run's last message (the model's answer, or an abort's)."""
    if not messages:
        return None
    last = messages[-1]
    if isinstance(last, BaseMessage):
        return last.text
    content = last.get("content") if isinstance(last, Mapping) else None
    if isinstance(content, list):
        return "".join(p.get("text", "") if isinstance(p, Mapping) else str(p) for p in content)
    return str(content or "")
