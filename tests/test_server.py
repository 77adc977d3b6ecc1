"""``langgraph dev`` end to end: the demo agent of ``langgraph.json`` pauses on the server for a
treasurer, is listed, is refused, and is approved by thread ID through ``langgraph-sdk``.

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
from collections.abc import Iterator
from contextlib import closing, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip(
    "langgraph_cli", reason="the LangGraph CLI is not installed (pip install -e '.[server]')"
)

from langgraph_sdk import get_sync_client
from langgraph_sdk.client import SyncLangGraphClient
from langgraph_sdk.schema import Command

from handrail import Inbox
from handrail.audit import AuditLog
from handrail.tools.demo import transfers

ROOT = Path(__file__).parent.parent
GRAPH = "handrail_demo"
AGENT: dict[str, Any] = {"actor": {"id": "agent-123", "roles": ["ai-agent"]}}
"""The run's context: the actor (the agent) the policy decides for."""
START: dict[str, Any] = {"messages": [{"role": "user", "content": "Pay Bob 250 and Carol 5,000."}]}
CAROL = ("carol", 5000.0)
STARTUP_TIMEOUT = 90.0


def _decision(approver_id: str, *roles: str) -> Command:
    """Handrail's resume value: approve the waiting call, as ``approver_id``."""
    return {
        "resume": {
            "decisions": [{"type": "approve"}],
            "approver": {"id": approver_id, "roles": list(roles)},
        }
    }


@dataclass(frozen=True)
class Server:
    client: SyncLangGraphClient
    db: Path
    """``HANDRAIL_DB`` of the server: Handrail's tables and the demo bank."""
    log: Path


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


def _wait_until_up(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"langgraph dev exited with {proc.returncode}:\n{_output(log)}")
        try:
            with urllib.request.urlopen(f"{url}/ok", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    pytest.fail(f"langgraph dev did not answer {url}/ok in {STARTUP_TIMEOUT:.0f}s:\n{_output(log)}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate the server's process group; kill it if it does not exit."""
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=15)
    with suppress(ProcessLookupError):  # whatever is left of the group
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=15)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("langgraph-dev")
    db = home / "handrail.db"
    log = home / "server.log"
    config = home / "langgraph.json"
    config.write_text(json.dumps(_config(db)))
    port = _free_port()
    env = {
        **os.environ,
        "HANDRAIL_DB": str(db),
        "LANGGRAPH_NO_VERSION_CHECK": "true",  # no PyPI request at startup
        "LANGGRAPH_CLI_NO_ANALYTICS": "1",
        "LANGSMITH_TRACING": "false",
        "LANGCHAIN_TRACING_V2": "false",
        "PYTHONDONTWRITEBYTECODE": "1",  # no __pycache__ in examples/
    }
    command = [
        sys.executable, "-m", "langgraph_cli", "dev",
        "--host", "127.0.0.1", "--port", str(port),
        "--no-browser", "--no-reload", "--config", str(config),
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, cwd=home, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, proc, log)
        yield Server(client=get_sync_client(url=url, timeout=60), db=db, log=log)
    finally:
        _stop(proc)


# -- helpers over the server and Handrail's tables -----------------------------------------------


def _start(server: Server) -> str:
    """A new thread of the demo agent, run until it pauses; its ID."""
    thread_id: str = server.client.threads.create()["thread_id"]
    result = server.client.runs.wait(thread_id, GRAPH, input=START, context=AGENT)
    assert isinstance(result, dict) and "__interrupt__" in result, _output(server.log)
    return thread_id


def _request(server: Server, thread_id: str) -> dict[str, Any]:
    """The thread's one interrupt value: Handrail's approval request."""
    interrupts = server.client.threads.get(thread_id)["interrupts"]
    values = [i["value"] for waiting in interrupts.values() for i in waiting]
    assert len(values) == 1, interrupts
    value: dict[str, Any] = values[0]
    return value


def _interrupted(server: Server) -> set[str]:
    found = server.client.threads.search(status="interrupted", limit=1000)
    return {t["thread_id"] for t in found}


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


# -- the tests -----------------------------------------------------------------------------------


