"""What every results store backend shares: the schema, the writes and the raw reads.

A backend (``harness.store.sqlite``, ``harness.store.postgres``) supplies the connection, its transactions,
its dialect of the schema and its migrations; the SQL here is written once, with ``?`` placeholders, in the
subset both databases speak (``INSERT ... RETURNING``, ``ON CONFLICT ... DO UPDATE``).

Writes happen as results arrive, each one a single transaction, so a controller killed at any moment loses
nothing already committed and ``edgebench run --resume`` asks ``missing_pairs(run_id)`` for what is left.
Reads return the stored rows (decoded JSON, no statistics): ``harness.results`` interprets them.

Device identity: every attempt stores the device name *and* its identity fingerprint (a hash of the
hardware/software facts, see ``devices.measure.device_identity``), so results from different identities
are never pooled even when the device name is the same.

Schema versions (``SCHEMA_VERSION``; the ``schema_version`` table holds the store's version), the same on
every backend:
    1: runs, artifacts, attempts, samples, facts, mos, verdicts.
    2: interleaved measurement and interference: an attempt can be ``partial`` (its pair is measured one
       process per round; ``processes_planned`` says how many it needs) and grows process by process
       (``add_processes``); samples carry the measuring process's CPU seconds, the other processes' CPU
       seconds on its CPUs, the CPU pressure stall, and whether the sample was ``disturbed``.
    3: streaming synthesis: samples carry the time to first audio (``ttfa_s``), the real-time margin
       (``rt_margin_s``) and the number of audio ``chunks``.
    4: farm places: an attempt can be ``busy`` (a labgrid place another user held for longer than the run
       waits; ``devices.labgrid``), a status of its own, distinct from ``unreachable``.
    5: device limits: ``microbench`` holds each run's micro-benchmarks of a device identity
       (``devices.ondevice.microbench``: what its stages are placed against, and what tells device drift
       from a model regression); a run that reused a recent measurement names it (``reused_from``).

A (device, variant) pair of a run is measured when it has an ``ok`` attempt. Measured interleaved, its
attempt is created ``partial`` with the first process and turns ``ok`` once it holds the planned number of
undisturbed ok processes; a process that fails makes it ``failed``. ``--resume`` completes a ``partial``
attempt (it is never restarted).
A store with a newer version than this code knows is refused (upgrade edgebench, or point ``--store``
elsewhere); an older one is migrated in place by the backend's ``MIGRATIONS``, one step at a time, inside
one transaction.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from abc import ABC, abstractmethod
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from harness.errors import UserError

SCHEMA_VERSION = 5

#: Attempt statuses. ``ok``, ``failed`` and ``partial`` come with a record from the agent; the others do
#: not. ``partial``: an interleaved pair with fewer undisturbed ok processes than planned so far.
#: ``busy``: the device is a farm place someone else held for longer than the run would wait.
ATTEMPT_STATUSES = ("ok", "failed", "partial", "unreachable", "timeout", "ineligible", "busy")
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
#: Every column ``raw_samples`` returns.
RAW_SAMPLE_COLUMNS = (*SAMPLE_COLUMNS, "attempt_id", *INTERFERENCE_COLUMNS, *STREAMING_COLUMNS)


class StoreError(UserError):
    """The store cannot be used (newer schema, not an edgebench store, unknown run id, no server)."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, allow_nan=False, default=str)


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 over the canonical JSON of a configuration (key order does not matter)."""
    return hashlib.sha256(dumps(config).encode("utf-8")).hexdigest()


def new_run_id(now_: datetime | None = None) -> str:
    """``YYYYMMDD-HHMMSS-xxxxxx`` (UTC, 6 random hex digits): sortable by start time. Several controllers
    share a PostgreSQL store, so an id that is taken anyway is drawn again (``Store.start_run``)."""
    now_ = now_ or datetime.now(timezone.utc)
    return f"{now_:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


#: Schema 1, written once in SQLite's words; ``harness.store.postgres`` translates the column types.
SCHEMA_1 = """
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

