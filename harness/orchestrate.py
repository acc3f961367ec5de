"""Run orchestration: build what is missing, measure every (device, variant) pair, store as results arrive.

Devices run in parallel (one thread each). On a device the variants are measured interleaved, in rounds
of one fresh process per variant with the order shuffled per round (seeded), never two things at once, so
drift during a run (other load, heat, clock) reaches every variant alike. Every process is written to the
store in its own transaction the moment it finishes: a controller killed mid-run loses nothing already
measured, and ``resume`` measures only what is missing, completing half-measured pairs.

A device that fails, hangs or lies is recorded as such (status ``ineligible``, ``unreachable``,
``timeout`` or ``failed`` with the reason) and the run goes on with the others (style: fabric's
GroupResult — keep every device's result or exception, report them together).
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Sequence

from devices import health as device_health
from devices import measure as device_measure
from devices.bundle import Bundle
from devices.errors import DevicesError, RecordError, TransportError
from devices.inventory import Device
from devices.ondevice.protocol import Protocol
from devices.transport import open_transport
from harness.errors import UserError
from harness.store import Store
from harness.store.base import now as store_now
from variants.runtimes import split_measured

log = logging.getLogger(__name__)

# Attempt statuses as stored (the gate maps every status but "ok" to "could not measure"). BUSY: a board
# of a labgrid farm that someone else held for the whole wait (the board is fine; it was not ours to use).
OK, FAILED, UNREACHABLE, TIMEOUT, INELIGIBLE, BUSY = (
    "ok", "failed", "unreachable", "timeout", "ineligible", "busy")
#: How long an interrupted run waits for its devices' threads to stop (their transports are closed
#: first, so this is reached only by a hung release) before it releases its labgrid places itself.
STOP_GRACE_S = 30.0


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


def _identity(device: Device, facts: dict | None) -> dict:
    """The device identity stored with an attempt: name, fingerprint and facts, and the device's budget
    class as configured when it was measured (so a verdict depends on the store only)."""
    identity = device_measure.device_identity(device, facts) if facts else {"name": device.name}
    identity["budget_class"] = getattr(device, "budget_class", None)
    return identity


def round_order(variants: Sequence[str], round_index: int, seed: int) -> list[str]:
    """The order of one round: a seeded shuffle per round (the same seed and round give the same order),
    so drift over a run (load, heat, clock) reaches every variant alike instead of the one measured last."""
    order = list(variants)
    random.Random(f"{seed}:{round_index}").shuffle(order)
    return order


@dataclass(frozen=True)
class LimitsPlan:
    """How each device's limits are measured in a run (``devices.measure.measure_limits``): ``min_s``
    seconds per micro-benchmark (0: none), reused when the same identity measured them within
    ``max_age_s``, at the model's product ``shapes``."""

    min_s: float = 0.5
    max_age_s: float = 3600.0
    shapes: tuple = ()


