"""``edgebench compare RUN [BASELINE] [--json]``: per device, variant and length class, the medians of two
runs, their ratio with a bootstrap 95 % interval, the one-sided Mann-Whitney p-value and the verdict.

Without BASELINE each device identity is compared with its last passing run (as the gate does). The
exit status is 0 whenever the comparison could be made: judging is ``edgebench gate``'s job.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harness.commands import common

NAME = "compare"
HELP = "Compare a run with a baseline run: medians, ratio with CI, p-value and verdict per class."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="the run to compare")
    parser.add_argument("baseline", metavar="BASELINE", nargs="?",
                        help="the baseline run (default: each device identity's last passing run)")
    common.add_json(parser, "print JSON instead of a table")
    common.add_budgets(parser, "budgets.toml whose [regression] settings apply (default: the run's)")
    common.add_store_and_config(parser)


def compare(
    *,
    run: str,
    baseline: str | None = None,
    budgets: Path | None = None,
    store: Path | None = None,
    config: Path | None = None,
):
    """Returns the ``harness.regress.RegressionResult`` of ``run`` against ``baseline``."""
    from harness import regress
    from harness.budgets import Budgets, load_budgets
    from harness.config import open_existing_store
    from harness.errors import ConfigError

    with open_existing_store(store, config) as st:
        stored = st.run(run)
        if budgets is not None:
            settings = load_budgets(budgets).regression
        else:
            try:
                settings = Budgets.from_dict(stored["budgets"]).regression if stored["budgets"] else None
            except ConfigError:
                settings = None
        return regress.detect(st, run, baseline, settings)


def from_args(args: argparse.Namespace) -> int:
    result = compare(run=args.run, baseline=args.baseline, budgets=args.budgets, store=args.store,
                     config=args.config)
    for w in result.warnings:
        print(f"edgebench: warning: {w}", file=sys.stderr)
    if args.json:
        payload = {"run_id": result.run_id, "baselines": result.baselines, "warnings": result.warnings,
                   "comparisons": [c.to_dict() for c in result.comparisons]}
        json.dump(payload, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        return 0
    from rich.console import Console

    from harness.commands.gate import print_comparisons

    out = Console(highlight=False)
    if result.comparisons:
        print_comparisons(result.comparisons, out, title=f"Run {result.run_id} against its baseline")
    for device, base in sorted(result.baselines.items()):
        if base is None:
            out.print(f"{device}: no baseline to compare with")
    if not result.baselines:
        out.print(f"run {result.run_id} has no samples to compare")
    return 0
