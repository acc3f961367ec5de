"""Borrow boards from a shared labgrid farm: list places, hold one while it is measured, give it back.

A labgrid coordinator (``labgrid-coordinator``, gRPC, port 20408 by default) keeps *places*; exporters
publish *resources*; a place *matches* resources (``labgrid-client -p pi-1 add-match
'exporter/pi-1/NetworkService'``) and has *tags* (``set-tags arch=aarch64``). edgebench needs exactly
one resource per place: a ``NetworkService`` (address, username, port), the SSH endpoint of the board.

```python
lab = Coordinator("lab.example:20408", owner=f"edgebench-{run_id}")
for place in lab.select(tags={"arch": "aarch64"}):
    with lab.hold(place.name, wait_s=600) as ssh:    # NetworkService(address, username, port)
        ...                                          # measure over SSH
```

Semantics
---------
* **Identity.** The coordinator records who holds a place as the name the client announced when it
  connected, in labgrid's ``host/user`` form. edgebench announces ``<this host>/<owner>``, where the
  owner names the run (``edgebench-<run_id>``): two controllers on one host under one Unix user are
  distinct holders, and ``labgrid-client who`` shows the run as the user. The owner must not contain
  ``/`` or whitespace.
* **Acquire and wait.** ``hold`` asks the coordinator for the place. While someone else holds it, it
  asks again every ``poll_s`` until ``wait_s`` has passed, then raises :class:`PlaceBusy` naming the
  holder and the time waited. A place this owner already holds counts as busy too (another thread of
  the same run holds it), so one owner never holds a place twice.
* **Release.** Leaving the ``with`` block releases the place on every exit: normal, an exception,
  ``KeyboardInterrupt``, ``SystemExit`` (a CLI's SIGTERM handler raises it). The release is
  conditional (``fromuser`` = our identity): if an operator kicked us and someone else acquired the
  place since, their hold is left alone. An interrupt that lands while the acquire request is in flight
  is handled too: the request is allowed to finish and the place released if it was granted.
* **A killed controller.** A SIGKILLed controller cannot release; the coordinator keeps the place
  acquired (it does not tie a place to the client's connection). Either the same run, resumed
  (``--resume``), calls :meth:`Coordinator.release_stale`, which releases every place held under its
  owner, from any host (the owner names the run, not the machine, so a resume in a new container still
  frees its boards); or an operator runs ``labgrid-client -x ADDR -p PLACE release --kick`` (or
  ``release-from HOST/OWNER``). A restarted coordinator forgets every acquisition by itself.

Why the gRPC protocol and not ``labgrid-client``
------------------------------------------------
We speak labgrid's coordinator protocol directly with the stubs labgrid ships
(``labgrid.remote.generated``): one short client stream per operation (announce the identity,
subscribe to places and resources, sync), then the unary ``AcquirePlace`` / ``ReleasePlace`` calls on
the same channel, which the coordinator attributes to that identity. Compared with running
``labgrid-client`` per call (about 0.5 s of start-up each, identity only through the process-wide
``LG_HOSTNAME`` / ``LG_USERNAME`` environment variables, errors only as text): the identity is a
per-object value, so two owners work side by side in one process; errors arrive as gRPC status codes
(busy vs. unknown place vs. unreachable); every call has a deadline. labgrid's own ``ClientSession``
was not used because it takes the identity from those environment variables too, and on a lost
coordinator logs through the root logger (``logging.error``), which installs a root handler in the
caller's process.

The calls run on a private asyncio event loop in one daemon thread, shared by all ``Coordinator``
objects; the caller's thread only waits for the result, so a signal handler in the main thread
(``KeyboardInterrupt``, ``SystemExit``) interrupts the wait cleanly and the release in ``hold``'s
``finally`` still has a working loop to run on. Every operation is bounded by ``timeout_s``; an
unreachable coordinator raises :class:`LabgridError` with one line naming its address.

labgrid (Python >= 3.10) is imported on first use, so the rest of edgebench imports without it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import re
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import urlsplit

from devices.errors import DevicesError

__all__ = ["NetworkService", "PlaceInfo", "LabgridError", "PlaceBusy", "Coordinator", "DEFAULT_PORT"]

#: The coordinator's default port (labgrid's own default).
DEFAULT_PORT = 20408
#: The resource class that gives a place's SSH endpoint.
NETWORK_SERVICE = "NetworkService"

_log = logging.getLogger(__name__)
_OWNER_RE = re.compile(r"[^\s/]+")


@dataclass(frozen=True)
class NetworkService:
    """The SSH endpoint of a board, from the place's ``NetworkService`` resource."""

    address: str
    username: str
    port: int = 22


