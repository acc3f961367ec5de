from pathlib import Path

from devices.inventory import local_device
from devices.protocol import Protocol
from harness import orchestrate
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
    attempts = store.attempts_df(run_id)
    assert sorted(attempts["variant"]) == ["a", "b", "c"]  # "a" is not recorded twice
