"""``langgraph dev`` end to end, with Handrail's auth handler on: the demo agent of
``langgraph.json`` pauses on the server for a treasurer, is listed, is refused, and is approved by
thread ID through ``langgraph-sdk``, each client with its own bearer JWT.

What is shown: no credentials (or bad ones) get 401; the run's actor is the token's user, not the
context the client sends; the agent's own token cannot approve; a resume whose payload names an
approver other than the token's user is refused; a thread is seen only by its owner and by the
holders of a role that may decide; a treasurer's token approves with no approver in the payload,
the transfer runs once and the audit records ``approver="alice"``, ``identified_by="server"``.
Without a key the server does not start; with ``HANDRAIL_AUTH=off`` it serves without credentials
and takes the actor and the approver as claimed.

One server for the module, started from a temporary folder (it writes ``.langgraph_api/`` into its
working directory) on a config made from the repository's ``langgraph.json`` with absolute paths
(the server resolves graph paths against its working directory, not the config's folder).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import closing, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip(
    "langgraph_cli", reason="the LangGraph CLI is not installed (pip install -e '.[server]')"
)

import httpx
import jwt
from langgraph_sdk import get_sync_client
from langgraph_sdk.client import SyncLangGraphClient
from langgraph_sdk.errors import APIStatusError
from langgraph_sdk.schema import Command

from handrail import Inbox
from handrail.audit import AuditLog
from handrail.tools.demo import transfers

ROOT = Path(__file__).parent.parent
GRAPH = "handrail_demo"
SECRET = "handrail-test-secret-0123456789abcdef"  # HS256 wants at least 32 bytes
assert len(SECRET.encode()) >= 32
START: dict[str, Any] = {"messages": [{"role": "user", "content": "Pay Bob 250 and Carol 5,000."}]}
LIAR: dict[str, Any] = {"actor": {"id": "alice", "roles": ["treasurer", "ai-agent"]}}
"""A run's context claiming to be someone else: behind auth the token decides, not this."""
AGENT: dict[str, Any] = {"actor": {"id": "agent-123", "roles": ["ai-agent"]}}
"""The run's context with ``HANDRAIL_AUTH=off``: the actor, as claimed."""
ANYONE = {"id": "anyone", "roles": ["treasurer"]}
"""The approver the agent's own client named to approve its own payment before auth."""
CAROL = ("carol", 5000.0)
STARTUP_TIMEOUT = 90.0
HANDRAIL_AUTH_VARIABLES = (
    "HANDRAIL_AUTH",
    "HANDRAIL_JWT_SECRET",
    "HANDRAIL_JWKS_FILE",
    "HANDRAIL_JWT_ISSUER",
    "HANDRAIL_JWT_AUDIENCE",
    "HANDRAIL_JWT_ROLES_CLAIM",
    "HANDRAIL_JWT_ALGORITHMS",
    "HANDRAIL_DIRECTORY",
    "HANDRAIL_DECIDER_ROLES",
)


def _token(person: str, *roles: str, secret: str = SECRET, ttl: float = 3600.0) -> str:
    """A signed HS256 JWT for ``person`` with ``roles``, expiring in ``ttl`` seconds."""
    now = int(time.time())
    claims = {"sub": person, "roles": list(roles), "iat": now, "exp": now + int(ttl)}
    return jwt.encode(claims, secret, algorithm="HS256")


def _resume(approver: dict[str, Any] | None = None) -> Command:
    """Handrail's resume value approving the waiting call; the approver only if named."""
    value: dict[str, Any] = {"decisions": [{"type": "approve"}]}
    if approver is not None:
        value["approver"] = approver
    return {"resume": value}


@dataclass(frozen=True)
class Server:
    url: str
    db: Path
    """``HANDRAIL_DB`` of the server: Handrail's tables and the demo bank."""
    log: Path

    def client(self, token: str | None = None) -> SyncLangGraphClient:
        """A client sending ``token`` as its bearer credentials (none: no Authorization)."""
        headers = {"Authorization": f"Bearer {token}"} if token is not None else None
        return get_sync_client(url=self.url, api_key=None, headers=headers, timeout=60)


@dataclass(frozen=True)
class Users:
    """One client per person, each with its own token."""

    agent: SyncLangGraphClient
    """agent-123, role ai-agent: starts the runs and owns their threads."""
    alice: SyncLangGraphClient
    """A treasurer: may decide big transfers."""
    oscar: SyncLangGraphClient
    """An operator: a decider role (escalations), but not a treasurer."""
    bob: SyncLangGraphClient
    """A teller: no role that decides anything."""


