"""The spool's storage: one SQLite database per directory, guarded by a lock file.

Only this module touches SQLite and the directory. Two tables: ``spool`` (events waiting
for JetStream, oldest first by ``seq``) and ``dead_letter`` (events JetStream refused for
good). The schema version lives in ``PRAGMA user_version``. The database runs in WAL mode
with ``synchronous=FULL``: a commit returns only after the WAL is fsynced, so whatever a
commit reported stored survives a crash of the process or the machine.

Appends from many threads share commits (group commit): the first caller to find no
commit running writes everything queued so far in one transaction, one fsync, and wakes
the others.

Locking: ``spool.lock`` in the directory holds ``flock(LOCK_EX)`` for as long as the store
is open, with the holder's pid written in it. The kernel drops the lock with the process,
``kill -9`` included, so a crashed holder never blocks its successor.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from ._errors import SpoolError, SpoolFullError, SpoolLockedError

__all__ = [
    "DB_FILE_NAME",
    "LOCK_FILE_NAME",
    "SCHEMA_VERSION",
    "DeadLetter",
    "SpoolStore",
    "SpooledEvent",
    "check_version",
    "disk_size",
    "read_lock_holder",
    "schema_statements",
    "sqlite_reason",
]

logger = logging.getLogger("cellos_sink_jetstream")

#: The schema this version writes and reads; a newer one is refused. Version 2 added
#: ``spool.tenant``; a version 1 file is upgraded in place when opened.
SCHEMA_VERSION = 2
DB_FILE_NAME = "spool.sqlite3"
LOCK_FILE_NAME = "spool.lock"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    payload BLOB NOT NULL,
    spooled_at REAL NOT NULL,
    tenant TEXT
);
CREATE TABLE IF NOT EXISTS dead_letter (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    payload BLOB NOT NULL,
    spooled_at REAL NOT NULL,
    failed_at REAL NOT NULL,
    error TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class SpooledEvent:
    """One row of the spool: a CloudEvent (JSON) waiting for JetStream.

    Attributes:
        seq: Its place in the spool (oldest first).
        event_id: The event's ``id`` (sent as ``Nats-Msg-Id``).
        payload: The event as CloudEvents JSON.
        spooled_at: Wall-clock time (``time.time()``) when it was spooled.
        tenant: The event's tenant id, resolved when it was spooled (``None``: not known),
            so that replay need not parse the event to find its subject.
    """

    seq: int
    event_id: str
    payload: bytes
    spooled_at: float
    tenant: Optional[str] = None


@dataclass(frozen=True)
class DeadLetter:
    """An event JetStream refused for good, with the refusal.

    Attributes:
        seq: Its place in the dead-letter table (oldest first).
        event_id: The event's ``id``.
        payload: The event as CloudEvents JSON.
        spooled_at: Wall-clock time when it entered the spool (or was emitted).
        failed_at: Wall-clock time when JetStream refused it.
        error: What JetStream said.
    """

    seq: int
    event_id: str
    payload: bytes
    spooled_at: float
    failed_at: float
    error: str


class _Batch:
    """Appends waiting for one shared commit."""

    __slots__ = ("done", "error", "rows")

    def __init__(self) -> None:
        self.rows: list[tuple[str, bytes, float, Optional[str]]] = []
        self.done = False
        self.error: Optional[BaseException] = None


class SpoolStore:
    """The SQLite file of one spool directory; thread-safe."""

    def __init__(self, directory: str, max_bytes: int) -> None:
        """Lock ``directory`` (creating it if needed) and open or create its database.

        Raises:
            SpoolLockedError: another store has the directory open.
            SpoolError: the directory or the database cannot be used (read-only,
                corrupt, written by a newer version, ...).
        """
        self.directory = os.path.abspath(directory)
        self.max_bytes = max_bytes
        self.db_path = os.path.join(self.directory, DB_FILE_NAME)
        self._lock_fd = _acquire_lock(self.directory)
        try:
            self._db = _open_database(self.db_path)
            self._page_size = int(self._scalar("PRAGMA page_size"))
            self._depth = int(self._scalar("SELECT count(*) FROM spool"))
            self._dead = int(self._scalar("SELECT count(*) FROM dead_letter"))
        except BaseException:
            with contextlib.suppress(Exception):
                self._db.close()
            os.close(self._lock_fd)
            raise
        # Guards the connection: SQLite objects are used by one thread at a time.
        self._db_lock = threading.Lock()
        # Group commit: appenders queue rows in _pending; one of them commits.
        self._commit_cond = threading.Condition(threading.Lock())
        self._pending = _Batch()
        self._committing = False
        self._closed = False
        #: Commits made by :meth:`append`, the events they carried, and the seconds they
        #: took (the fsync, mostly): the group-commit size and cost, for benchmarks.
        self.commits = 0
        self.committed_events = 0
        self.commit_seconds = 0.0

    # -- appending -------------------------------------------------------------------

    def append(
        self, event_id: str, payload: bytes, spooled_at: float, tenant: Optional[str] = None
    ) -> None:
        """Store one event durably; returns once its commit is on disk.

        Raises :class:`SpoolFullError` over ``max_bytes`` and :class:`SpoolError` when
        the disk refuses the write; then the event is not stored.
        """
        with self._commit_cond:
            if self._closed:
                raise SpoolError(f"the spool at {self.directory} is closed")
            batch = self._pending
            batch.rows.append((event_id, payload, spooled_at, tenant))
            while self._committing and not batch.done:
                self._commit_cond.wait()
            if not batch.done:
                # Nobody is committing: this caller commits everything queued so far.
                self._committing = True
                self._pending = _Batch()
        if not batch.done:
            try:
                self._commit(batch)
            except BaseException as exc:
                batch.error = exc
            finally:
                with self._commit_cond:
                    batch.done = True
                    self._committing = False
                    self._commit_cond.notify_all()
        if batch.error is not None:
            raise _fresh(batch.error)

    def _commit(self, batch: _Batch) -> None:
        with self._db_lock:
            size = self._used_bytes() + sum(len(row[1]) + len(row[0]) for row in batch.rows)
            if size > self.max_bytes:
                raise SpoolFullError(size, self.max_bytes)
            started = time.perf_counter()
            try:
                with _transaction(self._db):
                    self._db.executemany(
                        "INSERT INTO spool (event_id, payload, spooled_at, tenant) "
                        "VALUES (?, ?, ?, ?)",
                        batch.rows,
                    )
            except sqlite3.Error as exc:
                raise _write_error(self.directory, exc) from None
            self.commit_seconds += time.perf_counter() - started
            self._depth += len(batch.rows)
            self.commits += 1
            self.committed_events += len(batch.rows)

    def dead_letter(
        self,
        event_id: str,
        payload: bytes,
        *,
        spooled_at: float,
        failed_at: float,
        error: str,
        seq: Optional[int] = None,
    ) -> None:
        """Move an event to the dead-letter table (from the spool when ``seq`` is given).

        One transaction: the event is in exactly one of the two tables afterwards.
        """
        with self._db_lock:
            try:
                with _transaction(self._db):
                    self._db.execute(
                        "INSERT INTO dead_letter (event_id, payload, spooled_at, failed_at, "
                        "error) VALUES (?, ?, ?, ?, ?)",
                        (event_id, payload, spooled_at, failed_at, error),
                    )
                    if seq is not None:
                        self._db.execute("DELETE FROM spool WHERE seq = ?", (seq,))
            except sqlite3.Error as exc:
                raise _write_error(self.directory, exc) from None
            self._dead += 1
            if seq is not None:
                self._depth -= 1

    # -- replay ----------------------------------------------------------------------

    def oldest(self, limit: int, after: int = 0) -> list[SpooledEvent]:
        """Up to ``limit`` spooled events with ``seq > after``, oldest first."""
        with self._db_lock:
            rows = self._read(
                "SELECT seq, event_id, payload, spooled_at, tenant FROM spool WHERE seq > ? "
                "ORDER BY seq LIMIT ?",
                (after, limit),
            )
        return [SpooledEvent(r[0], r[1], bytes(r[2]), r[3], r[4]) for r in rows]

    def delete(self, seqs: Sequence[int]) -> None:
        """Remove acknowledged events from the spool (one transaction).

        Without waiting for the fsync: a delete lost to a power cut only means the event
        is sent again, and JetStream drops the copy by its ``Nats-Msg-Id`` (within the
        stream's duplicate window). The next append's commit syncs it anyway.
        """
        if not seqs:
            return
        with self._db_lock:
            try:
                self._db.execute("PRAGMA synchronous=NORMAL")
                try:
                    with _transaction(self._db):
                        cursor = self._db.executemany(
                            "DELETE FROM spool WHERE seq = ?", [(s,) for s in seqs]
                        )
                finally:
                    # Appends must reach the disk before emit() returns.
                    self._db.execute("PRAGMA synchronous=FULL")
            except sqlite3.Error as exc:
                raise _write_error(self.directory, exc) from None
            self._depth -= max(0, cursor.rowcount)

    # -- reading ---------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Events in the spool (dead letters not included)."""
        return self._depth

    @property
    def dead_count(self) -> int:
        """Events in the dead-letter table."""
        return self._dead

    def dead_letters(self) -> list[DeadLetter]:
        """Every dead letter, oldest first."""
        with self._db_lock:
            rows = self._read(
                "SELECT seq, event_id, payload, spooled_at, failed_at, error FROM dead_letter "
                "ORDER BY seq",
                (),
            )
        return [DeadLetter(r[0], r[1], bytes(r[2]), r[3], r[4], r[5]) for r in rows]

    def oldest_spooled_at(self) -> Optional[float]:
        """When the oldest spooled event was spooled (wall clock), ``None`` when empty."""
        with self._db_lock:
            rows = self._read("SELECT min(spooled_at) FROM spool", ())
        value = rows[0][0] if rows else None
        return None if value is None else float(value)

    def size_on_disk(self) -> int:
        """Bytes of the database file and its WAL."""
        return disk_size(self.directory)

    def _used_bytes(self) -> int:
        # Pages in use, not the file size: deleted rows' pages are reused before the
        # file grows, so a drained spool has room again without a VACUUM.
        pages = int(self._scalar("PRAGMA page_count"))
        free = int(self._scalar("PRAGMA freelist_count"))
        return (pages - free) * self._page_size

    def _scalar(self, sql: str) -> Any:
        row = self._db.execute(sql).fetchone()
        return row[0] if row else 0

    def _read(self, sql: str, params: tuple[object, ...]) -> list[Any]:
        if self._closed:
            raise SpoolError(f"the spool at {self.directory} is closed")
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise SpoolError(
                f"reading the spool at {self.directory} failed ({sqlite_reason(exc)})"
            ) from None

    # -- lifecycle -------------------------------------------------------------------

    def close(self) -> None:
        """Close the database and release the directory's lock; idempotent."""
        with self._commit_cond:
            if self._closed:
                return
            self._closed = True
            while self._committing:
                self._commit_cond.wait()
        with self._db_lock:
            try:
                self._db.close()
            finally:
                os.close(self._lock_fd)


def disk_size(directory: str) -> int:
    """Bytes of the spool database and its WAL in ``directory`` (0 when absent)."""
    total = 0
    for name in (DB_FILE_NAME, f"{DB_FILE_NAME}-wal"):
        with contextlib.suppress(OSError):
            total += os.stat(os.path.join(directory, name)).st_size
    return total


def read_lock_holder(directory: str) -> Optional[int]:
    """The pid of the process holding ``directory``'s lock, ``None`` when nobody does."""
    path = os.path.join(directory, LOCK_FILE_NAME)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _acquire_lock(directory: str) -> int:
    try:
        os.makedirs(directory, exist_ok=True)
        fd = os.open(os.path.join(directory, LOCK_FILE_NAME), os.O_RDWR | os.O_CREAT, 0o644)
    except (FileExistsError, NotADirectoryError):
        raise SpoolError(
            f"cannot use {directory} as a spool directory: it (or a parent) is not a "
            f"directory; give the process a directory of its own"
        ) from None
    except OSError as exc:
        raise SpoolError(
            f"cannot use {directory} as a spool directory ({exc.strerror or exc}); give the "
            f"process a writable directory"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _read_pid(fd)
        os.close(fd)
        raise SpoolLockedError(directory, pid) from None
    except OSError as exc:
        os.close(fd)
        raise SpoolError(f"cannot lock the spool directory {directory} ({exc.strerror})") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as exc:
        os.close(fd)
        raise SpoolError(
            f"cannot write to the spool directory {directory} ({exc.strerror}); is it "
            f"read-only or full?"
        ) from None
    return fd


def _read_pid(fd: int) -> Optional[int]:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _open_database(path: str) -> sqlite3.Connection:
    try:
        # Autocommit off by hand: transactions are opened by "with db:" only.
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    except sqlite3.Error as exc:
        raise SpoolError(f"cannot open the spool database {path} ({sqlite_reason(exc)})") from None
    try:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        check_version(path, version)
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        _check(str(mode).lower() == "wal", f"the spool database {path} cannot use WAL mode")
        # FULL: every commit fsyncs the WAL, so a commit that returned survives a crash.
        db.execute("PRAGMA synchronous=FULL")
        # Keep the WAL from growing without bound between checkpoints.
        db.execute("PRAGMA journal_size_limit=67108864")
        if version < SCHEMA_VERSION:
            db.execute("BEGIN IMMEDIATE")
            if version == 1:
                db.execute("ALTER TABLE spool ADD COLUMN tenant TEXT")
            for statement in schema_statements():
                db.execute(statement)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute("COMMIT")
        # Touch both tables: a file that is not a database, or a damaged one, fails here.
        db.execute("SELECT count(*) FROM spool").fetchone()
        db.execute("SELECT count(*) FROM dead_letter").fetchone()
        _check(
            db.execute("PRAGMA quick_check").fetchone()[0] == "ok",
            f"the spool database {path} is damaged (SQLite's quick_check failed); move it "
            f"aside, 'cellos-jetstream spool export' what can be read, and start afresh",
        )
    except SpoolError:
        db.close()
        raise
    except sqlite3.Error as exc:
        db.close()
        raise SpoolError(
            f"cannot use the spool database {path} ({sqlite_reason(exc)}); if it is corrupt, "
            f"move it aside and start with an empty directory"
        ) from None
    return db


def check_version(path: str, version: int) -> None:
    """Raise :class:`SpoolError`, naming both versions, for a schema newer than ours."""
    if version > SCHEMA_VERSION:
        raise SpoolError(
            f"the spool database {path} has schema version {version}, newer than version "
            f"{SCHEMA_VERSION} that this version of cellos-sink-jetstream reads; upgrade "
            f"cellos-sink-jetstream or point it at another directory"
        )


def _check(condition: bool, problem: str) -> None:
    if not condition:
        raise SpoolError(problem)


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    # The connection runs in autocommit mode (isolation_level=None): without an explicit
    # BEGIN each INSERT of a batch would be a transaction, and an fsync, of its own.
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        # A failed COMMIT (disk full, say) leaves the transaction open: end it here.
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise


def schema_statements() -> list[str]:
    return [s.strip() for s in _SCHEMA.split(";") if s.strip()]


def sqlite_reason(exc: sqlite3.Error) -> str:
    """SQLite's own words for an error, short, for our messages."""
    return str(exc)[:200] or type(exc).__name__


def _write_error(directory: str, exc: sqlite3.Error) -> SpoolError:
    return SpoolError(
        f"writing to the spool at {directory} failed ({sqlite_reason(exc)}); the event was "
        f"not stored. Check the disk (full? read-only? I/O errors?)"
    )


def _fresh(error: BaseException) -> BaseException:
    # One error object raised in many threads would chain all their tracebacks.
    if isinstance(error, SpoolFullError):
        return SpoolFullError(error.size, error.limit)
    if isinstance(error, SpoolError):
        return SpoolError(str(error))
    return error
