"""An adversarial review of f7d38d6 (SQLite): a graph's store writes through its `SqliteSaver`'s
connection and lock, the approvals table included, and reads through a connection of its own
(`SqliteStore._reader`).

Attacks: a deadlock on the saver's non-reentrant lock (claims, releases, decisions and the
approval node's writes racing LangGraph's background checkpoint writes in one process), a stale
read on the reader connection (a write just committed through the saver's connection, by the
same thread), a lost or doubled decision when threads of one process share one graph, and the
reader connection leaking when graphs are built again and again. Every racing piece of work runs
in a thread joined with a timeout, so a deadlock fails the test instead of hanging it.
"""

from __future__ import annotations

import gc
import os
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from langgraph.checkpoint.sqlite import SqliteSaver
from support import CTX, config

from handrail import Actor, Inbox, Policy, RunContext, build_agent
from handrail.errors import NothingPending, RequesterMismatch
from handrail.graph import HandrailGraph
from handrail.storage import store_for
from handrail.storage._sqlite import SqliteStore
from handrail.testing import ScriptedChatModel
from handrail.tools.demo import POLICY_PATH, banking_tools, transfers

ALICE = Actor(id="alice", roles=("treasurer",))
BOB = Actor(id="bob", roles=("treasurer",))
DEADLINE_S = 120.0
"""How long racing work may take before the test calls it a deadlock."""

PAY = {"name": "transfer_funds", "id": "c1", "args": {"to": "carol", "amount": 5000}}


def graph(db: Path) -> HandrailGraph:
    """The demo bank agent on ``db``: asks to pay carol 5000 (approval needed), then says ok."""
    model = ScriptedChatModel([AIMessage("", tool_calls=[PAY]), AIMessage("ok")])
    return build_agent(model, banking_tools(db), Policy.from_file(POLICY_PATH), checkpointer=db)


def race(jobs: list[Callable[[], Any]]) -> list[Any]:
    """Run ``jobs`` at once in threads; each one's result or exception. Fails on a hang."""
    start = threading.Barrier(len(jobs))

    def run(job: Callable[[], Any]) -> Any:
        start.wait(DEADLINE_S)
        try:
            return job()
        except BaseException as exc:  # reported to the caller
            return exc

    pool = ThreadPoolExecutor(len(jobs))
    futures = [pool.submit(run, job) for job in jobs]
    _, pending = wait(futures, timeout=DEADLINE_S)
    pool.shutdown(wait=False)
    assert not pending, f"{len(pending)} of {len(jobs)} racing jobs never finished: a deadlock"
    return [f.result() for f in futures]


def waiting(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT thread_id, tool_call_id FROM handrail_approvals "
            "WHERE status IN ('open', 'deciding') ORDER BY thread_id"
        ).fetchall()


def test_threads_of_one_process_approving_one_request_at_once_run_it_once(tmp_path: Path) -> None:
    """Four threads share one graph (one saver, one lock) and approve the same request through
    `Inbox(db, graph=graph)` at once: claims, the approval node's writes, LangGraph's background
    checkpoint writes and the releases all queue on the saver's lock. Nothing deadlocks, one
    decision wins, the others are refused as already decided, and the transfer runs once."""
    db = tmp_path / "handrail.db"
    g = graph(db)
    g.invoke({"messages": [("user", "pay carol")]}, config(), context=CTX)
    assert waiting(db) == [("t-1", "c1")]
    inbox = Inbox(db, graph=g)
    results = race([lambda: inbox.approve("t-1", approver=ALICE) for _ in range(4)])
    refused = [r for r in results if isinstance(r, NothingPending)]
    ran = [r for r in results if not isinstance(r, BaseException)]
    assert len(ran) == 1 and len(refused) == 3, results
    assert transfers(db) == [("carol", 5000.0)]
    assert waiting(db) == []


