"""Adversarial tests of cumulative limits (issue 19): ways to pass a limit without a person's
approval, uses never given back or given back when they must stay, confusing output, crashes,
and running totals that disagree with the uses they count.

A test marked ``xfail(strict=True)`` is a confirmed problem (its reason names it); the others
show a defence that holds."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from langchain_core.tools import BaseTool, tool
from langgraph.types import Command
from support import CTX, TREASURER, config, table_rows

from handrail import Policy, build_agent
from handrail.storage.limits import Claim, LimitTable, MemoryUses
from handrail.testing import ScriptedChatModel

pytestmark = pytest.mark.backends("sqlite", "postgresql")

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)

BASE = """
version: 1
default: deny
rules:
  - {id: pay, tools: [transfer_funds], effect: allow}
  - {id: big, tools: [transfer_funds], when: "args.amount > 5000.0", effect: ask,
     approvers: [treasurer]}
  - {id: reads, tools: [get_balance], effect: allow}
tools:
  transfer_funds: {escalate_to: [treasurer], max_retries: 0}
"""

SPEND_DENY = """
limits:
  - {id: spend, tools: [transfer_funds], per: actor, window: 24h, sum: args.amount, max: 1500,
     then: deny}
"""

SPEND_ASK = """
limits:
  - {id: spend, tools: [transfer_funds], per: actor, window: 24h, sum: args.amount, max: 1500,
     then: ask, approvers: [treasurer]}
"""


def policy(limits: str = SPEND_DENY, base: str = BASE) -> Policy:
    return Policy.from_yaml(textwrap.dedent(base) + textwrap.dedent(limits), source="p.yaml")


class Bank:
    """The tools' side effects, as the test sees them: every transfer that ran."""

    def __init__(self, *, fail_after_acting: type[BaseException] | None = None) -> None:
        self.sent: list[tuple[str, float]] = []
        self.fail_after_acting = fail_after_acting

    def tools(self) -> list[BaseTool]:
        bank = self

        @tool
        def transfer_funds(to: str, amount: float) -> str:
            """Send money."""
            bank.sent.append((to, amount))
            if bank.fail_after_acting is not None:
                raise bank.fail_after_acting("the bank's reply was lost")
            return f"sent {amount} to {to}"

        @tool
        def get_balance(account: str) -> str:
            """Read a balance."""
            return "100"

        return [transfer_funds, get_balance]

    def total(self) -> float:
        return sum(a for _, a in self.sent)


def pay(cid: str, amount: Any, to: str = "bob") -> dict[str, Any]:
    return {
        "name": "transfer_funds",
        "args": {"to": to, "amount": amount},
        "id": cid,
        "type": "tool_call",
    }


def turn(*calls: dict[str, Any]) -> AIMessage:
    return AIMessage("", tool_calls=list(calls))


def graph(db: Any, bank: Bank, pol: Policy, *turns: AIMessage) -> Any:
    model = ScriptedChatModel([*turns, AIMessage("ok")])
    return build_agent(model, bank.tools(), pol, checkpointer=db)


def uses_of(db: Any) -> list[tuple[str, str, float]]:
    rows = table_rows(
        db, "SELECT tool_call_id, limit_id, amount FROM handrail_limit_uses ORDER BY tool_call_id"
    )
    return [(r["tool_call_id"], r["limit_id"], float(r["amount"])) for r in rows]


def tool_texts(result: dict[str, Any]) -> list[str]:
    return [str(m.content) for m in result["messages"] if m.type == "tool"]


def resume(*decisions: dict[str, Any]) -> Command[Any]:
    return Command(resume={"decisions": list(decisions), "approver": TREASURER})


# -- one model turn, several calls ----------------------------------------------------------------


