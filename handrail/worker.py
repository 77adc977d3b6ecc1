"""``handrail worker``: what must happen without a person: requests expire on time, reminders go
out before deadlines, and the notification outbox is delivered.

Each pass of a `Worker` (`Worker.run_once`):

1. expires every request past its deadline (`handrail.Inbox.expire`: the thread is resumed with
   the expiry, so its model is told and the run goes on; the graph is found as the inbox finds
   it, by ``graph=``, `Worker.register` or an entry point in the ``handrail.graphs`` group);
2. writes a reminder event for each request whose deadline is within ``remind_before``;
3. drains the outbox (`handrail.notify.Courier`).

Several workers on one database never do one job twice: an expiry resumes the thread through
the approvals table's claim (a second worker is told it is taken), a reminder's event has a
stable id (written once), and a delivery is sent under a lease. A worker killed at any point
leaves nothing undone: another worker takes over its deliveries when their leases lapse.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from handrail._inbox_resume import GraphFactory
from handrail.guard import HandrailGraph
from handrail.inbox import Inbox
from handrail.notify import Courier, DrainReport, Notifications, channels_of
from handrail.notify.delivery import Clock
from handrail.review import PendingApproval
from handrail.storage.outbox import OutboxTable

__all__ = ["Worker", "WorkerReport", "run_worker"]

log = logging.getLogger("handrail")

DEFAULT_INTERVAL = 5.0
"""Seconds between a worker's passes: how late an expiry or a notification can be."""


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkerReport:
    """What one pass did."""

    expired: tuple[PendingApproval, ...] = ()
    """The requests this worker expired."""
    reminders: int = 0
    """Reminder events written."""
    deliveries: DrainReport = field(default_factory=DrainReport)
    """What the outbox's drain did."""

    @property
    def idle(self) -> bool:
        """Whether the pass found nothing to do."""
        d = self.deliveries
        return not (self.expired or self.reminders or d.fanned_out or d.delivered or d.retrying)


class Worker:
    """Expiry, reminders and the outbox for the database ``db`` (a SQLite path or a
    ``postgresql://`` URL).

    ``notifications``: what to send (None: nothing is sent, events wait in the outbox for a
    worker that has channels). ``graph``: the graph to resume expired threads with (else one is
    found by name). ``clock``: the time reminders and deliveries go by (default: the
    database's, so workers on hosts whose clocks drift agree on leases; expiry uses the current
    time, as the approval node checks it).
    """

    def __init__(
        self,
        db: str | Path,
        *,
        notifications: Notifications | None = None,
        graph: HandrailGraph | None = None,
        clock: Clock | None = None,
        lease: timedelta | None = None,
    ) -> None:
        self.notifications = notifications
        """What this worker sends (None: nothing)."""
        sending = notifications is not None and notifications.has_channels
        channels = channels_of(notifications) if notifications and sending else []
        self._inbox = Inbox(db, graph=graph)
        self._outbox = OutboxTable(db)
        self._clock = clock or self._outbox.now
        self._courier: Courier | None = None
        if notifications is not None and sending:
            self._courier = Courier(
                self._outbox, notifications, channels, clock=self._clock, lease=lease
            )

    def register(self, name: str, factory: GraphFactory) -> None:
        """Resume expired threads paused by graph ``name`` with ``factory(db)``."""
        self._inbox.register(name, factory)

    def run_once(
        self, *, budget: float | None = None, stop: threading.Event | None = None
    ) -> WorkerReport:
        """One pass: expire what is overdue, write due reminders, drain the outbox.

        ``budget``: seconds the drain may go on (the attempt under way is finished), leaving
        the rest to the next pass, so a slow outbox never makes an expiry late. ``stop``: the
        drain ends after the attempt under way once it is set.
        """
        expired = tuple(self._inbox.expire())
        reminders = 0
        settings = self.notifications
        if settings is not None and settings.remind_before is not None:
            reminders = self._outbox.remind(settings.remind_before, self._clock())
        drained = DrainReport()
        if self._courier is not None:
            ends = None if budget is None else time.monotonic() + budget

            def enough() -> bool:
                late = ends is not None and time.monotonic() >= ends
                return late or (stop is not None and stop.is_set())

            drained = self._courier.drain(until=enough)
        return WorkerReport(expired=expired, reminders=reminders, deliveries=drained)

    def close(self) -> None:
        """Close the worker's connections."""
        self._inbox.close()
        self._outbox.close()


def run_worker(
    db: str,
    *,
    once: bool = False,
    interval: float = DEFAULT_INTERVAL,
    notifications: Notifications | None = None,
    graph: HandrailGraph | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Run a `Worker` on ``db``: one pass (``once``), or passes until SIGTERM or SIGINT (or
    ``stop`` is set), ``interval`` seconds after each pass that found nothing to do. Returns
    the exit code (0). A pass drains the outbox for about ``interval`` seconds at most, so
    requests expire on time however slow the receivers; a signal stops the loop once the
    attempt under way is sent and recorded.

    ``notifications`` defaults to `Notifications.from_env` (see `handrail.notify.ENVIRONMENT`).
    In the loop, a pass that fails (the database unreachable) is logged on the ``handrail``
    logger and tried again at the next interval; with ``once`` its error is raised.
    """
    settings = notifications if notifications is not None else Notifications.from_env()
    worker = Worker(db, notifications=settings, graph=graph)
    stopping = stop or threading.Event()
    try:
        if once:
            _logged(worker.run_once())
            return 0
        restore = _stop_on_signals(stopping)
        try:
            while not stopping.is_set():
                try:
                    report = worker.run_once(budget=interval, stop=stopping)
                except Exception:
                    log.exception("worker pass failed; trying again in %ss", interval)
                    stopping.wait(interval)
                    continue
                _logged(report)
                stopping.wait(interval if report.idle else 0)  # a busy pass: go on at once
        finally:
            restore()
        return 0
    finally:
        worker.close()


def _logged(report: WorkerReport) -> None:
    if report.idle:
        return
    d = report.deliveries
    log.info(
        "worker: %d expired, %d reminders, %d delivered, %d to retry, %d failed",
        len(report.expired),
        report.reminders,
        d.delivered,
        d.retrying,
        d.gave_up,
    )


def _stop_on_signals(stopping: threading.Event) -> Callable[[], None]:
    """Set ``stopping`` on SIGTERM and SIGINT (main thread only); returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    for s in previous:
        signal.signal(s, lambda *_: stopping.set())

    def restore() -> None:
        for s, handler in previous.items():
            signal.signal(s, handler)

    return restore
