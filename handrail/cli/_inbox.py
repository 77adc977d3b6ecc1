"""``handrail pending / show / approve / edit / reject / respond / retry / skip / abort /
expire``: the inbox from a shell. A decision on a thread hosted by a LangGraph server goes
through ``--server`` (`handrail.cli._server`)."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from handrail.auth import Token
from handrail.cli._parser import existing, json_object
from handrail.cli._render import listing_detail, listing_json, listing_table
from handrail.cli._summary import summary, summary_lines
from handrail.cli._tables import out
from handrail.context import Actor
from handrail.errors import AlreadyDecided, GraphNotFound, HandrailError, NothingPending
from handrail.graph import HandrailGraph
from handrail.inbox import ENTRY_POINT_GROUP, Inbox
from handrail.review import PendingApproval
from handrail.storage._base import display


def run_inbox(args: argparse.Namespace) -> int:
    """The inbox commands on ``--db``; ``show`` of a thread with nothing waiting exits 2."""
    if args.command != "expire" and getattr(args, "server", None):
        from handrail.cli._server import decide_on_server

        return _report(args, decide_on_server(args))
    inbox = Inbox(existing(args.db))
    try:
        if args.command == "pending":
            return _pending(inbox, args)
        if args.command == "show":
            items = inbox.show(args.thread)
            if not items:
                raise NothingPending(
                    f"nothing is waiting on this thread in {display(inbox.db)} "
                    "(`handrail pending` lists what is)",
                    thread_id=args.thread,
                )
            if args.json:
                print(json.dumps([listing_json(i) for i in items], indent=2))
            else:
                out(listing_detail(items))
            return 0
        if args.command == "expire":
            return _expire(inbox, args)
        return _report(args, _decide(inbox, args))
    finally:
        inbox.close()


TABLE_PAGE = 100
"""The calls ``handrail pending`` shows in a table without ``--limit``."""


def _pending(inbox: Inbox, args: argparse.Namespace) -> int:
    """``pending``: a table of one page (`TABLE_PAGE` calls without ``--limit``), then the
    ``--after`` that shows the next page (given with the same filters and order). ``--json``
    prints a list of every call, as it always did; with ``--limit`` or ``--after``, an object:
    the page's ``items`` and its ``next_cursor`` (null on the last page)."""
    paged = args.limit is not None or args.after is not None
    limit = args.limit if args.limit is not None else None if args.json else TABLE_PAGE
    page = inbox.pending_page(
        args.tool,
        args.approver_role,
        args.older_than,
        args.kind,
        limit=limit,
        after=args.after,
        newest_first=args.newest,
    )
    if args.json:
        items = [listing_json(i) for i in page.items]
        shown = {"items": items, "next_cursor": page.next_cursor} if paged else items
        print(json.dumps(shown, indent=2))
    else:
        out(listing_table(page.items))
        if page.next_cursor is not None:  # printed whole, never cut to the terminal's width
            print(f"more are waiting; the next page: --after {page.next_cursor}")
    return 0


def _expire(inbox: Inbox, args: argparse.Namespace) -> int:
    graph = load_graph(args.graph, args.db) if args.graph else None
    done = inbox.expire(graph=graph)
    if args.json:
        print(json.dumps([listing_json(i) for i in done], indent=2))
        return 0
    for item in done:
        print(f"expired: thread {item.thread_id} {item.tool} ({item.tool_call_id})")
    print(f"{len(done)} request(s) expired")
    return 0


def _report(args: argparse.Namespace, said: dict[str, Any]) -> int:
    if args.json:
        print(json.dumps(said, indent=2, ensure_ascii=False))
    else:
        out("\n".join(summary_lines(said)))
    return 0


def approver_of(args: argparse.Namespace) -> Actor | Token:
    """Who decides: ``--token`` (or ``$HANDRAIL_TOKEN``), else ``--as`` with its ``--role``s."""
    if args.token:
        return Token(args.token)
    if args.approver is None:
        raise HandrailError("say who decides: --token JWT (or $HANDRAIL_TOKEN), or --as ID")
    try:
        return Actor(id=args.approver, roles=tuple(args.role))
    except ValidationError:
        raise HandrailError("--as needs a non-empty approver id") from None


