"""``langgraph.json``: each graph path imports, compiles, and runs under a server's checkpointer."""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.pregel import Pregel
from langgraph.types import Command

from handrail import HandrailGraph
from handrail.audit import AuditLog

ROOT = Path(__file__).parent.parent
CONFIG = json.loads((ROOT / "langgraph.json").read_text())


def _load(spec: str, db: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The object at ``./file.py:name``, imported as the server does: by path."""
    monkeypatch.setenv("HANDRAIL_DB", str(db))
    monkeypatch.setattr(sys, "path", list(sys.path))  # the module adds its own folder
    file, name = spec.split(":")
    module_spec = importlib.util.spec_from_file_location(f"served_{name}", ROOT / file)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return getattr(module, name)


def test_the_config_serves_the_demo_agent_and_the_workflow() -> None:
    assert set(CONFIG["graphs"]) == {"handrail_demo", "compliance_change"}
    assert CONFIG["dependencies"] == ["."]


def test_the_config_serves_them_behind_handrails_auth_handler() -> None:
    # Studio auth off: `langgraph dev` would otherwise let `x-auth-scheme: langsmith` through.
    assert CONFIG["auth"] == {"path": "handrail.auth.server:auth", "disable_studio_auth": True}
    module, name = CONFIG["auth"]["path"].split(":")
    assert name in importlib.import_module(module).__all__
    assert not {"HANDRAIL_AUTH", "HANDRAIL_JWT_SECRET"} & set(CONFIG.get("env", {}))  # no secrets


def test_the_decider_roles_are_those_of_the_served_policies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = CONFIG["graphs"]["handrail_demo"].split(":")[0]
    roles = _load(f"{file}:DECIDER_ROLES", tmp_path / "handrail.db", monkeypatch)
    assert roles == ("compliance-officer", "operator", "treasurer")
    assert CONFIG["env"]["HANDRAIL_DECIDER_ROLES"] == ",".join(roles)


@pytest.mark.parametrize("graph_id", sorted(CONFIG["graphs"]))
def test_each_graph_path_imports_and_compiles(
    graph_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    graph = _load(CONFIG["graphs"][graph_id], tmp_path / "handrail.db", monkeypatch)
    assert isinstance(graph, Pregel) and isinstance(graph, HandrailGraph)
    assert graph.name == graph_id
    assert graph.checkpointer is None  # the server brings its own
    nodes = set(graph.get_graph().nodes)
    assert {"policy_check", "approval", "execute", "classify_error"} <= nodes


def test_the_served_workflow_pauses_and_resumes_by_thread_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "handrail.db"
    graph = _load(CONFIG["graphs"]["compliance_change"], db, monkeypatch)
    served = graph.copy({"checkpointer": InMemorySaver()})  # what the server does
    assert isinstance(served, HandrailGraph)
    config = {"configurable": {"thread_id": "t-1"}}
    context = {"actor": {"id": "compliance-bot", "roles": ["compliance-bot"]}}  # JSON, as sent
    start = {"inputs": {"country": "DE", "reason": "objection"}}
    paused = served.invoke(start, config, context=context)
    assert paused["__interrupt__"][0].value["action_requests"][0]["name"] == "apply_change"

    decision = {
        "decisions": [{"type": "approve"}],
        "approver": {"id": "olga", "roles": ["compliance-officer"]},
    }
    done = served.invoke(Command(resume=decision), config, context=context)
    assert done["status"] == "completed"
    assert AuditLog(db).verify().ok