def device_limits(store: Store, run_id: str, device: Device, transport, bundle: Bundle, protocol: Protocol,
                  identity: dict, plan: LimitsPlan) -> None:
    """Store the device's micro-benchmarks for this run, once per device identity and run: kept if this
    run has them (``--resume``), copied from a recent measurement of the same identity, else measured.
    A device that cannot measure them stores why; its pairs are measured anyway."""
    fingerprint = identity.get("fingerprint")
    have = store.microbench(run_id).get(device.name)
    if have is not None and have["device_identity"] == fingerprint and "error" not in have["doc"]:
        return
    if fingerprint and plan.max_age_s > 0:
        since = (datetime.now(timezone.utc) - timedelta(seconds=plan.max_age_s)).isoformat()
        recent = store.latest_microbench(fingerprint, since)
        if recent is not None:
            store.record_microbench(run_id, device.name, fingerprint, recent["doc"],
                                    measured_at=recent["measured_at"], reused_from=recent["id"])
            return
    doc = device_measure.measure_limits(transport, device, bundle, protocol, min_s=plan.min_s,
                                        shapes=[list(s) for s in plan.shapes])
    if "error" in doc:
        log.warning("device %s: %s", device.name, doc["error"])
    store.record_microbench(run_id, device.name, fingerprint, doc)


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
    done: dict[str, int] | None = None,
    stop: _Stop | None = None,
    limits: LimitsPlan | None = None,
) -> list[PairOutcome]:
    """Measure ``variants`` on one device interleaved: in rounds of one fresh process per variant, the
    order shuffled per round; every process is stored the moment it finishes.

    ``done`` maps a variant to the undisturbed processes a partial attempt of this run already holds
    (``--resume`` completes such a pair). A process the agent flags disturbed does not count; it is
    measured again, at most ``protocol.processes`` extra times per pair, after which the pair is stored
    as measured-but-disturbed. One outcome per variant is reported when its pair is settled.

    ``stop`` (set when the run is interrupted): no new process is started, the open transport is closed
    by the interrupting thread, and what was cut short is not recorded (``--resume`` measures it).
    """
    stop = stop or _Stop()
    outcomes: list[PairOutcome] = []
    identity: dict = _identity(device, None)
    done = dict(done or {})
    planned = protocol.processes
    started_at = {v: time.monotonic() for v in variants}

    def settle(variant: str, status: str, error: str | None) -> None:
        outcome = PairOutcome(device.name, variant, status, error, time.monotonic() - started_at[variant])
        outcomes.append(outcome)
        if on_pair is not None:
            on_pair(outcome)

    def record_all(status: str, error: str, pending: Sequence[str]) -> None:
        for variant in pending:
            store.record_attempt(run_id, device.name, identity, variant, status, error, None)
            settle(variant, status, error)

    if stop.is_set():
        return outcomes
    try:
        transport = open_transport(device, known_hosts=known_hosts, state_dir=state_dir)
    except DevicesError as exc:
        if stop.is_set():
            return outcomes
        status = classify_transport_error(exc) if isinstance(exc, TransportError) else INELIGIBLE
        record_all(status, f"{device.name}: {exc}", variants)
        return outcomes
    stop.track(transport)
    try:
        runtimes = list(dict.fromkeys(split_measured(v)[1] for v in variants))
        health = device_health.check(transport, device, runtimes=runtimes)
        if stop.is_set():
            return outcomes
        if health.facts:
            identity = _identity(device, health.facts)
        if not health.ok:
            reason = health.reason or "unknown reason"
            status = INELIGIBLE if health.reachable else UNREACHABLE
            record_all(status, f"{device.name}: health check failed: {reason}", variants)
            return outcomes
        # A pair whose runtime cannot run here (torch missing or crashing, no onnxruntime) is ineligible on
        # its own; the device's other pairs are measured.
        for variant in list(variants):
            problem = health.runtime_problem(split_measured(variant)[1])
            if problem:
                record_all(INELIGIBLE, f"{device.name}: {problem}", [variant])
        variants = [v for v in variants if not health.runtime_problem(split_measured(v)[1])]
        if limits is not None and limits.min_s > 0 and variants and not health.runtime_problem("torch"):
            device_limits(store, run_id, device, transport, bundle, protocol, identity, limits)
            if stop.is_set():
                return outcomes
        one = dataclasses.replace(
            protocol, processes=1, timeout_s=max(1.0, protocol.timeout_s / max(1, planned))
        )
        need = {v: max(0, planned - done.get(v, 0)) for v in variants}
        extra = {v: planned for v in variants}  # re-measurements of disturbed processes left per pair
        tries = {v: 0 for v in variants}
        open_pairs = [v for v in variants if need[v] > 0]
        for v in variants:
            if need[v] == 0:  # a resumed pair that is complete already (cannot happen via missing_pairs)
                settle(v, OK, None)
        round_index = 0
        while open_pairs:
            for variant in round_order(open_pairs, round_index, protocol.seed):
                if stop.is_set():
                    return outcomes
                if time.monotonic() > deadline:
                    err = f"{device.name}: the run's overall timeout passed first"
                    store.record_attempt(run_id, device.name, identity, variant, TIMEOUT, err, None)
                    settle(variant, TIMEOUT, err)
                    open_pairs.remove(variant)
                    continue
                tries[variant] += 1
                if tries[variant] > 2 * planned + 1:  # cannot happen while the store and this loop agree
                    err = f"{device.name}: the pair did not settle after {tries[variant] - 1} processes"
                    store.record_attempt(run_id, device.name, identity, variant, FAILED, err, None)
                    settle(variant, FAILED, err)
                    open_pairs.remove(variant)
                    continue
                status, error = _one_process(
                    store, run_id, device, transport, artifacts[variant], variant, one, bundle, identity,
                    planned, final=need[variant] > 0 and extra[variant] <= 0,
                    check_outputs=tries[variant] == 1, stop=stop,
                )
                if status == STOPPED:
                    return outcomes
                if status in (OK, FAILED, TIMEOUT, UNREACHABLE, INELIGIBLE):
                    settle(variant, status, error)
                    open_pairs.remove(variant)
                elif status == DISTURBED_PROCESS:
                    extra[variant] -= 1
                else:  # one more undisturbed process of a partial pair
                    need[variant] -= 1
            round_index += 1
    finally:
        stop.untrack(transport)
        transport.close()
    return outcomes


