"""langchain's human-in-the-loop middleware tests, ported to `HandrailMiddleware`.

Upstream: langchain-ai/langchain at langchain 1.5.2 (tag ``langchain==1.5.2``, the installed
version), ``libs/langchain_v1/tests/unit_tests/agents/middleware/implementations/
test_human_in_the_loop.py`` (the only file the glob ``middleware/**/test_human_in_the_loop*.py``
matches there), plus ``libs/langchain_v1/tests/integration_tests/agents/middleware/
test_human_in_the_loop_integration.py`` (real providers; ported with the scripted model). The
langchain snapshot is over the fetch limit, so both files were read from the release's own sdist
on PyPI, ``langchain-1.5.2.tar.gz`` (``tests/unit_tests/.../test_human_in_the_loop.py``, sha256
c7ebbfe178099e14…; ``tests/integration_tests/.../test_human_in_the_loop_integration.py``,
sha256 ba9109cfa42fc8e8…).

Every upstream test function is a scenario. Upstream drives ``HumanInTheLoopMiddleware``'s hooks
directly with a patched ``interrupt``; each is ported for its meaning (what the agent's user
sees: the interrupt, the ToolMessages, what ran, the errors) as a real ``create_agent`` with
`HandrailMiddleware`, a real SQLite saver, real interrupts, resumed with Handrail's payload
(``{"decisions": [...], "approver": {...}}``). Upstream's ``interrupt_on`` becomes a policy: a
gated tool is asked (a treasurer decides), ``allowed_decisions`` and ``description`` are the ask
rule's, ``description_prefix`` the rule's too; a tool it does not gate is allowed. Tests of
private helpers map to the closest user-visible scenario (marked *mapped*).

Status: **passes**, or **deliberate** (a documented Handrail difference: the test asserts
Handrail's behaviour, its docstring says how it differs). The table of every scenario, its
ported test and its status is in tests/upstream/README.md.

Deliberate differences that recur:

- **One interrupt per turn.** Handrail asks about all of a turn's asked calls in one interrupt
  and runs nothing of the turn before the decision (DESIGN.md); there is no ``interrupt_mode``
  and no per-call interrupt or ``response_schema``. The per-call scenarios are ported onto the
  batched request.
- **A refused resume value re-asks.** Where upstream's middleware raises ``ValueError`` or
  ``ValidationError`` on a bad decision, `HandrailMiddleware` answers with a fresh interrupt whose
  ``handrail.error`` says why (a raise would leave the value in the checkpoint's pending writes);
  nothing runs and the next valid decision works.
- **Policies are data.** ``when`` is a CEL condition over ``args``, ``actor`` and ``tool``; a
  description is the rule's text: no Python callables.
- **An edit keeps its tool.** An approver may change a call's arguments (decided again by the
  policy), not the tool it calls.
- **Wording.** A rejection reads "Rejected by <approver>: <message>. The tool was not run."
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, NotRequired

import pytest
from langchain.agents.middleware import (
    AgentMiddleware,
    AgentState,
    ToolErrorMiddleware,
    ToolRetryMiddleware,
)
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import BaseTool, InjectedToolCallId, StructuredTool, tool
from langgraph.prebuilt import ToolRuntime
from langgraph.types import Command
from pydantic import AfterValidator, create_model
from support import AGENT, CTX
from upstream_support import (
    Graph,
    ai,
    asking,
    assert_edit_notice,
    assert_paired,
    async_saver,
    config,
    decisions_payload,
    edit,
    hitl_agent,
    only_interrupt,
    resume,
    start,
    tc,
    tool_messages,
)

from handrail import Policy
from handrail.errors import HandrailError, PolicyError
from handrail.integrations import HandrailMiddleware
from handrail.testing import ScriptedChatModel
from handrail.tools import RateLimited

ALL_DECISIONS = ["approve", "edit", "reject", "respond"]


Ran = list[tuple[str, dict[str, Any]]]


def echo(name: str, ran: Ran, **fields: Any) -> BaseTool:
    """A tool ``name`` taking ``fields`` (name → type) that records each run in ``ran`` and
    answers ``<name>: <args as JSON>``."""
    schema = create_model(f"{name}_args", **{k: (t, ...) for k, t in fields.items()})

    def run(**kwargs: Any) -> str:
        ran.append((name, kwargs))
        return f"{name}: {json.dumps(kwargs, sort_keys=True)}"

    return StructuredTool.from_function(
        func=run, name=name, description=f"The {name} tool.", args_schema=schema
    )


def request_of(result: dict[str, Any]) -> dict[str, Any]:
    value: dict[str, Any] = only_interrupt(result)
    return value


def refused(result: dict[str, Any]) -> str:
    """The reason the paused request gives for refusing the last resume value."""
    error = request_of(result)["handrail"]["error"]
    assert error, "the resume value was not refused"
    return str(error)


def one_tool_agent(db: Path, ran: Ran, policy: Policy, **args: Any) -> Graph:
    """upstream's ``test_tool`` called once (id "1") with ``args``, under ``policy``."""
    tools = [echo("test_tool", ran, **dict.fromkeys(args, str))]
    return hitl_agent(
        db, tools, [ai(tc("test_tool", "1", **args), content="I'll help you")], policy
    )


# -- configuration ---------------------------------------------------------------------------


def test_human_in_the_loop_middleware_initialization() -> None:
    """The gate's configuration is kept as given: an ask rule's ``allowed_decisions`` and its
    ``description_prefix`` (upstream: the middleware's ``interrupt_on``, ``description_prefix``).
    """
    policy = asking(
        "test_tool",
        allowed_decisions=["approve", "edit", "reject"],
        description_prefix="Custom prefix",
    )
    middleware = HandrailMiddleware(policy=policy)
    rule = next(r for r in policy.rules if r.id == "review")
    assert rule.allowed_decisions == ("approve", "edit", "reject")
    assert rule.description_prefix == "Custom prefix"
    assert middleware.name == "handrail_middleware"


def test_human_in_the_loop_middleware_rejects_empty_allowed_decisions() -> None:
    """An empty ``allowed_decisions`` is refused, naming the rule, instead of silently
    disabling the gate."""
    with pytest.raises(PolicyError, match="review") as error:
        asking("test_tool", allowed_decisions=[])
    assert "allowed_decisions" in str(error.value)


def test_human_in_the_loop_middleware_rejects_missing_allowed_decisions(db: Path) -> None:
    """Upstream refuses a config with no ``allowed_decisions`` (a ``when``-only one), which would
    silently disable its gate.

    Deliberate difference: in a Handrail policy the effect is what gates (``ask``), so an ask
    rule without ``allowed_decisions`` still asks, offering all four decisions.
    """
    ran: Ran = []
    agent = one_tool_agent(db, ran, asking("test_tool", when="true"), input="test")
    (review,) = request_of(start(agent))["review_configs"]
    assert review == {"action_name": "test_tool", "allowed_decisions": ALL_DECISIONS}
    assert ran == []


def test_human_in_the_loop_middleware_rejects_typoed_key() -> None:
    """A misspelled key is refused, naming the rule, instead of being dropped."""
    with pytest.raises(PolicyError, match="review") as error:
        asking("test_tool", alowed_decisions=["approve"])
    assert "alowed_decisions" in str(error.value)


# -- deciding ----------------------------------------------------------------------------------


def test_human_in_the_loop_middleware_no_interrupts_needed(db: Path) -> None:
    """No tool calls, or only calls no rule asks about: the agent never pauses."""
    ran: Ran = []
    tools = [echo("test_tool", ran, input=str), echo("other_tool", ran, input=str)]
    policy = asking("test_tool", allowed_decisions=["approve", "edit", "reject"])
    quiet = hitl_agent(db, tools, [AIMessage("Hi there")], policy)
    result = start(quiet, thread="no-calls")
    assert "__interrupt__" not in result and ran == []
    other = hitl_agent(db, tools, [ai(tc("other_tool", "1", input="test"))], policy)
    result = start(other, thread="other-tool")
    assert "__interrupt__" not in result
    assert ran == [("other_tool", {"input": "test"})]


