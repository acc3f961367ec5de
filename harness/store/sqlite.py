"""The SQLite backend: one file, the embedded default (``results.sqlite`` in the state directory).

WAL journal and ``synchronous=FULL``: a controller killed at any moment loses no committed attempt, and
readers (``report``, ``history``) never block the writer. Write transactions are ``BEGIN IMMEDIATE``.
Migrations run with foreign keys off, since SQLite cannot alter a CHECK constraint and rebuilds the
table instead; the foreign keys are checked before the migration commits.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from harness import paths
from harness.store.base import (
    ATTEMPT_STATUSES_2,
    ATTEMPT_STATUSES_4,
    SAMPLE_COLUMNS_2,
    SAMPLE_COLUMNS_3,
    SCHEMA_1,
    SCHEMA_5,
    Store,
    StoreError,
    Tx,
    statements,
)


def default_store_path() -> Path:
    """``results.sqlite`` in the state directory (``harness.paths``: ``.edgebench/`` or $EDGEBENCH_HOME)."""
    return paths.results_db_path()


class SQLiteTx(Tx):
    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.conn.executemany(sql, rows)


def _attempts_table(statuses: Sequence[str]) -> str:
    """The attempts table of schema 2 on, accepting ``statuses`` (rebuilt when they change)."""
    allowed = ", ".join(f"'{s}'" for s in statuses)
    return f"""
CREATE TABLE attempts_new (
    id                INTEGER PRIMARY KEY,
    run_id            TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    device            TEXT NOT NULL,
    device_identity   TEXT,
    identity_json     TEXT NOT NULL,
    variant           TEXT NOT NULL,
    status            TEXT NOT NULL CHECK (status IN ({allowed})),
    error             TEXT,
    started_at        TEXT NOT NULL,
    ended_at          TEXT NOT NULL,
    header_json       TEXT,
    processes_planned INTEGER
)"""


def _rebuild_attempts(tx: Tx, statuses: Sequence[str], planned: bool) -> None:
    """Rebuild the attempts table with a new CHECK constraint, keeping every row and id."""
    columns = ("id, run_id, device, device_identity, identity_json, variant, status, error, started_at,"
               " ended_at, header_json" + (", processes_planned" if planned else ""))
    tx.execute(_attempts_table(statuses))
    tx.execute(f"INSERT INTO attempts_new ({columns}) SELECT {columns} FROM attempts")
    tx.execute("DROP TABLE attempts")
    tx.execute("ALTER TABLE attempts_new RENAME TO attempts")
    tx.execute("CREATE INDEX attempts_by_run ON attempts (run_id, device, variant)")
    tx.execute("CREATE INDEX attempts_by_identity ON attempts (device_identity, status)")
    broken = tx.execute("PRAGMA foreign_key_check").fetchall()
    if broken:
        raise sqlite3.DatabaseError(f"rebuilding attempts left {len(broken)} dangling references")


def _migrate_0_to_1(tx: Tx) -> None:
    for statement in statements(SCHEMA_1):
        tx.execute(statement)


def _migrate_1_to_2(tx: Tx) -> None:
    """Attempts gain the ``partial`` status and ``processes_planned``; samples the interference columns."""
    _rebuild_attempts(tx, ATTEMPT_STATUSES_2, planned=False)
    for column, kind in SAMPLE_COLUMNS_2:
        tx.execute(f"ALTER TABLE samples ADD COLUMN {column} {kind}")


def _migrate_2_to_3(tx: Tx) -> None:
    """Samples gain the streaming columns (NULL for the samples measured before)."""
    for column, kind in SAMPLE_COLUMNS_3:
        tx.execute(f"ALTER TABLE samples ADD COLUMN {column} {kind}")


def _migrate_3_to_4(tx: Tx) -> None:
    """Attempts gain the ``busy`` status."""
    _rebuild_attempts(tx, ATTEMPT_STATUSES_4, planned=True)


def _migrate_4_to_5(tx: Tx) -> None:
    """The ``microbench`` table: a device's measured limits per run."""
    for statement in statements(SCHEMA_5):
        tx.execute(statement)


#: MIGRATIONS[n] turns a version n store into a version n + 1 store (inside one transaction).
MIGRATIONS: dict[int, Callable[[Tx], None]] = {
    0: _migrate_0_to_1, 1: _migrate_1_to_2, 2: _migrate_2_to_3, 3: _migrate_3_to_4,
    4: _migrate_4_to_5,
}


class SQLiteStore(Store):
    """A results store on one SQLite file (created or migrated on open). Thread-safe, one connection."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else default_store_path()
        self.location = str(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            self._conn = sqlite3.connect(
                str(self.path), isolation_level=None, check_same_thread=False, timeout=30.0
            )
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = FULL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: not a usable edgebench store ({exc})") from exc

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[SQLiteTx]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any exception)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield SQLiteTx(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Mapping[str, Any]]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def _json_flag(self, column: str, key: str) -> str:
        return f"COALESCE(json_extract({column}, '$.{key}'), 0) = 1"

    def _migrate(self) -> None:
        # Foreign keys cannot be switched inside a transaction; a table rebuild needs them off.
        self._conn.execute("PRAGMA foreign_keys = OFF")
        try:
            with self._tx() as tx:
                tables = {r[0] for r in tx.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if "schema_version" in tables:
                    version = int(tx.execute("SELECT version FROM schema_version").fetchone()[0])
                elif tables:
                    raise StoreError(
                        f"{self.path}: this SQLite file is not an edgebench store (no schema_version "
                        "table); give --store a new file name"
                    )
                else:
                    tx.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
                    tx.execute("INSERT INTO schema_version (version) VALUES (0)")
                    version = 0
                self._check_version(version)
                self._run_migrations(tx, version, MIGRATIONS)
        finally:
            self._conn.execute("PRAGMA foreign_keys = ON")
