"""Every protocol value has an upper bound, checked when the configuration is read: a typo such as
``min_seconds = 1e9`` or ``processes = 5000`` is a one-line error naming the file and the key before
anything is built or measured, never a run that measures until someone stops it."""

from __future__ import annotations

import pytest

from devices.errors import DevicesError
from devices.ondevice.protocol import BOUNDS, Protocol
from harness.cli import main
from harness.config import MAX_RUN_TIMEOUT_S, load_config
from harness.errors import ConfigError

# The documented bounds (Protocol's docstring, the README's configuration section).
DOCUMENTED = {"processes": 50, "warmup": 100, "min_iters": 100_000, "max_iters": 100_000,
              "min_seconds": 3600, "threads": 256, "timeout_s": 86400, "seed": 2**31 - 1,
              "hot_limit_c": 150, "stream_chunk_frames": 10_000}


def _at(name: str, value) -> dict:
    """Protocol keyword arguments with ``name = value`` (min_iters/max_iters kept consistent)."""
    if name == "min_iters":
        return {"min_iters": value, "max_iters": max(value, 200)}
    return {name: value}


def test_the_bounds_are_the_documented_ones():
    assert BOUNDS == DOCUMENTED
    assert MAX_RUN_TIMEOUT_S == 7 * 86400
    doc = Protocol.__doc__
    for text in ("processes 1-50", "warmup 0-100", "max_iters 1-100000", "min_seconds 0-3600",
                 "threads 1-256", "timeout_s 1-86400", "2**31 - 1", "hot_limit_c 0-150",
                 "stream_chunk_frames 1-10000"):
        assert text in doc


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_each_bound_is_accepted_and_one_more_is_rejected(name):
    bound = DOCUMENTED[name]
    assert getattr(Protocol(**_at(name, bound)), name) == bound
    over = bound + 1 if isinstance(bound, int) and name not in ("min_seconds", "timeout_s", "hot_limit_c") \
        else bound + 0.5
    with pytest.raises(DevicesError, match=f"protocol: {name} must be <= {bound}"):
        Protocol(**_at(name, over))


@pytest.mark.parametrize("table, key", [
    ("processes = 5000", "protocol.processes"),
    ("min_seconds = 1e9", "protocol.min_seconds"),
    ("max_iters = 1000000000000", "protocol.max_iters"),
    ("warmup = 1000", "protocol.warmup"),
    ("timeout_s = 1e7", "protocol.timeout_s"),
    ("threads = 1024", "protocol.threads"),
    ("seed = 4294967296", "protocol.seed"),
    ("hot_limit_c = 1000.0", "protocol.hot_limit_c"),
    ("stream_chunk_frames = 100000", "protocol.stream_chunk_frames"),
    ("min_iters = 200000\nmax_iters = 200000", "protocol.min_iters"),
])
def test_config_names_file_and_key_of_a_value_over_its_bound(tmp_path, table, key):
    path = tmp_path / "edgebench.toml"
    path.write_text(f"[protocol]\n{table}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: {key}: ") and "must be <=" in str(err.value)


def test_run_timeout_is_at_most_a_week(tmp_path):
    path = tmp_path / "edgebench.toml"
    path.write_text(f"run_timeout_s = {7 * 86400}\n")
    assert load_config(path).run_timeout_s == 7 * 86400
    path.write_text(f"run_timeout_s = {7 * 86400 + 1}\n")
    with pytest.raises(ConfigError, match=r"run_timeout_s: expected a number of seconds > 0 and <= 604800"):
        load_config(path)


@pytest.mark.parametrize("argv, message", [
    (["--processes", "5000"], "--processes: processes must be <= 50, got 5000"),
    (["--min-seconds", "1e9"], "--min-seconds: min_seconds must be <= 3600"),
    (["--threads", "100000"], "--threads: threads must be <= 256"),
    (["--min-iters", "500"], "--min-iters: min_iters (500) is larger than max_iters (200)"),
])
def test_run_flags_over_their_bound_name_the_flag_and_write_nothing(tmp_path, monkeypatch, capsys, argv,
                                                                     message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDGEBENCH_HOME", str(tmp_path / "state"))
    assert main(["run", "--preset", "tiny", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"edgebench: error: {message}")
    assert len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == []
