"""What `AuditLog.verify` checks, a row at a time: the chain, a head kept elsewhere, the
checkpoints signed with a key, and the trail's meaning; from the first row, or from a `Start`
(a head or a signed checkpoint whose row still has the recorded hash)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from handrail.audit._anchors import Anchor, key_id
from handrail.audit._chain import GENESIS, HASHED, chain
from handrail.errors import HandrailError

__all__ = [
    "ApprovedBefore",
    "ChainCheck",
    "Head",
    "Start",
    "Verification",
    "choose_start",
    "parse_head",
]

_APPROVED = frozenset({"approve", "edit"})
"""``approval_decided`` decisions that let an asked call run with the arguments they name."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Verification:
    """What `AuditLog.verify` found."""

    ok: bool
    """True when every row follows the one before it, every start of an asked call follows an
    approval of its arguments, and the given head and signed checkpoints (if any) hold."""
    rows: int
    """The rows that verified: all of them when ``ok``, those before the bad one otherwise
    (counting those before `checked_from`, which the head or checkpoint vouched for)."""
    head: str | None
    """``SEQ:HASH`` of the last row that verified (None when none did)."""
    bad_row: int | None = None
    """The ``seq`` of the first bad row; None when the log is fine, or when no single row is to
    blame (rows missing at the end, a forged checkpoint). A row whose hash is not the one a head
    or a checkpoint recorded is named, though the rewrite may be in a row before it."""
    problem: str | None = None
    """What is wrong, in one line."""
    rows_after_head: int | None = None
    """When ``ok`` and a head was given: the rows appended after it."""
    anchors: int | None = None
    """With a public key: the checkpoints signed with it (when ``ok``, every one held)."""
    other_anchors: int | None = None
    """With a public key: the checkpoints signed with other keys, not checked."""
    signed_head: str | None = None
    """With a public key, when ``ok``: the last checkpoint signed with it, ``SEQ:HASH``."""
    checked_from: int = 1
    """The first row whose hash was recomputed: 1 on a full run; one past the head or signed
    checkpoint the run started from otherwise (the rows before it were not read)."""
    rows_checked: int = 0
    """The rows recomputed (from `checked_from` to the last that verified)."""
    vouched_by: Literal["head", "checkpoint"] | None = None
    """What stood for the rows before `checked_from`: the given ``head`` or the last checkpoint
    signed with the key (its row still had the recorded hash); None on a full run."""


@dataclass(frozen=True, slots=True)
class Head:
    """A head kept from `AuditLog.head`: ``SEQ:HASH``, or a bare hash (the old form, seq None)."""

    seq: int | None
    hash: str

    def __str__(self) -> str:
        return self.hash if self.seq is None else f"{self.seq}:{self.hash}"


@dataclass(frozen=True, slots=True)
class Start:
    """Where a run from a checkpoint starts: row ``seq`` was found with ``hash``, which ``by``
    (a head kept elsewhere, or a checkpoint whose signature holds) recorded."""

    seq: int
    hash: str
    by: Literal["head", "checkpoint"]


ApprovedBefore = Callable[[str | None, str, str, int], bool]
"""Whether rows at or before a seq hold an ``approval_decided`` approve or edit of the call
(thread, call, args hash): the meaning check's look-up of approvals a `Start` skipped."""

_HEAD = re.compile(r"(?:([0-9]+):)?([0-9a-f]+)")


def parse_head(text: str) -> Head:
    """``SEQ:HASH`` (or a bare hash) as a `Head`; `HandrailError` if it is neither."""
    found = _HEAD.fullmatch(text.strip().lower())
    if found is None or (found[1] is not None and int(found[1]) < 1):
        raise HandrailError(f"head {text!r} is not SEQ:HASH, as `AuditLog.head` gives it")
    return Head(None if found[1] is None else int(found[1]), found[2])