#: Schema 5's table, in SQLite's words (``harness.store.postgres`` translates the column types).
SCHEMA_5 = """
CREATE TABLE microbench (
    id              INTEGER PRIMARY KEY,
    run_id          TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    device          TEXT NOT NULL,
    device_identity TEXT,
    measured_at     TEXT NOT NULL,
    reused_from     INTEGER,
    doc_json        TEXT NOT NULL
);
CREATE INDEX microbench_by_identity ON microbench (device_identity, measured_at);
CREATE INDEX microbench_by_run ON microbench (run_id)
"""

#: The columns schema 2 and 3 add to samples (both backends add them the same way).
SAMPLE_COLUMNS_2 = (("cpu_s", "REAL"), ("others_cpu_s", "REAL"), ("psi_some_s", "REAL"),
                    ("disturbed", "INTEGER"), ("remeasure_of", "INTEGER"))
SAMPLE_COLUMNS_3 = (("ttfa_s", "REAL"), ("rt_margin_s", "REAL"), ("chunks", "INTEGER"))
#: The statuses the attempts table accepts from schema 2 and from schema 4 on.
ATTEMPT_STATUSES_2 = ("ok", "failed", "partial", "unreachable", "timeout", "ineligible")
ATTEMPT_STATUSES_4 = ATTEMPT_STATUSES


def statements(script: str) -> list[str]:
    """The statements of a ``;``-separated script (run one by one, inside the caller's transaction)."""
    return [s for s in script.split(";") if s.strip()]


