"""How fast do training, evaluation, data loading and metrics run, plain and tuned?

Measures, in one run on one machine, so that every ratio compares numbers taken side by side:

- matmul peak: FLOP/s of a large fp32 and bf16 matrix product, the ceiling for convolutions;
- models: training step and evaluation forward in images per second, and peak memory. Also the
  evaluation forward's FLOP count (torch.utils.flop_counter.FlopCounterMode) and achieved
  FLOP/s. Each model runs in the plain setting (fp32, eager, NCHW) and in the fast setting
  (bf16 autocast, channels_last, optionally torch.compile and a fused optimizer);
- bf16 on real images: probabilities and mAP of the fast evaluation path against fp32 on the
  coco-subset validation images;
- data pipeline: decode and training transform alone, plain DataLoader against ours (worker
  processes, uint8 batches normalised after loading, JPEG draft decoding, pinned memory on CUDA);
- metrics: `multilabel_metrics` on a COCO-val-size score matrix (40,137 x 80).

Steps are timed with `msdgcn.engine.BatchTimer`, the timer behind Table 3's batch time.
Training steps use random images and labels, so they exclude data loading.

    python benchmarks/speed.py [--quick] [--models NAMES] [--device cpu|cuda] [--output JSON]

The JSON goes to benchmarks/results/speed.json and the tables the book shows to speed.md
beside it (see benchmarks/speed_report.py).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import multiprocessing
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from msdgcn import data as msdata
from msdgcn.engine import BF16_PROBABILITY_TOLERANCE, BatchTimer, autocast, make_loader, predict
from msdgcn.metrics import average_precision, multilabel_metrics, write_text_atomically
from msdgcn.convert import COCO_CLASSES
from msdgcn.models import ModelConfig, build_model
from msdgcn.models.backbone import PYPI_LITE0_NORMALIZATION, PYPI_LITE0_SOURCE
from msdgcn.models.model import HEADS
from msdgcn.provenance import package_versions

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed_report  # noqa: E402  (the renderer beside this script)

logger = logging.getLogger("benchmarks.speed")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "speed.json"
DEFAULT_DATA = Path(os.environ.get("MSDGCN_COCO_SUBSET", REPO_ROOT.parent / "shared" / "data" / "coco-subset"))

LITE0 = dict(backbone="efficientnet_lite0", pretrained=PYPI_LITE0_SOURCE)
# Models by benchmark name. "e" is Table 3's row e: Res2Net with CBAM, GELU and Adam. On Lite0 it
# keeps only the switches that leave the backbone alone (GELU, Adam), as the cpu profile's head-e.
MODELS: dict[str, dict[str, Any]] = {
    "gap-101": dict(model=dict(head="gap", backbone="resnet101"), family="101"),
    "add-gcn-101": dict(model=dict(head="add-gcn", backbone="resnet101"), family="101"),
    "e-101": dict(
        model=dict(head="add-gcn", backbone="res2net101_26w_4s", cbam=True, activation="gelu"),
        optimizer="adam",
        family="101",
    ),
    "ml-gcn-101": dict(model=dict(head="ml-gcn", backbone="resnet101"), family="101"),
    "gap-lite0": dict(model=dict(head="gap", **LITE0), family="lite0"),
    "add-gcn-lite0": dict(model=dict(head="add-gcn", **LITE0), family="lite0"),
    "e-lite0": dict(model=dict(head="add-gcn", activation="gelu", **LITE0), optimizer="adam", family="lite0"),
    "ml-gcn-lite0": dict(model=dict(head="ml-gcn", **LITE0), family="lite0"),
}

# Image size, batch size and timed steps per backbone family. Depth-101 at 448 px takes seconds
# per image on a small CPU, so the CPU run times few steps of small batches.
SIZES = {
    "full": {"101": dict(image_size=448, batch_size=2, steps=2), "lite0": dict(image_size=224, batch_size=16, steps=3)},
    "quick": {"101": dict(image_size=64, batch_size=2, steps=1), "lite0": dict(image_size=64, batch_size=2, steps=1)},
    "gpu": {"101": dict(image_size=448, batch_size=32, steps=10), "lite0": dict(image_size=224, batch_size=128, steps=10)},
}
WARMUP_STEPS = 1
EVAL_PASSES = 2


# ---------------------------------------------------------------------------------------------
# Machine and matmul peak


def machine(device: torch.device) -> dict[str, Any]:
    cpu_model = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    info = {
        "platform": platform.platform(),
        "cpu": cpu_model,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "packages": package_versions(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def matmul_peak(device: torch.device, sizes: tuple[int, ...], repeats: int) -> dict[str, float]:
    """Return the best FLOP/s of (n x n) @ (n x n) products in fp32 and bf16 (2 n^3 FLOPs each).

    The best over several sizes and repeats, because one size can miss the library's fastest
    blocking, and a peak below what a model's convolutions reach would be no ceiling.
    """
    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        best = 0.0
        for size in sizes:
            a = torch.randn(size, size, device=device, dtype=dtype)
            b = torch.randn(size, size, device=device, dtype=dtype)
            timer = BatchTimer(device, warmup=1)
            timer.start()
            seconds = []
            for _ in range(repeats + 1):
                torch.mm(a, b)
                seconds.append(timer.stop())
            best = max(best, 2 * size**3 / min(seconds[1:]))
        peaks[name] = best
    return peaks


# ---------------------------------------------------------------------------------------------
# Models: training step and evaluation forward


def build_benchmark_model(name: str) -> tuple[torch.nn.Module, dict]:
    """Build a model of MODELS on COCO's 80 classes, with seeded random weights for the head.

    ML-GCN also needs class names (for its GloVe vectors) and training labels (for its
    correlation matrix). The benchmark gives it COCO's names and seeded random labels with about
    2.9 labels per image, because its speed does not depend on which edges the graph has.
    """
    spec = MODELS[name]
    torch.manual_seed(0)
    labels = (np.random.default_rng(0).random((1000, len(COCO_CLASSES))) < 2.9 / len(COCO_CLASSES)).astype(np.int64)
    model = build_model(ModelConfig(num_classes=len(COCO_CLASSES), **spec["model"]), COCO_CLASSES, labels)
    return model, spec


def skip_reason(name: str) -> str | None:
    """Return why a model cannot run here, or None."""
    if name not in MODELS:
        return f"unknown model; known models are {', '.join(MODELS)}"
    head = MODELS[name]["model"]["head"]
    if head not in HEADS:
        return f"head {head!r} is not in this version of msdgcn.models (heads: {', '.join(HEADS)})"
    return None


def _optimizer(model: torch.nn.Module, kind: str, fused: bool) -> torch.optim.Optimizer:
    extra = {"fused": True} if fused else {}
    if kind == "adam":
        return torch.optim.Adam(model.parameters(), lr=1e-4, **extra)
    return torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, **extra)


class SettingRun:
    """One model copy in one setting, with its batch, optimizer and timers."""

    def __init__(self, name: str, setting: str, family: dict, device: torch.device, compile_model: bool):
        self.setting = setting
        fast = setting == "fast"
        self.device = device
        self.precision = "bf16" if fast else "fp32"
        memory_format = torch.channels_last if fast else torch.contiguous_format
        model, spec = build_benchmark_model(name)
        self.model = model.to(device, memory_format=memory_format)
        self.compiled = torch.compile(self.model) if fast and compile_model else self.model
        self.optimizer = _optimizer(self.model, spec.get("optimizer", "sgd"), fused=fast and device.type == "cuda")
        generator = torch.Generator().manual_seed(1)
        size, batch = family["image_size"], family["batch_size"]
        self.images = torch.randn(batch, 3, size, size, generator=generator).to(device, memory_format=memory_format)
        self.targets = (torch.rand(batch, 80, generator=generator) < 2.9 / 80).float().to(device)
        self.criterion = torch.nn.BCEWithLogitsLoss()
        self.eval_timer = BatchTimer(device, warmup=0)
        self.train_timer = BatchTimer(device, warmup=0)
        self.logits = None
        self.first_logits = None
        self.summary: dict[str, Any] = {
            "setting": setting, "image_size": size, "batch_size": batch, "precision": self.precision,
            "memory_format": "channels_last" if fast else "NCHW", "compile": bool(fast and compile_model),
        }

    def eval_pass(self, steps: int, timed: bool) -> None:
        """Run one untimed forward, then `steps` forwards, in one context, as `engine.predict` does.

        The first forward of a pass pays for autocast's casts of the weights to bf16, which the
        context then caches for the rest of the pass. On a validation set that cost is paid once
        per epoch, so the timed forwards leave it out.
        """
        self.model.eval()
        with torch.no_grad(), autocast(self.device, self.precision):
            self.logits = self.compiled(self.images)
            for _ in range(steps):
                if timed:
                    self.eval_timer.start()
                self.logits = self.compiled(self.images)
                if timed:
                    self.eval_timer.stop()

    def train_step(self, timed: bool) -> None:
        self.model.train()
        if timed:
            self.train_timer.start()
        with autocast(self.device, self.precision):
            loss = self.criterion(self.compiled(self.images).float(), self.targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if timed:
            self.train_timer.stop()


def time_model(name: str, sizes: dict, device_name: str, compile_model: bool, threads: int | None) -> dict:
    """Time the evaluation forward and the training step of one model in both settings.

    The timed steps of the two settings alternate (plain, fast, plain, ...), so a change in the
    machine's load during the run slows both alike and their ratio stays fair. Peak memory is
    read after each setting's warm-up: the fast setting warms up first, so the plain reading is
    the larger of both peaks on CPU, where the resident set size only grows (exact on CUDA).
    Runs in its own process when called through `run_isolated`, so the memory is this model's.
    """
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device_name)
    family = SIZES[sizes["mode"]][MODELS[name]["family"]]
    runs = {setting: SettingRun(name, setting, family, device, compile_model) for setting in ("fast", "plain")}

    # FLOPs of one image's evaluation forward, counted in fp32 eager mode (the same in any setting).
    plain = runs["plain"]
    plain.model.eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        plain.model(plain.images[:1])
    flops = counter.get_total_flops()

    for run in runs.values():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        run.eval_pass(0, timed=False)
        # Both copies hold the same seeded weights until their first training step.
        run.first_logits = run.logits.float().cpu()
        run.train_step(timed=False)
        for _ in range(WARMUP_STEPS - 1):
            run.eval_pass(0, timed=False)
            run.train_step(timed=False)
        run.summary["peak_memory_bytes"] = _peak_memory(device)
    # Evaluation passes of the two settings alternate, each pass timing `steps` forwards.
    for _ in range(EVAL_PASSES):
        for run in runs.values():
            run.eval_pass(family["steps"], timed=True)
    for _ in range(family["steps"]):
        for run in runs.values():
            run.train_step(timed=True)

    result = {}
    for setting, run in runs.items():
        batch = run.summary["batch_size"]
        result[setting] = {
            **run.summary,
            "timed_steps": family["steps"],
            "timed_eval_forwards": EVAL_PASSES * family["steps"],
            "warmup_steps": WARMUP_STEPS,
            "threads": torch.get_num_threads(),
            "eval_flops_per_image": flops,
            "eval_images_per_second": batch / run.eval_timer.mean,
            "train_images_per_second": batch / run.train_timer.mean,
            "eval_logits": run.first_logits.tolist(),
        }
    return result


def _peak_memory(device: torch.device) -> int:
    """Peak CUDA memory allocated, or on CPU the process's peak resident set size, in bytes."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _isolated_call(queue, function, args):
    try:
        queue.put(("ok", function(*args)))
    except Exception as error:  # reported to the parent, which records it and goes on
        queue.put(("error", f"{type(error).__name__}: {error}"))


