"""harness.store on both backends, a real SQLite file and a real PostgreSQL database (``store_location``):
schema and migrations, transactions, crash safety, raw reads and the summaries ``harness.results`` builds.
A few tests are about one backend's own file or server and say so."""

from __future__ import annotations

import json
import math
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from records import make_identity, make_manifest, make_record

from harness import results, stats
from harness import store as store_mod
from harness.budgets import default_budgets
from harness.errors import UserError
from harness.store import SAMPLE_COLUMNS, SCHEMA_VERSION, Store, StoreError

TESTS_DIR = Path(__file__).parent


def new_run(st: Store, variants=("original", "pruned"), devices=("pi4-a",), **kw) -> str:
    return st.start_run({"preset": "tiny"}, default_budgets().to_dict(), "test", "tiny", list(variants),
                        list(devices), **kw)


@pytest.fixture
def st(store_location):
    with Store(store_location) as s:
        yield s


def backend(location: str):
    """The backend module a location opens (for its MIGRATIONS)."""
    from harness.store import postgres, sqlite

    return postgres if location.startswith("postgresql://") else sqlite


def integrity_errors() -> tuple:
    import psycopg

    return (sqlite3.IntegrityError, psycopg.IntegrityError)


def count(st, table: str) -> int:
    return int(st._query(f"SELECT COUNT(*) AS n FROM {table}")[0]["n"])


def has_column(st, table: str, column: str) -> bool:
    try:
        st._query(f"SELECT {column} FROM {table} LIMIT 1")
        return True
    except Exception:
        return False


def test_a_new_store_has_the_current_schema(st):
    assert st.schema_version() == SCHEMA_VERSION == 5
    for table in ("schema_version", "runs", "artifacts", "attempts", "samples", "facts", "mos", "verdicts"):
        assert count(st, table) >= 0


def test_new_sqlite_file_has_wal_and_foreign_keys(tmp_path):
    st = Store(tmp_path / "state" / "results.sqlite")
    assert st._query("PRAGMA journal_mode")[0][0] == "wal"
    assert st._query("PRAGMA foreign_keys")[0][0] == 1
    tables = {r[0] for r in st._query("SELECT name FROM sqlite_master WHERE type = 'table'")}
    expected = {"schema_version", "runs", "artifacts", "attempts", "samples", "facts", "mos", "verdicts"}
    assert expected <= tables
    st.close()


def test_reopening_keeps_data(store_location):
    with Store(store_location) as s:
        rid = new_run(s)
    with Store(store_location) as s:
        assert s.run(rid)["variants"] == ["original", "pruned"]
        assert s.schema_version() == SCHEMA_VERSION


def test_newer_schema_is_refused_with_a_fix(store_location):
    with Store(store_location) as s, s._tx() as tx:
        tx.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(StoreError) as err:
        Store(store_location)
    assert isinstance(err.value, UserError)
    msg = str(err.value)
    assert "99" in msg and "upgrade edgebench" in msg and "--store" in msg


def test_foreign_sqlite_file_is_refused(tmp_path):
    path = tmp_path / "other.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="not an edgebench store"):
        Store(path)


def test_not_sqlite_at_all_is_a_user_error(tmp_path):
    path = tmp_path / "junk.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError):
        Store(path)


def test_migrations_run_in_order_and_roll_back_on_failure(store_location, monkeypatch):
    with Store(store_location) as s:
        rid = new_run(s)

    n = SCHEMA_VERSION
    migrations = backend(store_location).MIGRATIONS

    def to_next(tx):
        tx.execute("ALTER TABLE runs ADD COLUMN note TEXT")

    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", n + 1)
    monkeypatch.setitem(migrations, n, to_next)
    with Store(store_location) as s:
        assert s.schema_version() == n + 1
        assert s.run(rid)["run_id"] == rid
        assert has_column(s, "runs", "note")

    def broken(tx):
        tx.execute("ALTER TABLE runs ADD COLUMN other TEXT")
        raise RuntimeError("migration bug")

    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", n + 2)
    monkeypatch.setitem(migrations, n + 1, broken)
    with pytest.raises((RuntimeError, StoreError)):
        Store(store_location)
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", n + 1)
    with Store(store_location) as s:
        assert s.schema_version() == n + 1
        assert not has_column(s, "runs", "other")


