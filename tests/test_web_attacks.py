"""Attacks on the approvers' web inbox, each written as a test that passes when the app resists
it: forged tokens and cookies, sessions that outlive sign-out, CSRF in its forms, requesters
approving their own requests, thread and call ids guessed or look-alike, hostile text in every
field a page renders, redirects, the live stream, oversized forms and double submissions.

A finding (an attack that works) is marked ``xfail(strict=True)`` with the reason until it is
fixed: the test turns red the day the app is fixed, so the mark can come off. Every finding of
the first review is fixed."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, urljoin, urlparse

import httpx
import jwt
import pytest
from starlette.exceptions import HTTPException
from starlette.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send
from support import Raw, approval_rows
from web_attack_support import (
    ATTRIBUTE,
    SCRIPT,
    Vault,
    asks,
    client_for,
    forged_cookie,
    form_value,
    paused,
    readable,
    session_cookie,
    session_data,
    session_rows,
    set_cookie_headers,
    sign_in,
)
from web_support import AUTH, GRAPH, SECRET, bearer, served, token

from handrail import Actor, Inbox
from handrail.auth import JwtAuthenticator, Token
from handrail.graph import HandrailGraph
from handrail.web import create_app
from handrail.web._http import BodyLimit

BIG = ("transfer_funds", {"to": "carol", "amount": 5000, "account_number": "DE89370400440532"})
TREASURER = bearer("alice", ["treasurer"])
JWT_HEADER = "eyJhbGciOi"  # how every token PyJWT signs begins: base64 of '{"alg":'


@pytest.fixture
def vault() -> Vault:
    return Vault()


@pytest.fixture
def one(tmp_path: Path, vault: Vault) -> Iterator[tuple[Path, TestClient]]:
    """A transfer of 5,000 waiting for a treasurer on thread t-0, and the app."""
    db = tmp_path / "handrail.db"
    graph = paused(db, vault, "t-0", asks(BIG))
    with client_for(db, graph) as client:
        yield db, client


def untouched(db: Path, vault: Vault) -> bool:
    """Nothing ran and every request still waits."""
    return vault.ran() == 0 and {r["status"] for r in approval_rows(db)} == {"open"}


def seen_of(db: Path, thread: str) -> str:
    """The ``seen`` field a form for ``thread`` carries, computed as an insider could."""
    rows = [r for r in approval_rows(db) if r["thread_id"] == thread]
    return ",".join(f"{r['tool_call_id']}:{r['args_hash']}" for r in rows)


# -- tokens and cookies -------------------------------------------------------------------------


def _tampered() -> str:
    """Eve's token (no roles) with its payload rewritten to give her the treasurer's role."""
    header, _, signature = token("eve", []).split(".")
    exp = int(datetime.now(UTC).timestamp()) + 600
    claims = f'{{"sub":"eve","roles":["treasurer"],"exp":{exp}}}'.encode()
    return f"{header}.{jwt.utils.base64url_encode(claims).decode()}.{signature}"


def fullwidth(text: str) -> str:
    """``text`` in fullwidth forms (NFKC folds them back)."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


FORGED_TOKENS = {
    "none-alg": jwt.encode(
        {"sub": "alice", "roles": ["treasurer"], "exp": datetime.now(UTC) + timedelta(hours=1)},
        None,  # type: ignore[arg-type]  # the attack: no key at all
        algorithm="none",
    ),
    "tampered-payload": _tampered(),
    "no-exp": jwt.encode({"sub": "alice", "roles": ["treasurer"]}, SECRET, algorithm="HS256"),
    "other-alg": jwt.encode(
        {"sub": "alice", "roles": ["treasurer"], "exp": datetime.now(UTC) + timedelta(hours=1)},
        SECRET + "-longer-for-hs512-" * 3,
        algorithm="HS512",
    ),
    "other-key": token("alice", ["treasurer"], secret="k" * 48),
    "expired-beyond-leeway": token("alice", ["treasurer"], minutes=-2),
}


@pytest.mark.parametrize("name", sorted(FORGED_TOKENS))
def test_forged_tokens_sign_no_one_in(
    one: tuple[Path, TestClient], vault: Vault, name: str
) -> None:
    db, client = one
    forged = FORGED_TOKENS[name]
    header = {"Authorization": f"Bearer {forged}"}
    assert client.get("/inbox/", headers=header).status_code == 401
    decision = {"action": "approve", "seen": seen_of(db, "t-0")}
    assert client.post("/inbox/threads/t-0", headers=header, data=decision).status_code == 401
    csrf = form_value(client.get("/inbox/login").text, "csrf")
    login = client.post("/inbox/login", data={"csrf": csrf, "token": forged})
    assert login.status_code == 401
    assert client.get("/inbox/", follow_redirects=False).status_code == 303
    assert untouched(db, vault)


