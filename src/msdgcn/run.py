"""One training run from parameters to result files, in the steps the training notebook shows.

    config = resolve_run(...)            # profiles.py
    train_set, val_set = build_run_data(config)
    model = build_run_model(config, train_set.class_names, train_set.targets, results_root)
    trainer = Trainer(...); trainer.fit()
    result = finish_run(config, trainer, run_dir, wall_seconds)

Result files of a run, in `results/<profile>/<dataset>/<variant>/`:
`metrics.json` (metrics of the best epoch, Table 3 columns, protocol, provenance),
`history.csv` (one row per epoch), `predictions.csv` and `labels.csv` (the validation
probabilities and labels behind the metrics, so `python -m msdgcn evaluate` can recompute them).
Checkpoints go to `checkpoints/` in the same folder and stay out of git.

Under torchrun, `train_run` is what every process runs (`python -m msdgcn train`); the
notebook and the batch command build that command line with `torchrun_command`.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch

from . import distributed, provenance
from .data import (
    ImageDecodeError,
    MultiLabelDataset,
    build_dataset,
    build_test_transform,
    build_train_transform,
    check_images_exist,
    find_unreadable_images,
    training_targets,
)
from .engine import Trainer, TrainingInterrupted, load_checkpoint, load_init_weights
from .metrics import write_matrix_csv, write_text_atomically
from .models import ModelConfig, build_model
from .models.backbone import PYPI_LITE0_NORMALIZATION, PYPI_LITE0_SOURCE
from .profiles import RESULTS_ROOT_PLACEHOLDER, RunConfig

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"


def run_dir_for(results_root: str | Path, config: RunConfig) -> Path:
    return Path(results_root) / config.profile / config.dataset / config.variant


def resolve_init_weights(init_weights: str, results_root: str | Path | None) -> Path:
    """Return the fine-tuning weights file, with the results-root placeholder filled in.

    The paper profile's VOC runs start from `{results_root}/paper/coco2014/<variant>/...`, the
    best checkpoint of the same variant on COCO. Raises FileNotFoundError naming the file.
    """
    if RESULTS_ROOT_PLACEHOLDER in init_weights:
        if results_root is None:
            raise ValueError(f"init_weights {init_weights!r} needs the results root folder; pass results_root")
        init_weights = init_weights.replace(RESULTS_ROOT_PLACEHOLDER, str(results_root))
    path = Path(init_weights)
    if not path.is_file():
        advice = "pass an existing file as init_weights (batch --init-weights)"
        parts = path.parts
        if len(parts) >= 5 and parts[-5:-3] == ("paper", "coco2014") and parts[-2:] == ("checkpoints", "best.pt"):
            advice = (
                f"train the COCO run first (python -m msdgcn batch --profile paper --dataset coco2014 "
                f"--variants {parts[-3]} --data-root COCO_DIR), or {advice}"
            )
        raise FileNotFoundError(f"init_weights file not found: {path}; {advice}")
    return path


def build_run_model(
    config: RunConfig,
    class_names: list[str],
    train_targets: np.ndarray | None = None,
    results_root: str | Path | None = None,
) -> torch.nn.Module:
    """Build the variant's model with the dataset's class count and optional fine-tuning init.

    The ML-GCN head needs `train_targets` (N, C), the training split's labels: its correlation
    matrix counts a difficult label (-1) as present only when `config.difficult_as` is
    "positive", as training does, and it stays the run's own after `init_weights` are loaded.
    `results_root` fills the placeholder in `init_weights`.
    """
    model_config = ModelConfig(**{**config.model, "num_classes": len(class_names)})
    label_targets = None
    if model_config.head == "ml-gcn":
        if train_targets is None:
            raise ValueError(
                f"variant {config.variant!r} has an ML-GCN head, which builds its correlation matrix "
                "from the training labels; pass train_targets (train_set.targets)"
            )
        label_targets = training_targets(np.asarray(train_targets), config.difficult_as)
    model = build_model(model_config, class_names, label_targets)
    if config.init_weights:
        path = resolve_init_weights(config.init_weights, results_root)
        own_correlation = model.head.correlation.clone() if model_config.head == "ml-gcn" else None
        load_init_weights(model, path, list(class_names))
        if own_correlation is not None:
            # The weights file may carry the correlation matrix of another training set.
            model.head.correlation.copy_(own_correlation)
    return model


def take_first(dataset: MultiLabelDataset, count: int | None) -> MultiLabelDataset:
    """Return a copy holding only the first `count` images (all of them when count is None)."""
    if count is None or count >= len(dataset):
        return dataset
    subset = copy.copy(dataset)
    subset.image_ids = dataset.image_ids[:count]
    subset.image_paths = dataset.image_paths[:count]
    subset.targets = dataset.targets[:count]
    return subset


def normalisation(model: dict[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Return the input mean and std that the variant's backbone weights expect.

    The values come from the backbone's timm pretrained config (ImageNet's for ours), except for
    the offline EfficientNet-Lite0 weights, which expect mean = std = 0.5.
    """
    if model.get("pretrained") == PYPI_LITE0_SOURCE:
        return PYPI_LITE0_NORMALIZATION["mean"], PYPI_LITE0_NORMALIZATION["std"]
    backbone = model.get("backbone", ModelConfig.backbone)
    pretrained_cfg = timm.models.get_pretrained_cfg(backbone)
    if pretrained_cfg is None:
        raise ValueError(f"timm has no pretrained config for backbone {backbone!r}")
    return tuple(pretrained_cfg.mean), tuple(pretrained_cfg.std)


