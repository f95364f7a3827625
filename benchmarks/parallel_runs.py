"""How should the cpu profile use a small CPU: threads, concurrent runs, memory format?

Times training steps (forward, backward, SGD step; no data loading) of the head-check model,
ADD-GCN on EfficientNet-Lite0 at 224 px, batch 16, in four settings measured in one run:

- one run, all cores as torch threads, NCHW (contiguous) memory format;
- one run, all cores, channels_last;
- one run, one thread, channels_last;
- as many single-threaded channels_last runs at once as there are cores.

Throughput is images per second summed over the runs that share the machine.

    python benchmarks/parallel_runs.py [--steps N] [--output JSON]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import time
from pathlib import Path

import torch

from msdgcn.models import ModelConfig, build_model

BATCH = 16
SIZE = 224


def time_steps(threads: int, channels_last: bool, steps: int, barrier=None) -> float:
    """Return the median seconds of one training step after two warm-up steps."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(ModelConfig(head="add-gcn", backbone="efficientnet_lite0", num_classes=80))
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(BATCH, 3, SIZE, SIZE).contiguous(memory_format=memory_format)
    targets = (torch.rand(BATCH, 80) < 0.05).float()
    criterion = torch.nn.BCEWithLogitsLoss()
    if barrier is not None:
        barrier.wait()
    seconds = []
    for step in range(steps + 2):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        criterion(model(images), targets).backward()
        optimizer.step()
        if step >= 2:
            seconds.append(time.perf_counter() - start)
    return sorted(seconds)[len(seconds) // 2]


def _worker(args) -> float:
    threads, channels_last, steps, barrier = args
    return time_steps(threads, channels_last, steps, barrier)


def concurrent_runs(count: int, steps: int) -> list[float]:
    """Run `count` single-threaded timings at once in separate processes."""
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        barrier = manager.Barrier(count)
        with context.Pool(count) as pool:
            return pool.map(_worker, [(1, True, steps, barrier)] * count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per setting (default 6)")
    parser.add_argument("--output", default="benchmarks/results/parallel_runs.json")
    args = parser.parse_args()
    cores = os.cpu_count() or 1

    settings = {}
    for name, threads, channels_last in (
        ("one run, all threads, NCHW", cores, False),
        ("one run, all threads, channels_last", cores, True),
        ("one run, one thread, channels_last", 1, True),
    ):
        seconds = time_steps(threads, channels_last, args.steps)
        settings[name] = {"runs": 1, "threads": threads, "step_seconds": [seconds], "images_per_second": BATCH / seconds}
    seconds = concurrent_runs(cores, args.steps)
    settings[f"{cores} runs at once, one thread each, channels_last"] = {
        "runs": cores,
        "threads": 1,
        "step_seconds": seconds,
        "images_per_second": sum(BATCH / s for s in seconds),
    }

    baseline = settings["one run, all threads, channels_last"]["images_per_second"]
    for values in settings.values():
        values["throughput_vs_one_run_all_threads_channels_last"] = values["images_per_second"] / baseline
    record = {
        "question": "threads, concurrent runs and memory format for the cpu profile",
        "command": f"python benchmarks/parallel_runs.py --steps {args.steps}",
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"platform": platform.platform(), "cores": cores, "torch": torch.__version__},
        "workload": f"ADD-GCN head on efficientnet_lite0, {SIZE} px, batch {BATCH}, SGD, random data, "
        "median of the timed steps after 2 warm-up steps",
        "settings": settings,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(record, indent=2) + "\n")
    for name, values in settings.items():
        print(f"{name:50s} {values['images_per_second']:6.1f} img/s  x{values['throughput_vs_one_run_all_threads_channels_last']:.2f}")


if __name__ == "__main__":
    main()
