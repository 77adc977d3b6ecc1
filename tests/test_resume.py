"""Resuming a paused thread: checked decisions, untouched state on refusal, other processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command
from support import CTX, TREASURER, approval_rows, approve, call, config, per_call, turn

from handrail.errors import (
    ApprovalError,
    ApproverNotAuthorized,
    NothingPending,
    ResumeError,
    SelfApproval,
    StaleApproval,
    UnknownCall,
)
from handrail.graph import HandrailGraph
from handrail.tools.demo import transfers

pytestmark = pytest.mark.backends("sqlite", "postgresql")

BIG = turn(call("transfer_funds", to="carol", amount=5000))


def stored(graph: HandrailGraph, thread: str = "t-1") -> tuple[Any, ...]:
    """Everything stored for the thread: checkpoints, pending writes, Handrail's approval rows."""
    saver = graph.checkpointer
    assert saver is not None and graph.handrail_table is not None
    return (
        tuple(
            (
                t.config["configurable"]["checkpoint_id"],
                t.pending_writes,
                t.checkpoint["channel_versions"],
            )
            for t in saver.list(config(thread))
        ),
        approval_rows(graph.handrail_table.store.url),
    )


@pytest.fixture
def paused(bank) -> HandrailGraph:
    graph = bank(BIG)
    result = graph.invoke({"messages": [("user", "pay carol")]}, config(), context=CTX)
    assert "__interrupt__" in result
    return graph


REFUSALS: list[tuple[str, Any, type[ApprovalError], str]] = [
    ("not a mapping", "yes", ResumeError, "mapping"),
    ("no decisions", {"approver": TREASURER}, ResumeError, "decisions"),
    (
        "unknown decision type",
        {"decisions": [{"type": "maybe"}], "approver": TREASURER},
        ResumeError,
        "decisions.0",
    ),
    ("too few decisions", {"decisions": [], "approver": TREASURER}, ResumeError, "expected 1"),
    ("too many decisions", approve(2), ResumeError, "got 2"),
    (
        "extra field",
        {"decisions": [{"type": "approve", "note": 1}], "approver": TREASURER},
        ResumeError,
        "note",
    ),
    (
        "decision for an unknown call",
        {"decisions": [{"type": "approve", "tool_call_id": "call_9_9"}], "approver": TREASURER},
        UnknownCall,
        "call_9_9",
    ),
    ("no approver", {"decisions": [{"type": "approve"}]}, ApproverNotAuthorized, "no approver"),
    (
        "approver without id",
        approve(approver={"roles": ["treasurer"]}),
        ApproverNotAuthorized,
        "no approver id",
    ),
    (
        "wrong role",
        approve(approver={"id": "bob", "roles": ["teller"]}),
        ApproverNotAuthorized,
        "treasurer",
    ),
    (
        "self-approval",
        approve(approver={"id": "agent-123", "roles": ["treasurer"]}),
        SelfApproval,
        "agent-123",
    ),
    (
        "stale args hash",
        {"decisions": [{"type": "approve", "args_hash": "0" * 64}], "approver": TREASURER},
        StaleApproval,
        "hash",
    ),
    (
        "edit of another tool",
        {
            "decisions": [
                {
                    "type": "edit",
                    "edited_action": {"name": "delete_user", "args": {"user_id": "bob"}},
                }
            ],
            "approver": TREASURER,
        },
        ResumeError,
        "not the tool",
    ),
    (
        "edit that does not fit the schema",
        {
            "decisions": [
                {
                    "type": "edit",
                    "edited_action": {"name": "transfer_funds", "args": {"to": "carol"}},
                }
            ],
            "approver": TREASURER,
        },
        ResumeError,
        "do not fit",
    ),
]


