"""Per-class results of finished runs: AP per class, precision-recall curves, training curves.

Everything here reads the result files that `run.finish_run` writes into
`results/<profile>/<dataset>/<variant>/`: `predictions.csv` and `labels.csv` (validation
probabilities and labels, header `image,<class names>`), `history.csv` (one row per epoch) and
`metrics.json`. Per-class AP comes from `metrics.average_precision`. The precision-recall curve
below uses the same rules as that AP: entries labelled -1 are dropped, and equal scores form one
threshold. So the area under the curve, summed as recall steps times precision, equals the AP.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, NamedTuple

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from .figures import PALETTE, SEABORN_STYLE, save_figure
from .metrics import IGNORED_LABEL, average_precision, read_matrix_csv
from .run import METRICS_FILE

logger = logging.getLogger(__name__)

RESULT_FILES = ("predictions.csv", "labels.csv", "history.csv", METRICS_FILE)


@dataclass
class RunResults:
    """The result files of one finished run, read and aligned by image id.

    Attributes:
        run_dir: the folder `results/<profile>/<dataset>/<variant>/`.
        class_names: the C class names, in column order.
        image_ids: the N validation image ids, in row order.
        scores: float64 array (N, C) of predicted probabilities.
        labels: int8 array (N, C) with 1 = present, 0 = absent, -1 = ignored.
        history: one row per epoch (columns epoch, train_loss, mAP, ...).
        metrics: the parsed `metrics.json`.
    """

    run_dir: Path
    class_names: list[str]
    image_ids: list[str]
    scores: np.ndarray
    labels: np.ndarray
    history: pd.DataFrame
    metrics: dict[str, Any]

    @property
    def variant(self) -> str:
        return self.metrics["variant"]

    def describe(self) -> str:
        """Name the run for a figure caption: profile, dataset, variant, scale and seed."""
        return describe_run(self.metrics)


def describe_run(metrics: dict[str, Any]) -> str:
    """Describe a run from its `metrics.json` dict as 'profile P, dataset D, variant V, scale, seed'."""
    config = metrics["config"]
    model = config.get("model", {})
    provenance = metrics.get("provenance", {})
    train_images = provenance.get("train_data", {}).get("images", "?")
    val_images = provenance.get("val_data", {}).get("images", "?")
    return (
        f"profile {metrics['profile']}, dataset {metrics['dataset']}, variant {metrics['variant']} "
        f"({model.get('backbone', '?')}, {model.get('head', '?')} head); scale: "
        f"{config['image_size']} px, {config['epochs']} epochs, {train_images} training and "
        f"{val_images} validation images; seed {provenance.get('seed', config.get('seed'))}"
    )


def read_run(run_dir: str | PathLike[str]) -> RunResults:
    """Read the four result files of one run, matching the prediction rows to the label rows by id.

    Raises FileNotFoundError naming the missing file, and ValueError when the two CSV files list
    other images or classes (the message comes from `metrics.read_matrix_csv`).
    """
    run_dir = Path(run_dir)
    for name in RESULT_FILES:
        if not (run_dir / name).is_file():
            raise FileNotFoundError(
                f"{run_dir / name} not found: {run_dir} is not a finished run. Train it with "
                "`python -m msdgcn batch` (or `python -m msdgcn train`) first."
            )
    metrics = json.loads((run_dir / METRICS_FILE).read_text())
    image_ids, class_names, labels = read_matrix_csv(run_dir / "labels.csv")
    prediction_ids, _, scores = read_matrix_csv(run_dir / "predictions.csv", class_names)
    if sorted(prediction_ids) != sorted(image_ids):
        raise ValueError(
            f"{run_dir / 'predictions.csv'} and {run_dir / 'labels.csv'} list different images. "
            "Rerun the variant so that both come from one evaluation."
        )
    row_of = {image_id: row for row, image_id in enumerate(prediction_ids)}
    scores = scores[[row_of[image_id] for image_id in image_ids]]
    history = pd.read_csv(run_dir / "history.csv")
    return RunResults(run_dir, class_names, image_ids, scores, labels.astype(np.int8), history, metrics)


def describe_runs(runs: list[RunResults]) -> str:
    """Name several runs of one profile for a caption, grouping the variants that share a scale."""
    first = runs[0].metrics
    groups: dict[str, list[str]] = {}
    for run in runs:
        config = run.metrics["config"]
        groups.setdefault(f"{config['image_size']} px, {config['epochs']} epochs", []).append(run.variant)
    scales = "; ".join(f"{', '.join(variants)} at {scale}" for scale, variants in groups.items())
    seeds = sorted({str(run.metrics["provenance"]["seed"]) for run in runs})
    return (
        f"profile {first['profile']}, dataset {first['dataset']}, variants {scales}; "
        f"seed {', '.join(seeds)}"
    )


def find_runs(results_root: str | PathLike[str], profile: str, dataset: str) -> list[Path]:
    """List the finished run folders (those with `metrics.json`) of a profile on a dataset, sorted."""
    folder = Path(results_root) / profile / dataset
    runs = sorted(path.parent for path in folder.glob(f"*/{METRICS_FILE}"))
    if not runs:
        raise FileNotFoundError(
            f"no finished runs under {folder}: run `python -m msdgcn batch --profile {profile} "
            f"--dataset {dataset} --data-root DIR` first"
        )
    return runs


# --------------------------------------------------------------------------- AP and PR curves


def per_class_ap(scores: np.ndarray, labels: np.ndarray, class_names: list[str]) -> pd.Series:
    """Return the AP of each class that has a positive label, sorted from highest to lowest.

    Classes without a positive label have no AP and are left out, as they are of the mAP.
    """
    ap = pd.Series(average_precision(scores, labels), index=class_names, name="AP")
    return ap.dropna().sort_values(ascending=False)


def classes_at_both_ends(
    class_ap: pd.Series, positives: pd.Series, count: int, min_positives: int = 1
) -> list[str]:
    """Select the `count` best and `count` worst classes of a sorted AP series, best first.

    Only classes with at least `min_positives` positive labels take part, because the curve of
    a class with one positive is a single step. With fewer than 2 * count such classes, each
    appears once and the worst end gets fewer. With none, every class of `class_ap` takes part
    and a warning is logged.
    """
    eligible = class_ap[positives.reindex(class_ap.index) >= min_positives]
    if eligible.empty:
        logger.warning(
            "no class has %d or more positive labels, so the curves are drawn for any class", min_positives
        )
        eligible = class_ap
    best = list(eligible.index[:count])
    worst = [name for name in eligible.index[-count:] if name not in best]
    return best + worst


class PRCurve(NamedTuple):
    """Precision and recall at every distinct score threshold of one class, highest first."""

    thresholds: np.ndarray  # (T,) distinct scores, descending
    precision: np.ndarray  # (T,) positives / counted entries with score >= threshold
    recall: np.ndarray  # (T,) positives with score >= threshold / all positives


def precision_recall_curve(scores: np.ndarray, labels: np.ndarray) -> PRCurve:
    """Compute the precision-recall curve of one class from scores (N,) and labels (N,).

    Entries labelled -1 are dropped first, and equal scores form one threshold, the same rules
    as `metrics.average_precision`. Raises ValueError when no entry is labelled 1.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must be equal 1-D shapes")
    kept = labels != IGNORED_LABEL
    scores, positive = scores[kept], labels[kept] == 1
    if not positive.any():
        raise ValueError("the class has no positive label, so its recall is undefined")

    order = np.argsort(-scores, kind="stable")
    scores, positive = scores[order], positive[order]
    # The last entry of each run of equal scores closes that threshold.
    threshold_end = np.append(scores[1:] != scores[:-1], True)
    true_positives = np.cumsum(positive)[threshold_end]
    counted = np.arange(1, len(scores) + 1)[threshold_end]
    return PRCurve(
        thresholds=scores[threshold_end],
        precision=true_positives / counted,
        recall=true_positives / positive.sum(),
    )


