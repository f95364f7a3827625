"""Batch runs: execute the training notebook once per variant with papermill.

Each executed notebook is kept beside its results in `results/<profile>/<dataset>/<variant>/`.
A variant whose `metrics.json` exists is skipped unless forced, an unfinished one resumes from its
last checkpoint, and a failed variant does not stop the others: failures are listed at the end and
the command exits with status 1.

On a machine with several GPUs, `--gpus 0,1,2,3` runs one variant per GPU at a time. For a
cluster, `--print-commands` prints one self-contained torchrun command per variant instead of
running anything, for the user's scheduler.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import multiprocessing
import os
import shlex
import shutil
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jupytext
import nbformat
import papermill
import psutil

from .profiles import DEFAULT_VARIANTS, PROFILES, RunConfig, field_default, resolve_run
from .run import METRICS_FILE, torchrun_command

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
TRAIN_NOTEBOOK = NOTEBOOK_DIR / "train_variant.py"
EXECUTED_NAME = "train_variant.ipynb"

# Command-line options that override a profile's value, as (option, notebook parameter, type).
OVERRIDES = (
    ("--epochs", "epochs", int),
    ("--image-size", "image_size", int),
    ("--batch-size", "batch_size", int),
    ("--lr", "learning_rate", float),
    ("--seed", "seed", int),
    ("--device", "device", str),
    ("--num-workers", "num_workers", int),
    ("--threads", "threads", int),
    ("--max-train-images", "max_train_images", int),
    ("--max-val-images", "max_val_images", int),
    ("--init-weights", "init_weights", str),
    ("--precision", "precision", str),
    ("--channels-last", "channels_last", bool),
    ("--compile", "compile", bool),
    ("--nproc-per-node", "nproc_per_node", int),
)


# Parameters that do not change what a run computes, so a finished run may differ in them.
RUN_ONLY_PARAMETERS = (
    "data_root", "device", "num_workers", "threads", "concurrent_runs", "cache_images", "description", "compile",
)  # fmt: skip


def _ignore_stop_signals() -> None:
    """Leave SIGINT and SIGTERM to the batch process, which forwards them to the kernels."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _start_worker(gpu_ids) -> None:
    """Set up a batch worker process: it leaves stop signals to the batch and owns one GPU.

    The GPU is chosen through CUDA_VISIBLE_DEVICES, which the notebook kernels that the worker
    starts inherit, so every variant in this worker has its GPU as `cuda:0`.
    """
    _ignore_stop_signals()
    if gpu_ids is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_ids.get()


