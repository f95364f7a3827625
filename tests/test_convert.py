"""Conversion of official ADD-GCN checkpoints: logits against an official-style forward pass."""

from __future__ import annotations

import hashlib
import json

import jupytext
import nbformat
import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from msdgcn.__main__ import main
from msdgcn.convert import (
    COCO_CLASSES,
    ConversionError,
    convert_state_dict,
    official_class_names,
    read_official_checkpoint,
    random_official_state_dict,
)
from msdgcn.engine import load_checkpoint
from msdgcn.models import ModelConfig, build_model
from msdgcn.predict import load_model_from_checkpoint

# Class-indexed tensors of the official model, written here from models/add_gcn.py of the
# official code, independently of ADDGCNHead.class_dims.
OFFICIAL_CLASS_DIMS = {
    "fc.weight": (0,),
    "gcn.static_adj.0.weight": (0, 1),
    "gcn.conv_create_co_mat.weight": (0,),
    "gcn.conv_create_co_mat.bias": (0,),
    "last_linear.weight": (0,),
    "last_linear.bias": (0,),
}
IMAGE_SIZE = 64


@pytest.fixture(scope="module")
def official_layout(shared_dir):
    path = shared_dir / "data" / "official-layouts" / "add-gcn-resnet101-80.json"
    return json.loads(path.read_text())["state_dict"]


@pytest.fixture(scope="module")
def official_state(official_layout):
    return random_official_state_dict(official_layout, seed=0)


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1))


def save_official(state, path):
    payload = {"epoch": 12, "model_name": "ADD_GCN", "state_dict": state, "best_score": torch.tensor(0.831)}
    torch.save(payload, path)
    return path


def convert_with_cli(source, destination):
    assert main(["convert", "--format", "add-gcn-official", str(source), str(destination)]) == 0
    return destination


