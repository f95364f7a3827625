# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Per-class results
#
# The tables report one mAP per run. This notebook opens that number up for one run: the
# average precision (AP) of every class, and the precision-recall curves of its best and worst
# classes. It then draws the training curves of every variant of the profile. Everything is
# read from the result files of finished runs in `results/<profile>/<dataset>/<variant>/`:
# `predictions.csv` and `labels.csv` (validation probabilities and labels), `history.csv` (one
# row per epoch) and `metrics.json`. Nothing is trained or evaluated again here.

# %% tags=["parameters"]
profile = "cpu"  # the profile whose runs are read
dataset = "coco-subset"
variant = "head-e"  # the run whose per-class AP and precision-recall curves are drawn
results_root = "../results"  # relative to this notebook's folder
pr_classes = 2  # precision-recall curves of this many best and this many worst classes
min_positives = 5  # only classes with this many positive validation images get a curve
output_dir = "../results/scratch/per_class"  # where the PNG figures go; the report passes results/<profile>/per_class

# %% [markdown]
# The figures use the book's seaborn theme from `msdgcn.figures.set_style`. Every figure
# caption names the run it comes from: profile, dataset, variant, image size, epochs, image
# counts and seed.

# %%
from pathlib import Path

import numpy as np
import pandas as pd

from msdgcn import figures, per_class
from msdgcn.metrics import average_precision

figures.set_style()
figure_dir = Path(output_dir)
figure_dir.mkdir(parents=True, exist_ok=True)
run = per_class.read_run(Path(results_root) / profile / dataset / variant)
caption = f"Run: {run.describe()}."
print(caption)

# %% [markdown]
# ## AP of every class
#
# `metrics.average_precision` computes each class's non-interpolated AP on its validation
# entries. A class without a positive validation label has no AP and is left out, as it is of
# the mAP. The mean of the bars is the run's mAP. Because `predictions.csv` keeps 6
# significant digits, that mean may differ from the mAP in `metrics.json` by rounding only
# (asserted below to within 0.001).

# %%
class_ap = per_class.per_class_ap(run.scores, run.labels, run.class_names)
left_out = sorted(set(run.class_names) - set(class_ap.index))
print(f"{len(class_ap)} classes with an AP; without a positive validation label: {', '.join(left_out) or 'none'}")
print(f"mAP from the CSV files: {100 * class_ap.mean():.2f} %; stored in metrics.json: {100 * run.metrics['metrics']['mAP']:.2f} %")
assert abs(class_ap.mean() - run.metrics["metrics"]["mAP"]) < 1e-3
fig = per_class.plot_per_class_ap(class_ap, caption, figure_dir / f"per_class_ap_{variant}.png")

# %% [markdown]
# On a small validation split, a class with one or two positives gets an AP that one image can
# move by tens of points, and its precision-recall curve is a single step. The curves below
# are therefore drawn for the best and worst classes among those with at least
# `min_positives` positive validation images; the table lists them.

# %%
positives = pd.Series((run.labels == 1).sum(axis=0), index=run.class_names)
ends = per_class.classes_at_both_ends(class_ap, positives, pr_classes, min_positives)
pd.DataFrame({"AP (%)": (100 * class_ap[ends]).round(1), "positive images": positives[ends]})

# %% [markdown]
# ## Precision-recall curves
#
# `per_class.precision_recall_curve` applies the AP's rules: entries labelled -1 are dropped,
# and equal scores form one threshold. The area under each step curve, the sum of precision
# times the recall gained at each threshold, must equal the class's AP from
# `metrics.average_precision`. The cell asserts that for every plotted class.

# %%
module_ap = pd.Series(average_precision(run.scores, run.labels), index=run.class_names)
curves = {}
for name in ends:
    column = run.class_names.index(name)
    curve = per_class.precision_recall_curve(run.scores[:, column], run.labels[:, column])
    area = per_class.area_under_pr_curve(curve)
    assert np.isclose(area, module_ap[name], rtol=0, atol=1e-12), (name, area, module_ap[name])
    curves[name] = curve
print("area under each curve equals the metrics module's AP for", ", ".join(curves))
fig = per_class.plot_pr_curves(curves, class_ap, caption, figure_dir / f"pr_curves_{variant}.png")

# %% [markdown]
# ## Training curves of every variant
#
# Each run's `history.csv` contains the mean training loss and the validation mAP after every
# epoch. Both losses used here, MultiLabelSoftMarginLoss and BCEWithLogitsLoss, average the
# binary cross-entropy over the labels, so their values are on one scale (nats per label).
# Variants of one profile may differ in image size and epochs; the caption groups them by scale.

# %%
runs = [per_class.read_run(path) for path in per_class.find_runs(results_root, profile, dataset)]
training_caption = f"Runs: {per_class.describe_runs(runs)}."
print(training_caption)
fig = per_class.plot_training_curves(runs, training_caption, figure_dir / "training_curves.png")

# %% [markdown]
# The table gives the numbers behind the figure: the last epoch's training loss and the best
# validation mAP of each variant, the epoch the tables report.

# %%
pd.DataFrame(
    {
        "variant": [r.variant for r in runs],
        "epochs": [int(r.history["epoch"].max()) for r in runs],
        "final training loss": [round(float(r.history["train_loss"].iloc[-1]), 4) for r in runs],
        "best mAP (%)": [round(100 * float(r.history["mAP"].max()), 1) for r in runs],
        "best epoch": [int(r.history.loc[r.history["mAP"].idxmax(), "epoch"]) for r in runs],
    }
).set_index("variant")
