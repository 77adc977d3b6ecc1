"""The ``execute`` node: run the calls of the turn that are allowed or approved.

Each call runs with exactly the arguments that were decided (and approved). A call that reaches
``execute`` without a record comes from the fast path and is checked again here; if the policy no
longer allows it (a new policy after a restart, say), nothing runs and the turn goes to
``policy_check``. Interrupts raised inside a tool are re-raised, never caught as failures.

Before a call runs, two guards, in this order:

- the **execution ledger** (non-idempotent tools, SQLite checkpointer): the intent is committed
  before the tool runs and the outcome after it. When LangGraph replays this node (a crash, a
  lost checkpoint) a call whose attempt is known is not run again: its recorded result or error
  is used, and an intent with no outcome becomes an ``outcome_unknown`` failure, which
  ``classify_error`` escalates to a human. The ledger answers first, so what a replayed call
  really did is never hidden behind an open circuit;
- the tool's **circuit breaker**: while it is open the call fails fast as ``circuit_open`` (and
  the ledger records that as the attempt's outcome).

A tool that declares an injected ``idempotency_key`` argument gets a key that is the same for
every attempt of the call, to pass on to the API it calls.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import ToolCall, ToolMessage
from langchain_core.runnables import RunnableConfig
from langgraph._internal._runnable import RunnableCallable
from langgraph.errors import GraphBubbleUp, is_invalid_resume
from langgraph.runtime import Runtime
from langgraph.types import Command

from handrail.context import RunContext
from handrail.events import Batch, EventKind, ToolEvent
from handrail.nodes._authorise import authorise
from handrail.nodes._effects import Effect, Script, node
from handrail.nodes._gate import IDEMPOTENCY_KEY, RUNNABLE, Gate, call_id, turn_calls
from handrail.nodes._lineage import RunLineage
from handrail.nodes._provenance import SOURCES_KEY
from handrail.nodes._tools import ToolRunner
from handrail.provenance import SourceIndex
from handrail.redaction import hidden_values, redact_body, scrub
from handrail.review.notice import with_edit_notice
from handrail.review.records import decided, tool_message
from handrail.state import CallError, ToolCallRecord
from handrail.storage._base import Sql
from handrail.storage.ledger import Ledger, LedgerEntry, Lineage, idempotency_key
from handrail.tools.errors import classify
from handrail.tracing import end_span, tool_config, tool_span


@dataclass(frozen=True, slots=True)
class Turn:
    """What ``execute`` did with a turn: the records and messages it made, the Commands its
    tools returned (their own ToolMessages taken out, `ToolRunner.read`), and where the turn
    goes next."""

    records: dict[str, ToolCallRecord]
    messages: list[ToolMessage]
    commands: list[Command[Any]]
    goto: str
    sources: SourceIndex | None = None
    """The thread's index of where texts came from, when the policy watches provenance."""


def make_execute_node(
    gate: Gate, ledger: Ledger | None, runner: ToolRunner, *, carry: str | None = None
) -> RunnableCallable:
    """Run the turn's runnable calls; failures go to ``classify_error``, results to the model.

    Tools run through ``runner`` (``ToolNode``), invoked in a sync graph and awaited in an async
    one (`node`). A ``Command`` a tool returns is applied to the graph beside the node's own
    update, as ``ToolNode`` applies it; with ``carry`` (the tool gate's subgraph, whose state is
    not the user's) it is kept under that state key for the gate to return."""

    def execute(
        state: Mapping[str, Any], config: RunnableConfig, runtime: Runtime[RunContext]
    ) -> Script[Command[str] | list[Command[Any]]]:
        turn = yield from execute_turn(gate, ledger, runner, state, config, runtime)
        update: dict[str, Any] = {gate.key: turn.records, "messages": turn.messages}
        if gate.sources.keep and turn.sources is not None:
            update[SOURCES_KEY] = turn.sources
        if carry is not None:
            update[carry] = turn.commands
        step = Command(update=update, goto=turn.goto)
        return [step, *turn.commands] if turn.commands and carry is None else step

    return node(execute, "execute")