def test_human_in_the_loop_middleware_single_tool_accept(db: Path) -> None:
    """Approve: the call runs as the model wrote it; the model's message is kept; a later turn
    with no calls pauses nothing."""
    ran: Ran = []
    agent = one_tool_agent(db, ran, asking("test_tool"), input="test")
    model_message = start(agent)["messages"][1]
    result = resume(agent, {"type": "approve"})
    assert ran == [("test_tool", {"input": "test"})]
    assert result["messages"][1].tool_calls == model_message.tool_calls
    assert "__interrupt__" not in result and result["messages"][-1].text == "done"


def test_human_in_the_loop_middleware_single_tool_edit(db: Path) -> None:
    """Edit: the reviewer's arguments run; the model's message keeps its own call and id."""
    ran: Ran = []
    agent = one_tool_agent(db, ran, asking("test_tool"), input="test")
    start(agent)
    result = resume(agent, edit("test_tool", input="edited"))
    assert ran == [("test_tool", {"input": "edited"})]
    (call,) = result["messages"][1].tool_calls
    assert (call["args"], call["id"]) == ({"input": "test"}, "1")
    assert result["calls"]["1"].args == {"input": "edited"}


def test_human_in_the_loop_middleware_single_tool_rejection_reason(db: Path) -> None:
    """Reject with a reason: the model gets an error ToolMessage for the call with the reason.

    Deliberate difference (wording): "Rejected by alice: Custom response message. The tool was
    not run." (Handrail names the approver), not "User rejected the tool call for `test_tool`
    with reason: Custom response message".
    """
    ran: Ran = []
    agent = one_tool_agent(db, ran, asking("test_tool"), input="test")
    start(agent)
    result = resume(agent, {"type": "reject", "message": "Custom response message"})
    (message,) = tool_messages(result)
    assert message.content == "Rejected by alice: Custom response message. The tool was not run."
    assert (message.name, message.tool_call_id, message.status) == ("test_tool", "1", "error")
    assert ran == []


def test_human_in_the_loop_middleware_default_rejection_message(db: Path) -> None:
    """Reject with no reason: an error ToolMessage saying the tool was not run.

    Deliberate difference (wording): "Rejected by alice: rejected by the approver. The tool was
    not run.", not langchain's "User rejected the tool call for `test_tool` with id 1. The tool
    was not executed. Do not retry this tool call unless the user explicitly requests it."
    """
    ran: Ran = []
    agent = one_tool_agent(db, ran, asking("test_tool"), input="test")
    start(agent)
    (message,) = tool_messages(resume(agent, {"type": "reject"}))
    assert message.content == "Rejected by alice: rejected by the approver. The tool was not run."
    assert (message.name, message.tool_call_id, message.status) == ("test_tool", "1", "error")


def test_human_in_the_loop_middleware_rejected_call_not_executed_and_stays_paired(
    db: Path,
) -> None:
    """A rejected call never runs; the agent takes its next model turn; every ToolMessage
    answers a call of the AIMessage before it."""
    calls: list[str] = []

    @tool
    def risky_tool(value: str) -> str:
        """A tool that would be dangerous to run without approval."""
        calls.append(value)
        return f"Executed: {value}"

    policy = asking("risky_tool", allowed_decisions=["approve", "reject"])
    agent = hitl_agent(db, [risky_tool], [ai(tc("risky_tool", "1", value="test"))], policy)
    assert "__interrupt__" in start(agent)
    final = resume(agent, {"type": "reject", "message": "denied"})
    assert "__interrupt__" not in final
    assert calls == []
    assert_paired(final["messages"])
    assert final["messages"][-1].text == "done"


def test_human_in_the_loop_middleware_single_tool_respond(db: Path) -> None:
    """Respond: the human answers in the tool's place (a success ToolMessage); the model's call
    stays on its message, paired."""
    ran: Ran = []
    tools = [echo("ask_user", ran, question=str)]
    turn = ai(tc("ask_user", "1", question="favorite color?"), content="Let me ask the user.")
    policy = asking("ask_user", allowed_decisions=["respond"])
    agent = hitl_agent(db, tools, [turn], policy)
    start(agent)
    result = resume(agent, {"type": "respond", "message": "blue"})
    (message,) = tool_messages(result)
    assert (message.content, message.name, message.tool_call_id, message.status) == (
        "blue",
        "ask_user",
        "1",
        "success",
    )
    assert [c["id"] for c in result["messages"][1].tool_calls] == ["1"]
    assert ran == []


def test_human_in_the_loop_middleware_respond_disallowed(db: Path) -> None:
    """``respond`` where the rule does not allow it is refused with the allowed decisions.

    Deliberate difference: the refusal re-asks (``handrail.error``) instead of raising
    ``ValueError``; nothing runs and the thread stays resumable.
    """
    ran: Ran = []
    policy = asking("test_tool", allowed_decisions=["approve", "edit", "reject"])
    agent = one_tool_agent(db, ran, policy, input="test")
    start(agent)
    reason = refused(resume(agent, {"type": "respond", "message": "synthetic"}))
    assert "'respond'" in reason and "approve, edit, reject" in reason
    assert ran == []
    resume(agent, {"type": "approve"})
    assert ran == [("test_tool", {"input": "test"})]


def test_human_in_the_loop_middleware_mixed_with_respond(db: Path) -> None:
    """One asked call approved, one answered by ``respond``, each under its own rule's
    ``allowed_decisions``."""
    ran: Ran = []
    tools = [echo("get_forecast", ran, location=str), echo("ask_user", ran, question=str)]
    policy = Policy.from_data(
        {
            "rules": [
                {
                    "id": "forecast",
                    "tools": ["get_forecast"],
                    "effect": "ask",
                    "approvers": ["treasurer"],
                    "allowed_decisions": ["approve"],
                },
                {
                    "id": "ask",
                    "tools": ["ask_user"],
                    "effect": "ask",
                    "approvers": ["treasurer"],
                    "allowed_decisions": ["respond"],
                },
            ]
        }
    )
    turn = ai(
        tc("get_forecast", "1", location="SF"),
        tc("ask_user", "2", question="favorite color?"),
        content="Two things",
    )
    agent = hitl_agent(db, tools, [turn], policy)
    start(agent)
    result = resume(agent, {"type": "approve"}, {"type": "respond", "message": "blue"})
    assert [c["name"] for c in result["messages"][1].tool_calls] == ["get_forecast", "ask_user"]
    answers = {m.tool_call_id: m for m in tool_messages(result)}
    assert (answers["2"].content, answers["2"].name, answers["2"].status) == (
        "blue",
        "ask_user",
        "success",
    )
    assert ran == [("get_forecast", {"location": "SF"})]


def test_human_in_the_loop_middleware_true_allows_respond(db: Path) -> None:
    """An ask rule that does not restrict the decisions (upstream: ``True``) takes ``respond``."""
    ran: Ran = []
    agent = hitl_agent(
        db, [echo("ask_user", ran, q=str)], [ai(tc("ask_user", "1", q="?"))], asking("ask_user")
    )
    start(agent)
    (message,) = tool_messages(resume(agent, {"type": "respond", "message": "answer"}))
    assert (message.content, message.status) == ("answer", "success")


def test_human_in_the_loop_middleware_multiple_tools_mixed_responses(db: Path) -> None:
    """Two asked calls, approved and rejected: the approved one runs, the rejected one is
    answered with the reason; both calls stay on the model's message, in order. (The
    rejection's wording: see `test_human_in_the_loop_middleware_single_tool_rejection_reason`.)
    """
    ran: Ran = []
    tools = [echo("get_forecast", ran, location=str), echo("get_temperature", ran, location=str)]
    turn = ai(
        tc("get_forecast", "1", location="San Francisco"),
        tc("get_temperature", "2", location="San Francisco"),
    )
    agent = hitl_agent(db, tools, [turn], asking("get_forecast", "get_temperature"))
    start(agent)
    result = resume(
        agent, {"type": "approve"}, {"type": "reject", "message": "User rejected this tool call"}
    )
    names = [c["name"] for c in result["messages"][1].tool_calls]
    assert names == ["get_forecast", "get_temperature"]
    answers = {m.tool_call_id: m for m in tool_messages(result)}
    assert "User rejected this tool call" in answers["2"].text
    assert (answers["2"].name, answers["2"].status) == ("get_temperature", "error")
    assert ran == [("get_forecast", {"location": "San Francisco"})]


