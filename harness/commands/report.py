"""``edgebench report [--run RUN_ID] [--out DIR] [--open]``: render a run's self-contained HTML report.

Writes ``report.html`` (with ``audio/`` beside it), ``comparison.csv`` and ``comparison.md`` into
``--out`` (default ``edgebench-out/<run id>/``). The exit status says whether the report was written,
not whether the run passed: that is ``edgebench gate``'s job.
"""

from __future__ import annotations

import argparse
import webbrowser
from pathlib import Path

from harness import paths
from harness.errors import UserError

NAME = "report"
HELP = "Render the HTML report (and CSV/Markdown comparison tables) of a run."
DEFAULT_OUT_ROOT = Path("edgebench-out")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", metavar="RUN_ID", help="the run to report (default: the latest run)")
    parser.add_argument(
        "--out", metavar="DIR", type=Path, help="output folder (default: edgebench-out/<run id>/)"
    )
    parser.add_argument("--open", action="store_true", help="open the report in a browser afterwards")
    parser.add_argument(
        "--baseline",
        metavar="RUN_ID",
        help="compare against this run instead of the stored verdict's baseline",
    )
    parser.add_argument(
        "--store", metavar="PATH", type=Path, help="results store (default: .edgebench/results.sqlite)"
    )


def report(
    run: str | None = None,
    out: Path | None = None,
    store: Path | None = None,
    baseline: str | None = None,
    open_browser: bool = False,
) -> Path:
    """Render the report of ``run`` (latest when None); returns the path of ``report.html``."""
    from harness.store import Store
    from reports.render import render_run

    store_path = Path(store) if store is not None else paths.results_db_path()
    if not store_path.is_file():
        raise UserError(f"{store_path}: no results store here; run `edgebench run` first or pass --store")
    with Store(store_path) as st:
        run_id = run or st.latest_run_id()
        if run_id is None:
            raise UserError(f"{store_path}: the store holds no runs yet; run `edgebench run` first")
        path = render_run(
            st, run_id, Path(out) if out is not None else DEFAULT_OUT_ROOT / run_id, baseline=baseline
        )
    if open_browser:
        webbrowser.open(path.absolute().as_uri())
    return path


def from_args(args: argparse.Namespace) -> int:
    path = report(
        run=args.run, out=args.out, store=args.store, baseline=args.baseline, open_browser=args.open
    )
    print(path)
    return 0
