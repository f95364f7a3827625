"""Tests for msdgcn.data: COCO and VOC readers, the VOC-20 view, the registry, decoding, transforms.

Expected values are derived independently from the real coco-subset files, or from small
fixtures that the tests write in tmp_path.
"""

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from msdgcn.data import (
    COCO_TO_VOC,
    DATASETS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    VOC_CLASSES,
    ImageDecodeError,
    MultiLabelDataset,
    MultiScaleCrop,
    build_dataset,
    build_test_transform,
    build_train_transform,
    check_images_exist,
    load_image,
    read_coco,
    read_voc,
    training_targets,
    voc20_view,
)

# An image of the coco-subset train split with crowd and non-crowd annotations.
KNOWN_TRAIN_IMAGE = 315


# ---------------------------------------------------------------------------------------------
# Helpers and fixtures


@pytest.fixture(scope="module")
def coco_json(coco_subset_dir: Path) -> dict:
    with (coco_subset_dir / "annotations" / "instances.json").open() as handle:
        return json.load(handle)


def read_ids(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().splitlines() if line.strip()]


def labels_by_image(coco_json: dict) -> dict[int, set[str]]:
    """Map each image id to the category names of all its annotations."""
    name_of_category = {category["id"]: category["name"] for category in coco_json["categories"]}
    labels = {image["id"]: set() for image in coco_json["images"]}
    for annotation in coco_json["annotations"]:
        labels[annotation["image_id"]].add(name_of_category[annotation["category_id"]])
    return labels


def write_jpeg(path: Path, size: tuple[int, int] = (40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 30, 30)).save(path, format="JPEG")
    return path


def write_coco_json(path: Path, content: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))
    return path


def small_coco_content() -> dict:
    """Three images: 1 has a crowd-only label, 2 has two labels, 3 has none."""
    return {
        "images": [
            {"id": 1, "file_name": "a.jpg"},
            {"id": 2, "file_name": "b.jpg"},
            {"id": 3, "file_name": "c.jpg"},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 5, "iscrowd": 1},
            {"id": 11, "image_id": 2, "category_id": 1, "iscrowd": 0},
            {"id": 12, "image_id": 2, "category_id": 3, "iscrowd": 0},
            {"id": 13, "image_id": 2, "category_id": 3, "iscrowd": 0},
        ],
        # Listed out of id order on purpose.
        "categories": [
            {"id": 5, "name": "airplane"},
            {"id": 1, "name": "person"},
            {"id": 3, "name": "car"},
        ],
    }


VOC_IDS = ["000001", "000002", "000003"]


def write_voc_devkit(root: Path, split: str = "trainval", values: dict[str, list[str]] | None = None) -> Path:
    """Write VOCdevkit/VOC2007 with all 20 class files for `split` and one JPEG per id.

    `values` sets the file column (1, -1 or 0) of some classes, and the other classes are all -1.
    """
    values = values or {}
    main_dir = root / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main"
    main_dir.mkdir(parents=True, exist_ok=True)
    for class_name in VOC_CLASSES:
        column = values.get(class_name, ["-1"] * len(VOC_IDS))
        lines = [f"{image_id} {value}" for image_id, value in zip(VOC_IDS, column)]
        (main_dir / f"{class_name}_{split}.txt").write_text("\n".join(lines) + "\n")
    for image_id in VOC_IDS:
        write_jpeg(root / "VOCdevkit" / "VOC2007" / "JPEGImages" / f"{image_id}.jpg")
    return root / "VOCdevkit"


def voc_class_file(devkit: Path, class_name: str, split: str = "trainval") -> Path:
    return devkit / "VOC2007" / "ImageSets" / "Main" / f"{class_name}_{split}.txt"


# ---------------------------------------------------------------------------------------------
# COCO reader on coco-subset


