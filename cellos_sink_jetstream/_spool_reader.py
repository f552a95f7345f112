"""Reading a spool directory beside the process that owns it: no lock, no writes.

``cellos-jetstream spool status`` and ``spool export`` use this; SQLite's WAL lets a
read-only connection see a consistent snapshot while the owner appends and deletes.
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Optional

from ._errors import SpoolError
from ._spool_store import (
    DB_FILE_NAME,
    SCHEMA_VERSION,
    check_version,
    disk_size,
    read_lock_holder,
    schema_statements,
    sqlite_reason,
)

__all__ = ["ReadOnlySpool", "SpoolSummary", "read_only"]


@dataclass(frozen=True)
class SpoolSummary:
    """What a spool directory holds, read without taking its lock.

    Attributes:
        depth: Events waiting for JetStream.
        bytes: Size of the database and its WAL on disk.
        oldest_spooled_at: Wall-clock time the oldest waiting event was spooled (or None).
        dead_letters: Events in the dead-letter table.
        holder_pid: The process that has the spool open, if any.
        schema_version: The database's schema version.
    """

    depth: int
    bytes: int
    oldest_spooled_at: Optional[float]
    dead_letters: int
    holder_pid: Optional[int]
    schema_version: int


class ReadOnlySpool:
    """A read-only view of a spool directory that another process may be writing to.

    Takes no lock and writes nothing: SQLite's WAL lets it read a consistent snapshot
    beside the writer.
    """

    def __init__(self, directory: str) -> None:
        """Open ``directory``'s database read-only.

        A directory without one reads as an empty spool; :class:`SpoolError` when the
        directory does not exist or its database cannot be read.
        """
        self.directory = os.path.abspath(directory)
        path = os.path.join(self.directory, DB_FILE_NAME)
        if not os.path.isdir(self.directory):
            raise SpoolError(f"no spool directory {self.directory}: it does not exist")
        if not os.path.isfile(path):
            # A directory no sink has written to yet: an empty spool.
            path = ":memory:"
        uri = path if path == ":memory:" else f"file:{urllib.parse.quote(path)}?mode=ro"
        try:
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
            if path == ":memory:":
                for statement in schema_statements():
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self.schema_version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        except sqlite3.Error as exc:
            raise SpoolError(
                f"cannot read the spool database {path} ({sqlite_reason(exc)}); if it is "
                f"corrupt, move it aside"
            ) from None
        try:
            check_version(path, self.schema_version)
        except SpoolError:
            self._db.close()
            raise

    def summary(self) -> SpoolSummary:
        """Depth, size, oldest event, dead letters, lock holder."""
        depth, oldest = self._query("SELECT count(*), min(spooled_at) FROM spool")[0]
        dead = self._query("SELECT count(*) FROM dead_letter")[0][0]
        return SpoolSummary(
            depth=int(depth),
            bytes=disk_size(self.directory),
            oldest_spooled_at=None if oldest is None else float(oldest),
            dead_letters=int(dead),
            holder_pid=read_lock_holder(self.directory),
            schema_version=self.schema_version,
        )

    def events(self, *, dead: bool = False, batch: int = 1000) -> Iterator[bytes]:
        """The spooled (or dead-lettered) events' CloudEvents JSON, oldest first."""
        table = "dead_letter" if dead else "spool"
        after = 0
        while True:
            rows = self._query(
                f"SELECT seq, payload FROM {table} WHERE seq > ? ORDER BY seq LIMIT ?",  # noqa: S608 - a fixed table name
                (after, batch),
            )
            if not rows:
                return
            for seq, payload in rows:
                after = seq
                yield bytes(payload)

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def _query(self, sql: str, params: tuple[object, ...] = ()) -> list[Any]:
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise SpoolError(
                f"reading the spool at {self.directory} failed ({sqlite_reason(exc)})"
            ) from None


def read_only(directory: str) -> ReadOnlySpool:
    """Open ``directory``'s spool for reading only (see :class:`ReadOnlySpool`)."""
    return ReadOnlySpool(directory)
