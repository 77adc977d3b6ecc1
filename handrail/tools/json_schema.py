"""Arguments checked against a tool's JSON schema, as pydantic checks a pydantic tool's.

A tool made from a JSON schema (an MCP tool loaded by ``langchain-mcp-adapters``, a
``StructuredTool`` whose ``args_schema`` is a dict) gets from LangChain no validation at all:
``amount: "5000"`` would reach the policy as a string. `JsonSchemaArgs` compiles the schema once
(the ``jsonschema`` validator its ``$schema`` names, Draft 2020-12 by default) and makes of a
call's arguments what pydantic's lax mode makes of what a model typically gets wrong, and nothing
else: a numeric string where the schema wants an integer or a number (``"5000"`` → ``5000``,
``"12.5"`` → ``12.5``, but ``"12.5"`` is no integer), ``"true"``/``"false"`` where it wants a
boolean. The library finds where: each ``type`` error on a string, through ``properties``,
``items``, ``$ref``/``$defs``, ``anyOf``/``oneOf`` (Optional), is coerced if the string parses as
one of the wanted types, by the validator's own type checker. Nothing is dropped or defaulted.

Arguments that still do not fit raise pydantic's `ValidationError`, one line error per schema
error with its path (``loc``), so they are handled as a pydantic tool's are (a bad request for
the model, a refused edit).
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from jsonschema.exceptions import SchemaError, best_match
from jsonschema.exceptions import ValidationError as SchemaViolation
from jsonschema.protocols import Validator
from jsonschema.validators import Draft202012Validator, validator_for
from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from handrail.errors import HandrailError

__all__ = ["ERROR_TYPE", "JsonSchemaArgs"]

ERROR_TYPE = "json_schema"
"""The ``type`` of each line error of the `ValidationError` `JsonSchemaArgs.validate` raises;
its ``ctx`` holds the JSON-schema ``keyword`` that failed."""

_ROUNDS = 8
"""At most this many passes of coercion (a coerced value can bring an ``anyOf`` branch's own
properties into view)."""

_MESSAGE_CHARS = 300
"""A line error's message is cut to this length (a schema error quotes the value)."""

_INTEGER = re.compile(r"[+-]?[0-9]{1,300}")
_NUMBER = re.compile(
    r"[+-]?(?:[0-9]{1,300}(?:\.[0-9]{0,300})?|\.[0-9]{1,300})(?:[eE][+-]?[0-9]{1,4})?"
)
_BLANKS = " \t\n\r\f\v"
"""What is stripped around a number (ASCII white space only, as JSON and pydantic do)."""
_NO_VALUE = object()

Loc = tuple[str | int, ...]
"""Where a value is in the arguments: keys and list indices."""