def test_two_parallel_calls_that_fit_alone_but_not_together_do_not_both_run(db: Any) -> None:
    bank = Bank()
    g = graph(db, bank, policy(SPEND_ASK), turn(pay("a", 800.0), pay("b", 800.0, "eve")))
    result = g.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    (pending,) = result["__interrupt__"]
    assert pending.value["handrail"]["tool_call_ids"] == ["b"]
    assert bank.sent == []  # nothing of the turn runs before the person answers
    g.invoke(resume({"type": "reject", "message": "no"}), config(), context=CTX)
    assert bank.sent == [("bob", 800.0)]
    assert uses_of(db) == [("a", "spend", 800.0)]


def test_two_parallel_calls_past_a_deny_limit_run_one(db: Any) -> None:
    bank = Bank()
    g = graph(db, bank, policy(), turn(pay("a", 800.0), pay("b", 800.0, "eve")))
    result = g.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    assert bank.sent == [("bob", 800.0)]
    assert "limit 'spend'" in tool_texts(result)[0]
    assert uses_of(db) == [("a", "spend", 800.0)]


def test_an_allowed_call_beside_a_rejected_one_keeps_its_use_and_runs(db: Any) -> None:
    bank = Bank()
    roomy = policy(SPEND_DENY.replace("1500", "10000"))
    g = graph(db, bank, roomy, turn(pay("a", 800.0), pay("b", 6000.0, "eve")))
    g.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    g.invoke(resume({"type": "reject", "message": "no"}), config(), context=CTX)
    assert bank.sent == [("bob", 800.0)]
    assert uses_of(db) == [("a", "spend", 800.0)]


# -- calls that ran and failed ---------------------------------------------------------------------


@pytest.mark.parametrize("answer", ["skip", "abort"])
def test_skipping_an_escalated_call_that_ran_keeps_its_use(db: Any, answer: str) -> None:
    bank = Bank(fail_after_acting=RuntimeError)
    g = graph(db, bank, policy(), turn(pay("a", 1000.0)), turn(pay("b", 1000.0, "eve")))
    result = g.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    (pending,) = result["__interrupt__"]
    assert pending.value["handrail"]["kind"] == "escalation"
    assert bank.sent == [("bob", 1000.0)]  # it ran: the bank moved the money, the reply was lost
    bank.fail_after_acting = None
    g.invoke(resume({"type": answer, "message": "leave it"}), config(), context=CTX)
    if answer == "skip":
        # The model's next transfer of 1,000 must not fit in 1,500 with the first one's 1,000.
        assert bank.total() <= 1500, bank.sent
    assert uses_of(db)[:1] == [("a", "spend", 1000.0)]


def test_a_tool_error_after_acting_keeps_its_use(db: Any) -> None:
    from langchain_core.tools import ToolException

    bank = Bank(fail_after_acting=ToolException)
    tools = bank.tools()
    tools[0].handle_tool_error = True
    model = ScriptedChatModel(
        [turn(pay("a", 1000.0)), turn(pay("b", 1000.0, "eve")), AIMessage("ok")]
    )
    g = build_agent(model, tools, policy(), checkpointer=db)
    g.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    assert bank.total() <= 1500, bank.sent


# -- asked calls: rejected, expired, edited --------------------------------------------------------


def test_an_expired_request_gives_its_use_back(db: Any) -> None:
    import time

    from handrail import Inbox

    bank = Bank()
    pol = policy(
        SPEND_ASK.replace("approvers: [treasurer]", "approvers: [treasurer], expires_in: 1s")
    )
    g = graph(
        db,
        bank,
        pol,
        turn(pay("a", 1000.0)),
        turn(pay("b", 1000.0, "eve")),
        turn(pay("c", 400.0, "carol")),
    )
    result = g.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    assert result["__interrupt__"]
    assert uses_of(db) == [("a", "spend", 1000.0), ("b", "spend", 1000.0)]
    time.sleep(1.2)
    inbox = Inbox(db, graph=g)
    try:
        assert [p.tool_call_id for p in inbox.expire()] == ["b"]
    finally:
        inbox.close()
    assert bank.sent == [("bob", 1000.0), ("carol", 400.0)]
    assert uses_of(db) == [("a", "spend", 1000.0), ("c", "spend", 400.0)]


