"""``edgebench report [--run RUN_ID] [--out DIR] [--open] [--gate [--baseline RUN_ID] [--allow-unmeasured]]``:
render a run's self-contained HTML report.

Writes ``report.html`` (with ``audio/`` beside it), ``comparison.csv`` and ``comparison.md`` into
``--out`` (default ``edgebench-out/<run id>/``). The report shows the verdict the gate stored for the run
and never judges the run itself; a run without one is reported as "no verdict". ``--gate`` runs
``edgebench gate`` on the run first (storing its verdict). The exit status says whether the report was
written, not whether the run passed: that is ``edgebench gate``'s job.
"""

from __future__ import annotations

import argparse
import sys
import webbrowser
from pathlib import Path

from harness.commands import common
from harness.errors import UserError

NAME = "report"
HELP = "Render the HTML report (and CSV/Markdown comparison tables) of a run."
DEFAULT_OUT_ROOT = Path("edgebench-out")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_run(parser, "report")
    parser.add_argument(
        "--out", metavar="DIR", type=Path, help="output folder (default: edgebench-out/<run id>/)"
    )
    parser.add_argument("--open", action="store_true", help="open the report in a browser afterwards")
    parser.add_argument(
        "--gate",
        action="store_true",
        help="judge the run first (as `edgebench gate` does: the verdict is stored), then render it",
    )
    parser.add_argument(
        "--baseline", metavar="RUN_ID", help="with --gate: compare with this run, not the last passing one"
    )
    common.add_allow_unmeasured(parser, "with --gate: unmeasured pairs are warnings")
    common.add_store_and_config(parser)


def report(
    run: str | None = None,
    out: Path | None = None,
    store: Path | str | None = None,
    open_browser: bool = False,
    gate: bool = False,
    baseline: str | None = None,
    allow_unmeasured: bool = False,
    config: Path | None = None,
) -> Path:
    """Render the report of ``run`` (latest when None) with its stored verdict; returns the path of
    ``report.html``. ``gate``: judge the run first and store the verdict (``baseline``,
    ``allow_unmeasured`` as for ``edgebench gate``)."""
    from harness.config import open_store, resolve_store_path
    from reports.render import render_run

    if not gate and (baseline is not None or allow_unmeasured):
        flag = "--baseline" if baseline is not None else "--allow-unmeasured"
        raise UserError(f"{flag} judges the run: add --gate (the report shows the run's stored verdict)")
    store_path = resolve_store_path(store, config)
    with open_store(store_path, create=False) as st:
        run_id = run or st.latest_run_id()
        if run_id is None:
            raise UserError(f"{st.location}: the store holds no runs yet; run `edgebench run` first")
        st.run(run_id)  # an unknown run id is one line, before anything is judged
    if gate:
        from harness.commands.gate import gate as run_gate

        run_gate(run=run_id, baseline=baseline, store=store_path, allow_unmeasured=allow_unmeasured)
    with open_store(store_path, create=False) as st:
        if st.verdict(run_id) is None:
            print(f"edgebench: warning: run {run_id} has no stored verdict; the report says so "
                  "(`edgebench gate` or `edgebench report --gate` judges it)", file=sys.stderr)
        path = render_run(st, run_id, Path(out) if out is not None else DEFAULT_OUT_ROOT / run_id)
    if open_browser:
        webbrowser.open(path.absolute().as_uri())
    return path


def from_args(args: argparse.Namespace) -> int:
    path = report(
        run=args.run, out=args.out, store=args.store, open_browser=args.open, gate=args.gate,
        baseline=args.baseline, allow_unmeasured=args.allow_unmeasured, config=args.config,
    )
    print(path)
    return 0
