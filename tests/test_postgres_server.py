"""`handrail.testing.postgres_server`: a real, throwaway PostgreSQL server on loopback."""

from __future__ import annotations

import os
import socket
import stat
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from handrail import testing
from handrail.testing import postgres_server

psycopg = pytest.importorskip("psycopg")


def _postmaster(url: str) -> tuple[Path, int]:
    """The server's data directory and postmaster pid, asked of the running server."""
    with psycopg.connect(url) as conn:
        row = conn.execute("show data_directory").fetchone()
    assert row is not None
    data = Path(row[0])
    pid = int((data / "postmaster.pid").read_text().splitlines()[0])
    return data, pid


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    except OSError:  # no procfs
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state != "Z"


def _accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        try:
            s.connect(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _assert_gone(url: str, data: Path, pid: int) -> None:
    port = urlsplit(url).port
    assert port is not None
    assert not _accepts(port)
    assert not _alive(pid)
    assert not data.exists()
    assert not data.parent.exists()  # the whole temp dir (socket, log) is deleted
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)


def test_server_answers_queries_and_is_gone_after_exit() -> None:
    with postgres_server() as url:
        parts = urlsplit(url)
        assert (parts.scheme, parts.hostname, parts.username, parts.path) == (
            "postgresql",
            "127.0.0.1",
            "postgres",
            "/postgres",
        )
        data, pid = _postmaster(url)
        assert _alive(pid)
        with psycopg.connect(url) as conn:
            conn.execute("create table t (id int primary key, name text)")
            conn.execute("insert into t values (1, 'one'), (2, 'two')")
            conn.commit()
        with psycopg.connect(url) as conn:
            assert conn.execute("select id, name from t order by id").fetchall() == [
                (1, "one"),
                (2, "two"),
            ]
            settings = conn.execute(
                "select current_setting('fsync'), current_setting('synchronous_commit'),"
                " current_setting('full_page_writes'), current_setting('max_connections'),"
                " current_setting('listen_addresses')"
            ).fetchone()
        assert settings == ("off", "off", "off", "300", "127.0.0.1")
    _assert_gone(url, data, pid)


def test_two_servers_run_at_once_independently() -> None:
    with (
        postgres_server(max_connections=20) as first,
        postgres_server(durable=True, max_connections=30) as second,
    ):
        assert urlsplit(first).port != urlsplit(second).port
        (data1, pid1), (data2, pid2) = _postmaster(first), _postmaster(second)
        assert data1 != data2 and pid1 != pid2
        with psycopg.connect(first) as conn:
            conn.execute("create table only_in_first (x int)")
            conn.commit()
        with psycopg.connect(second) as conn:
            missing = conn.execute("select to_regclass('only_in_first')").fetchone()
            durable = conn.execute(
                "select current_setting('fsync'), current_setting('synchronous_commit'),"
                " current_setting('full_page_writes'), current_setting('max_connections')"
            ).fetchone()
        assert missing == (None,)
        assert durable == ("on", "on", "on", "30")
        with psycopg.connect(first) as conn:
            limit = conn.execute("show max_connections").fetchone()
        assert limit == ("20",)
    _assert_gone(first, data1, pid1)
    _assert_gone(second, data2, pid2)


def test_exception_in_body_still_stops_the_server() -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom), postgres_server() as url:
        data, pid = _postmaster(url)
        raise Boom
    _assert_gone(url, data, pid)


def test_failed_start_reports_the_log_and_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Path] = []
    real_mkdtemp = tempfile.mkdtemp

    def recording_mkdtemp(**kwargs: str) -> str:
        path = real_mkdtemp(**kwargs)
        made.append(Path(path))
        return path

    monkeypatch.setattr(tempfile, "mkdtemp", recording_mkdtemp)
    with (
        pytest.raises(RuntimeError, match="PostgreSQL start failed") as failure,
        postgres_server(max_connections=0),
    ):
        pytest.fail("the server should not have started")
    # The server's own complaint comes from the log tail in the message.
    assert "max_connections" in str(failure.value)
    assert "last lines of" in str(failure.value)
    assert len(made) == 1
    assert not made[0].exists()


def _fake_bindir(root: Path, version: str, tools: tuple[str, ...] = ("initdb", "pg_ctl")) -> Path:
    bindir = root / version / "bin"
    bindir.mkdir(parents=True)
    for tool in tools:
        exe = bindir / tool
        exe.write_text("#!/bin/sh\nexit 1\n")
        exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return bindir


def test_binaries_come_from_the_newest_complete_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no pg_config, no initdb on PATH
    root = tmp_path / "postgresql"
    monkeypatch.setattr(testing, "_PG_DIRS", root)
    _fake_bindir(root, "9.6")
    newest = _fake_bindir(root, "16")
    _fake_bindir(root, "15")
    _fake_bindir(root, "17", tools=("initdb",))  # no pg_ctl: not usable
    assert testing._postgres_bindir() == newest


def test_missing_binaries_say_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(testing, "_PG_DIRS", tmp_path / "nothing")
    with (
        pytest.raises(RuntimeError, match=r"apt-get install -y postgresql"),
        postgres_server(),
    ):
        pytest.fail("no server can start without binaries")


def test_server_is_killed_when_pg_ctl_stop_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    real_run_as = testing._run_as

    def failing_stop(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("what") == "stop":
            raise RuntimeError("pg_ctl stop failed")
        return real_run_as(*args, **kwargs)

    monkeypatch.setattr(testing, "_run_as", failing_stop)
    with postgres_server() as url:
        data, pid = _postmaster(url)
    _assert_gone(url, data, pid)
