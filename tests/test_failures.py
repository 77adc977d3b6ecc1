"""Failures handled with state: classification, bounded retries, escalation, the ledger, breakers.

Every test runs a real graph on a real SQLite file; the tools fail the way APIs do (typed errors,
or real ``httpx`` responses served by httpx's own transport).
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import InjectedToolArg, tool
from langgraph.types import Command
from support import AGENT, CTX, agent, call, config, per_call, turn

from handrail import Actor, Inbox, Policy, build_agent
from handrail.cli import main
from handrail.errors import ApproverNotAuthorized, ResumeError, SelfApproval
from handrail.graph import HandrailGraph
from handrail.storage.ledger import Ledger
from handrail.testing import ScriptedChatModel
from handrail.tools import (
    BadRequest,
    CircuitBreaker,
    Forbidden,
    RateLimited,
    ServerError,
    TransientError,
)

pytestmark = pytest.mark.backends("sqlite", "postgresql")

OPS = Actor(id="ops-1", roles=("operator",))


def fetch_policy(**settings: Any) -> Policy:
    """Allow ``fetch`` for everyone, with the given tool settings."""
    return Policy.from_data(
        {
            "rules": [{"id": "r", "tools": ["fetch"], "effect": "allow"}],
            "tools": {"fetch": settings},
        }
    )


def failing(*failures: BaseException | None, log: list[dict[str, Any]] | None = None) -> Any:
    """A ``fetch`` tool that raises ``failures`` in turn (None: succeed), then succeeds."""
    script = list(failures)
    calls = log if log is not None else []

    @tool
    def fetch(q: str) -> str:
        """Fetch a resource."""
        calls.append({"q": q, "at": time.monotonic()})
        failure = script.pop(0) if script else None
        if failure is not None:
            raise failure
        return f"data for {q}"

    return fetch


def last_tool_message(result: dict[str, Any]) -> ToolMessage:
    return [m for m in result["messages"] if isinstance(m, ToolMessage)][-1]


def handrail_info(result: dict[str, Any]) -> dict[str, Any]:
    (pending,) = result["__interrupt__"]
    info: dict[str, Any] = pending.value["handrail"]
    return info


def run(db: Path, fetch: Any, policy: Policy, thread: str = "t-1") -> dict[str, Any]:
    graph = agent(db, [fetch], policy, turn(call("fetch", q="x")))
    result: dict[str, Any] = graph.invoke(
        {"messages": [("user", "go")]}, config(thread), context=CTX
    )
    return result


# -- 429: wait for Retry-After (capped), retry, bounded -------------------------------------------


def test_429_twice_then_success_honours_retry_after(db: Path) -> None:
    log: list[dict[str, Any]] = []
    fetch = failing(
        RateLimited("slow down", retry_after=0.05),
        RateLimited("slow down", retry_after=0.05),
        log=log,
    )
    result = run(db, fetch, fetch_policy(max_retries=3))
    record = result["calls"]["call_0_0"]
    assert (record.status, record.retry_count, record.last_wait, len(log)) == (
        "succeeded",
        2,
        0.05,
        3,
    )
    gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(log)]
    assert all(gap >= 0.05 for gap in gaps)
    assert last_tool_message(result).text == "data for x"


def test_a_long_retry_after_is_capped_by_max_wait(db: Path) -> None:
    log: list[dict[str, Any]] = []
    fetch = failing(RateLimited("come back in an hour", retry_after=3600), log=log)
    started = time.monotonic()
    result = run(db, fetch, fetch_policy(max_wait="50ms"))
    assert time.monotonic() - started < 5
    record = result["calls"]["call_0_0"]
    assert (record.status, record.retry_count, record.last_wait) == ("succeeded", 1, 0.05)
    assert log[1]["at"] - log[0]["at"] >= 0.05


def test_http_429s_from_a_real_httpx_client_are_retried(db: Path) -> None:
    answers = iter(
        [
            httpx.Response(429, headers={"Retry-After": "0"}),
            httpx.Response(429, headers={"Retry-After": "0"}),
            httpx.Response(200, json={"balance": 12}),
        ]
    )
    client = httpx.Client(
        transport=httpx.MockTransport(lambda request: next(answers)),
        base_url="https://bank.example",
    )

    @tool
    def fetch(q: str) -> str:
        """Fetch a resource over HTTP."""
        response = client.get(f"/balance/{q}")
        response.raise_for_status()
        return response.text

    result = run(db, fetch, fetch_policy())
    record = result["calls"]["call_0_0"]
    assert (record.status, record.retry_count, record.last_wait) == ("succeeded", 2, 0.0)
    assert last_tool_message(result).text == '{"balance":12}'


def test_retries_spent_escalate_and_never_exceed_max_retries(db: Path) -> None:
    log: list[dict[str, Any]] = []
    fetch = failing(*[RateLimited("slow down", retry_after=0)] * 10, log=log)
    result = run(db, fetch, fetch_policy(max_retries=2))
    assert len(log) == 3  # the first attempt and max_retries retries, no more
    record = result["calls"]["call_0_0"]
    assert (record.status, record.retry_count) == ("escalated", 2)
    info = handrail_info(result)
    assert info["kind"] == "escalation"
    assert per_call(info, "attempts") == [3]
    assert per_call(info, "error")[0]["kind"] == "rate_limited"
    assert per_call(info, "approvers") == [["operator"]]
    assert "retries spent" in result["__interrupt__"][0].value["action_requests"][0]["description"]


# -- transient: jittered exponential backoff, capped ---------------------------------------------


def test_transient_failures_back_off_exponentially_with_jitter_and_a_cap(db: Path) -> None:
    log: list[dict[str, Any]] = []
    fetch = failing(*[TransientError("connection reset")] * 3, log=log)
    graph = agent(
        db, [fetch], fetch_policy(backoff="20ms", max_wait="50ms"), turn(call("fetch", q="x"))
    )
    waits = []
    for chunk in graph.stream(
        {"messages": [("user", "go")]}, config(), context=CTX, stream_mode="updates"
    ):
        update = chunk.get("classify_error")
        if update:
            waits.extend(r.last_wait for r in update["calls"].values())
    # retry n waits min(20ms * 2**n, 50ms) scaled by a jitter in [0.5, 1]
    for n, wait in enumerate(waits):
        ceiling = min(0.02 * 2**n, 0.05)
        assert ceiling / 2 <= wait <= ceiling, (n, wait)
    assert len(waits) == 3
    gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(log)]
    assert all(gap >= wait for gap, wait in zip(gaps, waits, strict=True))
    assert graph.get_state(config()).values["calls"]["call_0_0"].status == "succeeded"


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    max_retries=st.integers(min_value=0, max_value=3),
    script=st.lists(
        st.sampled_from(["rate_limited", "transient", "ok", "bad_request", "server_error"]),
        min_size=1,
        max_size=6,
    ),
)
def test_attempts_are_bounded_whatever_the_failures(
    tmp_path_factory: pytest.TempPathFactory, max_retries: int, script: list[str]
) -> None:
    errors = {
        "rate_limited": RateLimited("429", retry_after=0),
        "transient": TransientError("reset"),
        "bad_request": BadRequest("no such account"),
        "server_error": ServerError("boom"),
        "ok": None,
    }
    log: list[dict[str, Any]] = []
    fetch = failing(*[errors[s] for s in script], log=log)
    db = tmp_path_factory.mktemp("bounded") / "h.db"
    result = run(db, fetch, fetch_policy(max_retries=max_retries, backoff=0, max_wait=0))
    record = result["calls"]["call_0_0"]
    assert len(log) <= max_retries + 1
    assert record.retry_count == len(log) - 1 <= max_retries
    # the first non-retryable outcome decides where the call ends
    outcomes = [*script, "ok"][: len(log)]  # once its script runs out, the tool succeeds
    first = next((s for s in outcomes if s not in ("rate_limited", "transient")), None)
    if first == "ok":
        assert record.status == "succeeded"
    elif first == "bad_request":
        assert (record.status, record.last_action) == ("failed", "failure")
    else:  # a 500, or retryable failures until the retries ran out
        assert record.status == "escalated" and "__interrupt__" in result


# -- back to the model ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failure", "said"),
    [
        (BadRequest("amount must be positive", status_code=422), "bad_request"),
        (Forbidden("token expired", status_code=401), "retrying will not help"),
    ],
)
def test_4xx_goes_back_to_the_model_without_retry(db: Path, failure: Exception, said: str) -> None:
    log: list[dict[str, Any]] = []
    result = run(db, failing(failure, log=log), fetch_policy())
    assert len(log) == 1
    message = last_tool_message(result)
    assert message.status == "error" and said in message.text and str(failure) in message.text
    assert "__interrupt__" not in result
    assert result["messages"][-1].text == "ok"  # the model heard it and answered


# -- escalation: retry / skip / abort -------------------------------------------------------------


def test_a_500_escalates_and_retry_runs_the_call_again(db: Path) -> None:
    log: list[dict[str, Any]] = []
    fetch = failing(ServerError("internal error"), log=log)
    graph = agent(db, [fetch], fetch_policy(), turn(call("fetch", q="x")))
    result = graph.invoke({"messages": [("user", "go")]}, config(), context=CTX)
    info = handrail_info(result)
    assert (
        info["kind"],
        per_call(info, "error")[0]["kind"],
        per_call(info, "error")[0]["status_code"],
    ) == (
        "escalation",
        "server_error",
        500,
    )
    # LangChain's HITL part offers the stock decisions that stand for retry and skip
    assert result["__interrupt__"][0].value["review_configs"][0]["allowed_decisions"] == [
        "approve",
        "reject",
    ]
    assert per_call(info, "allowed_decisions") == [["retry", "skip", "abort"]]
    assert len(log) == 1
    resume = {"decisions": [{"type": "retry"}], "approver": OPS.as_dict()}
    result = graph.invoke(Command(resume=resume), config(), context=CTX)
    assert len(log) == 2
    record = result["calls"]["call_0_0"]
    assert (record.status, record.retry_count, record.approver) == ("succeeded", 1, "ops-1")
    assert last_tool_message(result).text == "data for x"
    assert result["messages"][-1].text == "ok"


def test_skip_tells_the_model_and_the_run_goes_on(db: Path) -> None:
    log: list[dict[str, Any]] = []
    graph = agent(
        db, [failing(ServerError("down"), log=log)], fetch_policy(), turn(call("fetch", q="x"))
    )
    graph.invoke({"messages": [("user", "go")]}, config(), context=CTX)
    inbox = Inbox(db, graph=graph)
    (item,) = inbox.pending(kind="escalation")
    assert (item.tool, item.attempts, item.error.kind if item.error else None) == (
        "fetch",
        1,
        "server_error",
    )
    result = inbox.skip("t-1", "the provider is down today", approver=OPS)
    assert len(log) == 1
    message = last_tool_message(result)
    assert message.status == "error"
    assert "Skipped by ops-1: the provider is down today" in message.text
    assert result["calls"]["call_0_0"].status == "failed"
    assert result["messages"][-1].text == "ok"
    assert inbox.pending() == []


def test_abort_ends_the_run_with_every_call_answered(db: Path) -> None:
    log: list[dict[str, Any]] = []
    graph = agent(
        db, [failing(ServerError("down"), log=log)], fetch_policy(), turn(call("fetch", q="x"))
    )
    graph.invoke({"messages": [("user", "go")]}, config(), context=CTX)
    result = Inbox(db, graph=graph).abort("t-1", "stop everything", approver=OPS)
    snapshot = graph.get_state(config())
    assert snapshot.next == () and not snapshot.interrupts
    last = result["messages"][-1]
    assert isinstance(last, ToolMessage) and last.text.startswith("Aborted; the run was stopped")
    assert result["calls"]["call_0_0"].status == "failed"
    assert len(log) == 1
    # the conversation stays valid: a new user turn can go on from here
    assert all(
        m.tool_call_id in result["calls"] for m in result["messages"] if isinstance(m, ToolMessage)
    )


def test_unknown_exceptions_escalate(db: Path) -> None:
    result = run(db, failing(KeyError("balance")), fetch_policy())
    info = handrail_info(result)
    assert (info["kind"], per_call(info, "error")[0]["kind"]) == ("escalation", "unknown")
    assert "KeyError" in per_call(info, "error")[0]["message"]


@pytest.mark.parametrize(
    ("resume", "error"),
    [
        (
            {"decisions": [{"type": "respond", "message": "x"}], "approver": OPS.as_dict()},
            ResumeError,
        ),
        (
            {"decisions": [{"type": "retry"}], "approver": {"id": "bob", "roles": ["treasurer"]}},
            ApproverNotAuthorized,
        ),
        (
            {"decisions": [{"type": "retry"}], "approver": {"id": AGENT.id, "roles": ["operator"]}},
            SelfApproval,
        ),
        ({"decisions": [{"type": "skip", "extra": 1}], "approver": OPS.as_dict()}, ResumeError),
    ],
)
def test_a_refused_escalation_decision_changes_nothing_and_the_next_valid_one_works(
    db: Path, resume: dict[str, Any], error: type[Exception]
) -> None:
    log: list[dict[str, Any]] = []
    graph = agent(
        db, [failing(ServerError("down"), log=log)], fetch_policy(), turn(call("fetch", q="x"))
    )
    graph.invoke({"messages": [("user", "go")]}, config(), context=CTX)
    before = graph.get_state(config())
    listed = Inbox(db).pending()
    with pytest.raises(error):
        graph.invoke(Command(resume=resume), config(), context=CTX)
    after = graph.get_state(config())
    assert after.config == before.config and after.values == before.values
    assert Inbox(db).pending() == listed
    result = graph.invoke(
        Command(resume={"decisions": [{"type": "retry"}], "approver": OPS.as_dict()}),
        config(),
        context=CTX,
    )
    assert result["calls"]["call_0_0"].status == "succeeded" and len(log) == 2


def test_escalations_are_decided_by_the_tools_escalate_to_roles(db: Path) -> None:
    policy = fetch_policy(escalate_to=["sre"])
    result = run(db, failing(ServerError("down")), policy)
    assert per_call(handrail_info(result), "approvers") == [["sre"]]
    graph = agent(db, [failing()], policy, turn(call("fetch", q="x")))
    with pytest.raises(ApproverNotAuthorized, match="sre"):
        Inbox(db, graph=graph).retry("t-1", approver=OPS)
    done = Inbox(db, graph=graph).retry("t-1", approver=Actor(id="sam", roles=("sre",)))
    assert done["calls"]["call_0_0"].status == "succeeded"


# -- the execution ledger -------------------------------------------------------------------------


def test_replaying_the_execute_step_uses_the_recorded_result(db: Path) -> None:
    """Time travel re-runs ``execute`` from its checkpoint: the ledger answers, not the tool."""
    log: list[dict[str, Any]] = []
    graph = agent(db, [failing(log=log)], fetch_policy(), turn(call("fetch", q="x")))
    graph.invoke({"messages": [("user", "go")]}, config(), context=CTX)
    assert len(log) == 1
    (before_execute,) = [s for s in graph.get_state_history(config()) if s.next == ("execute",)]
    replayed = graph.invoke(None, before_execute.config, context=CTX)
    assert len(log) == 1
    assert replayed["calls"]["call_0_0"].status == "succeeded"
    assert last_tool_message(replayed).text == "data for x"
    (row,) = Ledger(db).entries("t-1")
    assert (row["tool"], row["attempt"], row["outcome"], row["result"]) == (
        "fetch",
        0,
        "succeeded",
        "data for x",
    )


def test_an_idempotent_tool_skips_the_ledger_and_simply_runs_again(db: Path) -> None:
    log: list[dict[str, Any]] = []
    graph = agent(db, [failing(log=log)], fetch_policy(idempotent=True), turn(call("fetch", q="x")))
    graph.invoke({"messages": [("user", "go")]}, config(), context=CTX)
    (before_execute,) = [s for s in graph.get_state_history(config()) if s.next == ("execute",)]
    graph.invoke(None, before_execute.config, context=CTX)
    assert len(log) == 2
    assert Ledger(db).entries("t-1") == []


def test_each_retry_is_a_new_attempt_in_the_ledger(db: Path) -> None:
    log: list[dict[str, Any]] = []
    run(db, failing(RateLimited("429", retry_after=0), log=log), fetch_policy())
    (row,) = Ledger(db).entries("t-1")
    assert (row["attempt"], row["outcome"], len(log)) == (1, "succeeded", 2)


def test_tools_get_an_injected_idempotency_key_stable_across_attempts(db: Path) -> None:
    keys: list[str] = []

    @tool
    def fetch(q: str, idempotency_key: Annotated[str, InjectedToolArg]) -> str:
        """Fetch a resource (the key goes to the API, the model never sees it)."""
        keys.append(idempotency_key)
        if len(keys) == 1:
            raise RateLimited("429", retry_after=0)
        return "data"

    assert "idempotency_key" not in fetch.tool_call_schema.model_json_schema()["properties"]
    result = run(db, fetch, fetch_policy())
    record = result["calls"]["call_0_0"]
    assert record.status == "succeeded" and record.args == {"q": "x"}
    assert len(keys) == 2 and keys[0] == keys[1] and keys[0].startswith("hr-")
    other = run(db, fetch, fetch_policy(), thread="t-2")
    assert other["calls"]["call_0_0"].status == "succeeded" and keys[-1] != keys[0]


# -- the circuit breaker --------------------------------------------------------------------------


def test_a_tool_that_keeps_failing_opens_its_circuit_for_every_thread(db: Path) -> None:
    log: list[dict[str, Any]] = []
    fetch = failing(*[TransientError("503")] * 2, log=log)
    policy = fetch_policy(
        max_retries=5, backoff=0, circuit_breaker={"failures": 2, "cool_down": "300ms"}
    )
    breaker = CircuitBreaker()

    def build() -> HandrailGraph:
        model = ScriptedChatModel([turn(call("fetch", q="x")), AIMessage("ok")])
        return build_agent(model, [fetch], policy, checkpointer=db, circuit_breaker=breaker)

    result = build().invoke({"messages": [("user", "go")]}, config("t-1"), context=CTX)
    assert len(log) == 2  # two failures opened the circuit; the third attempt never called out
    message = last_tool_message(result)
    assert "circuit is open" in message.text and message.status == "error"
    assert result["calls"]["call_0_0"].error.kind == "circuit_open"
    # another thread, and another graph sharing the breaker, fail fast too
    other = build().invoke({"messages": [("user", "go")]}, config("t-2"), context=CTX)
    assert len(log) == 2 and other["calls"]["call_0_0"].error.kind == "circuit_open"
    time.sleep(0.35)
    later = build().invoke({"messages": [("user", "go")]}, config("t-3"), context=CTX)
    assert len(log) == 3 and later["calls"]["call_0_0"].status == "succeeded"
    assert breaker.state("fetch") == "closed"


# -- escalations in the CLI -----------------------------------------------------------------------

CLI_FAILURES: list[Exception] = []
"""What ``flaky`` raises next: shared by every graph the CLI builds in this process."""


@tool
def flaky(q: str) -> str:
    """Fetch a resource from a flaky API."""
    if CLI_FAILURES:
        raise CLI_FAILURES.pop(0)
    return f"data for {q}"


def cli_graph(db: str) -> HandrailGraph:
    """The factory the CLI loads with ``--graph test_failures:cli_graph``."""
    policy = Policy.from_data({"rules": [{"id": "r", "tools": ["flaky"], "effect": "allow"}]})
    return agent(db, [flaky], policy, turn(call("flaky", q="x")))


@pytest.mark.parametrize(
    ("verb", "status", "said"),
    [
        ("retry", "succeeded", "ended: ok"),
        ("skip", "failed", "ended: ok"),
        ("abort", "failed", "ended: Aborted; the run was stopped by ops-1"),
    ],
)
def test_escalations_are_listed_shown_and_decided_from_the_cli(
    db: Path, capsys: pytest.CaptureFixture[str], verb: str, status: str, said: str
) -> None:
    CLI_FAILURES[:] = [ServerError("upstream 500")]
    cli_graph(str(db)).invoke({"messages": [("user", "go")]}, config(), context=CTX)
    assert main(["pending", "--db", str(db), "--kind", "escalation", "--json"]) == 0
    (item,) = json.loads(capsys.readouterr().out)
    assert (item["kind"], item["tool"], item["attempts"], item["error"]["kind"]) == (
        "escalation",
        "flaky",
        1,
        "server_error",
    )
    assert main(["pending", "--db", str(db), "--kind", "approval", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["show", "t-1", "--db", str(db)]) == 0
    assert "ESCALATION: flaky call call_0_0 failed after 1 attempt(s)" in capsys.readouterr().out
    graph = ["--db", str(db), "--graph", "test_failures:cli_graph"]
    ops = ["--as", "ops-1", "--role", "operator"]
    assert main(["respond", "t-1", "--message", "x", *graph, *ops]) == 2
    assert "takes retry, skip, abort (or approve = retry" in capsys.readouterr().err
    assert main([verb, "t-1", *graph, *ops]) == 0
    assert said in capsys.readouterr().out
    state = cli_graph(str(db)).get_state(config())
    assert state.values["calls"]["call_0_0"].status == status
    assert Inbox(db).pending() == []


def test_an_approved_call_that_fails_escalates_on_the_same_inbox_row(db: Path) -> None:
    log: list[dict[str, Any]] = []
    policy = Policy.from_data(
        {
            "rules": [{"id": "ask", "tools": ["fetch"], "effect": "ask", "approvers": ["lead"]}],
            "tools": {"fetch": {"escalate_to": ["sre"]}},
        }
    )
    graph = agent(db, [failing(ServerError("down"), log=log)], policy, turn(call("fetch", q="x")))
    graph.invoke({"messages": [("user", "go")]}, config(), context=CTX)
    inbox = Inbox(db, graph=graph)
    (asked,) = inbox.pending()
    assert (asked.kind, asked.approvers) == ("approval", ("lead",))
    result = inbox.approve("t-1", approver=Actor(id="lee", roles=("lead",)))
    assert handrail_info(result)["kind"] == "escalation" and len(log) == 1
    (escalated,) = inbox.pending()
    assert (escalated.kind, escalated.tool_call_id, escalated.approvers) == (
        "escalation",
        "call_0_0",
        ("sre",),
    )
    assert not escalated.deciding  # the approver's claim ended with its run
    done = inbox.retry("t-1", approver=Actor(id="sam", roles=("sre",)))
    record = done["calls"]["call_0_0"]
    assert (record.status, record.approvals, record.approver, len(log)) == (
        "succeeded",
        ("lee",),
        "sam",
        2,
    )
    assert inbox.pending() == []


# -- regressions found in review ------------------------------------------------------------------


def test_a_replay_is_answered_by_the_ledger_even_while_the_circuit_is_open(db: Path) -> None:
    """A crash mid-call, then the circuit opens: the replay still says what the ledger knows."""
    paid: list[str] = []
    crash = [True]

    @tool
    def fetch(q: str) -> str:
        """Pay, then die (a process killed after the side effect)."""
        paid.append(q)
        if crash:
            crash.pop()
            raise SystemExit("killed")  # a BaseException: it tears through the graph like a kill
        return "paid"

    policy = fetch_policy(circuit_breaker={"failures": 1, "cool_down": "1h"})
    breaker = CircuitBreaker()
    model = ScriptedChatModel([turn(call("fetch", q="bob")), AIMessage("ok")])
    graph = build_agent(model, [fetch], policy, checkpointer=db, circuit_breaker=breaker)
    with pytest.raises(SystemExit):
        graph.invoke({"messages": [("user", "go")]}, config(), context=CTX)
    breaker.record("fetch", policy.settings("fetch").circuit_breaker, "server_error")
    assert breaker.state("fetch") == "open"
    result = graph.invoke(None, config(), context=CTX)
    info = handrail_info(result)
    assert (info["kind"], per_call(info, "error")[0]["kind"]) == ("escalation", "outcome_unknown")
    assert paid == ["bob"]


def test_escalations_of_several_calls_are_listed_and_decided_in_request_order(db: Path) -> None:
    policy = Policy.from_data(
        {
            "rules": [
                {"id": "read", "tools": ["fetch"], "effect": "allow"},
                {"id": "pay", "tools": ["pay"], "effect": "ask", "approvers": ["lead"]},
            ]
        }
    )

    @tool
    def pay(to: str) -> str:
        """Pay someone."""
        raise ServerError("down")

    model = ScriptedChatModel([turn(call("fetch", q="x"), call("pay", to="bob")), AIMessage("ok")])
    graph = build_agent(model, [failing(ServerError("down")), pay], policy, checkpointer=db)
    graph.invoke({"messages": [("user", "go")]}, config(), context=CTX)
    inbox = Inbox(db, graph=graph)
    result = inbox.approve("t-1", approver=Actor(id="lee", roles=("lead",)))
    assert handrail_info(result)["tool_call_ids"] == ["call_0_0", "call_0_1"]
    assert [p.tool_call_id for p in inbox.show("t-1")] == ["call_0_0", "call_0_1"]
    done = inbox.skip("t-1", approver=OPS)
    assert [done["calls"][c].status for c in ("call_0_0", "call_0_1")] == ["failed", "failed"]


def test_the_idempotency_key_is_injected_without_a_checkpointer_too() -> None:
    keys: list[str] = []

    @tool
    def fetch(q: str, idempotency_key: Annotated[str, InjectedToolArg]) -> str:
        """Fetch."""
        keys.append(idempotency_key)
        return "data"

    model = ScriptedChatModel([turn(call("fetch", q="x")), AIMessage("ok")])
    result = build_agent(model, [fetch], fetch_policy()).invoke(
        {"messages": [("user", "go")]}, context=CTX
    )
    assert result["calls"]["call_0_0"].status == "succeeded" and keys[0].startswith("hr-")
