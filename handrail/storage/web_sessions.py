"""The web inbox's sign-in sessions, kept server-side (``handrail_web_sessions``).

A session's id is 32 random bytes held by the browser's cookie alone: the table keeps only the
id's SHA-256 hash, so whoever reads the table cannot take over a session with it. Beside it: the
token the person signed in with (verified again on every request), the session's CSRF token, and
when it was made and ends. Signing out deletes the row, so a copy of the cookie is then worth
nothing; rows past their end are deleted as they are met (a look-up, the next sign-in).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from handrail.storage import Table

__all__ = ["WebSession", "WebSessionTable"]


@dataclass(frozen=True, slots=True)
class WebSession:
    """One signed-in session, as its row keeps it."""

    token: str
    """The token the person signed in with (verified again on each request)."""
    csrf: str
    """The session's CSRF token, carried by its forms."""
    expires_at: datetime
    """When the session ends, whatever its token says."""

    def __repr__(self) -> str:
        return f"WebSession(expires_at={self.expires_at.isoformat()})"


class WebSessionTable(Table):
    """The ``handrail_web_sessions`` table at ``db`` (a SQLite file, a PostgreSQL URL or a
    `handrail.storage.Store`)."""

    def start(
        self,
        token: str,
        *,
        lifetime: timedelta,
        replacing: str | None = None,
        now: datetime | None = None,
    ) -> tuple[str, WebSession]:
        """A new session for ``token`` ending after ``lifetime``: its id (for the cookie) and
        the session. The session ``replacing`` (an earlier id of the same browser) ends, and so
        does every session past its end."""
        now = now or datetime.now(UTC)
        session_id = secrets.token_urlsafe(32)
        session = WebSession(token=token, csrf=secrets.token_urlsafe(32), expires_at=now + lifetime)
        with self.store.transaction() as sql:
            sql.execute("DELETE FROM handrail_web_sessions WHERE expires_at <= ?", (_iso(now),))
            if replacing is not None:
                sql.execute(
                    "DELETE FROM handrail_web_sessions WHERE id_hash = ?", (_hashed(replacing),)
                )
            sql.execute(
                "INSERT INTO handrail_web_sessions (id_hash, token, csrf, created_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (_hashed(session_id), token, session.csrf, _iso(now), _iso(session.expires_at)),
            )
        return session_id, session

    def find(self, session_id: str, *, now: datetime | None = None) -> WebSession | None:
        """The live session ``session_id`` names, or None (one past its end is deleted)."""
        now = now or datetime.now(UTC)
        with self.store.read() as sql:
            row = sql.execute(
                "SELECT token, csrf, expires_at FROM handrail_web_sessions WHERE id_hash = ?",
                (_hashed(session_id),),
            ).fetchone()
        if row is None:
            return None
        session = WebSession(token=row[0], csrf=row[1], expires_at=datetime.fromisoformat(row[2]))
        if session.expires_at <= now:
            self.end(session_id)
            return None
        return session

    def end(self, session_id: str) -> None:
        """End the session ``session_id`` (nothing happens when there is none)."""
        with self.store.transaction() as sql:
            sql.execute(
                "DELETE FROM handrail_web_sessions WHERE id_hash = ?", (_hashed(session_id),)
            )


def _hashed(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def _iso(moment: datetime) -> str:
    """Fixed-width ISO-8601 in UTC, so text order is time order."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")