def test_run_lifecycle_and_missing_pairs(st):
    rid = new_run(st, variants=("original", "pruned"), devices=("pi4-a", "pi4-b"))
    assert st.run(rid)["status"] == "running"
    assert st.missing_pairs(rid) == [("pi4-a", "original"), ("pi4-a", "pruned"), ("pi4-b", "original"),
                                     ("pi4-b", "pruned")]
    st.record_attempt(rid, "pi4-a", make_identity("pi4-a"), "original", "ok", None, make_record())
    st.record_attempt(rid, "pi4-b", make_identity("pi4-b"), "original", "unreachable", "refused", None)
    st.record_attempt(rid, "pi4-a", make_identity("pi4-a"), "pruned", "failed", "crash",
                      make_record("pruned", status="failed", error="crash"))
    assert st.missing_pairs(rid) == [("pi4-a", "pruned"), ("pi4-b", "original"), ("pi4-b", "pruned")]
    st.finish_run(rid, "incomplete")
    run = st.run(rid)
    assert run["status"] == "incomplete" and run["ended_at"]
    assert run["budgets"]["version"] == 1 and run["config"] == {"preset": "tiny"}
    assert len(run["config_hash"]) == 64
    with pytest.raises(ValueError):
        st.finish_run(rid, "bogus")
    with pytest.raises(StoreError):
        st.run("nope")


def test_bad_attempt_status_is_rejected(st):
    rid = new_run(st)
    with pytest.raises(ValueError):
        st.record_attempt(rid, "pi4-a", make_identity(), "original", "weird", None, None)


def test_a_failed_write_leaves_nothing_behind(st):
    rid = new_run(st)
    record = make_record(samples_per_class=6)
    record["processes"][1]["samples"][2]["total_s"] = None  # NOT NULL violated mid-insert
    with pytest.raises(integrity_errors()):
        st.record_attempt(rid, "pi4-a", make_identity(), "original", "ok", None, record)
    assert results.attempts_df(st, rid).empty
    assert count(st, "samples") == 0 and count(st, "facts") == 0


def test_attempt_on_unknown_run_violates_foreign_key(st):
    with pytest.raises(integrity_errors()):
        st.record_attempt("no-such-run", "pi4-a", make_identity(), "original", "ok", None, make_record())


def test_samples_df_and_the_effective_attempt(st):
    rid = new_run(st)
    st.record_attempt(rid, "pi4-a", make_identity(), "original", "failed", "boom",
                      make_record(status="failed", error="boom", samples_per_class=3, seed=1))
    st.record_attempt(rid, "pi4-a", make_identity(), "original", "ok", None, make_record(samples_per_class=9))
    df = results.samples_df(st, rid)
    assert list(df.columns[: len(SAMPLE_COLUMNS)]) == list(SAMPLE_COLUMNS)
    assert len(df) == 27 and df["attempt_id"].nunique() == 1
    assert set(df["process"]) == {0, 1, 2}
    assert len(results.samples_df(st, rid, all_attempts=True)) == 27 + 9
    attempts = results.attempts_df(st, rid)
    assert list(attempts["status"]) == ["failed", "ok"]
    assert attempts.iloc[1]["n_samples"] == 27 and attempts.iloc[1]["peak_rss_bytes"] == 312_000_000


def test_summary_df_statistics(st):
    rid = new_run(st)
    st.record_artifact(rid, "original", "/artifacts/original", make_manifest("original"))
    record = make_record(samples_per_class=30)
    st.record_attempt(rid, "pi4-a", make_identity(), "original", "ok", None, record)
    st.import_mos([{"variant": "original", "mos": 4.0, "n_listeners": 12, "source": "t"},
                   {"variant": "original", "mos": 4.2, "n_listeners": 20, "source": "t2"}])
    summary = results.summary_df(st, rid)
    assert list(summary["length_class"]) == ["short", "medium", "long"]
    short = summary.iloc[0]
    totals = [s["total_s"] for p in record["processes"] for s in p["samples"] if s["length_class"] == "short"]
    audio = [s["audio_s"] for p in record["processes"] for s in p["samples"] if s["length_class"] == "short"]
    assert short["n"] == len(totals) == 30
    assert short["p90"] == stats.percentile(totals, 90)
    assert short["p90_ms"] == pytest.approx(short["p90"] * 1e3)
    assert short["rtf"] == pytest.approx(sum(totals) / sum(audio))
    assert short["peak_rss_bytes"] == 312_000_000
    assert short["size_acoustic_bytes"] == 48_500_000 and short["emotion_id_accuracy"] == 0.95
    assert short["mos"] == 4.2 and short["mos_n"] == 20
    assert short["first_inference_s"] == 0.8 and not short["throttled"]


