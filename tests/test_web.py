"""The web inbox through starlette's TestClient (real SQLite files, real paused agents): sign-in,
CSRF, who sees what, pagination and order, decisions and refusals, and the live updates."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient
from support import approval_rows, table_rows
from web_support import (
    AUTH,
    GRAPH,
    SECRET,
    Bank,
    bearer,
    paused_agent,
    served,
    token,
)

from handrail import Actor, Inbox
from handrail.auth import Token
from handrail.graph import HandrailGraph
from handrail.web import create_app

TREASURER = bearer("alice", ["treasurer"])
ADMIN = bearer("root", ["admin"])
BIG = ("transfer_funds", {"to": "carol", "amount": 5000, "account_number": "DE89370400440532"})


def app_for(db: Path | str, graph: HandrailGraph, **kwargs: Any) -> TestClient:
    app = create_app(db, authenticator=AUTH, graphs={GRAPH: lambda _: graph}, **kwargs)
    return TestClient(app)


@pytest.fixture
def bank() -> Bank:
    return Bank()


@pytest.fixture
def one(tmp_path: Path, bank: Bank) -> Iterator[tuple[Path, TestClient]]:
    """One transfer of 5,000 waiting for a treasurer on thread t-0, and the app."""
    db = tmp_path / "handrail.db"
    graph = paused_agent(db, bank, [BIG])
    with app_for(db, graph) as client:
        yield db, client


def threads_listed(page: str) -> list[str]:
    return re.findall(r'<tr class="request" data-thread="([^"]+)"', page)


def form_value(page: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]+)"', page)
    assert found is not None, f"no {name} in the page"
    return found.group(1)


def sign_in(client: TestClient, sub: str, roles: list[str]) -> None:
    csrf = form_value(client.get("/inbox/login").text, "csrf")
    done = client.post(
        "/inbox/login", data={"csrf": csrf, "token": token(sub, roles)}, follow_redirects=False
    )
    assert done.status_code == 303, done.text


def decide(client: TestClient, thread: str, action: str, **fields: str) -> httpx.Response:
    """Post a decision from the thread's page, as its form would (CSRF token and what it saw)."""
    page = client.get(f"/inbox/threads/{thread}").text
    data = {"csrf": form_value(page, "csrf"), "seen": form_value(page, "seen"), "action": action}
    return client.post(f"/inbox/threads/{thread}", data={**data, **fields})


# -- signing in -------------------------------------------------------------------------------


def test_signed_out_requests_go_to_the_login_or_are_refused(one: tuple[Path, TestClient]) -> None:
    _, client = one
    for path in ("/inbox/", "/inbox/threads/t-0"):
        answer = client.get(path, follow_redirects=False)
        assert answer.status_code == 303
        assert answer.headers["location"].endswith("/inbox/login")
    assert client.get("/inbox/events").status_code == 401
    assert client.get(f"/inbox/graphs/{GRAPH}.svg").status_code == 401
    assert client.post("/inbox/threads/t-0", data={"action": "approve"}).status_code == 401


@pytest.mark.parametrize(
    ("header", "why"),
    [
        (f"Bearer {token('alice', ['treasurer'], secret='x' * 40)}", "bad signature"),
        (f"Bearer {token('alice', ['treasurer'], minutes=-5)}", "expired"),
        ("Bearer not-a-jwt", "not a JWT"),
        (f"Basic {token('alice', ['treasurer'])}", "must be &#39;Bearer"),
    ],
)
def test_bad_bearer_tokens_are_refused(one: tuple[Path, TestClient], header: str, why: str) -> None:
    _, client = one
    answer = client.get("/inbox/", headers={"Authorization": header})
    assert answer.status_code == 401
    assert why in answer.text
    assert answer.headers["www-authenticate"] == "Bearer"
    assert threads_listed(answer.text) == []


def test_the_login_form_refuses_a_bad_token_and_keeps_no_session(
    one: tuple[Path, TestClient],
) -> None:
    _, client = one
    csrf = form_value(client.get("/inbox/login").text, "csrf")
    bad = token("alice", ["treasurer"], minutes=-1)
    answer = client.post("/inbox/login", data={"csrf": csrf, "token": bad})
    assert answer.status_code == 401
    assert "the token has expired" in answer.text
    assert client.get("/inbox/", follow_redirects=False).status_code == 303


