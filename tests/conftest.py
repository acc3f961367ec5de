"""Shared test configuration. Fixtures that start real services live in their own modules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sshfarm import FarmDevice, SSHFarm, sshd_available

#: The shared KAN-TTS fixture: a ModelScope-layout Sambert-HifiGan directory with random weights + goldens.
KANTTS_SMALL = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "kantts-small"
KANTTS_SMALL_MODEL_DIR = KANTTS_SMALL / "speech_sambert-hifigan_tts_zhitian_emo_zh-cn_16k"
KANTTS_SMALL_VOICE = KANTTS_SMALL_MODEL_DIR / "voices" / "zhitian_emo"
KANTTS_SMALL_SPEAKERS = "F7,F74,FBYN,FRXL,M7,xiaoyu"  # am/config.yaml linguistic_unit.speaker_list


#: Set (to anything but "" or "0") by .ci/run: there a missing sshd or Chromium FAILS the tests that need it.
REQUIRE_SERVICES_ENV = "EDGEBENCH_REQUIRE_SERVICES"


def require_service(available: bool, what: str) -> None:
    """The one gate for tests that need a system service (OpenSSH sshd, headless Chromium): nothing when
    ``available``; else a skip on a developer machine, but a failure where EDGEBENCH_REQUIRE_SERVICES is
    set (CI), so that a broken setup cannot turn the SSH and browser tests into silent skips."""
    if available:
        return
    message = f"needs {what} (.ci/setup installs it)"
    if os.environ.get(REQUIRE_SERVICES_ENV, "") not in ("", "0"):
        pytest.fail(f"{message}; {REQUIRE_SERVICES_ENV} is set, so a missing service fails the test",
                    pytrace=False)
    pytest.skip(message)


def require_kantts_small() -> Path:
    """The fixture's model directory; a missing fixture fails the test (it ships with the project's
    shared/ folder, so its absence is a broken checkout, never a reason to skip)."""
    if not (KANTTS_SMALL_VOICE / "dict").is_dir():
        pytest.fail(f"the kantts-small fixture is missing at {KANTTS_SMALL}")
    return KANTTS_SMALL_MODEL_DIR


@pytest.fixture(scope="session")
def kantts_table():
    """The symbol table of the kantts-small fixture voice (its dict/PinYin files + speaker list)."""
    from devices.ondevice.symbols import read_voice_tables

    require_kantts_small()
    return read_voice_tables(KANTTS_SMALL_VOICE / "dict", KANTTS_SMALL_SPEAKERS)


@pytest.fixture
def ssh_farm(tmp_path):
    """Three real sshd on loopback: ``good-1`` and ``good-2`` (trusted), ``untrusted`` (host key not in
    the farm's known_hosts; that file is ``farm.state_dir / "known_hosts"``, so EDGEBENCH_HOME=farm.state_dir
    works for the CLI, and ``farm.write_inventory(path)`` writes a devices.toml).
    ``farm.unreachable_device()`` gives a port where nothing listens;
    ``farm.kill(name)`` / ``farm.restart(name)`` take one down and bring it back."""
    require_service(sshd_available(), "OpenSSH sshd and ssh-keygen")
    farm = SSHFarm(tmp_path / "sshfarm")
    try:
        farm.add("good-1", trusted=True)
        farm.add("good-2", trusted=True)
        farm.add("untrusted", trusted=False)
        yield farm
    finally:
        farm.stop_all()


@pytest.fixture
def ssh_device(tmp_path):
    """One trusted real sshd on loopback: ``.device``, ``.known_hosts``, ``.state_dir``, ``.transport()``,
    ``.kill()``, ``.restart()``."""
    require_service(sshd_available(), "OpenSSH sshd and ssh-keygen")
    farm = SSHFarm(tmp_path / "sshfarm")
    try:
        farm.add("dev", trusted=True)
        yield FarmDevice(farm, "dev")
    finally:
        farm.stop_all()


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL cluster for the session (``tests/pgserver.py``); ``postgres.new_database()``
    gives each test an empty database. Fails in CI when the server or psycopg is missing."""
    import pgserver

    require_service(pgserver.available(), "PostgreSQL's server binaries and psycopg")
    server = pgserver.PostgresServer.start()
    try:
        yield server
    finally:
        server.stop()


#: The results store backends every store test runs on.
STORE_BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(params=STORE_BACKENDS)
def store_location(request, tmp_path) -> str:
    """An empty store's location on each backend: a new SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "state" / "results.sqlite")
    return request.getfixturevalue("postgres").new_database()
