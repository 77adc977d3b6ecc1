"""The benchmark scripts still run (their figures are read from their output, not asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def run_quick(script: str, targets: int = 2) -> str:
    """Run ``benchmarks/<script> --quick``; its output, with one PASS/FAIL line per target."""
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    verdicts = sum(line.startswith(("PASS", "FAIL")) for line in done.stdout.splitlines())
    assert verdicts == targets
    return done.stdout


def test_gate_overhead_runs_and_reports_its_four_targets() -> None:
    out = run_quick("gate_overhead.py", targets=4)
    assert "ratio handrail/plain" in out and "tool gate ratio" in out and "a limit adds" in out


def test_inbox_benchmark_runs_agrees_and_reports_its_three_targets() -> None:
    out = run_quick("inbox.py", targets=3)
    assert "pending() and the naive scan agree: 300 " in out
    assert any(line.startswith(("PASS: web list", "FAIL: web list")) for line in out.splitlines())


def test_audit_benchmark_runs_and_reports_both_targets() -> None:
    assert "audit on/off, ledgered tool" in run_quick("audit.py")


def test_load_benchmark_runs_and_reports_both_backends() -> None:
    out = run_quick("load.py")
    assert out.count("ratio handrail/plain") == 2, out
    verdicts = [line for line in out.splitlines() if line.startswith(("PASS", "FAIL"))]
    for backend in ("sqlite", "postgres"):
        assert f"\n{backend}: 4 worker processes x 25 threads" in out, out
        line = next(v for v in verdicts if f" {backend}: " in v)
        # 0 double executions, lost approvals, audit forks and gaps, locked and other errors
        assert line.startswith("PASS"), out


def test_kills_benchmark_runs_and_reports_no_double_execution() -> None:
    out = run_quick("kills.py")
    assert "PASS double executions: 0 in 6 kills" in out, out
