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
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import sqlalchemy as sa

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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


@contextlib.contextmanager
def mariadb_server() -> Iterator[str]:
    """Yield the URL of a fresh server (or of ``$LITESTATE_MARIADB_URL``); stop it after."""
    url = os.environ.get(URL_ENV)
    if url:
        yield url
        return
    install_db, mariadbd = _bin("mariadb-install-db", "mysql_install_db"), \
        _bin("mariadbd", "mysqld")
    account = _account()
    tmp = tempfile.mkdtemp(prefix="litestate-maria-")
    if account is not None:
        os.chown(tmp, account.pw_uid, account.pw_gid)
    data, log = os.path.join(tmp, "data"), os.path.join(tmp, "server.log")
    sock, port = os.path.join(tmp, "mysqld.sock"), _free_port()
    uid, gid = (None, None) if account is None else (account.pw_uid, account.pw_gid)
    extra_groups: list[int] | None = None if account is None else []
    server: subprocess.Popen[bytes] | None = None
    try:
        setup = os.path.join(tmp, "setup.sql")
        with open(setup, "w") as f:
            f.write(_SETUP)
        done = subprocess.run(
            [install_db, "--no-defaults", f"--datadir={data}", "--skip-test-db",
             "--auth-root-authentication-method=normal", f"--extra-file={setup}",
             "--skip-name-resolve", "--innodb-log-file-size=16M"],
            cwd=tmp, capture_output=True, text=True, check=False, user=uid, group=gid,
            extra_groups=extra_groups)
        if done.returncode:
            raise ServerUnavailable(
                f"mariadb-install-db failed: {(done.stderr or done.stdout).strip()[-2000:]}")
        with open(log, "wb") as out:
            server = subprocess.Popen(
                [mariadbd, "--no-defaults", f"--datadir={data}", f"--socket={sock}",
                 f"--port={port}", f"--pid-file={os.path.join(tmp, 'mysqld.pid')}",
                 *_OPTIONS],  # its log is its stderr: the file opened here
                cwd=tmp, stdout=out, stderr=subprocess.STDOUT, user=uid, group=gid,
                extra_groups=extra_groups)
        url = f"mysql+pymysql://{USER}:{PASSWORD}@127.0.0.1:{port}/{DATABASE}?charset=utf8mb4"
        _wait_ready(server, url, log)
    except BaseException:
        _stop(server)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        yield url
    finally:
        _stop(server)
        shutil.rmtree(tmp, ignore_errors=True)


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


def _stop(server: subprocess.Popen[bytes] | None) -> None:
    if server is None or server.poll() is not None:
        return
    server.kill()  # throwaway data: no clean shutdown needed
    server.wait(timeout=30)
