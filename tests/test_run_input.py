"""``edgebench run`` and bad input: one line naming the flag or the file and key, exit 2, nothing written.

Every file and flag is validated, and the report directory checked, before the state directory
(``$EDGEBENCH_HOME``), the results store, the artifacts cache or ``edgebench-out`` exist. A user's error
that can only show later (a model factory that raises, a disk that fills up while the report is written)
is one line and exit 2 too, never a traceback; measurements already taken stay in the store.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main

ROOT = Path(__file__).resolve().parents[1]


def cli(args, home: Path, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, EDGEBENCH_HOME=str(home), PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# Each case: files to write in the working directory, the arguments, what the one error line names.
BAD_INPUT = {
    "unknown key in edgebench.toml": (
        {"edgebench.toml": 'preset = "tiny"\nbogus = 1\n'}, [], "edgebench.toml: bogus: unknown key"),
    "bad budgets.toml": (
        {"budgets.toml": "version = 1\n[budgets]\nlatency_p99 = 3\n"}, ["--budgets", "budgets.toml"],
        "budgets.toml: budgets.latency_p99: unknown metric"),
    "bad devices.toml": (
        {"devices.toml": '[devices.pi]\nhost = 1\n'}, ["--devices", "pi"],
        "devices.toml: devices.pi.host: expected a non-empty string"),
    "unknown device": ({}, ["--devices", "nope"], "unknown device 'nope'"),
    "--out is a file": (
        {"report": "a file\n"}, ["--out", "report"], "--out: report exists and is not a directory"),
    "--out under a file": (
        {"report": "a file\n"}, ["--out", "report/run1"], "--out: report/run1 cannot be created"),
    "out_dir is a file": (
        {"edgebench.toml": 'out_dir = "reports"\n', "reports": "a file\n"}, [],
        "out_dir: "),
    "unknown variant": ({}, ["--variants", "original,prunned"], "variants[1]: unknown variant 'prunned'"),
    "bad protocol value in the file": (
        {"edgebench.toml": "[protocol]\nprocesses = 0\n"}, [], "edgebench.toml: protocol.processes: "),
    "protocol value over its bound": (
        {"edgebench.toml": "[protocol]\nmin_seconds = 1e9\n"}, [], "edgebench.toml: protocol.min_seconds: "),
    "bad protocol flag": ({}, ["--processes", "0"], "--processes: processes must be >= 1"),
    "a factory that cannot be imported": (
        {"edgebench.toml": 'model = "no_such_module:make"\n'}, [],
        "model = 'no_such_module:make': cannot import"),
    "resume without a store": (
        {}, ["--resume", "20260101-000000-abcd"], "--resume 20260101-000000-abcd: no results"),
    "a key_file that does not exist": (
        {"devices.toml": '[devices.pi]\nhost = "h"\nuser = "pi"\nkey_file = "nokey"\n'}, ["--devices", "pi"],
        "devices.toml: devices.pi.key_file: nokey does not exist"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_is_one_line_exit_2_and_writes_nothing_on_a_fresh_state_dir(tmp_path, case):
    files, args, names = BAD_INPUT[case]
    work = tmp_path / "work"
    work.mkdir()
    for name, text in files.items():
        _write(work / name, text)
    home = tmp_path / "state"
    result = cli(["run", "--preset", "tiny", *args], home, work)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("edgebench: error: ") and names in lines[0], result.stderr
    assert not home.exists(), "the state directory was created"
    assert not (work / "edgebench-out").exists() and not (work / ".edgebench").exists()
    assert sorted(p.name for p in work.iterdir()) == sorted(files)   # nothing else written


def test_run_reads_the_devices_toml_in_the_working_directory(tmp_path):
    """As `edgebench devices` does: a device `devices list`/`trust` knows is one `run --devices` knows."""
    key = tmp_path / "id_ed25519"
    key.write_text("key\n")
    _write(tmp_path / "devices.toml",
           f'[devices.loop1]\nhost = "127.0.0.1"\nuser = "pi"\nkey_file = "{key}"\n')
    (tmp_path / "afile").write_text("")
    home = tmp_path / "state"
    listed = cli(["devices", "list", "--json"], home, tmp_path)
    assert listed.returncode == 0 and '"loop1"' in listed.stdout, listed.stderr
    # The device is found (no "unknown device"); the bad --out, checked after the inventory, stops the run
    # before anything is measured.
    result = cli(["run", "--preset", "tiny", "--devices", "loop1", "--out", "afile"], home, tmp_path)
    assert result.returncode == 2 and "unknown device" not in result.stderr, result.stderr
    assert "--out: afile exists and is not a directory" in result.stderr
    assert not home.exists()


def test_the_inventory_is_located_by_one_function(tmp_path, monkeypatch):
    from harness import paths
    from harness.commands import devices

    monkeypatch.chdir(tmp_path)
    assert paths.inventory_path() is None and devices.list_devices()[0].name == "local"
    (tmp_path / "devices.toml").write_text('[devices.local]\ntags = ["ci"]\n')
    assert paths.inventory_path() == tmp_path / "devices.toml"
    assert devices.list_devices()[0].tags == ("ci",)
    assert paths.inventory_path("other.toml") == Path("other.toml")


# ---------------------------------------------------------------------- errors found after the start

QUICK = {"threads": 1, "processes": 1, "warmup": 0, "min_iters": 1, "min_seconds": 0.0, "max_iters": 2,
         "sentences": ["short"], "timeout_s": 300}
GENEROUS_BUDGETS = 'version = 1\n[budgets]\nemotion_id_accuracy = 0.0\n'


def _config(tmp_path: Path, **extra) -> Path:
    import tomli_w

    _write(tmp_path / "budgets.toml", GENEROUS_BUDGETS)
    data = {"preset": "tiny", "variants": ["original"], "budgets": "budgets.toml", "protocol": QUICK, **extra}
    path = tmp_path / "edgebench.toml"
    path.write_text(tomli_w.dumps(data))
    return path


RAISING_FACTORY = '''
def make(config, seed):
    raise RuntimeError("the checkpoint path is wrong:\\n  /nowhere/model.pt")
'''


def test_a_model_factory_that_raises_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    (tmp_path / "raising_model.py").write_text(RAISING_FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDGEBENCH_HOME", str(tmp_path / "state"))
    config = _config(tmp_path, model="raising_model:make")
    assert main(["run", "--config", str(config), "--no-report"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0] == ("edgebench: error: model = 'raising_model:make': the factory raised RuntimeError: "
                        "the checkpoint path is wrong: /nowhere/model.pt")


def test_a_full_disk_while_writing_the_report_keeps_the_measurements_exit_2(tmp_path, monkeypatch, capsys):
    """The report directory runs out of space: the run's attempts are in the store, one line, exit 2.
    Under umask 0 the state directory, its cache and the results store are still private."""
    import reports.render

    def full_disk_render_run(store, run_id, out_dir, **kwargs):  # the report writer, on a full disk
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(out_dir) / "report.html"))

    monkeypatch.setattr(reports.render, "render_run", full_disk_render_run)
    monkeypatch.chdir(tmp_path)
    home = tmp_path / "state"
    monkeypatch.setenv("EDGEBENCH_HOME", str(home))
    config = _config(tmp_path)
    old = os.umask(0)
    try:
        code = main(["run", "--config", str(config), "--out", str(tmp_path / "report"), "--json"])
    finally:
        os.umask(old)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in captured.err, captured.err[-3000:]
    assert len(lines) == 1 and "No space left on device" in lines[0], captured.err
    assert "cannot write the report" in lines[0] and "edgebench report --run" in lines[0]
    con = sqlite3.connect(f"file:{home / 'results.sqlite'}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT device, variant, status FROM attempts").fetchall()
        runs = con.execute("SELECT id FROM runs").fetchall()
    finally:
        con.close()
    assert rows == [("local", "original", "ok")] and len(runs) == 1
    assert runs[0][0] in lines[0]
    for path, mode in ((home, 0o700), (home / "cache", 0o700), (home / "results.sqlite", 0o600)):
        assert path.stat().st_mode & 0o777 == mode, path
