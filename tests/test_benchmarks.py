"""Tests for benchmarks/speed.py: the quick mode runs and writes the JSON the book page reads."""

import json
import os
import subprocess
import sys

import pytest

from msdgcn.models.model import HEADS


@pytest.fixture(scope="module")
def quick_run(repo_root, coco_subset_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("speed") / "speed.json"
    environment = dict(os.environ, PYTHONPATH=str(repo_root / "src"))
    command = [
        sys.executable, str(repo_root / "benchmarks" / "speed.py"), "--quick", "--no-isolate",
        "--threads", "1", "--models", "gap-lite0,ml-gcn-lite0,no-such-model",
        "--data-root", str(coco_subset_dir), "--output", str(output),
    ]  # fmt: skip
    completed = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(output.read_text()), output



def test_quick_run_records_provenance(quick_run):
    data, _ = quick_run
    assert data["mode"] == "quick"
    assert data["command"].startswith("python benchmarks/speed.py --quick")
    assert data["machine"]["cores"] == os.cpu_count()
    assert data["machine"]["torch_threads"] == 1
    assert data["matmul_peak_flops_per_second"]["fp32"] > 0
    assert data["matmul_peak_flops_per_second"]["bf16"] > 0


def test_quick_run_times_both_settings(quick_run):
    data, _ = quick_run
    entry = data["models"]["gap-lite0"]
    for setting in ("plain", "fast"):
        run = entry[setting]
        assert run["train_images_per_second"] > 0
        assert run["eval_images_per_second"] > 0
        assert run["eval_flops_per_second"] == pytest.approx(
            run["eval_flops_per_image"] * run["eval_images_per_second"]
        )
    assert entry["fast"]["precision"] == "bf16"
    assert entry["fast"]["memory_format"] == "channels_last"
    assert entry["plain"]["precision"] == "fp32"
    assert entry["speedup"]["eval"] == pytest.approx(
        entry["fast"]["eval_images_per_second"] / entry["plain"]["eval_images_per_second"]
    )


def test_quick_run_counts_gap_head_flops(quick_run):
    # The GAP head's linear layer alone adds 2 * 1280 * 80 FLOPs per image. At 64 px the backbone
    # needs (64 / 224)^2, about 1/12, of its count at 224 px, so the total stays under 0.4 GFLOPs.
    data, _ = quick_run
    flops = data["models"]["gap-lite0"]["plain"]["eval_flops_per_image"]
    assert 2 * 1280 * 80 < flops < 0.4e9


def test_quick_run_skips_missing_heads(quick_run):
    data, _ = quick_run
    assert "unknown model" in data["models"]["no-such-model"]["skipped"]
    if "ml-gcn" not in HEADS:
        assert "'ml-gcn'" in data["models"]["ml-gcn-lite0"]["skipped"]
    else:
        assert "plain" in data["models"]["ml-gcn-lite0"]


def test_quick_run_other_sections(quick_run):
    data, _ = quick_run
    real = data["bf16_real_images"]
    assert real["images"] == 8
    assert real["labels_flipped_outside_tolerance"] == 0
    assert data["data_pipeline"]["plain"]["images_per_second"] > 0
    assert data["data_pipeline"]["fast"]["images_per_second"] > 0
    assert data["metrics"]["max_ap_difference_to_sklearn"] < 1e-12
    assert data["profiles"][0]["model"] == "gap-lite0"
    assert data["profiles"][0]["eval"][0]["self_cpu_ms"] > 0


def test_quick_run_markdown_matches_json(quick_run, repo_root):
    data, output = quick_run
    sys.path.insert(0, str(repo_root / "benchmarks"))
    try:
        import speed_report
    finally:
        sys.path.pop(0)
    markdown = output.with_suffix(".md").read_text()
    assert markdown == speed_report.render(data)
    assert "| gap-lite0 | 64 | 2 |" in markdown
    assert "Skipped: " in markdown
    assert "no-such-model" in markdown
    assert "### Targets" in markdown
