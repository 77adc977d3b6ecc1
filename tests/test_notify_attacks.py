"""Attacks on the outbox and the worker: slow, hanging and hostile receivers, leases that lapse
mid-send, skewed clocks, signals and outages, secrets on the way out, and a graph that must never
wait on a send."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from notify_support import SECRET, bank, webhook_receiver, write_events
from support import CTX, Raw, call, config, table_rows, turn

import handrail.notify.delivery
import handrail.worker
from handrail import Inbox, Policy, build_agent
from handrail.notify import Notifications, Webhook
from handrail.storage.outbox import OutboxTable
from handrail.testing import ScriptedChatModel
from handrail.tools.demo import banking_tools
from handrail.worker import Worker, run_worker

both = pytest.mark.backends("sqlite", "postgresql")


def notify(url: str, **extra: Any) -> Notifications:
    return Notifications(webhooks=[Webhook(url=url, secret=SECRET)], **extra)


def in_thread(work: Any) -> threading.Thread:
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def wait_for(condition: Any, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


# -- receivers that hang, drip, redirect, refuse ---------------------------------------------------


def test_a_receiver_that_drips_its_answer_cannot_hold_an_attempt_past_its_timeout(
    tmp_path: Path,
) -> None:
    db = tmp_path / "h.db"
    write_events(db, 1)
    # One byte every 0.2 s: each read is quick, the whole answer takes ~8 s.
    with webhook_receiver(drip=0.2) as receiver:
        worker = Worker(db, notifications=notify(receiver.url, timeout=1.0))
        started = time.monotonic()
        report = worker.run_once()
        took = time.monotonic() - started
        worker.close()
    assert took < 3.0, f"one attempt took {took:.1f} s with a 1 s timeout"
    assert report.deliveries.retrying == 1
    (attempt,) = OutboxTable(db).deliveries()
    assert attempt.last_error is not None and "timed out" in attempt.last_error


def test_a_redirect_is_not_followed(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    write_events(db, 1)
    with (
        webhook_receiver() as inside,
        webhook_receiver(plan=[307], headers={"Location": inside.url}) as outside,
    ):
        worker = Worker(db, notifications=notify(outside.url))
        assert worker.run_once().deliveries.retrying == 1
        worker.close()
    assert inside.hits == [] and len(outside.hits) == 1
    (attempt,) = OutboxTable(db).deliveries()
    assert attempt.last_error is not None and attempt.last_error.startswith("HTTP 307")


def test_a_receiver_that_is_gone_is_not_tried_again(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    write_events(db, 1)
    clock = [datetime.now(UTC)]
    with webhook_receiver(plan=[410, 410, 410]) as receiver:
        worker = Worker(db, notifications=notify(receiver.url), clock=lambda: clock[0])
        assert worker.run_once().deliveries.gave_up == 1
        clock[0] += timedelta(hours=3)
        worker.run_once()
        worker.close()
    assert len(receiver.hits) == 1
    (gone,) = OutboxTable(db).deliveries()
    assert (gone.status, gone.attempts) == ("failed", 1)
    assert gone.last_error is not None and gone.last_error.startswith("HTTP 410")


def test_a_receiver_s_retry_after_is_honoured_within_the_backoff_bound(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    write_events(db, 1)
    now = datetime.now(UTC)
    with webhook_receiver(plan=[429], headers={"Retry-After": "120"}) as receiver:
        worker = Worker(db, notifications=notify(receiver.url), clock=lambda: now)
        assert worker.run_once().deliveries.retrying == 1
        worker.close()
    (waiting,) = OutboxTable(db).deliveries()
    assert datetime.fromisoformat(waiting.next_attempt_at) - now == timedelta(seconds=120)


def test_a_huge_answer_is_not_kept(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    write_events(db, 1)
    with webhook_receiver(plan=[500], body=b"x" * 5_000_000) as receiver:
        worker = Worker(db, notifications=notify(receiver.url))
        worker.run_once()
        worker.close()
    (attempt,) = OutboxTable(db).deliveries()
    assert attempt.last_error is not None and len(attempt.last_error) <= 300
    assert len(receiver.hits) == 1


# -- leases that lapse while the first worker is still sending -------------------------------------


def slow_then_fast(db: str | Path, plan: list[int], max_attempts: int = 8) -> Any:
    """Worker A sends slowly (its answer is 200 after 1.5 s); while it does, worker B, whose
    clock is past A's lease, takes the delivery over and is answered at once with ``plan``."""
    now = datetime.now(UTC)
    with webhook_receiver(plan=[200, *plan], delays=[1.5, 0.0]) as receiver:
        settings = notify(receiver.url, max_attempts=max_attempts)
        slow = Worker(db, notifications=settings, clock=lambda: now)
        fast = Worker(db, notifications=settings, clock=lambda: now + timedelta(minutes=5))
        reports: list[Any] = []
        first = in_thread(lambda: reports.append(slow.run_once()))
        wait_for(lambda: len(receiver.hits) == 1)
        reports.append(fast.run_once())
        first.join(timeout=30)
        slow.close()
        fast.close()
    return reports, receiver


