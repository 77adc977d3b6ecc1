"""`SourceIndex`: the texts a thread has seen, as token hashes and positions, kept in state."""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterator, Mapping
from itertools import pairwise
from typing import Any

from pydantic import BaseModel, ConfigDict, PrivateAttr, field_validator

from handrail.errors import HandrailError
from handrail.provenance._lookup import (
    Lookup,
    Occurrence,
    SourceKind,
    alias_place,
    pack,
    unpack,
)
from handrail.provenance._match import MIN_LENGTH, SHINGLE, Label, match_value
from handrail.provenance._text import (
    aliases,
    normalise,
    source_aliases,
    token_hash,
    tokens_of_normalised,
)
from handrail.provenance._text import tokens_with_spans as _spans

__all__ = [
    "EXCERPT_CHARS",
    "Origin",
    "Provenance",
    "ProvenanceError",
    "Source",
    "SourceIndex",
    "merge",
    "text_digest",
]

EXCERPT_CHARS = 200
"""The longest excerpt of a source shown to a reviewer."""

_KINDS: tuple[SourceKind, ...] = ("untrusted", "tool", "user")
_UNVOUCHED = frozenset({"untrusted", "model"})
_ECHO = 0x9E3779B97F4A7C15
"""XORed into the hash of an echoed token (`SourceIndex.add`): it then matches no value's."""


class ProvenanceError(HandrailError):
    """A source or an option the index cannot take (an unknown kind, a minimum length below 1)."""

    def __init__(self, problem: str, *, source_id: str | None = None) -> None:
        self.problem = problem
        """What is wrong, in a sentence."""
        self.source_id = source_id
        """The source being added, if the fault is in one."""
        super().__init__(problem if source_id is None else f"source {source_id!r}: {problem}")


class Source(BaseModel):
    """One indexed text: a user or system message, or a tool's output. Holds no copy of it."""

    model_config = ConfigDict(frozen=True)

    source_id: str
    """The message's id: the tool call id for a tool's output."""
    kind: SourceKind
    """``user`` (user and system messages), ``tool`` (trusted output), ``untrusted``."""
    tool: str | None = None
    """The tool whose output this is."""
    seq: int
    """Arrival order in the thread (0 first); sources merged from parallel branches may share
    one."""
    digest: str
    """SHA-256 of the text, so a text given later for an excerpt is known to be this one."""
    chars: int
    """The text's length in characters."""
    tokens: str
    """The 64-bit hashes of the text's tokens, in order (`pack`): a token's position is its
    index here."""
    aliases: str
    """Hash and position pairs of identifier spellings (``DE89 3704`` joined, dashes dropped)."""


class Origin(BaseModel):
    """Where a value (or a piece of one) occurs: what a reviewer is shown."""

    model_config = ConfigDict(frozen=True)

    source_id: str
    """The message's id: the tool call id for a tool's output."""
    kind: SourceKind
    tool: str | None = None
    """The tool whose output it is."""
    seq: int
    position: int
    """The token the match starts at, in the source."""
    span: int
    """How many tokens the match covers."""
    excerpt: str | None = None
    """Up to `EXCERPT_CHARS` of the source around the match, when its text was given."""


class Provenance(BaseModel):
    """A value's label and the occurrences that gave it (none for ``model``)."""

    model_config = ConfigDict(frozen=True)

    label: Label
    origins: tuple[Origin, ...] = ()
    """At most `MAX_ORIGINS`: for ``untrusted``, the untrusted outputs the value came from."""


def _order(source: Source) -> tuple[int, str, str]:
    return source.seq, source.source_id, source.digest


def _precedence(source: Source) -> tuple[int, int, str, str, str]:
    return (source.seq, _KINDS.index(source.kind), source.tool or "", source.tokens, source.aliases)


def _alias_pairs(source: Source) -> list[tuple[int, int]]:
    packed = unpack(source.aliases)
    return list(zip(packed[0::2], packed[1::2], strict=True))


