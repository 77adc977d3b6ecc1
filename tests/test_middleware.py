"""`HandrailMiddleware` in LangChain's ``create_agent``: real agents, real SQLite checkpoints (sync
and async savers), real interrupts, the scripted model."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import aiosqlite
import pytest
import yaml
from langchain.agents import create_agent
from langchain.agents.middleware.human_in_the_loop import ActionRequest, HITLRequest
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import BaseTool, InjectedToolArg, InjectedToolCallId, tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command
from support import AGENT, CTX, TREASURER, approve, call, config, edit, per_call, turn

from handrail import Policy, RunContext
from handrail.audit import AuditLog
from handrail.errors import ContextError, HandrailError
from handrail.integrations import HandrailMiddleware
from handrail.state import CallError, ToolCallRecord
from handrail.storage.ledger import Ledger
from handrail.testing import ScriptedChatModel
from handrail.tools import RateLimited, ServerError, TransientError
from handrail.tools.demo import POLICY_PATH, banking_tools, transfers

SERDE = JsonPlusSerializer(
    allowed_msgpack_modules=[(t.__module__, t.__name__) for t in (ToolCallRecord, CallError)]
)
"""Checkpoints that hold Handrail's records (without it LangGraph warns once per type)."""

OPS = {"id": "ops-1", "roles": ["operator"]}

Agent = CompiledStateGraph[Any, Any, Any, Any]


@pytest.fixture
def build(db: Path) -> Iterator[Callable[..., Agent]]:
    """``build(*turns, tools=..., policy=..., seed=..., share=...)``: a ``create_agent`` agent
    on ``db`` (checkpoints and Handrail's tables in the one file) whose model plays ``turns``,
    then says "done". ``seed`` gives the middleware the tools up front; ``share`` (default) gives
    it the saver, whose connection its tables then write through, else the file's path. Every
    connection it opens is closed after the test."""
    opened: list[Any] = []

    def make(
        *turns: AIMessage,
        tools: list[BaseTool] | None = None,
        policy: Policy | None = None,
        seed: bool = False,
        share: bool = True,
    ) -> Agent:
        tools = banking_tools(db) if tools is None else tools
        conn = sqlite3.connect(db, check_same_thread=False)
        saver = SqliteSaver(conn, serde=SERDE)
        handrail = HandrailMiddleware(
            policy=policy or Policy.from_file(POLICY_PATH),
            db=saver if share else db,
            tools=tools if seed else (),
        )
        opened.extend([handrail, conn])
        return create_agent(
            ScriptedChatModel([*turns, AIMessage("done")]),
            tools,
            middleware=[handrail],
            checkpointer=saver,
            context_schema=RunContext,
        )

    yield make
    for item in opened:
        item.close()


def tool_messages(result: dict[str, Any]) -> list[ToolMessage]:
    return [m for m in result["messages"] if isinstance(m, ToolMessage)]


def request_of(result: dict[str, Any]) -> dict[str, Any]:
    """The value of the one interrupt the run paused on."""
    (pending,) = result["__interrupt__"]
    value: dict[str, Any] = pending.value
    return value


def start(agent: Agent, thread: str = "t-1") -> dict[str, Any]:
    result: dict[str, Any] = agent.invoke(
        {"messages": [("user", "go")]}, config(thread), context=CTX
    )
    return result


def resume(agent: Agent, value: Any, thread: str = "t-1") -> dict[str, Any]:
    result: dict[str, Any] = agent.invoke(Command(resume=value), config(thread), context=CTX)
    return result


TWO_PERSON = Policy.from_yaml(
    "rules: [{id: two, tools: [transfer_funds], effect: ask, approvers: [treasurer], "
    "min_approvals: 2}]"
)
"""Every transfer needs two treasurers."""

MIXED = Policy.from_yaml(
    """
rules:
  - {id: two, tools: [transfer_funds], when: "args.amount > 1000.0", effect: ask,
     approvers: [treasurer], min_approvals: 2}
  - {id: one, tools: [transfer_funds], when: "args.amount <= 1000.0", effect: ask,
     approvers: [treasurer]}
"""
)
"""Big transfers need two treasurers, small ones one."""

