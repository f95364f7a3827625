"""Attention maps and graphs: the shown data are the model's own tensors; the pair analysis."""

from __future__ import annotations

import json
import logging

import matplotlib.pyplot as plt
import nbformat
import numpy as np
import pytest
import torch

from msdgcn import attention
from msdgcn.batch import NOTEBOOK_DIR
from msdgcn.engine import CHECKPOINT_FORMAT, save_checkpoint
from msdgcn.profiles import resolve_run
from msdgcn.report import execute, plan_report
from msdgcn.run import build_run_model

# The smoke profile's resnet18 models at 64 px, with random weights: the tests check that the
# tensors shown are the model's, whatever their values.


def write_tiny_checkpoint(results, coco_subset_dir, variant: str):
    """Build a smoke-profile model and save it as results/smoke/coco-subset/<variant>/checkpoints/best.pt."""
    config = resolve_run("smoke", variant, "coco-subset", str(coco_subset_dir))
    train_set, _ = attention.load_run_data(config)
    torch.manual_seed(0)
    model = build_run_model(config, train_set.class_names)
    path = results / "smoke" / "coco-subset" / variant / "checkpoints" / "best.pt"
    save_checkpoint(
        path,
        {"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "epoch": 1, "config": config.to_dict(),
         "class_names": list(train_set.class_names)},
    )  # fmt: skip
    return path, model.eval()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, coco_subset_dir):
    results = tmp_path_factory.mktemp("results")
    path, original = write_tiny_checkpoint(results, coco_subset_dir, "a")
    run = attention.load_trained_run(path)
    _, val_set = attention.load_run_data(run.config)
    details = attention.compute_details(run.model, val_set)
    return results, path, original, run, val_set, details


def own_details(run, val_set, row):
    """forward_details of one image, run here independently of the module's batching."""
    with torch.no_grad():
        return run.model.forward_details(val_set[row][0][None])


def test_checkpoint_restores_model(tiny_run):
    _, _, original, run, val_set, _ = tiny_run
    image = val_set[0][0][None]
    with torch.no_grad():
        torch.testing.assert_close(run.model(image), original(image))
    assert run.head == "add-gcn"
    assert run.epoch == 1


def test_overlay_count_equals_predictions(tiny_run):
    _, _, _, run, val_set, details = tiny_run
    for row in range(3):
        probabilities = torch.sigmoid(own_details(run, val_set, row)["logits"][0]).numpy()
        expected = int((probabilities >= 0.5).sum())
        overlays = attention.attention_overlays(details, row, run.class_names, threshold=0.5)
        assert len(overlays) == expected
        capped = attention.attention_overlays(details, row, run.class_names, threshold=0.5, max_classes=2)
        assert len(capped) == min(expected, 2)
        figure = attention.plot_attention_grid(val_set.read_image(row), capped, "t", "c", run.head)
        shown = [image for ax in figure.axes for image in ax.images if str(image.get_gid()).startswith("attention:")]
        assert len(shown) == len(capped)
        plt.close(figure)


def test_overlays_are_sam_attention(tiny_run):
    _, _, _, run, val_set, details = tiny_run
    row = 1
    maps = torch.sigmoid(own_details(run, val_set, row)["activation_maps"][0]).numpy()
    overlays = attention.attention_overlays(details, row, run.class_names, threshold=0.0, max_classes=5)
    probabilities = [overlay.probability for overlay in overlays]
    assert probabilities == sorted(probabilities, reverse=True)
    for overlay in overlays:
        np.testing.assert_allclose(overlay.attention, maps[overlay.class_index], atol=1e-6)


def test_adjacency_view_is_model_adjacency(tiny_run):
    _, _, _, run, val_set, details = tiny_run
    row = 2
    own = own_details(run, val_set, row)
    dynamic = own["dynamic_adjacency"][0].numpy()
    static = own["static_adjacency"].detach().numpy()
    true_classes = np.flatnonzero(val_set.targets[row] == 1).tolist()
    view = attention.adjacency_view(details, row, true_classes, run.class_names, threshold=0.5, max_classes=3)

    predicted = attention.attention_overlays(details, row, run.class_names, threshold=0.5, max_classes=3)
    predicted = [overlay.class_index for overlay in predicted]
    assert view.class_indices == predicted + [c for c in true_classes if c not in predicted]
    for r, receiver in enumerate(view.class_indices):
        for s, sender in enumerate(view.class_indices):
            # Node `receiver` takes A_d[sender, receiver] of node `sender`'s message.
            assert view.dynamic[r, s] == pytest.approx(dynamic[sender, receiver], abs=1e-6)
            assert view.static[r, s] == pytest.approx(static[receiver, sender], abs=1e-6)

    figure = attention.plot_adjacency(view, "t", "c")
    shown_dynamic = figure.axes[0].collections[0].get_array().reshape(view.dynamic.shape)
    shown_static = figure.axes[1].collections[0].get_array().reshape(view.static.shape)
    np.testing.assert_allclose(shown_dynamic, view.dynamic)
    np.testing.assert_allclose(shown_static, view.static)
    plt.close(figure)


def test_gap_head_shows_cams(tmp_path, coco_subset_dir):
    path, _ = write_tiny_checkpoint(tmp_path, coco_subset_dir, "gap")
    run = attention.load_trained_run(path)
    _, val_set = attention.load_run_data(run.config)
    details = attention.compute_details(run.model, val_set, rows=[0, 1])
    maps = own_details(run, val_set, 1)["activation_maps"][0].numpy()
    overlays = attention.attention_overlays(details, 1, run.class_names, threshold=0.0, max_classes=3)
    assert len(overlays) == 3
    for overlay in overlays:
        np.testing.assert_allclose(overlay.attention, maps[overlay.class_index], atol=1e-5)
    with pytest.raises(ValueError, match="no adjacency"):
        attention.adjacency_view(details, 1, [0], run.class_names)


