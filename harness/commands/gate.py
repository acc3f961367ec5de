"""``edgebench gate [--run RUN_ID] [--baseline RUN_ID] [--budgets FILE] [--junit FILE] [--json]
[--allow-unmeasured]``.

Judges a stored run (default: the latest) against budgets and its baseline and exits with the verdict's
code (``harness.vocabulary.OUTCOMES``): 0 every budget met and no regression (also when there is no
baseline yet), 1 a budget failed or a regression was found, 2 something could not be measured, a
failure or regression rests on a disturbed measurement, or the input was invalid. Every planned
(device, variant) pair that was not measured (ineligible included) makes it 2, unless
``--allow-unmeasured`` turns those pairs into warnings; a run where nothing was measured is 2 regardless.
The verdict is saved in the store (the report shows it), so a passing run becomes the next run's baseline.

Budgets: ``--budgets``, else the configuration's ``budgets``, else the budgets stored with the run.
Budget classes: the ones stored with the run; ``--inventory`` names them only for runs stored without.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harness.commands import common
from harness.errors import UserError

NAME = "gate"
HELP = ("Check a run against its budgets and its baseline; exit 0 pass, 1 failed/regressed, "
        "2 not measured/disturbed.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_run(parser, "judge")
    parser.add_argument("--baseline", metavar="RUN_ID",
                        help="compare with this run (default: each device identity's last passing run)")
    common.add_budgets(parser, "budgets.toml to apply")
    parser.add_argument("--junit", metavar="FILE", type=Path, help="also write JUnit XML here")
    common.add_json(parser, "print the verdict as JSON")
    common.add_allow_unmeasured(parser, common.ALLOW_UNMEASURED_HELP)
    common.add_store_and_config(parser)
    common.add_inventory(parser, "devices.toml naming budget classes for runs stored without them")


def gate(
    *,
    run: str | None = None,
    baseline: str | None = None,
    budgets: Path | None = None,
    junit: Path | None = None,
    store: Path | None = None,
    config: Path | None = None,
    inventory: Path | None = None,
    allow_unmeasured: bool = False,
):
    """Evaluate, save the verdict in the store, write JUnit if asked; returns the verdict
    (``harness.verdict.Verdict``)."""
    from harness import gate as gate_mod
    from harness.budgets import load_budgets
    from harness.config import load_config, open_existing_store

    cfg = load_config(config) if (config is not None or budgets is None) else None
    budgets_path = budgets if budgets is not None else (cfg.budgets if cfg is not None else None)
    inventory_path = inventory if inventory is not None else (cfg.inventory if cfg is not None else None)
    device_classes = None  # the run's stored classes; an explicit --inventory only fills the gaps
    known_classes = None
    if inventory_path is not None:
        from devices.inventory import load_inventory

        inv = load_inventory(inventory_path)
        classes = {name: d.budget_class for name, d in inv.devices.items()}
        known_classes = {c for c in classes.values() if c}
        if inventory is not None:
            device_classes = classes
    with open_existing_store(store, config) as st:
        run_id = run or st.latest_run_id()
        if run_id is None:
            raise UserError(f"{st.location}: the store holds no runs yet; run `edgebench run` first")
        stored = st.run(run_id)
        budget_set = None
        if budgets_path is not None:
            from devices.ondevice.artifact import RUNTIMES
            from variants.recipes import BUILTIN_VARIANTS
            from variants.runtimes import measured_names, split_measured

            # the names `run` accepts: every known variant on every runtime
            known = {split_measured(v)[0] for v in (*BUILTIN_VARIANTS, *stored["variants"])}
            budget_set = load_budgets(budgets_path, device_classes=known_classes,
                                      variants=measured_names(sorted(known), RUNTIMES))
        verdict = gate_mod.evaluate(st, run_id, budget_set, baseline, device_classes=device_classes,
                                    allow_unmeasured=allow_unmeasured, save=True)
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
        t = Table(title="Not measured")
        for col in ("device", "variant", "status", "error", "counts"):
            t.add_column(col)
        for u in verdict.unmeasured:
            t.add_row(u.device, u.variant, u.status, u.error or "",
                      "no (--allow-unmeasured)" if u.allowed else "[bold yellow]could not measure[/]")
        out.print(t)
    if verdict.checks:
        t = Table(title=f"Budgets — run {verdict.run_id}")
        for col in ("device", "variant", "budget", "value", "limit", "result"):
            t.add_column(col, justify="right" if col in ("value", "limit") else "left")
        order = {s: i for i, s in enumerate(("fail", "disturbed", "not_measured", "pass", "skipped"))}
        styles = {"pass": "green", "fail": "bold red", "not_measured": "bold yellow",
                  "disturbed": "bold yellow"}
        for c in sorted(verdict.checks, key=lambda c: order.get(c.status, len(order))):
            m = c.spec
            result = f"[{styles.get(c.status, 'dim')}]{c.status}[/]"
            if c.disturbed and c.passed:
                result += " (disturbed)"
            t.add_row(c.device, c.variant, m.budget_key or c.metric, m.display_text(c.value),
                      f"{m.op} {m.display_text(c.limit)}", result)
        out.print(t)
    if verdict.comparisons:
        print_comparisons(verdict.comparisons, out, title="Regressions against the baseline")
    for d in verdict.disturbances:
        where = "" if d.run_id == verdict.run_id else f" (baseline run {d.run_id})"
        out.print(f"[bold yellow]disturbed[/] {d.device}/{d.variant}{where}: {d.reason}")
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
        style = {"regressed": "bold red", "disturbed": "bold yellow", "improved": "green",
                 "insufficient": "yellow"}.get(c.verdict, "")
        ratio = "—" if c.ratio is None else f"{c.ratio:.3f}"
        ci = "—" if c.ci_low is None or c.ci_high is None else f"{c.ci_low:.3f}–{c.ci_high:.3f}"
        p = "—" if c.p_value is None else f"{c.p_value:.2g}"
        base = "—" if c.baseline_median is None else f"{c.baseline_median * 1e3:.1f} ms"
        cand = "—" if c.candidate_median is None else f"{c.candidate_median * 1e3:.1f} ms"
        t.add_row(c.device, c.variant, c.length_class, f"{c.n_baseline}/{c.n_candidate}", base, cand, ratio,
                  ci, p, f"[{style}]{c.verdict}[/]" if style else c.verdict)
    out.print(t)
    counts: dict[str, int] = {}
    for c in comparisons:
        counts[c.verdict] = counts.get(c.verdict, 0) + 1
    out.print(", ".join(f"{n} {verdict}" for verdict, n in sorted(counts.items())))


def from_args(args: argparse.Namespace) -> int:
    verdict = gate(run=args.run, baseline=args.baseline, budgets=args.budgets, junit=args.junit,
                   store=args.store, config=args.config, inventory=args.inventory,
                   allow_unmeasured=args.allow_unmeasured)
    if args.json:
        json.dump(verdict.to_dict(), sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        for w in verdict.warnings:
            print(f"edgebench: warning: {w}", file=sys.stderr)
    else:
        print_verdict(verdict)
    return verdict.exit_code
