"""Expected errors of the devices layer; the CLI prints them as one line (exit 2)."""

from __future__ import annotations

from devices.ondevice.errors import DevicesError

__all__ = ["DevicesError", "InventoryError", "TransportError", "HostKeyError", "AgentError", "RecordError"]


class InventoryError(DevicesError):
    """devices.toml is invalid; the message names the file and the key."""


class TransportError(DevicesError):
    """A device could not be reached, a command timed out or a transfer failed."""


class HostKeyError(TransportError):
    """The device's SSH host key is unknown or changed (``edgebench devices trust NAME`` records it)."""


class AgentError(DevicesError):
    """The agent on the device failed (crash, timeout, no record printed)."""


class RecordError(DevicesError):
    """A measurement record from a device failed validation (wrong types, missing fields, absurd values)."""
