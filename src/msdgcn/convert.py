"""Conversion of official ADD-GCN checkpoints into checkpoints of this package.

The official ADD-GCN code (Ye et al., ECCV 2020; github.com/Yejin0111/ADD-GCN, `models/add_gcn.py`
and `trainer.py` at commit ecd2d24) saves `{'epoch', 'model_name', 'state_dict', 'best_score'}`.
Its model wraps a torchvision ResNet in `features`, an nn.Sequential of (conv1, bn1, relu,
maxpool, layer1, ..., layer4), so `features.0` is conv1, `features.1` is bn1 and `features.4`
to `features.7` are layer1 to layer4. timm's ResNet uses torchvision's names inside each block.

The official forward pass, which `ADDGCNHead` reproduces:

    X = features(image)                                  (B, 2048, H, W)
    out1 = max over (h, w) of fc(X)                      s_m (B, C); fc is a bias-free 1x1 conv
    V = conv_transform(X) @ sigmoid(fc(X))^T              SAM (B, 1024, C)
    Z = V + gcn(V)                                       D-GCN (B, 1024, C)
    out2 = (last_linear(Z) * mask_mat).sum(-1)           the diagonal of (B, C, C), s_r (B, C)
    logits = (out1 + out2) / 2                           as `trainer.py` combines them

`mask_mat` is a parameter initialised to the identity. The conversion checks that it still is
the identity, because only then is out2 the diagonal that `PerClassLinear` computes.

The official code numbers the COCO classes by their names in alphabetical order, because
`data/coco.py` sorts the category names. This package numbers them by COCO category id, so every
class-indexed dimension (`ADDGCNHead.class_dims`) is reordered by name. VOC uses the same 20
class order in both.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .data import IMAGENET_MEAN, IMAGENET_STD, VOC_CLASSES
from .engine import CHECKPOINT_FORMAT, reorder_classes, save_checkpoint
from .models import ADDGCNHead, ModelConfig, build_model
from .profiles import RunConfig

logger = logging.getLogger(__name__)

OFFICIAL_FORMAT = "add-gcn-official"
# The official test transform (`data/__init__.py`, get_transform with is_train=False):
# Resize((448, 448)), ToTensor, Normalize with ImageNet statistics.
OFFICIAL_IMAGE_SIZE = 448

# The 80 MS-COCO category names in category-id order (ids 1 to 90 with gaps), the column order
# that `data.read_coco` gives.
COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip

# ResNet depth from the number of blocks in layer3 (features.6), as torchvision and timm build them.
RESNET_BY_LAYER3_BLOCKS = {6: "resnet50", 23: "resnet101", 36: "resnet152"}

# Official backbone prefixes (inside `features`) and their timm names.
BACKBONE_PREFIXES = {
    "features.0.": "conv1.",
    "features.1.": "bn1.",
    "features.4.": "layer1.",
    "features.5.": "layer2.",
    "features.6.": "layer3.",
    "features.7.": "layer4.",
}

# Official head tensors and their names in MultiLabelModel. `last_linear.weight` (C, D1, 1)
# loses its last dimension to become the PerClassLinear weight (C, D1).
HEAD_KEYS = {
    "fc.weight": "head.sam.class_conv.weight",
    "conv_transform.weight": "head.sam.transform_conv.weight",
    "conv_transform.bias": "head.sam.transform_conv.bias",
    "gcn.static_adj.0.weight": "head.dgcn.static_adjacency.weight",
    "gcn.static_weight.0.weight": "head.dgcn.static_weight.weight",
    "gcn.static_weight.0.bias": "head.dgcn.static_weight.bias",
    "gcn.conv_global.weight": "head.dgcn.global_conv.weight",
    "gcn.conv_global.bias": "head.dgcn.global_conv.bias",
    "gcn.bn_global.weight": "head.dgcn.global_norm.weight",
    "gcn.bn_global.bias": "head.dgcn.global_norm.bias",
    "gcn.bn_global.running_mean": "head.dgcn.global_norm.running_mean",
    "gcn.bn_global.running_var": "head.dgcn.global_norm.running_var",
    "gcn.bn_global.num_batches_tracked": "head.dgcn.global_norm.num_batches_tracked",
    "gcn.conv_create_co_mat.weight": "head.dgcn.adjacency_conv.weight",
    "gcn.conv_create_co_mat.bias": "head.dgcn.adjacency_conv.bias",
    "gcn.dynamic_weight.weight": "head.dgcn.dynamic_weight.weight",
    "gcn.dynamic_weight.bias": "head.dgcn.dynamic_weight.bias",
    "last_linear.weight": "head.classifier.weight",
    "last_linear.bias": "head.classifier.bias",
}
MASK_KEY = "mask_mat"


class ConversionError(ValueError):
    """An official checkpoint that cannot be converted: a leftover or missing key, a bad shape."""


def official_class_names(num_classes: int) -> list[str]:
    """Return the class order of an official ADD-GCN model: COCO names sorted, or VOC's order."""
    if num_classes == len(COCO_CLASSES):
        return sorted(COCO_CLASSES)
    if num_classes == len(VOC_CLASSES):
        return list(VOC_CLASSES)
    raise ConversionError(
        f"the official checkpoint has {num_classes} classes; only MS-COCO (80) and PASCAL VOC (20) "
        "checkpoints have a known class order"
    )


