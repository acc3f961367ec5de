"""harness.budgets: defaults from the source article, budgets.toml validation and override precedence."""

from __future__ import annotations

import pytest

from harness.budgets import BUDGETS_VERSION, Budgets, default_budgets, load_budgets
from harness.errors import ConfigError
from harness.vocabulary import BUDGET_METRICS, DEFAULT_BUDGETS, LOWER, METRICS


def write(tmp_path, text: str):
    path = tmp_path / "budgets.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_the_articles_targets():
    b = default_budgets()
    assert b.limit("acoustic_size_mb") == 100.0
    assert b.limit("latency_p90_ms_short") == 800.0
    assert b.limit("peak_rss_mib") == 512.0
    assert b.limit("mos") == 3.8
    assert b.limit("emotion_id_accuracy") == 0.90
    assert b.limit("rtf") is None
    assert set(DEFAULT_BUDGETS) <= set(BUDGET_METRICS)
    assert b.regression.min_ratio == 1.05 and b.regression.alpha == 0.01


def test_budget_names_and_units_come_from_the_metric_registry():
    for name, m in BUDGET_METRICS.items():
        assert METRICS[m.key] is m and m.budget_key == name and m.description
    p90 = BUDGET_METRICS["latency_p90_ms_short"]
    assert (p90.key, p90.better, p90.from_display(800.0)) == ("latency_short_p90_s", LOWER, 0.8)
    assert BUDGET_METRICS["peak_rss_mib"].from_display(512) == 512 * 2**20


def test_overrides_precedence(tmp_path):
    path = write(tmp_path, """
version = 1
[budgets]
latency_p90_ms_medium = 2000
rtf = 0.5
mos = false
[class.pi4]
latency_p90_ms_short = 1500
peak_rss_mib = 400
[variant.pruned]
latency_p90_ms_short = 600
[regression]
min_ratio = 1.1
alpha = 0.05
min_samples = 20
""")
    b = load_budgets(path, device_classes={"pi4", "n100"}, variants={"original", "pruned"})
    assert b.limit("latency_p90_ms_short") == 800.0          # default kept
    assert b.limit("latency_p90_ms_medium") == 2000.0
    assert b.limit("mos") is None                            # switched off
    assert b.limit("latency_p90_ms_short", "pi4") == 1500.0
    assert b.limit("latency_p90_ms_short", "pi4", "pruned") == 600.0   # variant wins over class
    assert b.limit("peak_rss_mib", "pi4", "pruned") == 400.0
    assert b.limit("peak_rss_mib", "n100") == 512.0
    assert "mos" not in b.resolved("pi4", "original")
    assert b.regression.min_ratio == 1.1 and b.regression.min_samples == 20


def test_round_trip_through_dict(tmp_path):
    path = write(tmp_path, 'version = 1\n[budgets]\nmos = false\n[class.pi4]\npeak_rss_mib = 300\n')
    b = load_budgets(path)
    again = Budgets.from_dict(b.to_dict())
    assert again.resolved("pi4", "x") == b.resolved("pi4", "x")
    assert again.limit("mos") is None


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("version = 1\n[budgets]\nlatency_p95_ms = 3\n", "budgets.latency_p95_ms"),
        ("version = 1\n[budgets]\npeak_rss_mib = 'big'\n", "budgets.peak_rss_mib"),
        ("version = 1\n[budgets]\npeak_rss_mib = -1\n", "budgets.peak_rss_mib"),
        ("version = 1\n[budgets]\npeak_rss_mib = true\n", "budgets.peak_rss_mib"),
        ("version = 1\n[class.pi5]\npeak_rss_mib = 1\n", "class.pi5"),
        ("version = 1\n[class.pi4]\nbogus = 1\n", "class.pi4.bogus"),
        ("version = 1\n[variant.tiny]\nmos = 4\n", "variant.tiny"),
        ("version = 1\n[regression]\nmin_ratio = 0.9\n", "regression.min_ratio"),
        ("version = 1\n[regression]\nalpha = 2\n", "regression.alpha"),
        ("version = 1\n[regression]\nwindow = 2\n", "regression.window"),
        ("version = 1\nlimits = 2\n", "limits"),
        ("[budgets]\nmos = 4\n", "version"),
        ("version = 2\n", "version"),
    ],
)
def test_invalid_files_name_file_and_key(tmp_path, text, key):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_budgets(path, device_classes={"pi4"}, variants={"original", "pruned"})
    assert err.value.key == key
    assert str(err.value).startswith(f"{path}: {key}: ")


def test_unknown_version_says_how_to_fix(tmp_path):
    path = write(tmp_path, "version = 7\n")
    with pytest.raises(ConfigError, match=f"reads version {BUDGETS_VERSION}"):
        load_budgets(path)


def test_bad_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_budgets(write(tmp_path, "version = = 1"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_budgets(tmp_path / "missing.toml")


def test_class_names_accepted_when_unknown_set_not_given(tmp_path):
    b = load_budgets(write(tmp_path, "version = 1\n[class.anything]\nmos = 4\n"))
    assert b.limit("mos", "anything") == 4.0


def test_unknown_metric_in_limit_is_a_bug():
    with pytest.raises(KeyError):
        default_budgets().limit("nope")
