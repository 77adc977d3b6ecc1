"""Pages of the inbox's listing: `Inbox.pending_page` (limit and cursor), ``handrail pending
--limit/--after``, and the web listing's links; every waiting call listed once across pages,
even when calls are decided between two pages."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from langchain_core.messages import AIMessage
from starlette.testclient import TestClient
from support import AGENT, CTX, Raw, call, config, turn
from web_support import AUTH, GRAPH, Bank, bearer, paused_agent, token

from handrail import Actor, HandrailGraph, Inbox, Policy, build_agent
from handrail.auth import Token
from handrail.cli import main
from handrail.errors import HandrailError
from handrail.inbox import PageError, PendingApproval, PendingPage
from handrail.review import WaitingCall
from handrail.storage.approvals import ApprovalTable
from handrail.testing import ScriptedChatModel
from handrail.tools.demo import banking_tools
from handrail.web import create_app

ALICE = Actor(id="alice", roles=("treasurer",))
POLICY = Policy.from_yaml(
    """
rules:
  - id: reads
    tools: [get_balance]
    effect: allow
  - id: big
    tools: [transfer_funds]
    when: "args.amount > 1000.0"
    effect: ask
    approvers: [treasurer]
"""
)
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)

Pair = tuple[str | None, str]


def paused_threads(db: Path | str, amounts: list[list[float]]) -> HandrailGraph:
    """Thread ``p-<i>`` asks for one transfer per amount in ``amounts[i]`` (one turn), and waits.

    Each thread gets its own graph (a scripted model answers by position); the last is returned
    for decisions: any of them resumes any thread.
    """
    graph: HandrailGraph | None = None
    for i, turn_amounts in enumerate(amounts):
        calls = [call("transfer_funds", to="carol", amount=a) for a in turn_amounts]
        model = ScriptedChatModel([turn(*calls), AIMessage("done")])
        graph = build_agent(model, banking_tools(db), POLICY, checkpointer=db)
        out = graph.invoke({"messages": [("user", "pay")]}, config(f"p-{i}"), context=CTX)
        assert "__interrupt__" in out
    assert graph is not None
    return graph


def pairs(items: list[PendingApproval]) -> list[Pair]:
    return [(i.thread_id, i.tool_call_id) for i in items]


def every_page(inbox: Inbox, limit: int, **kwargs: Any) -> list[PendingPage]:
    pages = [inbox.pending_page(limit=limit, **kwargs)]
    while pages[-1].next_cursor is not None:
        pages.append(inbox.pending_page(limit=limit, after=pages[-1].next_cursor, **kwargs))
    return pages


def waiting(thread: str, call_id: str, **fields: Any) -> WaitingCall:
    """A waiting call as the approval node would describe it (for rows made without a graph)."""
    base: dict[str, Any] = {
        "thread_id": thread,
        "tool_call_id": call_id,
        "tool": "transfer_funds",
        "args": {"amount": 5000},
        "args_hash": f"hash-{thread}-{call_id}",
        "approvers": ("treasurer",),
        "actor": AGENT,
    }
    return WaitingCall.model_validate(base | fields)


# -- the library -------------------------------------------------------------------------------


@pytest.mark.backends("sqlite", "postgresql")
def test_pages_of_paused_graphs_list_every_call_once_in_order(db: Path | str) -> None:
    paused_threads(db, [[2000], [3000, 4000], [5000], [6000, 7000, 8000], [9000]])
    inbox = Inbox(db)
    try:
        everything = inbox.pending()
        assert len(everything) == 8
        for limit in (1, 3, 8):
            pages = every_page(inbox, limit)
            assert [len(p.items) for p in pages[:-1]] == [limit] * (len(pages) - 1)
            assert [i for p in pages for i in p.items] == everything
            assert len(pages) == -(-8 // limit)  # the last page ends the listing: no empty page
        newest = every_page(inbox, 3, newest_first=True)
        assert [i for p in newest for i in p.items] == everything[::-1]
        assert inbox.pending(limit=3) == everything[:3]
        third = inbox.pending_page(limit=3).next_cursor
        assert inbox.pending(after=third) == everything[3:]
        # one thread's calls stay in the order their decisions are given in
        assert [i.args["amount"] for i in everything if i.thread_id == "p-3"] == [6000, 7000, 8000]
        assert inbox.pending_page(limit=None).next_cursor is None
    finally:
        inbox.close()


@pytest.mark.backends("sqlite", "postgresql")
def test_calls_decided_between_pages_move_no_other_call(db: Path | str) -> None:
    graph = paused_threads(db, [[2000], [3000], [4000], [5000], [6000], [7000], [8000]])
    inbox = Inbox(db, graph=graph)
    table = ApprovalTable(db)
    try:
        everything = pairs(inbox.pending())
        first = inbox.pending_page(limit=3)
        assert pairs(first.items) == everything[:3]
        # a call of the page just read and one of a page still to come are decided meanwhile
        inbox.approve("p-1", approver=ALICE)
        inbox.reject("p-5", "no", approver=ALICE)
        rest = every_page(inbox, 3, after=first.next_cursor)
        seen = pairs(first.items) + [p for page in rest for p in pairs(page.items)]
        throughout = [p for p in everything if p[0] not in ("p-1", "p-5")]
        assert [p for p in seen if p[0] != "p-1"] == throughout
        assert len(seen) == len(set(seen)) and ("p-5", throughout[0][1]) not in seen
        # an offset would have skipped the call that moved up into the page already read
        by_offset = [PendingApproval.of(r) for r in table.waiting_page(limit=3, offset=3).rows]
        assert pairs(by_offset)[0] != everything[3] and everything[3] in seen
    finally:
        table.close()
        inbox.close()


@pytest.mark.backends("sqlite", "postgresql")
def test_filters_combine_with_pages(db: Path | str) -> None:
    table = ApprovalTable(db)
    try:
        for n in range(12):
            call_ = waiting(
                f"f-{n:02d}",
                "c0",
                tool="transfer_funds" if n % 3 else "close_account",
                kind="escalation" if n % 4 == 0 else "approval",
                approvers=("treasurer",) if n % 2 else ("admin",),
            )
            table.open(f"f-{n:02d}", [call_], T0 + timedelta(minutes=n))
    finally:
        table.close()
    inbox = Inbox(db)
    try:
        for filters in (
            {"tool": "transfer_funds"},
            {"approver_role": "treasurer"},
            {"kind": "approval", "tool": "transfer_funds"},
            {"older_than": timedelta(days=1), "approver_role": "admin"},
        ):
            whole = inbox.pending(**filters)
            assert 0 < len(whole) < 12, filters
            for newest_first in (False, True):
                pages = every_page(inbox, 2, newest_first=newest_first, **filters)
                listed = [i for p in pages for i in p.items]
                assert listed == (whole[::-1] if newest_first else whole), filters
    finally:
        inbox.close()


@pytest.mark.backends("sqlite", "postgresql")
def test_requests_asked_in_the_same_microsecond_page_in_one_order(db: Path | str) -> None:
    """Two requests of one thread, asked at the same instant, tie on (time, thread, seq): the
    call id orders them, so a page of one row never repeats or skips one."""
    table = ApprovalTable(db)
    try:
        for thread in ("s-a", "s-b"):
            for call_id in ("x", "y", "z"):  # three requests of one call each, seq 0
                table.open(thread, [waiting(thread, call_id)], T0)
    finally:
        table.close()
    inbox = Inbox(db)
    try:
        one_by_one = [i for p in every_page(inbox, 1) for i in p.items]
        assert pairs(one_by_one) == [(t, c) for t in ("s-a", "s-b") for c in "xyz"]
        back = [i for p in every_page(inbox, 1, newest_first=True) for i in p.items]
        assert back == one_by_one[::-1]
    finally:
        inbox.close()


@pytest.mark.backends("sqlite", "postgresql")
def test_a_page_before_a_cursor_and_back(db: Path | str) -> None:
    table = ApprovalTable(db)
    try:
        for n in range(7):
            table.open(f"b-{n}", [waiting(f"b-{n}", "c0")], T0 + timedelta(seconds=n))
        whole = [r.item for r in table.waiting()]
        second = table.waiting_page(limit=3, after=table.waiting_page(limit=3).next_cursor)
        assert [r.item for r in second.rows] == whole[3:6] and second.prev_cursor is not None
        back = table.waiting_page(limit=3, before=second.prev_cursor)
        assert [r.item for r in back.rows] == whole[:3] and back.prev_cursor is None
        # fewer rows than a page before the cursor: the first page, full
        near = table.waiting_page(limit=3, after=table.waiting_page(limit=1).next_cursor)
        assert [r.item for r in table.waiting_page(limit=3, before=near.prev_cursor).rows] == (
            whole[:3]
        )
    finally:
        table.close()


def encoded(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "nope!",
        "é",
        encoded({"requested_at": "2026-01-05"}),
        encoded(["2026-01-05T09:00:00+00:00", "t", 0]),
        encoded(["2026-01-05T09:00:00+00:00", "t", "0", "c"]),
        encoded(["2026-01-05T09:00:00+00:00", "t", True, "c"]),
        encoded(["not a time", "t", 0, "c"]),
    ],
)
def test_a_cursor_no_page_gave_out_is_refused_naming_it(tmp_path: Path, cursor: str) -> None:
    inbox = Inbox(tmp_path / "handrail.db")
    try:
        with pytest.raises(PageError) as refused:
            inbox.pending_page(after=cursor)
    finally:
        inbox.close()
    assert refused.value.parameter == "after" and refused.value.value == cursor
    assert isinstance(refused.value, ValueError) and "cursor" in str(refused.value)


def test_a_limit_below_one_is_refused(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path / "handrail.db")
    try:
        for limit in (0, -3):
            with pytest.raises(PageError) as refused:
                inbox.pending(limit=limit)
            assert refused.value.parameter == "limit" and refused.value.value == limit
    finally:
        inbox.close()


def test_a_page_seeks_the_waiting_index(tmp_path: Path) -> None:
    db = tmp_path / "handrail.db"
    ApprovalTable(db).close()  # makes the tables
    raw = Raw(db)
    try:
        plan = raw.execute(
            "EXPLAIN QUERY PLAN SELECT item FROM handrail_approvals WHERE status IN "
            "('open', 'deciding') AND outcome IS NULL AND (requested_at, thread_id, seq, "
            "tool_call_id) > (?, ?, ?, ?) ORDER BY requested_at, thread_id, seq, tool_call_id "
            "LIMIT 51",
            ("2026-01-05", "t", 0, "c"),
        ).fetchall()
    finally:
        raw.close()
    detail = " ".join(str(row[3]) for row in plan)
    assert "USING INDEX handrail_approvals_waiting " in detail and "TEMP B-TREE" not in detail


# -- the command line --------------------------------------------------------------------------


def test_cli_pending_pages_with_limit_and_after(tmp_path: Path, capsys) -> None:
    db = tmp_path / "handrail.db"
    paused_threads(db, [[2000], [3000, 4000], [5000], [6000]])
    assert main(["pending", "--db", str(db), "--json"]) == 0
    whole = json.loads(capsys.readouterr().out)
    assert isinstance(whole, list) and len(whole) == 5  # without --limit: the list, as before

    listed: list[dict[str, Any]] = []
    after: list[str] = []
    while True:
        assert main(["pending", "--db", str(db), "--json", "--limit", "2", *after]) == 0
        page = json.loads(capsys.readouterr().out)
        assert set(page) == {"items", "next_cursor"} and len(page["items"]) <= 2
        listed += page["items"]
        if page["next_cursor"] is None:
            break
        after = ["--after", page["next_cursor"]]
    assert listed == whole

    assert main(["pending", "--db", str(db), "--limit", "3"]) == 0
    table = capsys.readouterr().out
    assert "3 call(s) waiting" in table
    cursor = re.findall(r"the next page: --after (\S+)$", table, re.M)
    assert len(cursor) == 1
    assert main(["pending", "--db", str(db), "--limit", "3", "--after", cursor[0]]) == 0
    rest = capsys.readouterr().out
    assert "2 call(s) waiting" in rest and "--after" not in rest
    assert [line.split()[0] for line in rest.splitlines()[1:3]] == ["p-2", "p-3"]

    assert main(["pending", "--db", str(db), "--json", "--newest", "--limit", "5"]) == 0
    assert json.loads(capsys.readouterr().out) == {"items": whole[::-1], "next_cursor": None}


def test_cli_refuses_a_bad_cursor_or_limit_in_one_line(tmp_path: Path, capsys) -> None:
    db = tmp_path / "handrail.db"
    paused_threads(db, [[2000]])
    for flags, named in (
        (["--after", "garbage"], "after='garbage'"),
        (["--limit", "0"], "limit=0"),
    ):
        assert main(["pending", "--db", str(db), *flags]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("handrail: ") and named in err[0], err


# -- the web inbox -----------------------------------------------------------------------------


def threads_listed(page: str) -> list[str]:
    return re.findall(r'<tr class="request" data-thread="([^"]+)"', page)


def link(page: str, rel: str) -> str | None:
    found = re.search(rf'<a rel="{rel}" href="([^"]+)"', page)
    return found.group(1).replace("&amp;", "&") if found else None


@pytest.mark.parametrize("order", ["newest", "oldest"])
def test_web_listing_links_carry_the_cursor(tmp_path: Path, order: str) -> None:
    db = tmp_path / "handrail.db"
    bank = Bank()
    amounts = [("transfer_funds", {"to": "carol", "amount": 2000 + i}) for i in range(7)]
    graph = paused_agent(db, bank, amounts)
    made = [f"t-{i}" for i in range(7)]
    expected = made[::-1] if order == "newest" else made
    headers = bearer("alice", ["treasurer"])
    app = create_app(db, authenticator=AUTH, graphs={GRAPH: lambda _: graph}, page_size=3)
    with TestClient(app) as client:
        pages: list[str] = []
        url: str | None = f"/inbox/?order={order}"
        while url is not None:
            answer = client.get(url if url.startswith("/") else f"/inbox/{url}", headers=headers)
            assert answer.status_code == 200
            pages.append(answer.text)
            url = link(answer.text, "next")
            assert url is None or re.fullmatch(rf"\?order={order}&after=[\w%-]+", url), url
        assert [threads_listed(p) for p in pages] == [expected[:3], expected[3:6], expected[6:]]
        assert link(pages[0], "prev") is None
        back = link(pages[2], "prev")
        assert back is not None and "before=" in back
        assert threads_listed(client.get(f"/inbox/{back}", headers=headers).text) == expected[3:6]
        # a decision between pages: the next link of page one still leads to the rest
        with closing(Inbox(db, graph=graph)) as inbox:
            inbox.approve(expected[0], approver=Token(token("alice", ["treasurer"])))
        second = client.get(f"/inbox/{link(pages[0], 'next')}", headers=headers).text
        assert threads_listed(second) == expected[3:6]
        refused = client.get("/inbox/?after=not-a-cursor", headers=headers)
        assert refused.status_code == 400 and "after=" in refused.text
        # a link's cursor is sealed: it shows no thread (a row the person may not see)
        sealed = unquote(link(pages[0], "next") or "").split("after=")[1]
        assert b"t-" not in base64.urlsafe_b64decode(sealed)
        with closing(Inbox(db)) as inbox:
            bare = inbox.pending_page(limit=3).next_cursor
        assert client.get(f"/inbox/?after={bare}", headers=headers).status_code == 400
    assert bank.transfers == [
        {"to": "carol", "amount": 2000.0 + made.index(expected[0]), "account": ""}
    ]


def test_the_error_is_a_handrail_error() -> None:
    assert issubclass(PageError, HandrailError) and issubclass(PageError, ValueError)


def test_the_page_benchmark_runs_and_reports_both_targets() -> None:
    script = Path(__file__).parent.parent / "benchmarks" / "inbox_pages.py"
    done = subprocess.run(
        [sys.executable, str(script), "--sizes", "2000,200"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    verdicts = [line for line in done.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert [v.split(":")[1].strip() for v in verdicts] == ["sqlite", "sqlite"], done.stdout
    assert "first page" in verdicts[0] and "by cursor" in verdicts[1]
    assert re.search(r"^\s+2,000 ", done.stdout, re.M), done.stdout
