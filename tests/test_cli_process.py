"""The ``handrail`` command as a shell runs it (the installed console script, in a subprocess):
a closed pipe ends it quietly, ``--graph app:make_graph`` imports from the current directory,
``handrail demo --pause`` prints an approve command that works when pasted, and Handrail's
event logs stay off stdout (on stderr with ``--verbose``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from handrail.audit import AuditLog
from handrail.events import ToolEvent
from handrail.tools.demo import transfers

BIN = Path(sys.executable).parent
HANDRAIL = BIN / "handrail"
pytestmark = pytest.mark.skipif(not HANDRAIL.exists(), reason="handrail is not installed")


def shell_env() -> dict[str, str]:
    """The environment of a shell where ``handrail`` is on the PATH; no HANDRAIL_DB."""
    env = {k: v for k, v in os.environ.items() if k not in ("HANDRAIL_DB", "COLUMNS")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def handrail(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HANDRAIL), *argv],
        cwd=cwd,
        env=shell_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_reader_that_stops_early_ends_the_export_quietly(tmp_path: Path) -> None:
    db = tmp_path / "big.db"
    log = AuditLog(db)
    now = datetime.now(UTC).isoformat(timespec="milliseconds")
    log.append(
        [
            ToolEvent(
                timestamp=now,
                event="decided",
                graph="bank",
                agent_id="agent-1",
                thread_id=f"t-{n}",
                tool_call_id="call_1",
                tool="get_balance",
                call_seq=0,
                payload={"account": "operating", "note": "x" * 200},
            )
            for n in range(2000)  # far more than a pipe's buffer holds
        ]
    )
    log.close()
    export = subprocess.Popen(
        [str(HANDRAIL), "audit", "export", "--jsonl", "--db", str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=shell_env(),
    )
    assert export.stdout is not None and export.stderr is not None
    head = subprocess.run(
        ["head", "-n", "1"], stdin=export.stdout, capture_output=True, text=True, timeout=60
    )
    export.stdout.close()  # only head holds the pipe's reading end now
    err = export.stderr.read().decode()
    export.stderr.close()
    code = export.wait(timeout=60)
    assert json.loads(head.stdout)["thread_id"] == "t-0"
    assert err == ""  # no BrokenPipeError traceback, no "Exception ignored" at exit
    assert code == 141  # 128 + SIGPIPE, as a shell reports a reader going away


APP = """\
from handrail import Policy, build_agent
from handrail.demo import demo_model
from handrail.tools.demo import POLICY_PATH, banking_tools


def make_graph(db):
    return build_agent(demo_model(), banking_tools(db), Policy.from_file(POLICY_PATH),
                       checkpointer=db, name="my_app")


if __name__ == "__main__":
    import sys
    from handrail import Actor, RunContext
    make_graph(sys.argv[1]).invoke(
        {"messages": [("user", "pay carol")]},
        {"configurable": {"thread_id": "a-1"}},
        context=RunContext(actor=Actor(id="agent-123", roles=["ai-agent"])),
    )
"""


def test_graph_is_imported_from_the_current_directory(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    paused = subprocess.run(
        [sys.executable, "app.py", "app.db"], cwd=tmp_path, capture_output=True, timeout=120
    )
    assert paused.returncode == 0, paused.stderr
    as_alice = ["--as", "alice", "--role", "treasurer"]
    missing = handrail("approve", "a-1", "--db", "app.db", *as_alice, cwd=tmp_path)
    assert missing.returncode == 2 and "pass --graph MODULE:FACTORY" in missing.stderr
    done = handrail(
        "approve", "a-1", "--db", "app.db", "--graph", "app:make_graph", *as_alice, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == (
        "approved transfer_funds (call call_1_0) → ran once, succeeded"
    )
    assert transfers(tmp_path / "app.db").count(("carol", 5000.0)) == 1


def test_demo_pause_prints_an_approve_command_that_works_when_pasted(tmp_path: Path) -> None:
    paused = handrail("demo", "--pause", cwd=tmp_path)
    assert paused.returncode == 0, paused.stderr
    (command,) = [
        line.strip() for line in paused.stdout.splitlines() if line.strip().startswith("handrail")
    ][-1:]
    assert command.startswith("handrail approve demo-")
    assert "--db handrail-demo.db --as alice --role treasurer" in command
    assert transfers(tmp_path / "handrail-demo.db") == [("bob", 250.0)]  # stopped before carol
    pasted = subprocess.run(
        command, shell=True, cwd=tmp_path, env=shell_env(), capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert pasted.returncode == 0, pasted.stderr
    assert "approved transfer_funds" in pasted.stdout and "ran once, succeeded" in pasted.stdout
    assert transfers(tmp_path / "handrail-demo.db") == [("bob", 250.0), ("carol", 5000.0)]
    again = subprocess.run(
        command, shell=True, cwd=tmp_path, env=shell_env(), capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert again.returncode == 2 and "already decided" in again.stderr


def test_event_logs_never_reach_stdout_and_go_to_stderr_with_verbose(tmp_path: Path) -> None:
    for thread in ("v-1", "v-2"):
        (tmp_path / "app.py").write_text(APP.replace('"a-1"', f'"{thread}"'))
        subprocess.run([sys.executable, "app.py", "app.db"], cwd=tmp_path, check=True, timeout=120)
    base = ["--db", "app.db", "--graph", "app:make_graph", "--as", "alice", "--role", "treasurer"]
    quiet = handrail("approve", "v-1", *base, cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert all(not line.startswith("{") for line in quiet.stdout.splitlines())
    loud = handrail("--verbose", "approve", "v-2", *base, cwd=tmp_path)
    assert loud.returncode == 0
    assert loud.stdout.splitlines()[0].startswith("approved transfer_funds (call call_1_0)")
    events = [json.loads(line) for line in loud.stderr.splitlines()]
    assert {"approval_decided", "started", "succeeded"} <= {e["event"] for e in events}
    assert {e["thread_id"] for e in events} == {"v-2"}
    version = handrail("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("handrail ")
