"""``edgebench run``: build what is missing, measure every (device, variant) pair, store, gate, report.

With no configuration at all it builds the core variants of the reference model (``base`` preset),
measures them on the built-in ``local`` device and writes the HTML report: the README's main job.
The exit code is the gate's (0 pass, 1 budget failed or regression, 2 could not measure / bad input).
The pipeline itself is ``harness.pipeline.execute``; this module turns flags into its request and prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harness.commands import common

NAME = "run"
HELP = "Build the variants, measure them on the devices, store every sample, gate and write the report."


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_config(parser)
    parser.add_argument("--preset", help="reference model preset: tiny, base or large (default: base)")
    parser.add_argument("--model-dir", type=Path, help="a ModelScope model directory (instead of a preset)")
    parser.add_argument("--voice", help="the model directory's voice (default: the first in voices.json)")
    parser.add_argument("--variants", type=_csv, help="comma-separated variant names (default: 5 core)")
    parser.add_argument("--runtimes", type=_csv,
                        help="comma-separated runtimes to measure each variant on: torch, onnxruntime "
                             "(default: torch)")
    parser.add_argument("--devices", type=_csv, help="comma-separated device names or tag:T (default: local)")
    parser.add_argument("--out", type=Path, help="report directory (default: edgebench-out/RUN_ID)")
    parser.add_argument("--resume", metavar="RUN_ID", help="finish a run: measure only the missing pairs")
    common.add_json(parser, "print the run's outcome and verdict as JSON")
    common.add_store(parser)
    common.add_inventory(parser)
    common.add_budgets(parser)
    parser.add_argument("--processes", type=int, help="fresh processes per variant (default 3)")
    parser.add_argument("--min-seconds", type=float, help="minimum steady-state seconds per process")
    parser.add_argument("--min-iters", type=int, help="minimum steady-state iterations per process")
    parser.add_argument("--threads", type=int, help="torch threads when measuring (default: torch's)")
    parser.add_argument("--stream-chunk-frames", dest="stream_chunk_frames", type=int, metavar="FRAMES",
                        help="measure streaming synthesis in chunks of FRAMES mel frames (80 = 1 s of "
                             "audio), with time to first audio (default: whole-utterance synthesis)")
    parser.add_argument("--no-report", action="store_true", help="skip the HTML report")
    common.add_allow_unmeasured(parser, common.ALLOW_UNMEASURED_HELP)


def from_args(args: argparse.Namespace) -> int:
    from harness.pipeline import RunRequest, execute

    request = RunRequest(
        config_path=args.config,
        preset=args.preset,
        model_dir=args.model_dir,
        voice=args.voice,
        variants=args.variants,
        runtimes=args.runtimes,
        devices=args.devices,
        out=args.out,
        resume=args.resume,
        store_path=args.store,
        inventory_path=args.inventory,
        budgets_path=args.budgets,
        processes=args.processes,
        min_seconds=args.min_seconds,
        min_iters=args.min_iters,
        threads=args.threads,
        stream_chunk_frames=args.stream_chunk_frames,
        report=not args.no_report,
        allow_unmeasured=args.allow_unmeasured,
    )
    result = execute(request, show_progress=not args.json)
    for place in result.released:
        print(f"edgebench: released labgrid place {place}, left held by this run's stopped controller",
              file=sys.stderr)
    if args.json:
        json.dump(result.to_dict(), sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return result.exit_code
    for o in result.failed:
        print(f"  {o.device}/{o.variant}: {o.status}: {o.error}", file=sys.stderr)
    print(f"run {result.run_id}: {len(result.outcomes)} pair(s) measured in {result.elapsed_s:.0f}s; "
          f"verdict: {result.verdict.outcome} (exit {result.exit_code})")
    if result.report_path:
        print(f"report: {result.report_path}")
    if not result.complete:
        print(f"resume with: edgebench run --resume {result.run_id}")
    return result.exit_code