def test_a_paused_run_is_listed_and_approved_by_thread_id_and_the_transfer_runs_once(
    server: Server,
) -> None:
    thread_id = _start(server)
    assert server.client.threads.get(thread_id)["status"] == "interrupted"
    request = _request(server, thread_id)
    assert request["action_requests"][0]["name"] == "transfer_funds"
    assert request["action_requests"][0]["args"] == {
        "to": "carol",
        "amount": 5000.0,
        "memo": "contract",
    }
    assert request["handrail"]["rule_ids"] == ["big-transfers"]
    assert request["handrail"]["approvers"] == [["treasurer"]]
    assert request["handrail"]["actor"]["id"] == "agent-123"

    # Listed by the server and by Handrail's own approvals table.
    assert thread_id in _interrupted(server)
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
    assert item.args_hash == request["handrail"]["args_hashes"][0]
    assert _carol_rows(server, thread_id) == []  # nothing ran before the approval
    carol_before = _carol_paid(server)

    result = server.client.runs.wait(
        thread_id, GRAPH, context=AGENT, command=_decision("alice", "treasurer")
    )

    assert isinstance(result, dict) and "__error__" not in result, result
    assert result["messages"][-1]["content"].startswith("Done: Bob got 250, Carol got 5,000")
    thread = server.client.threads.get(thread_id)
    assert thread["status"] == "idle"
    assert thread["interrupts"] == {}
    assert thread_id not in _interrupted(server)
    assert _waiting(server, thread_id) == []
    assert _carol_paid(server) == carol_before + 1
    (row,) = _carol_rows(server, thread_id)
    assert (row["outcome"], row["attempt"], row["args"]["amount"]) == ("succeeded", 0, 5000.0)
    ledger = _ledger(server, thread_id)
    assert len({r["tool_call_id"] for r in ledger}) == len(ledger)  # no call ran twice
    assert "delete_user" not in {r["tool"] for r in ledger}  # denied by the policy
    ok, events = _audit(server, thread_id)
    assert ok
    decided = [e for e in events if e["event"] == "approval_decided"]
    assert [(e["tool"], e["decision"], e["approver"]) for e in decided] == [
        ("transfer_funds", "approve", "alice")
    ]


@pytest.mark.parametrize(
    ("approver", "error"),
    [
        (("bob", "teller"), "ApproverNotAuthorized"),
        (("agent-123", "treasurer"), "SelfApproval"),  # the requester approving itself
    ],
    ids=["without-the-treasurer-role", "the-requester-itself"],
)
def test_a_refused_resume_runs_nothing_and_the_next_valid_decision_does(
    server: Server, approver: tuple[str, str], error: str
) -> None:
    thread_id = _start(server)
    request = _request(server, thread_id)
    carol_before = _carol_paid(server)

    refused = server.client.runs.wait(
        thread_id, GRAPH, context=AGENT, command=_decision(*approver), raise_error=False
    )

    # The server reports Handrail's check as the run's error (its message is withheld by the
    # server, the type is kept); nothing ran and nothing was stored for the thread.
    assert isinstance(refused, dict) and refused["__error__"]["error"] == error, refused
    statuses = [r["status"] for r in server.client.runs.list(thread_id)]
    assert statuses == ["error", "success"]  # newest first
    thread = server.client.threads.get(thread_id)
    assert thread["status"] == "error"
    assert thread_id not in _interrupted(server)  # the server's listing loses the thread...
    assert [w.tool_call_id for w in _waiting(server, thread_id)] == request["handrail"][
        "tool_call_ids"
    ]  # ...Handrail's does not
    assert _request(server, thread_id) == request  # still waiting on the same request
    assert _carol_paid(server) == carol_before
    assert _carol_rows(server, thread_id) == []
    ok, events = _audit(server, thread_id)
    assert ok
    assert not [e for e in events if e["event"] == "approval_decided"]

    done = server.client.runs.wait(
        thread_id, GRAPH, context=AGENT, command=_decision("alice", "treasurer")
    )

    assert isinstance(done, dict) and "__error__" not in done, done
    assert server.client.threads.get(thread_id)["status"] == "idle"
    assert _waiting(server, thread_id) == []
    assert _carol_paid(server) == carol_before + 1
    (row,) = _carol_rows(server, thread_id)
    assert row["outcome"] == "succeeded"
    ok, events = _audit(server, thread_id)
    assert ok
    decided = [e for e in events if e["event"] == "approval_decided"]
    assert [e["approver"] for e in decided] == ["alice"]
