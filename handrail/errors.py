"""Handrail's error types: one root, typed fields, the message built in the constructor.

A policy *denial* is not an error (it is a `Decision`); these are raised for input that Handrail
refuses: a malformed policy, a resume value that does not fit the paused request, an approver who
may not decide, a run started without an actor.
"""

from __future__ import annotations

__all__ = [
    "AlreadyDecided",
    "ApprovalError",
    "ApprovalExpired",
    "ApproverNotAuthorized",
    "ContextError",
    "DeliveryError",
    "DrawingError",
    "DuplicateApprover",
    "GraphNotFound",
    "HandrailError",
    "IdentityError",
    "InputTooLarge",
    "NothingPending",
    "NotificationConfigError",
    "PageError",
    "PolicyError",
    "RequesterMismatch",
    "ResumeError",
    "SchemaOutdated",
    "SelfApproval",
    "StaleApproval",
    "StorageError",
    "UnknownCall",
]


class HandrailError(Exception):
    """Root of every error Handrail raises."""


class PolicyError(HandrailError):
    """A policy that fails to parse, validate or compile.

    Names the file (or ``<string>``), the rule and the field, so the broken line can be found.
    """

    def __init__(
        self,
        problem: str,
        *,
        source: str = "<string>",
        rule_id: str | None = None,
        field: str | None = None,
    ) -> None:
        self.problem = problem
        """What is wrong, in a sentence."""
        self.source = source
        """The policy file's path, or ``<string>`` for text."""
        self.rule_id = rule_id
        """The id (or ``#index``) of the rule at fault, if the fault is inside a rule."""
        self.field = field
        """The field at fault, e.g. ``when`` or ``effect``."""
        where = [source]
        if rule_id is not None:
            where.append(f"rule {rule_id!r}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{': '.join(where)}: {problem}")


class ContextError(HandrailError):
    """A graph run without the runtime context Handrail needs (the acting `Actor`)."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(
            f"{problem}; pass context=RunContext(actor=Actor(id=..., roles=[...])) to invoke/stream"
        )


class IdentityError(HandrailError):
    """An id or a credential that cannot name a person or an agent: look-alike or invisible
    characters, an id the directory does not know, roles it does not give, a bad token."""

    def __init__(self, problem: str, *, identity: str | None = None) -> None:
        self.problem = problem
        """What is wrong, in a sentence."""
        self.identity = identity
        """The id (or token subject) at fault, as given, if there is one."""
        super().__init__(problem if identity is None else f"{identity!r}: {problem}")


class RequesterMismatch(ContextError):
    """A run whose context names another actor (or other roles) than the thread's requester,
    pinned at its first run. Nothing is stored."""

    def __init__(self, problem: str, *, thread_id: str | None = None) -> None:
        self.thread_id = thread_id
        """The thread whose requester is pinned."""
        super().__init__(f"thread {thread_id!r}: {problem}" if thread_id else problem)


class InputTooLarge(HandrailError):
    """A value larger or deeper than Handrail accepts (a resume payload, an argument)."""

    def __init__(self, what: str, problem: str) -> None:
        self.what = what
        """What was too large: ``arguments``, ``resume payload``, ..."""
        self.problem = problem
        super().__init__(f"{what}: {problem}")


class ApprovalError(HandrailError):
    """A resume decision that Handrail refuses. Nothing is stored and the thread stays paused."""

    def __init__(self, reason: str, *, thread_id: str | None = None) -> None:
        self.reason = reason
        """Why the decision was refused."""
        self.thread_id = thread_id
        """The paused thread the decision was meant for."""
        prefix = f"thread {thread_id!r}: " if thread_id else ""
        super().__init__(f"{prefix}{reason}")


class ResumeError(ApprovalError):
    """The resume payload does not have the shape of a decision for the paused request."""


class UnknownCall(ResumeError):
    """A decision names a tool call that is not waiting on the thread."""


class NothingPending(ApprovalError):
    """A resume for a thread that is not waiting for an approval."""


class AlreadyDecided(NothingPending):
    """Another decision took the request first (or is being applied by another process)."""


class ApprovalExpired(ApprovalError):
    """The request is past its deadline; it can only be resolved as expired (rejected)."""


class DuplicateApprover(ApprovalError):
    """The approver already approved the call; a rule with ``min_approvals`` needs someone else."""


class ApproverNotAuthorized(ApprovalError):
    """The approver has no id, or holds none of the roles the rule allows to decide."""


class SelfApproval(ApprovalError):
    """The approver is the actor the call was made for (separation of duties)."""


class StaleApproval(ApprovalError):
    """The approval names arguments (an args hash) other than those of the pending call."""


class GraphNotFound(HandrailError):
    """No graph to resume a thread with: none passed, registered, or found by entry point."""


class StorageError(HandrailError):
    """The database for Handrail's tables cannot be used: unreachable, missing, or misnamed."""

    def __init__(self, database: str, problem: str) -> None:
        self.database = database
        """The database, as shown (a file path, or a URL without its password)."""
        self.problem = problem
        """What is wrong, in a sentence."""
        super().__init__(f"{database}: {problem}")


class SchemaOutdated(StorageError):
    """The database's Handrail tables are missing or at another schema version than this
    Handrail's; ``handrail db migrate`` brings them to it."""

    def __init__(self, database: str, *, found: int, wanted: int) -> None:
        self.found = found
        """The version the database holds (0: no Handrail tables)."""
        self.wanted = wanted
        """The version this Handrail reads and writes."""
        state = "has no Handrail tables" if found == 0 else f"is at schema version {found}"
        if found > wanted:
            fix = f"this Handrail knows versions up to {wanted}: upgrade Handrail"
        else:
            fix = f"run `handrail db migrate --db {database}` to bring it to version {wanted}"
        super().__init__(database, f"{state}; {fix}")


class NotificationConfigError(HandrailError):
    """A notification setting that cannot be used (`handrail.notify`); names the setting (a
    field or an environment variable) and what is wrong with it."""

    def __init__(self, setting: str, problem: str) -> None:
        self.setting = setting
        """The field or environment variable."""
        self.problem = problem
        super().__init__(f"{setting}: {problem}")


class DeliveryError(HandrailError):
    """A notification attempt that did not reach its receiver (tried again until the last
    attempt)."""

    def __init__(self, channel: str, problem: str) -> None:
        self.channel = channel
        """The channel's name."""
        self.problem = problem
        super().__init__(f"{channel}: {problem}")


class DrawingError(HandrailError):
    """A graph could not be drawn (`handrail.drawing`): ``dot`` is not installed, failed or
    took too long."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        """What went wrong, in one sentence."""
        super().__init__(f"cannot draw the graph: {problem}")


class PageError(HandrailError, ValueError):
    """A page asked for with a cursor or a limit that cannot be used: names the parameter and
    the value given."""

    def __init__(self, parameter: str, value: object, problem: str) -> None:
        self.parameter = parameter
        """The parameter at fault: ``after`` or ``before`` (a cursor), or ``limit``."""
        self.value = value
        """The value given."""
        self.problem = problem
        """What is wrong with it, in a sentence."""
        shown = repr(value) if len(repr(value)) <= 80 else f"{repr(value)[:77]}..."
        super().__init__(f"{parameter}={shown}: {problem}")