def execute_turn(
    gate: Gate,
    ledger: Ledger | None,
    runner: ToolRunner,
    state: Mapping[str, Any],
    config: RunnableConfig,
    runtime: Runtime[RunContext],
) -> Script[Turn]:
    """`make_execute_node`'s work on ``state``; a call the routing allowed that the policy no
    longer allows sends the turn to ``policy_check`` with nothing run."""
    known = gate.records(state)
    actor = gate.requester(runtime, config)
    events = gate.events.batch(config, actor.id)
    todo: list[tuple[ToolCallRecord, ToolCall]] = []
    records: dict[str, ToolCallRecord] = {}
    messages: list[ToolMessage] = []
    seen = gate.seen(state, events.thread_id)
    for call in turn_calls(state["messages"]):
        record = known.get(call_id(call))
        if record is None:  # the fast path: allowed by the routing after the model
            record = gate.checked(call, actor, events.thread_id, seen)
            if record.status != "checked":
                return Turn({}, [], [], "policy_check")
            record = decided(events, record)
        elif record.status in RUNNABLE:
            refused = authorise(gate, events, record, actor, call, seen)
            if refused is not None:
                records[refused.id] = refused
                if refused.result is not None:  # denied or invalid now: the model hears why
                    messages.append(tool_message(refused))
                continue
        if record.status in RUNNABLE:
            todo.append((record, call))

    lineage = RunLineage(state, gate.key, config)
    commands: list[Command[Any]] = []
    for record, call in todo:
        done, message, returned = yield from _run(
            gate, ledger, runner, events, record, (state, config), lineage
        )
        records[record.id] = done
        commands.extend(returned)
        if message is not None:  # a reviewer's edit is told before the tool's answer
            messages.append(with_edit_notice(gate, call, done, message))
    events.publish()
    goto = gate.route({**known, **records}, state["messages"])
    return Turn(records, messages, commands, goto, None if seen is None else seen.index)


Outcome = tuple[str, CallError | None]
"""What a tool's output means for the record: its text, and an error if it refused the call."""


