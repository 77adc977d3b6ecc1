"""The command line: the demo across two processes, and policy check/explain."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from handrail.cli import main
from handrail.tools.demo import POLICY_PATH, transfers


def test_demo_pauses_resumes_in_a_new_process_and_runs_the_big_transfer_once(tmp_path) -> None:
    db = tmp_path / "demo.db"
    done = subprocess.run(
        [sys.executable, "-m", "handrail", "demo", "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "paused for approval" in out and "big-transfers" in out
    assert "approved by alice" in out and "[deny by no-deletes]" in out
    pids = [line.split("pid ")[1].split(")")[0] for line in out.splitlines() if "pid " in line]
    assert len(set(pids)) == 2  # the approval happened in another process
    assert transfers(db) == [("bob", 250.0), ("carol", 5000.0)]
    again = subprocess.run(  # a second demo on the same file is a new thread, and passes too
        [sys.executable, "-m", "handrail", "demo", "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert again.returncode == 0, again.stderr
    assert len(transfers(db)) == 4


def test_policy_check_accepts_the_demo_policy(capsys) -> None:
    assert main(["policy", "check", str(POLICY_PATH)]) == 0
    assert "4 rule(s)" in capsys.readouterr().out


def test_policy_check_names_file_rule_and_field_and_exits_2(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - {id: r1, tools: [t], effect: allow, when: 'args.x >'}\n")
    assert main(["policy", "check", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) >= 1 and err.startswith("handrail: ")
    assert str(bad) in err and "'r1'" in err and "'when'" in err


def test_policy_explain_shows_each_rule(capsys) -> None:
    code = main(
        [
            "policy",
            "explain",
            str(POLICY_PATH),
            "--tool",
            "transfer_funds",
            "--args",
            '{"amount": 5000.0}',
            "--role",
            "ai-agent",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert out.startswith("decision: ask")
    assert "✓ big-transfers" in out and "· small-transfers" in out and "· reads" in out


@pytest.mark.parametrize("args", ["[1]", "{nope"])
def test_policy_explain_refuses_bad_args(args: str, capsys) -> None:
    assert main(["policy", "explain", str(POLICY_PATH), "--tool", "t", "--args", args]) == 2
    assert "--args" in capsys.readouterr().err