@dataclass(frozen=True)
class PlaceInfo:
    """One place as the coordinator describes it now. ``acquired_by`` is the holder's ``host/user``
    (None when free); ``network`` is the place's single available NetworkService (None when it has none,
    or several)."""

    name: str
    tags: Dict[str, str]
    acquired_by: Optional[str]
    network: Optional[NetworkService]


class LabgridError(DevicesError):
    """The labgrid coordinator is unreachable, refused a request, or a place is unusable; the message
    names the coordinator's address."""


class PlaceBusy(LabgridError):
    """Someone else held the place for the whole wait."""

    def __init__(self, place: str, holder: str, waited_s: float, address: str):
        super().__init__(f"place '{place}' is held by {holder}; waited {waited_s:.0f} s "
                         f"(labgrid coordinator {address})")
        self.place = place
        self.holder = holder
        self.waited_s = waited_s
        self.address = address

    def __reduce__(self):   # picklable (a worker process may hand it back)
        return (type(self), (self.place, self.holder, self.waited_s, self.address))


# --------------------------------------------------------------------------------------------------
# labgrid and gRPC, imported on first use

_LIB: Optional[Dict[str, Any]] = None


def _lib() -> Dict[str, Any]:
    global _LIB
    if _LIB is None:
        try:
            import grpc
            from labgrid.remote.generated import labgrid_coordinator_pb2, labgrid_coordinator_pb2_grpc
            from labgrid.util import labgrid_version
        except ImportError as exc:
            raise LabgridError(f"labgrid is not installed ({exc}); pip install 'edgebench[farm]' "
                               "(needs Python 3.10 or newer)") from None
        _LIB = {"grpc": grpc, "pb2": labgrid_coordinator_pb2,
                "stub": labgrid_coordinator_pb2_grpc.CoordinatorStub, "version": labgrid_version()}
    return _LIB


class _LoopThread:
    """One asyncio event loop in a daemon thread; coroutines are submitted from any thread."""

    _lock = threading.Lock()
    _loop: Optional[asyncio.AbstractEventLoop] = None
    _pid: Optional[int] = None

    @classmethod
    def loop(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._loop is None or cls._pid != os.getpid():   # a forked child gets a loop of its own
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="edgebench-labgrid", daemon=True)
                thread.start()
                cls._loop, cls._pid = loop, os.getpid()
            return cls._loop

    @classmethod
    def submit(cls, coro) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coro, cls.loop())


# --------------------------------------------------------------------------------------------------
# One client session: connect, announce the identity, subscribe, sync; then requests on that channel


class _Refused(Exception):
    """The coordinator refused an acquire (held, reserved, or a resource in use)."""