def run_isolated(function, *args, isolate: bool) -> dict:
    """Call function(*args) in a fresh spawned process (or in this one), returning its result."""
    if not isolate:
        return function(*args)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_isolated_call, args=(queue, function, args))
    process.start()
    status, value = queue.get()
    process.join()
    if status == "error":
        raise RuntimeError(value)
    return value


def benchmark_models(names, args, peaks: dict[str, float], deadline: float | None) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in names:
        reason = skip_reason(name)
        if reason is None and deadline is not None and time.monotonic() > deadline:
            reason = f"time budget of {args.time_budget:g} s spent before this model started"
        if reason is not None:
            logger.warning("skipping model %s: %s", name, reason)
            results[name] = {"skipped": reason}
            continue
        entry: dict[str, Any] = {"description": MODELS[name]["model"]}
        try:
            logger.info("timing %s, plain and fast settings", name)
            entry.update(run_isolated(
                time_model, name, {"mode": args.mode}, args.device, args.compile, args.threads,
                isolate=args.isolate,
            ))
        except (RuntimeError, ValueError) as error:
            logger.warning("model %s failed and is skipped: %s", name, error)
            results[name] = {"skipped": f"failed: {error}"}
            continue
        results[name] = summarise_model(entry, peaks)
    return results


def summarise_model(entry: dict[str, Any], peaks: dict[str, float]) -> dict[str, Any]:
    plain, fast = entry["plain"], entry["fast"]
    plain_logits = np.asarray(plain.pop("eval_logits"))
    fast_logits = np.asarray(fast.pop("eval_logits"))
    for run, peak in ((plain, peaks["fp32"]), (fast, peaks["bf16"])):
        run["eval_flops_per_second"] = run["eval_flops_per_image"] * run["eval_images_per_second"]
        run["eval_fraction_of_matmul_peak"] = run["eval_flops_per_second"] / peak
    difference = np.abs(fast_logits - plain_logits)
    probability_change = np.abs(1 / (1 + np.exp(-fast_logits)) - 1 / (1 + np.exp(-plain_logits)))
    entry["speedup"] = {
        "eval": fast["eval_images_per_second"] / plain["eval_images_per_second"],
        "train": fast["train_images_per_second"] / plain["train_images_per_second"],
    }
    # Same seeded weights and random batch in both settings, so the logits are comparable.
    entry["fast_vs_plain_logits"] = {
        "max_abs_difference": float(difference.max()),
        "max_probability_change": float(probability_change.max()),
        "plain_logit_std": float(plain_logits.std()),
    }
    return entry


