from pathlib import Path

import pytest

from devices.inventory import local_device
from devices.ondevice.protocol import Protocol
from harness import orchestrate, results
from harness.store import Store


def test_a_bug_for_one_device_keeps_what_it_recorded_and_fails_only_the_rest(tmp_path, monkeypatch):
    store = Store(tmp_path / "r.sqlite")
    run_id = store.start_run(config={}, budgets={}, code_version="t", preset="tiny",
                             variants=["a", "b", "c"], devices=["local"])

    def crashes_after_one(store, run_id, device, artifacts, variants, *args):
        on_pair = args[-4]   # (..., on_pair, done, stop, limits)
        identity = {"name": device.name}
        store.record_attempt(run_id, device.name, identity, "a", "failed", "device said no", None)
        on_pair(orchestrate.PairOutcome(device.name, "a", "failed", "device said no"))
        raise KeyError("bug")

    monkeypatch.setattr(orchestrate, "measure_device", crashes_after_one)
    seen = []
    outcomes = orchestrate.measure_all(store, run_id, [(local_device(), v) for v in "abc"], {}, Protocol(),
                                       Path("kh"), 60, None, tmp_path, on_pair=seen.append)
    assert [(o.variant, o.error) for o in outcomes] == [
        ("a", "device said no"), ("b", "local: internal error: KeyError: 'bug'"),
        ("c", "local: internal error: KeyError: 'bug'")]
    assert seen == outcomes
    attempts = results.attempts_df(store, run_id)
    assert sorted(attempts["variant"]) == ["a", "b", "c"]  # "a" is not recorded twice


def _one_process_record(variant, cpu_model="Intel N100", **kw):
    from records import make_record

    record = make_record(variant, processes=1, samples_per_class=3, **kw)
    for facts in (record["facts_before"], record["processes"][0]["facts_before"]):
        facts["cpu_model"] = cpu_model
    return record


def _fake_device(monkeypatch, records_for, health_facts):
    """measure_device with a fake transport, health and agent: ``records_for(variant)`` gives the record."""
    from devices import health as device_health
    from devices import measure as device_measure
    from devices.health import Health

    calls = []

    class Transport:
        def close(self):
            pass

    monkeypatch.setattr(orchestrate, "open_transport", lambda *a, **k: Transport())
    monkeypatch.setattr(device_health, "check",
                        lambda t, d, **k: Health(True, None, dict(health_facts), d.name))

    def measure_variant(transport, device, artifact, variant, protocol, bundle=None, check_outputs=False):
        calls.append((variant, protocol.processes))
        return records_for(variant)

    monkeypatch.setattr(device_measure, "measure_variant", measure_variant)
    return calls


def test_variants_are_measured_in_rounds_in_a_seeded_order_one_process_at_a_time(tmp_path, monkeypatch):
    from records import make_facts

    facts = dict(make_facts("bench-01"), cpu_model="Intel N100")
    calls = _fake_device(monkeypatch, lambda v: _one_process_record(v), facts)
    store = Store(tmp_path / "r.sqlite")
    variants = ["a", "b", "c", "d"]
    run_id = store.start_run(config={}, budgets={}, code_version="t", preset="tiny", variants=variants,
                             devices=["local"])
    device = local_device(budget_class="n100")
    out = orchestrate.measure_device(store, run_id, device, {v: Path(v) for v in variants}, variants,
                                     Protocol(processes=3, seed=7), Path("kh"), 1e18, None, tmp_path)
    assert [o.status for o in out] == ["ok"] * 4
    assert all(n == 1 for _, n in calls)  # one process per invocation
    rounds = [[v for v, _ in calls[i * 4:(i + 1) * 4]] for i in range(3)]
    assert all(sorted(r) == variants for r in rounds)  # every round measures every variant once
    assert rounds == [orchestrate.round_order(variants, i, 7) for i in range(3)]
    assert len({tuple(r) for r in rounds}) > 1  # the order changes between rounds
    attempt = store.effective_attempts(run_id)[("local", "a")]
    assert attempt["identity"]["budget_class"] == "n100"  # the class is stored with the run
    assert [p["index"] for p in attempt["header"]["processes"]] == [0, 1, 2]


