"""Download of the official PASCAL VOC and MS-COCO 2014 archives into the layout `data.py` reads.

`download_dataset("voc2007", root)` fetches each archive of the dataset into `<root>/archives/`,
resumes a partial file with an HTTP Range request, verifies its checksum, extracts it into
`<root>` after checking every member path, and marks it done. A rerun skips archives that are
marked done. Afterwards `check_layout` confirms the files that `data.build_dataset` reads.

What happens on failure:
- a cut connection keeps `<archive>.part`, and the next attempt (automatic, up to `retries`, or
  a rerun of the same command) resumes from its size. A server that ignores Range sends the
  whole file again, and the download restarts from byte 0.
- a checksum mismatch deletes the archive, so that the next run downloads it afresh, and raises
  ChecksumMismatchError naming the file and both checksums.
- an archive member that would land outside `<root>` (absolute path, `..`, link, device file)
  raises UnsafeArchiveError before anything of that archive is extracted.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import stat
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

logger = logging.getLogger(__name__)

ARCHIVE_DIR = "archives"
CHUNK_BYTES = 1 << 20
TIMEOUT_SECONDS = 60.0
RETRY_WAIT_SECONDS = 2.0
HASH_ALGORITHMS = ("md5", "sha1", "sha256")

# Checksum sources, named once so that every archive names where its checksum comes from.
TORCHVISION_VOC = "torchvision 0.29.1, torchvision/datasets/voc.py (DATASET_YEAR_DICT md5)"
# NOTE: these COCO MD5 values are not confirmed by the COCO team, because we found no checksum
# published by COCO. They come from third-party download scripts (for example Salesforce LAVIS,
# lavis/datasets/download_scripts/download_coco.py, for the two image zips), and several
# independent repositories list the same values.
COCO_THIRD_PARTY = "third-party download scripts (e.g. Salesforce LAVIS); not published by COCO"


@dataclass(frozen=True)
class Archive:
    """One archive of a dataset: where to fetch it and the checksum it must have."""

    url: str
    checksum: str
    algorithm: str = "md5"
    checksum_source: str = ""

    @property
    def filename(self) -> str:
        return PurePosixPath(urllib.parse.urlparse(self.url).path).name


VOC_MIRROR = "https://thor.robots.ox.ac.uk/pascal/VOC"
COCO_HOST = "http://images.cocodataset.org"

REGISTRY: dict[str, tuple[Archive, ...]] = {
    "voc2007": (
        Archive(f"{VOC_MIRROR}/voc2007/VOCtrainval_06-Nov-2007.tar",
                "c52e279531787c972589f7e41ab4ae64", "md5", TORCHVISION_VOC),
        Archive(f"{VOC_MIRROR}/voc2007/VOCtest_06-Nov-2007.tar",
                "b6e924de25625d8de591ea690078ad9f", "md5", TORCHVISION_VOC),
    ),
    "voc2012": (
        Archive(f"{VOC_MIRROR}/voc2012/VOCtrainval_11-May-2012.tar",
                "6cd6e144f989b92b3379bac3b3de84fd", "md5", TORCHVISION_VOC),
    ),
    "coco2014": (
        Archive(f"{COCO_HOST}/zips/train2014.zip",
                "0da8c0bd3d6becc4dcb32757491aca88", "md5", COCO_THIRD_PARTY),
        Archive(f"{COCO_HOST}/zips/val2014.zip",
                "a3d79f5ed8d289b7a7554ce06a5782b3", "md5", COCO_THIRD_PARTY),
        Archive(f"{COCO_HOST}/annotations/annotations_trainval2014.zip",
                "0a379cfc70b0e71301e0f377548639bd", "md5", COCO_THIRD_PARTY),
    ),
}  # fmt: skip

# Paths under <root> that data.py reads, checked after extraction.
# NOTE: that VOCtest_06-Nov-2007.tar contains ImageSets/Main/<class>_test.txt is assumed, because
# the real archive could not be opened offline. If it does not, this check names the missing file.
EXPECTED_LAYOUT: dict[str, tuple[str, ...]] = {
    "voc2007": (
        "VOCdevkit/VOC2007/JPEGImages",
        "VOCdevkit/VOC2007/ImageSets/Main/aeroplane_trainval.txt",
        "VOCdevkit/VOC2007/ImageSets/Main/aeroplane_test.txt",
    ),
    "voc2012": (
        "VOCdevkit/VOC2012/JPEGImages",
        "VOCdevkit/VOC2012/ImageSets/Main/aeroplane_trainval.txt",
    ),
    "coco2014": (
        "annotations/instances_train2014.json",
        "annotations/instances_val2014.json",
        "train2014",
        "val2014",
    ),
}


class DownloadError(RuntimeError):
    """A download that failed or stopped early; the partial file is kept for a resume."""


class ChecksumMismatchError(DownloadError):
    """An archive whose checksum differs from the expected one."""


class UnsafeArchiveError(ValueError):
    """An archive member that would be written outside the extraction folder."""


# ---------------------------------------------------------------------------------------------
# Registry


def archives_for(
    name: str, base_url: str | None = None, registry: dict[str, Sequence[Archive]] | None = None
) -> tuple[Archive, ...]:
    """Return the archives of dataset `name`, from `registry` (default REGISTRY).

    `base_url` replaces everything before each file name, for a mirror that serves the same
    files (for example http://127.0.0.1:8000/files in the tests).
    """
    registry = REGISTRY if registry is None else registry
    if name not in registry:
        raise ValueError(f"unknown dataset {name!r} to download; choose one of {sorted(registry)}")
    archives = tuple(registry[name])
    if base_url:
        base = base_url.rstrip("/")
        archives = tuple(
            Archive(f"{base}/{archive.filename}", archive.checksum, archive.algorithm, archive.checksum_source)
            for archive in archives
        )
    return archives


def read_registry(path: str | os.PathLike) -> dict[str, tuple[Archive, ...]]:
    """Read a registry JSON file: {dataset: [{"url", "checksum", "algorithm"}, ...]}."""
    path = Path(path)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"registry file not found: {path}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"registry file {path} is not valid JSON: {error}") from error
    registry = {}
    for name, entries in content.items():
        try:
            registry[name] = tuple(
                Archive(entry["url"], entry["checksum"].lower(), entry.get("algorithm", "md5"),
                        entry.get("checksum_source", str(path)))
                for entry in entries
            )  # fmt: skip
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(
                f"registry file {path}: dataset {name!r} must list objects with 'url' and "
                f"'checksum' ({error})"
            ) from error
    return registry


# ---------------------------------------------------------------------------------------------
# Download


def file_checksum(path: str | os.PathLike, algorithm: str) -> str:
    """Return the hex digest of a file, read in 1 MiB chunks."""
    if algorithm not in HASH_ALGORITHMS:
        raise ValueError(f"unknown checksum algorithm {algorithm!r}; expected one of {HASH_ALGORITHMS}")
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checksum(path: Path, archive: Archive) -> None:
    """Raise ChecksumMismatchError, after deleting `path`, when its checksum is not the expected one."""
    actual = file_checksum(path, archive.algorithm)
    if actual != archive.checksum.lower():
        path.unlink()
        raise ChecksumMismatchError(
            f"checksum mismatch for {path.name} from {archive.url}: expected {archive.algorithm} "
            f"{archive.checksum}, got {actual}. The file was deleted; run the command again to "
            "download it afresh, or check the mirror"
        )
    logger.info("%s: %s checksum verified", path.name, archive.algorithm)


def _content_range_start_and_total(header: str | None) -> tuple[int, int | None]:
    """Parse 'bytes START-END/TOTAL' (TOTAL may be '*')."""
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", (header or "").strip())
    if match is None:
        raise DownloadError(f"invalid Content-Range header in a 206 response: {header!r}")
    total = None if match.group(2) == "*" else int(match.group(2))
    return int(match.group(1)), total


def _fetch_once(url: str, part: Path, progress: bool, timeout: float) -> None:
    """Fetch `url` into `part`, appending to what is there when the server honours Range."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            # Range Not Satisfiable: the partial file already has every byte (or too many); the
            # checksum decides which.
            logger.info("%s: the server has no bytes after %d; the file looks complete", part.name, offset)
            return
        raise DownloadError(f"HTTP {error.code} {error.reason} for {url}") from error

    with response:
        if response.status == 206:
            start, total = _content_range_start_and_total(response.headers.get("Content-Range"))
            if start != offset:
                raise DownloadError(
                    f"{url}: requested bytes from {offset} but the server sent bytes from {start}; "
                    f"delete {part} and run again"
                )
            mode = "ab"
            logger.info("%s: resuming at byte %d", part.name, offset)
        elif response.status == 200:
            if offset:
                logger.warning("%s: the server ignored the Range request; starting again from byte 0", part.name)
            offset, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None else None
        else:
            raise DownloadError(f"unexpected HTTP status {response.status} for {url}")

        with open(part, mode) as handle, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
            desc=part.name.removesuffix(".part"), disable=not progress, mininterval=1.0,
        ) as bar:  # fmt: skip
            while True:
                chunk = response.read(CHUNK_BYTES)
                if not chunk:
                    break
                handle.write(chunk)
                bar.update(len(chunk))

    size = part.stat().st_size
    if total is not None and size != total:
        raise DownloadError(f"{url}: the connection ended after {size} of {total} bytes")


