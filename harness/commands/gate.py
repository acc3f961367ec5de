"""``edgebench gate [--run RUN_ID] [--baseline RUN_ID] [--budgets FILE] [--junit FILE] [--json]``.

Judges a stored run (default: the latest) against budgets and its baseline and exits with the verdict's
code: 0 every budget met and no regression (also when there is no baseline yet), 1 a budget failed or a
regression was found, 2 something could not be measured or the input was invalid. The verdict is saved
in the store, so a passing run becomes the next run's baseline.

Budgets: ``--budgets``, else the configuration's ``budgets``, else the budgets stored with the run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harness.errors import UserError

NAME = "gate"
HELP = "Check a run against its budgets and its baseline; exit 0 pass, 1 failed/regressed, 2 not measured."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", metavar="RUN_ID", help="the run to judge (default: the latest run)")
    parser.add_argument("--baseline", metavar="RUN_ID",
                        help="compare with this run (default: each device identity's last passing run)")
    parser.add_argument("--budgets", metavar="FILE", type=Path, help="budgets.toml to apply")
    parser.add_argument("--junit", metavar="FILE", type=Path, help="also write JUnit XML here")
    parser.add_argument("--json", action="store_true", help="print the verdict as JSON")
    parser.add_argument("--store", metavar="PATH", type=Path,
                        help="results store (default: .edgebench/results.sqlite)")
    parser.add_argument("--config", metavar="FILE", type=Path,
                        help="edgebench.toml (default: ./edgebench.toml if present)")
    parser.add_argument("--inventory", metavar="FILE", type=Path,
                        help="devices.toml for the devices' budget classes (default: the run's)")


def gate(
    *,
    run: str | None = None,
    baseline: str | None = None,
    budgets: Path | None = None,
    junit: Path | None = None,
    store: Path | None = None,
    config: Path | None = None,
    inventory: Path | None = None,
):
    """Evaluate, save the verdict in the store, write JUnit if asked; returns the ``harness.gate.Verdict``."""
    from harness import gate as gate_mod
    from harness.budgets import load_budgets
    from harness.config import load_config, open_existing_store

    cfg = load_config(config) if (config is not None or budgets is None) else None
    budgets_path = budgets if budgets is not None else (cfg.budgets if cfg is not None else None)
    inventory_path = inventory if inventory is not None else (cfg.inventory if cfg is not None else None)
    device_classes = None
    known_classes = None
    if inventory_path is not None:
        from devices.inventory import load_inventory

        inv = load_inventory(inventory_path)
        device_classes = {name: d.budget_class for name, d in inv.devices.items()}
        known_classes = {c for c in device_classes.values() if c}
    with open_existing_store(store, config) as st:
        run_id = run or st.latest_run_id()
        if run_id is None:
            raise UserError(f"{st.path}: the store holds no runs yet; run `edgebench run` first")
        stored = st.run(run_id)
        budget_set = None
        if budgets_path is not None:
            from variants.recipes import BUILTIN_VARIANTS

            budget_set = load_budgets(budgets_path, device_classes=known_classes,
                                      variants=set(BUILTIN_VARIANTS) | set(stored["variants"]))
        verdict = gate_mod.evaluate(st, run_id, budget_set, baseline, device_classes=device_classes,
                                    save=True)
    if junit is not None:
        gate_mod.write_junit(verdict, junit)
    return verdict


def print_verdict(verdict, file=None) -> None:
    """Human-readable verdict: failed and unmeasured things first, then everything checked."""
    from rich.console import Console
    from rich.table import Table

    out = Console(file=file or sys.stdout, highlight=False)
    err = Console(file=sys.stderr, highlight=False)
    for w in verdict.warnings:
        err.print(f"[bold red]WARNING:[/] {w}")
    if verdict.unmeasured:
        t = Table(title="Could not measure")
        for col in ("device", "variant", "status", "error"):
            t.add_column(col)
        for u in verdict.unmeasured:
            t.add_row(u.device, u.variant, u.status, u.error or "")
        out.print(t)
    if verdict.checks:
        t = Table(title=f"Budgets — run {verdict.run_id}")
        for col in ("device", "variant", "metric", "value", "budget", "result"):
            t.add_column(col, justify="right" if col in ("value", "budget") else "left")
        order = {"fail": 0, "not_measured": 1, "pass": 2, "skipped": 3}
        for c in sorted(verdict.checks, key=lambda c: order.get(c.status, 4)):
            op = "<=" if c.direction == "max" else ">="
            value = "—" if c.value is None else f"{c.value:.4g} {c.unit}"
            style = {"pass": "green", "fail": "bold red", "not_measured": "bold yellow"}.get(c.status, "dim")
            t.add_row(c.device, c.variant, c.metric, value, f"{op} {c.budget:.4g} {c.unit}",
                      f"[{style}]{c.status}[/]")
        out.print(t)
    if verdict.comparisons:
        print_comparisons(verdict.comparisons, out, title="Regressions against the baseline")
    for device, base in sorted(verdict.baselines.items()):
        if base is None:
            out.print(f"{device}: no baseline (first passing run on this device identity?)")
    code_style = "green" if verdict.exit_code == 0 else "bold red"
    out.print(f"verdict: [{code_style}]{verdict.outcome}[/] (exit {verdict.exit_code})")


def print_comparisons(comparisons, out, title: str) -> None:
    from rich.table import Table

    t = Table(title=title)
    for col in ("device", "variant", "class", "n", "baseline p50", "p50", "ratio", "95% CI", "p", "verdict"):
        t.add_column(col, justify="left" if col in ("device", "variant", "class", "verdict") else "right")
    for c in comparisons:
        style = {"regressed": "bold red", "improved": "green", "insufficient": "yellow"}.get(c.verdict, "")
        ratio = "—" if c.ratio != c.ratio else f"{c.ratio:.3f}"
        ci = "—" if c.ci_low != c.ci_low else f"{c.ci_low:.3f}–{c.ci_high:.3f}"
        p = "—" if c.p_value != c.p_value else f"{c.p_value:.2g}"
        t.add_row(c.device, c.variant, c.length_class, f"{c.n_baseline}/{c.n_candidate}",
                  f"{c.baseline_median * 1e3:.1f} ms", f"{c.candidate_median * 1e3:.1f} ms", ratio, ci, p,
                  f"[{style}]{c.verdict}[/]" if style else c.verdict)
    out.print(t)
    counts: dict[str, int] = {}
    for c in comparisons:
        counts[c.verdict] = counts.get(c.verdict, 0) + 1
    out.print(", ".join(f"{n} {verdict}" for verdict, n in sorted(counts.items())))


def from_args(args: argparse.Namespace) -> int:
    verdict = gate(run=args.run, baseline=args.baseline, budgets=args.budgets, junit=args.junit,
                   store=args.store, config=args.config, inventory=args.inventory)
    if args.json:
        json.dump(verdict.to_dict(), sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        for w in verdict.warnings:
            print(f"edgebench: warning: {w}", file=sys.stderr)
    else:
        print_verdict(verdict)
    return verdict.exit_code
