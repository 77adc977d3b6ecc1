"""The in-memory lookup tables of a `SourceIndex`: built from its sources, never serialised.

Each source's token hashes are an ``array('Q')`` (positions are indexes into it); ``postings``
maps a token hash to where it occurs, ``alias_postings`` an alias hash (`aliases`) likewise, each
occurrence coded as ``source_number << 32 | position``. Adding a source copies the tables
shallowly and copies a postings list before appending to it, so the index it was added to keeps
its own tables unchanged (copy on write).
"""

from __future__ import annotations

import base64
import sys
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Lookup", "Occurrence", "SourceKind", "alias_place", "pack", "unpack"]

SourceKind = Literal["user", "tool", "untrusted"]
"""Where a text came from: the user's or system messages, a trusted tool's output, an untrusted
tool's output."""

_POSITION = 0xFFFFFFFF
_SPAN_SHIFT = 24
_PLACE = (1 << _SPAN_SHIFT) - 1
"""An alias's "position" packs its first token (low 24 bits) and how many tokens it covers."""


def alias_place(position: int, span: int) -> int:
    """What an alias pair holds for an alias at ``position`` covering ``span`` tokens (a
    position past 2**24 - 1 or a span past 255 is clamped: an excerpt lands near, not on, it)."""
    return min(position, _PLACE) | min(span, 255) << _SPAN_SHIFT


def pack(values: Iterable[int]) -> str:
    """64-bit integers as base64 text (little-endian), for JSON and msgpack alike."""
    packed = array("Q", values)
    if sys.byteorder == "big":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")


def unpack(text: str) -> array[int]:
    """The integers `pack` wrote."""
    packed = array("Q")
    packed.frombytes(base64.b64decode(text))
    if sys.byteorder == "big":
        packed.byteswap()
    return packed


@dataclass(frozen=True, slots=True)
class Occurrence:
    """Where a value (or part of one) occurs: a source's number in the index, the position of
    its first token there, and how many tokens it covers."""

    source: int
    position: int
    span: int


@dataclass(slots=True)
class Lookup:
    """Token arrays and postings of every source of an index, in the index's order."""

    kinds: list[SourceKind] = field(default_factory=list)
    arrays: list[array[int]] = field(default_factory=list)
    postings: dict[int, list[int]] = field(default_factory=dict)
    alias_postings: dict[int, list[int]] = field(default_factory=dict)

    def extended(
        self, kind: SourceKind, hashes: array[int], alias_pairs: Sequence[tuple[int, int]]
    ) -> Lookup:
        """A copy with one more source (this one is left as it is)."""
        grown = Lookup(
            [*self.kinds, kind],
            [*self.arrays, hashes],
            dict(self.postings),
            dict(self.alias_postings),
        )
        grown._append(len(self.arrays), hashes, alias_pairs, copied=set())
        return grown

    def _append(
        self,
        number: int,
        hashes: array[int],
        alias_pairs: Sequence[tuple[int, int]],
        copied: set[int] | None,
    ) -> None:
        base = number << 32
        for table, pairs in (
            (self.postings, enumerate(hashes)),
            (self.alias_postings, ((p, h) for h, p in alias_pairs)),
        ):
            for position, hashed in pairs:
                found = table.get(hashed)
                if found is None:
                    table[hashed] = [base | position]
                    if copied is not None:
                        copied.add(hashed)
                    continue
                if copied is not None and hashed not in copied:
                    found = table[hashed] = list(found)
                    copied.add(hashed)
                found.append(base | position)

    @classmethod
    def build(
        cls, sources: Iterable[tuple[SourceKind, array[int], Sequence[tuple[int, int]]]]
    ) -> Lookup:
        """Tables for ``sources`` (kind, token hashes, (alias hash, position) pairs), in order."""
        lookup = cls()
        for number, (kind, hashes, alias_pairs) in enumerate(sources):
            lookup.kinds.append(kind)
            lookup.arrays.append(hashes)
            lookup._append(number, hashes, alias_pairs, copied=None)
        return lookup

    def single(self, hashed: int) -> list[Occurrence]:
        """Where one token (or an alias spelling) occurs, as a token or as an alias: the first
        occurrence in each source that holds it."""
        found = _first_per_source(
            self.postings.get(hashed, []), lambda code: Occurrence(code >> 32, code & _POSITION, 1)
        )
        held = {occurrence.source for occurrence in found}
        for occurrence in _first_per_source(self.alias_postings.get(hashed, []), _alias):
            if occurrence.source not in held:
                found.append(occurrence)
        return found

    def contiguous(self, hashes: Sequence[int]) -> list[Occurrence]:
        """Where the token sequence ``hashes`` occurs whole, token after token: the first
        occurrence in each source that holds it."""
        lists = []
        for hashed in hashes:
            found = self.postings.get(hashed)
            if found is None:
                return []
            lists.append(found)
        anchor = min(range(len(lists)), key=lambda i: len(lists[i]))
        wanted = array("Q", hashes)
        span = len(hashes)

        def verified(code: int) -> Occurrence | None:
            source, start = code >> 32, (code & _POSITION) - anchor
            if start >= 0 and self.arrays[source][start : start + span] == wanted:
                return Occurrence(source, start, span)
            return None

        return _first_per_source(lists[anchor], verified)


def _alias(code: int) -> Occurrence:
    place = code & _POSITION
    return Occurrence(code >> 32, place & _PLACE, place >> _SPAN_SHIFT)


def _first_per_source(
    codes: list[int], match: Callable[[int], Occurrence | None]
) -> list[Occurrence]:
    """The first code of each source that ``match`` accepts; ``codes`` ascend (source, then
    position), so the rest of a source's codes are skipped by bisection, not read."""
    found: list[Occurrence] = []
    index, end = 0, len(codes)
    while index < end:
        occurrence = match(codes[index])
        if occurrence is None:
            index += 1
            continue
        found.append(occurrence)
        index = bisect_left(codes, (occurrence.source + 1) << 32, index + 1)
    return found