class Tx(ABC):
    """One open transaction: ``?`` placeholders, rows readable by column name."""

    @abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement; returns a cursor (``fetchone``, ``fetchall``, ``rowcount``)."""

    @abstractmethod
    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    def insert(self, sql: str, params: Sequence[Any]) -> int:
        """An INSERT of one row; returns its ``id``."""
        return int(self.execute(sql + " RETURNING id", params).fetchone()["id"])


class Store(ABC):
    """A results store. ``Store(location)`` opens the backend the location names: a ``postgresql://`` URL
    (``harness.store.postgres``) or a file path (``harness.store.sqlite``; the default is
    ``results.sqlite`` in the state directory). Opening creates or migrates the schema. Thread-safe."""

    #: Where the store is, for messages (a path, or a URL without its password).
    location: str

    def __new__(cls, location: Any = None, *args: Any, **kwargs: Any):
        if cls is Store:
            from harness.store import backend_for

            cls = backend_for(location)
        return super().__new__(cls)

    # -- what a backend provides
    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def _tx(self) -> Any:
        """A context manager: one write transaction yielding a ``Tx`` (rolled back on any exception)."""

    @abstractmethod
    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Mapping[str, Any]]:
        """Rows of one read (``?`` placeholders), each readable by column name."""

    @abstractmethod
    def _json_flag(self, column: str, key: str) -> str:
        """SQL that is true where the JSON object in ``column`` has ``key`` set to true."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def schema_version(self) -> int:
        return int(self._query("SELECT version FROM schema_version")[0]["version"])

    def _check_version(self, version: int) -> None:
        from harness import store as package  # looked up here, so that a test can add a migration

        if version > package.SCHEMA_VERSION:
            raise StoreError(
                f"{self.location}: store schema version {version} is newer than this edgebench supports "
                f"({package.SCHEMA_VERSION}); upgrade edgebench, or use another store with --store"
            )

    def _run_migrations(self, tx: Tx, version: int, migrations: Mapping[int, Any]) -> None:
        """Bring a store at ``version`` to ``SCHEMA_VERSION`` inside the caller's transaction."""
        from harness import store as package

        while version < package.SCHEMA_VERSION:
            migrations[version](tx)
            version += 1
            tx.execute("UPDATE schema_version SET version = ?", (version,))

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
        """Record a new run (status ``running``) and return its id (drawn again if another controller
        took the same one)."""
        for _ in range(8):
            rid = run_id or new_run_id()
            if run_id is None and self._query("SELECT 1 AS x FROM runs WHERE id = ?", (rid,)):
                continue
            with self._tx() as tx:
                tx.execute(
                    "INSERT INTO runs (id, config_hash, config_json, code_version, budgets_json, preset,"
                    " variants_json, devices_json, started_at, status) VALUES (?,?,?,?,?,?,?,?,?,'running')",
                    (
                        rid, config_hash(config), dumps(dict(config)), str(code_version),
                        dumps(dict(budgets)), preset, dumps(list(variants)), dumps(list(devices)),
                        started_at or now(),
                    ),
                )
            return rid
        raise StoreError(f"{self.location}: could not draw a free run id")  # pragma: no cover

    def finish_run(self, run_id: str, status: str) -> None:
        if status not in ("complete", "incomplete"):
            raise ValueError(f"run status must be complete or incomplete, got {status!r}")
        with self._tx() as tx:
            cur = tx.execute("UPDATE runs SET status = ?, ended_at = ? WHERE id = ?", (status, now(), run_id))
            if cur.rowcount != 1:
                raise StoreError(f"{self.location}: no run {run_id!r}")

    def record_microbench(self, run_id: str, device: str, identity: str | None, doc: Mapping[str, Any],
                          *, measured_at: str | None = None, reused_from: int | None = None) -> int:
        """Store a device's micro-benchmarks for a run (``reused_from``: the row they were copied from, with
        its ``measured_at``); returns the row id."""
        with self._tx() as tx:
            return tx.insert(
                "INSERT INTO microbench (run_id, device, device_identity, measured_at, reused_from, doc_json)"
                " VALUES (?,?,?,?,?,?)",
                (run_id, device, identity, measured_at or now(), reused_from, dumps(dict(doc))),
            )

    def microbench(self, run_id: str) -> dict[str, dict]:
        """device -> its micro-benchmarks in this run (the last stored), with ``id``, ``device_identity``,
        ``measured_at``, ``reused_from`` and ``doc``."""
        rows = self._query("SELECT * FROM microbench WHERE run_id = ? ORDER BY id", (run_id,))
        return {r["device"]: _microbench_row(r) for r in rows}

    def latest_microbench(self, identity: str, since: str) -> dict | None:
        """The newest micro-benchmarks of a device identity measured at or after ``since`` (ISO time),
        measured (not reused) and without an error, or None."""
        rows = self._query(
            "SELECT * FROM microbench WHERE device_identity = ? AND measured_at >= ? AND reused_from IS NULL"
            " ORDER BY measured_at DESC, id DESC", (identity, since))
        for r in rows:
            row = _microbench_row(r)
            if "error" not in row["doc"]:
                return row
        return None

    def record_artifact(self, run_id: str, variant: str, path: str, manifest: Mapping[str, Any]) -> None:
        """Record (or replace, on resume) the artifact a run measured for ``variant``."""
        with self._tx() as tx:
            tx.execute(
                "INSERT INTO artifacts (run_id, variant, path, content_hash, manifest_json)"
                " VALUES (?,?,?,?,?)"
                " ON CONFLICT (run_id, variant) DO UPDATE SET path = excluded.path,"
                " content_hash = excluded.content_hash, manifest_json = excluded.manifest_json",
                (run_id, variant, str(path), manifest.get("content_hash"), dumps(dict(manifest))),
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
        header, sample_rows, fact_rows = split_record(record) if record is not None else (None, [], [])
        ended_at = ended_at or now()
        with self._tx() as tx:
            attempt_id = tx.insert(
                "INSERT INTO attempts (run_id, device, device_identity, identity_json, variant, status,"
                " error, started_at, ended_at, header_json) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    run_id, device, identity.get("fingerprint"), dumps(identity), variant, status, error,
                    started_at or ended_at, ended_at, None if header is None else dumps(header),
                ),
            )
            _insert_rows(tx, attempt_id, sample_rows, fact_rows)
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
        stamp = now()
        with self._tx() as tx:
            row = tx.execute(
                "SELECT id, header_json, started_at FROM attempts WHERE run_id = ? AND device = ?"
                " AND variant = ? AND status = 'partial' ORDER BY id DESC LIMIT 1" + self._for_update(),
                (run_id, device, variant),
            ).fetchone()
            old = json.loads(row["header_json"]) if row is not None and row["header_json"] else None
            offset = len((old or {}).get("processes") or [])
            renumbered = dict(record)
            renumbered["processes"] = [
                {**p, "index": offset + i} for i, p in enumerate(record.get("processes") or [])
            ]
            header, sample_rows, fact_rows = split_record(renumbered)
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
                identity.get("fingerprint"), dumps(identity), status, bounded_error(error), stamp,
                dumps(header), int(planned),
            )
            if row is None:
                attempt_id = tx.insert(
                    "INSERT INTO attempts (device_identity, identity_json, status, error, ended_at,"
                    " header_json, processes_planned, run_id, device, variant, started_at)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (*values, run_id, device, variant, stamp),
                )
            else:
                attempt_id = int(row["id"])
                tx.execute(
                    "UPDATE attempts SET device_identity = ?, identity_json = ?, status = ?, error = ?,"
                    " ended_at = ?, header_json = ?, processes_planned = ? WHERE id = ?",
                    (*values, attempt_id),
                )
            _insert_rows(tx, attempt_id, sample_rows, fact_rows)
        return attempt_id, status

    def _for_update(self) -> str:
        """Row locking for read-modify-write (PostgreSQL); SQLite's write transaction already excludes."""
        return ""

    def import_mos(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Import MOS rows (``variant``, ``mos``, ``n_listeners``, ``source``) in one transaction."""
        stamp = now()
        values = []
        for row in rows:
            n = row.get("n_listeners")
            values.append((str(row["variant"]), float(row["mos"]), None if n is None else int(n),
                           row.get("source"), stamp))
        with self._tx() as tx:
            tx.executemany(
                "INSERT INTO mos (variant, score, n, source, imported_at) VALUES (?,?,?,?,?)", values
            )
        return len(values)

    def save_verdict(self, run_id: str, verdict: Mapping[str, Any]) -> None:
        """Store a gate verdict (``Verdict.to_dict()``); the latest one is ``verdict(run_id)``."""
        with self._tx() as tx:
            tx.execute(
                "INSERT INTO verdicts (run_id, outcome, exit_code, verdict_json, created_at)"
                " VALUES (?,?,?,?,?)",
                (run_id, verdict["outcome"], int(verdict["exit_code"]), dumps(dict(verdict)), now()),
            )

    # ------------------------------------------------------------------------------------------- reads
    def run(self, run_id: str) -> dict:
        """The run's row as a dict (config, budgets, variants and devices decoded); StoreError if unknown."""
        rows = self._query("SELECT * FROM runs WHERE id = ?", (run_id,))
        if not rows:
            raise StoreError(f"{self.location}: no run {run_id!r} (see `edgebench history`)")
        return run_row(rows[0])

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
            for r in self._query("SELECT * FROM artifacts WHERE run_id = ? ORDER BY id", (run_id,))
        }

    def latest_mos(self) -> dict[str, dict]:
        """variant -> {"mos", "n", "source", "imported_at"} from the latest import of each variant."""
        out: dict[str, dict] = {}
        for r in self._query("SELECT * FROM mos ORDER BY id"):
            out[r["variant"]] = {"mos": r["score"], "n": r["n"], "source": r["source"],
                                 "imported_at": r["imported_at"]}
        return out

    def attempts(self, run_id: str | None = None) -> list[dict]:
        """Every attempt (of one run, or of all), oldest first, with its sample count; header decoded."""
        sql = ("SELECT a.*, (SELECT COUNT(*) FROM samples s WHERE s.attempt_id = a.id) AS n_samples"
               " FROM attempts a")
        params: tuple = ()
        if run_id is not None:
            sql += " WHERE a.run_id = ?"
            params = (run_id,)
        out = []
        for r in self._query(sql + " ORDER BY a.id", params):
            d = attempt_row(r)
            d["n_samples"] = int(r["n_samples"])
            out.append(d)
        return out

    def effective_attempts(self, run_id: str) -> dict[tuple[str, str], dict]:
        """(device, variant) -> the attempt that counts: the latest ``ok`` one, else the latest one."""
        out: dict[tuple[str, str], dict] = {}
        for r in self._query("SELECT * FROM attempts WHERE run_id = ? ORDER BY id", (run_id,)):
            key = (r["device"], r["variant"])
            if key in out and out[key]["status"] == "ok" and r["status"] != "ok":
                continue
            out[key] = attempt_row(r)
        return out

    def raw_samples(self, run_id: str, attempt_ids: Sequence[int] | None = None) -> pd.DataFrame:
        """The stored samples of a run (of the given attempts only, when given), columns
        ``RAW_SAMPLE_COLUMNS``, ordered by device, variant, attempt, process and iteration."""
        sql = (
            "SELECT a.run_id, a.device, a.device_identity, a.variant, s.process, s.iteration, s.sentence_id,"
            " s.length_class, s.emotion, s.phones, s.frames, s.audio_s, s.frontend_s, s.acoustic_s,"
            " s.vocoder_s, s.total_s, s.attempt_id, s.cpu_s, s.others_cpu_s, s.psi_some_s, s.disturbed,"
            " s.remeasure_of, s.ttfa_s, s.rt_margin_s, s.chunks FROM samples s"
            " JOIN attempts a ON a.id = s.attempt_id WHERE a.run_id = ?"
        )
        params: list[Any] = [run_id]
        if attempt_ids is not None:
            if not attempt_ids:
                return pd.DataFrame(columns=list(RAW_SAMPLE_COLUMNS))
            sql += f" AND s.attempt_id IN ({','.join('?' * len(attempt_ids))})"
            params.extend(int(a) for a in attempt_ids)
        sql += " ORDER BY a.device, a.variant, s.attempt_id, s.process, s.iteration"
        rows = self._query(sql, params)
        df = pd.DataFrame([dict(r) for r in rows], columns=list(RAW_SAMPLE_COLUMNS))
        for column in ("audio_s", "frontend_s", "acoustic_s", "vocoder_s", "total_s", "cpu_s",
                       "others_cpu_s", "psi_some_s", "ttfa_s", "rt_margin_s"):
            df[column] = pd.to_numeric(df[column], errors="coerce").astype(float)
        return df

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
            f"             AND a.status = 'ok' AND {self._json_flag('a.header_json', 'disturbed')})"
            " AND (SELECT v.exit_code FROM verdicts v WHERE v.run_id = r.id ORDER BY v.id DESC LIMIT 1) = 0"
            " ORDER BY r.started_at DESC, r.id DESC LIMIT 1",
            (run["started_at"], run["started_at"], run_id, device_identity, device_identity),
        )
        return rows[0]["id"] if rows else None

    def identities_of(self, device: str) -> list[dict]:
        """Distinct identities seen for a device name, oldest first.

        Each: {"fingerprint", "identity", "first_seen"}.
        """
        seen: dict[str, dict] = {}
        for r in self._query(
            "SELECT device_identity, identity_json, ended_at FROM attempts"
            " WHERE device = ? AND device_identity IS NOT NULL ORDER BY ended_at, id",
            (device,),
        ):
            seen.setdefault(r["device_identity"], {"fingerprint": r["device_identity"],
                                                   "identity": json.loads(r["identity_json"]),
                                                   "first_seen": r["ended_at"]})
        return list(seen.values())

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
            d = run_row(r)
            d.pop("config")
            d.pop("budgets")
            d.update(n_attempts=int(r["n_attempts"]), n_ok=int(r["n_ok"]), outcome=r["outcome"],
                     exit_code=r["exit_code"])
            rows.append(d)
        columns = ["run_id", "started_at", "ended_at", "status", "preset", "variants", "devices",
                   "code_version", "config_hash", "n_attempts", "n_ok", "outcome", "exit_code"]
        return pd.DataFrame(rows, columns=columns)

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
        rows = [dict(r) for r in self._query("SELECT variant, score AS mos, n, source, imported_at FROM mos"
                                             " ORDER BY id")]
        return pd.DataFrame(rows, columns=["variant", "mos", "n", "source", "imported_at"])


