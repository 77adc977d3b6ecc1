"""Text to tokens: the normalisation and tokenisation both sides of a match go through.

A source's text and an argument's value are normalised alike (Unicode NFKC, case-folded, format
characters such as zero-width spaces dropped) and cut into tokens: runs of characters between
whitespace and the delimiters below, so an identifier (URL, e-mail address, IBAN, number) is one
token and matches only a whole token. Tokens are then put in a canonical form: numbers lose a
currency sign, thousands separators and trailing decimal zeros (``$1,000.00`` is ``1000``);
URLs lose an ``http(s)://`` scheme and a trailing ``/``.

Besides its tokens, a text has *aliases*: other spellings of one identifier that a value may use.
A run of short digit-bearing groups (``DE89 3704 0044 0532 0130 00``, ``4111 1111 1111 1111``)
has the run joined (``de89370400440532013000``), and a dashed token (``555-123-4567``) has the
token without dashes. A source's text also has the domain of a URL glued to the next sentence
(``www.our-company.com.They`` has ``www.our-company.com``), `source_aliases`.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

__all__ = [
    "Token",
    "aliases",
    "is_group",
    "normalise",
    "source_aliases",
    "token_hash",
    "tokens",
    "tokens_of_normalised",
    "tokens_with_spans",
]

_DELIMITERS = "\"'`()\\[\\]{}<>,;|:\u201c\u201d\u2018\u2019\u00ab\u00bb"
_TOKEN = re.compile(rf"(?:[^\s{_DELIMITERS}]|(?<=\d),(?=\d)|:(?=[/\d]))+")
"""A token: no whitespace or delimiter, except a comma between digits (``1,000``) and a colon
before ``/`` or a digit (``https://``, ``10:30``)."""
_EDGE = ".!?*"
"""Stripped from both ends of a token: sentence punctuation and Markdown emphasis."""
_NUMBER = re.compile(r"[$€£¥]?[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_SCHEME = re.compile(r"^https?://")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_GROUP = re.compile(r"[a-z0-9]{1,6}")
_DASHED = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)+")
_DIGIT = re.compile(r"\d")
_IBAN_HEAD = re.compile(r"[a-z]{2}\d{2}")
_IBAN_GROUP = re.compile(r"[a-z0-9]{4}")
_IBAN_TAIL = re.compile(r"\d{1,3}")
_IBAN_GROUPS = 9
"""At most this many groups in a spaced IBAN (34 characters, in fours)."""
_CHUNK = re.compile(r"\S+")
_GLUED = re.compile(r"((?:[a-z0-9-]+\.)+[a-z]{2,}(?:/\S*)?)\.[a-z]+")
"""A URL or domain and, after a last dot, a word: a sentence started with no space after it."""
_SENTENCE_GLUED = re.compile(r"[^\s.]\.([A-Z][a-z]+)")
"""In a source's own text: a dot and a capitalised word right after it (``.com.They``)."""


def _drop_format(match: re.Match[str]) -> str:
    char = match.group()
    return "" if unicodedata.category(char) == "Cf" else char


def normalise(text: str) -> str:
    """``text`` as it is compared: NFKC, case-folded, format characters (zero-width spaces, soft
    hyphens, bidirectional controls) removed, whitespace collapsed to single spaces."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    if not folded.isascii():
        folded = _NON_ASCII.sub(_drop_format, folded)
    return " ".join(folded.split())


@lru_cache(maxsize=65536)
def _canonical(token: str) -> str:
    if not token:
        return token
    if _NUMBER.fullmatch(token):
        digits = token.lstrip("$€£¥+").replace(",", "")
        if "." in digits:
            digits = digits.rstrip("0").rstrip(".")
        return digits
    token = _SCHEME.sub("", token)
    return token.rstrip("/") if len(token) > 1 else token


def tokens_of_normalised(normalised: str) -> list[str]:
    """The canonical tokens of a text `normalise` gave."""
    found = [_canonical(raw.strip(_EDGE)) for raw in _TOKEN.findall(normalised)]
    return [token for token in found if token]


def tokens(text: str) -> list[str]:
    """The canonical tokens of ``text`` (normalised here)."""
    return tokens_of_normalised(normalise(text))


@dataclass(frozen=True, slots=True)
class Token:
    """A token of an original (not normalised) text, with the span of its whitespace-separated
    chunk there: what an excerpt is cut around."""

    text: str
    start: int
    end: int


def tokens_with_spans(text: str) -> list[Token]:
    """The tokens of ``text`` with where they stand in it, chunk by chunk (slower than `tokens`;
    for excerpts)."""
    found: list[Token] = []
    for chunk in _CHUNK.finditer(text):
        for token in tokens(chunk.group()):
            found.append(Token(token, chunk.start(), chunk.end()))
    return found


@lru_cache(maxsize=65536)
def is_group(token: str) -> bool:
    """Whether ``token`` can be one group of a spaced identifier (``de89``, ``0532``)."""
    return _GROUP.fullmatch(token) is not None and _DIGIT.search(token) is not None


def _iban_runs(toks: list[str]) -> Iterator[tuple[int, int, str]]:
    """IBANs written in groups whose bank code is letters (``gb33 bukb 2020 1555 5555 55``,
    ``nl91 abna 0417 1643 00``): a country code and check digits, groups of four, and a last
    group of up to three digits."""
    for start, token in enumerate(toks):
        if not _IBAN_HEAD.fullmatch(token):
            continue
        end = start + 1
        while end < len(toks) and end - start < _IBAN_GROUPS and _IBAN_GROUP.fullmatch(toks[end]):
            end += 1
        if end < len(toks) and _IBAN_TAIL.fullmatch(toks[end]):
            end += 1
        if end - start >= 3 and not all(is_group(t) for t in toks[start:end]):
            yield start, end - start, "".join(toks[start:end])


def aliases(toks: list[str]) -> Iterator[tuple[int, int, str]]:
    """Other spellings of identifiers in ``toks``: (first token, tokens covered, spelling)."""
    yield from _iban_runs(toks)
    run_start = -1
    for position, token in enumerate([*toks, ""]):
        if token and is_group(token):
            if run_start < 0:
                run_start = position
            continue
        if run_start >= 0 and position - run_start >= 2:
            yield run_start, position - run_start, "".join(toks[run_start:position])
        run_start = -1
        if token and _DASHED.fullmatch(token) and _DIGIT.search(token):
            yield position, 1, token.replace("-", "")


def source_aliases(toks: list[str], text: str = "") -> Iterator[tuple[int, int, str]]:
    """`aliases`, and for a source's text also each URL glued to the word after it (the part
    before the last dot of ``www.our-company.com.They``) when ``text`` shows that word
    capitalised, as a sentence starts (``www.bbc.co.uk`` is not read as ``www.bbc.co``).
    A value is not read this way (its last label is part of it)."""
    yield from aliases(toks)
    starts = {word.casefold() for word in _SENTENCE_GLUED.findall(text)}
    if not starts:
        return
    for position, token in enumerate(toks):
        if "." in token:
            glued = _GLUED.fullmatch(token)
            if glued and "." in glued.group(1) and token.rsplit(".", 1)[1] in starts:
                yield position, 1, glued.group(1)


@lru_cache(maxsize=65536)
def token_hash(token: str) -> int:
    """A stable 64-bit hash of ``token`` (BLAKE2b: a value cannot be chosen to collide with a
    trusted token, as it could with a fast non-cryptographic hash)."""
    return int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "little")