def test_many_threads_paused_and_decided_at_once_through_one_graph_all_run(
    tmp_path: Path,
) -> None:
    """Six threads of conversation are started and then approved, each from its own Python
    thread, on one graph: new runs (pins riding along, the approval node opening requests) and
    decisions (claims and releases) interleave with the background checkpoint writes on one
    connection. Every run finishes, every transfer runs once, nothing is left waiting."""
    db = tmp_path / "handrail.db"
    g = graph(db)
    threads = [f"t-{i}" for i in range(6)]

    def start(thread: str) -> Callable[[], Any]:
        return lambda: g.invoke({"messages": [("user", "pay")]}, config(thread), context=CTX)

    started = race([start(t) for t in threads])
    assert not [r for r in started if isinstance(r, BaseException)], started
    assert sorted(t for t, _ in waiting(db)) == threads
    inbox = Inbox(db, graph=g)

    def decide(thread: str) -> Callable[[], Any]:
        return lambda: inbox.approve(thread, approver=ALICE)

    # each decision races the next thread's decision and a check of its own pin
    jobs = [decide(t) for t in threads] + [
        (lambda t=t: g.handrail_gate.requesters.pinned(t)) for t in threads
    ]
    decided = race(jobs)
    assert not [r for r in decided if isinstance(r, BaseException)], decided
    assert transfers(db) == [("carol", 5000.0)] * 6
    assert waiting(db) == []


def test_the_reader_sees_what_the_same_thread_just_wrote_through_the_saver(
    tmp_path: Path,
) -> None:
    """The approvals table writes through the saver's connection and reads through the store's
    own: a request listed by the run, then a decision settled, are read back at once by the
    same Python thread through the graph's table (no stale snapshot on the reader)."""
    db = tmp_path / "handrail.db"
    g = graph(db)
    table = g.handrail_table
    assert table is not None and table.store is g.handrail_gate.requesters.store  # type: ignore[attr-defined]
    for round_ in range(5):
        thread = f"t-{round_}"
        g.invoke({"messages": [("user", "pay")]}, config(thread), context=CTX)
        assert len(table.waiting(thread_id=thread)) == 1
        Inbox(db, graph=g).approve(thread, approver=ALICE)
        assert table.waiting(thread_id=thread) == []
        assert table.approved(thread, ["c1"]) != {}


def test_a_read_inside_a_transaction_neither_deadlocks_nor_sees_its_uncommitted_rows(
    tmp_path: Path,
) -> None:
    """Pins down the new semantics of a saver-sharing store: `read()` inside `transaction()`
    (the saver's lock held) goes to the reader connection, so it does not deadlock (it did
    before f7d38d6, both taking the saver's lock) and sees the last commit, not the rows the
    open transaction wrote. Code that must see its own uncommitted rows reads through ``sql``."""
    db = tmp_path / "handrail.db"
    saver = SqliteSaver(sqlite3.connect(db, check_same_thread=False))
    saver.setup()
    store = SqliteStore(db, saver=saver)
    try:
        with store.transaction() as sql:
            sql.execute("CREATE TABLE probe (x INTEGER)")
        seen: list[Any] = []

        def inside() -> None:
            with store.transaction() as sql:
                sql.execute("INSERT INTO probe VALUES (1)")
                with store.read() as reading:
                    seen.append(reading.execute("SELECT count(*) FROM probe").fetchone()[0])
                seen.append(sql.execute("SELECT count(*) FROM probe").fetchone()[0])
            with store.read() as reading:
                seen.append(reading.execute("SELECT count(*) FROM probe").fetchone()[0])

        worker = threading.Thread(target=inside)
        worker.start()
        worker.join(DEADLINE_S)
        assert not worker.is_alive(), "a read inside a transaction deadlocked"
        assert seen == [0, 1, 1]
    finally:
        store.close()
        saver.conn.close()


def test_a_saver_holding_its_lock_does_not_block_the_stores_reads(tmp_path: Path) -> None:
    """The point of the change: while the saver's lock is held (a checkpoint being written in
    the background), the store's reads (a pin, the inbox's listing) go on."""
    db = tmp_path / "handrail.db"
    saver = SqliteSaver(sqlite3.connect(db, check_same_thread=False))
    saver.setup()
    store = store_for(saver, None)
    assert isinstance(store, SqliteStore)
    try:
        with saver.lock:
            reader = threading.Thread(target=lambda: store.table_exists("handrail_approvals"))
            reader.start()
            reader.join(30)
            assert not reader.is_alive()
    finally:
        store.close()
        saver.conn.close()