def test_a_session_signs_in_and_out(one: tuple[Path, TestClient]) -> None:
    _, client = one
    sign_in(client, "alice", ["treasurer"])
    page = client.get("/inbox/")
    assert threads_listed(page.text) == ["t-0"]
    assert client.post("/inbox/logout", data={"csrf": form_value(page.text, "csrf")}).is_success
    assert client.get("/inbox/", follow_redirects=False).status_code == 303


# -- CSRF -------------------------------------------------------------------------------------


def test_a_cookie_session_needs_the_csrf_token(one: tuple[Path, TestClient], bank: Bank) -> None:
    db, client = one
    sign_in(client, "alice", ["treasurer"])
    page = client.get("/inbox/threads/t-0").text
    seen = form_value(page, "seen")
    for csrf in (None, "forged", form_value(page, "csrf")[:-2] + "xx"):
        data = {"seen": seen, "action": "approve", **({"csrf": csrf} if csrf else {})}
        answer = client.post("/inbox/threads/t-0", data=data)
        assert answer.status_code == 403
        assert "CSRF token" in answer.text
    assert bank.transfers == []
    assert [r["status"] for r in approval_rows(db)] == ["open"]
    # the login form too
    assert (
        client.post("/inbox/login", data={"token": token("eve", ["treasurer"])}).status_code == 403
    )


def test_a_decision_with_the_csrf_token_runs_the_tool_once(
    one: tuple[Path, TestClient], bank: Bank
) -> None:
    db, client = one
    sign_in(client, "alice", ["treasurer"])
    answer = decide(client, "t-0", "approve")
    assert answer.status_code == 200
    assert "Decided: approve" in answer.text
    assert "succeeded · transfer_funds" in answer.text
    assert bank.transfers == [{"to": "carol", "amount": 5000.0, "account": "DE89370400440532"}]
    assert [(r["outcome"], r["decided_by"]) for r in approval_rows(db)] == [("approve", "alice")]
    assert threads_listed(client.get("/inbox/").text) == []
    assert client.get("/inbox/threads/t-0").status_code == 404  # the news is shown once


@pytest.mark.backends("sqlite", "postgresql")
def test_a_session_lives_in_the_database_until_sign_out(db: Path | str, bank: Bank) -> None:
    """Sign-in keeps a session row (the cookie holds only its id), a decision through it works,
    and sign-out deletes the row: a copy of the cookie then signs nobody in."""
    graph = paused_agent(db, bank, [BIG, BIG])
    with app_for(db, graph) as client:
        sign_in(client, "alice", ["treasurer"])
        [row] = sessions(db)
        assert AUTH.authenticate(row["token"]).actor.id == "alice"
        copy = client.cookies["handrail_session"]
        assert row["token"] not in copy and row["id_hash"] not in copy
        assert "Decided: approve" in decide(client, "t-0", "approve").text
        csrf = form_value(client.get("/inbox/").text, "csrf")
        out = client.post("/inbox/logout", data={"csrf": csrf}, follow_redirects=False)
        assert out.status_code == 303 and out.headers["location"] == "/inbox/login"
        assert sessions(db) == []
        thief = TestClient(client.app)
        thief.cookies.set("handrail_session", copy)
        assert thief.get("/inbox/", follow_redirects=False).status_code == 303
        late = thief.post("/inbox/threads/t-1", data={"csrf": csrf, "action": "approve"})
        assert late.status_code == 401
    assert len(bank.transfers) == 1


def sessions(db: Path | str) -> list[dict[str, Any]]:
    return table_rows(db, "SELECT * FROM handrail_web_sessions")


# -- who sees what ----------------------------------------------------------------------------