def text_digest(text: str) -> str:
    """SHA-256 (hex) of ``text``: what a `Source` is known by beside its id."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class SourceIndex(BaseModel):
    """The sources a thread has seen, in arrival order; immutable, `add` returns a new index.

    Serialises as plain data (JSON or LangGraph's msgpack); the lookup tables are rebuilt in
    memory on first use after a load and grown with each `add`.
    """

    model_config = ConfigDict(frozen=True)

    sources: tuple[Source, ...] = ()
    """In arrival order (``seq``, then id and digest); one per (source_id, digest)."""
    _lookup: Lookup | None = PrivateAttr(default=None)

    @field_validator("sources")
    @classmethod
    def _canonical(cls, sources: tuple[Source, ...]) -> tuple[Source, ...]:
        chosen: dict[tuple[str, str], Source] = {}
        for source in sources:
            key = (source.source_id, source.digest)
            held = chosen.get(key)
            if held is None or _precedence(source) < _precedence(held):
                chosen[key] = source
        if len(chosen) == len(sources) and all(
            _order(a) <= _order(b) for a, b in pairwise(sources)
        ):
            return sources
        return tuple(sorted(chosen.values(), key=_order))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SourceIndex):
            return self.sources == other.sources
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.sources)

    def _tables(self) -> Lookup:
        if self._lookup is None:
            self._lookup = Lookup.build(
                (s.kind, unpack(s.tokens), _alias_pairs(s)) for s in self.sources
            )
        return self._lookup

    def has(self, source_id: str) -> bool:
        """Whether a text with this id has been added."""
        return any(source.source_id == source_id for source in self.sources)

    def add(
        self,
        kind: SourceKind,
        text: str,
        *,
        source_id: str,
        tool: str | None = None,
        echoes: Collection[str] = (),
    ) -> SourceIndex:
        """This index with ``text`` added as the next source; itself if that text with that id
        is already in it (a text under an id already held, but different, is added beside it).

        ``echoes``: values whose occurrences in ``text`` vouch for nothing, such as the
        arguments a trusted tool repeats back that were untrusted or made up when it was called
        (`echoed`): their tokens there match no value, so an injected IBAN that a trusted
        lookup echoes stays ``untrusted``.
        """
        if kind not in _KINDS:
            raise ProvenanceError(
                f"kind must be one of {list(_KINDS)}, not {kind!r}", source_id=source_id
            )
        digest = text_digest(text)
        if any(s.source_id == source_id and s.digest == digest for s in self.sources):
            return self
        toks = tokens_of_normalised(normalise(text))
        hashes = [token_hash(token) for token in toks]
        singles, grams = _echo_marks(echoes)
        masked = _masked(hashes, singles, grams)
        for position in masked:
            hashes[position] ^= _ECHO
        pairs = [
            (hashed, alias_place(position, span))
            for position, span, spelling in source_aliases(toks, text)
            if masked.isdisjoint(range(position, position + span))
            and (hashed := token_hash(spelling)) not in singles
        ]
        source = Source(
            source_id=source_id,
            kind=kind,
            tool=tool,
            seq=self.sources[-1].seq + 1 if self.sources else 0,
            digest=digest,
            chars=len(text),
            tokens=pack(hashes),
            aliases=pack(value for pair in pairs for value in pair),
        )
        grown = SourceIndex(sources=(*self.sources, source))
        if self._lookup is not None:
            grown._lookup = self._lookup.extended(kind, unpack(source.tokens), pairs)
        return grown

    def echoed(self, args: Mapping[str, Any], *, min_length: int = MIN_LENGTH) -> list[str]:
        """The texts of the leaves of ``args`` (strings and numbers, in lists and objects too)
        this index labels ``untrusted`` or ``model``, of at least ``min_length`` characters:
        the ``echoes`` of a trusted output of a call made with ``args``."""
        return [
            text
            for text in _leaves(args)
            if len(normalise(text)) >= min_length
            and self.label(text, min_length=min_length) in _UNVOUCHED
        ]

    def label(self, value: Any, *, min_length: int = MIN_LENGTH) -> Label:
        """Where ``value`` came from: ``user``, ``tool``, ``untrusted`` or ``model``."""
        return match_value(self._tables(), value, _checked(min_length))[0]

    def labels(self, args: Mapping[str, Any], *, min_length: int = MIN_LENGTH) -> dict[str, Label]:
        """`label` of each argument, by name: what CEL reads as ``provenance.args``."""
        return {name: self.label(value, min_length=min_length) for name, value in args.items()}

    def explain(
        self,
        value: Any,
        *,
        texts: Mapping[str, str] | None = None,
        min_length: int = MIN_LENGTH,
    ) -> Provenance:
        """The label of ``value`` and where it was found; with ``texts`` (source id → the
        text added under it) each origin carries an excerpt around the match."""
        label, occurrences = match_value(self._tables(), value, _checked(min_length))
        return Provenance(
            label=label, origins=tuple(self._origin(o, texts or {}) for o in occurrences)
        )

    def explain_args(
        self,
        args: Mapping[str, Any],
        *,
        texts: Mapping[str, str] | None = None,
        min_length: int = MIN_LENGTH,
    ) -> dict[str, Provenance]:
        """`explain` of each argument, by name: what a reviewer is shown."""
        return {
            name: self.explain(value, texts=texts, min_length=min_length)
            for name, value in args.items()
        }

    def _origin(self, occurrence: Occurrence, texts: Mapping[str, str]) -> Origin:
        source = self.sources[occurrence.source]
        text = texts.get(source.source_id)
        return Origin(
            source_id=source.source_id,
            kind=source.kind,
            tool=source.tool,
            seq=source.seq,
            position=occurrence.position,
            span=occurrence.span,
            excerpt=None if text is None else _excerpt(source, text, occurrence),
        )

    @property
    def last_user_seq(self) -> int | None:
        """The ``seq`` of the latest user or system message; None before the first."""
        return max((s.seq for s in self.sources if s.kind == "user"), default=None)

    @property
    def last_untrusted_seq(self) -> int | None:
        """The ``seq`` of the latest untrusted output; None before the first."""
        return max((s.seq for s in self.sources if s.kind == "untrusted"), default=None)

    @property
    def untrusted_seen(self) -> bool:
        """Whether an untrusted output has come in since the latest user message (one merged
        from a parallel branch at the same ``seq`` counts as after it)."""
        untrusted, user = self.last_untrusted_seq, self.last_user_seq
        return untrusted is not None and (user is None or untrusted >= user)


def _echo_marks(echoes: Collection[str]) -> tuple[set[int], set[tuple[int, ...]]]:
    """What an echo is known by in an output: single tokens (a one-token echo, an
    identifier-like token of it, a grouped identifier's joined spelling) and its runs of up to
    `SHINGLE` tokens."""
    singles: set[int] = set()
    grams: set[tuple[int, ...]] = set()
    for echo in echoes:
        toks = tokens_of_normalised(normalise(echo))
        hashes = [token_hash(token) for token in toks]
        if len(hashes) == 1:
            singles.add(hashes[0])
        singles.update(
            token_hash(token) for token in toks if len(token) >= MIN_LENGTH and not token.isalpha()
        )
        singles.update(token_hash(spelling) for _, _, spelling in aliases(toks))
        width = min(len(hashes), SHINGLE)
        if width >= 2:
            grams.update(tuple(hashes[i : i + width]) for i in range(len(hashes) - width + 1))
    return singles, grams


def _masked(hashes: list[int], singles: set[int], grams: set[tuple[int, ...]]) -> set[int]:
    """Positions in ``hashes`` an echo covers: a single it is known by, or a run of up to
    `SHINGLE` tokens it holds (one pass per run width: linear in the output)."""
    masked = {position for position, hashed in enumerate(hashes) if hashed in singles}
    for width in {len(gram) for gram in grams}:
        for start in range(len(hashes) - width + 1):
            if tuple(hashes[start : start + width]) in grams:
                masked.update(range(start, start + width))
    return masked


def _leaves(value: Any) -> Iterator[str]:
    """The texts of the strings and numbers in ``value`` and of its objects' keys, at any depth
    (without recursion: a model's arguments may be deep)."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, bool) or node is None:
            continue
        if isinstance(node, str | int | float):
            yield str(node)
        elif isinstance(node, Mapping):
            stack.extend(item for pair in list(node.items())[::-1] for item in pair[::-1])
        elif isinstance(node, list | tuple):
            stack.extend(reversed(node))


def _checked(min_length: int) -> int:
    if min_length < 1:
        raise ProvenanceError(f"min_length must be at least 1, not {min_length}")
    return min_length


def _excerpt(source: Source, text: str, occurrence: Occurrence) -> str | None:
    if text_digest(text) != source.digest:
        return None
    spans = _spans(text)
    last = occurrence.position + occurrence.span - 1
    if len(spans) != len(unpack(source.tokens)) or last >= len(spans):
        return None
    start, end = spans[occurrence.position].start, spans[last].end
    room = max(0, (EXCERPT_CHARS - (end - start)) // 2)
    low, high = max(0, start - room), min(len(text), end + room)
    cut = " ".join(text[low:high].split())[:EXCERPT_CHARS]
    return ("…" if low else "") + cut + ("…" if high < len(text) else "")


def merge(
    left: SourceIndex | Mapping[str, Any] | None, right: SourceIndex | Mapping[str, Any] | None
) -> SourceIndex:
    """Reducer for a state key holding a `SourceIndex`: the union of both sides' sources.

    Deterministic, commutative, associative and idempotent; a source both sides hold under one
    (source_id, digest) is kept once (the earlier ``seq``; a tie keeps the less trusted kind).
    Accepts an index's plain data too (what a serializer that does not know the class returns).
    """
    a, b = _coerce(left), _coerce(right)
    if a is None or b is None:
        return b or a or SourceIndex()
    if _extends(b, a):
        return b
    if _extends(a, b):
        return a
    return SourceIndex(sources=(*a.sources, *b.sources))


def _coerce(value: SourceIndex | Mapping[str, Any] | None) -> SourceIndex | None:
    if value is None or isinstance(value, SourceIndex):
        return value
    return SourceIndex.model_validate(value)


def _extends(longer: SourceIndex, shorter: SourceIndex) -> bool:
    return len(longer.sources) >= len(shorter.sources) and all(
        x is y or x == y for x, y in zip(shorter.sources, longer.sources, strict=False)
    )