# ---------------------------------------------------------------------------------------------
# bf16 on real images


def bf16_on_real_images(
    data_root: Path, checkpoint: Path | None, max_images: int | None, size: int, device: torch.device
) -> dict:
    """Compare the bf16 channels_last evaluation path with fp32 on coco-subset validation images."""
    dataset = msdata.build_dataset("coco-subset", data_root, "val")
    if max_images is not None:
        dataset = dataset.without_rows(range(max_images, len(dataset)))
    mean, std = PYPI_LITE0_NORMALIZATION["mean"], PYPI_LITE0_NORMALIZATION["std"]
    dataset = dataset.with_transform(msdata.build_test_transform(size, mean, std))
    torch.manual_seed(0)
    model = build_model(ModelConfig(head="add-gcn", activation="gelu", num_classes=dataset.num_classes, **LITE0))
    weights = "ImageNet backbone, untrained head (seed 0): probabilities real, mAP near chance"
    if checkpoint is not None:
        from msdgcn.engine import load_checkpoint

        payload = load_checkpoint(checkpoint)
        model.load_state_dict({k.removeprefix("module."): v for k, v in payload["model"].items()})
        weights = f"trained checkpoint {checkpoint} (variant {payload['config'].get('variant')})"
    loader = make_loader(dataset, 16, train=False, num_workers=0)
    model = model.to(device)
    plain = predict(model, loader, device)
    model = model.to(memory_format=torch.channels_last)
    fast = predict(model, loader, device, torch.channels_last, precision="bf16")
    change = np.abs(fast - plain)
    flipped = (fast >= 0.5) != (plain >= 0.5)
    near = np.abs(plain - 0.5) <= BF16_PROBABILITY_TOLERANCE
    map_plain = multilabel_metrics(plain, dataset.targets, dataset.class_names)["mAP"]
    map_fast = multilabel_metrics(fast, dataset.targets, dataset.class_names)["mAP"]
    return {
        "model": "ADD-GCN head with GELU on EfficientNet-Lite0 (head-e)",
        "weights": weights,
        "images": len(dataset),
        "image_size": size,
        "tolerance": BF16_PROBABILITY_TOLERANCE,
        "max_probability_change": float(change.max()),
        "probability_change_99_9th_percentile": float(np.quantile(change, 0.999)),
        "labels_flipped": int(flipped.sum()),
        "labels_flipped_outside_tolerance": int((flipped & ~near).sum()),
        "entries": int(change.size),
        "mAP_fp32": map_plain,
        "mAP_bf16": map_fast,
        "mAP_difference_points": 100 * (map_fast - map_plain),
    }


