"""A throwaway MariaDB server in a temporary directory, for the tests.

Set ``LITESTATE_MARIADB_URL`` (a SQLAlchemy URL, e.g.
``mysql+pymysql://user:password@host/db``) to use a server of your own instead; it must
be a database the tests may fill and empty, on an account that may create databases (the
README's examples get one of their own) and read ``information_schema.innodb_trx`` (the
PROCESS privilege: the concurrency tests ask it who waits on a lock).

The server is Debian's ``mariadb-server`` (``mariadb-install-db`` and ``mariadbd``),
started with ``--no-defaults`` as an unprivileged account (mariadbd refuses root), bound
to 127.0.0.1 on a free port, with InnoDB (the default engine) and utf8mb4 under a
case-insensitive collation, as most MariaDB and MySQL servers are set up.

:class:`MariaServer` is the server itself, for a test that must stop or restart one (the
fault tests): a second, private server, so the shared one stays up.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa

from tests.pgserver import free_port

URL_ENV = "LITESTATE_MARIADB_URL"
DATABASE, USER, PASSWORD = "litestate", "litestate", "litestate"


class ServerUnavailable(RuntimeError):
    """No MariaDB server could be started here."""


def _bin(*names: str) -> str:
    for name in names:
        for candidate in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
            if candidate and os.access(candidate, os.X_OK):
                return candidate
    raise ServerUnavailable(f"none of {', '.join(names)} found (apt-get install mariadb-server)")


def _account() -> pwd.struct_passwd | None:
    """The unprivileged account to run as when we are root (else None: run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("mysql", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise ServerUnavailable("running as root and no 'mysql' or 'nobody' account")


# Run by mariadb-install-db after it made the system tables: the tests' database and
# account (ALL on *.*: the README's test makes a database of its own, XA needs more).
# The bootstrap runs without grant tables; FLUSH PRIVILEGES loads them.
_SETUP = f"""
FLUSH PRIVILEGES;
CREATE DATABASE {DATABASE} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
CREATE USER '{USER}'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}';
GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'127.0.0.1';
"""

_OPTIONS = (
    "--bind-address=127.0.0.1", "--skip-name-resolve", "--skip-log-bin",
    "--character-set-server=utf8mb4", "--collation-server=utf8mb4_unicode_ci",
    "--default-storage-engine=InnoDB", "--max-connections=120",
    # A throwaway server: no durability, a small footprint.
    "--innodb-flush-log-at-trx-commit=0", "--innodb-doublewrite=0", "--sync-binlog=0",
    "--innodb-buffer-pool-size=64M", "--innodb-log-file-size=16M",
    "--performance-schema=OFF", "--skip-innodb-adaptive-hash-index",
)


class MariaServer:
    """One server in a new temporary directory, on a free port kept across restarts (for
    a test that must stop or restart one: a second, private server)."""

    def __init__(self, *options: str) -> None:
        """``options``: mariadbd options after the defaults (which trade durability for
        speed: ``--innodb-flush-log-at-trx-commit=1`` keeps every commit across a kill)."""
        self._options = (*_OPTIONS, *options)
        self._install_db = _bin("mariadb-install-db", "mysql_install_db")
        self._mariadbd = _bin("mariadbd", "mysqld")
        self._account = _account()
        self._tmp = tempfile.mkdtemp(prefix="litestate-maria-")
        if self._account is not None:
            os.chown(self._tmp, self._account.pw_uid, self._account.pw_gid)
        self._data = os.path.join(self._tmp, "data")
        self._log = os.path.join(self._tmp, "server.log")
        self._server: subprocess.Popen[bytes] | None = None
        self.port = free_port()
        #: The SQLAlchemy URL (PyMySQL) of the tests' database, as the tests' account.
        self.url = (f"mysql+pymysql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{DATABASE}"
                    "?charset=utf8mb4")

    def _as_account(self) -> dict[str, Any]:
        account = self._account
        if account is None:
            return {}
        return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}

    def init(self) -> None:
        """The system tables, the tests' database and account."""
        setup = os.path.join(self._tmp, "setup.sql")
        with open(setup, "w") as f:
            f.write(_SETUP)
        done = subprocess.run(
            [self._install_db, "--no-defaults", f"--datadir={self._data}", "--skip-test-db",
             "--auth-root-authentication-method=normal", f"--extra-file={setup}",
             "--skip-name-resolve", "--innodb-log-file-size=16M"],
            cwd=self._tmp, capture_output=True, text=True, check=False, **self._as_account())
        if done.returncode:
            raise ServerUnavailable(
                f"mariadb-install-db failed: {(done.stderr or done.stdout).strip()[-2000:]}")

    def start(self) -> None:
        """Start it and wait until the tests' account can connect."""
        with open(self._log, "ab") as out:  # its log is its stderr: the file opened here
            self._server = subprocess.Popen(
                [self._mariadbd, "--no-defaults", f"--datadir={self._data}",
                 f"--socket={os.path.join(self._tmp, 'mysqld.sock')}", f"--port={self.port}",
                 f"--pid-file={os.path.join(self._tmp, 'mysqld.pid')}", *self._options],
                cwd=self._tmp, stdout=out, stderr=subprocess.STDOUT, **self._as_account())
        _wait_ready(self._server, self.url, self._log)

    def stop(self, mode: str = "fast") -> None:
        """``fast``: a clean shutdown (SIGTERM: sessions are killed, committed work is
        kept); ``immediate``: killed at once, as in a crash (SIGKILL), InnoDB recovers at
        start."""
        server, self._server = self._server, None
        if server is None or server.poll() is not None:
            return
        if mode == "fast":
            server.terminate()
        else:
            server.kill()
        server.wait(timeout=60)

    def restart(self, mode: str = "fast") -> None:
        """Stop and start again on the same port: every open connection is broken."""
        self.stop(mode)
        self.start()

    def remove(self) -> None:
        """Stop it if running (throwaway data: no clean shutdown) and delete its directory."""
        self.stop("immediate")
        shutil.rmtree(self._tmp, ignore_errors=True)


@contextlib.contextmanager
def running_server(*options: str) -> Iterator[MariaServer]:
    """A fresh server of this process's own (never ``$LITESTATE_MARIADB_URL``'s)."""
    server = MariaServer(*options)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.remove()


@contextlib.contextmanager
def mariadb_server() -> Iterator[str]:
    """Yield the URL of a fresh server (or of ``$LITESTATE_MARIADB_URL``); stop it after."""
    url = os.environ.get(URL_ENV)
    if url:
        yield url
        return
    with running_server() as server:
        yield server.url


def _wait_ready(server: subprocess.Popen[bytes], url: str, log: str) -> None:
    """Until the tests' account can connect (60 s at most), or the server died."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool,
                              connect_args={"connect_timeout": 2})
    deadline = time.monotonic() + 60
    try:
        while True:
            if server.poll() is not None:
                raise ServerUnavailable(
                    f"mariadbd exited with {server.returncode}:\n{_tail(log)}")
            try:
                engine.connect().close()
                return
            except sa.exc.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise ServerUnavailable(f"mariadbd did not accept connections: {exc}\n"
                                            f"{_tail(log)}") from None
            time.sleep(0.1)  # polling a starting server, not waiting on a race
    finally:
        engine.dispose()


def _tail(log: str) -> str:
    try:
        with open(log, errors="replace") as f:
            return f.read()[-2000:]
    except OSError:
        return ""