def test_human_in_the_loop_middleware_multiple_tools_edit_responses(db: Path) -> None:
    """Two asked calls, both edited: each runs with its reviewer's arguments; the model's
    message keeps its own arguments and ids."""
    ran: Ran = []
    tools = [echo("get_forecast", ran, location=str), echo("get_temperature", ran, location=str)]
    turn = ai(
        tc("get_forecast", "1", location="San Francisco"),
        tc("get_temperature", "2", location="San Francisco"),
    )
    agent = hitl_agent(db, tools, [turn], asking("get_forecast", "get_temperature"))
    start(agent)
    result = resume(
        agent,
        edit("get_forecast", location="New York"),
        edit("get_temperature", location="New York"),
    )
    calls = result["messages"][1].tool_calls
    assert [(c["id"], c["args"]) for c in calls] == [
        ("1", {"location": "San Francisco"}),
        ("2", {"location": "San Francisco"}),
    ]
    assert sorted(ran) == [
        ("get_forecast", {"location": "New York"}),
        ("get_temperature", {"location": "New York"}),
    ]


def test_human_in_the_loop_middleware_edit_with_modified_args(db: Path) -> None:
    """The model's own call is kept on its message; the reviewer's arguments are what run."""
    ran: Ran = []
    agent = one_tool_agent(db, ran, asking("test_tool"), input="test")
    start(agent)
    result = resume(agent, edit("test_tool", input="modified"))
    assert result["messages"][1].tool_calls[0]["args"] == {"input": "test"}
    assert ran == [("test_tool", {"input": "modified"})]


def test_human_in_the_loop_middleware_unknown_response_type(db: Path) -> None:
    """A decision of an unknown type is refused.

    Deliberate difference: re-asked with the reason instead of ``ValueError``; nothing runs.
    """
    ran: Ran = []
    agent = one_tool_agent(
        db, ran, asking("test_tool", allowed_decisions=["approve", "edit", "reject"]), input="test"
    )
    start(agent)
    reason = refused(resume(agent, {"type": "unknown"}))
    assert "unknown" in reason
    assert ran == []


def test_human_in_the_loop_middleware_disallowed_action(db: Path) -> None:
    """``edit`` where the rule allows only approve and reject is refused, naming what it takes.

    Deliberate difference: re-asked (``handrail.error``) instead of ``ValueError``.
    """
    ran: Ran = []
    agent = one_tool_agent(
        db, ran, asking("test_tool", allowed_decisions=["approve", "reject"]), input="test"
    )
    start(agent)
    reason = refused(resume(agent, edit("test_tool", input="modified")))
    assert "'edit'" in reason and "approve, reject" in reason
    assert ran == []


def test_human_in_the_loop_middleware_mixed_auto_approved_and_interrupt(db: Path) -> None:
    """An allowed call and an asked call in one turn: after the approval both run, and the
    model's message keeps both calls in order. (Handrail runs nothing of the turn before the
    decision.)"""
    ran: Ran = []
    tools = [echo("auto_tool", ran, input=str), echo("interrupt_tool", ran, input=str)]
    turn = ai(tc("auto_tool", "1", input="auto"), tc("interrupt_tool", "2", input="interrupt"))
    agent = hitl_agent(db, tools, [turn], asking("interrupt_tool"))
    start(agent)
    assert ran == []
    result = resume(agent, {"type": "approve"})
    assert [c["name"] for c in result["messages"][1].tool_calls] == ["auto_tool", "interrupt_tool"]
    assert sorted(ran) == [
        ("auto_tool", {"input": "auto"}),
        ("interrupt_tool", {"input": "interrupt"}),
    ]


def test_human_in_the_loop_middleware_interrupt_request_structure(db: Path) -> None:
    """The request: one action request (name, args, a description with the prefix, the tool and
    its arguments) and one review config (the allowed decisions)."""
    ran: Ran = []
    policy = asking(
        "test_tool",
        allowed_decisions=["approve", "edit", "reject"],
        description_prefix="Custom prefix",
    )
    agent = one_tool_agent(db, ran, policy, input="test", location="SF")
    request = request_of(start(agent))
    (action,) = request["action_requests"]
    assert (action["name"], action["args"]) == ("test_tool", {"input": "test", "location": "SF"})
    assert "Custom prefix" in action["description"]
    assert "Tool: test_tool" in action["description"]
    assert "Args: {'input': 'test', 'location': 'SF'}" in action["description"]
    assert request["review_configs"] == [
        {"action_name": "test_tool", "allowed_decisions": ["approve", "edit", "reject"]}
    ]


def test_human_in_the_loop_middleware_boolean_configs(db: Path) -> None:
    """Gated (upstream ``True``): approve and edit work; not gated (``False``): no pause."""
    ran: Ran = []
    approved = one_tool_agent(db.with_name("a.db"), ran, asking("test_tool"), input="test")
    start(approved)
    resume(approved, {"type": "approve"})
    edited = one_tool_agent(db.with_name("b.db"), ran, asking("test_tool"), input="test")
    start(edited)
    resume(edited, edit("test_tool", input="edited"))
    assert ran == [("test_tool", {"input": "test"}), ("test_tool", {"input": "edited"})]
    ungated = one_tool_agent(db.with_name("c.db"), ran, asking(), input="test")
    assert "__interrupt__" not in start(ungated)


def test_human_in_the_loop_middleware_sequence_mismatch(db: Path) -> None:
    """Too few or too many decisions for the waiting calls are refused, with the counts.

    Deliberate difference: each is re-asked with the reason instead of ``ValueError``; the next
    valid value works.
    """
    ran: Ran = []
    agent = one_tool_agent(db, ran, asking("test_tool"), input="test")
    start(agent)
    assert "expected 1 decision(s)" in refused(resume(agent))
    assert "got 2" in refused(resume(agent, {"type": "approve"}, {"type": "approve"}))
    resume(agent, {"type": "approve"})
    assert ran == [("test_tool", {"input": "test"})]


def test_human_in_the_loop_middleware_description_as_callable(db: Path) -> None:
    """A rule's description is what the reviewer reads.

    Deliberate difference: upstream also takes a callable description; a Handrail policy is
    data, so a description is the rule's text (the callable one is ported as a second rule's
    text).
    """
    ran: Ran = []
    tools = [echo("tool_with_callable", ran, x=int), echo("tool_with_string", ran, y=int)]
    policy = Policy.from_data(
        {
            "rules": [
                {
                    "id": "callable",
                    "tools": ["tool_with_callable"],
                    "effect": "ask",
                    "approvers": ["treasurer"],
                    "allowed_decisions": ["approve"],
                    "description": "Custom: tool_with_callable",
                },
                {
                    "id": "string",
                    "tools": ["tool_with_string"],
                    "effect": "ask",
                    "approvers": ["treasurer"],
                    "allowed_decisions": ["approve"],
                    "description": "Static description",
                },
            ]
        }
    )
    turn = ai(tc("tool_with_callable", "1", x=1), tc("tool_with_string", "2", y=2))
    request = request_of(start(hitl_agent(db, tools, [turn], policy)))
    first, second = request["action_requests"]
    assert "Custom: tool_with_callable" in first["description"]
    assert "Static description" in second["description"]


def _five_tools(ran: Ran) -> tuple[list[BaseTool], AIMessage]:
    tools = [echo(f"tool_{c}", ran, val=int) for c in "abcde"]
    turn = ai(*(tc(f"tool_{c}", f"id_{c}", val=i) for i, c in enumerate("abcde", start=1)))
    return tools, turn


def test_human_in_the_loop_middleware_preserves_tool_call_order(db: Path) -> None:
    """Allowed and asked calls interleaved (A, B?, C, D?, E): after the approvals the model's
    message keeps the calls in their order, and each is answered."""
    ran: Ran = []
    tools, turn = _five_tools(ran)
    agent = hitl_agent(db, tools, [turn], asking("tool_b", "tool_d"))
    request = request_of(start(agent))
    assert request["handrail"]["tool_call_ids"] == ["id_b", "id_d"]
    result = resume(agent, {"type": "approve"}, {"type": "approve"})
    calls = result["messages"][1].tool_calls
    assert [(c["name"], c["id"]) for c in calls] == [(f"tool_{c}", f"id_{c}") for c in "abcde"]
    assert {m.tool_call_id for m in tool_messages(result)} == {f"id_{c}" for c in "abcde"}


