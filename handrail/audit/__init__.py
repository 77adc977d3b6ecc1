"""The audit trail: every tool-call event, once, in a hash chain that shows tampering.

`AuditLog` keeps the ``handrail_audit`` table beside the checkpoints (`handrail.storage`). One row
per `ToolEvent`: ``seq`` (1, 2, 3, … without gaps), ``at`` (the event's timestamp), one column per
other event field (``payload`` and ``response`` as canonical JSON text), then ``prev_hash`` and
``hash``::

    hash = sha256(prev_hash + canonical_json(row))   # UTF-8 in, hex out; first prev_hash GENESIS

where ``row`` holds every stored column but the two hashes (so ``seq`` and ``at`` are covered;
the columns added since version 1, ``args_hash`` and ``identified_by`` (schema version 2) and
``policy_digest`` (version 6), only when not NULL, so rows written before them verify as they
did) and canonical JSON is ``json.dumps(sort_keys=True, separators=(",", ":"))`` (ASCII, so any
string, even a lone surrogate, encodes). Anyone can recompute the chain from the table alone, in
any language.

Guarantees:

- **Once per step.** A replayed node (after a resume or a crash) emits the same step again (the
  ``step`` column, `ToolEvent.step`: the call, ``call_seq``, the event, and what was decided by
  whom); `AuditLog.append` skips it, and the skipped event takes no ``seq``. A different decision
  at the same place (taken after a crash lost the first) is a new row. Events without a thread
  (``step`` NULL) are never deduplicated: UNIQUE treats NULLs as distinct (in both backends), and
  a run without a checkpointer is never replayed.
- **One chain, whatever the writers.** An append holds the store's ``handrail_audit`` lock (the
  file's write lock on SQLite, an advisory lock on PostgreSQL) from reading the last row to its
  commit, so two processes never chain rows off the same predecessor.
- **Append-only against mistakes.** Triggers abort every UPDATE and DELETE (and TRUNCATE, on
  PostgreSQL). They stop a mistaken statement, not someone who can write the database (a trigger
  can be dropped, and SQLite's ``INSERT OR REPLACE`` deletes without firing it); that is what the
  chain is for.
- **Tampering shows.** `AuditLog.verify` finds an edited, removed, inserted or reordered row and
  names the first one. The chain is unkeyed, so someone who rewrites every row from the edit on
  can make it verify again, and so can removing the last rows. Two anchors catch both: a head
  (`AuditLog.head`, ``SEQ:HASH``) kept somewhere the database's writers cannot reach, checked
  with ``verify(head=...)``; and checkpoints signed with an Ed25519 key (`AuditLog.sign`, kept
  in ``handrail_audit_anchors``), checked by anyone holding only the public key with
  ``verify(public_key=...)``: a rewrite at or before the last signed row shows.
- **Costs that do not grow with history.** Given a head or a key, `AuditLog.verify` starts
  from the later of the head and the last signed checkpoint (their rows must still have the
  recorded hashes) and recomputes only the rows after it; ``full=True`` recomputes every row
  (an edit before the start that leaves the hashes as they were is found only then).
  `AuditLog.stats` folds only the rows after its stored rollup (``handrail_audit_rollups``).
- **The trail makes sense.** `AuditLog.verify` also checks that every ``started`` of an asked
  call follows an approval (approve or edit) of the same arguments (``args_hash``) in the same
  thread and call.
"""

from handrail.audit._anchors import (
    Anchor,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
)
from handrail.audit._chain import GENESIS
from handrail.audit._log import AuditLog
from handrail.audit._stats import ToolStats
from handrail.audit._verify import Verification

__all__ = [
    "GENESIS",
    "Anchor",
    "AuditLog",
    "ToolStats",
    "Verification",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_public_key",
]
