"""Load: worker processes on one store, every thread through ask -> approve -> execute.

Per backend (SQLite: a file in a temp dir; PostgreSQL: a database on a throwaway server from
``handrail.testing.postgres_server(durable=True)``, the schema made once with
``handrail.storage.migrate``),
W worker processes (default 4, ``spawn``ed once for the whole run) are released together by a
barrier onto the same store. Each builds its own graph, ``handrail.build_agent(ScriptedChatModel,
[pay], policy, checkpointer=TARGET)``, and its own ``handrail.Inbox(TARGET, graph=graph)``, then
loops until the store holds nothing more to do:

- **run a new thread** (N per worker, default 1,000) whose model asks for ``pay``; the policy asks
  a treasurer, so the thread pauses with ``interrupt()``;
- **approve a waiting thread** found with ``inbox.pending()``, one of the oldest W, chosen at random
  and started by *another* worker whenever there is one (its own only when no other is waiting and
  it has started all its threads), as a treasurer who is not the requester. Two workers often pick
  the same thread: one wins, the other gets ``AlreadyDecided``, counted as a *lost race* (expected,
  not an error);
- **expire**: every ``--lapse-every``-th extra thread (default 1 in 20, on top of the N) asks under
  a rule with ``expires_in: 1s`` that nobody approves; a worker that lists such a request past its
  deadline calls ``inbox.expire()`` (the workers race on those too). They must never execute.

``pay`` is not idempotent; it records each run outside Handrail, one line (thread, call, time)
appended with ``O_APPEND`` to a file per process. Reported per backend:

- tool calls/s: executions / wall time from the barrier to the last worker done;
- p50/p95 ms from just before the approve call to the tool's own record of its run;
- **double executions**: (thread, call) pairs run more than once across all workers;
- **lost approvals**: threads that paused but whose tool never ran (an approval that returned
  without a run, a thread still waiting at the end, an expiring one left waiting);
- **audit forks**: ``handrail_audit`` rows sharing a ``prev_hash``, plus 1 if ``verify()`` fails;
  **audit gaps**: threads whose events are not exactly decided, approval_requested,
  approval_decided, started, succeeded (or, expired: decided, approval_requested, expired), once;
- **locked**: exceptions that reached a worker saying ``database is locked`` (or PostgreSQL's
  lock-not-available, serialization-failure, deadlock); **other errors**: any other exception
  (summed up by kind, the first tracebacks of each kind printed); expired threads that ran anyway
  count as other errors. Nothing is retried, except building a worker's graphs when the workers
  open a fresh store at once (up to 5 tries, each failure counted), so that one such error does
  not cost the whole measurement;
- for information: the Handrail/plain ratios, the share of approvals that crossed processes,
  the mean ms per call of each operation (start, pending, approve, expire), and the lost races.

The wall time includes the tail: the last expiring request is resolved after its 1 s deadline.

Baseline in the same run, on a fresh store of the same backend: plain LangGraph doing the same
work: model node, an approval node calling ``langgraph.types.interrupt()``, ``ToolNode([pay])``,
``SqliteSaver`` (``handrail.graph.open_checkpointer``, the same settings) or ``PostgresSaver``,
resumed by thread ID with ``Command(resume=...)``. Plain LangGraph has no inbox and no claim: a
worker hands each paused thread id to the others through a shared ``multiprocessing`` queue,
whoever takes it resumes it (so nobody races); an expiring thread is resumed with a rejection
by the worker that started it, after the same 1 s. Printed: Handrail/plain ratios of throughput
and of p50. So that a drifting machine load favours neither, each variant runs in ``--rounds``
rounds (default 2) in ABBA order (plain, Handrail, Handrail, plain), the N threads split between
them, each round on a fresh store; a variant's figures are over all its rounds. On PostgreSQL the
server's counters give the transactions, WAL syncs and WAL records per thread.

Run: ``python benchmarks/load.py [--workers 4] [--threads 1000] [--backends sqlite,postgres]
[--rounds 2] [--lapse-every 20] [--quick] [--check]``. ``--quick``: 4 workers x 25 threads.
Prints a table per backend and one PASS/FAIL line per backend (PASS: every count that must be
zero is zero); exits 1 on a FAIL only with ``--check``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import multiprocessing
import os
import queue
import random
import re
import signal
import statistics
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.context import SpawnContext, SpawnProcess
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from gate_overhead import verdict
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, InjectedToolCallId, tool
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from langgraph.types import Command, interrupt

import handrail
from handrail.audit import AuditLog
from handrail.errors import AlreadyDecided
from handrail.graph import HandrailGraph, open_checkpointer
from handrail.testing import ScriptedChatModel

T = TypeVar("T")
Backend = Literal["sqlite", "postgres"]
Mode = Literal["plain", "handrail"]
BACKENDS: tuple[Backend, ...] = ("sqlite", "postgres")
MODES: tuple[Mode, ...] = ("plain", "handrail")

LAPSE_AFTER_S = 1.0
"""The deadline of the expiring requests (the ``lapse`` rule's ``expires_in``)."""
LAPSE_MEMO = "lapse"
LAPSE_RULE = "lapsing-payments"
EVENTS_RUN = Counter(
    {"decided": 1, "approval_requested": 1, "approval_decided": 1, "started": 1, "succeeded": 1}
)
EVENTS_EXPIRED = Counter({"decided": 1, "approval_requested": 1, "expired": 1})
BARRIER_TIMEOUT_S = 300.0
BUILD_ATTEMPTS = 5
"""Tries at building a worker's graphs, each failure counted (see `retried`)."""
MAX_ERRORS_IN_A_ROW = 200
"""A worker whose calls fail this many times in a row gives up (reported as a failure)."""
TRACEBACKS_KEPT = 2
"""Tracebacks kept per worker and kind of error."""
TRACEBACKS_SHOWN = 2
"""Tracebacks printed per kind of error."""
THREAD_ID = re.compile(r"w\d+-x?\d{5}")
"""The benchmark's thread ids, left out of the error summary."""
LOCK_SQLSTATES = {"55P03", "40001", "40P01"}
"""PostgreSQL: lock not available, serialization failure, deadlock detected."""

POLICY_YAML = f"""
version: 1
default: deny
rules:
  - id: payments
    tools: [pay]
    roles: [ai-agent]
    when: "args.memo != '{LAPSE_MEMO}'"
    effect: ask
    approvers: [treasurer]
    expires_in: 24h
  - id: {LAPSE_RULE}
    tools: [pay]
    roles: [ai-agent]
    when: "args.memo == '{LAPSE_MEMO}'"
    effect: ask
    approvers: [treasurer]
    expires_in: {int(LAPSE_AFTER_S * 1000)}ms
tools:
  pay: {{idempotent: false}}
"""


# -- what the workers get and give back ---------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One phase for one worker: run ``threads`` (+ ``lapsing``) threads on ``target``."""

    mode: Mode
    backend: Backend
    target: str
    workers: int
    first: int
    """The number of the worker's first thread in this round."""
    threads: int
    lapse_every: int
    log_dir: str
    seed: int


@dataclass
class WorkerResult:
    """What one worker did in one phase."""

    worker: int
    paused: list[str] = field(default_factory=list)
    """Threads (to be approved) that paused for approval."""
    lapsing: list[str] = field(default_factory=list)
    """Threads with a deadline that paused for approval."""
    approved: dict[str, float] = field(default_factory=dict)
    """Thread -> ``time.time()`` just before the approve call that returned."""
    approve_ms: list[float] = field(default_factory=list)
    """Wall time of each approve call that returned (the whole resumed run)."""
    expired: list[str] = field(default_factory=list)
    cross: int = 0
    """Approvals of threads another worker started."""
    lost_races: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    """Errors by type and the first line of their message."""
    locked: int = 0
    other: int = 0
    tracebacks: list[tuple[str, str]] = field(default_factory=list)
    """(kind, traceback): the first few of each kind of error."""
    spent: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    """Seconds spent per operation (start, pending, approve, expire, take)."""
    calls: Counter[str] = field(default_factory=Counter)
    """Calls per operation."""
    ended: float = 0.0
    started_all: bool = False
    failed: str | None = None
    """Why the worker could not do its job (a traceback), if it could not."""


@dataclass
class Shared:
    """What the workers share: the start barrier, counters, and plain LangGraph's hand-off."""

    barrier: Barrier
    started_all: Synchronized[int]
    """Workers that have started all their threads."""
    handed: Synchronized[int]
    """Plain: thread ids put on the hand-off queue."""
    taken: Synchronized[int]
    """Plain: thread ids taken from it."""
    handoff: Queue[str]


class Counted(Exception):
    """A worker stops on errors already counted (and their tracebacks kept)."""


class Tally:
    """A worker's error counts by kind, with the first tracebacks of each kind."""

    def __init__(self, result: WorkerResult) -> None:
        self.result = result
        self.in_a_row = 0

    def error(self, where: str, exc: BaseException) -> None:
        """An exception that reached the worker from a call: counted as locked or other."""
        if is_lock_error(exc):
            self.result.locked += 1
        else:
            self.result.other += 1
        message = str(exc).splitlines()[0] if str(exc) else ""
        text = "".join(traceback.format_exception(exc))
        self.keep(where, f"{type(exc).__name__}: {message}", text)
        self.in_a_row += 1
        if self.in_a_row >= MAX_ERRORS_IN_A_ROW:
            raise Counted(f"{self.in_a_row} errors in a row; the last: {exc!r}") from exc

    def wrong(self, where: str, what: str) -> None:
        """Something that did not raise but is wrong (a run that did not pause, ...)."""
        self.result.other += 1
        self.keep(where, what, what)

    def ok(self) -> None:
        self.in_a_row = 0

    def keep(self, where: str, what: str, text: str) -> None:
        kind = f"{where.split()[0]}: {THREAD_ID.sub('<thread>', what)[:200]}"
        self.result.errors[kind] += 1
        if self.result.errors[kind] <= TRACEBACKS_KEPT:
            self.result.tracebacks.append((kind, f"worker {self.result.worker} {where}:\n{text}"))


def is_lock_error(exc: BaseException) -> bool:
    """SQLite's "database is locked" or PostgreSQL's lock errors, anywhere in the chain."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if "database is locked" in str(current) or "database table is locked" in str(current):
            return True
        if getattr(current, "sqlstate", None) in LOCK_SQLSTATES:
            return True
        current = current.__cause__ or current.__context__
    return False


# -- the tool, the models, the graphs -------------------------------------------------------------


def make_pay(log_path: Path) -> tuple[BaseTool, int]:
    """A side-effecting tool: each run appends ``thread,call,time,pid`` to ``log_path``."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    @tool
    def pay(
        to: str,
        amount: float,
        memo: str,
        config: RunnableConfig,
        call_id: Annotated[str, InjectedToolCallId],
    ) -> str:
        """Pay ``amount`` to ``to``."""
        thread = config["configurable"]["thread_id"]
        os.write(fd, f"{thread},{call_id},{time.time():.6f},{os.getpid()}\n".encode())
        return f"paid {amount:.2f} to {to}"

    return pay, fd


def make_model(memo: str) -> ScriptedChatModel:
    call = {"name": "pay", "args": {"to": "carol", "amount": 5000.0, "memo": memo}, "id": None}
    return ScriptedChatModel([AIMessage("Paying carol.", tool_calls=[call]), AIMessage("done")])


def build_plain(memo: str, pay: BaseTool, saver: BaseCheckpointSaver[Any]) -> Any:
    """Plain LangGraph: model -> approval (``interrupt()``) -> ``ToolNode`` -> model."""
    bound = make_model(memo).bind_tools([pay])

    def agent(state: MessagesState, config: RunnableConfig) -> dict[str, Any]:
        return {"messages": [bound.invoke(state["messages"], config)]}

    def approval(state: MessagesState) -> Command[Literal["tools", "agent"]]:
        last = state["messages"][-1]
        assert isinstance(last, AIMessage)
        calls = last.tool_calls
        decision = interrupt({"tool_calls": calls})
        if decision.get("type") == "approve":
            return Command(goto="tools")
        answers = [ToolMessage("rejected", tool_call_id=c["id"], status="error") for c in calls]
        return Command(goto="agent", update={"messages": answers})

    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent)
    builder.add_node("approval", approval)
    builder.add_node("tools", ToolNode([pay]))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges(
        "agent", tools_condition, {"tools": "approval", "__end__": "__end__"}
    )
    builder.add_edge("tools", "agent")
    graph: CompiledStateGraph[Any, Any, Any, Any] = builder.compile(checkpointer=saver)
    return graph