def test_human_in_the_loop_middleware_preserves_order_with_edits(db: Path) -> None:
    """The order is kept when an asked call is edited; the model's arguments stay on its
    message, the reviewer's run."""
    ran: Ran = []
    tools, turn = _five_tools(ran)
    turn = ai(*turn.tool_calls[:4])
    agent = hitl_agent(db, tools, [turn], asking("tool_b", "tool_d"))
    start(agent)
    result = resume(agent, edit("tool_b", val=200), {"type": "approve"})
    calls = result["messages"][1].tool_calls
    assert [(c["name"], c["args"]) for c in calls] == [
        ("tool_a", {"val": 1}),
        ("tool_b", {"val": 2}),
        ("tool_c", {"val": 3}),
        ("tool_d", {"val": 4}),
    ]
    assert ("tool_b", {"val": 200}) in ran and ("tool_b", {"val": 2}) not in ran


def test_human_in_the_loop_middleware_preserves_order_with_rejections(db: Path) -> None:
    """The order is kept when an asked call is rejected; the rejected call stays declared on
    the model's message and is answered with the reason."""
    ran: Ran = []
    tools, turn = _five_tools(ran)
    agent = hitl_agent(db, tools, [turn], asking("tool_b", "tool_d"))
    start(agent)
    result = resume(agent, {"type": "reject", "message": "Rejected tool B"}, {"type": "approve"})
    calls = result["messages"][1].tool_calls
    assert [c["name"] for c in calls] == [f"tool_{c}" for c in "abcde"]
    answers = {m.tool_call_id: m for m in tool_messages(result)}
    assert "Rejected tool B" in answers["id_b"].text and answers["id_b"].status == "error"
    assert sorted(name for name, _ in ran) == ["tool_a", "tool_c", "tool_d", "tool_e"]


# -- when -------------------------------------------------------------------------------------


def test_when_predicate_batch_skips_interrupt_when_false(db: Path) -> None:
    """A rule whose condition is false does not ask (the call runs)."""
    ran: Ran = []
    tools = [echo("test_tool", ran, risky=bool)]
    policy = asking("test_tool", allowed_decisions=["approve"], when="args.risky")
    result = start(hitl_agent(db, tools, [ai(tc("test_tool", "1", risky=False))], policy))
    assert "__interrupt__" not in result
    assert ran == [("test_tool", {"risky": False})]


def test_when_predicate_batch_fires_interrupt_when_true(db: Path) -> None:
    """A rule whose condition is true asks."""
    ran: Ran = []
    tools = [echo("test_tool", ran, risky=bool)]
    policy = asking("test_tool", allowed_decisions=["approve"], when="args.risky")
    result = start(hitl_agent(db, tools, [ai(tc("test_tool", "1", risky=True))], policy))
    assert request_of(result)["handrail"]["tool_call_ids"] == ["1"]
    assert ran == []


def test_when_predicate_receives_correct_args(db: Path) -> None:
    """What the condition sees.

    Deliberate difference: upstream's ``when`` is a Python callable given a ``ToolCallRequest``
    (the call, the state, a ``ToolRuntime``); a Handrail condition is CEL over the call's
    ``tool``, its ``args`` (as the tool's schema coerces them) and the ``actor`` (from the run's
    context, never from the state).
    """
    ran: Ran = []
    tools = [echo("test_tool", ran, val=int)]
    condition = "tool == 'test_tool' && args.val == 42 && actor.id == 'agent-123'"
    policy = asking("test_tool", allowed_decisions=["approve"], when=condition)
    result = start(hitl_agent(db, tools, [ai(tc("test_tool", "tc-1", val="42"))], policy))
    assert request_of(result)["handrail"]["tool_call_ids"] == ["tc-1"]
    assert request_of(result)["handrail"]["actor"] == AGENT.as_dict()


# -- edits: what the model is told --------------------------------------------------------------


def _write_file_agent(db: Path, executed: list[dict[str, str]], content: str) -> Graph:
    @tool
    def write_file_tool(path: str, content: str) -> str:
        """Write content to a file."""
        executed.append({"path": path, "content": content})
        return f"File written to {path}"

    turn = ai(tc("write_file_tool", "1", path="notes.txt", content=content))
    policy = asking("write_file_tool", allowed_decisions=["approve", "edit"])
    return hitl_agent(db, [write_file_tool], [turn], policy)


def test_human_in_the_loop_middleware_edit_annotates_tool_result(db: Path) -> None:
    """An edited call runs the reviewer's arguments, and its result tells the model so (a
    notice naming what ran), without echoing the model's own arguments."""
    executed: list[dict[str, str]] = []
    agent = _write_file_agent(db, executed, "Hello, world!")
    assert "__interrupt__" in start(agent)
    final = resume(agent, edit("write_file_tool", path="notes.txt", content="reviewer value"))
    assert executed == [{"path": "notes.txt", "content": "reviewer value"}]
    (message,) = tool_messages(final)
    assert_edit_notice(
        message.content, "File written to notes.txt", "write_file_tool", "reviewer value"
    )
    assert "Hello, world!" not in str(message.content)
    assert "__interrupt__" not in final
    assert_paired(final["messages"])


def test_human_in_the_loop_middleware_approve_does_not_annotate(db: Path) -> None:
    """An approved call was the model's own: its result is the tool's, unannotated."""
    executed: list[dict[str, str]] = []
    agent = _write_file_agent(db, executed, "c")
    start(agent)
    (message,) = tool_messages(resume(agent, {"type": "approve"}))
    assert message.content == "File written to notes.txt"


class _Returning:
    """A tool that answers with a ToolMessage whose content is ``output`` (content blocks,
    strings), as upstream's handler does, for the notice's shapes."""

    @staticmethod
    def tool(output: Any) -> BaseTool:
        def write_file_tool(
            content: str, tool_call_id: Annotated[str, InjectedToolCallId]
        ) -> ToolMessage:
            """Write content."""
            return ToolMessage(content=output, tool_call_id=tool_call_id, name="write_file_tool")

        return tool(write_file_tool)


@pytest.mark.parametrize(
    "tool_output",
    [
        [{"type": "text", "text": "wrote it"}],
        [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "u"}}],
        ["wrote it"],
        [],
    ],
    ids=["text-block", "mixed-blocks", "plain-strings", "empty"],
)
def test_human_in_the_loop_middleware_edit_annotates_list_content(
    db: Path, tool_output: list[Any]
) -> None:
    """*Mapped*: upstream calls ``wrap_tool_call`` on a result of content blocks. Here a tool
    answers with them: after an edit, the notice comes first (a text block), the tool's blocks
    follow unchanged. (A list of plain strings reaches the model as JSON text in create_agent
    itself, so that case is the text one.)"""
    turn = ai(tc("write_file_tool", "1", content="model"))
    policy = asking("write_file_tool", allowed_decisions=["edit"])
    agent = hitl_agent(db, [_Returning.tool(tool_output)], [turn], policy)
    start(agent)
    (message,) = tool_messages(resume(agent, edit("write_file_tool", content="edited")))
    content = message.content
    if isinstance(content, str):  # create_agent itself sends a list of plain strings as JSON
        assert_edit_notice(content, json.dumps(tool_output), "write_file_tool", "edited")
        return
    assert content, "no edit notice"
    notice, *rest = content
    assert rest == tool_output
    text = notice if isinstance(notice, str) else notice["text"]
    assert "edited" in text and "write_file_tool" in text


class _KeyState(AgentState[Any]):
    some_state_key: NotRequired[str]


class _KeyMiddleware(AgentMiddleware[_KeyState, Any, Any]):
    state_schema = _KeyState