def area_under_pr_curve(curve: PRCurve) -> float:
    """Sum precision times the recall gained at each threshold, the non-interpolated AP."""
    recall_gain = np.diff(curve.recall, prepend=0.0)
    return float(np.sum(recall_gain * curve.precision))


# --------------------------------------------------------------------------- figures


def add_caption(figure: Figure, caption: str) -> None:
    """Write `caption` under the axes; `save_figure`'s tight bounding box keeps it in the PNG."""
    figure.text(0.5, 0.0, caption, ha="center", va="top", fontsize=8, wrap=True)


def plot_per_class_ap(
    ap: pd.Series, caption: str, path: str | PathLike[str] | None = None
) -> Figure:
    """Draw the per-class AP (percent) as horizontal bars sorted from highest to lowest."""
    with sns.axes_style(SEABORN_STYLE):
        figure, ax = plt.subplots(figsize=(7.0, 0.16 * len(ap) + 1.5))
        sns.barplot(x=100 * ap.to_numpy(), y=list(ap.index), color=sns.color_palette(PALETTE)[0], ax=ax)
        mean_ap = 100 * ap.mean()
        ax.axvline(mean_ap, color="0.3", linestyle="--", linewidth=1.0, label=f"mAP {mean_ap:.1f} %")
        ax.set_xlim(0, 100)
        ax.set_xlabel("average precision (%)")
        ax.set_ylabel("class")
        ax.tick_params(axis="y", labelsize=7)
        ax.legend(loc="lower right")
        ax.set_title(f"Per-class AP of {len(ap)} classes with a positive validation label")
        figure.tight_layout()
        add_caption(figure, caption)
    if path is not None:
        save_figure(figure, path)
    return figure