@torch.no_grad()
def official_forward(state, images):
    """The official ADD-GCN forward pass, (out1 + out2) / 2, computed from the official tensors."""
    resnet = torchvision.models.resnet101()
    features = nn.Sequential(
        resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool,
        resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4,
    )  # fmt: skip
    features.load_state_dict({k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")})
    x = features.eval()(images)

    def lrelu(t):
        return F.leaky_relu(t, 0.2)

    cam = F.conv2d(x, state["fc.weight"]).flatten(2)  # (B, C, HW)
    out1 = cam.topk(1, dim=-1)[0].mean(dim=-1)
    transformed = F.conv2d(x, state["conv_transform.weight"], state["conv_transform.bias"]).flatten(2)
    v = torch.matmul(transformed, torch.sigmoid(cam).transpose(1, 2))  # (B, D1, C)

    static = lrelu(F.conv1d(v.transpose(1, 2), state["gcn.static_adj.0.weight"]))
    static = lrelu(F.conv1d(static.transpose(1, 2), state["gcn.static_weight.0.weight"], state["gcn.static_weight.0.bias"]))
    h = v + static
    glb = F.conv1d(h.mean(dim=2, keepdim=True), state["gcn.conv_global.weight"], state["gcn.conv_global.bias"])
    glb = F.batch_norm(
        glb, state["gcn.bn_global.running_mean"], state["gcn.bn_global.running_var"],
        state["gcn.bn_global.weight"], state["gcn.bn_global.bias"], training=False,
    )  # fmt: skip
    glb = lrelu(glb).expand(-1, -1, h.shape[2])
    adjacency = torch.sigmoid(
        F.conv1d(torch.cat((glb, h), dim=1), state["gcn.conv_create_co_mat.weight"], state["gcn.conv_create_co_mat.bias"])
    )
    dynamic = lrelu(torch.matmul(h, adjacency))
    dynamic = lrelu(F.conv1d(dynamic, state["gcn.dynamic_weight.weight"], state["gcn.dynamic_weight.bias"]))
    z = v + dynamic
    out2 = (F.conv1d(z, state["last_linear.weight"], state["last_linear.bias"]) * state["mask_mat"]).sum(-1)
    return (out1 + out2) / 2


@pytest.fixture(scope="module")
def converted(official_state, tmp_path_factory):
    folder = tmp_path_factory.mktemp("convert")
    source = save_official(official_state, folder / "checkpoint_best.pth")
    return source, convert_with_cli(source, folder / "converted.pt")


@pytest.fixture(scope="module")
def converted_logits(converted, images):
    with torch.no_grad():
        return load_model_from_checkpoint(converted[1]).model(images)


def official_position_of_ours():
    """Index array: for each class of ours (category-id order), its official (alphabetical) index."""
    official = official_class_names(80)
    return torch.tensor([official.index(name) for name in COCO_CLASSES])


def test_official_class_order_is_ml_gcn_order(shared_dir, coco_subset_dir):
    ml_gcn = np.load(shared_dir / "data" / "ml-gcn" / "coco.npz")["class_names"].tolist()
    assert official_class_names(80) == ml_gcn
    categories = json.loads((coco_subset_dir / "annotations" / "instances.json").read_text())["categories"]
    assert list(COCO_CLASSES) == [c["name"] for c in sorted(categories, key=lambda c: c["id"])]


def test_converted_logits_match_official_forward(official_state, images, converted_logits):
    reference = official_forward(official_state, images)
    expected = reference[:, official_position_of_ours()]
    assert converted_logits.shape == (2, 80)
    assert reference.std() > 0.1  # the random weights give logits that differ between classes
    torch.testing.assert_close(converted_logits, expected, rtol=1e-4, atol=1e-4 * float(reference.abs().max()))
    # Without the class reordering the logits would not match, so the order is really tested.
    assert not torch.allclose(converted_logits, reference, rtol=1e-3, atol=1e-3)


def test_converted_checkpoint_records_source(converted):
    source, destination = converted
    payload = load_checkpoint(destination)
    assert payload["source"]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert payload["source"]["path"] == str(source.resolve())
    assert payload["source"]["best_score"] == pytest.approx(0.831)
    assert payload["source"]["epoch"] == 12
    assert payload["class_names"] == list(COCO_CLASSES)
    assert payload["test_transform"] == {
        "resize": [448, 448], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
    }  # fmt: skip
    assert payload["config"]["model"]["backbone"] == "resnet101"
    assert payload["config"]["model"]["hidden_dim"] == 1024
    assert "mask_mat" not in payload["model"]


def test_class_permutation_permutes_logits(official_state, images, converted_logits, tmp_path):
    permutation = torch.randperm(80, generator=torch.Generator().manual_seed(2))
    permuted = dict(official_state)
    for key, dims in OFFICIAL_CLASS_DIMS.items():
        for dim in dims:
            permuted[key] = permuted[key].index_select(dim, permutation)
    source = save_official(permuted, tmp_path / "permuted.pth")
    destination = convert_with_cli(source, tmp_path / "permuted.pt")
    with torch.no_grad():
        logits = load_model_from_checkpoint(destination).model(images)

    # The permuted checkpoint's official output k is the original official output permutation[k].
    # Our class j sits at official position a[j], so it now shows the original class at official
    # position permutation[a[j]], which is our class ours_of_official[permutation[a[j]]].
    a = official_position_of_ours()
    ours_of_official = torch.argsort(a)
    expected = converted_logits[:, ours_of_official[permutation[a]]]
    scale = float(converted_logits.abs().max())
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4 * scale)


@pytest.fixture(scope="module")
def meta_target_state():
    with torch.device("meta"):
        return build_model(ModelConfig(backbone="resnet101")).state_dict()


def test_leftover_key_is_named(official_state, meta_target_state):
    state = dict(official_state, **{"gcn.extra_conv.weight": torch.zeros(3)})
    with pytest.raises(ConversionError, match="gcn.extra_conv.weight"):
        convert_state_dict(state, meta_target_state, 80)


def test_wrong_shape_is_named(official_state, meta_target_state):
    state = dict(official_state, **{"conv_transform.bias": torch.zeros(1023)})
    with pytest.raises(ConversionError, match=r"conv_transform.bias.*\(1023,\)"):
        convert_state_dict(state, meta_target_state, 80)


def test_missing_key_is_named(official_state, meta_target_state):
    state = {k: v for k, v in official_state.items() if k != "gcn.dynamic_weight.bias"}
    with pytest.raises(ConversionError, match="head.dgcn.dynamic_weight.bias"):
        convert_state_dict(state, meta_target_state, 80)


def test_mask_must_be_identity(official_state, meta_target_state):
    mask = torch.eye(80)
    mask[0, 1] = 1.0
    with pytest.raises(ConversionError, match="mask_mat.*not the identity"):
        convert_state_dict(dict(official_state, mask_mat=mask), meta_target_state, 80)


def test_convert_cli_reports_corrupt_source(tmp_path, capsys):
    source = tmp_path / "broken.pth"
    source.write_bytes(b"not a checkpoint")
    assert main(["convert", str(source), str(tmp_path / "out.pt")]) == 2
    error = capsys.readouterr().err
    assert "broken.pth" in error
    assert "weights_only" not in error
    assert not (tmp_path / "out.pt").exists()


def test_convert_rejects_converted_checkpoint(tmp_path):
    converted = tmp_path / "ours.pt"
    torch.save({"format": 1, "model": {"head": "add-gcn"}, "state_dict": {}}, converted)
    with pytest.raises(ConversionError, match="already a checkpoint of this package"):
        read_official_checkpoint(converted)


def test_official_notebook_pair_in_sync(repo_root):
    source = jupytext.read(repo_root / "notebooks" / "official_checkpoint.py")
    paired = nbformat.read(repo_root / "notebooks" / "official_checkpoint.ipynb", as_version=4)
    assert [cell.source for cell in source.cells] == [cell.source for cell in paired.cells]
    assert all(cell.outputs == [] for cell in paired.cells if cell.cell_type == "code")
    tagged = [cell for cell in source.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1