def build_run_data(config: RunConfig) -> tuple[MultiLabelDataset, MultiLabelDataset]:
    """Read the training and validation splits with the official transforms."""
    mean, std = normalisation(config.model)
    train_set = build_dataset(
        config.dataset, config.data_root, config.train_split, cache_images=config.cache_images
    )
    val_set = build_dataset(
        config.dataset, config.data_root, config.val_split, cache_images=config.cache_images
    )
    train_set = take_first(train_set, config.max_train_images).with_transform(
        build_train_transform(config.image_size, mean, std)
    )
    val_set = take_first(val_set, config.max_val_images).with_transform(
        build_test_transform(config.image_size, mean, std)
    )
    # A missing file fails here, in seconds, instead of in the middle of an epoch.
    check_images_exist(train_set)
    check_images_exist(val_set)
    train_set.skipped_images = []
    if config.skip_unreadable_images:
        train_set = drop_unreadable(train_set)
        # Skipping validation images would change the metric, so those stop the run.
        failures = find_unreadable_images(val_set)
        if failures:
            listed = "\n  ".join(message for _, message in failures[:20])
            raise ImageDecodeError(
                f"{len(failures)} validation images of {config.dataset} cannot be decoded; evaluation "
                f"never skips images because that changes the metric. First ones:\n  {listed}"
            )
    if train_set.class_names != val_set.class_names:
        raise ValueError(
            f"{config.dataset}: the {config.train_split} and {config.val_split} splits list "
            "different classes"
        )
    return train_set, val_set


