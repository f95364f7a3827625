"""Interrupted training: SIGTERM mid-epoch and SIGKILL mid-write, then resume, on real images.

Each case trains a real subprocess (`python -m msdgcn train`) and compares the final weights with
an uninterrupted run's, bit for bit, on the CPU.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from msdgcn.engine import load_checkpoint

pytestmark = pytest.mark.slow

RUN = ("a", "coco-subset", "--epochs", "2", "--image-size", "32", "--max-train-images", "12", "--max-val-images", "4")


def train_command(coco_subset_dir, results):
    variant, dataset, *options = RUN
    return [
        sys.executable, "-m", "msdgcn", "train", "--profile", "smoke", "--variant", variant,
        "--dataset", dataset, "--data-root", str(coco_subset_dir), "--results", str(results),
        "--no-progress", *options,
    ]  # fmt: skip


def checkpoint_dir(results):
    return results / "smoke" / "coco-subset" / "a" / "checkpoints"


def run(command, env=None, timeout=300):
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def wait_for(condition, process, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out waiting for the training subprocess"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, coco_subset_dir):
    results = tmp_path_factory.mktemp("straight")
    finished = run(train_command(coco_subset_dir, results))
    assert finished.returncode == 0, finished.stderr[-2000:]
    return load_checkpoint(checkpoint_dir(results) / "last.pt")


def assert_same_weights(first, second):
    assert first["epoch"] == second["epoch"] == 2
    for name, tensor in first["model"].items():
        assert torch.equal(tensor, second["model"][name]), name
    assert [row["mAP"] for row in first["history"]] == [row["mAP"] for row in second["history"]]


def test_sigterm_mid_epoch_then_resume(tmp_path, coco_subset_dir, uninterrupted):
    command = train_command(coco_subset_dir, tmp_path)
    # 12 images in batches of 4: three steps per epoch, each held for 1 s so the signal lands inside epoch 2.
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "MSDGCN_TEST_STEP_DELAY": "1.0"},
    )  # fmt: skip
    wait_for(lambda: (checkpoint_dir(tmp_path) / "last.pt").exists(), process)
    time.sleep(1.5)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "SIGTERM received: stopped at epoch 2, step" in stderr

    interrupted = load_checkpoint(checkpoint_dir(tmp_path) / "last.pt")
    assert interrupted["epoch"] == 1
    assert 1 <= interrupted["partial_epoch"]["step"] < 3

    resumed = run(command)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed" in resumed.stderr
    assert_same_weights(uninterrupted, load_checkpoint(checkpoint_dir(tmp_path) / "last.pt"))


def test_sigkill_during_checkpoint_write(tmp_path, coco_subset_dir, uninterrupted):
    command = train_command(coco_subset_dir, tmp_path)
    first = run(command + ["--epochs", "1"])  # the last --epochs wins
    assert first.returncode == 0, first.stderr[-2000:]
    after_epoch_1 = load_checkpoint(checkpoint_dir(tmp_path) / "last.pt")

    # The checkpoint writer pauses between writing last.pt.tmp and renaming it over last.pt.
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "MSDGCN_TEST_CHECKPOINT_DELAY": "30"},
    )  # fmt: skip
    wait_for(lambda: (checkpoint_dir(tmp_path) / "last.pt.tmp").exists(), process)
    process.kill()
    process.communicate(timeout=60)

    survivor = load_checkpoint(checkpoint_dir(tmp_path) / "last.pt")
    assert survivor["epoch"] == 1
    for name, tensor in after_epoch_1["model"].items():
        assert torch.equal(tensor, survivor["model"][name]), name

    resumed = run(command)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_weights(uninterrupted, load_checkpoint(checkpoint_dir(tmp_path) / "last.pt"))


def test_two_seeded_runs_identical(tmp_path, coco_subset_dir, uninterrupted):
    again = run(train_command(coco_subset_dir, tmp_path))
    assert again.returncode == 0, again.stderr[-2000:]
    assert_same_weights(uninterrupted, load_checkpoint(checkpoint_dir(tmp_path) / "last.pt"))
