"""Crash tests' harness (``test_crash.py``, ``benchmarks/kills.py``): one phase of a thread runs in
a process of its own that may kill itself, forked by `serve` (`Forks` drives it); `crash` kills a
thread and goes on with it until it is done.

A `Case` says how the graph is built and run: the embedding (``agent``: `build_agent`; ``gate``:
`build_tool_gate` in a graph whose model node is the test's; ``middleware``: LangChain's
``create_agent`` with `HandrailMiddleware`; ``nested``: `build_agent` as a node of the user's
graph), the model (``scripted``: stable call ids; ``fresh``:
a new id per generation, as a provider gives), LangGraph's durability, the flow (``allowed``:
``pay`` 250 runs; ``approved``: ``pay`` 5000 waits for a treasurer) and where the process dies
with SIGKILL:

- ``a``: the node that runs the tool starts (``execute``; ``tools`` for the middleware, and for
  the tool gate's allowed path, which runs in the gate's own node);
- ``b``: inside ``pay``, right after its payment is committed;
- ``c``: that node's run ends, before LangGraph saves its writes;
- ``d``: while the step before it (the model's, or the approval's) is being saved: the saver's
  ``put`` of its checkpoint, or ``put_writes`` of the model's turn, takes `Case.delay` seconds,
  and the process dies at its end, before anything is written;
- ``timer``: `Case.kill_after` seconds after the phase starts, wherever it is (the randomized
  test).

Saving that step always takes ``delay`` seconds (a slow disk, a database across a network),
which widens the window in which LangGraph's ``async`` durability runs the tool while the
model's step is still unsaved.

``pay`` commits one row per payment to a separate SQLite file (`payments`): the ground truth.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, cast
from uuid import UUID

import psycopg
from langchain.agents import create_agent
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, AnyMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, tool
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import START, StateGraph
from langgraph.prebuilt import tools_condition
from langgraph.types import Command, Durability
from psycopg.rows import dict_row

from handrail import Actor, Policy, RunContext, build_agent, build_tool_gate
from handrail.graph.tool_gate import ToolGateState
from handrail.integrations import HandrailMiddleware
from handrail.state import CallError, ToolCallRecord
from handrail.storage import is_postgres_url
from handrail.testing import ScriptedChatModel

THREAD = "t-crash"
AMOUNTS = {"allowed": 250.0, "approved": 5000.0}
AGENT = Actor(id="agent-123", roles=("ai-agent",))
TREASURER = {"id": "alice", "roles": ["treasurer"]}
OPERATOR = {"id": "ops-1", "roles": ["operator"]}
REQUEST = {"messages": [("user", "pay bob")]}

POLICY = """
rules:
  - id: small-payments
    tools: [pay]
    roles: [ai-agent]
    when: "args.amount <= 1000.0"
    effect: allow
  - id: big-payments
    tools: [pay]
    roles: [ai-agent]
    when: "args.amount > 1000.0"
    effect: ask
    approvers: [treasurer]
tools:
  pay: {idempotent: false}
"""
"""``pay`` is side-effecting: it goes through the execution ledger (the default, spelled out)."""

SERDE = JsonPlusSerializer(
    allowed_msgpack_modules=[(t.__module__, t.__name__) for t in (ToolCallRecord, CallError)]
)
_EFFECTS = "CREATE TABLE IF NOT EXISTS payments (id INTEGER PRIMARY KEY, pid INTEGER, amount REAL)"


@dataclass(frozen=True)
class Case:
    """How one thread is built and run, and where its process dies."""

    db: str
    effects_db: str
    embedding: str = "agent"
    model: str = "scripted"
    mode: str = "async"
    point: str = "none"
    flow: str = "allowed"
    delay: float = 0.3
    kill_after: float = 0.0
    """For the ``timer`` point: seconds from the phase's start to the kill."""

    @property
    def runner(self) -> str:
        """The name of the node that runs the tool: the tool node; the tool gate's own node
        on its allowed path; else ``execute``."""
        if self.embedding == "middleware" or (self.embedding, self.flow) == ("gate", "allowed"):
            return "tools"
        return "execute"


def payments(effects_db: str | Path) -> list[int]:
    """Every side effect ``pay`` has had: the id of the process that made it, in order."""
    with closing(sqlite3.connect(effects_db)) as conn:
        conn.execute(_EFFECTS)
        return [pid for (pid,) in conn.execute("SELECT pid FROM payments ORDER BY id")]