@pytest.mark.parametrize(
    ("value", "error", "text"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_a_refused_resume_raises_changes_nothing_and_the_next_valid_one_works(
    paused: HandrailGraph, db: Path, value: Any, error: type[ApprovalError], text: str
) -> None:
    before = stored(paused)
    with pytest.raises(error, match=text) as info:
        paused.invoke(Command(resume=value), config(), context=CTX)
    assert info.value.thread_id == "t-1"
    assert stored(paused) == before
    assert transfers(db) == []
    paused.invoke(Command(resume=approve()), config(), context=CTX)
    assert transfers(db) == [("carol", 5000.0)]


def test_the_matching_args_hash_approves(paused: HandrailGraph, db: Path) -> None:
    request = paused.pending_request(config())
    assert request is not None
    digest = per_call(request[1], "args_hash")[0]
    value = {"decisions": [{"type": "approve", "args_hash": digest}], "approver": TREASURER}
    paused.invoke(Command(resume=value), config(), context=CTX)
    assert transfers(db) == [("carol", 5000.0)]


def test_the_interrupt_id_map_form_of_resume_is_checked_too(paused: HandrailGraph, db) -> None:
    interrupt_id = paused.pending_request(config())[0]  # type: ignore[index]
    with pytest.raises(ApproverNotAuthorized):
        paused.invoke(
            Command(resume={interrupt_id: approve(approver={"id": "x", "roles": []})}),
            config(),
            context=CTX,
        )
    paused.invoke(Command(resume={interrupt_id: approve()}), config(), context=CTX)
    assert transfers(db) == [("carol", 5000.0)]


def test_resuming_a_thread_with_nothing_pending_is_refused(bank) -> None:
    graph = bank(turn(call("get_balance", account="bob")))
    graph.invoke({"messages": [("user", "x")]}, config(), context=CTX)
    with pytest.raises(NothingPending):
        graph.invoke(Command(resume=approve()), config(), context=CTX)
    with pytest.raises(NothingPending):
        graph.invoke(Command(resume=approve()), config("never-started"), context=CTX)


def test_a_bad_value_that_bypasses_the_check_cannot_poison_the_thread(paused, db) -> None:
    """LangGraph's own invoke stores the bad value; the node re-asks instead of raising."""
    raw = CompiledStateGraph.stream  # the unchecked path, as a server or raw Pregel would take

    def plain_invoke(value: Any) -> dict[str, Any]:
        for _ in raw(paused, Command(resume=value), config(), context=CTX):
            pass
        snapshot = paused.get_state(config())
        return {**snapshot.values, "__interrupt__": snapshot.interrupts}

    state = plain_invoke({"decisions": [], "approver": TREASURER})
    (pending,) = state["__interrupt__"]
    assert "expected 1 decision" in pending.value["handrail"]["error"]
    state = plain_invoke(approve(approver={"id": "eve", "roles": ["teller"]}))
    assert "treasurer" in state["__interrupt__"][0].value["handrail"]["error"]
    assert transfers(db) == []
    paused.invoke(Command(resume=approve()), config(), context=CTX)
    assert transfers(db) == [("carol", 5000.0)]


RESUME_SCRIPT = textwrap.dedent(
    """
    import sys
    from langchain_core.messages import AIMessage
    from langgraph.types import Command
    from handrail import Actor, Policy, RunContext, build_agent
    from handrail.testing import ScriptedChatModel
    from handrail.tools.demo import POLICY_PATH, banking_tools

    db, thread = sys.argv[1], sys.argv[2]
    model = ScriptedChatModel([
        AIMessage("", tool_calls=[{"name": "transfer_funds", "id": None,
                                   "args": {"to": "carol", "amount": 5000}}]),
        AIMessage("done"),
    ])
    graph = build_agent(model, banking_tools(db), Policy.from_file(POLICY_PATH), checkpointer=db)
    result = graph.invoke(
        Command(resume={"decisions": [{"type": "approve"}],
                        "approver": {"id": "alice", "roles": ["treasurer"]}}),
        {"configurable": {"thread_id": thread}},
        context=RunContext(actor=Actor(id="agent-123", roles=["ai-agent"])),
    )
    print(result["messages"][-1].content)
    """
)


def test_a_paused_thread_resumes_in_another_process_by_thread_id(paused, db, tmp_path) -> None:
    script = tmp_path / "resume.py"
    script.write_text(RESUME_SCRIPT)
    del paused  # this process keeps nothing but the file
    done = subprocess.run(
        [sys.executable, str(script), str(db), "t-1"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "done"
    assert transfers(db) == [("carol", 5000.0)]
    again = subprocess.run(
        [sys.executable, str(script), str(db), "t-1"], capture_output=True, text=True, timeout=120
    )
    assert again.returncode != 0 and "AlreadyDecided" in again.stderr
    assert transfers(db) == [("carol", 5000.0)]
