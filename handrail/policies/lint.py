"""What may be wrong with a policy that loads: names that match nothing, conditions that cannot
hold on the tools' arguments, rules that never decide anything.

`lint` (or `Policy.lint`) checks a policy against the tools it gates (their argument schemas) and
the people who exist (a `Directory`), and returns `Finding`s; ``handrail policy check`` prints
them and exits 1 on an error. Checked:

- ``unknown-tool`` (error): a rule names a tool the graph does not have (with a did-you-mean);
  ``unknown-tool-settings`` (warning) the same in ``tools:``.
- ``unknown-role`` (error): a rule's roles, or an ask's approvers, that no person in the
  directory holds.
- ``unknown-arg`` (error): a condition reads ``args.NAME`` the tool's schema does not have; at run
  time it fails, and the rule denies.
- ``type-mismatch`` (error): a condition compares an argument with a literal of another type
  (``args.amount == "100"`` is never true), calls a string method on a non-string, or fails when
  evaluated on values of the schema's types.
- ``never-matches`` (warning): a condition that is false whatever the call.
- ``overridden`` (warning): an allow or ask rule that an unconditional deny of the same or wider
  scope always overrides.
"""

from __future__ import annotations

import difflib
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import cel
from langchain_core.tools import BaseTool
from pydantic import BaseModel

from handrail.errors import PolicyError
from handrail.policies._cel import Path, paths
from handrail.policies.limits import Limit
from handrail.policies.rules import WILDCARD, Rule

if TYPE_CHECKING:
    from handrail.auth import Directory
    from handrail.policies.model import Policy

__all__ = ["Finding", "LintMode", "PolicyWarning", "ToolSchemas", "enforce", "lint", "schemas_of"]

ToolSchemas = Mapping[str, Mapping[str, Any] | None] | Iterable[BaseTool]
"""The tools a policy gates: LangChain tools, or their JSON schemas by name (None: unknown)."""

Level = Literal["error", "warning"]

LintMode = Literal["error", "warn", "off"]
"""What a builder does with the lint's findings (``lint=``): ``error`` raises `PolicyError` for an
error-level finding and warns the rest; ``warn`` (the default) warns every finding; ``off``
does not lint."""


class PolicyWarning(UserWarning):
    """A lint finding about the policy a graph was built with (`enforce`)."""


_CEL_TYPES: dict[str, frozenset[str]] = {
    "int": frozenset({"integer", "number"}),
    "uint": frozenset({"integer", "number"}),
    "double": frozenset({"integer", "number"}),
    "string": frozenset({"string"}),
    "bytes": frozenset({"string"}),
    "bool": frozenset({"boolean"}),
    "null": frozenset({"null"}),
}
"""The JSON types a CEL literal can equal."""
_USAGE_ID = re.compile(r"""\busage\s*\[\s*(?:'([^'\\]*)'|"([^"\\]*)")\s*\]""")
_STRING_METHODS = frozenset({"startsWith", "endsWith", "contains", "matches", "lowerAscii"})
_PROBES: dict[str, object] = {
    "integer": 1,
    "number": 1.5,
    "string": "x",
    "boolean": True,
    "array": [],
    "null": None,
}


@dataclass(frozen=True, kw_only=True, slots=True)
class Finding:
    """One thing the lint found."""

    level: Level
    """``error``: the policy does not do what it says (``policy check`` exits 1); ``warning``."""
    code: str
    """What kind: ``unknown-tool``, ``unknown-role``, ``unknown-arg``, ``type-mismatch``, ..."""
    message: str
    """What is wrong, in a sentence, with a suggestion where there is one."""
    rule_id: str | None = None
    """The rule at fault (None: the policy's default or settings)."""
    field: str | None = None
    """The field at fault: ``tools``, ``roles``, ``approvers``, ``when``, ..."""

    def __str__(self) -> str:
        where = f"rule {self.rule_id!r}" if self.rule_id else "policy"
        field = f" {self.field}" if self.field else ""
        return f"{self.level}: {where}{field}: {self.message} [{self.code}]"


def schemas_of(tools: ToolSchemas) -> dict[str, dict[str, Any] | None]:
    """The JSON schema of each tool's arguments (as the model sees them), by tool name."""
    if isinstance(tools, Mapping):
        return {name: None if s is None else dict(s) for name, s in tools.items()}
    out: dict[str, dict[str, Any] | None] = {}
    for tool in tools:
        schema = tool.tool_call_schema
        if isinstance(schema, type) and issubclass(schema, BaseModel):
            out[tool.name] = schema.model_json_schema()
        else:
            out[tool.name] = dict(schema) if isinstance(schema, Mapping) else None
    return out


