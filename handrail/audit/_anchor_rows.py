"""The ``handrail_audit_anchors`` table: the signed checkpoints `AuditLog.sign` keeps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from handrail.audit._anchors import Anchor
from handrail.storage import Store

__all__ = ["keep_anchor", "read_anchors"]

_COLUMNS = "seq, hash, signed_at, key_id, signature"


def read_anchors(store: Store) -> list[Anchor]:
    """Every signed checkpoint, by seq."""
    with store.read() as sql:
        found = sql.execute(
            f"SELECT {_COLUMNS} FROM handrail_audit_anchors ORDER BY seq"
        ).fetchall()
    return [_anchor(row) for row in found]


def keep_anchor(store: Store, anchor: Anchor) -> Anchor:
    """Keep ``anchor``, unless its row has a checkpoint already: returns the one kept."""
    with store.transaction("handrail_audit") as sql:
        inserted = sql.execute(
            f"INSERT INTO handrail_audit_anchors ({_COLUMNS}) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (seq) DO NOTHING",
            (anchor.seq, anchor.hash, anchor.signed_at, anchor.key_id, anchor.signature),
        ).rowcount
        if inserted:
            return anchor
        return _anchor(
            sql.execute(
                f"SELECT {_COLUMNS} FROM handrail_audit_anchors WHERE seq = ?", (anchor.seq,)
            ).fetchone()
        )


def _anchor(row: Sequence[Any]) -> Anchor:
    seq, digest, signed_at, key, signature = row
    return Anchor(
        seq=int(seq),
        hash=str(digest),
        signed_at=str(signed_at),
        key_id=str(key),
        signature=str(signature),
    )