def attempt(
    gate: Gate,
    ledger: Ledger | None,
    events: Batch,
    record: ToolCallRecord,
    run: Callable[[dict[str, Any]], Effect],
    read: Callable[[Any], Outcome],
    lineage: Lineage,
) -> Script[tuple[ToolCallRecord, Any]]:
    """One attempt of a call behind its guards: the record after it, and the tool's output if
    it succeeded (None otherwise).

    ``run`` makes the effect that runs the tool with the given arguments (the record's, plus the
    idempotency key for a tool that takes one); ``read`` makes sense of its output; ``lineage``
    is what the run knows of its thread, so a call whose model step was lost and asked again
    under a new id replays its first run. The ``execute`` node invokes the tool;
    `handrail.integrations` goes through LangChain's tool node. The ledger answers first, then
    the breaker.
    """
    settings = gate.policy.settings(record.name)
    thread = events.thread_id
    if settings.idempotent or thread is None:
        ledger = None  # an idempotent tool is simply run again on a replay
    breaker, circuit = gate.breaker, settings.circuit_breaker
    wait: float | None = None
    recorded: list[ToolEvent] | None = None  # the start, recorded with the intent

    def start(sql: Sql) -> None:
        """Inside the intent's transaction: the breaker admits the attempt, and its start
        (made before the transaction) is recorded with the intent (a side effect that must not
        repeat: its start is on record before it happens, in one commit)."""
        nonlocal wait, record, recorded
        wait = breaker.admit(record.name, circuit)
        if wait is None:
            record = events.keep(starting)
            recorded = events.publish_in(sql)

    if ledger is not None and thread is not None:
        starting = events.draft("started", record)
        # a later attempt after one whose outcome is unknown runs only on a person's retry
        retried = record.retry_count > 0 and gate.proofs.retried(
            thread, record.id, record.args_hash, record.retry_count
        )
        known = ledger.begin(thread, record, retried=retried, lineage=lineage, then=start)
        if known is not None:  # a replay: what the attempt did is known, or cannot be
            return replayed(events, known.record or record, known)
    else:
        wait = breaker.admit(record.name, circuit)
    if wait is not None:
        error = CallError(
            kind="circuit_open",
            message=f"{record.name!r} failed repeatedly; its circuit is open for "
            f"{wait:.1f}s more, so the call was not made",
            retry_after=wait,
        )
        if ledger is not None and thread is not None:
            ledger.finish(thread, record, error=error)
        return failed(events, record, error), None
    if recorded is not None:  # the start is on record with the intent
        events.announce(recorded)
    else:  # an idempotent tool's start is published with its outcome (one write less); if the
        # process dies in between, the replay runs the tool again and publishes both
        record = events.add("started", record)
    args = record.runs_with
    if record.name in gate.keyed:
        origin = ledger.origin(thread, record) if ledger is not None and thread else None
        args = {**args, IDEMPOTENCY_KEY: idempotency_key(thread or "", record, origin)}
    began = time.perf_counter()
    refused: CallError | None
    with tool_span(record, thread) as span:
        try:
            output = yield run(args)
        except Exception as exc:
            if not isinstance(exc, GraphBubbleUp) and not is_invalid_resume(exc):
                text, refused = "", classify(exc)
            else:
                # The tool paused (an interrupt inside it), or its interrupt got a resume value
                # its schema refuses (the run fails unsaved, as under ``ToolNode``, for the
                # interrupt to be answered again): it runs again from its start, so this
                # attempt did not happen as far as the ledger and the breaker are concerned.
                if ledger is not None and thread is not None:
                    ledger.forget(thread, record)
                breaker.record(record.name, circuit, "outcome_unknown")
                raise
        else:
            text, refused = read(output)
        elapsed = _ms(began)
        if refused is not None:
            refused = hide_values(refused, record, settings.redact)
            if ledger is not None and thread is not None:
                ledger.finish(thread, record, error=refused)
            breaker.record(record.name, circuit, refused.kind)
            end_span(span, refused.kind, redact_body(refused.message, settings.redact))
            return failed(events, record, refused, elapsed), None
        end_span(span, "success")
    done = succeeded(events, record, text, elapsed)
    if ledger is not None and thread is not None:  # the outcome and its event in one commit
        outcome: list[ToolEvent] = []
        ledger.finish(
            thread, record, result=text, then=lambda sql: outcome.extend(events.publish_in(sql))
        )
        events.announce(outcome)
    breaker.record(record.name, circuit, None)
    return done, output


def _run(
    gate: Gate,
    ledger: Ledger | None,
    runner: ToolRunner,
    events: Batch,
    record: ToolCallRecord,
    at: tuple[Mapping[str, Any], RunnableConfig],
    lineage: Lineage,
) -> Script[tuple[ToolCallRecord, ToolMessage | None, list[Command[Any]]]]:
    """Run one call through ``runner`` with the graph's state and config ``at`` (awaited in an
    async graph): the record after it, the message for the model, and the Commands the tool
    returned."""
    state, config = at
    settings = tool_config(config, record, events.thread_id)

    def run(args: dict[str, Any]) -> Effect:
        call = ToolCall(type="tool_call", id=record.id, name=record.name, args=args)
        return runner.run(call, state, settings)

    answered: list[tuple[ToolMessage | None, list[Command[Any]]]] = []  # what the tool gave

    def read(output: Any) -> Outcome:
        answered.append(runner.read(output, record.id))
        message = answered[-1][0]
        if message is None:  # a Command for another graph answers the call there
            return "", None
        return result_text(message), reported_error(message)

    done, output = yield from attempt(gate, ledger, events, record, run, read, lineage)
    if not answered:  # the ledger's answer (a ToolMessage), or no answer at all
        return done, output, []
    message, commands = answered[-1]  # a tool that answered with an error may still command
    return done, None if output is None else message, commands


