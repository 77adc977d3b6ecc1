"""Labelling a value against the lookup tables: leaves by matching, containers by combining.

The rules (the package docstring gives the reasons):

- A string (or a number, a date, as text) is *found whole* in a source when its tokens occur
  there contiguously, or one of its identifier spellings (`aliases`) does. Found whole in the
  user's or system messages → ``user``; else in a trusted tool's output → ``tool``; else in an
  untrusted tool's output → ``untrusted``.
- A value shorter than ``min_length`` (normalised) is found whole only in trusted text: a short
  value that only untrusted output has is ``model``, never ``untrusted``.
- A value found whole nowhere is ``untrusted`` when a piece of it occurs in untrusted output and
  in no trusted text: an identifier-like token (not only letters) or a run of `SHINGLE` tokens,
  of at least ``min_length`` characters. Overlapping such runs are one stretch of the value,
  which does not taint when trusted text explains it as two trusted phrases joined: each of its
  tokens lies in a pair of the value's adjacent tokens that the user's messages or a trusted
  output hold, and at most one pair in it is not so held (``Booking hotel`` typed by the user,
  ``Montmartre Suites`` from a trusted catalogue: a review's "hotel, Montmartre Suites" does
  not taint ``Booking hotel Montmartre Suites``; an injected sentence that rearranges the
  user's own pairs at two seams or more still taints). Otherwise it is ``model``.
- A container takes the least trusted label of its leaves: untrusted < model < tool < user. Its
  keys count only when they are ``untrusted``. ``None``, empty strings and empty containers carry
  nothing and are left out; a value with nothing in it at all is ``model``. A bool is ``model``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import date, time
from decimal import Decimal
from enum import Enum
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel

from handrail.provenance._lookup import Lookup, Occurrence, SourceKind
from handrail.provenance._text import aliases, normalise, token_hash, tokens_of_normalised

__all__ = ["MAX_ORIGINS", "MIN_LENGTH", "RANK", "SHINGLE", "Label", "Match", "match_value"]

Label = Literal["user", "tool", "untrusted", "model"]
"""Where a value came from: the user's or system messages, a trusted tool's output, only an
untrusted tool's output, or nowhere (the model made it up)."""

RANK: dict[Label, int] = {"untrusted": 0, "model": 1, "tool": 2, "user": 3}
"""How much each label is trusted; a container takes the lowest rank among its leaves."""

MIN_LENGTH = 8
"""Default minimum length (normalised characters) of a value, or a piece of one, that untrusted
output can taint."""

SHINGLE = 3
"""Tokens in a run that ties a piece of a value to a source when the value is not found whole."""

MAX_ORIGINS = 5
"""At most this many occurrences are kept per value for reviewers."""

Match = tuple[Label, tuple[Occurrence, ...]]
"""A label and the occurrences that gave it (the label's kind of source; none for ``model``)."""

_MODEL: Match = ("model", ())
_BY_TRUST: tuple[SourceKind, ...] = ("user", "tool", "untrusted")


def match_value(lookup: Lookup, value: Any, min_length: int) -> Match:
    """The label of ``value`` (any JSON-like value, pydantic model, dataclass) and where from."""
    found = _walk(lookup, value, min_length)
    return _MODEL if found is None else found


def _walk(lookup: Lookup, value: Any, min_length: int) -> Match | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return _MODEL
    if isinstance(value, str):
        return _match_text(lookup, value, min_length)
    if isinstance(value, int | float | Decimal | UUID):
        return _match_text(lookup, str(value), min_length)
    if isinstance(value, date | time):
        return _match_text(lookup, value.isoformat(), min_length)
    if isinstance(value, Enum):
        return _walk(lookup, value.value, min_length)
    if isinstance(value, bytes):
        return _match_text(lookup, value.decode("utf-8", "replace"), min_length)
    if isinstance(value, BaseModel):
        return _walk(lookup, value.model_dump(), min_length)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _walk(lookup, dataclasses.asdict(value), min_length)
    if isinstance(value, Mapping):
        keys = [_walk(lookup, key, min_length) for key in value]
        tainted = [k for k in keys if k is not None and k[0] == "untrusted"]
        return _combine([*tainted, *(_walk(lookup, v, min_length) for v in value.values())])
    if isinstance(value, list | tuple | set | frozenset):
        return _combine([_walk(lookup, item, min_length) for item in value])
    return _match_text(lookup, str(value), min_length)


