"""Controller side of one measurement: push, run the agent on the device, validate what it says.

``measure_variant`` returns a validated record (status ok, or failed with the device's reason) and
raises ``TransportError``/``AgentError`` when nothing could be measured (unreachable device, agent that
printed no record) and ``RecordError`` when the device printed something that is not a valid record.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from devices.bundle import Bundle, build_bundle
from devices.errors import AgentError, DevicesError
from devices.inventory import Device
from devices.ondevice.protocol import Protocol
from devices.push import artifact_files, ensure_artifact, ensure_bundle
from devices.record import parse_record
from devices.transport import Transport

#: Facts that identify a device (a different value = a different machine for comparisons).
IDENTITY_FACTS = ("cpu_model", "cores", "mem_total_bytes", "os", "machine", "torch")
#: MemTotal moves a little with kernel versions: the fingerprint uses it rounded to this many bytes.
MEM_ROUND_BYTES = 128 * 2**20
STDERR_TAIL_LINES = 5


def effective_protocol(device: Device, protocol: Protocol) -> Protocol:
    """The device's ``threads`` and ``quantized_engine`` apply where the protocol leaves them unset."""
    if protocol.threads is None and getattr(device, "threads", None):
        protocol = dataclasses.replace(protocol, threads=device.threads)
    if protocol.quantized_engine is None and getattr(device, "quantized_engine", None):
        protocol = dataclasses.replace(protocol, quantized_engine=device.quantized_engine)
    return protocol


def agent_command(agent_argv: list, remote_artifact: str, variant: str, protocol: Protocol,
                  work_dir: str, check_outputs: bool = False) -> list:
    """The argv of ``agent measure`` for one variant (each argument quoted by the transport)."""
    return [*agent_argv, "measure", "--artifact", remote_artifact, "--variant", variant,
            "--work-dir", work_dir, *protocol.agent_args(), *(["--check-outputs"] if check_outputs else [])]


def measure_variant(transport: Transport, device: Device, artifact_dir: Path, variant: str,
                    protocol: Protocol, bundle: Bundle | None = None, state_dir: Path | None = None,
                    check_outputs: bool = False) -> dict:
    """Measure one variant on one device; returns the validated record.

    check_outputs: the device also synthesises one sentence and this controller compares it with its own
    (``check_device_outputs``); outputs beyond the tolerance fail the record.

    bundle: the agent bundle (built once per run by the caller); when None it is built (or taken from
    the cache) in ``state_dir``.
    """
    if bundle is None:
        if state_dir is None:
            raise DevicesError("measure_variant: give the agent bundle or a state directory to build it in")
        bundle = build_bundle(Path(state_dir))
    protocol = effective_protocol(device, protocol)
    content_hash, _ = artifact_files(Path(artifact_dir))
    agent = ensure_bundle(transport, bundle)
    artifact = ensure_artifact(transport, Path(artifact_dir))
    argv = agent_command(agent.agent_argv, artifact.remote_path, variant, protocol, transport.work_dir,
                         check_outputs)
    result = transport.run(argv, timeout=protocol.transport_timeout())
    if not result.stdout.strip():
        tail = " | ".join(result.stderr.strip().splitlines()[-STDERR_TAIL_LINES:]) or "no output"
        raise AgentError(
            f"device {device.name!r}: the agent printed no record (exit {result.exit_code} after "
            f"{result.duration_s:.1f}s): {tail}"
        )
    record = parse_record(result.stdout, protocol=protocol, variant=variant, artifact=content_hash)
    if check_outputs:
        check_device_outputs(record, Path(artifact_dir), protocol)
    return record