def test_an_edit_past_a_deny_limit_is_denied_and_holds_nothing(db: Any) -> None:
    bank = Bank()
    g = graph(db, bank, policy(), turn(pay("a", 6000.0)))
    pol = policy(SPEND_DENY.replace("1500", "7000"))
    g = graph(db, bank, pol, turn(pay("a", 6000.0)))
    result = g.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    assert result["__interrupt__"]
    edit = {
        "type": "edit",
        "edited_action": {"name": "transfer_funds", "args": {"to": "bob", "amount": 9000.0}},
    }
    result = g.invoke(resume(edit), config(), context=CTX)
    assert bank.sent == []
    assert "limit 'spend'" in tool_texts(result)[0]
    assert uses_of(db) == []


def test_an_edit_to_less_reserves_the_new_amount(db: Any) -> None:
    bank = Bank()
    g = graph(db, bank, policy(SPEND_DENY.replace("1500", "7000")), turn(pay("a", 6000.0)))
    g.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    edit = {
        "type": "edit",
        "edited_action": {"name": "transfer_funds", "args": {"to": "bob", "amount": 5500.0}},
    }
    g.invoke(resume(edit), config(), context=CTX)
    assert bank.sent == [("bob", 5500.0)]
    assert uses_of(db) == [("a", "spend", 5500.0)]


def test_an_edit_by_an_approver_the_limit_does_not_name_is_asked_of_the_limits(db: Any) -> None:
    bank = Bank()
    cfo = SPEND_ASK.replace("approvers: [treasurer]", "approvers: [cfo]").replace("1500", "7000")
    g = graph(db, bank, policy(cfo), turn(pay("a", 6000.0)))
    g.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    edit = {
        "type": "edit",
        "edited_action": {"name": "transfer_funds", "args": {"to": "bob", "amount": 5000.0 + 4000}},
    }
    result = g.invoke(resume(edit), config(), context=CTX)
    # 9,000 needs the rule's treasurer and the limit's cfo: no approver is both, so it is denied.
    assert bank.sent == []
    assert "__interrupt__" not in result
    assert uses_of(db) == []


# -- several limits, wildcards ---------------------------------------------------------------------

TWO = """
limits:
  - {id: count, tools: [transfer_funds], per: thread, window: 1h, max: 1, then: deny}
  - {id: spend, tools: [transfer_funds], per: actor, window: 24h, sum: args.amount, max: 1500,
     then: ask, approvers: [treasurer]}
"""


def test_a_call_denied_by_one_limit_holds_no_use_of_another(db: Any) -> None:
    bank = Bank()
    g = graph(db, bank, policy(TWO), turn(pay("a", 100.0)), turn(pay("b", 100.0, "eve")))
    g.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    assert bank.sent == [("bob", 100.0)]
    assert uses_of(db) == [("a", "count", 1.0), ("a", "spend", 100.0)]


def test_a_wildcard_limit_counts_every_tool(db: Any) -> None:
    every = """
    limits:
      - {id: calls, tools: ["*"], per: thread, window: 1h, max: 2, then: deny}
    """
    bank = Bank()
    read = {"name": "get_balance", "args": {"account": "x"}, "id": "r", "type": "tool_call"}
    g = graph(db, bank, policy(every), turn(read, pay("a", 1.0)), turn(pay("b", 1.0, "eve")))
    result = g.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    assert bank.sent == [("bob", 1.0)]
    assert "limit 'calls'" in tool_texts(result)[-1]


# -- a policy change while a call waits ------------------------------------------------------------


