"""Training loop: optimizer, loss, schedule, one epoch, evaluation and checkpoints.

The loop follows torchvision's classification reference: build data, model, optimizer and
scheduler, then alternate `train_one_epoch` and `evaluate`. Checkpoints are one dict (model,
optimizer, scheduler, epoch, best score, RNG states, parameters, class names) written atomically,
so an interrupted write never replaces a good `last.pt` with a broken one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .data import MultiLabelDataset, training_targets
from .metrics import multilabel_metrics
from .profiles import OptimConfig, RunConfig
from .provenance import git_state

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


class NonFiniteLossError(RuntimeError):
    """Raised when the training loss becomes NaN or infinite."""


class TrainingInterrupted(RuntimeError):
    """Raised after SIGINT or SIGTERM once a resumable checkpoint has been written."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.signal_number = signal_number


def use_deterministic_kernels() -> None:
    """Make PyTorch use deterministic kernels only, and raise for an operation that has none.

    CPU training here is deterministic without this. On CUDA, cuBLAS also needs a fixed workspace,
    set through CUBLAS_WORKSPACE_CONFIG before the first CUDA call.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def build_loss(name: str) -> nn.Module:
    """Return the training criterion by name.

    For targets in {0, 1}, MultiLabelSoftMarginLoss (the mean over classes of the binary
    cross-entropy on sigmoid outputs, then the mean over the batch) equals BCEWithLogitsLoss with
    mean reduction, so switching between them changes no number (checked in the tests).
    """
    if name == "multilabel_soft_margin":
        return nn.MultiLabelSoftMarginLoss()
    if name == "bce":
        return nn.BCEWithLogitsLoss()
    raise ValueError(f"unknown loss {name!r}; choose 'multilabel_soft_margin' or 'bce'")


def training_loss(criterion: nn.Module, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Apply the criterion, leaving out entries whose target is -1 (difficult, ignored).

    Without ignored entries this is the criterion itself. With them, both criteria reduce to the
    binary cross-entropy averaged over the entries that remain, which is what either computes
    when nothing is ignored.
    """
    ignored = targets < 0
    if not bool(ignored.any()):
        return criterion(logits, targets)
    kept = (~ignored).to(logits.dtype)
    per_entry = nn.functional.binary_cross_entropy_with_logits(
        logits, targets.clamp(min=0), reduction="none"
    )
    return (per_entry * kept).sum() / kept.sum().clamp(min=1)


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    """Build SGD or Adam over two groups: the backbone at lr * backbone_lr_mult, the head at lr."""
    groups = model.parameter_groups(optim.lr, optim.backbone_lr_mult)
    if optim.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay
        )
    if optim.optimizer == "adam":
        return torch.optim.Adam(groups, lr=optim.lr, weight_decay=optim.weight_decay)
    raise ValueError(f"unknown optimizer {optim.optimizer!r}; choose 'sgd' or 'adam'")


def build_scheduler(optimizer: torch.optim.Optimizer, optim: OptimConfig):
    """Multiply every group's lr by gamma after each milestone epoch (1-based, stepped per epoch)."""
    return torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=list(optim.milestones), gamma=optim.gamma
    )


def epoch_seed(seed: int, epoch: int) -> int:
    """Return the seed of one epoch. Reseeding at every epoch start makes resume exact."""
    return (seed * 1_000_003 + epoch) % (2**31)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _seed_worker(worker_id: int) -> None:
    # Ctrl-C is the main process's to handle (it writes a checkpoint); a worker killed by it would
    # abort the DataLoader first. Workers started by fork inherit the handler; spawn ones do not.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    worker_seed = torch.initial_seed() % (2**32)
    random.seed(worker_seed)
    np.random.seed(worker_seed)


class BatchTimer:
    """Mean wall time per training batch (data loading included), after a warm-up.

    A batch's time runs from the previous `stop` (or `start`) to its own `stop`, so it covers
    loading the batch, the copy to the device, forward, backward and optimizer step, plus the
    loop's bookkeeping after the previous step. On CUDA every reading first waits for the
    queued kernels (torch.cuda.synchronize), so a batch is charged for its own kernels and not
    for those of the next one. The first `warmup` batches (memory allocation, cuDNN autotuning,
    worker start) are left out of `mean`. Table 3's batch time and benchmarks/speed.py use this
    one timer, so their numbers compare variants timed the same way.
    """

    def __init__(self, device: torch.device, warmup: int = 1):
        self.device = device
        self.warmup = warmup
        self.count = 0
        self.total = 0.0
        self._seen = 0
        self._start: float | None = None

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def start(self) -> None:
        self._start = self._now()

    def stop(self) -> float:
        elapsed = self._now() - self._start
        self._seen += 1
        if self._seen > self.warmup:
            self.count += 1
            self.total += elapsed
        self._start = self._now()
        return elapsed

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None


