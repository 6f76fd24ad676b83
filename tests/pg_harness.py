"""A real PostgreSQL server for the tests, started from Debian's ``postgresql`` package (which
``make postgresql`` installs): ``initdb`` into a temporary directory, the server on a unix socket
and a loopback port, as the ``postgres`` user when the tests run as root (PostgreSQL refuses to
run as root). No containers."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Yields a ``postgresql://`` URL of a fresh, empty database; stops the server after."""
    bindir = pg_bin()
    if bindir is None:
        pytest.fail(
            "PostgreSQL is not installed: run `make postgresql` (apt-get install postgresql)"
        )
    root = Path(tempfile.mkdtemp(prefix="moakit-pg-"))
    data, sockdir = root / "data", root / "sock"
    sockdir.mkdir()
    user: str | None = None
    if os.geteuid() == 0:
        user = "postgres"
        entry = pwd.getpwnam(user)
        for path in (root, sockdir):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    port = _free_port()
    run = {"user": user, "check": True, "capture_output": True}
    subprocess.run(
        [
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "moakit",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ],
        **run,  # type: ignore[arg-type]
    )
    server = subprocess.Popen(
        [
            str(bindir / "postgres"),
            "-D",
            str(data),
            "-p",
            str(port),
            "-k",
            str(sockdir),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "max_connections=200",
        ],
        user=user,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"postgresql://moakit@127.0.0.1:{port}/postgres"
    try:
        deadline = time.monotonic() + 30
        while True:
            ready = subprocess.run(
                [str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                capture_output=True,
            )
            if ready.returncode == 0:
                break
            if server.poll() is not None or time.monotonic() > deadline:
                err = server.stderr.read().decode() if server.stderr else ""
                pytest.fail(f"PostgreSQL did not start: {err[-2000:]}")
            time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(root, ignore_errors=True)


def fresh_database(url: str, name: str) -> str:
    """A new empty database on the server of ``url``; its URL."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        db.execute(f'DROP DATABASE IF EXISTS "{name}"')
        db.execute(f'CREATE DATABASE "{name}"')
    return url.rsplit("/", 1)[0] + "/" + name
