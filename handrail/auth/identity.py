"""Ids compared as people, and the `Identity` Handrail has established for one.

An id is compared after NFKC and case folding, so a fullwidth or upper-case ``AGENT-123`` and
``agent-123`` are the same person. An id that could only be told apart from another by looking
closely is refused rather than normalised: invisible and format characters, whitespace inside, and
scripts mixed in a confusable way (a Cyrillic U+0430 inside a Latin id), following UTS #39's
"highly restrictive" profile.
"""

from __future__ import annotations

import functools
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Literal

from confusable_homoglyphs import categories, confusables

from handrail.context import Actor
from handrail.errors import IdentityError

__all__ = ["Identity", "canonical_id", "same_person"]

_REFUSED_CATEGORIES = {
    "Cc": "a control character",
    "Cf": "an invisible format (or bidirectional control) character",
    "Co": "a private-use character",
    "Cs": "a surrogate",
    "Cn": "an unassigned code point",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
}

# Default_Ignorable_Code_Point (Unicode DerivedCoreProperties.txt) outside the categories above,
# plus blanks that render as nothing (Braille pattern blank, Hangul fillers).
_INVISIBLE_RANGES = (
    (0x034F, 0x034F),  # combining grapheme joiner
    (0x115F, 0x1160),  # Hangul choseong / jungseong fillers
    (0x17B4, 0x17B5),  # Khmer inherent vowels
    (0x180B, 0x180F),  # Mongolian free variation selectors
    (0x2800, 0x2800),  # Braille pattern blank
    (0x3164, 0x3164),  # Hangul filler
    (0xFE00, 0xFE0F),  # variation selectors
    (0xFFA0, 0xFFA0),  # halfwidth Hangul filler
    (0x1D173, 0x1D17A),  # musical symbol format controls
    (0xE0000, 0xE0FFF),  # tag characters, variation selectors supplement
)

_NEUTRAL_SCRIPTS = frozenset({"COMMON", "INHERITED"})

# UTS #39 "highly restrictive": one script, or Latin with one of these CJK combinations.
_ALLOWED_MIXES = (
    frozenset({"LATIN", "HAN", "HIRAGANA", "KATAKANA"}),
    frozenset({"LATIN", "HAN", "BOPOMOFO"}),
    frozenset({"LATIN", "HAN", "HANGUL"}),
)

_STRIPPED = " \t\n\r\f\v"


def _describe(char: str) -> str:
    name = unicodedata.name(char, "")
    return f"U+{ord(char):04X} {name}".rstrip()


def _why_refused(char: str) -> str | None:
    category = unicodedata.category(char)
    if category not in ("Zl", "Zp") and (char.isspace() or category == "Zs"):
        return "whitespace"
    if category in _REFUSED_CATEGORIES:
        return _REFUSED_CATEGORIES[category]
    code = ord(char)
    if any(low <= code <= high for low, high in _INVISIBLE_RANGES):
        return "an invisible (default-ignorable) character"
    return None


def _check_characters(text: str, raw: str) -> None:
    for position, char in enumerate(text):
        why = _why_refused(char)
        if why is not None:
            raise IdentityError(
                f"contains {_describe(char)} at position {position}: {why} cannot be part of an id",
                identity=raw,
            )


def _strip(raw: str) -> str:
    start, end = 0, len(raw)
    while start < end and (raw[start] in _STRIPPED or unicodedata.category(raw[start]) == "Zs"):
        start += 1
    while end > start and (raw[end - 1] in _STRIPPED or unicodedata.category(raw[end - 1]) == "Zs"):
        end -= 1
    return raw[start:end]


def _script(char: str) -> str:
    return str(categories.alias(char))


def _look_alike(char: str, scripts: set[str]) -> str | None:
    found = confusables.is_confusable(char, preferred_aliases=sorted(scripts))
    if not found:
        return None
    for glyph in found[0]["homoglyphs"]:
        if scripts & {_script(c) for c in glyph["c"]}:
            return f"{glyph['c']!r} ({glyph['n']})"
    return None