@dataclass
class TrainState:
    """Training progress restored from a checkpoint: last finished epoch, best score, history."""

    epoch: int = 0
    best_mAP: float = -math.inf
    best_epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def _pause_for_tests(variable: str) -> None:
    """Sleep for the seconds in an environment variable; kill tests use it to hit a moment."""
    seconds = os.environ.get(variable)
    if seconds:
        time.sleep(float(seconds))


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write a checkpoint atomically: a temporary file in the same folder, then os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(payload, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        _pause_for_tests("MSDGCN_TEST_CHECKPOINT_DELAY")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _load_tensors_only(path: Path, kind: str, advice: str) -> Any:
    """torch.load with weights_only=True, turning any failure into one ValueError naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError or EOFError here
        # torch's own message suggests weights_only=False, which would run code from the file.
        raise ValueError(
            f"cannot load {kind} {path} ({type(error).__name__}): it is corrupt, empty, or needs "
            f"arbitrary code to unpickle, which is never run. To go on, {advice}."
        ) from error


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint of ours. A file that needs arbitrary code to unpickle is rejected, not run."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    payload = _load_tensors_only(path, "checkpoint", "delete it, or rerun with --no-resume")
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is not a training checkpoint of this package (missing 'format': "
            f"{CHECKPOINT_FORMAT}); pass it as init_weights (batch --init-weights) for a "
            "weights-only start instead"
        )
    return payload


def reorder_classes(
    state: dict[str, torch.Tensor],
    class_dims: dict[str, tuple[int, ...]],
    source_names: list[str],
    target_names: list[str],
) -> dict[str, torch.Tensor]:
    """Reorder the class-indexed tensors of a state dict from one class order to another.

    `class_dims` maps a tensor name to the dimensions that run over classes, for example both
    dimensions of the static adjacency. The two name lists must hold the same classes.
    """
    position = {name: index for index, name in enumerate(source_names)}
    order = torch.tensor([position[name] for name in target_names])
    reordered = dict(state)
    for name, dims in class_dims.items():
        if name in reordered:
            for dim in dims:
                reordered[name] = reordered[name].index_select(dim, order)
    return reordered


def load_init_weights(
    model: nn.Module, path: str | Path, class_names: list[str] | None = None
) -> dict[str, list[str]]:
    """Initialise a model from weights only (fine-tuning): epoch count and best score start fresh.

    Accepts a checkpoint of ours or a plain state dict (a `module.` prefix from DataParallel or DDP
    is removed). When the checkpoint stores its class names and they are the model's classes in
    another order, the class-indexed tensors are reordered by name. Missing and unexpected keys
    are listed in the log, not raised, because fine-tuning on another dataset changes the
    class-indexed layers.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"init_weights file not found: {path}")
    payload = _load_tensors_only(path, "init_weights file", "save its state dict with torch.save")
    if not isinstance(payload, dict):
        raise ValueError(f"init_weights file {path} contains a {type(payload).__name__}, not a state dict")
    state = payload.get("model", payload.get("state_dict", payload))
    state = {k.removeprefix("module."): v for k, v in state.items()}
    source_names = payload.get("class_names")
    if class_names is not None and source_names is not None and list(source_names) != list(class_names):
        if sorted(source_names) == sorted(class_names):
            dims = {f"head.{name}": d for name, d in getattr(model.head, "class_dims", {}).items()}
            state = reorder_classes(state, dims, list(source_names), list(class_names))
            logger.info("reordered the class-indexed tensors of %s by class name", path)
        else:
            logger.warning("%s was trained on other classes; its class-indexed tensors do not fit", path)
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if class_names is not None and source_names is not None and sorted(source_names) != sorted(class_names):
        class_tensors = {f"head.{name}" for name in getattr(model.head, "class_dims", {})}
        usable = {k: v for k, v in usable.items() if k not in class_tensors}
    skipped = sorted(set(state) - set(usable))
    missing = sorted(set(own) - set(usable))
    model.load_state_dict(usable, strict=False)
    logger.info("initialised %d tensors from %s", len(usable), path)
    if skipped:
        logger.warning("%d tensors of %s not used (absent or another shape): %s", len(skipped), path, skipped[:20])
    if missing:
        logger.warning("%d model tensors not in %s keep their initial values: %s", len(missing), path, missing[:20])
    return {"skipped": skipped, "missing": missing}