class InterruptForwarder:
    """Forward SIGINT or SIGTERM of the batch process to its notebook kernels as SIGINT.

    Jupyter kernels run in sessions of their own, so a signal to the batch would otherwise never
    reach them. A training notebook that receives SIGINT finishes its step, writes a resumable
    checkpoint and stops; the batch then starts no further variant.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "InterruptForwarder":
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._forward) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _forward(self, signal_number: int, frame: Any) -> None:
        # NOTE: a kernel ignores SIGINT while it starts or sits between cells. A signal that
        # arrives then does not stop that variant; only the variants not yet started are skipped.
        # Resending it later is no fix, because it interrupts the kernel's error report.
        self.received = signal_number
        self._interrupt_kernels()

    @staticmethod
    def _interrupt_kernels() -> None:
        for child in psutil.Process().children(recursive=True):
            try:
                if any("ipykernel" in part for part in child.cmdline()):
                    child.send_signal(signal.SIGINT)
            except psutil.Error:  # the process ended meanwhile
                continue

    def __exit__(self, *exc_info: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def requested_config(profile: str, variant: str, dataset: str, data_root: Path, overrides: dict) -> dict:
    """Resolve the configuration the training notebook would build from these batch parameters."""
    launch_only = ("learning_rate", "nproc_per_node")
    values = {name: value for name, value in overrides.items() if name not in launch_only}
    if overrides.get("learning_rate") is not None:
        values["optim"] = {"lr": overrides["learning_rate"]}
    return resolve_run(profile, variant, dataset, str(data_root), values).to_dict()


def config_differences(stored: dict, requested: dict) -> list[str]:
    """List `name: stored -> requested` for the parameters that change what a run computes.

    A parameter missing from the stored config was added to RunConfig after that run, which
    therefore ran with the parameter's default.
    """
    differences = []
    for key in sorted(set(stored) | set(requested)):
        if key in RUN_ONLY_PARAMETERS:
            continue
        stored_value = stored.get(key, field_default(key))
        requested_value = requested.get(key, field_default(key))
        if stored_value != requested_value:
            differences.append(f"{key}: {stored_value!r} -> {requested_value!r}")
    return differences


@dataclass
class Outcome:
    variant: str
    status: str  # "done", "skipped", "failed", "not run" (after an interruption)
    seconds: float
    notebook: Path
    error: str = ""


def read_notebook(path: Path) -> nbformat.NotebookNode:
    """Read a notebook from its jupytext `.py` source (the reviewed one) or an `.ipynb`."""
    return jupytext.read(path)


def tidy_executed(notebook_path: Path, title: str | None = None) -> None:
    """Make an executed notebook reproducible as a file and give it its own page title.

    Papermill stores absolute paths and timings, and nbformat draws random cell ids, so two
    executions with the same outputs would differ as files. Those fields are dropped and cell ids
    numbered; `title` replaces the first heading.
    """
    notebook = nbformat.read(notebook_path, as_version=4)
    papermill_metadata = notebook.metadata.get("papermill", {})
    for key in ("input_path", "output_path", "start_time", "end_time", "duration", "environment_variables"):
        papermill_metadata.pop(key, None)
    for index, cell in enumerate(notebook.cells):
        cell.id = f"cell-{index}"
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
    if title is not None:
        for cell in notebook.cells:
            if cell.cell_type == "markdown" and cell.source.startswith("# "):
                _, _, rest = cell.source.partition("\n")
                cell.source = f"# {title}\n{rest}"
                break
    nbformat.write(notebook, notebook_path)


class BatchLock:
    """An exclusive lock that stops two batches from writing the same results folder at once.

    The lock is `fcntl.flock` on `.batch.lock`, so it ends with its process, even on SIGKILL.
    The file stays in place and contains the pid of the last holder, for the error message.
    """

    def __init__(self, folder: Path):
        self.path = Path(folder) / ".batch.lock"
        self._handle = None

    def __enter__(self) -> "BatchLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RuntimeError(
                f"another batch (pid {holder}) is writing to {self.path.parent}; wait for it to "
                "finish, or choose another folder with --results"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc_info: Any) -> None:
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()
        self._handle = None


def run_batch(
    profile: str,
    dataset: str,
    data_root: str | Path,
    variants: list[str] | None = None,
    results_root: str | Path = REPO_ROOT / "results",
    force: bool = False,
    overrides: dict[str, Any] | None = None,
    notebook: Path = TRAIN_NOTEBOOK,
    kernel_name: str | None = None,
    jobs: int = 1,
    gpus: list[str] | None = None,
) -> list[Outcome]:
    """Run the variants of a profile and return what happened to each.

    With `jobs` > 1, that many variants run at once in separate processes, each with
    cores / jobs torch threads (recorded in its results), which changes the batch times it reports.
    `gpus` (CUDA device indices) runs one variant per GPU at a time: jobs becomes their count and
    each worker process can use only its GPU.
    """
    overrides = dict(overrides or {})
    if gpus:
        if (overrides.get("nproc_per_node") or 1) > 1:
            raise ValueError(
                "--gpus runs one single-process variant per GPU; drop --nproc-per-node, or drop "
                "--gpus to train each variant on all GPUs under torchrun"
            )
        jobs = len(gpus)
        overrides.setdefault("device", "cuda")
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    variants = _check_variants(profile, variants)
    data_root = Path(data_root).resolve()
    if not data_root.exists():
        raise FileNotFoundError(
            f"dataset folder not found: {data_root}. Pass the folder that contains {dataset} "
            "with --data-root"
        )
    results_root = Path(results_root).resolve()
    pending: list[dict[str, Any]] = []
    outcomes: list[Outcome] = []
    threads = (overrides or {}).get("threads") or max(1, (os.cpu_count() or 1) // jobs)
    with BatchLock(results_root / profile / dataset):
        for variant in variants:
            run_dir = results_root / profile / dataset / variant
            executed = run_dir / EXECUTED_NAME
            if (run_dir / METRICS_FILE).exists() and not force:
                stored = json.loads((run_dir / METRICS_FILE).read_text())["config"]
                requested = requested_config(profile, variant, dataset, data_root, overrides or {})
                differences = config_differences(stored, requested)
                if differences:
                    raise ValueError(
                        f"{run_dir / METRICS_FILE} contains a finished run with other parameters "
                        f"({'; '.join(differences)}). Write this run elsewhere with --results, "
                        "or replace the finished one with --force."
                    )
                logger.info("%s: finished before, skipped (use --force to run it again)", variant)
                outcomes.append(Outcome(variant, "skipped", 0.0, executed))
                continue
            if force and run_dir.exists():
                # A forced run starts from scratch: old checkpoints would otherwise be resumed.
                shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
                (run_dir / METRICS_FILE).unlink(missing_ok=True)
            run_dir.mkdir(parents=True, exist_ok=True)
            # Paths relative to the notebook's folder keep the executed copies free of local paths.
            parameters = dict(
                variant=variant,
                profile=profile,
                dataset=dataset,
                data_root=os.path.relpath(data_root, notebook.parent),
                results_root=os.path.relpath(results_root, notebook.parent),
                progress=False,
                **(overrides or {}),
            )
            if jobs > 1:
                parameters.update(threads=threads, concurrent_runs=jobs)
            pending.append(
                dict(
                    variant=variant,
                    notebook=str(notebook),
                    executed=str(executed),
                    parameters=parameters,
                    kernel_name=kernel_name,
                    title=f"Run: variant {variant} ({profile}, {dataset})",
                )
            )
        with InterruptForwarder() as interrupt:
            if jobs == 1 and not gpus:
                for task in pending:
                    if interrupt.received:
                        outcomes.append(Outcome(task["variant"], "not run", 0.0, Path(task["executed"])))
                        continue
                    outcomes.append(execute_variant(**task))
            else:
                # Separate processes, each with its own kernel: on the 2-core reference machine two
                # single-threaded runs train 1.26 times as many images per second as one run on two
                # threads (benchmarks/parallel_runs.py).
                context = multiprocessing.get_context("spawn")
                gpu_ids = None
                if gpus:
                    gpu_ids = context.Queue()
                    for gpu in gpus:
                        gpu_ids.put(gpu)
                with ProcessPoolExecutor(
                    max_workers=jobs, mp_context=context, initializer=_start_worker, initargs=(gpu_ids,)
                ) as pool:
                    futures = [pool.submit(execute_variant, **task) for task in pending]
                    for task, future in zip(pending, futures):
                        if interrupt.received and future.cancel():
                            outcomes.append(Outcome(task["variant"], "not run", 0.0, Path(task["executed"])))
                            continue
                        outcomes.append(future.result())
        if interrupt.received:
            logger.warning(
                "%s received: running variants were asked to stop at their next training step and "
                "write a checkpoint; run the same command again to continue",
                signal.Signals(interrupt.received).name,
            )
    order = {variant: i for i, variant in enumerate(variants)}
    return sorted(outcomes, key=lambda outcome: order[outcome.variant])


def _check_variants(profile: str, variants: list[str] | None) -> list[str]:
    """Return the variants to run (the profile's default list when None), or raise for unknown ones."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    variants = list(variants or DEFAULT_VARIANTS[profile])
    unknown = [v for v in variants if v not in PROFILES[profile].variants]
    if unknown:
        raise ValueError(
            f"unknown variants {unknown} for profile {profile!r}; "
            f"choose from {sorted(PROFILES[profile].variants)}"
        )
    return variants


def cluster_commands(
    profile: str,
    dataset: str,
    data_root: str | Path,
    variants: list[str] | None = None,
    results_root: str | Path = REPO_ROOT / "results",
    overrides: dict[str, Any] | None = None,
) -> list[str]:
    """Return one torchrun command line per variant, which trains it as the notebook would.

    Each line names every run parameter with the value the notebook resolves, and absolute
    paths, so it runs from any folder of a machine where the package is installed.
    """
    overrides = dict(overrides or {})
    nproc_per_node = overrides.get("nproc_per_node") or 1
    data_root = Path(data_root).resolve()
    results_root = Path(results_root).resolve()
    commands = []
    for variant in _check_variants(profile, variants):
        config = RunConfig.from_dict(requested_config(profile, variant, dataset, data_root, overrides))
        commands.append(shlex.join(torchrun_command(config, results_root, nproc_per_node)))
    return commands


def execute_variant(
    variant: str,
    notebook: str,
    executed: str,
    parameters: dict[str, Any],
    kernel_name: str | None,
    title: str,
) -> Outcome:
    """Execute the training notebook for one variant; a failure is returned, not raised."""
    if not logging.getLogger().handlers:  # a spawned worker process starts without handlers
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    notebook_path, executed_path = Path(notebook), Path(executed)
    logger.info("%s: running %s into %s", variant, notebook_path.name, executed_path)
    start = time.perf_counter()
    try:
        papermill.execute_notebook(
            read_notebook(notebook_path),
            str(executed_path),
            parameters=parameters,
            cwd=str(notebook_path.parent),
            kernel_name=kernel_name,
            progress_bar=False,
            log_output=False,
        )
    except Exception as error:  # papermill wraps the notebook's own exception
        seconds = time.perf_counter() - start
        lines = [line for line in str(error).strip().splitlines() if line.strip()]
        summary = lines[-1] if lines else repr(error)
        logger.error("%s: failed after %.0f s: %s (see %s)", variant, seconds, summary, executed_path)
        return Outcome(variant, "failed", seconds, executed_path, summary)
    seconds = time.perf_counter() - start
    tidy_executed(executed_path, title)
    logger.info("%s: done in %.0f s", variant, seconds)
    return Outcome(variant, "done", seconds, executed_path)


def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="cpu", choices=sorted(PROFILES), help="run scale")
    parser.add_argument("--dataset", default="coco-subset", help="dataset name (see msdgcn.data.DATASETS)")
    parser.add_argument("--data-root", required=True, help="folder that contains the dataset")
    parser.add_argument(
        "--variants", nargs="+", default=None, help="variants to run (default: the profile's list)"
    )
    parser.add_argument("--results", default=str(REPO_ROOT / "results"), help="results root folder")
    parser.add_argument("--force", action="store_true", help="run finished variants again from scratch")
    parser.add_argument(
        "--jobs", type=int, default=1, help="variants to run at once, each in its own process (default 1)"
    )
    parser.add_argument(
        "--gpus",
        type=lambda text: [part.strip() for part in text.split(",") if part.strip()],
        default=None,
        help="comma-separated CUDA device indices, such as 0,1,2,3: one variant per GPU at a time",
    )
    parser.add_argument(
        "--print-commands",
        action="store_true",
        help="print one torchrun command per variant, with every run parameter, and run nothing",
    )
    for option, name, kind in OVERRIDES:
        if kind is bool:
            parser.add_argument(option, dest=name, action=argparse.BooleanOptionalAction, default=None, help=f"override {name}")
        else:
            parser.add_argument(option, dest=name, type=kind, default=None, help=f"override {name}")


