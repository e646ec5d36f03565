"""The embedded broker (kombu's SQLAlchemy transport on SQLite) under concurrent first use.

kombu guards its two "check, then create" steps with a per-process lock only, so two processes (a starting
worker and a submitting dashboard) can both
- find no tables in a new broker file and both create them: the loser gets "table ... already exists";
- find no row for a queue and both insert it: the loser gets "UNIQUE constraint failed: kombu_queue.name".

Real timing makes these races rare. Here every process waits at a barrier placed exactly between its check
and its create (SQLAlchemy's metadata "before_create" event, fired after create_all's existence checks; the
session's `add` of the new queue row, after kombu's second look-up), so all of them have checked before any
creates: unpatched kombu then loses the race in every process but one, every time, and
`workers.celery_app.configure_embedded_transport` must make all of them succeed.
"""

import multiprocessing as mp
import sqlite3
from pathlib import Path

import pytest

PROCESSES = 2
TABLE_RACE = "table kombu_queue already exists"
QUEUE_RACE = "UNIQUE constraint failed: kombu_queue.name"


def _declare(url: str, queue: str, barrier, race: str, patched: bool, errors) -> None:
    """In a fresh interpreter: declare `queue`, meeting the other processes at the race point `race`."""
    from kombu import Connection

    if patched:
        from workers.celery_app import configure_embedded_transport

        configure_embedded_transport()
    met: list[bool] = []

    def meet(*_args, **_kwargs) -> None:  # once per process: the retry of the fix must not wait again
        if barrier is not None and not met:
            met.append(True)
            barrier.wait(timeout=60)

    if race == "tables":
        from kombu.transport.sqlalchemy.models import metadata
        from sqlalchemy import event

        event.listen(metadata, "before_create", meet)  # after create_all's "does it exist" checks
    try:
        with Connection(url) as conn:
            channel = conn.default_channel
            if race == "queue":
                session = channel.session  # opens the broker (its tables exist already)
                add = session.add

                def add_after_meeting(obj, *args, **kwargs):  # after kombu's second "is the row there" query
                    meet()
                    return add(obj, *args, **kwargs)

                session.add = add_after_meeting
            channel._new_queue(queue)
    except Exception as exc:  # report any failure to the parent
        errors.put(f"{type(exc).__name__}: {exc}".splitlines()[0])


def _run(url: str, queue: str, race: str, patched: bool, processes: int = PROCESSES) -> list[str]:
    ctx = mp.get_context("spawn")  # fresh interpreters: kombu's in-process lock cannot help
    errors = ctx.Queue()
    barrier = ctx.Barrier(processes) if race != "none" else None
    procs = [
        ctx.Process(target=_declare, args=(url, queue, barrier, race, patched, errors))
        for _ in range(processes)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    found = []
    while not errors.empty():
        found.append(errors.get())
    return found


def _queue_rows(db: Path, queue: str) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT COUNT(*) FROM kombu_queue WHERE name = ?", (queue,)).fetchone()[0]


def _broker(tmp_path: Path, with_tables: bool) -> tuple[Path, str]:
    db = tmp_path / "broker.sqlite"
    url = f"sqla+sqlite:///{db}"
    if with_tables:  # one process alone creates the tables (and a first queue): no race there
        assert _run(url, "setup", "none", patched=False, processes=1) == []
    return db, url


@pytest.mark.parametrize("patched", [False, True], ids=["kombu", "fixed"])
def test_two_processes_creating_the_broker_tables(tmp_path, patched: bool):
    """A worker starting while the dashboard submits to a new broker file: both create the tables."""
    db, url = _broker(tmp_path, with_tables=False)
    errors = _run(url, "q", "tables", patched)
    if patched:
        assert errors == []
    else:  # the race is real: every process but the first to create loses it
        assert len(errors) == PROCESSES - 1 and all(TABLE_RACE in e for e in errors), errors
    assert _queue_rows(db, "q") == 1


@pytest.mark.parametrize("patched", [False, True], ids=["kombu", "fixed"])
def test_two_processes_declaring_the_same_new_queue(tmp_path, patched: bool):
    """A worker declaring its queue while the dashboard declares it to publish: both insert the row."""
    db, url = _broker(tmp_path, with_tables=True)
    errors = _run(url, "q", "queue", patched)
    if patched:
        assert errors == []
    else:
        assert len(errors) == PROCESSES - 1 and all(QUEUE_RACE in e for e in errors), errors
    assert _queue_rows(db, "q") == 1