# ---------------------------------------------------------------------------------------------
# Data pipeline


def _iterate(loader: DataLoader, normalise=None, device=None) -> tuple[float, int]:
    """Return (mean seconds per batch after one warm-up batch, images per batch)."""
    timer = BatchTimer(device or torch.device("cpu"), warmup=1)
    timer.start()
    batch_size = None
    for images, _, _ in loader:
        if normalise is not None:
            images = normalise(images.to(device, non_blocking=True))
        batch_size = batch_size or images.shape[0]
        timer.stop()
    return timer.mean, batch_size


def data_pipeline(data_root: Path, images: int, batch_size: int, size: int, workers: int, device: torch.device) -> dict:
    """Decode + training transform at `size` px: plain DataLoader against the tuned one."""
    mean, std = PYPI_LITE0_NORMALIZATION["mean"], PYPI_LITE0_NORMALIZATION["std"]
    base = msdata.build_dataset("coco-subset", data_root, "train")
    base = base.without_rows(range(images, len(base)))

    plain_set = base.with_transform(msdata.build_train_transform(size, mean, std))
    plain = DataLoader(plain_set, batch_size=batch_size, num_workers=0)

    fast_set = base.with_transform(msdata.build_train_transform(size, mean, std, normalize_on_batch=True))
    fast_set.draft_side = msdata.transform_input_side(size, train=True)
    fast = DataLoader(
        fast_set,
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )
    plain_seconds, _ = _iterate(plain)
    fast_seconds, _ = _iterate(fast, lambda batch: msdata.normalize_batch(batch, mean, std), device)

    # Decode alone, full against draft, at a size where coco-subset's <= 320 px images halve.
    small = 112
    paths = base.image_paths
    start = time.perf_counter()
    for path in paths:
        msdata.load_image(path)
    full_decode = time.perf_counter() - start
    start = time.perf_counter()
    for path in paths:
        msdata.load_image(path, draft_side=small)
    draft_decode = time.perf_counter() - start
    return {
        "images": images,
        "batch_size": batch_size,
        "image_size": size,
        "transform": "official training transform (Resize to size + 64, multi-scale crop, flip)",
        "plain": {"loader": "DataLoader, num_workers=0, float ToTensor + Normalize per image",
                  "images_per_second": batch_size / plain_seconds},
        "fast": {"loader": f"DataLoader, num_workers={workers}"
                           + (", persistent workers, prefetch 4" if workers > 0 else "")
                           + f", pin_memory={device.type == 'cuda'}, uint8 batches normalised after "
                           f"loading, JPEG draft side {fast_set.draft_side}",
                 "images_per_second": batch_size / fast_seconds},
        "speedup": plain_seconds / fast_seconds,
        "draft_decode_at_112px": {"full_images_per_second": len(paths) / full_decode,
                                  "draft_images_per_second": len(paths) / draft_decode,
                                  "speedup": full_decode / draft_decode},
    }


