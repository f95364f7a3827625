"""Shared fixtures: where the read-only shared data lives, and a quiet torch."""

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
# CI clones the repository next to a read-only copy of shared/; MSDGCN_SHARED overrides that.
SHARED_DIR = Path(os.environ.get("MSDGCN_SHARED", REPO_ROOT.parent / "shared"))
COCO_SUBSET_DIR = SHARED_DIR / "data" / "coco-subset"

# Two cores on the reference machine: one thread per test process avoids oversubscription.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED_DIR.is_dir():
        pytest.fail(f"shared data folder not found at {SHARED_DIR}; set MSDGCN_SHARED to its path")
    return SHARED_DIR


@pytest.fixture(scope="session")
def coco_subset_dir(shared_dir: Path) -> Path:
    return shared_dir / "data" / "coco-subset"