def lint(
    policy: Policy,
    *,
    tools: ToolSchemas | None = None,
    directory: Directory | Mapping[str, Iterable[str]] | None = None,
) -> list[Finding]:
    """Check ``policy`` against the ``tools`` it gates and the people in ``directory`` (each
    check runs only when what it needs is given); findings in the policy's order."""
    schemas = schemas_of(tools) if tools is not None else None
    held = _roles_held(directory) if directory is not None else None
    usage = {lim.id: 0 if lim.sum is None else 0.0 for lim in policy.limits}
    found: list[Finding] = []
    if directory is not None and held is None:
        found.append(
            Finding(
                level="warning",
                code="roles-unchecked",
                message="the directory cannot list its people, so roles were not checked",
            )
        )
    for rule in policy.rules:
        if schemas is not None:
            found += _tools(rule, schemas)
        if held is not None:
            found += _roles(rule.id, "roles", rule.roles, held)
            found += _roles(rule.id, "approvers", rule.approvers, held)
        found += _condition(rule, schemas, usage)
        found += _overridden(rule, policy.rules)
        found += _usage_ids(rule, usage)
    for limit in policy.limits:
        if schemas is not None:
            found += _tools(limit, schemas)
        if held is not None:
            found += _roles(limit.id, "approvers", limit.approvers, held)
    if held is not None:
        found += _roles(None, "default.approvers", policy.default.approvers, held)
    if schemas is not None:
        for name in policy.tools:
            if name not in schemas:
                found.append(
                    Finding(
                        level="warning",
                        code="unknown-tool-settings",
                        message=f"settings for unknown tool {name!r}{_hint(name, schemas)}",
                        field=f"tools.{name}",
                    )
                )
    return found


def _roles_held(directory: Directory | Mapping[str, Iterable[str]]) -> set[str] | None:
    """Every role some person holds; None when the directory cannot list its people."""
    if isinstance(directory, Mapping):
        return {role for roles in directory.values() for role in roles}
    held = directory.roles_held()
    return None if held is None else set(held)


