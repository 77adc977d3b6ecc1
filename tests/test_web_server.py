"""The web inbox mounted on ``langgraph dev`` as the server's custom routes (``langgraph.json``
``"http": {"app": "handrail.web.server_app:app"}``): one deployment serves the agents and their
approvers.

A run of the demo agent pauses through the SDK with the requester's token; ``/inbox/`` on the
server lists it for the treasurer's token and for nobody else; the approve form, posted with the
treasurer's bearer header (or with a signed-in session and its CSRF token), decides through the
server's own API, so the server's auth handler makes the treasurer the approver: the transfer runs
once and the thread finishes on the server. A refusal from the server is shown on the page and the
request stays; a forged post is refused. Without its configuration the app answers 503 and says
which variable to set, and the agents are served all the same.

The server is `dev_server.DevServer`: from a temporary folder, on the repository's
``langgraph.json`` with absolute paths, with ``HANDRAIL_DB`` and the JWT secret.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip(
    "langgraph_cli", reason="the LangGraph CLI is not installed (pip install -e '.[server]')"
)

import httpx
from dev_server import CAROL, SECRET, TIMEOUT, DevServer, bearer, running, token
from langgraph_sdk import get_sync_client
from starlette.testclient import TestClient

from handrail.audit import AuditLog
from handrail.errors import HandrailError, IdentityError, NothingPending, SelfApproval
from handrail.remote import ServerInbox
from handrail.tools.demo import transfers
from handrail.web import server_app

ALICE = bearer("alice", "treasurer")
AGENT = bearer("agent-123", "ai-agent")
OSCAR = bearer("oscar", "operator")


class Server(DevServer):
    """The server, read and posted to as the tests need."""

    def thread(self, thread_id: str) -> dict[str, Any]:
        """The thread as the server keeps it, read with the treasurer's token."""
        alice = get_sync_client(url=self.url, api_key=None, headers=ALICE, timeout=TIMEOUT)
        found: dict[str, Any] = dict(alice.threads.get(thread_id))
        return found

    def page(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(f"{self.url}/inbox/{path}", timeout=TIMEOUT, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.post(f"{self.url}/inbox/{path}", timeout=TIMEOUT, **kwargs)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running(Server(tmp_path_factory.mktemp("langgraph-dev-web"))) as up:
        yield up


def listed(page: str) -> list[str]:
    return re.findall(r'<tr class="request" data-thread="([^"]+)"', page)


def form_value(page: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]+)"', page)
    assert found is not None, f"no {name} in the page:\n{page[-2000:]}"
    return found.group(1)


def decided_by(server: Server, thread_id: str) -> list[tuple[str, str, str]]:
    """The thread's ``approval_decided`` audit rows: (decision, approver, identified by)."""
    rows = AuditLog(server.db).export(thread_id=thread_id)
    return [
        (r["decision"], r["approver"], r["identified_by"])
        for r in rows
        if r["event"] == "approval_decided"
    ]


def test_the_treasurers_bearer_token_lists_and_approves_on_the_server(server: Server) -> None:
    thread = server.start_thread()
    before = transfers(server.db).count(CAROL)

    listing = server.page("", headers=ALICE)
    assert listing.status_code == 200 and thread in listed(listing.text)
    page = server.page(f"threads/{thread}", headers=ALICE)
    assert page.status_code == 200 and 'id="approve"' in page.text and "carol" in page.text

    # The bearer header authenticates the post: a forging site cannot send it, so no CSRF.
    seen = form_value(page.text, "seen")
    done = server.post(
        f"threads/{thread}",
        headers=ALICE,
        data={"action": "approve", "seen": seen},
        follow_redirects=False,
    )
    assert done.status_code == 303, done.text
    assert transfers(server.db).count(CAROL) == before + 1  # ran exactly once

    found = server.thread(thread)
    assert found["status"] == "idle" and not found["interrupts"]  # finished on the server
    last = found["values"]["messages"][-1]["content"]
    assert last == "Done: Bob got 250, Carol got 5,000; deleting Bob was not allowed."
    # The server's auth handler made the token's user the approver.
    assert ("approve", "alice", "server") in decided_by(server, thread)

    shown = server.page(f"threads/{thread}", headers=ALICE)
    assert shown.status_code == 404 and thread not in listed(server.page("", headers=ALICE).text)


def test_a_signed_in_session_rejects_with_its_csrf_token(server: Server) -> None:
    thread = server.start_thread()
    before = transfers(server.db).count(CAROL)
    with httpx.Client(base_url=f"{server.url}/inbox", timeout=TIMEOUT) as browser:
        csrf = form_value(browser.get("/login").text, "csrf")
        signed_in = browser.post(
            "/login", data={"csrf": csrf, "token": token("alice", "treasurer")}
        )
        assert signed_in.status_code == 303, signed_in.text
        assert thread in listed(browser.get("/").text)
        page = browser.get(f"/threads/{thread}").text
        fields = {"csrf": form_value(page, "csrf"), "seen": form_value(page, "seen")}

        forged = browser.post(
            f"/threads/{thread}", data={"action": "approve", "seen": fields["seen"]}
        )
        assert forged.status_code == 403 and "CSRF" in forged.text  # the cookie alone: refused
        assert transfers(server.db).count(CAROL) == before and thread in listed(
            browser.get("/").text
        )

        said = {**fields, "action": "reject", "message": "not this month"}
        done = browser.post(f"/threads/{thread}", data=said, follow_redirects=True)
        assert done.status_code == 200 and "Decided: reject" in done.text
    assert transfers(server.db).count(CAROL) == before  # rejected: never ran
    found = server.thread(thread)
    assert found["status"] == "idle" and not found["interrupts"]
    assert ("reject", "alice", "server") in decided_by(server, thread)


def test_the_requester_sees_nothing_and_cannot_post(server: Server) -> None:
    thread = server.start_thread()
    before = transfers(server.db).count(CAROL)
    assert thread not in listed(server.page("", headers=AGENT).text)
    assert server.page(f"threads/{thread}", headers=AGENT).status_code == 404
    seen = form_value(server.page(f"threads/{thread}", headers=ALICE).text, "seen")
    for who in (AGENT, OSCAR):  # the requester; a decider of escalations, not a treasurer
        refused = server.post(
            f"threads/{thread}", headers=who, data={"action": "approve", "seen": seen}
        )
        assert refused.status_code == 403, refused.text
    anonymous = server.post(f"threads/{thread}", data={"action": "approve", "seen": seen})
    assert anonymous.status_code == 401
    assert transfers(server.db).count(CAROL) == before
    assert thread in listed(server.page("", headers=ALICE).text)  # still waiting


def test_a_refusal_from_the_server_is_shown_and_the_request_stays(server: Server) -> None:
    thread = server.start_thread()
    before = transfers(server.db).count(CAROL)
    page = server.page(f"threads/{thread}", headers=ALICE).text
    assert 'id="edit-form"' in page
    fields = {"action": "edit", "seen": form_value(page, "seen")}
    bad = {"arg:to": "carol", "arg:amount": "a lot"}  # the tool's schema takes a number
    refused = server.post(f"threads/{thread}", headers=ALICE, data={**fields, **bad})
    assert refused.status_code == 409 and 'id="error"' in refused.text
    assert "the server refused" in refused.text
    assert transfers(server.db).count(CAROL) == before
    assert server.thread(thread)["interrupts"]  # still waiting on the server
    assert thread in listed(server.page("", headers=ALICE).text)

    approve = {"action": "approve", "seen": fields["seen"]}
    done = server.post(f"threads/{thread}", headers=ALICE, data=approve, follow_redirects=False)
    assert done.status_code == 303 and transfers(server.db).count(CAROL) == before + 1


def test_the_agents_api_is_untouched_by_the_inbox(server: Server) -> None:
    # The inbox's error pages and middleware stay under /inbox/: the API answers as before.
    missing = httpx.get(f"{server.url}/threads/not-a-thread", headers=ALICE, timeout=TIMEOUT)
    assert missing.status_code in (404, 422) and missing.headers["content-type"].startswith(
        "application/json"
    )
    assert "content-security-policy" not in missing.headers
    assert httpx.get(f"{server.url}/threads/x", timeout=TIMEOUT).status_code == 401
    assert server.page("", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_server_inbox_decides_over_http_sync_and_async(server: Server) -> None:
    """`handrail.remote.ServerInbox`, shared by the web inbox and ``handrail approve --server``:
    the server's answers become Handrail's errors, and the async twin decides."""
    thread = server.start_thread()
    before = transfers(server.db).count(CAROL)
    with pytest.raises(IdentityError, match="answered 401"):
        ServerInbox(server.url).approve(thread)
    with pytest.raises(NothingPending, match="answered 404"):
        ServerInbox(server.url, token=token("bob", "teller")).approve(thread)
    with pytest.raises(SelfApproval, match="the server refused: SelfApproval"):
        ServerInbox(server.url, token=token("agent-123", "ai-agent", "treasurer")).approve(thread)
    with pytest.raises(HandrailError, match="await the async methods"):
        ServerInbox(None, token=token("alice", "treasurer")).approve(thread)
    assert transfers(server.db).count(CAROL) == before

    alice = ServerInbox(server.url, token=token("alice", "treasurer"))
    done = asyncio.run(alice.aapprove(thread))
    assert [(c.tool, c.tool_call_id) for c in done.calls] == [("transfer_funds", "call_1_0")]
    assert "__interrupt__" not in done.result and transfers(server.db).count(CAROL) == before + 1
    with pytest.raises(NothingPending, match="nothing is waiting"):
        alice.approve(thread)


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"HANDRAIL_JWT_SECRET": SECRET}, "HANDRAIL_DB"),
        ({"HANDRAIL_DB": "handrail.db"}, "HANDRAIL_JWT_SECRET"),
        ({"HANDRAIL_DB": "handrail.db", "HANDRAIL_AUTH": "off"}, "HANDRAIL_AUTH=off"),
    ],
    ids=["no-db", "no-key", "auth-off"],
)
def test_without_its_configuration_the_app_answers_503_saying_what_to_set(
    env: dict[str, str], says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith("HANDRAIL_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with TestClient(server_app.from_env()) as client:
        for answer in (client.get("/inbox/"), client.post("/inbox/threads/t-1", headers=ALICE)):
            assert answer.status_code == 503 and says in answer.text
