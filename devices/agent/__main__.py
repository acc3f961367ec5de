"""edgebench device agent: ``measure`` a variant (prints one JSON record) or print the device's ``facts``.

    python3 edgebench_agent.py measure --artifact DIR --variant NAME [--processes 3 --warmup 2
        --min-iters 10 --min-seconds 5 --max-iters 200 --threads N --timeout S
        --sentences short,medium,long --seed 0 --hot-limit 80 --work-dir DIR]
    python3 edgebench_agent.py facts

stdout carries exactly one JSON document; logs go to stderr. Exit status: 0 record ok, 1 record
failed (still printed), 2 bad arguments (nothing printed). Standard library only here; Python 3.8+.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from devices.agent import facts as facts_mod
from devices.agent import supervisor
from devices.agent.format import FACTS_FORMAT, FACTS_VERSION, STATUS_OK

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


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgebench-agent", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    m = sub.add_parser("measure", help="measure one variant in fresh processes; print the record")
    m.add_argument("--artifact", required=True, help="artifact directory on this device")
    m.add_argument("--variant", required=True, help="variant name to put in the record")
    m.add_argument("--processes", type=_positive_int, default=3)
    m.add_argument("--warmup", type=_non_negative_int, default=2)
    m.add_argument("--min-iters", type=_positive_int, default=10)
    m.add_argument("--min-seconds", type=_non_negative_float, default=5.0)
    m.add_argument("--max-iters", type=_positive_int, default=200)
    m.add_argument("--threads", type=_positive_int, default=None)
    m.add_argument("--timeout", type=_non_negative_float, default=900.0, help="seconds for all processes")
    m.add_argument("--sentences", type=_classes, default=list(LENGTH_CLASSES))
    m.add_argument("--seed", type=_non_negative_int, default=0)
    m.add_argument("--sentence-ids", type=_ids, default=None,
                   help="only these corpus sentences, e.g. short-01 (default: all of --sentences)")
    m.add_argument("--hot-limit", type=_non_negative_float, default=80.0, help="degrees C")
    m.add_argument("--work-dir", default=None, help="where the device lock lives (default: from --artifact)")
    m.add_argument("--poll-interval", type=_non_negative_float, default=supervisor.POLL_INTERVAL_S,
                   help="seconds between /proc samples of the worker")
    sub.add_parser("facts", help="print the device facts as JSON")
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
        if args.command == "facts":
            facts = facts_mod.collect(import_torch=True)
            doc = {"format": FACTS_FORMAT, "version": FACTS_VERSION, "facts": facts}
            code = 0
        else:
            if args.min_iters > args.max_iters:
                parser.error(f"--min-iters ({args.min_iters}) is larger than --max-iters ({args.max_iters})")
            doc = supervisor.measure(
                artifact=args.artifact, variant=args.variant, processes=args.processes, warmup=args.warmup,
                min_iters=args.min_iters, min_seconds=args.min_seconds, max_iters=args.max_iters,
                threads=args.threads, timeout_s=args.timeout, sentences=args.sentences, seed=args.seed,
                hot_limit_c=args.hot_limit, work_dir=args.work_dir, poll_interval=args.poll_interval,
                sentence_ids=args.sentence_ids,
            )
            code = 0 if doc["status"] == STATUS_OK else 1
    finally:
        sys.stdout = real_stdout
    sys.stdout.write(json.dumps(doc, separators=(",", ":")) + "\n")
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