@pytest.mark.parametrize("split", ["train", "val"])
def test_coco_subset_split_sizes(coco_subset_dir, coco_json, split):
    labels = labels_by_image(coco_json)
    ids = read_ids(coco_subset_dir / f"{split}.txt")
    expected_ids = [image_id for image_id in ids if labels[image_id]]

    dataset = build_dataset("coco-subset", coco_subset_dir, split)

    assert len(dataset) == len(expected_ids)
    assert dataset.image_ids == [str(image_id) for image_id in expected_ids]
    assert dataset.dropped_unlabeled == len(ids) - len(expected_ids)
    assert dataset.split == split


def test_coco_subset_splits_disjoint(coco_subset_dir):
    train_ids = set(read_ids(coco_subset_dir / "train.txt"))
    val_ids = set(read_ids(coco_subset_dir / "val.txt"))

    assert train_ids.isdisjoint(val_ids)
    assert len(train_ids) == 517
    assert len(val_ids) == 126


def test_coco_subset_keep_unlabeled(coco_subset_dir):
    dataset = build_dataset("coco-subset", coco_subset_dir, "train", drop_unlabeled=False)

    assert len(dataset) == 517
    assert dataset.dropped_unlabeled == 0
    assert (dataset.targets.sum(axis=1) == 0).sum() == 3


def test_coco_subset_class_order(coco_subset_dir, coco_json):
    dataset = build_dataset("coco-subset", coco_subset_dir, "val")
    expected = [category["name"] for category in sorted(coco_json["categories"], key=lambda c: c["id"])]

    assert dataset.class_names == expected
    assert dataset.num_classes == 80
    assert dataset.class_names[0] == "person"
    assert dataset.class_names[4] == "airplane"
    # Category id 12 is one of the gaps, so "stop sign" (id 13) sits in column 11.
    assert dataset.class_names[11] == "stop sign"
    assert dataset.class_names[79] == "toothbrush"


def test_coco_subset_known_image_labels(coco_subset_dir, coco_json):
    expected_names = labels_by_image(coco_json)[KNOWN_TRAIN_IMAGE]
    dataset = build_dataset("coco-subset", coco_subset_dir, "train")

    row = dataset.image_ids.index(str(KNOWN_TRAIN_IMAGE))
    present = {dataset.class_names[column] for column in np.flatnonzero(dataset.targets[row] == 1)}

    assert present == expected_names
    assert dataset.image_paths[row] == coco_subset_dir / "images" / f"{KNOWN_TRAIN_IMAGE:012d}.jpg"
    assert dataset.targets.dtype == np.int8
    assert set(np.unique(dataset.targets).tolist()) == {0, 1}


def test_coco_item_target_matches_row(coco_subset_dir):
    dataset = build_dataset("coco-subset", coco_subset_dir, "val")
    image, target, index = dataset[5]

    assert isinstance(image, Image.Image)
    assert image.mode == "RGB"
    assert target.dtype == torch.float32
    assert target.shape == (80,)
    assert torch.equal(target, torch.from_numpy(dataset.targets[5]).float())
    assert index == 5


def test_coco_reader_crowd_labels_and_order(tmp_path):
    annotation_file = write_coco_json(tmp_path / "instances.json", small_coco_content())
    dataset = read_coco(annotation_file, tmp_path / "images")

    assert dataset.class_names == ["person", "car", "airplane"]
    assert dataset.image_ids == ["1", "2"]
    assert dataset.targets.tolist() == [[0, 0, 1], [1, 1, 0]]
    assert dataset.dropped_unlabeled == 1
    assert dataset.image_paths[0] == tmp_path / "images" / "a.jpg"


def test_coco_reader_id_file_order(tmp_path):
    annotation_file = write_coco_json(tmp_path / "instances.json", small_coco_content())
    id_file = tmp_path / "ids.txt"
    id_file.write_text("3\n\n2\n1\n")

    dataset = read_coco(annotation_file, tmp_path, id_file=id_file, drop_unlabeled=False)

    assert dataset.image_ids == ["3", "2", "1"]
    assert dataset.targets[0].tolist() == [0, 0, 0]


# ---------------------------------------------------------------------------------------------
# PASCAL VOC reader


