"""The per-tool circuit breaker: counting, opening, the half-open trial, threads and a property."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handrail.policies import CircuitSettings
from handrail.state import ErrorKind
from handrail.tools.breaker import CircuitBreaker

SETTINGS = CircuitSettings(failures=3, cool_down=timedelta(seconds=10))
COOL_DOWN = 10.0
COUNTED: tuple[ErrorKind, ...] = ("rate_limited", "transient", "server_error", "unknown")
ANSWERED: tuple[ErrorKind, ...] = ("bad_request", "tool_error", "forbidden")
NEUTRAL: tuple[ErrorKind, ...] = ("circuit_open", "outcome_unknown")
NOT_COUNTED = ANSWERED + NEUTRAL


class FakeClock:
    """A time source the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker(clock)


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Make the interpreter switch OS threads often, so races have a chance to show."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(interval)


def fail(
    breaker: CircuitBreaker, times: int, tool: str = "pay", kind: ErrorKind = "transient"
) -> None:
    """``times`` calls to ``tool`` that run and fail with ``kind``."""
    for _ in range(times):
        assert breaker.admit(tool, SETTINGS) is None
        breaker.record(tool, SETTINGS, kind)


def open_circuit(breaker: CircuitBreaker, tool: str = "pay") -> None:
    fail(breaker, SETTINGS.failures, tool)
    assert breaker.state(tool) == "open"


def half_open(breaker: CircuitBreaker, clock: FakeClock, tool: str = "pay") -> None:
    open_circuit(breaker, tool)
    clock.now += COOL_DOWN
    assert breaker.state(tool) == "half_open"


def test_every_error_kind_has_a_verdict() -> None:
    assert set(COUNTED + NOT_COUNTED) == set(get_args(ErrorKind))


def test_stays_closed_below_the_threshold(breaker: CircuitBreaker) -> None:
    fail(breaker, SETTINGS.failures - 1)
    assert breaker.state("pay") == "closed"
    assert breaker.admit("pay", SETTINGS) is None


@pytest.mark.parametrize("kind", COUNTED)
def test_opens_exactly_at_the_threshold(breaker: CircuitBreaker, kind: ErrorKind) -> None:
    fail(breaker, SETTINGS.failures - 1, kind=kind)
    assert breaker.state("pay") == "closed"
    fail(breaker, 1, kind=kind)
    assert breaker.state("pay") == "open"
    assert breaker.admit("pay", SETTINGS) == COOL_DOWN


def test_a_success_resets_the_count(breaker: CircuitBreaker) -> None:
    fail(breaker, SETTINGS.failures - 1)
    breaker.record("pay", SETTINGS, None)
    fail(breaker, SETTINGS.failures - 1)
    assert breaker.state("pay") == "closed"
    fail(breaker, 1)
    assert breaker.state("pay") == "open"


@pytest.mark.parametrize("kind", NOT_COUNTED)
def test_uncounted_kinds_neither_count_nor_reset(breaker: CircuitBreaker, kind: ErrorKind) -> None:
    fail(breaker, SETTINGS.failures * 2, kind=kind)
    assert breaker.state("pay") == "closed"
    fail(breaker, SETTINGS.failures - 1)
    fail(breaker, 1, kind=kind)
    fail(breaker, 1)
    assert breaker.state("pay") == "open"


