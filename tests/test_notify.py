"""Notifications: events written with the request, delivered to real local receivers (a webhook
server on loopback, an SMTP server), signed, retried, recorded, once per event and channel."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from notify_support import SECRET, bank, smtp_server, webhook_receiver
from support import CTX, Raw, call, config, table_rows, turn

from handrail import Inbox, Policy, build_agent
from handrail.context import Actor
from handrail.errors import ApproverNotAuthorized
from handrail.notify import (
    ENVIRONMENT,
    Message,
    NotificationConfigError,
    Notifications,
    Webhook,
    verify_signature,
)
from handrail.storage.outbox import OutboxTable, event_id
from handrail.testing import ScriptedChatModel
from handrail.tools import ServerError
from handrail.worker import Worker

BASE = "https://approvals.example.com/inbox"
ALICE = Actor(id="alice", roles=("treasurer",))


def settings(url: str, **extra: object) -> Notifications:
    return Notifications(
        webhooks=[Webhook(url=url, secret=SECRET)],
        base_url=BASE,
        backoff=timedelta(seconds=10),
        **extra,  # type: ignore[arg-type]
    )


def outbox_rows(db: str | Path) -> list[dict[str, object]]:
    return table_rows(db, "SELECT * FROM handrail_outbox ORDER BY occurred_at")


@pytest.mark.backends("sqlite", "postgresql")
def test_a_request_a_graph_opens_writes_one_event_with_it(db) -> None:
    graph = bank(db)
    graph.invoke({"messages": [("user", "pay carol")]}, config("t-1"), context=CTX)
    (row,) = outbox_rows(db)
    (request,) = table_rows(db, "SELECT * FROM handrail_approvals")
    assert (row["event"], row["thread_id"], row["tool_call_id"]) == ("opened", "t-1", "call_0_0")
    assert row["requested_at"] == request["requested_at"]
    assert row["event_id"] == event_id("opened", "t-1", "call_0_0", request["requested_at"])
    assert json.loads(row["payload"])["args"]["memo"] != "rent"  # redacted as in the inbox

    with pytest.raises(ApproverNotAuthorized):
        Inbox(db, graph=graph).approve("t-1", approver=Actor(id="mallory", roles=("intern",)))
    assert len(outbox_rows(db)) == 1
    # The approval node runs again from its first line on resume (its upsert too): no new event.
    Inbox(db, graph=graph).approve("t-1", approver=ALICE)
    assert [r["event"] for r in outbox_rows(db)] == ["opened"]


@pytest.mark.backends("sqlite", "postgresql")
def test_no_request_opens_when_its_event_cannot_be_written(db) -> None:
    raw = Raw(db)
    if raw.postgres:
        raw.execute(
            "CREATE FUNCTION no_outbox() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'outbox refused'; END $$"
        )
        raw.execute(
            "CREATE TRIGGER no_outbox BEFORE INSERT ON handrail_outbox "
            "FOR EACH ROW EXECUTE FUNCTION no_outbox()"
        )
    else:
        bank(db)  # makes the tables
        raw.execute(
            "CREATE TRIGGER no_outbox BEFORE INSERT ON handrail_outbox "
            "BEGIN SELECT RAISE(ABORT, 'outbox refused'); END"
        )
    raw.close()
    with pytest.raises(Exception, match="outbox refused"):
        bank(db).invoke({"messages": [("user", "pay carol")]}, config("t-1"), context=CTX)
    assert table_rows(db, "SELECT * FROM handrail_approvals") == []
    assert outbox_rows(db) == []


def test_a_webhook_is_signed_linked_and_delivered_once(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    bank(db).invoke({"messages": [("user", "pay carol")]}, config("t/1"), context=CTX)
    with webhook_receiver() as receiver:
        worker = Worker(db, notifications=settings(receiver.url))
        first = worker.run_once()
        second = worker.run_once()
        worker.close()
    assert (first.deliveries.delivered, second.deliveries.delivered) == (1, 0)
    (hit,) = receiver.hits
    body = hit.json()
    (row,) = outbox_rows(db)
    assert hit.event_id == hit.headers["Handrail-Event-Id"] == body["id"] == row["event_id"]
    assert body["type"] == "request.opened" and body["request"]["tool"] == "transfer_funds"
    assert body["link"] == f"{BASE}/threads/t%2F1#call-call_0_0"
    stamp = hit.headers["Handrail-Timestamp"]
    mac = hmac.new(SECRET.encode(), f"{stamp}.".encode() + hit.body, hashlib.sha256).hexdigest()
    assert hit.headers["Handrail-Signature"] == f"sha256={mac}"
    assert verify_signature(SECRET, hit.body, hit.headers)
    assert not verify_signature("other-secret", hit.body, hit.headers)
    assert not verify_signature(SECRET, hit.body + b" ", hit.headers)
    (delivery,) = OutboxTable(db).deliveries()
    assert (delivery.status, delivery.attempts, delivery.last_error) == ("delivered", 1, None)
    assert [a["ok"] for a in delivery.history] == [True]


def test_a_failed_attempt_is_recorded_and_retried_after_its_backoff(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    bank(db).invoke({"messages": [("user", "pay carol")]}, config("t-1"), context=CTX)
    now = datetime.now(UTC)
    clock = [now]
    with webhook_receiver(plan=[500]) as receiver:
        worker = Worker(db, notifications=settings(receiver.url), clock=lambda: clock[0])
        assert worker.run_once().deliveries.retrying == 1
        (failed,) = OutboxTable(db).deliveries()
        assert (failed.status, failed.attempts, failed.last_error) == ("pending", 1, "HTTP 500: ok")
        wait = datetime.fromisoformat(failed.next_attempt_at) - now
        assert timedelta(seconds=10) <= wait <= timedelta(seconds=12.5)
        assert worker.run_once().deliveries.delivered == 0  # not due yet
        clock[0] = now + timedelta(seconds=13)
        assert worker.run_once().deliveries.delivered == 1
        assert worker.run_once().deliveries.delivered == 0
        worker.close()
    assert [h.status for h in receiver.hits] == [500, 200]
    assert receiver.hits[0].event_id == receiver.hits[1].event_id
    (done,) = OutboxTable(db).deliveries()
    assert (done.status, done.attempts) == ("delivered", 2)
    assert [(a["attempt"], a["ok"], a["error"]) for a in done.history] == [
        (1, False, "HTTP 500: ok"),
        (2, True, None),
    ]


def test_a_delivery_fails_for_good_after_its_last_attempt(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    bank(db).invoke({"messages": [("user", "pay carol")]}, config("t-1"), context=CTX)
    clock = [datetime.now(UTC)]
    with webhook_receiver(plan=[500, 503, 500]) as receiver:
        worker = Worker(
            db, notifications=settings(receiver.url, max_attempts=2), clock=lambda: clock[0]
        )
        worker.run_once()
        clock[0] += timedelta(minutes=5)
        assert worker.run_once().deliveries.gave_up == 1
        clock[0] += timedelta(hours=5)
        worker.run_once()
        worker.close()
    assert [h.status for h in receiver.hits] == [500, 503]
    (gone,) = OutboxTable(db).deliveries()
    assert (gone.status, gone.attempts, gone.last_error) == ("failed", 2, "HTTP 503: ok")


def test_an_email_goes_through_apprise_to_a_real_smtp_server(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    bank(db).invoke({"messages": [("user", "pay carol")]}, config("t-1"), context=CTX)
    with smtp_server() as (mailbox, port):
        url = f"mailto://127.0.0.1:{port}?from=handrail@example.com&to=treasury@example.com"
        worker = Worker(db, notifications=Notifications(apprise_urls=[url], base_url=BASE))
        assert worker.run_once().deliveries.delivered == 1
        worker.close()
    ((sender, to, text),) = mailbox.mails
    assert (sender, to) == ("handrail@example.com", ["treasury@example.com"])
    assert "Subject: Approval needed: transfer_funds (thread t-1)" in text
    assert f"{BASE}/threads/t-1#call-call_0_0" in text and "Approvers: treasurer" in text


def test_an_unreachable_mail_server_is_recorded_with_apprise_s_error(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    bank(db).invoke({"messages": [("user", "pay carol")]}, config("t-1"), context=CTX)
    url = "mailto://127.0.0.1:1?from=handrail@example.com&to=treasury@example.com"
    worker = Worker(db, notifications=Notifications(apprise_urls=[url]))
    assert worker.run_once().deliveries.retrying == 1
    worker.close()
    (failed,) = OutboxTable(db).deliveries()
    assert failed.last_error is not None and "127.0.0.1" in failed.last_error


def test_a_reminder_goes_out_once_before_the_deadline(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    bank(db).invoke({"messages": [("user", "pay carol")]}, config("t-1"), context=CTX)
    clock = [datetime.now(UTC)]
    with webhook_receiver() as receiver:
        notify = settings(receiver.url, remind_before=timedelta(hours=1))
        workers = [Worker(db, notifications=notify, clock=lambda: clock[0]) for _ in range(2)]
        assert [w.run_once().reminders for w in workers] == [0, 0]  # 24 h to go
        clock[0] += timedelta(hours=23, minutes=30)
        assert [w.run_once().reminders for w in workers] == [1, 0]
        clock[0] += timedelta(minutes=10)
        assert [w.run_once().reminders for w in workers] == [0, 0]
        for w in workers:
            w.close()
    assert [h.json()["type"] for h in receiver.hits] == ["request.opened", "request.reminder"]
    assert "expires at" in Message.of(OutboxTable(db).events()[1], BASE).title()


@pytest.mark.backends("sqlite", "postgresql")
def test_the_worker_expires_an_overdue_request_and_says_so(db) -> None:
    graph = bank(db, amount=20000)  # the "quick" rule: expires in 1 s
    graph.invoke({"messages": [("user", "pay carol")]}, config("t-1"), context=CTX)
    with webhook_receiver() as receiver:
        worker = Worker(db, notifications=settings(receiver.url), graph=graph)
        assert worker.run_once().expired == ()
        time.sleep(1.05)
        (expired,) = worker.run_once().expired
        worker.close()
    assert (expired.thread_id, expired.tool_call_id) == ("t-1", "call_0_0")
    state = graph.get_state(config("t-1"))
    assert state.next == () and "expired" in str(state.values["messages"][-2].content)
    assert graph.pending_request(config("t-1")) is None
    assert [h.json()["type"] for h in receiver.hits] == ["request.opened", "request.expired"]
    assert Inbox(db).pending() == []


def test_settings_come_from_the_environment() -> None:
    env = {
        "HANDRAIL_WEBHOOK_URLS": "https://a.example.com/h http://b.example.com/h",
        "HANDRAIL_WEBHOOK_SECRET": "s",
        "HANDRAIL_APPRISE_URLS": "mailto://u:p@smtp.example.com?to=a@x.com,b@x.com",
        "HANDRAIL_BASE_URL": "https://inbox.example.com/",
        "HANDRAIL_REMIND_BEFORE": "30m",
        "HANDRAIL_NOTIFY_MAX_ATTEMPTS": "3",
        "HANDRAIL_NOTIFY_BACKOFF": "2s",
        "HANDRAIL_NOTIFY_TIMEOUT": "4.5",
    }
    got = Notifications.from_env(env)
    assert [w.url for w in got.webhooks] == env["HANDRAIL_WEBHOOK_URLS"].split()
    assert got.apprise_urls == (env["HANDRAIL_APPRISE_URLS"],)
    assert got.base_url == "https://inbox.example.com"
    assert (got.remind_before, got.max_attempts, got.backoff, got.timeout) == (
        timedelta(minutes=30),
        3,
        timedelta(seconds=2),
        4.5,
    )
    assert set(env) == set(ENVIRONMENT)
    assert Notifications.from_env({"HANDRAIL_REMIND_BEFORE": "off"}).remind_before is None
    assert not Notifications.from_env({}).has_channels


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"HANDRAIL_WEBHOOK_URLS": "https://a.example.com"}, "HANDRAIL_WEBHOOK_SECRET"),
        ({"HANDRAIL_REMIND_BEFORE": "soon"}, "HANDRAIL_REMIND_BEFORE"),
        ({"HANDRAIL_NOTIFY_MAX_ATTEMPTS": "many"}, "HANDRAIL_NOTIFY_MAX_ATTEMPTS"),
        ({"HANDRAIL_NOTIFY_MAX_ATTEMPTS": "0"}, "max_attempts"),
        ({"HANDRAIL_BASE_URL": "inbox.example.com"}, "base_url"),
        ({"HANDRAIL_WEBHOOK_URLS": "ftp://x/h", "HANDRAIL_WEBHOOK_SECRET": "s"}, "webhooks.url"),
    ],
)
def test_a_bad_setting_is_named(env: dict[str, str], setting: str) -> None:
    with pytest.raises(NotificationConfigError) as refused:
        Notifications.from_env(env)
    assert refused.value.setting == setting


def test_an_apprise_url_apprise_cannot_use_is_refused_when_the_worker_starts(
    tmp_path: Path,
) -> None:
    with pytest.raises(NotificationConfigError) as refused:
        Worker(tmp_path / "h.db", notifications=Notifications(apprise_urls=["nosuch://x/y"]))
    assert refused.value.setting == "apprise_urls" and "nosuch://" in str(refused.value)


def test_a_secret_in_a_url_is_not_in_the_error(tmp_path: Path) -> None:
    with pytest.raises(NotificationConfigError) as refused:
        Webhook(url="ftp://user:hunter2@example.com/h?token=abc", secret="s")
    assert "hunter2" not in str(refused.value) and "abc" not in str(refused.value)


@pytest.mark.backends("sqlite", "postgresql")
def test_each_escalation_of_a_call_is_an_event_of_its_own(db) -> None:
    failures = [ServerError("down"), ServerError("still down")]

    @tool
    def fetch(q: str) -> str:
        """Fetch a resource."""
        if failures:
            raise failures.pop(0)
        return "data"

    policy = Policy.from_data({"rules": [{"id": "r", "tools": ["fetch"], "effect": "allow"}]})
    model = ScriptedChatModel([turn(call("fetch", q="x")), AIMessage("ok")])
    graph = build_agent(model, [fetch], policy, checkpointer=db)
    graph.invoke({"messages": [("user", "go")]}, config("t-1"), context=CTX)
    ops = Actor(id="ops-1", roles=("operator",))
    Inbox(db, graph=graph).retry("t-1", approver=ops)  # fails again: a second escalation
    with webhook_receiver() as receiver:
        worker = Worker(db, notifications=settings(receiver.url))
        assert worker.run_once().deliveries.delivered == 2
        worker.close()
    first, second = (h.json() for h in receiver.hits)
    assert (first["type"], second["type"]) == ("request.escalated", "request.escalated")
    assert first["id"] != second["id"]
    assert (first["request"]["attempts"], second["request"]["attempts"]) == (1, 2)
    assert "Escalation: fetch" in Message.of(OutboxTable(db).events()[0], None).title()


def test_the_link_opens_the_request_in_the_web_inbox(tmp_path: Path) -> None:
    from starlette.testclient import TestClient
    from web_support import AUTH, Bank, bearer, paused_agent

    from handrail.web import create_app

    db = tmp_path / "h.db"
    paused_agent(db, Bank(), [("transfer_funds", {"to": "carol", "amount": 5000})])
    with webhook_receiver() as receiver:
        worker = Worker(db, notifications=settings(receiver.url))
        worker.run_once()
        worker.close()
    (hit,) = receiver.hits
    link = hit.json()["link"]
    assert link.startswith(f"{BASE}/threads/")
    path = "/inbox" + link.removeprefix(BASE).split("#")[0]
    with TestClient(create_app(str(db), authenticator=AUTH)) as client:
        page = client.get(path, headers=bearer("alice", ["treasurer"]))
        other = client.get(path, headers=bearer("bob", ["teller"]))
    assert page.status_code == 200 and "transfer_funds" in page.text and 'id="approve"' in page.text
    assert other.status_code == 404