def test_human_in_the_loop_middleware_edit_annotates_command_result(db: Path) -> None:
    """*Mapped*: an edited call whose tool returns a ``Command``: its ToolMessage gets the
    notice; the Command's other updates are applied untouched. (Upstream's unrelated
    ToolMessage for another call is left out: in a real agent it would answer no call.)"""

    @tool
    def write_file_tool(content: str, runtime: ToolRuntime) -> Command[Any]:
        """Write content."""
        message = ToolMessage(
            content="wrote it", tool_call_id=runtime.tool_call_id, name="write_file_tool"
        )
        return Command(update={"messages": [message], "some_state_key": "preserved"})

    turn = ai(tc("write_file_tool", "1", content="model"))
    policy = asking("write_file_tool", allowed_decisions=["edit"])
    agent = hitl_agent(db, [write_file_tool], [turn], policy, before=[_KeyMiddleware()])
    start(agent)
    result = resume(agent, edit("write_file_tool", content="edited"))
    assert result["some_state_key"] == "preserved"
    (message,) = tool_messages(result)
    assert_edit_notice(message.content, "wrote it", "write_file_tool", "edited")


def test_human_in_the_loop_middleware_edit_notice_is_not_duplicated(db: Path) -> None:
    """*Mapped*: upstream re-invokes the wrapper (as retry middleware does). Here the edited
    call is retried by Handrail itself (a 429, then success): the notice appears once."""
    attempts: list[str] = []

    @tool
    def write_file_tool(content: str) -> str:
        """Write content."""
        attempts.append(content)
        if len(attempts) == 1:
            raise RateLimited("slow down", retry_after=0.01)
        return "wrote it"

    turn = ai(tc("write_file_tool", "1", content="model"))
    policy = asking("write_file_tool", allowed_decisions=["edit"])
    agent = hitl_agent(db, [write_file_tool], [turn], policy)
    start(agent)
    (message,) = tool_messages(resume(agent, edit("write_file_tool", content="edited")))
    assert attempts == ["edited", "edited"]
    assert_edit_notice(message.content, "wrote it", "write_file_tool", "edited")
    assert str(message.content).count("write_file_tool") == 1


def test_human_in_the_loop_middleware_edit_annotates_async(db: Path) -> None:
    """The notice under ``ainvoke`` (the async hooks)."""

    @tool
    async def write_file_tool(content: str) -> str:
        """Write content."""
        return "wrote it"

    turn = ai(tc("write_file_tool", "1", content="model"))
    policy = asking("write_file_tool", allowed_decisions=["edit"])

    async def main() -> dict[str, Any]:
        async with async_saver(db) as saver:
            agent = hitl_agent(db, [write_file_tool], [turn], policy, saver=saver)
            await agent.ainvoke({"messages": [("user", "go")]}, config(), context=CTX)
            payload = decisions_payload(edit("write_file_tool", content="edited"))
            result: dict[str, Any] = await agent.ainvoke(
                Command(resume=payload), config(), context=CTX
            )
            return result

    (message,) = tool_messages(asyncio.run(main()))
    assert_edit_notice(message.content, "wrote it", "write_file_tool", "edited")


def _edited_result(db: Path, output: Any = "wrote it", **notice: Any) -> ToolMessage:
    """The result of an edited call; ``notice``: the policy's ``edit_notice`` (LangChain's
    middleware option of that name is a field of Handrail's policy)."""
    turn = ai(tc("write_file_tool", "1", content="model"))
    policy = asking("write_file_tool", allowed_decisions=["edit"])
    if notice:
        policy = Policy.from_data({**policy.model_dump(mode="json", exclude_none=True), **notice})
    agent = hitl_agent(db, [_Returning.tool(output)], [turn], policy)
    start(agent)
    (message,) = tool_messages(resume(agent, edit("write_file_tool", content="edited")))
    return message


def test_human_in_the_loop_middleware_edit_notice_is_customizable(db: Path) -> None:
    """The notice's text can be replaced (the policy's ``edit_notice``)."""
    message = _edited_result(db, edit_notice="Operator overrode these args.")
    assert str(message.content).startswith("Operator overrode these args.")


@pytest.mark.parametrize(
    "tool_output", ["wrote it", [{"type": "text", "text": "wrote it"}]], ids=["string", "blocks"]
)
def test_human_in_the_loop_middleware_edit_notice_can_be_disabled(
    db: Path, tool_output: Any
) -> None:
    """With the notice off (the policy's ``edit_notice: null``), an edited call's result is the
    tool's, for both content shapes."""
    assert _edited_result(db, tool_output, edit_notice=None).content == tool_output


def test_human_in_the_loop_middleware_edit_executes_reviewers_call(db: Path) -> None:
    """The reviewer's arguments run while the model's own call stays on its message; the
    result names the reviewer's arguments (the notice)."""
    executed: list[dict[str, str]] = []
    agent = _write_file_agent(db, executed, "mine")
    start(agent)
    final = resume(agent, edit("write_file_tool", path="notes.txt", content="reviewers"))
    assert executed == [{"path": "notes.txt", "content": "reviewers"}]
    model_message = next(m for m in final["messages"] if isinstance(m, AIMessage) and m.tool_calls)
    assert model_message.tool_calls[0]["args"] == {"path": "notes.txt", "content": "mine"}
    (message,) = tool_messages(final)
    assert "reviewers" in str(message.content)
    assert_paired(final["messages"])


def test_human_in_the_loop_middleware_edit_can_redirect_to_another_tool(db: Path) -> None:
    """A reviewer's edit naming another tool.

    Deliberate difference: an edit changes a call's arguments, never its tool (each tool has its
    own rules and approvers; an approval binds one tool and its arguments), so the edit is
    refused with the reason, nothing runs, and the thread waits for a valid decision.
    """
    executed: list[str] = []

    @tool
    def send_email(to: str) -> str:
        """Send an email."""
        executed.append("send_email")
        return f"sent to {to}"

    @tool
    def draft_email(to: str) -> str:
        """Draft an email."""
        executed.append("draft_email")
        return f"drafted to {to}"

    policy = asking("send_email", allowed_decisions=["approve", "edit"])
    agent = hitl_agent(
        db, [send_email, draft_email], [ai(tc("send_email", "1", to="a@b.c"))], policy
    )
    start(agent)
    reason = refused(resume(agent, edit("draft_email", to="a@b.c")))
    assert "send_email" in reason and "draft_email" in reason
    assert executed == []


@pytest.mark.parametrize(
    ("requested", "turns_after_tool"),
    [("direct_tool", 0), ("normal_tool", 1)],
    ids=["direct-to-normal", "normal-to-direct"],
)
def test_human_in_the_loop_middleware_edit_routes_on_executed_tool(
    db: Path, requested: str, turns_after_tool: int
) -> None:
    """``return_direct`` ends the run after the tool that ran.

    Deliberate difference: an edit cannot swap the tool (see
    `test_human_in_the_loop_middleware_edit_can_redirect_to_another_tool`), so the tool that
    runs is the requested one, edited: a ``return_direct`` tool ends the run, another goes back
    to the model.
    """

    @tool(return_direct=True)
    def direct_tool(x: str) -> str:
        """Return directly."""
        return f"direct {x}"

    @tool
    def normal_tool(x: str) -> str:
        """Do not return directly."""
        return f"normal {x}"

    policy = asking(requested, allowed_decisions=["approve", "edit"])
    agent = hitl_agent(db, [direct_tool, normal_tool], [ai(tc(requested, "1", x="1"))], policy)
    start(agent)
    final = resume(agent, edit(requested, x="2"))
    tool_idx = max(i for i, m in enumerate(final["messages"]) if isinstance(m, ToolMessage))
    assert final["messages"][tool_idx].content.endswith(f"{requested.split('_')[0]} 2")
    model_turns = sum(isinstance(m, AIMessage) for m in final["messages"][tool_idx + 1 :])
    assert model_turns == turns_after_tool


def test_human_in_the_loop_middleware_edit_to_unknown_tool_raises(db: Path) -> None:
    """An edit naming a tool the agent does not have fails loudly.

    Deliberate difference: refused with the reason (a fresh interrupt), not ``ValueError``:
    the edit must name the call's own tool.
    """
    ran: Ran = []
    policy = asking("write_file_tool", allowed_decisions=["edit"])
    agent = hitl_agent(
        db,
        [echo("write_file_tool", ran, content=str)],
        [ai(tc("write_file_tool", "1", content="x"))],
        policy,
    )
    start(agent)
    assert "'nope'" in refused(resume(agent, edit("nope", content="y")))
    assert ran == []


