"""Run orchestration: build what is missing, measure every (device, variant) pair, store as results arrive.

Devices run in parallel (one thread each); variants run one after another on each device, so no device
ever measures two things at once. Every attempt is written to the store in its own transaction the moment
it finishes: a controller killed mid-run loses nothing already measured, and ``resume`` measures only the
pairs that have no successful attempt yet.

A device that fails, hangs or lies is recorded as such (status ``ineligible``, ``unreachable``,
``timeout`` or ``failed`` with the reason) and the run goes on with the others (style: fabric's
GroupResult — keep every device's result or exception, report them together).
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from devices import health as device_health
from devices import measure as device_measure
from devices.bundle import Bundle
from devices.errors import DevicesError, RecordError, TransportError
from devices.inventory import Device
from devices.protocol import Protocol
from devices.transport import open_transport
from harness.errors import UserError
from harness.store import Store

log = logging.getLogger(__name__)

# Attempt statuses as stored (the gate maps every status but "ok" to "could not measure").
OK, FAILED, UNREACHABLE, TIMEOUT, INELIGIBLE = "ok", "failed", "unreachable", "timeout", "ineligible"


@dataclass(frozen=True)
class PairOutcome:
    """What happened to one (device, variant) pair in this invocation."""

    device: str
    variant: str
    status: str
    error: str | None = None
    seconds: float = 0.0


@dataclass
class RunOutcome:
    run_id: str
    pairs: list[PairOutcome] = field(default_factory=list)

    @property
    def failed(self) -> list[PairOutcome]:
        return [p for p in self.pairs if p.status != OK]


def classify_transport_error(exc: TransportError) -> str:
    text = str(exc).lower()
    return TIMEOUT if "timed out" in text or "timeout" in text else UNREACHABLE


def measure_device(
    store: Store,
    run_id: str,
    device: Device,
    artifacts: dict[str, Path],
    variants: Sequence[str],
    protocol: Protocol,
    known_hosts: Path,
    deadline: float,
    bundle: Bundle,
    state_dir: Path,
    on_pair: Callable[[PairOutcome], None] | None = None,
) -> list[PairOutcome]:
    """Measure ``variants`` one after another on one device; record every attempt as it finishes."""
    outcomes: list[PairOutcome] = []
    identity: dict = {"name": device.name}

    def record(variant: str, status: str, error: str | None, rec: dict | None, started: float) -> None:
        store.record_attempt(run_id, device.name, identity, variant, status, error, rec)
        outcome = PairOutcome(device.name, variant, status, error, time.monotonic() - started)
        outcomes.append(outcome)
        if on_pair is not None:
            on_pair(outcome)

    started = time.monotonic()
    try:
        transport = open_transport(device, known_hosts=known_hosts, state_dir=state_dir)
    except DevicesError as exc:
        status = classify_transport_error(exc) if isinstance(exc, TransportError) else INELIGIBLE
        for variant in variants:
            record(variant, status, f"{device.name}: {exc}", None, started)
        return outcomes
    try:
        health = device_health.check(transport, device)
        if health.facts:
            identity = device_measure.device_identity(device, health.facts)
        if not health.ok:
            reason = health.reason or "unknown reason"
            status = INELIGIBLE if health.reachable else UNREACHABLE
            for variant in variants:
                record(variant, status, f"{device.name}: health check failed: {reason}", None, started)
            return outcomes
        for variant in variants:
            started = time.monotonic()
            if time.monotonic() > deadline:
                err = f"{device.name}: the run's overall timeout passed first"
                record(variant, TIMEOUT, err, None, started)
                continue
            try:
                rec = device_measure.measure_variant(
                    transport, device, artifacts[variant], variant, protocol, bundle=bundle
                )
            except TransportError as exc:
                record(variant, classify_transport_error(exc), f"{device.name}: {exc}", None, started)
                continue
            except RecordError as exc:
                err = f"{device.name}: the device's record was rejected: {exc}"
                record(variant, FAILED, err, None, started)
                continue
            except DevicesError as exc:
                record(variant, FAILED, f"{device.name}: {exc}", None, started)
                continue
            if rec.get("facts_before"):
                identity = device_measure.device_identity(device, rec["facts_before"])
            status = OK if rec.get("status") == "ok" else FAILED
            record(variant, status, rec.get("error"), rec, started)
    finally:
        transport.close()
    return outcomes


def measure_all(
    store: Store,
    run_id: str,
    pairs: Sequence[tuple[Device, str]],
    artifacts: dict[str, Path],
    protocol: Protocol,
    known_hosts: Path,
    run_timeout_s: float,
    bundle: Bundle,
    state_dir: Path,
    on_pair: Callable[[PairOutcome], None] | None = None,
) -> list[PairOutcome]:
    """Measure every pair: devices in parallel, each device's variants in order."""
    by_device: dict[str, tuple[Device, list[str]]] = {}
    for device, variant in pairs:
        by_device.setdefault(device.name, (device, []))[1].append(variant)
    deadline = time.monotonic() + run_timeout_s
    lock = threading.Lock()
    outcomes: list[PairOutcome] = []

    def one(device: Device, variants: list[str]) -> None:
        recorded: list[PairOutcome] = []  # every attempt measure_device stored, even if it then crashes

        def note(outcome: PairOutcome) -> None:
            recorded.append(outcome)
            if on_pair is not None:
                on_pair(outcome)

        try:
            measure_device(
                store, run_id, device, artifacts, variants, protocol, known_hosts, deadline, bundle,
                state_dir, note,
            )
        except Exception as exc:  # noqa: BLE001 - a bug for one device must not stop the others
            # The pairs not yet recorded get the exception's text (visible in the store and the report);
            # the full traceback goes to the log.
            log.error("device %s: internal error\n%s", device.name, traceback.format_exc())
            done = {o.variant for o in recorded}
            err = f"{device.name}: internal error: {type(exc).__name__}: {exc}"
            for variant in variants:
                if variant not in done:
                    identity = {"name": device.name}
                    store.record_attempt(run_id, device.name, identity, variant, FAILED, err, None)
                    note(PairOutcome(device.name, variant, FAILED, err))
        with lock:
            outcomes.extend(recorded)

    if not by_device:
        return outcomes
    with ThreadPoolExecutor(max_workers=len(by_device), thread_name_prefix="edgebench-device") as pool:
        futures = [pool.submit(one, dev, vs) for dev, vs in by_device.values()]
        for fut in futures:
            fut.result()
    return outcomes


def check_resumable(store: Store, run_id: str) -> None:
    if run_id not in set(store.runs_df()["run_id"]):
        raise UserError(f"--resume {run_id}: no such run in {store.path} (see `edgebench history`)")
