"""Command line: `python -m msdgcn {batch,train,report,evaluate,convert,predict,download} ...`."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from . import __version__


def train_config(args: argparse.Namespace):
    """Resolve the RunConfig that the `train` command's arguments describe."""
    from .profiles import resolve_run
    from .run import TRAIN_OPTIONS

    overrides: dict = {}
    for _, key, _, _ in TRAIN_OPTIONS:
        group, _, name = key.rpartition(".")
        target = overrides.setdefault(group, {}) if group else overrides
        target[name] = getattr(args, key.replace(".", "_"))
    return resolve_run(args.profile, args.variant, args.dataset, args.data_root, overrides)


def _train_command(args: argparse.Namespace) -> int:
    from .distributed import context_from_environment
    from .engine import TrainingInterrupted
    from .run import run_dir_for, train_run

    config = train_config(args)
    run_dir = run_dir_for(args.results, config)
    try:
        result = train_run(config, run_dir, resume=not args.no_resume, progress=not args.no_progress)
    except TrainingInterrupted as interruption:  # the trainer has logged what to do next
        return 128 + interruption.signal_number
    if context_from_environment().is_main:
        print(json.dumps(result["table3"], indent=2))
    return 0


def add_train_arguments(train: argparse.ArgumentParser) -> None:
    from .batch import REPO_ROOT
    from .data import DATASETS
    from .profiles import PROFILES
    from .run import TRAIN_OPTIONS

    train.add_argument("--profile", default="cpu", choices=sorted(PROFILES), help="run scale (default: cpu)")
    train.add_argument("--variant", required=True, help="a variant of the profile, such as a-e, gap or head-e")
    train.add_argument("--dataset", default="coco-subset", choices=DATASETS, help="dataset (default: coco-subset)")
    train.add_argument("--data-root", required=True, help="folder that contains the dataset")
    train.add_argument("--results", default=str(REPO_ROOT / "results"), help="results root folder")
    for option, key, kind, text in TRAIN_OPTIONS:
        destination = key.replace(".", "_")
        if kind is bool:
            action = argparse.BooleanOptionalAction
            train.add_argument(option, dest=destination, action=action, default=None, help=f"{text} (default: the profile's)")
        else:
            train.add_argument(option, dest=destination, type=kind, default=None, help=f"{text} (default: the profile's)")
    train.add_argument("--no-resume", action="store_true", help="ignore checkpoints/last.pt")
    train.add_argument("--no-progress", action="store_true", help="log one line per epoch, no progress bar")


def _report_command(args: argparse.Namespace) -> int:
    from .report import build_report

    build_report(args.profile, results_root=args.results)
    return 0


def _convert_command(args: argparse.Namespace) -> int:
    from .convert import convert_checkpoint

    payload = convert_checkpoint(args.source, args.destination, args.format)
    summary = {key: payload["source"][key] for key in ("path", "sha256", "epoch", "best_score")}
    print(json.dumps({"destination": args.destination, **summary}, indent=2))
    return 0


def _predict_command(args: argparse.Namespace) -> int:
    from .predict import predict_images

    predict_images(
        args.checkpoint, args.images, args.output, args.threshold, args.batch_size, args.device
    )
    return 0


def _add_inference_parsers(commands) -> None:
    from .convert import OFFICIAL_FORMAT
    from .download import add_download_arguments, run_download
    from .predict import DEFAULT_THRESHOLD

    convert = commands.add_parser("convert", help="convert an official ADD-GCN checkpoint into ours")
    convert.add_argument("--format", default=OFFICIAL_FORMAT, choices=[OFFICIAL_FORMAT],
                         help="layout of the source checkpoint")
    convert.add_argument("source", help="official checkpoint (.pth with a 'state_dict')")
    convert.add_argument("destination", help="where to write the converted checkpoint (.pt)")
    convert.set_defaults(handler=_convert_command)

    predict = commands.add_parser("predict", help="label image files with a checkpoint, as JSON lines")
    predict.add_argument("checkpoint", help="checkpoint of this package (trained or converted)")
    predict.add_argument("images", nargs="+", help="image files")
    predict.add_argument("--output", required=True, help="JSONL file to write, one line per image")
    predict.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                         help="a label is predicted when its probability >= this value (default: %(default)s)")
    predict.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    predict.add_argument("--device", default="cpu", help="torch device, for example cpu or cuda:0")
    predict.set_defaults(handler=_predict_command)

    download = commands.add_parser("download", help="download and extract VOC or COCO 2014")
    add_download_arguments(download)
    download.set_defaults(handler=run_download)


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

    train = commands.add_parser(
        "train",
        help="train one variant without a notebook; under torchrun, one process per GPU (DDP)",
    )
    add_train_arguments(train)
    train.set_defaults(handler=_train_command)

    report = commands.add_parser(
        "report", help="execute the tables, figures, per-class and attention notebooks into results/"
    )
    from .profiles import PROFILES

    report.add_argument("--profile", default="cpu", choices=sorted(PROFILES), help="profile whose runs to report (default: cpu)")
    report.add_argument("--results", default=str(REPO_ROOT / "results"), help="results root folder")
    report.set_defaults(handler=_report_command)

    evaluate = commands.add_parser("evaluate", help="metrics from a predictions CSV and a labels CSV")
    add_evaluate_arguments(evaluate)
    evaluate.set_defaults(handler=run_evaluate)

    _add_inference_parsers(commands)
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