def test_identities_are_never_pooled(st):
    rid = new_run(st, variants=("original",), devices=("pi4-a",))
    st.record_attempt(rid, "pi4-a", make_identity("pi4-a", fingerprint="aaaaaaaaaaaa"), "original", "ok",
                      None, make_record(samples_per_class=6))
    rid2 = new_run(st, variants=("original",), devices=("pi4-a",))
    st.record_attempt(rid2, "pi4-a", make_identity("pi4-a", fingerprint="bbbbbbbbbbbb"), "original", "ok",
                      None, make_record(samples_per_class=6))
    st.save_verdict(rid, {"outcome": "no_baseline", "exit_code": 0})
    assert st.baseline_run_id(rid2, "bbbbbbbbbbbb") is None
    assert st.baseline_run_id(rid2, "aaaaaaaaaaaa") == rid
    hist = results.history_df(st, device="pi4-a")
    assert set(hist["device_identity"]) == {"aaaaaaaaaaaa", "bbbbbbbbbbbb"}
    assert [i["fingerprint"] for i in st.identities_of("pi4-a")] == ["aaaaaaaaaaaa", "bbbbbbbbbbbb"]


def test_baseline_is_the_last_passing_earlier_run(st):
    ids = []
    for i, outcome in enumerate(("pass", "regressed", "pass", None)):
        rid = new_run(st, run_id=f"2026112{i}-000000-0000", started_at=f"2026-11-2{i}T00:00:00+00:00")
        record = make_record(samples_per_class=3)
        st.record_attempt(rid, "pi4-a", make_identity(), "original", "ok", None, record)
        if outcome:
            st.save_verdict(rid, {"outcome": outcome, "exit_code": 0 if outcome == "pass" else 1})
        ids.append(rid)
    fp = make_identity()["fingerprint"]
    assert st.baseline_run_id(ids[3], fp) == ids[2]
    assert st.baseline_run_id(ids[2], fp) == ids[0]
    assert st.baseline_run_id(ids[0], fp) is None
    assert st.verdict(ids[1])["outcome"] == "regressed" and st.verdict(ids[3]) is None
    runs = st.runs_df()
    assert list(runs["run_id"]) == ids[::-1]
    assert list(runs["outcome"].fillna("-")) == ["-", "pass", "regressed", "pass"]


def test_facts_one_row_per_process_and_phase(st):
    rid = new_run(st)
    st.record_attempt(rid, "pi4-a", make_identity(), "original", "ok", None, make_record(processes=2))
    facts = st.facts(rid)
    assert len(facts) == 2 + 2 * 2
    assert set(facts["process"]) == {-1, 0, 1}
    after = facts[(facts["process"] == 0) & (facts["phase"] == "after")].iloc[0]
    assert after["temp_c"] == 55.0 and after["cpu_model"] == "Cortex-A72"
    header = st.effective_attempts(rid)[("pi4-a", "original")]["header"]
    assert "samples" not in header["processes"][0] and "facts_before" not in header
    assert header["processes"][0]["phases"]["first_inference_s"] == 0.8


def test_mos_import_is_all_or_nothing(st):
    with pytest.raises((TypeError, ValueError)):
        st.import_mos([{"variant": "a", "mos": 4.0}, {"variant": "b", "mos": None}])
    assert st.mos_df().empty
    assert st.import_mos([{"variant": "a", "mos": 4.0}]) == 1
    assert st.latest_mos()["a"]["mos"] == 4.0


def test_artifact_is_replaced_on_resume(st):
    rid = new_run(st)
    st.record_artifact(rid, "original", "/a", make_manifest("original"))
    st.record_artifact(rid, "original", "/b", make_manifest("original", acoustic_bytes=1))
    arts = st.artifacts(rid)
    assert arts["original"]["path"] == "/b" and arts["original"]["manifest"]["sizes"]["acoustic"] == 1


def test_empty_run_gives_empty_frames_with_columns(st):
    rid = new_run(st)
    assert results.samples_df(st, rid).empty and "total_s" in results.samples_df(st, rid).columns
    assert results.summary_df(st, rid).empty and "p90" in results.summary_df(st, rid).columns
    assert st.facts(rid).empty


def test_json_records_turns_nan_into_none():
    import pandas as pd

    rows = results.json_records(pd.DataFrame({"a": [1.0, math.nan], "b": [np.int64(3), np.int64(4)]}))
    assert rows == [{"a": 1.0, "b": 3}, {"a": None, "b": 4}]


