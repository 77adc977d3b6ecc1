"""Claims on approval requests: whether the process holding one may still be applying it, and
what is left when it stopped. `handrail.storage.approvals.ApprovalTable` takes and releases them.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Collection
from datetime import datetime, timedelta

from handrail.storage import Sql

__all__ = ["CLAIM_LEASE", "NO_CLAIM", "SETTLED", "abandon", "abandoned", "alive", "settle_dead"]

CLAIM_LEASE = timedelta(minutes=10)
"""A claim is taken over when its process has died (same host) or after this long (any host).

A claim lasts from the resume's start until that run stops: the approved tools, their retries
and the model turns that follow. A run that outlives the lease can be raced by a second resume,
which the execution ledger then answers: it never runs a recorded call again."""

RELEASE_RETRY_S = 0.5
"""How often a claim whose release failed is released again, in the background."""

_ABANDONED: set[str] = set()
"""Claims of this process whose release failed; released in the background, taken over now."""
_ABANDONED_LOCK = threading.Lock()

SETTLED = (
    "CASE WHEN outcome IS NULL THEN 'open' WHEN outcome = 'expire' THEN 'expired' "
    "ELSE 'decided' END"
)
NO_CLAIM = "claim = NULL, claim_pid = NULL, claim_host = NULL, claimed_at = NULL"


def abandon(token: str, release: Callable[[], None]) -> None:
    """Give up claim ``token`` here: this process takes it over at once (`abandoned`), and a
    background thread calls ``release`` until it succeeds (or the lease ends)."""
    with _ABANDONED_LOCK:
        _ABANDONED.add(token)

    def retry() -> None:
        deadline = time.monotonic() + CLAIM_LEASE.total_seconds()
        while time.monotonic() < deadline:
            try:
                release()
            except Exception:
                time.sleep(RELEASE_RETRY_S)
                continue
            with _ABANDONED_LOCK:
                _ABANDONED.discard(token)
            return

    threading.Thread(target=retry, name="handrail-release", daemon=True).start()


def abandoned(token: str | None) -> bool:
    """Whether ``token`` is a claim this process gave up (its release is being retried)."""
    return token in _ABANDONED


def settle_dead(
    sql: Sql,
    thread_id: str | None,
    now: datetime,
    keep: Collection[str] = (),
) -> None:
    """Settle the thread's rows that a dead claimant decided, except the calls in ``keep``."""
    rows = sql.execute(
        "SELECT tool_call_id, claim_pid, claim_host, claimed_at FROM handrail_approvals "
        "WHERE thread_id = ? AND status = 'deciding' AND outcome IS NOT NULL",
        (thread_id,),
    ).fetchall()
    sql.executemany(
        f"UPDATE handrail_approvals SET status = {SETTLED}, {NO_CLAIM} "
        "WHERE thread_id = ? AND tool_call_id = ?",
        [
            (thread_id, c)
            for c, pid, host, at in rows
            if c not in keep and not alive(pid, host, at, now)
        ],
    )


def alive(pid: int | None, host: str | None, claimed_at: str | None, now: datetime) -> bool:
    """Whether the process holding a claim may still be applying it."""
    if pid is None or claimed_at is None:
        return False
    if now - datetime.fromisoformat(claimed_at) >= CLAIM_LEASE:
        return False
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