@contextlib.contextmanager
def timed(result: WorkerResult, op: str) -> Iterator[None]:
    """Add the time the block takes to ``op``'s total."""
    began = time.perf_counter()
    try:
        yield
    finally:
        result.spent[op] += time.perf_counter() - began
        result.calls[op] += 1


def started_all(shared: Shared, result: WorkerResult) -> None:
    """Count the worker as having started all its threads (once)."""
    if not result.started_all:
        result.started_all = True
        with shared.started_all.get_lock():
            shared.started_all.value += 1


def plan(worker: int, job: Job) -> list[tuple[str, str]]:
    """The threads a worker starts in a round, in order: (thread id, memo); every
    ``lapse_every``-th approved thread (counted over all rounds) is followed by one that will
    expire."""
    out: list[tuple[str, str]] = []
    for i in range(job.first, job.first + job.threads):
        out.append((f"w{worker}-{i:05d}", "invoice"))
        if job.lapse_every and (i + 1) % job.lapse_every == 0:
            out.append((f"w{worker}-x{i:05d}", LAPSE_MEMO))
    return out


def config_for(thread: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread}}


def close_quietly(*things: Any) -> None:
    """Close connections a phase opened (savers', tables', inboxes'), ignoring failures."""
    for thing in things:
        with contextlib.suppress(Exception):
            thing.close()


