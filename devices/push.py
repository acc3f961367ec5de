"""Push the agent bundle and artifacts to a device's content-addressed cache.

On the device (``work_dir``, default ``~/.edgebench``)::

    bundles/<sha256>.zip        the bundle as sent (sha256 checked on the device before every use)
    bundles/<sha256>/           extracted, checked file by file against the zip's CRCs before every use
    artifacts/<content_hash>/   manifest.json, config.json, acoustic.pt, vocoder.pt (sha256 checked)

Checks run on the device as a small Python program (stdlib only, Python 3.8+), so a copy that is
corrupt is found and replaced, and an unchanged bundle or artifact transfers nothing (bytes_sent 0).
Files arrive under a temporary name and are renamed; a bundle is extracted to a temporary directory and
renamed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from devices.bundle import LAUNCHER_NAME, Bundle
from devices.errors import TransportError
from devices.ondevice.artifact import MANIFEST, read_manifest, sha256_file
from devices.ondevice.errors import ArtifactError
from devices.transport import Transport

SNIPPET_TIMEOUT_S = 120.0
ARTIFACT_FILES = ("config.json", "acoustic.pt", "vocoder.pt")

# Runs on the device: python -c PREPARE_BUNDLE WORK_DIR SHA256
PREPARE_BUNDLE = r"""
import hashlib, json, os, shutil, sys, zipfile, zlib
work = os.path.abspath(os.path.expanduser(sys.argv[1])); sha = sys.argv[2]
bdir = os.path.join(work, "bundles")
for d in (bdir, os.path.join(work, "artifacts")):
    if not os.path.isdir(d):
        os.makedirs(d)
