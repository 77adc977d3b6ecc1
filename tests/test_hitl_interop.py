"""LangChain HITL interop (issue 17): Handrail's interrupts validate as LangChain's ``HITLRequest``,
an ask rule's ``allowed_decisions`` and reviewer text, the stock ``{"decisions": [...]}`` resume
(taken from an authenticated server user, refused without one), the stock decisions on an
escalation (approve = retry, reject = skip), and the notice the model gets after an edit.

Real graphs (`handrail.build_agent`, LangChain's ``create_agent`` with `HandrailMiddleware`), real
SQLite files, real interrupts, the scripted model.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware.human_in_the_loop import HITLRequest, HITLResponse
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.tools import BaseTool, tool
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.types import Command
from pydantic import TypeAdapter
from support import CTX, TREASURER, approve, call, config, edit, turn

from handrail import Policy, RunContext, build_agent
from handrail.errors import ApproverNotAuthorized, ResumeError, SelfApproval
from handrail.graph import HandrailGraph
from handrail.integrations import HandrailMiddleware
from handrail.nodes._gate import Gate
from handrail.review.notice import EDIT_NOTICE, with_edit_notice
from handrail.state import ToolCallRecord, args_hash
from handrail.storage.proofs import ProofTable
from handrail.testing import ScriptedChatModel
from handrail.tools import ServerError

HITL_REQUEST: TypeAdapter[HITLRequest] = TypeAdapter(HITLRequest)
HITL_RESPONSE: TypeAdapter[HITLResponse] = TypeAdapter(HITLResponse)

POLICY_TEXT = """
description_prefix: Payment needs a treasurer
rules:
  - id: big
    tools: [pay]
    when: "args.amount > 1000.0"
    effect: ask
    approvers: [treasurer]
    description: Payments over 1,000 are checked by a second person.
  - id: small
    tools: [pay]
    when: "args.amount <= 1000.0"
    effect: allow
  - id: wire
    tools: [wire]
    effect: ask
    approvers: [treasurer]
    allowed_decisions: [reject, approve]
    description_prefix: International wire
  - id: reads
    tools: [fetch]
    effect: allow
escalate_to: [operator]
tools:
  pay: {redact: [args.account]}
