"""The command line: the demo across two processes, policy check/explain, operating approvals."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest
from support import AGENT, approval_rows, table_rows

from handrail import RunContext
from handrail.cli import main
from handrail.demo import demo_graph
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
    # the audit trail has each step once, from both processes, and verifies
    assert "12 events from both processes" in out and "approval_decided   transfer_funds" in out
    assert f"handrail audit verify --db {db}: ok, 12 rows" in out
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


def test_policy_check_names_file_rule_and_field_and_exits_1(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - {id: r1, tools: [t], effect: allow, when: 'args.x >'}\n")
    assert main(["policy", "check", str(bad)]) == 1  # a check that failed
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
    verdicts = {line.split()[1]: line.split()[0] for line in out.splitlines()[2:]}
    assert verdicts == {
        "reads": "·",
        "small-transfers": "·",
        "big-transfers": "✓",
        "no-deletes": "·",
    }


@pytest.mark.parametrize("args", ["[1]", "{nope"])
def test_policy_explain_refuses_bad_args(args: str, capsys) -> None:
    assert main(["policy", "explain", str(POLICY_PATH), "--tool", "t", "--args", args]) == 2
    assert "--args" in capsys.readouterr().err


# -- operating approvals ----------------------------------------------------------------------

AS_ALICE = ["--as", "alice", "--role", "treasurer"]


@pytest.fixture
def paused_demo(tmp_path: Path) -> Path:
    """Two demo threads waiting for a treasurer on one SQLite file (graph found by entry point)."""
    db = tmp_path / "ops.db"
    graph = demo_graph(db)
    for thread in ("d-1", "d-2"):
        result = graph.invoke(
            {"messages": [("user", "pay")]},
            {"configurable": {"thread_id": thread}},
            context=RunContext(actor=AGENT),
        )
        assert "__interrupt__" in result
    return db


def refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run the CLI, expect exit 2 and exactly one line on stderr; return that line."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("handrail: "), err
    return err[0]


def test_pending_lists_a_table_or_json(paused_demo: Path, capsys) -> None:
    assert main(["pending", "--db", str(paused_demo)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:6] == ["THREAD", "CALL", "TOOL", "ARGS", "WHY", "WHO"]
    assert out.splitlines()[1].split()[:3] == ["d-1", "call_1_0", "transfer_funds"]
    assert "d-2" in out and "big-transfers" in out and "treasurer" in out
    assert "2 call(s) waiting" in out
    assert main(["pending", "--db", str(paused_demo), "--json", "--role", "treasurer"]) == 0
    items = json.loads(capsys.readouterr().out)
    assert [i["thread_id"] for i in items] == ["d-1", "d-2"]
    assert items[0]["args"] == {"to": "carol", "amount": 5000.0, "memo": "contract"}
    assert items[0]["approvers"] == ["treasurer"] and items[0]["expired"] is False
    assert main(["pending", "--db", str(paused_demo), "--json", "--role", "cfo"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_show_then_approve_runs_the_call_once_and_a_second_approve_exits_2(
    paused_demo: Path, capsys
) -> None:
    assert main(["show", "d-1", "--db", str(paused_demo)]) == 0
    shown = capsys.readouterr().out
    digest = next(line.split()[-1] for line in shown.splitlines() if "args hash" in line)
    db = str(paused_demo)
    line = refused(capsys, "approve", "d-1", "--db", db, "--hash", "0" * 12, *AS_ALICE)
    assert "StaleApproval" not in line and "hash" in line
    assert main(["approve", "d-1", "--db", db, "--hash", digest[:12], *AS_ALICE]) == 0
    said = capsys.readouterr().out.splitlines()
    assert said[0] == "approved transfer_funds (call call_1_0) → ran once, succeeded"
    assert said[1].startswith("thread d-1: the run went on and ended: Done: Bob got 250")
    assert transfers(paused_demo).count(("carol", 5000.0)) == 1
    assert "already decided" in refused(capsys, "approve", "d-1", "--db", db, *AS_ALICE)
    assert transfers(paused_demo).count(("carol", 5000.0)) == 1


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["approve", "d-1", "--as", "bob", "--role", "teller"], "holds none of the roles"),
        (["approve", "d-1", "--as", "agent-123", "--role", "treasurer"], "may not decide"),
        (["approve", "d-1", "--as", " ", "--role", "treasurer"], "approver id"),
        (["approve", "d-1", "--call", "call_9", *AS_ALICE], "call_9"),
        (["approve", "nope", *AS_ALICE], "no approval is waiting"),
        (["edit", "d-1", "--call", "call_1_0", "--args", "[1]", *AS_ALICE], "JSON object"),
        (["edit", "d-1", "--call", "call_1_0", "--args", '{"to": 1}', *AS_ALICE], "do not fit"),
        (["approve", "d-1", "--graph", "nowhere:f", *AS_ALICE], "nowhere"),
    ],
)
def test_refusals_exit_2_with_one_line_and_change_nothing(
    paused_demo: Path, capsys, argv: list[str], says: str
) -> None:
    before = approval_rows(paused_demo)
    assert says in refused(capsys, *argv, "--db", str(paused_demo))
    assert approval_rows(paused_demo) == before
    assert ("carol", 5000.0) not in transfers(paused_demo)


def test_edit_reject_and_a_graph_given_by_module_and_factory(paused_demo: Path, capsys) -> None:
    db = str(paused_demo)
    edit = ["edit", "d-1", "--call", "call_1_0", "--args", '{"to": "carol", "amount": 4000}']
    assert main([*edit, "--db", db, "--graph", "handrail.demo:demo_graph", *AS_ALICE]) == 0
    assert ("carol", 4000.0) in transfers(paused_demo)
    assert main(["reject", "d-2", "--db", db, "--reason", "not this month", *AS_ALICE]) == 0
    capsys.readouterr()
    assert ("carol", 5000.0) not in transfers(paused_demo)
    assert main(["pending", "--db", db]) == 0
    assert "no approvals or escalations waiting" in capsys.readouterr().out
    rows = {r["thread_id"]: (r["outcome"], r["decided_by"]) for r in approval_rows(paused_demo)}
    assert rows == {"d-1": ("edit", "alice"), "d-2": ("reject", "alice")}


def test_expire_resolves_what_is_past_its_deadline(tmp_path: Path, capsys) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        POLICY_PATH.read_text().replace("expires_in: 24h", "expires_in: 1s"), encoding="utf-8"
    )
    db = tmp_path / "exp.db"
    demo_graph(db, policy).invoke(
        {"messages": [("user", "pay")]},
        {"configurable": {"thread_id": "e-1"}},
        context=RunContext(actor=AGENT),
    )
    factory = tmp_path / "exp_app.py"
    factory.write_text(
        "from pathlib import Path\nfrom handrail.demo import demo_graph\n"
        f"def make(db): return demo_graph(db, Path({str(policy)!r}))\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        assert main(["expire", "--db", str(db), "--graph", "exp_app:make"]) == 0
        assert "0 request(s) expired" in capsys.readouterr().out
        time.sleep(1.05)
        assert main(["expire", "--db", str(db), "--graph", "exp_app:make"]) == 0
    finally:
        sys.path.remove(str(tmp_path))
    out = capsys.readouterr().out
    assert "expired: thread e-1 transfer_funds" in out and "1 request(s) expired" in out
    assert ("carol", 5000.0) not in transfers(db)
    assert approval_rows(db)[0]["status"] == "expired"


def test_inbox_commands_need_an_existing_database(tmp_path: Path, capsys) -> None:
    line = refused(capsys, "pending", "--db", str(tmp_path / "missing.db"))
    assert "no database" in line


SECRET = "s" * 40


def token(sub: str, *roles: str, secret: str = SECRET) -> str:
    claims = {"sub": sub, "roles": list(roles), "exp": int(time.time()) + 300}
    return jwt.encode(claims, secret, algorithm="HS256")


def test_decisions_take_a_token_and_refuse_claims_where_the_graph_takes_tokens(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "tok.db"
    factory = tmp_path / "tok_app.py"
    factory.write_text(
        "from handrail import Policy, build_agent\n"
        "from handrail.auth import JwtAuthenticator\n"
        "from handrail.demo import demo_model\n"
        "from handrail.tools.demo import POLICY_PATH, banking_tools\n"
        "def make(db):\n"
        "    return build_agent(demo_model(), banking_tools(db), Policy.from_file(POLICY_PATH),\n"
        f"        checkpointer=db, authenticator=JwtAuthenticator(secret={SECRET!r}))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import tok_app

    tok_app.make(str(db)).invoke(
        {"messages": [("user", "pay")]},
        {"configurable": {"thread_id": "k-1"}},
        context=RunContext(actor=AGENT),
    )
    base = ["approve", "k-1", "--db", str(db), "--graph", "tok_app:make"]
    assert "identifies approvers by token" in refused(capsys, *base, *AS_ALICE)
    forged = token("alice", "treasurer", secret="x" * 40)
    assert "signature" in refused(capsys, *base, "--token", forged)
    assert "holds none of the roles" in refused(capsys, *base, "--token", token("bob", "teller"))
    assert ("carol", 5000.0) not in transfers(db)
    monkeypatch.setenv("HANDRAIL_TOKEN", token("alice", "treasurer"))
    assert main(base) == 0  # the token from the environment
    assert transfers(db).count(("carol", 5000.0)) == 1
    (decided,) = table_rows(
        db, "SELECT approver, identified_by FROM handrail_audit WHERE event = 'approval_decided'"
    )
    assert decided == {"approver": "alice", "identified_by": "token sub=alice"}
