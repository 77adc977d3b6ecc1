"""The graphs ``langgraph.json`` serves: the demo bank agent and the compliance workflow, behind
Handrail's auth handler (`handrail.auth.server`).

``langgraph dev`` (``pip install -e '.[server]'``) runs them with the server's own checkpointer;
Handrail's tables (the approvals inbox, the execution ledger, the audit) and the demo's data are
kept in the SQLite file or PostgreSQL URL named by ``HANDRAIL_DB`` (default ``handrail-server.db``).

Every request carries its sender's JWT: ``Authorization: Bearer <token>``, verified with
``HANDRAIL_JWT_SECRET`` (HS256, at least 32 bytes; for development) or ``HANDRAIL_JWKS_FILE``
(public keys; production), roles from the token's ``roles`` claim or from ``HANDRAIL_DIRECTORY``.
Without credentials the server answers 401, and without a secret or a JWKS file it does not
start. The user who starts a thread owns it and is the actor its calls are decided for (the run's
context is not asked); the user who resumes it is the approver, so the decision names no
approver (one naming someone else is refused). Only the owner and the holders of
``DECIDER_ROLES`` (``HANDRAIL_DECIDER_ROLES`` in ``langgraph.json``) see a thread::

    from langgraph_sdk import get_sync_client

    url = "http://127.0.0.1:2024"
    agent = get_sync_client(url=url, headers={"Authorization": f"Bearer {agent_jwt}"})
    thread = agent.threads.create()                                 # owner: the agent's `sub`
    agent.runs.wait(thread["thread_id"], "handrail_demo",
                    input={"messages": [{"role": "user", "content": "pay carol"}]})
    treasurer = get_sync_client(url=url, headers={"Authorization": f"Bearer {alice_jwt}"})
    treasurer.threads.get(thread["thread_id"])["interrupts"]        # the approval request
    treasurer.runs.wait(thread["thread_id"], "handrail_demo",
                        command={"resume": {"decisions": [{"type": "approve"}]}})

where ``agent_jwt`` says ``{"sub": "agent-123", "roles": ["ai-agent"], "exp": ...}`` and
``alice_jwt`` ``{"sub": "alice", "roles": ["treasurer"], "exp": ...}``. The agent's own token
cannot approve its request (``SelfApproval``).

The same server serves the approvers' web inbox at ``/inbox/`` (``langgraph.json``'s ``"http":
{"app": "handrail.web.server_app:app"}``): it lists what waits from the approvals table in
``HANDRAIL_DB``, which these graphs write, and sends each decision through the server's own API
with the signed-in person's token, so the treasurer's decision in the browser is the same run as
``treasurer.runs.wait`` above. Sign in with ``Authorization: Bearer <JWT>`` or the token form at
``/inbox/login``.

For local development only, ``HANDRAIL_AUTH=off langgraph dev`` serves every request without
credentials; the actor is then the run's ``context={"actor": {"id": ..., "roles": [...]}}`` and the
approver the payload's ``"approver": {"id": ..., "roles": [...]}``, both as claimed; the web
inbox, which signs people in with tokens, then answers 503 and says why.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from handrail import Policy, build_agent, build_workflow
from handrail.auth.server import decider_roles
from handrail.demo import GRAPH_NAME, demo_model
from handrail.tools.demo import POLICY_PATH, banking_tools

sys.path.insert(0, str(Path(__file__).parent))  # the server loads this file by path
import compliance_workflow

DB: str = os.environ.get("HANDRAIL_DB", "handrail-server.db")
"""Handrail's tables and the demo's data (the server keeps the checkpoints): a SQLite file or a
PostgreSQL URL, kept as given (a ``Path`` would mangle ``postgresql://``)."""

POLICY = Policy.from_file(POLICY_PATH)
"""The demo bank's policy: big transfers wait for a treasurer."""

DECIDER_ROLES: tuple[str, ...] = decider_roles(POLICY, compliance_workflow.POLICY)
"""The roles that may decide calls of these graphs (approvers and escalation roles): what
``HANDRAIL_DECIDER_ROLES`` in ``langgraph.json`` lists, comma separated."""

agent = build_agent(demo_model(), banking_tools(DB), POLICY, db=DB, name=GRAPH_NAME)
"""The demo bank agent of ``make demo``."""

workflow = build_workflow(
    compliance_workflow.steps(DB),
    compliance_workflow.POLICY,
    db=DB,
    name=compliance_workflow.NAME,
)
"""The compliance data-change workflow."""
