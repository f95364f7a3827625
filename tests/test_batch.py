"""Batch command guards: one batch per results folder, checked parameters of finished runs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from msdgcn.batch import BatchLock, config_differences, run_batch


def test_second_batch_on_same_folder_rejected(tmp_path, coco_subset_dir):
    with BatchLock(tmp_path / "smoke" / "coco-subset"):
        with pytest.raises(RuntimeError, match=f"another batch \\(pid {os.getpid()}\\) is writing"):
            run_batch("smoke", "coco-subset", coco_subset_dir, results_root=tmp_path)
    assert not (tmp_path / "smoke" / "coco-subset" / ".batch.lock").exists()


def test_stale_lock_replaced(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)
    lock_path = tmp_path / ".batch.lock"
    lock_path.write_text(str(dead_pid))
    with BatchLock(tmp_path):
        assert lock_path.read_text() == str(os.getpid())
    assert not lock_path.exists()


def test_config_differences_ignore_run_only_parameters():
    stored = {"epochs": 6, "threads": 1, "device": "cpu", "optim": {"lr": 0.001}}
    requested = {"epochs": 6, "threads": 2, "device": "cuda", "optim": {"lr": 0.003}}
    assert config_differences(stored, requested) == ["optim: {'lr': 0.001} -> {'lr': 0.003}"]