def make_loader(
    dataset: MultiLabelDataset,
    batch_size: int,
    *,
    train: bool,
    num_workers: int,
    seed: int = 0,
    pin_memory: bool = False,
    skip_batches: int = 0,
) -> DataLoader:
    """Build a DataLoader. A training loader visits a permutation drawn from `seed`.

    `skip_batches` leaves out the first batches of that permutation without loading them, which
    is how an epoch interrupted after that many steps continues.
    """
    generator = torch.Generator()
    generator.manual_seed(seed)
    sampler = None
    if train:
        order = torch.randperm(len(dataset), generator=generator).tolist()
        sampler = order[skip_batches * batch_size :]
    # BatchNorm in training mode fails on a batch of one sample, so such a last batch is dropped.
    drop_last = train and len(dataset) % batch_size == 1
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        generator=generator,
        worker_init_fn=_seed_worker,
        pin_memory=pin_memory,
        drop_last=drop_last,
        persistent_workers=False,
    )


# Autocast dtypes of the evaluation forward; "fp32" runs without autocast.
EVAL_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Largest change of a sigmoid probability from fp32 that the bf16 evaluation forward is allowed,
# so a predicted label (probability >= 0.5) may flip only where fp32 gives 0.35 to 0.65.
# Measured with EfficientNet-Lite0 on CPU: at most 0.12 on 12 coco-subset images at 160 px
# (tests/test_fast_paths.py); benchmarks/speed.py reports the measured change for each run.
# NOTE: on a trained head-e checkpoint (124 coco-subset images, 224 px) one probability of 9,920
# moved by 0.28, so this bound held for the labels there but not for every probability.
BF16_PROBABILITY_TOLERANCE = 0.15


def eval_autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Return the autocast context of an evaluation forward in `precision` on `device`.

    Under "bf16" or "fp16", autocast runs convolutions and matrix products in that dtype and
    keeps reductions such as BatchNorm statistics and softmax in float32.
    """
    if precision not in EVAL_PRECISIONS:
        raise ValueError(
            f"unknown precision {precision!r}; choose one of {', '.join(EVAL_PRECISIONS)}"
        )
    dtype = EVAL_PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def predict(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    memory_format: torch.memory_format = torch.contiguous_format,
    *,
    precision: str = "fp32",
) -> np.ndarray:
    """Return sigmoid probabilities (N, C) in dataset order, as float64.

    `memory_format` applies to the input batches only. Convert the model with
    `model.to(memory_format=...)` as well, or its convolutions convert every layer's input back.
    With `precision` "bf16" or "fp16" the forward runs under autocast (see `eval_autocast`),
    and the sigmoid is taken of the logits cast back to float32.
    """
    model.eval()
    scores = []
    with torch.inference_mode(), eval_autocast(device, precision):
        for images, _, _ in loader:
            logits = model(images.to(device, non_blocking=True, memory_format=memory_format))
            scores.append(torch.sigmoid(logits.float()).cpu())
    return torch.cat(scores).numpy().astype(np.float64)


def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    memory_format: torch.memory_format = torch.contiguous_format,
    *,
    precision: str = "fp32",
) -> tuple[dict[str, Any], np.ndarray]:
    """Score every image of the loader's dataset and compute the multi-label metrics."""
    dataset: MultiLabelDataset = loader.dataset
    scores = predict(model, loader, device, memory_format, precision=precision)
    metrics = multilabel_metrics(scores, dataset.targets, dataset.class_names)
    return metrics, scores