def target_class_names(num_classes: int) -> list[str]:
    """Return this package's class order: COCO category-id order, or VOC's order."""
    if num_classes == len(COCO_CLASSES):
        return list(COCO_CLASSES)
    return official_class_names(num_classes)


def sha256_of_file(path: str | os.PathLike) -> str:
    """Return the hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_official_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read an official checkpoint; return its state dict and its other entries (epoch, ...).

    Only tensors and plain values are unpickled (`weights_only=True`). A bare state dict
    without the `state_dict` wrapper is accepted too. A leading `module.` (DataParallel) is
    removed from every key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"official ADD-GCN checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError or EOFError here
        # torch's own message advises weights_only=False, which would run code from the file.
        raise ConversionError(
            f"cannot read {path} as a PyTorch checkpoint ({type(error).__name__}): it is corrupt, "
            "incomplete, or needs arbitrary code to unpickle, which is never run. Check that it is "
            "the official checkpoint_best.pth written by torch.save"
        ) from error
    if not isinstance(payload, Mapping):
        raise ConversionError(f"{path} contains a {type(payload).__name__}, not a checkpoint dict")

    if "format" in payload and isinstance(payload.get("model"), Mapping):
        raise ConversionError(
            f"{path} is already a checkpoint of this package (it has 'format' and 'model' entries), "
            "not an official ADD-GCN one: use it directly with `predict`, no conversion needed"
        )
    if isinstance(payload.get("state_dict"), Mapping):
        state = payload["state_dict"]
        extra = {key: value for key, value in payload.items() if key != "state_dict"}
    else:
        state, extra = payload, {}
    not_tensors = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise ConversionError(f"{path}: state_dict entries {not_tensors[:5]} are not tensors")
    return {key.removeprefix("module."): value for key, value in state.items()}, extra


def infer_model_config(state: Mapping[str, torch.Tensor]) -> ModelConfig:
    """Read the backbone depth, class count C and D1 off the official tensor shapes."""
    for key in ("fc.weight", "conv_transform.weight", "features.0.weight"):
        if key not in state:
            raise ConversionError(f"the official state dict has no {key!r}; is it an ADD-GCN checkpoint?")

    block_indices = {
        int(match.group(1))
        for key in state
        if (match := re.match(r"features\.6\.(\d+)\.", key))
    }
    layer3_blocks = len(block_indices)
    if layer3_blocks not in RESNET_BY_LAYER3_BLOCKS:
        raise ConversionError(
            f"the official backbone has {layer3_blocks} blocks in layer3 (features.6); only "
            f"ResNet-50, -101 and -152 ({sorted(RESNET_BY_LAYER3_BLOCKS)} blocks) are supported"
        )
    return ModelConfig(
        head="add-gcn",
        backbone=RESNET_BY_LAYER3_BLOCKS[layer3_blocks],
        num_classes=int(state["fc.weight"].shape[0]),
        activation="leaky_relu",
        hidden_dim=int(state["conv_transform.weight"].shape[0]),
        pretrained=None,
    )


def target_key(official_key: str) -> str | None:
    """Return the MultiLabelModel key of an official key, or None when it has no counterpart."""
    if official_key in HEAD_KEYS:
        return HEAD_KEYS[official_key]
    for prefix, timm_prefix in BACKBONE_PREFIXES.items():
        if official_key.startswith(prefix):
            return "backbone." + timm_prefix + official_key.removeprefix(prefix)
    return None


def check_mask_is_identity(state: Mapping[str, torch.Tensor], num_classes: int) -> None:
    """Raise ConversionError unless `mask_mat` is the (C, C) identity."""
    if MASK_KEY not in state:
        raise ConversionError(f"the official state dict has no {MASK_KEY!r} (the identity mask of last_linear)")
    mask = state[MASK_KEY]
    if tuple(mask.shape) != (num_classes, num_classes):
        raise ConversionError(
            f"{MASK_KEY!r} has shape {tuple(mask.shape)}, expected ({num_classes}, {num_classes})"
        )
    if not torch.equal(mask.float(), torch.eye(num_classes)):
        raise ConversionError(
            f"{MASK_KEY!r} is not the identity matrix, so the official out2 is not the diagonal "
            "of last_linear that this package computes; the checkpoint cannot be converted exactly"
        )


def convert_state_dict(
    state: Mapping[str, torch.Tensor], target_state: Mapping[str, torch.Tensor], num_classes: int
) -> dict[str, torch.Tensor]:
    """Map an official ADD-GCN state dict onto the keys of `target_state` (a MultiLabelModel's).

    Classes stay in the official order here; `convert_checkpoint` reorders them afterwards.
    Raises ConversionError naming the key for an official tensor without a counterpart
    (leftover), a model tensor that receives nothing (missing), or a shape mismatch.
    """
    check_mask_is_identity(state, num_classes)
    converted: dict[str, torch.Tensor] = {}
    leftovers = []
    for key, value in state.items():
        if key == MASK_KEY:
            continue
        name = target_key(key)
        if name is None or name not in target_state:
            leftovers.append(key)
            continue
        if key == "last_linear.weight":
            if value.dim() != 3 or value.shape[2] != 1:
                raise ConversionError(
                    f"official {key!r} has shape {tuple(value.shape)}, expected (C, D1, 1) of a Conv1d"
                )
            value = value[:, :, 0]
        expected = target_state[name]
        if value.shape != expected.shape:
            raise ConversionError(
                f"shape mismatch: official {key!r} {tuple(value.shape)} vs {name!r} "
                f"{tuple(expected.shape)}"
            )
        converted[name] = value.to(expected.dtype).clone()

    if leftovers:
        raise ConversionError(
            f"{len(leftovers)} official tensors have no counterpart in the converted model, "
            f"such as {leftovers[:5]}; the checkpoint is not an ADD-GCN ResNet checkpoint of the "
            "layout this converter knows"
        )
    missing = [key for key in target_state if key not in converted]
    if missing:
        raise ConversionError(
            f"{len(missing)} model tensors receive no official tensor, such as {missing[:5]}; "
            "the official checkpoint is incomplete"
        )
    return converted


def converted_run_config(model_config: ModelConfig, source: Path) -> RunConfig:
    """Return the RunConfig stored in a converted checkpoint: the model and the official test size."""
    dataset = "coco2014" if model_config.num_classes == len(COCO_CLASSES) else "voc2007"
    return RunConfig(
        variant=OFFICIAL_FORMAT,
        profile="converted",
        dataset=dataset,
        data_root="",
        image_size=OFFICIAL_IMAGE_SIZE,
        model=dataclasses.asdict(model_config),
        description=f"official ADD-GCN checkpoint {source.name}, converted",
    )


def _as_number(value: Any) -> Any:
    """Turn a 0-dim tensor (how the official trainer saves best_score) into a Python number."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return value


def convert_checkpoint(
    source: str | os.PathLike, destination: str | os.PathLike, source_format: str = OFFICIAL_FORMAT
) -> dict[str, Any]:
    """Convert an official ADD-GCN checkpoint file into a checkpoint of this package.

    The result loads with `engine.load_checkpoint` and `predict.load_model_from_checkpoint`.
    It stores the model, the RunConfig (image_size 448), the class names in this package's
    order, the official test transform, and the source file with its SHA-256. The file is
    written atomically. Returns the payload.
    """
    if source_format != OFFICIAL_FORMAT:
        raise ValueError(f"unknown checkpoint format {source_format!r}; supported: {OFFICIAL_FORMAT!r}")
    source = Path(source)
    state, extra = read_official_checkpoint(source)
    model_config = infer_model_config(state)
    num_classes = model_config.num_classes
    official_names = official_class_names(num_classes)
    names = target_class_names(num_classes)

    # The meta device gives every tensor's name, shape and dtype without allocating memory.
    with torch.device("meta"):
        target_state = build_model(model_config).state_dict()
    converted = convert_state_dict(state, target_state, num_classes)
    class_dims = {f"head.{name}": dims for name, dims in ADDGCNHead.class_dims.items()}
    converted = reorder_classes(converted, class_dims, official_names, names)

    run_config = converted_run_config(model_config, source)
    source_epoch = _as_number(extra.get("epoch"))
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model": converted,
        "epoch": int(source_epoch) if isinstance(source_epoch, int) else 0,
        "config": run_config.to_dict(),
        "class_names": names,
        "test_transform": {
            "resize": [OFFICIAL_IMAGE_SIZE, OFFICIAL_IMAGE_SIZE],
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
        },
        "source": {
            "format": source_format,
            "path": str(source.resolve()),
            "sha256": sha256_of_file(source),
            "epoch": source_epoch,
            "model_name": extra.get("model_name"),
            # The official trainer stores the best validation mAP as a fraction in [0, 1].
            "best_score": _as_number(extra.get("best_score")),
            "official_class_names": official_names,
        },
    }
    save_checkpoint(Path(destination), payload)
    logger.info(
        "converted %s (%d tensors, %s, %d classes) into %s",
        source, len(state), model_config.backbone, num_classes, destination,
    )  # fmt: skip
    return payload


