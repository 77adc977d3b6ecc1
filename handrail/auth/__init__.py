"""Who is who: ids compared as people, the directory of people and roles, verified tokens, and
the `Trust` a graph places in each.

Handrail authorises; these types authenticate. Roles come from the directory or a token, never
from the request, and an identity records how it was established (``directory``, ``token``,
``server`` or ``claimed``).
"""

from __future__ import annotations

from handrail.auth.directory import Directory, DirectorySource
from handrail.auth.identity import Identity, canonical_id, same_person
from handrail.auth.tokens import JwtAuthenticator, Token
from handrail.auth.trust import Trust

__all__ = [
    "Directory",
    "DirectorySource",
    "Identity",
    "JwtAuthenticator",
    "Token",
    "Trust",
    "canonical_id",
    "same_person",
]
