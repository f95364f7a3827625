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
    with BatchLock(tmp_path / "smoke" / "coco-subset"):
        pass  # released on exit


def test_lock_of_killed_process_released(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from msdgcn.batch import BatchLock; lock = BatchLock(sys.argv[1]).__enter__();"
         " print('locked', flush=True); time.sleep(60)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(RuntimeError, match=f"pid {holder.pid}"):
        BatchLock(tmp_path).__enter__()
    holder.kill()
    holder.wait()
    with BatchLock(tmp_path):
        assert (tmp_path / ".batch.lock").read_text() == str(os.getpid())


def test_config_differences_ignore_run_only_parameters():
    stored = {"epochs": 6, "threads": 1, "device": "cpu", "optim": {"lr": 0.001}}
    requested = {"epochs": 6, "threads": 2, "device": "cuda", "optim": {"lr": 0.003}}
    assert config_differences(stored, requested) == ["optim: {'lr': 0.001} -> {'lr': 0.003}"]


@pytest.mark.slow
def test_sigterm_to_batch_reaches_kernel(tmp_path, coco_subset_dir):
    import signal
    import time

    from msdgcn.engine import load_checkpoint

    command = [
        sys.executable, "-m", "msdgcn", "batch", "--profile", "smoke", "--dataset", "coco-subset",
        "--data-root", str(coco_subset_dir), "--results", str(tmp_path), "--variants", "a", "gap",
        "--epochs", "3",
    ]  # fmt: skip
    checkpoint = tmp_path / "smoke" / "coco-subset" / "a" / "checkpoints" / "last.pt"
    # Three steps per epoch (12 images, batch 4), each held for 1 s, so the signal lands mid-epoch.
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "MSDGCN_TEST_STEP_DELAY": "1.0"},
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while not checkpoint.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(1.5)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=180)
    assert process.returncode == 1, stderr[-3000:]
    assert "SIGINT received: stopped at epoch" in stdout
    assert "1 variants not started because the batch was interrupted: gap" in stdout
    interrupted = load_checkpoint(checkpoint)
    assert interrupted["partial_epoch"]["epoch"] >= 2

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert (tmp_path / "smoke" / "coco-subset" / "a" / "metrics.json").exists()
    assert (tmp_path / "smoke" / "coco-subset" / "gap" / "metrics.json").exists()


def test_new_parameters_match_absent_ones():
    from msdgcn.profiles import resolve_run

    requested = resolve_run("smoke", "a", "coco-subset", "data").to_dict()
    stored = {key: value for key, value in requested.items() if key not in ("precision", "compile")}
    assert config_differences(stored, requested) == []
    requested["precision"] = "bf16"
    assert config_differences(stored, requested) == ["precision: 'fp32' -> 'bf16'"]


def test_committed_cpu_runs_still_finished(repo_root, coco_subset_dir):
    import json

    from msdgcn.batch import requested_config

    finished = sorted((repo_root / "results" / "cpu" / "coco-subset").glob("*/metrics.json"))
    assert finished, "no committed cpu results"
    for path in finished:
        stored = json.loads(path.read_text())["config"]
        requested = requested_config("cpu", stored["variant"], "coco-subset", coco_subset_dir, {})
        assert config_differences(stored, requested) == [], path


def test_printed_commands_rebuild_config(tmp_path, coco_subset_dir):
    import shlex

    from msdgcn.__main__ import build_parser, train_config
    from msdgcn.batch import cluster_commands, requested_config

    overrides = dict(epochs=3, learning_rate=0.01, precision="bf16", compile=True, channels_last=False, nproc_per_node=4)
    lines = cluster_commands("smoke", "coco-subset", coco_subset_dir, ["a", "e"], tmp_path, overrides)
    assert len(lines) == 2
    for variant, line in zip(["a", "e"], lines):
        words = shlex.split(line)
        assert words[:8] == ["torchrun", "--standalone", "--shutdown-timeout", "120", "--nproc-per-node", "4", "-m", "msdgcn"]
        args = build_parser().parse_args(words[8:])
        assert args.results == str(tmp_path)
        config = train_config(args).to_dict()
        # The printed lines carry absolute paths, so ../shared given through a symlink is resolved.
        assert config == requested_config("smoke", variant, "coco-subset", coco_subset_dir.resolve(), overrides)
        assert (config["precision"], config["compile"], config["epochs"]) == ("bf16", True, 3)
        assert config["optim"]["lr"] == 0.01
        # Every run parameter of the train command is spelled out, except the unset (None) ones.
        for option in ("--epochs", "--image-size", "--batch-size", "--lr", "--seed", "--device",
                       "--num-workers", "--precision", "--compile", "--no-channels-last"):  # fmt: skip
            assert option in words, option


def test_gpus_exclude_torchrun_processes(tmp_path, coco_subset_dir):
    with pytest.raises(ValueError, match="drop --nproc-per-node"):
        run_batch("smoke", "coco-subset", coco_subset_dir, results_root=tmp_path, gpus=["0", "1"],
                  overrides={"nproc_per_node": 2})  # fmt: skip



def test_each_worker_gets_one_gpu(monkeypatch):
    import queue

    from msdgcn import batch

    monkeypatch.setattr(batch.signal, "signal", lambda *args: None)  # keep pytest's own handlers
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    gpu_ids = queue.Queue()
    for gpu in ("3", "5"):
        gpu_ids.put(gpu)
    batch._start_worker(gpu_ids)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    batch._start_worker(gpu_ids)  # the next worker process takes the next GPU
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"
