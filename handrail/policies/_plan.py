"""A policy's plan for one tool and set of roles: the rules that can match, their conditions
grouped by text, and how one call's conditions are evaluated (see `handrail.policies._engine`)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import cel

from handrail.context import Actor
from handrail.policies._cel import converts, describe, nests_deeper, split
from handrail.policies.decision import Decision
from handrail.policies.rules import Rule

__all__ = ["FACTS", "Condition", "Plan", "Result", "Template"]

FACTS = ("usage", "provenance")
"""Variables a condition may read beyond the call: the limits' totals (``usage``) and where the
arguments came from (``provenance``), given to `Plan.evaluate` by name."""

Result = bool | str
"""A condition's result for one call: True, False, or why it failed to evaluate (a deny)."""

_TOO_DEEP = "the arguments nest deeper than CEL reads"
"""Why every condition reading ``args`` fails for arguments past CEL's nesting depth."""

Template = tuple[Decision, timedelta | None]
"""A decision without its ``expires_at``, and the lapse it is computed from (asks only)."""

_PLAIN = frozenset({str, int, float, bool, type(None)})
"""An argument of these types is read as a variable of its own; of others, only if it holds
plain data (`converts`)."""
_SPLIT = "handrail_args_"
"""The prefix of the variables a rewritten condition reads the arguments from."""


class Condition:
    """One distinct condition of a plan and the rules that share it."""

    __slots__ = ("program", "rules", "split", "variables", "when")

    def __init__(self, when: str, program: cel.Program, rules: tuple[Rule, ...]) -> None:
        self.when = when
        self.program = program
        self.rules = rules
        self.variables = frozenset(program.variables())
        self.split = program if "args" not in self.variables else split(program, _SPLIT)
        """The condition reading each argument as a variable (``args.x`` as ``handrail_args_x``),
        or None when it reads ``args`` some other way."""


class Plan:
    """The rules that can match calls of one tool by actors holding given roles."""

    __slots__ = (
        "always",
        "combined",
        "conditions",
        "fields",
        "kept",
        "others",
        "programs",
        "reads_actor",
        "reads_facts",
        "split",
        "tool",
        "variables",
    )

    def __init__(self, tool: str, rules: list[Rule]) -> None:
        self.tool = tool
        self.always = tuple(r for r in rules if r.program is None)
        grouped: dict[str, tuple[cel.Program, list[Rule]]] = {}
        for r in rules:
            if r.program is not None:
                grouped.setdefault(r.program.source, (r.program, []))[1].append(r)
        self.conditions = tuple(
            Condition(when, program, tuple(rs)) for when, (program, rs) in grouped.items()
        )
        self.programs = tuple(c.program for c in self.conditions)
        self.variables = frozenset(v for c in self.conditions for v in c.variables)
        self.reads_actor = "actor" in self.variables
        self.reads_facts = not self.variables.isdisjoint(FACTS)
        """Whether a condition reads ``usage`` or ``provenance``: facts of the call beyond its
        arguments, so its decision is not kept by arguments."""
        self.others = self.variables - {"args"}
        split = [c.split for c in self.conditions]
        self.split = (
            tuple(p for p in split if p is not None)
            if "args" in self.variables and None not in split
            else ()
        )
        """The conditions reading each argument as a variable, when they all can and one reads
        ``args``; else empty."""
        names = sorted({v for p in self.split for v in p.variables() if v.startswith(_SPLIT)})
        self.fields = {v.removeprefix(_SPLIT): v for v in names}
        """The variable of each argument the split conditions read, by the argument's name."""
        self.combined: dict[tuple[Result, ...], Template] = {}
        self.kept: dict[object, Template] = {}

    def evaluate(
        self,
        tool: str,
        args: Mapping[str, Any],
        actor: Actor,
        facts: Mapping[str, Any],
    ) -> tuple[Result, ...]:
        """Each distinct condition's result for one call (``facts``: `FACTS` by name)."""
        if not self.conditions:
            return ()
        values = _values(self.others, tool, args, actor, facts)
        programs = self.programs
        given = self._given(args) if self.split else None
        if given is not None:
            values.update(given)
            programs = self.split
        elif "args" in self.variables:
            if nests_deeper(args):  # the binding would recurse until the process dies
                return tuple(_TOO_DEEP for _ in self.conditions)
            values["args"] = dict(args)
        try:  # one context for all; if a value cannot be converted, each reads its own
            ctx = cel.Context(values)
        except Exception:
            return tuple(
                _run(c.program, c.variables, tool, args, actor, facts) for c in self.conditions
            )
        results: list[Result] = []
        for program in programs:
            try:  # any failure closes the gate
                result = program.execute(ctx)
            except Exception as exc:
                results.append(describe(exc))
            else:
                results.append(result if result is True or result is False else describe(result))
        return tuple(results)

    def _given(self, args: Mapping[str, Any]) -> dict[str, Any] | None:
        """The arguments the split conditions read, by variable; None when one is missing or
        holds more than plain data (CEL reads a ``cel.OptionalValue`` in a map otherwise), or
        when another may not convert (then the map decides, as it fails the conditions)."""
        try:
            given = {var: args[name] for name, var in self.fields.items()}
        except KeyError:
            return None
        for value in given.values():
            if type(value) not in _PLAIN and not converts(value):
                return None
        if len(args) > len(given):
            read = self.fields
            for name, value in args.items():
                if name not in read and not (
                    type(name) is str and converts(name) and converts(value)
                ):
                    return None
        return given


def _values(
    names: frozenset[str],
    tool: str,
    args: Mapping[str, Any],
    actor: Actor,
    facts: Mapping[str, Any],
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if "args" in names:
        values["args"] = dict(args)
    if "actor" in names:
        values["actor"] = actor.as_dict()
    if "tool" in names:
        values["tool"] = tool
    for name in FACTS:
        if name in names:
            values[name] = facts.get(name) or {}  # not given: an empty map, so reading fails
    return values


def _run(
    program: cel.Program,
    names: frozenset[str],
    tool: str,
    args: Mapping[str, Any],
    actor: Actor,
    facts: Mapping[str, Any],
) -> Result:
    """One condition's result in a context of the variables it reads."""
    try:  # any failure, converting the values or evaluating, closes the gate
        result = program.execute(cel.Context(_values(names, tool, args, actor, facts)))
    except Exception as exc:
        return describe(exc)
    return result if result is True or result is False else describe(result)
