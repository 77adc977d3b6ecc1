"""What the web inbox's pages show, read from Handrail's tables: one page of the listing, the
calls of one thread, its recent audit trail, and the form an edit is made with."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool

from handrail.audit import AuditLog
from handrail.bounds import oversize
from handrail.errors import GraphNotFound, HandrailError
from handrail.guard import HandrailGraph
from handrail.inbox import ENTRY_POINT_GROUP, GraphFactory
from handrail.review import PendingApproval
from handrail.storage.approvals import ApprovalTable, PageError
from handrail.web._people import Person

__all__ = [
    "EDIT_DEPTH",
    "Change",
    "Field",
    "GraphShelf",
    "Page",
    "Refusal",
    "arg_changes",
    "change_marker",
    "decidable_thread",
    "edit_fields",
    "first_args",
    "list_page",
    "news",
    "parse_edit",
    "recent_audit",
]

Change = tuple[str, Any, Any]
"""One argument an edit changes: its name, the value before and the value after."""

MARKED = 500
"""The most waiting calls the live stream's change marker looks at (the newest a person may
decide)."""

EDIT_DEPTH = 64
"""How deeply a JSON value typed into an edit form may nest."""


class Refusal(Exception):
    """A decision the web inbox refuses before asking the inbox (shown on the page)."""


@dataclass(frozen=True, slots=True)
class Page:
    """One page of the calls a person may decide, and the cursors of the pages beside it."""

    items: list[PendingApproval]
    newest_first: bool
    next_cursor: str | None
    """Where the next page starts (its link's ``after``); None on the last page."""
    prev_cursor: str | None
    """Where the previous page ends (its link's ``before``); None on the first page."""


def list_page(
    table: ApprovalTable,
    person: Person,
    *,
    size: int,
    newest_first: bool,
    after: str | None = None,
    before: str | None = None,
    number: int = 1,
) -> Page:
    """The page of the waiting calls ``person`` may decide after the cursor ``after``, just
    before ``before``, or (neither) page ``number`` (an offset: a link of older versions).

    The table picks the calls one of their roles may decide and they have not approved yet, a
    page at a time, by keyset (`ApprovalTable.waiting_page`); a call is shown when the person
    may decide every call waiting on its thread (a thread's calls are decided together). A page
    drops the person's own requests, so it can hold fewer than ``size``. Raises `PageError`
    for a cursor that no page gave out.
    """
    if not person.actor.roles:
        return Page([], newest_first, None, None)
    seal = _seal(table)
    rows = table.waiting_page(
        approver_role=person.actor.roles,
        not_approved_by=person.actor.id,
        newest_first=newest_first,
        limit=size,
        after=_opened(seal, "after", after),
        before=_opened(seal, "before", before),
        offset=0 if after or before else (number - 1) * size,
    )
    items = [PendingApproval.of(r) for r in rows.rows]
    threads = {i.thread_id for i in items if i.thread_id is not None}
    siblings = table.waiting(thread_ids=threads) if threads else []
    refused = {c.thread_id for c in map(PendingApproval.of, siblings) if not person.may_decide(c)}
    shown = [i for i in items if i.thread_id not in refused and person.may_decide(i)]
    return Page(
        shown, newest_first, _sealed(seal, rows.next_cursor), _sealed(seal, rows.prev_cursor)
    )


@functools.lru_cache(maxsize=16)
def _seal(table: ApprovalTable) -> Fernet:
    """The key the listing's cursors are encrypted with (kept in the database, the same for
    every process): a cursor names a row, which can be one the person may not see."""
    return Fernet(base64.urlsafe_b64encode(table.store.secret("web_cursors")))


def _sealed(seal: Fernet, cursor: str | None) -> str | None:
    return None if cursor is None else seal.encrypt(cursor.encode()).decode()


def _opened(seal: Fernet, parameter: str, cursor: str | None) -> str | None:
    """The table's cursor inside a sealed one from a link (`PageError` if it is not one)."""
    if cursor is None:
        return None
    try:
        return seal.decrypt(cursor.encode()).decode()
    except (InvalidToken, ValueError):
        raise PageError(parameter, cursor, "not a cursor of this listing's links") from None


def decidable_thread(table: ApprovalTable, person: Person, thread_id: str) -> list[PendingApproval]:
    """The calls waiting on ``thread_id`` in decision order, when ``person`` may decide them all
    (else none: the thread is not theirs to see)."""
    calls = [PendingApproval.of(r) for r in table.waiting(thread_id=thread_id)]
    return calls if calls and all(person.may_decide(c) for c in calls) else []


def change_marker(table: ApprovalTable, person: Person) -> str:
    """A value that changes whenever a request ``person`` may decide opens, is claimed, decided
    or expires (looking at the newest `MARKED` of them): nothing else shows through it."""
    if not person.actor.roles:
        return ""
    rows = table.waiting(
        approver_role=person.actor.roles,
        not_approved_by=person.actor.id,
        newest_first=True,
        limit=MARKED,
    )
    digest = hashlib.sha256()
    for row in rows:
        if person.may_decide(PendingApproval.of(row)):
            digest.update(json.dumps([row.item, row.deciding]).encode())
    return digest.hexdigest()


def recent_audit(table: ApprovalTable, thread_id: str, limit: int = 20) -> list[dict[str, Any]]:
    """The thread's last ``limit`` audit rows, oldest first (payloads redacted as recorded)."""
    log = AuditLog(table.store)
    return list(deque(log.export(thread_id=thread_id), maxlen=limit))


def first_args(table: ApprovalTable, call: PendingApproval) -> dict[str, Any] | None:
    """The arguments the call was first asked with (from the audit), if recorded."""
    log = AuditLog(table.store)
    for row in log.export(thread_id=call.thread_id):
        if row["tool_call_id"] == call.tool_call_id and row["event"] == "decided":
            payload: dict[str, Any] = row["payload"]
            return payload
    return None


def news(table: ApprovalTable, thread_id: str, after: int, upto: int) -> dict[str, Any]:
    """What a decision did, rebuilt from the thread's audit rows numbered ``after`` (exclusive)
    to ``upto``: each event, and what an edit changed in the arguments (as recorded, so
    redacted values stay hidden)."""
    rows = [r for r in AuditLog(table.store).export(thread_id=thread_id) if r["seq"] <= upto]
    changes: list[Change] = []
    for row in rows:
        if row["seq"] > after and row["event"] == "approval_decided" and row["decision"] == "edit":
            earlier = [
                r["payload"]
                for r in rows
                if r["tool_call_id"] == row["tool_call_id"] and r["seq"] <= after
            ]
            if earlier:
                changes.extend(arg_changes(earlier[-1], row["payload"]))
    return {"events": [r for r in rows if r["seq"] > after][-50:], "changes": changes}


def arg_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[Change]:
    """The arguments that differ between ``before`` and ``after`` (absent: None)."""
    names = list(dict.fromkeys([*before, *after]))
    return [(n, before.get(n), after.get(n)) for n in names if before.get(n) != after.get(n)]


@dataclass(frozen=True, slots=True)
class Field:
    """One input of an edit form: an argument of the tool's schema."""

    name: str
    kind: str
    """``number``, ``integer``, ``boolean``, ``string`` or ``json`` (anything else)."""
    value: str
    """The current value, as the input shows it."""
    required: bool
    description: str = ""
    choices: tuple[str, ...] = field(default=())


def edit_fields(tool: BaseTool, args: Mapping[str, Any]) -> list[Field]:
    """The inputs of a form editing a call of ``tool`` (its schema as the model sees it, so
    injected arguments are left out), filled with ``args``."""
    schema = convert_to_openai_tool(tool)["function"].get("parameters", {})
    required = set(schema.get("required", ()))
    fields = []
    for name, spec in schema.get("properties", {}).items():
        kind = spec.get("type") if spec.get("type") in _SIMPLE else "json"
        value = args.get(name, spec.get("default"))
        if kind == "json":
            shown = "" if value is None else json.dumps(value)
        elif kind == "boolean":
            shown = "true" if value else ""
        else:
            shown = "" if value is None else str(value)
        fields.append(
            Field(
                name=name,
                kind=kind,
                value=shown,
                required=name in required,
                description=str(spec.get("description", "")),
                choices=tuple(str(c) for c in spec.get("enum", ())),
            )
        )
    return fields


_SIMPLE = frozenset({"number", "integer", "boolean", "string"})


def parse_edit(fields: Sequence[Field], form: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments an edit form sends (inputs named ``arg:<name>``), typed by the schema.
    An empty optional input is left out; a value that does not parse is passed on as text, for
    the tool's schema to refuse with its own message."""
    args: dict[str, Any] = {}
    for f in fields:
        raw = form.get(f"arg:{f.name}")
        if f.kind == "boolean":
            args[f.name] = raw is not None
            continue
        text = raw if isinstance(raw, str) else ""
        if text == "" and not f.required:
            continue
        args[f.name] = _typed(f.kind, text)
    return args


def _typed(kind: str, text: str) -> Any:
    try:
        if kind == "integer":
            return int(text)
        if kind == "number":
            return float(text)
        if kind == "json":
            return _json(text)
    except ValueError:
        return text
    return text


def _json(text: str) -> Any:
    """A JSON value typed into the form; one nested too deeply to handle is refused."""
    too_deep = f"a value in the edit nests more than {EDIT_DEPTH} levels deep: send a flatter one"
    try:
        value = json.loads(text)
    except RecursionError:
        raise Refusal(too_deep) from None
    if oversize(value, max_depth=EDIT_DEPTH, max_bytes=_NO_SIZE_BOUND) is not None:
        raise Refusal(too_deep)
    return value


_NO_SIZE_BOUND = 2**62
"""The request body's cap bounds an edit's size; the tool's policy bounds its arguments'."""


class GraphShelf:
    """The graphs the app resumes threads with, by the name they were built with: from the
    factories given, else from the ``handrail.graphs`` entry points; each built once."""

    def __init__(self, db: str, factories: Mapping[str, GraphFactory] | None) -> None:
        self._db = db
        self._factories = dict(factories or {})
        self._built: dict[str, HandrailGraph] = {}
        self._lock = threading.Lock()

    def find(self, name: str) -> HandrailGraph | None:
        """The graph called ``name``, or None when no factory builds it."""
        with self._lock:
            if name in self._built:
                return self._built[name]
            factory = self._factories.get(name) or _entry_point(name)
            if factory is None:
                return None
            graph = factory(self._db)
            if not isinstance(graph, HandrailGraph):
                raise GraphNotFound(
                    f"the factory for graph {name!r} returned a {type(graph).__name__}, "
                    "not a HandrailGraph"
                )
            self._built[name] = graph
            return graph

    def tool(self, name: str, tool: str) -> BaseTool | None:
        """The tool ``tool`` of graph ``name``, when the graph is known."""
        try:
            graph = self.find(name)
        except HandrailError:
            return None
        return None if graph is None else graph.handrail_gate.tools.get(tool)


def _entry_point(name: str) -> GraphFactory | None:
    for ep in entry_points(group=ENTRY_POINT_GROUP, name=name):
        factory: GraphFactory = ep.load()
        return factory
    return None