def test_voc_reader_difficult_is_minus_one(tmp_path):
    devkit = write_voc_devkit(tmp_path, values={"person": ["1", "-1", "0"], "dog": ["0", "1", "-1"]})
    dataset = read_voc(devkit)
    person = VOC_CLASSES.index("person")
    dog = VOC_CLASSES.index("dog")

    assert dataset.class_names == list(VOC_CLASSES)
    assert dataset.image_ids == VOC_IDS
    assert dataset.targets[:, person].tolist() == [1, 0, -1]
    assert dataset.targets[:, dog].tolist() == [-1, 1, 0]
    assert dataset.targets[:, VOC_CLASSES.index("cat")].tolist() == [0, 0, 0]
    assert dataset.image_paths[1] == devkit / "VOC2007" / "JPEGImages" / "000002.jpg"
    assert dataset.difficult_as == "positive"
    assert dataset.name == "voc2007"


def test_voc_item_keeps_difficult(tmp_path):
    devkit = write_voc_devkit(tmp_path, values={"person": ["1", "-1", "0"]})
    dataset = read_voc(devkit).with_transform(build_test_transform(32, IMAGENET_MEAN, IMAGENET_STD))

    _, target, _ = dataset[2]

    assert target[VOC_CLASSES.index("person")].item() == -1.0


@pytest.mark.parametrize(
    ("difficult_as", "expected"),
    [("positive", [1, 0, 1, 1]), ("negative", [1, 0, 0, 0]), ("ignore", [1, 0, -1, -1])],
)
def test_training_targets_options(difficult_as, expected):
    array = np.array([1, 0, -1, -1], dtype=np.int8)
    tensor = torch.tensor([1.0, 0.0, -1.0, -1.0])

    mapped_array = training_targets(array, difficult_as)
    mapped_tensor = training_targets(tensor, difficult_as)

    assert mapped_array.tolist() == expected
    assert mapped_array.dtype == np.int8
    assert mapped_tensor.tolist() == [float(value) for value in expected]
    assert mapped_tensor.dtype == torch.float32
    assert array.tolist() == [1, 0, -1, -1]


def test_training_targets_rejects_unknown_option():
    with pytest.raises(ValueError, match="difficult_as"):
        training_targets(np.zeros(3, dtype=np.int8), "drop")


def test_voc_reader_rejects_unknown_difficult_option(tmp_path):
    devkit = write_voc_devkit(tmp_path)
    with pytest.raises(ValueError, match="difficult_as"):
        read_voc(devkit, difficult_as="drop")


def test_voc_malformed_line_names_line(tmp_path):
    devkit = write_voc_devkit(tmp_path)
    class_file = voc_class_file(devkit, "bus")
    class_file.write_text("000001 -1\n000002\n000003 -1\n")

    with pytest.raises(ValueError) as error:
        read_voc(devkit)

    assert str(class_file) in str(error.value)
    assert "line 2" in str(error.value)


def test_voc_invalid_label_names_line(tmp_path):
    devkit = write_voc_devkit(tmp_path)
    class_file = voc_class_file(devkit, "cow")
    class_file.write_text("000001 -1\n000002 -1\n000003 2\n")

    with pytest.raises(ValueError) as error:
        read_voc(devkit)

    assert str(class_file) in str(error.value)
    assert "line 3" in str(error.value)
    assert "'2'" in str(error.value)


def test_voc_mismatched_ids(tmp_path):
    devkit = write_voc_devkit(tmp_path)
    class_file = voc_class_file(devkit, "sheep")
    class_file.write_text("000001 -1\n000002 -1\n000009 -1\n")

    with pytest.raises(ValueError) as error:
        read_voc(devkit)

    message = str(error.value)
    assert str(class_file) in message
    assert "000003" in message
    assert "000009" in message


def test_voc_missing_class_file(tmp_path):
    devkit = write_voc_devkit(tmp_path)
    class_file = voc_class_file(devkit, "tvmonitor")
    class_file.unlink()

    with pytest.raises(FileNotFoundError, match="tvmonitor_trainval.txt"):
        read_voc(devkit)


