"""The controller's expected errors: caught once in ``harness.cli.main`` and printed as one line."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or an unusable environment: print one line, exit with ``exit_code`` (2)."""

    exit_code = 2


class ConfigError(UserError):
    """A configuration file (edgebench.toml, budgets.toml, a MOS csv) is invalid.

    The message names the file and the key, e.g. ``budgets.toml: [pi4].latency_p90_ms: expected a number``.
    """

    def __init__(self, path: object, key: str | None, message: str):
        self.path = str(path)
        self.key = key
        where = f"{self.path}: {key}" if key else self.path
        super().__init__(f"{where}: {message}")
