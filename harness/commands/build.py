"""``edgebench build``: build (or fetch from the build cache) the model variants as artifact directories.

The work is ``variants.build.build_variants``; this module parses arguments, shows progress on stderr
(rich) and prints one table row per variant (sizes, parameters, quality proxies, cached or built).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

from harness import paths
from harness.errors import UserError

NAME = "build"
HELP = "Build model variants (original, pruned, quantized, ...) as artifacts, through the build cache."
PRESETS = ("tiny", "base", "large")
DEFAULT_OUT = Path("edgebench-out") / "artifacts"


def _csv(text: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list of variant names")
    return items


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from variants.recipes import BUILTIN_VARIANTS, DEFAULT_VARIANTS

    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="edgebench.toml with preset, variants, [recipes.NAME], model (default: ./edgebench.toml "
        "if present)",
    )
    parser.add_argument("--preset", choices=PRESETS, default=None, help="model size (default: base)")
    parser.add_argument(
        "--model-dir", type=Path, default=None, help="a ModelScope model directory (instead of a preset)"
    )
    parser.add_argument("--voice", default=None, help="its voice (default: the first in voices.json)")
    parser.add_argument(
        "--variants",
        type=_csv,
        default=None,
        help=f"comma-separated: {', '.join(BUILTIN_VARIANTS)} or [recipes.NAME] of the config "
        f"(default: {','.join(DEFAULT_VARIANTS)})",
    )
    parser.add_argument(
        "--runtimes", type=_csv, default=None,
        help="comma-separated: torch, onnxruntime (default: the config's, else torch); onnxruntime exports "
             "each variant as ONNX graphs into <variant>.onnxruntime",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"artifact directory (default: {DEFAULT_OUT})"
    )
    parser.add_argument("--seed", type=int, default=None, help="weights and recipe seed (default: 0)")
    parser.add_argument(
        "--no-quality", action="store_true", help="skip the quality proxies (MCD, emotion id)"
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="build cache (default: the state dir's cache/build)"
    )
    parser.add_argument(
        "--model", default=None, metavar="MODULE:FACTORY", help="a user model factory (plugin)"
    )


def from_args(args: argparse.Namespace) -> int:
    build(
        config_path=args.config,
        preset=args.preset,
        model_dir=args.model_dir,
        voice=args.voice,
        variants=args.variants,
        out=args.out,
        seed=args.seed,
        quality=not args.no_quality,
        cache_dir=args.cache_dir,
        model=args.model,
        runtimes=args.runtimes,
    )
    return 0


def build(
    preset: str | None = None,
    variants: Sequence[str] | None = None,
    out: Path = DEFAULT_OUT,
    seed: int | None = None,
    quality: bool = True,
    cache_dir: Path | None = None,
    model: str | None = None,
    config_path: Path | None = None,
    stdout=None,
    stderr=None,
    model_dir: Path | None = None,
    voice: str | None = None,
    runtimes: Sequence[str] | None = None,
) -> list:
    """Build the variants, print progress to ``stderr`` and the table to ``stdout``; return them."""
    from rich.console import Console

    from harness.config import load_config
    from variants.build import build_variants

    cfg = load_config(config_path)  # arguments given here override the configuration
    given = (("model_dir", model_dir), ("voice", voice), ("runtimes", runtimes))
    if any(v is not None for _, v in given):
        cfg = cfg.with_overrides(**{k: v for k, v in given if v is not None})
    preset = preset or cfg.preset
    variants = list(variants or cfg.variants)
    seed = cfg.seed if seed is None else seed
    model_config = cfg.model_config if model is None or model == cfg.model else None
    model = model or cfg.model
    if preset not in PRESETS:
        raise UserError(f"--preset: unknown preset {preset!r} (known: {', '.join(PRESETS)})")
    err = Console(file=stderr or sys.stderr, highlight=False)
    started = time.perf_counter()

    def progress(message: str) -> None:
        err.print(f"[dim]{time.perf_counter() - started:7.1f}s[/dim] {message}")

    built = build_variants(
        preset=preset,
        variants=variants,
        out=Path(out),
        seed=seed,
        cache_dir=Path(cache_dir)
        if cache_dir is not None
        else paths.cache_dir(paths.state_dir(create=False)) / "build",
        quality=quality,
        model_factory=model,
        model_config=model_config,
        model_dir=cfg.model_dir,
        voice=cfg.voice,
        recipes=cfg.recipes,
        progress=progress,
        runtimes=cfg.runtimes,
    )
    Console(file=stdout or sys.stdout, highlight=False, width=160).print(render_table(built))
    return built


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def render_table(built: Sequence) -> object:
    """A rich Table: one row per variant."""
    from rich.table import Table

    base = next((b for b in built if b.name == "original"), None)
    table = Table(title="edgebench build", title_justify="left")
    for col, justify in (
        ("variant", "left"),
        ("acoustic", "right"),
        ("vs original", "right"),
        ("vocoder", "right"),
        ("params (acoustic)", "right"),
        ("MCD dB", "right"),
        ("mel L1", "right"),
        ("emotion id", "right"),
        ("cached", "center"),
        ("path", "left"),
    ):
        table.add_column(col, justify=justify)
    for b in built:
        m = b.manifest
        q = m.get("quality") or {}
        ratio = (
            f"{m['sizes']['acoustic'] / base.manifest['sizes']['acoustic'] - 1:+.0%}"
            if base is not None
            else "-"
        )
        table.add_row(
            b.name,
            _mb(m["sizes"]["acoustic"]),
            ratio,
            _mb(m["sizes"]["vocoder"]),
            f"{m['params']['acoustic']:,}",
            f"{q['mcd_db']:.2f}" if "mcd_db" in q else "-",
            f"{q['mel_l1']:.4f}" if "mel_l1" in q else "-",
            f"{q['emotion_id_accuracy']:.0%} (n={q['n']})" if "emotion_id_accuracy" in q else "-",
            "yes" if b.cached else "no",
            str(b.path),
        )
    return table