def _free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _config(db: Path) -> dict[str, Any]:
    """The repository's ``langgraph.json``, its paths made absolute, on the database ``db``."""
    config: dict[str, Any] = json.loads((ROOT / "langgraph.json").read_text())
    graphs = {}
    for graph_id, spec in config["graphs"].items():
        file, variable = spec.rsplit(":", 1)
        graphs[graph_id] = f"{(ROOT / file).resolve()}:{variable}"
    config["graphs"] = graphs
    config["dependencies"] = [str((ROOT / d).resolve()) for d in config["dependencies"]]
    # The config's env overrides the server process's environment, so it names the file too.
    config["env"] = {**config.get("env", {}), "HANDRAIL_DB": str(db)}
    return config


def _output(log: Path) -> str:
    """The end of the server's output, without its colours."""
    return re.sub(r"\x1b\[[0-9;]*m", "", log.read_text(errors="replace"))[-6000:]


def _launch(home: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Server]:
    """``langgraph dev`` in ``home`` on the repository's config, with Handrail's auth variables
    of this process dropped and ``env`` added."""
    db = home / "handrail.db"
    log = home / "server.log"
    config = home / "langgraph.json"
    config.write_text(json.dumps(_config(db)))
    port = _free_port()
    environ = {k: v for k, v in os.environ.items() if k not in HANDRAIL_AUTH_VARIABLES}
    environ.update(
        {
            "HANDRAIL_DB": str(db),
            "LANGGRAPH_NO_VERSION_CHECK": "true",  # no PyPI request at startup
            "LANGGRAPH_CLI_NO_ANALYTICS": "1",
            "LANGSMITH_TRACING": "false",
            "LANGCHAIN_TRACING_V2": "false",
            "PYTHONDONTWRITEBYTECODE": "1",  # no __pycache__ in examples/
            **env,
        }
    )
    command = [
        sys.executable, "-m", "langgraph_cli", "dev",
        "--host", "127.0.0.1", "--port", str(port),
        "--no-browser", "--no-reload", "--config", str(config),
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, cwd=home, env=environ, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    return proc, Server(url=f"http://127.0.0.1:{port}", db=db, log=log)


def _wait_until_up(server: Server, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"langgraph dev exited with {proc.returncode}:\n{_output(server.log)}")
        try:
            with urllib.request.urlopen(f"{server.url}/ok", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    pytest.fail(
        f"langgraph dev did not answer {server.url}/ok in {STARTUP_TIMEOUT:.0f}s:\n"
        f"{_output(server.log)}"
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate the server's process group; kill it if it does not exit."""
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=15)
    with suppress(ProcessLookupError):  # whatever is left of the group
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=15)


def _serve(home: Path, env: dict[str, str]) -> Iterator[Server]:
    proc, server = _launch(home, env)
    try:
        _wait_until_up(server, proc)
        yield server
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The server with auth on: tokens are verified with ``SECRET``; the decider roles are
    ``langgraph.json``'s."""
    yield from _serve(tmp_path_factory.mktemp("langgraph-dev"), {"HANDRAIL_JWT_SECRET": SECRET})


@pytest.fixture(scope="module")
def users(server: Server) -> Users:
    return Users(
        agent=server.client(_token("agent-123", "ai-agent")),
        alice=server.client(_token("alice", "treasurer")),
        oscar=server.client(_token("oscar", "operator")),
        bob=server.client(_token("bob", "teller")),
    )


# -- helpers over the server and Handrail's tables -----------------------------------------------


def _start(users: Users, context: dict[str, Any] | None = LIAR) -> str:
    """A new thread of the demo agent, started by the agent's client (with a context that
    claims to be alice) and run until it pauses; its ID."""
    thread_id: str = users.agent.threads.create()["thread_id"]
    result = users.agent.runs.wait(thread_id, GRAPH, input=START, context=context)
    assert isinstance(result, dict) and "__interrupt__" in result, result
    return thread_id


def _request(client: SyncLangGraphClient, thread_id: str) -> dict[str, Any]:
    """The thread's one interrupt value: Handrail's approval request."""
    interrupts = client.threads.get(thread_id)["interrupts"]
    values = [i["value"] for waiting in interrupts.values() for i in waiting]
    assert len(values) == 1, interrupts
    value: dict[str, Any] = values[0]
    return value


def _call(request: dict[str, Any]) -> dict[str, Any]:
    """The one waiting call of a request: its ``rule_id``, ``approvers`` and ``args_hash``
    (read from ``handrail.calls`` by id, or from the older per-call lists)."""
    info = request["handrail"]
    (call_id,) = info["tool_call_ids"]
    if "calls" in info:
        call: dict[str, Any] = info["calls"][call_id]
        return call
    return {
        "rule_id": info["rule_ids"][0],
        "approvers": info["approvers"][0],
        "args_hash": info["args_hashes"][0],
    }


def _status(call: Callable[[], object]) -> int:
    """The HTTP status a client call fails with (200 if it does not fail)."""
    try:
        call()
    except (APIStatusError, httpx.HTTPStatusError) as exc:
        return exc.response.status_code
    return 200


def _searched(client: SyncLangGraphClient, **filters: Any) -> set[str]:
    return {t["thread_id"] for t in client.threads.search(limit=1000, **filters)}


def _carol_paid(server: Server) -> int:
    return transfers(server.db).count(CAROL)


def _ledger(server: Server, thread_id: str) -> list[dict[str, Any]]:
    """Handrail's execution ledger rows of one thread, read straight from the file."""
    with closing(sqlite3.connect(f"file:{server.db}?mode=ro", uri=True)) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(
            "SELECT tool_call_id, tool, args, attempt, outcome FROM handrail_ledger "
            "WHERE thread_id = ? ORDER BY started_at",
            (thread_id,),
        )
        return [{**dict(r), "args": json.loads(r["args"])} for r in rows]


def _carol_rows(server: Server, thread_id: str) -> list[dict[str, Any]]:
    return [
        r
        for r in _ledger(server, thread_id)
        if r["tool"] == "transfer_funds" and r["args"]["to"] == "carol"
    ]


def _waiting(server: Server, thread_id: str) -> list[Any]:
    inbox = Inbox(server.db)
    try:
        return inbox.show(thread_id)
    finally:
        inbox.close()


def _audit(server: Server, thread_id: str) -> tuple[bool, list[dict[str, Any]]]:
    log = AuditLog(server.db, readonly=True)
    try:
        return log.verify().ok, list(log.export(thread_id=thread_id))
    finally:
        log.close()


def _decided(events: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    return [
        (e["tool"], e["decision"], e["approver"], e["identified_by"])
        for e in events
        if e["event"] == "approval_decided"
    ]


# -- without a key, and without credentials ------------------------------------------------------


def test_without_a_key_or_auth_off_the_server_refuses_to_start(tmp_path: Path) -> None:
    proc, server = _launch(tmp_path, {})
    try:
        code = proc.wait(timeout=STARTUP_TIMEOUT)
    except subprocess.TimeoutExpired:
        _stop(proc)
        pytest.fail(f"langgraph dev started without a key:\n{_output(server.log)}")
    output = _output(server.log)
    assert code != 0
    assert "IdentityError" in output
    assert "needs HANDRAIL_JWT_SECRET" in output and "HANDRAIL_AUTH=off" in output


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": f"Basic {_token('alice', 'treasurer')}"},
        {"Authorization": "Bearer not-a-jwt"},
        {"Authorization": f"Bearer {_token('alice', 'treasurer', secret='x' * 32 + '-another')}"},
        {"Authorization": f"Bearer {_token('alice', 'treasurer', ttl=-3600)}"},
        {"x-auth-scheme": "langsmith"},  # langgraph dev's Studio bypass, disabled
    ],
    ids=[
        "none",
        "empty",
        "bearer-without-token",
        "not-bearer",
        "not-a-jwt",
        "another-key",
        "expired",
        "studio-header",
    ],
)
def test_a_request_without_valid_credentials_gets_401(
    server: Server, headers: dict[str, str]
) -> None:
    for method, path, body in [
        ("POST", "/threads/search", {}),
        ("POST", "/threads", {}),
        ("POST", "/runs/wait", {"assistant_id": GRAPH, "input": START}),
    ]:
        response = httpx.request(method, f"{server.url}{path}", json=body, headers=headers)
        assert response.status_code == 401, (path, response.text)
        sent = headers.get("Authorization", "").removeprefix("Bearer ").removeprefix("Basic ")
        if len(sent) > 8:
            assert sent not in response.text and sent.split(".")[-1] not in response.text


