"""The graphs ``langgraph.json`` serves: the demo bank agent and the compliance workflow.

``langgraph dev`` (``pip install -e '.[server]'``) runs them with the server's own checkpointer;
Handrail's tables (the approvals inbox, the execution ledger, the audit) and the demo's data are
kept in the SQLite file or PostgreSQL URL named by ``HANDRAIL_DB`` (default ``handrail-server.db``).
Start a run with the actor as the run's context, and resume it by thread ID with Handrail's
decision::

    from langgraph_sdk import get_sync_client

    client = get_sync_client(url="http://127.0.0.1:2024")
    thread = client.threads.create()
    actor = {"actor": {"id": "agent-123", "roles": ["ai-agent"]}}
    client.runs.wait(thread["thread_id"], "handrail_demo",
                     input={"messages": [{"role": "user", "content": "pay carol"}]},
                     context=actor)
    client.threads.get(thread["thread_id"])["interrupts"]          # the approval request
    client.runs.wait(thread["thread_id"], "handrail_demo", context=actor,
                     command={"resume": {"decisions": [{"type": "approve"}],
                                         "approver": {"id": "alice", "roles": ["treasurer"]}}})
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from handrail import Policy, build_agent, build_workflow
from handrail.demo import GRAPH_NAME, demo_model
from handrail.tools.demo import POLICY_PATH, banking_tools

sys.path.insert(0, str(Path(__file__).parent))  # the server loads this file by path
import compliance_workflow

DB: str = os.environ.get("HANDRAIL_DB", "handrail-server.db")
"""Handrail's tables and the demo's data (the server keeps the checkpoints): a SQLite file or a
PostgreSQL URL, kept as given (a ``Path`` would mangle ``postgresql://``)."""

agent = build_agent(
    demo_model(), banking_tools(DB), Policy.from_file(POLICY_PATH), db=DB, name=GRAPH_NAME
)
"""The demo bank agent of ``make demo``."""

workflow = build_workflow(
    compliance_workflow.steps(DB),
    compliance_workflow.POLICY,
    db=DB,
    name=compliance_workflow.NAME,
)
"""The compliance data-change workflow."""