# -- the workers ----------------------------------------------------------------------------------


def worker_main(
    index: int, jobs: Queue[Job | None], results: Queue[WorkerResult], shared: Shared
) -> None:
    """A worker process: one phase per job, until ``None``."""
    # Handrail's events go to the ``handrail`` logger; without a handler Python prints those
    # at WARNING (``expired``) on stderr. Errors are raised to the caller, never only logged.
    logging.getLogger("handrail").addHandler(logging.NullHandler())
    while (job := jobs.get()) is not None:
        result = WorkerResult(worker=index)
        fd: int | None = None
        try:
            pay, fd = make_pay(Path(job.log_dir) / f"exec-{index}.log")
            run = run_handrail if job.mode == "handrail" else run_plain
            run(index, job, shared, pay, result)
        except threading.BrokenBarrierError:
            result.failed = "did not start: another worker failed before the start"
        except Counted as exc:
            result.failed = f"stopped: {exc}"
            shared.barrier.abort()
        except Exception as exc:
            result.failed = f"stopped on {type(exc).__name__} (its traceback is below)"
            Tally(result).error("worker", exc)  # counted as a locked or an other error
            shared.barrier.abort()  # nobody waits for a worker that cannot start
        finally:
            if fd is not None:
                os.close(fd)
            started_all(shared, result)  # the others stop waiting for its threads
        result.ended = time.time()
        gc.collect()
        results.put(result)