def test_voc_missing_jpeg_found_by_check(tmp_path):
    devkit = write_voc_devkit(tmp_path)
    missing = devkit / "VOC2007" / "JPEGImages" / "000002.jpg"
    missing.unlink()
    dataset = read_voc(devkit)

    with pytest.raises(FileNotFoundError) as error:
        check_images_exist(dataset)

    assert str(missing) in str(error.value)
    assert "1 of 3" in str(error.value)


def test_build_voc2007_accepts_both_roots(tmp_path):
    devkit = write_voc_devkit(tmp_path, split="test")

    from_parent = build_dataset("voc2007", tmp_path, "test")
    from_devkit = build_dataset("voc2007", devkit, "test")

    assert from_parent.image_ids == VOC_IDS
    assert from_devkit.image_paths == from_parent.image_paths
    assert from_parent.split == "test"


def test_build_voc2007_split_aliases(tmp_path, caplog):
    write_voc_devkit(tmp_path, split="trainval")
    write_voc_devkit(tmp_path, split="test")

    with caplog.at_level("INFO", logger="msdgcn.data"):
        train = build_dataset("voc2007", tmp_path, "train")
        val = build_dataset("voc2007", tmp_path, "val")

    assert train.split == "trainval"
    assert val.split == "test"
    assert "trainval" in caplog.text
    with pytest.raises(ValueError, match="trainval"):
        build_dataset("voc2007", tmp_path, "minival")


# ---------------------------------------------------------------------------------------------
# VOC-20 view


@pytest.mark.parametrize(("split", "expected_size"), [("train", 414), ("val", 102)])
def test_voc20_view_sizes(coco_subset_dir, coco_json, split, expected_size):
    labels = labels_by_image(coco_json)
    ids = read_ids(coco_subset_dir / f"{split}.txt")
    independent = [image_id for image_id in ids if labels[image_id] & set(COCO_TO_VOC)]

    dataset = build_dataset("coco-subset-voc20", coco_subset_dir, split)

    assert len(dataset) == expected_size
    assert dataset.image_ids == [str(image_id) for image_id in independent]
    assert dataset.dropped_unlabeled == len(ids) - expected_size
    assert dataset.targets.any(axis=1).all()


def test_voc20_view_columns_and_known_image(coco_subset_dir, coco_json):
    coco = build_dataset("coco-subset", coco_subset_dir, "train")
    view = voc20_view(coco)
    renamed = {"airplane": "aeroplane", "couch": "sofa", "dining table": "diningtable",
               "motorcycle": "motorbike", "potted plant": "pottedplant", "tv": "tvmonitor"}  # fmt: skip
    coco_names = labels_by_image(coco_json)[KNOWN_TRAIN_IMAGE]
    expected = {renamed.get(name, name) for name in coco_names if name in COCO_TO_VOC}

    row = view.image_ids.index(str(KNOWN_TRAIN_IMAGE))
    present = {view.class_names[column] for column in np.flatnonzero(view.targets[row] == 1)}

    assert view.class_names == list(VOC_CLASSES)
    assert expected == {"chair", "person"}
    assert present == expected
    assert view.name == "coco-subset-voc20"
    # The view copies rows: its targets are not a window into the COCO matrix.
    assert not np.shares_memory(view.targets, coco.targets)


def test_voc20_view_missing_class(tmp_path):
    dataset = MultiLabelDataset(
        name="tiny",
        class_names=["person", "car"],
        image_ids=["1"],
        image_paths=[tmp_path / "1.jpg"],
        targets=np.array([[1, 0]], dtype=np.int8),
    )

    with pytest.raises(ValueError, match="airplane"):
        voc20_view(dataset)


# ---------------------------------------------------------------------------------------------
# Bad input


def test_truncated_jpeg_raises(coco_subset_dir, tmp_path):
    source = coco_subset_dir / "images" / f"{KNOWN_TRAIN_IMAGE:012d}.jpg"
    data = source.read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])

    with pytest.raises(ImageDecodeError) as error:
        load_image(truncated)

    assert str(truncated) in str(error.value)
    assert "Re-download" in str(error.value)