CAROL_AND_DAVE = turn(
    call("transfer_funds", to="carol", amount=5000),
    call("transfer_funds", to="dave", amount=500),
)


def fetch_policy(**settings: Any) -> Policy:
    """``fetch`` allowed for everyone, with the given tool settings; ops decide escalations."""
    return Policy.from_data(
        {
            "rules": [{"id": "reads", "tools": ["fetch"], "effect": "allow"}],
            "tools": {"fetch": {"escalate_to": ["operator"], **settings}},
        }
    )


def failing(*failures: BaseException | None, log: list[float] | None = None) -> BaseTool:
    """A ``fetch`` tool that raises ``failures`` in turn (None: succeeds), then succeeds; each
    run's time goes to ``log``."""
    script = list(failures)
    runs = log if log is not None else []

    @tool
    def fetch(q: str) -> str:
        """Fetch a resource."""
        runs.append(time.monotonic())
        failure = script.pop(0) if script else None
        if failure is not None:
            raise failure
        return f"data for {q}"

    return fetch


# -- decisions ------------------------------------------------------------------------------------


def test_allowed_calls_run_with_coerced_arguments_and_answer_the_model(build, db) -> None:
    agent = build(
        turn(call("get_balance", account="carol"), call("transfer_funds", to="bob", amount="50"))
    )
    result = start(agent)
    assert "__interrupt__" not in result
    answers = {m.tool_call_id: m.text for m in tool_messages(result)}  # the calls run in parallel
    assert answers == {"call_0_0": "carol: 0.00", "call_0_1": "sent 50.00 to bob"}
    assert transfers(db) == [("bob", 50.0)]
    records = result["calls"]
    assert {(r.name, r.rule_id, r.status, r.args.get("amount")) for r in records.values()} == {
        ("get_balance", "reads", "succeeded", None),
        ("transfer_funds", "small-transfers", "succeeded", 50.0),
    }
    assert result["messages"][-1].text == "done"


def test_deny_answers_the_model_with_the_rule_and_never_runs_the_tool(build, db) -> None:
    result = start(build(turn(call("delete_user", user_id="bob"))))
    (message,) = tool_messages(result)
    assert message.status == "error"
    assert "no-deletes" in message.text and "not run" in message.text
    (record,) = result["calls"].values()
    assert (record.decision, record.status) == ("deny", "rejected")
    assert banking_tools(db)[0].invoke({"account": "bob"}) == "bob: 100.00"


def test_arguments_that_fail_the_tool_schema_are_refused_as_a_bad_request(build, db) -> None:
    result = start(build(turn(call("transfer_funds", to="bob", amount="lots"), call("nope"))))
    bad_args, unknown = tool_messages(result)
    assert bad_args.status == "error" and "invalid arguments" in bad_args.text
    assert "unknown tool 'nope'" in unknown.text
    assert {r.error.kind for r in result["calls"].values() if r.error} == {"bad_request"}
    assert transfers(db) == []


# -- approvals ------------------------------------------------------------------------------------


def test_asked_calls_of_a_turn_share_one_interrupt_shaped_as_a_hitl_request(build, db) -> None:
    policy = Policy.from_file(POLICY_PATH)
    agent = build(
        turn(
            call("transfer_funds", to="carol", amount=5000),
            call("get_balance", account="bob"),
            call("transfer_funds", to="dave", amount=2000),
        ),
        policy=policy,
    )
    request = request_of(start(agent))
    assert set(request) == {*HITLRequest.__required_keys__, "handrail"}  # LangChain's HITL shape
    assert [a["args"]["to"] for a in request["action_requests"]] == ["carol", "dave"]
    assert all(set(a) == set(ActionRequest.__annotations__) for a in request["action_requests"])
    assert request["review_configs"][0] == {
        "action_name": "transfer_funds",
        "allowed_decisions": ["approve", "edit", "reject", "respond"],
    }
    calls = agent.get_state(config()).values["calls"]
    asked = [calls["call_0_0"], calls["call_0_2"]]
    info = request["handrail"]
    assert (info["kind"], info["thread_id"], info["actor"]) == ("approval", "t-1", AGENT.as_dict())
    assert info["tool_call_ids"] == [r.id for r in asked]
    assert per_call(request, "args_hash") == [r.args_hash for r in asked]
    assert per_call(request, "rule_id") == ["big-transfers", "big-transfers"]
    assert per_call(request, "approvers") == [["treasurer"], ["treasurer"]]
    assert per_call(request, "graph") == ["handrail_middleware", "handrail_middleware"]
    assert transfers(db) == []  # nothing of the turn runs before the decision

    result = resume(agent, approve(2))
    assert sorted(transfers(db)) == [("carol", 5000.0), ("dave", 2000.0)]  # run in parallel
    assert {m.text for m in tool_messages(result)} == {
        "sent 5000.00 to carol",
        "bob: 100.00",
        "sent 2000.00 to dave",
    }