def _combine(parts: list[Match | None]) -> Match | None:
    present = [part for part in parts if part is not None]
    if not present:
        return None
    label = min((part[0] for part in present), key=RANK.__getitem__)
    occurrences = dict.fromkeys(o for part in present if part[0] == label for o in part[1])
    return label, tuple(occurrences)[:MAX_ORIGINS]


def _match_text(lookup: Lookup, text: str, min_length: int) -> Match | None:
    normalised = normalise(text)
    toks = tokens_of_normalised(normalised)
    if not toks:
        return None
    hashes = [token_hash(token) for token in toks]
    spellings = list(aliases(toks))
    whole_spelling = "".join(toks).replace("-", "")
    found = lookup.single(hashes[0]) if len(toks) == 1 else lookup.contiguous(hashes)
    for position, _, spelling in spellings:
        if position == 0 and spelling == whole_spelling:
            found += lookup.single(token_hash(spelling))
    short = len(normalised) < min_length
    for kind in _BY_TRUST:
        if short and kind == "untrusted":
            break
        of_kind = tuple(o for o in found if lookup.kinds[o.source] == kind)
        if of_kind:
            return kind, of_kind[:MAX_ORIGINS]
    if short:
        return _MODEL
    return _match_pieces(lookup, toks, hashes, spellings, whole_spelling, min_length)


def _match_pieces(
    lookup: Lookup,
    toks: list[str],
    hashes: list[int],
    spellings: list[tuple[int, int, str]],
    whole_spelling: str,
    min_length: int,
) -> Match:
    pieces: list[list[Occurrence]] = [
        lookup.single(hashed)
        for token, hashed in zip(toks, hashes, strict=True)
        if len(token) >= min_length and not token.isalpha()
    ]
    pieces += [
        lookup.single(token_hash(spelling))
        for _, _, spelling in spellings
        if len(spelling) >= min_length and spelling != whole_spelling
    ]
    tainted: dict[Occurrence, None] = {}
    for occurrences in pieces:
        if _only_untrusted(lookup, occurrences):
            tainted.update(dict.fromkeys(occurrences))
    if len(toks) > SHINGLE:
        only: dict[tuple[int, ...], list[Occurrence] | None] = {}  # each window looked up once
        starts: list[int] = []
        for start in range(len(toks) - SHINGLE + 1):
            if len(" ".join(toks[start : start + SHINGLE])) < min_length:
                continue
            window = tuple(hashes[start : start + SHINGLE])
            if window not in only:
                occurrences = lookup.contiguous(window)
                only[window] = occurrences if _only_untrusted(lookup, occurrences) else None
            if only[window] is not None:
                starts.append(start)
        if starts:
            held = _held_pairs(lookup, hashes)
            for run in _runs(starts):
                low, high = run[0], run[-1] + SHINGLE - 1  # the run's first and last token
                seams = sum(1 for i in range(low, high) if i not in held)
                covered = all(i in held or i - 1 in held for i in range(low, high + 1))
                if seams > 1 or not covered:
                    for start in run:
                        found = only[tuple(hashes[start : start + SHINGLE])] or []
                        tainted.update(dict.fromkeys(found))
    if tainted:
        return "untrusted", tuple(tainted)[:MAX_ORIGINS]
    return _MODEL


def _only_untrusted(lookup: Lookup, occurrences: list[Occurrence]) -> bool:
    return bool(occurrences) and all(lookup.kinds[o.source] == "untrusted" for o in occurrences)


def _held_pairs(lookup: Lookup, hashes: list[int]) -> set[int]:
    """Positions ``i`` where the value's pair of tokens ``i, i + 1`` is in some trusted text
    (the user's messages, a trusted output)."""
    held: set[int] = set()
    pairs: dict[tuple[int, int], bool] = {}
    for start in range(len(hashes) - 1):
        pair = (hashes[start], hashes[start + 1])
        trusted = pairs.get(pair)
        if trusted is None:
            found = lookup.contiguous(pair)
            trusted = pairs[pair] = any(lookup.kinds[o.source] != "untrusted" for o in found)
        if trusted:
            held.add(start)
    return held


def _runs(starts: list[int]) -> list[list[int]]:
    """``starts`` (ascending) cut into runs of overlapping windows."""
    runs: list[list[int]] = []
    for start in starts:
        if runs and start - runs[-1][-1] < SHINGLE:
            runs[-1].append(start)
        else:
            runs.append([start])
    return runs
