"""The results store: one SQLite file holding every run, attempt, raw sample, device fact and verdict.

Writes happen as results arrive, each one a single transaction (WAL journal, synchronous=FULL), so a
controller killed at any moment loses nothing already committed and ``edgebench run --resume`` asks
``missing_pairs(run_id)`` for what is left. Reads come out as pandas DataFrames for reports and notebooks.

Device identity: every attempt stores the device name *and* its identity fingerprint (a hash of the
hardware/software facts, see ``devices.measure.device_identity``). Summaries group by both, so results
from different identities are never pooled even when the device name is the same.

Schema versions (``SCHEMA_VERSION``; the ``schema_version`` table holds the file's version):
    1: runs, artifacts, attempts, samples, facts, mos, verdicts.
    2: interleaved measurement and interference: an attempt can be ``partial`` (its pair is measured one
       process per round; ``processes_planned`` says how many it needs) and grows process by process
       (``add_processes``); samples carry the measuring process's CPU seconds, the other processes' CPU
       seconds on its CPUs, the CPU pressure stall, and whether the sample was ``disturbed``.
    3: streaming synthesis: samples carry the time to first audio (``ttfa_s``), the real-time margin
       (``rt_margin_s``) and the number of audio ``chunks``.

A (device, variant) pair of a run is measured when it has an ``ok`` attempt. Measured interleaved, its
attempt is created ``partial`` with the first process and turns ``ok`` once it holds the planned number of
undisturbed ok processes; a process that fails makes it ``failed``. ``--resume`` completes a ``partial``
attempt (it is never restarted).
A file with a newer version than this code knows is refused (upgrade edgebench, or point ``--store`` at
a new file); an older one is migrated in place by the functions in ``MIGRATIONS``, one step at a time.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import sqlite3
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from harness import paths, stats
from harness.errors import UserError

SCHEMA_VERSION = 3

#: Attempt statuses. ``ok``, ``failed`` and ``partial`` come with a record from the agent; the others do
#: not. ``partial``: an interleaved pair with fewer undisturbed ok processes than planned so far.
ATTEMPT_STATUSES = ("ok", "failed", "partial", "unreachable", "timeout", "ineligible")
#: The most characters of an error text stored (a device printing megabytes is cut, and says so).
MAX_ERROR_CHARS = 4000
RUN_STATUSES = ("running", "complete", "incomplete")
LENGTH_CLASSES = ("short", "medium", "long")

SAMPLE_COLUMNS = (
    "run_id", "device", "device_identity", "variant", "process", "iteration", "sentence_id",
    "length_class", "emotion", "phones", "frames", "audio_s", "frontend_s", "acoustic_s", "vocoder_s",
    "total_s",
)
_SAMPLE_FIELDS = (
    "iteration", "sentence_id", "length_class", "emotion", "phones", "frames", "audio_s", "frontend_s",
    "acoustic_s", "vocoder_s", "total_s", "cpu_s", "others_cpu_s", "psi_some_s", "disturbed", "remeasure_of",
    "ttfa_s", "rt_margin_s", "chunks",
)
#: Interference columns of a sample (schema 2; NULL in samples of older records).
INTERFERENCE_COLUMNS = ("cpu_s", "others_cpu_s", "psi_some_s", "disturbed", "remeasure_of")
#: Streaming columns of a sample (schema 3; NULL in samples of older records).
STREAMING_COLUMNS = ("ttfa_s", "rt_margin_s", "chunks")
PHASES = ("import_s", "acoustic_load_s", "vocoder_load_s", "first_inference_s")


class StoreError(UserError):
    """The store file cannot be used (newer schema, not an edgebench store, unknown run id)."""


def default_store_path() -> Path:
    """``results.sqlite`` in the state directory (``harness.paths``: ``.edgebench/`` or $EDGEBENCH_HOME)."""
    return paths.results_db_path()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, allow_nan=False, default=str)


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 over the canonical JSON of a configuration (key order does not matter)."""
    return hashlib.sha256(_dumps(config).encode("utf-8")).hexdigest()


def new_run_id(now: datetime | None = None) -> str:
    """``YYYYMMDD-HHMMSS-xxxx`` (UTC, 4 random hex digits): sortable by start time, unique enough."""
    now = now or datetime.now(timezone.utc)
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


# --------------------------------------------------------------------------------------------- schema

