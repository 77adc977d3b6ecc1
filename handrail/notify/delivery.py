"""Draining the outbox: each due delivery is leased, sent once, and recorded.

`Courier.drain` fans new events out to the configured channels, then takes one delivery at a
time under a lease (`OutboxTable.lease`), sends it, and records the attempt: ``delivered``, or
failed with the error and the time of the next attempt (exponential backoff with jitter, or
the receiver's ``Retry-After``, bounded by ``max_backoff``), or ``failed`` for good after
``max_attempts`` (or at once when the receiver is gone: `ReceiverRefused.final`). One delivery
per lease keeps the crash window to one message: a worker killed after sending but before
recording leaves that delivery to be sent again once its lease lapses, with the same event id.
An attempt takes at most ``timeout`` seconds, well inside its lease (three times as long, at
least a minute), and the lease goes by the database's clock, so no other worker takes a
delivery while its attempt can still be under way.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from handrail.notify._config import Notifications
from handrail.notify.channels import Channel, DeliveryError, Message, ReceiverRefused
from handrail.storage.outbox import Delivery, OutboxTable

__all__ = ["Courier", "DrainReport", "backoff"]

log = logging.getLogger("handrail")

Clock = Callable[[], datetime]


@dataclass(frozen=True, kw_only=True, slots=True)
class DrainReport:
    """What one drain did."""

    fanned_out: int = 0
    """New events turned into deliveries."""
    delivered: int = 0
    """Deliveries this drain delivered first (one that another worker had delivered meanwhile,
    its lease having lapsed, is not counted again)."""
    retrying: int = 0
    """Attempts that failed and will be tried again."""
    gave_up: int = 0
    """Deliveries whose last attempt failed (recorded as ``failed``)."""


def backoff(notifications: Notifications, attempts: int, jitter: float) -> timedelta:
    """The wait after ``attempts`` failed attempts: ``backoff`` doubled per attempt, times
    ``jitter`` (1 to 1.25), at most ``max_backoff``."""
    wait = notifications.backoff * (1 << min(attempts - 1, 30)) * jitter
    return min(wait, notifications.max_backoff)


class Courier:
    """Delivers the outbox at ``outbox`` to ``channels`` under ``notifications``' rules.

    ``clock``: the time deliveries go by (default: the database's, `OutboxTable.now`).
    """

    def __init__(
        self,
        outbox: OutboxTable,
        notifications: Notifications,
        channels: Sequence[Channel],
        *,
        clock: Clock | None = None,
        lease: timedelta | None = None,
    ) -> None:
        self._outbox = outbox
        self._settings = notifications
        self._channels = {c.name: c for c in channels}
        self._clock = clock or outbox.now
        longest = timedelta(seconds=notifications.timeout * 3)
        self.lease = lease or max(timedelta(seconds=60), longest)
        """How long a delivery is held: longer than an attempt can take."""

    def drain(self, limit: int = 100, *, until: Callable[[], bool] | None = None) -> DrainReport:
        """Fan out new events and send up to ``limit`` due deliveries, stopping after the
        attempt under way once ``until()`` says so (time is up, the worker is stopping)."""
        fanned = self._outbox.fan_out(list(self._channels), self._clock())
        counts = {"delivered": 0, "retrying": 0, "gave_up": 0}
        for _ in range(limit):
            taken = self._outbox.lease(list(self._channels), self._clock(), self.lease)
            if taken is None:
                break
            if (outcome := self._attempt(taken)) is not None:
                counts[outcome] += 1
            if until is not None and until():
                break
        return DrainReport(fanned_out=fanned, **counts)

    def _attempt(self, delivery: Delivery) -> str | None:
        """Send ``delivery`` and record it; what to count (None: another worker delivered it
        first)."""
        channel = self._channels[delivery.channel]
        message = Message.of(delivery.event, self._settings.base_url)
        try:
            channel.send(message)
        except Exception as exc:  # any channel's trouble is recorded, never raised
            error = _said(exc)
            now = self._clock()
            tried = delivery.attempts + 1
            refused = exc if isinstance(exc, ReceiverRefused) else None
            if tried >= self._settings.max_attempts or (refused is not None and refused.final):
                self._outbox.failed(delivery, error, now, None)
                log.warning("gave up on %s to %s: %s", delivery.event.event_id, channel.name, error)
                return "gave_up"
            wait = backoff(self._settings, tried, random.uniform(1.0, 1.25))
            if refused is not None and refused.retry_after is not None:
                wait = min(refused.retry_after, self._settings.max_backoff)
            self._outbox.failed(delivery, error, now, now + wait)
            return "retrying"
        return "delivered" if self._outbox.delivered(delivery, self._clock()) else None


def _said(error: Exception) -> str:
    """What an attempt's error says, as recorded."""
    return error.problem if isinstance(error, DeliveryError) else f"{type(error).__name__}: {error}"