class _Session:
    def __init__(self, address: str, identity: str, timeout_s: float):
        self.address = address
        self.identity = identity
        self.timeout_s = timeout_s
        self.places: Dict[str, Any] = {}                     # name -> labgrid Place message
        self.resources: Dict[Tuple[str, str, str], Tuple[str, Dict[str, Any], bool]] = {}
        self._sync_id = 0

    async def __aenter__(self) -> _Session:
        lib = _lib()
        pb2 = lib["pb2"]
        # Its own TCP connection: the coordinator knows a client by its peer address (one stream per
        # peer), and gRPC would otherwise share one connection among the channels of a process (the
        # device threads of a run each open sessions at the same time).
        self.channel = lib["grpc"].aio.insecure_channel(
            self.address, options=[("grpc.use_local_subchannel_pool", 1)])
        self.stub = lib["stub"](self.channel)
        self.stream = None
        try:
            self.stream = self.stub.ClientStream()
            await self.stream.write(pb2.ClientInMessage(
                startup=pb2.StartupDone(version=lib["version"], name=self.identity)))
            await self.stream.write(pb2.ClientInMessage(subscribe=pb2.Subscribe(all_places=True)))
            await self.stream.write(pb2.ClientInMessage(subscribe=pb2.Subscribe(all_resources=True)))
            await self.sync()
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        await self._close()

    async def _close(self) -> None:
        if self.stream is not None:
            self.stream.cancel()
        await self.channel.close()

    async def sync(self) -> None:
        """Wait until the coordinator has handled everything sent so far; apply its updates meanwhile."""
        pb2 = _lib()["pb2"]
        self._sync_id += 1
        await self.stream.write(pb2.ClientInMessage(sync=pb2.Sync(id=self._sync_id)))
        while True:
            message = await self.stream.read()
            if message is _lib()["grpc"].aio.EOF:
                raise LabgridError(f"labgrid coordinator {self.address} closed the connection")
            for update in message.updates:
                self._apply(update)
            if message.HasField("sync") and message.sync.id == self._sync_id:
                return

    def _apply(self, update) -> None:
        kind = update.WhichOneof("kind")
        if kind == "place":
            self.places[update.place.name] = update.place
        elif kind == "del_place":
            self.places.pop(update.del_place, None)
        elif kind == "resource":
            res = update.resource
            key = (res.path.exporter_name, res.path.group_name, res.path.resource_name)
            params = {name: getattr(value, value.WhichOneof("kind")) if value.WhichOneof("kind") else None
                      for name, value in res.params.items()}
            self.resources[key] = (res.cls, params, res.avail)
        elif kind == "del_resource":
            path = update.del_resource
            self.resources.pop((path.exporter_name, path.group_name, path.resource_name), None)

    async def acquire(self, place: str) -> None:
        grpc = _lib()["grpc"]
        try:
            await self.stub.AcquirePlace(_lib()["pb2"].AcquirePlaceRequest(placename=place),
                                         timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.PERMISSION_DENIED):
                raise _Refused(exc.details()) from None
            raise
        await self.sync()

    async def release(self, place: str, fromuser: str) -> None:
        """Release ``place`` if ``fromuser`` holds it (the coordinator ignores the request otherwise)."""
        await self.stub.ReleasePlace(_lib()["pb2"].ReleasePlaceRequest(placename=place, fromuser=fromuser),
                                     timeout=self.timeout_s)
        await self.sync()

    # -- reading the state -------------------------------------------------------------------------

    @staticmethod
    def holder(place) -> Optional[str]:
        return place.acquired if place.HasField("acquired") and place.acquired else None

    def services(self, place) -> List[Tuple[str, Dict[str, Any]]]:
        """(path, params) of each NetworkService of the place: the acquired ones when acquired, else the
        available resources its matches select."""
        found = []
        if self.holder(place):
            for path in place.acquired_resources:
                exporter, group, cls, name = (path.split("/") + ["", "", "", ""])[:4]
                entry = self.resources.get((exporter, group, name))
                if cls == NETWORK_SERVICE and entry is not None:
                    found.append((path, entry[1]))
            return found
        for (exporter, group, name), (cls, params, avail) in sorted(self.resources.items()):
            if cls == NETWORK_SERVICE and avail and any(_matches(m, exporter, group, cls, name)
                                                        for m in place.matches):
                found.append((f"{exporter}/{group}/{cls}/{name}", params))
        return found

    def info(self, place) -> PlaceInfo:
        services = self.services(place)
        network = None
        if len(services) == 1:
            try:
                network = _network_service(services[0][1], services[0][0], self.address)
            except LabgridError:
                network = None
        return PlaceInfo(place.name, dict(place.tags), self.holder(place), network)


def _matches(match, exporter: str, group: str, cls: str, name: str) -> bool:
    if not (fnmatchcase(exporter, match.exporter) and fnmatchcase(group, match.group)
            and fnmatchcase(cls, match.cls)):
        return False
    return not (match.HasField("name") and match.name and not fnmatchcase(name, match.name))


def _network_service(params: Mapping[str, Any], path: str, address: str) -> NetworkService:
    host, user, port = params.get("address"), params.get("username"), params.get("port")
    if not isinstance(host, str) or not host or not isinstance(user, str) or not user:
        raise LabgridError(f"resource {path} needs an address and a username "
                           f"(labgrid coordinator {address})")
    if port in (None, 0):
        port = 22
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise LabgridError(f"resource {path} has an invalid port {port!r} (labgrid coordinator {address})")
    return NetworkService(host, user, port)


def _normalize_address(address: str) -> str:
    address = address.strip()
    if not address:
        raise LabgridError("no labgrid coordinator address given")
    try:
        port = urlsplit(f"//{address}").port
    except ValueError:
        raise LabgridError(f"invalid labgrid coordinator address {address!r} (use HOST[:PORT])") from None
    return address if port is not None else f"{address}:{DEFAULT_PORT}"


class _Attempt:
    """What one acquire attempt got to: whether the request was sent (an interrupt after it may have
    left the place acquired)."""

    sent = False


