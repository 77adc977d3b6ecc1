"""``langgraph dev`` on the repository's ``langgraph.json`` for the tests that need a real
LangGraph server (the CLI's ``--server``, the web inbox mounted as custom routes): started from a
temporary folder on a free loopback port, its paths made absolute, with ``HANDRAIL_DB`` and the
JWT secret Handrail's auth handler verifies tokens with."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import httpx
import jwt
import pytest
from langgraph_sdk import get_sync_client

ROOT = Path(__file__).parent.parent
GRAPH = "handrail_demo"
SECRET = "handrail-dev-server-test-secret-0123456789"
START: dict[str, Any] = {"messages": [{"role": "user", "content": "Pay Bob 250 and Carol 5,000."}]}
CAROL = ("carol", 5000.0)
STARTUP_TIMEOUT = 90.0
TIMEOUT = 60.0


def token(person: str, *roles: str) -> str:
    """A token the server's auth handler accepts for ``person`` with ``roles``, for an hour."""
    now = int(time.time())
    claims = {"sub": person, "roles": list(roles), "iat": now, "exp": now + 3600}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def bearer(person: str, *roles: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(person, *roles)}"}


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


class DevServer:
    """``langgraph dev`` on a free loopback port, its output in ``server.log``."""

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
                pytest.fail(f"langgraph dev exited:\n{self.output()}")
            with suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/ok", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        pytest.fail(f"langgraph dev did not start:\n{self.output()}")

    def output(self) -> str:
        return re.sub(r"\x1b\[[0-9;]*m", "", self.log.read_text(errors="replace"))[-6000:]

    def stop(self) -> None:
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=15)
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=15)

    def start_thread(self) -> str:
        """A demo thread started with the requester's token, run until it waits for a
        treasurer (Carol's 5,000)."""
        headers = bearer("agent-123", "ai-agent")
        agent = get_sync_client(url=self.url, api_key=None, headers=headers, timeout=TIMEOUT)
        thread_id: str = agent.threads.create()["thread_id"]
        result = agent.runs.wait(thread_id, GRAPH, input=START)
        assert isinstance(result, dict) and "__interrupt__" in result, result
        return thread_id


S = TypeVar("S", bound=DevServer)


@contextmanager
def running(server: S) -> Iterator[S]:
    """``server``, once it answers, stopped afterwards."""
    try:
        server.wait_until_up()
        yield server
    finally:
        server.stop()
