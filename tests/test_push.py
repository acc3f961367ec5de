"""The agent bundle and the device-side content-addressed cache (push), locally and over real SSH."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import zipfile

import pytest

from devices.bundle import LAUNCHER_NAME, build_bundle, bundle_files, make_bundle
from devices.errors import TransportError
from devices.inventory import local_device
from devices.push import ensure_artifact, ensure_bundle
from devices.transport import LocalTransport
from variants.errors import ArtifactError

FAKE_AGENT = "import json, sys\nprint(json.dumps({'agent': 'fake', 'argv': sys.argv[1:]}))\n"


def fake_bundle(tmp_path):
    """A small bundle with the real launcher and a stand-in agent (independent of the model code)."""
    src = tmp_path / "bundle-src"
    files = {}
    sources = {"devices/__init__.py": "", "devices/ondevice/__init__.py": "",
               "devices/ondevice/agent/__init__.py": "", "devices/ondevice/agent/__main__.py": FAKE_AGENT,
               "data/blob.json": json.dumps(list(range(5000)))}
    for arc, text in sources.items():
        path = src / arc
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        files[arc] = path
    return make_bundle(files, tmp_path / "bundle-out")


def tiny_artifact(tmp_path, name="art"):
    d = tmp_path / name
    d.mkdir()
    payloads = {"config.json": b'{"format_version": 1}', "acoustic.pt": os.urandom(2048),
                "vocoder.pt": os.urandom(1024)}
    files = {}
    for fn, data in payloads.items():
        (d / fn).write_bytes(data)
        files[fn] = hashlib.sha256(data).hexdigest()
    content = hashlib.sha256("".join(f"{k}:{v}\n" for k, v in sorted(files.items())).encode()).hexdigest()
    manifest = {"format_version": 1, "files": files, "content_hash": content}
    (d / "manifest.json").write_text(json.dumps(manifest))
    (d / "samples").mkdir()
    (d / "samples" / "happy.wav").write_bytes(b"RIFF")   # not pushed: not part of the artifact's identity
    return d, content


def artifact_bytes(d):
    return sum((d / f).stat().st_size for f in ("manifest.json", "config.json", "acoustic.pt", "vocoder.pt"))


def exercise_push(t, tmp_path):
    """Shared scenario: first push sends everything, second nothing, corruption is repaired."""
    bundle = fake_bundle(tmp_path)
    first = ensure_bundle(t, bundle)
    assert first.bytes_sent == bundle.size > 0
    second = ensure_bundle(t, bundle)
    assert second.bytes_sent == 0 and second.remote_path == first.remote_path
    assert first.remote_path.endswith(f"/bundles/{bundle.sha256}")
    assert first.agent_argv == [t.device.python, f"{first.remote_path}/{LAUNCHER_NAME}"]
    r = t.run(first.agent_argv + ["facts", "$(touch x)"], timeout=30)
    assert json.loads(r.stdout) == {"agent": "fake", "argv": ["facts", "$(touch x)"]}

    # a corrupt extracted file is re-extracted from the verified zip (nothing sent)
    with open(os.path.join(first.remote_path, "data", "blob.json"), "w") as fh:
        fh.write("[corrupt]")
    assert ensure_bundle(t, bundle).bytes_sent == 0
    with open(os.path.join(first.remote_path, "data", "blob.json")) as fh:
        assert len(json.load(fh)) == 5000
    # a corrupt zip is sent again
    with open(first.remote_path + ".zip", "r+b") as fh:
        fh.seek(100)
        fh.write(b"XXXX")
    assert ensure_bundle(t, bundle).bytes_sent == bundle.size

    art, content = tiny_artifact(tmp_path)
    a1 = ensure_artifact(t, art)
    assert a1.bytes_sent == artifact_bytes(art) and a1.remote_path.endswith(f"/artifacts/{content}")
    assert sorted(os.listdir(a1.remote_path)) == ["acoustic.pt", "config.json", "manifest.json", "vocoder.pt"]
    assert ensure_artifact(t, art).bytes_sent == 0
    with open(os.path.join(a1.remote_path, "vocoder.pt"), "wb") as fh:
        fh.write(b"bitrot")
    assert ensure_artifact(t, art).bytes_sent == (art / "vocoder.pt").stat().st_size
    assert ensure_artifact(t, art).bytes_sent == 0
    return bundle, art


def test_local_push_cache(tmp_path):
    t = LocalTransport(local_device(), tmp_path / "local-device")
    exercise_push(t, tmp_path)
    assert sorted(os.listdir(tmp_path / "local-device")) == ["artifacts", "bundles"]


@pytest.mark.ssh
def test_ssh_push_cache(ssh_device, tmp_path):
    with ssh_device.transport() as t:
        exercise_push(t, tmp_path)
    work = ssh_device.device.work_dir
    leftovers = [n for n in os.listdir(os.path.join(work, "bundles")) if ".tmp" in n or ".old" in n]
    assert leftovers == []


def test_artifact_after_upload_mismatch_is_an_error(tmp_path):
    t = LocalTransport(local_device(), tmp_path / "dev")
    art, _ = tiny_artifact(tmp_path)
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["files"]["acoustic.pt"] = "0" * 64          # local file does not match its manifest
    (art / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TransportError, match="acoustic.pt of artifact .* fail their sha256 check"):
        ensure_artifact(t, art)
    with pytest.raises(ArtifactError, match="manifest.json: missing"):
        ensure_artifact(t, tmp_path)


def test_missing_python_on_device(tmp_path):
    t = LocalTransport(local_device(python="/nonexistent/python3"), tmp_path / "dev")
    with pytest.raises(TransportError, match="is '/nonexistent/python3' the device's Python"):
        ensure_bundle(t, fake_bundle(tmp_path))


def test_bundle_zip_is_deterministic(tmp_path):
    a = fake_bundle(tmp_path / "a")
    b = fake_bundle(tmp_path / "b")
    assert a.sha256 == b.sha256 and a.size == b.size
    with zipfile.ZipFile(a.path) as zf:
        names = zf.namelist()
        assert names == sorted(names) and LAUNCHER_NAME in names
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_real_bundle_contents_and_cache(tmp_path):
    files = bundle_files()
    on = "devices/ondevice"
    for required in (f"{on}/agent/__main__.py", f"{on}/models/__init__.py", f"{on}/frontend.py",
                     f"{on}/symbols.py", f"{on}/corpus.py", f"{on}/artifact.py", f"{on}/load.py",
                     f"{on}/errors.py", "pypinyin/__init__.py", "pypinyin/pinyin_dict.json"):
        assert required in files, required
    controller = ("variants/", "harness/", "devices/errors", "devices/push")
    assert not any(arc.startswith(controller) for arc in files)
    first = build_bundle(tmp_path / "s1")
    again = build_bundle(tmp_path / "s1")
    other = build_bundle(tmp_path / "s2")
    assert first == again and first.sha256 == other.sha256
    assert first.path.parent == tmp_path / "s1" / "cache" / "bundles"
    # the launcher finds the agent in the extracted bundle
    t = LocalTransport(local_device(), tmp_path / "dev")
    pushed = ensure_bundle(t, first)
    r = t.run(pushed.agent_argv + ["--help"], timeout=60, env={"PYTHONPATH": ""})
    assert r.exit_code == 0, r.stderr
    extra = tmp_path / "mymodel.py"
    extra.write_text("def build(cfg):\n    return None\n")
    with_extra = build_bundle(tmp_path / "s1", extra_modules=[extra])
    assert with_extra.sha256 != first.sha256
    with zipfile.ZipFile(with_extra.path) as zf:
        assert "mymodel.py" in zf.namelist()


def test_bundle_runs_on_the_device_python(tmp_path):
    """The local device uses the controller's Python; the bundle must not need anything from site-packages
    besides torch (checked by running the launcher with -I, isolated from the caller's environment)."""
    bundle = fake_bundle(tmp_path)
    t = LocalTransport(local_device(), tmp_path / "dev")
    pushed = ensure_bundle(t, bundle)
    r = t.run([sys.executable, "-I", pushed.agent_argv[1], "x"], timeout=30)
    assert json.loads(r.stdout)["argv"] == ["x"]