def test_a_lower_max_in_a_new_policy_applies_to_a_call_decided_under_the_old_one(
    db: Any,
) -> None:
    bank = Bank()
    old = policy(SPEND_DENY.replace("1500", "10000"))
    g = graph(db, bank, old, turn(pay("a", 800.0), pay("b", 6000.0, "eve")))
    result = g.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    assert result["__interrupt__"] and bank.sent == []
    new = policy(SPEND_DENY.replace("1500", "500"))  # a treasurer tightens the limit
    g2 = graph(db, bank, new, turn(pay("a", 800.0), pay("b", 6000.0, "eve")))
    g2.invoke(resume({"type": "approve"}), config(), context=CTX)
    assert bank.total() <= 500, bank.sent


# -- HandrailMiddleware ----------------------------------------------------------------------------


def middleware_agent(db: Any, bank: Bank, pol: Policy, *turns: AIMessage) -> Any:
    from langchain.agents import create_agent

    from handrail import RunContext
    from handrail.integrations import HandrailMiddleware
    from handrail.storage.checkpointer import open_checkpointer

    saver = open_checkpointer(db)
    tools = bank.tools()
    handrail = HandrailMiddleware(policy=pol, db=db, tools=tools)
    agent = create_agent(
        ScriptedChatModel([*turns, AIMessage("done")]),
        tools,
        middleware=[handrail],
        checkpointer=saver,
        context_schema=RunContext,
    )
    return handrail.guard(agent)


@pytest.mark.backends("sqlite")
def test_middleware_parallel_calls_past_a_deny_limit_run_one(db: Any) -> None:
    bank = Bank()
    g = middleware_agent(db, bank, policy(), turn(pay("a", 800.0), pay("b", 800.0, "eve")))
    g.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    assert bank.sent == [("bob", 800.0)]
    assert uses_of(db) == [("a", "spend", 800.0)]


@pytest.mark.backends("sqlite")
@pytest.mark.parametrize("again", ["invalid", "denied"])
def test_middleware_a_reused_call_id_never_frees_a_call_that_ran(db: Any, again: str) -> None:
    bank = Bank()
    second = pay("a", "lots") if again == "invalid" else pay("a", 900.0, "mallory")
    if again == "denied":
        second["args"]["amount"] = 1_000_000.0
    g = middleware_agent(
        db, bank, policy(), turn(pay("a", 900.0)), turn(second), turn(pay("c", 900.0, "eve"))
    )
    g.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    assert bank.total() <= 1500, bank.sent


# -- build_tool_gate -------------------------------------------------------------------------------


def gate_graph(db: Any, bank: Bank, pol: Policy, *turns: AIMessage) -> Any:
    from langgraph.graph import START, StateGraph
    from langgraph.prebuilt import tools_condition

    from handrail import RunContext, ToolGateState, build_tool_gate
    from handrail.graph import open_checkpointer

    saver = open_checkpointer(db)
    model = ScriptedChatModel([*turns, AIMessage("done")])
    gate = build_tool_gate(bank.tools(), pol, db=saver)
    builder = StateGraph(ToolGateState, context_schema=RunContext)
    builder.add_node("agent", lambda s: {"messages": [model.invoke(s["messages"])]})
    builder.add_node("tools", gate)
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    return gate.guard(builder.compile(checkpointer=saver))


def test_tool_gate_parallel_calls_past_a_deny_limit_run_one(db: Any) -> None:
    bank = Bank()
    g = gate_graph(db, bank, policy(), turn(pay("a", 800.0), pay("b", 800.0, "eve")))
    g.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    assert bank.sent == [("bob", 800.0)]
    assert uses_of(db) == [("a", "spend", 800.0)]


@pytest.mark.parametrize("again", ["invalid", "denied"])
def test_tool_gate_a_reused_call_id_never_frees_a_call_that_ran(db: Any, again: str) -> None:
    bank = Bank()
    second = pay("a", "lots") if again == "invalid" else pay("a", 1_000_000.0, "mallory")
    g = gate_graph(
        db, bank, policy(), turn(pay("a", 900.0)), turn(second), turn(pay("c", 900.0, "eve"))
    )
    g.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    assert bank.total() <= 1500, bank.sent


