"""The demo bank: three tools over a small SQLite ledger, used by ``handrail demo`` and tests."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from langchain_core.tools import BaseTool, tool

__all__ = ["POLICY_PATH", "banking_tools", "transfers"]

POLICY_PATH = Path(__file__).with_name("demo_policy.yaml")
"""The demo's policy file."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS demo_accounts (name TEXT PRIMARY KEY, balance REAL NOT NULL);
CREATE TABLE IF NOT EXISTS demo_transfers (
    id INTEGER PRIMARY KEY, to_account TEXT NOT NULL, amount REAL NOT NULL, memo TEXT
);
INSERT OR IGNORE INTO demo_accounts VALUES ('operating', 25000.0), ('bob', 100.0), ('carol', 0.0);
"""


def _connect(db: str | Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(db), timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    return conn


def banking_tools(db: str | Path) -> list[BaseTool]:
    """``get_balance``, ``transfer_funds`` and ``delete_user`` over the bank tables in ``db``."""
    with _connect(db) as conn:
        conn.executescript(_SCHEMA)

    @tool
    def get_balance(account: str) -> str:
        """Read the balance of an account."""
        with _connect(db) as conn:
            row = conn.execute(
                "SELECT balance FROM demo_accounts WHERE name = ?", (account,)
            ).fetchone()
        return f"{account}: {row[0]:.2f}" if row else f"no account named {account!r}"

    @tool
    def transfer_funds(to: str, amount: float, memo: str = "") -> str:
        """Move money from the operating account to another account."""
        with _connect(db) as conn:
            conn.execute(
                "INSERT INTO demo_transfers (to_account, amount, memo) VALUES (?, ?, ?)",
                (to, amount, memo),
            )
            conn.execute(
                "UPDATE demo_accounts SET balance = balance - ? WHERE name = 'operating'",
                (amount,),
            )
            conn.execute(
                "INSERT INTO demo_accounts VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET balance = balance + excluded.balance",
                (to, amount),
            )
        return f"sent {amount:.2f} to {to}"

    @tool
    def delete_user(user_id: str) -> str:
        """Delete a customer and their data."""
        with _connect(db) as conn:
            conn.execute("DELETE FROM demo_accounts WHERE name = ?", (user_id,))
        return f"deleted {user_id}"

    return [get_balance, transfer_funds, delete_user]


def transfers(db: str | Path) -> list[tuple[str, float]]:
    """Every transfer the demo bank has made, in order: (to, amount)."""
    with _connect(db) as conn:
        return conn.execute("SELECT to_account, amount FROM demo_transfers ORDER BY id").fetchall()
