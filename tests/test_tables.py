"""Tables read results files only: measured rows, "not run" rows, chance level."""

from __future__ import annotations

import json

import numpy as np
import pytest

from msdgcn import tables
from msdgcn.metrics import write_matrix_csv


def write_run(root, variant, mAP=0.5):
    run_dir = root / "cpu" / "coco-subset" / variant
    run_dir.mkdir(parents=True)
    metrics = {key: 0.25 for key in ("CP", "CR", "CF1", "OP", "OR", "OF1")}
    run = {
        "variant": variant,
        "profile": "cpu",
        "dataset": "coco-subset",
        "table3": {"mAP": mAP, "CF1": 0.4, "OF1": 0.45, "batch_time": 1.234, "average_loss": 0.0812, "best_epoch": 2},
        "metrics": {"mAP": mAP, **metrics, "top3": dict(metrics), "per_class_AP": {}},
        "config": {
            "model": {"backbone": "resnet50", "pretrained": None},
            "image_size": 128,
            "epochs": 2,
            "optim": {"optimizer": "adam", "loss": "bce", "lr": 0.003, "backbone_lr_mult": 0.1, "milestones": [5], "gamma": 0.1},
        },
        "provenance": {"seed": 0, "train_data": {"images": 514}},
    }
    (run_dir / "metrics.json").write_text(json.dumps(run))
    return run_dir


def test_table3_measured_and_not_run(tmp_path):
    write_run(tmp_path, "c", mAP=0.1234)
    table = tables.table3(tmp_path, "cpu", "coco-subset")
    assert table.loc["c", "our mAP"] == 12.3
    assert table.loc["c", "paper mAP"] == 86.7
    assert table.loc["c", "our best epoch"] == 2
    for row in ("a", "b", "d", "e"):
        assert table.loc[row, "our mAP"] == "not run"
        assert table.loc[row, "our batch time (s)"] == "not run"


def test_table3_switch_column(tmp_path):
    table = tables.table3(tmp_path, "cpu", "coco-subset")
    assert table.loc["a", "switches on ADD-GCN"] == "none"
    assert table.loc["c", "switches on ADD-GCN"] == "Res2Net + CBAM"
    assert table.loc["e", "switches on ADD-GCN"] == "Res2Net + CBAM + GELU + BCEWithLogitsLoss + Adam"


def test_table1_names_what_ran(tmp_path):
    write_run(tmp_path, "e")
    table = tables.table1(tmp_path, "cpu", "coco-subset")
    name = "ours: MSD-GCN (switches b-e), resnet50, random init (e)"
    assert table.loc[name, "scale"] == "resnet50, 128 px, 2 epochs, 514 training images, seed 0"
    assert table.loc[name, "all mAP"] == 50.0
    assert table.loc[name, "run"] == "results/cpu/coco-subset/e/train_variant.ipynb"
    assert table.loc["MSD-GCN (paper)", "all mAP"] == 87.1
    assert table.loc["DecoupleNet", "top-3 CP"] == "not reported"
    assert tables.not_run(tmp_path, "cpu", "coco-subset") == ["gap", "head-gap", "a", "head-a", "head-e"]


def test_recipe_names_lr_and_schedule(tmp_path):
    write_run(tmp_path, "head-e")
    table = tables.variant_table(tmp_path, "cpu", "coco-subset", ["head-e", "head-a"])
    assert table.loc["head-e", "recipe"] == "adam + bce, lr 0.003 (backbone x0.1), lr x0.1 after epoch 5"
    assert table.loc["head-a", "recipe"] == "not run"


def test_table2_rejects_coco_run(tmp_path):
    write_run(tmp_path, "e")
    with pytest.raises(ValueError, match="no AP for VOC classes"):
        tables.table2(tmp_path, "cpu", "coco-subset")


def test_corrupt_results_file_named(tmp_path):
    run_dir = write_run(tmp_path, "a")
    (run_dir / "metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match="a/metrics.json is not valid JSON"):
        tables.load_runs(tmp_path, "cpu", "coco-subset")


def test_chance_mAP_is_mean_prevalence(tmp_path):
    run_dir = write_run(tmp_path, "a")
    labels = np.array([[1, 0, 0], [1, 1, 0], [0, -1, 0], [0, 0, 0]])
    write_matrix_csv(run_dir / "labels.csv", ["1", "2", "3", "4"], ["x", "y", "z"], labels, fmt="%d")
    # x: 2 of 4 images; y: 1 of 3 counted (one difficult); z has no positive and is left out.
    assert tables.chance_mAP(tmp_path, "cpu", "coco-subset") == pytest.approx((2 / 4 + 1 / 3) / 2)


def test_links_point_to_run_pages(tmp_path):
    write_run(tmp_path, "c")
    linked = tables.link_runs(tables.table3(tmp_path, "cpu", "coco-subset"))
    assert linked.loc["c", "our run"] == '<a href="coco-subset/c/train_variant.html">c</a>'
    assert linked.loc["a", "our run"] == "not run"
