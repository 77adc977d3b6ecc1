"""Whose words a tool's output is: the policy's ``tool_output`` default, each tool's ``output``,
and ``untrusted_when``, a CEL condition over the call's ``args`` that makes one call's output
untrusted (`handrail.provenance`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import cel

from handrail.bounds import oversize
from handrail.errors import PolicyError
from handrail.policies.rules import compile_cel
from handrail.policies.settings import ToolSettings

__all__ = ["OutputTrust"]

Trust = Literal["trusted", "untrusted"]


class OutputTrust:
    """Which tool outputs are untrusted content, compiled once from a policy's settings."""

    __slots__ = ("_default", "_max_bytes", "_max_depth", "_output", "_when")

    def __init__(
        self,
        default: Trust,
        tools: Mapping[str, ToolSettings],
        *,
        max_depth: int = 32,
        max_bytes: int = 262_144,
    ) -> None:
        self._default = default
        self._max_depth, self._max_bytes = max_depth, max_bytes
        self._output = {name: s.output for name, s in tools.items() if s.output is not None}
        self._when: dict[str, cel.Program] = {}
        for name, settings in tools.items():
            if settings.untrusted_when is not None:
                self._when[name] = _compiled(name, settings.untrusted_when, self.of(name))

    def of(self, tool: str | None) -> Trust:
        """The tool's ``output`` setting, else the policy's default (None: the default)."""
        return self._output.get(tool, self._default) if tool is not None else self._default

    @property
    def any_untrusted(self) -> bool:
        """Whether some tool's output is, or can be, untrusted."""
        return (
            self._default == "untrusted" or "untrusted" in self._output.values() or bool(self._when)
        )

    def untrusted(self, tool: str | None, args: Mapping[str, Any] | None = None) -> bool:
        """Whether the output of a call of ``tool`` with ``args`` is untrusted content.

        A tool with ``untrusted_when`` is untrusted when the condition holds for ``args``, and
        also when it cannot be told: no ``args`` known, a condition that fails or is not a
        boolean. Only a condition that is false keeps the output trusted.
        """
        if self.of(tool) == "untrusted":
            return True
        program = self._when.get(tool) if tool is not None else None
        if program is None:
            return False
        if args is None or oversize(args, max_depth=self._max_depth, max_bytes=self._max_bytes):
            return True  # unknown, or past the policy's bounds: never handed to the cel binding
        try:
            return program.execute(cel.Context({"args": dict(args)})) is not False
        except Exception:  # the cel binding raises ValueError or RuntimeError
            return True


def _compiled(tool: str, text: str, trust: Trust) -> cel.Program:
    field = f"tools.{tool}.untrusted_when"
    if trust == "untrusted":
        raise PolicyError(
            "untrusted_when narrows a trusted output, but this tool's output is already "
            "untrusted (set its output: trusted)",
            field=field,
        )
    program = compile_cel(text, None, field, "condition")
    others = sorted(set(program.variables()) - {"args"})
    if others:
        raise PolicyError(
            f"untrusted_when reads only the call's args, not {', '.join(others)}", field=field
        )
    return program
