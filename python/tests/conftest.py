"""Fixtures shared by the suite: a fresh store of every kind (``store``), and a private
redis-server on a free loopback port for the ``redis://`` store."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

STORES = ["mem", "shm", "sqlite", "redis", "postgres"]

# The PostgreSQL server of the postgres tests (scripts/test-deps makes sure it runs).
POSTGRES = os.environ.get("LOCKSMITH_POSTGRES_URL") or "postgres://postgres@127.0.0.1:5432/test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A redis-server of this test session (or ``LOCKSMITH_REDIS_URL``)."""
    given = os.environ.get("LOCKSMITH_REDIS_URL")
    if given:
        yield given
        return
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("the redis tests need redis-server (scripts/test-deps installs it)")
    for _attempt in range(5):
        port = _free_port()
        proc = subprocess.Popen(
            [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.02)
        if proc.poll() is None:
            break
    else:
        pytest.fail("redis-server did not start")
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def make_url(kind: str, tmp_path, request) -> str:
    """A new, empty store of `kind`; its files are removed at the end of the test."""
    unique = uuid.uuid4().hex[:12]
    if kind == "mem":
        return f"mem:t{unique}"
    if kind == "shm":
        name = f"locksmith-pytest-{unique}"
        request.addfinalizer(lambda: _unlink_shm(name))
        return f"shm:{name}?capacity=1024&arena=4M"
    if kind == "sqlite":
        return f"sqlite:{tmp_path}/store-{unique}.sqlite"
    if kind == "redis":
        base = request.getfixturevalue("redis_url")
        return f"{base}?prefix=t{unique}:"
    if kind == "postgres":
        schema = f"lspy_{unique}"
        request.addfinalizer(lambda: _drop_schema(schema))
        sep = "&" if "?" in POSTGRES else "?"
        return f"{POSTGRES}{sep}schema={schema}"
    raise AssertionError(kind)


def _drop_schema(schema: str) -> None:
    """Drops a test's PostgreSQL schema (psql comes with the server's packages)."""
    subprocess.run(
        ["psql", "-q", "-v", "ON_ERROR_STOP=1", "-d", POSTGRES.split("?")[0],
         "-c", f"DROP SCHEMA IF EXISTS {schema} CASCADE"],
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=60,
    )


def _unlink_shm(name: str) -> None:
    try:
        os.unlink(f"/dev/shm/{name}")
    except FileNotFoundError:
        pass


@pytest.fixture(params=STORES)
def store(request, tmp_path) -> str:
    """The URL of a new, empty store: one of mem (named, so that it is shared by the
    objects of this process), shm, sqlite, redis and postgres."""
    return make_url(request.param, tmp_path, request)


@pytest.fixture(params=["shm", "sqlite", "redis", "postgres"])
def shared_store(request, tmp_path) -> str:
    """A new, empty store that several processes share."""
    return make_url(request.param, tmp_path, request)
