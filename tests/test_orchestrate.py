from pathlib import Path

from devices.inventory import local_device
from devices.ondevice.protocol import Protocol
from harness import orchestrate, results
from harness.store import Store


def test_a_bug_for_one_device_keeps_what_it_recorded_and_fails_only_the_rest(tmp_path, monkeypatch):
    store = Store(tmp_path / "r.sqlite")
    run_id = store.start_run(config={}, budgets={}, code_version="t", preset="tiny",
                             variants=["a", "b", "c"], devices=["local"])

    def crashes_after_one(store, run_id, device, artifacts, variants, *args):
        on_pair = args[-2]
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
