"""Tests for the evidence functions of the discrepancies chapter, on hand-worked cases."""

import json

import numpy as np
import pytest
import torch

from msdgcn import discrepancies

LAYOUT_NAME = "add-gcn-resnet101-80.json"


# --------------------------------------------------------------------------- loss


def test_loss_comparison_mean_equal_sum_scaled():
    result = discrepancies.loss_comparison(num_samples=4, num_classes=5, seed=1)
    assert result["mean_value_gap"] < 1e-15
    assert result["mean_gradient_gap"] < 1e-16
    assert result["sum_value_ratio"] == pytest.approx(5.0, rel=1e-12)
    assert result["sum_gradient_ratio_min"] == pytest.approx(5.0, rel=1e-9)
    assert result["sum_gradient_ratio_max"] == pytest.approx(5.0, rel=1e-9)


# --------------------------------------------------------------------------- SAM and layout


def test_sam_modules_without_activation():
    assert dict(discrepancies.sam_activation_modules("leaky_relu")) == {
        "class_conv": "Conv2d", "transform_conv": "Conv2d", "transform_activation": "Identity"}
    assert dict(discrepancies.sam_activation_modules("gelu"))["transform_activation"] == "GELU"


def test_head_layout_matches_official(shared_dir):
    rows = discrepancies.compare_head_layout(shared_dir / "data" / "official-layouts" / LAYOUT_NAME)
    by_key = {row["official key"]: row for row in rows}
    assert len(rows) == len(discrepancies.OFFICIAL_HEAD_KEYS)
    assert all(row["shapes agree"] for row in rows if row["our key"] is not None)
    assert by_key["mask_mat"]["our key"] is None
    assert by_key["last_linear.weight"]["our shape"] == [80, 1024]
    assert by_key["gcn.conv_create_co_mat.weight"]["official shape"] == [80, 2048, 1]


def test_head_layout_detects_wrong_shape(tmp_path):
    entries = [
        {"key": "fc.weight", "shape": [3, 16, 1, 1]},
        {"key": "conv_transform.weight", "shape": [8, 16, 1, 1]},
        {"key": "conv_transform.bias", "shape": [7]},
        {"key": "extra.weight", "shape": [1]},
    ]
    path = tmp_path / "layout.json"
    path.write_text(json.dumps({"state_dict": entries}))
    rows = {row["official key"]: row for row in discrepancies.compare_head_layout(path, in_channels=16, hidden_dim=8)}
    assert rows["fc.weight"]["shapes agree"] is True
    assert rows["conv_transform.weight"]["shapes agree"] is True
    assert rows["conv_transform.bias"]["shapes agree"] is False
    assert rows["extra.weight"]["our key"] == "(no counterpart)"


def test_read_layout_rejects_malformed_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        discrepancies.read_layout(path)


# --------------------------------------------------------------------------- schedule and resume


def test_official_schedule_drops_one_epoch_late():
    # epoch_step [1]: the check at epoch 2 (0-based) reads the previous index 1, so the rate
    # drops at 0-based epoch 2, one epoch after MultiStepLR with milestone 1.
    assert discrepancies.official_lr_schedule(5, [1], 1.0) == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.1])
    assert discrepancies.multistep_lr_schedule(5, [1], 1.0) == pytest.approx([1.0, 0.1, 0.1, 0.1, 0.1])


def test_official_schedule_step_zero_applies_twice():
    # self.epoch is 0 before the first epoch and again after it, so a step at 0 decays twice.
    assert discrepancies.official_lr_schedule(3, [0], 1.0) == pytest.approx([0.1, 0.01, 0.01])


def test_official_schedule_paper_recipe():
    rates = discrepancies.official_lr_schedule(50, [30, 40], 0.05)
    assert rates[30] == pytest.approx(0.05)  # 1-based epoch 31
    assert rates[31] == pytest.approx(0.005)
    assert rates[41] == pytest.approx(0.0005)


def test_official_resume_loses_past_drops():
    # Resumed at 0-based epoch 3 with a step at 1: the rate restarts at lr, not at 0.1 * lr.
    assert discrepancies.official_lr_schedule(5, [1], 1.0, start_epoch=3) == pytest.approx([1.0, 1.0])


def test_our_resume_keeps_schedule():
    uninterrupted = discrepancies.multistep_lr_schedule(10, [3, 6], 1.0)
    assert discrepancies.multistep_lr_schedule(10, [3, 6], 1.0, resume_after=4) == pytest.approx(uninterrupted)


def test_official_resume_inherits_epoch_and_score():
    result = discrepancies.official_resume({"epoch": 50, "best_score": 0.8}, epochs=50)
    assert result == {"start_epoch": 50, "epochs_run": 0, "score_to_beat": 0.8}
    assert discrepancies.official_resume({"epoch": 10, "best_score": 0.5}, epochs=50)["epochs_run"] == 40


# --------------------------------------------------------------------------- class order


def test_class_order_alphabetical_against_ids(shared_dir):
    rows = discrepancies.class_order_comparison(
        shared_dir / "data" / "ml-gcn" / "coco.npz",
        shared_dir / "data" / "coco-subset" / "annotations" / "instances.json",
    )
    assert len(rows) == 80
    assert rows[0]["ML-GCN / ADD-GCN name"] == "airplane"
    assert rows[0]["its category id"] == 5
    assert rows[0]["name in category-id order"] == "person"
    names = [row["ML-GCN / ADD-GCN name"] for row in rows]
    assert names == sorted(names)


# --------------------------------------------------------------------------- D-GCN transpose


def test_dynamic_propagation_code_is_transpose():
    result = discrepancies.dynamic_propagation(num_nodes=4, hidden_dim=3, seed=2)
    adjacency, nodes = result["adjacency"], result["nodes"]
    # Node j receives sum_i A_d[i, j] h_i in the code, sum_i A_d[j, i] h_i in eq. (2).
    expected_code = torch.stack([sum(adjacency[i, j] * nodes[i] for i in range(4)) for j in range(4)])
    expected_paper = torch.stack([sum(adjacency[j, i] * nodes[i] for i in range(4)) for j in range(4)])
    torch.testing.assert_close(result["code"], expected_code)
    torch.testing.assert_close(result["paper"], expected_paper)
    torch.testing.assert_close(result["module_output"], result["code"])
    assert (result["code"] - result["paper"]).abs().max() > 1e-3


# --------------------------------------------------------------------------- ML-GCN correlation

# Three classes: P(1 | 0) = 0.4, P(0 | 1) = 0.8 and P(0 | 2) = 0.5 pass tau = 0.4, P(2 | 0) = 0.1 does not.
COOCCURRENCE = np.array([[0, 4, 1], [4, 0, 0], [1, 0, 0]])
COUNTS = np.array([10, 5, 2])


def test_mlgcn_correlation_paper_hand_case():
    expected = np.array([[0.75, 0.25, 0.0], [0.25, 0.75, 0.0], [0.25, 0.0, 0.75]])
    np.testing.assert_allclose(discrepancies.mlgcn_correlation_paper(COOCCURRENCE, COUNTS), expected)


def test_mlgcn_correlation_code_hand_case():
    # Column sums of the binary matrix are 2, 1 and 0.
    expected = np.array([[1.0, 0.25 / (1 + 1e-6), 0.0], [0.25 / (2 + 1e-6), 1.0, 0.0], [0.25 / (2 + 1e-6), 0.0, 1.0]])
    np.testing.assert_allclose(discrepancies.mlgcn_correlation_code(COOCCURRENCE, COUNTS), expected)