"""
POLICY = Policy.from_yaml(POLICY_TEXT)
OPS = {"id": "ops-1", "roles": ["operator"]}


@dataclass
class Bank:
    """What the tools did: one entry per payment or wire that ran, one per fetch attempt."""

    paid: list[tuple[str, float]] = field(default_factory=list)
    fetched: list[str] = field(default_factory=list)
    fail: list[BaseException] = field(default_factory=list)

    def tools(self) -> list[BaseTool]:
        @tool
        def pay(to: str, amount: float, account: str = "") -> str:
            """Pay someone."""
            self.paid.append((to, amount))
            return f"paid {to} {amount}"

        @tool
        def wire(to: str, amount: float) -> str:
            """Wire money abroad."""
            self.paid.append((to, amount))
            return f"wired {to} {amount}"

        @tool
        def fetch(q: str) -> str:
            """Fetch a resource."""
            self.fetched.append(q)
            if self.fail:
                raise self.fail.pop(0)
            return f"data for {q}"

        return [pay, wire, fetch]


class Inputs(BaseCallbackHandler):
    """Every list of messages the chat model was called with (LangChain's own callback)."""

    def __init__(self) -> None:
        self.seen: list[list[BaseMessage]] = []

    def on_chat_model_start(
        self, serialized: dict[str, Any], messages: list[list[BaseMessage]], **kwargs: Any
    ) -> None:
        self.seen.extend(messages)


@dataclass(frozen=True)
class ServerUser:
    """The user object an authenticating LangGraph server puts in a run's config (a mapping in
    its place is not believed: `handrail.auth.Trust.server`)."""

    identity: str
    handrail_roles: tuple[str, ...]
    is_authenticated: bool = True


def as_server_user(person: str, *roles: str) -> dict[str, Any]:
    """A run's config as the LangGraph server makes it for ``person``."""
    return {"configurable": {"thread_id": "t-1", "langgraph_auth_user": ServerUser(person, roles)}}


@pytest.fixture
def bank() -> Bank:
    return Bank()


def graph(tmp_path: Path, bank: Bank, *turns: AIMessage) -> HandrailGraph:
    model = ScriptedChatModel([*turns, AIMessage("done")])
    return build_agent(model, bank.tools(), POLICY, checkpointer=tmp_path / "h.db")


def start(g: HandrailGraph, **kwargs: Any) -> dict[str, Any]:
    result: dict[str, Any] = g.invoke(
        {"messages": [("user", "go")]}, config(), context=CTX, **kwargs
    )
    return result


def resume(g: HandrailGraph, value: Any, cfg: Any = None, **kwargs: Any) -> dict[str, Any]:
    result: dict[str, Any] = g.invoke(Command(resume=value), cfg or config(), context=CTX, **kwargs)
    return result


def request_of(result: dict[str, Any]) -> dict[str, Any]:
    (pending,) = result["__interrupt__"]
    value: dict[str, Any] = pending.value
    return value


# -- the interrupt is a HITLRequest ----------------------------------------------------------------


def test_an_approval_request_is_a_hitl_request_with_text_for_the_reviewer(
    tmp_path: Path, bank: Bank
) -> None:
    g = graph(tmp_path, bank, turn(call("pay", to="bob", amount=5000, account="DE44-1234-5678")))
    request = request_of(start(g))
    HITL_REQUEST.validate_python(request)
    (action,) = request["action_requests"]
    assert action["description"] == (
        "Payment needs a treasurer\n\n"
        "Payments over 1,000 are checked by a second person.\n\n"
        "Tool: pay\n"
        "Args: {'to': 'bob', 'amount': 5000.0, 'account': '[redacted]'}"
    )
    assert "DE44" not in str(request)
    assert request["review_configs"] == [
        {"action_name": "pay", "allowed_decisions": ["approve", "edit", "reject", "respond"]}
    ]
    info = request["handrail"]
    (entry,) = info["calls"].values()
    assert entry["reason"].startswith("rule 'big': `args.amount > 1000.0` is true")
    assert entry["description"] == action["description"]
    assert info["stock_decisions"]["approve"] == "approve"


def test_an_escalation_is_a_hitl_request_whose_approve_and_reject_retry_and_skip(
    tmp_path: Path, bank: Bank
) -> None:
    bank.fail[:] = [ServerError("upstream 500")]
    g = graph(tmp_path, bank, turn(call("fetch", q="x")))
    request = request_of(start(g))
    HITL_REQUEST.validate_python(request)
    assert request["review_configs"] == [
        {"action_name": "fetch", "allowed_decisions": ["approve", "reject"]}
    ]
    info = request["handrail"]
    assert (info["kind"], info["stock_decisions"]) == (
        "escalation",
        {"approve": "retry", "reject": "skip"},
    )
    (entry,) = info["calls"].values()
    assert entry["allowed_decisions"] == ["retry", "skip", "abort"]
    text = request["action_requests"][0]["description"]
    assert text.startswith("Tool call failed: server_error (HTTP 500) after 1 attempt")
    assert "Approve to run it again (retry)" in text and text.endswith("Args: {'q': 'x'}")

    respond = {"decisions": [{"type": "respond", "message": "x"}], "approver": OPS}
    with pytest.raises(ResumeError) as refused:
        resume(g, respond)
    assert refused.value.reason == (
        "decision 0 is 'respond', but this escalation of 'fetch' takes retry, skip, abort "
        "(or approve = retry, reject = skip)"
    )
    result = resume(g, {"decisions": [{"type": "approve"}], "approver": OPS})  # a retry
    assert bank.fetched == ["x", "x"]
    record = result["calls"]["call_0_0"]
    assert (record.status, record.retry_count, record.approver) == ("succeeded", 1, "ops-1")


def test_a_stock_reject_of_an_escalation_skips_the_call_with_its_message(
    tmp_path: Path, bank: Bank
) -> None:
    bank.fail[:] = [ServerError("upstream 500")]
    g = graph(tmp_path, bank, turn(call("fetch", q="x")))
    start(g)
    stock = {"decisions": [{"type": "reject", "message": "the API is retired"}]}
    result = resume(g, stock, as_server_user("ops-1", "operator"))
    assert bank.fetched == ["x"]
    skipped = [m for m in result["messages"] if isinstance(m, ToolMessage)][-1]
    assert skipped.text.startswith("Skipped by ops-1: the API is retired.")
    assert skipped.additional_kwargs["lc_data"] == {"decision": "skip"}
    assert result["calls"]["call_0_0"].status == "failed"


def test_the_middlewares_approval_and_escalation_are_hitl_requests(
    tmp_path: Path, bank: Bank
) -> None:
    db = tmp_path / "m.db"
    bank.fail[:] = [ServerError("upstream 500")]
    conn = sqlite3.connect(db, check_same_thread=False)
    saver = SqliteSaver(conn)
    middleware = HandrailMiddleware(policy=POLICY, db=saver)
    model = ScriptedChatModel(
        [turn(call("pay", to="bob", amount=5000)), turn(call("fetch", q="x")), AIMessage("done")]
    )
    agent = create_agent(
        model, bank.tools(), middleware=[middleware], checkpointer=saver, context_schema=RunContext
    )
    try:
        asked = agent.invoke({"messages": [("user", "go")]}, config(), context=CTX)
        request = request_of(asked)
        HITL_REQUEST.validate_python(request)
        assert request["action_requests"][0]["description"].startswith("Payment needs")
        failed = agent.invoke(Command(resume=approve()), config(), context=CTX)
        escalation = request_of(failed)
        HITL_REQUEST.validate_python(escalation)
        assert escalation["handrail"]["kind"] == "escalation"
        assert escalation["review_configs"][0]["allowed_decisions"] == ["approve", "reject"]
    finally:
        middleware.close()
        conn.close()


# -- allowed_decisions ----------------------------------------------------------------------------


def test_a_decision_the_rule_does_not_allow_is_refused_and_the_thread_stays_resumable(
    tmp_path: Path, bank: Bank
) -> None:
    g = graph(tmp_path, bank, turn(call("wire", to="zoe", amount=50)))
    request = request_of(start(g))
    assert request["review_configs"] == [
        {"action_name": "wire", "allowed_decisions": ["approve", "reject"]}
    ]
    assert request["action_requests"][0]["description"] == (
        "International wire\n\nTool: wire\nArgs: {'to': 'zoe', 'amount': 50.0}"
    )
    with pytest.raises(ResumeError) as refused:
        resume(g, edit("wire", {"to": "zoe", "amount": 5}))
    assert refused.value.reason == (
        "decision 0 is 'edit', but this approval of 'wire' (rule 'wire') takes approve, reject"
    )
    with pytest.raises(ResumeError, match="'respond'"):
        resume(g, {"decisions": [{"type": "respond", "message": "done"}], "approver": TREASURER})
    assert bank.paid == []
    resume(g, approve())
    assert bank.paid == [("zoe", 50.0)]


# -- a stock HITLResponse --------------------------------------------------------------------------


def test_a_stock_response_is_taken_from_the_servers_user_and_refused_without_one(
    tmp_path: Path, bank: Bank
) -> None:
    g = graph(tmp_path, bank, turn(call("pay", to="bob", amount=5000)))
    start(g)
    stock = {"decisions": [{"type": "approve"}]}
    HITL_RESPONSE.validate_python(stock)
    with pytest.raises(ApproverNotAuthorized) as refused:
        resume(g, stock)
    assert "a stock HITL response" in refused.value.reason
    assert "'approver': {'token': <JWT>} or {'id': ...}" in refused.value.reason
    with pytest.raises(ApproverNotAuthorized, match="holds none of the roles"):
        resume(g, stock, as_server_user("mallory", "clerk"))
    assert bank.paid == []

    result = resume(g, stock, as_server_user("Alice", "treasurer"))
    assert bank.paid == [("bob", 5000.0)]
    record = result["calls"]["call_0_0"]
    assert (record.status, record.approver) == ("succeeded", "alice")
    (proof,) = ProofTable(tmp_path / "h.db").of("t-1", "call_0_0", record.args_hash)
    assert (proof.approver, proof.identified_by, proof.roles) == ("alice", "server", ("treasurer",))


def test_a_stock_response_from_the_requester_is_self_approval(tmp_path: Path, bank: Bank) -> None:
    g = graph(tmp_path, bank, turn(call("pay", to="bob", amount=5000)))
    start(g)
    as_agent = as_server_user("agent-123", "treasurer")
    with pytest.raises(SelfApproval):
        resume(g, {"decisions": [{"type": "approve"}]}, as_agent)
    assert bank.paid == []


def test_langchains_reject_and_edit_shapes_are_taken(tmp_path: Path, bank: Bank) -> None:
    g = graph(
        tmp_path,
        bank,
        turn(call("pay", to="bob", amount=5000)),
        turn(call("pay", to="eve", amount=7000)),
    )
    start(g)
    stock_edit = {
        "decisions": [
            {"type": "edit", "edited_action": {"name": "pay", "args": {"to": "bob", "amount": 900}}}
        ]
    }
    HITL_RESPONSE.validate_python(stock_edit)
    resume(g, stock_edit, as_server_user("alice", "treasurer"))
    assert bank.paid == [("bob", 900.0)]
    stock_reject = {"decisions": [{"type": "reject", "message": "not eve"}]}
    result = resume(g, stock_reject, as_server_user("alice", "treasurer"))
    rejected = [m for m in result["messages"] if isinstance(m, ToolMessage)][-1]
    assert rejected.text == "Rejected by alice: not eve. The tool was not run."
    assert rejected.additional_kwargs == {  # LangChain's marker of a person's answer
        "lc_source": "hitl_interrupt_decision",
        "lc_data": {"decision": "reject"},
    }
    assert bank.paid == [("bob", 900.0)]


# -- the edit notice -------------------------------------------------------------------------------


def gate(policy: Policy = POLICY) -> Gate:
    return Gate(Bank().tools(), policy)


def record(args: dict[str, Any], approver: str | None = "alice") -> ToolCallRecord:
    return ToolCallRecord(
        id="c1", name="pay", args=args, args_hash=args_hash("pay", args), approver=approver
    )


def test_the_notice_goes_before_an_edited_calls_result_in_langchains_words() -> None:
    model_call = {"name": "pay", "args": {"to": "bob", "amount": "5000"}, "id": "c1"}
    ran = record({"to": "bob", "amount": 900.0, "account": "DE44-99"})
    noticed = with_edit_notice(gate(), model_call, ran, ToolMessage("paid", tool_call_id="c1"))
    assert noticed.content == (
        f"{EDIT_NOTICE} Executed instead: pay with arguments "
        '{"to": "bob", "amount": 900.0, "account": "[redacted]"}.\n\nTool response:\npaid'
    )
    # the model's own arguments, as the schema coerces them, are not an edit
    same = record({"to": "bob", "amount": 5000.0, "account": ""})
    untouched = ToolMessage("paid", tool_call_id="c1")
    assert with_edit_notice(gate(), model_call, same, untouched) is untouched
    # a call nobody decided was never edited; a notice is never added twice
    assert with_edit_notice(gate(), model_call, record(ran.args, None), untouched) is untouched
    assert with_edit_notice(gate(), model_call, ran, noticed) is noticed
    blocks = ToolMessage([{"type": "text", "text": "paid"}], tool_call_id="c1")
    first = with_edit_notice(gate(), model_call, ran, blocks).content[0]
    assert isinstance(first, dict) and first["text"].startswith(EDIT_NOTICE)


@pytest.mark.parametrize(
    ("setting", "content"),
    [
        ("edit_notice: The operator changed this call.", "The operator changed this call. Exec"),
        ("edit_notice: null", "paid"),
    ],
    ids=["own-words", "off"],
)
def test_the_policy_words_the_notice_or_turns_it_off(setting: str, content: str) -> None:
    model_call = {"name": "pay", "args": {"to": "bob", "amount": 5000}, "id": "c1"}
    ran = record({"to": "bob", "amount": 900.0, "account": ""})
    own = gate(Policy.from_yaml(f"{setting}\n{POLICY_TEXT}"))
    noticed = with_edit_notice(own, model_call, ran, ToolMessage("paid", tool_call_id="c1"))
    assert noticed.text.startswith(content)


def test_after_an_edit_the_model_is_told_its_call_ran_with_other_arguments(
    tmp_path: Path, bank: Bank
) -> None:
    g = graph(tmp_path, bank, turn(call("pay", to="bob", amount=5000)))
    inputs = Inputs()
    start(g)
    resume(g, edit("pay", {"to": "bob", "amount": 900}), {**config(), "callbacks": [inputs]})
    assert bank.paid == [("bob", 900.0)]
    result = [m for m in inputs.seen[-1] if isinstance(m, ToolMessage)][-1]
    assert result.text.startswith(EDIT_NOTICE)
    ran = '{"to": "bob", "amount": 900.0, "account": "[redacted]"}'
    assert f"Executed instead: pay with arguments {ran}." in result.text
    assert result.text.endswith("Tool response:\npaid bob 900.0")


def test_the_middleware_tells_the_model_of_an_edit_too(tmp_path: Path, bank: Bank) -> None:
    db = tmp_path / "m.db"
    conn = sqlite3.connect(db, check_same_thread=False)
    saver = SqliteSaver(conn)
    middleware = HandrailMiddleware(policy=POLICY, db=saver, tools=bank.tools())
    model = ScriptedChatModel([turn(call("pay", to="bob", amount=5000)), AIMessage("done")])
    agent = create_agent(
        model, bank.tools(), middleware=[middleware], checkpointer=saver, context_schema=RunContext
    )
    inputs = Inputs()
    try:
        agent.invoke({"messages": [("user", "go")]}, config(), context=CTX)
        change = edit("pay", {"to": "bob", "amount": 900})
        agent.invoke(Command(resume=change), {**config(), "callbacks": [inputs]}, context=CTX)
        result = [m for m in inputs.seen[-1] if isinstance(m, ToolMessage)][-1]
        assert result.text.startswith(EDIT_NOTICE) and result.text.endswith("paid bob 900.0")
    finally:
        middleware.close()
        conn.close()


def test_an_edit_the_policy_denies_tells_the_model_what_the_reviewer_chose(
    tmp_path: Path, bank: Bank
) -> None:
    no_eve = "  - {id: no-eve, tools: [pay], when: \"args.to == 'eve'\", effect: deny}\n"
    denying = Policy.from_yaml(POLICY_TEXT.replace("rules:\n", "rules:\n" + no_eve))
    g = build_agent(
        ScriptedChatModel([turn(call("pay", to="bob", amount=5000)), AIMessage("done")]),
        bank.tools(),
        denying,
        checkpointer=tmp_path / "h.db",
    )
    start(g)
    result = resume(g, edit("pay", {"to": "eve", "amount": 5000, "account": "X-1234"}))
    assert bank.paid == []
    denied = [m for m in result["messages"] if isinstance(m, ToolMessage)][-1]
    assert denied.text.startswith(
        'A human reviewer replaced this tool call with pay with arguments {"to": "eve", '
        '"amount": 5000.0, "account": "[redacted]"}, which the policy denies (rule \'no-eve\''
    )
    assert denied.text.endswith("The tool 'pay' was not run.")


def test_an_edit_into_a_rule_that_takes_no_approval_is_asked_again_not_run(
    tmp_path: Path, bank: Bank
) -> None:
    """An approver edits a call into arguments whose rule takes only reject or respond: their
    edit is no approval of the new arguments; the call is asked about again, offering what that
    rule allows, and nothing runs."""
    policy = Policy.from_yaml(
        POLICY_TEXT.replace(
            "rules:\n",
            "rules:\n  - {id: no-mallory, tools: [pay], when: \"args.to == 'mallory'\", "
            "effect: ask, approvers: [treasurer], allowed_decisions: [reject, respond]}\n",
            1,
        )
    )
    model = ScriptedChatModel([turn(call("pay", to="carol", amount=5000)), AIMessage("done")])
    g = build_agent(model, bank.tools(), policy, checkpointer=tmp_path / "h.db")
    start(g)
    again = resume(g, edit("pay", {"to": "mallory", "amount": 50}))
    request = request_of(again)
    assert request["review_configs"][0]["allowed_decisions"] == ["reject", "respond"]
    assert request["action_requests"][0]["args"]["to"] == "mallory"
    assert bank.paid == []
    with pytest.raises(ResumeError, match="takes"):
        resume(g, approve())
    assert bank.paid == []