# ---------------------------------------------------------------------------------------------
# Metrics


def coco_like_scores(num_images: int, num_classes: int, labels_per_image: float, seed: int = 0):
    """Random labels with the given density and probabilities that favour the positives.

    Scores are rounded to float32, as the model's sigmoid outputs are, so ties occur.
    """
    rng = np.random.default_rng(seed)
    targets = (rng.random((num_images, num_classes)) < labels_per_image / num_classes).astype(np.int8)
    logits = rng.normal(-3.0, 1.5, (num_images, num_classes)) + 4.0 * targets
    scores = (1 / (1 + np.exp(-logits))).astype(np.float32).astype(np.float64)
    return scores, targets


def metrics_speed(num_images: int, repeats: int) -> dict:
    from sklearn.metrics import average_precision_score

    scores, targets = coco_like_scores(num_images, 80, 2.9)
    names = [f"class {index}" for index in range(80)]
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        multilabel_metrics(scores, targets, names)
        seconds.append(time.perf_counter() - start)
    start = time.perf_counter()
    reference = [average_precision_score(targets[:, c], scores[:, c]) for c in range(80)]
    reference_seconds = time.perf_counter() - start
    difference = np.nanmax(np.abs(average_precision(scores, targets) - np.asarray(reference)))
    return {
        "shape": [num_images, 80],
        "labels_per_image": float(targets.sum(1).mean()),
        "repeats": repeats,
        "multilabel_metrics_seconds_best": min(seconds),
        "multilabel_metrics_seconds_median": float(np.median(seconds)),
        "target_seconds": 0.2,
        "sklearn_per_class_ap_seconds": reference_seconds,
        "max_ap_difference_to_sklearn": float(difference),
    }