def check_device_outputs(record: dict, artifact_dir: Path, protocol: Protocol) -> None:
    """Replace the device's ``outputs`` (first process) by ``output_check``, the comparison with this
    controller's own synthesis of the same artifact (``devices.ondevice.outputs``). A record whose outputs
    are beyond the tolerance, or that should carry outputs and does not, becomes failed with the reason."""
    from devices.ondevice import corpus, frontend, load
    from devices.ondevice import outputs as outputs_mod
    from devices.ondevice.artifact import read_config

    procs = [p for p in record.get("processes") or [] if isinstance(p.get("outputs"), dict)]
    if record.get("status") != "ok":
        for p in procs:
            p.pop("outputs", None)
        return
    if not procs:
        _fail_record(record, "the device did not report its outputs for the output check")
        return
    proc = procs[0]
    sent = proc.pop("outputs")
    for p in procs[1:]:
        p.pop("outputs", None)
    try:
        sentence = next(s for s in corpus.default_corpus(seed=protocol.seed) if s.id == sent["sentence_id"])
        config = read_config(artifact_dir)
        acoustic, vocoder, precision = _controller_models(artifact_dir, config)
        check = outputs_mod.compare(sent, frontend, load.symbol_table(config), acoustic, vocoder, sentence,
                                    precision)
    except Exception as exc:  # noqa: BLE001 - bad outputs or a model that cannot redo them: this pair fails
        _fail_record(record, f"the device's outputs for the output check are unusable: "
                             f"{type(exc).__name__}: {str(exc)[:200]}")
        return
    proc["output_check"] = check
    if not check["ok"]:
        tol = check["tolerance"]
        _fail_record(record, (
            f"outputs differ from the controller's on sentence {check['sentence_id']} "
            f"({check['precision']}, engine {check['quantized_engine']}): mel relative rms "
            f"{check['mel_rel_rms']} (tolerance {tol['mel_rel_rms']:g}), mel max |diff| "
            f"{check['mel_max_abs']} (tolerance {tol['mel_max_abs']:g}), waveform max |diff| "
            f"{check['wav_max_abs']} (tolerance {tol['wav_max_abs']:g}); {check['durations_differ']} of "
            f"{check['phones']} phone durations differ"))


def _controller_models(artifact_dir: Path, config: dict) -> tuple:
    """(acoustic, vocoder, precision) of an artifact, loaded here with the artifact's own runtime: a torch
    artifact's modules, or an onnxruntime artifact's sessions (default session options: the graphs, not the
    board's settings, are what is compared). Precision "int8" when any component is quantized."""
    from devices.ondevice.artifact import runtime_of

    if runtime_of(config) == "onnxruntime":
        from devices.ondevice import ort

        acoustic, vocoder = ort.load(artifact_dir)
        return acoustic, vocoder, "int8" if (config.get("onnx") or {}).get("quantized") else "fp32"
    from devices.ondevice import load

    acoustic = load.load_component(artifact_dir, "acoustic", verify=False)
    vocoder = load.load_component(artifact_dir, "vocoder", verify=False)
    return acoustic, vocoder, "int8" if config.get("transforms") else "fp32"


def _fail_record(record: dict, error: str) -> None:
    record["status"] = "failed"
    record["error"] = f"{record['error']}; {error}" if record.get("error") else error


def identity_mismatch(identity: dict, facts: dict) -> str | None:
    """None when the identifying facts of a record (``facts``) agree with ``identity`` (what the
    controller read itself over the same connection), else what differs. A device cannot claim to be
    another board: its record's identity must be the one the controller saw."""
    if not identity.get("fingerprint"):
        return None  # nothing read before (no health facts): nothing to hold the record against
    claimed = device_identity(identity.get("name", ""), facts)
    if claimed["fingerprint"] == identity["fingerprint"]:
        return None
    diffs = [
        f"{key} {claimed.get(key)!r} (the device said {identity.get(key)!r} before)"
        for key in IDENTITY_FACTS
        if claimed.get(key) != identity.get(key) and key != "mem_total_bytes"
    ]
    if claimed.get("mem_total_bytes") != identity.get("mem_total_bytes"):
        diffs.append("mem_total_bytes")
    return "; ".join(diffs) or "identity fingerprint differs"