def test_agent_a_reused_call_id_never_frees_a_call_that_ran(db: Any) -> None:
    bank = Bank()
    g = graph(
        db,
        bank,
        policy(),
        turn(pay("a", 900.0)),
        turn(pay("a", "lots")),
        turn(pay("a", 1_000_000.0)),
        turn(pay("c", 900.0, "eve")),
    )
    g.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    assert bank.sent == [("bob", 900.0)]
    assert uses_of(db) == [("a", "spend", 900.0)]


# -- forged state ----------------------------------------------------------------------------------


def then_pay(db: Any, bank: Bank, pol: Policy, call: dict[str, Any]) -> None:
    """A new user message in thread t-1 whose model turn makes ``call`` (the scripted model picks
    its answer by the number of AI messages so far)."""
    g = graph(db, bank, pol)
    n = sum(isinstance(m, AIMessage) for m in g.get_state(config()).values["messages"])
    g = graph(db, bank, pol, *[AIMessage("ok")] * n, turn(call))
    g.invoke({"messages": [("user", "pay")]}, config(), context=CTX)


def test_a_forged_record_never_shrinks_the_use_of_a_call_that_ran(db: Any) -> None:
    bank = Bank()
    pol = policy()
    g = graph(db, bank, pol, turn(pay("a", 900.0)), AIMessage("paid"), AIMessage("paid"))
    g.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    done = g.get_state(config()).values["calls"]["a"]
    forged = done.update(status="checked", args={"to": "mallory", "amount": 600.0}, result=None)
    again = {"messages": [turn(pay("a", 600.0, "mallory"))], "calls": {"a": forged}}
    g.invoke(Command(update=again, goto="execute"), config(), context=CTX)
    assert bank.sent == [("bob", 900.0)]  # the ledger held: nothing ran twice
    then_pay(db, bank, pol, pay("c", 900.0, "eve"))
    assert bank.total() <= 1500, bank.sent


def test_a_forged_approval_of_a_call_past_a_limit_runs_nothing(db: Any) -> None:
    bank = Bank()
    g = graph(db, bank, policy(SPEND_ASK), turn(pay("a", 1000.0)), turn(pay("b", 1000.0, "eve")))
    result = g.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    assert result["__interrupt__"]
    asked = g.get_state(config()).values["calls"]["b"]
    forged = asked.update(status="approved", approver="alice")
    g.invoke(Command(update={"calls": {"b": forged}}, goto="execute"), config(), context=CTX)
    assert bank.sent == [("bob", 1000.0)]


# -- amounts ---------------------------------------------------------------------------------------

SPEND = policy(SPEND_ASK).limits[0]


def claim(amount: Any) -> list[Claim]:
    return [Claim(SPEND, "actor:agent-123", amount)]


SCOPE = [(SPEND, "actor:agent-123")]


@pytest.mark.parametrize(
    ("amount", "why"),
    [
        (-1.0, "not 0 or more"),
        (float("nan"), "not 0 or more"),
        ("800", "not a number"),
        (True, "not a number"),
        (None, "not a number"),
    ],
)
def test_a_sum_that_is_no_non_negative_number_is_unmeasurable(amount: Any, why: str) -> None:
    assert why in str(SPEND.measure({"amount": amount}).error)


def test_a_bool_or_str_amount_reaches_the_limit_as_the_tools_schema_makes_it(db: Any) -> None:
    bank = Bank()
    g = graph(
        db,
        bank,
        policy(),
        turn(pay("a", "900")),
        turn(pay("b", True, "eve")),
        turn(pay("c", 700, "carol")),
    )
    g.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    assert bank.sent == [("bob", 900.0), ("eve", 1.0)]
    assert uses_of(db) == [("a", "spend", 900.0), ("b", "spend", 1.0)]