def choose_start(
    head: Head | None,
    public_key: Ed25519PublicKey | None,
    mine: Sequence[Anchor],
    row_hash: Callable[[int], str | None],
) -> Start | None:
    """Where a run from a checkpoint starts: the later of ``head`` and the last checkpoint in
    ``mine`` (those signed with ``public_key``, by seq), when every one given holds: the
    checkpoint's signature verifies, and ``row_hash`` gives each one's row the recorded hash.
    None (check every row) otherwise, when neither is given, or for a bare-hash head."""
    starts: list[Start] = []
    if head is not None:
        if head.seq is None:
            return None
        starts.append(Start(head.seq, head.hash, "head"))
    if public_key is not None:
        if not mine or not mine[-1].holds(public_key):
            return None
        starts.append(Start(mine[-1].seq, mine[-1].hash, "checkpoint"))
    if not starts or any(row_hash(start.seq) != start.hash for start in starts):
        return None
    return max(starts, key=lambda start: start.seq)


class ChainCheck:
    """One pass of `AuditLog.verify`: `feed` it every row in ``seq`` order, then `result`.

    Keeps in memory the approved (thread, call, args hash) triples and the checkpoints signed
    with the key; the rows themselves stream by. With a ``start``, `feed` takes the rows after
    it: the chain goes on from its hash, the anchors given are those the start was chosen among
    (``anchor_count`` counts them all), and a start of an asked call whose approval is not among
    the rows fed is looked up with ``approved_before`` in the rows the start skipped.
    """

    def __init__(
        self,
        *,
        head: Head | None = None,
        public_key: Ed25519PublicKey | None = None,
        anchors: Sequence[Anchor] = (),
        other_anchors: int = 0,
        start: Start | None = None,
        anchor_count: int | None = None,
        approved_before: ApprovedBefore | None = None,
    ) -> None:
        self._head = head
        self._key = None if public_key is None else key_id(public_key)
        anchors = anchors if public_key is not None else ()
        self._anchors = len(anchors) if anchor_count is None else anchor_count
        self._others = other_anchors if public_key is not None else None
        self._signed: dict[int, Anchor] = {}
        """The checkpoints whose signature holds, by seq."""
        self._forged: Anchor | None = None
        """The first checkpoint claiming the key whose signature does not hold."""
        for anchor in anchors:
            if public_key is not None and anchor.holds(public_key):
                self._signed[anchor.seq] = anchor
            elif self._forged is None:
                self._forged = anchor
        self._rows, self._prev, self._last = 0, GENESIS, 0
        self._head_at: int | None = None
        self._start = start
        self._approved_before = approved_before
        if start is not None:
            self._rows, self._prev, self._last = start.seq, start.hash, start.seq
            if head is not None and head.seq is not None and head.seq <= start.seq:
                self._head_at = head.seq  # its row was found with its hash, before the start
        self._approved: set[tuple[str | None, str, str]] = set()

    def feed(self, record: Sequence[Any]) -> Verification | None:
        """Check the next row (its values in `HASHED` order, then ``prev_hash`` and ``hash``):
        the failed result if it is the first bad row, else None."""
        values, prev, digest = record[:-2], record[-2], record[-1]
        row = dict(zip(HASHED, values, strict=True))
        seq = row["seq"]
        problem = (
            self._chain_problem(seq, prev, digest, row)
            or self._recorded_problem(seq, digest)
            or self._meaning_problem(row)
        )
        if problem is not None:
            return self._failed(problem, bad_row=seq)
        self._rows, self._prev, self._last = self._rows + 1, digest, seq
        head = self._head
        if head is not None and digest == head.hash and head.seq in (None, seq):
            self._head_at = seq
        return None

    def result(self) -> Verification:
        """After the last row: the verdict on the whole log."""
        key = self._key
        if self._forged is not None:
            a = self._forged
            return self._failed(
                f"the checkpoint at row {a.seq} claiming key {key} does not verify with it "
                "(forged or edited)"
            )
        if key is not None and not self._anchors:
            others = f" ({self._others} by other keys)" if self._others else ""
            return self._failed(f"no checkpoint signed by key {key}{others}")
        if past := [a for a in self._signed.values() if a.seq > self._last]:
            return self._failed(
                f"the checkpoint at row {past[0].seq} signed by key {key} is past the end of "
                f"the log (row {self._last}): rows were removed after it was signed"
            )
        head = self._head
        if head is not None and self._head_at is None:
            if head.seq is None:
                problem = f"head {head} is not in the log"
            else:
                problem = (
                    f"head {head}: row {head.seq} is not in the log (it ends at row {self._last})"
                )
            return self._failed(
                f"{problem}: it was truncated or rewritten after that head was taken"
            )
        last = max(self._signed, default=None)
        return Verification(
            ok=True,
            rows=self._rows,
            head=self._verified_head(),
            rows_after_head=None if self._head_at is None else self._last - self._head_at,
            anchors=None if key is None else self._anchors,
            other_anchors=self._others,
            signed_head=None if last is None else self._signed[last].head,
            **self._extent(),
        )

    def _chain_problem(self, seq: int, prev: str, digest: str, row: dict[str, Any]) -> str | None:
        last = self._last
        if seq != last + 1:
            if last:
                return f"row {seq}: seq jumps from {last} (rows removed)"
            return f"row {seq}: the log starts at seq {seq}, not 1 (rows removed or inserted)"
        if prev != self._prev:
            after = f"row {last}" if last else "the start of the log"
            return (
                f"row {seq}: prev_hash does not follow {after} "
                "(a row was removed, inserted or reordered before it)"
            )
        if digest != chain(prev, row):
            return f"row {seq}: its hash does not match its contents (edited)"
        return None

    def _recorded_problem(self, seq: int, digest: str) -> str | None:
        """The row against the hash a kept head or a signed checkpoint recorded for it."""
        head = self._head
        if head is not None and head.seq == seq and digest != head.hash:
            return (
                f"row {seq}: its hash is not the one of head {head}: the log was rewritten "
                f"at or before row {seq} after that head was taken"
            )
        anchor = self._signed.get(seq)
        if anchor is not None and digest != anchor.hash:
            return (
                f"row {seq}: its hash is not the one signed by key {anchor.key_id} at "
                f"{anchor.signed_at}: the log was rewritten at or before row {seq}"
            )
        return None

    def _meaning_problem(self, row: dict[str, Any]) -> str | None:
        """A ``started`` of an asked call must follow an approval of the same arguments (rows
        written before the args hash was kept are not checked). Notes each approval seen."""
        if row["args_hash"] is None:
            return None
        call = (row["thread_id"], row["tool_call_id"], row["args_hash"])
        if row["event"] == "approval_decided" and row["decision"] in _APPROVED:
            self._approved.add(call)
        elif row["event"] == "started" and row["decision"] == "ask" and call not in self._approved:
            if self._skipped_approval(*call):
                self._approved.add(call)
                return None
            return (
                f"row {row['seq']}: 'started' of an asked call (tool {row['tool']}) with no "
                "approval of the same arguments"
            )
        return None

    def _skipped_approval(self, thread: str | None, call: str, args_hash: str) -> bool:
        """An approval of the call's arguments in the rows before the start (not read)."""
        start, lookup = self._start, self._approved_before
        if start is None or lookup is None:
            return False
        return lookup(thread, call, args_hash, start.seq)

    def _failed(self, problem: str, *, bad_row: int | None = None) -> Verification:
        key = self._key
        return Verification(
            ok=False,
            rows=self._rows,
            head=self._verified_head(),
            bad_row=bad_row,
            problem=problem,
            anchors=None if key is None else self._anchors,
            other_anchors=self._others,
            **self._extent(),
        )

    def _extent(self) -> dict[str, Any]:
        """Where the run started and how many rows it recomputed."""
        start = self._start
        begin = 0 if start is None else start.seq
        return {
            "checked_from": begin + 1,
            "rows_checked": self._rows - begin,
            "vouched_by": None if start is None else start.by,
        }

    def _verified_head(self) -> str | None:
        return f"{self._last}:{self._prev}" if self._rows else None
