"""Tables 1-3 of Luo and Lin's MSD-GCN paper with our measured rows, from results files only.

A cell of ours comes from a run's `metrics.json`; a row with no results file reads "not run",
with the command that would fill it, and never shows a number. The paper's numbers sit beside
ours, marked as cited: the paper itself cites every row but its own from other publications.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import paper_numbers as paper
from .metrics import read_matrix_csv
from .profiles import PROFILES, resolve_run

logger = logging.getLogger(__name__)

NOT_RUN = "not run"
CITED = "cited by the paper"
# Cited rows have no run of ours: their scale is the publication's, and their run cell stays empty.
CITED_SCALE_AND_RUN = {"scale": "as published", "run": ""}


def load_runs(results_root: str | Path, profile: str, dataset: str) -> dict[str, dict[str, Any]]:
    """Return {variant: metrics.json contents} for the finished runs of a profile and dataset."""
    folder = Path(results_root) / profile / dataset
    runs = {}
    for path in sorted(folder.glob("*/metrics.json")):
        try:
            runs[path.parent.name] = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"results file {path} is not valid JSON ({error}); rerun that variant") from error
    return runs


def _reported(*values: float) -> list[float | str]:
    """Replace the paper's "-" (stored as NaN) by the words "not reported"."""
    return ["not reported" if math.isnan(value) else value for value in values]


def _pct(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 1)


def _run_link(run: dict[str, Any]) -> str:
    return f"results/{run['profile']}/{run['dataset']}/{run['variant']}/train_variant.ipynb"


def run_scale(run: dict[str, Any]) -> str:
    """Describe the scale of a run in a few words: backbone, image size, epochs, images, seed."""
    config = run["config"]
    fingerprint = run["provenance"]["train_data"]
    scale = (
        f"{config['model']['backbone']}, {config['image_size']} px, {config['epochs']} epochs, "
        f"{fingerprint['images']} training images, seed {run['provenance']['seed']}"
    )
    # Batch times depend on how many runs shared the machine, so the scale names that number.
    if config.get("concurrent_runs", 1) > 1:
        scale += f", {config['concurrent_runs']} runs at once with {config.get('threads')} thread(s) each"
    return scale


def table3(results_root: str | Path, profile: str, dataset: str, variants=("a", "b", "c", "d", "e")) -> pd.DataFrame:
    """Table 3: the paper's ablation rows a-e, the paper's numbers beside ours."""
    runs = load_runs(results_root, profile, dataset)
    rows = []
    for variant in variants:
        cited = paper.TABLE3[variant]
        switches = [name for name, on in zip(paper.SWITCHES, cited["switches"]) if on]
        row: dict[str, Any] = {"row": variant, "switches on ADD-GCN": " + ".join(switches) or "none"}
        row.update(
            {
                "paper mAP": cited["mAP"],
                "paper CF1": cited["CF1"],
                "paper OF1": cited["OF1"],
                "paper batch time (s)": cited["batch_time"],
                "paper average loss": cited["average_loss"],
                "paper best epoch": cited["best_epoch"] if cited["best_epoch"] is not None else "/",
            }
        )
        row.update(_measured_table3(runs.get(variant)))
        rows.append(row)
    return pd.DataFrame(rows).set_index("row")


def _measured_table3(run: dict[str, Any] | None) -> dict[str, Any]:
    keys = ("our mAP", "our CF1", "our OF1", "our batch time (s)", "our average loss", "our best epoch", "our run")
    if run is None:
        return {key: NOT_RUN for key in keys}
    t3 = run["table3"]
    return {
        "our mAP": _pct(t3["mAP"]),
        "our CF1": _pct(t3["CF1"]),
        "our OF1": _pct(t3["OF1"]),
        "our batch time (s)": None if t3["batch_time"] is None else round(t3["batch_time"], 3),
        "our average loss": round(t3["average_loss"], 4),
        "our best epoch": t3["best_epoch"],
        "our run": _run_link(run),
    }


