"""Tool-side types: the failures a tool can raise, and the demo tools."""

from handrail.tools.errors import (
    BadRequest,
    Forbidden,
    RateLimited,
    ServerError,
    ToolFailure,
    TransientError,
    classify,
)

__all__ = [
    "BadRequest",
    "Forbidden",
    "RateLimited",
    "ServerError",
    "ToolFailure",
    "TransientError",
    "classify",
]
