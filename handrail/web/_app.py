"""The web inbox's Starlette app: its routes, and what each does (see `handrail.web`)."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import jinja2
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from handrail.auth import Trust
from handrail.drawing import graph_svg
from handrail.errors import HandrailError, IdentityError
from handrail.inbox import GraphFactory, Inbox
from handrail.redaction import REDACTED
from handrail.storage.approvals import ApprovalTable, PageError
from handrail.storage.web_sessions import WebSessionTable
from handrail.web._deciding import Decider, common, seen, text
from handrail.web._http import BodyLimit, SecurityHeaders, path_for, shown, summary
from handrail.web._people import SESSION_LIFETIME, People, Person, check_csrf, csrf_token
from handrail.web._views import (
    GraphShelf,
    Refusal,
    arg_changes,
    change_marker,
    decidable_thread,
    edit_fields,
    first_args,
    list_page,
    news,
    recent_audit,
)

__all__ = ["WebInbox"]

_HERE = Path(__file__).parent
_FLASH = "flash"
_LAST_PAGE = 10_000
"""The highest page number the listing takes (a larger one shows this page)."""


class WebInbox:
    """The pages and their data: one approvals table read for listings, the sessions of the
    people signed in, a `Decider` for decisions (`Inbox` or the LangGraph server's API), and
    the graphs by name."""

    def __init__(
        self,
        db: str,
        *,
        trust: Trust,
        graphs: Mapping[str, GraphFactory] | None,
        page_size: int,
        poll_interval: float,
        server: str | bool = False,
    ) -> None:
        self.table = ApprovalTable(db)
        self.inbox = None if server else Inbox(db)
        self.shelf = GraphShelf(self.table.store.url, graphs)
        self.decider = Decider(self.shelf, self.inbox, server)
        self.people = People(trust, WebSessionTable(self.table.store))
        self.page_size = page_size
        self.poll_interval = poll_interval
        self.templates = Jinja2Templates(directory=_HERE / "templates")
        self.templates.env.globals["url_for"] = _url_path
        self._pictures: dict[str, str] = {}

    def close(self) -> None:
        """Close the database connections."""
        if self.inbox is not None:
            self.inbox.close()
        self.table.close()

    def app(self, *, secret: str, prefix: str, https_only: bool) -> Starlette:
        """The Starlette app serving the inbox under ``prefix``."""
        routes = [
            Route("/", self.listing, name="listing"),
            Route("/login", self.login, methods=["GET", "POST"], name="login"),
            Route("/logout", self.logout, methods=["POST"], name="logout"),
            Route("/events", self.events, name="events"),
            Route("/graphs/{name}.svg", self.picture, name="picture"),
            Route("/threads/{thread_id:path}", self.thread, methods=["GET", "POST"], name="thread"),
            Mount("/static", StaticFiles(directory=_HERE / "static"), name="static"),
        ]

        @asynccontextmanager
        async def lifespan(_: Starlette) -> AsyncIterator[None]:
            yield
            self.close()

        # The pages' middleware and error pages stay inside the mount: the LangGraph server
        # makes a custom app's own middleware and handlers its global ones (`http.app`).
        pages = Starlette(
            routes=routes,
            middleware=[
                Middleware(SecurityHeaders, hsts=https_only),
                Middleware(BodyLimit),
                Middleware(
                    SessionMiddleware,
                    secret_key=secret,
                    session_cookie="handrail_session",
                    max_age=int(SESSION_LIFETIME.total_seconds()),
                    same_site="lax",
                    https_only=https_only,
                ),
            ],
            exception_handlers={HTTPException: self.refused},
        )
        return Starlette(routes=[Mount(prefix, app=pages)], lifespan=lifespan)

    # -- pages ----------------------------------------------------------------------------------

    async def listing(self, request: Request) -> Response:
        """The waiting calls the signed-in person may decide, a page at a time."""
        person = await self.people.signed_in(request)
        if person is None:
            return _to_login(request)
        query = request.query_params
        newest = query.get("order", "newest") != "oldest"
        try:
            page = await asyncio.to_thread(
                list_page,
                self.table,
                person,
                size=self.page_size,
                newest_first=newest,
                after=query.get("after"),
                before=query.get("before"),
                number=_page_number(query.get("page")),  # an offset: links older than cursors
            )
        except PageError as exc:
            raise HTTPException(400, f"{exc}: start again from the first page") from None
        name = "_rows.html" if request.query_params.get("fragment") else "list.html"
        return self._page(request, name, person, page=page, order="newest" if newest else "oldest")

    async def login(self, request: Request) -> Response:
        """The sign-in form (a token pasted in); on success, a new session."""
        if request.method == "GET":
            return self._page(request, "login.html", None)
        form = await request.form()
        check_csrf(request, form, None)
        try:
            await self.people.sign_in(request, text(form, "token"))
        except IdentityError as exc:
            return self._page(request, "login.html", None, error=str(exc), status_code=401)
        return RedirectResponse(path_for(request, "listing"), status_code=303)

    async def logout(self, request: Request) -> Response:
        """End the session (server-side: a copy of the cookie is worth nothing after)."""
        person = await self.people.signed_in(request)
        check_csrf(request, await request.form(), person)
        await self.people.sign_out(request)
        return RedirectResponse(path_for(request, "login"), status_code=303)

    async def events(self, request: Request) -> Response:
        """Server-sent events: ``ready`` once, then ``change`` whenever a request the person
        may decide opens, is claimed, decided or expires (the browser then reloads what it
        shows). The stream ends once the person is no longer signed in (signed out, the
        session or token expired)."""
        if await self.people.signed_in(request) is None:
            raise HTTPException(401, "sign in first", headers={"WWW-Authenticate": "Bearer"})

        async def stream() -> AsyncIterator[dict[str, str]]:
            last: str | None = None
            while True:
                try:
                    person = await self.people.signed_in(request)
                except HTTPException:  # the bearer token expired
                    return
                if person is None:
                    return
                marker = await asyncio.to_thread(change_marker, self.table, person)
                if marker != last:
                    digest = hashlib.sha256(marker.encode()).hexdigest()[:16]
                    yield {"event": "ready" if last is None else "change", "data": digest}
                    last = marker
                await asyncio.sleep(self.poll_interval)

        return EventSourceResponse(stream())

    async def picture(self, request: Request) -> Response:
        """The picture of a graph, by name (SVG)."""
        if await self.people.signed_in(request) is None:
            raise HTTPException(401, "sign in first", headers={"WWW-Authenticate": "Bearer"})
        name = request.path_params["name"]
        if name not in self._pictures:
            graph = await asyncio.to_thread(self.shelf.find, name)
            if graph is None:
                raise HTTPException(404, f"no graph called {name!r} is known here")
            self._pictures[name] = await asyncio.to_thread(graph_svg, graph)
        return Response(self._pictures[name], media_type="image/svg+xml")

    async def thread(self, request: Request) -> Response:
        """One thread's waiting calls (GET), or a decision on them (POST)."""
        person = await self.people.signed_in(request)
        if person is None:
            if request.method == "POST":
                raise HTTPException(401, "sign in first", headers={"WWW-Authenticate": "Bearer"})
            return _to_login(request)
        thread_id: str = request.path_params["thread_id"]
        if request.method == "POST":
            return await self._decide(request, person, thread_id)
        flash = request.session.get(_FLASH)
        if isinstance(flash, dict) and flash.get("thread") == _digest(thread_id):
            request.session.pop(_FLASH)
            flash = await asyncio.to_thread(_flash_view, self.table, thread_id, flash)
        else:
            flash = None
        view = await asyncio.to_thread(self._thread_view, person, thread_id)
        if not view["calls"] and flash is None:
            raise HTTPException(404, "no request on this thread waits for your decision")
        return self._page(request, "thread.html", person, flash=flash, **view)

    async def refused(self, request: Request, exc: Exception) -> Response:
        """An HTTP error as a page (its reason shown; never a stack trace)."""
        assert isinstance(exc, HTTPException)
        try:
            person = await self.people.signed_in(request) if exc.status_code != 401 else None
        except HTTPException:
            person = None
        response = self._page(
            request,
            "error.html",
            person,
            status=exc.status_code,
            problem=exc.detail,
            status_code=exc.status_code,
        )
        response.headers.update(exc.headers or {})
        return response

    # -- deciding -------------------------------------------------------------------------------

    async def _decide(self, request: Request, person: Person, thread_id: str) -> Response:
        form = await request.form()
        check_csrf(request, form, person)
        calls = await asyncio.to_thread(decidable_thread, self.table, person, thread_id)
        if not calls:
            raise HTTPException(403, "you may not decide this request (or nothing waits here)")
        action = text(form, "action")
        try:
            if text(form, "seen") != seen(calls):
                raise Refusal("the request changed since the page was shown: look at it again")
            if any(action not in c.allowed_decisions for c in calls):
                raise Refusal(f"this request does not take the decision {action!r}")
            before = await asyncio.to_thread(_last_seq, self.table, thread_id)
            await self.decider.apply(person, calls, action, form)
        except (HandrailError, Refusal) as exc:
            view = await asyncio.to_thread(self._thread_view, person, thread_id)
            return self._page(
                request, "thread.html", person, error=str(exc), status_code=409, **view
            )
        after = await asyncio.to_thread(_last_seq, self.table, thread_id)
        # Only audit numbers: the page rebuilds the news from the audit (a cookie stays small).
        request.session[_FLASH] = {
            "thread": _digest(thread_id),
            "decision": action,
            "seqs": [before, after],
        }
        return RedirectResponse(path_for(request, "thread", thread_id=thread_id), status_code=303)

    # -- helpers --------------------------------------------------------------------------------

    def _thread_view(self, person: Person, thread_id: str) -> dict[str, Any]:
        calls = decidable_thread(self.table, person, thread_id)
        views = []
        for call in calls:
            tool = self.shelf.tool(call.graph, call.tool) if "edit" in call.decisions() else None
            first = first_args(self.table, call)
            views.append(
                {
                    "call": call,
                    "changes": arg_changes(first, call.args) if first is not None else [],
                    "fields": edit_fields(tool, call.args) if tool is not None else None,
                }
            )
        known = bool(calls) and self._known(calls[0].graph)
        return {
            "thread_id": thread_id,
            "calls": views,
            "seen": seen(calls),
            "decisions": common(calls),
            "audit": recent_audit(self.table, thread_id) if calls else [],
            "graph": calls[0].graph if known else None,
        }

    def _known(self, name: str) -> bool:
        try:
            return self.shelf.find(name) is not None
        except HandrailError:
            return False

    def _page(
        self,
        request: Request,
        name: str,
        person: Person | None,
        *,
        status_code: int = 200,
        **context: Any,
    ) -> Response:
        return self.templates.TemplateResponse(
            request,
            name,
            {"person": person, "csrf": csrf_token(request, person), **context},
            status_code=status_code,
        )


def new_secret() -> str:
    """A random key signing the cookie (what it keeps before sign-in, a decision's news);
    sessions themselves are kept in the database."""
    return secrets.token_urlsafe(32)


@jinja2.pass_context
def _url_path(context: Mapping[str, Any], name: str, /, **params: Any) -> str:
    """The templates' ``url_for``: a path, its parameters encoded (see `path_for`)."""
    return path_for(context["request"], name, **{k: str(v) for k, v in params.items()})


def _to_login(request: Request) -> Response:
    return RedirectResponse(path_for(request, "login"), status_code=303)


def _page_number(raw: str | None) -> int:
    try:
        return min(max(1, int(raw or "1")), _LAST_PAGE)
    except ValueError:
        return 1


def _digest(thread_id: str) -> str:
    """A thread id of any length as a fixed-size key for the cookie."""
    return hashlib.sha256(thread_id.encode()).hexdigest()[:32]


def _flash_view(table: ApprovalTable, thread_id: str, flash: Mapping[str, Any]) -> dict[str, Any]:
    """A decision's news for the page: what the cookie kept (the decision, the audit numbers
    around it) with the audit rows it names."""
    after, upto = (int(n) for n in flash["seqs"])
    done = news(table, thread_id, after, upto)
    return {
        "decision": str(flash["decision"]),
        "changes": [(n, shown(b), shown(a, hidden=b == REDACTED)) for n, b, a in done["changes"]],
        "events": [summary(e) for e in done["events"]],
    }


def _last_seq(table: ApprovalTable, thread_id: str) -> int:
    rows = recent_audit(table, thread_id, 1)
    return int(rows[-1]["seq"]) if rows else 0