#: What ``_one_process`` says of a process that counted / that was disturbed (the pair stays partial),
#: and of one cut short by an interrupt (not recorded).
COUNTED_PROCESS, DISTURBED_PROCESS, STOPPED = "counted", "disturbed", "stopped"


class _Stop:
    """The run's interrupt: an event the device threads check between processes, and the transports they
    have open, which the interrupting thread closes so that a process in flight ends now."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._open: set = set()
        self._idle = threading.Condition(self._lock)
        self._active = 0

    def enter(self) -> bool:
        """A device thread begins; False if the run is stopped already (then it must not start)."""
        with self._lock:
            self._active += 1
        return not self.is_set()

    def leave(self) -> None:
        with self._lock:
            self._active -= 1
            self._idle.notify_all()

    def wait_idle(self, timeout: float) -> int:
        """Wait until no device thread is active (at most ``timeout`` s); the number still active."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._active and time.monotonic() < deadline:
                self._idle.wait(max(0.0, deadline - time.monotonic()))
            return self._active

    def is_set(self) -> bool:
        return self._event.is_set()

    def track(self, transport) -> None:
        with self._lock:
            self._open.add(transport)
        if self.is_set():
            transport.close()

    def untrack(self, transport) -> None:
        with self._lock:
            self._open.discard(transport)

    def set(self) -> None:
        self._event.set()
        with self._lock:
            transports = list(self._open)
        for transport in transports:
            try:
                transport.close()
            except Exception:  # noqa: BLE001 - closing is best effort; the thread's own close follows
                log.debug("closing a transport on interrupt", exc_info=True)