def test_a_session_cookie_forged_or_edited_is_nobody(one: tuple[Path, TestClient]) -> None:
    _, client = one
    sign_in(client, "eve", [])  # eve may decide nothing
    mine = session_cookie(client)
    data = session_data(mine)
    data["token"] = token("alice", ["treasurer"])
    signature = mine.split(".", 1)[1]
    for cookie in (
        forged_cookie(data, key="not-the-app-key-" * 3),  # signed with another key
        forged_cookie(data)[: -len(signature)] + signature,  # eve's signature on alice's data
    ):
        client.cookies.clear()
        client.cookies.set("handrail_session", cookie)
        assert client.get("/inbox/", follow_redirects=False).status_code == 303


def test_a_cookie_naming_no_live_session_is_nobody(one: tuple[Path, TestClient]) -> None:
    """Even a cookie signed with the app's own key proves nothing: a token in it is never read,
    and a session id must name a live session's row."""
    _, client = one
    for kept in (
        {"token": token("alice", ["treasurer"]), "csrf": "c" * 43},
        {"sid": "a-session-id-nobody-was-given", "csrf": "c" * 43},
    ):
        client.cookies.set("handrail_session", forged_cookie(kept))
        answer = client.get("/inbox/threads/t-0", follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"] == "/inbox/login"


def test_a_session_whose_token_expired_ends(one: tuple[Path, TestClient]) -> None:
    """A session lasts no longer than its token: it is deleted, and the cookie cleared."""
    db, client = one
    sign_in(client, "alice", ["treasurer"])
    Raw(db).execute(
        "UPDATE handrail_web_sessions SET token = ?", (token("alice", ["treasurer"], minutes=-2),)
    )
    answer = client.get("/inbox/threads/t-0", follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/inbox/login"
    ended = [h for h in set_cookie_headers(answer) if "expires=" in h.lower() or "null" in h]
    assert ended, "the session is not cleared"
    assert session_rows(db) == []


def test_a_session_past_its_end_ends_and_is_swept(one: tuple[Path, TestClient]) -> None:
    db, client = one
    sign_in(client, "alice", ["treasurer"])
    other = TestClient(client.app)
    sign_in(other, "bob", ["treasurer"])
    assert client.get("/inbox/", follow_redirects=False).status_code == 200
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat(timespec="microseconds")
    Raw(db).execute("UPDATE handrail_web_sessions SET expires_at = ?", (past,))
    assert client.get("/inbox/", follow_redirects=False).status_code == 303
    assert len(session_rows(db)) == 1  # alice's is gone as it was met; bob's waits
    sign_in(TestClient(client.app), "carol", ["treasurer"])  # a sign-in sweeps the rest
    assert [r["expires_at"] > past for r in session_rows(db)] == [True]
    assert other.get("/inbox/", follow_redirects=False).status_code == 303


def test_the_database_keeps_the_session_id_hashed(one: tuple[Path, TestClient]) -> None:
    db, client = one
    sign_in(client, "alice", ["treasurer"])
    session_id = session_data(session_cookie(client))["sid"]
    [row] = session_rows(db)
    assert row["id_hash"] == hashlib.sha256(session_id.encode()).hexdigest()
    assert session_id not in repr(row)
    assert len(base64.urlsafe_b64decode(session_id + "=")) == 32


def test_sign_in_starts_a_new_session(one: tuple[Path, TestClient]) -> None:
    """No session fixation: what was kept before sign-in (a planted cookie, its CSRF token, a
    previous person's news) does not carry over."""
    db, client = one
    planted_csrf = form_value(client.get("/inbox/login").text, "csrf")
    planted = session_cookie(client)
    csrf = sign_in(client, "alice", ["treasurer"])
    assert csrf != planted_csrf
    assert session_cookie(client) != planted
    attacker = TestClient(client.app)
    attacker.cookies.set("handrail_session", planted)
    assert attacker.get("/inbox/", follow_redirects=False).status_code == 303
    reject = {"csrf": planted_csrf, "seen": seen_of(db, "t-0"), "action": "reject", "message": "x"}
    assert client.post("/inbox/threads/t-0", data=reject).status_code == 403
    # a second person signing in on the same browser starts clean too, and alice's session ends
    alices = session_cookie(client)
    sign_in(client, "bob", ["treasurer"])
    assert "bob" in client.get("/inbox/").text and ">alice<" not in client.get("/inbox/").text
    attacker.cookies.set("handrail_session", alices)
    assert attacker.get("/inbox/", follow_redirects=False).status_code == 303
    assert len(session_rows(db)) == 1


def test_the_session_cookie_is_httponly_and_same_site(tmp_path: Path, vault: Vault) -> None:
    db = tmp_path / "handrail.db"
    graph = paused(db, vault, "t-0", asks(BIG))
    for https_only in (False, True):
        with client_for(db, graph, https_only=https_only) as client:
            set = set_cookie_headers(client.get("/inbox/login"))
            assert len(set) == 1
            flags = {part.strip().lower() for part in set[0].split(";")[1:]}
            assert "httponly" in flags and "samesite=lax" in flags
            assert ("secure" in flags) is https_only


def test_a_cookie_copied_before_sign_out_is_dead_after_it(
    one: tuple[Path, TestClient], vault: Vault
) -> None:
    db, client = one
    csrf = sign_in(client, "alice", ["treasurer"])
    stolen = session_cookie(client)
    assert client.post("/inbox/logout", data={"csrf": csrf}).is_success
    thief = TestClient(client.app)
    thief.cookies.set("handrail_session", stolen)
    data = {"csrf": csrf, "seen": seen_of(db, "t-0"), "action": "approve"}
    assert thief.post("/inbox/threads/t-0", data=data).status_code == 401
    assert thief.get("/inbox/", follow_redirects=False).status_code == 303
    assert vault.transfers == [] and session_rows(db) == []


def test_the_session_cookie_does_not_reveal_the_token(one: tuple[Path, TestClient]) -> None:
    _, client = one
    sign_in(client, "alice", ["treasurer"])
    assert JWT_HEADER not in readable(session_cookie(client))


# -- CSRF ---------------------------------------------------------------------------------------


def test_forms_cannot_be_forged(one: tuple[Path, TestClient], vault: Vault) -> None:
    db, client = one
    csrf = sign_in(client, "alice", ["treasurer"])
    other = TestClient(client.app)
    other_csrf = sign_in(other, "bob", ["treasurer"])
    seen = seen_of(db, "t-0")
    path = "/inbox/threads/t-0"
    body = {"seen": seen, "action": "approve"}
    attempts = [
        client.post(path, data={**body, "csrf": other_csrf}),  # another session's token
        client.post(f"{path}?csrf={csrf}", data=body),  # token in the query string
        client.post(path, json={**body, "csrf": csrf}),  # JSON body
        client.post(  # a form sent as text/plain (no CORS preflight)
            path,
            content=f"csrf={csrf}&seen={seen}&action=approve",
            headers={"Content-Type": "text/plain"},
        ),
        client.post(path, data=body, headers={"X-CSRF-Token": csrf, "Origin": "https://evil"}),
    ]
    assert [a.status_code for a in attempts] == [403] * len(attempts)
    for method in ("GET", "HEAD"):  # a link or an <img> cannot decide
        answer = client.request(method, f"{path}?csrf={csrf}&seen={seen}&action=approve")
        assert answer.status_code == 200
    override = client.post(
        f"{path}?_method=PUT", data=body, headers={"X-HTTP-Method-Override": "PUT"}
    )
    assert override.status_code == 403
    # another site's sign-out is refused too
    assert client.post("/inbox/logout", data={"csrf": other_csrf}).status_code == 403
    assert client.get("/inbox/", follow_redirects=False).status_code == 200
    assert untouched(db, vault)


# -- who decides what ---------------------------------------------------------------------------


def test_a_form_cannot_name_the_approver_or_their_roles(
    one: tuple[Path, TestClient], vault: Vault
) -> None:
    """Eve, who may decide nothing, posts alice's id, roles and even alice's token as fields."""
    db, client = one
    csrf = sign_in(client, "eve", ["auditor"])
    data = {
        "csrf": csrf,
        "seen": seen_of(db, "t-0"),
        "action": "approve",
        "approver": "alice",
        "id": "alice",
        "roles": "treasurer",
        "token": token("alice", ["treasurer"]),
    }
    assert client.post("/inbox/threads/t-0", data=data).status_code == 403
    assert client.get("/inbox/threads/t-0?roles=treasurer").status_code == 404
    assert untouched(db, vault)


@pytest.mark.parametrize("me", ["agent-123", "AGENT-123", fullwidth("agent-123"), " agent-123"])
def test_the_requester_never_decides_their_own_request(
    one: tuple[Path, TestClient], vault: Vault, me: str
) -> None:
    db, client = one
    header = bearer(me, ["treasurer", "ai-agent"])
    assert 'data-thread="t-0"' not in client.get("/inbox/", headers=header).text
    assert client.get("/inbox/threads/t-0", headers=header).status_code == 404
    for action in ("approve", "edit", "reject"):
        data = {"action": action, "seen": seen_of(db, "t-0"), "message": "x", "arg:to": "me"}
        assert client.post("/inbox/threads/t-0", headers=header, data=data).status_code == 403
    assert untouched(db, vault)


def test_a_thread_is_decided_only_by_who_may_decide_all_its_calls(
    tmp_path: Path, vault: Vault
) -> None:
    db = tmp_path / "handrail.db"
    graph = paused(db, vault, "t-0", asks(BIG, ("close_account", {"user": "zed"})))
    seen = seen_of(db, "t-0")
    with client_for(db, graph) as client:
        for who in (TREASURER, bearer("root", ["admin"])):
            assert client.get("/inbox/threads/t-0", headers=who).status_code == 404
            for action in ("approve", "reject"):
                data = {"action": action, "seen": seen, "message": "no"}
                answer = client.post("/inbox/threads/t-0", headers=who, data=data)
                assert answer.status_code == 403
        assert untouched(db, vault)
        both = bearer("dora", ["treasurer", "admin"])
        data = {"action": "approve", "seen": seen}
        answer = client.post("/inbox/threads/t-0", headers=both, data=data, follow_redirects=False)
        assert answer.status_code == 303
    assert len(vault.transfers) == 1 and vault.closed == ["zed"]


def test_one_person_counts_once_towards_two_approvals(tmp_path: Path, vault: Vault) -> None:
    db = tmp_path / "handrail.db"
    graph = paused(db, vault, "w-0", asks(("wire_abroad", {"amount": 90000})))
    with client_for(db, graph) as client:
        data = {"action": "approve", "seen": seen_of(db, "w-0")}
        assert client.post("/inbox/threads/w-0", headers=TREASURER, data=data).is_success
        assert vault.wires == []
        for again in ("alice", "ALICE", fullwidth("alice")):
            who = bearer(again, ["treasurer"])
            data = {"action": "approve", "seen": seen_of(db, "w-0")}
            assert client.post("/inbox/threads/w-0", headers=who, data=data).status_code == 403
            assert client.get("/inbox/threads/w-0", headers=who).status_code == 404
        assert vault.wires == []
        bob = bearer("bob", ["treasurer"])
        data = {"action": "approve", "seen": seen_of(db, "w-0")}
        assert client.post("/inbox/threads/w-0", headers=bob, data=data).is_success
    assert vault.wires == [90000.0]


def test_a_stale_form_never_approves_the_request_that_replaced_it(
    tmp_path: Path, vault: Vault
) -> None:
    """Alice opens the page; meanwhile Bob rejects, and the model asks for something else on the
    same thread. Alice's approve (for what she saw) must not approve the new request."""
    db = tmp_path / "handrail.db"
    bigger = ("transfer_funds", {"to": "mallory", "amount": 99000})
    graph = paused(db, vault, "t-0", asks(BIG), asks(bigger, first=1))
    with client_for(db, graph) as client:
        csrf = sign_in(client, "alice", ["treasurer"])
        page = client.get("/inbox/threads/t-0").text
        inbox = Inbox(db, graph=graph)
        inbox.reject("t-0", "no", approver=Token(token("bob", ["treasurer"])))
        inbox.close()
        assert [r["tool_call_id"] for r in approval_rows(db) if r["status"] == "open"] == ["call-1"]
        stale = {"csrf": csrf, "seen": form_value(page, "seen"), "action": "approve"}
        answer = client.post("/inbox/threads/t-0", data=stale)
        assert answer.status_code == 409 and "changed since the page was shown" in answer.text
    assert vault.transfers == []


# -- ids: guessed, look-alike -------------------------------------------------------------------


def test_a_thread_one_may_not_decide_looks_like_one_that_does_not_exist(
    one: tuple[Path, TestClient],
) -> None:
    _, client = one
    eve = bearer("eve", ["auditor"])
    pages = [client.get(f"/inbox/threads/{t}", headers=eve) for t in ("t-0", "t-404")]
    assert [p.status_code for p in pages] == [404, 404]
    assert pages[0].text.replace("t-0", "T") == pages[1].text.replace("t-404", "T")
    posts = [
        client.post(f"/inbox/threads/{t}", headers=eve, data={"action": "approve"})
        for t in ("t-0", "t-404")
    ]
    assert [p.status_code for p in posts] == [403, 403]
    assert posts[0].text == posts[1].text


@pytest.mark.parametrize(
    "alike", ["T-0", "t\u20100", fullwidth("t-0"), "t-0\u200b", "t-0 ", "t-0/"]
)
def test_a_look_alike_thread_id_is_not_the_thread(
    one: tuple[Path, TestClient], vault: Vault, alike: str
) -> None:
    db, client = one
    url = f"/inbox/threads/{quote(alike, safe='%')}"
    assert client.get(url, headers=TREASURER).status_code == 404
    data = {"action": "approve", "seen": seen_of(db, "t-0")}
    assert client.post(url, headers=TREASURER, data=data).status_code == 403
    assert untouched(db, vault)


# -- hostile text in pages ----------------------------------------------------------------------

HOSTILE = (SCRIPT, ATTRIBUTE, "<svg/onload=alert(1)>")


def unescaped(page: str) -> list[str]:
    """The hostile payloads that reach ``page`` as markup."""
    return [p for p in (*HOSTILE, "<img src=x", "<svg/") if p in page]


def test_hostile_text_is_escaped_in_every_page(tmp_path: Path) -> None:
    db = tmp_path / "handrail.db"
    vault = Vault(fail_with=SCRIPT)
    hostile_args = ("transfer_funds", {"to": SCRIPT + ATTRIBUTE, "amount": 5000})
    paused(db, vault, "err", asks(BIG))
    Inbox(db, graph=paused(db, vault, "err-graph", asks(BIG))).approve(
        "err", approver=Token(token("bob", ["treasurer"]))
    )  # the transfer raises the hostile message: an escalation
    graph = paused(db, vault, "rej", asks(BIG), asks(hostile_args, first=1))
    inbox = Inbox(db, graph=graph)
    inbox.reject("rej", SCRIPT, approver=Token(token("bob", ["treasurer"])))
    inbox.close()
    paused(db, vault, f"{SCRIPT}{ATTRIBUTE}", asks(hostile_args))
    paused(
        db, vault, "who", asks(BIG), actor=Actor(id="<svg/onload=alert(1)>", roles=("ai-agent",))
    )
    threads = ["err", "rej", f"{SCRIPT}{ATTRIBUTE}", "who"]
    with client_for(db, graph) as client:
        pages = {
            "list": client.get("/inbox/?order=oldest", headers=TREASURER),
            "rows": client.get("/inbox/?fragment=1", headers=TREASURER),
            "missing": client.get(f"/inbox/threads/{quote(SCRIPT, safe='')}x", headers=TREASURER),
            "login": client.post("/inbox/login", data={"csrf": "x", "token": SCRIPT}),
            "bad-token": client.get("/inbox/", headers={"Authorization": f"Bearer {SCRIPT}"}),
        }
        for thread in threads:
            pages[thread] = client.get(
                f"/inbox/threads/{quote(thread, safe='')}", headers=TREASURER
            )
        assert "escalation" in pages["err"].text and "&lt;script&gt;" in pages["err"].text
        assert "&lt;svg/onload" in pages["who"].text
        refused = {"action": SCRIPT, "seen": seen_of(db, "who")}
        pages["refused"] = client.post("/inbox/threads/who", headers=TREASURER, data=refused)
        assert pages["refused"].status_code == 409
        csrf = sign_in(client, "alice", ["treasurer"])
        edit = {
            "csrf": csrf,
            "seen": seen_of(db, "who"),
            "action": "edit",
            "arg:to": ATTRIBUTE + SCRIPT,
            "arg:amount": "4000",
        }
        pages["flash"] = client.post("/inbox/threads/who", data=edit)
        assert "Decided: edit" in pages["flash"].text
    assert {n: unescaped(p.text) for n, p in pages.items() if unescaped(p.text)} == {}
    assert "&lt;script&gt;" in pages["list"].text and "&#34;&gt;&lt;img" in pages["rej"].text


@pytest.mark.parametrize("thread", ["../threads/victim", "pay?amount=1", "memo#x"])
def test_a_listed_request_links_to_its_own_thread(
    tmp_path: Path, vault: Vault, thread: str
) -> None:
    db = tmp_path / "handrail.db"
    graph = paused(db, vault, thread, asks(BIG))
    with client_for(db, graph) as client:
        page = client.get("/inbox/", headers=TREASURER).text
        href = form_href(page)
        target = httpx.URL(urljoin("http://testserver/inbox/", href))  # as a browser resolves it
        assert not target.query and not target.fragment
        assert target.path == f"/inbox/threads/{thread}"


def form_href(page: str) -> str:
    start = page.index('class="open" href="') + len('class="open" href="')
    return page[start : page.index('"', start)].replace("&amp;", "&")


# -- redirects ----------------------------------------------------------------------------------


def test_sign_in_never_redirects_off_site(one: tuple[Path, TestClient]) -> None:
    _, client = one
    for query in ("next=https://evil.example/", "next=//evil.example", "redirect=https://evil"):
        csrf = form_value(client.get(f"/inbox/login?{query}").text, "csrf")
        done = client.post(
            f"/inbox/login?{query}",
            data={"csrf": csrf, "token": token("alice", ["treasurer"]), "next": "//evil.example"},
            follow_redirects=False,
        )
        assert done.status_code == 303
        assert urlparse(done.headers["location"]).netloc in ("", "testserver")


def test_a_forged_host_header_never_becomes_a_redirect(one: tuple[Path, TestClient]) -> None:
    _, client = one
    answer = client.get("/inbox/", headers={"Host": "evil.example"}, follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/inbox/login"
    page = client.get("/inbox/", headers={**TREASURER, "Host": "evil.example"}).text
    assert "evil.example" not in page and 'href="/inbox/threads/t-0"' in page


@pytest.mark.parametrize("thread", ["../threads/victim", "pay?amount=1", "memo#x"])
def test_a_decision_leads_back_to_its_own_thread(tmp_path: Path, vault: Vault, thread: str) -> None:
    db = tmp_path / "handrail.db"
    graph = paused(db, vault, thread, asks(BIG))
    with client_for(db, graph) as client:
        data = {"action": "approve", "seen": seen_of(db, thread)}
        path = f"/inbox/threads/{quote(thread, safe='')}"
        answer = client.post(path, headers=TREASURER, data=data, follow_redirects=False)
        assert answer.status_code == 303, answer.text
        location = answer.headers["location"]
        target = httpx.URL(urljoin("http://testserver/inbox/", location))
        assert not target.query and not target.fragment
        assert target.path == f"/inbox/threads/{thread}"
        assert "Decided: approve" in client.get(location, headers=TREASURER).text
    assert len(vault.transfers) == 1


# -- the live stream ----------------------------------------------------------------------------


def next_event(lines: Iterator[str]) -> str | None:
    """The next event's name, or None when the stream ends or stays quiet past its read timeout."""
    try:
        for line in lines:
            if line.startswith("event:"):
                return line.split(":", 1)[1].strip()
    except httpx.ReadTimeout:
        return None
    return None


def approve_elsewhere(db: Path, graph: HandrailGraph, thread: str) -> None:
    inbox = Inbox(db, graph=graph)
    inbox.approve(thread, approver=Token(token("bob", ["treasurer"])))
    inbox.close()


def test_the_stream_refuses_the_signed_out_and_forged(one: tuple[Path, TestClient]) -> None:
    _, client = one
    for headers in ({}, {"Authorization": f"Bearer {FORGED_TOKENS['none-alg']}"}):
        answer = client.get("/inbox/events", headers=headers)
        assert answer.status_code == 401
        assert "text/event-stream" not in answer.headers["content-type"]


def stream_until_expiry(tmp_path: Path, vault: Vault) -> tuple[str | None, timedelta]:
    """Open the stream with a bearer token that expires 2 s later (no leeway); returns what
    came after ``ready`` (None: the stream closed) and how long it took."""
    db = tmp_path / "handrail.db"
    graph = paused(db, vault, "t-0", asks(BIG))
    strict = JwtAuthenticator(secret=SECRET, leeway=timedelta(0))
    app = create_app(db, authenticator=strict, graphs={GRAPH: lambda _: graph}, poll_interval=0.1)
    short = {"Authorization": f"Bearer {token('alice', ['treasurer'], minutes=2 / 60)}"}
    with (
        served(app) as url,
        httpx.Client(base_url=url, headers=short, timeout=httpx.Timeout(10, read=8)) as http,
        http.stream("GET", "/inbox/events") as stream,
    ):
        lines = stream.iter_lines()
        assert next_event(lines) == "ready"
        started = datetime.now(UTC)
        after = next_event(lines)
        return after, datetime.now(UTC) - started


def test_the_stream_ends_when_the_token_expires(tmp_path: Path, vault: Vault) -> None:
    try:
        after, took = stream_until_expiry(tmp_path, vault)
    except httpx.RemoteProtocolError:  # cut off rather than closed: see the next test
        return
    assert after is None and took < timedelta(seconds=6)


def test_an_expired_bearer_stream_is_closed_cleanly(tmp_path: Path, vault: Vault) -> None:
    after, _ = stream_until_expiry(tmp_path, vault)
    assert after is None


def test_the_stream_is_quiet_for_someone_who_may_decide_nothing(
    tmp_path: Path, vault: Vault
) -> None:
    db = tmp_path / "handrail.db"
    graph = paused(db, vault, "t-0", asks(BIG))
    app = create_app(db, authenticator=AUTH, graphs={GRAPH: lambda _: graph}, poll_interval=0.1)
    nobody = bearer("carol", [])
    with (
        served(app) as url,
        httpx.Client(base_url=url, headers=nobody, timeout=httpx.Timeout(10, read=2)) as http,
        http.stream("GET", "/inbox/events") as stream,
    ):
        lines = stream.iter_lines()
        assert next_event(lines) == "ready"
        approve_elsewhere(db, graph, "t-0")
        assert next_event(lines) is None
    assert len(vault.transfers) == 1


def test_signing_out_ends_the_stream(tmp_path: Path, vault: Vault) -> None:
    db = tmp_path / "handrail.db"
    graph = paused(db, vault, "t-0", asks(BIG))
    app = create_app(
        db, authenticator=AUTH, graphs={GRAPH: lambda _: graph}, poll_interval=0.1, secret="k" * 40
    )
    with (
        served(app) as url,
        httpx.Client(base_url=url, timeout=httpx.Timeout(10, read=3)) as http,
    ):
        csrf = form_value(http.get("/inbox/login").text, "csrf")
        http.post("/inbox/login", data={"csrf": csrf, "token": token("alice", ["treasurer"])})
        csrf = form_value(http.get("/inbox/").text, "csrf")
        with http.stream("GET", "/inbox/events") as stream:
            lines = stream.iter_lines()
            assert next_event(lines) == "ready"
            assert http.post("/inbox/logout", data={"csrf": csrf}).status_code == 303
            approve_elsewhere(db, graph, "t-0")
            assert next_event(lines) is None


def test_a_page_number_out_of_range_is_not_a_server_error(tmp_path: Path, vault: Vault) -> None:
    db = tmp_path / "handrail.db"
    graph = paused(db, vault, "t-0", asks(BIG))
    app = create_app(db, authenticator=AUTH, graphs={GRAPH: lambda _: graph})
    with TestClient(app, raise_server_exceptions=False) as client:
        for page in ("-5", "0", "1e3", str(10**20)):
            assert client.get(f"/inbox/?page={page}", headers=TREASURER).status_code == 200


# -- the graph's picture ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["..%2F..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "..", "handrail_agent%00", "os:system"],
)
def test_the_picture_route_opens_no_file(one: tuple[Path, TestClient], name: str) -> None:
    _, client = one
    answer = client.get(f"/inbox/graphs/{name}.svg", headers=TREASURER)
    assert answer.status_code == 404
    assert "root:" not in answer.text and "<svg" not in answer.text


# -- headers ------------------------------------------------------------------------------------


def test_every_answer_forbids_framing_and_inline_script(one: tuple[Path, TestClient]) -> None:
    _, client = one
    answers = [
        client.get("/inbox/login"),
        client.get("/inbox/", follow_redirects=False),
        client.get("/inbox/", headers=TREASURER),
        client.get("/inbox/threads/t-0", headers=TREASURER),
        client.get("/inbox/threads/nothing", headers=TREASURER),
        client.get("/inbox/", headers={"Authorization": "Bearer x"}),
        client.get(f"/inbox/graphs/{GRAPH}.svg", headers=TREASURER),
        client.get("/inbox/static/inbox.js"),
    ]
    for answer in answers:
        policy = answer.headers.get("content-security-policy", "")
        assert "frame-ancestors 'none'" in policy and "default-src 'self'" in policy
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
        assert "base-uri 'none'" in policy
        assert answer.headers.get("x-frame-options") == "DENY"
        assert answer.headers.get("x-content-type-options") == "nosniff"
        assert "strict-transport-security" not in answer.headers  # plain HTTP: no HSTS
        assert answer.headers.get_list("cache-control") == ["no-store"]


def test_behind_tls_browsers_are_told_to_stay_on_https(tmp_path: Path, vault: Vault) -> None:
    db = tmp_path / "handrail.db"
    graph = paused(db, vault, "t-0", asks(BIG))
    with client_for(db, graph, https_only=True) as client:
        for answer in (client.get("/inbox/login"), client.get("/inbox/", headers=TREASURER)):
            assert answer.headers["strict-transport-security"] == "max-age=31536000"


def test_pages_with_arguments_are_not_stored(one: tuple[Path, TestClient]) -> None:
    _, client = one
    for path in ("/inbox/", "/inbox/?fragment=1", "/inbox/threads/t-0"):
        answer = client.get(path, headers=TREASURER)
        assert answer.status_code == 200 and "carol" in answer.text
        assert "no-store" in answer.headers.get("cache-control", "")


# -- oversized forms ----------------------------------------------------------------------------


def test_an_oversized_field_is_refused_and_decides_nothing(
    one: tuple[Path, TestClient], vault: Vault
) -> None:
    db, client = one
    csrf = sign_in(client, "alice", ["treasurer"])
    huge = {"csrf": csrf, "seen": seen_of(db, "t-0"), "action": "reject", "message": "m" * 2**21}
    assert client.post("/inbox/threads/t-0", data=huge).status_code in (400, 413)
    many = {f"f{i}": "x" for i in range(1500)}
    assert client.post("/inbox/threads/t-0", data={**many, "csrf": csrf}).status_code in (400, 413)
    assert untouched(db, vault)


def test_a_huge_form_from_a_stranger_is_refused_unread(one: tuple[Path, TestClient]) -> None:
    _, client = one
    body = {f"f{i}": "x" * (2**20 - 16) for i in range(8)}  # 8 MB, each field under 1 MB
    assert client.post("/inbox/login", data=body).status_code == 413


def test_an_edit_with_a_long_argument_keeps_the_cookie_small(
    one: tuple[Path, TestClient], vault: Vault
) -> None:
    db, client = one
    csrf = sign_in(client, "alice", ["treasurer"])
    edit = {
        "csrf": csrf,
        "seen": seen_of(db, "t-0"),
        "action": "edit",
        "arg:to": "x" * 20_000,
        "arg:amount": "4000",
        "arg:account_number": "[redacted]",
    }
    answer = client.post("/inbox/threads/t-0", data=edit, follow_redirects=False)
    assert answer.status_code == 303 and len(vault.transfers) == 1
    assert all(len(h) <= 4096 for h in set_cookie_headers(answer))


def test_a_body_without_a_length_is_cut_off_at_the_cap(one: tuple[Path, TestClient]) -> None:
    """A chunked body (no Content-Length) is counted as it comes, and refused past 1 MiB."""
    _, client = one
    chunks = (b"f=" + b"x" * (2**16 - 2) for _ in range(64))  # 4 MiB in 64 KiB chunks
    answer = client.post(
        "/inbox/login",
        content=chunks,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert "content-length" not in answer.request.headers
    assert answer.status_code == 413 and "1,048,576 bytes at most" in answer.text


def test_the_body_cap_stops_reading(tmp_path: Path) -> None:
    """The app stops asking for a chunked body's next part once the cap is passed."""
    received: list[int] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body"):
            pass

    async def chunks() -> Message:
        received.append(1)
        return {"type": "http.request", "body": b"x" * 2**16, "more_body": True}

    async def sent(message: Message) -> None:
        pass

    scope: Scope = {"type": "http", "headers": [(b"transfer-encoding", b"chunked")]}
    with pytest.raises(HTTPException) as refused:
        asyncio.run(BodyLimit(app, limit=2**20)(scope, chunks, sent))
    assert refused.value.status_code == 413 and len(received) == 17


def test_deeply_nested_json_in_an_edit_is_refused(tmp_path: Path, vault: Vault) -> None:
    db = tmp_path / "handrail.db"
    graph = paused(db, vault, "tags", asks(("tag_transfer", {"tags": ["a"]})))
    with client_for(db, graph) as client:
        for depth in (100_000, 65):
            deep = "[" * depth + "]" * depth
            data = {"action": "edit", "seen": seen_of(db, "tags"), "arg:tags": deep}
            answer = client.post("/inbox/threads/tags", headers=TREASURER, data=data)
            assert answer.status_code == 409
            assert "nests more than 64 levels deep" in answer.text
        assert untouched(db, vault)
        data = {"action": "edit", "seen": seen_of(db, "tags"), "arg:tags": '["b", {"c": [1]}]'}
        answer = client.post("/inbox/threads/tags", headers=TREASURER, data=data)
        assert answer.status_code == 200 and "Decided: edit" in answer.text
    assert vault.tags == [["b", {"c": [1]}]]


# -- double submission --------------------------------------------------------------------------


def test_simultaneous_decisions_run_the_tool_at_most_once(tmp_path: Path, vault: Vault) -> None:
    """Four approvers (and one rejecter) press at the same moment on each of three threads, over
    a real server: each thread gets one decision, and its transfer runs at most once."""
    db = tmp_path / "handrail.db"
    graphs = [paused(db, vault, f"t-{n}", asks(BIG)) for n in range(3)]
    graph = graphs[-1]
    app = create_app(db, authenticator=AUTH, graphs={GRAPH: lambda _: graph})
    people = ["alice", "bob", "carol", "dave", "erin"]
    answers: dict[tuple[str, str], int] = {}
    with served(app) as url:
        for n in range(3):
            thread = f"t-{n}"
            seen = seen_of(db, thread)
            gate = threading.Barrier(len(people))

            def press(
                who: str, thread: str = thread, seen: str = seen, gate: threading.Barrier = gate
            ) -> None:
                action = {"action": "reject", "message": "no"} if who == "erin" else {}
                data = {"action": "approve", "seen": seen, **action}
                with httpx.Client(headers=bearer(who, ["treasurer"]), timeout=60) as http:
                    gate.wait()
                    answer = http.post(f"{url}/inbox/threads/{thread}", data=data)
                answers[(thread, who)] = answer.status_code

            pressing = [threading.Thread(target=press, args=(p,)) for p in people]
            for t in pressing:
                t.start()
            for t in pressing:
                t.join(60)
    outcomes = {r["thread_id"]: r["outcome"] for r in approval_rows(db)}
    for n in range(3):
        thread = f"t-{n}"
        codes = [answers[(thread, p)] for p in people]
        assert codes.count(303) == 1, codes  # one decision taken, the others refused
        assert set(codes) <= {303, 403, 409}, codes
        assert outcomes[thread] in ("approve", "reject")
    assert len(vault.transfers) == list(outcomes.values()).count("approve")