def open_files(path: Path) -> int:
    """How many of this process's file descriptors are open on ``path``."""
    target = str(path.resolve())
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == target:
                count += 1
        except OSError:
            continue
    return count


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc")
def test_graphs_built_again_and_again_do_not_leak_connections(tmp_path: Path) -> None:
    """Each build on a SQLite path opens a saver connection and the store's reader; a graph
    dropped lets both go (nothing keeps a store alive in a module-level registry), so building
    a graph per request in a long-lived process does not run out of file descriptors."""
    db = tmp_path / "handrail.db"
    g = graph(db)
    g.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    del g
    gc.collect()
    before = open_files(db)
    for i in range(25):
        g = graph(db)
        g.invoke({"messages": [("user", "pay")]}, config(f"n-{i}"), context=CTX)
        del g
    gc.collect()
    assert open_files(db) <= before + 2


def test_a_second_actor_cannot_run_on_a_thread_another_pinned_in_this_process(
    tmp_path: Path,
) -> None:
    """Alice's run pins thread t-1 (its pin rides along with the run's first write, through the
    saver's connection); bob's run on the same graph, and on a graph built afresh on the file
    (which reads the pin through its own reader connection, no cache), is refused."""
    db = tmp_path / "handrail.db"
    agent_alice = RunContext(actor=Actor(id="agent-alice", roles=("ai-agent",)))
    agent_bob = RunContext(actor=Actor(id="agent-bob", roles=("ai-agent",)))
    g = graph(db)
    g.invoke({"messages": [("user", "pay")]}, config(), context=agent_alice)
    with pytest.raises(RequesterMismatch):
        g.invoke({"messages": [("user", "pay")]}, config(), context=agent_bob)
    with pytest.raises(RequesterMismatch):
        graph(db).invoke({"messages": [("user", "pay")]}, config(), context=agent_bob)


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc")
@pytest.mark.parametrize("given", ["path", "saver"])
def test_closing_the_middleware_closes_the_connections_it_opened(
    tmp_path: Path, given: str
) -> None:
    """`HandrailMiddleware.close` closes the connections it opened to the file: the store's own
    (given a path), or the store's reader (given a `SqliteSaver`, whose connection is the
    caller's and stays open)."""
    from handrail.integrations.langchain import HandrailMiddleware

    db = tmp_path / "handrail.db"
    saver = SqliteSaver(sqlite3.connect(db, check_same_thread=False)) if given == "saver" else None
    middleware = HandrailMiddleware(Policy.from_file(POLICY_PATH), db=saver or db)
    assert open_files(db) > 0
    middleware.close()
    if saver is not None:  # the caller's; SQLite defers closing other fds while it holds locks
        saver.conn.close()
    assert open_files(db) == 0


def test_a_guarded_create_agent_decided_by_racing_threads_runs_the_call_once(
    tmp_path: Path,
) -> None:
    """The middleware's tables share the agent's `SqliteSaver` (its connection and lock): four
    threads approving the paused thread through `Inbox(db, graph=handrail.guard(agent))` at once
    neither deadlock nor run the transfer twice; three are refused as already decided."""
    from langchain.agents import create_agent

    from handrail.integrations.langchain import HandrailMiddleware

    db = tmp_path / "handrail.db"
    saver = SqliteSaver(sqlite3.connect(db, check_same_thread=False))
    handrail = HandrailMiddleware(Policy.from_file(POLICY_PATH), db=saver)
    agent = create_agent(
        ScriptedChatModel([AIMessage("", tool_calls=[PAY]), AIMessage("done")]),
        banking_tools(db),
        middleware=[handrail],
        checkpointer=saver,
        context_schema=RunContext,
    )
    guarded = handrail.guard(agent)
    try:
        guarded.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
        assert waiting(db) == [("t-1", "c1")]
        inbox = Inbox(db, graph=guarded)
        results = race([lambda: inbox.approve("t-1", approver=ALICE) for _ in range(4)])
        inbox.close()
        ran = [r for r in results if not isinstance(r, BaseException)]
        assert len(ran) == 1, results
        assert all(isinstance(r, NothingPending) for r in results if r not in ran), results
        assert transfers(db) == [("carol", 5000.0)]
        assert waiting(db) == []
    finally:
        handrail.close()
        saver.conn.close()