def _one_process(
    store: Store,
    run_id: str,
    device: Device,
    transport,
    artifact: Path,
    variant: str,
    protocol: Protocol,
    bundle: Bundle,
    identity: dict,
    planned: int,
    final: bool,
    check_outputs: bool = False,
    stop: _Stop | None = None,
) -> tuple[str, str | None]:
    """Measure and store one process of a pair. Returns the pair's settled status (ok, failed, ...) with
    its error, or COUNTED_PROCESS / DISTURBED_PROCESS while it stays partial. ``check_outputs``: the first
    process of a pair also checks the device's outputs against the controller's."""
    began = store_now()
    try:
        rec = device_measure.measure_variant(transport, device, artifact, variant, protocol, bundle=bundle,
                                             check_outputs=check_outputs)
        # When the controller had the board for this process (its own clock, UTC): on a shared farm,
        # the evidence that no two controllers measured one board at once.
        window = [began, store_now()]
        for proc in rec.get("processes") or []:
            proc["controller_window"] = window
        if device.place is not None:
            rec["labgrid"] = {"place": device.place, "coordinator": device.coordinator,
                              "address": device.address}
    except TransportError as exc:
        if stop is not None and stop.is_set():   # our own interrupt closed the connection
            return STOPPED, None
        status, error = classify_transport_error(exc), f"{device.name}: {exc}"
    except RecordError as exc:
        status, error = FAILED, f"{device.name}: the device's record was rejected: {exc}"
    except DevicesError as exc:
        if stop is not None and stop.is_set():
            return STOPPED, None
        status, error = FAILED, f"{device.name}: {exc}"
    else:
        claimed = device_measure.identity_mismatch(identity, rec.get("facts_before") or {})
        if claimed:
            status, error = FAILED, f"{device.name}: the record claims another device: {claimed}"
        else:
            _, stored = store.add_processes(
                run_id, device.name, identity, variant, rec, planned, final=final
            )
            if stored in (OK, FAILED):
                return stored, rec.get("error") if stored == FAILED else None
            disturbed = any(p.get("disturbed") for p in rec.get("processes") or [])
            return (DISTURBED_PROCESS if disturbed else COUNTED_PROCESS), None
    store.record_attempt(run_id, device.name, identity, variant, status, error, None)
    return status, error


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
    progress: dict[tuple[str, str], int] | None = None,
    limits: LimitsPlan | None = None,
) -> list[PairOutcome]:
    """Measure every pair: devices in parallel, each device's variants interleaved. ``progress`` holds the
    processes already stored of half-measured pairs (``Store.partial_progress``): they are completed.

    A board of a labgrid farm is held (acquired under the owner ``edgebench-<run_id>``) only while its
    pairs are measured, and released on every exit; a place someone else holds for the whole wait is
    recorded ``busy``, a coordinator that cannot be reached ``unreachable``.

    An interrupt of the calling thread (Ctrl-C, or SIGTERM turned into SystemExit by the CLI) stops every
    device: no new process starts, open connections are closed, what was cut short is not recorded, every
    place is released (by the device threads, and after ``STOP_GRACE_S`` by this thread for whatever is
    still held under the run's owner), and the interrupt is raised again."""
    from devices import labgrid

    progress = progress or {}
    by_device: dict[str, tuple[Device, list[str]]] = {}
    for device, variant in pairs:
        by_device.setdefault(device.name, (device, []))[1].append(variant)
    deadline = time.monotonic() + run_timeout_s
    lock = threading.Lock()
    outcomes: list[PairOutcome] = []
    stop = _Stop()
    owner = labgrid_owner(run_id)

    def one(device: Device, variants: list[str]) -> None:
        try:
            if stop.enter():
                measure_one(device, variants)
        finally:
            stop.leave()

    def measure_one(device: Device, variants: list[str]) -> None:
        recorded: list[PairOutcome] = []  # every attempt measure_device stored, even if it then crashes

        def note(outcome: PairOutcome) -> None:
            recorded.append(outcome)
            if on_pair is not None:
                on_pair(outcome)

        def record_rest(status: str, err: str, identity: dict) -> None:
            settled = {o.variant for o in recorded}
            for variant in variants:
                if variant not in settled:
                    store.record_attempt(run_id, device.name, identity, variant, status, err, None)
                    note(PairOutcome(device.name, variant, status, err))

        try:
            done = {v: progress.get((device.name, v), 0) for v in variants}
            with labgrid.borrowed(device, owner=owner) as board:
                measure_device(
                    store, run_id, board, artifacts, variants, protocol, known_hosts, deadline, bundle,
                    state_dir, note, done, stop, limits,
                )
        except labgrid.PlaceBusy as exc:
            record_rest(BUSY, f"{device.name}: {exc}", _identity(device, None))
        except labgrid.LabgridError as exc:
            if recorded and len(recorded) == len(variants):   # measured; only the release failed
                log.warning("device %s: %s", device.name, exc)
            elif not stop.is_set():
                record_rest(UNREACHABLE, f"{device.name}: {exc}", _identity(device, None))
        except Exception as exc:  # noqa: BLE001 - a bug for one device must not stop the others
            # The pairs not yet recorded get the exception's text (visible in the store and the report);
            # the full traceback goes to the log.
            log.error("device %s: internal error\n%s", device.name, traceback.format_exc())
            if not stop.is_set():
                record_rest(FAILED, f"{device.name}: internal error: {type(exc).__name__}: {exc}",
                            _identity(device, None))
        with lock:
            outcomes.extend(recorded)

    if not by_device:
        return outcomes
    pool = ThreadPoolExecutor(max_workers=len(by_device), thread_name_prefix="edgebench-device")
    futures = []
    try:
        for dev, vs in by_device.values():
            futures.append(pool.submit(one, dev, vs))
        for fut in futures:
            fut.result()
    except BaseException:
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
        hung = stop.wait_idle(STOP_GRACE_S)
        farm = [d for d, _ in by_device.values() if d.is_labgrid]
        if farm:   # a thread still hung in a release: free the run's places from here
            freed = labgrid.release_stale(farm, owner=owner)
            if freed:
                log.warning("released %s after the interrupt", ", ".join(freed))
        if hung:
            log.warning("%d device thread(s) still running after the interrupt", hung)
        raise
    pool.shutdown(wait=True)
    return outcomes


def labgrid_owner(run_id: str) -> str:
    """Who holds a run's labgrid places: named after the run, so that a resumed run (from any machine)
    can release what its killed controller left held."""
    return f"edgebench-{run_id}"


def check_resumable(store: Store, run_id: str) -> None:
    if run_id not in set(store.runs_df()["run_id"]):
        raise UserError(f"--resume {run_id}: no such run in {store.location} (see `edgebench history`)")
