"""The run pipeline, outside the CLI: build what is missing, measure every (device, variant) pair, store,
gate and write the report; ``execute(RunRequest(...))`` returns a ``RunResult``.

``edgebench run`` is a thin wrapper (``harness.commands.run``) that turns flags into a ``RunRequest`` and
prints the result; a nightly job or a notebook can call ``execute`` directly. Bad input raises
``UserError`` (the CLI's exit 2) before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from harness import __version__, paths

#: The request's fields that override the measurement protocol (``--processes`` etc.).
PROTOCOL_FLAGS = ("processes", "min_seconds", "min_iters", "threads", "stream_chunk_frames")


@dataclass(frozen=True)
class RunRequest:
    """What to run. Every field left None takes the configuration's value (``config_path``, else
    ./edgebench.toml, else the defaults); ``resume`` finishes a stored run with its stored configuration."""

    config_path: Path | None = None
    preset: str | None = None
    model_dir: Path | None = None
    voice: str | None = None
    variants: tuple | None = None
    runtimes: tuple | None = None
    devices: tuple | None = None
    out: Path | None = None
    resume: str | None = None
    store_path: str | Path | None = None
    inventory_path: Path | None = None
    budgets_path: Path | None = None
    processes: int | None = None
    min_seconds: float | None = None
    min_iters: int | None = None
    threads: int | None = None
    stream_chunk_frames: int | None = None
    report: bool = True
    allow_unmeasured: bool = False


    def __post_init__(self) -> None:
        for name in ("variants", "runtimes", "devices"):   # lists from callers, tuples inside
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(value))


@dataclass(frozen=True)
class RunResult:
    """What a run did: its id, whether every pair is now measured, each pair's outcome in this invocation,
    the verdict (``exit_code``: 0 pass, 1 budget or regression, 2 could not measure) and the report."""

    run_id: str
    complete: bool
    outcomes: tuple = ()
    verdict: object = None
    report_path: Path | None = None
    elapsed_s: float = 0.0
    store: str = ""
    released: tuple = field(default=())   # labgrid places a resumed run found still held and released

    @property
    def exit_code(self) -> int:
        return self.verdict.exit_code

    @property
    def failed(self) -> tuple:
        return tuple(o for o in self.outcomes if o.status != "ok")

    def to_dict(self) -> dict:
        return {
            "run_id": self.run_id,
            "complete": self.complete,
            "pairs": [o.__dict__ for o in self.outcomes],
            "verdict": self.verdict.to_dict(),
            "exit_code": self.exit_code,
            "report": str(self.report_path) if self.report_path else None,
            "released": list(self.released),
        }


def _model_key(cfg) -> str:
    """Artifacts of different models (preset, factory, config, seed) live in different folders, so a
    stored run's artifact path (its audio samples, its weights) is never overwritten by another model's."""
    d = cfg.to_dict()
    basis = {k: d.get(k) for k in ("preset", "model_dir", "voice", "model", "model_config", "seed")}
    digest = hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:12]
    kind = "modelscope" if cfg.model_dir is not None else cfg.preset if cfg.model is None else "custom"
    return f"{kind}-{digest}"


def execute(request: RunRequest, *, show_progress: bool = True) -> RunResult:
    """Run the pipeline for ``request`` and return what happened (see the module's docstring)."""
    # Imported here so `edgebench --help` stays fast (torch is heavy).
    from devices import labgrid
    from devices.bundle import build_bundle
    from devices.inventory import load_inventory
    from devices.ondevice.artifact import RUNTIMES
    from harness import gate as gate_mod
    from harness import orchestrate
    from harness.budgets import load_budgets
    from harness.config import open_store
    from harness.errors import UserError
    from harness.progress import Progress
    from variants.build import build_variants
    from variants.recipes import BUILTIN_VARIANTS
    from variants.runtimes import measured_names

    started = time.monotonic()
    cfg, protocol, store = _configure(request)
    loaded_voice = None
    if cfg.model_dir is not None:  # a bad model directory is an input error: before anything is written
        from variants.modelscope import load_voice

        loaded_voice = load_voice(cfg.model_dir, cfg.voice)
    # As `edgebench devices` finds it; a labgrid farm's tag groups become one device per place.
    inventory = labgrid.expand_places(load_inventory(paths.inventory_path(cfg.inventory)))
    selected = inventory.select(cfg.devices)
    # Budgets may name any variant edgebench knows (one budgets file serves several configs), but not
    # a misspelt one.
    budgets = load_budgets(
        cfg.budgets,
        device_classes={d.budget_class for d in inventory.devices.values() if d.budget_class},
        variants=measured_names([*BUILTIN_VARIANTS, *cfg.recipes, *cfg.variants], RUNTIMES),
    )
    _check_outputs(request, cfg)

    state = paths.state_dir()
    if store is None:
        store = open_store(request.store_path or cfg.store or paths.results_db_path(state), create=True)
    progress = Progress(enabled=show_progress)
    with store, progress:
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
            work_classes=protocol.sentences,
        )
        artifacts = {b.name: b.path for b in built}
        measured = measured_names(cfg.variants, cfg.runtimes)  # what a pair measures: variant x runtime

        released: list[str] = []
        if request.resume:
            run_id = request.resume
            missing = set(store.missing_pairs(run_id))
            pairs = [(d, v) for d in selected for v in measured if (d.name, v) in missing]
            # A controller killed with SIGKILL could not give its labgrid places back: this run's owner
            # still holds them. Free them before measuring (the coordinator keeps them otherwise).
            released = labgrid.release_stale(selected, owner=orchestrate.labgrid_owner(run_id))
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
            progress=store.partial_progress(run_id) if request.resume else None,
            limits=orchestrate.LimitsPlan(cfg.microbench_s, cfg.microbench_max_age_s, _model_shapes(built)),
        )
        complete = not store.missing_pairs(run_id)
        store.finish_run(run_id, "complete" if complete else "incomplete")

        # Budget classes come from the store (each attempt's identity), like any later `edgebench gate`.
        verdict = gate_mod.evaluate(store, run_id, budgets, allow_unmeasured=request.allow_unmeasured)
        report_path = None
        if request.report:
            from reports.render import render_run

            out_dir = request.out or Path(cfg.out_dir) / run_id
            try:
                report_path = render_run(store, run_id, out_dir)
            except OSError as exc:  # a full disk, a folder made read-only meanwhile: the samples are stored
                where = f" ({exc.filename})" if exc.filename else ""
                raise UserError(f"{out_dir}: cannot write the report: {exc.strerror or exc}{where}; "
                                f"run {run_id} is stored: `edgebench report --run {run_id} --out DIR` "
                                "writes it") from None

    return RunResult(
        run_id=run_id,
        complete=complete,
        outcomes=tuple(outcomes),
        verdict=verdict,
        report_path=report_path,
        elapsed_s=time.monotonic() - started,
        store=str(store.location),
        released=tuple(released),
    )


