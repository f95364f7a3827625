"""Image decoding: every common file kind becomes upright 8-bit RGB; broken files are named."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from msdgcn.data import ImageDecodeError, find_unreadable_images, load_image, read_coco


def pixel(image: Image.Image, x: int = 0, y: int = 0) -> tuple[int, int, int]:
    assert image.mode == "RGB"
    return image.getpixel((x, y))


def test_grayscale_png(tmp_path):
    Image.new("L", (4, 3), 77).save(tmp_path / "gray.png")
    assert pixel(load_image(tmp_path / "gray.png")) == (77, 77, 77)


def test_palette_png(tmp_path):
    image = Image.new("P", (4, 3), 1)
    image.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    image.save(tmp_path / "palette.png")
    assert pixel(load_image(tmp_path / "palette.png")) == (10, 200, 30)


def test_rgba_png_composited_over_white(tmp_path):
    image = Image.new("RGBA", (2, 1), (200, 0, 0, 255))
    image.putpixel((1, 0), (0, 0, 0, 0))
    image.save(tmp_path / "alpha.png")
    loaded = load_image(tmp_path / "alpha.png")
    assert pixel(loaded, 0) == (200, 0, 0)
    assert pixel(loaded, 1) == (255, 255, 255)


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    red, green, blue = pixel(load_image(tmp_path / "cmyk.jpg"), 4, 4)
    assert red > 240
    assert green < 15
    assert blue < 15


def test_16_bit_png_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    loaded = load_image(tmp_path / "deep.png")
    assert [pixel(loaded, x)[0] for x in range(3)] == [0, 100, 255]


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (4, 4), color) for color in ((250, 0, 0), (0, 0, 250))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    red, green, blue = pixel(load_image(tmp_path / "anim.gif"))
    assert red > 200
    assert blue < 50


def png_with_header_size(width: int, height: int) -> bytes:
    """Return a PNG whose IHDR claims width x height but whose data is a single pixel."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\x00")) + chunk(b"IEND", b"")


def test_decompression_bomb_rejected(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_with_header_size(100_000, 100_000))
    with pytest.raises(ImageDecodeError, match="bomb.png"):
        load_image(path)


def test_pixel_limit_below_pil_default(tmp_path):
    Image.new("RGB", (20, 20)).save(tmp_path / "big.png")
    with pytest.raises(ImageDecodeError, match=r"20 x 20 = 400 pixels, above the limit of 100"):
        load_image(tmp_path / "big.png", max_pixels=100)
    assert load_image(tmp_path / "big.png", max_pixels=400).size == (20, 20)


def test_unreadable_images_listed(tmp_path, coco_subset_dir):
    images = tmp_path / "images"
    images.mkdir()
    ids = ["25", "30", "34"]
    for image_id in ids:
        (images / f"{int(image_id):012d}.jpg").write_bytes((coco_subset_dir / "images" / f"{int(image_id):012d}.jpg").read_bytes())
    truncated = images / "000000000030.jpg"
    truncated.write_bytes(truncated.read_bytes()[:2000])
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    dataset = read_coco(coco_subset_dir / "annotations" / "instances.json", images, tmp_path / "ids.txt")
    failures = find_unreadable_images(dataset)
    assert [index for index, _ in failures] == [1]
    assert "000000000030.jpg" in failures[0][1]
    kept = dataset.without_rows([1])
    assert kept.image_ids == ["25", "34"]
    assert (kept.targets == dataset.targets[[0, 2]]).all()


def linked_copy(coco_subset_dir, target, broken=()):
    """A coco-subset copy of symlinks in which the named images are truncated real copies."""
    target.mkdir()
    for name in ("annotations", "train.txt", "val.txt"):
        (target / name).symlink_to(coco_subset_dir / name, target_is_directory=(coco_subset_dir / name).is_dir())
    (target / "images").mkdir()
    for image in (coco_subset_dir / "images").iterdir():
        if image.name in broken:
            (target / "images" / image.name).write_bytes(image.read_bytes()[:1500])
        else:
            (target / "images" / image.name).symlink_to(image)
    return target


def test_run_skips_unreadable_training_image(coco_subset_dir, tmp_path):
    from msdgcn.profiles import resolve_run
    from msdgcn.run import build_run_data

    root = linked_copy(coco_subset_dir, tmp_path / "coco", broken={"000000000030.jpg"})
    values = dict(max_train_images=6, max_val_images=4, image_size=32)
    strict = resolve_run("smoke", "a", "coco-subset", str(root), values)
    train_set, _ = build_run_data(strict)
    with pytest.raises(ImageDecodeError, match="000000000030.jpg"):
        train_set[1]

    skipping = resolve_run("smoke", "a", "coco-subset", str(root), dict(values, skip_unreadable_images=True))
    train_set, _ = build_run_data(skipping)
    assert len(train_set) == 5
    assert "30" not in train_set.image_ids
    assert [entry["image"] for entry in train_set.skipped_images] == ["30"]


def test_run_stops_on_unreadable_validation_image(coco_subset_dir, tmp_path):
    from msdgcn.profiles import resolve_run
    from msdgcn.run import build_run_data

    first_val = f"{int((coco_subset_dir / 'val.txt').read_text().split()[0]):012d}.jpg"
    root = linked_copy(coco_subset_dir, tmp_path / "coco", broken={first_val})
    config = resolve_run(
        "smoke", "a", "coco-subset", str(root), dict(max_val_images=4, image_size=32, skip_unreadable_images=True)
    )
    with pytest.raises(ImageDecodeError, match=f"(?s)1 validation images .*{first_val}"):
        build_run_data(config)
