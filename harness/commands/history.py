"""``edgebench history [--device D] [--variant V] [--limit N] [--json]``: recent runs and, per device,
variant and length class, their latency percentiles (nearest rank, with n), RTF and peak RSS."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harness.commands import common

NAME = "history"
HELP = "List recent runs with their verdicts and per device/variant latencies."
HISTORY_COLUMNS = ("run_id", "started_at", "outcome", "device", "device_identity", "variant", "length_class",
                   "n", "p50_ms", "p90_ms", "p99_ms", "rtf", "peak_rss_bytes")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", metavar="D", help="only this device")
    parser.add_argument("--variant", metavar="V", help="only this variant")
    parser.add_argument("--limit", metavar="N", type=int, default=20, help="latest N runs (default 20)")
    common.add_json(parser)
    common.add_store_and_config(parser)


def history(
    *,
    device: str | None = None,
    variant: str | None = None,
    limit: int = 20,
    store: Path | None = None,
    config: Path | None = None,
) -> dict:
    """{"runs": [...], "rows": [...]} as plain JSON-able dicts, newest run first."""
    from harness.config import open_existing_store
    from harness.errors import UserError
    from harness.results import history_df, json_records

    if limit < 1:
        raise UserError("--limit must be at least 1")
    with open_existing_store(store, config) as st:
        runs = st.runs_df(limit=limit)
        rows = history_df(st, device=device, variant=variant, limit=limit)
    rows = rows[[c for c in HISTORY_COLUMNS if c in rows.columns]]
    return {"runs": json_records(runs), "rows": json_records(rows)}


def from_args(args: argparse.Namespace) -> int:
    data = history(device=args.device, variant=args.variant, limit=args.limit, store=args.store,
                   config=args.config)
    if args.json:
        json.dump(data, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        return 0
    from rich.console import Console
    from rich.table import Table

    out = Console(highlight=False)
    runs = Table(title="Runs")
    runs.add_column("run", no_wrap=True, min_width=20)  # run ids must stay whole: people copy them
    for col in ("started", "status", "verdict", "ok / attempts", "variants", "devices"):
        runs.add_column(col)
    for r in data["runs"]:
        runs.add_row(r["run_id"], r["started_at"][:19], r["status"], r["outcome"] or "—",
                     f"{r['n_ok']}/{r['n_attempts']}", ", ".join(r["variants"]), ", ".join(r["devices"]))
    out.print(runs)
    if data["rows"]:
        t = Table(title="Latency (total synthesis time, nearest-rank percentiles)")
        t.add_column("run", no_wrap=True, min_width=20)
        for col in ("device", "identity", "variant", "class", "n", "p50", "p90", "p99", "RTF", "peak RSS"):
            t.add_column(col, justify="right" if col in ("n", "p50", "p90", "p99", "RTF", "peak RSS")
                         else "left")
        for r in data["rows"]:
            rss = "—" if r["peak_rss_bytes"] is None else f"{r['peak_rss_bytes'] / 2**20:.0f} MiB"
            rtf = "—" if r["rtf"] is None else f"{r['rtf']:.3f}"
            t.add_row(r["run_id"], r["device"], r["device_identity"] or "?", r["variant"], r["length_class"],
                      str(r["n"]), f"{r['p50_ms']:.1f} ms", f"{r['p90_ms']:.1f} ms", f"{r['p99_ms']:.1f} ms",
                      rtf, rss)
        out.print(t)
    return 0
