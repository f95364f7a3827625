"""Attention maps and graphs of a trained model: what SAM looks at and what D-GCN links.

The maps and adjacency matrices shown are the tensors that `MultiLabelModel.forward_details`
returns for an image, never recomputed another way:

- ADD-GCN head: SAM's class activation maps M (B, C, h, w). SAM weights the feature map by
  sigmoid(M_c) in eq. (1), so that sigmoid is the attention map of class c. D-GCN adds the
  static adjacency A_s (C, C) and the image's dynamic adjacency A_d (B, C, C) of eq. (2).
- GAP head: class activation maps, the classifier applied at every position (B, C, h, w).

Orientation. In D-GCN, node i receives sum_j A_s[i, j] v_j from the static graph, but node j
receives sum_i A_d[i, j] h_i from the dynamic graph (see `models.heads.DynamicGCN`). So
`AdjacencyView` shows both as "row = receiving class, column = sending class": A_s as it is
and A_d transposed.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import NamedTuple

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from PIL import Image
from scipy import special, stats

from .batch import REPO_ROOT
from .data import MultiLabelDataset
from .engine import load_checkpoint
from .models.mlgcn import label_cooccurrence as mlgcn_label_cooccurrence
from .figures import SEABORN_STYLE, save_figure
from .metrics import predict_labels
from .models import MultiLabelModel
from .per_class import add_caption
from .profiles import RunConfig
from .run import build_run_data, build_run_model

logger = logging.getLogger(__name__)

# The checkpoint the attention notebook reads by default, relative to the repository root:
# the best epoch of the cpu profile's head-e run, which `bash scripts/main_job.sh` trains.
DEFAULT_CHECKPOINT = Path("results/cpu/coco-subset/head-e/checkpoints/best.pt")
# Lowest A_d value on the heat map's log colour scale. Smaller values get its colour.
DYNAMIC_FLOOR = 1e-12


# --------------------------------------------------------------------------- loading


def train_command_for(checkpoint_path: str | PathLike[str]) -> str:
    """Return the command that writes a checkpoint at `results/<profile>/<dataset>/<variant>/checkpoints/`.

    The profile, dataset and variant are read from the path. A path of another layout gets the
    default cpu head-e command.
    """
    parts = Path(checkpoint_path).parts
    profile, dataset, variant = "cpu", "coco-subset", "head-e"
    if len(parts) >= 5 and parts[-2] == "checkpoints":
        profile, dataset, variant = parts[-5], parts[-4], parts[-3]
    data_root = "../shared/data/coco-subset" if dataset.startswith("coco-subset") else "DIR"
    return (
        f"python -m msdgcn train --profile {profile} --dataset {dataset} --variant {variant} "
        f"--data-root {data_root}"
    )


@dataclass
class TrainedRun:
    """A model restored from a training checkpoint, with the run's parameters.

    Attributes:
        checkpoint: the checkpoint file.
        config: the RunConfig stored in the checkpoint.
        model: the model in eval mode with the checkpoint's weights.
        class_names: the C class names, in the model's output order.
        epoch: the epoch after which the checkpoint was written.
    """

    checkpoint: Path
    config: RunConfig
    model: MultiLabelModel
    class_names: list[str]
    epoch: int

    @property
    def head(self) -> str:
        return self.model.config.head

    def describe(self) -> str:
        """Name the run for a figure caption: profile, dataset, variant, scale, seed and epoch."""
        config = self.config
        return (
            f"profile {config.profile}, dataset {config.dataset}, variant {config.variant} "
            f"({self.model.config.backbone}, {self.head} head); scale: {config.image_size} px, "
            f"epoch {self.epoch} of {config.epochs}; seed {config.seed}"
        )


def load_trained_run(checkpoint_path: str | PathLike[str]) -> TrainedRun:
    """Restore the model of a training checkpoint through `engine.load_checkpoint` and `build_run_model`.

    The backbone is built without pretrained weights and without `init_weights`, because the
    checkpoint replaces every tensor: nothing is downloaded and no other file is read. Raises
    FileNotFoundError, naming the command that trains the run, when the checkpoint is missing.
    """
    path = Path(checkpoint_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint not found: {path}. Checkpoints are not in git, so train the run with "
            f"`{train_command_for(path)}`, or with `bash scripts/main_job.sh` for the cpu profile "
            "(add --force where the run's results are already committed, because the main job "
            "skips finished runs). Or pass another best.pt as the `checkpoint` parameter."
        )
    payload = load_checkpoint(path)
    config = RunConfig.from_dict(payload["config"])
    offline = dataclasses.replace(config, model={**config.model, "pretrained": None}, init_weights=None)
    model = build_run_model(offline, list(payload["class_names"]))
    # A run saved from inside DataParallel or DDP prefixes every key with "module.".
    model.load_state_dict({key.removeprefix("module."): value for key, value in payload["model"].items()})
    model.eval()
    logger.info("loaded %s (variant %s, epoch %d)", path, config.variant, payload["epoch"])
    return TrainedRun(path, config, model, list(payload["class_names"]), int(payload["epoch"]))


def load_run_data(
    config: RunConfig, data_root: str | PathLike[str] | None = None
) -> tuple[MultiLabelDataset, MultiLabelDataset]:
    """Read the run's training and validation splits with its own transforms (`run.build_run_data`).

    `data_root` replaces the folder stored in the run's parameters. The stored folder may be
    relative to the notebooks folder (batch runs) or to the repository root (`train` runs), so
    when it does not exist from the working directory, the repository root is tried next.
    """
    if data_root is None:
        stored = Path(config.data_root)
        from_repository = REPO_ROOT / stored
        if not stored.exists() and not stored.is_absolute() and from_repository.exists():
            data_root = from_repository
    if data_root is not None:
        config = dataclasses.replace(config, data_root=str(data_root))
    return build_run_data(config)


def select_images(
    dataset: MultiLabelDataset,
    details: "ModelDetails",
    image_ids: list[str] | None,
    count: int,
    threshold: float = 0.5,
    min_labels: int = 2,
) -> list[int]:
    """Select the dataset rows to show, in dataset order.

    With `image_ids`, their rows. Otherwise the first `count` images that have at least
    `min_labels` true labels and at least one predicted class (probability >= threshold) in
    `details`. When no image qualifies, the first `count` images of `details` are taken and a
    warning is logged. Raises ValueError naming any id not in the dataset.
    """
    if image_ids is not None:
        row_of = {image_id: row for row, image_id in enumerate(dataset.image_ids)}
        unknown = [str(image_id) for image_id in image_ids if str(image_id) not in row_of]
        if unknown:
            raise ValueError(
                f"image ids {unknown} are not in the {dataset.split} split of {dataset.name}. "
                f"Pick ids from that split, such as {dataset.image_ids[:5]}"
            )
        return [row_of[str(image_id)] for image_id in image_ids]
    rows = []
    for row in details.rows:
        probabilities = details.probabilities[details.position(row)]
        labelled = int((dataset.targets[row] == 1).sum()) >= min_labels
        if labelled and predicted_classes(probabilities, threshold):
            rows.append(row)
        if len(rows) == count:
            return rows
    if not rows:
        logger.warning(
            "no image of %s has %d or more labels and a class with probability >= %g, so the first %d "
            "images are shown", dataset.name, min_labels, threshold, count,
        )  # fmt: skip
        rows = details.rows[:count]
    return rows


# --------------------------------------------------------------------------- model outputs


@dataclass
class ModelDetails:
    """The outputs of `forward_details` for a list of dataset rows, as numpy arrays.

    Attributes:
        head: "add-gcn" or "gap".
        rows: the N dataset rows, in the order of the arrays.
        probabilities: (N, C) sigmoid of the logits.
        activation_maps: (N, C, h, w) before any sigmoid, at the backbone's feature resolution.
        dynamic_adjacency: A_d (N, C, C), or None for the GAP head.
        static_adjacency: A_s (C, C), or None for the GAP head.
    """

    head: str
    rows: list[int]
    probabilities: np.ndarray
    activation_maps: np.ndarray
    dynamic_adjacency: np.ndarray | None
    static_adjacency: np.ndarray | None

    def position(self, row: int) -> int:
        """Return the array index of dataset row `row`."""
        return self.rows.index(row)


@torch.no_grad()
def compute_details(
    model: MultiLabelModel, dataset: MultiLabelDataset, rows: list[int] | None = None, batch_size: int = 16
) -> ModelDetails:
    """Run `model.forward_details` on dataset rows (all when None), batch by batch, in eval mode."""
    rows = list(range(len(dataset))) if rows is None else [int(row) for row in rows]
    model.eval()
    collected: dict[str, list[np.ndarray]] = {}
    static_adjacency = None
    for start in range(0, len(rows), batch_size):
        images = torch.stack([dataset[row][0] for row in rows[start : start + batch_size]])
        details = model.forward_details(images)
        collected.setdefault("probabilities", []).append(torch.sigmoid(details["logits"]).numpy())
        collected.setdefault("activation_maps", []).append(details["activation_maps"].numpy())
        if "dynamic_adjacency" in details:
            collected.setdefault("dynamic_adjacency", []).append(details["dynamic_adjacency"].numpy())
            static_adjacency = details["static_adjacency"].numpy().copy()
    joined = {name: np.concatenate(parts) for name, parts in collected.items()}
    return ModelDetails(
        head=model.config.head,
        rows=rows,
        probabilities=joined["probabilities"].astype(np.float64),
        activation_maps=joined["activation_maps"],
        dynamic_adjacency=joined.get("dynamic_adjacency"),
        static_adjacency=static_adjacency,
    )


def predicted_classes(probabilities: np.ndarray, threshold: float = 0.5, max_classes: int | None = None) -> list[int]:
    """Return the classes predicted for one image (C,), most probable first.

    The rule is `metrics.predict_labels`: probability >= threshold, and with `max_classes` only
    among that many highest probabilities.
    """
    predicted = predict_labels(np.asarray(probabilities)[None, :], threshold, max_classes)[0]
    return sorted(np.flatnonzero(predicted).tolist(), key=lambda c: -probabilities[c])


class Overlay(NamedTuple):
    """One class's attention map for one image, at the feature-map resolution (h, w)."""

    class_index: int
    class_name: str
    probability: float
    attention: np.ndarray


