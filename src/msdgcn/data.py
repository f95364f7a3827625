"""Multi-label datasets: MS-COCO and PASCAL VOC readers, a VOC-20 view, a registry, transforms.

Every reader returns a `MultiLabelDataset` whose targets are an int8 matrix (images x classes)
with 1 = present, 0 = absent and -1 = difficult (PASCAL VOC only). `__getitem__` returns the raw
values, so the training loss decides what -1 means (see `training_targets`) and the metrics
ignore -1.

The train and test transforms follow the official ADD-GCN training pipeline (Ye et al., ECCV
2020), which took its multi-scale crop from ML-GCN and, before that, from TSN.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision import transforms as T

logger = logging.getLogger(__name__)

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle",
    "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person",
    "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

# COCO category name -> VOC class name, for the 20 classes the two label sets share.
COCO_TO_VOC: dict[str, str] = {
    "airplane": "aeroplane",
    "bicycle": "bicycle",
    "bird": "bird",
    "boat": "boat",
    "bottle": "bottle",
    "bus": "bus",
    "car": "car",
    "cat": "cat",
    "chair": "chair",
    "cow": "cow",
    "dining table": "diningtable",
    "dog": "dog",
    "horse": "horse",
    "motorcycle": "motorbike",
    "person": "person",
    "potted plant": "pottedplant",
    "sheep": "sheep",
    "couch": "sofa",
    "train": "train",
    "tv": "tvmonitor",
}

DIFFICULT_OPTIONS: tuple[str, ...] = ("positive", "negative", "ignore")

DATASETS: tuple[str, ...] = ("coco-subset", "coco-subset-voc20", "coco2014", "voc2007")

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_MAX_MISSING_LISTED = 20


# ---------------------------------------------------------------------------------------------
# Image decoding


class ImageDecodeError(ValueError):
    """An image file that is missing, empty, truncated or not an image."""


# PIL's own limit (about 89.5 million pixels); larger headers are treated as decompression bombs.
MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


def load_image(
    path: str | Path,
    max_pixels: int | None = MAX_IMAGE_PIXELS,
    draft_side: int | None = None,
    advice: str = "Re-download the image, or remove its id from the split's id list.",
) -> Image.Image:
    """Decode an image file into an RGB PIL image, rotated upright by its EXIF orientation.

    With `draft_side`, a JPEG is decoded at 1/2, 1/4 or 1/8 scale when the result still has
    both sides >= draft_side (PIL's draft mode, which scales inside libjpeg's DCT step). A
    transform that then resizes to a square of side <= draft_side sees the same picture up to
    resampling differences, checked in the tests against a full decode. Other formats ignore it.

    Handles grayscale, palette, RGBA (composited over white), CMYK, 16-bit and animated images
    (the first frame). Raises ImageDecodeError, naming the file, when the file is missing, empty,
    truncated or not an image, or when its header claims more than `max_pixels` pixels. PIL's
    LOAD_TRUNCATED_IMAGES stays off, so a truncated JPEG fails here instead of training on a
    grey-filled image. `advice` ends every error message: what the caller's user can do.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as error:
        raise ImageDecodeError(f"image file not found: {path} ({error.strerror}). {advice}") from error
    if size == 0:
        raise ImageDecodeError(f"image file is empty (0 bytes): {path}. {advice}")

    try:
        with warnings.catch_warnings():
            # PIL only warns between 1x and 2x its pixel limit; here any excess is an error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if max_pixels is not None and width * height > max_pixels:
                    raise ImageDecodeError(
                        f"image file {path} claims {width} x {height} = {width * height} pixels, above "
                        f"the limit of {max_pixels} (a decompression bomb or a corrupt header). {advice}"
                    )
                # Draft mode also switches libjpeg to its fast IDCT, which changes pixels even
                # at full scale, so it is used only when it halves the image at least.
                if (
                    draft_side is not None
                    and image.format == "JPEG"
                    and min(width, height) >= 2 * draft_side
                ):
                    image.draft(image.mode, (draft_side, draft_side))
                # load() decodes all pixel data now, so a truncated file raises inside this try.
                image.load()
                return to_rgb(ImageOps.exif_transpose(image))
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageDecodeError(f"image file {path} is too large to decode safely: {error}. {advice}") from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageDecodeError(f"cannot decode image file {path}: {error}. {advice}") from error


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB.

    16-bit and 32-bit integer images are scaled from 0-65535 to 0-255 (a plain convert would clip
    them), and images with transparency are composited over white, as an image viewer shows them.
    """
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        values = np.asarray(image, dtype=np.float64)
        scaled = np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(scaled, mode="L").convert("RGB")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def find_unreadable_images(dataset: "MultiLabelDataset") -> list[tuple[int, str]]:
    """Decode every image of a dataset once; return (index, error message) of those that fail."""
    failures = []
    for index, path in enumerate(dataset.image_paths):
        try:
            load_image(path)
        except ImageDecodeError as error:
            failures.append((index, str(error)))
    return failures


# ---------------------------------------------------------------------------------------------
# Dataset


class MultiLabelDataset(torch.utils.data.Dataset):
    """Images with a multi-label target row each.

    Attributes:
        name: dataset name used in logs and results, for example "coco-subset".
        split: split name ("train", "val", "trainval", "test"), or None when not known.
        class_names: the C class names, in column order of `targets`.
        image_ids: the N image ids, as strings.
        image_paths: the N image files.
        targets: int8 array (N, C) with 1 = present, 0 = absent, -1 = difficult.
        transform: callable applied to the RGB PIL image, or None to return the PIL image.
        cache_images: keep decoded PIL images in memory after the first read. The cache is
            per process, so each DataLoader worker fills its own copy.
        draft_side: passed to `load_image`, so JPEGs decode at reduced scale when both sides
            stay >= draft_side. Set it to `transform_input_side` of the transform, or leave it
            None for a full decode.
        dropped_unlabeled: number of images of the split left out because they have no label.
        difficult_as: how training should treat -1 targets: "positive", "negative" or "ignore"
            (see `training_targets`). Evaluation ignores -1 regardless of this setting.
    """

    def __init__(
        self,
        name: str,
        class_names: Sequence[str],
        image_ids: Sequence[str],
        image_paths: Sequence[str | Path],
        targets: np.ndarray,
        transform: Callable[[Image.Image], Any] | None = None,
        *,
        split: str | None = None,
        cache_images: bool = False,
        dropped_unlabeled: int = 0,
        difficult_as: str = "positive",
        draft_side: int | None = None,
    ) -> None:
        targets = np.asarray(targets)
        if targets.ndim != 2:
            raise ValueError(f"targets must be a 2-D array (images, classes), got shape {targets.shape}")
        if targets.shape != (len(image_ids), len(class_names)):
            raise ValueError(
                f"targets shape {targets.shape} does not match {len(image_ids)} image ids "
                f"and {len(class_names)} class names"
            )
        if len(image_paths) != len(image_ids):
            raise ValueError(f"got {len(image_paths)} image paths for {len(image_ids)} image ids")
        invalid_values = set(np.unique(targets).tolist()) - {-1, 0, 1}
        if invalid_values:
            raise ValueError(f"targets may only contain 1, 0 and -1, found {sorted(invalid_values)}")
        _check_difficult_as(difficult_as)

        self.name = name
        self.split = split
        self.class_names = list(class_names)
        self.image_ids = [str(image_id) for image_id in image_ids]
        self.image_paths = [Path(path) for path in image_paths]
        self.targets = targets.astype(np.int8, copy=False)
        self.transform = transform
        self.cache_images = cache_images
        self.dropped_unlabeled = int(dropped_unlabeled)
        self.difficult_as = difficult_as
        self.draft_side = draft_side
        # Shared by copies from with_transform, so train and val views decode each image once.
        # Keyed by path and draft side, so copies with fewer rows (take_first, without_rows)
        # can share it, and a view that needs a larger decode never gets a smaller one.
        self._image_cache: dict[tuple[Path, int | None], Image.Image] = {}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> tuple[Any, torch.Tensor, int]:
        """Return (transformed image, float32 target of shape (C,), index)."""
        image = self.read_image(index)
        if self.transform is not None:
            image = self.transform(image)
        target = torch.from_numpy(self.targets[index].astype(np.float32))
        return image, target, index

    def read_image(self, index: int) -> Image.Image:
        """Decode image `index` with `load_image`, or take it from the cache when enabled."""
        path = self.image_paths[index]
        if not self.cache_images:
            return load_image(path, draft_side=self.draft_side)
        key = (path, self.draft_side)
        cached = self._image_cache.get(key)
        if cached is None:
            cached = load_image(path, draft_side=self.draft_side)
            self._image_cache[key] = cached
        return cached

    def without_rows(self, rows: Sequence[int]) -> MultiLabelDataset:
        """Return a copy without the given row indices (for example unreadable images)."""
        drop = set(rows)
        keep = [i for i in range(len(self)) if i not in drop]
        subset = copy.copy(self)
        subset.image_ids = [self.image_ids[i] for i in keep]
        subset.image_paths = [self.image_paths[i] for i in keep]
        subset.targets = self.targets[keep]
        return subset

    def with_transform(self, transform: Callable[[Image.Image], Any] | None) -> MultiLabelDataset:
        """Return a shallow copy that applies `transform`. Targets, paths and cache are shared."""
        view = copy.copy(self)
        view.transform = transform
        return view

    def __repr__(self) -> str:
        return (
            f"MultiLabelDataset(name={self.name!r}, split={self.split!r}, images={len(self)}, "
            f"classes={self.num_classes}, dropped_unlabeled={self.dropped_unlabeled})"
        )


def check_images_exist(dataset: MultiLabelDataset) -> None:
    """Raise FileNotFoundError listing the first 20 missing image files and the total count.

    Meant to run before training, so a missing file fails in seconds instead of mid-epoch.
    """
    missing = [path for path in dataset.image_paths if not path.is_file()]
    if not missing:
        return
    listed = "\n  ".join(str(path) for path in missing[:_MAX_MISSING_LISTED])
    more = len(missing) - _MAX_MISSING_LISTED
    tail = f"\n  ... and {more} more" if more > 0 else ""
    raise FileNotFoundError(
        f"{len(missing)} of {len(dataset)} image files of dataset {dataset.name!r} are missing. "
        f"Download them, or remove their ids from the split's id list. "
        f"First {min(len(missing), _MAX_MISSING_LISTED)}:\n  {listed}{tail}"
    )


def _check_difficult_as(difficult_as: str) -> None:
    if difficult_as not in DIFFICULT_OPTIONS:
        raise ValueError(f"difficult_as must be one of {DIFFICULT_OPTIONS}, got {difficult_as!r}")


def training_targets(targets: np.ndarray | torch.Tensor, difficult_as: str) -> np.ndarray | torch.Tensor:
    """Map difficult labels (-1) for training: to 1 ("positive"), 0 ("negative"), or keep -1 ("ignore").

    The official ADD-GCN code trains with difficult labels as positives. Returns a new array
    or tensor of the input's type and dtype, with 1 and 0 unchanged.
    """
    _check_difficult_as(difficult_as)
    replacement = {"positive": 1, "negative": 0, "ignore": -1}[difficult_as]
    if isinstance(targets, torch.Tensor):
        return torch.where(targets == -1, torch.full_like(targets, replacement), targets)
    targets = np.asarray(targets)
    return np.where(targets == -1, np.asarray(replacement, dtype=targets.dtype), targets)


def _select(
    dataset: MultiLabelDataset,
    rows: np.ndarray,
    targets: np.ndarray,
    class_names: Sequence[str],
    name: str,
    dropped_unlabeled: int,
) -> MultiLabelDataset:
    """Build a dataset from `rows` of `dataset` with new targets and classes, keeping its settings."""
    return MultiLabelDataset(
        name=name,
        class_names=class_names,
        image_ids=[dataset.image_ids[row] for row in rows],
        image_paths=[dataset.image_paths[row] for row in rows],
        targets=targets,
        transform=dataset.transform,
        split=dataset.split,
        cache_images=dataset.cache_images,
        dropped_unlabeled=dropped_unlabeled,
        difficult_as=dataset.difficult_as,
        draft_side=dataset.draft_side,
    )


# ---------------------------------------------------------------------------------------------
# MS-COCO


def _require_keys(record: Any, keys: Sequence[str], what: str, source: Path) -> None:
    if not isinstance(record, dict):
        raise ValueError(f"{source}: {what} must be a JSON object, got {type(record).__name__}")
    missing = [key for key in keys if key not in record]
    if missing:
        raise ValueError(f"{source}: {what} is missing the key(s) {missing}")


def _read_coco_json(annotation_file: Path) -> dict[str, Any]:
    if not annotation_file.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {annotation_file}")
    try:
        with annotation_file.open(encoding="utf-8") as handle:
            content = json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{annotation_file}: invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}"
        ) from error
    _require_keys(content, ("images", "annotations", "categories"), "the top-level object", annotation_file)
    return content


def _read_id_file(id_file: Path, known_ids: set[int]) -> list[int]:
    """Read one integer image id per line, skipping blank lines."""
    if not id_file.is_file():
        raise FileNotFoundError(f"image id file not found: {id_file}")
    image_ids: list[int] = []
    seen: dict[int, int] = {}
    with id_file.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            text = line.strip()
            if not text:
                continue
            try:
                image_id = int(text)
            except ValueError:
                raise ValueError(
                    f"{id_file}, line {line_number}: invalid image id {text!r}, expected an integer"
                ) from None
            if image_id not in known_ids:
                raise ValueError(
                    f"{id_file}, line {line_number}: image id {image_id} is not in the annotation file"
                )
            if image_id in seen:
                raise ValueError(
                    f"{id_file}, line {line_number}: image id {image_id} "
                    f"is a duplicate of line {seen[image_id]}"
                )
            seen[image_id] = line_number
            image_ids.append(image_id)
    return image_ids


def read_coco(
    annotation_file: str | Path,
    image_dir: str | Path,
    id_file: str | Path | None = None,
    drop_unlabeled: bool = True,
    name: str = "coco",
) -> MultiLabelDataset:
    """Read a COCO instances file into a multi-label dataset.

    Classes are the categories sorted by category id, named by their `name`. An image's
    target is the set of categories of all its annotations, crowd annotations included, as in
    the COCO labels of the official ML-GCN and ADD-GCN code. `id_file` lists the image ids to
    keep, one per line, in the order to use. Without it, every image of the JSON is used in
    file order. With `drop_unlabeled`, images without annotations are left out (that is how
    COCO-2014 gives 82,081 train and 40,137 val images) and their count is stored in
    `dropped_unlabeled`.

    Raises ValueError naming the file and the offending id for invalid JSON, missing keys, an
    unknown category id or image id, and an id in `id_file` that the JSON does not contain.
    """
    annotation_file = Path(annotation_file)
    image_dir = Path(image_dir)
    content = _read_coco_json(annotation_file)

    categories = content["categories"]
    for category in categories:
        _require_keys(category, ("id", "name"), "a category", annotation_file)
    categories = sorted(categories, key=lambda category: category["id"])
    column_of_category: dict[int, int] = {}
    for column, category in enumerate(categories):
        if category["id"] in column_of_category:
            raise ValueError(f"{annotation_file}: category id {category['id']} appears more than once")
        column_of_category[category["id"]] = column
    class_names = [str(category["name"]) for category in categories]

    file_name_of_image: dict[int, str] = {}
    for image in content["images"]:
        _require_keys(image, ("id", "file_name"), "an image", annotation_file)
        if image["id"] in file_name_of_image:
            raise ValueError(f"{annotation_file}: image id {image['id']} appears more than once")
        file_name_of_image[image["id"]] = image["file_name"]

    labels_of_image: dict[int, set[int]] = {image_id: set() for image_id in file_name_of_image}
    for annotation in content["annotations"]:
        _require_keys(annotation, ("image_id", "category_id"), "an annotation", annotation_file)
        image_id = annotation["image_id"]
        category_id = annotation["category_id"]
        annotation_name = f"annotation {annotation.get('id', '(no id)')}"
        if category_id not in column_of_category:
            raise ValueError(
                f"{annotation_file}: {annotation_name} has category_id {category_id}, "
                f"which is not among the categories"
            )
        if image_id not in labels_of_image:
            raise ValueError(
                f"{annotation_file}: {annotation_name} has image_id {image_id}, which is not among the images"
            )
        labels_of_image[image_id].add(column_of_category[category_id])

    if id_file is not None:
        selected_ids = _read_id_file(Path(id_file), set(file_name_of_image))
    else:
        selected_ids = list(file_name_of_image)

    dropped = 0
    if drop_unlabeled:
        kept_ids = [image_id for image_id in selected_ids if labels_of_image[image_id]]
        dropped = len(selected_ids) - len(kept_ids)
        selected_ids = kept_ids
        logger.info(
            "%s: dropped %d of %d images that have no annotations",
            name, dropped, len(selected_ids) + dropped,
        )  # fmt: skip

    targets = np.zeros((len(selected_ids), len(class_names)), dtype=np.int8)
    for row, image_id in enumerate(selected_ids):
        targets[row, sorted(labels_of_image[image_id])] = 1

    return MultiLabelDataset(
        name=name,
        class_names=class_names,
        image_ids=[str(image_id) for image_id in selected_ids],
        image_paths=[image_dir / file_name_of_image[image_id] for image_id in selected_ids],
        targets=targets,
        dropped_unlabeled=dropped,
    )


# ---------------------------------------------------------------------------------------------
# PASCAL VOC


def _read_voc_class_file(path: Path) -> dict[str, int]:
    """Read `<image id> <1|-1|0>` lines into {image id: target} with 1, 0 and -1 (difficult)."""
    if not path.is_file():
        raise FileNotFoundError(f"PASCAL VOC class file not found: {path}")
    # VOC files write 1 = present, -1 = absent, 0 = difficult, and targets use 1, 0, -1 for these.
    target_of_value = {"1": 1, "-1": 0, "0": -1}
    target_of_image: dict[str, int] = {}
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2:
                raise ValueError(
                    f"{path}, line {line_number}: expected '<image id> <1|-1|0>', got {line.rstrip()!r}"
                )
            image_id, value = fields
            if value not in target_of_value:
                raise ValueError(
                    f"{path}, line {line_number}: invalid label {value!r} for image {image_id}, "
                    f"expected 1, -1 or 0"
                )
            if image_id in target_of_image:
                raise ValueError(f"{path}, line {line_number}: image id {image_id} appears more than once")
            target_of_image[image_id] = target_of_value[value]
    return target_of_image


def _describe_id_difference(expected: Sequence[str], found: set[str], limit: int = 10) -> str:
    missing = [image_id for image_id in expected if image_id not in found]
    extra = sorted(found - set(expected))
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} id(s) {missing[:limit]}")
    if extra:
        parts.append(f"extra {len(extra)} id(s) {extra[:limit]}")
    return " and ".join(parts)


def read_voc(
    devkit_dir: str | Path,
    year: str = "2007",
    split: str = "trainval",
    difficult_as: str = "positive",
    name: str | None = None,
) -> MultiLabelDataset:
    """Read a PASCAL VOC split from `<devkit_dir>/VOC<year>/ImageSets/Main/<class>_<split>.txt`.

    Images are `<devkit_dir>/VOC<year>/JPEGImages/<id>.jpg`, in the order of the first class
    file. Targets keep difficult labels as -1. `difficult_as` is stored on the dataset for the
    training loop to pass to `training_targets`.

    Raises FileNotFoundError for a missing class file, and ValueError naming the file and line
    for a malformed line or a label other than 1, -1, 0, or naming the file and the differing
    ids when the class files do not list the same images. Missing JPEGs are left to
    `check_images_exist`.
    """
    _check_difficult_as(difficult_as)
    year_dir = Path(devkit_dir) / f"VOC{year}"
    list_dir = year_dir / "ImageSets" / "Main"

    first_file = list_dir / f"{VOC_CLASSES[0]}_{split}.txt"
    first_targets = _read_voc_class_file(first_file)
    image_ids = list(first_targets)
    targets = np.zeros((len(image_ids), len(VOC_CLASSES)), dtype=np.int8)
    targets[:, 0] = [first_targets[image_id] for image_id in image_ids]

    for column, class_name in enumerate(VOC_CLASSES[1:], start=1):
        class_file = list_dir / f"{class_name}_{split}.txt"
        class_targets = _read_voc_class_file(class_file)
        if class_targets.keys() != first_targets.keys():
            difference = _describe_id_difference(image_ids, set(class_targets))
            raise ValueError(
                f"{class_file} does not list the same image ids as {first_file}: {difference}"
            )
        targets[:, column] = [class_targets[image_id] for image_id in image_ids]

    return MultiLabelDataset(
        name=name if name is not None else f"voc{year}",
        class_names=VOC_CLASSES,
        image_ids=image_ids,
        image_paths=[year_dir / "JPEGImages" / f"{image_id}.jpg" for image_id in image_ids],
        targets=targets,
        split=split,
        difficult_as=difficult_as,
    )


# ---------------------------------------------------------------------------------------------
# VOC-20 view of COCO


def voc20_view(dataset: MultiLabelDataset) -> MultiLabelDataset:
    """Restrict a COCO-format dataset to the 20 PASCAL VOC classes, named and ordered as VOC_CLASSES.

    COCO names are mapped by COCO_TO_VOC (airplane -> aeroplane, couch -> sofa, ...). Images
    left with no label (all 20 entries 0) are dropped. `dropped_unlabeled` of the result counts
    the images dropped here plus those the source had already dropped.
    Raises ValueError when the source lacks one of the 20 COCO class names.
    """
    column_of_name = {class_name: column for column, class_name in enumerate(dataset.class_names)}
    voc_to_coco = {voc_name: coco_name for coco_name, voc_name in COCO_TO_VOC.items()}
    missing = [coco_name for coco_name in COCO_TO_VOC if coco_name not in column_of_name]
    if missing:
        raise ValueError(
            f"dataset {dataset.name!r} has no class named {missing}. A VOC-20 view needs the COCO "
            f"class names {sorted(COCO_TO_VOC)}"
        )

    columns = [column_of_name[voc_to_coco[voc_name]] for voc_name in VOC_CLASSES]
    targets = dataset.targets[:, columns]
    rows = np.flatnonzero((targets != 0).any(axis=1))
    dropped = len(dataset) - len(rows)
    logger.info(
        "%s: VOC-20 view dropped %d of %d images with none of the 20 VOC classes",
        dataset.name, dropped, len(dataset),
    )  # fmt: skip
    return _select(
        dataset,
        rows,
        targets[rows],
        VOC_CLASSES,
        name=f"{dataset.name}-voc20",
        dropped_unlabeled=dataset.dropped_unlabeled + dropped,
    )


# ---------------------------------------------------------------------------------------------
# Registry


# Datasets that `python -m msdgcn download` fetches (see download.py).
DOWNLOADABLE_DATASETS: tuple[str, ...] = ("coco2014", "voc2007")


def _download_hint(dataset_name: str, root: Path) -> str:
    if dataset_name not in DOWNLOADABLE_DATASETS:
        return ""
    return f" Download it with `python -m msdgcn download {dataset_name} --root {root}`."


def _require_folder(folder: Path, dataset_name: str, layout: str) -> None:
    if not folder.is_dir():
        raise FileNotFoundError(
            f"dataset folder for {dataset_name!r} not found: {folder}. Expected layout: {layout}."
            + _download_hint(dataset_name, folder)
        )


def _check_split(dataset_name: str, split: str, allowed: Sequence[str]) -> None:
    if split not in allowed:
        raise ValueError(
            f"unknown split {split!r} for dataset {dataset_name!r}, expected one of {list(allowed)}"
        )


_COCO_SUBSET_LAYOUT = (
    "<root>/annotations/instances.json, <root>/images/*.jpg, <root>/train.txt, <root>/val.txt"
)
_COCO2014_LAYOUT = (
    "<root>/annotations/instances_train2014.json, <root>/annotations/instances_val2014.json, "
    "<root>/train2014/*.jpg, <root>/val2014/*.jpg"
)
_VOC_LAYOUT = (
    "<root>/VOCdevkit/VOC2007/{ImageSets/Main/<class>_<split>.txt, JPEGImages/*.jpg}, "
    "or the same with <root> being the VOCdevkit folder itself"
)


def _build_coco_subset(root: Path, split: str, drop_unlabeled: bool, name: str) -> MultiLabelDataset:
    _require_folder(root, name, _COCO_SUBSET_LAYOUT)
    _check_split(name, split, ("train", "val"))
    dataset = read_coco(
        root / "annotations" / "instances.json",
        root / "images",
        id_file=root / f"{split}.txt",
        drop_unlabeled=drop_unlabeled,
        name=name,
    )
    dataset.split = split
    return dataset


def _build_coco2014(root: Path, split: str, drop_unlabeled: bool) -> MultiLabelDataset:
    _require_folder(root, "coco2014", _COCO2014_LAYOUT)
    _check_split("coco2014", split, ("train", "val"))
    dataset = read_coco(
        root / "annotations" / f"instances_{split}2014.json",
        root / f"{split}2014",
        drop_unlabeled=drop_unlabeled,
        name="coco2014",
    )
    dataset.split = split
    return dataset


def _build_voc2007(root: Path, split: str) -> MultiLabelDataset:
    _require_folder(root, "voc2007", _VOC_LAYOUT)
    if (root / "VOCdevkit" / "VOC2007").is_dir():
        devkit_dir = root / "VOCdevkit"
    elif (root / "VOC2007").is_dir():
        devkit_dir = root
    else:
        raise FileNotFoundError(
            f"no VOC2007 folder under {root}. Expected layout: {_VOC_LAYOUT}."
            + _download_hint("voc2007", root)
        )

    # ML-GCN and ADD-GCN train on VOC 2007 trainval and test on test, so the generic names map there.
    split_aliases = {"train": "trainval", "val": "test"}
    _check_split("voc2007", split, ("trainval", "test", *split_aliases))
    if split in split_aliases:
        logger.info(
            "voc2007: split %r means %r here, because VOC 2007 models train on trainval and are "
            "evaluated on test",
            split, split_aliases[split],
        )  # fmt: skip
        split = split_aliases[split]
    return read_voc(devkit_dir, year="2007", split=split, name="voc2007")


def build_dataset(
    name: str,
    root: str | Path,
    split: str,
    drop_unlabeled: bool = True,
    cache_images: bool = False,
) -> MultiLabelDataset:
    """Build a dataset by registry name (one of DATASETS) from its root folder, without a transform.

    Splits: "train"/"val" for the COCO datasets; "trainval"/"test" for "voc2007", where "train"
    and "val" are accepted as aliases of "trainval" and "test". `drop_unlabeled` applies to the
    COCO datasets only; every VOC 2007 image has at least one object.
    Add a transform with `dataset.with_transform(...)`.
    """
    root = Path(root)
    if name == "coco-subset":
        dataset = _build_coco_subset(root, split, drop_unlabeled, name="coco-subset")
    elif name == "coco-subset-voc20":
        dataset = voc20_view(_build_coco_subset(root, split, drop_unlabeled, name="coco-subset"))
    elif name == "coco2014":
        dataset = _build_coco2014(root, split, drop_unlabeled)
    elif name == "voc2007":
        dataset = _build_voc2007(root, split)
    else:
        raise ValueError(f"unknown dataset {name!r}. Known datasets: {', '.join(DATASETS)}")
    dataset.cache_images = cache_images
    return dataset


# ---------------------------------------------------------------------------------------------
# Transforms


class MultiScaleCrop:
    """Random multi-scale crop of the official ADD-GCN training pipeline, resized to a square.

    The method comes from TSN through ML-GCN. With base = min(image width, height), the candidate
    crop sides are int(base * s) for each scale s, each replaced by `input_size` when it differs
    from it by less than 3 pixels. A (width, height) pair of candidates whose scale indices
    differ by at most `max_distort` is drawn uniformly over all such pairs. With `fix_crop` the
    offset is drawn uniformly from fixed positions on a grid of step = (image - crop) // 4:
    the 4 corners and the center, plus with `more_fix_crop` the 4 edge centers and the 4
    quarter points (13 in all). Without `fix_crop` the offset is uniform over all positions.
    The crop is then resized to (input_size, input_size) with bilinear interpolation.

    Input: a PIL image. Output: a PIL image of size (input_size, input_size).
    Randomness: Python's global `random` module, as in the official code. DataLoader worker
    processes reseed it from torch's base seed, so `torch.manual_seed` makes the crops
    reproducible with num_workers > 0; with num_workers = 0 seed `random` as well.
    """

    def __init__(
        self,
        input_size: int,
        scales: Sequence[float] = (1.0, 0.875, 0.75, 0.66, 0.5),
        max_distort: int = 2,
        fix_crop: bool = True,
        more_fix_crop: bool = True,
    ) -> None:
        if input_size <= 0:
            raise ValueError(f"input_size must be positive, got {input_size}")
        if not scales or any(not 0 < scale <= 1 for scale in scales):
            raise ValueError(f"scales must be a non-empty list of values in (0, 1], got {scales}")
        self.input_size = int(input_size)
        self.scales = tuple(float(scale) for scale in scales)
        self.max_distort = int(max_distort)
        self.fix_crop = fix_crop
        self.more_fix_crop = more_fix_crop

    def candidate_sizes(self, image_width: int, image_height: int) -> list[int]:
        """Return the candidate crop sides, one per scale, snapped to input_size when within 2 px."""
        base = min(image_width, image_height)
        sizes = [int(base * scale) for scale in self.scales]
        return [self.input_size if abs(size - self.input_size) < 3 else size for size in sizes]

    def fixed_offsets(
        self, image_width: int, image_height: int, crop_width: int, crop_height: int
    ) -> list[tuple[int, int]]:
        """Return the fixed (left, top) crop positions: 5, or 13 with more_fix_crop."""
        step_x = (image_width - crop_width) // 4
        step_y = (image_height - crop_height) // 4
        # Grid coordinates in steps: corners and center first, then edge centers and quarters.
        grid = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2)]
        if self.more_fix_crop:
            grid += [(0, 2), (4, 2), (2, 4), (2, 0), (1, 1), (3, 1), (1, 3), (3, 3)]
        return [(gx * step_x, gy * step_y) for gx, gy in grid]

    def sample_crop(
        self, image_width: int, image_height: int, rng: random.Random | None = None
    ) -> tuple[int, int, int, int]:
        """Draw a crop box (left, top, width, height) using `rng`, or the global `random` module if None."""
        generator = rng if rng is not None else random
        sizes = self.candidate_sizes(image_width, image_height)
        pairs = [
            (width, height)
            for height_index, height in enumerate(sizes)
            for width_index, width in enumerate(sizes)
            if abs(width_index - height_index) <= self.max_distort
        ]
        crop_width, crop_height = generator.choice(pairs)
        # NOTE: a snapped side can exceed the image by up to 2 px. The official code then crops past
        # the border (PIL pads with black), but this clamps to the image. The training transform
        # never hits this case because it resizes to input_size + 64 first.
        crop_width = min(crop_width, image_width)
        crop_height = min(crop_height, image_height)
        if self.fix_crop:
            offsets = self.fixed_offsets(image_width, image_height, crop_width, crop_height)
            left, top = generator.choice(offsets)
        else:
            left = generator.randint(0, image_width - crop_width)
            top = generator.randint(0, image_height - crop_height)
        return left, top, crop_width, crop_height

    def __call__(self, image: Image.Image) -> Image.Image:
        if not isinstance(image, Image.Image):
            raise TypeError(f"MultiScaleCrop expects a PIL image, got {type(image).__name__}")
        left, top, width, height = self.sample_crop(*image.size)
        crop = image.crop((left, top, left + width, top + height))
        return crop.resize((self.input_size, self.input_size), Image.Resampling.BILINEAR)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(input_size={self.input_size}, scales={self.scales}, "
            f"max_distort={self.max_distort}, fix_crop={self.fix_crop}, more_fix_crop={self.more_fix_crop})"
        )


def transform_input_side(size: int, train: bool) -> int:
    """Return the square side the first Resize of the train or test transform produces.

    A decode at reduced scale (`load_image`'s draft_side) must keep both image sides at least
    this large, so that Resize still only shrinks.
    """
    return size + 64 if train else size


def _to_tensor_steps(mean: Sequence[float], std: Sequence[float], normalize_on_batch: bool) -> list:
    if normalize_on_batch:
        # uint8 (3, H, W): a quarter of float32's bytes through worker queues and pinned memory.
        return [T.PILToTensor()]
    return [T.ToTensor(), T.Normalize(mean, std)]


def build_train_transform(
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    normalize_on_batch: bool = False,
) -> T.Compose:
    """Build the training transform of the official ADD-GCN pipeline.

    PIL RGB image -> Resize to (size + 64) square -> MultiScaleCrop(size, scales 1.0 to 0.5,
    max_distort 2) -> random horizontal flip -> float tensor (3, size, size) normalised by
    mean and std. With `normalize_on_batch` the transform stops at a uint8 tensor
    (3, size, size), and `normalize_batch` finishes the batch, on the training device if wanted.
    """
    return T.Compose(
        [
            T.Resize((size + 64, size + 64)),
            MultiScaleCrop(size, scales=(1.0, 0.875, 0.75, 0.66, 0.5), max_distort=2),
            T.RandomHorizontalFlip(),
            *_to_tensor_steps(mean, std, normalize_on_batch),
        ]
    )


def build_test_transform(
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    normalize_on_batch: bool = False,
) -> T.Compose:
    """Build the deterministic test transform: PIL RGB image -> Resize to a size square ->
    float tensor (3, size, size) normalised by mean and std, or a uint8 tensor with
    `normalize_on_batch` (see `build_train_transform`)."""
    return T.Compose([T.Resize((size, size)), *_to_tensor_steps(mean, std, normalize_on_batch)])


def normalize_batch(
    images: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """Turn a uint8 batch (B, 3, H, W) into the float32 batch that ToTensor + Normalize give.

    Computes (images / 255 - mean) / std in float32 on the batch's device, keeping its memory
    format, with the same operations in the same order as the per-image transforms.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"normalize_batch expects a uint8 batch, got {images.dtype}")
    shape = (1, -1, 1, 1)
    mean_tensor = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(shape)
    std_tensor = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(shape)
    return images.float().div_(255).sub_(mean_tensor).div_(std_tensor)
