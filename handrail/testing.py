"""Test doubles for users' own tests: a chat model that replays a script of AIMessages, and a
throwaway PostgreSQL server for tests and benchmarks."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from pydantic import Field, PrivateAttr

__all__ = ["ScriptedChatModel", "postgres_schema", "postgres_server"]


class ScriptedChatModel(BaseChatModel):
    """A chat model that answers with the given AIMessages, one per model turn.

    The answer is chosen by position: the n-th AIMessage of the script answers a conversation that
    already holds n-1 AIMessages. That makes the model stateless, so a thread paused in one process
    and resumed in another (where a new `ScriptedChatModel` is built from the same script) goes on
    with the next answer. Tool calls without an id get a stable one (``call_<turn>_<index>``).

    With ``fresh_ids=True`` every generation gives each tool call a new id instead
    (``call_<uuid>``), as a provider's model does: a turn the model is asked for again (after a
    crash lost its step) comes back with the same calls under new ids.

    ``bind_tools`` records the tools and returns the model itself, so it drops in wherever a
    provider chat model goes; ``assert_complete()`` checks that every answer was used.
    """

    responses: list[AIMessage] = Field(default_factory=list)
    """The script: one AIMessage per model turn."""
    fresh_ids: bool = False
    """Give the tool calls new ids on every generation, as a provider's model does."""

    _served: int = PrivateAttr(default=0)
    _bound_tools: list[str] = PrivateAttr(default_factory=list)

    def __init__(self, responses: Sequence[AIMessage | str] = (), **kwargs: Any) -> None:
        script = [r if isinstance(r, AIMessage) else AIMessage(r) for r in responses]
        super().__init__(  # type: ignore[call-arg]
            responses=[_with_ids(m, turn) for turn, m in enumerate(script)], **kwargs
        )

    @property
    def _llm_type(self) -> str:
        return "handrail-scripted"

    @property
    def bound_tools(self) -> list[str]:
        """Names of the tools passed to ``bind_tools``."""
        return list(self._bound_tools)

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Record the tool names; the script already says which tools are called."""
        self._bound_tools = [getattr(t, "name", getattr(t, "__name__", str(t))) for t in tools]
        return self

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        turn = sum(isinstance(m, AIMessage) for m in messages)
        if turn >= len(self.responses):
            raise IndexError(
                f"ScriptedChatModel has {len(self.responses)} response(s); turn {turn + 1} "
                "asked for one more"
            )
        self._served = max(self._served, turn + 1)
        message = self.responses[turn]
        if self.fresh_ids and message.tool_calls:
            calls = [{**call, "id": f"call_{uuid.uuid4().hex}"} for call in message.tool_calls]
            message = message.model_copy(update={"tool_calls": calls})
        return ChatResult(generations=[ChatGeneration(message=message)])

    def assert_complete(self) -> None:
        """Raise `AssertionError` unless the last answer of the script was given."""
        if self._served != len(self.responses):
            raise AssertionError(
                f"ScriptedChatModel answered {self._served} of {len(self.responses)} turns"
            )


def _with_ids(message: AIMessage, turn: int) -> AIMessage:
    if not any(call.get("id") is None for call in message.tool_calls):
        return message
    calls = [
        {**call, "id": call.get("id") or f"call_{turn}_{i}"}
        for i, call in enumerate(message.tool_calls)
    ]
    return message.model_copy(update={"tool_calls": calls})


_INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's `postgresql` package "
    "(apt-get install -y postgresql)"
)
_PG_DIRS = Path("/usr/lib/postgresql")
# Trust authentication for the superuser `postgres`; --no-sync: the cluster is thrown away.
_INITDB_OPTIONS = ("-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync")


@contextmanager
def postgres_server(*, durable: bool = False, max_connections: int = 300) -> Iterator[str]:
    """A throwaway PostgreSQL server on 127.0.0.1 for tests and benchmarks; yields its URL
    (postgresql://postgres@127.0.0.1:PORT/postgres), stopped and deleted on exit.

    A fresh cluster is made with ``initdb`` in a temporary directory (trust authentication, user
    ``postgres``, UTF8, C locale) and started with ``pg_ctl`` on a free loopback port, with its
    Unix socket in the same temporary directory. On exit, even when the body raises, the server is
    stopped (``pg_ctl -m immediate stop``) and the directory removed.

    ``durable=False`` (tests) turns off ``fsync``, ``synchronous_commit`` and
    ``full_page_writes`` for speed; ``durable=True`` (benchmarks) keeps PostgreSQL's defaults, so
    commits reach the disk. ``max_connections`` is passed to the server as is.

    The binaries are found with ``pg_config --bindir``, then in the newest
    ``/usr/lib/postgresql/*/bin``, then on ``PATH``. ``initdb`` refuses to run as root, so under
    root the server runs as the unprivileged ``postgres`` user that Debian's package creates.
    Raises `RuntimeError` when the binaries or that user are missing, or when the server does not
    start (the message holds the tail of the server's log).
    """
    bindir = _postgres_bindir()
    owner = _server_owner()
    base = Path(tempfile.mkdtemp(prefix="handrail-pg-"))
    data, log = base / "data", base / "postgres.log"
    try:
        if owner is not None:
            os.chmod(base, 0o755)
            os.chown(base, owner.pw_uid, owner.pw_gid)
        _run_as(
            owner,
            [str(bindir / "initdb"), "-D", str(data), *_INITDB_OPTIONS],
            cwd=base,
            what="initdb",
        )
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{base}'",
            "max_connections": str(int(max_connections)),
        }
        if not durable:
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        with open(data / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\n# handrail.testing.postgres_server\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        port = _start(owner, bindir, data, log, base)
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        try:
            _stop(owner, bindir, data)
        finally:
            shutil.rmtree(base, ignore_errors=True)


def postgres_schema(server: str) -> str:
    """A fresh schema on ``server`` (a `postgres_server` URL), with Handrail's tables: the URL
    whose connections use it (``search_path``). One per test keeps tests apart on one server.
    The connection made to migrate it is closed before returning."""
    import psycopg

    from handrail.storage import migrate
    from handrail.storage._postgres import close_pool

    schema = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    url = f"{server}?options=-csearch_path%3D{schema}"
    migrate(url)
    close_pool(url)
    return url


def _postgres_bindir() -> Path:
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=30
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out:
            candidates.append(Path(out))
    versions = [d for d in _PG_DIRS.glob("*/bin") if d.parent.name.replace(".", "").isdigit()]
    versions.sort(key=lambda d: [int(part) for part in d.parent.name.split(".")], reverse=True)
    candidates.extend(versions)
    initdb = shutil.which("initdb")
    if initdb is not None:
        candidates.append(Path(initdb).resolve().parent)
    for bindir in candidates:
        if all(os.access(bindir / tool, os.X_OK) for tool in ("initdb", "pg_ctl")):
            return bindir
    raise RuntimeError(_INSTALL_HINT)


def _server_owner() -> pwd.struct_passwd | None:
    """The user to run the server as: None for the current user, ``postgres`` under root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError(
            "running as root, and initdb refuses root: the server needs the unprivileged "
            "`postgres` user, which Debian's `postgresql` package creates "
            "(apt-get install -y postgresql)"
        ) from None


def _run_as(
    owner: pwd.struct_passwd | None,
    args: list[str],
    *,
    cwd: Path,
    what: str,
    log: Path | None = None,
    check: bool = True,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    if owner is not None:
        env |= {"HOME": owner.pw_dir, "USER": owner.pw_name, "LOGNAME": owner.pw_name}
    try:
        result = subprocess.run(
            args,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            user=None if owner is None else owner.pw_uid,
            group=None if owner is None else owner.pw_gid,
            extra_groups=None if owner is None else [],
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"PostgreSQL {what} failed: {exc}{_log_tail(log)}") from exc
    if check and result.returncode != 0:
        raise RuntimeError(
            f"PostgreSQL {what} failed (exit {result.returncode}): "
            f"{(result.stdout + result.stderr).strip()}{_log_tail(log)}"
        )
    return result


def _start(owner: pwd.struct_passwd | None, bindir: Path, data: Path, log: Path, base: Path) -> int:
    """Start on a free port, trying another one if the port was taken meanwhile."""
    for attempt in range(3):
        port = _free_port()
        seen = log.stat().st_size if log.exists() else 0
        result = _run_as(
            owner,
            [str(bindir / "pg_ctl"), "start", "-w", "-t", "60", *_pg_ctl_args(data, log, port)],
            cwd=base,
            what="start",
            log=log,
            check=False,
        )
        if result.returncode == 0:
            return port
        if "could not bind" not in _log_since(log, seen) or attempt == 2:
            raise RuntimeError(
                f"PostgreSQL start failed (exit {result.returncode}): "
                f"{(result.stdout + result.stderr).strip()}{_log_tail(log)}"
            )
    raise AssertionError("unreachable")


def _pg_ctl_args(data: Path, log: Path, port: int) -> list[str]:
    return ["-D", str(data), "-l", str(log), "-o", f"-p {port}"]


def _stop(owner: pwd.struct_passwd | None, bindir: Path, data: Path) -> None:
    pid_file = data / "postmaster.pid"
    if not pid_file.exists():
        return
    with suppress(RuntimeError):  # a failed stop falls through to the kill below
        _run_as(
            owner,
            [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "-t", "30", "stop"],
            cwd=data.parent,
            what="stop",
            timeout=60,
        )
    # Last resort if pg_ctl could not stop it: kill the postmaster (its backends follow).
    try:
        pid = int(pid_file.read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return
    if not _alive(pid) or not _is_postgres(pid):
        return  # a stale pid file: never signal a process that is not ours
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    """Whether the process runs; a zombie (dead, not yet reaped by its parent) does not."""
    if not Path("/proc/self").exists():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except OSError:
            return True  # exists, but not ours to signal
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _is_postgres(pid: int) -> bool:
    try:
        return "postgres" in Path(f"/proc/{pid}/comm").read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # no procfs: trust the pid file
    except OSError:
        return False


def _log_since(log: Path, offset: int) -> str:
    try:
        with open(log, encoding="utf-8", errors="replace") as f:
            f.seek(offset)
            return f.read()
    except OSError:
        return ""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _log_tail(log: Path | None, lines: int = 30) -> str:
    if log is None or not log.exists():
        return ""
    tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    return f"\n--- last lines of {log} ---\n" + "\n".join(tail)
