"""Fixtures live in support.py so tests can import its helpers by name."""

from support import bank, db, policy

__all__ = ["bank", "db", "policy"]
