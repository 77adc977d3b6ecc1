"""Whether a call may run: the policy's decision now, against the proofs in Handrail's store.

``execute`` asks this before every call it did not decide itself in the same step. An ``ask``
runs only when enough distinct people approved exactly these arguments (their args hash), each
holding one of the rule's approver roles when they decided, none of them the requester. Nothing
in graph state counts: a record that says ``approved``, a list of approvers, an args hash.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from handrail.context import Actor
from handrail.policies import Decision
from handrail.storage.proofs import Proof

__all__ = ["approvable", "approvers_of", "missing_approval", "rule_name"]


def approvable(decision: Decision) -> bool:
    """Whether an approver may make an asked call run: the rule's ``allowed_decisions`` take
    ``approve`` (or ``edit``: an approver's edit that the rule asks about again is their
    approval of the new arguments). A rule that takes only ``reject``/``respond`` never runs."""
    return bool({"approve", "edit"} & set(decision.allowed_decisions))


def missing_approval(decision: Decision, proofs: Sequence[Proof], requester: Actor) -> str | None:
    """None when ``proofs`` authorise a call that ``decision`` asks about (or allows); else why
    not, in a sentence. A denied call is never authorised."""
    if decision.effect == "allow":
        return None
    if decision.effect == "deny":
        return f"the policy denies it ({decision.reason})"
    if not approvable(decision):
        offered = ", ".join(decision.allowed_decisions)
        return f"{rule_name(decision.rule_id)} takes no approval, only: {offered}"
    people = approvers_of(decision.approvers, proofs, requester)
    if len(people) >= decision.min_approvals:
        return None
    return (
        f"{rule_name(decision.rule_id)} needs {decision.min_approvals} approval(s) of these exact "
        f"arguments by {', '.join(sorted(decision.approvers))}; Handrail's store holds "
        f"{len(people)}"
    )


def approvers_of(roles: Collection[str], proofs: Sequence[Proof], requester: Actor) -> set[str]:
    """The distinct people among ``proofs`` who held one of ``roles`` when they approved, other
    than the requester."""
    wanted = set(roles)
    return {p.approver for p in proofs if wanted & set(p.roles) and p.approver != requester.id}


def rule_name(rule_id: str | None) -> str:
    """How a message names the rule that asked: by its id, or as the policy's default."""
    return f"rule {rule_id!r}" if rule_id is not None else "the policy default"