# -- edits and later turns ----------------------------------------------------------------------


def _reused_id_agent(db: Path, executed: list[tuple[str, str]], saver: Any = None) -> Graph:
    @tool
    def write_file_tool(path: str, content: str) -> str:
        """Write content to a file."""
        executed.append(("write", content))
        return f"File written to {path}"

    @tool
    def read_file_tool(path: str) -> str:
        """Read a file."""
        executed.append(("read", path))
        return f"Contents of {path}"

    turns = [
        ai(tc("write_file_tool", "1", path="a.txt", content="model")),
        ai(tc("read_file_tool", "1", path="b.txt")),  # the same id, on a tool not gated
    ]
    tools = [write_file_tool, read_file_tool]
    return hitl_agent(db, tools, turns, asking("write_file_tool"), saver=saver)


def _check_reused_id(final: dict[str, Any], executed: list[tuple[str, str]]) -> None:
    assert executed == [("write", "reviewer"), ("read", "b.txt")]
    assert tool_messages(final)[-1].content == "Contents of b.txt"


def test_a_turn_that_resolves_no_decisions_clears_the_previous_turns_edits(db: Path) -> None:
    """*Mapped*: upstream checks that ``after_model`` clears its private edit record on a turn
    with nothing to review. User-visible: after an edited turn, a later turn that reviews
    nothing runs its call with the model's own arguments (its records are its own)."""
    executed: list[tuple[str, str]] = []
    agent = _reused_id_agent(db, executed)
    start(agent)
    final = resume(agent, edit("write_file_tool", path="a.txt", content="reviewer"))
    _check_reused_id(final, executed)
    assert final["calls"]["1"].name == "read_file_tool"


def test_a_turn_with_nothing_recorded_does_not_write_state(db: Path) -> None:
    """*Mapped*: upstream checks that ``after_model`` writes nothing when it has nothing to
    clear. User-visible: a turn with no tool calls adds no records to the state."""
    agent = hitl_agent(db, [], [AIMessage("no tools today")], asking("write_file_tool"))
    result = start(agent)
    assert not result.get("calls")
    steps = list(
        agent.stream(
            {"messages": [("user", "go")]}, config("stream"), context=CTX, stream_mode="updates"
        )
    )
    assert all("calls" not in (update or {}) for step in steps for update in step.values())


def test_reused_tool_call_id_does_not_replay_a_previous_turns_edit(db: Path) -> None:
    """End to end: a later call reusing an edited call's id runs the model's own arguments."""
    executed: list[tuple[str, str]] = []
    agent = _reused_id_agent(db, executed)
    start(agent)
    final = resume(agent, edit("write_file_tool", path="a.txt", content="reviewer"))
    _check_reused_id(final, executed)


def test_recorded_edit_survives_a_later_tightening_of_allowed_decisions(db: Path) -> None:
    """Upstream: an edit recorded while allowed (redirecting the call to another tool) is
    honoured after the config is tightened.

    Deliberate difference: an edit never swaps the tool, and Handrail decides a decision when it
    is given (against the rule then in force), then runs the call as decided in the same step;
    a later policy is applied to what has not run yet. Asserted: a decision the rule no longer
    allows is refused when given, and the call still runs on a valid one.
    """
    ran: Ran = []
    tools = [echo("send_email_tool", ran, to=str), echo("draft_email_tool", ran, to=str)]
    turn = ai(tc("send_email_tool", "1", to="a@b.c"))
    policy = asking("send_email_tool", allowed_decisions=["approve", "reject"])
    agent = hitl_agent(db, tools, [turn], policy)
    start(agent)
    assert "'edit'" in refused(resume(agent, edit("send_email_tool", to="x@y.z")))
    resume(agent, {"type": "approve"})
    assert ran == [("send_email_tool", {"to": "a@b.c"})]


def test_async_turn_that_resolves_no_decisions_clears_the_previous_turns_edits(db: Path) -> None:
    """*Mapped*: the async hook's counterpart of
    `test_a_turn_that_resolves_no_decisions_clears_the_previous_turns_edits`, under ``ainvoke``.
    """
    executed: list[tuple[str, str]] = []

    async def main() -> dict[str, Any]:
        async with async_saver(db) as saver:
            agent = _reused_id_agent(db, executed, saver=saver)
            await agent.ainvoke({"messages": [("user", "go")]}, config(), context=CTX)
            payload = decisions_payload(edit("write_file_tool", path="a.txt", content="reviewer"))
            result: dict[str, Any] = await agent.ainvoke(
                Command(resume=payload), config(), context=CTX
            )
            return result

    _check_reused_id(asyncio.run(main()), executed)


def test_return_direct_routing_keeps_calls_with_unnamed_results(db: Path) -> None:
    """*Mapped*: upstream checks create_agent's private tools→model edge. User-visible: a turn
    with a ``return_direct`` tool and a normal one goes back to the model after both run."""

    @tool(return_direct=True)
    def direct_tool(x: str) -> str:
        """Return directly."""
        return f"direct {x}"

    @tool
    def normal_tool(x: str) -> str:
        """Do not return directly."""
        return f"normal {x}"

    turn = ai(tc("direct_tool", "1", x="1"), tc("normal_tool", "2", x="2"))
    final = start(hitl_agent(db, [direct_tool, normal_tool], [turn], asking()))
    assert sorted(m.content for m in tool_messages(final)) == ["direct 1", "normal 2"]
    assert final["messages"][-1].text == "done"


# -- decision shapes (upstream: the per-call response schema) -----------------------------------


@pytest.mark.parametrize("allowed", [["respond"], ["respond", "respond"]])
def test_decision_schema_with_one_decision_is_a_plain_object(db: Path, allowed: list[str]) -> None:
    """Upstream: with one allowed decision, the per-call ``response_schema`` is a plain object.

    Deliberate difference: Handrail's interrupts carry no ``response_schema`` (one interrupt
    per turn, LangChain's ``HITLRequest`` shape). Asserted: a rule that allows one decision
    offers just it (a repeated one once), and takes it.
    """
    ran: Ran = []
    tools = [echo("send_email", ran, to=str)]
    agent = hitl_agent(
        db,
        tools,
        [ai(tc("send_email", "1", to="a"))],
        asking("send_email", allowed_decisions=allowed),
    )
    request = request_of(start(agent))
    assert request["review_configs"] == [
        {"action_name": "send_email", "allowed_decisions": ["respond"]}
    ]
    assert tool_messages(resume(agent, {"type": "respond", "message": "done"}))[0].content == "done"


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ({"type": "edit"}, "edited_action"),
        ({"type": "nope"}, "nope"),
        ({"type": "edit", "edited_action": {"name": "send_email", "args": {}}}, "to"),
        (
            {"type": "edit", "edited_action": {"name": "delete_file", "args": {"to": "b"}}},
            "delete_file",
        ),
    ],
    ids=["edit-without-action", "unknown-type", "edit-missing-arg", "edit-other-tool"],
)
def test_decision_schema_rejects_a_bad_answer_with_one_error_at_the_problem(
    db: Path, answer: dict[str, Any], problem: str
) -> None:
    """A bad decision is refused with a reason that points at the problem.

    Deliberate difference: upstream validates against a per-call schema (one pydantic error at
    the location); Handrail re-asks with ``handrail.error`` naming it, and nothing runs.
    """
    ran: Ran = []

    def send_email(to: str, cc: str | None = None) -> str:
        """Send an email."""
        ran.append(("send_email", {"to": to}))
        return f"sent to {to}, cc {cc}"

    agent = hitl_agent(
        db, [tool(send_email)], [ai(tc("send_email", "1", to="a"))], asking("send_email")
    )
    start(agent)
    assert problem in refused(resume(agent, answer))
    assert ran == []