_SCHEMA_1 = """
CREATE TABLE runs (
    id            TEXT PRIMARY KEY,
    config_hash   TEXT NOT NULL,
    config_json   TEXT NOT NULL,
    code_version  TEXT NOT NULL,
    budgets_json  TEXT NOT NULL,
    preset        TEXT,
    variants_json TEXT NOT NULL,
    devices_json  TEXT NOT NULL,
    started_at    TEXT NOT NULL,
    ended_at      TEXT,
    status        TEXT NOT NULL CHECK (status IN ('running', 'complete', 'incomplete'))
);
CREATE TABLE artifacts (
    id            INTEGER PRIMARY KEY,
    run_id        TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    variant       TEXT NOT NULL,
    path          TEXT NOT NULL,
    content_hash  TEXT,
    manifest_json TEXT NOT NULL,
    UNIQUE (run_id, variant)
);
CREATE TABLE attempts (
    id              INTEGER PRIMARY KEY,
    run_id          TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    device          TEXT NOT NULL,
    device_identity TEXT,
    identity_json   TEXT NOT NULL,
    variant         TEXT NOT NULL,
    status          TEXT NOT NULL
                    CHECK (status IN ('ok', 'failed', 'unreachable', 'timeout', 'ineligible')),
    error           TEXT,
    started_at      TEXT NOT NULL,
    ended_at        TEXT NOT NULL,
    header_json     TEXT
);
CREATE INDEX attempts_by_run ON attempts (run_id, device, variant);
CREATE INDEX attempts_by_identity ON attempts (device_identity, status);
CREATE TABLE samples (
    attempt_id   INTEGER NOT NULL REFERENCES attempts(id) ON DELETE CASCADE,
    process      INTEGER NOT NULL,
    iteration    INTEGER NOT NULL,
    sentence_id  TEXT NOT NULL,
    length_class TEXT NOT NULL,
    emotion      TEXT NOT NULL,
    phones       INTEGER,
    frames       INTEGER,
    audio_s      REAL,
    frontend_s   REAL,
    acoustic_s   REAL,
    vocoder_s    REAL,
    total_s      REAL NOT NULL,
    PRIMARY KEY (attempt_id, process, iteration)
);
CREATE TABLE facts (
    id         INTEGER PRIMARY KEY,
    attempt_id INTEGER NOT NULL REFERENCES attempts(id) ON DELETE CASCADE,
    process    INTEGER,
    phase      TEXT NOT NULL CHECK (phase IN ('before', 'after')),
    facts_json TEXT NOT NULL
);
CREATE INDEX facts_by_attempt ON facts (attempt_id);
CREATE TABLE mos (
    id          INTEGER PRIMARY KEY,
    variant     TEXT NOT NULL,
    score       REAL NOT NULL,
    n           INTEGER,
    source      TEXT,
    imported_at TEXT NOT NULL
);
CREATE TABLE verdicts (
    id              INTEGER PRIMARY KEY,
    run_id          TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    outcome         TEXT NOT NULL,
    exit_code       INTEGER NOT NULL,
    verdict_json    TEXT NOT NULL,
    created_at      TEXT NOT NULL
);
CREATE INDEX verdicts_by_run ON verdicts (run_id);
"""


def _execute_script(conn: sqlite3.Connection, script: str) -> None:
    # Not conn.executescript(): it COMMITs first, which would split the migration's transaction.
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def _migrate_0_to_1(conn: sqlite3.Connection) -> None:
    _execute_script(conn, _SCHEMA_1)


_ATTEMPTS_2 = """
CREATE TABLE attempts_v2 (
    id                INTEGER PRIMARY KEY,
    run_id            TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    device            TEXT NOT NULL,
    device_identity   TEXT,
    identity_json     TEXT NOT NULL,
    variant           TEXT NOT NULL,
    status            TEXT NOT NULL
                      CHECK (status IN ('ok', 'failed', 'partial', 'unreachable', 'timeout', 'ineligible')),
    error             TEXT,
    started_at        TEXT NOT NULL,
    ended_at          TEXT NOT NULL,
    header_json       TEXT,
    processes_planned INTEGER
);
INSERT INTO attempts_v2 (id, run_id, device, device_identity, identity_json, variant, status, error,
                         started_at, ended_at, header_json)
    SELECT id, run_id, device, device_identity, identity_json, variant, status, error, started_at,
           ended_at, header_json FROM attempts;
DROP TABLE attempts;
ALTER TABLE attempts_v2 RENAME TO attempts;
CREATE INDEX attempts_by_run ON attempts (run_id, device, variant);
CREATE INDEX attempts_by_identity ON attempts (device_identity, status);
ALTER TABLE samples ADD COLUMN cpu_s REAL;
ALTER TABLE samples ADD COLUMN others_cpu_s REAL;
ALTER TABLE samples ADD COLUMN psi_some_s REAL;
ALTER TABLE samples ADD COLUMN disturbed INTEGER;
ALTER TABLE samples ADD COLUMN remeasure_of INTEGER
"""


def _migrate_1_to_2(conn: sqlite3.Connection) -> None:
    """The attempts table gains the ``partial`` status and ``processes_planned`` (SQLite cannot alter a
    CHECK constraint: the table is rebuilt, its rows kept); samples gain the interference columns."""
    _execute_script(conn, _ATTEMPTS_2)
    broken = conn.execute("PRAGMA foreign_key_check").fetchall()
    if broken:
        raise sqlite3.DatabaseError(f"migration to schema 2 left {len(broken)} dangling references")


def _migrate_2_to_3(conn: sqlite3.Connection) -> None:
    """Samples gain the streaming columns (NULL for the samples measured before)."""
    for column, kind in (("ttfa_s", "REAL"), ("rt_margin_s", "REAL"), ("chunks", "INTEGER")):
        conn.execute(f"ALTER TABLE samples ADD COLUMN {column} {kind}")


#: MIGRATIONS[n] turns a version n file into a version n + 1 file (inside one transaction, with foreign
#: keys off so that a table can be rebuilt; they are checked before the commit).
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    0: _migrate_0_to_1, 1: _migrate_1_to_2, 2: _migrate_2_to_3,
}


# ---------------------------------------------------------------------------------------------- store


