"""What `load.py`'s worker processes and its main process share: the policy, the jobs and
results, the error tally, the side-effecting tool, the scripted models and plain LangGraph's
saver."""

from __future__ import annotations

import contextlib
import os
import re
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from langchain_core.messages import AIMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, InjectedToolCallId, tool
from langgraph.checkpoint.base import BaseCheckpointSaver

from handrail.graph import open_checkpointer
from handrail.testing import ScriptedChatModel

T = TypeVar("T")
Backend = Literal["sqlite", "postgres"]
Mode = Literal["plain", "handrail", "handrail-inbox", "fleet-plain", "fleet-handrail"]
BACKENDS: tuple[Backend, ...] = ("sqlite", "postgres")

LAPSE_AFTER_S = 1.0
"""The deadline of the expiring requests (the ``lapse`` rule's ``expires_in``)."""
LAPSE_MEMO = "lapse"
LAPSE_RULE = "lapsing-payments"
BARRIER_TIMEOUT_S = 300.0
BUILD_ATTEMPTS = 5
"""Tries at building a worker's graphs, each failure counted (see `retried`)."""
MAX_ERRORS_IN_A_ROW = 200
"""A worker whose calls fail this many times in a row gives up (reported as a failure)."""
TRACEBACKS_KEPT = 2
"""Tracebacks kept per worker and kind of error."""
THREAD_ID = re.compile(r"w\d+-[xf]?\d{5}")
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
"""The approval mode's policy: every payment is asked (approved, or left to expire)."""


@dataclass(frozen=True)
class Job:
    """One phase for one worker: run ``threads`` (+ expiring) threads of ``mode`` on ``target``."""

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
    """Threads (to be approved) that paused for approval; the fleet: threads run."""
    lapsing: list[str] = field(default_factory=list)
    """Threads with a deadline that paused for approval."""
    approved: dict[str, float] = field(default_factory=dict)
    """Thread -> ``time.time()`` just before the approve call that returned."""
    approve_ms: list[float] = field(default_factory=list)
    """Wall time of each approve call that returned (the whole resumed run); the fleet: of each
    thread's run."""
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
    """Seconds spent per operation (start, pending, approve, expire, take, run)."""
    calls: Counter[str] = field(default_factory=Counter)
    """Calls per operation."""
    ended: float = 0.0
    started_all: bool = False
    failed: str | None = None
    """Why the worker could not do its job (a traceback), if it could not."""


@dataclass
class Shared:
    """What the workers share: the start barrier, counters, and the hand-off of thread ids."""

    barrier: Barrier
    started_all: Synchronized[int]
    """Workers that have started all their threads."""
    handed: Synchronized[int]
    """Thread ids put on the hand-off queue."""
    taken: Synchronized[int]
    """Thread ids taken from it."""
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
        """A call that returned: the run of errors in a row is over."""
        self.in_a_row = 0

    def keep(self, where: str, what: str, text: str) -> None:
        """Count ``what`` by kind; keep the first tracebacks of each kind."""
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
    """The model of every thread: one call of ``pay`` with ``memo``, then "done"."""
    call = {"name": "pay", "args": {"to": "carol", "amount": 5000.0, "memo": memo}, "id": None}
    return ScriptedChatModel([AIMessage("Paying carol.", tool_calls=[call]), AIMessage("done")])


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


def config_for(thread: str) -> RunnableConfig:
    """The config naming ``thread``."""
    return {"configurable": {"thread_id": thread}}


def close_quietly(*things: Any) -> None:
    """Close connections a phase opened (savers', tables', inboxes'), ignoring failures."""
    for thing in things:
        with contextlib.suppress(Exception):
            thing.close()


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


def open_saver(job: Job, stack: contextlib.ExitStack) -> BaseCheckpointSaver[Any]:
    """Plain LangGraph's saver for the job's store (SQLite with Handrail's settings)."""
    if job.backend == "sqlite":
        saver: BaseCheckpointSaver[Any] | None = open_checkpointer(job.target)
        assert saver is not None
        stack.callback(close_quietly, getattr(saver, "conn", None))
        return saver
    from langgraph.checkpoint.postgres import PostgresSaver

    pg: BaseCheckpointSaver[Any] = stack.enter_context(PostgresSaver.from_conn_string(job.target))
    return pg