class Trainer:
    """Train one run with evaluation every epoch, `last`/`best` checkpoints and exact resume."""

    def __init__(
        self,
        config: RunConfig,
        model: nn.Module,
        train_set: MultiLabelDataset,
        val_set: MultiLabelDataset,
        checkpoint_dir: Path,
        progress: bool = True,
    ):
        self.config = config
        self.device = torch.device(config.device)
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        if config.threads:
            torch.set_num_threads(config.threads)
        if config.deterministic:
            use_deterministic_kernels()
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.train_set = train_set
        self.val_set = val_set
        self.checkpoint_dir = Path(checkpoint_dir)
        self.progress = progress
        self.criterion = build_loss(config.optim.loss)
        self.optimizer = build_optimizer(self.model, config.optim)
        self.scheduler = build_scheduler(self.optimizer, config.optim)
        self.state = TrainState()
        self.partial_epoch: dict[str, Any] | None = None  # an epoch interrupted mid-way, from resume()
        self.stop_signal: int | None = None
        # The code version is read when training starts, not when the result files are written.
        self.code_version = git_state()
        self.val_loader = make_loader(
            val_set, config.batch_size, train=False, num_workers=config.num_workers
        )

    # -- checkpoints -------------------------------------------------------------------------
    @property
    def last_path(self) -> Path:
        return self.checkpoint_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.checkpoint_dir / "best.pt"

    def _payload(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.state.epoch,
            "best_mAP": self.state.best_mAP,
            "best_epoch": self.state.best_epoch,
            "history": self.state.history,
            "rng": _rng_state(),
            "config": self.config.to_dict(),
            "class_names": list(self.train_set.class_names),
        }

    def resume(self) -> bool:
        """Continue from `last.pt` when it exists, and return whether a checkpoint was loaded."""
        if not self.last_path.exists():
            return False
        payload = load_checkpoint(self.last_path)
        saved = payload["config"]
        # Every parameter that changes the computation must match; epochs may grow (longer run).
        compared = ("variant", "profile", "dataset", "model", "optim", "image_size", "batch_size", "seed",
                    "max_train_images", "max_val_images", "difficult_as", "skip_unreadable_images",
                    "train_split", "val_split")  # fmt: skip
        if payload["epoch"] > self.config.epochs:
            raise ValueError(
                f"{self.last_path} has already trained {payload['epoch']} epochs, more than the "
                f"{self.config.epochs} requested; request at least {payload['epoch']} epochs, or "
                "choose another output folder"
            )
        for key in compared:
            if saved.get(key) != self.config.to_dict().get(key):
                raise ValueError(
                    f"{self.last_path} was written by a run with {key}={saved.get(key)!r}, "
                    f"this run has {key}={self.config.to_dict().get(key)!r}; delete the checkpoint "
                    "folder or choose another output folder"
                )
        if payload["class_names"] != list(self.train_set.class_names):
            raise ValueError(f"{self.last_path} was trained on other classes than this dataset")
        # A run saved from inside DataParallel or DDP prefixes every key with "module.".
        self.model.load_state_dict({k.removeprefix("module."): v for k, v in payload["model"].items()})
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.state = TrainState(
            epoch=payload["epoch"],
            best_mAP=payload["best_mAP"],
            best_epoch=payload["best_epoch"],
            history=list(payload["history"]),
        )
        self.partial_epoch = payload.get("partial_epoch")
        _set_rng_state(payload["rng"])
        if self.partial_epoch:
            logger.info(
                "resumed %s in epoch %d after step %d",
                self.last_path, self.partial_epoch["epoch"], self.partial_epoch["step"],
            )  # fmt: skip
        else:
            logger.info("resumed %s at epoch %d", self.last_path, self.state.epoch)
        return True

    # -- training ----------------------------------------------------------------------------
    def train_one_epoch(self, epoch: int, bar: tqdm | None) -> dict[str, float]:
        """Train one epoch, or the rest of the interrupted epoch stored in `self.partial_epoch`.

        Continuing an interrupted epoch is exact with `num_workers=0`. With worker processes the
        batches are the same, but each worker restarts its augmentation random stream.
        """
        config = self.config
        partial = self.partial_epoch if self.partial_epoch and self.partial_epoch["epoch"] == epoch else None
        self.partial_epoch = None
        if partial is None:
            seed_everything(epoch_seed(config.seed, epoch))
            partial = {"epoch": epoch, "step": 0, "loss_sum": 0.0, "seen": 0, "timer_total": 0.0, "timer_count": 0, "seconds": 0.0}
        loader = make_loader(
            self.train_set,
            config.batch_size,
            train=True,
            num_workers=config.num_workers,
            seed=epoch_seed(config.seed, epoch),
            pin_memory=self.device.type == "cuda",
            skip_batches=partial["step"],
        )
        self.model.train()
        timer = BatchTimer(self.device)
        timer.total, timer.count = partial["timer_total"], partial["timer_count"]
        loss_sum, seen = partial["loss_sum"], partial["seen"]
        epoch_start = time.perf_counter() - partial["seconds"]
        timer.start()
        for step, (images, targets, _) in enumerate(loader, start=partial["step"] + 1):
            images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
            targets = training_targets(targets, config.difficult_as).to(self.device)
            logits = self.model(images)
            loss = training_loss(self.criterion, logits, targets)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"loss became {loss.item()} at epoch {epoch}, step {step}; the last good "
                    f"checkpoint is {self.last_path}. Lower the learning rate or check the data."
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.optim.grad_clip_norm:
                nn.utils.clip_grad_norm_(self.model.parameters(), config.optim.grad_clip_norm)
            self.optimizer.step()
            timer.stop()
            loss_sum += loss.item() * images.shape[0]
            seen += images.shape[0]
            if bar is not None:
                rate = seen / (time.perf_counter() - epoch_start)
                bar.set_postfix(epoch=epoch, loss=f"{loss.item():.4f}", img_s=f"{rate:.1f}")
                bar.update(1)
            _pause_for_tests("MSDGCN_TEST_STEP_DELAY")
            if self.stop_signal is not None:
                self._save_interrupted(
                    {"epoch": epoch, "step": step, "loss_sum": loss_sum, "seen": seen,
                     "timer_total": timer.total, "timer_count": timer.count,
                     "seconds": time.perf_counter() - epoch_start}  # fmt: skip
                )
        self.scheduler.step()
        return {
            "train_loss": loss_sum / max(seen, 1),
            "batch_time": timer.mean,
            "train_seconds": time.perf_counter() - epoch_start,
            "train_images_per_second": seen / (time.perf_counter() - epoch_start),
        }

    def _save_interrupted(self, partial: dict[str, Any]) -> None:
        """Write `last.pt` in the middle of an epoch and raise TrainingInterrupted."""
        payload = self._payload()
        payload["partial_epoch"] = partial
        save_checkpoint(self.last_path, payload)
        name = signal.Signals(self.stop_signal).name
        message = (
            f"{name} received: stopped at epoch {partial['epoch']}, step {partial['step']}, and wrote "
            f"{self.last_path}. Run the same command again to continue from there."
        )
        logger.warning(message)
        raise TrainingInterrupted(message, self.stop_signal)

    def _request_stop(self, signal_number: int, frame: Any) -> None:
        self.stop_signal = signal_number

    def fit(self, on_epoch_end: Callable[[dict[str, Any]], None] | None = None) -> TrainState:
        """Train until `config.epochs`, evaluating on the validation set after every epoch."""
        config = self.config
        steps_per_epoch = len(
            make_loader(self.train_set, config.batch_size, train=True, num_workers=0)
        )
        remaining = max(config.epochs - self.state.epoch, 0)
        bar = None
        if self.progress and remaining:
            bar = tqdm(
                total=remaining * steps_per_epoch,
                desc=f"{config.profile}/{config.variant}",
                unit="batch",
                mininterval=2.0,
                dynamic_ncols=True,
            )
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            # The step in progress finishes, then a resumable checkpoint is written.
            handlers = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for epoch in range(self.state.epoch + 1, config.epochs + 1):
                lrs = {g.get("name", str(i)): g["lr"] for i, g in enumerate(self.optimizer.param_groups)}
                train_stats = self.train_one_epoch(epoch, bar)
                eval_start = time.perf_counter()
                metrics, _ = evaluate(self.model, self.val_loader, self.device, self.memory_format)
                record = {
                    "epoch": epoch,
                    **train_stats,
                    "eval_seconds": time.perf_counter() - eval_start,
                    "mAP": metrics["mAP"],
                    "CF1": metrics["CF1"],
                    "OF1": metrics["OF1"],
                    **{f"lr_{name}": lr for name, lr in lrs.items()},
                }
                self.state.epoch = epoch
                self.state.history.append(record)
                improved = metrics["mAP"] > self.state.best_mAP
                if improved:
                    self.state.best_mAP = metrics["mAP"]
                    self.state.best_epoch = epoch
                payload = self._payload()
                # best.pt first: a kill between the two writes then leaves last.pt one epoch
                # behind, and the rerun repeats that epoch, instead of a last.pt ahead of best.pt.
                if improved:
                    save_checkpoint(self.best_path, payload)
                save_checkpoint(self.last_path, payload)
                logger.info(
                    "epoch %d/%d: loss %.4f, val mAP %.1f, CF1 %.1f, OF1 %.1f, %.2f s/batch%s",
                    epoch,
                    config.epochs,
                    train_stats["train_loss"],
                    100 * metrics["mAP"],
                    100 * metrics["CF1"],
                    100 * metrics["OF1"],
                    train_stats["batch_time"] or float("nan"),
                    " (best)" if improved else "",
                )
                if on_epoch_end is not None:
                    on_epoch_end(record)
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            if bar is not None:
                bar.close()
        return self.state