def test_the_sdk_without_credentials_gets_401(server: Server) -> None:
    anonymous = server.client()
    assert _status(anonymous.threads.create) == 401
    assert _status(lambda: anonymous.threads.search()) == 401
    assert _carol_paid(server) == 0  # nothing ran


# -- with each user's token ----------------------------------------------------------------------


def test_a_paused_run_is_listed_and_approved_by_the_treasurers_token_and_the_transfer_runs_once(
    server: Server, users: Users
) -> None:
    thread_id = _start(users)  # its context claims alice: the token says agent-123
    thread = users.agent.threads.get(thread_id)
    assert thread["status"] == "interrupted"
    assert thread["metadata"]["owner"] == "agent-123"
    request = _request(users.alice, thread_id)
    assert request["action_requests"][0]["name"] == "transfer_funds"
    assert request["action_requests"][0]["args"] == {
        "to": "carol",
        "amount": 5000.0,
        "memo": "contract",
    }
    call = _call(request)
    assert (call["rule_id"], list(call["approvers"])) == ("big-transfers", ["treasurer"])
    assert request["handrail"]["actor"] == {"id": "agent-123", "roles": ["ai-agent"]}

    # Listed by the server (to its owner and to a treasurer) and by Handrail's approvals table.
    assert thread_id in _searched(users.agent, status="interrupted")
    assert thread_id in _searched(users.alice, status="interrupted")
    inbox = Inbox(server.db)
    try:
        listed = [p for p in inbox.pending(approver_role="treasurer") if p.thread_id == thread_id]
        assert not [p for p in inbox.pending(approver_role="teller") if p.thread_id == thread_id]
    finally:
        inbox.close()
    assert len(listed) == 1
    item = listed[0]
    assert (item.graph, item.tool, item.rule_id) == (GRAPH, "transfer_funds", "big-transfers")
    assert item.args == {"to": "carol", "amount": 5000.0, "memo": "contract"}
    assert item.actor.id == "agent-123"
    assert item.args_hash == call["args_hash"]
    assert _carol_rows(server, thread_id) == []  # nothing ran before the approval
    carol_before = _carol_paid(server)

    # The treasurer's token is the approver: the payload names nobody (and no context is sent).
    result = users.alice.runs.wait(thread_id, GRAPH, command=_resume())

    assert isinstance(result, dict) and "__error__" not in result, result
    assert result["messages"][-1]["content"].startswith("Done: Bob got 250, Carol got 5,000")
    thread = users.agent.threads.get(thread_id)
    assert thread["status"] == "idle"
    assert thread["interrupts"] == {}
    assert thread["metadata"]["owner"] == "agent-123"  # the approver's run did not take it over
    assert thread_id not in _searched(users.alice, status="interrupted")
    assert _waiting(server, thread_id) == []
    assert _carol_paid(server) == carol_before + 1
    (row,) = _carol_rows(server, thread_id)
    assert (row["outcome"], row["attempt"], row["args"]["amount"]) == ("succeeded", 0, 5000.0)
    ledger = _ledger(server, thread_id)
    assert len({r["tool_call_id"] for r in ledger}) == len(ledger)  # no call ran twice
    assert "delete_user" not in {r["tool"] for r in ledger}  # denied by the policy
    ok, events = _audit(server, thread_id)
    assert ok
    assert _decided(events) == [("transfer_funds", "approve", "alice", "server")]
    assert {e["agent_id"] for e in events} == {"agent-123"}