def _check_scripts(text: str, raw: str) -> None:
    per_char = [(char, _script(char)) for char in text]
    counts = Counter(script for _, script in per_char if script not in _NEUTRAL_SCRIPTS)
    if not confusables.is_mixed_script(text, allowed_aliases=sorted(_NEUTRAL_SCRIPTS)):
        return
    scripts = set(counts)
    if any(scripts <= allowed for allowed in _ALLOWED_MIXES):
        # The CJK scripts of one of these sets form one writing system (UTS #39's resolved
        # script sets Jpan, Hanb, Kore): only Latin against CJK can be a mixed-script look-alike.
        for char, script in per_char:
            if script in _NEUTRAL_SCRIPTS or "LATIN" not in scripts:
                continue
            others = scripts - {"LATIN"} if script == "LATIN" else {"LATIN"}
            alike = _look_alike(char, others)
            if alike is not None:
                raise IdentityError(
                    f"mixes scripts in a confusable way: {_describe(char)} ({script.title()}) "
                    f"looks like {alike}",
                    identity=raw,
                )
        return
    dominant = counts.most_common(1)[0][0]  # ties: the script seen first
    char = next(c for c, script in per_char if script not in _NEUTRAL_SCRIPTS | {dominant})
    alike = _look_alike(char, {dominant})
    looks = f", which looks like {alike}" if alike else ""
    raise IdentityError(
        f"mixes scripts: {_describe(char)} ({_script(char).title()}) in a "
        f"{dominant.title()} id{looks}",
        identity=raw,
    )


def canonical_id(raw: str) -> str:
    """The id compared as a person: surrounding whitespace stripped, NFKC, case-folded, NFKC again.

    Raises `IdentityError` (with ``identity=raw``) for an empty id; for control, format,
    private-use, surrogate, unassigned or line/paragraph-separator characters, whitespace inside,
    and invisible (default-ignorable) code points such as U+200B, ZWJ, the soft hyphen, variation
    selectors and tag characters; and for an id that mixes scripts other than Latin with Han,
    Hiragana, Katakana, Bopomofo or Hangul (UTS #39 "highly restrictive"), or mixes those with a
    character that looks like one of another script in the id. The problem names the character
    (``U+XXXX NAME``) and why. A single-script id in any script (Greek, Japanese, ...) is accepted.
    """
    if not isinstance(raw, str):
        raise IdentityError(f"an id must be a string, not {type(raw).__name__}")
    return _canonical(raw)


@functools.lru_cache(maxsize=4096)
def _canonical(raw: str) -> str:
    """`canonical_id` of a string (the same few ids are compared on every run: kept)."""
    stripped = _strip(raw)
    if not stripped:
        raise IdentityError("an id cannot be empty", identity=raw)
    _check_characters(stripped, raw)
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", stripped).casefold())
    if not folded:
        raise IdentityError("an id cannot be empty", identity=raw)
    _check_characters(folded, raw)
    _check_scripts(folded, raw)
    return folded


def same_person(a: str, b: str) -> bool:
    """Whether two ids name the same person (``canonical_id(a) == canonical_id(b)``).

    Raises `IdentityError` like `canonical_id` when either id is refused.
    """
    return canonical_id(a) == canonical_id(b)


@dataclass(frozen=True, kw_only=True, slots=True)
class Identity:
    """Who someone is, as established by Handrail, and how it was established."""

    actor: Actor
    """The person or agent: ``actor.id`` is the canonical id, ``actor.roles`` the trusted roles."""
    via: Literal["directory", "token", "server", "claimed"]
    """What vouches for it: a `Directory` lookup, a verified token, the LangGraph server's
    authenticated user, or nothing (the caller's own claim)."""
    issuer: str | None = None
    """The token's issuer (``iss``), when established by a token."""
    subject: str | None = None
    """The token's subject as written in the token, when established by a token."""

    def describe(self) -> str:
        """How the identity was established, for the audit: ``directory``,
        ``token iss=<issuer> sub=<subject>`` (no ``iss=`` for a token without an issuer),
        ``server`` or ``claimed``."""
        if self.via == "token":
            issuer = f" iss={self.issuer}" if self.issuer is not None else ""
            return f"token{issuer} sub={self.subject}"
        return self.via
