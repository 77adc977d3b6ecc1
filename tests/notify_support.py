"""Local receivers for the notification tests: a webhook server on loopback (http.server in a
thread) and a real SMTP server (aiosmtpd); a graph whose policy asks; events written straight
into the outbox for the tests that need many."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from langchain_core.messages import AIMessage
from support import call, turn

from handrail import HandrailGraph, Policy, build_agent
from handrail.storage import open_store
from handrail.storage.outbox import OutboxEvent, add_in
from handrail.testing import ScriptedChatModel
from handrail.tools.demo import banking_tools

SECRET = "test-secret"

POLICY = Policy.from_yaml(
    """
rules:
  - id: big
    tools: [transfer_funds]
    when: "args.amount > 1000.0 && args.amount <= 9000.0"
    effect: ask
    approvers: [treasurer]
    expires_in: 24h
  - id: quick
    tools: [transfer_funds]
    when: "args.amount > 9000.0"
    effect: ask
    approvers: [treasurer]
    expires_in: 1s
tools:
  transfer_funds: {redact: [args.memo]}
"""
)


def pay(amount: float) -> AIMessage:
    return turn(call("transfer_funds", to="carol", amount=amount, memo="rent"))


def bank(db: str | Path, amount: float = 5000) -> HandrailGraph:
    """The demo bank whose model pays carol ``amount`` (asked about), then says done."""
    model = ScriptedChatModel([pay(amount), AIMessage("done")])
    return build_agent(model, banking_tools(db), POLICY, checkpointer=db)


@dataclass
class Hit:
    """One request the webhook receiver got."""

    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def event_id(self) -> str:
        return self.headers["Idempotency-Key"]

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A webhook receiver on loopback: answers each request with the next status of ``plan``
    (then 200), after the next delay of ``delays`` (then ``delay``) seconds, with ``headers``
    and ``body``, one byte every ``drip`` seconds if set; records every request as it arrives."""

    plan: list[int] = field(default_factory=list)
    delay: float = 0.0
    delays: list[float] = field(default_factory=list)
    drip: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    hits: list[Hit] = field(default_factory=list)
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ids(self, status: int | None = 200) -> list[str]:
        """The event ids received (answered with ``status``; None: all)."""
        with self.lock:
            return [h.event_id for h in self.hits if status is None or h.status == status]


@contextmanager
def webhook_receiver(
    plan: list[int] | None = None, delay: float = 0.0, **more: Any
) -> Iterator[Receiver]:
    """A `Receiver` serving on loopback while the block runs (``more``: its other fields)."""
    receiver = Receiver(plan=list(plan or []), delay=delay, **more)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with receiver.lock:
                status = receiver.plan.pop(0) if receiver.plan else 200
                delay = receiver.delays.pop(0) if receiver.delays else receiver.delay
                receiver.hits.append(Hit(dict(self.headers.items()), body, status))
            time.sleep(delay)
            head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(receiver.body)}"]
            head += [f"{k}: {v}" for k, v in receiver.headers.items()]
            raw = "\r\n".join([*head, "", ""]).encode() + receiver.body
            if not receiver.drip:
                self.wfile.write(raw)
                return
            try:
                for i in range(len(raw)):
                    self.wfile.write(raw[i : i + 1])
                    self.wfile.flush()
                    time.sleep(receiver.drip)
            except OSError:
                pass  # the sender gave up

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Mailbox:
    """What the SMTP server received: (from, to, message text)."""

    mails: list[tuple[str, list[str], str]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.mails.append((envelope.mail_from, envelope.rcpt_tos, envelope.content.decode()))
        return "250 OK"


@contextmanager
def smtp_server() -> Iterator[tuple[Mailbox, int]]:
    """A real SMTP server on loopback (aiosmtpd) and its port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mailbox = Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield mailbox, port
    finally:
        controller.stop()


def write_events(db: str | Path, n: int, prefix: str = "t") -> list[str]:
    """Write ``n`` ``opened`` events straight into the outbox; their ids."""
    now = datetime.now(UTC)
    events = [
        OutboxEvent.of(
            "opened", f"{prefix}-{i}", "call-1", now.isoformat(), now, {"tool": "transfer_funds"}
        )
        for i in range(n)
    ]
    store = open_store(db)
    try:
        with store.transaction() as sql:
            add_in(sql, events)
    finally:
        store.close()
    return [e.event_id for e in events]