# --------------------------------------------------------------------------------------------------


class Coordinator:
    """A client of one labgrid coordinator, acting as ``<this host>/<owner>``.

    Creating one does not connect; every method opens a short session, bounded by ``timeout_s``.
    Thread-safe: each call is independent."""

    def __init__(self, address: str, *, owner: str, timeout_s: float = 10.0):
        if not isinstance(owner, str) or not _OWNER_RE.fullmatch(owner):
            raise ValueError(f"labgrid owner must be a non-empty name without '/' or whitespace, "
                             f"not {owner!r}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, not {timeout_s!r}")
        self.address = _normalize_address(address)
        self.owner = owner
        self.timeout_s = float(timeout_s)
        #: How the coordinator records this controller's holds (``labgrid-client who`` shows it).
        self.identity = f"{socket.gethostname()}/{owner}"
        _lib()   # fail here, not in the middle of a run, when labgrid is missing

    def __repr__(self) -> str:
        return f"Coordinator({self.address!r}, identity={self.identity!r})"

    # -- running the protocol ----------------------------------------------------------------------

    async def _bounded(self, operation: Callable[[_Session], Any]):
        grpc = _lib()["grpc"]

        async def run():
            async with _Session(self.address, self.identity, self.timeout_s) as session:
                return await operation(session)

        try:
            return await asyncio.wait_for(run(), self.timeout_s)
        except asyncio.TimeoutError:
            raise LabgridError(f"labgrid coordinator {self.address} did not answer within "
                               f"{self.timeout_s:g} s") from None
        except grpc.aio.AioRpcError as exc:
            details = " ".join((exc.details() or str(exc.code())).split())
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                raise LabgridError(f"labgrid coordinator {self.address} is unreachable: {details}") from None
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise LabgridError(f"labgrid coordinator {self.address} did not answer within "
                                   f"{self.timeout_s:g} s") from None
            raise LabgridError(f"labgrid coordinator {self.address}: {exc.code().name}: {details}") from None

    def _run(self, operation: Callable[[_Session], Any]):
        future = _LoopThread.submit(self._bounded(operation))
        try:
            return future.result(self.timeout_s + 5.0)   # the coroutine bounds itself; this is a backstop
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise LabgridError(f"labgrid coordinator {self.address} did not answer within "
                               f"{self.timeout_s:g} s") from None
        except BaseException:
            future.cancel()
            raise

    def _unknown(self, names: Sequence[str], known: Sequence[str]) -> LabgridError:
        what = "place" if len(names) == 1 else "places"
        return LabgridError(f"unknown labgrid {what} {', '.join(repr(n) for n in names)} "
                            f"(labgrid coordinator {self.address} has: {', '.join(sorted(known)) or 'none'})")

    # -- public API --------------------------------------------------------------------------------

    def places(self) -> List[PlaceInfo]:
        """Every place, sorted by name."""

        async def operation(session: _Session):
            return [session.info(session.places[name]) for name in sorted(session.places)]

        return self._run(operation)

    def select(self, names: Sequence[str] = (), tags: Optional[Mapping[str, str]] = None) -> List[PlaceInfo]:
        """The places named (exact names, in the order given; an unknown name raises LabgridError), or
        with no names every place; either way only those whose tags include every ``tags`` key=value."""
        if isinstance(names, str):
            names = [names]
        wanted = list(dict.fromkeys(names))
        places = {p.name: p for p in self.places()}
        missing = [n for n in wanted if n not in places]
        if missing:
            raise self._unknown(missing, list(places))
        chosen = [places[n] for n in wanted] if wanted else [places[n] for n in sorted(places)]
        tags = dict(tags or {})
        return [p for p in chosen if all(p.tags.get(k) == str(v) for k, v in tags.items())]

    @contextmanager
    def hold(self, place: str, *, wait_s: float, poll_s: float = 0.5,
             clock: Callable[[], float] = time.monotonic,
             sleep: Callable[[float], None] = time.sleep) -> Iterator[NetworkService]:
        """Acquire ``place`` (waiting up to ``wait_s`` while someone else holds it, else PlaceBusy),
        yield its NetworkService, and release it on every exit."""
        service = self._acquire(place, wait_s=wait_s, poll_s=poll_s, clock=clock, sleep=sleep)
        try:
            yield service
        except BaseException:
            try:
                self._release(place)
            except BaseException as exc:   # keep the body's exception; the place stays held
                _log.warning("%s", exc)
            raise
        else:
            self._release(place)

    def release_stale(self) -> List[str]:
        """Release every place held under this owner (from any host): what a SIGKILLed controller of the
        same run left acquired. Returns their names, sorted."""

        async def operation(session: _Session):
            freed = []
            for name in sorted(session.places):
                holder = session.holder(session.places[name])
                if holder and holder.rpartition("/")[2] == self.owner:
                    await session.release(name, fromuser=holder)
                    if session.holder(session.places[name]) != holder:
                        freed.append(name)
            return freed

        freed = self._run(operation)
        if freed:
            _log.info("released %s left held by %s at labgrid coordinator %s",
                      ", ".join(freed), self.owner, self.address)
        return freed

    # -- hold's parts ------------------------------------------------------------------------------

    def _acquire(self, place: str, *, wait_s: float, poll_s: float, clock, sleep) -> NetworkService:
        start = clock()
        while True:
            holder = self._try_acquire(place)
            if isinstance(holder, NetworkService):
                return holder
            waited = clock() - start
            if waited >= wait_s:
                raise PlaceBusy(place, holder, waited, self.address)
            sleep(max(0.0, min(poll_s, wait_s - waited)))

    def _try_acquire(self, place: str):
        """The place's NetworkService once acquired, or (busy) the holder's name."""
        attempt = _Attempt()

        async def operation(session: _Session):
            if place not in session.places:
                raise self._unknown([place], list(session.places))
            holder = session.holder(session.places[place])
            if holder:
                return holder
            attempt.sent = True
            try:
                await session.acquire(place)
            except _Refused as exc:
                attempt.sent = False
                await session.sync()
                current = session.places.get(place)
                return (session.holder(current) if current is not None else None) or str(exc)
            services = session.services(session.places[place])
            try:
                if len(services) != 1:
                    listed = ", ".join(path for path, _ in services) or "none"
                    raise LabgridError(
                        f"place '{place}' needs exactly one {NETWORK_SERVICE} resource, it has {listed} "
                        f"(labgrid-client -x {self.address} -p {place} add-match EXPORTER/GROUP/"
                        f"{NETWORK_SERVICE})")
                return _network_service(services[0][1], services[0][0], self.address)
            except LabgridError:
                await session.release(place, fromuser=self.identity)
                attempt.sent = False
                raise

        future = _LoopThread.submit(self._bounded(operation))
        try:
            return future.result(self.timeout_s + 5.0)
        except concurrent.futures.TimeoutError:
            future.cancel()
            self._release_after_failed_acquire(place, attempt)
            raise LabgridError(f"labgrid coordinator {self.address} did not answer within "
                               f"{self.timeout_s:g} s") from None
        except LabgridError:
            self._release_after_failed_acquire(place, attempt)
            raise
        except BaseException:
            # An interrupt (KeyboardInterrupt, SystemExit) while the request is in flight: let it finish
            # (it is bounded), then give the place back if it was granted.
            try:
                future.result(self.timeout_s + 5.0)
            except BaseException:
                pass
            self._release_after_failed_acquire(place, attempt)
            raise

    def _release_after_failed_acquire(self, place: str, attempt: _Attempt) -> None:
        if not attempt.sent:
            return
        try:
            self._release(place)
        except BaseException as exc:
            _log.warning("could not release place '%s' after a failed acquire: %s", place, exc)

    def _release(self, place: str) -> None:
        async def operation(session: _Session):
            if place in session.places:
                await session.release(place, fromuser=self.identity)
                return session.holder(session.places[place])
            return None

        try:
            still = self._run(operation)
        except LabgridError as exc:
            raise LabgridError(f"could not release place '{place}' ({exc}); an operator can run "
                               f"labgrid-client -x {self.address} -p {place} release-from {self.identity}"
                               ) from None
        if still == self.identity:
            raise LabgridError(f"place '{place}' is still held by {still} after release "
                               f"(labgrid coordinator {self.address})")


