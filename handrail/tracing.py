"""Tracing tool calls: LangSmith (through LangChain callbacks) and, optionally, OpenTelemetry.

**LangSmith.** With ``LANGSMITH_TRACING=true`` (or any LangChain callback handler in the run's
config), each event of a tool call is a child run of the node that took the step, named
``handrail.<event>`` (``handrail.decided``, ``handrail.approval_decided``, ...), tagged
``handrail``, ``handrail:<event>`` and ``handrail:<decision>``, with the metadata of `metadata`:
a LangSmith project filters by ``handrail.decision``, ``handrail.rule_id``,
``handrail.retry_count``, ``handrail.approver`` and ``handrail.thread_id``. The tool's own run
carries the same metadata. Inputs and outputs of these runs are the event's redacted payload and
response. (The tool's own run shows the arguments the tool got, unredacted: hide them with the
LangSmith client's ``hide_inputs`` if they must not leave the process.)

**OpenTelemetry** (``pip install 'handrail[otel]'``). When ``opentelemetry-api`` is installed,
every tool run is a span ``handrail.tool <name>`` on the tracer ``handrail``, with the same
attributes, ``handrail.outcome`` and an error status on failure. Without an SDK configured the
API's spans do nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from langchain_core.callbacks import BaseCallbackManager, CallbackManager
from langchain_core.runnables import RunnableConfig

if TYPE_CHECKING:
    from handrail.events import ToolEvent
    from handrail.state import ToolCallRecord

otel_trace: Any
try:
    from opentelemetry import trace as otel_trace
except ImportError:  # the optional extra is not installed
    otel_trace = None

__all__ = ["end_span", "metadata", "tool_config", "tool_span", "trace_events"]


def metadata(record: ToolCallRecord, thread_id: str | None) -> dict[str, Any]:
    """The ``handrail.*`` metadata of a call's runs (keys with no value are left out)."""
    return _metadata(
        tool=record.name,
        tool_call_id=record.id,
        decision=record.decision,
        rule_id=record.rule_id,
        retry_count=record.retry_count,
        approver=record.approver,
        thread_id=thread_id,
    )


def _metadata(**values: Any) -> dict[str, Any]:
    return {f"handrail.{k}": v for k, v in values.items() if v is not None}


def _tags(event: str | None, decision: str | None) -> list[str]:
    tags = ["handrail"]
    if event:
        tags.append(f"handrail:{event}")
    if decision:
        tags.append(f"handrail:{decision}")
    return tags


def _active(config: RunnableConfig) -> bool:
    callbacks = config.get("callbacks")
    if isinstance(callbacks, BaseCallbackManager):
        return bool(callbacks.handlers)
    return bool(callbacks)


def tool_config(config: RunnableConfig, record: ToolCallRecord, thread_id: str | None) -> Any:
    """The config a tool runs with: the node's, plus the call's tags and metadata."""
    if not _active(config):
        return config
    return {
        **config,
        "tags": [*config.get("tags", []), *_tags(None, record.decision)],
        "metadata": {**config.get("metadata", {}), **metadata(record, thread_id)},
    }


def trace_events(events: Sequence[ToolEvent], config: RunnableConfig) -> None:
    """One child run per event under the node's run, when the run has callback handlers."""
    if not _active(config):
        return
    for event in events:
        manager = CallbackManager.configure(
            inheritable_callbacks=config.get("callbacks"),
            local_tags=_tags(event.event, event.decision),
            local_metadata=_metadata(
                event=event.event,
                tool=event.tool,
                tool_call_id=event.tool_call_id,
                decision=event.decision,
                rule_id=event.rule_id,
                retry_count=event.retry_count,
                approver=event.approver,
                thread_id=event.thread_id,
            ),
        )
        run = manager.on_chain_start(
            None, {"payload": event.payload}, name=f"handrail.{event.event}"
        )
        run.on_chain_end({"response": event.response, "reason": event.reason})


@contextmanager
def tool_span(record: ToolCallRecord, thread_id: str | None) -> Iterator[Any]:
    """An OpenTelemetry span around one tool run (None when OpenTelemetry is not installed).

    The caller sets ``handrail.outcome`` with `end_span`.
    """
    if otel_trace is None:
        yield None
        return
    tracer = otel_trace.get_tracer("handrail")
    with tracer.start_as_current_span(
        f"handrail.tool {record.name}",
        attributes=metadata(record, thread_id),
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield span


def end_span(span: Any, outcome: str, message: str | None = None) -> None:
    """Mark a `tool_span` with the run's outcome: ``success`` or the failure's kind."""
    if span is None:
        return
    span.set_attribute("handrail.outcome", outcome)
    if outcome != "success" and otel_trace is not None:
        span.set_status(otel_trace.Status(otel_trace.StatusCode.ERROR, message))
