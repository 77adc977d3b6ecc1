"""What a CEL condition says about a call's arguments, read from its tokens: the ``args.NAME``
paths it reads, the methods called on them and the literals they are compared with; the condition
rewritten to read each argument as a variable of its own (`split`); which Python values are plain
data the ``cel`` binding surely converts (`converts`); a failure in a few words (`describe`).

The ``cel`` binding compiles and evaluates but exposes no syntax tree and no type checker, so the
lint walks tokens; where a reading is ambiguous it says nothing rather than guess.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import cel

__all__ = [
    "Comparison",
    "Path",
    "converts",
    "describe",
    "literal_type",
    "nests_deeper",
    "paths",
    "split",
]

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<string>[rRbB]{0,2}(?:'''(?:.|\n)*?'''|\"\"\"(?:.|\n)*?\"\"\"
               |'(?:\\.|[^'\\\n])*'|"(?:\\.|[^"\\\n])*"))
  | (?P<number>0[xX][0-9a-fA-F]+[uU]?|(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?[uU]?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>==|!=|<=|>=|&&|\|\||[-+*/%<>!?:.,()\[\]{}])
  | (?P<other>.)
    """,
    re.VERBOSE,
)
_COMPARE = frozenset({"==", "!=", "<", "<=", ">", ">="})
_LITERAL_END = frozenset({")", "]", "}", ",", "&&", "||", "?", ":", None})
_LITERAL_START = frozenset({"(", "[", "{", ",", "&&", "||", "!", "?", ":", None})


@dataclass(frozen=True, slots=True)
class Comparison:
    """A path compared with literals: ``args.amount > 1000``, ``args.region in ['eu', 'us']``."""

    operator: str
    literals: tuple[str, ...]
    """The literals' CEL types: ``int``, ``double``, ``string``, ``bool``, ``null``, ``bytes``."""


@dataclass(frozen=True, slots=True)
class Path:
    """One ``args.NAME[.KEY...]`` a condition reads."""

    names: tuple[str, ...]
    method: str | None = None
    """A method called on it (``startsWith``), if any."""
    comparison: Comparison | None = None

    def __str__(self) -> str:
        return ".".join(("args", *self.names))


class _Tokens:
    """A condition's tokens (white space dropped), read by position."""

    def __init__(self, text: str) -> None:
        self.toks = [
            (m.lastgroup or "other", m.group())
            for m in _TOKEN.finditer(text)
            if m.lastgroup != "space"
        ]

    def word(self, i: int) -> str | None:
        return self.toks[i][1] if 0 <= i < len(self.toks) else None

    def literal(self, i: int) -> str | None:
        return literal_type(*self.toks[i]) if 0 <= i < len(self.toks) else None


def literal_type(kind: str, text: str) -> str | None:
    """A literal token's CEL type (None if the token is no literal)."""
    if kind == "string":
        return "bytes" if text[:2].lower().replace("r", "").startswith("b") else "string"
    if kind == "number":
        if text[-1] in "uU":
            return "uint"
        return (
            "double" if re.search(r"[.eE]", text) and not text.lower().startswith("0x") else "int"
        )
    if kind == "ident" and text in ("true", "false"):
        return "bool"
    if kind == "ident" and text == "null":
        return "null"
    return None


def paths(text: str) -> list[Path]:
    """The ``args`` paths ``text`` reads, with the method called on each and the literals it is
    directly compared with."""
    t = _Tokens(text)
    found: list[Path] = []
    for i, (kind, word) in enumerate(t.toks):
        if kind != "ident" or word != "args" or t.word(i - 1) == ".":
            continue
        names: list[str] = []
        j = i
        while t.word(j + 1) == "." and j + 2 < len(t.toks) and t.toks[j + 2][0] == "ident":
            if t.word(j + 3) == "(":
                break
            names.append(t.toks[j + 2][1])
            j += 2
        if not names:
            continue
        method = t.word(j + 2) if t.word(j + 1) == "." and t.word(j + 3) == "(" else None
        found.append(Path(tuple(names), method, None if method else _compared(t, i - 1, j + 1)))
    return found


