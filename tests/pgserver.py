"""A throwaway PostgreSQL server in a temporary directory, for the tests and benchmarks.

Set ``LITESTATE_POSTGRES_URL`` (a SQLAlchemy URL, e.g.
``postgresql+psycopg://user@host/db``) to use a server of your own instead; it must be
a database the tests may fill and empty.
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Yield the URL of a fresh server (or of ``$LITESTATE_POSTGRES_URL``); stop it after."""
    url = os.environ.get(URL_ENV)
    if url:
        yield url
        return
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    # PostgreSQL refuses to run as root: run it as an unprivileged account.
    account = None
    if os.geteuid() == 0:
        for name in ("postgres", "nobody"):
            with contextlib.suppress(KeyError):
                account = pwd.getpwnam(name)
                break
        if account is None:
            raise ServerUnavailable("running as root and no 'postgres' or 'nobody' account")
    tmp = tempfile.mkdtemp(prefix="litestate-pg-")
    if account is not None:
        os.chown(tmp, account.pw_uid, account.pw_gid)
    data, log, port = os.path.join(tmp, "data"), os.path.join(tmp, "server.log"), _free_port()

    def run(*cmd: str) -> None:
        done = subprocess.run(
            cmd, cwd=tmp, capture_output=True, text=True, check=False,
            user=None if account is None else account.pw_uid,
            group=None if account is None else account.pw_gid,
            extra_groups=None if account is None else [])
        if done.returncode:
            detail = done.stderr.strip() or done.stdout.strip()
            if os.path.exists(log):
                with open(log) as f:
                    detail += "\n" + f.read()[-2000:]
            raise ServerUnavailable(f"{' '.join(cmd[:2])} failed: {detail}")

    try:
        run(initdb, "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = (f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=120")
        run(pg_ctl, "-D", data, "-l", log, "-o", options, "-w", "-t", "60", "start")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        with contextlib.suppress(ServerUnavailable):
            run(pg_ctl, "-D", data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(tmp, ignore_errors=True)
