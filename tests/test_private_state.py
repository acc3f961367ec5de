"""The state directory and edgebench's known_hosts are private whatever the umask: directories 0700,
files 0600 (set explicitly after creating, so even ``umask 0`` leaves them out of other users' reach).
``edgebench run`` under umask 0 is covered in test_run_input (the full-disk test)."""

from __future__ import annotations

import os
import stat
from contextlib import contextmanager

import paramiko

from devices import hostkeys
from harness import paths
from harness.cli import main


@contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_state_dir_cache_and_files_are_private_under_umask_0(tmp_path, monkeypatch):
    home = tmp_path / "a" / "state"
    monkeypatch.setenv(paths.ENV_VAR, str(home))
    with umask(0):
        state = paths.state_dir()
        cache = paths.cache_dir(state, create=True)
        db = paths.private_file(paths.results_db_path(state))
        nested = paths.private_file(tmp_path / "b" / "c" / "results.sqlite")
    assert state == home and mode(home) == 0o700 and mode(tmp_path / "a") == 0o700
    assert mode(cache) == 0o700
    assert mode(db) == 0o600 and db.read_bytes() == b""
    assert mode(nested) == 0o600 and mode(nested.parent) == 0o700 and mode(tmp_path / "b") == 0o700


def test_existing_paths_are_left_alone(tmp_path, monkeypatch):
    """Only what edgebench creates is made private: an EDGEBENCH_HOME that already exists keeps its mode."""
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o755)
    (home / "results.sqlite").write_bytes(b"")
    (home / "results.sqlite").chmod(0o640)
    monkeypatch.setenv(paths.ENV_VAR, str(home))
    assert paths.state_dir() == home and mode(home) == 0o755
    assert mode(paths.private_file(home / "results.sqlite")) == 0o640


def test_state_dir_without_create_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(paths.ENV_VAR, str(tmp_path / "state"))
    paths.state_dir(create=False)
    paths.cache_dir(paths.state_dir(create=False))
    assert not (tmp_path / "state").exists()


def test_devices_trust_writes_a_private_state_dir_and_known_hosts_under_umask_0(tmp_path, monkeypatch,
                                                                                capsys):
    key = tmp_path / "id_ed25519"
    key.write_text("key\n")
    (tmp_path / "devices.toml").write_text(
        f'[devices.pi]\nhost = "127.0.0.1"\nport = 2222\nuser = "pi"\nkey_file = "{key}"\n')
    host_key = paramiko.ECDSAKey.generate()
    monkeypatch.setattr(hostkeys, "fetch_host_key", lambda *args, **kwargs: host_key)
    monkeypatch.chdir(tmp_path)
    home = tmp_path / "state"
    monkeypatch.setenv(paths.ENV_VAR, str(home))
    with umask(0):
        assert main(["devices", "trust", "pi"]) == 0
    assert hostkeys.fingerprint(host_key) in capsys.readouterr().out
    assert mode(home) == 0o700 and mode(home / "known_hosts") == 0o600
    assert hostkeys.trusted_keys(home / "known_hosts", "127.0.0.1", 2222)


def test_known_hosts_in_a_new_folder_is_private(tmp_path):
    host_key = paramiko.ECDSAKey.generate()
    keys = paramiko.HostKeys()
    keys.add("[h]:2222", host_key.get_name(), host_key)
    target = tmp_path / "new" / "known_hosts"
    with umask(0):
        hostkeys._save_atomic(keys, target)
    assert mode(target.parent) == 0o700 and mode(target) == 0o600


def test_mos_import_creates_a_private_store_under_umask_0(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    home = tmp_path / "state"
    monkeypatch.setenv(paths.ENV_VAR, str(home))
    scores = tmp_path / "scores.csv"
    scores.write_text("variant,mos\noriginal,4.1\n")
    with umask(0):
        assert main(["mos", "import", str(scores)]) == 0
    assert mode(home) == 0o700 and mode(home / "results.sqlite") == 0o600
    for extra in ("results.sqlite-wal", "results.sqlite-shm"):   # SQLite copies the database's mode
        if (home / extra).exists():
            assert mode(home / extra) & 0o077 == 0, extra