@pytest.mark.parametrize(
    "known",
    [
        "no_tool",
        "json_schema_tool",
    ],
)
def test_edit_args_without_a_pydantic_schema_are_shown_but_not_enforced(
    db: Path, known: str
) -> None:
    """Upstream: for a tool without a pydantic schema (none known, or a JSON-schema one) the
    edit's arguments are shown as an object and not enforced.

    Deliberate difference: Handrail validates (and coerces) every edit against the tool's
    schema, JSON schemas included, before the policy decides it again; a process that knows no
    schema for the tool does not offer ``edit`` at all.
    """
    ran: Ran = []
    send_email = StructuredTool(
        name="send_email",
        description="d",
        func=lambda **kw: ran.append(("send_email", kw)) or "sent",
        args_schema={
            "type": "object",
            "properties": {"to": {"type": "string"}},
            "required": ["to"],
        },
    )
    turn = ai(tc("send_email", "1", to="a"))
    if known == "no_tool":
        start(hitl_agent(db, [send_email], [turn], asking("send_email")))
        stranger = hitl_agent(db, [send_email], [turn], asking("send_email"))  # has seen no tools
        reason = refused(resume(stranger, edit("send_email", to=5)))
        assert "takes approve, reject, respond" in reason
    else:
        agent = hitl_agent(db, [send_email], [turn], asking("send_email"))
        start(agent)
        assert "to" in refused(resume(agent, edit("send_email", to=5)))
    assert ran == []


def test_middleware_checks_interrupt_mode() -> None:
    """Upstream: ``interrupt_mode`` is checked when the middleware is built.

    Deliberate difference: there is no ``interrupt_mode`` (one interrupt per turn); what the
    middleware is given is checked when it is built (a policy that is not one is refused).
    """
    with pytest.raises(HandrailError, match="policy must be a handrail Policy"):
        HandrailMiddleware(policy={"t": True})  # type: ignore[arg-type]


# -- the per-call scenarios, on Handrail's one request per turn ----------------------------------


def test_per_call_interrupt_shows_the_call_and_the_answers_it_accepts(db: Path) -> None:
    """What the paused call shows: its name, arguments, description, id, and the decisions it
    takes.

    Deliberate difference: not a per-call interrupt with a ``response_schema``; Handrail's one
    request per turn has the call's action request and review config, and its id under
    ``handrail.tool_call_ids``.
    """
    ran: Ran = []
    policy = asking("send_email", allowed_decisions=ALL_DECISIONS, description="Email")
    agent = hitl_agent(
        db,
        [echo("send_email", ran, to=str)],
        [ai(tc("send_email", "call_email", to="alice"))],
        policy,
    )
    request = request_of(start(agent))
    (action,) = request["action_requests"]
    assert (action["name"], action["args"]) == ("send_email", {"to": "alice"})
    assert "Email" in action["description"]
    assert request["review_configs"] == [
        {"action_name": "send_email", "allowed_decisions": ALL_DECISIONS}
    ]
    assert request["handrail"]["tool_call_ids"] == ["call_email"]


@pytest.mark.parametrize(
    ("answer", "ran_with", "status", "content"),
    [
        ({"type": "approve"}, ["alice"], "success", "sent to alice"),
        pytest.param(
            edit("send_email", to="bob"),
            ["bob"],
            "success",
            "sent to bob",
            id="edit",
        ),
        pytest.param(
            edit("send_email", to="bob", subject="hi"),
            ["bob"],
            "success",
            "sent to bob",
            id="edit-with-an-undeclared-arg",
        ),
        (
            {"type": "reject", "message": "not now"},
            [],
            "error",
            "Rejected by alice: not now. The tool was not run.",
        ),
        ({"type": "respond", "message": "already sent"}, [], "success", "already sent"),
    ],
    ids=["approve", "edit", "edit-with-an-undeclared-arg", "reject", "respond"],
)
def test_resume_with_each_decision(
    db: Path, answer: dict[str, Any], ran_with: list[str], status: str, content: str
) -> None:
    """Each decision, end to end: what ran, the ToolMessage's status and content, langchain's
    marker on a human's answer, and a notice only after an edit. (Upstream runs each in both
    interrupt modes; Handrail has one. The rejection's wording is Handrail's.)"""
    sent: list[str] = []

    @tool
    def send_email(to: str) -> str:
        """Send an email."""
        sent.append(to)
        return f"sent to {to}"

    agent = hitl_agent(
        db, [send_email], [ai(tc("send_email", "call_email", to="alice"))], asking("send_email")
    )
    start(agent)
    (message,) = tool_messages(resume(agent, answer))
    decision = answer["type"]
    marker = {"lc_source": "hitl_interrupt_decision", "lc_data": {"decision": decision}}
    assert message.additional_kwargs == (marker if decision in ("reject", "respond") else {})
    assert (sent, message.status) == (ran_with, status)
    assert str(message.content).endswith(content)
    if decision == "edit":
        assert_edit_notice(message.content, content, "send_email", "bob")
    else:
        assert str(message.content) == content


def test_per_call_edit_leaves_validation_and_injected_args_to_the_tool(db: Path) -> None:
    """An edit gives only the arguments the model sees; the tool validates them once and gets
    its ``ToolRuntime`` injected."""

    @tool
    def send_email(
        to: Annotated[str, AfterValidator(lambda v: f"<{v}>")], runtime: ToolRuntime
    ) -> str:
        """Send an email."""
        return f"sent to {to} for {runtime.tool_call_id}"

    agent = hitl_agent(
        db, [send_email], [ai(tc("send_email", "call_email", to="alice"))], asking("send_email")
    )
    start(agent)
    (message,) = tool_messages(resume(agent, edit("send_email", to="bob")))
    assert str(message.content).endswith("sent to <bob> for call_email")


def test_per_call_pauses_once_per_gated_call_and_applies_answers_by_id(db: Path) -> None:
    """Gated calls wait (one per ask, here in one request); a call no rule asks about, or whose
    condition lets it through, runs; each answer goes to its call (by id); the edit replaces the
    arguments (``cc`` is not carried over); a decision the rule does not allow is refused;
    nothing runs twice.

    Deliberate differences: one request for the turn, whose decisions are given in its order
    (each may name its ``tool_call_id``); and nothing of the turn runs before the decision, so
    the ungated calls run with the decided ones.
    """
    ran: list[str] = []

    def send_email(to: str, cc: str | None = None) -> str:
        """Send an email."""
        ran.append(f"send_email(to={to}, cc={cc})")
        return f"sent to {to}"

    def delete_file(path: str) -> str:
        """Delete a file."""
        ran.append(f"delete_file({path})")
        return f"deleted {path}"

    def read_file(path: str) -> str:
        """Read a file."""
        ran.append(f"read_file({path})")
        return f"contents of {path}"

    policy = Policy.from_data(
        {
            "rules": [
                {"id": "reads", "tools": ["read_file"], "effect": "allow"},
                {
                    "id": "email",
                    "tools": ["send_email"],
                    "effect": "ask",
                    "approvers": ["treasurer"],
                },
                {
                    "id": "tmp",
                    "tools": ["delete_file"],
                    "when": "args.path == 'tmp.txt'",
                    "effect": "allow",
                },
                {
                    "id": "delete",
                    "tools": ["delete_file"],
                    "when": "args.path != 'tmp.txt'",
                    "effect": "ask",
                    "approvers": ["treasurer"],
                    "allowed_decisions": ["approve", "reject"],
                },
            ]
        }
    )
    calls = [
        tc("send_email", "call_email", to="alice", cc="carol"),
        tc("delete_file", "call_delete", path="x.txt"),
        tc("delete_file", "call_delete_tmp", path="tmp.txt"),
        tc("read_file", "call_read", path="y.txt"),
    ]
    tools = [tool(f) for f in (send_email, delete_file, read_file)]
    agent = hitl_agent(db, tools, [ai(*calls)], policy)
    request = request_of(start(agent))
    assert request["handrail"]["tool_call_ids"] == ["call_email", "call_delete"]
    assert request["action_requests"][1]["args"] == {"path": "x.txt"}
    assert request["review_configs"][1]["allowed_decisions"] == ["approve", "reject"]
    email = {**edit("send_email", to="bob"), "tool_call_id": "call_email"}
    bad = {"type": "respond", "message": "x", "tool_call_id": "call_delete"}
    assert "'respond'" in refused(resume(agent, email, bad))
    assert ran == []
    keep = {"type": "reject", "message": "keep it", "tool_call_id": "call_delete"}
    final = resume(agent, email, keep)
    assert sorted(ran) == [
        "delete_file(tmp.txt)",
        "read_file(y.txt)",
        "send_email(to=bob, cc=None)",
    ]
    messages = {m.tool_call_id: m for m in tool_messages(final)}
    assert messages["call_email"].text.endswith("sent to bob")
    assert messages["call_delete"].status == "error" and "keep it" in messages["call_delete"].text
    assert "__interrupt__" not in final


