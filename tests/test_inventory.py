"""devices.toml validation, selection, the built-in local device and `edgebench devices list|add`."""

from __future__ import annotations

import json
import sys

import pytest

from devices.errors import InventoryError
from devices.inventory import LOCAL, load_inventory
from harness.cli import main

# ``{key}``: an existing private key file (a key_file that does not exist is an error at load time).
GOOD = """
[devices.pi4-1]
host = "192.168.1.40"
user = "pi"
key_file = "{key}"
tags = ["pi4", "arm64"]
threads = 4

[devices.pi4-2]
host = "192.168.1.41"
port = 2222
user = "pi"
key_file = "{key}"
python = "/opt/py38/bin/python3"
tags = ["pi4"]
budget_class = "pi4"
connect_timeout = 3.5

[devices.jetson]
host = "jetson.lan"
user = "nvidia"
key_file = "{key}"
tags = ["arm64"]

[devices.local]
cpus = 1
threads = 1
tags = ["ci"]
"""


def write(tmp_path, text):
    path = tmp_path / "devices.toml"
    key = tmp_path / "id_ed25519"
    key.write_text("not a real key: only its existence is checked when the inventory is read\n")
    path.write_text(text.replace("{key}", str(key)))
    return path


def test_defaults_and_local_device(tmp_path):
    inv = load_inventory(write(tmp_path, GOOD))
    assert inv.names[0] == LOCAL
    pi = inv.get("pi4-1")
    assert (pi.port, pi.python, pi.work_dir, pi.connect_timeout) == (22, "python3", "~/.edgebench", 10.0)
    assert pi.tags == ("pi4", "arm64") and pi.threads == 4 and not pi.is_local
    pi2 = inv.get("pi4-2")
    assert (pi2.port, pi2.python, pi2.budget_class, pi2.connect_timeout) == (2222, "/opt/py38/bin/python3",
                                                                             "pi4", 3.5)
    local = inv.get(LOCAL)
    assert local.is_local and local.cpus == 1 and local.tags == ("ci",) and local.python == sys.executable


def test_no_inventory_still_has_local():
    inv = load_inventory(None)
    assert inv.names == [LOCAL]
    assert inv.select(["local"])[0].is_local


def test_selection_by_name_and_tag(tmp_path):
    inv = load_inventory(write(tmp_path, GOOD))
    assert [d.name for d in inv.select(["tag:pi4"])] == ["pi4-1", "pi4-2"]
    assert [d.name for d in inv.select(["jetson", "tag:arm64", "local"])] == ["jetson", "pi4-1", "local"]
    known = r"unknown device 'pi5'; known devices: local, pi4-1, pi4-2, jetson"
    with pytest.raises(InventoryError, match=known):
        inv.select(["pi5"])
    with pytest.raises(InventoryError, match="no device has tag 'x86'"):
        inv.select(["tag:x86"])


@pytest.mark.parametrize("body, message", [
    ('port = "22x"', 'devices.toml: devices.pi4-1.port: expected an integer 1-65535, got "22x"'),
    ("port = 0", "devices.pi4-1.port: expected an integer 1-65535, got 0"),
    ("threads = 0", "devices.pi4-1.threads: expected an integer >= 1"),
    ("tags = \"pi4\"", "devices.pi4-1.tags: expected a list of words"),
    ("connect_timeout = -1", "devices.pi4-1.connect_timeout: expected seconds"),
    ("colour = \"red\"", "devices.pi4-1.colour: unknown key"),
    ("password = \"x\"", "devices.pi4-1.password: unknown key"),
])
def test_bad_values_name_file_and_key(tmp_path, body, message):
    text = f'[devices.pi4-1]\nhost = "h"\nuser = "pi"\nkey_file = "{{key}}"\n{body}\n'
    with pytest.raises(InventoryError) as err:
        load_inventory(write(tmp_path, text))
    assert message in str(err.value)
    assert str(tmp_path / "devices.toml") in str(err.value)