def test_an_approval_resumes_the_thread_in_a_fresh_agent_on_the_same_file(build, db) -> None:
    script = turn(call("transfer_funds", to="carol", amount=5000))
    request_of(start(build(script)))
    # Another process: a new middleware (on the file's path this time) and a new saver.
    result = resume(build(script, share=False), approve())
    assert transfers(db) == [("carol", 5000.0)]
    record = result["calls"]["call_0_0"]
    assert (record.status, record.approver, record.rule_id) == (
        "succeeded",
        "alice",
        "big-transfers",
    )
    assert result["messages"][-1].text == "done"


def test_an_edit_is_decided_again_and_runs_with_the_edited_arguments(build, db) -> None:
    agent = build(turn(call("transfer_funds", to="carol", amount=5000)))
    start(agent)
    result = resume(agent, edit("transfer_funds", {"to": "carol", "amount": "500"}))
    assert transfers(db) == [("carol", 500.0)]
    record = result["calls"]["call_0_0"]
    assert (record.args["amount"], record.rule_id, record.status) == (
        500.0,
        "small-transfers",
        "succeeded",
    )


def test_a_fresh_process_takes_edits_for_the_tools_it_was_given(build, db) -> None:
    script = turn(call("transfer_funds", to="carol", amount=5000))
    start(build(script))
    change = edit("transfer_funds", {"to": "carol", "amount": 900})
    refused = request_of(resume(build(script), change))  # it has seen no model request yet
    assert "takes approve, reject, respond" in refused["handrail"]["error"]
    result = resume(build(script, seed=True), change)
    assert transfers(db) == [("carol", 900.0)]
    assert result["calls"]["call_0_0"].rule_id == "small-transfers"


def test_a_two_person_rule_asks_again_until_two_approvers_approved(build, db) -> None:
    agent = build(turn(call("transfer_funds", to="carol", amount=5000)), policy=TWO_PERSON)
    assert per_call(request_of(start(agent)), "approvals") == [[]]
    second = request_of(resume(agent, approve()))
    assert per_call(second, "approvals") == [["alice"]]
    assert "already approved" in request_of(resume(agent, approve()))["handrail"]["error"]
    assert transfers(db) == []
    result = resume(agent, approve(approver={"id": "bea", "roles": ["treasurer"]}))
    assert transfers(db) == [("carol", 5000.0)]
    assert result["calls"]["call_0_0"].approvals == ("alice", "bea")


def test_a_second_approver_after_a_mixed_first_round_runs_the_call(build, db) -> None:
    """Each round is asked in a run of its own (after a pass of the model's step): a resume
    never replays an earlier round against the approvals that round itself proved."""
    agent = build(CAROL_AND_DAVE, policy=MIXED)
    start(agent)
    mixed = {"decisions": [{"type": "approve"}, {"type": "reject", "message": "no"}]}
    second = request_of(resume(agent, {**mixed, "approver": TREASURER}))
    assert second["handrail"]["tool_call_ids"] == ["call_0_0"]
    result = resume(agent, approve(approver={"id": "bea", "roles": ["treasurer"]}))
    assert "__interrupt__" not in result
    assert transfers(db) == [("carol", 5000.0)]
    assert not any((m.id or "").startswith("handrail-pass-") for m in result["messages"])