@both
def test_a_slow_worker_s_success_keeps_the_attempt_of_the_worker_that_took_over(db) -> None:
    write_events(db, 1)
    _, receiver = slow_then_fast(db, [500])
    assert [h.status for h in receiver.hits] == [200, 500]
    (done,) = OutboxTable(db).deliveries()
    assert (done.status, done.attempts) == ("delivered", 2)
    assert sorted((a["ok"], a["error"]) for a in done.history) == [
        (False, "HTTP 500: ok"),
        (True, None),
    ]


@both
def test_a_delivery_that_reached_its_receiver_is_never_recorded_as_failed(db) -> None:
    write_events(db, 1)
    reports, receiver = slow_then_fast(db, [500], max_attempts=1)
    assert [h.status for h in receiver.hits] == [200, 500]
    assert sorted(r.deliveries.gave_up for r in reports) == [0, 1]
    (done,) = OutboxTable(db).deliveries()
    assert done.status == "delivered" and done.delivered_at is not None
    assert done.attempts == 2


@both
def test_two_workers_that_both_sent_count_one_delivery(db) -> None:
    write_events(db, 1)
    reports, receiver = slow_then_fast(db, [200])
    assert len(receiver.ids()) == 2  # the lease lapsed mid-send: the documented window
    assert sum(r.deliveries.delivered for r in reports) == 1
    (done,) = OutboxTable(db).deliveries()
    assert (done.status, done.attempts) == ("delivered", 2)


@both
def test_a_worker_whose_clock_runs_ahead_does_not_take_a_live_lease(
    db, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_events(db, 1)

    class Ahead(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Ahead:  # type: ignore[override]
            moment = datetime.now(tz) + timedelta(minutes=5)
            return cls.fromtimestamp(moment.timestamp(), tz)

    with webhook_receiver(delays=[1.5]) as receiver:
        honest = Worker(db, notifications=notify(receiver.url))
        first = in_thread(honest.run_once)
        wait_for(lambda: len(receiver.hits) == 1)
        for module in (handrail.notify.delivery, handrail.worker):  # the host's clock
            monkeypatch.setattr(module, "datetime", Ahead, raising=False)
        skewed = Worker(db, notifications=notify(receiver.url))
        skewed.run_once()
        monkeypatch.undo()
        first.join(timeout=30)
        honest.close()
        skewed.close()
    assert len(receiver.ids(None)) == 1
    assert OutboxTable(db).deliveries()[0].attempts == 1


# -- the loop: on time, stopped promptly, alive through an outage ----------------------------------


@both
def test_a_slow_outbox_does_not_make_an_expiry_late(db) -> None:
    bank(db, amount=20000).invoke({"messages": [("user", "pay")]}, config("t-1"), context=CTX)
    deadline = Inbox(db).pending()[0].expires_at
    assert deadline is not None
    write_events(db, 40)
    stop = threading.Event()
    with webhook_receiver(delay=0.25) as receiver:  # 10 s of sending
        loop = in_thread(
            lambda: run_worker(
                str(db),
                interval=0.5,
                notifications=notify(receiver.url),
                graph=bank(db, 20000),
                stop=stop,
            )
        )
        wait_for(lambda: Inbox(db).pending() == [])
        expired_at = datetime.now(UTC)
        stop.set()
        loop.join(timeout=30)
    late = (expired_at - deadline).total_seconds()
    assert late < 4.0, f"expired {late:.1f} s after its deadline"


CHILD = """
import logging, sys
from handrail.notify import Notifications, Webhook
from handrail.worker import run_worker

logging.basicConfig(level=logging.INFO)
hook = Webhook(url=sys.argv[2], secret=sys.argv[3])
sys.exit(run_worker(sys.argv[1], interval=0.1, notifications=Notifications(webhooks=[hook])))
"""


def test_sigterm_mid_drain_finishes_the_send_in_flight_records_it_and_stops(
    tmp_path: Path,
) -> None:
    db = tmp_path / "h.db"
    write_events(db, 40)
    with webhook_receiver(delay=0.3) as receiver:  # 12 s of sending
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(db), receiver.url, SECRET],
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
        )
        wait_for(lambda: len(receiver.hits) >= 3, 60)
        os.kill(child.pid, signal.SIGTERM)
        started = time.monotonic()
        code = child.wait(timeout=60)
        took = time.monotonic() - started
    assert code == 0 and took < 3.0, f"stopped after {took:.1f} s"
    delivered = OutboxTable(db).deliveries("delivered")
    assert sorted(d.event_id for d in delivered) == sorted(receiver.ids())
    assert table_rows(db, "SELECT * FROM handrail_deliveries WHERE lease IS NOT NULL") == []


def write_events_when_up(db: str, n: int, prefix: str) -> list[str]:
    for _ in range(10):
        try:
            return write_events(db, n, prefix)
        except Exception:
            time.sleep(0.2)
    return write_events(db, n, prefix)