@pytest.mark.parametrize(
    ("who", "approver", "error"),
    [
        ("agent", None, "SelfApproval"),  # the agent's own token cannot approve
        ("agent", ANYONE, "ApproverNotAuthorized"),  # ...nor name a treasurer to approve for it
        ("alice", ANYONE, "ApproverNotAuthorized"),  # the payload's approver is not the token's
        ("oscar", None, "ApproverNotAuthorized"),  # a decider, but not a treasurer
    ],
    ids=[
        "the-agents-own-token",
        "the-agents-token-naming-a-treasurer",
        "a-treasurers-token-naming-another-approver",
        "an-operators-token",
    ],
)
def test_a_refused_resume_runs_nothing_and_the_treasurers_token_then_approves(
    server: Server, users: Users, who: str, approver: dict[str, Any] | None, error: str
) -> None:
    thread_id = _start(users)
    request = _request(users.agent, thread_id)
    carol_before = _carol_paid(server)
    client: SyncLangGraphClient = getattr(users, who)

    refused = client.runs.wait(thread_id, GRAPH, command=_resume(approver), raise_error=False)

    # The server reports Handrail's check as the run's error (its message is withheld by the
    # server, the type is kept); nothing ran and nothing was stored for the thread.
    assert isinstance(refused, dict) and refused["__error__"]["error"] == error, refused
    statuses = [r["status"] for r in users.agent.runs.list(thread_id)]
    assert statuses == ["error", "success"]  # newest first
    thread = users.agent.threads.get(thread_id)
    assert thread["status"] == "error"
    assert thread_id not in _searched(users.alice, status="interrupted")  # the server's listing
    assert [w.tool_call_id for w in _waiting(server, thread_id)] == request["handrail"][
        "tool_call_ids"
    ]  # ...Handrail's still lists it
    assert _request(users.agent, thread_id) == request  # still waiting on the same request
    assert _carol_paid(server) == carol_before
    assert _carol_rows(server, thread_id) == []
    ok, events = _audit(server, thread_id)
    assert ok
    assert _decided(events) == []

    done = users.alice.runs.wait(thread_id, GRAPH, command=_resume())

    assert isinstance(done, dict) and "__error__" not in done, done
    assert users.agent.threads.get(thread_id)["status"] == "idle"
    assert _waiting(server, thread_id) == []
    assert _carol_paid(server) == carol_before + 1
    (row,) = _carol_rows(server, thread_id)
    assert row["outcome"] == "succeeded"
    ok, events = _audit(server, thread_id)
    assert ok
    assert _decided(events) == [("transfer_funds", "approve", "alice", "server")]