def test_a_decision_after_the_deadline_resolves_the_request_as_expired(build, db) -> None:
    policy = Policy.from_yaml(
        "rules: [{id: quick, tools: [transfer_funds], effect: ask, approvers: [treasurer], "
        "expires_in: 200ms}]"
    )
    agent = build(turn(call("transfer_funds", to="carol", amount=5000)), policy=policy)
    start(agent)
    time.sleep(0.3)
    result = resume(agent, approve())
    (message,) = tool_messages(result)
    assert "expired" in message.text and "not run" in message.text
    assert result["calls"]["call_0_0"].status == "rejected"
    assert transfers(db) == []


def test_an_edit_can_never_reach_a_denied_action(build, db) -> None:
    data = yaml.safe_load(POLICY_PATH.read_text())
    data["rules"].append(
        {
            "id": "no-mallory",
            "tools": ["transfer_funds"],
            "when": "args.to == 'mallory'",
            "effect": "deny",
        }
    )
    policy = Policy.from_data(data)
    agent = build(turn(call("transfer_funds", to="carol", amount=5000)), policy=policy)
    start(agent)
    result = resume(agent, edit("transfer_funds", {"to": "mallory", "amount": 5000}))
    (message,) = tool_messages(result)
    assert message.status == "error" and "no-mallory" in message.text
    assert result["calls"]["call_0_0"].status == "rejected"
    assert transfers(db) == []


def test_reject_answers_the_model_and_never_runs_the_tool(build, db) -> None:
    agent = build(turn(call("transfer_funds", to="carol", amount=5000)))
    start(agent)
    rejection = {"decisions": [{"type": "reject", "message": "not today"}], "approver": TREASURER}
    result = resume(agent, rejection)
    (message,) = tool_messages(result)
    assert message.status == "error"
    assert message.text == "Rejected by alice: not today. The tool was not run."
    assert result["calls"]["call_0_0"].status == "rejected"
    assert transfers(db) == []
    assert result["messages"][-1].text == "done"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("yes", "must be a mapping"),
        ({"decisions": [], "approver": TREASURER}, "expected 1 decision"),
        ({"decisions": [{"type": "approve"}], "approver": OPS}, "holds none of the roles"),
        ({"decisions": [{"type": "approve"}], "approver": AGENT.as_dict()}, "may not decide"),
        (edit("transfer_funds", {"to": "carol", "amount": "lots"}), "do not fit the tool"),
    ],
)
def test_a_refused_resume_keeps_the_thread_waiting_and_the_next_valid_one_works(
    build, db, value: Any, reason: str
) -> None:
    agent = build(turn(call("transfer_funds", to="carol", amount=5000)))
    first = request_of(start(agent))
    refused = request_of(resume(agent, value))
    assert reason in refused["handrail"]["error"]
    assert {**refused, "handrail": {**refused["handrail"], "error": None}} == first
    assert transfers(db) == []
    result = resume(agent, approve())
    assert transfers(db) == [("carol", 5000.0)]
    assert result["calls"]["call_0_0"].status == "succeeded"


def test_a_run_without_an_actor_is_refused_before_the_model_is_called(build) -> None:
    agent = build(turn(call("get_balance", account="bob")))
    with pytest.raises(ContextError, match="RunContext"):
        agent.invoke({"messages": [("user", "go")]}, config())


def test_bad_constructor_input_is_a_typed_error(db) -> None:
    with pytest.raises(HandrailError, match="Policy"):
        HandrailMiddleware(policy={"rules": []})  # type: ignore[arg-type]
    with pytest.raises(HandrailError, match="SQLite file path"):
        HandrailMiddleware(policy=Policy.from_file(POLICY_PATH), db=InMemorySaver())  # type: ignore[arg-type]


def test_a_tool_that_returns_a_command_keeps_its_update_and_gets_its_record(build) -> None:
    @tool
    def remember(note: str, tool_call_id: Annotated[str, InjectedToolCallId]) -> Command[Any]:
        """Remember a note."""
        return Command(
            update={"messages": [ToolMessage(f"noted {note}", tool_call_id=tool_call_id)]}
        )

    policy = Policy.from_yaml("rules: [{id: notes, tools: [remember], effect: allow}]")
    result = start(build(turn(call("remember", note="milk")), tools=[remember], policy=policy))
    assert [m.text for m in tool_messages(result)] == ["noted milk"]
    record = result["calls"]["call_0_0"]
    assert (record.status, record.result) == ("succeeded", "noted milk")