def test_an_infinite_amount_is_refused_before_it_is_reserved(db: Any) -> None:
    bank = Bank()
    g = graph(db, bank, policy(SPEND_ASK), turn(pay("a", float("inf"))))
    result = g.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    assert "__interrupt__" not in result, "an amount of inf was asked about, as a number"
    assert "limit 'spend' cannot measure" in tool_texts(result)[0]
    assert uses_of(db) == []


def test_an_infinite_or_negative_use_is_refused_by_the_store_itself() -> None:
    """Beyond `Limit.measure`: the store takes no amount a running total cannot add and take
    off again (inf - inf is NaN)."""
    for bad in (float("inf"), float("-inf"), float("nan"), -1.0, 10**400):
        with pytest.raises(ValueError, match="finite number >= 0"):
            claim(bad)


def huge_amount_run(db: Any) -> dict[str, Any]:
    @tool
    def transfer_funds(to: str, amount: int) -> str:
        """Send money."""
        return "sent"

    model = ScriptedChatModel([turn(pay("a", 10**19)), AIMessage("ok")])
    g = build_agent(model, [transfer_funds], policy(SPEND_ASK), checkpointer=db)
    result: dict[str, Any] = g.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    return result


@pytest.mark.backends("sqlite")
def test_a_huge_integer_amount_is_asked_about_not_a_crash_on_sqlite(db: Any) -> None:
    assert huge_amount_run(db)["__interrupt__"]


@pytest.mark.backends("postgresql")
def test_a_huge_integer_amount_is_asked_about_on_postgresql(db: Any) -> None:
    assert huge_amount_run(db)["__interrupt__"]


def test_rejecting_an_infinite_transfer_leaves_the_limit_working(db: Any) -> None:
    bank = Bank()
    pol = policy(SPEND_ASK)
    g = graph(
        db,
        bank,
        pol,
        turn(pay("a", float("inf"))),
        turn(pay("b", 1400.0, "eve")),
        turn(pay("c", 1400.0, "carol")),
    )
    result = g.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    assert result["__interrupt__"]
    g.invoke(resume({"type": "reject", "message": "no"}), config(), context=CTX)
    assert bank.total() <= 1500, bank.sent


def test_decimal_amounts_that_reach_the_max_exactly_are_not_past_it(stores: Stores) -> None:
    cap = Policy.from_yaml(
        "limits: [{id: cents, tools: [t], per: global, window: 1h, sum: args.amount, max: 0.3, "
        "then: deny}]"
    ).limits[0]
    for uses in stores:
        verdicts = [
            uses.reserve("t", f"c{i}", [Claim(cap, "*", 0.1)], NOW)[0].over for i in range(3)
        ]
        assert verdicts == [False, False, False], type(uses).__name__


# -- running totals against the uses they count ----------------------------------------------------


Stores = tuple[LimitTable, MemoryUses]


@pytest.fixture
def stores(db: Any) -> Iterator[Stores]:
    """The table on the test's database and the memory store, to run one story on each."""
    table = LimitTable(db)
    yield table, MemoryUses()
    table.close()


def test_a_use_exactly_one_window_old_no_longer_counts_in_either_store(
    stores: tuple[LimitTable, MemoryUses],
) -> None:
    for uses in stores:
        uses.reserve("t", "c1", claim(1000.0), NOW)
        edge = NOW + timedelta(hours=24)
        assert uses.totals(SCOPE, edge - timedelta(microseconds=1)) == {"spend": 1000.0}
        assert uses.totals(SCOPE, edge) == {"spend": 0.0}
        (use,) = uses.reserve("t", "c2", claim(1500.0), edge)
        assert (use.total, use.over) == (0.0, False)


def test_a_clock_behind_another_processes_still_counts_every_use_in_its_window(
    stores: tuple[LimitTable, MemoryUses],
) -> None:
    for uses in stores:
        uses.reserve("t", "c1", claim(1000.0), NOW)
        uses.reserve("t", "c2", claim(100.0), NOW + timedelta(hours=24, minutes=5))
        # Another process, its clock 10 minutes behind: c1 is still in its window.
        behind = NOW + timedelta(hours=23, minutes=55)
        assert uses.totals(SCOPE, behind) == {"spend": 1100.0}, type(uses).__name__
        (use,) = uses.reserve("t", "c3", claim(500.0), behind)
        assert use.over, type(uses).__name__