def pay_tool(effects_db: str, *, die_after_effect: bool = False) -> BaseTool:
    """``pay``: one committed row in ``effects_db`` per call (then SIGKILL, for kill point b)."""

    @tool
    def pay(to: str, amount: float) -> str:
        """Send money to someone."""
        with closing(sqlite3.connect(effects_db)) as conn, conn:
            conn.execute(_EFFECTS)
            conn.execute("INSERT INTO payments (pid, amount) VALUES (?, ?)", (os.getpid(), amount))
        if die_after_effect:  # (b) the payment is made and the tool never returns
            _die()
        return "paid"

    return pay


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _before_the_tool(checkpoint: Any) -> bool:
    """The checkpoint of the step before the tool runs: the turn asking for it is the last
    message (the model's step, or the approval's after it)."""
    messages: Sequence[AnyMessage] = checkpoint.get("channel_values", {}).get("messages") or ()
    return bool(messages) and isinstance(messages[-1], AIMessage) and bool(messages[-1].tool_calls)


class _Slow:
    """A saver that is slow to save the step before the tool: a ``put`` of its checkpoint, or
    the ``put_writes`` of the model's turn, takes ``delay`` seconds; with ``die`` set the
    process is killed at the end of it, before anything is written. Mixed into a real saver."""

    delay: float = 0.0
    die: bool = False

    def slow(self, saving: bool) -> None:
        if saving:
            time.sleep(self.delay)
            if self.die:
                _die()

    def put(self, config: RunnableConfig, checkpoint: Any, *args: Any) -> RunnableConfig:
        self.slow(_before_the_tool(checkpoint))
        saved: RunnableConfig = super().put(config, checkpoint, *args)  # type: ignore[misc]
        return saved

    def put_writes(self, config: RunnableConfig, writes: Any, *args: Any) -> None:
        self.slow(_asks_for_the_tool(writes))
        super().put_writes(config, writes, *args)  # type: ignore[misc]


def _asks_for_the_tool(writes: Sequence[tuple[str, Any]]) -> bool:
    """The writes of the model's step: its turn, with tool calls."""
    return any(
        isinstance(m, AIMessage) and bool(m.tool_calls)
        for channel, value in writes
        if channel == "messages"
        for m in (value if isinstance(value, list) else [value])
    )


class SlowSqliteSaver(_Slow, SqliteSaver):
    """`SqliteSaver`, slow to save the step before the tool."""


class SlowPostgresSaver(_Slow, PostgresSaver):
    """`PostgresSaver`, slow to save the step before the tool."""


@contextmanager
def saver(case: Case) -> Iterator[BaseCheckpointSaver[Any]]:
    """The case's checkpointer, on its SQLite file or PostgreSQL database, slowed down."""
    made: SlowSqliteSaver | SlowPostgresSaver
    if is_postgres_url(case.db):
        conn = psycopg.connect(case.db, autocommit=True, prepare_threshold=0, row_factory=dict_row)
        made = SlowPostgresSaver(conn, serde=SERDE)  # type: ignore[arg-type]
        made.setup()
    else:
        conn = sqlite3.connect(case.db, check_same_thread=False)  # type: ignore[assignment]
        made = SlowSqliteSaver(conn, serde=SERDE)  # type: ignore[arg-type]
    made.delay, made.die = case.delay, case.point == "d"
    with closing(conn):
        yield made


def model(case: Case) -> ScriptedChatModel:
    """Turn 1 pays bob the flow's amount, turn 2 says "done"."""
    payment = {"name": "pay", "args": {"to": "bob", "amount": AMOUNTS[case.flow]}, "id": None}
    script = [AIMessage("", tool_calls=[payment]), AIMessage("done")]
    return ScriptedChatModel(script, fresh_ids=case.model == "fresh")


