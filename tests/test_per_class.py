"""Per-class results: precision-recall curves against the metrics module's AP, run files, plots."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score

from msdgcn import per_class
from msdgcn.metrics import average_precision

# One class with ties and ignored entries. Without the -1 entries the ranking is
# 0.9 (1), 0.8 (0), 0.7 (1), 0.6 (0), 0.6 (1): four thresholds, three positives.
TIED_SCORES = np.array([0.9, 0.8, 0.8, 0.7, 0.6, 0.6, 0.3])
TIED_LABELS = np.array([1, -1, 0, 1, 0, 1, -1])
# AP = 1/3 * 1 + 0 * 1/2 + 1/3 * 2/3 + 1/3 * 3/5 = 34/45.
TIED_AP = 34 / 45


def test_pr_curve_ties_and_ignored():
    curve = per_class.precision_recall_curve(TIED_SCORES, TIED_LABELS)
    np.testing.assert_allclose(curve.thresholds, [0.9, 0.8, 0.7, 0.6])
    np.testing.assert_allclose(curve.precision, [1.0, 1 / 2, 2 / 3, 3 / 5])
    np.testing.assert_allclose(curve.recall, [1 / 3, 1 / 3, 2 / 3, 1.0])


def test_pr_area_equals_metrics_ap():
    curve = per_class.precision_recall_curve(TIED_SCORES, TIED_LABELS)
    area = per_class.area_under_pr_curve(curve)
    module_ap = average_precision(TIED_SCORES[:, None], TIED_LABELS[:, None])[0]
    kept = TIED_LABELS != -1
    assert area == pytest.approx(TIED_AP, abs=1e-15)
    assert area == pytest.approx(module_ap, abs=1e-15)
    assert area == pytest.approx(average_precision_score(TIED_LABELS[kept], TIED_SCORES[kept]), abs=1e-15)


def test_pr_area_matches_on_random_ties():
    generator = np.random.default_rng(0)
    scores = generator.integers(0, 6, size=(200, 5)) / 5  # six distinct values: many ties
    labels = generator.choice([-1, 0, 1], size=(200, 5), p=[0.1, 0.6, 0.3])
    module_ap = average_precision(scores, labels)
    for column in range(5):
        curve = per_class.precision_recall_curve(scores[:, column], labels[:, column])
        assert per_class.area_under_pr_curve(curve) == pytest.approx(module_ap[column], abs=1e-12)


def test_pr_curve_without_positive_rejected():
    with pytest.raises(ValueError, match="no positive"):
        per_class.precision_recall_curve(np.array([0.2, 0.4]), np.array([0, -1]))


def test_per_class_ap_sorted_without_empty_class():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.4], [0.6, 0.3, 0.7]])
    labels = np.array([[1, 0, 0], [0, 0, 1], [0, 0, 1]])
    ap = per_class.per_class_ap(scores, labels, ["a", "b", "c"])
    assert list(ap.index) == ["a", "c"]  # b has no positive label
    assert ap["a"] == pytest.approx(1.0)
    assert ap["c"] == pytest.approx((1 / 1 + 2 / 3) / 2)


def test_classes_at_both_ends_skip_rare():
    ap = pd.Series([1.0, 0.9, 0.5, 0.2, 0.1], index=["v", "w", "x", "y", "z"])
    positives = pd.Series({"v": 1, "w": 6, "x": 9, "y": 5, "z": 2})
    assert per_class.classes_at_both_ends(ap, positives, 1, min_positives=5) == ["w", "y"]
    assert per_class.classes_at_both_ends(ap, positives, 2, min_positives=1) == ["v", "w", "y", "z"]
    # Three classes qualify for four places: each appears once.
    assert per_class.classes_at_both_ends(ap, positives, 2, min_positives=5) == ["w", "x", "y"]
    assert per_class.classes_at_both_ends(ap, positives, 1, min_positives=10) == ["v", "z"]


def test_read_committed_run(repo_root):
    run = per_class.read_run(repo_root / "results" / "cpu" / "coco-subset" / "head-e")
    assert run.scores.shape == run.labels.shape == (len(run.image_ids), 80)
    ap = per_class.per_class_ap(run.scores, run.labels, run.class_names)
    # predictions.csv keeps 6 significant digits, so the mAP may move by rounding only.
    assert ap.mean() == pytest.approx(run.metrics["metrics"]["mAP"], abs=1e-3)
    description = run.describe()
    for part in ("profile cpu", "dataset coco-subset", "variant head-e", "224 px", "6 epochs", "seed 0"):
        assert part in description


def test_read_run_missing_file(repo_root, tmp_path):
    run_dir = tmp_path / "head-e"
    shutil.copytree(repo_root / "results" / "cpu" / "coco-subset" / "head-e", run_dir)
    (run_dir / "history.csv").unlink()
    with pytest.raises(FileNotFoundError, match="history.csv"):
        per_class.read_run(run_dir)


def test_training_curves_one_line_per_run(repo_root):
    runs = [per_class.read_run(path) for path in per_class.find_runs(repo_root / "results", "cpu", "coco-subset")]
    figure = per_class.plot_training_curves(runs, per_class.describe_runs(runs))
    loss_axes, map_axes = figure.axes
    assert len(loss_axes.lines) == len(map_axes.lines) == len(runs)
    head_e = next(run for run in runs if run.variant == "head-e")
    drawn = next(line for line in map_axes.lines if line.get_label() == "head-e").get_ydata()
    np.testing.assert_allclose(drawn, 100 * head_e.history["mAP"].to_numpy())
    looks = {(line.get_color() if isinstance(line.get_color(), str) else tuple(line.get_color()), line.get_linestyle()) for line in map_axes.lines}
    assert len(looks) == len(runs)
    assert "head-e" in per_class.describe_runs(runs)