zpath = os.path.join(bdir, sha + ".zip"); dpath = os.path.join(bdir, sha)
marker = os.path.join(dpath, ".edgebench-complete")
def file_sha(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
def dir_ok():
    if not os.path.isfile(marker):
        return False
    with open(marker) as f:
        if f.read().strip() != sha:
            return False
    with zipfile.ZipFile(zpath) as z:
        for info in z.infolist():
            if info.filename.endswith("/"):
                continue
            p = os.path.join(dpath, info.filename)
            if not os.path.isfile(p) or os.path.getsize(p) != info.file_size:
                return False
            crc = 0
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    crc = zlib.crc32(chunk, crc)
            if crc & 0xFFFFFFFF != info.CRC:
                return False
    return True
out = {"work_dir": work, "zip": zpath, "dir": dpath}
if not os.path.isfile(zpath) or file_sha(zpath) != sha:
    out["state"] = "upload"
elif dir_ok():
    out["state"] = "ready"
else:
    tmp = "%s.tmp-%d" % (dpath, os.getpid()); old = "%s.old-%d" % (dpath, os.getpid())
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(zpath) as z:
        z.extractall(tmp)
    with open(os.path.join(tmp, ".edgebench-complete"), "w") as f:
        f.write(sha)
    if os.path.exists(dpath):
        os.rename(dpath, old)
    os.rename(tmp, dpath)
    shutil.rmtree(old, ignore_errors=True)
    out["state"] = "extracted"
print(json.dumps(out))
"""

# Runs on the device: python -c CHECK_ARTIFACT WORK_DIR CONTENT_HASH (stdin: {"name": sha256, ...})
CHECK_ARTIFACT = r"""
import hashlib, json, os, sys
work = os.path.abspath(os.path.expanduser(sys.argv[1])); content_hash = sys.argv[2]
expected = json.loads(sys.stdin.read())
adir = os.path.join(work, "artifacts", content_hash)
if not os.path.isdir(adir):
    os.makedirs(adir)
bad = []
for name in sorted(expected):
    p = os.path.join(adir, name)
    if not os.path.isfile(p):
        bad.append(name); continue
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if h.hexdigest() != expected[name]:
        bad.append(name)
print(json.dumps({"work_dir": work, "dir": adir, "bad": bad}))
"""


@dataclass(frozen=True)
class PushResult:
    remote_path: str
    bytes_sent: int
    agent_argv: list = field(default_factory=list)


def _transfer_timeout(size: int) -> float:
    """Generous but bounded: 60 s plus 64 KiB/s (a Pi on a poor Wi-Fi link)."""
    return 60.0 + size / (64 * 1024)


def _run_snippet(transport: Transport, code: str, args: list, stdin: bytes | None = None) -> dict:
    dev = transport.device
    result = transport.run([dev.python, "-c", code, *args], timeout=SNIPPET_TIMEOUT_S, stdin=stdin)
    if result.exit_code != 0:
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        hint = f" (is {dev.python!r} the device's Python?)" if result.exit_code in (126, 127) else ""
        raise TransportError(
            f"device {dev.name!r}: preparing the device cache failed "
            f"(exit {result.exit_code}){hint}: {detail}"
        )
    try:
        return json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise TransportError(
            f"device {dev.name!r}: unexpected reply from the device cache check: {result.stdout[-200:]!r}"
        ) from None


def ensure_bundle(transport: Transport, bundle: Bundle) -> PushResult:
    """Make sure ``<work_dir>/bundles/<sha256>/`` holds this bundle (verified on the device)."""
    args = [transport.work_dir, bundle.sha256]
    state = _run_snippet(transport, PREPARE_BUNDLE, args)
    sent = 0
    if state["state"] == "upload":
        sent += transport.put(bundle.path, state["zip"], timeout=_transfer_timeout(bundle.size))
        state = _run_snippet(transport, PREPARE_BUNDLE, args)
        if state["state"] == "upload":
            raise TransportError(
                f"device {transport.device.name!r}: bundle {bundle.sha256[:12]} still fails its sha256 "
                f"check after upload (disk full or a failing storage card?)"
            )
    remote_dir = state["dir"]
    return PushResult(remote_path=remote_dir, bytes_sent=sent,
                      agent_argv=[transport.device.python, f"{remote_dir}/{LAUNCHER_NAME}"])


def artifact_files(artifact_dir: Path) -> tuple:
    """(content_hash, {file name: sha256}) of a local artifact, from its manifest."""
    artifact_dir = Path(artifact_dir)
    manifest_path = artifact_dir / MANIFEST
    manifest = read_manifest(artifact_dir)  # the format's one reader: missing, unreadable, version
    content_hash = manifest.get("content_hash")
    listed = manifest.get("files")
    if not isinstance(content_hash, str) or not isinstance(listed, dict):
        raise ArtifactError(f"{manifest_path}: content_hash or files missing; rebuild the artifact")
    expected = {}
    for name, sha in sorted(listed.items()):
        if "/" in name or name.startswith(".") or not isinstance(sha, str):
            raise ArtifactError(f"{manifest_path}: files.{name}: invalid entry")
        if not (artifact_dir / name).is_file():
            raise ArtifactError(f"{artifact_dir / name}: missing; rebuild the artifact")
        expected[name] = sha
    expected[MANIFEST] = sha256_file(manifest_path)
    return content_hash, expected


def ensure_artifact(transport: Transport, artifact_dir: Path) -> PushResult:
    """Make sure ``<work_dir>/artifacts/<content_hash>/`` holds this artifact; sends only what is missing
    or corrupt there (each file verified by sha256 on the device)."""
    artifact_dir = Path(artifact_dir)
    content_hash, expected = artifact_files(artifact_dir)
    payload = json.dumps(expected).encode()
    args = [transport.work_dir, content_hash]
    state = _run_snippet(transport, CHECK_ARTIFACT, args, stdin=payload)
    sent = 0
    for name in state["bad"]:
        local = artifact_dir / name
        timeout = _transfer_timeout(local.stat().st_size)
        sent += transport.put(local, f"{state['dir']}/{name}", timeout=timeout)
    if state["bad"]:
        state = _run_snippet(transport, CHECK_ARTIFACT, args, stdin=payload)
        if state["bad"]:
            raise TransportError(
                f"device {transport.device.name!r}: {', '.join(state['bad'])} of artifact "
                f"{content_hash[:12]} fail their sha256 check after upload "
                f"(local artifact changed, or the device's storage is failing)"
            )
    return PushResult(remote_path=state["dir"], bytes_sent=sent, agent_argv=[])

