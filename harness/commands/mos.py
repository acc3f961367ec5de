"""``edgebench mos import FILE.csv [--source TEXT]``: import listening-test scores (mean opinion score).

The CSV has a header row with the columns ``variant``, ``mos`` and optionally ``n_listeners``::

    variant,mos,n_listeners
    original,4.1,20
    pruned+quantized,3.9,20

MOS must be a number between 1 and 5, n_listeners a whole number >= 1. Any bad row raises ConfigError
naming the file, the line and the column, and nothing is written; otherwise all rows are imported in one
transaction. The gate uses each variant's latest import (budget ``mos``). ``edgebench mos list`` shows them.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

from harness.commands import common
from harness.errors import ConfigError

NAME = "mos"
HELP = "Import listening-test MOS scores (CSV: variant,mos[,n_listeners]) or list them."
REQUIRED_COLUMNS = ("variant", "mos")
OPTIONAL_COLUMNS = ("n_listeners",)
MOS_RANGE = (1.0, 5.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="mos_command", metavar="ACTION", required=True)
    imp = sub.add_parser("import", help="import scores from a CSV file")
    imp.add_argument("file", metavar="FILE.csv", type=Path)
    imp.add_argument("--source", help="where the scores come from (default: the file name)")
    lst = sub.add_parser("list", help="list imported scores")
    common.add_json(lst, "print JSON")
    for p in (imp, lst):
        common.add_store_and_config(p)


def parse_mos_csv(path: Path, source: str | None = None) -> list[dict]:
    """Validated rows ``{"variant", "mos", "n_listeners", "source"}``; ConfigError on the first bad one."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(path, None, f"not UTF-8 text ({exc.reason})") from exc
    reader = csv.reader(text.splitlines())
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise ConfigError(path, "line 1", "empty file; expected a header: variant,mos[,n_listeners]") \
            from None
    for col in header:
        if col not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS:
            raise ConfigError(path, f"line 1, column {col or '(empty)'}",
                              "unknown column; expected variant, mos and optionally n_listeners")
    for col in REQUIRED_COLUMNS:
        if col not in header:
            raise ConfigError(path, "line 1", f"missing column {col!r} (header: variant,mos[,n_listeners])")
    if len(set(header)) != len(header):
        raise ConfigError(path, "line 1", "a column is named twice")
    rows = []
    for line_no, fields in enumerate(reader, start=2):
        if not fields or all(not f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            raise ConfigError(path, f"line {line_no}",
                              f"expected {len(header)} fields ({', '.join(header)}), got {len(fields)}")
        row = dict(zip(header, (f.strip() for f in fields)))
        if not row["variant"]:
            raise ConfigError(path, f"line {line_no}, column variant", "empty variant name")
        try:
            mos = float(row["mos"])
        except ValueError:
            raise ConfigError(path, f"line {line_no}, column mos", f"not a number: {row['mos']!r}") from None
        if not math.isfinite(mos) or not MOS_RANGE[0] <= mos <= MOS_RANGE[1]:
            raise ConfigError(path, f"line {line_no}, column mos",
                              f"{row['mos']} is outside {MOS_RANGE[0]:g}-{MOS_RANGE[1]:g}")
        n = None
        if row.get("n_listeners"):
            try:
                n = int(row["n_listeners"])
            except ValueError:
                n = 0
            if n < 1:
                raise ConfigError(path, f"line {line_no}, column n_listeners",
                                  f"expected a whole number >= 1, got {row['n_listeners']!r}")
        rows.append({"variant": row["variant"], "mos": mos, "n_listeners": n,
                     "source": source or path.name})
    if not rows:
        raise ConfigError(path, None, "no scores (only a header)")
    return rows


def import_mos(*, file: Path, source: str | None = None, store: Path | None = None,
               config: Path | None = None) -> int:
    """Validate every row first, then import them all in one transaction; returns the number imported."""
    from harness.config import open_store, resolve_store_path
    from harness.errors import ConfigError
    from variants.recipes import BUILTIN_VARIANTS

    rows = parse_mos_csv(file, source)
    with open_store(resolve_store_path(store, config), create=True) as st:
        # A misspelt variant would be imported and never used: the real one's MOS budget would be
        # silently skipped. Known: the built-in variants and every variant a stored run measured.
        known = set(BUILTIN_VARIANTS)
        for variants in st.runs_df().get("variants", ()):
            known.update(variants)
        for row in rows:
            if row["variant"] not in known:
                raise ConfigError(file, "column variant", f"unknown variant {row['variant']!r}; known: "
                                                          f"{', '.join(sorted(known))}")
        return st.import_mos(rows)


def list_mos(*, store: Path | None = None, config: Path | None = None) -> list[dict]:
    from harness.config import open_existing_store
    from harness.results import json_records

    with open_existing_store(store, config) as st:
        return json_records(st.mos_df())


def from_args(args: argparse.Namespace) -> int:
    if args.mos_command == "import":
        n = import_mos(file=args.file, source=args.source, store=args.store, config=args.config)
        print(f"imported {n} MOS score(s) from {args.file}")
        return 0
    rows = list_mos(store=args.store, config=args.config)
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title="MOS (the gate uses each variant's latest import)")
    for col in ("variant", "mos", "listeners", "source", "imported"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["variant"], f"{r['mos']:.2f}", "—" if r["n"] is None else str(r["n"]), r["source"] or "",
                  r["imported_at"][:19])
    Console(highlight=False).print(t)
    return 0
