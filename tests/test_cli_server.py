"""``handrail approve --server URL``: a thread paused on ``langgraph dev`` (the repository's
``langgraph.json``, Handrail's auth handler on) is listed by ``handrail pending`` from the
server's ``HANDRAIL_DB``, and decided through ``langgraph-sdk`` with the approver's token.
Without ``--server``, ``approve`` says to use it (it used to say that the process had stopped
before the request was saved). The server is started as ``tests/test_server.py`` starts it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import closing, suppress
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip(
    "langgraph_cli", reason="the LangGraph CLI is not installed (pip install -e '.[server]')"
)

import jwt
from langgraph_sdk import get_sync_client

from handrail.cli import main
from handrail.tools.demo import transfers

ROOT = Path(__file__).parent.parent
GRAPH = "handrail_demo"
SECRET = "handrail-cli-test-secret-0123456789abcdef"
START: dict[str, Any] = {"messages": [{"role": "user", "content": "Pay Bob 250 and Carol 5,000."}]}
STARTUP_TIMEOUT = 90.0
CAROL = ("carol", 5000.0)


def token(person: str, *roles: str, secret: str = SECRET) -> str:
    now = int(time.time())
    claims = {"sub": person, "roles": list(roles), "iat": now, "exp": now + 3600}
    return jwt.encode(claims, secret, algorithm="HS256")


def _free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _config(db: Path) -> dict[str, Any]:
    """The repository's ``langgraph.json`` with absolute paths, on the database ``db``."""
    config: dict[str, Any] = json.loads((ROOT / "langgraph.json").read_text())
    config["graphs"] = {
        graph_id: f"{(ROOT / spec.rsplit(':', 1)[0]).resolve()}:{spec.rsplit(':', 1)[1]}"
        for graph_id, spec in config["graphs"].items()
    }
    config["dependencies"] = [str((ROOT / d).resolve()) for d in config["dependencies"]]
    config["env"] = {**config.get("env", {}), "HANDRAIL_DB": str(db)}
    return config


class Server:
    def __init__(self, home: Path) -> None:
        self.db = home / "handrail.db"
        self.log = home / "server.log"
        config = home / "langgraph.json"
        config.write_text(json.dumps(_config(self.db)))
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        environ = {k: v for k, v in os.environ.items() if not k.startswith("HANDRAIL_")}
        environ.update(
            {
                "HANDRAIL_DB": str(self.db),
                "HANDRAIL_JWT_SECRET": SECRET,
                "LANGGRAPH_NO_VERSION_CHECK": "true",
                "LANGGRAPH_CLI_NO_ANALYTICS": "1",
                "LANGSMITH_TRACING": "false",
                "LANGCHAIN_TRACING_V2": "false",
                "PYTHONDONTWRITEBYTECODE": "1",
            }
        )
        command = [
            sys.executable, "-m", "langgraph_cli", "dev", "--host", "127.0.0.1",
            "--port", str(port), "--no-browser", "--no-reload", "--config", str(config),
        ]  # fmt: skip
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                command, cwd=home, env=environ, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def wait_until_up(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"langgraph dev exited:\n{self.log.read_text()[-4000:]}")
            with (
                suppress(urllib.error.URLError, ConnectionError, TimeoutError),
                urllib.request.urlopen(f"{self.url}/ok", timeout=2) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.2)
        pytest.fail(f"langgraph dev did not start:\n{self.log.read_text()[-4000:]}")

    def stop(self) -> None:
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=15)
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=15)

    def start_thread(self) -> str:
        """A demo thread started by the agent's token, run until it waits for a treasurer."""
        agent = get_sync_client(
            url=self.url,
            api_key=None,
            headers={"Authorization": f"Bearer {token('agent-123', 'ai-agent')}"},
        )
        thread_id: str = agent.threads.create()["thread_id"]
        result = agent.runs.wait(thread_id, GRAPH, input=START)
        assert isinstance(result, dict) and "__interrupt__" in result, result
        return thread_id


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("langgraph-dev-cli"))
    try:
        running.wait_until_up()
        yield running
    finally:
        running.stop()


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HANDRAIL_DB", "HANDRAIL_TOKEN", "HANDRAIL_SERVER"):
        monkeypatch.delenv(name, raising=False)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_server_thread_is_listed_and_approve_without_server_says_to_use_it(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    thread = server.start_thread()
    code, out, _ = run(capsys, "pending", "--db", str(server.db), "--json")
    assert code == 0 and thread in {i["thread_id"] for i in json.loads(out)}
    as_alice = ["--as", "alice", "--role", "treasurer"]
    code, out, err = run(capsys, "approve", thread, "--db", str(server.db), *as_alice)
    assert (code, out) == (2, "")
    assert "runs on a LangGraph server" in err and f"handrail approve {thread} --server URL" in err
    assert "process stopped before the request was saved" not in err
    assert server.db.exists() and transfers(server.db).count(CAROL) == 0


def test_approve_with_server_decides_through_the_sdk_with_the_token(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    thread = server.start_thread()
    before = transfers(server.db).count(CAROL)
    on = ["--server", server.url]
    code, _, err = run(capsys, "approve", thread, *on, "--token", token("bob", "teller"))
    assert code == 2 and "answered 404" in err  # a teller does not even see the thread
    code, _, err = run(capsys, "approve", thread, *on, "--token", token("oscar", "operator"))
    assert code == 2 and "the server refused: ApproverNotAuthorized" in err
    code, _, err = run(capsys, "approve", thread, *on)  # no token: the server answers 401
    assert code == 2 and "--token" in err
    assert transfers(server.db).count(CAROL) == before
    code, out, err = run(capsys, "approve", thread, *on, "--token", token("alice", "treasurer"))
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "approved transfer_funds (call call_1_0) → ran once, succeeded",
        f"thread {thread}: the run went on and ended: "
        "Done: Bob got 250, Carol got 5,000; deleting Bob was not allowed.",
    ]
    assert transfers(server.db).count(CAROL) == before + 1
    code, _, err = run(capsys, "approve", thread, *on, "--token", token("alice", "treasurer"))
    assert code == 2 and "nothing is waiting" in err


def test_reject_with_server_from_the_environment_prints_json(
    server: Server, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    thread = server.start_thread()
    monkeypatch.setenv("HANDRAIL_SERVER", server.url)
    monkeypatch.setenv("HANDRAIL_TOKEN", token("alice", "treasurer"))
    code, out, _ = run(capsys, "reject", thread, "--reason", "not this month", "--json")
    said = json.loads(out)
    assert code == 0 and said["ended"] is True
    assert [(c["tool"], c["status"], c["outcome"]) for c in said["calls"]] == [
        ("transfer_funds", "rejected", "not run")
    ]