#: The most model shapes the device micro-benchmarks time (about 0.3 s each at the default microbench_s).
MAX_MODEL_SHAPES = 24


def _model_shapes(built) -> tuple:
    """The busiest matrix-product shapes of every variant's counted work (pruning changes them), for the
    device micro-benchmarks; none when the work was not counted."""
    shapes: list = []
    for b in built:
        for s in (b.manifest.get("work") or {}).get("top_shapes") or []:
            shape = tuple(int(v) for v in s)
            if shape not in shapes:
                shapes.append(shape)
    return tuple(shapes[:MAX_MODEL_SHAPES])


def _configure(request: RunRequest):
    """(configuration, protocol, store or None): the request's flags over the configuration file, or for
    ``resume`` the stored run's own configuration (and its store, opened), whatever the flags say."""
    from devices.errors import DevicesError
    from harness import orchestrate
    from harness.config import load_config, open_store
    from harness.errors import UserError
    from harness.store import is_url

    cfg = load_config(request.config_path)
    if request.resume:
        location = request.store_path or cfg.store or paths.results_db_path(paths.state_dir(create=False))
        if not is_url(location) and not Path(location).is_file():  # nothing to resume: say so, create none
            raise UserError(f"--resume {request.resume}: no results store at {location} (pass --store)")
        store = open_store(location, create=False)
        orchestrate.check_resumable(store, request.resume)
        cfg = load_config(None, data=store.run(request.resume)["config"], source=f"run {request.resume}")
        return cfg, cfg.protocol, store
    overrides = {
        "preset": request.preset,
        "model_dir": request.model_dir,
        "voice": request.voice,
        "variants": list(request.variants) if request.variants is not None else None,
        "runtimes": list(request.runtimes) if request.runtimes is not None else None,
        "devices": list(request.devices) if request.devices is not None else None,
        "inventory": request.inventory_path,
        "budgets": request.budgets_path,
    }
    cfg = cfg.with_overrides(**{k: v for k, v in overrides.items() if v is not None})
    protocol = cfg.protocol
    proto_overrides = {k: getattr(request, k) for k in PROTOCOL_FLAGS if getattr(request, k) is not None}
    if proto_overrides:
        try:
            protocol = replace(protocol, **proto_overrides)
        except DevicesError as exc:  # name the flag, not the protocol field
            flag = next((f"--{k.replace('_', '-')}" for k in proto_overrides if k in str(exc)), None)
            raise UserError(f"{flag}: {str(exc).split(': ', 1)[-1]}" if flag else str(exc)) from None
        cfg = cfg.with_overrides(protocol=protocol)
    return cfg, protocol, None


def _check_outputs(request: RunRequest, cfg) -> None:
    """Bad input found before anything is written: a report folder that cannot be written, a model
    factory that cannot be imported or that asks for a runtime it cannot have."""
    from devices.ondevice.artifact import REFERENCE_FACTORY
    from harness.config import check_output_dir
    from harness.errors import UserError

    if request.report:
        if request.out is not None:
            check_output_dir(request.out, "--out")
        else:
            check_output_dir(cfg.out_dir, f"{cfg.source}: out_dir")
    if cfg.model is not None:
        from variants.plugin import load_factory

        load_factory(cfg.model)
        if "onnxruntime" in cfg.runtimes and cfg.model != REFERENCE_FACTORY:
            raise UserError(f"{cfg.source}: runtimes: onnxruntime needs the reference Sambert-HifiGan (its "
                            f"ONNX export is edgebench's); the model factory {cfg.model!r} runs on torch "
                            "only")
