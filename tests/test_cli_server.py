"""``handrail approve --server URL``: a thread paused on ``langgraph dev`` (the repository's
``langgraph.json``, Handrail's auth handler on) is listed by ``handrail pending`` from the
server's ``HANDRAIL_DB``, and decided through ``langgraph-sdk`` with the approver's token.
Without ``--server``, ``approve`` says to use it (it used to say that the process had stopped
before the request was saved). The server is `dev_server.DevServer`."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

pytest.importorskip(
    "langgraph_cli", reason="the LangGraph CLI is not installed (pip install -e '.[server]')"
)

from dev_server import CAROL, DevServer, running, token

from handrail.cli import main
from handrail.tools.demo import transfers


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    with running(DevServer(tmp_path_factory.mktemp("langgraph-dev-cli"))) as up:
        yield up


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HANDRAIL_DB", "HANDRAIL_TOKEN", "HANDRAIL_SERVER"):
        monkeypatch.delenv(name, raising=False)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_server_thread_is_listed_and_approve_without_server_says_to_use_it(
    server: DevServer, capsys: pytest.CaptureFixture[str]
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
    server: DevServer, capsys: pytest.CaptureFixture[str]
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
    server: DevServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
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
