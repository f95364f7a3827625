"""Inference with a saved checkpoint: labels for image files, and metrics on a dataset split.

Both read checkpoints of this package (training checkpoints and converted official ones) through
`engine.load_checkpoint` and `models.build_model`, and apply the checkpoint's own test transform:
a square resize and the normalisation its backbone weights expect.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .data import ImageDecodeError, MultiLabelDataset, build_dataset, build_test_transform, load_image
from .engine import load_checkpoint, make_loader, predict
from .metrics import multilabel_metrics, write_text_atomically
from .models import ModelConfig, build_model
from .profiles import RunConfig
from .run import normalisation, take_first

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5
# Unreadable images listed in full in an error message before the rest are only counted.
LISTED_FAILURES = 20


@dataclass
class LoadedCheckpoint:
    """A model rebuilt from a checkpoint, in eval mode, with what inference needs."""

    model: nn.Module
    class_names: list[str]
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    payload: dict[str, Any]

    def test_transform(self, image_size: int | None = None):
        """Build the checkpoint's test transform, optionally at another square size."""
        return build_test_transform(image_size or self.image_size, self.mean, self.std)


def load_model_from_checkpoint(path: str | os.PathLike, device: str = "cpu") -> LoadedCheckpoint:
    """Rebuild the model of a checkpoint of this package and load its weights (strict).

    The backbone is built without pretrained weights, since the checkpoint replaces them all, so
    loading never needs the internet. The test transform comes from the checkpoint's
    `test_transform` entry when it has one (converted checkpoints), else from its run config.
    """
    payload = load_checkpoint(
        Path(path), advice="pass a checkpoint written by `python -m msdgcn train` or `python -m msdgcn convert`"
    )
    config = RunConfig.from_dict(payload["config"])
    class_names = [str(name) for name in payload["class_names"]]
    model_config = ModelConfig(
        **{**config.model, "num_classes": len(class_names), "pretrained": None}
    )
    model = build_model(model_config)
    state = {key.removeprefix("module."): value for key, value in payload["model"].items()}
    model.load_state_dict(state)
    model.to(device).eval()

    transform = payload.get("test_transform")
    if transform is not None:
        height, width = transform["resize"]
        if height != width:
            raise ValueError(f"{path}: test_transform resize {transform['resize']} is not square")
        image_size, mean, std = int(height), tuple(transform["mean"]), tuple(transform["std"])
    else:
        mean, std = normalisation(config.model)
        image_size = config.image_size
    return LoadedCheckpoint(model, class_names, image_size, mean, std, payload)


def check_images_readable(paths: Sequence[str | os.PathLike]) -> None:
    """Decode every image once; raise ImageDecodeError listing every file that fails."""
    failures = []
    for path in paths:
        try:
            load_image(path, advice="Replace the file, or leave it out of the command.")
        except ImageDecodeError as error:
            failures.append(str(error))
    if failures:
        listed = "\n  ".join(failures[:LISTED_FAILURES])
        more = len(failures) - LISTED_FAILURES
        tail = f"\n  ... and {more} more" if more > 0 else ""
        raise ImageDecodeError(
            f"{len(failures)} of {len(paths)} images cannot be read, so no predictions were "
            f"written. Fix or leave out these files and run again:\n  {listed}{tail}"
        )


def prediction_records(
    image_names: Sequence[str], probabilities: np.ndarray, class_names: Sequence[str], threshold: float
) -> list[dict[str, Any]]:
    """Return one record per image: its name, its labels and every class probability p.

    The labels are the classes with p >= threshold, highest p first, and equal p in class order.
    """
    records = []
    for name, row in zip(image_names, probabilities):
        order = np.argsort(-row, kind="stable")
        labels = [class_names[index] for index in order if row[index] >= threshold]
        records.append(
            {
                "image": name,
                "labels": labels,
                "probabilities": {class_name: float(p) for class_name, p in zip(class_names, row)},
            }
        )
    return records


def predict_images(
    checkpoint: str | os.PathLike,
    images: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    threshold: float = DEFAULT_THRESHOLD,
    batch_size: int = 8,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """Label image files with a checkpoint and write one JSON line per image to `output`.

    Each line is {"image": path as given, "labels": [...], "probabilities": {class: p}}, where
    a label is predicted when its sigmoid probability >= `threshold`. Every image is decoded
    before the model runs. If any image is missing or corrupt, ImageDecodeError lists them all
    and `output` is left as it was. The output is written atomically. Returns the records.
    """
    if not images:
        raise ValueError("no image files given; pass at least one image path")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a probability in [0, 1], got {threshold}")
    check_images_readable(images)

    loaded = load_model_from_checkpoint(checkpoint, device)
    dataset = MultiLabelDataset(
        name="images",
        class_names=loaded.class_names,
        image_ids=[str(path) for path in images],
        image_paths=list(images),
        targets=np.zeros((len(images), len(loaded.class_names)), dtype=np.int8),
        transform=loaded.test_transform(),
    )
    loader = make_loader(dataset, batch_size, train=False, num_workers=0)
    probabilities = predict(loaded.model, loader, torch.device(device))

    records = prediction_records(dataset.image_ids, probabilities, loaded.class_names, threshold)
    text = "".join(json.dumps(record) + "\n" for record in records)
    write_text_atomically(output, text)
    logger.info(
        "wrote predictions for %d images to %s (labels at probability >= %g)",
        len(records), output, threshold,
    )  # fmt: skip
    return records


def evaluate_checkpoint(
    checkpoint: str | os.PathLike | LoadedCheckpoint,
    dataset: str,
    data_root: str | os.PathLike,
    split: str = "val",
    image_size: int | None = None,
    max_images: int | None = None,
    batch_size: int = 8,
    device: str = "cpu",
) -> tuple[dict[str, Any], np.ndarray, MultiLabelDataset]:
    """Evaluate a checkpoint on a dataset split; return (metrics, probabilities, dataset).

    `checkpoint` is a file or a model already loaded by `load_model_from_checkpoint`.
    `image_size` None keeps the checkpoint's own test size. The dataset's classes must be the
    checkpoint's, in any order; the probability columns follow the dataset's order.
    """
    if isinstance(checkpoint, LoadedCheckpoint):
        loaded = checkpoint
    else:
        loaded = load_model_from_checkpoint(checkpoint, device)
    data = build_dataset(dataset, data_root, split)
    if sorted(data.class_names) != sorted(loaded.class_names):
        raise ValueError(
            f"the checkpoint predicts {len(loaded.class_names)} classes that differ from the "
            f"{data.num_classes} classes of dataset {dataset!r}; evaluate it on the dataset it "
            "was trained for"
        )
    data = take_first(data, max_images).with_transform(loaded.test_transform(image_size))
    loader = make_loader(data, batch_size, train=False, num_workers=0)
    probabilities = predict(loaded.model, loader, torch.device(device))
    column = {name: index for index, name in enumerate(loaded.class_names)}
    probabilities = probabilities[:, [column[name] for name in data.class_names]]
    metrics = multilabel_metrics(probabilities, data.targets, data.class_names)
    return metrics, probabilities, data


TABLE1_COLUMNS = ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1")


def table1_row(metrics: dict[str, Any]) -> dict[str, float]:
    """Return Table 1's columns in percent: mAP, then CP ... OF1 for all labels and for top-3."""
    row = {"mAP": 100 * metrics["mAP"]}
    for name in TABLE1_COLUMNS[1:]:
        row[f"all {name}"] = 100 * metrics[name]
    for name in TABLE1_COLUMNS[1:]:
        row[f"top-3 {name}"] = 100 * metrics["top3"][name]
    return row
