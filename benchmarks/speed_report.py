"""Render the JSON of benchmarks/speed.py as the Markdown tables that book/benchmarks.md includes.

    python benchmarks/speed_report.py benchmarks/results/speed.json   # rewrites speed.md beside it
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# Targets of the speed work, checked in the "Targets" table.
METRICS_TARGET_SECONDS = 0.2
EVAL_SPEEDUP_TARGET = 1.8
TRAIN_SPEEDUP_TARGET = 1.3
DATA_OVER_TRAIN_TARGET = 2.0
# The model whose training step the data pipeline must outpace: the cpu profile's head check.
DATA_CONSUMER_MODEL = "add-gcn-lite0"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.0f}"


def _giga(value: float) -> str:
    return f"{value / 1e9:.1f}"


def measured_models(data: dict) -> dict[str, dict]:
    return {name: entry for name, entry in data.get("models", {}).items() if "skipped" not in entry}


def models_section(data: dict) -> str:
    models = data.get("models", {})
    if not models:
        return ""
    rows = []
    for name, entry in measured_models(data).items():
        plain, fast = entry["plain"], entry["fast"]
        rows.append([
            name, plain["image_size"], plain["batch_size"],
            f"{plain['train_images_per_second']:.2f}", f"{fast['train_images_per_second']:.2f}",
            f"{entry['speedup']['train']:.2f}x",
            f"{plain['eval_images_per_second']:.2f}", f"{fast['eval_images_per_second']:.2f}",
            f"{entry['speedup']['eval']:.2f}x",
            _giga(plain["eval_flops_per_image"]),
            f"{_giga(plain['eval_flops_per_second'])} ({100 * plain['eval_fraction_of_matmul_peak']:.0f}%)",
            f"{_giga(fast['eval_flops_per_second'])} ({100 * fast['eval_fraction_of_matmul_peak']:.0f}%)",
            f"{_mib(plain['peak_memory_bytes'])} / {_mib(fast['peak_memory_bytes'])}",
            f"{entry['fast_vs_plain_logits']['max_probability_change']:.3f}",
        ])
    text = "### Training step and evaluation forward\n\n"
    text += _table(
        ["model", "px", "batch", "train img/s plain", "train img/s fast", "train speedup",
         "eval img/s plain", "eval img/s fast", "eval speedup", "eval GFLOP/image",
         "eval GFLOP/s plain (% fp32 peak)", "eval GFLOP/s fast (% bf16 peak)",
         "peak memory MiB plain / fast", "max prob. change fast vs plain"],
        rows,
    )
    skipped = {name: entry["skipped"] for name, entry in models.items() if "skipped" in entry}
    if skipped:
        text += "\nSkipped: " + "; ".join(f"{name} ({reason})" for name, reason in skipped.items()) + ".\n"
    peaks = data["matmul_peak_flops_per_second"]
    text += (
        f"\nMatmul peak of this machine: {_giga(peaks['fp32'])} GFLOP/s fp32, "
        f"{_giga(peaks['bf16'])} GFLOP/s bf16. FLOPs count 2 per multiply-add, from "
        "torch.utils.flop_counter.FlopCounterMode on one image's fp32 forward. Peak memory is the "
        "GPU's max_memory_allocated, or on CPU the peak resident set of the process that timed "
        "the model, read after each setting's warm-up step; the fast setting warms up first, so "
        "on CPU the plain reading is the larger of the two peaks. Plain and fast steps alternate, "
        "so a change of load during the run slows both alike.\n"
    )
    return text


def bf16_section(data: dict) -> str:
    real = data.get("bf16_real_images")
    if not real:
        return ""
    return "### bf16 evaluation on real images\n\n" + _table(
        ["model", "weights", "images", "px", "max prob. change", "99.9th pct change",
         "labels flipped", "flipped outside tolerance", "mAP fp32", "mAP bf16", "difference (points)"],
        [[real["model"], real["weights"], real["images"], real["image_size"],
          f"{real['max_probability_change']:.3f}", f"{real['probability_change_99_9th_percentile']:.3f}",
          f"{real['labels_flipped']} of {real['entries']}", real["labels_flipped_outside_tolerance"],
          f"{100 * real['mAP_fp32']:.2f}", f"{100 * real['mAP_bf16']:.2f}",
          f"{real['mAP_difference_points']:+.2f}"]],
    ) + f"\nTolerance: a label may flip only where the fp32 probability lies within {real['tolerance']} of 0.5.\n"


def data_section(data: dict) -> str:
    pipeline = data.get("data_pipeline")
    if not pipeline:
        return ""
    draft = pipeline["draft_decode_at_112px"]
    return "### Data pipeline (decode + training transform)\n\n" + _table(
        ["loader", "images/s"],
        [[pipeline["plain"]["loader"], f"{pipeline['plain']['images_per_second']:.1f}"],
         [pipeline["fast"]["loader"], f"{pipeline['fast']['images_per_second']:.1f}"]],
    ) + (
        f"\n{pipeline['images']} coco-subset training images at {pipeline['image_size']} px, batch "
        f"{pipeline['batch_size']}: ours is {pipeline['speedup']:.2f}x the plain loader. Decoding alone "
        f"for a 112 px target: {draft['full_images_per_second']:.0f} images/s in full, "
        f"{draft['draft_images_per_second']:.0f} images/s in JPEG draft mode ({draft['speedup']:.2f}x).\n"
    )


def metrics_section(data: dict) -> str:
    metrics = data.get("metrics")
    if not metrics:
        return ""
    rows_cols = " x ".join(f"{value:,}" for value in metrics["shape"])
    return (
        f"### Metrics\n\n`multilabel_metrics` (mAP, CP/CR/CF1, OP/OR/OF1 and their top-3 variants) on "
        f"{rows_cols} scores with {metrics['labels_per_image']:.2f} labels per image: "
        f"{metrics['multilabel_metrics_seconds_best']:.3f} s (best of {metrics['repeats']}, median "
        f"{metrics['multilabel_metrics_seconds_median']:.3f} s). The per-class AP of "
        f"sklearn.metrics.average_precision_score alone took {metrics['sklearn_per_class_ap_seconds']:.2f} s, "
        f"and our AP differs from it by at most {metrics['max_ap_difference_to_sklearn']:.1e}.\n"
    )


def targets_section(data: dict) -> str:
    rows = []
    metrics = data.get("metrics")
    if metrics:
        seconds = metrics["multilabel_metrics_seconds_best"]
        shape = " x ".join(f"{value:,}" for value in metrics["shape"])
        rows.append([f"metrics on {shape}", f"< {METRICS_TARGET_SECONDS} s", f"{seconds:.3f} s",
                     _met(seconds < METRICS_TARGET_SECONDS)])
    models = measured_models(data)
    for kind, target in (("eval", EVAL_SPEEDUP_TARGET), ("train", TRAIN_SPEEDUP_TARGET)):
        for name, entry in models.items():
            speedup = entry["speedup"][kind]
            rows.append([f"{kind} speedup, {name}", f">= {target}x", f"{speedup:.2f}x", _met(speedup >= target)])
    pipeline = data.get("data_pipeline")
    consumer = models.get(DATA_CONSUMER_MODEL)
    if pipeline and consumer:
        train_rate = max(consumer["plain"]["train_images_per_second"], consumer["fast"]["train_images_per_second"])
        ratio = pipeline["fast"]["images_per_second"] / train_rate
        rows.append([f"data pipeline / fastest {DATA_CONSUMER_MODEL} training step", f">= {DATA_OVER_TRAIN_TARGET}x",
                     f"{ratio:.1f}x", _met(ratio >= DATA_OVER_TRAIN_TARGET)])
    if not rows:
        return ""
    return "### Targets\n\n" + _table(["target", "wanted", "measured", "met"], rows)


def _met(condition: bool) -> str:
    return "yes" if condition else "**no**"


def profiles_section(data: dict) -> str:
    text = ""
    for profile in data.get("profiles", []):
        for phase in ("eval", "train"):
            text += f"\nTop operators by self CPU time, {profile['model']}, fast setting, {phase}:\n\n"
            text += _table(
                ["operator", "calls", "self CPU ms", "share"],
                [[row["operator"], row["calls"], f"{row['self_cpu_ms']:.1f}", f"{100 * row['share']:.0f}%"]
                 for row in profile[phase]],
            )
    return "### Profiles\n" + text if text else ""


def render(data: dict) -> str:
    """Return the Markdown of every section present in `data`, led by how it was measured."""
    machine = data["machine"]
    header = (
        f"Measured {data['date']} with `{data['command']}` ({data['mode']} sizes, "
        f"{data['wall_seconds']:.0f} s) on {machine['cpu']}, {machine['cores']} cores, "
        f"{machine['torch_threads']} torch threads, device {machine['device']}"
        + (f" ({machine['gpu']})" if "gpu" in machine else "")
        + f", torch {machine['packages'].get('torch')}. Plain setting: {data['settings']['plain']}. "
        f"Fast setting: {data['settings']['fast']}. Timer: {data['timer']}.\n"
    )
    sections = [targets_section(data), models_section(data), bf16_section(data), data_section(data),
                metrics_section(data), profiles_section(data)]
    return header + "".join("\n" + section for section in sections if section)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    path = Path(argv[0])
    path.with_suffix(".md").write_text(render(json.loads(path.read_text())), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
