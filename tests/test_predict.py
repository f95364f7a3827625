"""`predict`: JSON lines for image files, with the checkpoint's own test transform."""

from __future__ import annotations

import json

import pytest
import torch

from msdgcn.__main__ import main
from msdgcn.convert import COCO_CLASSES
from msdgcn.data import ImageDecodeError, build_test_transform, load_image
from msdgcn.engine import CHECKPOINT_FORMAT, save_checkpoint
from msdgcn.models import ModelConfig, build_model
from msdgcn.predict import (
    evaluate_checkpoint,
    load_model_from_checkpoint,
    predict_images,
    table1_row,
)
from msdgcn.profiles import RunConfig

IMAGE_SIZE = 48
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint of ours: a small random ADD-GCN on resnet18 for the 80 COCO classes."""
    torch.manual_seed(0)
    model_config = ModelConfig(backbone="resnet18", hidden_dim=8)
    model = build_model(model_config)
    # Larger classifier biases spread the probabilities so that some labels pass 0.5.
    with torch.no_grad():
        model.head.classifier.bias.normal_(0.0, 3.0)
    config = RunConfig(
        variant="a", profile="smoke", dataset="coco-subset", data_root="",
        image_size=IMAGE_SIZE, model=dict(vars(model_config)),
    )  # fmt: skip
    path = tmp_path_factory.mktemp("predict") / "model.pt"
    save_checkpoint(path, {
        "format": CHECKPOINT_FORMAT, "model": model.state_dict(), "epoch": 1,
        "config": config.to_dict(), "class_names": list(COCO_CLASSES),
    })  # fmt: skip
    return path


@pytest.fixture(scope="module")
def two_images(coco_subset_dir):
    return [coco_subset_dir / "images" / "000000000009.jpg", coco_subset_dir / "images" / "000000000064.jpg"]


def test_predict_writes_jsonl(checkpoint, two_images, tmp_path):
    output = tmp_path / "predictions.jsonl"
    assert main(["predict", str(checkpoint), *map(str, two_images), "--output", str(output)]) == 0

    lines = output.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 2
    assert [record["image"] for record in records] == [str(path) for path in two_images]

    model = load_model_from_checkpoint(checkpoint).model
    transform = build_test_transform(IMAGE_SIZE, MEAN, STD)
    for record, path in zip(records, two_images):
        assert set(record) == {"image", "labels", "probabilities"}
        assert list(record["probabilities"]) == list(COCO_CLASSES)
        probabilities = torch.tensor(list(record["probabilities"].values()))
        assert bool(((probabilities >= 0) & (probabilities <= 1)).all())
        with torch.no_grad():
            expected = torch.sigmoid(model(transform(load_image(path))[None]))[0]
        torch.testing.assert_close(probabilities, expected, rtol=1e-5, atol=1e-6)
        above = {name for name, p in record["probabilities"].items() if p >= 0.5}
        assert set(record["labels"]) == above
        ranked = [record["probabilities"][name] for name in record["labels"]]
        assert ranked == sorted(ranked, reverse=True)
    assert any(record["labels"] for record in records)  # the threshold really selected labels


def test_predict_rejects_corrupt_image(checkpoint, two_images, tmp_path):
    corrupt = tmp_path / "half.jpg"
    corrupt.write_bytes(two_images[0].read_bytes()[:400])
    output = tmp_path / "predictions.jsonl"
    output.write_text("previous contents\n")

    with pytest.raises(ImageDecodeError, match="half.jpg") as caught:
        predict_images(checkpoint, [two_images[0], corrupt, tmp_path / "absent.jpg"], output)
    assert "absent.jpg" in str(caught.value)
    assert "2 of 3 images" in str(caught.value)
    assert output.read_text() == "previous contents\n"


def test_predict_cli_reports_corrupt_image(checkpoint, tmp_path, capsys):
    corrupt = tmp_path / "empty.jpg"
    corrupt.write_bytes(b"")
    output = tmp_path / "out.jsonl"
    assert main(["predict", str(checkpoint), str(corrupt), "--output", str(output)]) == 2
    assert "empty.jpg" in capsys.readouterr().err
    assert not output.exists()


def test_evaluate_checkpoint_gives_table1_row(checkpoint, coco_subset_dir):
    metrics, probabilities, data = evaluate_checkpoint(
        checkpoint, "coco-subset", coco_subset_dir, "val", max_images=6
    )
    assert probabilities.shape == (6, 80)
    assert data.class_names == list(COCO_CLASSES)
    row = table1_row(metrics)
    assert list(row) == [
        "mAP", "all CP", "all CR", "all CF1", "all OP", "all OR", "all OF1",
        "top-3 CP", "top-3 CR", "top-3 CF1", "top-3 OP", "top-3 OR", "top-3 OF1",
    ]  # fmt: skip
    assert row["mAP"] == pytest.approx(100 * metrics["mAP"])
    assert row["top-3 OF1"] == pytest.approx(100 * metrics["top3"]["OF1"])
