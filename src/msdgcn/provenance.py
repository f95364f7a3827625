"""Provenance of a run: code version, packages, hardware and dataset fingerprint."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch

PACKAGES = ("torch", "torchvision", "timm", "numpy", "pillow", "papermill", "msdgcn")


def git_state(repo_dir: Path | None = None) -> dict[str, Any]:
    """Return the commit of the code that ran and whether its files had uncommitted changes.

    Changes under results/ do not count, because a forced rerun deletes the old result files.
    """
    repo_dir = Path(repo_dir or Path(__file__).resolve().parent)
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo_dir, capture_output=True, text=True, check=True
        ).stdout.strip()
        # Run outputs under results/ are data, not code: a rerun that replaces them is not "dirty".
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ":(top)", ":(exclude,top)results"],
            cwd=repo_dir,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def hardware(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["gpu_count"] = torch.cuda.device_count()
    return info


def dataset_fingerprint(image_ids: list[str], targets: np.ndarray, class_names: list[str]) -> dict:
    """Fingerprint a labelled split: image count and SHA-256 of its ids, labels and class names.

    Two runs with the same fingerprint saw the same images with the same labels in the same order.
    """
    digest = hashlib.sha256()
    digest.update("\n".join(class_names).encode())
    digest.update(b"\0")
    digest.update("\n".join(image_ids).encode())
    digest.update(b"\0")
    digest.update(np.ascontiguousarray(targets, dtype=np.int8).tobytes())
    return {"images": len(image_ids), "classes": len(class_names), "sha256": digest.hexdigest()}
