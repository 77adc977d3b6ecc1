"""The command line at 3 a.m.: every table fits an 80-column terminal, every command that reads
prints JSON with ``--json``, ``$HANDRAIL_DB`` stands for ``--db``, exit codes say what happened
(0 done, 1 a check failed, 2 refused or not found), errors name the flag to use, and a decision
says what it ran. In-process (``main``), on real SQLite files, real graphs and interrupts."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from langchain_core.tools import tool
from support import AGENT, CTX, agent, approval_rows, call, config, turn

from handrail import Policy, RunContext
from handrail.cli import main
from handrail.demo import demo_graph
from handrail.graph import HandrailGraph
from handrail.tools import ServerError
from handrail.tools.demo import POLICY_PATH, transfers

WIDTH = 80
LONG_THREAD = str(uuid.UUID(int=0xA1B2C3D4E5F60718293A4B5C6D7E8F90))
"""A thread id as LangGraph servers make them: 36 characters."""

FAILURES: list[Exception] = []
"""What ``flaky`` raises next."""


@tool
def flaky(q: str) -> str:
    """Fetch a resource from a flaky API."""
    if FAILURES:
        raise FAILURES.pop(0)
    return f"data for {q} [ok]"


def escalating_graph(db: str) -> HandrailGraph:
    """Loaded by the CLI as ``--graph test_cli_fit:escalating_graph``."""
    policy = Policy.from_data({"rules": [{"id": "r", "tools": ["flaky"], "effect": "allow"}]})
    return agent(db, [flaky], policy, turn(call("flaky", q="[red]" + "x" * 60)))


@pytest.fixture
def busy(tmp_path: Path) -> Path:
    """A database with two demo threads waiting for a treasurer (one with a 36-character id)
    and one escalation, and a decided thread in the audit trail."""
    db = tmp_path / "busy.db"
    graph = demo_graph(db)
    for thread in ("d-1", LONG_THREAD, "done"):
        result = graph.invoke(
            {"messages": [("user", "pay")]},
            {"configurable": {"thread_id": thread}},
            context=RunContext(actor=AGENT),
        )
        assert "__interrupt__" in result
    FAILURES[:] = [ServerError("upstream 500: the service is unavailable right now")]
    escalating_graph(str(db)).invoke({"messages": [("user", "go")]}, config("e-1"), context=CTX)
    assert main(["approve", "done", "--db", str(db), "--as", "alice", "--role", "treasurer"]) == 0
    return db


@pytest.fixture
def narrow(monkeypatch: pytest.MonkeyPatch) -> None:
    """An 80-column terminal."""
    monkeypatch.setenv("COLUMNS", str(WIDTH))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def fits(text: str) -> list[str]:
    lines = text.splitlines()
    assert lines, "no output"
    too_wide = [line for line in lines if len(line) > WIDTH]
    assert not too_wide, "\n".join(too_wide)
    return lines


# -- 80 columns --------------------------------------------------------------------------------


def test_pending_fits_80_columns_one_line_per_call(
    busy: Path, narrow: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "pending", "--db", str(busy))
    assert (code, err) == (0, "")
    lines = fits(out)
    assert lines[0].split() == ["THREAD", "CALL", "TOOL", "ARGS", "WHY", "WHO", "AGE", "DUE"]
    assert len(lines) == 1 + 3 + 1 and lines[-1] == "3 call(s) waiting"
    rows = {line.split()[0]: line for line in lines[1:-1]}
    assert rows["d-1"].split()[1:3] == ["call_1_0", "transfer_funds"]
    assert rows["e-1"].split()[-4:-2] == ["server_error", "operator"]  # what failed, who decides
    (cut,) = [line for key, line in rows.items() if key.startswith(LONG_THREAD[:8])]
    assert "…" in cut  # cut with an ellipsis, not wrapped onto a second line


def test_without_a_terminal_nothing_is_cut(busy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "pending", "--db", str(busy))
    assert code == 0 and LONG_THREAD in out and "…" not in out
    assert '"memo": "contract"' in out


def test_show_fits_80_columns_and_wraps_long_values_whole(
    busy: Path, narrow: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "show", "e-1", "--db", str(busy))
    lines = fits(out)
    assert code == 0 and lines[0] == "thread e-1 (graph handrail_agent), asked by agent-123"
    joined = " ".join(line.strip() for line in lines)
    assert "[red]" + "x" * 60 in joined.replace(" ", "")  # all there, and not read as markup
    assert "decide with retry, skip or abort" in joined
    code, out, _ = run(capsys, "show", "d-1", "--db", str(busy))
    digest = next(line.split()[-1] for line in fits(out) if "args hash" in line)
    assert len(digest) == 64


def test_stats_and_explain_and_verify_fit_80_columns(
    busy: Path, narrow: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "stats", "--db", str(busy))
    lines = fits(out)
    assert code == 0 and lines[0].split()[0] == "TOOL"
    assert {line.split()[0] for line in lines[1:]} >= {"flaky", "get_balance"}
    explain = ["policy", "explain", str(POLICY_PATH), "--tool", "transfer_funds"]
    code, out, _ = run(capsys, *explain, "--args", '{"amount": 5000}', "--role", "ai-agent")
    lines = fits(out)
    assert code == 0 and lines[0].startswith("decision: ask")
    code, out, _ = run(capsys, "audit", "verify", "--db", str(busy))
    assert code == 0 and out.startswith("audit ok:")


def test_a_retry_says_how_many_times_the_call_ran(
    busy: Path, narrow: None, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["retry", "e-1", "--db", str(busy), "--graph", "test_cli_fit:escalating_graph"]
    code, out, _ = run(capsys, *argv, "--as", "ops-1", "--role", "operator")
    assert code == 0
    lines = fits(out)
    assert lines[0] == "retried flaky (call call_0_0) → ran twice (1 retry), succeeded"


# -- --json on every command that reads ----------------------------------------------------------


def test_every_read_command_prints_json(busy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = ["--db", str(busy)]
    reads: dict[str, list[str]] = {
        "pending": ["pending", *db],
        "show": ["show", "d-1", *db],
        "stats": ["stats", *db],
        "audit verify": ["audit", "verify", *db],
        "audit head": ["audit", "head", *db],
        "policy check": ["policy", "check", str(POLICY_PATH)],
        "policy explain": ["policy", "explain", str(POLICY_PATH), "--tool", "get_balance"],
        "db migrate": ["db", "migrate", *db],
        "expire": ["expire", *db],
    }
    got: dict[str, Any] = {}
    for name, argv in reads.items():
        code, out, err = run(capsys, *argv, "--json")
        assert (code, err) == (0, ""), name
        got[name] = json.loads(out)
    assert {i["thread_id"] for i in got["pending"]} == {"d-1", LONG_THREAD, "e-1"}
    assert [(i["tool"], i["rule_id"]) for i in got["show"]] == [("transfer_funds", "big-transfers")]
    assert {s["tool"] for s in got["stats"]} >= {"transfer_funds", "flaky"}
    assert got["audit verify"]["ok"] is True
    assert got["audit head"]["head"] == got["audit verify"]["head"]
    assert got["policy check"]["ok"] is True and "big-transfers" in got["policy check"]["rules"]
    assert got["policy explain"]["decision"]["effect"] == "deny"  # no role: no rule allows
    assert got["db migrate"]["applied"] == [] and got["expire"] == []
    code, out, _ = run(capsys, "audit", "export", "--jsonl", *db)
    assert code == 0 and all(json.loads(line)["seq"] for line in out.splitlines())


def test_a_decision_says_what_it_ran_as_text_or_json(
    busy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = ["--db", str(busy)]
    code, out, err = run(capsys, "approve", "d-1", *db, "--as", "alice", "--role", "treasurer")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "approved transfer_funds (call call_1_0) → ran once, succeeded",
        "thread d-1: the run went on and ended: "
        "Done: Bob got 250, Carol got 5,000; deleting Bob was not allowed.",
    ]
    reject = ["reject", LONG_THREAD, *db, "--reason", "not today", "--json"]
    code, out, _ = run(capsys, *reject, "--as", "alice", "--role", "treasurer")
    said = json.loads(out)
    assert code == 0
    assert said["calls"] == [
        {
            "call_id": "call_1_0",
            "tool": "transfer_funds",
            "decision": "reject",
            "status": "rejected",
            "runs": 0,
            "retries": 0,
            "error": None,
            "outcome": "not run",
        }
    ]
    assert said["ended"] is True and said["waiting"] == []
    assert transfers(busy).count(("carol", 5000.0)) == 2  # "done" and d-1, not the rejected one


# -- HANDRAIL_DB, exit codes, errors that name the flag ------------------------------------------


def test_handrail_db_is_the_default_database(
    busy: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run(capsys, "pending")
    assert code == 2 and "--db" in err and "HANDRAIL_DB" in err
    monkeypatch.setenv("HANDRAIL_DB", str(busy))
    code, out, _ = run(capsys, "pending", "--json")
    assert code == 0 and len(json.loads(out)) == 3
    code, out, _ = run(capsys, "approve", "d-1", "--as", "alice", "--role", "treasurer")
    assert code == 0 and "ran once, succeeded" in out
    code, _, err = run(capsys, "pending", "--db", str(busy.parent / "other.db"))
    assert code == 2 and "no database at" in err  # --db wins over the environment


def test_exit_codes_0_done_1_check_failed_2_refused_or_not_found(
    busy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = ["--db", str(busy)]
    code, out, err = run(capsys, "show", "nope", *db)
    assert (code, out) == (2, "") and "nothing is waiting" in err and len(err.splitlines()) == 1
    assert run(capsys, "show", "nope", *db, "--json")[0] == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - {id: r1, tools: [t], effect: allow, when: 'args.x >'}\n")
    assert run(capsys, "policy", "check", str(bad))[0] == 1
    assert run(capsys, "policy", "check", str(tmp_path / "none.yaml"))[0] == 2
    code, _, err = run(capsys, "approve", "d-1", *db, "--as", "bob", "--role", "teller")
    assert code == 2 and "holds none of the roles" in err
    assert approval_rows(busy)[0]["status"] == "open"


def test_a_missing_graph_is_named_by_its_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "anon.db"  # its graph, "handrail_agent", has no entry point
    FAILURES[:] = [ServerError("boom")]
    escalating_graph(str(db)).invoke({"messages": [("user", "go")]}, config("t-2"), context=CTX)
    code, _, err = run(capsys, "retry", "t-2", "--db", str(db), "--as", "ops", "--role", "operator")
    assert code == 2 and "pass --graph MODULE:FACTORY" in err
    assert "Inbox.register" not in err and "graph=" not in err
    code, _, err = run(capsys, "retry", "t-2", "--db", str(db), "--graph", "app", "--as", "ops")
    assert code == 2 and "--graph must be MODULE:FACTORY" in err


def test_version_and_the_help_of_serve_and_worker(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("handrail 0.")
    for command, flags in [
        ("serve", ["--host", "--port", "--db"]),
        ("worker", ["--db", "--once", "--graph", "--interval"]),
    ]:
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert all(flag in text for flag in flags), text
    assert run(capsys, "worker")[2].startswith("handrail: no database given: pass --db")