def retried(tally: Tally, build: Callable[[], T]) -> T:
    """Build a worker's graphs on the store, counting each failure as an error that reached a
    caller (several processes open a fresh store at once); up to `BUILD_ATTEMPTS` tries, so one
    such error does not cost the whole measurement."""
    for attempt in range(1, BUILD_ATTEMPTS + 1):
        try:
            return build()
        except Exception as exc:
            tally.error(f"build (attempt {attempt})", exc)
            if attempt == BUILD_ATTEMPTS:
                raise Counted(f"could not build its graphs in {attempt} tries") from exc
    raise AssertionError("unreachable")


def run_handrail(k: int, job: Job, shared: Shared, pay: BaseTool, result: WorkerResult) -> None:
    policy = handrail.Policy.from_yaml(POLICY_YAML)
    tally = Tally(result)

    def build() -> tuple[dict[str, HandrailGraph], handrail.Inbox]:
        graphs = {
            memo: handrail.build_agent(
                make_model(memo), [pay], policy, checkpointer=job.target, name="load_agent"
            )
            for memo in ("invoice", LAPSE_MEMO)
        }
        return graphs, handrail.Inbox(job.target, graph=graphs["invoice"])

    graphs, inbox = retried(tally, build)
    requester = handrail.RunContext(actor=handrail.Actor(id=f"agent-{k}", roles=("ai-agent",)))
    approver = handrail.Actor(id=f"treasurer-{k}", roles=("treasurer",))
    rng = random.Random(job.seed * 1000 + k)
    todo = plan(k, job)
    mine = f"w{k}-"
    try:
        shared.barrier.wait(BARRIER_TIMEOUT_S)
        while True:
            if todo:
                thread, memo = todo.pop(0)
                try:
                    with timed(result, "start"):
                        out = graphs[memo].invoke(
                            {"messages": [HumanMessage("Pay carol's invoice.")]},
                            config_for(thread),
                            context=requester,
                        )
                except Exception as exc:
                    tally.error(f"start {thread}", exc)
                else:
                    tally.ok()
                    if "__interrupt__" not in out:
                        tally.wrong(f"start {thread}", "the run did not pause for approval")
                    else:
                        (result.lapsing if memo == LAPSE_MEMO else result.paused).append(thread)
                if not todo:
                    started_all(shared, result)
            try:
                with timed(result, "pending"):
                    items = inbox.pending()
            except Exception as exc:
                tally.error("pending", exc)
                continue
            now = datetime.now(UTC)
            if any(i.rule_id == LAPSE_RULE and not i.deciding and i.expired(now) for i in items):
                try:
                    with timed(result, "expire"):
                        result.expired += [r.thread_id for r in inbox.expire()]
                except Exception as exc:
                    tally.error("expire", exc)
                else:
                    tally.ok()
            ready = [i for i in items if not i.deciding and i.rule_id != LAPSE_RULE]
            others = [i for i in ready if not i.thread_id.startswith(mine)]
            pool = others or ([] if todo else ready)
            if pool:
                item = rng.choice(pool[: job.workers])
                began = time.time()
                try:
                    with timed(result, "approve"):
                        out = inbox.approve(item.thread_id, approver=approver)
                except AlreadyDecided:
                    result.lost_races += 1
                    tally.ok()
                except Exception as exc:
                    tally.error(f"approve {item.thread_id}", exc)
                else:
                    tally.ok()
                    result.approve_ms.append((time.time() - began) * 1e3)
                    if item.thread_id in result.approved:
                        tally.wrong(f"approve {item.thread_id}", "approved a second time")
                    result.approved[item.thread_id] = began
                    result.cross += not item.thread_id.startswith(mine)
                    if out["messages"][-1].content != "done":
                        tally.wrong(
                            f"approve {item.thread_id}",
                            f"the run ended with {out['messages'][-1]!r}",
                        )
            elif not todo and not items and shared.started_all.value == job.workers:
                break
            elif not todo:
                time.sleep(0.005)  # the rest is being decided by others, or not yet expired
    finally:
        close_quietly(inbox, *(g.handrail_table for g in graphs.values()))
        close_quietly(*(getattr(g.checkpointer, "conn", None) for g in graphs.values()))


