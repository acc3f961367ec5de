"""Test doubles for the device layer: a scripted Transport that records what it was asked to do.

```python
t = FakeTransport(local_device())
t.on(["python3", "-c"], stdout='{"ok": true}')          # argv prefix -> reply
t.on(lambda argv: "measure" in argv, exit_code=1, stderr="boom")
t.on(["sleep"], raises=TransportError("timed out"))
t.run(["python3", "-c", "..."], timeout=5).stdout        # '{"ok": true}'
t.calls[-1].argv; t.files["/fake/x.zip"]                  # what was run and what was put
```
Rules are tried newest first; a rule with ``times=N`` is used N times, then skipped. Unmatched commands get
``default`` (exit 0, empty output) unless ``strict=True`` (then a TransportError).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence, Union

from devices.errors import TransportError
from devices.inventory import Device, local_device
from devices.transport import CommandResult, Transport

Matcher = Union[Sequence[str], Callable[[list], bool]]


@dataclass(frozen=True)
class FakeCall:
    kind: str                  # "run" | "put"
    argv: list                 # for put: [local, remote]
    timeout: float
    env: dict | None = None
    stdin: bytes | None = None


@dataclass
class _Rule:
    match: Matcher
    reply: object              # CommandResult | BaseException | callable(argv, timeout, env, stdin)
    times: int | None = None

    def matches(self, argv: list) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if callable(self.match):
            return bool(self.match(argv))
        prefix = list(self.match)
        return argv[: len(prefix)] == prefix


@dataclass
class FakeTransport(Transport):
    device: Device = field(default_factory=local_device)
    work_dir: str = "/fake/edgebench"
    strict: bool = False
    default: CommandResult = field(default_factory=lambda: CommandResult(0, "", "", 0.0))
    calls: list = field(default_factory=list)
    files: dict = field(default_factory=dict)     # remote path -> bytes put there
    closed: bool = False
    put_error: BaseException | None = None
    _rules: list = field(default_factory=list)

    def on(self, match: Matcher, stdout: str = "", stderr: str = "", exit_code: int = 0,
           duration_s: float = 0.0, raises: BaseException | None = None,
           handler: Callable | None = None, times: int | None = None) -> FakeTransport:
        """Script the reply to commands whose argv starts with ``match`` (or for which it returns True)."""
        if handler is not None:
            reply: object = handler
        elif raises is not None:
            reply = raises
        else:
            reply = CommandResult(exit_code, stdout, stderr, duration_s)
        self._rules.insert(0, _Rule(match, reply, times))
        return self

    def run(self, argv, timeout, env=None, stdin=None):
        argv = [str(a) for a in argv]
        self.calls.append(FakeCall("run", argv, timeout, dict(env) if env else None, stdin))
        if self.closed:
            raise TransportError(f"device {self.device.name!r}: transport is closed")
        for rule in self._rules:
            if rule.matches(argv):
                if rule.times is not None:
                    rule.times -= 1
                reply = rule.reply
                if isinstance(reply, BaseException):
                    raise reply
                if isinstance(reply, CommandResult):
                    return reply
                return reply(argv, timeout, env, stdin)
        if self.strict:
            raise TransportError(f"FakeTransport: no reply scripted for {argv!r}")
        return self.default

    def put(self, local, remote, timeout):
        self.calls.append(FakeCall("put", [str(local), remote], timeout))
        if self.put_error is not None:
            raise self.put_error
        data = Path(local).read_bytes()
        self.files[remote] = data
        return len(data)

    def close(self):
        self.closed = True

    def runs(self) -> list:
        return [c for c in self.calls if c.kind == "run"]

    def env_of(self, index: int = -1) -> Mapping | None:
        return self.runs()[index].env
