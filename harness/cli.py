"""The ``edgebench`` command line: one module per subcommand in ``harness.commands``.

Each command module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``from_args(args) -> int``;
the work itself is a plain keyword-argument function in the same module, callable from Python.
Expected errors (bad input, unreachable device) are caught here only, printed as one line, exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import traceback
from typing import Sequence

from devices.errors import DevicesError
from harness import __version__
from harness.errors import UserError
from variants.errors import VariantsError

# Order is the order of `edgebench --help`.
COMMANDS = ("run", "build", "devices", "gate", "compare", "history", "report", "mos", "export")
EXPECTED_ERRORS = (UserError, VariantsError, DevicesError)


def _load(name: str):
    return importlib.import_module(f"harness.commands.{name}")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgebench",
        description="Build compressed TTS variants, measure them on edge devices, gate and report.",
    )
    parser.add_argument("--version", action="version", version=f"edgebench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = _load(name)
        except ModuleNotFoundError as exc:
            if exc.name != f"harness.commands.{name}":
                raise
            continue  # command not built yet
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(func=module.from_args)
    return parser


class Terminated(SystemExit):
    """SIGTERM, raised in the main thread so that what a command holds is given back on the way out (a
    labgrid place, a device's lock, the store's transaction), as for Ctrl-C. Exit status 143."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except EXPECTED_ERRORS as exc:
        print(f"edgebench: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        print("edgebench: interrupted", file=sys.stderr)
        return 130
    except Terminated as exc:
        print("edgebench: terminated (SIGTERM)", file=sys.stderr)
        return int(exc.code)
    except Exception:  # noqa: BLE001 - a bug: show it whole, never as exit 1 ("budget failed")
        traceback.print_exc()
        print("edgebench: internal error (a bug: please report the traceback above); nothing could be "
              "judged, exit 2", file=sys.stderr)
        return 2


def entry() -> None:
    """The console script: ``main`` plus process-wide settings that tests calling ``main`` must not get."""
    if not sys.stdout.isatty():
        # rich sizes tables to 80 columns when output goes to a pipe, a log or CI; widen so cells are
        # not cut to "lo…" (an explicit COLUMNS still wins).
        os.environ.setdefault("COLUMNS", "200")
    signal.signal(signal.SIGTERM, _on_sigterm)
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    entry()