# ---------------------------------------------------------------------------------------------
# Profile


def profile_fast_step(name: str, args) -> dict:
    """Top operators by self CPU time of one fast evaluation forward and one fast training step."""
    from torch.profiler import ProfilerActivity, profile

    device = torch.device(args.device)
    model, spec = build_benchmark_model(name)
    family = SIZES[args.mode][spec["family"]]
    model = model.to(device, memory_format=torch.channels_last)
    images = torch.randn(family["batch_size"], 3, family["image_size"], family["image_size"])
    images = images.to(device, memory_format=torch.channels_last)
    targets = torch.zeros(family["batch_size"], 80, device=device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    tables = {}
    for phase in ("eval", "train"):
        model.train(phase == "train")
        # Evaluation runs both steps in one context, as engine.predict does, so the profiled step
        # reuses the bf16 weights cached by the first one.
        pass_context = contextlib.ExitStack()
        if phase == "eval":
            pass_context.enter_context(torch.no_grad())
            pass_context.enter_context(autocast(device, "bf16"))
        # One step before profiling, so oneDNN primitive creation is not in the table.
        with pass_context:
            for profiled in (False, True):
                context = profile(activities=activities) if profiled else contextlib.nullcontext()
                with context as profiler:
                    if phase == "eval":
                        model(images)
                    else:
                        with autocast(device, "bf16"):
                            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(images).float(), targets)
                        loss.backward()
        events = sorted(profiler.key_averages(), key=lambda event: event.self_cpu_time_total, reverse=True)
        total = sum(event.self_cpu_time_total for event in events) or 1
        tables[phase] = [
            {"operator": event.key, "calls": event.count, "self_cpu_ms": event.self_cpu_time_total / 1000,
             "share": event.self_cpu_time_total / total}
            for event in events[:10]
        ]
    return {"model": name, "setting": "fast", **tables}