def device_identity(device: Device | str, facts: dict) -> dict:
    """Name, the identifying facts and a sha256 fingerprint (12 hex) over them.

    Use the facts the agent reports (``record["facts_before"]``) so every attempt on a machine gets the
    same fingerprint; the torch version is taken without its local suffix (``2.1.0+cpu`` -> ``2.1.0``).
    """
    name = device if isinstance(device, str) else device.name
    ident: dict[str, Any] = {key: (facts or {}).get(key) for key in IDENTITY_FACTS}
    # The torch installed, imported or not: a board whose torch cannot run (its onnxruntime pairs measured)
    # has the same identity in the health check's facts (torch None, torch_installed) and the agent's (read
    # from the package metadata, never imported by the supervisor).
    ident["torch"] = ident["torch"] or (facts or {}).get("torch_installed")
    if isinstance(ident["torch"], str):
        ident["torch"] = ident["torch"].split("+")[0]
    basis = dict(ident)
    if isinstance(basis["mem_total_bytes"], int):
        basis["mem_total_bytes"] = round(basis["mem_total_bytes"] / MEM_ROUND_BYTES) * MEM_ROUND_BYTES
    digest = hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()
    return {"name": name, "fingerprint": digest[:12], **ident}


#: The longest a device's micro-benchmarks may take (an emulated board's torch import included).
MICROBENCH_TIMEOUT_S = 300.0


def measure_limits(transport: Transport, device: Device, bundle: Bundle, protocol: Protocol, *,
                   min_s: float, shapes: list | None = None) -> dict:
    """The device's micro-benchmarks (``devices.ondevice.microbench``) with the protocol's threads and
    quantized engine, at the large shape and at ``shapes`` (the model's). Returns the agent's document,
    or ``{"error": ...}`` saying why there is none; never raises for a device that fails or lies."""
    protocol = effective_protocol(device, protocol)
    try:
        agent = ensure_bundle(transport, bundle)
        argv = [*agent.agent_argv, "microbench", "--min-s", f"{min_s:g}"]
        if protocol.threads:
            argv += ["--threads", str(protocol.threads)]
        if protocol.quantized_engine:
            argv += ["--quantized-engine", protocol.quantized_engine]
        if shapes:
            argv += ["--shapes", ",".join("x".join(str(int(v)) for v in s) for s in shapes)]
        result = transport.run(argv, timeout=MICROBENCH_TIMEOUT_S + 20 * min_s)
    except DevicesError as exc:
        return {"error": f"micro-benchmarks not run: {exc}"}
    return parse_limits(result.stdout, result.stderr, result.exit_code)


#: A micro-benchmark document is a few kilobytes; a device that prints more is not believed.
MAX_LIMITS_BYTES = 1 << 20


def parse_limits(stdout: str, stderr: str = "", exit_code: int = 0) -> dict:
    """The agent's micro-benchmark document, or ``{"error": ...}``: no document, another format, an error
    the agent reported, more than ``MAX_LIMITS_BYTES``, or bounds that are not plausible
    (``microbench.check``)."""
    from devices.ondevice import microbench

    if len(stdout) > MAX_LIMITS_BYTES:
        return {"error": f"the agent printed {len(stdout)} bytes for its micro-benchmarks; not believed"}
    try:
        doc = json.loads(stdout)
    except ValueError:
        tail = " | ".join(stderr.strip().splitlines()[-STDERR_TAIL_LINES:]) or "no output"
        return {"error": f"the agent printed no micro-benchmarks (exit {exit_code}): {tail}"}
    if not isinstance(doc, dict) or doc.get("format") != microbench.FORMAT or doc.get("version") != 1:
        return {"error": "the agent printed something that is not an edgebench.microbench v1 document"}
    if "error" in doc:
        return {"error": str(doc["error"])[:500]}
    problem = microbench.check(doc)
    return {"error": f"implausible micro-benchmarks: {problem}"} if problem else doc
