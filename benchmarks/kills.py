"""Randomized kills: threads killed with SIGKILL at random moments never pay twice.

Each thread runs the crash tests' agent (``tests/crash_child.py``): one message, a model that gives
its tool calls fresh ids on every generation (as a provider's does), ``pay`` 250 (allowed, not
idempotent) committed to a separate SQLite file, a random durability (``sync``, ``async``,
``exit``), a saver that takes a random 0-0.3 s to save the model's step, and a random embedding
(`build_agent`, `build_tool_gate` under the user's own model node, `HandrailMiddleware`,
`build_agent` as a node of the user's graph). A timer kills the first run's process at a random
moment; a fresh process then goes on with the thread by its ID (or submits the request again
when nothing was saved), and a person skips a payment whose outcome is unknown. The payments
file is the ground truth.

Targets: 0 double executions; every thread ends with one payment, or none and an escalation.

Run: ``python benchmarks/kills.py [--kills N] [--postgres] [--seed S] [--quick]``.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from crash_child import Forks, crash, payments, random_case

EMBEDDINGS = ["agent", "gate", "middleware", "nested"]


@contextmanager
def databases(postgres: bool) -> Iterator[Callable[[Path], str]]:
    """A function giving each thread a database of its own: a SQLite file in its directory, or
    a fresh schema of a throwaway PostgreSQL server."""
    if not postgres:
        yield lambda root: str(root / "handrail.db")
        return
    from handrail.testing import postgres_schema, postgres_server

    with postgres_server() as server:

        def schema(root: Path) -> str:
            return postgres_schema(server)

        yield schema


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=300, help="killed threads to reach")
    parser.add_argument("--postgres", action="store_true", help="on PostgreSQL, not SQLite")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="6 kills (a smoke run)")
    args = parser.parse_args()
    wanted = 6 if args.quick else args.kills
    rng = random.Random(args.seed)
    ended: Counter[str] = Counter()
    modes: Counter[str] = Counter()
    kills = runs = 0
    began = time.perf_counter()
    forks = Forks()
    try:
        with tempfile.TemporaryDirectory() as tmp, databases(args.postgres) as place:
            while kills < wanted and runs < 4 * wanted:
                root = Path(tmp) / str(runs)
                root.mkdir()
                runs += 1
                case = random_case(rng, root, rng.choice(EMBEDDINGS))
                case = replace(case, db=place(root))
                try:
                    killed, after = crash(forks, case, root)
                except AssertionError as problem:
                    ended[f"not done: {problem}"] += 1
                    continue
                if not killed.killed:
                    continue
                kills += 1
                modes[case.mode] += 1
                paid = len(payments(case.effects_db))
                if paid > 1:
                    ended["paid twice or more"] += 1
                elif paid == 1:
                    ended["paid once"] += 1
                else:
                    ended["none, escalated" if after.get("escalated") else "none, unnoticed"] += 1
    finally:
        forks.close()
    seconds = time.perf_counter() - began
    backend = "postgres" if args.postgres else "sqlite"
    print(
        f"{backend}: {kills} threads killed at random moments ({runs - kills} more ended before "
        f"their kill), fresh-id model, durability {dict(modes)}, {seconds:.0f} s"
    )
    for outcome, count in sorted(ended.items()):
        print(f"  {outcome}: {count}")
    doubles = ended["paid twice or more"]
    print(f"{'PASS' if doubles == 0 else 'FAIL'} double executions: {doubles} in {kills} kills")
    bad = kills - ended["paid once"] - ended["none, escalated"]
    print(
        f"{'PASS' if bad == 0 and kills >= wanted else 'FAIL'} every killed thread ended with one "
        f"payment, or none and an escalation: {kills - bad} of {kills}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
