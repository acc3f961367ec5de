"""``edgebench run``: build what is missing, measure every (device, variant) pair, store, gate, report.

With no configuration at all it builds the core variants of the reference model (``base`` preset),
measures them on the built-in ``local`` device and writes the HTML report: the README's main job.
The exit code is the gate's (0 pass, 1 budget failed or regression, 2 could not measure / bad input).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from harness import __version__, paths
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
    return run(
        config_path=args.config,
        preset=args.preset,
        model_dir=args.model_dir,
        voice=args.voice,
        variants=args.variants,
        runtimes=args.runtimes,
        devices=args.devices,
        out=args.out,
        resume=args.resume,
        json_output=args.json,
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


def _model_key(cfg) -> str:
    """Artifacts of different models (preset, factory, config, seed) live in different folders, so a
    stored run's artifact path (its audio samples, its weights) is never overwritten by another model's."""
    import hashlib

    d = cfg.to_dict()
    basis = {k: d.get(k) for k in ("preset", "model_dir", "voice", "model", "model_config", "seed")}
    digest = hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:12]
    kind = "modelscope" if cfg.model_dir is not None else cfg.preset if cfg.model is None else "custom"
    return f"{kind}-{digest}"


def run(
    *,
    config_path: Path | None = None,
    preset: str | None = None,
    model_dir: Path | None = None,
    voice: str | None = None,
    variants: list[str] | None = None,
    runtimes: list[str] | None = None,
    devices: list[str] | None = None,
    out: Path | None = None,
    resume: str | None = None,
    json_output: bool = False,
    store_path: str | Path | None = None,
    inventory_path: Path | None = None,
    budgets_path: Path | None = None,
    processes: int | None = None,
    min_seconds: float | None = None,
    min_iters: int | None = None,
    threads: int | None = None,
    stream_chunk_frames: int | None = None,
    report: bool = True,
    allow_unmeasured: bool = False,
) -> int:
    # Imported here so `edgebench --help` stays fast (torch is heavy).
    from devices.bundle import build_bundle
    from devices.errors import DevicesError
    from devices.inventory import load_inventory
    from devices.ondevice.artifact import REFERENCE_FACTORY, RUNTIMES
    from harness import gate as gate_mod
    from harness import orchestrate
    from harness.budgets import load_budgets
    from harness.config import check_output_dir, load_config, open_store
    from harness.errors import UserError
    from harness.progress import Progress
    from harness.store import is_url
    from variants.build import build_variants
    from variants.recipes import BUILTIN_VARIANTS
    from variants.runtimes import measured_names

    cfg = load_config(config_path)
    if resume:
        state = paths.state_dir(create=False)
        location = store_path or cfg.store or paths.results_db_path(state)
        if not is_url(location) and not Path(location).is_file():  # nothing to resume: say so, create none
            raise UserError(f"--resume {resume}: no results store at {location} (pass --store)")
        store = open_store(location, create=False)
        # A resumed run finishes what its stored configuration asked for, whatever the flags say.
        orchestrate.check_resumable(store, resume)
        cfg = load_config(None, data=store.run(resume)["config"], source=f"run {resume}")
    overrides = {
        "preset": preset,
        "model_dir": model_dir,
        "voice": voice,
        "variants": variants,
        "runtimes": runtimes,
        "devices": devices,
        "inventory": inventory_path,
        "budgets": budgets_path,
    }
    if not resume:
        cfg = cfg.with_overrides(**{k: v for k, v in overrides.items() if v is not None})
    protocol = cfg.protocol
    proto_overrides = {"processes": processes, "min_seconds": min_seconds, "min_iters": min_iters,
                       "threads": threads, "stream_chunk_frames": stream_chunk_frames}
    proto_overrides = {k: v for k, v in proto_overrides.items() if v is not None}
    if proto_overrides and not resume:
        try:
            protocol = replace(protocol, **proto_overrides)
        except DevicesError as exc:  # name the flag, not the protocol field
            flag = next((f"--{k.replace('_', '-')}" for k in proto_overrides if k in str(exc)), None)
            raise UserError(f"{flag}: {str(exc).split(': ', 1)[-1]}" if flag else str(exc)) from None
        cfg = cfg.with_overrides(protocol=protocol)

    loaded_voice = None
    if cfg.model_dir is not None:  # a bad model directory is an input error: before anything is written
        from variants.modelscope import load_voice

        loaded_voice = load_voice(cfg.model_dir, cfg.voice)
    inventory = load_inventory(paths.inventory_path(cfg.inventory))  # as `edgebench devices` finds it
    selected = inventory.select(cfg.devices)
    # Budgets may name any variant edgebench knows (one budgets file serves several configs), but not
    # a misspelt one.
    budgets = load_budgets(
        cfg.budgets,
        device_classes={d.budget_class for d in inventory.devices.values() if d.budget_class},
        variants=measured_names([*BUILTIN_VARIANTS, *cfg.recipes, *cfg.variants], RUNTIMES),
    )

    if report:  # a report directory that cannot be written is bad input: found before anything is written
        if out is not None:
            check_output_dir(out, "--out")
        else:
            check_output_dir(cfg.out_dir, f"{cfg.source}: out_dir")
    if cfg.model is not None:  # a factory that cannot be imported, too
        from variants.plugin import load_factory

        load_factory(cfg.model)
        if "onnxruntime" in cfg.runtimes and cfg.model != REFERENCE_FACTORY:
            raise UserError(f"{cfg.source}: runtimes: onnxruntime needs the reference Sambert-HifiGan (its "
                            f"ONNX export is edgebench's); the model factory {cfg.model!r} runs on torch "
                            "only")

    if not resume:
        state = paths.state_dir()
        store = open_store(store_path or cfg.store or paths.results_db_path(state), create=True)
    progress = Progress(enabled=not json_output)
    with progress:
        built = build_variants(
            preset=cfg.preset,
            variants=cfg.variants,
            out=paths.cache_dir(state, create=True) / "artifacts" / _model_key(cfg),
            seed=cfg.seed,
            cache_dir=paths.cache_dir(state) / "build",
            model_factory=cfg.model,
            model_config=cfg.model_config,
            loaded_voice=loaded_voice,  # read above, before anything was written
            recipes=cfg.recipes,
            progress=progress.callback("build"),
            runtimes=cfg.runtimes,
        )
        artifacts = {b.name: b.path for b in built}
        measured = measured_names(cfg.variants, cfg.runtimes)  # what a pair measures: variant x runtime

        if resume:
            run_id = resume
            missing = set(store.missing_pairs(run_id))
            pairs = [(d, v) for d in selected for v in measured if (d.name, v) in missing]
        else:
            run_id = store.start_run(
                config=cfg.to_dict(),
                budgets=budgets.to_dict(),
                code_version=__version__,
                preset=cfg.preset if cfg.model_dir is None else None,
                variants=measured,
                devices=[d.name for d in selected],
            )
            pairs = [(d, v) for d in selected for v in measured]
        for b in built:
            store.record_artifact(run_id, b.name, str(b.path), b.manifest)

        bundle = build_bundle(state)
        task = progress.add_task(f"measure {run_id}", total=len(pairs))
        started = time.monotonic()
        outcomes = orchestrate.measure_all(
            store,
            run_id,
            pairs,
            artifacts,
            protocol,
            known_hosts=paths.known_hosts_path(state),
            run_timeout_s=cfg.run_timeout_s,
            bundle=bundle,
            state_dir=state,
            on_pair=lambda o: progress.advance(task, f"{o.device}/{o.variant}: {o.status}"),
            progress=store.partial_progress(run_id) if resume else None,
        )
        complete = not store.missing_pairs(run_id)
        store.finish_run(run_id, "complete" if complete else "incomplete")

        # Budget classes come from the store (each attempt's identity), like any later `edgebench gate`.
        verdict = gate_mod.evaluate(store, run_id, budgets, allow_unmeasured=allow_unmeasured)
        report_path = None
        if report:
            from reports.render import render_run

            out_dir = out or Path(cfg.out_dir) / run_id
            try:
                report_path = render_run(store, run_id, out_dir)
            except OSError as exc:  # a full disk, a folder made read-only meanwhile: the samples are stored
                where = f" ({exc.filename})" if exc.filename else ""
                raise UserError(f"{out_dir}: cannot write the report: {exc.strerror or exc}{where}; "
                                f"run {run_id} is stored: `edgebench report --run {run_id} --out DIR` "
                                "writes it") from None

    elapsed = time.monotonic() - started
    if json_output:
        payload = {
            "run_id": run_id,
            "complete": complete,
            "pairs": [o.__dict__ for o in outcomes],
            "verdict": verdict.to_dict(),
            "exit_code": verdict.exit_code,
            "report": str(report_path) if report_path else None,
        }
        json.dump(payload, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        for o in outcomes:
            if o.status != "ok":
                print(f"  {o.device}/{o.variant}: {o.status}: {o.error}", file=sys.stderr)
        print(f"run {run_id}: {len(outcomes)} pair(s) measured in {elapsed:.0f}s; "
              f"verdict: {verdict.outcome} (exit {verdict.exit_code})")
        if report_path:
            print(f"report: {report_path}")
        if not complete:
            print(f"resume with: edgebench run --resume {run_id}")
    return verdict.exit_code