# -- failures -------------------------------------------------------------------------------------


def test_a_429_is_retried_after_its_retry_after_capped_by_max_wait(build) -> None:
    log: list[float] = []
    fetch = failing(RateLimited("slow down", retry_after=3600), log=log)
    started = time.monotonic()
    result = start(
        build(turn(call("fetch", q="x")), tools=[fetch], policy=fetch_policy(max_wait="50ms"))
    )
    assert time.monotonic() - started < 5
    record = result["calls"]["call_0_0"]
    assert (record.status, record.retry_count, record.last_wait, len(log)) == (
        "succeeded",
        1,
        0.05,
        2,
    )
    assert log[1] - log[0] >= 0.05
    assert tool_messages(result)[-1].text == "data for x"


def test_retries_are_bounded_by_max_retries_then_escalate(build) -> None:
    log: list[float] = []
    fetch = failing(*[RateLimited("429", retry_after=0)] * 5, log=log)
    result = start(
        build(turn(call("fetch", q="x")), tools=[fetch], policy=fetch_policy(max_retries=2))
    )
    info = request_of(result)["handrail"]
    assert (info["kind"], per_call(info, "attempts"), per_call(info, "error")[0]["kind"]) == (
        "escalation",
        [3],
        "rate_limited",
    )
    assert len(log) == 3


def test_a_500_escalates_to_a_human_and_retry_runs_the_call_again(build) -> None:
    log: list[float] = []
    fetch = failing(ServerError("down"), log=log)
    agent = build(turn(call("fetch", q="x")), tools=[fetch], policy=fetch_policy())
    request = request_of(start(agent))
    assert request["review_configs"][0]["allowed_decisions"] == ["approve", "reject"]
    assert per_call(request, "allowed_decisions") == [["retry", "skip", "abort"]]
    assert per_call(request, "approvers") == [["operator"]]
    refused = request_of(resume(agent, {"decisions": [{"type": "retry"}], "approver": TREASURER}))
    assert "holds none of the roles" in refused["handrail"]["error"]
    result = resume(agent, {"decisions": [{"type": "retry"}], "approver": OPS})
    record = result["calls"]["call_0_0"]
    assert (record.status, record.retry_count, len(log)) == ("succeeded", 1, 2)
    assert [m.text for m in tool_messages(result)] == ["data for x"]


def test_a_retry_runs_only_the_escalated_call_of_the_turn(build) -> None:
    pings: list[str] = []

    @tool
    def ping(host: str) -> str:
        """Ping a host."""
        pings.append(host)
        return f"pong from {host}"

    policy = Policy.from_data(
        {
            "rules": [{"id": "all", "tools": ["fetch", "ping"], "effect": "allow"}],
            "tools": {"fetch": {"escalate_to": ["operator"]}},
        }
    )
    agent = build(
        turn(call("fetch", q="x"), call("ping", host="h")),
        tools=[failing(ServerError("down")), ping],
        policy=policy,
    )
    assert request_of(start(agent))["handrail"]["tool_call_ids"] == ["call_0_0"]
    result = resume(agent, {"decisions": [{"type": "retry"}], "approver": OPS})
    assert pings == ["h"]
    answers = {m.tool_call_id: m.text for m in tool_messages(result)}
    assert answers == {"call_0_0": "data for x", "call_0_1": "pong from h"}
    assert len(tool_messages(result)) == 2
    assert result["messages"][-1].text == "done"


def test_abort_answers_the_escalated_call_and_ends_the_run(build) -> None:
    agent = build(
        turn(call("fetch", q="x")), tools=[failing(ServerError("down"))], policy=fetch_policy()
    )
    start(agent)
    result = resume(agent, {"decisions": [{"type": "abort"}], "approver": OPS})
    (message,) = tool_messages(result)
    assert message.text.startswith("Aborted; the run was stopped by ops-1")
    assert isinstance(result["messages"][-1], ToolMessage)  # the model is not called again
    assert agent.get_state(config()).next == ()


# -- the execution ledger -------------------------------------------------------------------------