def build(case: Case, checkpointer: BaseCheckpointSaver[Any], *, die_after_effect: bool) -> Any:
    """The case's graph on ``checkpointer``, its tables in the same database."""
    tools = [pay_tool(case.effects_db, die_after_effect=die_after_effect)]
    policy = Policy.from_yaml(POLICY)
    chat = model(case)
    if case.embedding == "agent":
        return build_agent(chat, tools, policy, checkpointer=checkpointer)
    if case.embedding == "nested":  # the agent as one node of the user's graph
        outer = StateGraph(ToolGateState, context_schema=RunContext)
        outer.add_node("assistant", build_agent(chat, tools, policy, checkpointer=checkpointer))
        outer.add_edge(START, "assistant")
        return outer.compile(checkpointer=checkpointer)
    if case.embedding == "middleware":
        handrail = HandrailMiddleware(policy=policy, db=checkpointer)
        return create_agent(
            chat, tools, middleware=[handrail], checkpointer=checkpointer, context_schema=RunContext
        )
    # the tool gate in a graph whose model node Handrail does not own
    bound = chat.bind_tools(tools)

    def agent(state: dict[str, Any]) -> dict[str, Any]:
        return {"messages": [bound.invoke(state["messages"])]}

    builder = StateGraph(ToolGateState, context_schema=RunContext)
    builder.add_node("agent", agent)
    builder.add_node("tools", build_tool_gate(tools, policy, db=checkpointer))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    return builder.compile(checkpointer=checkpointer)


class Killer(BaseCallbackHandler):
    """SIGKILLs this process when the node that runs the tool starts (``a``) or ends (``c``)."""

    def __init__(self, point: str, runner: str) -> None:
        self.point = point
        self.runner = runner
        self.names: dict[UUID, str] = {}

    def on_chain_start(
        self, serialized: dict[str, Any] | None, inputs: Any, *, run_id: UUID, **kwargs: Any
    ) -> None:
        name = kwargs.get("name") or ""
        self.names[run_id] = name
        if self.point == "a" and name == self.runner:
            _die()

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        # on_chain_end carries no name: the run's id says which run ended
        if self.point == "c" and self.names.get(run_id) == self.runner:
            _die()


def summary(graph: Any, resubmitted: bool = False) -> dict[str, Any]:
    """Where the thread stands: its pause (if any), the payment's record, the last message."""
    state = graph.get_state({"configurable": {"thread_id": THREAD}})
    values = state.values or {}
    messages = values.get("messages", [])
    records = [r for r in (values.get("calls") or {}).values() if r.name == "pay"]
    paused = next((i.value["handrail"] for i in state.interrupts), None)
    return {
        "interrupt": paused["kind"] if paused else None,
        "errors": [c["error"]["kind"] for c in paused["calls"].values() if c["error"]]
        if paused
        else [],
        "status": records[-1].status if records else None,
        "replay_of": records[-1].replay_of if records else None,
        "tool_results": [m.text for m in messages if isinstance(m, ToolMessage)],
        "last": messages[-1].text if messages else None,
        "resubmitted": resubmitted,
    }


def _saved(state: Any) -> bool:
    """Whether the crash left something of the request to go on with: a task to run, or the
    model's last word."""
    messages = (state.values or {}).get("messages") or []
    answered = (
        bool(messages) and isinstance(messages[-1], AIMessage) and not messages[-1].tool_calls
    )
    return bool(state.tasks) or answered


def run(case: Case, phase: str, out: str) -> None:
    """Run ``phase`` of ``case``; unless killed, write its `summary` as JSON to ``out``.

    ``start`` runs the thread from the user's message; ``approve`` approves its payment;
    ``resume`` goes on with the thread by its ID after a crash, or, when nothing of it was
    saved to go on with, submits the same request again, as an application would;
    ``decide-escalation`` skips the escalated payment.
    """
    timer = threading.Timer(case.kill_after, _die)
    timer.daemon = True
    if case.point == "timer":
        timer.start()
    with saver(case) as checkpointer:
        graph = build(case, checkpointer, die_after_effect=case.point == "b")
        callbacks: list[BaseCallbackHandler] = [Killer(case.point, case.runner)]
        config: RunnableConfig = {"configurable": {"thread_id": THREAD}, "callbacks": callbacks}
        ctx = RunContext(actor=AGENT)
        mode = cast(Durability, case.mode)
        resubmitted = False
        if phase == "start":
            graph.invoke(REQUEST, config, context=ctx, durability=mode)
        elif phase == "resume":
            resubmitted = not _saved(graph.get_state(config))
            graph.invoke(REQUEST if resubmitted else None, config, context=ctx, durability=mode)
        else:
            decision = {"type": "approve"} if phase == "approve" else {"type": "skip"}
            who = TREASURER if phase == "approve" else OPERATOR
            resume = Command(resume={"decisions": [decision], "approver": who})
            graph.invoke(resume, config, context=ctx, durability=mode)
        timer.cancel()
        Path(out).write_text(json.dumps(summary(graph, resubmitted)))


