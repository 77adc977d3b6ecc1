"""JSON logs: `JsonFormatter` and `enable_json_logging`, the one call that switches them on.

Handrail logs each tool-call event (`handrail.events`) on the standard ``logging`` logger
``handrail``: the message is the event's JSON, and the record carries the event as a dict in its
``handrail_event`` attribute. `JsonFormatter` prints events as they are and any other record as a
JSON object of its own (timestamp, level, logger, message), so a log stays one JSON object per line.

    import handrail.logging
    handrail.logging.enable_json_logging()          # events to stderr, one JSON object a line
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

__all__ = ["JsonFormatter", "enable_json_logging"]


class JsonFormatter(logging.Formatter):
    """Formats a log record as one line of JSON; a Handrail event as the event itself."""

    def format(self, record: logging.LogRecord) -> str:
        event = getattr(record, "handrail_event", None)
        if isinstance(event, dict):
            return _dumps(event)
        data: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exc_info"] = self.formatException(record.exc_info)
        return _dumps(data)


def _dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False, default=str, separators=(",", ":"))


_HANDLER_NAME = "handrail.json"


def enable_json_logging(
    level: int | str = logging.INFO, stream: IO[str] | None = None
) -> logging.Handler:
    """Log Handrail's events as JSON lines to ``stream`` (stderr by default), from ``level`` up.

    Adds one handler with `JsonFormatter` to the ``handrail`` logger; calling it again replaces
    that handler rather than adding a second. Returns the handler (remove it to switch off).
    """
    logger = logging.getLogger("handrail")
    for old in [h for h in logger.handlers if h.get_name() == _HANDLER_NAME]:
        logger.removeHandler(old)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.setLevel(level)
    return handler