def recipe(run: dict[str, Any]) -> str:
    """Describe a run's optimizer, loss and learning-rate schedule in one line."""
    optim = run["config"]["optim"]
    milestones = optim["milestones"]
    schedule = f", lr x{optim['gamma']:g} after epoch {', '.join(map(str, milestones))}" if milestones else ""
    return (
        f"{optim['optimizer']} + {optim['loss']}, lr {optim['lr']:g} "
        f"(backbone x{optim['backbone_lr_mult']:g}){schedule}"
    )


def variant_table(results_root: str | Path, profile: str, dataset: str, variants) -> pd.DataFrame:
    """Measured rows only (for example the head check): Table 3 columns, description and recipe."""
    runs = load_runs(results_root, profile, dataset)
    rows = []
    for variant in variants:
        run = runs.get(variant)
        description = PROFILES[profile].variants[variant].get("description", "")
        row = {"variant": variant, "description": description}
        measured = _measured_table3(run)
        row.update({key.removeprefix("our "): value for key, value in measured.items()})
        row["recipe"] = recipe(run) if run else NOT_RUN
        rows.append(row)
    return pd.DataFrame(rows).set_index("variant")


# Our variants that correspond to rows of Tables 1 and 2, in the order of the paper's rows:
# the ResNet baseline (GAP, then GMP), ML-GCN, ADD-GCN, and the paper's model.
MEASURED_VARIANTS = (
    "gap", "gmp", "head-gap", "head-gmp", "ml-gcn", "head-mlgcn", "a", "head-a", "e", "head-e",
)  # fmt: skip

MODEL_NAMES = {
    "gap": "GAP baseline",
    "gmp": "GMP baseline",
    "ml-gcn": "ML-GCN",
    "a": "ADD-GCN",
    "e": "MSD-GCN (switches b-e)",
}
HEAD_NAMES = {
    "head-gap": "GAP baseline",
    "head-gmp": "GMP baseline",
    "head-mlgcn": "ML-GCN head",
    "head-a": "ADD-GCN head",
    "head-e": "ADD-GCN head + GELU + Adam/BCE",
}

# The data root that a "not run" row's command names, by dataset.
DATA_ROOTS = {"coco-subset": "../shared/data/coco-subset", "coco-subset-voc20": "../shared/data/coco-subset"}


def row_name(run: dict[str, Any]) -> str:
    """Name a measured row by what ran: model, backbone, initialisation and variant."""
    variant, model = run["variant"], run["config"]["model"]
    name = MODEL_NAMES.get(variant) or HEAD_NAMES.get(variant) or variant
    weights = "ImageNet init" if model.get("pretrained") else "random init"
    return f"ours: {name}, {model['backbone']}, {weights} ({variant})"


def fill_command(profile: str, dataset: str, variant: str) -> str:
    """Return the command that trains a variant and writes the results file its row reads."""
    data_root = DATA_ROOTS.get(dataset, "DATA_DIR")
    return (
        f"python -m msdgcn batch --profile {profile} --dataset {dataset} "
        f"--data-root {data_root} --variants {variant}"
    )


def _not_run_row(profile: str, dataset: str, variant: str, columns: list[str]) -> dict[str, Any]:
    """Build the row of a variant without a results file: named as it would run, cells "not run"."""
    config = resolve_run(profile, variant, dataset, DATA_ROOTS.get(dataset, "DATA_DIR")).to_dict()
    return {
        "method": row_name({"variant": variant, "config": config}),
        "source": f"not run: {profile} profile, {dataset}",
        "scale": NOT_RUN,
        "run": fill_command(profile, dataset, variant),
        **{column: NOT_RUN for column in columns},
    }


def _measured_rows(runs, profile: str, dataset: str, columns: list[str], values_of) -> list[dict]:
    """Rows of ours for Tables 1 and 2; `values_of(run)` gives a measured row's cells.

    A variant of the profile without a results file gets a "not run" row, and its run column is
    the command that fills it. Variants that the profile lacks get no row.
    """
    rows = []
    for variant in MEASURED_VARIANTS:
        run = runs.get(variant)
        if run is None:
            if variant in PROFILES[profile].variants:
                rows.append(_not_run_row(profile, dataset, variant, columns))
            continue
        rows.append(
            {
                "method": row_name(run),
                "source": f"measured: {profile} profile, {dataset}",
                "scale": run_scale(run),
                "run": _run_link(run),
                **dict(zip(columns, values_of(run))),
            }
        )
    return rows