def test_remaining_seconds_decrease_with_the_clock(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    open_circuit(breaker)
    assert breaker.admit("pay", SETTINGS) == pytest.approx(10.0)
    clock.now += 2.5
    assert breaker.admit("pay", SETTINGS) == pytest.approx(7.5)
    clock.now += 7.4
    assert breaker.admit("pay", SETTINGS) == pytest.approx(0.1)
    assert breaker.state("pay") == "open"
    clock.now += 0.1
    assert breaker.state("pay") == "half_open"


def test_half_open_admits_exactly_one_trial(breaker: CircuitBreaker, clock: FakeClock) -> None:
    half_open(breaker, clock)
    assert breaker.admit("pay", SETTINGS) is None
    assert breaker.admit("pay", SETTINGS) == pytest.approx(COOL_DOWN)
    clock.now += 4.0
    assert breaker.admit("pay", SETTINGS) == pytest.approx(COOL_DOWN - 4.0)
    assert breaker.state("pay") == "half_open"


@pytest.mark.parametrize("kind", [None, *ANSWERED])
def test_a_trial_the_api_answered_closes(
    breaker: CircuitBreaker, clock: FakeClock, kind: ErrorKind | None
) -> None:
    half_open(breaker, clock)
    assert breaker.admit("pay", SETTINGS) is None
    breaker.record("pay", SETTINGS, kind)
    assert breaker.state("pay") == "closed"
    assert breaker.admit("pay", SETTINGS) is None
    fail(breaker, SETTINGS.failures - 1)
    assert breaker.state("pay") == "closed"


@pytest.mark.parametrize("kind", COUNTED)
def test_a_failed_trial_reopens_for_a_full_cool_down(
    breaker: CircuitBreaker, clock: FakeClock, kind: ErrorKind
) -> None:
    half_open(breaker, clock)
    clock.now += 3.0
    assert breaker.admit("pay", SETTINGS) is None
    clock.now += 1.0
    breaker.record("pay", SETTINGS, kind)
    assert breaker.state("pay") == "open"
    assert breaker.admit("pay", SETTINGS) == pytest.approx(COOL_DOWN)
    clock.now += COOL_DOWN
    assert breaker.admit("pay", SETTINGS) is None


@pytest.mark.parametrize("kind", NEUTRAL)
def test_a_trial_without_a_verdict_frees_the_slot(
    breaker: CircuitBreaker, clock: FakeClock, kind: ErrorKind
) -> None:
    half_open(breaker, clock)
    assert breaker.admit("pay", SETTINGS) is None
    breaker.record("pay", SETTINGS, kind)
    assert breaker.state("pay") == "half_open"
    assert breaker.admit("pay", SETTINGS) is None
    assert breaker.admit("pay", SETTINGS) is not None


def test_a_lost_trial_is_replaced_after_the_cool_down(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    half_open(breaker, clock)
    assert breaker.admit("pay", SETTINGS) is None
    clock.now += COOL_DOWN - 0.5
    assert breaker.admit("pay", SETTINGS) == pytest.approx(0.5)
    clock.now += 0.5
    assert breaker.admit("pay", SETTINGS) is None
    assert breaker.admit("pay", SETTINGS) == pytest.approx(COOL_DOWN)


@pytest.mark.parametrize("kind", [None, "transient", "bad_request"])
def test_late_outcomes_while_open_are_ignored(
    breaker: CircuitBreaker, clock: FakeClock, kind: ErrorKind | None
) -> None:
    open_circuit(breaker)
    clock.now += 4.0
    breaker.record("pay", SETTINGS, kind)
    assert breaker.state("pay") == "open"
    assert breaker.admit("pay", SETTINGS) == pytest.approx(COOL_DOWN - 4.0)


def test_tools_are_independent(breaker: CircuitBreaker) -> None:
    fail(breaker, SETTINGS.failures - 1, tool="search")
    open_circuit(breaker, "pay")
    assert breaker.state("search") == "closed"
    assert breaker.admit("search", SETTINGS) is None
    assert breaker.state("never-called") == "closed"
    fail(breaker, 1, tool="search")
    assert breaker.state("search") == "open"


def test_reset_closes_one_tool_or_all(breaker: CircuitBreaker) -> None:
    for tool in ("pay", "search", "refund"):
        open_circuit(breaker, tool)
    breaker.reset("pay")
    assert breaker.state("pay") == "closed"
    assert breaker.admit("pay", SETTINGS) is None
    fail(breaker, SETTINGS.failures - 1)
    assert breaker.state("pay") == "closed"
    assert breaker.state("search") == "open"
    breaker.reset("never-called")
    breaker.reset()
    assert breaker.state("search") == breaker.state("refund") == "closed"


# An event is a call that ends with an outcome (None: success, or an error kind), or an int: the
# clock moves on that many milliseconds.
EVENT = st.one_of(
    st.none(),
    st.sampled_from(COUNTED),
    st.sampled_from(NOT_COUNTED),
    st.integers(min_value=1, max_value=15_000),
)


@settings(max_examples=300, deadline=None)
@given(
    failures=st.integers(min_value=1, max_value=4),
    cool_down_ms=st.integers(min_value=1, max_value=10_000),
    events=st.lists(EVENT, max_size=60),
)
def test_never_admits_while_open(
    failures: int, cool_down_ms: int, events: list[ErrorKind | int | None]
) -> None:
    """Calls made one at a time, with the clock moving between some of them."""
    clock = FakeClock()
    breaker = CircuitBreaker(clock)
    circuit = CircuitSettings(failures=failures, cool_down=timedelta(milliseconds=cool_down_ms))
    cool_down = cool_down_ms / 1000
    run = 0  # counted failures of calls that ran, since the last success or move of the clock
    for event in events:
        if isinstance(event, int):
            clock.now += event / 1000
            run = 0
            continue
        state = breaker.state("t")
        wait = breaker.admit("t", circuit)
        if state == "closed":
            assert wait is None
        if state == "open" or run >= failures:
            assert wait is not None
        if wait is not None:
            assert 0 < wait <= cool_down + 1e-9  # open_until - now carries float rounding
            continue
        breaker.record("t", circuit, event)
        if event is None:
            run = 0
        elif event in COUNTED:
            run += 1


@pytest.mark.usefixtures("fast_switching")
def test_threads_half_open_admits_one_trial_per_round(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    threads, rounds = 8, 100
    open_circuit(breaker)
    admitted: list[int] = [0] * rounds
    count_lock = threading.Lock()

    def next_round() -> None:
        clock.now += COOL_DOWN

    start = threading.Barrier(threads, action=next_round)
    done = threading.Barrier(threads)

    def worker() -> None:
        for i in range(rounds):
            start.wait()
            if breaker.admit("pay", SETTINGS) is None:
                with count_lock:
                    admitted[i] += 1
                breaker.record("pay", SETTINGS, "server_error")
            done.wait()

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in pool)
    assert admitted == [1] * rounds
    assert breaker.state("pay") == "open"


@pytest.mark.usefixtures("fast_switching")
def test_threads_lose_no_failure(breaker: CircuitBreaker) -> None:
    threads, each = 8, 100
    circuit = CircuitSettings(failures=threads * each + 1, cool_down=timedelta(seconds=10))
    start = threading.Barrier(threads)
    waits: list[float | None] = []

    def worker() -> None:
        start.wait()
        for _ in range(each):
            waits.append(breaker.admit("pay", circuit))
            breaker.record("pay", circuit, "transient")
            breaker.record("pay", circuit, "bad_request")

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=60)
    assert waits == [None] * (threads * each)
    assert breaker.state("pay") == "closed"
    breaker.record("pay", circuit, "transient")
    assert breaker.state("pay") == "open"
