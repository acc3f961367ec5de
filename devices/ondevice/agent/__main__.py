"""edgebench device agent: ``measure`` a variant (prints one JSON record) or print the device's ``facts``.

    python3 edgebench_agent.py measure --artifact DIR --variant NAME --protocol '{"format":
        "edgebench.protocol", "version": 1, "processes": 3, ...}' [--sentence-ids IDS --work-dir DIR]
    python3 edgebench_agent.py facts
    python3 edgebench_agent.py microbench [--min-s S --threads N --shapes 1x256x1024,...]

The protocol is one versioned document (``devices.ondevice.protocol.Protocol.to_document``) with every value
given: the defaults live on the controller only.

stdout carries exactly one JSON document; logs go to stderr. Exit status: 0 record ok, 1 record
failed (still printed), 2 bad arguments (nothing printed). Standard library only here; Python 3.8+.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from devices.ondevice.agent import facts as facts_mod
from devices.ondevice.agent import supervisor
from devices.ondevice.agent.format import FACTS_FORMAT, FACTS_VERSION, STATUS_OK

LENGTH_CLASSES = ("short", "medium", "long")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0.0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _classes(text: str) -> list:
    classes = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in classes if c not in LENGTH_CLASSES]
    if not classes or unknown:
        raise argparse.ArgumentTypeError(f"expected some of {','.join(LENGTH_CLASSES)}, got {text!r}")
    return classes


def _ids(text: str) -> list:
    ids = [i.strip() for i in text.split(",") if i.strip()]
    if not ids:
        raise argparse.ArgumentTypeError("expected sentence ids like short-01,medium-02")
    return ids


def _protocol(text: str):
    from devices.ondevice.errors import DevicesError
    from devices.ondevice.protocol import Protocol

    try:
        return Protocol.from_document(json.loads(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a JSON document: {exc}") from None
    except DevicesError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _shapes(text: str) -> list:
    try:
        shapes = [tuple(int(v) for v in part.split("x")) for part in text.split(",") if part.strip()]
    except ValueError:
        shapes = [()]
    if any(len(s) not in (3, 5) or min(s) < 1 or max(s) > 1 << 16 for s in shapes):
        raise argparse.ArgumentTypeError(f"expected shapes like 1x256x1024 (a product) or 174x256x256x3x1 (a "
                                         f"1-D convolution: frames, in, out, kernel, groups), got {text!r}")
    return shapes


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgebench-agent", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    m = sub.add_parser("measure", help="measure one variant in fresh processes; print the record")
    m.add_argument("--artifact", required=True, help="artifact directory on this device")
    m.add_argument("--variant", required=True, help="variant name to put in the record")
    m.add_argument("--protocol", type=_protocol, required=True,
                   help="the measurement protocol: one edgebench.protocol JSON document")
    m.add_argument("--sentence-ids", type=_ids, default=None,
                   help="only these corpus sentences, e.g. short-01 (default: all of the protocol's classes)")
    m.add_argument("--work-dir", default=None, help="where the device lock lives (default: from --artifact)")
    m.add_argument("--poll-interval", type=_non_negative_float, default=supervisor.POLL_INTERVAL_S,
                   help="seconds between /proc samples of the worker")
    m.add_argument("--check-outputs", action="store_true",
                   help="the first process also synthesises one sentence for the controller to compare "
                        "(devices.ondevice.outputs); outside every timed span")
    sub.add_parser("facts", help="print the device facts as JSON")
    b = sub.add_parser("microbench", help="measure and print the device limits (ondevice.microbench)")
    b.add_argument("--min-s", type=_non_negative_float, default=0.5, help="seconds of repeats per benchmark")
    b.add_argument("--threads", type=_positive_int, default=None, help="torch threads (default: torch's)")
    b.add_argument("--quantized-engine", default=None, help="torch.backends.quantized.engine to use")
    b.add_argument("--shapes", type=_shapes, default=[], help="model product shapes: RxIxC,...")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    # Only the document goes to the real stdout; anything else printed meanwhile lands on stderr.
    real_stdout, sys.stdout = sys.stdout, sys.stderr
    try:
        if args.command == "microbench":
            doc, code = _microbench(args)
        elif args.command == "facts":
            facts = facts_mod.collect(import_torch=True)
            doc = {"format": FACTS_FORMAT, "version": FACTS_VERSION, "facts": facts}
            code = 0
        else:
            doc = supervisor.measure(
                artifact=args.artifact, variant=args.variant, protocol=args.protocol, work_dir=args.work_dir,
                poll_interval=args.poll_interval, sentence_ids=args.sentence_ids,
                check_outputs=args.check_outputs,
            )
            code = 0 if doc["status"] == STATUS_OK else 1
    finally:
        sys.stdout = real_stdout
    sys.stdout.write(json.dumps(doc, separators=(",", ":")) + "\n")
    sys.stdout.flush()
    return code


def _microbench(args) -> tuple:
    """(document, exit code): the micro-benchmarks, or ``{"error": ...}`` with exit 1 where torch cannot
    run them (an onnxruntime-only board)."""
    from devices.ondevice import microbench

    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - any import failure: no torch limits on this board
        return {"format": microbench.FORMAT, "version": microbench.VERSION,
                "error": f"torch is not importable here: {type(exc).__name__}: {exc}"}, 1
    try:
        return microbench.run(torch, model_shapes=args.shapes, min_s=args.min_s, threads=args.threads,
                              quantized_engine=args.quantized_engine), 0
    except Exception as exc:  # noqa: BLE001 - reported, not raised: the controller stores why
        return {"format": microbench.FORMAT, "version": microbench.VERSION,
                "error": f"{type(exc).__name__}: {str(exc)[:300]}"}, 1


if __name__ == "__main__":
    sys.exit(main())
