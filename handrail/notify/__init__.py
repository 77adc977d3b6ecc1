"""Notifications about approval requests: when one opens, is escalated, nears its deadline or
expires, a signed webhook and the channels people read (through apprise) are told, with a link
to the request in the web inbox.

Events are written to an outbox table in the transaction that changes the request
(`handrail.storage.outbox`), so a graph never waits on a receiver and no event is lost; the
worker (`handrail.worker`) delivers them with bounded retries, once per event and channel::

    from handrail.notify import Notifications, Webhook
    notifications = Notifications(
        webhooks=[Webhook(url="https://hooks.example.com/handrail", secret="s3cret")],
        apprise_urls=["mailto://user:pass@smtp.example.com?to=treasury@example.com"],
        base_url="https://approvals.example.com/inbox",
        remind_before=timedelta(hours=1),
    )
    # or Notifications.from_env(): HANDRAIL_WEBHOOK_URLS, HANDRAIL_WEBHOOK_SECRET, ... (ENVIRONMENT)
"""

from handrail.notify._config import ENVIRONMENT, NotificationConfigError, Notifications, Webhook
from handrail.notify.channels import (
    AppriseChannel,
    Channel,
    DeliveryError,
    Message,
    ReceiverRefused,
    WebhookChannel,
    channels_of,
    sign,
    verify_signature,
)
from handrail.notify.delivery import Courier, DrainReport

__all__ = [
    "ENVIRONMENT",
    "AppriseChannel",
    "Channel",
    "Courier",
    "DeliveryError",
    "DrainReport",
    "Message",
    "NotificationConfigError",
    "Notifications",
    "ReceiverRefused",
    "Webhook",
    "WebhookChannel",
    "channels_of",
    "sign",
    "verify_signature",
]
