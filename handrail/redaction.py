"""Hiding marked values (``redact: [args.account_number]`` in a policy) from what people see."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["REDACTED", "redact"]

REDACTED = "[redacted]"
"""What a redacted value is replaced with."""


def redact(value: Mapping[str, Any], paths: Iterable[str], root: str) -> dict[str, Any]:
    """A copy of ``value`` with each of ``paths`` under ``root`` replaced by `REDACTED`.

    ``redact({"to": "bob", "card": {"pan": "4111"}}, ["args.card.pan"], "args")`` hides the card
    number. A path through a list applies to each item; paths under other roots (``response.``)
    and paths that do not exist are ignored.
    """
    out: dict[str, Any] = dict(value)
    prefix = root + "."
    for path in paths:
        if path.startswith(prefix):
            _hide(out, path[len(prefix) :].split("."))
    return out


def _hide(node: Any, keys: Sequence[str]) -> Any:
    if isinstance(node, list):
        return [_hide(dict(item) if isinstance(item, Mapping) else item, keys) for item in node]
    if not isinstance(node, dict) or keys[0] not in node:
        return node
    if len(keys) == 1:
        node[keys[0]] = REDACTED
    else:
        child = node[keys[0]]
        node[keys[0]] = _hide(dict(child) if isinstance(child, Mapping) else child, keys[1:])
    return node
