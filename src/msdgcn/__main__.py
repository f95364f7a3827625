"""Command line: `python -m msdgcn {batch,train,report,evaluate} ...`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from . import __version__


TRAIN_OVERRIDES = (
    ("--epochs", "epochs", int, "number of epochs"),
    ("--image-size", "image_size", int, "square input size in pixels"),
    ("--batch-size", "batch_size", int, "images per batch"),
    ("--seed", "seed", int, "random seed"),
    ("--device", "device", str, "torch device, for example cpu or cuda:0"),
    ("--max-train-images", "max_train_images", int, "train on the first N images only"),
    ("--max-val-images", "max_val_images", int, "evaluate on the first N images only"),
)


def _train_command(args: argparse.Namespace) -> int:
    from .engine import TrainingInterrupted
    from .profiles import resolve_run
    from .run import run_dir_for, train_run

    overrides = {name: getattr(args, name) for _, name, _, _ in TRAIN_OVERRIDES}
    config = resolve_run(args.profile, args.variant, args.dataset, args.data_root, overrides)
    run_dir = run_dir_for(args.results, config)
    try:
        result = train_run(config, run_dir, resume=not args.no_resume, progress=not args.no_progress)
    except TrainingInterrupted as interruption:  # the trainer has logged what to do next
        return 128 + interruption.signal_number
    print(json.dumps(result["table3"], indent=2))
    return 0


def _report_command(args: argparse.Namespace) -> int:
    from .report import build_report

    build_report(args.profile, results_root=args.results)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .batch import REPO_ROOT, add_batch_arguments, run_batch_command
    from .metrics import add_evaluate_arguments, run_evaluate

    parser = argparse.ArgumentParser(prog="python -m msdgcn", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True)

    batch = commands.add_parser("batch", help="run the variants of a profile through papermill")
    add_batch_arguments(batch)
    batch.set_defaults(handler=run_batch_command)

    train = commands.add_parser("train", help="train one variant without a notebook")
    train.add_argument("--profile", default="cpu")
    train.add_argument("--variant", required=True)
    train.add_argument("--dataset", default="coco-subset")
    train.add_argument("--data-root", required=True)
    train.add_argument("--results", default=str(REPO_ROOT / "results"))
    for option, name, kind, text in TRAIN_OVERRIDES:
        train.add_argument(option, dest=name, type=kind, default=None, help=f"{text} (default: the profile's)")
    train.add_argument("--no-resume", action="store_true", help="ignore checkpoints/last.pt")
    train.add_argument("--no-progress", action="store_true", help="log one line per epoch, no progress bar")
    train.set_defaults(handler=_train_command)

    report = commands.add_parser(
        "report", help="execute the tables, figures, per-class and attention notebooks into results/"
    )
    report.add_argument("--profile", default="cpu")
    report.add_argument("--results", default=str(REPO_ROOT / "results"))
    report.set_defaults(handler=_report_command)

    evaluate = commands.add_parser("evaluate", help="metrics from a predictions CSV and a labels CSV")
    add_evaluate_arguments(evaluate)
    evaluate.set_defaults(handler=run_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