@dataclass
class Exit:
    """How one phase's process ended."""

    pid: int
    code: int
    out: Path

    @property
    def killed(self) -> bool:
        return self.code == -signal.SIGKILL

    @property
    def summary(self) -> dict[str, Any]:
        """Where the thread stands after the phase (`crash_child.summary`)."""
        assert self.code == 0, f"the phase ended with {self.code}"
        parsed: dict[str, Any] = json.loads(self.out.read_text())
        return parsed


class Forks:
    """``crash_child.py serve``: one process that imported everything, forking one process per
    phase (a phase then costs its graph's runs, not a Python start-up)."""

    def __init__(self) -> None:
        self.server = subprocess.Popen(
            [sys.executable, __file__],
            cwd=Path(__file__).parent.parent,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.runs = itertools.count()

    def phase(self, case: Case, name: str, tmp_path: Path) -> Exit:
        """Run phase ``name`` of ``case`` in a forked process, and wait for its end."""
        assert self.server.stdin is not None and self.server.stdout is not None
        out = tmp_path / f"phase-{next(self.runs)}.json"
        request = {"case": asdict(case), "phase": name, "out": str(out)}
        self.server.stdin.write(json.dumps(request) + "\n")
        self.server.stdin.flush()
        ready, _, _ = select.select([self.server.stdout], [], [], 120)
        if not ready:
            self.server.kill()
            raise TimeoutError(f"phase {name} of {case} did not end in 120 s")
        answer = json.loads(self.server.stdout.readline())
        return Exit(answer["pid"], answer["code"], out)

    def close(self) -> None:
        assert self.server.stdin is not None
        self.server.stdin.close()
        self.server.wait(30)


def crash(forks: Forks, case: Case, tmp_path: Path) -> tuple[Exit, dict[str, Any]]:
    """Kill the case at its point, then go on until the thread is done: a person skips a payment
    whose outcome is unknown. The killed phase and the last summary (``escalated`` when a
    person was asked)."""
    if case.flow == "approved":
        waiting = forks.phase(replace(case, point="none"), "start", tmp_path).summary
        assert waiting["interrupt"] == "approval"
        killed = forks.phase(case, "approve", tmp_path)
    else:
        killed = forks.phase(case, "start", tmp_path)
    if not killed.killed:  # the run ended before its kill point came
        return killed, killed.summary
    after = forks.phase(replace(case, point="none"), "resume", tmp_path).summary
    assert after["interrupt"] != "approval", "a decided approval was asked for again"
    if after["interrupt"] == "escalation":
        assert after["errors"] == ["outcome_unknown"]
        after = forks.phase(replace(case, point="none"), "decide-escalation", tmp_path).summary
        assert after["status"] == "failed"
        assert "outcome unknown" in after["tool_results"][-1]
        after["escalated"] = True
    assert (after["interrupt"], after["last"]) == (None, "done"), after
    return killed, after


MODES = ["sync", "async", "exit"]
"""LangGraph's durability modes."""


def random_case(rng: random.Random, root: Path, embedding: str) -> Case:
    """A thread on its own files, a fresh-id model, a random durability and a saver of random
    slowness, killed at a random moment of its first run (its length is about 50 ms plus two
    slow writes)."""
    delay = rng.uniform(0.0, 0.3)
    return Case(
        str(root / "handrail.db"),
        str(root / "payments.db"),
        embedding,
        "fresh",
        rng.choice(MODES),
        "timer",
        delay=delay,
        kill_after=rng.uniform(0.0, 0.06 + 2 * delay),
    )


def serve() -> None:
    """Fork one process per request read from stdin, and answer each on stdout.

    A request is a JSON line: ``{"case": {...}, "phase": ..., "out": ...}`` (see `run`); the
    answer is ``{"pid": ..., "code": ...}``, the code negative when a signal ended the process.
    Everything is imported once, here: a forked phase costs its graph's runs only.
    """
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the phase's own process
            code = 0
            try:
                run(Case(**request["case"]), request["phase"], request["out"])
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        answer = {"pid": pid, "code": os.waitstatus_to_exitcode(status)}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    serve()
