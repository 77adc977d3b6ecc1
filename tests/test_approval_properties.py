"""Property: for any sequence of decisions from any spellings of any ids, a two-person rule runs
the tool only after two distinct people holding a directory role approved it, never the
requester, and exactly once (real graphs, real interrupts, a real SQLite file per example)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.messages import AIMessage
from langgraph.types import Command
from support import CTX, call, config, turn

from handrail import Policy, build_agent
from handrail.auth import Directory
from handrail.errors import ApprovalError
from handrail.testing import ScriptedChatModel
from handrail.tools.demo import banking_tools, transfers

POLICY = Policy.from_yaml(
    """
rules:
  - {id: two-person, tools: [transfer_funds], roles: [ai-agent], effect: ask,
     approvers: [treasurer], min_approvals: 2}
"""
)
PEOPLE = Directory.from_mapping(
    {
        "alice": ["treasurer"],
        "bob": ["treasurer"],
        "carol": ["clerk"],
        "agent-123": ["ai-agent", "treasurer"],
    }
)

SPELLINGS: dict[str, str | None] = {
    # how an approver may be written -> the person it names (None: refused, names no one)
    "alice": "alice",
    "Alice": "alice",
    "ALICE": "alice",
    "\uff41\uff4c\uff49\uff43\uff45": "alice",  # fullwidth
    "alice\u200b": None,  # a zero-width space
    "\u0430lice": None,  # a Cyrillic a
    "bob": "bob",
    "Bob": "bob",
    "b\u00adob": None,  # a soft hyphen
    "carol": "carol",  # in the directory, but not a treasurer
    "mallory": None,  # not in the directory
    "agent-123": "agent-123",  # the requester
    "AGENT-123": "agent-123",
}
TREASURERS = {"alice", "bob"}

decision = st.tuples(
    st.sampled_from(sorted(SPELLINGS)),
    st.sampled_from(["approve", "approve", "approve", "reject"]),
    st.booleans(),  # whether the payload also claims the treasurer role
)


def resume(spelled: str, kind: str, claims_role: bool) -> dict[str, Any]:
    approver: dict[str, Any] = {"id": spelled}
    if claims_role:
        approver["roles"] = ["treasurer"]
    return {"decisions": [{"type": kind}], "approver": approver}


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.lists(decision, min_size=1, max_size=6))
def test_the_tool_runs_only_after_two_distinct_treasurers_never_the_requester(
    decisions: list[tuple[str, str, bool]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "h.db"
        model = ScriptedChatModel(
            [turn(call("transfer_funds", to="eve", amount=5000)), AIMessage("done")]
        )
        graph = build_agent(model, banking_tools(db), POLICY, checkpointer=db, directory=PEOPLE)
        graph.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
        approved: set[str] = set()
        settled = False
        for spelled, kind, claims_role in decisions:
            person = SPELLINGS[spelled]
            valid = (
                not settled
                and person in TREASURERS
                and not (kind == "approve" and person in approved)
            )
            try:
                graph.invoke(
                    Command(resume=resume(spelled, kind, claims_role)), config(), context=CTX
                )
            except ApprovalError:
                assert not valid, (spelled, kind, "a valid decision was refused")
            else:
                assert valid, (spelled, kind, "an invalid decision was taken")
                assert person is not None
                if kind == "reject":
                    settled = True
                else:
                    approved.add(person)
                    settled = len(approved) >= 2
            paid = transfers(db).count(("eve", 5000.0))
            assert paid == (1 if len(approved) >= 2 else 0), (decisions, approved)