# ---------------------------------------------------------------------------------------------
# Command line


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and counts, for the tests (about a minute)")
    parser.add_argument("--gpu-sizes", action="store_true", help="batch sizes and step counts for one GPU")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated model names (default: all of {', '.join(MODELS)})")
    parser.add_argument("--sections", default="peak,models,bf16,data,metrics,profile",
                        help="comma-separated parts to run: peak, models, bf16, data, metrics, profile")
    parser.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model in the fast setting")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers of the fast pipeline (default: cores, at most 8)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="trained head-e checkpoint (best.pt) for the bf16 comparison on real images")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA, help="the coco-subset folder")
    parser.add_argument("--profile-models", default=None, help="models to profile (default: add-gcn-lite0,e-101)")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds after which models not yet started are skipped and listed")
    parser.add_argument("--no-isolate", dest="isolate", action="store_false",
                        help="time models in this process (faster start; peak memory then covers all models)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON file; speed.md is written beside it")
    args = parser.parse_args(argv)
    args.mode = "full"
    if args.gpu_sizes:
        args.mode = "gpu"
    if args.quick:
        args.mode = "quick"
    return args


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was requested, but torch finds no CUDA GPU; use --device cpu")
    quick = args.mode == "quick"
    sections = set(args.sections.split(","))
    # Checked before the model timings, which take minutes, instead of failing after them.
    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise SystemExit(f"checkpoint not found: {args.checkpoint}. Pass an existing best.pt, or omit --checkpoint")
    if sections & {"bf16", "data"} and not args.data_root.is_dir():
        raise SystemExit(f"coco-subset folder not found: {args.data_root}. Pass it with --data-root")
    names = [name for name in args.models.split(",") if name]
    started = time.monotonic()
    deadline = started + args.time_budget if args.time_budget else None

    result: dict[str, Any] = {
        "question": "how fast do training, evaluation, data loading and metrics run, plain and tuned",
        "command": " ".join(["python benchmarks/speed.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "mode": args.mode,
        "machine": machine(device),
        "sizes": SIZES[args.mode],
        "settings": {
            "plain": "fp32, eager, NCHW, torch's default threads",
            "fast": "bf16 autocast, channels_last" + (", torch.compile" if args.compile else "")
                    + (", fused optimizer" if device.type == "cuda" else ""),
        },
        "timer": "msdgcn.engine.BatchTimer: mean of the timed steps after the warm-up, CUDA-synchronised",
    }
    peaks = None
    if sections & {"peak", "models"}:
        peaks = matmul_peak(device, sizes=(256,) if quick else (1024, 2048, 4096), repeats=2 if quick else 5)
    result["matmul_peak_flops_per_second"] = peaks
    if "models" in sections:
        result["models"] = benchmark_models(names, args, peaks, deadline)
    if "bf16" in sections:
        result["bf16_real_images"] = bf16_on_real_images(
            args.data_root, args.checkpoint, 8 if quick else None, 64 if quick else 224, device
        )
    if "data" in sections:
        workers = args.workers if args.workers is not None else min(os.cpu_count() or 1, 8)
        result["data_pipeline"] = data_pipeline(
            args.data_root, 8 if quick else 256, 4 if quick else 16, 64 if quick else 224,
            0 if quick else workers, device,
        )
    if "metrics" in sections:
        result["metrics"] = metrics_speed(2000 if quick else 40_137, 2 if quick else 5)
    if "profile" in sections:
        profiled = (args.profile_models or (names[0] if quick else "add-gcn-lite0,e-101")).split(",")
        result["profiles"] = [profile_fast_step(name, args) for name in profiled if skip_reason(name) is None]
    result["wall_seconds"] = time.monotonic() - started

    write_text_atomically(args.output, json.dumps(result, indent=2) + "\n")
    write_text_atomically(args.output.with_suffix(".md"), speed_report.render(result))
    logger.info("wrote %s and %s in %.0f s", args.output, args.output.with_suffix(".md"), result["wall_seconds"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