# ------------------------------------------------------------------------------------------- helpers


def run_row(r: Mapping[str, Any]) -> dict:
    return {
        "run_id": r["id"], "started_at": r["started_at"], "ended_at": r["ended_at"], "status": r["status"],
        "preset": r["preset"], "variants": json.loads(r["variants_json"]),
        "devices": json.loads(r["devices_json"]), "code_version": r["code_version"],
        "config_hash": r["config_hash"], "config": json.loads(r["config_json"]),
        "budgets": json.loads(r["budgets_json"]),
    }


def attempt_row(r: Mapping[str, Any]) -> dict:
    return {
        "attempt_id": int(r["id"]), "run_id": r["run_id"], "device": r["device"],
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


def _insert_rows(tx: Tx, attempt_id: int, sample_rows: list, fact_rows: list) -> None:
    if sample_rows:
        tx.executemany(
            "INSERT INTO samples (attempt_id, process, iteration, sentence_id, length_class, emotion,"
            " phones, frames, audio_s, frontend_s, acoustic_s, vocoder_s, total_s, cpu_s, others_cpu_s,"
            " psi_some_s, disturbed, remeasure_of, ttfa_s, rt_margin_s, chunks)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [(attempt_id, *row) for row in sample_rows],
        )
    if fact_rows:
        tx.executemany(
            "INSERT INTO facts (attempt_id, process, phase, facts_json) VALUES (?,?,?,?)",
            [(attempt_id, *row) for row in fact_rows],
        )


def _sample_value(sample: Mapping[str, Any], field: str) -> Any:
    value = sample.get(field)
    return int(bool(value)) if field == "disturbed" and value is not None else value


def split_record(record: Mapping[str, Any]) -> tuple[dict, list[tuple], list[tuple]]:
    """Split a measurement record into (header without samples/facts, sample rows, fact rows)."""
    header = {k: v for k, v in record.items() if k not in ("processes", "facts_before", "facts_after")}
    facts: list[tuple] = []
    for phase in ("before", "after"):
        if record.get(f"facts_{phase}") is not None:
            facts.append((None, phase, dumps(record[f"facts_{phase}"])))
    samples: list[tuple] = []
    processes = []
    for proc in record.get("processes") or []:
        index = int(proc["index"])
        skip = ("samples", "facts_before", "facts_after")
        processes.append({k: v for k, v in proc.items() if k not in skip})
        processes[-1]["n_samples"] = len(proc.get("samples") or [])
        for phase in ("before", "after"):
            if proc.get(f"facts_{phase}") is not None:
                facts.append((index, phase, dumps(proc[f"facts_{phase}"])))
        for s in proc.get("samples") or []:
            samples.append((index, *(_sample_value(s, f) for f in _SAMPLE_FIELDS)))
    header["processes"] = processes
    return header, samples, facts


def _microbench_row(r: Mapping[str, Any]) -> dict:
    return {"id": int(r["id"]), "device": r["device"], "device_identity": r["device_identity"],
            "measured_at": r["measured_at"], "reused_from": r["reused_from"],
            "doc": json.loads(r["doc_json"])}
