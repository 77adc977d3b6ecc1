"""`load.py`'s approval-mode workers: plain LangGraph, Handrail with the same hand-off of thread
ids (`run_handrail`), and Handrail's workers finding their work in the inbox
(`run_handrail_inbox`)."""

from __future__ import annotations

import contextlib
import queue
import random
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, Literal

from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from langgraph.types import Command, interrupt
from load_common import (
    BARRIER_TIMEOUT_S,
    LAPSE_AFTER_S,
    LAPSE_MEMO,
    LAPSE_RULE,
    POLICY_YAML,
    Job,
    Shared,
    Tally,
    WorkerResult,
    close_quietly,
    config_for,
    make_model,
    open_saver,
    retried,
    started_all,
    timed,
)

import handrail
from handrail.errors import AlreadyDecided
from handrail.graph import HandrailGraph

Output = dict[str, Any]
PROMPT = "Pay carol's invoice."


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


def run_handoff(
    k: int,
    job: Job,
    shared: Shared,
    result: WorkerResult,
    start: Callable[[str, str], Output],
    approve: Callable[[str], Output],
    expire: Callable[[str], list[str]],
) -> None:
    """The approval loop both sides run: start a thread; a paused one goes on the shared
    hand-off queue (an expiring one stays with its worker until ``LAPSE_AFTER_S`` after its
    pause, then ``expire(thread)``, which gives the threads it resolved); take an id off the
    queue and ``approve`` it; until every worker has started all its threads and the queue is
    drained."""
    tally = Tally(result)
    todo = plan(k, job)
    lapsing: list[tuple[float, str]] = []
    mine = f"w{k}-"
    shared.barrier.wait(BARRIER_TIMEOUT_S)
    while True:
        if todo:
            thread, memo = todo.pop(0)
            try:
                with timed(result, "start"):
                    out = start(thread, memo)
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
                    result.expired += expire(thread)
            except Exception as exc:
                tally.error(f"expire {thread}", exc)
            else:
                tally.ok()
        try:
            with timed(result, "take"):
                thread = (
                    shared.handoff.get(timeout=0.005) if not todo else shared.handoff.get_nowait()
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
                out = approve(thread)
        except Exception as exc:
            tally.error(f"approve {thread}", exc)
        else:
            tally.ok()
            result.approve_ms.append((time.time() - began) * 1e3)
            result.approved[thread] = began
            result.cross += not thread.startswith(mine)
            if out["messages"][-1].content != "done":
                tally.wrong(f"approve {thread}", f"the run ended with {out['messages'][-1]!r}")


def run_plain(k: int, job: Job, shared: Shared, pay: BaseTool, result: WorkerResult) -> None:
    """Plain LangGraph: resumed by thread id with ``Command(resume=...)``; an expiring thread
    is resumed with a rejection."""
    with contextlib.ExitStack() as stack:
        graphs = retried(
            Tally(result),
            lambda: {
                m: build_plain(m, pay, open_saver(job, stack)) for m in ("invoice", LAPSE_MEMO)
            },
        )

        def start(thread: str, memo: str) -> Output:
            out: Output = graphs[memo].invoke(
                {"messages": [HumanMessage(PROMPT)]}, config_for(thread)
            )
            return out

        def approve(thread: str) -> Output:
            out: Output = graphs["invoice"].invoke(
                Command(resume={"type": "approve"}), config_for(thread)
            )
            return out

        def expire(thread: str) -> list[str]:
            graphs[LAPSE_MEMO].invoke(Command(resume={"type": "reject"}), config_for(thread))
            return [thread]

        run_handoff(k, job, shared, result, start, approve, expire)


@contextlib.contextmanager
def handrail_side(
    k: int, job: Job, pay: BaseTool, result: WorkerResult
) -> Iterator[tuple[dict[str, HandrailGraph], handrail.Inbox]]:
    """A Handrail worker's graphs (one per memo) and inbox on the job's store, closed after."""
    policy = handrail.Policy.from_yaml(POLICY_YAML)

    def build() -> tuple[dict[str, HandrailGraph], handrail.Inbox]:
        graphs = {
            memo: handrail.build_agent(
                make_model(memo), [pay], policy, checkpointer=job.target, name="load_agent"
            )
            for memo in ("invoice", LAPSE_MEMO)
        }
        return graphs, handrail.Inbox(job.target, graph=graphs["invoice"])

    graphs, inbox = retried(Tally(result), build)
    try:
        yield graphs, inbox
    finally:
        close_quietly(inbox, *(g.handrail_table for g in graphs.values()))
        close_quietly(*(getattr(g.checkpointer, "conn", None) for g in graphs.values()))


def requester(k: int) -> handrail.RunContext:
    """The run context of worker ``k``'s threads."""
    return handrail.RunContext(actor=handrail.Actor(id=f"agent-{k}", roles=("ai-agent",)))


def treasurer(k: int) -> handrail.Actor:
    """Worker ``k``'s approver: a treasurer who is not the requester."""
    return handrail.Actor(id=f"treasurer-{k}", roles=("treasurer",))


def run_handrail(k: int, job: Job, shared: Shared, pay: BaseTool, result: WorkerResult) -> None:
    """Handrail with plain's hand-off: ``inbox.approve(thread)`` for an id taken off the queue;
    an expiring thread's worker calls ``inbox.expire()`` after its deadline (a sweep, which
    resolves whatever else is past its deadline too)."""
    with handrail_side(k, job, pay, result) as (graphs, inbox):
        context, approver = requester(k), treasurer(k)

        def start(thread: str, memo: str) -> Output:
            out: Output = graphs[memo].invoke(
                {"messages": [HumanMessage(PROMPT)]}, config_for(thread), context=context
            )
            return out

        def approve(thread: str) -> Output:
            out: Output = inbox.approve(thread, approver=approver)
            return out

        def expire(thread: str) -> list[str]:
            return list(dict.fromkeys(r.thread_id for r in inbox.expire()))

        run_handoff(k, job, shared, result, start, approve, expire)


def run_handrail_inbox(
    k: int, job: Job, shared: Shared, pay: BaseTool, result: WorkerResult
) -> None:
    """Handrail's own listing: every loop ``inbox.pending()``; approve one of the oldest W
    waiting threads, at random, started by another worker whenever there is one (two workers
    often pick the same: the loser's ``AlreadyDecided`` is a lost race); ``inbox.expire()``
    when a listed expiring request is past its deadline."""
    tally = Tally(result)
    with handrail_side(k, job, pay, result) as (graphs, inbox):
        context, approver = requester(k), treasurer(k)
        rng = random.Random(job.seed * 1000 + k)
        todo = plan(k, job)
        mine = f"w{k}-"
        shared.barrier.wait(BARRIER_TIMEOUT_S)
        while True:
            if todo:
                thread, memo = todo.pop(0)
                try:
                    with timed(result, "start"):
                        out = graphs[memo].invoke(
                            {"messages": [HumanMessage(PROMPT)]},
                            config_for(thread),
                            context=context,
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