def drop_unreadable(dataset: MultiLabelDataset) -> MultiLabelDataset:
    """Remove the images that fail to decode; `skipped_images` lists them with the reason."""
    failures = find_unreadable_images(dataset)
    for _, message in failures:
        logger.warning("skipping training image: %s", message)
    kept = dataset.without_rows([index for index, _ in failures])
    kept.skipped_images = [
        {"image": dataset.image_ids[index], "path": str(dataset.image_paths[index]), "error": message}
        for index, message in failures
    ]
    if failures:
        logger.warning("skipped %d of %d training images that cannot be decoded", len(failures), len(dataset))
    return kept


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    write_text_atomically(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def _write_history(path: Path, history: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in history:
        columns += [key for key in row if key not in columns]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    write_text_atomically(path, text.getvalue())


def finish_run(
    config: RunConfig,
    trainer: Trainer,
    run_dir: Path,
    wall_seconds: float,
) -> dict[str, Any]:
    """Evaluate the best checkpoint again and write the run's result files.

    The reported numbers are those of the epoch with the best validation mAP, which is how the
    official ADD-GCN code reports them. On COCO and VOC the validation split is the test split.
    """
    run_dir = Path(run_dir)
    best = load_checkpoint(trainer.best_path)
    if best["epoch"] != trainer.state.best_epoch:
        raise ValueError(
            f"{trainer.best_path} contains epoch {best['epoch']}, but the history's best epoch is "
            f"{trainer.state.best_epoch}; delete {trainer.checkpoint_dir} and train again"
        )
    trainer.model.load_state_dict(best["model"])
    metrics, scores = trainer.evaluate()

    val_set, train_set = trainer.val_set, trainer.train_set
    history = trainer.state.history

    batch_times = [row["batch_time"] for row in history if row.get("batch_time") is not None]
    best_row = next(row for row in history if row["epoch"] == trainer.state.best_epoch)
    result = {
        "variant": config.variant,
        "profile": config.profile,
        "dataset": config.dataset,
        "description": config.description,
        "class_names": list(val_set.class_names),
        "table3": {
            "mAP": metrics["mAP"],
            "CF1": metrics["CF1"],
            "OF1": metrics["OF1"],
            "batch_time": sum(batch_times) / len(batch_times) if batch_times else None,
            "average_loss": best_row["train_loss"],
            "best_epoch": trainer.state.best_epoch,
        },
        "metrics": metrics,
        "skipped_images": {
            "count": len(getattr(train_set, "skipped_images", [])),
            "images": getattr(train_set, "skipped_images", []),
        },
        "final_epoch": {k: history[-1][k] for k in ("epoch", "mAP", "CF1", "OF1", "train_loss")},
        "protocol": {
            "selection": "epoch with the best validation mAP (as the official ADD-GCN code reports)",
            "train_split": config.train_split,
            "val_split": config.val_split,
            "image_size": config.image_size,
            "epochs": config.epochs,
            "batch_time": "mean seconds per training batch, data loading included, first batch "
            "of each epoch excluded, averaged over epochs",
            "average_loss": "mean training loss over the images of the best epoch",
            **metrics["protocol"],
        },
        "provenance": {
            "seed": config.seed,
            "world_size": trainer.context.world_size,
            "git": trainer.code_version,
            "packages": provenance.package_versions(),
            "hardware": provenance.hardware(config.device),
            "wall_seconds": wall_seconds,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "train_data": provenance.dataset_fingerprint(
                train_set.image_ids, train_set.targets, train_set.class_names
            ),
            "val_data": provenance.dataset_fingerprint(
                val_set.image_ids, val_set.targets, val_set.class_names
            ),
        },
        "config": config.to_dict(),
    }
    if trainer.context.is_main:
        _write_result_files(run_dir, result, scores, trainer)
    trainer.context.barrier()
    return result


def _write_result_files(run_dir: Path, result: dict[str, Any], scores, trainer: Trainer) -> None:
    val_set = trainer.val_set
    run_dir.mkdir(parents=True, exist_ok=True)
    write_matrix_csv(run_dir / "predictions.csv", val_set.image_ids, val_set.class_names, scores)
    write_matrix_csv(
        run_dir / "labels.csv", val_set.image_ids, val_set.class_names, val_set.targets, fmt="%d"
    )
    _write_history(run_dir / "history.csv", trainer.state.history)
    # metrics.json is written last: its presence marks the run as finished for the batch command.
    _write_json_atomic(run_dir / METRICS_FILE, result)
    logger.info("wrote %s", run_dir / METRICS_FILE)


def train_run(config: RunConfig, run_dir: Path, resume: bool = True, progress: bool = True) -> dict:
    """Run every step without a notebook: the entry point for scripts and `python -m msdgcn train`.

    `run_dir` is `run_dir_for(results_root, config)`, so the results root is three folders up.
    Under torchrun each process joins the process group first and trains its share; every rank
    returns the result, and rank 0 alone writes it.
    """
    start = time.perf_counter()
    joined = not distributed.is_initialized()
    context = distributed.init_process_group(config.device)
    distributed.quiet_other_ranks(context)
    try:
        torch.manual_seed(config.seed)
        train_set, val_set = build_run_data(config)
        results_root = Path(run_dir).resolve().parents[2]
        model = build_run_model(config, train_set.class_names, train_set.targets, results_root)
        checkpoint_dir = Path(run_dir) / "checkpoints"
        trainer = Trainer(config, model, train_set, val_set, checkpoint_dir, progress, context)
        if resume:
            trainer.resume()
        trainer.fit()
        return finish_run(config, trainer, run_dir, time.perf_counter() - start)
    finally:
        if joined:
            distributed.destroy_process_group()


# Run parameters as `train` command-line options: (option, RunConfig key, type, help).
# "optim.lr" is the `lr` of the `optim` group. Booleans take --name and --no-name.
TRAIN_OPTIONS = (
    ("--epochs", "epochs", int, "number of epochs"),
    ("--image-size", "image_size", int, "square input size in pixels"),
    ("--batch-size", "batch_size", int, "global batch size: images per step over all processes"),
    ("--lr", "optim.lr", float, "head learning rate; the backbone gets it times backbone_lr_mult"),
    ("--seed", "seed", int, "random seed"),
    ("--device", "device", str, "torch device, for example cpu or cuda (cuda:<local rank> under torchrun)"),
    ("--num-workers", "num_workers", int, "data loading processes per training process"),
    ("--threads", "threads", int, "torch intra-op threads per process"),
    ("--precision", "precision", str, "fp32, or autocast to bf16 or fp16"),
    ("--channels-last", "channels_last", bool, "NHWC memory format for the model"),
    ("--compile", "compile", bool, "torch.compile the model"),
    ("--concurrent-runs", "concurrent_runs", int, "runs sharing the machine, recorded with batch times"),
    ("--max-train-images", "max_train_images", int, "train on the first N images only"),
    ("--max-val-images", "max_val_images", int, "evaluate on the first N images only"),
    ("--init-weights", "init_weights", str, "weights-only start from this checkpoint or state dict"),
    ("--skip-unreadable-images", "skip_unreadable_images", bool, "drop training images that fail to decode"),
    ("--deterministic", "deterministic", bool, "deterministic GPU kernels only"),
)


def config_value(config: dict[str, Any], key: str) -> Any:
    """Read a RunConfig dict entry by a TRAIN_OPTIONS key such as "optim.lr"."""
    value: Any = config
    for part in key.split("."):
        value = value.get(part)
    return value


def train_arguments(config: RunConfig, results_root: str | Path) -> list[str]:
    """Return the `python -m msdgcn train` arguments that rebuild exactly this config.

    Every TRAIN_OPTIONS value is spelled out, except those that are None: None means the
    profile's value, which is None too.
    """
    values = config.to_dict()
    arguments = [
        "--profile", config.profile, "--variant", config.variant, "--dataset", config.dataset,
        "--data-root", str(config.data_root), "--results", str(results_root),
    ]  # fmt: skip
    for option, key, kind, _ in TRAIN_OPTIONS:
        value = config_value(values, key)
        if value is None:
            continue
        if kind is bool:
            arguments.append(option if value else "--no-" + option.removeprefix("--"))
        else:
            arguments += [option, str(value)]
    return arguments


def torchrun_command(
    config: RunConfig,
    results_root: str | Path,
    nproc_per_node: int,
    launcher: tuple[str, ...] = ("torchrun",),
    rendezvous: tuple[str, ...] = ("--standalone",),
    shutdown_timeout: int = 120,
) -> list[str]:
    """Return a torchrun command line that trains this config in `nproc_per_node` processes.

    `rendezvous` contains torchrun's options that find the other processes: `--standalone` for
    one machine, or for several, for example
    `("--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", "HOST:PORT")`.
    On SIGTERM, torchrun forwards the signal and kills its processes `shutdown_timeout` seconds
    later (torch 2.14 waits 30 s by default), which must leave time for one step and a checkpoint.
    """
    return [
        *launcher, *rendezvous, "--shutdown-timeout", str(shutdown_timeout),
        "--nproc-per-node", str(nproc_per_node), "-m", "msdgcn", "train",
        "--no-progress", *train_arguments(config, results_root),
    ]  # fmt: skip


def launch_torchrun(
    config: RunConfig,
    results_root: str | Path,
    nproc_per_node: int,
    resume: bool = True,
) -> dict[str, Any]:
    """Train the config under torchrun on this machine and return the result that rank 0 wrote.

    The processes start in this process's working folder, so relative paths in the config stay
    valid, and their log lines are passed on to this process's log. The rendezvous listens on
    127.0.0.1 only. Ctrl-C (KeyboardInterrupt) sends SIGTERM to torchrun, whose processes write
    a resumable checkpoint, and raises TrainingInterrupted.
    """
    port = distributed.free_port()
    command = torchrun_command(
        config,
        results_root,
        nproc_per_node,
        launcher=(sys.executable, "-m", "torch.distributed.run"),
        rendezvous=("--nnodes", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}"),
    )
    if not resume:
        command.append("--no-resume")
    environment = {**os.environ, "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")}
    logger.info("launching: %s", shlex.join(command))
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment
    )
    try:
        for line in process.stdout:
            logger.info("torchrun: %s", line.rstrip())
        process.wait()
    except KeyboardInterrupt:
        process.send_signal(signal.SIGTERM)
        process.wait()
        raise TrainingInterrupted(
            "interrupted: the torchrun processes wrote a checkpoint; run again to continue",
            signal.SIGINT,
        ) from None
    if process.returncode != 0:
        raise RuntimeError(
            f"torchrun exited with status {process.returncode}; its log lines above name the error"
        )
    metrics_path = run_dir_for(results_root, config) / METRICS_FILE
    return json.loads(metrics_path.read_text())