def hide_values(error: CallError, record: ToolCallRecord, paths: Sequence[str]) -> CallError:
    """``error`` with the call's hidden argument values scrubbed from its message, before it
    reaches the record, the ledger, the inbox, the audit, the logs or a trace."""
    values = hidden_values(record.args, paths)
    message = scrub(error.message, values) if values else error.message
    return error if message == error.message else error.model_copy(update={"message": message})


def result_text(message: ToolMessage) -> str:
    """A tool's answer as the record keeps it: its text; a list of strings (what a tool that
    returns a list of strings gives) as JSON, so a workflow step reads back that list."""
    content = message.content
    if isinstance(content, list) and all(isinstance(c, str) for c in content):
        return json.dumps(content)
    return message.text


def reported_error(message: ToolMessage) -> CallError | None:
    """A tool that answered with an error ToolMessage (``handle_tool_error``, the tool node's
    ``handle_tool_errors``, a tool node that refused the arguments) failed: a ``tool_error``,
    whose message the model gets as it is."""
    if message.status != "error":
        return None
    return CallError(kind="tool_error", message=message.text)


def _ms(began: float) -> float:
    return (time.perf_counter() - began) * 1000


def replayed(
    events: Batch, record: ToolCallRecord, known: LedgerEntry
) -> tuple[ToolCallRecord, ToolMessage | None]:
    """A replayed attempt: what the ledger recorded, never a second run.

    ``record`` is the call as the attempt began (kept by the ledger: a checkpoint may have lost
    the steps before, an edit or a retry). So the replay's events are the first run's
    (``started``, then the outcome), at the same places in the call's history, and are recorded
    once: the replay only adds what the first run never got to publish. An attempt a call took
    over from a lost one (``known.replay_of``) never started under this call's id: it has one
    ``replayed`` event, with the outcome.
    """
    taken = known.replay_of is not None
    why = (
        f"the same call as {known.replay_of!r}, made in a model step that was lost"
        if taken
        else None
    )
    if not taken and (known.error is None or known.error.kind != "circuit_open"):
        record = events.add("started", record, at=known.started_at)  # refused: never started
    if known.outcome == "succeeded":
        text = known.result or ""
        message = ToolMessage(content=text, tool_call_id=record.id, name=record.name)
        done: EventKind = "replayed" if taken else "succeeded"
        return succeeded(events, record, text, event=done, reason=why), message
    error = known.error
    if known.outcome != "failed" or error is None:
        error = CallError(
            kind="outcome_unknown",
            message=f"attempt {known.attempt + 1} of {record.name!r} started at "
            f"{known.started_at.isoformat(timespec='seconds')} in process {known.started_by} "
            "and never reported back; its side effect may or may not have happened",
        )
    done = "replayed" if taken else "failed"
    return failed(events, record, error, event=done, reason=why), None


def succeeded(
    events: Batch,
    record: ToolCallRecord,
    text: str,
    ms: float | None = None,
    *,
    event: EventKind = "succeeded",
    reason: str | None = None,
) -> ToolCallRecord:
    record = record.update(status="succeeded", last_action="success", error=None, result=text)
    return events.add(event, record, response=("success", text), duration_ms=ms, reason=reason)


def failed(
    events: Batch,
    record: ToolCallRecord,
    error: CallError,
    ms: float | None = None,
    *,
    event: EventKind = "failed",
    reason: str | None = None,
) -> ToolCallRecord:
    record = record.update(status="failed", last_action=None, error=error)
    response = (error.kind, error.message)
    return events.add(event, record, response=response, duration_ms=ms, reason=reason)
