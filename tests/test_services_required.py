"""In CI (.ci/run sets EDGEBENCH_REQUIRE_SERVICES=1) a missing sshd or Chromium fails the tests that need
it; elsewhere they are skipped. Every such test goes through ``conftest.require_service``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import REQUIRE_SERVICES_ENV, require_service

ROOT = Path(__file__).resolve().parents[1]


def test_missing_service_is_skipped_without_the_variable(monkeypatch):
    monkeypatch.delenv(REQUIRE_SERVICES_ENV, raising=False)
    require_service(True, "OpenSSH sshd")
    with pytest.raises(pytest.skip.Exception, match="needs OpenSSH sshd"):
        require_service(False, "OpenSSH sshd")
    monkeypatch.setenv(REQUIRE_SERVICES_ENV, "0")
    with pytest.raises(pytest.skip.Exception):
        require_service(False, "OpenSSH sshd")


def test_missing_service_fails_with_the_variable(monkeypatch):
    monkeypatch.setenv(REQUIRE_SERVICES_ENV, "1")
    require_service(True, "headless Chromium")
    with pytest.raises(pytest.fail.Exception, match=f"needs headless Chromium .*{REQUIRE_SERVICES_ENV}"):
        require_service(False, "headless Chromium")


def test_ci_exports_the_variable_before_running_pytest():
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    export = lines.index(f"export {REQUIRE_SERVICES_ENV}=1")
    pytest_line = next(i for i, line in enumerate(lines) if "pytest" in line and not line.startswith("#"))
    assert export < pytest_line


def test_no_test_skips_for_a_service_on_its_own():
    """sshd and Chromium are only ever skipped through require_service (which fails them in CI)."""
    offenders = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        if path.name == "test_services_required.py":
            continue
        for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if re.search(r"pytest\.(skip|mark\.skipif)\b", line) and re.search(r"(?i)sshd|ssh-keygen|chrom",
                                                                               line):
                offenders.append(f"{path.name}:{no}: {line.strip()}")
            if re.search(r"skipif\(\s*(CHROMIUM|not sshd_available)", line):
                offenders.append(f"{path.name}:{no}: {line.strip()}")
    assert offenders == []
