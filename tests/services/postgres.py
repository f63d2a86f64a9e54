"""A throwaway PostgreSQL 15 cluster, one fresh database per test."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
import weakref
from pathlib import Path
from types import TracebackType
from typing import Self

from .base import HOST, START_TIMEOUT, STOP_TIMEOUT, ServiceError, free_port, port_accepts, tail, wait_until

PG_BINDIR = Path("/usr/lib/postgresql/15/bin")
# PostgreSQL refuses to run as root; CI runs as root, so the server runs as this system user.
PG_USER = "petstore-test"


def _ensure_pg_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(PG_USER)
    except KeyError:
        pass
    result = subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        # Another test process may have created the user at the same moment: trust the lookup.
        return pwd.getpwnam(PG_USER)
    except KeyError:
        raise ServiceError(f"could not create system user {PG_USER}: {result.stderr.strip()}") from None


def _pg_stop(argv_prefix: list[str], bindir: Path, data: Path, workdir: Path) -> None:
    """Finalizer for PostgreSQL: fast shutdown if a postmaster is still up, then remove the files."""
    if (data / "postmaster.pid").exists():
        subprocess.run(
            [*argv_prefix, str(bindir / "pg_ctl"), "stop", "-D", str(data), "-m", "immediate", "-w"],
            capture_output=True,
            check=False,
            cwd=workdir,
        )
    shutil.rmtree(workdir, ignore_errors=True)


class PostgresServer:
    """Debian's PostgreSQL 15 in a throwaway cluster: loopback only, trust auth, fsync off.

    As root, the cluster belongs to the system user `petstore-test` (created if missing) and the
    binaries run through `runuser`. Each test gets its own database from `create_database()`.
    """

    superuser = "postgres"

    def __init__(self, port: int | None = None, bindir: Path = PG_BINDIR) -> None:
        self.bindir = bindir
        if not (bindir / "initdb").exists():
            raise ServiceError(f"PostgreSQL 15 is not installed ({bindir}/initdb): run scripts/test, which installs it")
        self.port = port if port is not None else free_port()
        self._as_user: list[str] = []
        owner: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            owner = _ensure_pg_user()
            self._as_user = ["runuser", "-u", PG_USER, "--"]
        self.workdir = Path(tempfile.mkdtemp(prefix="petstore-test-pg-"))
        if owner is not None:
            os.chown(self.workdir, owner.pw_uid, owner.pw_gid)
        self.data = self.workdir / "data"
        self.socket_dir = self.workdir
        self.log_path = self.workdir / "postgres.log"
        self._initialised = False
        self._finalizer = weakref.finalize(self, _pg_stop, self._as_user, self.bindir, self.data, self.workdir)

    def _run(self, tool: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        argv = [*self._as_user, str(self.bindir / tool), *args]
        try:
            result = subprocess.run(
                argv, capture_output=True, text=True, check=False, cwd=self.workdir, timeout=timeout
            )
        except subprocess.TimeoutExpired as exc:
            raise ServiceError(f"{tool} did not finish in {timeout:g}s; last log lines:\n{self.logtail()}") from exc
        if result.returncode != 0:
            raise ServiceError(
                f"{tool} {' '.join(args)} failed with status {result.returncode}:\n{result.stdout}{result.stderr}\n"
                f"last log lines:\n{self.logtail()}"
            )
        return result

    def logtail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists() and port_accepts(self.port)

    def start(self) -> Self:
        if not self._initialised:
            self._run(
                "initdb", "-D", str(self.data), "-U", self.superuser, "--auth=trust", "--encoding=UTF8",
                "--locale=C", "--no-sync",
            )  # fmt: skip
            self._initialised = True
        options = " ".join([
            f"-c listen_addresses={HOST}",
            f"-p {self.port}",
            f"-c unix_socket_directories={self.socket_dir}",
            # Durability buys nothing for a cluster deleted after the run; speed does.
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            "-c max_connections=200",
        ])  # fmt: skip
        self._run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.log_path), "-o", options, "-w", "-t", "60")
        try:
            wait_until(lambda: port_accepts(self.port), START_TIMEOUT, f"PostgreSQL on port {self.port}")
        except TimeoutError as exc:
            raise ServiceError(f"{exc}; last log lines:\n{self.logtail()}") from None
        return self

    def stop(self) -> None:
        """Fast shutdown: open sessions are disconnected, the port is free when this returns."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", str(int(STOP_TIMEOUT)))

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self._finalizer()

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq / asyncpg URL, e.g. for `asyncpg.connect`."""
        return f"postgresql://{self.superuser}@{HOST}:{self.port}/{dbname}"

    def async_url(self, dbname: str = "postgres") -> str:
        """A SQLAlchemy URL for the asyncpg driver, the form `PETSTORE_DATABASE_URL` takes."""
        return f"postgresql+asyncpg://{self.superuser}@{HOST}:{self.port}/{dbname}"

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run SQL through psql over the unix socket and return its unaligned output."""
        result = self._run(
            "psql", "-h", str(self.socket_dir), "-p", str(self.port), "-U", self.superuser, "-d", dbname,
            "-v", "ON_ERROR_STOP=1", "-X", "-q", "-A", "-t", "-c", sql,
        )  # fmt: skip
        return result.stdout.strip()

    def create_database(self, prefix: str = "test") -> str:
        """Create an empty database with a unique name and return the name."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self.psql(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting whoever is still connected to it."""
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