# --------------------------------------------------------------------------------------------------
# devices.toml's labgrid devices


def expand_places(inventory, *, owner: str = "edgebench"):
    """The inventory with its labgrid devices checked against their coordinators: a ``place_tags`` group
    becomes one device per matching place (named after the place, tagged with the group's name, the group's
    settings otherwise), and a ``place`` that the coordinator does not have is an InventoryError naming
    the file and key. A coordinator that cannot be reached leaves its devices as they are: they are
    recorded unreachable when measured, like any board that is down. Talks to no coordinator when the
    inventory has no labgrid device."""
    from dataclasses import replace

    from devices.errors import InventoryError

    farm = [d for d in inventory.devices.values() if d.is_labgrid]
    if not farm:
        return inventory
    where = str(inventory.source) if inventory.source else "devices inventory"
    listed: Dict[str, Optional[List[PlaceInfo]]] = {}
    for device in farm:
        if device.coordinator not in listed:
            lab = Coordinator(device.coordinator, owner=owner, timeout_s=device.coordinator_timeout_s)
            try:
                listed[device.coordinator] = lab.places()
            except LabgridError as exc:
                _log.warning("%s", exc)
                listed[device.coordinator] = None
    devices: Dict[str, Any] = {}
    for name, device in inventory.devices.items():
        places = listed.get(device.coordinator) if device.is_labgrid else None
        if places is None:
            devices[name] = device
            continue
        if device.place is not None:
            if device.place not in {p.name for p in places}:
                raise InventoryError(
                    f"{where}: devices.{name}.place: labgrid coordinator {device.coordinator} has no place "
                    f"{device.place!r} (it has: {', '.join(p.name for p in places) or 'none'})")
            devices[name] = device
            continue
        wanted = dict(device.place_tags)
        hits = [p for p in places if all(p.tags.get(k) == v for k, v in wanted.items())]
        if not hits:
            shown = ", ".join(f"{k}={v}" for k, v in device.place_tags)
            raise InventoryError(f"{where}: devices.{name}.place_tags: no place at labgrid coordinator "
                                 f"{device.coordinator} has the tags {shown}")
        for place in hits:
            other = inventory.devices.get(place.name) or devices.get(place.name)
            if other is not None and other.place != place.name:
                raise InventoryError(f"{where}: devices.{name}.place_tags: place {place.name!r} has the name "
                                     f"of another device; rename that device")
            if other is None:
                devices[place.name] = replace(device, name=place.name, place=place.name, place_tags=(),
                                              tags=tuple(dict.fromkeys((*device.tags, name))))
    return replace(inventory, devices=devices)


