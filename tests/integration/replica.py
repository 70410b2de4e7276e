"""A throwaway primary and its streaming standby, from the PostgreSQL binaries installed here.

``initdb`` a primary, ``pg_basebackup -R`` a standby from it, and start both, each on a Unix
socket in a directory of its own (no TCP port to clash with another run). As root, the servers
run as the ``postgres`` user, since PostgreSQL refuses to run as root. Nothing touches the
server the rest of the suite uses.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

BIN_GLOB = "/usr/lib/postgresql/*/bin"
SETTINGS = """
listen_addresses = ''
unix_socket_directories = '{socket}'
port = {port}
fsync = off
full_page_writes = off
shared_buffers = 16MB
max_connections = 40
wal_level = replica
max_wal_senders = 4
hot_standby = on
"""
PRIMARY_PORT = 5432
STANDBY_PORT = 5433


@dataclass(frozen=True)
class Pair:
    """A running primary and standby: their DSNs."""

    primary: str
    standby: str

    def caught_up(self, timeout: float = 15.0) -> None:
        """Wait until the standby replayed everything the primary wrote so far."""
        with psycopg.connect(self.primary, autocommit=True) as conn:
            row = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()
        assert row is not None
        target = row[0]
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.standby, autocommit=True) as conn:
            while True:
                found = conn.execute(
                    "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)
                ).fetchone()
                if found and found[0]:
                    return
                if time.monotonic() > deadline:
                    raise AssertionError(f"the standby did not replay up to {target}")
                time.sleep(0.02)

    @contextlib.contextmanager
    def replay_paused(self) -> Iterator[None]:
        """The standby stops applying WAL: what the primary writes meanwhile is not seen there."""
        self.caught_up()
        with psycopg.connect(self.standby, autocommit=True) as conn:
            conn.execute("SELECT pg_wal_replay_pause()")
            try:
                yield
            finally:
                conn.execute("SELECT pg_wal_replay_resume()")


def binaries() -> Path | None:
    """The newest installed PostgreSQL bin directory that has what a pair needs."""
    found = sorted(
        (Path(p) for p in glob.glob(BIN_GLOB)),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    for directory in reversed(found):
        if all((directory / b).is_file() for b in ("initdb", "pg_ctl", "pg_basebackup")):
            return directory
    return None


def server_user() -> str | None:
    """Who runs the servers: this user, or ``postgres`` as root (None if there is none)."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return None
    return "postgres"


@contextlib.contextmanager
def primary_and_standby(bindir: Path, user: str) -> Iterator[Pair]:
    """Start a primary and a standby streaming from it; stop and delete both afterwards."""
    root = Path(tempfile.mkdtemp(prefix="conveyor-replica-"))
    entry = pwd.getpwnam(user)
    as_user = {} if os.geteuid() != 0 else {"user": entry.pw_uid, "group": entry.pw_gid}
    os.chown(root, entry.pw_uid, entry.pw_gid)
    primary, standby, socket = root / "primary", root / "standby", root / "socket"

    def run(*args: str | Path) -> None:
        done = subprocess.run(
            [str(a) for a in args], capture_output=True, text=True, cwd=root, timeout=120,
            **as_user,  # type: ignore[arg-type]
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {done.stdout}{done.stderr}")

    started: list[Path] = []
    try:
        run("mkdir", "-m", "700", socket)
        run(bindir / "initdb", "-D", primary, "-U", "postgres", "--auth=trust", "--no-sync",
            "-E", "UTF8", "--no-instructions")  # fmt: skip
        with (primary / "postgresql.conf").open("a") as conf:
            conf.write(SETTINGS.format(socket=socket, port=PRIMARY_PORT))
        run(bindir / "pg_ctl", "-D", primary, "-l", root / "primary.log", "-w", "start")
        started.append(primary)
        run(bindir / "pg_basebackup", "-h", socket, "-p", str(PRIMARY_PORT), "-U", "postgres",
            "-D", standby, "-R", "-X", "stream", "-c", "fast", "--no-sync")  # fmt: skip
        with (standby / "postgresql.conf").open("a") as conf:
            conf.write(f"port = {STANDBY_PORT}\n")
        run(bindir / "pg_ctl", "-D", standby, "-l", root / "standby.log", "-w", "start")
        started.append(standby)
        yield Pair(
            primary=f"postgresql://postgres@/postgres?host={socket}&port={PRIMARY_PORT}",
            standby=f"postgresql://postgres@/postgres?host={socket}&port={STANDBY_PORT}",
        )
    finally:
        for data in reversed(started):
            with contextlib.suppress(Exception):
                run(bindir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)