def scale_caption(results_root: str | Path, profile: str, dataset: str) -> str:
    """Describe the scale of the measured rows of Tables 1 and 2 for their caption.

    Groups the finished runs of `MEASURED_VARIANTS` by image size and epoch count, naming the
    variants of each group, then gives the seeds and validation images, or states that none has
    run.
    """
    runs = load_runs(results_root, profile, dataset)
    measured = {variant: runs[variant] for variant in MEASURED_VARIANTS if variant in runs}
    if not measured:
        return f"Ours: no run of the {profile} profile on {dataset} yet."

    def distinct(values) -> str:
        return ", ".join(str(value) for value in sorted(set(values)))

    scales: dict[tuple[int, int], list[str]] = {}
    for variant, run in measured.items():
        scales.setdefault((run["config"]["image_size"], run["config"]["epochs"]), []).append(variant)
    groups = "; ".join(
        f"{size} px, {epochs} epochs ({', '.join(variants)})"
        for (size, epochs), variants in sorted(scales.items())
    )
    return (
        f"Ours: {profile} profile on {dataset}, {groups}; "
        f"seed {distinct(run['provenance']['seed'] for run in measured.values())}, "
        f"{distinct(run['provenance']['val_data']['images'] for run in measured.values())} validation images."
    )


def start_caption(profile: str, dataset: str) -> str:
    """Say where our rows on `dataset` start from: a checkpoint of another dataset, or not.

    Published VOC 2007 results of ADD-GCN's line of work start from COCO-trained models (the
    discrepancies chapter gives the evidence), so Table 2's caption states our start.
    """
    source = PROFILES[profile].fine_tune_from.get(dataset)
    if source is not None:
        return (
            f"Each of our rows starts from the best {source} checkpoint of the same variant "
            f"({profile} profile) and fine-tunes on {dataset}."
        )
    return (
        f"Our rows start from the {profile} profile's own initialisation, with no COCO-trained "
        "start, unlike the published VOC results they sit beside."
    )


def not_run(results_root: str | Path, profile: str, dataset: str) -> list[str]:
    """Return the variants of Tables 1 and 2 that have no results file for this dataset."""
    runs = load_runs(results_root, profile, dataset)
    known = PROFILES[profile].variants
    return [v for v in MEASURED_VARIANTS if v in known and v not in runs]


def table1(results_root: str | Path, profile: str, dataset: str) -> pd.DataFrame:
    """Table 1: all and top-3 metrics, the paper's rows (cited), then ours (measured or not run)."""
    columns = [f"all {k}" for k in paper.METRIC_KEYS] + [f"top-3 {k}" for k in paper.TOP3_KEYS]
    rows = [
        {"method": method, "source": CITED, **CITED_SCALE_AND_RUN, **dict(zip(columns, _reported(*all_values, *top3_values)))}
        for method, (all_values, top3_values) in paper.TABLE1.items()
    ]

    def values_of(run: dict[str, Any]) -> list[float | None]:
        metrics = run["metrics"]
        values = [_pct(metrics[k]) for k in paper.METRIC_KEYS]
        return values + [_pct(metrics["top3"][k]) for k in paper.TOP3_KEYS]

    rows += _measured_rows(load_runs(results_root, profile, dataset), profile, dataset, columns, values_of)
    return pd.DataFrame(rows).set_index("method")


def table2(results_root: str | Path, profile: str, dataset: str) -> pd.DataFrame:
    """Table 2: per-class AP on the 20 VOC classes, cited rows, then ours (measured or not run)."""
    columns = [*paper.VOC_CLASSES, "mAP"]
    rows = [
        {"method": method, "source": CITED, **CITED_SCALE_AND_RUN, **dict(zip(columns, _reported(*values)))}
        for method, values in paper.TABLE2.items()
    ]

    def values_of(run: dict[str, Any]) -> list[float | None]:
        per_class = run["metrics"]["per_class_AP"]
        missing = [name for name in paper.VOC_CLASSES if name not in per_class]
        if missing:
            raise ValueError(
                f"{_run_link(run)}: run has no AP for VOC classes {missing}; "
                "Table 2 needs a VOC-2007 or VOC-20-view run"
            )
        return [_pct(per_class[name]) for name in paper.VOC_CLASSES] + [_pct(run["metrics"]["mAP"])]

    rows += _measured_rows(load_runs(results_root, profile, dataset), profile, dataset, columns, values_of)
    return pd.DataFrame(rows).set_index("method")