@contextmanager
def borrowed(device, *, owner: str, wait_s: Optional[float] = None) -> Iterator[Any]:
    """Hold a labgrid device's place while the body runs, and yield the device with the host, port and
    user of the place's NetworkService; any other device is yielded as it is. PlaceBusy after the
    device's ``place_wait_s`` (or ``wait_s``); LabgridError when the coordinator cannot be reached or
    the place is unusable."""
    from dataclasses import replace

    if not device.is_labgrid:
        yield device
        return
    lab = Coordinator(device.coordinator, owner=owner, timeout_s=device.coordinator_timeout_s)
    if device.place is None:   # a group whose places could not be listed when the run started
        lab.places()           # raises the coordinator's error, if it still has one
        raise LabgridError(f"the places tagged {', '.join(f'{k}={v}' for k, v in device.place_tags)} were "
                           f"not listed when the run started (labgrid coordinator {lab.address})")
    with lab.hold(device.place, wait_s=device.place_wait_s if wait_s is None else wait_s) as service:
        yield replace(device, host=service.address, port=service.port, user=service.username)


def network_service(device) -> Any:
    """A labgrid device with the address, port and user its place's NetworkService names now, read
    without acquiring the place (``edgebench devices trust`` fetches the host key from there)."""
    from dataclasses import replace

    lab = Coordinator(device.coordinator, owner="edgebench", timeout_s=device.coordinator_timeout_s)
    info = lab.select([device.place])[0]
    if info.network is None:
        raise LabgridError(f"place '{device.place}' needs exactly one {NETWORK_SERVICE} resource "
                           f"(labgrid coordinator {lab.address})")
    return replace(device, host=info.network.address, port=info.network.port, user=info.network.username)


def release_stale(devices: Sequence[Any], *, owner: str) -> List[str]:
    """Release what ``owner`` still holds at the coordinators of ``devices`` (a resumed run frees the
    places its killed controller left held). A coordinator that cannot be reached is logged and skipped.
    Returns "coordinator/place" of each place released."""
    freed: List[str] = []
    for address in dict.fromkeys(d.coordinator for d in devices if getattr(d, "is_labgrid", False)):
        timeout = max(d.coordinator_timeout_s for d in devices if d.coordinator == address)
        try:
            lab = Coordinator(address, owner=owner, timeout_s=timeout)
            freed += [f"{lab.address}/{name}" for name in lab.release_stale()]
        except LabgridError as exc:
            _log.warning("%s", exc)
    return freed