def test_a_record_that_claims_another_board_fails_with_the_reason(tmp_path, monkeypatch):
    from records import make_facts

    facts = dict(make_facts("bench-01"), cpu_model="Intel N100")  # what the controller read itself
    _fake_device(monkeypatch, lambda v: _one_process_record(v, cpu_model="Raspberry Pi 5"), facts)
    store = Store(tmp_path / "r.sqlite")
    run_id = store.start_run(config={}, budgets={}, code_version="t", preset="tiny", variants=["a"],
                             devices=["local"])
    out = orchestrate.measure_device(store, run_id, local_device(), {"a": Path("a")}, ["a"],
                                     Protocol(processes=2), Path("kh"), 1e18, None, tmp_path)
    assert [o.status for o in out] == ["failed"]
    assert "claims another device" in out[0].error and "Raspberry Pi 5" in out[0].error
    assert results.samples_df(store, run_id, all_attempts=True).empty  # nothing of the lying record is stored


def test_a_place_busy_for_the_whole_wait_is_recorded_busy_and_the_others_measured(tmp_path, monkeypatch):
    from contextlib import contextmanager
    from dataclasses import replace

    from devices import labgrid

    store = Store(tmp_path / "r.sqlite")
    run_id = store.start_run(config={}, budgets={}, code_version="t", preset="tiny", variants=["a", "b"],
                             devices=["pi-1", "pi-2"])
    boards = [replace(local_device(), name=n, place=n, coordinator="127.0.0.1:1") for n in ("pi-1", "pi-2")]

    @contextmanager
    def borrowed(device, *, owner):
        assert owner == f"edgebench-{run_id}"
        if device.name == "pi-2":
            raise labgrid.PlaceBusy("pi-2", "ci-7/alice", 600.0, "127.0.0.1:1")
        yield replace(device, host="127.0.0.1", port=2222, user="pi")

    measured = []

    def measure_device(store, run_id, device, artifacts, variants, *args):
        measured.append((device.name, device.host, device.port))
        on_pair = args[-4]
        for v in variants:
            store.record_attempt(run_id, device.name, {"name": device.name}, v, "ok", None, None)
            on_pair(orchestrate.PairOutcome(device.name, v, "ok"))

    monkeypatch.setattr(labgrid, "borrowed", borrowed)
    monkeypatch.setattr(orchestrate, "measure_device", measure_device)
    outcomes = orchestrate.measure_all(store, run_id, [(b, v) for b in boards for v in "ab"], {}, Protocol(),
                                       Path("kh"), 60, None, tmp_path)
    assert measured == [("pi-1", "127.0.0.1", 2222)]   # measured at the address the place gave
    by_pair = {(o.device, o.variant): o for o in outcomes}
    assert {by_pair[("pi-1", v)].status for v in "ab"} == {"ok"}
    for v in "ab":
        busy = by_pair[("pi-2", v)]
        assert busy.status == orchestrate.BUSY
        assert busy.error == ("pi-2: place 'pi-2' is held by ci-7/alice; waited 600 s "
                              "(labgrid coordinator 127.0.0.1:1)")
    stored = results.attempts_df(store, run_id)
    assert sorted(stored[stored["device"] == "pi-2"]["status"]) == ["busy", "busy"]


def test_an_interrupt_stops_every_device_records_nothing_cut_short_and_is_raised_again(tmp_path, monkeypatch):
    import signal
    import threading
    import time

    store = Store(tmp_path / "r.sqlite")
    run_id = store.start_run(config={}, budgets={}, code_version="t", preset="tiny", variants=["a"],
                             devices=["local"])
    main = threading.get_ident()
    saw_stop = []

    def measure_device(store, run_id, device, artifacts, variants, *args):
        stop = args[-2]
        signal.pthread_kill(main, signal.SIGUSR1)   # Ctrl-C lands in the main thread while we measure
        for _ in range(500):                          # measuring until told to stop (bounded: 10 s)
            if stop.is_set():
                saw_stop.append(device.name)
                return []
            time.sleep(0.02)
        raise AssertionError("never told to stop")

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    monkeypatch.setattr(orchestrate, "measure_device", measure_device)
    previous = signal.signal(signal.SIGUSR1, interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            orchestrate.measure_all(store, run_id, [(local_device(), "a")], {}, Protocol(), Path("kh"), 60,
                                    None, tmp_path)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert saw_stop == ["local"]
    assert results.attempts_df(store, run_id).empty   # nothing recorded for what was cut short