def test_missing_required_and_local_restrictions(tmp_path):
    with pytest.raises(InventoryError, match="devices.a.key_file: missing .*key authentication only"):
        load_inventory(write(tmp_path, '[devices.a]\nhost = "h"\nuser = "u"\n'))
    with pytest.raises(InventoryError, match="devices.local.host: unknown key .*this machine"):
        load_inventory(write(tmp_path, '[devices.local]\nhost = "h"\n'))
    with pytest.raises(InventoryError, match="devices.b.cpus: unknown key"):
        load_inventory(write(tmp_path, '[devices.b]\nhost = "h"\nuser = "u"\nkey_file = "{key}"\ncpus = 2\n'))
    with pytest.raises(InventoryError, match="invalid TOML"):
        load_inventory(write(tmp_path, "[devices.a\n"))
    with pytest.raises(InventoryError, match="no such file"):
        load_inventory(tmp_path / "nope.toml")


def test_cli_add_then_list(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "k").write_text("key\n")
    assert main(["devices", "add", "pi", "--host", "10.0.0.9", "--user", "pi", "--key-file", "k",
                 "--port", "2200", "--tag", "pi4", "--tag", "lab", "--quantized-engine", "qnnpack"]) == 0
    assert main(["devices", "add", "local", "--cpus", "1", "--tag", "ci"]) == 0
    inv = load_inventory(tmp_path / "devices.toml")
    assert inv.get("pi").port == 2200 and inv.get("pi").tags == ("pi4", "lab")
    assert inv.get("pi").quantized_engine == "qnnpack"
    assert inv.get("local").cpus == 1
    capsys.readouterr()
    assert main(["devices", "list", "--json"]) == 0
    listed = {d["name"]: d for d in json.loads(capsys.readouterr().out)}
    assert listed["local"]["local"] is True and listed["pi"]["tags"] == ["pi4", "lab"]
    # invalid entries are refused before anything is written; duplicates need --replace
    before = (tmp_path / "devices.toml").read_text()
    bad = ["devices", "add", "bad", "--host", "h", "--user", "u", "--key-file", "k", "--port", "0"]
    assert main(bad) == 2
    assert main(["devices", "add", "pi", "--host", "h", "--user", "u", "--key-file", "k"]) == 2
    assert main(["devices", "add", "pi2", "--host", "h", "--user", "u", "--key-file", "k",
                 "--quantized-engine", "neon"]) == 2
    err = capsys.readouterr().err
    assert "devices.bad.port: expected an integer 1-65535, got 0" in err and "already exists" in err
    assert "devices.pi2.quantized_engine: expected one of fbgemm, x86, qnnpack, onednn, got 'neon'" in err
    assert (tmp_path / "devices.toml").read_text() == before
    assert main(["devices", "list"]) == 0
    out = capsys.readouterr().out
    assert "this machine" in out and "pi@10.0.0.9:2200" in out and "pi4,lab" in out


def test_threads_bound_is_the_protocols(tmp_path):
    """A device's threads become the protocol's (devices.measure.effective_protocol): one bound for both,
    so a valid inventory never makes a protocol error mid-run."""
    from devices.ondevice.protocol import MAX_THREADS

    body = '[devices.a]\nhost = "h"\nuser = "u"\nkey_file = "{key}"\nthreads = %d\n'
    assert load_inventory(write(tmp_path, body % MAX_THREADS)).get("a").threads == MAX_THREADS
    bound = f"devices.a.threads: expected an integer >= 1 and <= {MAX_THREADS}"
    with pytest.raises(InventoryError, match=bound):
        load_inventory(write(tmp_path, body % (MAX_THREADS + 1)))


@pytest.mark.parametrize("key_file, what", [
    ("nokey", "does not exist"), ("~/no/such/edgebench-key", "does not exist"), (".", "is not a file"),
])
def test_a_missing_key_file_is_an_error_naming_file_and_key(tmp_path, monkeypatch, key_file, what):
    monkeypatch.chdir(tmp_path)   # a relative key_file is read from the working directory, as SSH reads it
    path = tmp_path / "devices.toml"
    path.write_text(f'[devices.pi]\nhost = "h"\nuser = "pi"\nkey_file = "{key_file}"\n')
    with pytest.raises(InventoryError) as err:
        load_inventory(path)
    assert str(err.value).startswith(f"{path}: devices.pi.key_file: {key_file} {what}")
    (tmp_path / "nokey").write_text("key\n")
    if key_file == "nokey":
        assert load_inventory(path).get("pi").key_file == "nokey"