def run_plain(k: int, job: Job, shared: Shared, pay: BaseTool, result: WorkerResult) -> None:
    with contextlib.ExitStack() as stack:
        tally = Tally(result)
        graphs = retried(
            tally,
            lambda: {
                m: build_plain(m, pay, open_saver(job, stack)) for m in ("invoice", LAPSE_MEMO)
            },
        )
        todo = plan(k, job)
        lapsing: list[tuple[float, str]] = []
        mine = f"w{k}-"
        shared.barrier.wait(BARRIER_TIMEOUT_S)
        while True:
            if todo:
                thread, memo = todo.pop(0)
                try:
                    with timed(result, "start"):
                        out = graphs[memo].invoke(
                            {"messages": [HumanMessage("Pay carol's invoice.")]}, config_for(thread)
                        )
                except Exception as exc:
                    tally.error(f"start {thread}", exc)
                else:
                    tally.ok()
                    if "__interrupt__" not in out:
                        tally.wrong(f"start {thread}", "the run did not pause for approval")
                    elif memo == LAPSE_MEMO:
                        result.lapsing.append(thread)
                        lapsing.append((time.time() + LAPSE_AFTER_S, thread))
                    else:
                        result.paused.append(thread)
                        with shared.handed.get_lock():
                            shared.handed.value += 1
                        shared.handoff.put(thread)
                if not todo:
                    started_all(shared, result)
            while lapsing and lapsing[0][0] <= time.time():
                _, thread = lapsing.pop(0)
                try:
                    with timed(result, "expire"):
                        graphs[LAPSE_MEMO].invoke(
                            Command(resume={"type": "reject"}), config_for(thread)
                        )
                except Exception as exc:
                    tally.error(f"expire {thread}", exc)
                else:
                    tally.ok()
                    result.expired.append(thread)
            try:
                with timed(result, "take"):
                    thread = (
                        shared.handoff.get(timeout=0.005)
                        if not todo
                        else shared.handoff.get_nowait()
                    )
            except queue.Empty:
                done = (
                    shared.started_all.value == job.workers
                    and shared.taken.value >= shared.handed.value
                )
                if not todo and not lapsing and done:
                    break
                continue
            with shared.taken.get_lock():
                shared.taken.value += 1
            began = time.time()
            try:
                with timed(result, "approve"):
                    out = graphs["invoice"].invoke(
                        Command(resume={"type": "approve"}), config_for(thread)
                    )
            except Exception as exc:
                tally.error(f"approve {thread}", exc)
            else:
                tally.ok()
                result.approve_ms.append((time.time() - began) * 1e3)
                result.approved[thread] = began
                result.cross += not thread.startswith(mine)
                if out["messages"][-1].content != "done":
                    tally.wrong(f"approve {thread}", f"the run ended with {out['messages'][-1]!r}")


def open_saver(job: Job, stack: contextlib.ExitStack) -> BaseCheckpointSaver[Any]:
    """Plain LangGraph's saver for the job's store (SQLite with Handrail's settings)."""
    if job.backend == "sqlite":
        saver = open_checkpointer(job.target)
        assert saver is not None
        stack.callback(close_quietly, getattr(saver, "conn", None))
        return saver
    from langgraph.checkpoint.postgres import PostgresSaver

    pg: BaseCheckpointSaver[Any] = stack.enter_context(PostgresSaver.from_conn_string(job.target))
    return pg


# -- the main process -----------------------------------------------------------------------------