def test_a_thread_is_seen_only_by_its_owner_and_by_those_who_may_decide(
    server: Server, users: Users
) -> None:
    thread_id = _start(users)
    carol_before = _carol_paid(server)
    bob = users.bob

    # Bob holds no deciding role: the agent's thread does not exist for him.
    assert _status(lambda: bob.threads.get(thread_id)) == 404
    assert _status(lambda: bob.threads.get_state(thread_id)) == 404
    assert _status(lambda: bob.runs.list(thread_id)) == 404
    assert thread_id not in _searched(bob)
    assert _status(lambda: bob.runs.wait(thread_id, GRAPH, command=_resume())) == 404
    assert _status(lambda: bob.threads.update(thread_id, metadata={"owner": "bob"})) == 404
    assert _status(lambda: bob.threads.delete(thread_id)) == 404

    # A decider sees and searches every thread, but only resumes it: no new input, no changes.
    assert users.oscar.threads.get(thread_id)["metadata"]["owner"] == "agent-123"
    assert thread_id in _searched(users.oscar)
    assert _status(lambda: users.alice.runs.wait(thread_id, GRAPH, input=START)) == 404
    assert _status(lambda: users.alice.threads.delete(thread_id)) == 404
    assert _status(lambda: users.alice.threads.update(thread_id, metadata={"x": 1})) == 404

    # Bob's own thread is his; it stays out of the agent's searches. Nobody gives a thread away,
    # and a client cannot name another owner when it creates one.
    mine = bob.threads.create(metadata={"owner": "agent-123"})
    assert mine["metadata"]["owner"] == "bob"
    assert mine["thread_id"] in _searched(bob)
    assert mine["thread_id"] not in _searched(users.agent)
    assert thread_id in _searched(users.agent)
    assert _status(lambda: users.agent.threads.update(thread_id, metadata={"owner": "bob"})) == 403
    assert _status(lambda: bob.threads.create(thread_id=thread_id, if_exists="do_nothing")) == 409
    assert _status(lambda: bob.assistants.search()) == 200
    assert _status(lambda: bob.crons.search()) == 403
    assert _status(lambda: bob.store.put_item(["bob"], "k", {"v": 1})) == 403

    assert _carol_paid(server) == carol_before  # nothing Bob did ran the transfer
    assert _request(users.agent, thread_id)["handrail"]["actor"]["id"] == "agent-123"


# -- local development ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server_without_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from _serve(tmp_path_factory.mktemp("langgraph-dev-off"), {"HANDRAIL_AUTH": "off"})


def test_with_auth_off_the_server_serves_without_credentials_and_takes_claims(
    server_without_auth: Server,
) -> None:
    server = server_without_auth
    client = server.client()
    thread_id: str = client.threads.create()["thread_id"]
    paused = client.runs.wait(thread_id, GRAPH, input=START, context=AGENT)
    assert isinstance(paused, dict) and "__interrupt__" in paused, paused
    assert _request(client, thread_id)["handrail"]["actor"]["id"] == "agent-123"  # the context's

    done = client.runs.wait(
        thread_id, GRAPH, context=AGENT, command=_resume({"id": "alice", "roles": ["treasurer"]})
    )

    assert isinstance(done, dict) and "__error__" not in done, done
    assert _carol_paid(server) == 1
    ok, events = _audit(server, thread_id)
    assert ok
    assert _decided(events) == [("transfer_funds", "approve", "alice", "claimed")]