def test_a_use_from_a_clock_far_behind_is_taken_off_when_released(
    stores: tuple[LimitTable, MemoryUses],
) -> None:
    for uses in stores:
        uses.reserve("t", "c1", claim(10.0), NOW + timedelta(days=3))
        uses.reserve("t", "c2", claim(1000.0), NOW)  # a process whose clock is 3 days behind
        uses.release("t", "c2")
        assert uses.totals(SCOPE, NOW + timedelta(days=3)) == {"spend": 10.0}, type(uses)


def test_a_shorter_then_longer_window_counts_what_each_covers(stores: Stores) -> None:
    hour = Policy.from_yaml(
        "limits: [{id: spend, tools: [t], per: actor, window: 1h, sum: args.amount, max: 1500, "
        "then: deny}]"
    ).limits[0]
    for uses in stores:
        uses.reserve("t", "c1", claim(1000.0), NOW)
        short = [(hour, "actor:agent-123")]
        assert uses.totals(short, NOW + timedelta(hours=2)) == {"spend": 0.0}
        (use,) = uses.reserve(
            "t", "c2", [Claim(hour, "actor:agent-123", 100.0)], NOW + timedelta(hours=2)
        )
        assert use.total == 0.0
        assert uses.totals(SCOPE, NOW + timedelta(hours=3)) == {"spend": 1100.0}
        (use,) = uses.reserve("t", "c3", claim(500.0), NOW + timedelta(hours=3))
        assert (use.total, use.over) == (1100.0, True)


# -- scopes ----------------------------------------------------------------------------------------


def actor_limit_run(db: Any, ids: list[str], directory: Any = None) -> Bank:
    from handrail import Actor, RunContext

    bank = Bank()
    for i, who in enumerate(ids):
        model = ScriptedChatModel([turn(pay(f"p{i}", 900.0, f"to{i}")), AIMessage("ok")])
        g = build_agent(model, bank.tools(), policy(), checkpointer=db, directory=directory)
        ctx = RunContext(actor=Actor(id=who, roles=("ai-agent",)))
        g.invoke({"messages": [("user", "pay")]}, config(f"t-{i}"), context=ctx)
    return bank


@pytest.mark.parametrize("other", ["AGENT-123", "\uff41\uff47\uff45\uff4e\uff54-123"])
def test_look_alike_actor_ids_share_one_budget_without_a_directory(db: Any, other: str) -> None:
    bank = actor_limit_run(db, ["agent-123", other])
    assert bank.total() <= 1500, bank.sent


@pytest.mark.backends("sqlite")
def test_look_alike_actor_ids_share_one_budget_with_a_directory(db: Any) -> None:
    from handrail import Directory

    people = Directory.from_mapping({"agent-123": ["ai-agent"]})
    bank = actor_limit_run(db, ["agent-123", "AGENT-123"], people)
    assert bank.total() <= 1500, bank.sent


# -- uses of calls that will never run -------------------------------------------------------------


@pytest.mark.xfail(
    strict=True,
    reason="a new message to a thread whose turn waits abandons the turn: neither the allowed "
    "call (reserved by the router) nor the asked one ever runs, yet both keep their uses until "
    "the window ends (nothing releases on a superseded turn; nodes/_limits.py hear only hears "
    "decided/approval_decided/expired/failed events)",
)
def test_a_turn_abandoned_by_a_new_message_gives_its_uses_back(db: Any) -> None:
    bank = Bank()
    pol = policy(SPEND_DENY.replace("1500", "10000"))
    g = graph(db, bank, pol, turn(pay("a", 800.0), pay("b", 6000.0, "eve")), AIMessage("fine"))
    assert g.invoke({"messages": [("user", "pay")]}, config(), context=CTX)["__interrupt__"]
    g.invoke({"messages": [("user", "never mind")]}, config(), context=CTX)
    assert bank.sent == []
    assert uses_of(db) == []