def attention_overlays(
    details: ModelDetails, row: int, class_names: list[str], threshold: float = 0.5, max_classes: int | None = None
) -> list[Overlay]:
    """Return one overlay per predicted class of dataset row `row`, most probable first.

    ADD-GCN head: SAM's attention sigmoid(M_c) in [0, 1]. GAP head: the class activation map
    itself, in logit units.
    """
    index = details.position(row)
    probabilities = details.probabilities[index]
    maps = details.activation_maps[index]
    if details.head == "add-gcn":
        maps = special.expit(maps.astype(np.float64))  # the sigmoid SAM applies in eq. (1)
    return [
        Overlay(c, class_names[c], float(probabilities[c]), maps[c])
        for c in predicted_classes(probabilities, threshold, max_classes)
    ]


def upsample_map(attention: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize a map (h, w) bilinearly to (height, width).

    The eval transform resizes the whole image to a square without cropping, so the map
    stretched over the original image lines up with it.
    """
    tensor = torch.as_tensor(np.asarray(attention, dtype=np.float32))[None, None]
    resized = torch.nn.functional.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False)
    return resized[0, 0].numpy()


class AdjacencyView(NamedTuple):
    """The adjacency of one image restricted to K classes, row = receiving, column = sending class.

    dynamic[r, s] = A_d[s, r] and static[r, s] = A_s[r, s] (see the module docstring).
    """

    class_indices: list[int]
    labels: list[str]  # class name with (true) and/or (predicted)
    dynamic: np.ndarray  # (K, K)
    static: np.ndarray  # (K, K)


def adjacency_view(
    details: ModelDetails,
    row: int,
    true_classes: list[int],
    class_names: list[str],
    threshold: float = 0.5,
    max_classes: int | None = None,
) -> AdjacencyView:
    """Restrict the image's A_d and the model's A_s to its predicted and true classes.

    Predicted classes come first, most probable first, then the true classes not predicted.
    Raises ValueError for a model without D-GCN.
    """
    if details.dynamic_adjacency is None or details.static_adjacency is None:
        raise ValueError(f"a {details.head} head has no adjacency matrices, because only the ADD-GCN head has a graph")
    index = details.position(row)
    predicted = predicted_classes(details.probabilities[index], threshold, max_classes)
    classes = predicted + [c for c in true_classes if c not in predicted]
    marks = {c: [] for c in classes}
    for c in true_classes:
        marks[c].append("true")
    for c in predicted:
        marks[c].append("predicted")
    labels = [f"{class_names[c]} ({', '.join(marks[c])})" for c in classes]
    selection = np.ix_(classes, classes)
    dynamic = details.dynamic_adjacency[index].T[selection]
    static = details.static_adjacency[selection]
    return AdjacencyView(classes, labels, dynamic, static)


# --------------------------------------------------------------------------- figures


def plot_attention_grid(
    image: Image.Image,
    overlays: list[Overlay],
    title: str,
    caption: str,
    head: str,
    path: str | PathLike[str] | None = None,
    columns: int = 4,
) -> Figure:
    """Draw the image, then each overlay on it in one panel titled with class and probability.

    SAM maps share the colour scale [0, 1]. Class activation maps (GAP head) are scaled from
    their own minimum to maximum, which the panel title states.
    """
    panels = len(overlays) + 1
    columns = min(columns, panels)
    rows = math.ceil(panels / columns)
    with sns.axes_style("white"):
        panel_height = 3.2 * image.height / image.width + 0.6  # room for a two-line title
        figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, panel_height * rows), squeeze=False)
    flat = axes.ravel()
    flat[0].imshow(image)
    flat[0].set_title(title, fontsize=9)
    for ax, overlay in zip(flat[1:], overlays):
        attention = upsample_map(overlay.attention, image.width, image.height)
        if head == "add-gcn":
            low, high, unit = 0.0, 1.0, "SAM attention"
        else:
            low, high = float(attention.min()), float(attention.max())
            unit = f"CAM {low:.1f} to {high:.1f} logits"
        ax.imshow(image)
        shown = ax.imshow(attention, cmap="magma", alpha=0.55, vmin=low, vmax=high)
        shown.set_gid(f"attention:{overlay.class_name}")
        ax.set_title(f"{overlay.class_name}: p = {overlay.probability:.2f}\n{unit}", fontsize=9)
    if not overlays:
        flat[0].set_xlabel("no class reaches the threshold", fontsize=9)
    for ax in flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in flat[panels:]:
        ax.axis("off")
    figure.tight_layout()
    add_caption(figure, caption)
    if path is not None:
        save_figure(figure, path)
    return figure


def plot_adjacency(view: AdjacencyView, title: str, caption: str, path: str | PathLike[str] | None = None) -> Figure:
    """Draw the image's A_d and the model's A_s over the same classes as two labelled heat maps.

    A_d is a sigmoid output in (0, 1), coloured on a log scale from its smallest shown value
    (at least 1e-12) to 1. A_s is an unconstrained weight, coloured on a linear scale centred
    at 0. With up to 12 classes, each cell shows its value: A_d to two significant digits,
    A_s to two decimals.
    """
    size = len(view.labels)
    width = 4.0 + 0.75 * size
    figure, (ax_dynamic, ax_static) = plt.subplots(1, 2, figsize=(2 * width, 1.0 + 0.6 * size + 2.0))
    annotate = size <= 12
    # A trained A_d can sit many decades below 1, so its colours follow a log scale up to 1.
    floor = max(float(view.dynamic.min()), DYNAMIC_FLOOR)
    sns.heatmap(
        view.dynamic, ax=ax_dynamic, norm=LogNorm(vmin=floor, vmax=1.0, clip=True), cmap="rocket_r",
        square=True, annot=annotate, fmt=".1e", annot_kws={"fontsize": 6},
        xticklabels=view.labels, yticklabels=view.labels,
        cbar_kws={"label": "A_d weight (unitless sigmoid output, log scale)"},
    )  # fmt: skip
    limit = float(np.abs(view.static).max()) or 1.0
    sns.heatmap(
        view.static, ax=ax_static, vmin=-limit, vmax=limit, cmap="vlag", square=True, annot=annotate,
        fmt=".2f", annot_kws={"fontsize": 7}, xticklabels=view.labels, yticklabels=view.labels,
        cbar_kws={"label": "A_s weight (unitless)"},
    )  # fmt: skip
    ax_dynamic.set_title(f"Dynamic adjacency A_d of this image\n{title}", fontsize=9)
    ax_static.set_title("Static adjacency A_s learned by the model", fontsize=9)
    for ax in (ax_dynamic, ax_static):
        ax.set_xlabel("sending class")
        ax.set_ylabel("receiving class")
        ax.tick_params(labelsize=8)
    figure.tight_layout()
    add_caption(figure, caption)
    if path is not None:
        save_figure(figure, path)
    return figure


# --------------------------------------------------------------------------- graph analysis


def label_cooccurrence(targets: np.ndarray) -> np.ndarray:
    """Count, for each class pair (C, C), the images labelled with both. A -1 label counts as absent.

    The diagonal contains the number of images of each class.
    """
    cooccurrence, counts = mlgcn_label_cooccurrence(targets)
    return cooccurrence + np.diag(counts)


def linked_pairs(mean_dynamic: np.ndarray, cooccurrence: np.ndarray, class_names: list[str]) -> pd.DataFrame:
    """Tabulate every unordered class pair {a, b}, sorted by the mean of A_d in both directions.

    Args:
        mean_dynamic: A_d (C, C) averaged over images; [i, j] weights class i's message to class j.
        cooccurrence: (C, C) images labelled with both classes (`label_cooccurrence`).
        class_names: the C class names.

    Returns:
        One row per pair a < b with columns class_a, class_b, "A_d a to b", "A_d b to a",
        "mean A_d" (the mean of the two) and co-occurrence, sorted by "mean A_d" descending,
        ties by class order.
    """
    first, second = np.triu_indices(len(class_names), k=1)
    pairs = pd.DataFrame(
        {
            "class_a": [class_names[i] for i in first],
            "class_b": [class_names[j] for j in second],
            "A_d a to b": mean_dynamic[first, second],
            "A_d b to a": mean_dynamic[second, first],
            "co-occurrence": cooccurrence[first, second],
        }
    )
    pairs["mean A_d"] = (pairs["A_d a to b"] + pairs["A_d b to a"]) / 2
    pairs = pairs[["class_a", "class_b", "mean A_d", "A_d a to b", "A_d b to a", "co-occurrence"]]
    return pairs.sort_values("mean A_d", ascending=False, kind="stable").reset_index(drop=True)


def node_strengths(mean_dynamic: np.ndarray, class_names: list[str]) -> pd.DataFrame:
    """Average A_d (C, C) over the other classes: what each class receives and what it sends.

    Column "received" is the mean of column j without the diagonal (messages into class j),
    "sent" the mean of row i without the diagonal. Sorted by "received", descending.
    """
    off_diagonal = np.where(np.eye(len(class_names), dtype=bool), np.nan, mean_dynamic)
    strengths = pd.DataFrame(
        {"received": np.nanmean(off_diagonal, axis=0), "sent": np.nanmean(off_diagonal, axis=1)},
        index=pd.Index(class_names, name="class"),
    )
    return strengths.sort_values("received", ascending=False, kind="stable")


def rank_correlation(pairs: pd.DataFrame) -> dict[str, float]:
    """Return Spearman's rank correlation between "mean A_d" and co-occurrence over the pairs.

    Tied values get their mean rank (scipy.stats.spearmanr). Keys: rho, p_value, pairs.

    NOTE: the p-value assumes independent pairs, but each class takes part in C - 1 pairs, so
    it overstates the evidence and is a rough guide only.
    """
    result = stats.spearmanr(pairs["mean A_d"], pairs["co-occurrence"])
    return {"rho": float(result.statistic), "p_value": float(result.pvalue), "pairs": int(len(pairs))}
