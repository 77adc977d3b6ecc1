"""`load.py`'s worker processes (started once, one job per phase) and its stores (a SQLite file
per phase, or a database per phase on one throwaway PostgreSQL server)."""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from multiprocessing.context import SpawnContext, SpawnProcess
from multiprocessing.queues import Queue
from pathlib import Path

from langchain_core.tools import BaseTool
from load_common import (
    BARRIER_TIMEOUT_S,
    Backend,
    Counted,
    Job,
    Mode,
    Shared,
    Tally,
    WorkerResult,
    make_pay,
    started_all,
)

Runner = Callable[[int, Job, Shared, BaseTool, WorkerResult], None]
"""What a worker runs for a job of one mode: (worker, job, shared, pay, result)."""


def worker_main(
    index: int,
    runners: Mapping[Mode, Runner],
    jobs: Queue[Job | None],
    results: Queue[WorkerResult],
    shared: Shared,
) -> None:
    """A worker process: one phase per job, run by its mode's runner, until ``None``."""
    # Handrail's events go to the ``handrail`` logger; without a handler Python prints those
    # at WARNING (``expired``) on stderr. Errors are raised to the caller, never only logged.
    logging.getLogger("handrail").addHandler(logging.NullHandler())
    while (job := jobs.get()) is not None:
        result = WorkerResult(worker=index)
        fd: int | None = None
        try:
            pay, fd = make_pay(Path(job.log_dir) / f"exec-{index}.log")
            runners[job.mode](index, job, shared, pay, result)
        except threading.BrokenBarrierError:
            result.failed = "did not start: another worker failed before the start"
        except Counted as exc:
            result.failed = f"stopped: {exc}"
            shared.barrier.abort()
        except Exception as exc:
            result.failed = f"stopped on {type(exc).__name__} (its traceback is below)"
            Tally(result).error("worker", exc)  # counted as a locked or an other error
            shared.barrier.abort()  # nobody waits for a worker that cannot start
        finally:
            if fd is not None:
                os.close(fd)
            started_all(shared, result)  # the others stop waiting for its threads
        result.ended = time.time()
        gc.collect()
        results.put(result)


class Pool:
    """The worker processes, started once (``spawn``) and given one job per phase; ``runners``
    (module-level functions, pickled by name) say what each mode runs."""

    def __init__(self, workers: int, runners: Mapping[Mode, Runner]) -> None:
        self.ctx: SpawnContext = multiprocessing.get_context("spawn")
        self.workers = workers
        self.shared = Shared(
            barrier=self.ctx.Barrier(workers + 1),
            started_all=self.ctx.Value("i", 0),
            handed=self.ctx.Value("i", 0),
            taken=self.ctx.Value("i", 0),
            handoff=self.ctx.Queue(),
        )
        self.jobs: list[Queue[Job | None]] = [self.ctx.Queue() for _ in range(workers)]
        self.results: Queue[WorkerResult] = self.ctx.Queue()
        self.procs: list[SpawnProcess] = [
            self.ctx.Process(
                target=worker_main,
                args=(k, dict(runners), self.jobs[k], self.results, self.shared),
                name=f"load-worker-{k}",
                daemon=True,
            )
            for k in range(workers)
        ]
        for proc in self.procs:
            proc.start()

    def round(
        self,
        mode: Mode,
        backend: Backend,
        target: str,
        log_dir: Path,
        plan: tuple[int, int, int],
        timeout: float,
        seed: int,
    ) -> tuple[float, list[WorkerResult], tuple[int, int, int] | None]:
        """One round of ``mode`` on the fresh store ``target``: ``plan`` is (first thread,
        threads per worker, one thread in how many expires); the start time, the results, and
        PostgreSQL's counters before it (None on SQLite)."""
        prepare(mode, backend, target)
        log_dir.mkdir()
        first, threads, lapse_every = plan
        job = Job(
            mode, backend, target, self.workers, first, threads, lapse_every, str(log_dir), seed
        )
        counters = pg_counters(target) if backend == "postgres" else None
        began, results = self.run(job, timeout)
        return began, results, counters

    def run(self, job: Job, timeout: float) -> tuple[float, list[WorkerResult]]:
        """Give every worker ``job``, release them together; the start time and their results."""
        for counter in (self.shared.started_all, self.shared.handed, self.shared.taken):
            counter.value = 0
        for q in self.jobs:
            q.put(job)
        # A broken barrier: a worker failed to start, and its result says why.
        with contextlib.suppress(threading.BrokenBarrierError):
            self.shared.barrier.wait(BARRIER_TIMEOUT_S)
        began = time.time()
        results = [self.results.get(timeout=timeout) for _ in self.procs]
        if self.shared.barrier.broken:
            self.shared.barrier.reset()
        return began, sorted(results, key=lambda r: r.worker)

    def close(self) -> None:
        """Stop the workers (after their current job)."""
        for q in self.jobs:
            with contextlib.suppress(Exception):
                q.put(None)
        for proc in self.procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=10)


@contextlib.contextmanager
def open_store(backend: Backend, tmp: Path) -> Iterator[Callable[[str], str]]:
    """A function giving a fresh store per name: a SQLite file, or a database on one server."""
    if backend == "sqlite":
        yield lambda name: str(tmp / f"{name}.sqlite")
        return
    import psycopg

    from handrail.testing import postgres_server

    with postgres_server(durable=True) as url:

        def database(name: str) -> str:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            return str(urllib.parse.urlsplit(url)._replace(path=f"/{name}").geturl())

        yield database


def prepare(mode: Mode, backend: Backend, target: str) -> None:
    """Make the schema once, where the backend needs it (PostgreSQL)."""
    if backend != "postgres":
        return  # SQLite: the workers' graphs make the tables on first use, concurrently
    if "handrail" in mode:
        from handrail.storage import migrate

        migrate(target)
        return
    from langgraph.checkpoint.postgres import PostgresSaver

    with PostgresSaver.from_conn_string(target) as saver:
        saver.setup()


def pg_counters(url: str) -> tuple[int, int, int]:
    """The database's transactions so far, and the server's WAL syncs and records."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT (SELECT xact_commit + xact_rollback FROM pg_stat_database "
            "WHERE datname = current_database()), wal_sync, wal_records FROM pg_stat_wal"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])