def random_official_state_dict(
    layout: list[dict[str, Any]], seed: int = 0
) -> dict[str, torch.Tensor]:
    """Build a state dict with random values in an official layout ([{key, shape, dtype}, ...]).

    Values keep a forward pass finite and informative: convolution weights drawn with He
    scaling, BatchNorm scales near 1 and variances in [0.5, 1.5], small biases, and `mask_mat`
    the identity. The numbers mean nothing; they exercise the conversion.
    """
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for entry in layout:
        key, shape, dtype = entry["key"], tuple(entry["shape"]), getattr(torch, entry["dtype"])
        if key == MASK_KEY:
            state[key] = torch.eye(shape[0], dtype=dtype)
        elif dtype == torch.int64:
            state[key] = torch.randint(0, 1000, shape, generator=generator, dtype=dtype)
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(shape, generator=generator)
        elif key.endswith("running_mean") or key.endswith("bias"):
            state[key] = 0.1 * torch.randn(shape, generator=generator)
        elif len(shape) == 1:  # BatchNorm scale
            state[key] = 0.5 + 0.5 * torch.rand(shape, generator=generator)
        else:
            fan_in = int(torch.tensor(shape[1:]).prod())
            state[key] = torch.randn(shape, generator=generator) * (2.0 / fan_in) ** 0.5
        state[key] = state[key].to(dtype)
    return state


def write_random_official_checkpoint(
    layout_file: str | os.PathLike, destination: str | os.PathLike, seed: int = 0
) -> Path:
    """Write a checkpoint in the official format with random values in the layout of `layout_file`.

    `layout_file` is JSON with a `state_dict` list of {key, shape, dtype}. The checkpoint has the
    official wrapper keys (epoch 0, best_score None), so that it goes through the same conversion
    as a real one. Its predictions mean nothing.
    """
    layout_file = Path(layout_file)
    if not layout_file.is_file():
        raise FileNotFoundError(f"official layout file not found: {layout_file}")
    layout = json.loads(layout_file.read_text(encoding="utf-8"))["state_dict"]
    payload = {
        "epoch": 0,
        "model_name": "ADD_GCN",
        "state_dict": random_official_state_dict(layout, seed),
        "best_score": None,
    }
    destination = Path(destination)
    save_checkpoint(destination, payload)
    logger.info("wrote a random-valued official checkpoint (%d tensors) to %s", len(layout), destination)
    return destination
