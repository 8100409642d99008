"""Start a throwaway PostgreSQL server (initdb + pg_ctl) on loopback for the tests."""

from __future__ import annotations

import glob
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

__all__ = [
    "PostgresNotAvailableError",
    "create_database",
    "find_postgres_bin",
    "pg_available",
    "start_postgres",
]

_PG_BIN_ENV = "STEADYCHAT_PG_BIN"
_PG_USER_ENV = "STEADYCHAT_PG_USER"
_APT_HINT = "install the Debian package 'postgresql' (apt-get install -y postgresql)"


class PostgresNotAvailableError(RuntimeError):
    """The PostgreSQL server binaries (initdb, pg_ctl) cannot be found or cannot run."""


def find_postgres_bin() -> Path | None:
    """Find the folder holding ``initdb`` and ``pg_ctl``.

    Looks at ``$STEADYCHAT_PG_BIN``, then the newest ``/usr/lib/postgresql/*/bin`` (Debian's
    layout, where the server binaries are not on ``PATH``), then ``PATH``.

    Returns:
        The folder, or None when no server binaries are installed.
    """
    candidates: list[Path] = []
    if env := os.environ.get(_PG_BIN_ENV):
        candidates.append(Path(env))
    debian = glob.glob("/usr/lib/postgresql/*/bin")
    debian.sort(key=lambda p: _version_key(Path(p).parent.name), reverse=True)
    candidates.extend(Path(p) for p in debian)
    if on_path := shutil.which("initdb"):
        candidates.append(Path(on_path).parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def pg_available() -> bool:
    """Tell whether PostgreSQL server binaries are installed on this machine.

    Returns:
        True when ``initdb`` and ``pg_ctl`` were found (see ``find_postgres_bin``).
    """
    return find_postgres_bin() is not None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_user() -> pwd.struct_passwd | None:
    """The account the server runs as: None means the current one.

    PostgreSQL refuses to run as root, so root hands the server to an unprivileged account.
    """
    if os.geteuid() != 0:
        return None
    name = os.environ.get(_PG_USER_ENV, "postgres")
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise PostgresNotAvailableError(
            f"running as root, PostgreSQL needs an unprivileged account to run the server as; "
            f"user {name!r} does not exist (set ${_PG_USER_ENV} to another one, or {_APT_HINT}, "
            f"which creates 'postgres')"
        ) from None


def _run(args: list[str], *, user: pwd.struct_passwd | None, log: Path | None = None) -> None:
    """Run a server tool, as ``user`` when given, and turn a failure into a readable error."""
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    if user is not None:
        env["HOME"] = user.pw_dir
    done = subprocess.run(
        args,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        check=False,
        user=user.pw_uid if user is not None else None,
        group=user.pw_gid if user is not None else None,
        extra_groups=[] if user is not None else None,
    )
    if done.returncode != 0:
        server_log = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
        raise PostgresNotAvailableError(
            f"{Path(args[0]).name} failed with exit code {done.returncode}:\n"
            f"{done.stdout[-2000:]}{done.stderr[-2000:]}{server_log}"
        )


@contextmanager
def start_postgres(
    tmpdir: str | os.PathLike[str] | None = None, *, database: str = "postgres"
) -> Iterator[str]:
    """Start a throwaway PostgreSQL server and yield its DSN; stop it and delete it at exit.

    The server listens on 127.0.0.1 on a free port, keeps its unix socket beside its data
    folder, trusts local connections (user ``postgres``, no password) and runs without fsync
    (data does not need to survive a crash). As root it runs as the ``postgres`` account
    (or ``$STEADYCHAT_PG_USER``).

    Args:
        tmpdir: Folder to create the server's folder in. As root, a folder of the system temp
            dir is used instead when ``tmpdir`` is not reachable by the server account (pytest's
            per-user temp dirs are private to root).
        database: Database the DSN names (``postgres`` always exists; others are created).

    Yields:
        A libpq URL such as ``postgresql://postgres@127.0.0.1:54321/postgres``.

    Raises:
        PostgresNotAvailableError: The binaries are missing or the server does not start.
    """
    bindir = find_postgres_bin()
    if bindir is None:
        raise PostgresNotAvailableError(
            f"PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin, "
            f"${_PG_BIN_ENV} or PATH; {_APT_HINT}"
        )
    user = _server_user()
    parent = Path(tmpdir) if tmpdir is not None else None
    if user is not None and parent is not None and not _reachable_by(parent, user):
        parent = None
    base = Path(tempfile.mkdtemp(prefix="scpg-", dir=parent))
    data, log = base / "data", base / "server.log"
    if user is not None:
        os.chown(base, user.pw_uid, user.pw_gid)
    started = False
    try:
        _run(
            [
                str(bindir / "initdb"),
                "--pgdata",
                str(data),
                "--username",
                "postgres",
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
            user=user,
        )
        for attempt in range(3):
            port = _free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -p {port} -k {shlex.quote(str(base))} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                "-c max_connections=100"
            )
            try:
                _run(
                    [
                        str(bindir / "pg_ctl"),
                        "--pgdata",
                        str(data),
                        "--log",
                        str(log),
                        "--options",
                        options,
                        "--wait",
                        "--timeout",
                        "60",
                        "start",
                    ],
                    user=user,
                    log=log,
                )
            except PostgresNotAvailableError:
                # Another process may have taken the port between the probe and the bind.
                if attempt == 2:
                    raise
                continue
            started = True
            break
        dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        if database != "postgres":
            dsn = create_database(dsn, database)
        yield dsn
    finally:
        if started:
            _run(
                [str(bindir / "pg_ctl"), "--pgdata", str(data), "--mode", "immediate", "stop"],
                user=user,
            )
        shutil.rmtree(base, ignore_errors=True)


def _reachable_by(folder: Path, user: pwd.struct_passwd) -> bool:
    """Whether every folder down to ``folder`` lets ``user`` through (world or group x bit)."""
    for part in [folder.resolve(), *folder.resolve().parents]:
        try:
            st = part.stat()
        except OSError:
            return False
        if st.st_uid == user.pw_uid:
            continue
        if st.st_gid == user.pw_gid and st.st_mode & 0o010:
            continue
        if not st.st_mode & 0o001:
            return False
    return True


def create_database(dsn: str, name: str | None = None) -> str:
    """Create a fresh, empty database on the server of ``dsn`` and return its DSN.

    Args:
        dsn: A ``postgresql://`` URL of any database on the server (only used to connect).
        name: Name of the new database; a unique one when None.

    Returns:
        ``dsn`` with its database name replaced by the new one.

    Raises:
        ValueError: ``name`` is not a plain identifier (letters, digits, underscores).
    """
    import psycopg
    from psycopg import sql

    name = name or f"t_{uuid.uuid4().hex[:16]}"
    if not name.replace("_", "").isalnum():
        raise ValueError(f"database name must be letters, digits and underscores, not {name!r}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return urlsplit(dsn)._replace(path=f"/{name}").geturl()
