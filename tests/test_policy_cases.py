"""``handrail policy test POLICY CASES.yaml`` and ``policy explain --graph``: cases decided on
the demo bank's real graph and policy, their arguments coerced as a run coerces them."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from handrail.cli import main
from handrail.errors import PolicyError
from handrail.policies import Policy, load_cases, run_cases
from handrail.tools.demo import POLICY_PATH

GRAPH = ["--graph", "handrail.demo:demo_graph"]
CASES = """
cases:
  - {tool: transfer_funds, args: {amount: "5000", to: bob}, roles: [ai-agent], expect: ask,
     rule: big-transfers}
  - {tool: transfer_funds, args: {amount: 5, to: bob}, roles: [ai-agent], expect: ask}
  - {tool: delete_user, args: {user_id: u1}, roles: [ai-agent], expect: deny, rule: no-deletes}
  - {name: reads need the role, tool: get_balance, args: {account: a}, expect: allow, rule: reads}
"""


@pytest.fixture
def cases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("COLUMNS", "80")
    path = tmp_path / "cases.yaml"
    path.write_text(CASES)
    return path


def test_failing_cases_exit_1_with_a_table_that_fits_80_columns(
    cases: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["policy", "test", str(POLICY_PATH), str(cases), *GRAPH]) == 1
    out = capsys.readouterr().out
    assert all(len(line) <= 80 for line in out.splitlines())
    assert "#2 transfer_funds" in out and "allow small-transfers" in out
    assert "reads need the role" in out and "deny default" in out
    assert "#1 transfer_funds" not in out and "#3 delete_user" not in out
    assert out.splitlines()[-1] == "2 of 4 case(s) hold; 2 failed"


def test_cases_that_hold_exit_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(
        "cases:\n  - {tool: transfer_funds, args: {amount: 5000.0, to: b}, roles: [ai-agent],"
        " expect: ask, rule: big-transfers}\n  - {tool: refund, expect: deny, rule: default}\n"
    )
    assert main(["policy", "test", str(POLICY_PATH), str(path)]) == 0
    assert capsys.readouterr().out.strip() == "2 of 2 case(s) hold"


def test_junit_has_one_testcase_per_case_and_a_failure_for_each_that_fails(
    cases: Path, tmp_path: Path
) -> None:
    junit = tmp_path / "junit.xml"
    main(["policy", "test", str(POLICY_PATH), str(cases), *GRAPH, "--junit", str(junit)])
    root = ET.parse(junit).getroot()
    suite = root.find("testsuite")
    assert suite is not None and (suite.get("tests"), suite.get("failures")) == ("4", "2")
    failed = {c.get("name"): c.find("failure") for c in suite.iter("testcase")}
    assert [n for n, f in failed.items() if f is not None] == [
        "#2 transfer_funds",
        "reads need the role",
    ]
    failure = failed["reads need the role"]
    assert failure is not None
    assert failure.get("message") == "expected allow by reads, got deny by default"


def test_json_lists_the_failures(cases: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["policy", "test", str(POLICY_PATH), str(cases), *GRAPH, "--json"])
    shown = json.loads(capsys.readouterr().out)
    assert shown["cases"] == 4
    assert [(f["name"], f["effect"], f["rule"]) for f in shown["failed"]] == [
        ("#2 transfer_funds", "allow", "small-transfers"),
        ("reads need the role", "deny", "default"),
    ]


def test_without_the_graph_a_string_amount_is_not_coerced(
    cases: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = Policy.from_file(POLICY_PATH)
    first = run_cases(policy, load_cases(cases))[0]
    assert (first.ok, first.decision.effect) == (False, "deny")  # "5000" > 1000.0 fails in CEL


def test_explain_with_the_graph_coerces_like_a_run(capsys: pytest.CaptureFixture[str]) -> None:
    call = ["policy", "explain", str(POLICY_PATH), "--tool", "transfer_funds", "--role"]
    call += ["ai-agent", "--args", '{"amount": "250", "to": "bob"}', "--json"]
    assert main(call) == 0
    assert json.loads(capsys.readouterr().out)["decision"]["effect"] == "deny"
    assert main([*call, *GRAPH]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["decision"]["effect"], shown["decision"]["rule_id"]) == (
        "allow",
        "small-transfers",
    )
    assert shown["args"]["amount"] == 250.0


def test_explain_with_the_graph_refuses_arguments_a_run_would_refuse(
    capsys: pytest.CaptureFixture[str],
) -> None:
    call = ["policy", "explain", str(POLICY_PATH), "--tool", "transfer_funds", *GRAPH]
    assert main([*call, "--args", '{"amount": "lots", "to": "bob"}']) == 2
    assert "do not fit its schema" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("cases: []\n", "non-empty list 'cases'"),
        ("cases:\n  - {tool: x}\n", "case #1: Field required"),
        ("cases:\n  - {tool: x, expect: maybe}\n", "case #1"),
        ("cases:\n  - {tool: x, expect: deny, extra: 1}\n", "unknown field"),
    ],
)
def test_a_bad_cases_file_is_named(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError) as info:
        load_cases(path)
    assert info.value.source == str(path)
    assert fragment in info.value.problem