def _compared(t: _Tokens, before: int, after: int) -> Comparison | None:
    """The comparison around a path between tokens ``before`` and ``after``, if a literal (or a
    list of literals, for ``in``) stands on its other side."""
    op = t.word(after)
    lit = t.literal(after + 1)
    if op in _COMPARE and lit is not None and t.word(after + 2) in _LITERAL_END:
        return Comparison(op, (lit,))
    if op == "in" and t.word(after + 1) == "[":
        types: list[str] = []
        k = after + 2
        while k < len(t.toks) and t.word(k) != "]":
            lit = t.literal(k)
            if lit is None or t.word(k + 1) not in (",", "]"):
                return None
            types.append(lit)
            k += 2 if t.word(k + 1) == "," else 1
        return Comparison("in", tuple(types)) if types else None
    op = t.word(before)
    lit = t.literal(before - 1)
    if op in _COMPARE and lit is not None and t.word(before - 2) in _LITERAL_START:
        return Comparison(op, (lit,))
    return None


def split(program: cel.Program, prefix: str) -> cel.Program | None:
    """``program`` with each ``args.NAME`` read from the variable ``PREFIX + NAME``, so that the
    arguments a condition reads can be given one by one instead of as one map; None when it reads
    ``args`` any other way (whole, indexed, by a method, in ``has()``, as a comprehension's
    variable) or its tokens could be read two ways (a comment, an escape, the prefix itself).
    CEL's own ``variables()`` checks the result: no ``args`` left, nothing else changed."""
    text = _split_text(program.source, prefix)
    if text is None:
        return None
    try:
        done = cel.compile(text)
    except Exception:  # the cel binding raises ValueError or RuntimeError
        return None
    others = {v for v in done.variables() if not v.startswith(prefix)}
    same = others == set(program.variables()) - {"args"}
    return done if same and not any("." in v for v in others) else None


def _split_text(text: str, prefix: str) -> str | None:
    if "//" in text or "\\" in text or prefix in text:
        return None
    toks = [m for m in _TOKEN.finditer(text) if m.lastgroup != "space"]
    if any(m.lastgroup == "other" for m in toks):
        return None
    words = [m.group() for m in toks]
    out: list[str] = []
    pos = 0
    for i, m in enumerate(toks):
        if m.lastgroup != "ident" or words[i] != "args" or (i and words[i - 1] == "."):
            continue
        if (
            words[i + 1 : i + 2] != ["."]
            or i + 2 >= len(toks)
            or toks[i + 2].lastgroup != "ident"
            or words[i + 3 : i + 4] == ["("]
            or words[max(i - 2, 0) : i] == ["has", "("]
        ):
            return None
        out += (text[pos : m.start()], prefix + words[i + 2])
        pos = toks[i + 2].end()
    return "".join((*out, text[pos:]))


_DEPTH = 32
"""Past this nesting `converts` says no, and the caller lets the binding decide."""


def converts(value: object, depth: int = 0) -> bool:
    """Whether ``value`` is plain data (strings, numbers, booleans, null, lists and maps keyed by
    strings) that the ``cel`` binding surely converts, the same in a map as on its own. False
    means perhaps not: a date, a set, an int past 64 bits, a string no UTF-8 can encode, a key
    that is no string, a ``cel.OptionalValue``; the caller then lets the binding decide."""
    if type(value) is str:
        return _text(value)
    if type(value) is int:
        return -(2**63) <= value < 2**64
    if type(value) is float or type(value) is bool or value is None:
        return True
    if depth >= _DEPTH:
        return False
    if type(value) is list or type(value) is tuple:
        return all(converts(v, depth + 1) for v in value)
    if type(value) is dict:
        return all(type(k) is str and _text(k) and converts(v, depth + 1) for k, v in value.items())
    return False


def _text(value: str) -> bool:
    if value.isascii():
        return True
    try:
        value.encode()
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


def nests_deeper(value: object, limit: int = _DEPTH) -> bool:
    """Whether ``value`` holds lists or maps more than ``limit`` deep (walked without recursion:
    the ``cel`` binding converts recursively, and a value deep enough crashes the process)."""
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, Mapping):
            items: Iterable[object] = node.values()
        elif isinstance(node, list | tuple | set | frozenset):
            items = node
        else:
            continue
        if depth >= limit:
            return True
        stack.extend((item, depth + 1) for item in items)
    return False


def describe(failure: object) -> str:
    """A condition's failure in a few words: the error, or the value that is no boolean."""
    if isinstance(failure, KeyError):
        return f"no such key {failure}"
    if isinstance(failure, Exception):
        return f"{type(failure).__name__}: {str(failure).split('.')[0]}"
    return f"returned {failure!r}, not a boolean"