def test_replaying_the_tool_step_answers_from_the_ledger_not_the_tool(build, db) -> None:
    """Time travel re-runs the tool node from its checkpoint: the tool does not run again."""
    log: list[float] = []
    agent = build(turn(call("fetch", q="x")), tools=[failing(log=log)], policy=fetch_policy())
    start(agent)
    (before_tools,) = [s for s in agent.get_state_history(config()) if s.next == ("tools",)]
    replayed = agent.invoke(None, before_tools.config, context=CTX)
    assert len(log) == 1
    assert replayed["calls"]["call_0_0"].status == "succeeded"
    assert tool_messages(replayed)[-1].text == "data for x"
    (row,) = Ledger(db).entries("t-1")
    assert (row["attempt"], row["outcome"], row["result"]) == (0, "succeeded", "data for x")


def test_a_tool_killed_after_its_side_effect_is_never_run_again(build, db) -> None:
    """The process dies inside the tool (a BaseException tears through the graph like a kill):
    the ledger holds an intent with no outcome, and the replay escalates instead of paying
    twice."""

    @tool
    def transfer_funds(to: str, amount: float, memo: str = "") -> str:
        """Move money from the operating account to another account."""
        out = str(banking_tools(db)[1].invoke({"to": to, "amount": amount, "memo": memo}))
        if len(transfers(db)) == 1:
            raise SystemExit("killed")
        return out

    script = turn(call("transfer_funds", to="bob", amount=50))
    tools = [*banking_tools(db)[:1], transfer_funds]
    with pytest.raises(SystemExit):
        start(build(script, tools=tools))
    request = request_of(build(script, tools=tools).invoke(None, config(), context=CTX))
    assert transfers(db) == [("bob", 50.0)]
    info = request["handrail"]
    assert (info["kind"], per_call(info, "error")[0]["kind"]) == ("escalation", "outcome_unknown")
    skip = {"decisions": [{"type": "skip", "message": "checked: paid"}], "approver": TREASURER}
    result = resume(build(script, tools=tools), skip)
    assert transfers(db) == [("bob", 50.0)]
    assert "Skipped by alice: checked: paid" in tool_messages(result)[-1].text
    assert result["messages"][-1].text == "done"


def test_tools_get_an_injected_idempotency_key_stable_across_attempts(build) -> None:
    keys: list[str] = []

    @tool
    def fetch(q: str, idempotency_key: Annotated[str, InjectedToolArg]) -> str:
        """Fetch a resource (the key goes to the API, the model never sees it)."""
        keys.append(idempotency_key)
        if len(keys) == 1:
            raise RateLimited("429", retry_after=0)
        return "data"

    result = start(build(turn(call("fetch", q="x")), tools=[fetch], policy=fetch_policy()))
    assert result["calls"]["call_0_0"].args == {"q": "x"}
    assert len(keys) == 2 and keys[0] == keys[1] and keys[0].startswith("hr-")


def test_an_open_circuit_fails_the_call_fast_and_tells_the_model(build) -> None:
    log: list[float] = []
    fetch = failing(TransientError("503"), log=log)
    policy = fetch_policy(backoff="1ms", circuit_breaker={"failures": 1, "cool_down": "1h"})
    result = start(build(turn(call("fetch", q="x")), tools=[fetch], policy=policy))
    assert len(log) == 1  # the retry met the open circuit and was not made
    record = result["calls"]["call_0_0"]
    assert record.error is not None and record.error.kind == "circuit_open"
    assert "circuit is open" in tool_messages(result)[-1].text


# -- events and audit -----------------------------------------------------------------------------


def test_every_step_is_audited_once_and_the_chain_verifies(build, db) -> None:
    agent = build(
        turn(call("transfer_funds", to="carol", amount=5000), call("delete_user", user_id="x"))
    )
    start(agent)
    resume(agent, {"decisions": [{"type": "approve"}], "approver": OPS})  # refused: re-asked
    resume(agent, approve())
    log = AuditLog(db, readonly=True)
    try:
        rows = list(log.export())
        assert log.verify().ok
    finally:
        log.close()
    steps = [(r["tool_call_id"], r["call_seq"], r["event"], r["decision"]) for r in rows]
    assert steps == [
        ("call_0_0", 0, "decided", "ask"),
        ("call_0_1", 0, "decided", "deny"),
        ("call_0_0", 1, "approval_requested", "ask"),
        ("call_0_0", 2, "approval_decided", "approve"),
        ("call_0_0", 3, "started", "ask"),
        ("call_0_0", 4, "succeeded", "ask"),
    ]
    assert {r["graph"] for r in rows} == {"handrail_middleware"}
    assert rows[3]["approver"] == "alice" and rows[0]["agent_id"] == AGENT.id