def saved_labels(results_root: str | Path, profile: str, dataset: str) -> tuple[list[str], np.ndarray] | None:
    """Return (class names, targets (N, C)) from the first run's labels.csv, or None if none exists.

    Every run of a profile and dataset evaluates on the same validation split, so any run's
    labels serve.
    """
    for labels_path in sorted((Path(results_root) / profile / dataset).glob("*/labels.csv")):
        _, class_names, targets = read_matrix_csv(labels_path)
        return class_names, targets
    return None


def chance_mAP(results_root: str | Path, profile: str, dataset: str) -> float | None:
    """Return the mAP of a model that gives every image the same scores, on a run's val labels.

    With all scores tied, each class's AP equals its prevalence, so this is the mean prevalence
    over classes with a positive: the floor that a trained model has to beat.
    Returns None when no run of that profile and dataset has saved its labels.
    """
    labels = saved_labels(results_root, profile, dataset)
    if labels is None:
        return None
    _, targets = labels
    counted = targets >= 0
    positives = (targets == 1).sum(axis=0)
    present = positives > 0
    return float((positives[present] / counted.sum(axis=0)[present]).mean())


def positive_counts(results_root: str | Path, profile: str, dataset: str) -> pd.Series | None:
    """Count the validation images with a positive label per class, from a run's labels.csv.

    Each class's AP rests on these positives, so a class with a handful of them gives a noisy AP.
    Difficult (-1) labels are not counted. Returns None when no run of that profile and dataset
    has saved its labels.
    """
    labels = saved_labels(results_root, profile, dataset)
    if labels is None:
        return None
    class_names, targets = labels
    return pd.Series((targets == 1).sum(axis=0), index=class_names, name="validation positives")


def f1_mismatches(tolerance: float = 0.2) -> pd.DataFrame:
    """List the cited Table 1 F1 values that differ from the F1 of their own printed P and R.

    CF1 and OF1 are harmonic means, F1 = 2 P R / (P + R), so the printed P and R fix them up to
    rounding. A printed F1 further than `tolerance` points from that value is a misprint in the
    paper or in its source. The table keeps the printed value, and this list shows the gap.
    """
    rows = []
    for method, (all_values, top3_values) in paper.TABLE1.items():
        groups = (("all", dict(zip(paper.METRIC_KEYS, all_values))), ("top-3", dict(zip(paper.TOP3_KEYS, top3_values))))
        for scope, values in groups:
            for precision, recall, f1 in (("CP", "CR", "CF1"), ("OP", "OR", "OF1")):
                p, r, printed = values[precision], values[recall], values[f1]
                if any(math.isnan(v) for v in (p, r, printed)):
                    continue
                computed = 2 * p * r / (p + r)
                if abs(computed - printed) > tolerance:
                    rows.append({"method": method, "metric": f"{scope} {f1}", "printed": printed,
                                 "from printed P and R": round(computed, 1)})
    return pd.DataFrame(rows)


def link_runs(table: pd.DataFrame, column: str = "our run") -> pd.DataFrame:
    """Turn run paths into links to the executed notebooks, relative to a profile's tables page.

    The tables page of a profile renders at `results/<profile>/tables.html`, and a run's
    notebook at `results/<profile>/<dataset>/<variant>/train_variant.html`.
    """
    linked = table.copy()
    for name in (column, column.removeprefix("our ")):
        if name not in linked.columns:
            continue

        def to_link(path: Any) -> Any:
            if not isinstance(path, str) or not path.startswith("results/"):
                return path
            relative = "/".join(path.split("/")[2:]).removesuffix(".ipynb") + ".html"
            return f'<a href="{relative}">{relative.split("/")[1]}</a>'

        linked[name] = linked[name].map(to_link)
    return linked


def save_table(table: pd.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path)
    logger.info("wrote %s", path)
    return path
