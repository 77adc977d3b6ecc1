"""The demo bank: three tools over two small tables, used by ``handrail demo`` and tests."""

from __future__ import annotations

from pathlib import Path

from langchain_core.tools import BaseTool, tool

from handrail.storage import Target, open_store

__all__ = ["POLICY_PATH", "banking_tools", "transfers"]

POLICY_PATH = Path(__file__).with_name("demo_policy.yaml")
"""The demo's policy file."""

_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS demo_accounts "
    "(name TEXT PRIMARY KEY, balance DOUBLE PRECISION NOT NULL)",
    "CREATE TABLE IF NOT EXISTS demo_transfers ("
    "id {id} PRIMARY KEY, to_account TEXT NOT NULL, amount DOUBLE PRECISION NOT NULL, memo TEXT)",
    "INSERT INTO demo_accounts VALUES ('operating', 25000.0), ('bob', 100.0), ('carol', 0.0) "
    "ON CONFLICT DO NOTHING",
]
_ID = {"sqlite": "INTEGER", "postgresql": "BIGINT GENERATED ALWAYS AS IDENTITY"}


def banking_tools(db: Target) -> list[BaseTool]:
    """``get_balance``, ``transfer_funds`` and ``delete_user`` over the bank tables in ``db`` (a
    SQLite file, or a PostgreSQL database migrated for Handrail)."""
    store = open_store(db)
    with store.transaction("demo_bank") as sql:
        for statement in _SCHEMA:
            sql.execute(statement.format(id=_ID[store.dialect]))

    @tool
    def get_balance(account: str) -> str:
        """Read the balance of an account."""
        with store.read() as sql:
            row = sql.execute(
                "SELECT balance FROM demo_accounts WHERE name = ?", (account,)
            ).fetchone()
        return f"{account}: {row[0]:.2f}" if row else f"no account named {account!r}"

    @tool
    def transfer_funds(to: str, amount: float, memo: str = "") -> str:
        """Move money from the operating account to another account."""
        with store.transaction() as sql:
            sql.execute(
                "INSERT INTO demo_transfers (to_account, amount, memo) VALUES (?, ?, ?)",
                (to, amount, memo),
            )
            sql.execute(
                "UPDATE demo_accounts SET balance = balance - ? WHERE name = 'operating'",
                (amount,),
            )
            sql.execute(
                "INSERT INTO demo_accounts VALUES (?, ?) ON CONFLICT(name) "
                "DO UPDATE SET balance = demo_accounts.balance + excluded.balance",
                (to, amount),
            )
        return f"sent {amount:.2f} to {to}"

    @tool
    def delete_user(user_id: str) -> str:
        """Delete a customer and their data."""
        with store.transaction() as sql:
            sql.execute("DELETE FROM demo_accounts WHERE name = ?", (user_id,))
        return f"deleted {user_id}"

    return [get_balance, transfer_funds, delete_user]


def transfers(db: Target) -> list[tuple[str, float]]:
    """Every transfer the demo bank has made, in order: (to, amount)."""
    store = open_store(db)
    try:
        with store.read() as sql:
            rows = sql.execute("SELECT to_account, amount FROM demo_transfers ORDER BY id")
            return [(str(to), float(amount)) for to, amount in rows.fetchall()]
    finally:
        if store is not db:
            store.close()