class JsonSchemaArgs:
    """A tool's JSON schema, compiled once: `validate` coerces and checks a call's arguments."""

    __slots__ = ("_validator", "schema", "title")

    def __init__(self, schema: Mapping[str, Any], *, title: str) -> None:
        """Compile ``schema`` for the tool named ``title``; `HandrailError` if it is no valid
        JSON schema (under the draft its ``$schema`` names)."""
        self.schema: dict[str, Any] = dict(schema)
        """The JSON schema."""
        self.title = title
        """The tool's name, the title of the errors `validate` raises."""
        kind = validator_for(self.schema, default=Draft202012Validator)
        try:
            kind.check_schema(self.schema)
        except SchemaError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
            raise HandrailError(
                f"the tool {title!r} has an invalid JSON schema at {where}: {exc.message}"
            ) from None
        self._validator: Validator = kind(self.schema)

    def validate(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """``args`` coerced to the schema (a new dict; ``args`` is left as it is).

        Raises pydantic's `ValidationError` with every error that remains, each with its path.
        """
        value: dict[str, Any] = dict(args)
        copied = False
        errors = self._errors(value)
        for _ in range(_ROUNDS):
            fixes = dict(self._fixes(value, errors))
            if not fixes:
                break
            if not copied:
                value, copied = copy.deepcopy(value), True
            for path, new in fixes.items():
                _put(value, path, new)
            errors = self._errors(value)
        if errors:
            raise _validation_error(self.title, errors)
        return value

    def _errors(self, value: dict[str, Any]) -> list[SchemaViolation]:
        return list(self._validator.iter_errors(value))

    def _fixes(
        self, value: dict[str, Any], errors: Iterable[SchemaViolation]
    ) -> Iterator[tuple[Loc, Any]]:
        """Each string a ``type`` error names (in ``anyOf``/``oneOf`` branches too) that parses
        as a wanted type, with its path and its new value; the first branch that takes it wins."""
        seen: set[Loc] = set()
        for error in _type_errors(errors):
            path = tuple(error.absolute_path)
            if not path or path in seen or not isinstance(error.instance, str):
                continue
            if _get(value, path) is not error.instance:  # e.g. ``propertyNames``: not a value
                continue
            new = self._parse(error.instance, error.validator_value)
            if new is not _NO_VALUE:
                seen.add(path)
                yield path, new

    def _parse(self, text: str, wanted: Any) -> Any:
        """``text`` as the first of the ``wanted`` types it spells, by the validator's type
        checker; `_NO_VALUE` if none."""
        for kind in [wanted] if isinstance(wanted, str) else list(wanted):
            new = _scalar(text.strip(_BLANKS), kind)
            if new is not _NO_VALUE and self._validator.is_type(new, kind):
                return new
        return _NO_VALUE


def _scalar(text: str, kind: str) -> Any:
    """``text`` as a JSON ``kind`` (``integer``, ``number`` or ``boolean``); `_NO_VALUE` else."""
    if kind == "boolean":
        return {"true": True, "false": False}.get(text.lower(), _NO_VALUE)
    if kind == "integer" and _INTEGER.fullmatch(text):
        return int(text)
    if kind == "number" and _NUMBER.fullmatch(text):
        if _INTEGER.fullmatch(text):
            return int(text)
        number = float(text)
        return number if math.isfinite(number) else _NO_VALUE
    return _NO_VALUE


def _type_errors(errors: Iterable[SchemaViolation]) -> Iterator[SchemaViolation]:
    """The ``type`` errors among ``errors`` and their ``anyOf``/``oneOf`` branches' errors."""
    for error in errors:
        if error.validator == "type":
            yield error
        yield from _type_errors(error.context or ())


def _get(value: Any, path: Loc) -> Any:
    for step in path:
        value = value[step]
    return value


def _put(value: Any, path: Loc, new: Any) -> None:
    _get(value, path[:-1])[path[-1]] = new


def _validation_error(title: str, errors: Sequence[SchemaViolation]) -> ValidationError:
    """Pydantic's `ValidationError` for the schema's ``errors``: each at its most telling place
    (`best_match` looks into ``anyOf``/``oneOf`` branches)."""
    lines: list[InitErrorDetails] = []
    for error in errors:
        best: SchemaViolation = best_match([error])
        reason = _reason(best)
        if len(reason) > _MESSAGE_CHARS:
            reason = reason[: _MESSAGE_CHARS - 1] + "…"
        context = {"reason": reason, "keyword": str(best.validator)}
        lines.append(
            InitErrorDetails(
                type=PydanticCustomError(ERROR_TYPE, "{reason}", context),
                loc=tuple(best.absolute_path),
                input=best.instance,
            )
        )
    return ValidationError.from_exception_data(title, lines)


def _reason(error: SchemaViolation) -> str:
    """The error's message; for a value no branch's type takes (``"12x"`` for an Optional
    integer), the types it could have had: ``'12x' is not of type 'integer' or 'null'``."""
    branches = error.context or []
    if branches and all(b.validator == "type" and not b.relative_path for b in branches):
        wanted = [w for b in branches for w in _names(b.validator_value)]
        return f"{error.instance!r} is not of type {' or '.join(map(repr, wanted))}"
    return error.message


def _names(wanted: Any) -> list[str]:
    return [wanted] if isinstance(wanted, str) else [str(w) for w in wanted]
