"""The benchmark scripts still run (their figures are read from their output, not asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def test_gate_overhead_runs_and_reports_both_targets() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gate_overhead.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "ratio handrail/plain" in done.stdout
    assert sum(line.startswith(("PASS", "FAIL")) for line in done.stdout.splitlines()) == 2