def test_missing_checkpoint_names_command(tmp_path):
    missing = tmp_path / "results" / "cpu" / "coco-subset" / "head-d" / "checkpoints" / "best.pt"
    with pytest.raises(FileNotFoundError) as error:
        attention.load_trained_run(missing)
    message = str(error.value)
    assert str(missing) in message
    assert "bash scripts/main_job.sh" in message
    assert "python -m msdgcn train --profile cpu --dataset coco-subset --variant head-d" in message


def test_select_images_rejects_unknown_id(tiny_run):
    _, _, _, _, val_set, details = tiny_run
    with pytest.raises(ValueError, match="not-an-id"):
        attention.select_images(val_set, details, ["not-an-id"], 1)
    rows = attention.select_images(val_set, details, None, 2, threshold=0.0)
    assert len(rows) == 2
    assert all((val_set.targets[row] == 1).sum() >= 2 for row in rows)
    # No probability reaches 1.5, so the first images are taken instead.
    assert attention.select_images(val_set, details, None, 2, threshold=1.5) == details.rows[:2]


# A_d of two images over classes a, b, c; [i, j] weights class i's message to class j.
HAND_DYNAMIC = np.array(
    [
        [[0.5, 0.8, 0.1], [0.2, 0.5, 0.3], [0.1, 0.4, 0.5]],
        [[0.5, 0.6, 0.3], [0.4, 0.5, 0.1], [0.3, 0.2, 0.5]],
    ]
)
# Four training images; the -1 of the second image does not count as c present.
HAND_LABELS = np.array([[1, 1, 0], [1, 1, -1], [0, 1, 1], [1, 0, 0]])


def test_cooccurrence_hand_case():
    expected = np.array([[3, 2, 0], [2, 3, 1], [0, 1, 1]])
    np.testing.assert_array_equal(attention.label_cooccurrence(HAND_LABELS), expected)


def test_top_pairs_hand_case():
    # Mean A_d: a->b 0.7, b->a 0.3 (pair mean 0.5); b->c 0.2, c->b 0.3 (0.25); a->c = c->a = 0.2.
    pairs = attention.linked_pairs(HAND_DYNAMIC.mean(axis=0), attention.label_cooccurrence(HAND_LABELS), ["a", "b", "c"])
    assert list(zip(pairs["class_a"], pairs["class_b"])) == [("a", "b"), ("b", "c"), ("a", "c")]
    np.testing.assert_allclose(pairs["mean A_d"], [0.5, 0.25, 0.2])
    np.testing.assert_allclose(pairs["A_d a to b"], [0.7, 0.2, 0.2])
    np.testing.assert_allclose(pairs["A_d b to a"], [0.3, 0.3, 0.2])
    assert list(pairs["co-occurrence"]) == [2, 1, 0]
    correlation = attention.rank_correlation(pairs)
    assert correlation["rho"] == pytest.approx(1.0)
    assert correlation["pairs"] == 3


def test_node_strengths_hand_case():
    strengths = attention.node_strengths(HAND_DYNAMIC.mean(axis=0), ["a", "b", "c"])
    assert list(strengths.index) == ["b", "a", "c"]
    np.testing.assert_allclose(strengths.loc["b", "received"], (0.7 + 0.3) / 2)
    np.testing.assert_allclose(strengths.loc["a", "sent"], (0.7 + 0.2) / 2)


def test_report_skips_attention_without_checkpoint(tmp_path, caplog, repo_root):
    run_dir = tmp_path / "cpu" / "coco-subset" / "head-e"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps({}))
    with caplog.at_level(logging.INFO, logger="msdgcn.report"):
        notebooks = [job.notebook for job in plan_report("cpu", tmp_path)]
    assert notebooks == ["tables.py", "figures.py", "per_class.py"]
    assert "skipping the attention notebook" in caplog.text
    assert "bash scripts/main_job.sh" in caplog.text

    checkpoint = run_dir / "checkpoints" / "best.pt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"")
    jobs = {job.notebook: job for job in plan_report("cpu", tmp_path)}
    assert (NOTEBOOK_DIR / jobs["attention.py"].parameters["checkpoint"]).resolve() == checkpoint.resolve()
    assert jobs["attention.py"].output == tmp_path / "cpu" / "attention.ipynb"


@pytest.mark.slow
def test_attention_notebook_runs(tiny_run, coco_subset_dir, tmp_path):
    _, path, _, run, val_set, details = tiny_run
    output = tmp_path / "attention.ipynb"
    execute(
        "attention.py",
        output,
        dict(checkpoint=str(path), data_root=str(coco_subset_dir), num_images=1, max_classes=3,
             output_dir=str(tmp_path / "figures")),
    )  # fmt: skip
    row = attention.select_images(val_set, details, None, 1)[0]
    image_id = val_set.image_ids[row]
    expected = len(attention.attention_overlays(details, row, run.class_names, 0.5, 3))
    text = "".join(
        output_item.get("text", "")
        for cell in nbformat.read(output, as_version=4).cells
        if cell.cell_type == "code"
        for output_item in cell.outputs
    )
    assert f"predicted classes shown per image: {{'{image_id}': {expected}}}" in text
    assert "Spearman rank correlation" in text
    for name in (f"attention_{image_id}.png", f"adjacency_{image_id}.png"):
        assert (tmp_path / "figures" / name).stat().st_size > 10_000
