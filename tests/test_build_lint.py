"""The builders lint their policy against the graph's tools and directory (``lint=``): a typo'd
tool or an argument the tool does not take is a `PolicyWarning` by default, a `PolicyError` with
``lint="error"``, and nothing with ``lint="off"``."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from langgraph.graph import START, StateGraph

from handrail import Directory, Policy, ToolGateState, build_agent, build_tool_gate, build_workflow
from handrail.errors import PolicyError
from handrail.graph import Step
from handrail.policies.lint import PolicyWarning
from handrail.testing import ScriptedChatModel
from handrail.tools.demo import banking_tools

TYPO = Policy.from_yaml(
    """
rules:
  - id: balances
    tools: [get_balanse]
    effect: allow
  - id: big
    tools: [transfer_funds]
    when: "args.amuont > 1000.0"
    effect: ask
    approvers: [treasurer]
"""
)
CLEAN = Policy.from_yaml(
    """
rules:
  - id: big
    tools: [transfer_funds]
    roles: [ai-agent]
    when: "args.amount > 1000.0"
    effect: ask
    approvers: [treasurer]
"""
)


def agent(policy: Policy, db: Path, **kwargs: Any) -> Any:
    model = ScriptedChatModel([AIMessage("done")])
    return build_agent(
        model, banking_tools(db.parent / "bank.db"), policy, checkpointer=db, **kwargs
    )


def test_a_policy_that_does_not_fit_its_tools_warns_by_default(tmp_path: Path) -> None:
    with pytest.warns(PolicyWarning) as caught:
        agent(TYPO, tmp_path / "h.db")
    said = [str(w.message) for w in caught]
    assert any("'get_balanse'" in m and "did you mean 'get_balance'" in m for m in said), said
    assert any("amuont" in m for m in said), said


def test_lint_error_refuses_to_build_and_names_every_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="get_balanse") as refused:
        agent(TYPO, tmp_path / "h.db", lint="error")
    assert "amuont" in str(refused.value)


def test_lint_off_and_a_clean_policy_say_nothing(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", PolicyWarning)
        agent(TYPO, tmp_path / "a.db", lint="off")
        agent(CLEAN, tmp_path / "b.db", lint="error")


def test_roles_nobody_in_the_directory_holds_are_named(tmp_path: Path) -> None:
    people = Directory.from_mapping({"agent-1": ["ai-agent"], "bob": ["teller"]})
    with pytest.warns(PolicyWarning, match="treasurer"):
        agent(CLEAN, tmp_path / "h.db", directory=people)


def test_the_tool_gate_and_the_workflow_lint_too(tmp_path: Path) -> None:
    tools = {t.name: t for t in banking_tools(tmp_path / "bank.db")}
    with pytest.raises(PolicyError, match="get_balanse"):
        build_tool_gate(
            banking_tools(tmp_path / "bank.db"), TYPO, db=tmp_path / "g.db", lint="error"
        )
    tools = {t.name: t for t in banking_tools(tmp_path / "bank.db")}
    steps = [Step(tools["transfer_funds"], {"to": "carol", "amount": 5.0})]
    with pytest.raises(PolicyError, match="get_balanse"):
        build_workflow(steps, TYPO, checkpointer=tmp_path / "w.db", lint="error")


def test_a_bad_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lint= takes"):
        agent(CLEAN, tmp_path / "h.db", lint="loud")


def test_the_gate_in_your_graph_lints_before_it_is_wired(tmp_path: Path) -> None:
    builder = StateGraph(ToolGateState)
    with pytest.warns(PolicyWarning, match="get_balanse"):
        gate = build_tool_gate(banking_tools(tmp_path / "bank.db"), TYPO, db=tmp_path / "g.db")
    builder.add_node("tools", gate)
    builder.add_edge(START, "tools")
    builder.compile()