def plot_pr_curves(
    curves: dict[str, PRCurve], ap: pd.Series, caption: str, path: str | PathLike[str] | None = None
) -> Figure:
    """Draw the step precision-recall curve of each class in `curves`, labelled with its AP.

    The precision of a threshold applies over the recall it adds, which is the step the AP sums.
    """
    colors = sns.color_palette(PALETTE, len(curves))
    with sns.axes_style(SEABORN_STYLE):
        figure, ax = plt.subplots(figsize=(7.5, 4.5))  # the legend sits right of the axes
        for color, (name, curve) in zip(colors, curves.items()):
            recall = np.concatenate(([0.0], curve.recall))
            precision = np.concatenate(([curve.precision[0]], curve.precision))
            label = f"{name} (AP {100 * ap[name]:.1f} %)"
            ax.step(100 * recall, 100 * precision, where="pre", color=color, linewidth=1.8, label=label)
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 102)
        ax.set_xlabel("recall (%)")
        ax.set_ylabel("precision (%)")
        ax.set_title("Precision-recall curves of the best and worst classes")
        ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
        figure.tight_layout()
        add_caption(figure, caption)
    if path is not None:
        save_figure(figure, path)
    return figure


def plot_training_curves(
    runs: list[RunResults], caption: str, path: str | PathLike[str] | None = None
) -> Figure:
    """Draw training loss and validation mAP per epoch, one line per run, in two panels.

    Head-check runs (variants "head-...") draw solid lines and the others dashed ones, each group
    with its own colours, so that no two lines share both colour and style when the palette has
    fewer colours than runs. The loss axis is logarithmic, because a run's first epoch can start
    orders of magnitude above its last.
    """
    groups = [
        ([run for run in runs if run.variant.startswith("head-")], "-"),
        ([run for run in runs if not run.variant.startswith("head-")], "--"),
    ]
    with sns.axes_style(SEABORN_STYLE):
        figure, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(11.0, 4.2))
        for group, linestyle in groups:
            for color, run in zip(sns.color_palette(PALETTE, len(group)), group):
                history = run.history
                style = dict(marker="o", color=color, linestyle=linestyle, label=run.variant)
                ax_loss.plot(history["epoch"], history["train_loss"], **style)
                ax_map.plot(history["epoch"], 100 * history["mAP"], **style)
        ax_loss.set_yscale("log")
        ax_loss.set_xlabel("epoch")
        ax_loss.set_ylabel("mean training loss per label (nats, log scale)")
        ax_loss.set_title("Training loss")
        ax_map.set_xlabel("epoch")
        ax_map.set_ylabel("validation mAP (%)")
        ax_map.set_title("Validation mAP after each epoch")
        ax_map.legend(title="variant", loc="center left", bbox_to_anchor=(1.02, 0.5))
        for ax in (ax_loss, ax_map):
            ax.xaxis.get_major_locator().set_params(integer=True)
        figure.tight_layout()
        add_caption(figure, caption)
    if path is not None:
        save_figure(figure, path)
    return figure
