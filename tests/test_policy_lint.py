"""`Policy.lint` and ``handrail policy check``: names that match nothing, conditions that cannot
hold on the tools' real argument schemas, rules that never decide."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from handrail.auth import Directory
from handrail.cli import main
from handrail.policies import Finding, Policy
from handrail.tools.demo import banking_tools

POLICY = """
default: {effect: ask, approvers: [owner]}
rules:
  - id: reads
    tools: [get_balanse]
    roles: [ai-agnt]
    effect: allow
  - id: typo
    tools: [transfer_funds]
    when: "args.amuont > 1000"
    effect: ask
    approvers: [treasurer]
  - id: string-amount
    tools: [transfer_funds]
    when: "args.amount == '5'"
    effect: allow
  - id: method
    tools: [transfer_funds]
    when: "args.amount.startsWith('1')"
    effect: allow
  - id: never
    tools: [transfer_funds]
    when: "1 > 2"
    effect: allow
  - id: shadowed
    tools: [delete_user]
    roles: [ai-agent]
    effect: allow
  - id: no-deletes
    tools: [delete_user]
    effect: deny
  - id: fine
    tools: [transfer_funds]
    roles: [ai-agent]
    when: "args.amount <= 1000.0 && args.to in ['bob', 'carol']"
    effect: allow
tools:
  refnud: {max_retries: 1}
"""


def codes(findings: list[Finding]) -> set[tuple[str | None, str, str]]:
    return {(f.rule_id, f.field or "", f.code) for f in findings}


def test_lint_finds_each_kind_of_problem_against_the_real_tools(tmp_path: Path) -> None:
    findings = Policy.from_yaml(POLICY).lint(
        tools=banking_tools(tmp_path / "bank.db"),
        directory=Directory.from_mapping({"agent": ["ai-agent"], "tess": ["treasurer"]}),
    )
    assert codes(findings) == {
        ("reads", "tools", "unknown-tool"),
        ("reads", "roles", "unknown-role"),
        ("typo", "when", "unknown-arg"),
        ("string-amount", "when", "type-mismatch"),
        ("method", "when", "type-mismatch"),
        ("never", "when", "never-matches"),
        ("shadowed", "effect", "overridden"),
        (None, "default.approvers", "unknown-role"),
        (None, "tools.refnud", "unknown-tool-settings"),
    }
    messages = {f.code + ":" + (f.rule_id or ""): f.message for f in findings}
    assert "did you mean 'get_balance'?" in messages["unknown-tool:reads"]
    assert "did you mean 'ai-agent'?" in messages["unknown-role:reads"]
    assert "did you mean 'amount'?" in messages["unknown-arg:typo"]
    assert {f.level for f in findings if f.code in ("never-matches", "overridden")} == {"warning"}


def test_a_clean_policy_has_no_findings(tmp_path: Path) -> None:
    clean = Policy.from_yaml(
        "rules:\n  - id: ok\n    tools: [transfer_funds]\n    when: args.amount > 5.0\n"
        "    effect: ask\n    approvers: [treasurer]\n"
    )
    tools = banking_tools(tmp_path / "bank.db")
    assert clean.lint(tools=tools, directory={"tess": ["treasurer"]}) == []


def test_a_json_schema_tool_is_checked_by_its_schema() -> None:
    schema = {
        "type": "object",
        "properties": {"payee": {"$ref": "#/$defs/P"}, "n": {"type": ["integer", "null"]}},
        "$defs": {"P": {"type": "object", "properties": {"iban": {"type": "string"}}}},
    }
    policy = Policy.from_yaml(
        "rules:\n  - id: r\n    tools: [pay]\n    effect: allow\n"
        "    when: args.payee.ibn == 'x' || args.n == 'one'\n"
    )
    found = {(f.code, f.message) for f in policy.lint(tools={"pay": schema})}
    assert found == {
        ("unknown-arg", "args.payee.ibn is not an argument; did you mean 'iban'? (tool 'pay')"),
        ("type-mismatch", "args.n is integer or null, compared (==) with string (tool 'pay')"),
    }


def test_probing_with_the_schemas_types_finds_what_tokens_cannot() -> None:
    policy = Policy.from_yaml(
        "rules:\n  - id: r\n    tools: [pay]\n    effect: allow\n    when: args.n + 1 > 'x'\n"
    )
    found = policy.lint(tools={"pay": {"type": "object", "properties": {"n": {"type": "integer"}}}})
    assert [(f.code, f.rule_id) for f in found] == [("type-mismatch", "r")]


def test_check_prints_findings_in_80_columns_and_exits_1_on_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    people = tmp_path / "people.yaml"
    people.write_text("people:\n  agent: [ai-agent]\n  tess: [treasurer]\n")
    check = ["policy", "check", str(path), "--graph", "handrail.demo:demo_graph"]
    assert main([*check, "--directory", str(people)]) == 1
    out = capsys.readouterr().out
    assert all(len(line) <= 80 for line in out.splitlines())
    assert "'get_balance'?" in out
    assert "default ask; 6 error(s), 3 warning(s)" in " ".join(out.split())
    assert main([*check, "--json"]) == 1
    shown = json.loads(capsys.readouterr().out)
    assert shown["ok"] is False
    assert {f["code"] for f in shown["findings"]} >= {"unknown-tool", "unknown-arg"}


def test_check_without_a_graph_only_lints_what_needs_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    assert main(["policy", "check", str(path), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert {f["code"] for f in shown["findings"]} == {"never-matches", "overridden"}