@dataclass
class Phase:
    """One mode on one backend, as measured (the sum of its rounds)."""

    mode: Mode
    workers: int
    threads: int = 0
    """Threads that paused for an approval (expiring ones apart)."""
    wall_s: float = 0.0
    executions: int = 0
    latencies: list[float] = field(default_factory=list)
    """ms from just before each approve call that returned to the tool's run."""
    approve_ms: list[float] = field(default_factory=list)
    double: int = 0
    lost: int = 0
    forks: int | None = None
    gaps: int | None = None
    locked: int = 0
    other: int = 0
    races: int = 0
    expired: int = 0
    approvals: int = 0
    cross: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    tracebacks: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    spent: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    calls: Counter[str] = field(default_factory=Counter)
    pg: list[int] | None = None
    """PostgreSQL: the `PG_COUNTERS` the phase added."""

    def add(self, other: Phase) -> None:
        """Add one more round of the same mode."""
        for name in ("threads", "wall_s", "executions", "double", "lost", "locked", "other"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("races", "expired", "approvals", "cross"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.latencies += other.latencies
        self.approve_ms += other.approve_ms
        if other.forks is not None:
            self.forks = (self.forks or 0) + other.forks
        if other.gaps is not None:
            self.gaps = (self.gaps or 0) + other.gaps
        self.errors += other.errors
        self.tracebacks += other.tracebacks
        self.notes += other.notes
        for op, seconds in other.spent.items():
            self.spent[op] += seconds
        self.calls += other.calls
        if other.pg is not None:
            self.pg = [a + b for a, b in zip(self.pg or [0] * len(other.pg), other.pg, strict=True)]

    @property
    def calls_per_s(self) -> float:
        return self.executions / self.wall_s if self.wall_s > 0 else float("nan")

    @property
    def op_ms(self) -> dict[str, float]:
        """Mean ms per call of each operation, over all workers."""
        return {op: self.spent[op] / n * 1e3 for op, n in self.calls.items() if n}


class Pool:
    """The worker processes, started once (``spawn``) and given one job per phase."""

    def __init__(self, workers: int) -> None:
        self.ctx: SpawnContext = multiprocessing.get_context("spawn")
        self.workers = workers
        self.shared = Shared(
            barrier=self.ctx.Barrier(workers + 1),
            started_all=self.ctx.Value("i", 0),
            handed=self.ctx.Value("i", 0),
            taken=self.ctx.Value("i", 0),
            handoff=self.ctx.Queue(),
        )
        self.jobs: list[Queue[Job | None]] = [self.ctx.Queue() for _ in range(workers)]
        self.results: Queue[WorkerResult] = self.ctx.Queue()
        self.procs: list[SpawnProcess] = [
            self.ctx.Process(
                target=worker_main,
                args=(k, self.jobs[k], self.results, self.shared),
                name=f"load-worker-{k}",
                daemon=True,
            )
            for k in range(workers)
        ]
        for proc in self.procs:
            proc.start()

    def run(self, job: Job, timeout: float) -> tuple[float, list[WorkerResult]]:
        """Give every worker ``job``, release them together; the start time and their results."""
        for counter in (self.shared.started_all, self.shared.handed, self.shared.taken):
            counter.value = 0
        for q in self.jobs:
            q.put(job)
        # A broken barrier: a worker failed to start, and its result says why.
        with contextlib.suppress(threading.BrokenBarrierError):
            self.shared.barrier.wait(BARRIER_TIMEOUT_S)
        began = time.time()
        results = [self.results.get(timeout=timeout) for _ in self.procs]
        if self.shared.barrier.broken:
            self.shared.barrier.reset()
        return began, sorted(results, key=lambda r: r.worker)

    def close(self) -> None:
        for q in self.jobs:
            with contextlib.suppress(Exception):
                q.put(None)
        for proc in self.procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=10)


@contextlib.contextmanager
def open_store(backend: Backend, tmp: Path) -> Iterator[Callable[[str], str]]:
    """A function giving a fresh store per name: a SQLite file, or a database on one server."""
    if backend == "sqlite":
        yield lambda name: str(tmp / f"{name}.sqlite")
        return
    import psycopg

    from handrail.testing import postgres_server

    with postgres_server(durable=True) as url:

        def database(name: str) -> str:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            return urllib.parse.urlsplit(url)._replace(path=f"/{name}").geturl()

        yield database


def prepare(mode: Mode, backend: Backend, target: str) -> None:
    """Make the schema once, where the backend needs it (PostgreSQL)."""
    if backend != "postgres":
        return  # SQLite: the workers' graphs make the tables on first use, concurrently
    if mode == "handrail":
        from handrail.storage import migrate

        migrate(target)
        return
    from langgraph.checkpoint.postgres import PostgresSaver

    with PostgresSaver.from_conn_string(target) as saver:
        saver.setup()


PG_COUNTERS = ("transactions", "WAL syncs", "WAL records")


def pg_counters(url: str) -> tuple[int, int, int]:
    """The database's transactions so far, and the server's WAL syncs and records."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT (SELECT xact_commit + xact_rollback FROM pg_stat_database "
            "WHERE datname = current_database()), wal_sync, wal_records FROM pg_stat_wal"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def read_executions(log_dir: Path) -> list[tuple[str, str, float]]:
    """Every run of ``pay`` the worker processes recorded: (thread, call, time)."""
    runs: list[tuple[str, str, float]] = []
    for path in sorted(log_dir.glob("exec-*.log")):
        for line in path.read_text().splitlines():
            thread, call, at, _pid = line.split(",")
            runs.append((thread, call, float(at)))
    return runs


def audit_check(target: str, ran: set[str], expired: set[str]) -> tuple[int, int, list[str]]:
    """Forks (rows sharing a prev_hash, +1 if verify fails) and gaps (threads whose events are
    not exactly the expected ones) in Handrail's audit table."""
    log = AuditLog(target)
    notes: list[str] = []
    try:
        verified = log.verify()
        rows = list(log.export())
    finally:
        log.close()
    prevs = Counter(r["prev_hash"] for r in rows)
    forks = sum(n for n in prevs.values() if n > 1) + (0 if verified.ok else 1)
    if not verified.ok:
        notes.append(f"audit verify failed: {verified.problem}")
    events: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for r in rows:
        events[r["thread_id"]][r["event"]] += 1
    gaps = 0
    for thread in ran | expired | set(events):
        want = EVENTS_RUN if thread in ran else EVENTS_EXPIRED if thread in expired else Counter()
        if events[thread] != want:
            gaps += 1
            if gaps <= TRACEBACKS_KEPT:
                notes.append(f"audit events of {thread}: {dict(events[thread])}, want {dict(want)}")
    notes.append(f"audit rows: {len(rows)}, verify ok: {verified.ok}")
    return forks, gaps, notes


def waiting_at_end(mode: Mode, target: str) -> set[str]:
    """Handrail: threads the inbox still lists (plain LangGraph has no such list)."""
    if mode != "handrail":
        return set()
    inbox = handrail.Inbox(target)
    try:
        return {i.thread_id for i in inbox.pending()}
    finally:
        inbox.close()


def percentile(values: list[float], n: int) -> float:
    """The ``n``-th percentile (inclusive method); NaN without values."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[n - 1]


def run_phase(
    pool: Pool,
    mode: Mode,
    backend: Backend,
    store: Callable[[str], str],
    tmp: Path,
    rounds: tuple[int, int, int],
    opts: argparse.Namespace,
) -> Phase:
    """One round of one mode on a fresh store: ``rounds`` is (round, first thread, threads)."""
    number, first, threads = rounds
    target = store(f"{mode}{number}")
    prepare(mode, backend, target)
    log_dir = tmp / f"{mode}{number}-runs"
    log_dir.mkdir()
    job = Job(
        mode=mode,
        backend=backend,
        target=target,
        workers=opts.workers,
        first=first,
        threads=threads,
        lapse_every=opts.lapse_every,
        log_dir=str(log_dir),
        seed=opts.seed,
    )
    counters = pg_counters(target) if backend == "postgres" else None
    began, results = pool.run(job, opts.timeout)
    wall = max(r.ended for r in results) - began
    notes = [f"worker {r.worker} {r.failed}" for r in results if r.failed]

    runs = read_executions(log_dir)
    per_call = Counter((thread, call) for thread, call, _ in runs)
    first_run: dict[str, float] = {}
    for thread, _, at in runs:
        first_run[thread] = min(at, first_run.get(thread, at))
    ran = set(first_run)
    paused = {t for r in results for t in r.paused}
    lapsing = {t for r in results for t in r.lapsing}
    expired = {t for r in results for t in r.expired}
    approved: dict[str, float] = {}
    for r in results:
        approved.update(r.approved)
    left = waiting_at_end(mode, target)
    lost = (paused - ran) | left | (lapsing - expired)
    ran_expired = ran & expired
    if ran_expired:
        notes.append(f"expired threads that ran anyway: {sorted(ran_expired)[:5]}")
    unasked = ran - set(approved)
    if unasked:
        notes.append(
            f"{len(unasked)} runs without an approve call that returned "
            f"(e.g. {sorted(unasked)[:3]})"
        )
    phase = Phase(
        mode=mode,
        workers=opts.workers,
        threads=len(paused),
        wall_s=wall,
        executions=len(runs),
        latencies=[(first_run[t] - at) * 1e3 for t, at in approved.items() if t in ran],
        approve_ms=[ms for r in results for ms in r.approve_ms],
        double=sum(1 for n in per_call.values() if n > 1),
        lost=len(lost),
        locked=sum(r.locked for r in results),
        other=sum(r.other for r in results) + len(ran_expired),
        races=sum(r.lost_races for r in results),
        expired=len(expired),
        approvals=sum(len(r.approved) for r in results),
        cross=sum(r.cross for r in results),
        errors=sum((r.errors for r in results), Counter()),
        tracebacks=[t for r in results for t in r.tracebacks],
        notes=notes,
    )
    for r in results:
        for op, seconds in r.spent.items():
            phase.spent[op] += seconds
        phase.calls += r.calls
    if counters is not None:
        time.sleep(0.5)  # the workers' server processes report their statistics as they exit
        phase.pg = [b - a for a, b in zip(counters, pg_counters(target), strict=True)]
    if mode == "handrail":
        phase.forks, phase.gaps, audit_notes = audit_check(target, ran, expired)
        notes += audit_notes
    return phase


def print_table(backend: Backend, phases: dict[Mode, Phase], opts: argparse.Namespace) -> None:
    lapsing = f" (+ 1 expiring per {opts.lapse_every})" if opts.lapse_every else ""
    print(
        f"\n{backend}: {opts.workers} worker process{'es' if opts.workers != 1 else ''} x "
        f"{opts.threads:,} threads{lapsing}, one store per round, {opts.rounds} round(s) per "
        "variant in ABBA order; ask -> approve -> execute"
    )
    print(
        f"{'variant':<9} {'workers':>7} {'threads':>7} {'calls/s':>8} {'p50 ms':>7} "
        f"{'p95 ms':>7} {'double':>6} {'lost':>5} {'forks':>5} {'gaps':>5} {'locked':>6} "
        f"{'other':>5} {'races':>5} {'expired':>7} {'cross':>6} {'wall s':>7}"
    )
    for mode, p in phases.items():
        forks = "-" if p.forks is None else str(p.forks)
        gaps = "-" if p.gaps is None else str(p.gaps)
        cross = p.cross / p.approvals if p.approvals else 0.0
        print(
            f"{mode:<9} {p.workers:>7} {p.threads:>7} {p.calls_per_s:>8.1f} "
            f"{percentile(p.latencies, 50):>7.1f} {percentile(p.latencies, 95):>7.1f} "
            f"{p.double:>6} {p.lost:>5} {forks:>5} {gaps:>5} {p.locked:>6} {p.other:>5} "
            f"{p.races:>5} {p.expired:>7} {cross:>6.0%} {p.wall_s:>7.1f}"
        )
    plain, hr = phases["plain"], phases["handrail"]
    p50 = {mode: percentile(p.latencies, 50) for mode, p in phases.items()}
    call = {mode: percentile(p.approve_ms, 50) for mode, p in phases.items()}
    print(
        f"ratio handrail/plain: throughput {ratio(hr.calls_per_s, plain.calls_per_s):.2f}, "
        f"p50 approve->result {ratio(p50['handrail'], p50['plain']):.2f}; approve call p50 "
        f"{call['handrail']:.1f} / {call['plain']:.1f} ms = "
        f"{ratio(call['handrail'], call['plain']):.2f}"
    )
    for mode, p in phases.items():
        if p.pg is not None and p.threads:
            each = ", ".join(
                f"{n / p.threads:.1f} {name}" for name, n in zip(PG_COUNTERS, p.pg, strict=True)
            )
            print(f"INFO {mode}: PostgreSQL per thread approved: {each}")
        ops = ", ".join(f"{op} {ms:.2f}" for op, ms in p.op_ms.items())
        print(f"INFO {mode}: mean ms per call: {ops}")
        for note in p.notes:
            print(f"INFO {mode}: {note}")
        for kind, n in p.errors.most_common():
            print(f"INFO {mode}: {n} x {kind}")
        shown: Counter[str] = Counter()
        for kind, text in p.tracebacks:
            shown[kind] += 1
            if shown[kind] <= TRACEBACKS_SHOWN:
                print(f"ERROR {mode}: {text}")


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def zero_counts(backend: Backend, hr: Phase) -> tuple[str, bool]:
    counts = {
        "double executions": hr.double,
        "lost approvals": hr.lost,
        "audit forks": hr.forks or 0,
        "audit gaps": hr.gaps or 0,
        "locked errors": hr.locked,
        "other errors": hr.other,
    }
    text = ", ".join(f"{n} {name}" for name, n in counts.items())
    return f"{backend}: {text}", not any(counts.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workers", type=int, default=4, help="worker processes")
    parser.add_argument("--threads", type=int, default=1000, help="approved threads per worker")
    parser.add_argument(
        "--lapse-every",
        type=int,
        default=20,
        help="one extra expiring thread per this many (0: none)",
    )
    parser.add_argument(
        "--backends", default=",".join(BACKENDS), help="comma-separated: sqlite,postgres"
    )
    parser.add_argument("--quick", action="store_true", help="4 workers x 25 threads")
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="rounds per variant, alternating plain and Handrail (ABBA...), the threads split",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 on a FAIL")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per phase")
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.workers, opts.threads = 4, 25
    backends: list[Backend] = []
    for name in opts.backends.split(","):
        if name not in BACKENDS:
            parser.error(f"--backends: {name!r} is not one of {', '.join(BACKENDS)}")
        backends.append(name)

    # Killed: unwind, so the PostgreSQL server and the worker processes are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    start = time.perf_counter()
    verdicts: list[tuple[str, bool]] = []
    pool = Pool(opts.workers)
    try:
        for backend in backends:
            began = time.perf_counter()
            phases = {mode: Phase(mode=mode, workers=opts.workers) for mode in MODES}
            try:
                with (
                    tempfile.TemporaryDirectory() as tmpdir,
                    open_store(backend, Path(tmpdir)) as store,
                ):
                    first = 0
                    for number in range(opts.rounds):
                        threads = opts.threads // opts.rounds + (
                            number < opts.threads % opts.rounds
                        )
                        for mode in MODES if number % 2 == 0 else MODES[::-1]:
                            rounds = (number, first, threads)
                            phases[mode].add(
                                run_phase(pool, mode, backend, store, Path(tmpdir), rounds, opts)
                            )
                        first += threads
            except ImportError as exc:
                print(f"\n{backend}: not run: {exc!r}")
                verdicts.append((f"{backend}: not run ({exc})", False))
                continue
            print_table(backend, phases, opts)
            print(f"INFO: {backend} took {time.perf_counter() - began:.1f} s")
            verdicts.append(zero_counts(backend, phases["handrail"]))
    finally:
        pool.close()
    status = verdict(verdicts, opts.check)
    print(f"INFO: whole run {time.perf_counter() - start:.1f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