def run_batch_command(args: argparse.Namespace) -> int:
    overrides = {name: getattr(args, name) for _, name, _ in OVERRIDES if getattr(args, name) is not None}
    if args.print_commands:
        commands = cluster_commands(
            args.profile, args.dataset, args.data_root, args.variants, args.results, overrides
        )
        print("\n".join(commands))
        return 0
    outcomes = run_batch(
        args.profile,
        args.dataset,
        args.data_root,
        variants=args.variants,
        results_root=args.results,
        force=args.force,
        overrides=overrides,
        jobs=args.jobs,
        gpus=args.gpus,
    )
    width = max(len(o.variant) for o in outcomes)
    for outcome in outcomes:
        line = f"{outcome.variant:<{width}}  {outcome.status:<7}  {outcome.seconds:7.0f} s  {outcome.notebook}"
        if outcome.error:
            line += f"\n{'':<{width}}  {outcome.error}"
        print(line)
    failed = [o.variant for o in outcomes if o.status == "failed"]
    not_started = [o.variant for o in outcomes if o.status == "not run"]
    if failed:
        print(f"{len(failed)} of {len(outcomes)} variants failed: {', '.join(failed)}")
    if not_started:
        print(f"{len(not_started)} variants not started because the batch was interrupted: {', '.join(not_started)}")
    return 1 if failed or not_started else 0
