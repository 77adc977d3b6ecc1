"""What the worker notifies, where, and how hard it tries: `Notifications`, typed, or read from
the environment (`Notifications.from_env`) so ``handrail worker`` needs no Python."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from handrail.errors import NotificationConfigError
from handrail.policies.settings import parse_duration

__all__ = ["ENVIRONMENT", "NotificationConfigError", "Notifications", "Webhook"]

ENVIRONMENT = {
    "HANDRAIL_WEBHOOK_URLS": "webhook URLs, separated by spaces",
    "HANDRAIL_WEBHOOK_SECRET": "the shared secret the webhooks are signed with (HMAC-SHA256)",
    "HANDRAIL_APPRISE_URLS": "apprise URLs (mailto://, slack://, msteams://...), by spaces",
    "HANDRAIL_BASE_URL": "the web inbox's address (https://host/inbox), for links to requests",
    "HANDRAIL_REMIND_BEFORE": "remind this long before a deadline (30m, 2h; 'off': never)",
    "HANDRAIL_NOTIFY_MAX_ATTEMPTS": "attempts per delivery before it is recorded as failed",
    "HANDRAIL_NOTIFY_BACKOFF": "the wait after a first failed attempt; it doubles per attempt",
    "HANDRAIL_NOTIFY_TIMEOUT": "seconds one attempt may take",
}
"""The environment variables `Notifications.from_env` reads, and what each holds."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Webhook:
    """A receiver of JSON events, each signed with ``secret`` (`handrail.notify.sign`)."""

    url: str
    """Where events are POSTed (http or https)."""
    secret: str = field(repr=False)
    """The shared secret of the signature (HMAC-SHA256)."""
    name: str | None = None
    """The channel's name in the delivery records (default: derived from the URL, no secrets)."""

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise NotificationConfigError("webhooks.url", f"{_shown(self.url)} is not http(s)")
        if not self.secret:
            raise NotificationConfigError(
                "webhooks.secret", f"the webhook {_shown(self.url)} needs a shared secret"
            )

    def __repr__(self) -> str:
        return f"Webhook(url={_host(self.url)}, name={self.name!r})"


@dataclass(frozen=True, kw_only=True, slots=True)
class Notifications:
    """Who is told when a request opens, is escalated, nears its deadline or expires."""

    webhooks: Sequence[Webhook] = ()
    """Generic webhooks: a signed JSON body with a link to the request."""
    apprise_urls: Sequence[str] = ()
    """Channels people read, as apprise URLs (``mailto://``, ``slack://``, ``msteams://`` ...)."""
    base_url: str | None = None
    """The web inbox's address (ending in ``/inbox``: `handrail.web`); each event links to its
    thread's page there, ``{base_url}/threads/{thread}#call-{call}``."""
    remind_before: timedelta | None = timedelta(hours=1)
    """Remind once, this long before a request's deadline (None: never)."""
    max_attempts: int = 8
    """Attempts per delivery; after the last failure it is recorded as ``failed``."""
    backoff: timedelta = timedelta(seconds=10)
    """The wait after the first failed attempt; it doubles per attempt (with jitter)."""
    max_backoff: timedelta = timedelta(hours=1)
    """The longest wait between attempts."""
    timeout: float = 10.0
    """Seconds one attempt may take."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "webhooks", tuple(self.webhooks))
        object.__setattr__(self, "apprise_urls", tuple(self.apprise_urls))
        if self.base_url is not None:
            parts = urlsplit(self.base_url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise NotificationConfigError("base_url", f"{self.base_url!r} is not http(s)")
            object.__setattr__(self, "base_url", self.base_url.rstrip("/"))
        if self.max_attempts < 1:
            raise NotificationConfigError("max_attempts", f"{self.max_attempts} is less than 1")
        if self.timeout <= 0:
            raise NotificationConfigError("timeout", f"{self.timeout} is not a positive number")
        if self.backoff <= timedelta(0) or self.max_backoff < self.backoff:
            raise NotificationConfigError(
                "backoff", "backoff must be positive and no longer than max_backoff"
            )
        if self.remind_before is not None and self.remind_before <= timedelta(0):
            raise NotificationConfigError("remind_before", "must be positive (None: no reminder)")

    def __repr__(self) -> str:
        shown = {
            "webhooks": list(self.webhooks),
            "apprise_urls": [_Shown(u) for u in self.apprise_urls],
            "base_url": self.base_url,
            "remind_before": self.remind_before,
            "max_attempts": self.max_attempts,
            "backoff": self.backoff,
            "max_backoff": self.max_backoff,
            "timeout": self.timeout,
        }
        return f"Notifications({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    @property
    def has_channels(self) -> bool:
        """Whether anything is configured to receive events."""
        return bool(self.webhooks or self.apprise_urls)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifications:
        """The settings in ``environ`` (default: the process's environment); see
        `ENVIRONMENT` for the variables. Unset variables keep the defaults."""
        env = os.environ if environ is None else environ
        urls = env.get("HANDRAIL_WEBHOOK_URLS", "").split()
        secret = env.get("HANDRAIL_WEBHOOK_SECRET", "")
        if urls and not secret:
            raise NotificationConfigError(
                "HANDRAIL_WEBHOOK_SECRET", "HANDRAIL_WEBHOOK_URLS is set but no secret to sign with"
            )
        settings: dict[str, Any] = {
            "webhooks": [Webhook(url=u, secret=secret) for u in urls],
            "apprise_urls": env.get("HANDRAIL_APPRISE_URLS", "").split(),
            "base_url": env.get("HANDRAIL_BASE_URL") or None,
        }
        if (remind := env.get("HANDRAIL_REMIND_BEFORE")) is not None:
            off = remind.strip().lower() in ("", "off", "none", "0")
            settings["remind_before"] = None if off else _duration("HANDRAIL_REMIND_BEFORE", remind)
        if (backoff := env.get("HANDRAIL_NOTIFY_BACKOFF")) is not None:
            settings["backoff"] = _duration("HANDRAIL_NOTIFY_BACKOFF", backoff)
        for name, key, kind in (
            ("HANDRAIL_NOTIFY_MAX_ATTEMPTS", "max_attempts", int),
            ("HANDRAIL_NOTIFY_TIMEOUT", "timeout", float),
        ):
            if (text := env.get(name)) is not None:
                try:
                    settings[key] = kind(text)
                except ValueError:
                    raise NotificationConfigError(name, f"{text!r} is not a number") from None
        return cls(**settings)


def _duration(name: str, text: str) -> timedelta:
    try:
        value = parse_duration(text)
    except ValueError as error:
        raise NotificationConfigError(name, str(error)) from None
    assert isinstance(value, timedelta)
    return value


class _Shown(str):
    """A URL whose repr is its scheme and host only (a path can hold a token, too)."""

    def __repr__(self) -> str:
        return _host(self)


def _host(url: str) -> str:
    parts = urlsplit(url)
    return repr(f"{parts.scheme}://{parts.hostname}/..." if parts.scheme else "<not a URL>")


def _shown(url: str) -> str:
    """A URL without its user info, query or fragment (where secrets live), for messages."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return repr(f"{parts.scheme}://{host}{parts.path}" if parts.scheme else "<not a URL>")
