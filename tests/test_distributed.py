"""Data-parallel training: shards, gathered evaluation, two gloo processes against one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ddp_worker import build_trainer
from msdgcn.distributed import epoch_batches, free_port, shard_bounds
from msdgcn.engine import load_checkpoint, predict
from msdgcn.profiles import resolve_run

WORKER = Path(__file__).with_name("ddp_worker.py")


def torchrun(arguments: list[str], processes: int = 2, timeout: float = 240, env=None):
    """Run `arguments` in `processes` gloo processes whose rendezvous listens on 127.0.0.1."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(processes),
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}", *arguments,
    ]  # fmt: skip
    environment = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", **(env or {})}
    return command, environment


def test_global_batches_split_over_ranks():
    order = list(range(10, 0, -1))
    single = epoch_batches(order, batch_size=4)
    assert single == [[10, 9, 8, 7], [6, 5, 4, 3], [2, 1]]
    ranks = [epoch_batches(order, 4, rank=r, world_size=2) for r in range(2)]
    assert ranks[0] == [[10, 9], [6, 5], [2]]
    assert ranks[1] == [[8, 7], [4, 3], [1]]
    # Resuming after one step skips the same global batch on every rank.
    assert epoch_batches(order, 4, skip_batches=1, rank=1, world_size=2) == [[4, 3], [1]]


def test_last_batch_dropped_on_every_rank():
    order = list(range(9))
    # 9 images, global batch 4: the last batch contains one image, which BatchNorm cannot train on.
    assert epoch_batches(order, 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    for rank in range(3):
        assert len(epoch_batches(list(range(10)), 4, rank=rank, world_size=3)) == 2
    # Without SyncBatchNorm every rank needs two images: 6 images for 2 ranks, batch 4.
    assert epoch_batches(list(range(6)), 4, rank=1, world_size=2, min_images_per_rank=2) == [[2, 3]]


def test_shards_cover_every_image_once():
    for count, world in [(5, 2), (7, 3), (2, 4), (16, 4)]:
        bounds = [shard_bounds(count, r, world) for r in range(world)]
        covered = [i for start, stop in bounds for i in range(start, stop)]
        assert covered == list(range(count)), (count, world)


def ddp_config(coco_subset_dir, **overrides):
    """ConvNeXt-Atto has LayerNorm, not BatchNorm, so per-rank batches change no statistic."""
    values = dict(
        image_size=32,
        epochs=1,
        batch_size=4,
        max_train_images=4,
        max_val_images=5,
        model=dict(backbone="convnext_atto", head="gap"),
        optim=dict(lr=0.5),  # a large step, so that moved weights are compared
    )
    values.update(overrides)
    return resolve_run("smoke", "gap", "coco-subset", str(coco_subset_dir), values)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, coco_subset_dir):
    output = tmp_path_factory.mktemp("ddp")
    config = ddp_config(coco_subset_dir)
    (output / "config.json").write_text(json.dumps(config.to_dict()))
    command, environment = torchrun([str(WORKER), str(output)])
    finished = subprocess.run(command, capture_output=True, text=True, timeout=240, env=environment)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    return config, output


def test_one_step_matches_one_process(two_process_run, tmp_path):
    config, output = two_process_run
    single = build_trainer(config, tmp_path / "checkpoints")
    single.fit()
    distributed = load_checkpoint(output / "run" / "checkpoints" / "last.pt")
    assert distributed["world_size"] == 2
    assert distributed["history"][0]["train_loss"] == pytest.approx(single.state.history[0]["train_loss"], rel=1e-6)
    # Each rank sums the gradient of 2 images and the all-reduce adds the two sums, where one
    # process sums 4 at once: float32 rounding of a different summation order, no more.
    for name, tensor in single.model.state_dict().items():
        torch.testing.assert_close(distributed["model"][name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    # The step moved the weights, so the comparison above is not between two initial models.
    initial = build_trainer(config, tmp_path / "initial").model.state_dict()
    assert not torch.equal(initial["head.classifier.weight"], single.model.state_dict()["head.classifier.weight"])


def test_evaluation_gathers_rows_in_order(two_process_run, tmp_path):
    config, output = two_process_run
    trainer = build_trainer(config, tmp_path / "checkpoints")
    trainer.model.load_state_dict(load_checkpoint(output / "run" / "checkpoints" / "last.pt")["model"])
    expected = predict(trainer.model, trainer.val_loader, torch.device("cpu"))
    for rank in range(2):
        scores = np.load(output / f"scores_rank{rank}.npy")
        assert scores.shape == (5, 80)  # 5 images over 2 ranks: shards of 3 and 2, no padding row
        np.testing.assert_allclose(scores, expected, rtol=1e-6, atol=1e-7)
    predictions = (output / "run" / "predictions.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in predictions[1:]] == list(trainer.val_set.image_ids)


def test_only_rank_zero_writes(two_process_run):
    _, output = two_process_run
    written = {rank: json.loads((output / f"written_rank{rank}.json").read_text()) for rank in range(2)}
    assert written[1] == []
    assert sorted(Path(path).name for path in written[0]) == ["best.pt", "last.pt", "run"]
    assert not list((output / "run" / "checkpoints").glob("*.tmp"))


@pytest.mark.slow
def test_sigterm_to_torchrun_then_resume(tmp_path, coco_subset_dir):
    import signal
    import time

    arguments = [
        "-m", "msdgcn", "train", "--profile", "smoke", "--variant", "a", "--dataset", "coco-subset",
        "--data-root", str(coco_subset_dir), "--results", str(tmp_path), "--no-progress", "--epochs", "2",
        "--image-size", "32", "--max-train-images", "12", "--max-val-images", "5",
    ]  # fmt: skip
    command, environment = torchrun(arguments)
    checkpoints = tmp_path / "smoke" / "coco-subset" / "a" / "checkpoints"
    # 12 images in global batches of 4: three steps per epoch, each held for 1 s on both ranks.
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**environment, "MSDGCN_TEST_STEP_DELAY": "1.0"},
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while not (checkpoints / "last.pt").exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out waiting for the first epoch"
        time.sleep(0.05)
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)  # to torchrun, which sends SIGTERM to both ranks
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0
    assert stderr.count("SIGTERM received: stopped at epoch 2, step") == 1, stderr[-3000:]  # rank 0 only

    interrupted = load_checkpoint(checkpoints / "last.pt")
    assert interrupted["epoch"] == 1
    assert 1 <= interrupted["partial_epoch"]["step"] <= 3
    assert len(interrupted["rng_ranks"]) == 2
    assert not list(checkpoints.glob("*.tmp"))

    command, environment = torchrun(arguments)
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=240, env=environment)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "in epoch 2 after step" in resumed.stderr
    finished = load_checkpoint(checkpoints / "last.pt")
    assert [row["epoch"] for row in finished["history"]] == [1, 2]
    assert "partial_epoch" not in finished
    assert (checkpoints.parent / "metrics.json").exists()
