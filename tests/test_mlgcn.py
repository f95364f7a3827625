"""ML-GCN head: the correlation matrix by hand, GloVe rows by name, logits from their parts,
and a smoke run through `run.train_run` whose results fill the tables."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from msdgcn import tables
from msdgcn.engine import load_init_weights
from msdgcn.metrics import read_matrix_csv
from msdgcn.models import (
    MLGCNHead,
    ModelConfig,
    build_model,
    correlation_matrix,
    label_cooccurrence,
    load_glove,
    normalized_adjacency,
)
from msdgcn.models.mlgcn import ML_GCN_DATA_ENV
from msdgcn.profiles import resolve_run
from msdgcn.run import build_run_data, build_run_model, train_run


@pytest.fixture
def glove_dir(shared_dir, monkeypatch):
    folder = shared_dir / "data" / "ml-gcn"
    monkeypatch.setenv(ML_GCN_DATA_ENV, str(folder))
    return folder


def npz_names(path):
    return [str(name) for name in np.load(path)["class_names"]]


# ---------------------------------------------------------------------------------------------
# Correlation matrix
# ---------------------------------------------------------------------------------------------


def test_correlation_matrix_hand_worked():
    # 10, 5 and 4 training images contain classes 0, 1 and 2; pairs (0, 1): 5, (0, 2): 2, (1, 2): 1.
    cooccurrence = np.array([[0, 5, 2], [5, 0, 1], [2, 1, 0]])
    counts = np.array([10, 5, 4])
    # P(j | i) row by row: [0, .5, .2], [1, 0, .2], [.5, .25, 0]. At tau = 0.4 the edges are
    # 0->1, 1->0 and 2->0, so column sums are 2, 1 and 0. Column 0 scales to 0.25 / 2 = 0.125,
    # column 1 to 0.25 / 1; adding I gives A below (up to the 1e-6 in the denominators).
    expected_a = np.array(
        [
            [1.0, 0.25, 0.0],
            [0.125, 1.0, 0.0],
            [0.125, 0.0, 1.0],
        ]
    )
    a = correlation_matrix(cooccurrence, counts)
    np.testing.assert_allclose(a, expected_a, atol=1e-6)

    # Row sums d = 1.25, 1.125, 1.125. A_hat[i, j] = A[j, i] / sqrt(d_i d_j), with
    # sqrt(1.25 * 1.125) = 1.1858541.
    expected_a_hat = np.array(
        [
            [1 / 1.25, 0.125 / 1.1858541, 0.125 / 1.1858541],
            [0.25 / 1.1858541, 1 / 1.125, 0.0],
            [0.0, 0.0, 1 / 1.125],
        ]
    )
    a_hat = normalized_adjacency(torch.from_numpy(a))
    np.testing.assert_allclose(a_hat.numpy(), expected_a_hat, atol=1e-6)
    np.testing.assert_allclose(expected_a_hat[0], [0.8, 0.1054093, 0.1054093], atol=1e-6)


def test_class_without_positives_has_no_edges():
    cooccurrence = np.array([[0, 0], [0, 0]])
    a = correlation_matrix(cooccurrence, np.array([3, 0]))
    np.testing.assert_array_equal(a, np.eye(2))


def test_cooccurrence_counts_ones_only():
    targets = np.array(
        [
            [1, 1, 0],
            [1, -1, 1],
            [0, 1, 1],
            [1, 1, 1],
        ]
    )
    cooccurrence, counts = label_cooccurrence(targets)
    np.testing.assert_array_equal(counts, [3, 3, 3])
    np.testing.assert_array_equal(cooccurrence, [[0, 2, 2], [2, 0, 2], [2, 2, 0]])


def test_difficult_labels_follow_training_rule(glove_dir):
    names = npz_names(glove_dir / "voc.npz")[:3]  # aeroplane, bicycle, bird
    targets = np.array([[1, -1, 0], [1, 0, 0], [0, 1, 1]])
    buffers = {}
    for difficult_as in ("positive", "negative"):
        config = resolve_run("smoke", "ml-gcn", "coco-subset", "/data", dict(difficult_as=difficult_as))
        model = build_run_model(config, names, targets)
        buffers[difficult_as] = model.head.correlation
    # As positive, the difficult bicycle makes P(bicycle | aeroplane) = 1/2 >= 0.4, an edge.
    assert buffers["positive"][0, 1] > 0
    assert buffers["negative"][0, 1] == 0


def test_run_model_requires_training_labels(glove_dir):
    config = resolve_run("smoke", "ml-gcn", "coco-subset", "/data")
    with pytest.raises(ValueError, match="training labels"):
        build_run_model(config, npz_names(glove_dir / "voc.npz"))


# ---------------------------------------------------------------------------------------------
# GloVe label embeddings
# ---------------------------------------------------------------------------------------------


def test_glove_rows_follow_class_names(glove_dir):
    archive = np.load(glove_dir / "voc.npz")
    names = npz_names(glove_dir / "voc.npz")
    order = np.random.default_rng(0).permutation(len(names))
    permuted = [names[i] for i in order]

    vectors = load_glove(names)
    permuted_vectors = load_glove(permuted)

    assert vectors.shape == (20, 300)
    np.testing.assert_array_equal(vectors, archive["glove"])
    np.testing.assert_array_equal(permuted_vectors, archive["glove"][order])


def test_glove_file_chosen_by_class_names(glove_dir, coco_subset_dir):
    coco_names = json.loads((coco_subset_dir / "annotations" / "instances.json").read_text())["categories"]
    coco_names = [category["name"] for category in coco_names]
    vectors = load_glove(coco_names)
    archive = np.load(glove_dir / "coco.npz")
    row = npz_names(glove_dir / "coco.npz").index(coco_names[0])
    np.testing.assert_array_equal(vectors[0], archive["glove"][row])
    assert vectors.shape == (80, 300)


def test_glove_missing_name_and_file(glove_dir, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="voc.npz has no vector for the classes \\['unicorn'\\]"):
        load_glove(["dog", "unicorn"], glove_dir / "voc.npz")
    with pytest.raises(ValueError, match="no GloVe file .* names every class"):
        load_glove(["dog", "unicorn"])
    monkeypatch.setenv(ML_GCN_DATA_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"GloVe file not found: {tmp_path / 'coco.npz'}"):
        load_glove(["dog"])


# ---------------------------------------------------------------------------------------------
# Head
# ---------------------------------------------------------------------------------------------


def leaky_relu(x, slope=0.2):
    return np.where(x > 0, x, slope * x)


def test_logits_equal_classifiers_dot_max_pooled_features():
    torch.manual_seed(0)
    num_classes, embedding_dim, hidden_dim, channels = 4, 5, 6, 7
    correlation = torch.from_numpy(
        correlation_matrix(np.array([[0, 3, 1, 0], [3, 0, 2, 0], [1, 2, 0, 1], [0, 0, 1, 0]]), np.array([4, 5, 3, 2]))
    )
    embeddings = torch.randn(num_classes, embedding_dim)
    head = MLGCNHead(channels, num_classes, hidden_dim, correlation, embeddings)
    features = torch.randn(2, channels, 3, 4)

    details = head.forward_details(features)

    a = correlation.numpy()
    scale = np.diag(a.sum(axis=1) ** -0.5)
    a_hat = (a @ scale).T @ scale
    w1 = head.gc1.weight.detach().double().numpy()
    w2 = head.gc2.weight.detach().double().numpy()
    classifiers = a_hat @ (leaky_relu(a_hat @ (embeddings.double().numpy() @ w1)) @ w2)  # (C, D)
    pooled = features.double().numpy().max(axis=(2, 3))  # (B, D)
    logits = pooled @ classifiers.T

    assert details["logits"].shape == (2, num_classes)
    assert details["activation_maps"].shape == (2, num_classes, 3, 4)
    np.testing.assert_allclose(details["classifiers"].detach().numpy(), classifiers, atol=1e-5)
    np.testing.assert_allclose(details["logits"].detach().numpy(), logits, atol=1e-5)
    np.testing.assert_allclose(head(features).detach().numpy(), logits, atol=1e-5)
    maps = np.einsum("cd,bdhw->bchw", classifiers, features.double().numpy())
    np.testing.assert_allclose(details["activation_maps"].detach().numpy(), maps, atol=1e-5)
    np.testing.assert_allclose(details["adjacency"].numpy(), a_hat, atol=1e-6)


def test_learned_embeddings_are_trained():
    head = MLGCNHead(8, 3, 4, torch.eye(3), learn_embeddings=True, embedding_dim=5)
    assert head.label_embeddings.shape == (3, 5)
    assert any(param is head.label_embeddings for param in head.parameters())
    head(torch.randn(2, 8, 2, 2)).sum().backward()
    assert head.label_embeddings.grad is not None


def test_head_without_buffers_raises_until_loaded(glove_dir):
    names = npz_names(glove_dir / "voc.npz")
    config = ModelConfig(head="ml-gcn", backbone="resnet18", num_classes=20, hidden_dim=8)
    built = build_model(config, names, np.eye(20, dtype=np.int8))
    bare = build_model(config)
    images = torch.randn(1, 3, 64, 64)
    with pytest.raises(RuntimeError, match="has no correlation or label_embeddings"):
        bare(images)
    bare.load_state_dict(built.state_dict())
    torch.testing.assert_close(bare.eval()(images), built.eval()(images))


def test_init_weights_reorder_correlation_by_name(glove_dir, tmp_path):
    names = npz_names(glove_dir / "voc.npz")
    targets = np.random.default_rng(1).integers(0, 2, size=(40, 20))
    config = ModelConfig(head="ml-gcn", backbone="resnet18", num_classes=20, hidden_dim=8)
    source = build_model(config, names, targets).eval()
    torch.save({"model": source.state_dict(), "class_names": names}, tmp_path / "source.pt")

    order = np.random.default_rng(2).permutation(20)
    reordered_names = [names[i] for i in order]
    target = build_model(config, reordered_names, targets[:, order] * 0).eval()
    load_init_weights(target, tmp_path / "source.pt", reordered_names)

    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(target(images), source(images)[:, order])
    torch.testing.assert_close(target.head.correlation, source.head.correlation[order][:, order])


def test_fine_tuning_keeps_own_correlation(glove_dir, tmp_path):
    names = npz_names(glove_dir / "voc.npz")
    config = resolve_run("smoke", "ml-gcn", "coco-subset", "/data")
    source = build_run_model(config, names, np.ones((4, 20), dtype=np.int8))
    torch.save({"model": source.state_dict(), "class_names": names}, tmp_path / "source.pt")

    targets = np.eye(20, dtype=np.int8)  # no pair of classes co-occurs: no edges
    config.init_weights = str(tmp_path / "source.pt")
    model = build_run_model(config, names, targets)

    torch.testing.assert_close(model.head.correlation, torch.eye(20))
    torch.testing.assert_close(model.head.gc1.weight, source.head.gc1.weight)


# ---------------------------------------------------------------------------------------------
# Smoke run through the real path, then the tables
# ---------------------------------------------------------------------------------------------


def test_smoke_run_fills_table_rows(glove_dir, coco_subset_dir, tmp_path):
    config = resolve_run("smoke", "ml-gcn", "coco-subset", str(coco_subset_dir))
    run_dir = tmp_path / "smoke" / "coco-subset" / "ml-gcn"
    result = train_run(config, run_dir, progress=False)

    stored = json.loads((run_dir / "metrics.json").read_text())
    assert stored["config"]["model"]["head"] == "ml-gcn"
    assert stored["config"]["model"]["label_embedding"] == "glove"
    assert stored["provenance"]["val_data"]["images"] == 8
    image_ids, class_names, scores = read_matrix_csv(run_dir / "predictions.csv")
    assert scores.shape == (8, 80)
    assert class_names == result["class_names"]

    # The checkpoint carries the correlation matrix of the 12 training images of the run.
    checkpoint = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=False)
    assert stored["provenance"]["train_data"]["images"] == 12
    train_set, _ = build_run_data(config)
    expected = correlation_matrix(*label_cooccurrence(train_set.targets))
    np.testing.assert_allclose(checkpoint["model"]["head.correlation"].numpy(), expected, atol=1e-6)
    assert checkpoint["model"]["head.label_embeddings"].shape == (80, 300)

    table1 = tables.table1(tmp_path, "smoke", "coco-subset")
    row = table1.loc["ours: ML-GCN, resnet18, random init (ml-gcn)"]
    assert row["all mAP"] == round(100 * stored["metrics"]["mAP"], 1)
    assert row["top-3 CF1"] == round(100 * stored["metrics"]["top3"]["CF1"], 1)
    assert row["run"] == "results/smoke/coco-subset/ml-gcn/train_variant.ipynb"
    gap_row = table1.loc["ours: GAP baseline, resnet18, random init (gap)"]
    assert gap_row["all mAP"] == "not run"
    assert gap_row["run"].startswith("python -m msdgcn batch --profile smoke --dataset coco-subset")
