"""How the web inbox turns a posted form into decisions, and where it sends them: `handrail.Inbox`
in this process, or the LangGraph server's API with the person's token."""

from __future__ import annotations

import asyncio

from starlette.datastructures import FormData

from handrail.inbox import Inbox
from handrail.remote import ServerInbox
from handrail.review import (
    Abort,
    Action,
    Approve,
    Edit,
    HumanDecision,
    PendingApproval,
    Reject,
    Respond,
    Retry,
    Skip,
)
from handrail.web._people import Person
from handrail.web._views import GraphShelf, Refusal, edit_fields, parse_edit

__all__ = ["Decider", "common", "seen", "text"]


class Decider:
    """Decides threads with ``inbox`` (None: through the LangGraph server ``server``: True, the
    one this app is mounted on; a URL, that one), finding graphs and tools on ``shelf``."""

    def __init__(self, shelf: GraphShelf, inbox: Inbox | None, server: str | bool) -> None:
        self.shelf = shelf
        self.inbox = inbox
        self.server = server

    async def apply(
        self, person: Person, calls: list[PendingApproval], action: str, form: FormData
    ) -> None:
        """Decide the thread's ``calls`` as the form says. Raises `Refusal`, or the Handrail
        error the inbox or the server refused the decision with."""
        decisions = await self._decisions(calls, action, form)
        thread = calls[0].thread_id or ""
        if self.inbox is None:  # the server checks the person's token as for any API call
            url = self.server if isinstance(self.server, str) else None
            await ServerInbox(url, token=person.token).adecide(thread, decisions)
            return
        graph = await asyncio.to_thread(self.shelf.find, calls[0].graph)
        await self.inbox.adecide(thread, decisions, approver=person.approver(graph), graph=graph)

    async def _decisions(
        self, calls: list[PendingApproval], action: str, form: FormData
    ) -> dict[str, HumanDecision]:
        """The form's decision for each call (an approval bound to the arguments shown)."""
        message = text(form, "message").strip()
        decision: HumanDecision
        if action == "approve":
            return {c.tool_call_id: Approve(args_hash=c.args_hash) for c in calls}
        if action in ("reject", "respond"):
            if not message:
                raise Refusal(f"say why: a {action} needs a message for the model")
            decision = Reject(message=message) if action == "reject" else Respond(message=message)
        elif action == "edit":
            call = _only(calls)
            tool = await asyncio.to_thread(self.shelf.tool, call.graph, call.tool)
            if tool is None:
                raise Refusal(f"the tool {call.tool!r} is not known here: cannot edit its call")
            args = parse_edit(edit_fields(tool, call.args), form)
            return {call.tool_call_id: Edit(edited_action=Action(name=call.tool, args=args))}
        elif action == "retry":
            decision = Retry()
        elif action == "skip":
            decision = Skip(message=message) if message else Skip()  # else the stock words
        elif action == "abort":
            decision = Abort(message=message) if message else Abort()
        else:
            raise Refusal(f"unknown decision {action!r}")
        return dict.fromkeys((c.tool_call_id for c in calls), decision)


def text(form: FormData, name: str) -> str:
    """The form's text field ``name`` (empty when absent or a file)."""
    value = form.get(name)
    return value if isinstance(value, str) else ""


def seen(calls: list[PendingApproval]) -> str:
    """What the page showed: each call and the hash of its arguments."""
    return ",".join(f"{c.tool_call_id}:{c.args_hash}" for c in calls)


def common(calls: list[PendingApproval]) -> list[str]:
    """The decisions every call takes (a thread's calls are decided together)."""
    if not calls:
        return []
    shared = [d for d in calls[0].decisions() if all(d in c.decisions() for c in calls)]
    return [d for d in shared if d != "edit" or len(calls) == 1]


def _only(calls: list[PendingApproval]) -> PendingApproval:
    if len(calls) != 1:
        raise Refusal("an edit here takes a thread that waits on one call")
    return calls[0]