def test_devices_add_refuses_a_missing_key_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["devices", "add", "pi", "--host", "h", "--user", "pi", "--key-file", "missing"]) == 2
    assert "devices.pi.key_file: missing does not exist" in capsys.readouterr().err
    assert not (tmp_path / "devices.toml").exists()


FARM = """
[labgrid]
coordinator = "lab.example"
wait_s = 30

[devices.pi5-1]
place = "pi5-1"
key_file = "{key}"
budget_class = "pi5"

[devices.arm]
place_tags = { arch = "aarch64", rack = 2 }
key_file = "{key}"
tags = ["nightly"]
"""


def test_labgrid_devices_name_a_place_or_place_tags(tmp_path):
    inv = load_inventory(write(tmp_path, FARM))
    pi = inv.get("pi5-1")
    assert pi.is_labgrid and not pi.is_local and pi.host is None
    assert (pi.place, pi.coordinator, pi.place_wait_s) == ("pi5-1", "lab.example", 30.0)
    assert pi.budget_class == "pi5"
    assert pi.address == "labgrid place pi5-1 at lab.example"
    group = inv.get("arm")
    assert group.place is None and group.place_tags == (("arch", "aarch64"), ("rack", "2"))
    assert group.to_dict()["place_tags"] == {"arch": "aarch64", "rack": "2"}
    assert group.address == "labgrid places tagged arch=aarch64,rack=2 at lab.example"
    # the local device is still the only local one
    assert [d.name for d in inv.devices.values() if d.is_local] == [LOCAL]


def test_a_group_is_selected_by_its_name_once_expanded(tmp_path):
    from dataclasses import replace

    inv = load_inventory(write(tmp_path, FARM))
    group = inv.get("arm")
    expanded = dict(inv.devices)
    del expanded["arm"]
    for name in ("rpi-a", "rpi-b"):
        expanded[name] = replace(group, name=name, place=name, place_tags=(), tags=("nightly", "arm"))
    inv = replace(inv, devices=expanded)
    assert [d.name for d in inv.select(["arm"])] == ["rpi-a", "rpi-b"]
    assert [d.name for d in inv.select(["tag:arm", "pi5-1"])] == ["rpi-a", "rpi-b", "pi5-1"]


@pytest.mark.parametrize("text, message", [
    ('[devices.a]\nplace = "p"\nkey_file = "{key}"\n', "devices.a.place: needs a [labgrid] table"),
    ('[labgrid]\ncoordinator = "c"\n[devices.a]\nplace = "p"\nhost = "h"\nkey_file = "{key}"\n',
     "devices.a.host: unknown key (a labgrid place's NetworkService gives its address, port and user)"),
    ('[labgrid]\ncoordinator = "c"\n[devices.a]\nplace = "p"\nplace_tags = {x = "1"}\nkey_file = "{key}"\n',
     "devices.a.place_tags: give either place"),
    ('[labgrid]\ncoordinator = "c"\n[devices.a]\nplace_tags = {}\nkey_file = "{key}"\n',
     "devices.a.place_tags: expected a table of tag = value"),
    ('[labgrid]\ncoordinator = "c"\n[devices.a]\nplace = "p"\n', "devices.a.key_file: missing"),
    ('[labgrid]\nwait_s = 5\n', "labgrid.coordinator: missing"),
    ('[labgrid]\ncoordinator = "c"\nwait_s = -1\n', "labgrid.wait_s: expected seconds in [0, 86400], got -1"),
    ('[labgrid]\ncoordinator = "c"\ntimeout_s = 0\n', "labgrid.timeout_s: expected seconds in (0, 600]"),
    ('[labgrid]\ncoordinator = "c"\nwait_s = "long"\n', "labgrid.wait_s: expected seconds"),
    ('[labgrid]\ncoordinator = "c"\nowner = "me"\n', "labgrid.owner: unknown key"),
    ('[labgrid]\ncoordinator = "a b"\n', "labgrid.coordinator: expected host:port"),
    ('[farm]\nx = 1\n', "farm: unknown key"),
])
def test_bad_labgrid_settings_name_file_and_key(tmp_path, text, message):
    with pytest.raises(InventoryError) as err:
        load_inventory(write(tmp_path, text))
    assert message in str(err.value)
    assert str(tmp_path / "devices.toml") in str(err.value)
