"""`download` against a local HTTP server on 127.0.0.1 that the tests start and control.

The server serves archives that the tests build, supports Range requests, can ignore them, and
can cut the connection after a given number of bytes, once per request path.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from msdgcn import download
from msdgcn.__main__ import main
from msdgcn.data import VOC_CLASSES, build_dataset
from msdgcn.download import (
    Archive,
    ChecksumMismatchError,
    DownloadError,
    UnsafeArchiveError,
    download_dataset,
)


class ArchiveHandler(BaseHTTPRequestHandler):
    def do_GET(self):
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        data = server.files.get(self.path)
        if data is None:
            self.send_error(404)
            return

        start = 0
        range_header = self.headers.get("Range")
        if range_header and not server.ignore_range:
            start = int(range_header.removeprefix("bytes=").removesuffix("-"))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()

        cut = server.cut_after.pop(self.path, None)
        if cut is not None:
            # Promise the whole body, send part of it, then close: a connection cut mid-file.
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, format, *args):  # keep the test output quiet
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), ArchiveHandler)
    httpd.files, httpd.requests, httpd.cut_after, httpd.ignore_range = {}, [], {}, False
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def no_retry_wait(monkeypatch):
    monkeypatch.setattr(download, "RETRY_WAIT_SECONDS", 0.0)


def jpeg_bytes(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (seed * 40 % 256, 90, 160)).save(buffer, format="JPEG")
    return buffer.getvalue()


def tar_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def voc_split_tar(split: str, image_id: str, positive: str) -> bytes:
    """A VOC 2007 tar with one image whose only label is `positive`, padded to a few hundred kB."""
    main_dir = "VOCdevkit/VOC2007/ImageSets/Main"
    members = {f"VOCdevkit/VOC2007/JPEGImages/{image_id}.jpg": jpeg_bytes(int(image_id))}
    for name in VOC_CLASSES:
        members[f"{main_dir}/{name}_{split}.txt"] = f"{image_id} {1 if name == positive else -1}\n".encode()
    # Random padding makes the archive large enough to cut in the middle.
    members["VOCdevkit/VOC2007/padding.bin"] = hashlib.shake_256(split.encode()).digest(300_000)
    return tar_bytes(members)


def serve(server, name: str, data: bytes, checksum: str | None = None) -> Archive:
    server.files[f"/{name}"] = data
    return Archive(f"{server.base_url}/{name}", checksum or hashlib.md5(data).hexdigest(), "md5")


@pytest.fixture
def voc_registry(server):
    return {
        "voc2007": (
            serve(server, "VOCtrainval_06-Nov-2007.tar", voc_split_tar("trainval", "000005", "dog")),
            serve(server, "VOCtest_06-Nov-2007.tar", voc_split_tar("test", "000001", "cat")),
        )
    }


def test_download_voc2007_into_data_layout(server, voc_registry, tmp_path):
    outcome = download_dataset("voc2007", tmp_path, registry=voc_registry, progress=False)
    assert outcome == {"VOCtrainval_06-Nov-2007.tar": "downloaded", "VOCtest_06-Nov-2007.tar": "downloaded"}

    trainval = build_dataset("voc2007", tmp_path, "trainval")
    test = build_dataset("voc2007", tmp_path, "test")
    assert trainval.image_ids == ["000005"]
    assert test.image_ids == ["000001"]
    assert trainval.targets[0].tolist() == [1 if name == "dog" else 0 for name in VOC_CLASSES]
    assert test.targets[0].tolist() == [1 if name == "cat" else 0 for name in VOC_CLASSES]

    requests_before = len(server.requests)
    again = download_dataset("voc2007", tmp_path, registry=voc_registry, progress=False)
    assert set(again.values()) == {"skipped"}
    assert len(server.requests) == requests_before


def test_download_resumes_after_cut(server, voc_registry, tmp_path):
    name = "VOCtrainval_06-Nov-2007.tar"
    server.cut_after[f"/{name}"] = 100_000
    with pytest.raises(DownloadError, match="resume"):
        download_dataset("voc2007", tmp_path, registry=voc_registry, retries=0, progress=False)
    part = tmp_path / "archives" / f"{name}.part"
    assert part.stat().st_size == 100_000

    outcome = download_dataset("voc2007", tmp_path, registry=voc_registry, retries=0, progress=False)
    assert outcome[name] == "downloaded"
    assert (f"/{name}", "bytes=100000-") in server.requests
    assert not part.exists()
    assert build_dataset("voc2007", tmp_path, "trainval").image_ids == ["000005"]


def test_download_retries_within_one_call(server, voc_registry, tmp_path):
    server.cut_after["/VOCtest_06-Nov-2007.tar"] = 50_000
    download_dataset("voc2007", tmp_path, registry=voc_registry, retries=1, progress=False)
    assert ("/VOCtest_06-Nov-2007.tar", "bytes=50000-") in server.requests
    assert build_dataset("voc2007", tmp_path, "test").image_ids == ["000001"]


def test_download_restarts_when_range_ignored(server, voc_registry, tmp_path):
    server.ignore_range = True
    part = tmp_path / "archives" / "VOCtrainval_06-Nov-2007.tar.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * 1000)  # a stale partial file that a resume would corrupt
    download_dataset("voc2007", tmp_path, registry=voc_registry, progress=False)
    assert ("/VOCtrainval_06-Nov-2007.tar", "bytes=1000-") in server.requests
    assert build_dataset("voc2007", tmp_path, "trainval").image_ids == ["000005"]


def test_checksum_mismatch_deletes_archive(server, tmp_path):
    data = voc_split_tar("trainval", "000005", "dog")
    wrong = "0" * 32
    registry = {"voc2007": (serve(server, "VOCtrainval_06-Nov-2007.tar", data, checksum=wrong),)}
    with pytest.raises(ChecksumMismatchError) as caught:
        download_dataset("voc2007", tmp_path, registry=registry, progress=False)
    message = str(caught.value)
    assert "VOCtrainval_06-Nov-2007.tar" in message
    assert wrong in message
    assert hashlib.md5(data).hexdigest() in message
    assert not (tmp_path / "archives" / "VOCtrainval_06-Nov-2007.tar").exists()
    assert not (tmp_path / "VOCdevkit").exists()


@pytest.mark.parametrize(
    "name, data",
    [
        ("parent.tar", tar_bytes({"VOCdevkit/ok.txt": b"ok", "../escaped.txt": b"bad"})),
        ("absolute.zip", zip_bytes({"annotations/ok.json": b"{}", "/tmp/escaped.txt": b"bad"})),
    ],
)
def test_unsafe_member_rejected(server, tmp_path, name, data):
    registry = {"voc2007": (serve(server, name, data),)}
    root = tmp_path / "root"
    with pytest.raises(UnsafeArchiveError, match="escaped.txt"):
        download_dataset("voc2007", root, registry=registry, progress=False)
    assert not (tmp_path / "escaped.txt").exists()
    assert not (root / "VOCdevkit").exists()
    assert not (root / "annotations").exists()


def test_symlink_member_rejected(server, tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        link = tarfile.TarInfo("VOCdevkit/link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)
    registry = {"voc2007": (serve(server, "link.tar", buffer.getvalue()),)}
    with pytest.raises(UnsafeArchiveError, match="VOCdevkit/link"):
        download_dataset("voc2007", tmp_path, registry=registry, progress=False)


def coco_instances(image_id: int, file_name: str, category_id: int) -> bytes:
    content = {
        "images": [{"id": image_id, "file_name": file_name}],
        "annotations": [{"id": 1, "image_id": image_id, "category_id": category_id}],
        "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}],
    }
    return json.dumps(content).encode()


def test_download_cli_coco2014_with_registry_file(server, tmp_path):
    train_name, val_name = "COCO_train2014_000000000001.jpg", "COCO_val2014_000000000002.jpg"
    entries = []
    for file_name, members in [
        ("train2014.zip", {f"train2014/{train_name}": jpeg_bytes(1)}),
        ("val2014.zip", {f"val2014/{val_name}": jpeg_bytes(2)}),
        ("annotations_trainval2014.zip", {
            "annotations/instances_train2014.json": coco_instances(1, train_name, 18),
            "annotations/instances_val2014.json": coco_instances(2, val_name, 1),
        }),
    ]:  # fmt: skip
        archive = serve(server, file_name, zip_bytes(members))
        entries.append({"url": archive.url, "checksum": archive.checksum, "algorithm": "md5"})
    registry_file = tmp_path / "registry.json"
    registry_file.write_text(json.dumps({"coco2014": entries}))
    root = tmp_path / "coco"

    assert main(["download", "coco2014", "--root", str(root), "--registry", str(registry_file),
                 "--no-progress", "--delete-archives"]) == 0  # fmt: skip
    val = build_dataset("coco2014", root, "val")
    train = build_dataset("coco2014", root, "train")
    assert val.class_names == ["person", "dog"]
    assert val.targets.tolist() == [[1, 0]]
    assert train.targets.tolist() == [[0, 1]]
    assert not (root / "archives" / "train2014.zip").exists()


def test_existing_layout_is_not_downloaded(server, tmp_path):
    for folder in ("train2014", "val2014", "annotations"):
        (tmp_path / folder).mkdir()
    for split in ("train", "val"):
        (tmp_path / "annotations" / f"instances_{split}2014.json").write_text("{}")
    registry = {"coco2014": (Archive(f"{server.base_url}/val2014.zip", "0" * 32),)}
    outcome = download_dataset("coco2014", tmp_path, registry=registry, progress=False)
    assert outcome == {"val2014.zip": "present"}
    assert server.requests == []


def test_missing_dataset_folder_names_download_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"python -m msdgcn download coco2014 --root"):
        build_dataset("coco2014", tmp_path / "absent", "val")
    with pytest.raises(FileNotFoundError, match=r"python -m msdgcn download voc2007 --root"):
        build_dataset("voc2007", tmp_path, "test")


def test_base_url_keeps_names_and_checksums():
    mirrored = download.archives_for("coco2014", base_url="http://127.0.0.1:9/mirror/")
    assert [a.url for a in mirrored] == [
        "http://127.0.0.1:9/mirror/train2014.zip",
        "http://127.0.0.1:9/mirror/val2014.zip",
        "http://127.0.0.1:9/mirror/annotations_trainval2014.zip",
    ]
    assert [a.checksum for a in mirrored] == [a.checksum for a in download.REGISTRY["coco2014"]]
