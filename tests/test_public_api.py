"""The public API is pinned: examples, notebooks and users' code import these names."""

from __future__ import annotations

from pathlib import Path

import handrail
import handrail.errors
import handrail.policies
import handrail.testing


def test_top_level_names() -> None:
    assert sorted(handrail.__all__) == [
        "Actor",
        "AgentState",
        "Decision",
        "Directory",
        "Explanation",
        "HandrailGraph",
        "Inbox",
        "JwtAuthenticator",
        "PendingApproval",
        "Policy",
        "RunContext",
        "Step",
        "Token",
        "ToolCallRecord",
        "ToolGateState",
        "WorkflowState",
        "build_agent",
        "build_tool_gate",
        "build_workflow",
    ]
    for name in handrail.__all__:
        assert getattr(handrail, name).__doc__, name


def test_error_hierarchy() -> None:
    errors = handrail.errors
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.HandrailError), name
    for name in [
        "ResumeError",
        "NothingPending",
        "ApproverNotAuthorized",
        "SelfApproval",
        "StaleApproval",
        "AlreadyDecided",
        "ApprovalExpired",
        "DuplicateApprover",
        "UnknownCall",
    ]:
        assert issubclass(getattr(errors, name), errors.ApprovalError), name
    assert not issubclass(errors.PolicyError, errors.ApprovalError)
    assert issubclass(errors.AlreadyDecided, errors.NothingPending)
    assert issubclass(errors.UnknownCall, errors.ResumeError)
    assert not issubclass(errors.GraphNotFound, errors.ApprovalError)


def test_scripted_model_and_policy_modules() -> None:
    assert handrail.testing.__all__ == ["ScriptedChatModel", "postgres_schema", "postgres_server"]
    assert {"Policy", "Decision", "Explanation", "Rule", "ToolSettings"} <= set(
        handrail.policies.__all__
    )


def test_the_review_core_imports_no_langgraph() -> None:
    review = Path(handrail.__file__).parent / "review"
    for module in sorted(review.glob("*.py")):
        text = module.read_text(encoding="utf-8")
        assert "from langgraph" not in text and "import langgraph" not in text, module.name