def test_each_person_sees_only_what_they_may_decide(tmp_path: Path, bank: Bank) -> None:
    db = tmp_path / "handrail.db"
    bob = Actor(id="bob", roles=("ai-agent", "treasurer"))  # asks, and holds the approver role
    graph = paused_agent(db, bank, [BIG, ("close_account", {"user": "zed"})])
    paused_agent(db, bank, [BIG], actor=bob, prefix="bob")
    with app_for(db, graph) as client:
        assert sorted(threads_listed(client.get("/inbox/", headers=TREASURER).text)) == [
            "bob-0",
            "t-0",
        ]
        assert threads_listed(client.get("/inbox/", headers=ADMIN).text) == ["t-1"]
        mine = bearer("bob", ["ai-agent", "treasurer"])
        assert threads_listed(client.get("/inbox/", headers=mine).text) == ["t-0"]
        nobody = bearer("carol", [])
        assert threads_listed(client.get("/inbox/", headers=nobody).text) == []
        # a page and a decision for a request one may not decide are refused
        assert client.get("/inbox/threads/t-1", headers=TREASURER).status_code == 404
        assert client.get("/inbox/threads/bob-0", headers=mine).status_code == 404
        forged = {"action": "approve", "seen": "x"}
        assert client.post("/inbox/threads/bob-0", headers=mine, data=forged).status_code == 403
        assert client.post("/inbox/threads/t-1", headers=TREASURER, data=forged).status_code == 403
    assert bank.transfers == [] and bank.closed == []
    assert {r["status"] for r in approval_rows(db)} == {"open"}


def test_the_list_is_paginated_newest_or_oldest_first(tmp_path: Path, bank: Bank) -> None:
    db = tmp_path / "handrail.db"
    amounts = [("transfer_funds", {"to": "carol", "amount": 2000 + i}) for i in range(23)]
    graph = paused_agent(db, bank, amounts)
    made = [f"t-{i}" for i in range(23)]  # in the order they were asked
    with app_for(db, graph, page_size=10) as client:

        def page(query: str) -> tuple[list[str], str]:
            answer = client.get(f"/inbox/?{query}", headers=TREASURER)
            return threads_listed(answer.text), answer.text

        first, text = page("")
        assert first == made[::-1][:10]
        assert 'rel="next"' in text and 'rel="prev"' not in text
        third, text = page("page=3")
        assert third == made[::-1][20:]
        assert 'rel="next"' not in text and 'rel="prev"' in text
        oldest = [page(f"order=oldest&page={n}")[0] for n in (1, 2, 3)]
        assert [t for p in oldest for t in p] == made
        assert page("page=9")[0] == []
        assert page("page=nonsense")[0] == first


# -- the detail page and decisions ------------------------------------------------------------


def test_the_detail_page_shows_the_request(one: tuple[Path, TestClient]) -> None:
    _, client = one
    page = client.get("/inbox/threads/t-0", headers=TREASURER).text
    assert "DE89370400440532" not in page
    assert "[redacted]" in page
    assert "big-transfers" in page and "Transfers above 1,000 need a treasurer." in page
    assert 'id="requester">agent-123' in page
    assert "approvals so far: 0 of 1" in page
    assert "data-deadline=" in page
    assert re.search(r"<td>decided</td><td>transfer_funds</td>\s*<td>ask</td>", page)  # audit
    assert 'name="arg:amount"' in page and 'name="arg:account_number"' in page
    picture = client.get(f"/inbox/graphs/{GRAPH}.svg", headers=TREASURER)
    assert picture.headers["content-type"] == "image/svg+xml"
    assert "policy_check" in picture.text and "<svg" in picture.text
    assert client.get("/inbox/graphs/nothing.svg", headers=TREASURER).status_code == 404


def test_an_edit_is_decided_by_the_policy_again(one: tuple[Path, TestClient], bank: Bank) -> None:
    db, client = one
    assert [r["status"] for r in approval_rows(db)] == ["open"]
    sign_in(client, "alice", ["treasurer"])
    fields = {"arg:to": "carol", "arg:amount": "500000", "arg:account_number": "[redacted]"}
    answer = decide(client, "t-0", "edit", **fields)
    assert "Decided: edit" in answer.text
    assert "decided · transfer_funds · deny" in answer.text
    assert "5000" in answer.text and "500000.0" in answer.text  # the difference
    assert bank.transfers == []


def test_an_edit_within_the_rule_runs_the_edited_arguments(
    one: tuple[Path, TestClient], bank: Bank
) -> None:
    _, client = one
    sign_in(client, "alice", ["treasurer"])
    fields = {"arg:to": "dave", "arg:amount": "4000", "arg:account_number": "[redacted]"}
    decide(client, "t-0", "edit", **fields)
    # the hidden account number the approver left as shown is put back
    assert bank.transfers == [{"to": "dave", "amount": 4000.0, "account": "DE89370400440532"}]


