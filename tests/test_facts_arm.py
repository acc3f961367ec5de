"""Device facts on ARM boards, read from recorded board files (tests/data/boards: /proc/cpuinfo,
/proc/device-tree/model and `vcgencmd get_throttled` as a Raspberry Pi prints them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from devices.ondevice.agent import facts

BOARDS = Path(__file__).parent / "data" / "boards"


def _cpuinfo(board: str) -> dict:
    return facts.parse_cpuinfo((BOARDS / board / "cpuinfo").read_text())


def test_cpu_part_names_the_core():
    assert facts.cpu_part(_cpuinfo("pi5")) == "Cortex-A76 (0x41:0xd0b)"
    assert facts.cpu_part(_cpuinfo("pi4")) == "Cortex-A72 (0x41:0xd08)"
    assert facts.cpu_part({"CPU implementer": "0x61", "CPU part": "0x022"}) == "0x61:0x022"   # unknown core
    assert facts.cpu_part({"model name": "Intel(R) N100", "flags": "fpu sse"}) is None          # x86


def test_cpu_features_tell_armv82_from_armv80():
    pi5, pi4 = facts.cpu_features(_cpuinfo("pi5")), facts.cpu_features(_cpuinfo("pi4"))
    assert {"asimd", "asimddp", "atomics", "fphp"} <= set(pi5)
    assert "asimd" in pi4 and not {"asimddp", "atomics", "fphp"} & set(pi4)
    assert facts.cpu_features({"flags": "fpu sse sse2"}) is None


def test_cpu_model_of_a_pi_is_its_model_line():
    assert facts.cpu_model(_cpuinfo("pi5")) == "Raspberry Pi 5 Model B Rev 1.0"


def test_board_model_strips_the_device_tree_nul(tmp_path):
    model = tmp_path / "model"
    model.write_bytes((BOARDS / "pi4" / "model").read_text().strip().encode() + b"\0")
    assert facts.board_model(str(model)) == "Raspberry Pi 4 Model B Rev 1.5"
    assert facts.board_model(str(tmp_path / "missing")) is None
    model.write_bytes(b"\0")
    assert facts.board_model(str(model)) is None


@pytest.mark.parametrize("flags, conditions", [
    ("0x0", []),
    ("0x50000", ["under-voltage since boot", "throttled since boot"]),
    ("0x50005", ["under-voltage now", "throttled now", "under-voltage since boot", "throttled since boot"]),
    ("0x80008", ["soft temperature limit now", "soft temperature limit since boot"]),
    ("0x2", ["arm frequency capped now"]),
    (None, None),
    ("garbage", None),
])
def test_throttled_bits_decoded(flags, conditions):
    assert facts.throttled_conditions(flags) == conditions


def test_recorded_throttled_lines_parse():
    for board in ("pi5", "pi4", "pi4-oldtorch"):
        line = (BOARDS / board / "throttled").read_text().strip()
        assert line.startswith("throttled=0x")
        assert isinstance(facts.throttled_conditions(line.split("=", 1)[1]), list)