def _hint(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _tools(rule: Rule | Limit, schemas: Mapping[str, object]) -> list[Finding]:
    return [
        Finding(
            level="error",
            code="unknown-tool",
            message=f"unknown tool {name!r}{_hint(name, schemas)}",
            rule_id=rule.id,
            field="tools",
        )
        for name in rule.tools
        if name != WILDCARD and name not in schemas
    ]


def _roles(rule_id: str | None, field: str, roles: Iterable[str], held: set[str]) -> list[Finding]:
    what = "no one could decide" if field.endswith("approvers") else "the rule matches no one"
    return [
        Finding(
            level="error",
            code="unknown-role",
            message=f"no one in the directory holds role {role!r}, so {what}{_hint(role, held)}",
            rule_id=rule_id,
            field=field,
        )
        for role in roles
        if role not in held
    ]


def _usage_ids(rule: Rule, usage: Mapping[str, object]) -> list[Finding]:
    """``unknown-limit``: ``usage["ID"]`` naming no limit of the policy (it would deny)."""
    return [
        _at(rule, "error", "unknown-limit", f"usage[{name!r}] names no limit{_hint(name, usage)}")
        for name in dict.fromkeys(a or b for a, b in _USAGE_ID.findall(rule.when or ""))
        if name not in usage
    ]


def _condition(
    rule: Rule, schemas: Mapping[str, dict[str, Any] | None] | None, usage: Mapping[str, object]
) -> list[Finding]:
    program = rule.program
    if program is None:
        return []
    if not program.variables():
        try:
            constant = program.execute(cel.Context({}))
        except Exception:
            constant = None
        if constant is False:
            return [_at(rule, "warning", "never-matches", f"`{rule.when}` is always false")]
        return []
    if schemas is None:
        return []
    covered = list(schemas) if WILDCARD in rule.tools else [t for t in rule.tools if t in schemas]
    found: list[Finding] = []
    for tool in covered:
        schema = schemas[tool]
        if schema is None:
            continue
        problems = [p for path in paths(program.source) for p in _path_problems(path, schema)]
        if not problems:
            problems = _probe(program, tool, schema, usage)
        found += (_at(rule, "error", code, f"{text} (tool {tool!r})") for code, text in problems)
    return list({f.message: f for f in found}.values())


def _at(rule: Rule, level: Level, code: str, message: str) -> Finding:
    return Finding(level=level, code=code, message=message, rule_id=rule.id, field="when")


def _path_problems(path: Path, schema: dict[str, Any]) -> list[tuple[str, str]]:
    """``unknown-arg`` or ``type-mismatch`` for one path read against a tool's schema."""
    node: dict[str, Any] | None = schema
    for depth, name in enumerate(path.names):
        props = _resolve(node, schema).get("properties") if node is not None else None
        if not isinstance(props, Mapping):
            return []  # not an object with declared properties: anything may be there
        if name not in props:
            shown = ".".join(("args", *path.names[: depth + 1]))
            return [("unknown-arg", f"{shown} is not an argument{_hint(name, props)}")]
        node = props[name]
    kinds = _types(node, schema)
    if not kinds:
        return []
    if path.method in _STRING_METHODS and "string" not in kinds:
        return [("type-mismatch", f"{path}.{path.method}() on {_kinds(kinds)}, not a string")]
    c = path.comparison
    if c is None:
        return []
    bad = [lit for lit in c.literals if lit != "null" and not _CEL_TYPES[lit] & kinds]
    if not bad:
        return []
    return [("type-mismatch", f"{path} is {_kinds(kinds)}, compared ({c.operator}) with {bad[0]}")]


def _probe(
    program: cel.Program, tool: str, schema: dict[str, Any], usage: Mapping[str, object]
) -> list[tuple[str, str]]:
    """Evaluate the condition on arguments of the schema's types: a type error there is one at
    run time too."""
    args = _sample(schema, schema)
    actor = {"id": "lint", "roles": []}
    labels = dict.fromkeys(args, "user") if isinstance(args, dict) else {}
    provenance = {"args": labels, "untrusted_seen": False}
    values = {"args": args, "actor": actor, "tool": tool, "usage": dict(usage)}
    ctx = cel.Context({**values, "provenance": provenance})
    try:
        program.execute(ctx)
    except (TypeError, RuntimeError) as exc:
        first = str(exc).split(".")[0]
        return [("type-mismatch", f"evaluated on arguments of the schema's types: {first}")]
    except Exception:  # a missing key, an index or a division the sample values provoke
        return []
    return []


def _sample(node: dict[str, Any] | None, root: dict[str, Any]) -> object:
    node = _resolve(node, root)
    if "const" in node:
        return node["const"]
    if isinstance(node.get("enum"), list) and node["enum"]:
        return node["enum"][0]
    if isinstance(node.get("properties"), Mapping):
        return {k: _sample(v, root) for k, v in node["properties"].items()}
    kinds = sorted(_types(node, root) - {"null"}) or sorted(_types(node, root))
    return _PROBES.get(kinds[0], {}) if kinds else {}


def _resolve(node: dict[str, Any] | None, root: dict[str, Any]) -> dict[str, Any]:
    """``node`` with a local ``$ref`` followed, and a single-branch ``allOf`` unwrapped."""
    for _ in range(16):
        if node is None:
            return {}
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            target: Any = root
            for part in ref[2:].split("/"):
                target = target.get(part, {}) if isinstance(target, Mapping) else {}
            node = target if isinstance(target, dict) else {}
        elif isinstance(node.get("allOf"), list) and len(node["allOf"]) == 1:
            node = node["allOf"][0]
        else:
            return node
    return {}


def _types(node: dict[str, Any] | None, root: dict[str, Any]) -> set[str]:
    """The JSON types a schema node allows (empty: any)."""
    node = _resolve(node, root)
    kind = node.get("type")
    if isinstance(kind, str):
        return {kind}
    if isinstance(kind, list):
        return {str(k) for k in kind}
    branches = node.get("anyOf") or node.get("oneOf")
    if isinstance(branches, list):
        parts = [_types(b, root) for b in branches]
        return set().union(*parts) if all(parts) else set()
    return set()


def _kinds(kinds: set[str]) -> str:
    return " or ".join(sorted(kinds))


def _overridden(rule: Rule, rules: tuple[Rule, ...]) -> list[Finding]:
    """An allow or ask rule whose every call an unconditional deny of wider scope denies."""
    if rule.effect == "deny":
        return []
    for other in rules:
        if other is rule or other.effect != "deny" or other.when not in (None, rule.when):
            continue
        tools = WILDCARD in other.tools or set(rule.tools) <= set(other.tools)
        roles = not other.roles or (bool(rule.roles) and set(rule.roles) <= set(other.roles))
        if tools and roles:
            return [
                Finding(
                    level="warning",
                    code="overridden",
                    message=f"deny rule {other.id!r} covers every call this rule matches, so it "
                    "never decides",
                    rule_id=rule.id,
                    field="effect",
                )
            ]
    return []


def enforce(
    policy: Policy,
    *,
    tools: ToolSchemas,
    directory: Directory | None,
    mode: LintMode,
) -> list[Finding]:
    """Lint ``policy`` against the graph's ``tools`` (and ``directory``) as ``mode`` says, when a
    graph is built: a `PolicyWarning` per finding, or with ``error`` a `PolicyError` naming every
    error-level finding. Returns the findings."""
    if mode == "off":
        return []
    if mode not in ("error", "warn"):
        raise ValueError(f"lint= takes 'error', 'warn' or 'off', not {mode!r}")
    # A directory on a callable source cannot list its people: worth a line in `policy check`,
    # not a warning every time a graph is built on it.
    findings = [
        f for f in lint(policy, tools=tools, directory=directory) if f.code != "roles-unchecked"
    ]
    errors = [f for f in findings if f.level == "error"]
    if mode == "error" and errors:
        listed = "; ".join(str(f) for f in errors)
        raise PolicyError(f"the policy does not fit the graph: {listed}")
    for finding in findings:
        warnings.warn(str(finding), PolicyWarning, stacklevel=4)
    return findings