class Store:
    """A results store on one SQLite file (created or migrated on open). Thread-safe, one connection."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else default_store_path()
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

    # -- lifecycle
    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any exception)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def schema_version(self) -> int:
        return int(self._query("SELECT version FROM schema_version")[0]["version"])

    def _migrate(self) -> None:
        # Foreign keys cannot be switched inside a transaction; a table rebuild needs them off.
        self._conn.execute("PRAGMA foreign_keys = OFF")
        try:
            self._migrate_tx()
        finally:
            self._conn.execute("PRAGMA foreign_keys = ON")

    def _migrate_tx(self) -> None:
        with self._tx() as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "schema_version" in tables:
                version = int(conn.execute("SELECT version FROM schema_version").fetchone()[0])
            elif tables:
                raise StoreError(
                    f"{self.path}: this SQLite file is not an edgebench store (no schema_version table); "
                    "give --store a new file name"
                )
            else:
                conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
                conn.execute("INSERT INTO schema_version (version) VALUES (0)")
                version = 0
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: store schema version {version} is newer than this edgebench supports "
                    f"({SCHEMA_VERSION}); upgrade edgebench, or use another file with --store"
                )
            while version < SCHEMA_VERSION:
                MIGRATIONS[version](conn)
                version += 1
                conn.execute("UPDATE schema_version SET version = ?", (version,))

    # ------------------------------------------------------------------------------------------ writes
    def start_run(
        self,
        config: Mapping[str, Any],
        budgets: Mapping[str, Any],
        code_version: str,
        preset: str | None,
        variants: Sequence[str],
        devices: Sequence[str],
        *,
        run_id: str | None = None,
        started_at: str | None = None,
    ) -> str:
        """Record a new run (status ``running``) and return its id."""
        run_id = run_id or new_run_id()
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO runs (id, config_hash, config_json, code_version, budgets_json, preset,"
                " variants_json, devices_json, started_at, status) VALUES (?,?,?,?,?,?,?,?,?, 'running')",
                (
                    run_id, config_hash(config), _dumps(dict(config)), str(code_version),
                    _dumps(dict(budgets)), preset, _dumps(list(variants)), _dumps(list(devices)),
                    started_at or _now(),
                ),
            )
        return run_id

    def finish_run(self, run_id: str, status: str) -> None:
        if status not in ("complete", "incomplete"):
            raise ValueError(f"run status must be complete or incomplete, got {status!r}")
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE runs SET status = ?, ended_at = ? WHERE id = ?", (status, _now(), run_id)
            )
            if cur.rowcount != 1:
                raise StoreError(f"{self.path}: no run {run_id!r}")

    def record_artifact(self, run_id: str, variant: str, path: str, manifest: Mapping[str, Any]) -> None:
        """Record (or replace, on resume) the artifact a run measured for ``variant``."""
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO artifacts (run_id, variant, path, content_hash, manifest_json)"
                " VALUES (?,?,?,?,?)"
                " ON CONFLICT (run_id, variant) DO UPDATE SET path = excluded.path,"
                " content_hash = excluded.content_hash, manifest_json = excluded.manifest_json",
                (run_id, variant, str(path), manifest.get("content_hash"), _dumps(dict(manifest))),
            )

    def record_attempt(
        self,
        run_id: str,
        device: str,
        identity: Mapping[str, Any] | None,
        variant: str,
        status: str,
        error: str | None,
        record: Mapping[str, Any] | None,
        *,
        started_at: str | None = None,
        ended_at: str | None = None,
    ) -> int:
        """Record one (device, variant) attempt with its raw samples and facts, in one transaction.

        ``record`` is the validated measurement record (``None`` for unreachable/timeout/ineligible). Its
        samples go to ``samples``, its facts (record level: process NULL) to ``facts``, and the rest (the
        header: protocol, phases, peak RSS, flags per process) to ``attempts.header_json``.
        Returns the attempt id.
        """
        if status not in ATTEMPT_STATUSES:
            raise ValueError(f"attempt status must be one of {ATTEMPT_STATUSES}, got {status!r}")
        error = bounded_error(error)
        identity = dict(identity or {"name": device})
        fingerprint = identity.get("fingerprint")
        header, sample_rows, fact_rows = _split_record(record) if record is not None else (None, [], [])
        ended_at = ended_at or _now()
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT INTO attempts (run_id, device, device_identity, identity_json, variant, status,"
                " error, started_at, ended_at, header_json) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    run_id, device, fingerprint, _dumps(identity), variant, status, error,
                    started_at or ended_at, ended_at, None if header is None else _dumps(header),
                ),
            )
            attempt_id = int(cur.lastrowid)
            _insert_rows(conn, attempt_id, sample_rows, fact_rows)
        return attempt_id

    def add_processes(
        self,
        run_id: str,
        device: str,
        identity: Mapping[str, Any] | None,
        variant: str,
        record: Mapping[str, Any],
        planned: int,
        *,
        final: bool = False,
    ) -> tuple[int, str]:
        """Add the processes of ``record`` (one round of an interleaved measurement) to the pair's open
        attempt in this run, creating it (``partial``) if there is none; one transaction.

        The processes are renumbered after those already stored. The attempt becomes ``failed`` when a
        process failed (its error kept), ``ok`` when it holds ``planned`` undisturbed ok processes, and
        stays ``partial`` otherwise. ``final``: the re-measurement budget is spent; a pair with ``planned``
        ok processes some of which stayed disturbed becomes ``ok`` with ``disturbed`` set in its header
        (the gate decides what disturbed data may prove). Returns ``(attempt_id, status)``.
        """
        identity = dict(identity or {"name": device})
        now = _now()
        with self._tx() as conn:
            row = conn.execute(
                "SELECT id, header_json, started_at FROM attempts WHERE run_id = ? AND device = ?"
                " AND variant = ? AND status = 'partial' ORDER BY id DESC LIMIT 1",
                (run_id, device, variant),
            ).fetchone()
            old = json.loads(row["header_json"]) if row is not None and row["header_json"] else None
            offset = len((old or {}).get("processes") or [])
            renumbered = dict(record)
            renumbered["processes"] = [
                {**p, "index": offset + i} for i, p in enumerate(record.get("processes") or [])
            ]
            header, sample_rows, fact_rows = _split_record(renumbered)
            if old is not None:
                header = _merge_headers(old, header)
            procs = header.get("processes") or []
            failed = [p for p in procs if p.get("status") != "ok"]
            clean = [p for p in procs if p.get("status") == "ok" and not p.get("disturbed")]
            if failed or record.get("status") != "ok":
                status = "failed"
                error = record.get("error") or "; ".join(
                    f"process {p.get('index')}: {p.get('error')}" for p in failed
                )
            else:
                ok_procs = [p for p in procs if p.get("status") == "ok"]
                status = "ok" if len(clean) >= planned else "partial"
                if status == "partial" and final and len(ok_procs) >= planned:
                    status = "ok"
                    header["disturbed"] = True
                error = None
            header["status"], header["error"] = ("ok" if status != "failed" else "failed"), error
            values = (
                identity.get("fingerprint"), _dumps(identity), status, bounded_error(error), now,
                _dumps(header), int(planned),
            )
            if row is None:
                cur = conn.execute(
                    "INSERT INTO attempts (device_identity, identity_json, status, error, ended_at,"
                    " header_json, processes_planned, run_id, device, variant, started_at)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (*values, run_id, device, variant, now),
                )
                attempt_id = int(cur.lastrowid)
            else:
                attempt_id = int(row["id"])
                conn.execute(
                    "UPDATE attempts SET device_identity = ?, identity_json = ?, status = ?, error = ?,"
                    " ended_at = ?, header_json = ?, processes_planned = ? WHERE id = ?",
                    (*values, attempt_id),
                )
            _insert_rows(conn, attempt_id, sample_rows, fact_rows)
        return attempt_id, status

    def partial_progress(self, run_id: str) -> dict[tuple[str, str], int]:
        """(device, variant) -> undisturbed ok processes already stored in the pair's ``partial`` attempt."""
        out: dict[tuple[str, str], int] = {}
        for r in self._query(
            "SELECT device, variant, header_json FROM attempts WHERE run_id = ? AND status = 'partial'"
            " ORDER BY id",
            (run_id,),
        ):
            procs = (json.loads(r["header_json"] or "{}")).get("processes") or []
            out[(r["device"], r["variant"])] = sum(
                1 for p in procs if p.get("status") == "ok" and not p.get("disturbed")
            )
        return out

    def import_mos(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Import MOS rows (``variant``, ``mos``, ``n_listeners``, ``source``) in one transaction."""
        now = _now()
        values = []
        for row in rows:
            n = row.get("n_listeners")
            values.append((str(row["variant"]), float(row["mos"]), None if n is None else int(n),
                           row.get("source"), now))
        with self._tx() as conn:
            conn.executemany(
                "INSERT INTO mos (variant, score, n, source, imported_at) VALUES (?,?,?,?,?)", values
            )
        return len(values)

    def save_verdict(self, run_id: str, verdict: Mapping[str, Any]) -> None:
        """Store a gate verdict (``Verdict.to_dict()``); the latest one is ``verdict(run_id)``."""
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO verdicts (run_id, outcome, exit_code, verdict_json, created_at)"
                " VALUES (?,?,?,?,?)",
                (run_id, verdict["outcome"], int(verdict["exit_code"]), _dumps(dict(verdict)), _now()),
            )

    # ------------------------------------------------------------------------------------------- reads
    def run(self, run_id: str) -> dict:
        """The run's row as a dict (config, budgets, variants and devices decoded); StoreError if unknown."""
        rows = self._query("SELECT * FROM runs WHERE id = ?", (run_id,))
        if not rows:
            raise StoreError(f"{self.path}: no run {run_id!r} (see `edgebench history`)")
        return _run_row(rows[0])

    def latest_run_id(self) -> str | None:
        rows = self._query("SELECT id FROM runs ORDER BY started_at DESC, id DESC LIMIT 1")
        return rows[0]["id"] if rows else None

    def missing_pairs(self, run_id: str) -> list[tuple[str, str]]:
        """Planned (device, variant) pairs of the run without an ``ok`` attempt, in plan order."""
        run = self.run(run_id)
        done = {
            (r["device"], r["variant"])
            for r in self._query(
                "SELECT DISTINCT device, variant FROM attempts WHERE run_id = ? AND status = 'ok'", (run_id,)
            )
        }
        return [(d, v) for d in run["devices"] for v in run["variants"] if (d, v) not in done]

    def verdict(self, run_id: str) -> dict | None:
        """The latest stored gate verdict of a run, or None if the gate never ran on it."""
        rows = self._query(
            "SELECT verdict_json FROM verdicts WHERE run_id = ? ORDER BY id DESC LIMIT 1", (run_id,)
        )
        return json.loads(rows[0]["verdict_json"]) if rows else None

    def artifacts(self, run_id: str) -> dict[str, dict]:
        """variant -> {"path", "content_hash", "manifest"} for a run."""
        return {
            r["variant"]: {"path": r["path"], "content_hash": r["content_hash"],
                           "manifest": json.loads(r["manifest_json"])}
            for r in self._query("SELECT * FROM artifacts WHERE run_id = ?", (run_id,))
        }

    def latest_mos(self) -> dict[str, dict]:
        """variant -> {"mos", "n", "source", "imported_at"} from the latest import of each variant."""
        out: dict[str, dict] = {}
        for r in self._query("SELECT * FROM mos ORDER BY id"):
            out[r["variant"]] = {"mos": r["score"], "n": r["n"], "source": r["source"],
                                 "imported_at": r["imported_at"]}
        return out

    def effective_attempts(self, run_id: str) -> dict[tuple[str, str], dict]:
        """(device, variant) -> the attempt that counts: the latest ``ok`` one, else the latest one."""
        out: dict[tuple[str, str], dict] = {}
        for r in self._query("SELECT * FROM attempts WHERE run_id = ? ORDER BY id", (run_id,)):
            key = (r["device"], r["variant"])
            if key in out and out[key]["status"] == "ok" and r["status"] != "ok":
                continue
            out[key] = _attempt_row(r)
        return out

    def baseline_run_id(self, run_id: str, device_identity: str | None) -> str | None:
        """The last *passing* run before ``run_id`` with an ok, undisturbed attempt on this identity.

        A run passes when its latest stored verdict has exit code 0 (``pass`` or ``no_baseline``). A run
        whose data on this device stayed disturbed is never a baseline: a slow baseline would hide a
        regression.
        """
        if device_identity is None:
            return None
        run = self.run(run_id)
        rows = self._query(
            "SELECT r.id FROM runs r WHERE (r.started_at < ? OR (r.started_at = ? AND r.id < ?))"
            " AND EXISTS (SELECT 1 FROM attempts a WHERE a.run_id = r.id AND a.device_identity = ?"
            "             AND a.status = 'ok')"
            " AND NOT EXISTS (SELECT 1 FROM attempts a WHERE a.run_id = r.id AND a.device_identity = ?"
            "             AND a.status = 'ok'"
            "             AND COALESCE(json_extract(a.header_json, '$.disturbed'), 0) = 1)"
            " AND (SELECT v.exit_code FROM verdicts v WHERE v.run_id = r.id ORDER BY v.id DESC LIMIT 1) = 0"
            " ORDER BY r.started_at DESC, r.id DESC LIMIT 1",
            (run["started_at"], run["started_at"], run_id, device_identity, device_identity),
        )
        return rows[0]["id"] if rows else None

    def identities_of(self, device: str) -> list[dict]:
        """Distinct identities seen for a device name, oldest first.

        Each: {"fingerprint", "identity", "first_seen"}.
        """
        rows = self._query(
            "SELECT device_identity, identity_json, MIN(ended_at) AS first_seen FROM attempts"
            " WHERE device = ? AND device_identity IS NOT NULL GROUP BY device_identity ORDER BY first_seen",
            (device,),
        )
        return [{"fingerprint": r["device_identity"], "identity": json.loads(r["identity_json"]),
                 "first_seen": r["first_seen"]} for r in rows]

    # ------------------------------------------------------------------------------------- DataFrames
    def runs_df(self, limit: int | None = None) -> pd.DataFrame:
        """One row per run, newest first, with attempt counts and the latest verdict's outcome."""
        sql = (
            "SELECT r.*, (SELECT COUNT(*) FROM attempts a WHERE a.run_id = r.id) AS n_attempts,"
            " (SELECT COUNT(*) FROM attempts a WHERE a.run_id = r.id AND a.status = 'ok') AS n_ok,"
            " (SELECT v.outcome FROM verdicts v WHERE v.run_id = r.id ORDER BY v.id DESC LIMIT 1) AS outcome,"
            " (SELECT v.exit_code FROM verdicts v WHERE v.run_id = r.id ORDER BY v.id DESC LIMIT 1)"
            " AS exit_code FROM runs r ORDER BY r.started_at DESC, r.id DESC"
        )
        params: tuple = ()
        if limit is not None:
            sql += " LIMIT ?"
            params = (int(limit),)
        rows = []
        for r in self._query(sql, params):
            d = _run_row(r)
            d.pop("config")
            d.pop("budgets")
            d.update(n_attempts=r["n_attempts"], n_ok=r["n_ok"], outcome=r["outcome"],
                     exit_code=r["exit_code"])
            rows.append(d)
        columns = ["run_id", "started_at", "ended_at", "status", "preset", "variants", "devices",
                   "code_version", "config_hash", "n_attempts", "n_ok", "outcome", "exit_code"]
        return pd.DataFrame(rows, columns=columns)

    def attempts_df(self, run_id: str | None = None) -> pd.DataFrame:
        """One row per attempt (all of them, retries included) with phases (median over processes),
        peak RSS (max over processes), the throttled/hot flags and the number of samples."""
        sql = ("SELECT a.*, (SELECT COUNT(*) FROM samples s WHERE s.attempt_id = a.id) AS n_samples"
               " FROM attempts a")
        params: tuple = ()
        if run_id is not None:
            sql += " WHERE a.run_id = ?"
            params = (run_id,)
        rows = []
        for r in self._query(sql + " ORDER BY a.id", params):
            d = _attempt_row(r)
            d["n_samples"] = r["n_samples"]
            d.update(_header_metrics(d.pop("header")))
            d.pop("identity")
            rows.append(d)
        columns = ["attempt_id", "run_id", "device", "device_identity", "variant", "status", "error",
                   "started_at", "ended_at", "n_samples", "n_processes", "peak_rss_bytes", "rss_anon_bytes",
                   "rss_file_bytes", *PHASES, "throttled", "hot"]
        return pd.DataFrame(rows, columns=columns)

    def samples_df(self, run_id: str, *, all_attempts: bool = False) -> pd.DataFrame:
        """Raw per-iteration samples of a run (columns ``SAMPLE_COLUMNS``, plus ``attempt_id``).

        By default only the effective attempt of each (device, variant) (the latest ``ok`` one) counts;
        ``all_attempts=True`` returns the samples of every attempt, failed ones included.
        """
        sql = (
            "SELECT a.run_id, a.device, a.device_identity, a.variant, s.process, s.iteration, s.sentence_id,"
            " s.length_class, s.emotion, s.phones, s.frames, s.audio_s, s.frontend_s, s.acoustic_s,"
            " s.vocoder_s, s.total_s, s.attempt_id, s.cpu_s, s.others_cpu_s, s.psi_some_s, s.disturbed,"
            " s.remeasure_of, s.ttfa_s, s.rt_margin_s, s.chunks FROM samples s"
            " JOIN attempts a ON a.id = s.attempt_id"
            " WHERE a.run_id = ?"
        )
        params: list[Any] = [run_id]
        counted: dict[int, set | None] = {}
        disturbed_procs: dict[int, set] = {}
        if not all_attempts:
            for a in self.effective_attempts(run_id).values():
                if a["status"] == "ok":
                    counted[a["attempt_id"]] = counted_processes(a["header"])
                    disturbed_procs[a["attempt_id"]] = {
                        int(p.get("index", i))
                        for i, p in enumerate((a["header"] or {}).get("processes") or [])
                        if p.get("disturbed")
                    }
            if not counted:
                return pd.DataFrame(columns=[*SAMPLE_COLUMNS, "attempt_id", *INTERFERENCE_COLUMNS,
                                             *STREAMING_COLUMNS])
            sql += f" AND s.attempt_id IN ({','.join('?' * len(counted))})"
            params.extend(counted)
        sql += " ORDER BY a.device, a.variant, s.attempt_id, s.process, s.iteration"
        with self._lock:
            df = pd.read_sql_query(sql, self._conn, params=params)
        if not all_attempts and not df.empty:
            # Statistics see the undisturbed processes of a pair (all of them when it stayed disturbed).
            # In a process whose disturbed samples were all measured again, the re-measurements replace
            # them; a process that stayed disturbed counts its steady state as measured.
            keep = []
            for a, p, d, again in zip(df["attempt_id"], df["process"], df["disturbed"].fillna(0),
                                      df["remeasure_of"].isna()):
                if counted[a] is not None and p not in counted[a]:
                    keep.append(False)
                elif p in disturbed_procs.get(a, ()):
                    keep.append(bool(again))  # steady-state samples only
                else:
                    keep.append(d != 1)
            df = df[keep].reset_index(drop=True)
        return df

    def summary_df(self, run_id: str) -> pd.DataFrame:
        """One row per (device, device_identity, variant, length_class) of a run's effective samples.

        Columns: run_id, device, device_identity, variant, length_class, n, p50, p90, p99, mean (seconds of
        ``total_s``; percentiles nearest-rank), p50_ms, p90_ms, p99_ms, frontend_p50, acoustic_p50,
        vocoder_p50, audio_s (sum), rtf (sum total_s / sum audio_s), ttfa_p50 / ttfa_p90 (time to first
        audio: ``total_s`` of whole-utterance samples), rt_margin_min (worst streaming chunk),
        stream_chunk_frames (the protocol's: None for whole-utterance synthesis), peak_rss_bytes (max over
        processes),
        import_s, acoustic_load_s, vocoder_load_s, first_inference_s (median over processes), throttled, hot,
        size_acoustic_bytes, size_vocoder_bytes, params_acoustic, params_vocoder, quality_mel_l1,
        quality_mcd_db, emotion_id_accuracy, quality_n, mos, mos_n, content_hash.
        """
        samples = self.samples_df(run_id)
        attempts = {a["attempt_id"]: a for a in self.effective_attempts(run_id).values()}
        artifacts = self.artifacts(run_id)
        mos = self.latest_mos()
        rows = []
        if not samples.empty:
            keys = ["device", "device_identity", "variant", "length_class", "attempt_id"]
            order = {c: i for i, c in enumerate(LENGTH_CLASSES)}
            for (device, identity, variant, length_class, attempt_id), g in samples.groupby(
                keys, sort=False, dropna=False
            ):
                total = g["total_s"].to_numpy(dtype=float)
                s = stats.summarize(total)
                audio = float(g["audio_s"].sum())
                # whole-utterance samples (and those stored before schema 3) give their first audio at the end
                ttfa = g["ttfa_s"].astype(float).fillna(g["total_s"].astype(float)).to_numpy(dtype=float)
                t = stats.summarize(ttfa)
                margins = g["rt_margin_s"].dropna().astype(float)
                row = {
                    "run_id": run_id, "device": device, "device_identity": identity, "variant": variant,
                    "length_class": length_class, "n": s.n, "p50": s.p50, "p90": s.p90, "p99": s.p99,
                    "mean": s.mean, "p50_ms": s.p50 * 1e3, "p90_ms": s.p90 * 1e3, "p99_ms": s.p99 * 1e3,
                    "frontend_p50": _p50(g["frontend_s"]), "acoustic_p50": _p50(g["acoustic_s"]),
                    "vocoder_p50": _p50(g["vocoder_s"]), "audio_s": audio,
                    "rtf": float(total.sum()) / audio if audio > 0 else math.nan,
                    "ttfa_p50": t.p50, "ttfa_p90": t.p90,
                    "rt_margin_min": float(margins.min()) if len(margins) else math.nan,
                    "_order": order.get(length_class, len(order)),
                }
                header = attempts[attempt_id]["header"]
                row.update(_header_metrics(header))
                row["disturbed"], row["disturbed_reason"] = pair_disturbance(header)
                row.update(_artifact_metrics(artifacts.get(variant), mos.get(variant)))
                rows.append(row)
        columns = [
            "run_id", "device", "device_identity", "variant", "length_class", "n", "p50", "p90", "p99",
            "mean", "p50_ms", "p90_ms", "p99_ms", "frontend_p50", "acoustic_p50", "vocoder_p50", "audio_s",
            "rtf", "ttfa_p50", "ttfa_p90", "rt_margin_min", "stream_chunk_frames", "peak_rss_bytes",
            "rss_anon_bytes", "rss_file_bytes", *PHASES, "throttled", "hot",
            "disturbed", "disturbed_reason", "size_acoustic_bytes", "size_vocoder_bytes", "params_acoustic",
            "params_vocoder",
            "quality_mel_l1", "quality_mcd_db", "emotion_id_accuracy", "quality_n", "mos", "mos_n",
            "content_hash",
        ]
        df = pd.DataFrame(rows)
        if df.empty:
            return pd.DataFrame(columns=columns)
        df = df.sort_values(["device", "variant", "_order"], kind="stable").reset_index(drop=True)
        return df[columns]

    def facts(self, run_id: str) -> pd.DataFrame:
        """Device facts of a run: one row per (attempt, process, phase); ``process`` is -1 for the facts
        of the whole record. Fact keys become columns (``load_avg`` stays a list)."""
        rows = []
        for r in self._query(
            "SELECT f.*, a.device, a.device_identity, a.variant FROM facts f"
            " JOIN attempts a ON a.id = f.attempt_id WHERE a.run_id = ? ORDER BY f.id",
            (run_id,),
        ):
            d = {"run_id": run_id, "attempt_id": r["attempt_id"], "device": r["device"],
                 "device_identity": r["device_identity"], "variant": r["variant"],
                 "process": -1 if r["process"] is None else r["process"], "phase": r["phase"]}
            d.update(json.loads(r["facts_json"]))
            rows.append(d)
        base = ["run_id", "attempt_id", "device", "device_identity", "variant", "process", "phase"]
        return pd.DataFrame(rows) if rows else pd.DataFrame(columns=base)

    def mos_df(self) -> pd.DataFrame:
        rows = [dict(r) for r in self._query("SELECT variant, score AS mos, n, source, imported_at FROM mos")]
        return pd.DataFrame(rows, columns=["variant", "mos", "n", "source", "imported_at"])

    def history_df(
        self, *, device: str | None = None, variant: str | None = None, limit: int | None = None
    ) -> pd.DataFrame:
        """summary_df rows of the latest ``limit`` runs (newest first) with the run's start time and
        outcome, optionally for one device and/or variant."""
        frames = []
        for run in self.runs_df(limit=limit).itertuples():
            df = self.summary_df(run.run_id)
            if device is not None:
                df = df[df["device"] == device]
            if variant is not None:
                df = df[df["variant"] == variant]
            if df.empty:
                continue
            df = df.assign(started_at=run.started_at, status=run.status, outcome=run.outcome)
            frames.append(df)
        if not frames:
            return pd.DataFrame(columns=["started_at", "status", "outcome", *self.summary_df("").columns])
        return pd.concat(frames, ignore_index=True)


# ------------------------------------------------------------------------------------------- helpers


def _p50(series: pd.Series) -> float:
    data = series.dropna().to_numpy(dtype=float)
    return stats.percentile(data, 50) if data.size else math.nan


def _run_row(r: sqlite3.Row) -> dict:
    return {
        "run_id": r["id"], "started_at": r["started_at"], "ended_at": r["ended_at"], "status": r["status"],
        "preset": r["preset"], "variants": json.loads(r["variants_json"]),
        "devices": json.loads(r["devices_json"]), "code_version": r["code_version"],
        "config_hash": r["config_hash"], "config": json.loads(r["config_json"]),
        "budgets": json.loads(r["budgets_json"]),
    }


def _attempt_row(r: sqlite3.Row) -> dict:
    return {
        "attempt_id": r["id"], "run_id": r["run_id"], "device": r["device"],
        "device_identity": r["device_identity"], "identity": json.loads(r["identity_json"]),
        "variant": r["variant"], "status": r["status"], "error": r["error"], "started_at": r["started_at"],
        "ended_at": r["ended_at"],
        "header": json.loads(r["header_json"]) if r["header_json"] is not None else None,
    }


def bounded_error(error: str | None, limit: int = MAX_ERROR_CHARS) -> str | None:
    """An error text cut to ``limit`` characters (saying how much was cut)."""
    if error is None or len(error) <= limit:
        return error
    cut = len(error) - limit
    return error[:limit] + f" ... [{cut} more characters cut]"


def counted_processes(header: Mapping[str, Any] | None) -> set | None:
    """Indices of the processes whose samples count for an ok attempt: the undisturbed ok ones, or every
    ok one when the pair stayed disturbed; None for headers without process entries."""
    procs = (header or {}).get("processes")
    if not procs:
        return None
    ok = [p for p in procs if p.get("status", "ok") == "ok"]
    clean = [p for p in ok if not p.get("disturbed")]
    chosen = ok if (header or {}).get("disturbed") or not clean else clean
    return {int(p.get("index", i)) for i, p in enumerate(chosen)}


def pair_disturbance(header: Mapping[str, Any] | None) -> tuple[bool, str | None]:
    """Whether an ok attempt's counted data is disturbed, and what disturbed it."""
    header = header or {}
    if not header.get("disturbed"):
        return False, None
    reasons = [
        f"process {p.get('index')}: {p.get('disturbed_reason')}"
        for p in header.get("processes") or []
        if p.get("disturbed") and p.get("disturbed_reason")
    ]
    return True, "; ".join(reasons[:3]) or "interference during the measurement"


def _merge_headers(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict:
    """One attempt's header from the rounds so far: processes appended, flags or-ed."""
    merged = dict(new)
    merged["processes"] = list(old.get("processes") or []) + list(new.get("processes") or [])
    for flag in ("throttled", "hot"):
        merged[flag] = bool(old.get(flag)) or bool(new.get(flag))
    protocol = dict(new.get("protocol") or {})
    if protocol:
        protocol["processes"] = len(merged["processes"])
        merged["protocol"] = protocol
    return merged


def _insert_rows(conn: sqlite3.Connection, attempt_id: int, sample_rows: list, fact_rows: list) -> None:
    conn.executemany(
        "INSERT INTO samples (attempt_id, process, iteration, sentence_id, length_class, emotion,"
        " phones, frames, audio_s, frontend_s, acoustic_s, vocoder_s, total_s, cpu_s, others_cpu_s,"
        " psi_some_s, disturbed, remeasure_of, ttfa_s, rt_margin_s, chunks)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        [(attempt_id, *row) for row in sample_rows],
    )
    conn.executemany(
        "INSERT INTO facts (attempt_id, process, phase, facts_json) VALUES (?,?,?,?)",
        [(attempt_id, *row) for row in fact_rows],
    )


def _sample_value(sample: Mapping[str, Any], field: str) -> Any:
    value = sample.get(field)
    return int(bool(value)) if field == "disturbed" and value is not None else value


def _split_record(record: Mapping[str, Any]) -> tuple[dict, list[tuple], list[tuple]]:
    """Split a measurement record into (header without samples/facts, sample rows, fact rows)."""
    header = {k: v for k, v in record.items() if k not in ("processes", "facts_before", "facts_after")}
    facts: list[tuple] = []
    for phase in ("before", "after"):
        if record.get(f"facts_{phase}") is not None:
            facts.append((None, phase, _dumps(record[f"facts_{phase}"])))
    samples: list[tuple] = []
    processes = []
    for proc in record.get("processes") or []:
        index = int(proc["index"])
        skip = ("samples", "facts_before", "facts_after")
        processes.append({k: v for k, v in proc.items() if k not in skip})
        processes[-1]["n_samples"] = len(proc.get("samples") or [])
        for phase in ("before", "after"):
            if proc.get(f"facts_{phase}") is not None:
                facts.append((index, phase, _dumps(proc[f"facts_{phase}"])))
        for s in proc.get("samples") or []:
            samples.append((index, *(_sample_value(s, f) for f in _SAMPLE_FIELDS)))
    header["processes"] = processes
    return header, samples, facts


def _median_or_nan(values: list) -> float:
    data = [float(v) for v in values if v is not None]
    return float(np.median(data)) if data else math.nan


def _header_metrics(header: Mapping[str, Any] | None) -> dict:
    """Per-attempt numbers from a stored header: phases (median over processes), peak RSS (max), flags.
    Of an ok attempt only the processes whose samples count (``counted_processes``) are used."""
    all_procs = list((header or {}).get("processes", []))
    counted = counted_processes(header)
    procs = [p for i, p in enumerate(all_procs) if counted is not None and int(p.get("index", i)) in counted]
    procs = procs or [p for p in all_procs if p.get("status", "ok") == "ok"] or all_procs
    out: dict[str, Any] = {"n_processes": len(procs)}
    for key in ("peak_rss_bytes", "rss_anon_bytes", "rss_file_bytes"):
        values = [p.get(key) for p in procs if p.get(key) is not None]
        out[key] = max(values) if values else None
    for phase in PHASES:
        out[phase] = _median_or_nan([(p.get("phases") or {}).get(phase) for p in procs])
    out["throttled"] = bool((header or {}).get("throttled")) or any(p.get("throttled") for p in procs)
    out["hot"] = bool((header or {}).get("hot")) or any(p.get("hot") for p in procs)
    out["stream_chunk_frames"] = ((header or {}).get("protocol") or {}).get("stream_chunk_frames")
    return out


def _artifact_metrics(artifact: Mapping[str, Any] | None, mos: Mapping[str, Any] | None) -> dict:
    manifest = (artifact or {}).get("manifest") or {}
    sizes = manifest.get("sizes") or {}
    params = manifest.get("params") or {}
    quality = manifest.get("quality") or {}
    return {
        "size_acoustic_bytes": sizes.get("acoustic"), "size_vocoder_bytes": sizes.get("vocoder"),
        "params_acoustic": params.get("acoustic"), "params_vocoder": params.get("vocoder"),
        "quality_mel_l1": quality.get("mel_l1"), "quality_mcd_db": quality.get("mcd_db"),
        "emotion_id_accuracy": quality.get("emotion_id_accuracy"), "quality_n": quality.get("n"),
        "mos": (mos or {}).get("mos"), "mos_n": (mos or {}).get("n"),
        "content_hash": (artifact or {}).get("content_hash"),
    }


def json_records(df: pd.DataFrame) -> list[dict]:
    """DataFrame rows as plain JSON-able dicts (NaN/NA -> None, numpy scalars -> Python)."""
    out = []
    for row in df.to_dict(orient="records"):
        clean = {}
        for k, v in row.items():
            if isinstance(v, np.generic):
                v = v.item()
            if isinstance(v, float) and math.isnan(v):
                v = None
            elif v is pd.NA or v is pd.NaT:
                v = None
            clean[str(k)] = v
        out.append(clean)
    return out