@pytest.mark.parametrize(
    "after",
    [
        [],
        [ToolRetryMiddleware(initial_delay=0)],
        [ToolErrorMiddleware(on_error=lambda *_: "x")],
    ],
    ids=["hitl_alone", "hitl_wraps_retry", "hitl_wraps_tool_error"],
)
def test_per_call_rejects_a_bad_answer_without_saving_it(
    db: Path, after: list[AgentMiddleware[Any, Any, Any]]
) -> None:
    """A bad answer (an edit with no action) is refused, nothing runs, and the next valid answer
    works, with retry or error middleware listed after Handrail.

    Deliberate difference: re-asked with the reason, not a ``ValidationError`` out of the run.
    """
    sent: list[str] = []

    @tool
    def send_email(to: str) -> str:
        """Send an email."""
        sent.append(to)
        return f"sent to {to}"

    turn = ai(tc("send_email", "call_email", to="alice"))
    agent = hitl_agent(db, [send_email], [turn], asking("send_email"), after=after)
    start(agent)
    assert "edited_action" in refused(resume(agent, {"type": "edit"}))
    assert sent == []
    final = resume(agent, edit("send_email", to="bob"))
    assert sent == ["bob"]
    assert "__interrupt__" not in final


class _NoIds(ScriptedChatModel):
    """The scripted model, whose tool calls keep the ids they were given (None included)."""

    def __init__(self, responses: Sequence[AIMessage]) -> None:
        super().__init__(responses)
        self.responses = list(responses)


def test_per_call_needs_a_tool_call_id(db: Path) -> None:
    """Upstream's per-call mode refuses a gated call without an id.

    Deliberate difference: Handrail's one request per turn needs no id to tell calls apart
    (decisions are given in order); the call is asked about and approved like any other.
    """
    sent: list[str] = []

    @tool
    def send_email(to: str) -> str:
        """Send an email."""
        sent.append(to)
        return f"sent to {to}"

    model = _NoIds([ai(tc("send_email", None, to="alice")), AIMessage("done")])
    agent = hitl_agent(db, [send_email], [], asking("send_email"), model=model)
    request = request_of(start(agent))
    assert [a["name"] for a in request["action_requests"]] == ["send_email"]
    resume(agent, {"type": "approve"})
    assert sent == ["alice"]


def test_per_call_description_factory_gets_the_graph_runtime(db: Path) -> None:
    """Upstream: a description factory gets the call, the state and the graph's ``Runtime``.

    Deliberate difference: a description is the rule's text, and the reviewer also reads the
    tool and its arguments; no callable runs while asking.
    """
    policy = asking("send_email", allowed_decisions=["approve"], description="Email a customer")
    agent = hitl_agent(
        db,
        [echo("send_email", [], to=str)],
        [ai(tc("send_email", "call_email", to="alice"))],
        policy,
    )
    (action,) = request_of(start(agent))["action_requests"]
    assert "Email a customer" in action["description"] and "alice" in action["description"]


def test_per_call_same_tool_twice_routes_each_answer_to_its_own_call(db: Path) -> None:
    """The same tool asked twice in a turn (ids "e1" and ""): each answer goes to its own call."""
    sent: list[str] = []

    @tool
    def send_email(to: str) -> str:
        """Send an email."""
        sent.append(to)
        return f"sent to {to}"

    turn = ai(tc("send_email", "e1", to="alice"), tc("send_email", "", to="alice"))
    agent = hitl_agent(db, [send_email], [turn], asking("send_email"))
    assert request_of(start(agent))["handrail"]["tool_call_ids"] == ["e1", ""]
    final = resume(
        agent, {"type": "approve", "tool_call_id": "e1"}, {"type": "reject", "tool_call_id": ""}
    )
    assert sent == ["alice"]
    messages = {m.tool_call_id: m for m in tool_messages(final)}
    assert messages[""].status == "error" and messages["e1"].content == "sent to alice"


@pytest.mark.parametrize(
    ("answer", "status", "content"),
    [
        (edit("send_email", to="bob"), "success", "sent to bob"),
        ({"type": "reject"}, "error", "The tool was not run."),
        ({"type": "respond", "message": "already sent"}, "success", "already sent"),
    ],
    ids=["edit", "reject", "respond"],
)
def test_per_call_works_with_ainvoke(
    db: Path, answer: dict[str, Any], status: str, content: str
) -> None:
    """Under ``ainvoke``: a bad answer is refused (re-asked; deliberate, as above), then each
    decision gives its ToolMessage, with langchain's marker on a human's answer."""

    @tool
    def send_email(to: str) -> str:
        """Send an email."""
        return f"sent to {to}"

    turn = ai(tc("send_email", "call_email", to="alice"))

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        async with async_saver(db) as saver:
            agent = hitl_agent(db, [send_email], [turn], asking("send_email"), saver=saver)
            await agent.ainvoke({"messages": [("user", "go")]}, config(), context=CTX)
            bad = await agent.ainvoke(
                Command(resume=decisions_payload({"type": "edit"})), config(), context=CTX
            )
            final = await agent.ainvoke(
                Command(resume=decisions_payload(answer)), config(), context=CTX
            )
            return bad, final

    bad, final = asyncio.run(main())
    assert "edited_action" in refused(bad)
    (message,) = tool_messages(final)
    assert message.status == status and content in str(message.content)
    decision = answer["type"]
    marker = {"lc_source": "hitl_interrupt_decision", "lc_data": {"decision": decision}}
    assert message.additional_kwargs == (marker if decision in ("reject", "respond") else {})


def test_per_call_retried_tool_is_not_reviewed_again_when_hitl_wraps_retry(db: Path) -> None:
    """Handrail listed before ``ToolRetryMiddleware``: the approved call fails once, is retried
    by it, and is not reviewed again."""
    attempts: list[str] = []

    @tool
    def send_email(to: str) -> str:
        """Send an email."""
        attempts.append(to)
        if len(attempts) == 1:
            msg = "mail server unavailable"
            raise RuntimeError(msg)
        return f"sent to {to}"

    turn = ai(tc("send_email", "call_email", to="alice"))
    agent = hitl_agent(
        db, [send_email], [turn], asking("send_email"), after=[ToolRetryMiddleware(initial_delay=0)]
    )
    start(agent)
    final = resume(agent, {"type": "approve"})
    assert "__interrupt__" not in final
    assert attempts == ["alice", "alice"]
    (message,) = tool_messages(final)
    assert message.content == "sent to alice"


# -- integration (real providers upstream) -------------------------------------------------------


def test_hitl_reject_does_not_retry(db: Path) -> None:
    """Upstream (integration, real Anthropic/OpenAI models): after a rejection the model does
    not retry. With the scripted model only the shape can be checked: one rejection ToolMessage,
    one call of the tool in the history, the tool never run, the run finished."""
    ran: Ran = []
    policy = asking("get_weather", allowed_decisions=["approve", "reject"])
    agent = hitl_agent(
        db,
        [echo("get_weather", ran, location=str)],
        [ai(tc("get_weather", "1", location="Paris"))],
        policy,
    )
    assert "__interrupt__" in start(agent)
    final = resume(agent, {"type": "reject"})
    assert "__interrupt__" not in final
    rejections = [
        m for m in tool_messages(final) if m.name == "get_weather" and m.status == "error"
    ]
    assert len(rejections) == 1
    calls = [c for m in final["messages"] if isinstance(m, AIMessage) for c in m.tool_calls]
    assert [c["name"] for c in calls] == ["get_weather"]
    assert ran == []
