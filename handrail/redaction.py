"""Hiding marked values (``redact: [args.account_number]`` in a policy) from what people see."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from handrail.state import CallError

__all__ = [
    "MIN_HIDDEN",
    "REDACTED",
    "error_view",
    "hidden_values",
    "redact",
    "redact_body",
    "restore",
    "scrub",
]

REDACTED = "[redacted]"
"""What a redacted value is replaced with."""

MIN_HIDDEN = 4
"""Values with fewer letters and digits than this are hidden where their path says, not by
value: replacing every ``"42"`` in every message would garble the text and hide nothing."""


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


def redact_body(body: str, paths: Iterable[str]) -> str:
    """``body`` (a tool's result) with the ``response.body`` paths of ``paths`` hidden.

    ``response.body`` hides all of it; ``response.body.ssn`` hides a key of a JSON result (and of
    each item of a JSON list). A body that is not JSON is hidden only by ``response.body``.
    """
    wanted = [p for p in paths if p == "response.body" or p.startswith("response.body.")]
    if not wanted:
        return body
    if "response.body" in wanted:
        return REDACTED
    try:
        parsed = json.loads(body)
    except ValueError:
        return body
    if not isinstance(parsed, dict | list):
        return body
    hidden = redact({"body": parsed}, wanted, "response")["body"]
    return json.dumps(hidden, ensure_ascii=False)


def error_view(error: CallError | None, paths: Iterable[str]) -> dict[str, Any] | None:
    """A call's last error as people see it (a dict), its message hidden like a response body."""
    if error is None:
        return None
    view = error.model_dump()
    view["message"] = redact_body(view["message"], paths)
    return view


def restore(
    edited: Mapping[str, Any], original: Mapping[str, Any], paths: Iterable[str]
) -> dict[str, Any]:
    """An approver's edited arguments with each hidden value they left as `REDACTED` put back.

    Approvers see marked arguments as `REDACTED`; an edit that keeps one keeps the real value
    (through lists too, item by item, when the edit kept the list's length).
    """
    out: dict[str, Any] = dict(edited)
    for path in paths:
        if path.startswith("args."):
            _put_back(out, original, path[len("args.") :].split("."))
    return out


def _put_back(edited: dict[str, Any], original: Mapping[str, Any], keys: Sequence[str]) -> None:
    key = keys[0]
    if key not in edited or key not in original:
        return
    if len(keys) == 1:
        if edited[key] == REDACTED:
            edited[key] = original[key]
        return
    edited[key] = _put_back_in(edited[key], original[key], keys[1:])


def _put_back_in(child: Any, source: Any, keys: Sequence[str]) -> Any:
    """``child`` with the hidden values under ``keys`` put back from ``source``; through a list,
    item by item when the edit kept the list's length (else the items cannot be paired)."""
    if isinstance(child, list) and isinstance(source, list) and len(child) == len(source):
        return [_put_back_in(c, o, keys) for c, o in zip(child, source, strict=True)]
    if isinstance(child, Mapping) and isinstance(source, Mapping):
        child = dict(child)
        _put_back(child, source, keys)
    return child


def hidden_values(args: Mapping[str, Any], paths: Iterable[str]) -> tuple[str, ...]:
    """The values the ``args.`` paths of ``paths`` hide in ``args``, as text, longest first:
    every string and number under each path (through objects and lists) with at least
    `MIN_HIDDEN` letters or digits. `scrub` takes them out of text."""
    found: set[str] = set()
    for path in paths:
        if not path.startswith("args."):
            continue
        nodes: list[Any] = [args]
        for key in path[len("args.") :].split("."):
            items = [i for n in nodes for i in (n if isinstance(n, list) else [n])]
            nodes = [i[key] for i in items if isinstance(i, Mapping) and key in i]
        while nodes:
            node = nodes.pop()
            if isinstance(node, Mapping):
                nodes.extend(node.values())
            elif isinstance(node, list | tuple):
                nodes.extend(node)
            elif isinstance(node, str | int | float) and not isinstance(node, bool):
                text = str(node)
                if sum(c.isalnum() for c in text) >= MIN_HIDDEN:
                    found.add(text)
    return tuple(sorted(found, key=len, reverse=True))


def scrub(text: str, values: Sequence[str]) -> str:
    """``text`` with every spelling of each of ``values`` (`hidden_values`) replaced by
    `REDACTED`: an error message or reason that echoes a hidden argument does not show it, in
    another case, JSON-escaped, or with its letters and digits grouped by other separators
    (``DE89 3704`` for ``de89-3704``)."""
    return _spellings(tuple(values)).sub(REDACTED, text) if values else text


_SEPARATORS = r"[\s\-_./:\\]*"
"""What may stand between a hidden value's letters and digits in a spelling of it."""


@functools.lru_cache(maxsize=256)
def _spellings(values: tuple[str, ...]) -> re.Pattern[str]:
    """One pattern for every spelling of ``values``: their letters and digits in order, any case,
    with separators anywhere between them (longest values first)."""
    patterns = [_SEPARATORS.join(re.escape(c) for c in value if c.isalnum()) for value in values]
    return re.compile("|".join(f"(?:{p})" for p in patterns if p), re.IGNORECASE)