def _decide(inbox: Inbox, args: argparse.Namespace) -> dict[str, Any]:
    approver = approver_of(args)
    thread = args.thread
    calls: list[str] | None = getattr(args, "call", None)
    rows = inbox.show(thread)
    graph = _graph_for(args, rows)
    kwargs: dict[str, Any] = {"approver": approver, "graph": graph}
    verb = args.command
    if verb == "approve":
        bound = _full_hash(rows, calls, args.hash) if args.hash else None
        positional: tuple[Any, ...] = (thread,)
        kwargs |= {"call_id": calls, "args_hash": bound}
    elif verb == "edit":
        if calls is None or len(calls) != 1:
            raise HandrailError("edit takes exactly one --call")
        positional = (thread, calls[0], json_object(args.args, "--args"))
    elif verb == "reject":
        positional, kwargs["call_id"] = (thread, args.reason), calls
    elif verb in ("respond", "skip"):
        positional, kwargs["call_id"] = (thread, args.message), calls
    elif verb == "retry":
        positional, kwargs["call_id"] = (thread,), calls
    else:
        positional = (thread, args.message)
    try:
        result = getattr(inbox, verb)(*positional, **kwargs)
    except AlreadyDecided:
        raise
    except NothingPending as exc:
        if rows and graph is not None:
            raise _elsewhere(exc, thread, graph, inbox.db, verb) from None
        raise
    decided = [(r.tool_call_id, r.tool) for r in rows if calls is None or r.tool_call_id in calls]
    return summary(verb, thread, decided, result)


def _elsewhere(
    exc: NothingPending, thread: str, graph: HandrailGraph, db: str, verb: str
) -> HandrailError:
    """The error for a thread the inbox lists but whose checkpoint holds no request: when the
    database holds no checkpoint of it at all, it runs on a LangGraph server."""
    if _has_checkpoint(graph, thread) is False:
        return NothingPending(
            f"it is listed in {display(db)}, but no checkpoint of it is there: it runs on "
            f"a LangGraph server, which keeps its own checkpoints; decide it there with "
            f"`handrail {verb} {thread} --server URL --token JWT`",
            thread_id=thread,
        )
    said = str(exc).removeprefix(f"thread {thread!r}: ")
    return NothingPending(
        f"{said}; if the thread runs on a LangGraph server, decide it with --server URL",
        thread_id=thread,
    )


def _has_checkpoint(graph: HandrailGraph, thread: str) -> bool | None:
    """Whether ``graph``'s saver holds a checkpoint of ``thread`` (None: it cannot be asked
    from here, an async saver)."""
    saver = graph.checkpointer
    if saver is None or isinstance(saver, bool) or type(saver).__name__.startswith("Async"):
        return None
    found = saver.get_tuple({"configurable": {"thread_id": thread}})
    return found is not None


def _full_hash(rows: list[PendingApproval], calls: list[str] | None, prefix: str) -> str:
    """The full args hash that ``prefix`` (as shown by `handrail show`) abbreviates."""
    if len(prefix) < 12:
        raise HandrailError("--hash needs at least 12 characters of the args hash")
    named = [r for r in rows if calls is None or r.tool_call_id in calls]
    if len(named) == 1 and named[0].args_hash.startswith(prefix):
        return named[0].args_hash
    return prefix


def _graph_for(args: argparse.Namespace, rows: list[PendingApproval]) -> HandrailGraph | None:
    """The graph to resume the thread with: ``--graph``, else the ``handrail.graphs`` entry point
    named after the paused graph (None when nothing waits: the inbox says so)."""
    if args.graph:
        return load_graph(args.graph, args.db)
    if not rows:
        return None
    name = rows[0].graph
    for ep in entry_points(group=ENTRY_POINT_GROUP, name=name):
        return _built(ep.load(), f"the {ENTRY_POINT_GROUP!r} entry point {name!r}", args.db)
    raise GraphNotFound(
        f"no graph to resume {name or 'this'!r} thread with: pass --graph MODULE:FACTORY "
        f"(a function taking the database and returning the app's graph, e.g. --graph "
        f"app:make_graph), or declare an entry point {name or 'NAME'} = 'module:factory' in the "
        f"{ENTRY_POINT_GROUP!r} group"
    )


def load_graph(spec: str, db: str) -> HandrailGraph:
    """The graph ``--graph MODULE:FACTORY`` names, built on ``db``; MODULE is imported with the
    current directory on the import path (``--graph app:make_graph`` next to ``app.py``)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise GraphNotFound(f"--graph must be MODULE:FACTORY (e.g. app:make_graph), not {spec!r}")
    here = str(Path.cwd())
    added = here not in sys.path
    if added:
        sys.path.insert(0, here)
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise GraphNotFound(f"--graph {spec}: {exc}") from None
    finally:
        if added:
            sys.path.remove(here)
    return _built(factory, f"--graph {spec}", db)


def _built(factory: Callable[[str], object], named: str, db: str) -> HandrailGraph:
    try:
        graph = factory(db)
    except Exception as exc:
        raise GraphNotFound(f"{named} failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(graph, HandrailGraph):
        raise GraphNotFound(f"{named} returned a {type(graph).__name__}, not a HandrailGraph")
    return graph
