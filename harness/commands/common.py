"""The arguments several commands share, defined once: where the store, the configuration, the inventory
and the budgets are, which run, and JSON output. Each ``add_*`` adds one option to a parser."""

from __future__ import annotations

import argparse
from pathlib import Path

STORE_HELP = ("results store: a SQLite file, or postgresql://user@host/db for a store several controllers "
              "share (default: the configuration's store, else .edgebench/results.sqlite)")


def add_store(parser: argparse.ArgumentParser) -> None:
    # a string, not a Path: Path() would fold the "//" of a postgresql:// URL
    parser.add_argument("--store", metavar="STORE", help=STORE_HELP)


def add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", type=Path,
                        help="edgebench.toml (default: ./edgebench.toml if present)")


def add_store_and_config(parser: argparse.ArgumentParser) -> None:
    add_store(parser)
    add_config(parser)


def add_inventory(parser: argparse.ArgumentParser,
                  help: str = "devices.toml (default: ./devices.toml if present)") -> None:
    parser.add_argument("--inventory", metavar="FILE", type=Path, help=help)


def add_budgets(parser: argparse.ArgumentParser,
                help: str = "budgets.toml (default: the source article's targets)") -> None:
    parser.add_argument("--budgets", metavar="FILE", type=Path, help=help)


def add_json(parser: argparse.ArgumentParser, help: str = "print JSON instead of tables") -> None:
    parser.add_argument("--json", action="store_true", help=help)


def add_run(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--run", metavar="RUN_ID", help=f"the run to {what} (default: the latest run)")


ALLOW_UNMEASURED_HELP = ("pairs that were not measured (unreachable, busy, ineligible, ...) are warnings, "
                         "not exit 2; the measured ones decide (a run with nothing measured is still 2)")


def add_allow_unmeasured(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--allow-unmeasured", action="store_true", help=help)
