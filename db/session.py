"""Database URL, engines and sessions; `init_db` upgrades a database to the latest schema.

`IAD_DATABASE_URL` selects the database: by default a SQLite file `$IAD_HOME/iad.sqlite` (WAL mode so
that the dashboard can read while workers write; foreign keys on; a busy timeout so that concurrent
writers wait instead of failing), or PostgreSQL via `postgresql+psycopg://user@host:5432/name` for teams.
All timestamps are naive UTC (SQLite has no time zones; PostgreSQL columns are `timestamp`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from ad_core.home import app_home

if TYPE_CHECKING:
    from alembic.config import Config

SQLITE_BUSY_TIMEOUT_MS = 30_000

_lock = threading.Lock()
# (pid, url) -> engine: a forked worker child must never reuse its parent's pooled connections.
_engines: dict[tuple[int, str], Engine] = {}
_migrated: set[tuple[int, str]] = set()


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def database_url() -> str:
    """`IAD_DATABASE_URL`, default `sqlite:///$IAD_HOME/iad.sqlite`."""
    url = os.environ.get("IAD_DATABASE_URL")
    if url:
        return url
    # Not created here: `make_engine` creates the SQLite file's folder when it first connects.
    return f"sqlite:///{app_home(create=False) / 'iad.sqlite'}"


def _on_sqlite_connect(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    # WAL + NORMAL is durable against application crashes (only an OS crash may lose the last commits).
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str) -> Engine:
    """A new engine for `url` with our SQLite pragmas; prefer `get_engine`, which caches per process."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        event.listen(engine, "connect", _on_sqlite_connect)
        return engine
    # pre_ping: workers idle for hours between jobs; a server restart must not fail the next job.
    return create_engine(url, pool_pre_ping=True)


def get_engine(url: str | None = None) -> Engine:
    url = url or database_url()
    key = (os.getpid(), url)
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = make_engine(url)
        return engine


def dispose_engine(url: str) -> None:
    """Close this process' pooled connections to `url` and forget it was migrated (tests drop databases)."""
    key = (os.getpid(), url)
    with _lock:
        engine = _engines.pop(key, None)
        _migrated.discard(key)
    if engine is not None:
        engine.dispose()


def reset_after_fork() -> None:
    """Call in a forked child: forget (without closing) the parent's pooled connections."""
    with _lock:
        for (pid, _), engine in list(_engines.items()):
            if pid != os.getpid():
                engine.dispose(close=False)
        _engines.clear()
        _migrated.clear()


@contextlib.contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """One transaction: commit on success, roll back on any exception."""
    maker = sessionmaker(get_engine(url), expire_on_commit=False)
    with maker.begin() as session:
        yield session


def alembic_config(url: str | None = None) -> Config:
    """Alembic config pointing at the packaged migrations; independent of the current directory."""
    from alembic.config import Config

    here = Path(__file__).resolve().parent
    config = Config(str(here / "alembic.ini"))
    config.set_main_option("script_location", str(here / "migrations"))
    config.set_main_option("sqlalchemy.url", (url or database_url()).replace("%", "%%"))
    return config


def current_revision(url: str | None = None) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with get_engine(url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


@contextlib.contextmanager
def _migration_lock(url: str) -> Iterator[None]:
    """Serialise `upgrade head` between processes (a worker and `iad up` may start at the same moment)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            yield
            return
        lock_path = Path(parsed.database).expanduser().with_suffix(".migrate.lock")
        with open(lock_path, "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
    elif parsed.get_backend_name() == "postgresql":
        from sqlalchemy import text

        with get_engine(url).connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(7412093)"))
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(7412093)"))
                conn.commit()
    else:
        yield


def init_db(url: str | None = None) -> Engine:
    """Upgrade the database at `url` (default `IAD_DATABASE_URL`) to the latest schema and return its engine.

    Cheap when already at head (one query), so every process may call it at startup.
    """
    from alembic import command

    url = url or database_url()
    key = (os.getpid(), url)
    engine = get_engine(url)
    if key in _migrated:
        return engine
    head = head_revision()
    if current_revision(url) != head:
        with _migration_lock(url):
            if current_revision(url) != head:  # another process may have migrated while we waited
                config = alembic_config(url)
                with engine.begin() as conn:
                    config.attributes["connection"] = conn
                    command.upgrade(config, "head")
    _migrated.add(key)
    return engine


def table_names(url: str | None = None) -> list[str]:
    return sorted(inspect(get_engine(url)).get_table_names())
