"""``edgebench export RUN --format bmf|json [-o PATH] [--testbed TESTBED] [--store STORE] [--config FILE]``:
a stored run's results as JSON for other tools. ``RUN`` is a run id or ``latest``.

``--format json``: the run's summaries (``harness.results.RunResults.to_dict()``: the run's row, each
device's budget class, one summary per device, identity, variant and length class), to ``-o FILE`` or
stdout.

``--format bmf``: Bencher Metric Format for ``bencher run --adapter json``; the mapping (testbeds =
budget classes, benchmark names, measure slugs and units, bounds) is in ``harness.export``. A BMF
document belongs to one testbed:

- one testbed in the run, or ``--testbed`` choosing one: the document goes to ``-o FILE`` (an existing
  folder: ``FILE/<testbed>.json``) or stdout;
- several testbeds: ``-o DIR`` is required; ``DIR/<testbed>.json`` is written for each, and one line per
  file says how to upload it: ``bencher run --testbed <testbed> --adapter json --file <path>``.

Bad input (unknown run, unknown ``--testbed``, no ``-o DIR`` where one is needed, a run with nothing
measured for BMF) is one error line and exit 2, and nothing is written.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from harness.commands import common
from harness.errors import UserError

NAME = "export"
HELP = "Export a run's results as JSON summaries or Bencher Metric Format (BMF), one file per testbed."
FORMATS = ("bmf", "json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="the run id, or `latest`")
    parser.add_argument("--format", required=True, choices=FORMATS,
                        help="bmf: Bencher Metric Format (one document per testbed); "
                             "json: the run's summaries")
    parser.add_argument("-o", "--output", metavar="PATH", type=Path,
                        help="file to write (default: stdout); with --format bmf and several testbeds a "
                             "folder, one <testbed>.json in it per testbed")
    parser.add_argument("--testbed", metavar="CLASS",
                        help="with --format bmf: only this testbed (a budget class, or the name of a device "
                             "without one)")
    common.add_store_and_config(parser)


def export_data(
    run: str,
    *,
    fmt: str,
    testbed: str | None = None,
    store: str | Path | None = None,
    config: Path | None = None,
) -> tuple[str, dict]:
    """(run id, documents): for ``json`` {"": summaries}; for ``bmf`` testbed -> BMF document (only
    ``testbed`` when given). UserError for an unknown run or testbed, or a BMF export of nothing."""
    from harness import export, results
    from harness.config import open_existing_store

    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "json" and testbed is not None:
        raise UserError("--testbed selects a BMF document: use it with --format bmf")
    with open_existing_store(store, config) as st:
        run_id = st.latest_run_id() if run == "latest" else run
        if run_id is None:
            raise UserError(f"{st.location}: the store holds no runs yet; run `edgebench run` first")
        res = results.load(st, run_id)  # StoreError (one line) for an unknown run id
        if fmt == "json":
            return run_id, {"": res.to_dict()}
        samples = results.samples_df(st, run_id)
        rss = {key: export.process_peak_rss(a.get("header"))
               for key, a in st.effective_attempts(run_id).items() if a.get("status") == "ok"}
    known = export.testbeds(res)
    if not known:
        raise UserError(f"run {run_id} has no measured results: nothing to export as BMF")
    if testbed is not None and testbed not in known:
        listed = ", ".join(f"{t} ({', '.join(d)})" for t, d in known.items())
        raise UserError(f"run {run_id} has no testbed {testbed!r}; its testbeds: {listed}")
    docs = export.bmf_documents(res, samples, rss)
    if testbed is not None:
        docs = {testbed: docs[testbed]}
    return run_id, docs


def export(
    run: str,
    *,
    fmt: str,
    output: Path | None = None,
    testbed: str | None = None,
    store: str | Path | None = None,
    config: Path | None = None,
    stdout=None,
) -> list[Path]:
    """Export ``run`` (an id or ``latest``) and write it; returns the files written (none for stdout).

    Everything is checked before anything is written."""
    from harness.export import file_stems

    out = stdout or sys.stdout
    run_id, docs = export_data(run, fmt=fmt, testbed=testbed, store=store, config=config)
    if output is not None and output.exists() and not output.is_dir() and len(docs) > 1:
        raise UserError(f"{output}: is a file; run {run_id} has {len(docs)} testbeds "
                        f"({', '.join(docs)}): pass -o DIR for one file each, or --testbed to pick one")
    if fmt == "json":
        text = _dumps(docs[""])
        if output is None:
            out.write(text)
            return []
        path = output / f"{run_id}.json" if output.is_dir() else output
        _write(path, text)
        return [path]
    if output is None:
        if len(docs) > 1:
            raise UserError(f"run {run_id} has {len(docs)} testbeds ({', '.join(docs)}): a BMF document is "
                            "for one; pass -o DIR for one file each, or --testbed to pick one")
        (name, doc), = docs.items()
        out.write(_dumps(doc))
        print(f"edgebench: BMF of testbed {name!r}; upload it with "
              f"`bencher run --testbed {shlex.quote(name)} --adapter json` reading it on stdin",
              file=sys.stderr)
        return []
    try:
        stems = file_stems(docs)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    as_dir = len(docs) > 1 or output.is_dir()
    paths = {name: (output / f"{stems[name]}.json" if as_dir else output) for name in docs}
    if as_dir:
        try:
            output.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"{output}: cannot create the folder: {exc.strerror or exc}") from None
    for name, doc in docs.items():
        _write(paths[name], _dumps(doc))
    for name, path in paths.items():
        print(f"bencher run --testbed {shlex.quote(name)} --adapter json --file {shlex.quote(str(path))}",
              file=out)
    return list(paths.values())


def _dumps(doc: dict) -> str:
    return json.dumps(doc, indent=2, sort_keys=True, allow_nan=False) + "\n"


def _write(path: Path, text: str) -> None:
    """Write through a temporary file beside ``path`` so a reader never sees half a document."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"{path}: cannot write: {exc.strerror or exc}") from None


def from_args(args: argparse.Namespace) -> int:
    export(args.run, fmt=args.format, output=args.output, testbed=args.testbed, store=args.store,
           config=args.config)
    return 0