CHILD = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    from records import make_identity, make_record
    from harness.store import Store
    st = Store({path!r})
    rid = st.start_run({{}}, {{}}, "test", "tiny", ["original", "pruned"], ["pi4-a"], run_id="run-1")
    st.record_attempt(rid, "pi4-a", make_identity(), "original", "ok", None, make_record(samples_per_class=9))
    print("committed", flush=True)
    with st._tx() as conn:
        conn.execute("INSERT INTO attempts (run_id, device, identity_json, variant, status, started_at,"
                     " ended_at) VALUES ('run-1', 'pi4-a', '{{}}', 'pruned', 'ok', 'x', 'x')")
        print("in transaction", flush=True)
        time.sleep(60)
    """
)


def test_sigkill_mid_run_loses_nothing_committed(store_location):
    path = store_location
    script = CHILD.format(tests=str(TESTS_DIR), path=str(path))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "committed"
        assert proc.stdout.readline().strip() == "in transaction"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    with Store(path) as st:
        if backend(path).__name__.endswith("sqlite"):
            assert st._query("PRAGMA integrity_check")[0][0] == "ok"
        attempts = results.attempts_df(st, "run-1")
        assert list(attempts["variant"]) == ["original"]
        assert len(results.samples_df(st, "run-1")) == 27
        assert st.missing_pairs("run-1") == [("pi4-a", "pruned")]
        assert st.run("run-1")["status"] == "running"


def test_a_version_1_store_migrates_to_the_current_schema_and_keeps_every_row(store_location, monkeypatch):
    """Schema 2 gives attempts a new status in its CHECK constraint (SQLite rebuilds the table), schema 3
    adds the streaming columns, schema 4 the busy status: no attempt, sample or fact of a version 1 store
    may be lost, the foreign keys must still hold, and its whole-utterance samples give their first audio
    when they end. The version 1 store is made by the backend's own first migration."""
    path = store_location
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", 1)
    with Store(path) as s, s._tx() as tx:
        tx.execute("INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                   ("r1", "h", "{}", "0", "{}", "tiny", json.dumps(["original"]), json.dumps(["local"]),
                    "2026-01-01T00:00:00", None, "complete"))
        header = json.dumps({"processes": []})
        tx.execute("INSERT INTO attempts VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                   (7, "r1", "local", "fp", "{}", "original", "ok", None, "t", "t", header))
        tx.execute("INSERT INTO samples VALUES (7, 0, 0, 'short-01', 'short', 'happy', 10, 30, 0.3, 0.01,"
                   " 0.1, 0.1, 0.21)")
        tx.execute("INSERT INTO facts (attempt_id, process, phase, facts_json)"
                   " VALUES (7, NULL, 'before', '{}')")
    with Store(path) as s, pytest.raises(integrity_errors()), s._tx() as tx:  # version 1: no partial attempt
        tx.execute("INSERT INTO attempts (run_id, device, identity_json, variant, status, started_at,"
                   " ended_at) VALUES ('r1', 'x', '{}', 'v', 'partial', 't', 't')")
    monkeypatch.undo()
    with Store(path) as s:
        assert s.schema_version() == SCHEMA_VERSION
        assert results.attempts_df(s, "r1")["attempt_id"].tolist() == [7]
        df = results.samples_df(s, "r1")
        assert len(df) == 1 and df["cpu_s"].isna().all() and df["total_s"].tolist() == [0.21]
        assert df["ttfa_s"].isna().all() and df["chunks"].isna().all()
        summary = results.summary_df(s, "r1")
        assert summary["ttfa_p90"].tolist() == [0.21] and summary["stream_chunk_frames"].isna().all()
        assert len(s.facts("r1")) == 1
        if backend(path).__name__.endswith("sqlite"):
            assert s._query("PRAGMA foreign_key_check") == []
        rid = new_run(s)  # the new CHECK constraint accepts a partial attempt, and a busy one
        record = make_record()
        ident = make_identity("pi4-a")
        _, status = s.add_processes(rid, "pi4-a", ident, "original", record, planned=9)
        assert status == "partial"
        s.record_attempt(rid, "pi4-a", ident, "pruned", "busy", "held by ci/other", None)
        assert results.attempts_df(s, rid)["status"].tolist() == ["partial", "busy"]
        # the ids go on after the migrated ones
        assert s.record_attempt(rid, "pi4-b", ident, "pruned", "unreachable", "refused", None) > 7


def test_processes_added_round_by_round_complete_a_pair(st):
    rid = new_run(st, variants=("original",), devices=("pi4-a",))
    one = make_record()
    one["processes"] = one["processes"][:1]
    for expected in ("partial", "partial", "ok"):
        _, status = st.add_processes(rid, "pi4-a", make_identity("pi4-a"), "original", one, planned=3)
        assert status == expected
    assert st.missing_pairs(rid) == []
    header = st.effective_attempts(rid)[("pi4-a", "original")]["header"]
    assert [p["index"] for p in header["processes"]] == [0, 1, 2]
    assert sorted(set(results.samples_df(st, rid)["process"])) == [0, 1, 2]


def test_a_disturbed_process_does_not_count_until_the_budget_is_spent(st):
    rid = new_run(st, variants=("original",), devices=("pi4-a",))
    clean = make_record()
    clean["processes"] = clean["processes"][:1]
    disturbed = json.loads(json.dumps(clean))
    disturbed["processes"][0]["disturbed"] = True
    disturbed["processes"][0]["disturbed_reason"] = "other processes used 0.9 of its CPU"
    ident = make_identity("pi4-a")
    assert st.add_processes(rid, "pi4-a", ident, "original", clean, planned=2)[1] == "partial"
    assert st.add_processes(rid, "pi4-a", ident, "original", disturbed, planned=2)[1] == "partial"
    assert st.partial_progress(rid) == {("pi4-a", "original"): 1}
    assert st.add_processes(rid, "pi4-a", ident, "original", clean, planned=2)[1] == "ok"
    row = results.summary_df(st, rid).iloc[0]
    # the disturbed one left out
    assert not row["disturbed"] and set(results.samples_df(st, rid)["process"]) == {0, 2}
    # a pair that stays disturbed once the re-measurement budget is spent is ok, and says so
    rid2 = new_run(st, variants=("original",), devices=("pi4-a",))
    st.add_processes(rid2, "pi4-a", ident, "original", disturbed, planned=1)
    _, status = st.add_processes(rid2, "pi4-a", ident, "original", disturbed, planned=1, final=True)
    assert status == "ok"
    row = results.summary_df(st, rid2).iloc[0]
    assert row["disturbed"] and "0.9 of its CPU" in row["disturbed_reason"]


def test_error_texts_are_bounded(st):
    rid = new_run(st)
    st.record_attempt(rid, "pi4-a", make_identity("pi4-a"), "original", "failed", "x" * 1_000_000, None)
    error = results.attempts_df(st, rid)["error"].iloc[0]
    assert len(error) < 5000 and error.endswith("characters cut]")


def test_a_run_whose_data_stayed_disturbed_is_never_a_baseline(st):
    ids = []
    for i, disturbed in enumerate((False, True, False)):
        rid = new_run(st, run_id=f"2026112{i}-000000-0000", started_at=f"2026-11-2{i}T00:00:00+00:00")
        record = make_record(samples_per_class=3)
        if disturbed:
            record["processes"][0].update(disturbed=True, disturbed_reason="a hog")
            st.add_processes(rid, "pi4-a", make_identity(), "original", record, planned=3, final=True)
        else:
            st.record_attempt(rid, "pi4-a", make_identity(), "original", "ok", None, record)
        st.save_verdict(rid, {"outcome": "pass", "exit_code": 0})
        ids.append(rid)
    fp = make_identity()["fingerprint"]
    assert st.effective_attempts(ids[1])[("pi4-a", "original")]["header"]["disturbed"] is True
    assert st.baseline_run_id(ids[2], fp) == ids[0]  # not the disturbed run in between


def test_micro_benchmarks_are_stored_per_run_and_found_by_identity_and_age(st):
    run_a = st.start_run({"a": 1}, {}, "0", "tiny", ["v"], ["board"])
    run_b = st.start_run({"a": 1}, {}, "0", "tiny", ["v"], ["board"])
    doc = {"format": "edgebench.microbench", "version": 1, "dispatch": {"median": 3e-6, "n": 40}}
    first = st.record_microbench(run_a, "board", "id-1", doc, measured_at="2026-12-01T10:00:00.000+00:00")
    st.record_microbench(run_a, "other", "id-2", {"error": "torch is not importable here"},
                         measured_at="2026-12-01T10:00:00.000+00:00")
    st.record_microbench(run_b, "board", "id-1", doc, measured_at="2026-12-01T10:00:00.000+00:00",
                         reused_from=first)
    assert st.microbench(run_a)["board"]["doc"] == doc
    assert st.microbench(run_b)["board"]["reused_from"] == first
    assert st.latest_microbench("id-1", since="2026-12-01T09:00:00")["id"] == first
    assert st.latest_microbench("id-1", since="2026-12-01T11:00:00") is None   # too old
    assert st.latest_microbench("id-2", since="2026-12-01T09:00:00") is None   # an error is not reused
    assert count(st, "microbench") == 3