def test_zero_byte_file_raises(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")

    with pytest.raises(ImageDecodeError) as error:
        load_image(empty)

    assert str(empty) in str(error.value)
    assert "0 bytes" in str(error.value)


def test_text_file_named_jpg_raises(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("this is not an image\n")

    with pytest.raises(ImageDecodeError) as error:
        load_image(text)

    assert str(text) in str(error.value)
    assert isinstance(error.value, ValueError)


def test_missing_image_file_raises(tmp_path):
    with pytest.raises(ImageDecodeError, match="not found"):
        load_image(tmp_path / "absent.jpg")


def test_real_image_decodes(coco_subset_dir, coco_json):
    image_entry = coco_json["images"][0]
    image = load_image(coco_subset_dir / "images" / image_entry["file_name"])

    assert image.mode == "RGB"
    assert image.size == (image_entry["width"], image_entry["height"])


def test_malformed_json(tmp_path):
    annotation_file = tmp_path / "instances.json"
    annotation_file.write_text('{"images": [}')

    with pytest.raises(ValueError) as error:
        read_coco(annotation_file, tmp_path)

    assert str(annotation_file) in str(error.value)
    assert "invalid JSON" in str(error.value)


def test_json_missing_key(tmp_path):
    content = small_coco_content()
    del content["categories"]
    annotation_file = write_coco_json(tmp_path / "instances.json", content)

    with pytest.raises(ValueError, match="categories"):
        read_coco(annotation_file, tmp_path)


def test_unknown_category_id(tmp_path):
    content = small_coco_content()
    content["annotations"].append({"id": 77, "image_id": 3, "category_id": 42})
    annotation_file = write_coco_json(tmp_path / "instances.json", content)

    with pytest.raises(ValueError) as error:
        read_coco(annotation_file, tmp_path)

    message = str(error.value)
    assert str(annotation_file) in message
    assert "category_id 42" in message
    assert "annotation 77" in message


def test_id_file_unknown_id(tmp_path):
    annotation_file = write_coco_json(tmp_path / "instances.json", small_coco_content())
    id_file = tmp_path / "ids.txt"
    id_file.write_text("1\n2\n\n999\n")

    with pytest.raises(ValueError) as error:
        read_coco(annotation_file, tmp_path, id_file=id_file)

    message = str(error.value)
    assert str(id_file) in message
    assert "line 4" in message
    assert "999" in message


def test_missing_images_listed_with_count(tmp_path):
    paths = [tmp_path / f"{index:03d}.jpg" for index in range(30)]
    for path in paths[:5]:
        write_jpeg(path)
    dataset = MultiLabelDataset(
        name="partial",
        class_names=["a"],
        image_ids=[str(index) for index in range(30)],
        image_paths=paths,
        targets=np.ones((30, 1), dtype=np.int8),
    )

    with pytest.raises(FileNotFoundError) as error:
        check_images_exist(dataset)

    message = str(error.value)
    assert "25 of 30" in message
    assert str(paths[5]) in message
    assert str(paths[24]) in message
    assert str(paths[25]) not in message
    assert str(paths[0]) not in message


def test_check_images_exist_passes_on_coco_subset(coco_subset_dir):
    check_images_exist(build_dataset("coco-subset", coco_subset_dir, "val"))


# ---------------------------------------------------------------------------------------------
# Registry


def test_build_dataset_unknown_name(tmp_path):
    with pytest.raises(ValueError) as error:
        build_dataset("imagenet", tmp_path, "train")

    for name in DATASETS:
        assert name in str(error.value)


def test_build_dataset_missing_root(tmp_path):
    missing = tmp_path / "nowhere"

    with pytest.raises(FileNotFoundError) as error:
        build_dataset("coco2014", missing, "train")

    assert str(missing) in str(error.value)
    assert "instances_train2014.json" in str(error.value)


def test_build_dataset_unknown_split(coco_subset_dir):
    with pytest.raises(ValueError, match="'test'"):
        build_dataset("coco-subset", coco_subset_dir, "test")


def test_build_coco2014_layout(tmp_path):
    write_coco_json(tmp_path / "annotations" / "instances_val2014.json", small_coco_content())
    (tmp_path / "val2014").mkdir()

    dataset = build_dataset("coco2014", tmp_path, "val", cache_images=True)

    assert dataset.image_paths[0] == tmp_path / "val2014" / "a.jpg"
    assert dataset.split == "val"
    assert dataset.name == "coco2014"
    assert dataset.cache_images


# ---------------------------------------------------------------------------------------------
# Decoding details, caching and views


def test_exif_orientation_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display.
    Image.new("RGB", (40, 20), (10, 200, 10)).save(path, format="JPEG", exif=exif)

    image = load_image(path)

    assert image.size == (20, 40)
    assert image.mode == "RGB"


def test_grayscale_image_becomes_rgb(tmp_path):
    path = tmp_path / "gray.png"
    Image.new("L", (12, 8), 128).save(path)

    image = load_image(path)

    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (128, 128, 128)


def test_with_transform_shares_data_and_cache(coco_subset_dir):
    dataset = build_dataset("coco-subset", coco_subset_dir, "val", cache_images=True)
    transformed = dataset.with_transform(build_test_transform(32, IMAGENET_MEAN, IMAGENET_STD))

    first = dataset.read_image(0)

    assert dataset.transform is None
    assert transformed.targets is dataset.targets
    assert transformed.read_image(0) is first
    assert transformed[0][0].shape == (3, 32, 32)


def test_without_cache_reads_fresh_image(coco_subset_dir):
    dataset = build_dataset("coco-subset", coco_subset_dir, "val")

    assert dataset.read_image(0) is not dataset.read_image(0)


def test_dataset_rejects_bad_targets(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        MultiLabelDataset("bad", ["a", "b"], ["1"], [tmp_path / "1.jpg"], np.zeros((1, 3), dtype=np.int8))
    with pytest.raises(ValueError, match="1, 0 and -1"):
        MultiLabelDataset("bad", ["a"], ["1"], [tmp_path / "1.jpg"], np.array([[2]], dtype=np.int8))


# ---------------------------------------------------------------------------------------------
# Transforms


def allowed_crop_sizes(width: int, height: int, input_size: int) -> list[int]:
    base = min(width, height)
    sizes = [int(base * scale) for scale in (1.0, 0.875, 0.75, 0.66, 0.5)]
    return [input_size if abs(size - input_size) < 3 else size for size in sizes]


def allowed_offsets(width: int, height: int, crop_width: int, crop_height: int) -> set[tuple[int, int]]:
    step_x = (width - crop_width) // 4
    step_y = (height - crop_height) // 4
    corners = {(0, 0), (4 * step_x, 0), (0, 4 * step_y), (4 * step_x, 4 * step_y)}
    center = {(2 * step_x, 2 * step_y)}
    edges = {(0, 2 * step_y), (4 * step_x, 2 * step_y), (2 * step_x, 0), (2 * step_x, 4 * step_y)}
    quarters = {(step_x, step_y), (3 * step_x, step_y), (step_x, 3 * step_y), (3 * step_x, 3 * step_y)}
    return corners | center | edges | quarters


def test_multiscale_crop_boxes_from_allowed_sets():
    width, height, input_size = 330, 290, 224
    sizes = allowed_crop_sizes(width, height, input_size)
    assert len(set(sizes)) == len(sizes), "the test needs distinct sizes to recover scale indices"
    crop = MultiScaleCrop(input_size)
    rng = random.Random(0)

    boxes = [crop.sample_crop(width, height, rng) for _ in range(400)]

    pairs_seen = set()
    offsets_seen = set()
    for left, top, crop_width, crop_height in boxes:
        assert crop_width in sizes
        assert crop_height in sizes
        assert abs(sizes.index(crop_width) - sizes.index(crop_height)) <= 2
        assert (left, top) in allowed_offsets(width, height, crop_width, crop_height)
        assert left + crop_width <= width
        assert top + crop_height <= height
        pairs_seen.add((crop_width, crop_height))
        offsets_seen.add(((left, top), (crop_width, crop_height)))

    # 5 sizes with index distance <= 2 give 19 pairs, and 400 draws with seed 0 reach all of them.
    assert len(pairs_seen) == 19
    # Distinct (offset, size) combinations: far more than the 19 pairs, so offsets vary too.
    assert len(offsets_seen) > 100


def test_multiscale_crop_snaps_to_input_size():
    crop = MultiScaleCrop(224)

    # 258 * 0.875 = 225.75 -> 225, within 2 px of 224, so it becomes 224.
    assert crop.candidate_sizes(300, 258) == [258, 224, 193, 170, 129]
    assert len(crop.fixed_offsets(300, 258, 224, 224)) == 13
    assert len(MultiScaleCrop(224, more_fix_crop=False).fixed_offsets(300, 258, 224, 224)) == 5


def test_multiscale_crop_seeded_draws_repeat():
    crop = MultiScaleCrop(64)
    first = [crop.sample_crop(128, 100, random.Random(3)) for _ in range(5)]
    second = [crop.sample_crop(128, 100, random.Random(3)) for _ in range(5)]

    assert first == second


def test_multiscale_crop_output_is_crop_of_box():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8))
    crop = MultiScaleCrop(48)
    state = random.getstate()
    try:
        random.seed(7)
        left, top, width, height = crop.sample_crop(*image.size)
        random.seed(7)
        output = crop(image)
    finally:
        random.setstate(state)
    expected = image.crop((left, top, left + width, top + height)).resize((48, 48), Image.Resampling.BILINEAR)

    assert output.size == (48, 48)
    assert np.array_equal(np.asarray(output), np.asarray(expected))


def test_multiscale_crop_rejects_tensor():
    with pytest.raises(TypeError, match="PIL"):
        MultiScaleCrop(32)(torch.zeros(3, 40, 40))


def test_train_transform_shape(coco_subset_dir):
    image = load_image(coco_subset_dir / "images" / f"{KNOWN_TRAIN_IMAGE:012d}.jpg")
    transform = build_train_transform(64, IMAGENET_MEAN, IMAGENET_STD)

    torch.manual_seed(0)
    random.seed(0)
    output = transform(image)

    assert output.shape == (3, 64, 64)
    assert output.dtype == torch.float32
    # Normalised values leave [0, 1]: a raw ToTensor output would not go below 0.
    assert output.min() < 0


def test_test_transform_deterministic(coco_subset_dir):
    image = load_image(coco_subset_dir / "images" / f"{KNOWN_TRAIN_IMAGE:012d}.jpg")
    transform = build_test_transform(48, IMAGENET_MEAN, IMAGENET_STD)

    first = transform(image)
    second = transform(image)

    assert first.shape == (3, 48, 48)
    assert torch.equal(first, second)


def test_dataloader_batches(coco_subset_dir):
    dataset = build_dataset("coco-subset", coco_subset_dir, "val")
    dataset = dataset.with_transform(build_train_transform(32, IMAGENET_MEAN, IMAGENET_STD))
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=0, shuffle=False)

    images, targets, indices = next(iter(loader))

    assert images.shape == (4, 3, 32, 32)
    assert images.dtype == torch.float32
    assert targets.shape == (4, 80)
    assert targets.dtype == torch.float32
    assert indices.tolist() == [0, 1, 2, 3]
    assert torch.equal(targets, torch.from_numpy(dataset.targets[:4]).float())


def test_copied_real_image_in_tiny_dataset(coco_subset_dir, tmp_path):
    source = coco_subset_dir / "images" / f"{KNOWN_TRAIN_IMAGE:012d}.jpg"
    copied = tmp_path / "copy.jpg"
    shutil.copyfile(source, copied)
    dataset = MultiLabelDataset("copy", ["a"], ["1"], [copied], np.array([[1]], dtype=np.int8))

    image, _, _ = dataset[0]

    assert image.size == Image.open(source).size
