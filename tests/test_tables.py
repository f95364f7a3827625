"""Tables read results files only: measured rows, "not run" rows, chance level."""

from __future__ import annotations

import json

import numpy as np
import pytest

from msdgcn import tables
from msdgcn.metrics import write_matrix_csv


def write_run(root, variant, mAP=0.5, dataset="coco-subset", per_class_AP=None):
    run_dir = root / "cpu" / dataset / variant
    run_dir.mkdir(parents=True)
    metrics = {key: 0.25 for key in ("CP", "CR", "CF1", "OP", "OR", "OF1")}
    run = {
        "variant": variant,
        "profile": "cpu",
        "dataset": dataset,
        "table3": {"mAP": mAP, "CF1": 0.4, "OF1": 0.45, "batch_time": 1.234, "average_loss": 0.0812, "best_epoch": 2},
        "metrics": {"mAP": mAP, **metrics, "top3": dict(metrics), "per_class_AP": per_class_AP or {}},
        "config": {
            "model": {"backbone": "resnet50", "pretrained": None},
            "image_size": 128,
            "epochs": 2,
            "optim": {"optimizer": "adam", "loss": "bce", "lr": 0.003, "backbone_lr_mult": 0.1, "milestones": [5], "gamma": 0.1},
        },
        "provenance": {"seed": 0, "train_data": {"images": 514}, "val_data": {"images": 124}},
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
    assert tables.not_run(tmp_path, "cpu", "coco-subset") == [
        "gap", "gmp", "head-gap", "head-gmp", "ml-gcn", "head-mlgcn", "a", "head-a", "head-e",
    ]  # fmt: skip


def test_table1_fills_gmp_and_ml_gcn_rows(tmp_path):
    write_run(tmp_path, "gmp", mAP=0.2)
    write_run(tmp_path, "ml-gcn", mAP=0.3)
    table = tables.table1(tmp_path, "cpu", "coco-subset")

    assert table.loc["ours: GMP baseline, resnet50, random init (gmp)", "all mAP"] == 20.0
    ml_gcn = table.loc["ours: ML-GCN, resnet50, random init (ml-gcn)"]
    assert ml_gcn["all mAP"] == 30.0
    assert ml_gcn["top-3 OF1"] == 25.0
    assert ml_gcn["source"] == "measured: cpu profile, coco-subset"
    assert table.loc["ML-GCN", "all mAP"] == 83.0
    assert table.loc["ML-GCN", "source"] == "cited by the paper"

    head_row = table.loc["ours: ML-GCN head, efficientnet_lite0, ImageNet init (head-mlgcn)"]
    assert head_row["all mAP"] == "not run"
    assert head_row["scale"] == "not run"
    assert head_row["run"] == (
        "python -m msdgcn batch --profile cpu --dataset coco-subset "
        "--data-root ../shared/data/coco-subset --variants head-mlgcn"
    )
    # Rows of ours follow the paper's order: baselines, ML-GCN, ADD-GCN, the paper's model.
    ours = [name.rsplit("(", 1)[1].rstrip(")") for name in table.index if name.startswith("ours:")]
    assert ours == list(tables.MEASURED_VARIANTS)


def test_table2_fills_ml_gcn_per_class(tmp_path):
    per_class = {name: index / 100 for index, name in enumerate(tables.paper.VOC_CLASSES)}
    write_run(tmp_path, "ml-gcn", mAP=0.4, dataset="coco-subset-voc20", per_class_AP=per_class)
    table = tables.table2(tmp_path, "cpu", "coco-subset-voc20")
    row = table.loc["ours: ML-GCN, resnet50, random init (ml-gcn)"]
    assert row["aeroplane"] == 0.0
    assert row["tvmonitor"] == 19.0
    assert row["mAP"] == 40.0
    assert table.loc["ours: GMP baseline, resnet50, random init (gmp)", "mAP"] == "not run"
    assert table.loc["SSGRL", "mAP"] == 95.0


def test_scale_caption_names_run_scale(tmp_path):
    assert tables.scale_caption(tmp_path, "cpu", "coco-subset") == "Ours: no run of the cpu profile on coco-subset yet."
    write_run(tmp_path, "ml-gcn")
    assert tables.scale_caption(tmp_path, "cpu", "coco-subset") == (
        "Ours: cpu profile on coco-subset, 128 px, 2 epochs (ml-gcn); seed 0, 124 validation images."
    )
    write_run(tmp_path, "head-mlgcn")
    caption = tables.scale_caption(tmp_path, "cpu", "coco-subset")
    assert "128 px, 2 epochs (ml-gcn, head-mlgcn);" in caption


def test_cited_numbers_match_paper_text(shared_dir):
    """Every cited row of Tables 1 and 2 equals the paper's printed row ("-" as not reported)."""
    text = (shared_dir / "paper" / "msd-gcn-paper.md").read_text().replace("<b>", "").replace("</b>", "")
    table1_text = text[text.index("Table 1 The proposed") : text.index("Table 2 Comparison")]
    table2_text = text[text.index("Table 2 Comparison") : text.index("Table 3 The")]
    names = {"Our": "MSD-GCN (paper)"}

    def printed_rows(section, methods):
        rows = {}
        for line in section.splitlines():
            cells = line.split("\t")
            name = names.get(cells[0], cells[0])
            if name in methods:
                rows[name] = [np.nan if cell == "-" else float(cell) for cell in cells[1:]]
        return rows

    printed1 = printed_rows(table1_text, tables.paper.TABLE1)
    assert set(printed1) == set(tables.paper.TABLE1)
    for method, (all_values, top3_values) in tables.paper.TABLE1.items():
        np.testing.assert_array_equal(printed1[method], [*all_values, *top3_values], err_msg=method)
    printed2 = printed_rows(table2_text, tables.paper.TABLE2)
    assert set(printed2) == set(tables.paper.TABLE2)
    for method, values in tables.paper.TABLE2.items():
        np.testing.assert_array_equal(printed2[method], values, err_msg=method)


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


def test_table2_caption_states_where_the_rows_start():
    paper_start = tables.start_caption("paper", "voc2007")
    assert "best coco2014 checkpoint" in paper_start
    cpu_start = tables.start_caption("cpu", "coco-subset-voc20")
    assert "no COCO-trained start" in cpu_start


def test_report_rejects_unknown_profile(tmp_path):
    from msdgcn.report import plan_report

    with pytest.raises(ValueError, match="unknown profile 'nope'"):
        plan_report("nope", tmp_path)
    assert not (tmp_path / "nope").exists()


def test_positive_counts_per_class(tmp_path):
    assert tables.positive_counts(tmp_path, "cpu", "coco-subset") is None
    run_dir = write_run(tmp_path, "a")
    labels = np.array([[1, 0, 0], [1, 1, 0], [0, -1, 0], [0, 0, 0]])
    write_matrix_csv(run_dir / "labels.csv", ["1", "2", "3", "4"], ["x", "y", "z"], labels, fmt="%d")
    counts = tables.positive_counts(tmp_path, "cpu", "coco-subset")
    assert counts.to_dict() == {"x": 2, "y": 1, "z": 0}


def test_f1_mismatch_in_cited_rows():
    mismatches = tables.f1_mismatches()
    # ADD-GCN's top-3 CP 89.2 and CR 65.2 give CF1 75.3, but the paper prints 78.9.
    row = mismatches[(mismatches["method"] == "ADD-GCN") & (mismatches["metric"] == "top-3 CF1")]
    assert len(row) == 1
    assert row.iloc[0]["printed"] == 78.9
    assert row.iloc[0]["from printed P and R"] == 75.3
