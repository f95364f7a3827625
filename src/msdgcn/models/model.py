"""The multi-label model (a timm backbone and a head), its config and its builder."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from torch import Tensor, nn

from .backbone import backbone_data_config, create_backbone
from .heads import ACTIVATIONS, POOLINGS, ADDGCNHead, GlobalPoolHead
from .mlgcn import LABEL_EMBEDDINGS, build_mlgcn_head
from .weights import load_backbone_weights

logger = logging.getLogger(__name__)

HEADS = ("add-gcn", "gap", "ml-gcn")


@dataclass
class ModelConfig:
    """Model settings. `dataclasses.asdict` and `config_from_dict` convert them to and from a dict.

    Attributes:
        head: "add-gcn" (SAM + D-GCN), "gap" (global pooling + linear baseline) or "ml-gcn"
            (global max pooling + classifiers from a GCN over label embeddings).
        backbone: a timm model name, such as "resnet101", "res2net101_26w_4s" or
            "efficientnet_lite0".
        num_classes: number of labels C.
        pooling: "avg" or "max" global pooling; read by the "gap" head only.
        cbam: put CBAM into every residual block of a ResNet or Res2Net backbone.
        activation: "leaky_relu" (ADD-GCN) or "gelu" (MSD-GCN) in D-GCN, and GELU on SAM's
            transformed map when "gelu".
        hidden_dim: D1, the size of the category representations (ADD-GCN), or the output
            size of ML-GCN's first GCN layer.
        pretrained: None (random initialisation), "timm" (timm hub, needs internet),
            "efficientnet-lite0-pypi" (offline, backbone "efficientnet_lite0" only) or the
            path of a local state-dict file.
        label_embedding: ML-GCN's node inputs, "glove" (ML-GCN's 300-d GloVe vectors of the
            class names) or "learned" (a trained (C, label_embedding_dim) parameter).
        label_embedding_file: the `.npz` file of GloVe vectors; None picks the file in
            $MSDGCN_ML_GCN_DATA or ../shared/data/ml-gcn that names every class.
        label_embedding_dim: the input size of the learned embeddings.
    """

    head: str = "add-gcn"
    backbone: str = "resnet101"
    num_classes: int = 80
    pooling: str = "avg"
    cbam: bool = False
    activation: str = "leaky_relu"
    hidden_dim: int = 1024
    pretrained: str | None = None
    label_embedding: str = "glove"
    label_embedding_file: str | None = None
    label_embedding_dim: int = 300

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}; expected one of {HEADS}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}; expected one of {POOLINGS}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {self.activation!r}; expected one of {ACTIVATIONS}"
            )
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {self.num_classes}")
        if self.hidden_dim < 1:
            raise ValueError(f"hidden_dim must be at least 1, got {self.hidden_dim}")
        if self.label_embedding not in LABEL_EMBEDDINGS:
            raise ValueError(
                f"unknown label_embedding {self.label_embedding!r}; expected one of {LABEL_EMBEDDINGS}"
            )
        if self.label_embedding_dim < 1:
            raise ValueError(f"label_embedding_dim must be at least 1, got {self.label_embedding_dim}")
        if isinstance(self.label_embedding_file, os.PathLike):
            self.label_embedding_file = os.fspath(self.label_embedding_file)
        if isinstance(self.pretrained, os.PathLike):
            self.pretrained = os.fspath(self.pretrained)


def config_from_dict(values: Mapping) -> ModelConfig:
    """Build a ModelConfig from a dict such as `dataclasses.asdict(config)`.

    Missing keys take their defaults; unknown keys raise ValueError.
    """
    known = {field.name for field in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown model config keys {unknown}; valid keys are {sorted(known)}")
    return ModelConfig(**values)


class MultiLabelModel(nn.Module):
    """Multi-label classifier: a timm backbone, then a head.

    Maps images (B, 3, H, W) to logits (B, C).

    Attributes:
        backbone: the timm model; its `forward_features` gives the map (B, D, H', W').
        head: `ADDGCNHead`, `GlobalPoolHead` or `MLGCNHead`.
        config: the `ModelConfig` the model was built from.
        data_config: input normalization {'mean': (3,), 'std': (3,)} for the transforms.
        weights_report: the `load_backbone_weights` report, or None with random weights.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        config: ModelConfig,
        data_config: dict,
        weights_report: dict | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.config = config
        self.data_config = data_config
        self.weights_report = weights_report

    def forward(self, images: Tensor, return_details: bool = False) -> Tensor | dict[str, Tensor]:
        """Return logits (B, C), or with `return_details` the head's dict of details."""
        if return_details:
            return self.forward_details(images)
        return self.head(self.backbone.forward_features(images))

    def forward_details(self, images: Tensor) -> dict[str, Tensor]:
        """Return the head's details: always 'logits' and 'activation_maps' (B, C, H', W').

        The ADD-GCN head adds sam_logits, gcn_logits, static_adjacency and dynamic_adjacency;
        the ML-GCN head adds image_features, classifiers, correlation and adjacency.
        """
        return self.head.forward_details(self.backbone.forward_features(images))

    def parameter_groups(self, lr: float, backbone_lr_mult: float = 0.1) -> list[dict]:
        """Return two optimizer parameter groups, the backbone at lr * backbone_lr_mult and
        the head at lr.

        Each group carries a 'name' key ("backbone" or "head") and every parameter, including
        any with requires_grad=False.
        """
        return [
            {"name": "backbone", "params": list(self.backbone.parameters()),
             "lr": lr * backbone_lr_mult},
            {"name": "head", "params": list(self.head.parameters()), "lr": lr},
        ]


def build_head(
    config: ModelConfig,
    in_channels: int,
    class_names: Sequence[str] | None = None,
    label_targets: np.ndarray | None = None,
) -> nn.Module:
    """Build the head named by `config.head` for a backbone with `in_channels` features.

    Only the ML-GCN head reads `class_names` (its GloVe rows) and `label_targets` (N, C), the
    training labels with 1 = present that its correlation matrix counts.
    """
    if config.head == "gap":
        return GlobalPoolHead(in_channels, config.num_classes, config.pooling)
    if config.head == "ml-gcn":
        return build_mlgcn_head(
            in_channels,
            config.num_classes,
            config.hidden_dim,
            config.label_embedding,
            config.label_embedding_file,
            config.label_embedding_dim,
            class_names,
            label_targets,
        )
    return ADDGCNHead(in_channels, config.num_classes, config.hidden_dim, config.activation)


def build_model(
    config: ModelConfig,
    class_names: Sequence[str] | None = None,
    label_targets: np.ndarray | None = None,
) -> MultiLabelModel:
    """Build the backbone, load its pretrained weights if `config.pretrained` is set, add the head.

    The head and any backbone tensor without pretrained weights keep PyTorch's default
    initialisation. `class_names` and `label_targets` go to `build_head`.
    """
    backbone = create_backbone(config.backbone, cbam=config.cbam)

    weights_report = None
    if config.pretrained is not None:
        weights_report = load_backbone_weights(backbone, config.pretrained)

    head = build_head(config, backbone.num_features, class_names, label_targets)
    data_config = backbone_data_config(backbone, config.pretrained)
    logger.info("built model: %s", config)
    return MultiLabelModel(backbone, head, config, data_config, weights_report)