def fetch(
    url: str,
    destination: Path,
    retries: int = 3,
    progress: bool = True,
    timeout: float = TIMEOUT_SECONDS,
) -> None:
    """Download `url` to `destination` through `<destination>.part`, resuming after a cut.

    A failed attempt is retried up to `retries` times, each resuming from the partial file. When
    all fail, DownloadError reports the bytes kept, and the partial file stays for the next run.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    part = destination.with_name(destination.name + ".part")
    for attempt in range(retries + 1):
        try:
            _fetch_once(url, part, progress, timeout)
            break
        except (DownloadError, OSError, http.client.HTTPException) as error:
            size = part.stat().st_size if part.exists() else 0
            if attempt == retries:
                kept = (
                    f"{size} bytes are kept in {part}. Run the same command again to resume"
                    if part.exists()
                    else "nothing was written. Check the address and the network, then run the same command again"
                )
                raise DownloadError(
                    f"download of {url} failed after {attempt + 1} attempt(s) ({error}); {kept}"
                ) from error
            logger.warning(
                "download of %s failed (%s) with %d bytes kept; retry %d of %d",
                url, error, size, attempt + 1, retries,
            )  # fmt: skip
            time.sleep(RETRY_WAIT_SECONDS)
    os.replace(part, destination)


# ---------------------------------------------------------------------------------------------
# Extraction


def _checked_member_path(name: str, archive_path: Path) -> PurePosixPath:
    """Return a member name as a relative path, or raise UnsafeArchiveError if it could escape."""
    normalised = PurePosixPath(name.replace("\\", "/"))
    if normalised.is_absolute() or re.match(r"^[A-Za-z]:", str(normalised)) or ".." in normalised.parts:
        raise UnsafeArchiveError(
            f"{archive_path.name}: member {name!r} would be written outside the dataset folder "
            "(absolute path or '..'); the archive was not extracted. Check where it came from"
        )
    return normalised


def safe_tar_members(archive: tarfile.TarFile, archive_path: Path) -> list[tarfile.TarInfo]:
    """Return the tar members after checking each: regular files and folders with safe paths only."""
    members = archive.getmembers()
    for member in members:
        _checked_member_path(member.name, archive_path)
        if not (member.isfile() or member.isdir()):
            raise UnsafeArchiveError(
                f"{archive_path.name}: member {member.name!r} is a link or special file, which "
                "dataset archives do not contain; the archive was not extracted"
            )
    return members


def safe_zip_members(archive: zipfile.ZipFile, archive_path: Path) -> list[zipfile.ZipInfo]:
    """Return the zip members after checking each: no absolute paths, '..' or symbolic links."""
    members = archive.infolist()
    for member in members:
        _checked_member_path(member.filename, archive_path)
        if stat.S_ISLNK(member.external_attr >> 16):
            raise UnsafeArchiveError(
                f"{archive_path.name}: member {member.filename!r} is a symbolic link, which dataset "
                "archives do not contain; the archive was not extracted"
            )
    return members


def extract_archive(archive_path: Path, root: Path) -> int:
    """Extract a .tar, .tar.gz or .zip archive into `root` after checking every member.

    Returns the number of members. Raises UnsafeArchiveError before writing anything when a
    member could land outside `root`.
    """
    root.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive_path):
        with zipfile.ZipFile(archive_path) as archive:
            members = safe_zip_members(archive, archive_path)
            for member in members:
                archive.extract(member, root)
        return len(members)
    if tarfile.is_tarfile(archive_path):
        with tarfile.open(archive_path) as archive:
            members = safe_tar_members(archive, archive_path)
            if hasattr(tarfile, "data_filter"):
                # The "data" filter (Python 3.11.4 and later) repeats these checks and drops unsafe modes.
                archive.extractall(root, members=members, filter="data")
            else:
                archive.extractall(root, members=members)
        return len(members)
    raise ValueError(f"{archive_path} is neither a tar nor a zip archive; delete it and run again")


# ---------------------------------------------------------------------------------------------
# Dataset


def check_layout(name: str, root: Path) -> list[str]:
    """Return the paths data.py reads for dataset `name` that are missing under `root`."""
    return [relative for relative in EXPECTED_LAYOUT.get(name, ()) if not (root / relative).exists()]


def download_dataset(
    name: str,
    root: str | os.PathLike,
    base_url: str | None = None,
    registry: dict[str, Sequence[Archive]] | None = None,
    retries: int = 3,
    progress: bool = True,
    delete_archives: bool = False,
    timeout: float = TIMEOUT_SECONDS,
) -> dict[str, str]:
    """Download, verify and extract every archive of dataset `name` into `root`.

    Archives go to `<root>/archives/`. An archive marked done (`<archive>.extracted`) is skipped,
    and an archive file already present is verified instead of downloaded again. When `root`
    already has every path that data.py reads and no marker, nothing is fetched. Returns
    {archive file name: "downloaded", "verified", "skipped" or "present"}. Raises
    FileNotFoundError when the extracted files miss a path that data.py reads.
    """
    root = Path(root)
    archive_dir = root / ARCHIVE_DIR
    archives = archives_for(name, base_url, registry)
    markers = [archive_dir / f"{archive.filename}.extracted" for archive in archives]
    if name in EXPECTED_LAYOUT and not check_layout(name, root) and not any(m.exists() for m in markers):
        # Extracted by other means (for example by hand): nothing to fetch.
        logger.info("%s: every path that data.py reads is already under %s; nothing to download", name, root)
        return {archive.filename: "present" for archive in archives}

    outcome: dict[str, str] = {}
    for archive in archives:
        path = archive_dir / archive.filename
        marker = path.with_name(path.name + ".extracted")
        if marker.exists():
            logger.info("%s: already downloaded and extracted; skipping", archive.filename)
            outcome[archive.filename] = "skipped"
            continue

        if path.exists():
            outcome[archive.filename] = "verified"
        else:
            logger.info("downloading %s", archive.url)
            fetch(archive.url, path, retries=retries, progress=progress, timeout=timeout)
            outcome[archive.filename] = "downloaded"
        verify_checksum(path, archive)

        count = extract_archive(path, root)
        marker.write_text(f"{archive.algorithm} {archive.checksum}\n", encoding="utf-8")
        logger.info("extracted %d members of %s into %s", count, archive.filename, root)
        if delete_archives:
            path.unlink()

    missing = check_layout(name, root)
    if missing:
        raise FileNotFoundError(
            f"after extracting {name}, these paths that data.py reads are missing under {root}: "
            f"{missing}. The archives may have another layout; delete {archive_dir} and rerun"
        )
    return outcome


def add_download_arguments(parser) -> None:
    """Add the options of `python -m msdgcn download` to an argparse parser."""
    parser.add_argument("dataset", choices=sorted(REGISTRY), help="dataset to download")
    parser.add_argument("--root", required=True, help="folder to download and extract into")
    parser.add_argument(
        "--base-url", default=None,
        help="mirror serving the same archive file names; replaces each URL up to the file name",
    )  # fmt: skip
    parser.add_argument(
        "--registry", default=None,
        help="JSON file {dataset: [{url, checksum, algorithm}]} to use instead of the built-in list",
    )  # fmt: skip
    parser.add_argument("--retries", type=int, default=3, help="resumed attempts after a failed download")
    parser.add_argument("--delete-archives", action="store_true", help="delete each archive once extracted")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_download(args) -> int:
    """Run `python -m msdgcn download` from parsed arguments."""
    registry = read_registry(args.registry) if args.registry else None
    outcome = download_dataset(
        args.dataset,
        args.root,
        base_url=args.base_url,
        registry=registry,
        retries=args.retries,
        progress=not args.no_progress,
        delete_archives=args.delete_archives,
    )
    print(json.dumps(outcome, indent=2))
    return 0