def test_refusals_are_shown_and_the_request_stays(one: tuple[Path, TestClient], bank: Bank) -> None:
    db, client = one
    sign_in(client, "alice", ["treasurer"])
    answer = decide(client, "t-0", "reject", message="")
    assert answer.status_code == 409 and "a reject needs a message" in answer.text
    page = client.get("/inbox/threads/t-0").text
    stale = {"csrf": form_value(page, "csrf"), "seen": "call-0:other-hash", "action": "approve"}
    answer = client.post("/inbox/threads/t-0", data=stale)
    assert answer.status_code == 409 and "the request changed" in answer.text
    answer = decide(client, "t-0", "retry")
    assert answer.status_code == 409 and "does not take the decision &#39;retry&#39;" in answer.text
    assert bank.transfers == []
    assert [r["status"] for r in approval_rows(db)] == ["open"]
    answer = decide(client, "t-0", "reject", message="not this month")
    assert "Decided: reject" in answer.text and bank.transfers == []


def test_an_inbox_refusal_is_shown(tmp_path: Path, bank: Bank) -> None:
    """A graph that verifies tokens with another key refuses the approver: the page says so."""
    db = tmp_path / "handrail.db"
    graph = paused_agent(db, bank, [BIG])
    key = SECRET + "-but-another-one"
    other = create_app(
        db,
        authenticator=type(AUTH)(secret=key),
        graphs={GRAPH: lambda _: graph},
    )
    with TestClient(other) as client:
        header = {"Authorization": f"Bearer {token('alice', ['treasurer'], secret=key)}"}
        page = client.get("/inbox/threads/t-0", headers=header).text
        data = {"seen": form_value(page, "seen"), "action": "approve"}
        answer = client.post("/inbox/threads/t-0", headers=header, data=data)
    assert answer.status_code == 409
    assert "Refused:" in answer.text and "bad signature" in answer.text
    assert bank.transfers == [] and [r["status"] for r in approval_rows(db)] == ["open"]


def test_an_escalation_is_retried(tmp_path: Path) -> None:
    bank = Bank(failures_left=1)
    db = tmp_path / "handrail.db"
    graph = paused_agent(db, bank, [BIG])
    with app_for(db, graph) as client:
        sign_in(client, "alice", ["treasurer"])
        decide(client, "t-0", "approve")
        assert bank.transfers == []
        page = client.get("/inbox/threads/t-0").text
        assert "escalation" in page and 'id="retry"' in page and 'id="approve"' not in page
        answer = decide(client, "t-0", "retry")
        assert "Decided: retry" in answer.text
    assert len(bank.transfers) == 1


# -- live updates -----------------------------------------------------------------------------


def test_the_event_stream_tells_of_a_decision_taken_elsewhere(tmp_path: Path, bank: Bank) -> None:
    db = tmp_path / "handrail.db"
    graph = paused_agent(db, bank, [BIG])
    app = create_app(db, authenticator=AUTH, graphs={GRAPH: lambda _: graph}, poll_interval=0.1)
    events: list[str] = []
    with (
        served(app) as url,
        httpx.Client(base_url=url, headers=TREASURER, timeout=10) as http,
        http.stream("GET", "/inbox/events") as stream,
    ):
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        for line in lines:
            if line.startswith("event:"):
                events.append(line.split(":", 1)[1].strip())
                break
        inbox = Inbox(db, graph=graph)
        decided = threading.Thread(
            target=inbox.approve,
            args=("t-0",),
            kwargs={"approver": Token(token("alice", ["treasurer"]))},
        )
        decided.start()
        for line in lines:
            if line.startswith("event:"):
                events.append(line.split(":", 1)[1].strip())
                break
        decided.join(30)
        inbox.close()
    assert events == ["ready", "change"]
    assert len(bank.transfers) == 1


def test_the_langgraph_server_app_is_built_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib
    import sys

    monkeypatch.setenv("HANDRAIL_DB", str(tmp_path / "handrail.db"))
    monkeypatch.setenv("HANDRAIL_JWT_SECRET", SECRET)
    monkeypatch.delitem(sys.modules, "handrail.web.server_app", raising=False)
    module = importlib.import_module("handrail.web.server_app")
    with TestClient(module.app) as client:
        assert client.get("/inbox/", headers=TREASURER).status_code == 200
        assert client.get("/inbox/", headers={"Authorization": "Bearer x"}).status_code == 401
    monkeypatch.delenv("HANDRAIL_DB")
    with TestClient(module.from_env()) as client:
        page = client.get("/inbox/")
    assert page.status_code == 503 and "HANDRAIL_DB" in page.text
