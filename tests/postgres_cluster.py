"""
A throw-away PostgreSQL cluster for the tests, and PostgresStore factories.

The session-scoped ``postgres_cluster`` fixture runs ``initdb`` and
``pg_ctl`` in a temporary directory (as the ``postgres`` system user when
the tests run as root, since ``initdb`` refuses root), listening on a free
port of 127.0.0.1 and on a unix socket, with durability turned off for
speed. When PostgreSQL cannot be started the tests that need it are
skipped, except under CI (``CI`` set), where they fail.
:func:`running_cluster` starts another one, for tests that restart their
server (:meth:`PostgresCluster.restart`, :meth:`PostgresCluster.stopped`).

``make_postgres_store`` gives a new, empty :class:`PostgresStore` per call:
each store lives in its own fresh schema of one shared test database, which
is much faster than a database per store.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pytest


if TYPE_CHECKING:
    from prebuilds.stores._postgres import PostgresStore

_SERVER_OPTIONS = (
    "-F -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    " -c max_connections=200"
)
_TEST_DATABASE = "prebuilds_test"


class ClusterUnavailableError(Exception):
    """PostgreSQL could not be found or started."""


def _find_bindir() -> Path:
    """Where ``initdb`` and ``pg_ctl`` live."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"],
                capture_output=True,
                text=True,
                check=True,
                timeout=30,
            ).stdout.strip()
            if out:
                candidates.append(Path(out))
    candidates.extend(
        Path(p)
        for p in sorted(
            glob.glob("/usr/lib/postgresql/*/bin"),  # noqa: PTH207
            key=_version_key,
            reverse=True,
        )
    )
    initdb = shutil.which("initdb")
    if initdb is not None:
        candidates.append(Path(initdb).resolve().parent)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    raise ClusterUnavailableError(
        "no PostgreSQL server binaries found (pg_config --bindir, "
        "/usr/lib/postgresql/*/bin, initdb on PATH)"
    )


def _version_key(path: str) -> tuple[int, ...]:
    version = Path(path).parent.name
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run_as_postgres(root: Path) -> list[str]:
    """
    The prefix that runs the server binaries as the ``postgres`` user when
    the tests run as root (initdb refuses root); *root* is given to that user.
    """
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if runuser is None:
        raise ClusterUnavailableError("running as root and runuser is missing")
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        raise ClusterUnavailableError(
            "running as root and there is no postgres system user"
        ) from None
    os.chown(root, user.pw_uid, user.pw_gid)
    return [runuser, "-u", "postgres", "--"]


