"""Tool-side types: the failures a tool can raise, the circuit breaker, the execution ledger."""

from handrail.tools.breaker import CircuitBreaker
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
    "CircuitBreaker",
    "Forbidden",
    "RateLimited",
    "ServerError",
    "ToolFailure",
    "TransientError",
    "classify",
]