# -- async ----------------------------------------------------------------------------------------


def test_the_async_path_allows_asks_and_approves_with_an_async_saver_and_tool(db: Path) -> None:
    runs: list[str] = []

    @tool
    async def pay(to: str, amount: float) -> str:
        """Pay someone."""
        await asyncio.sleep(0)
        runs.append(to)
        return f"paid {amount:.2f} to {to}"

    policy = Policy.from_data(
        {
            "rules": [
                {
                    "id": "small",
                    "tools": ["pay"],
                    "when": "args.amount <= 100.0",
                    "effect": "allow",
                },
                {
                    "id": "big",
                    "tools": ["pay"],
                    "when": "args.amount > 100.0",
                    "effect": "ask",
                    "approvers": ["treasurer"],
                },
            ]
        }
    )
    script = [turn(call("pay", to="bob", amount=5)), turn(call("pay", to="carol", amount=500))]

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        handrail = HandrailMiddleware(policy=policy, db=db)
        try:
            async with aiosqlite.connect(db) as conn:
                agent = create_agent(
                    ScriptedChatModel([*script, AIMessage("done")]),
                    [pay],
                    middleware=[handrail],
                    checkpointer=AsyncSqliteSaver(conn, serde=SERDE),
                    context_schema=RunContext,
                )
                paused = await agent.ainvoke({"messages": [("user", "go")]}, config(), context=CTX)
                done = await agent.ainvoke(Command(resume=approve()), config(), context=CTX)
                return paused, done
        finally:
            handrail.close()

    paused, done = asyncio.run(scenario())
    assert runs == ["bob", "carol"]
    assert per_call(request_of(paused), "rule_id") == ["big"]
    assert [m.text for m in tool_messages(done)] == ["paid 5.00 to bob", "paid 500.00 to carol"]
    assert {r.status for r in done["calls"].values()} == {"succeeded"}
    log = AuditLog(db, readonly=True)
    try:
        assert log.verify().ok and log.count() == 8
    finally:
        log.close()


def test_the_async_path_retries_a_keyed_tool_without_blocking_the_event_loop(db: Path) -> None:
    log: list[float] = []
    keys: list[str] = []

    @tool
    async def fetch(q: str, idempotency_key: Annotated[str, InjectedToolArg]) -> str:
        """Fetch a resource."""
        log.append(time.monotonic())
        keys.append(idempotency_key)
        if len(log) == 1:
            raise RateLimited("slow down", retry_after=0.05)
        return f"data for {q}"

    async def scenario() -> dict[str, Any]:
        handrail = HandrailMiddleware(policy=fetch_policy(), db=db)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        clock = asyncio.create_task(ticker())
        try:
            async with aiosqlite.connect(db) as conn:
                agent = create_agent(
                    ScriptedChatModel([turn(call("fetch", q="x")), AIMessage("done")]),
                    [fetch],
                    middleware=[handrail],
                    checkpointer=AsyncSqliteSaver(conn, serde=SERDE),
                    context_schema=RunContext,
                )
                result: dict[str, Any] = await agent.ainvoke(
                    {"messages": [("user", "go")]}, config(), context=CTX
                )
        finally:
            clock.cancel()
            handrail.close()
        assert ticks >= 5  # the loop kept running while the retry waited
        return result

    result = asyncio.run(scenario())
    assert result["calls"]["call_0_0"].retry_count == 1 and len(log) == 2
    assert keys[0] == keys[1] and keys[0].startswith("hr-")
    assert all(b - a >= 0.05 for a, b in itertools.pairwise(log))


def test_middleware_state_keeps_records_out_of_the_agent_input(build) -> None:
    agent = build(turn(call("get_balance", account="bob")))
    assert "calls" not in agent.get_input_jsonschema()["properties"]
    assert "calls" in agent.get_output_jsonschema()["properties"]