@pytest.mark.backends("postgresql")
def test_the_loop_lives_through_lost_database_connections(db) -> None:
    write_events(db, 2)
    stop = threading.Event()
    with webhook_receiver() as receiver:
        loop = in_thread(
            lambda: run_worker(str(db), interval=0.1, notifications=notify(receiver.url), stop=stop)
        )
        wait_for(lambda: len(receiver.ids()) == 2)
        raw = Raw(db)
        raw.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE pid <> pg_backend_pid() AND datname = current_database()"
        )
        raw.close()
        later = write_events_when_up(db, 2, "later")
        wait_for(lambda: set(later) <= set(receiver.ids()))
        stop.set()
        loop.join(timeout=30)
    assert not loop.is_alive()
    assert len(receiver.ids()) == len(set(receiver.ids())) == 4


# -- the graph never waits on a send ---------------------------------------------------------------


@both
def test_a_graph_opens_a_request_while_a_worker_is_sending(db) -> None:
    write_events(db, 1)
    graph = bank(db)
    graph.invoke({"messages": [("user", "warm up")]}, config("warm"), context=CTX)
    with webhook_receiver(delays=[3.0]) as receiver:
        worker = Worker(db, notifications=notify(receiver.url))
        sending = in_thread(worker.run_once)
        wait_for(lambda: len(receiver.hits) == 1)
        started = time.monotonic()
        bank(db).invoke({"messages": [("user", "pay carol")]}, config("t-2"), context=CTX)
        took = time.monotonic() - started
        assert sending.is_alive(), "the send ended before the graph ran: nothing was tested"
        sending.join(timeout=30)
        worker.close()
    assert took < 1.5, f"the graph waited {took:.1f} s"
    assert [e.thread_id for e in OutboxTable(db).events("t-2")] == ["t-2"]


# -- secrets ---------------------------------------------------------------------------------------


def test_settings_do_not_show_secrets_in_their_repr() -> None:
    settings = Notifications(
        webhooks=[Webhook(url="https://hooks.example.com/T0/B0/tok7?token=tok8", secret="s3")],
        apprise_urls=["mailto://bob:hunter2@smtp.example.com?to=a@example.com"],
    )
    shown = repr(settings)
    for secret in ("tok7", "tok8", "s3", "hunter2"):
        assert secret not in shown
    assert "hooks.example.com" in shown and "smtp.example.com" in shown


MEMO = "MEMO-SECRET-7731"


def test_redacted_arguments_never_leave_in_a_notification(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    policy = Policy.from_yaml(
        """
rules:
  - {id: big, tools: [transfer_funds], effect: ask, approvers: [treasurer], expires_in: 1s}
tools:
  transfer_funds: {redact: [args.memo]}
"""
    )
    pay = turn(call("transfer_funds", to="carol", amount=5000, memo=MEMO))
    model = ScriptedChatModel([pay, AIMessage("done")])
    graph = build_agent(model, banking_tools(db), policy, checkpointer=db)
    graph.invoke({"messages": [("user", "pay")]}, config("t-1"), context=CTX)
    time.sleep(1.05)
    with webhook_receiver(plan=[500]) as receiver:
        worker = Worker(db, notifications=notify(receiver.url), graph=graph)
        worker.run_once()  # expires the request, sends opened (500) and expired
        worker.run_once()
        worker.close()
    assert {h.json()["type"] for h in receiver.hits} == {"request.opened", "request.expired"}
    for hit in receiver.hits:
        assert MEMO not in hit.body.decode()
    for row in table_rows(db, "SELECT * FROM handrail_outbox"):
        assert MEMO not in str(row)
    for row in table_rows(db, "SELECT * FROM handrail_deliveries"):
        assert MEMO not in str(row)


def test_a_worker_called_from_a_running_event_loop_still_delivers(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    write_events(db, 1)

    async def in_a_notebook() -> Any:  # Jupyter runs cells inside an event loop
        worker = Worker(db, notifications=notify(receiver.url))
        try:
            return worker.run_once()
        finally:
            worker.close()

    with webhook_receiver() as receiver:
        report = asyncio.run(in_a_notebook())
    assert report.deliveries.delivered == 1 and len(receiver.ids()) == 1


def test_requests_too_short_for_a_reminder_do_not_crowd_out_those_due_one(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    policy = Policy.from_yaml(
        """
rules:
  - {id: soon, tools: [transfer_funds], when: "args.amount < 100.0", effect: ask,
     approvers: [treasurer], expires_in: 50m}
  - {id: later, tools: [transfer_funds], when: "args.amount >= 100.0", effect: ask,
     approvers: [treasurer], expires_in: 70m}
"""
    )
    for thread, amount in (("short", 50), ("long", 500)):
        model = ScriptedChatModel([turn(call("transfer_funds", to="c", amount=amount))])
        graph = build_agent(model, banking_tools(db), policy, checkpointer=db)
        graph.invoke({"messages": [("user", "pay")]}, config(thread), context=CTX)
    # 20 minutes on: "long" is within an hour of its deadline and due a reminder; "short" was
    # asked less than an hour before its deadline (none), and comes first by deadline.
    later = datetime.now(UTC) + timedelta(minutes=20)
    assert OutboxTable(db).remind(timedelta(hours=1), later, limit=1) == 1
    assert [e.thread_id for e in OutboxTable(db).events() if e.event == "reminder"] == ["long"]