@dataclass
class PostgresCluster:
    """A running throw-away cluster."""

    bindir: Path
    root: Path
    port: int
    prefix: list[str] = field(default_factory=list)
    #: The server's command-line options (``pg_ctl -o``).
    options: str = ""

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def socketdir(self) -> Path:
        return self.root / "socket"

    @property
    def logfile(self) -> Path:
        return self.root / "server.log"

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq connection string for *dbname* (over the unix socket)."""
        return f"host={self.socketdir} port={self.port} user=postgres dbname={dbname}"

    def tcp_dsn(self, dbname: str = "postgres") -> str:
        """A libpq connection string for *dbname* over TCP."""
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.prefix, *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )

    @classmethod
    def start(cls) -> PostgresCluster:
        """initdb and start a cluster, or raise ClusterUnavailableError."""
        bindir = _find_bindir()
        root = Path(tempfile.mkdtemp(prefix="prebuilds-pg-"))
        try:
            prefix = _run_as_postgres(root)
            root.chmod(0o700)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        cluster = cls(bindir=bindir, root=root, port=_free_port(), prefix=prefix)
        try:
            cluster._init_and_start()
        except BaseException:
            cluster.stop()  # a server that started late is stopped too
            raise
        return cluster

    def _init_and_start(self) -> None:
        init = self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.datadir),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        )
        if init.returncode != 0:
            raise ClusterUnavailableError(
                f"initdb failed ({init.returncode}): {init.stderr.strip()}"
            )
        mk = self._run("mkdir", "-p", str(self.socketdir))
        if mk.returncode != 0:
            raise ClusterUnavailableError(f"mkdir failed: {mk.stderr.strip()}")
        self.options = (
            f"{_SERVER_OPTIONS} -c listen_addresses=127.0.0.1 -p {self.port}"
            f" -k {self.socketdir}"
        )
        self._pg_ctl("-o", self.options, "start")

    def _pg_ctl(self, *args: str) -> None:
        """
        Run ``pg_ctl`` on the cluster, waiting (``-w``) for what it does:
        a start or restart returns once the server accepts connections.
        """
        done = self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.datadir),
            # The server's output goes to the log, never to our pipes (which
            # it would hold open).
            "-l",
            str(self.logfile),
            "-w",
            "-t",
            "60",
            *args,
        )
        if done.returncode != 0:
            log = ""
            with contextlib.suppress(OSError):
                log = self.logfile.read_text(errors="replace")[-2000:]
            raise ClusterUnavailableError(
                f"pg_ctl {' '.join(args)} failed ({done.returncode}): "
                f"{done.stderr.strip()} {log.strip()}"
            )

    def restart(self) -> None:
        """
        Restart the server as an operator would for maintenance (``pg_ctl
        restart -m fast``): every session is terminated; returns once the
        server accepts connections again.
        """
        self._pg_ctl("-m", "fast", "restart")

    @contextlib.contextmanager
    def stopped(self) -> Iterator[None]:
        """
        The server stopped (``pg_ctl stop -m fast``: every session is
        terminated) for the block, and started again after it; the start
        returns once the server accepts connections.
        """
        self._pg_ctl("-m", "fast", "stop")
        try:
            yield
        finally:
            self._pg_ctl("-o", self.options, "start")

    def stop(self) -> None:
        """Stop the server at once and remove its directory."""
        try:
            self._run(
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.datadir),
                "-m",
                "immediate",
                "-w",
                "stop",
            )
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def _admin_execute(dsn: str, statement: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(statement)


@contextlib.contextmanager
def running_cluster() -> Iterator[PostgresCluster]:
    """
    A new cluster for the block, removed after it; skips the test (fails it
    under CI) when PostgreSQL is not available.
    """
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError as e:  # pragma: no cover - the dev venv has them
        reason = f"psycopg is not installed: {e}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        cluster = PostgresCluster.start()
    except (ClusterUnavailableError, OSError, subprocess.SubprocessError) as e:
        reason = f"PostgreSQL is not available: {e}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A running PostgreSQL cluster for the whole session (skip or fail if none)."""
    with running_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def postgres_dsn(postgres_cluster: PostgresCluster) -> str:
    """The DSN of a database the tests share (stores use their own schemas)."""
    _admin_execute(
        postgres_cluster.dsn(), f"CREATE DATABASE {_TEST_DATABASE} TEMPLATE template0"
    )
    return postgres_cluster.dsn(_TEST_DATABASE)


def fresh_schema_name() -> str:
    """A schema name no other test uses."""
    return f"t_{uuid.uuid4().hex[:16]}"


class PostgresStoreFactory(Protocol):
    """Makes a new, empty PostgresStore (in a fresh schema unless one is named)."""

    def __call__(
        self, *, schema: str | None = None, **kwargs: Any
    ) -> PostgresStore: ...


@pytest.fixture
def make_postgres_store(postgres_dsn: str) -> Iterator[PostgresStoreFactory]:
    """
    A callable returning a new, empty PostgresStore each call.

    Each store gets a fresh schema (unless *schema* is given, to open a second
    store on the same data); stores are closed and schemas dropped at teardown.
    """
    from prebuilds.stores._postgres import PostgresStore

    stores: list[PostgresStore] = []
    schemas: set[str] = set()

    def make(*, schema: str | None = None, **kwargs: Any) -> PostgresStore:
        name = schema if schema is not None else fresh_schema_name()
        schemas.add(name)
        kwargs.setdefault("max_size", 8)
        store = PostgresStore(postgres_dsn, schema=name, **kwargs)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()
    # In batches: one DROP locks every object of its schemas, and a stateful
    # test may have made thousands (max_locks_per_transaction).
    names = sorted(schemas)
    for start in range(0, len(names), 25):
        batch = ", ".join(f'"{s}"' for s in names[start : start + 25])
        _admin_execute(postgres_dsn, f"DROP SCHEMA IF EXISTS {batch} CASCADE")


__all__: list[str] = [
    "ClusterUnavailableError",
    "PostgresCluster",
    "PostgresStoreFactory",
    "fresh_schema_name",
    "make_postgres_store",
    "postgres_cluster",
    "postgres_dsn",
    "running_cluster",
]