# -- explain ---------------------------------------------------------------------------------------

PER_THREAD = """
version: 1
default: deny
rules:
  - {id: reads, tools: [get_balance], effect: allow}
limits:
  - {id: reads-per-thread, tools: [get_balance], per: thread, window: 1h, max: 1, then: deny}
"""


def test_explain_without_a_thread_does_not_claim_a_per_thread_total(
    db: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from handrail.cli import main

    pol = Policy.from_yaml(PER_THREAD)
    read = {"name": "get_balance", "args": {"account": "x"}, "id": "r", "type": "tool_call"}
    graph(db, Bank(), pol, turn(read)).invoke(
        {"messages": [("user", "look")]}, config(), context=CTX
    )
    path = tmp_path / "p.yaml"
    path.write_text(PER_THREAD)
    argv = [
        "policy",
        "explain",
        str(path),
        "--tool",
        "get_balance",
        "--args",
        '{"account": "x"}',
        "--actor",
        "agent-123",
        "--db",
        str(db),
    ]
    assert main([*argv, "--thread", "t-1"]) == 0
    assert "decision: deny" in capsys.readouterr().out
    assert main(argv) == 0
    shown = capsys.readouterr().out
    assert "to 1 of 1" not in shown and "--thread" in shown, shown


@pytest.mark.backends("sqlite")
def test_middleware_a_call_another_middleware_blocked_gives_its_use_back(db: Any) -> None:
    from langchain.agents import create_agent
    from langchain.agents.middleware import ToolCallLimitMiddleware

    from handrail import RunContext
    from handrail.integrations import HandrailMiddleware
    from handrail.storage.checkpointer import open_checkpointer

    bank = Bank()
    tools = bank.tools()
    handrail = HandrailMiddleware(policy=policy(), db=db, tools=tools)
    agent = create_agent(
        ScriptedChatModel([turn(pay("a", 500.0), pay("b", 500.0, "eve")), AIMessage("done")]),
        tools,
        middleware=[handrail, ToolCallLimitMiddleware(run_limit=1)],
        checkpointer=open_checkpointer(db),
        context_schema=RunContext,
    )
    handrail.guard(agent).invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    assert bank.sent == [("bob", 500.0)]
    assert uses_of(db) == [("a", "spend", 500.0)]


# -- other runs ---------------------------------------------------------------------------------


@pytest.mark.backends("sqlite")
def test_async_parallel_calls_past_a_deny_limit_run_one(db: Any) -> None:
    import asyncio

    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    async def main() -> None:
        async with AsyncSqliteSaver.from_conn_string(str(db)) as saver:
            bank = Bank()
            model = ScriptedChatModel(
                [turn(pay("a", 800.0), pay("b", 800.0, "eve")), AIMessage("ok")]
            )
            g = build_agent(model, bank.tools(), policy(), checkpointer=saver, db=db)
            await g.ainvoke({"messages": [("user", "pay")]}, config(), context=CTX)
            assert bank.sent == [("bob", 800.0)]

    asyncio.run(main())
    assert uses_of(db) == [("a", "spend", 800.0)]


def test_in_memory_uses_hold_the_limit_across_turns_of_one_graph() -> None:
    from langgraph.checkpoint.memory import InMemorySaver

    bank = Bank()
    model = ScriptedChatModel(
        [turn(pay("a", 800.0), pay("b", 800.0, "eve")), turn(pay("c", 700.0)), AIMessage("ok")]
    )
    g = build_agent(model, bank.tools(), policy(), checkpointer=InMemorySaver())
    g.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    assert bank.sent == [("bob", 800.0), ("bob", 700.0)]
