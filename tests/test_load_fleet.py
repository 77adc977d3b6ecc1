"""``benchmarks/load.py --fleet`` runs a fleet of allowed calls on both stores and finds nothing
that must not happen (its throughput figures are read from its output, not asserted)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

LOAD = Path(__file__).parent.parent / "benchmarks" / "load.py"
ZERO_COUNTS = (
    "double executions",
    "missing runs",
    "audit forks",
    "audit gaps",
    "ledger gaps",
    "locked errors",
    "other errors",
)
COUNT = re.compile(rf"(\d+) ({'|'.join(ZERO_COUNTS)})")


def test_fleet_quick_runs_both_sides_on_both_stores_with_nothing_that_must_be_zero() -> None:
    done = subprocess.run(
        [sys.executable, str(LOAD), "--fleet", "--quick", "--check"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    verdicts = [line for line in out.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert [v.split(":")[1].strip() for v in verdicts] == ["fleet sqlite", "fleet postgres"], out
    for backend, line in zip(("sqlite", "postgres"), verdicts, strict=True):
        assert line.startswith("PASS"), out
        counts = {name: int(n) for n, name in COUNT.findall(line)}
        assert counts == dict.fromkeys(ZERO_COUNTS, 0), line
        assert f"\n{backend} fleet: 4 worker processes x 50 threads" in out, out
        table = out.split(f"\n{backend} fleet: ")[1]
        for side in ("fleet-plain", "fleet-handrail"):
            # 4 workers x 50 threads, each one tool call that returned
            assert re.search(rf"^{side} +200 ", table, re.MULTILINE), table
    assert out.count("fleet ratio handrail/plain: throughput ") == 2, out
