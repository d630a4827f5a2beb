"""A throwaway PostgreSQL server in a temporary directory, for the tests and benchmarks.

Set ``LITESTATE_POSTGRES_URL`` (a SQLAlchemy URL, e.g.
``postgresql+psycopg://user@host/db``) to use a server of your own instead; it must be
a database the tests may fill and empty.

:class:`PostgresServer` is the server itself, for a test that must stop or restart one
(the fault tests): a second, private server, so the shared one stays up.
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
from collections.abc import Iterator

URL_ENV = "LITESTATE_POSTGRES_URL"


class ServerUnavailable(RuntimeError):
    """No PostgreSQL server could be started here."""


def _pg_bin(name: str) -> str:
    for candidate in [shutil.which(name), *sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                                                   reverse=True)]:
        if candidate:
            return candidate
    raise ServerUnavailable(f"{name} not found on PATH or in /usr/lib/postgresql/*/bin")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _account() -> pwd.struct_passwd | None:
    """PostgreSQL refuses to run as root: the unprivileged account to run it as."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise ServerUnavailable("running as root and no 'postgres' or 'nobody' account")


class PostgresServer:
    """One server in a new temporary directory, on a free port kept across restarts."""

    def __init__(self, **settings: str) -> None:
        """``settings``: server settings over the defaults (which trade durability for
        speed: ``synchronous_commit="on"`` keeps every commit across ``stop("immediate")``)."""
        self._settings = {"fsync": "off", "synchronous_commit": "off",
                          "full_page_writes": "off", "max_connections": "120", **settings}
        self._initdb, self._pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        self._account = _account()
        self._tmp = tempfile.mkdtemp(prefix="litestate-pg-")
        if self._account is not None:
            os.chown(self._tmp, self._account.pw_uid, self._account.pw_gid)
        self._data = os.path.join(self._tmp, "data")
        self._log = os.path.join(self._tmp, "server.log")
        self.port = free_port()
        #: The SQLAlchemy URL (psycopg) of its ``postgres`` database.
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *cmd: str) -> None:
        account = self._account
        done = subprocess.run(
            cmd, cwd=self._tmp, capture_output=True, text=True, check=False,
            user=None if account is None else account.pw_uid,
            group=None if account is None else account.pw_gid,
            extra_groups=None if account is None else [])
        if done.returncode:
            detail = done.stderr.strip() or done.stdout.strip()
            if os.path.exists(self._log):
                with open(self._log) as f:
                    detail += "\n" + f.read()[-2000:]
            raise ServerUnavailable(f"{' '.join(cmd[:2])} failed: {detail}")

    def init(self) -> None:
        self._run(self._initdb, "-D", self._data, "-U", "postgres", "--auth=trust", "-E",
                  "UTF8", "--no-sync")

    def start(self) -> None:
        """Start it and wait until it accepts connections."""
        options = " ".join([f"-p {self.port} -k {self._tmp} -c listen_addresses=127.0.0.1",
                            *(f"-c {name}={value}" for name, value in self._settings.items())])
        self._run(self._pg_ctl, "-D", self._data, "-l", self._log, "-o", options, "-w",
                  "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """``fast``: sessions are terminated (SQLSTATE 57P01), committed work is kept;
        ``immediate``: the server quits at once, as in a crash, and recovers at start."""
        self._run(self._pg_ctl, "-D", self._data, "-m", mode, "-w", "stop")

    def restart(self, mode: str = "fast") -> None:
        """Stop and start again on the same port: every open connection is broken."""
        self.stop(mode)
        self.start()

    def remove(self) -> None:
        """Stop it if running and delete its directory."""
        with contextlib.suppress(ServerUnavailable):
            self.stop("immediate")
        shutil.rmtree(self._tmp, ignore_errors=True)


@contextlib.contextmanager
def running_server(**settings: str) -> Iterator[PostgresServer]:
    """A fresh server of this process's own (never ``$LITESTATE_POSTGRES_URL``'s)."""
    server = PostgresServer(**settings)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.remove()


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Yield the URL of a fresh server (or of ``$LITESTATE_POSTGRES_URL``); stop it after."""
    url = os.environ.get(URL_ENV)
    if url:
        yield url
        return
    with running_server() as server:
        yield server.url
