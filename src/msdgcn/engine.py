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

from . import distributed
from .data import MultiLabelDataset, training_targets
from .distributed import SINGLE_PROCESS, DistributedContext
from .metrics import multilabel_metrics
from .profiles import OptimConfig, RunConfig, field_default
from .provenance import git_state

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1

# Autocast data type of each `precision` run parameter; fp32 runs without autocast.
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


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


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Return the autocast context of a precision: "fp32" (none), "bf16" or "fp16".

    torch 2.14 autocasts to bfloat16 and float16 on CUDA and on the CPU alike.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {sorted(PRECISIONS)}")
    if PRECISIONS[precision] is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=PRECISIONS[precision])


def forward_loss(
    model: nn.Module,
    criterion: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    precision: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the forward pass under the precision's autocast and return (logits, loss) in float32.

    The loss is computed outside autocast on float32 logits: in float16, exp(x) overflows for
    x > 11, and a loss reduced in half precision loses digits.
    """
    with autocast(images.device, precision):
        logits = model(images)
    logits = logits.float()
    return logits, training_loss(criterion, logits, targets)


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


def _convert_tensors(value: Any, to_numpy: bool) -> Any:
    """Turn every tensor in nested dicts and lists into a numpy array, or every array back."""
    if isinstance(value, dict):
        return {key: _convert_tensors(item, to_numpy) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_convert_tensors(item, to_numpy) for item in value)
    if to_numpy and isinstance(value, torch.Tensor):
        return value.numpy()
    if not to_numpy and isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    return value


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


def load_checkpoint(path: Path, advice: str = "delete it, or rerun with --no-resume") -> dict[str, Any]:
    """Load a checkpoint of ours. A file that needs arbitrary code to unpickle is rejected, not run.

    `advice` completes the error for an unreadable file: what the caller's user can do.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    payload = _load_tensors_only(path, "checkpoint", advice)
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
    rank: int = 0,
    world_size: int = 1,
    min_images_per_rank: int = 1,
) -> DataLoader:
    """Build a DataLoader. A training loader visits a permutation drawn from `seed`.

    `skip_batches` leaves out the first batches of that permutation without loading them, which
    is how an epoch interrupted after that many steps continues. `batch_size` is the global
    batch: with `world_size` > 1 the loader yields this rank's slice of each global batch (see
    `distributed.epoch_batches`), so the shard is a function of seed, epoch, rank and world size.
    """
    generator = torch.Generator()
    generator.manual_seed(seed)
    if not train:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=num_workers,
            generator=generator,
            worker_init_fn=_seed_worker,
            pin_memory=pin_memory,
        )
    order = torch.randperm(len(dataset), generator=generator).tolist()
    batches = distributed.epoch_batches(
        order, batch_size, skip_batches, rank, world_size, min_images_per_rank
    )
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=num_workers,
        generator=generator,
        worker_init_fn=_seed_worker,
        pin_memory=pin_memory,
        persistent_workers=False,
    )


# Largest change of a sigmoid probability from fp32 that the bf16 evaluation forward is allowed,
# so a predicted label (probability >= 0.5) may flip only where fp32 gives 0.35 to 0.65.
# Measured with EfficientNet-Lite0 on CPU: at most 0.12 on 12 coco-subset images at 160 px
# (tests/test_fast_paths.py); benchmarks/speed.py reports the measured change for each run.
# NOTE: on a trained head-e checkpoint (124 coco-subset images, 224 px) one probability of 9,920
# moved by 0.28, so this bound held for the labels there but not for every probability.
BF16_PROBABILITY_TOLERANCE = 0.15


def predict(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    memory_format: torch.memory_format = torch.contiguous_format,
    precision: str = "fp32",
) -> np.ndarray:
    """Return sigmoid probabilities (N, C) in dataset order, as float64.

    `memory_format` applies to the input batches only. Convert the model with
    `model.to(memory_format=...)` as well, or its convolutions convert every layer's input back.
    With `precision` "bf16" or "fp16" the forward runs under autocast (see `autocast`),
    and the sigmoid is taken of the logits cast back to float32.
    """
    model.eval()
    scores = []
    # no_grad rather than inference_mode: under inference_mode autocast casts every weight again on
    # every batch, while under no_grad one context caches the casts for the whole pass (torch 2.14).
    with torch.no_grad(), autocast(device, precision):
        for images, _, _ in loader:
            logits = model(images.to(device, non_blocking=True, memory_format=memory_format))
            scores.append(torch.sigmoid(logits.float()).cpu())
    return torch.cat(scores).numpy().astype(np.float64)


def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    memory_format: torch.memory_format = torch.contiguous_format,
    precision: str = "fp32",
) -> tuple[dict[str, Any], np.ndarray]:
    """Score every image of the loader's dataset and compute the multi-label metrics."""
    dataset: MultiLabelDataset = loader.dataset
    scores = predict(model, loader, device, memory_format, precision=precision)
    metrics = multilabel_metrics(scores, dataset.targets, dataset.class_names)
    return metrics, scores


class Trainer:
    """Train one run with evaluation every epoch, `last`/`best` checkpoints and exact resume.

    Under torchrun (`context.world_size` > 1) every rank builds the same Trainer; the model is
    wrapped in DistributedDataParallel, each rank trains on its slice of every global batch,
    evaluation is split over the ranks and gathered, and only rank 0 writes checkpoints.
    """

    def __init__(
        self,
        config: RunConfig,
        model: nn.Module,
        train_set: MultiLabelDataset,
        val_set: MultiLabelDataset,
        checkpoint_dir: Path,
        progress: bool = True,
        context: DistributedContext = SINGLE_PROCESS,
    ):
        self.config = config
        self.context = context
        distributed.check_global_batch(config.batch_size, context.world_size)
        self.device = context.device(config.device)
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        autocast(self.device, config.precision)  # rejects an unknown precision before any work
        if config.threads:
            torch.set_num_threads(config.threads)
        if config.deterministic:
            use_deterministic_kernels()
        self.model = model.to(self.device, memory_format=self.memory_format)
        # The DDP wrapper is built before the optimizer because it converts BatchNorm to
        # SyncBatchNorm on CUDA. self.model stays the plain module that checkpoints store.
        self.train_model = distributed.wrap_model(self.model, context, self.device)
        self.eval_model = self.model
        if config.compile:
            self.train_model = torch.compile(self.train_model)
            self.eval_model = torch.compile(self.model)
        # Without SyncBatchNorm (CPU processes) a rank's slice must hold two images for BatchNorm.
        has_batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules())
        self.min_images_per_rank = 2 if context.enabled and self.device.type != "cuda" and has_batchnorm else 1
        self.train_set = train_set
        self.val_set = val_set
        self.checkpoint_dir = Path(checkpoint_dir)
        self.progress = progress and context.is_main
        self.criterion = build_loss(config.optim.loss)
        self.optimizer = build_optimizer(self.model, config.optim)
        self.scheduler = build_scheduler(self.optimizer, config.optim)
        # Loss scaling keeps small float16 gradients from flushing to zero; it is a no-op otherwise.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.precision == "fp16")
        self.state = TrainState()
        self.partial_epoch: dict[str, Any] | None = None  # an epoch interrupted mid-way, from resume()
        self.stop_signal: int | None = None
        # The code version is read when training starts, not when the result files are written.
        self.code_version = git_state()
        self.val_loader = make_loader(
            val_set, config.batch_size, train=False, num_workers=config.num_workers
        )
        start, stop = distributed.shard_bounds(len(val_set), context.rank, context.world_size)
        self.val_shard = range(start, stop)

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
            "scaler": self.scaler.state_dict(),
            "epoch": self.state.epoch,
            "best_mAP": self.state.best_mAP,
            "best_epoch": self.state.best_epoch,
            "history": self.state.history,
            "rng": _rng_state(),
            "world_size": self.context.world_size,
            "config": self.config.to_dict(),
            "class_names": list(self.train_set.class_names),
        }

    def _save(self, path: Path, payload: dict[str, Any]) -> None:
        """Write a checkpoint from rank 0 only; the other ranks wait until it is in place."""
        if self.context.is_main:
            save_checkpoint(path, payload)
        self.context.barrier()

    def resume(self) -> bool:
        """Continue from `last.pt` when it exists, and return whether a checkpoint was loaded."""
        if not self.last_path.exists():
            return False
        payload = load_checkpoint(self.last_path)
        saved = payload["config"]
        # Every parameter that changes the computation must match; epochs may grow (longer run).
        compared = ("variant", "profile", "dataset", "model", "optim", "image_size", "batch_size", "seed",
                    "max_train_images", "max_val_images", "difficult_as", "skip_unreadable_images",
                    "train_split", "val_split", "precision")  # fmt: skip
        if payload["epoch"] > self.config.epochs:
            raise ValueError(
                f"{self.last_path} has already trained {payload['epoch']} epochs, more than the "
                f"{self.config.epochs} requested; request at least {payload['epoch']} epochs, or "
                "choose another output folder"
            )
        current = self.config.to_dict()
        for key in compared:
            # A checkpoint written before a parameter existed ran with its default value.
            stored = saved.get(key, field_default(key))
            if stored != current.get(key):
                raise ValueError(
                    f"{self.last_path} was written by a run with {key}={stored!r}, "
                    f"this run has {key}={current.get(key)!r}; delete the checkpoint "
                    "folder or choose another output folder"
                )
        if payload["class_names"] != list(self.train_set.class_names):
            raise ValueError(f"{self.last_path} was trained on other classes than this dataset")
        # A run saved from inside DataParallel or DDP prefixes every key with "module.".
        self.model.load_state_dict({k.removeprefix("module."): v for k, v in payload["model"].items()})
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        if "scaler" in payload:
            self.scaler.load_state_dict(payload["scaler"])
        self.state = TrainState(
            epoch=payload["epoch"],
            best_mAP=payload["best_mAP"],
            best_epoch=payload["best_epoch"],
            history=list(payload["history"]),
        )
        self.partial_epoch = payload.get("partial_epoch")
        self._restore_rng(payload)
        if self.partial_epoch:
            logger.info(
                "resumed %s in epoch %d after step %d",
                self.last_path, self.partial_epoch["epoch"], self.partial_epoch["step"],
            )  # fmt: skip
        else:
            logger.info("resumed %s at epoch %d", self.last_path, self.state.epoch)
        return True

    def _restore_rng(self, payload: dict[str, Any]) -> None:
        """Restore this rank's random state; exact only when the world size is unchanged."""
        per_rank = payload.get("rng_ranks")
        if per_rank is not None and len(per_rank) == self.context.world_size:
            _set_rng_state(per_rank[self.context.rank])
            return
        _set_rng_state(payload["rng"])
        if self.partial_epoch and payload.get("world_size", 1) != self.context.world_size:
            # The global batches are the same for any world size; the augmentation draws are not.
            logger.warning(
                "%s was written by %d processes, this run has %d: the rest of epoch %d uses the same "
                "images but other random augmentations",
                self.last_path, payload.get("world_size", 1), self.context.world_size,
                self.partial_epoch["epoch"],
            )  # fmt: skip

    # -- training ----------------------------------------------------------------------------
    def _train_loader(self, epoch: int, skip_batches: int = 0, num_workers: int | None = None) -> DataLoader:
        return make_loader(
            self.train_set,
            self.config.batch_size,
            train=True,
            num_workers=self.config.num_workers if num_workers is None else num_workers,
            seed=epoch_seed(self.config.seed, epoch),
            pin_memory=self.device.type == "cuda",
            skip_batches=skip_batches,
            rank=self.context.rank,
            world_size=self.context.world_size,
            min_images_per_rank=self.min_images_per_rank,
        )

    def train_step(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[float, int, bool]:
        """Take one optimizer step on this rank's slice of a global batch.

        Returns the mean loss over the global batch, its image count, and whether any rank had
        received a stop signal when the step began (always False in a single process). In a
        distributed run one all-reduce sums the loss, the count of loss entries and the stop
        flags of all ranks, so that every rank stops after the same step. Each rank's loss is then rescaled so that
        DDP's mean of the gradients equals the gradient of the global batch's mean loss, also when
        the ranks hold unequal slices.
        """
        logits, loss = forward_loss(self.train_model, self.criterion, images, targets, self.config.precision)
        stop = False
        total_loss, images_seen = loss, images.shape[0]
        if self.context.enabled:
            # training_loss averages over the entries whose target is not -1.
            entries = float((targets >= 0).sum())
            loss_sum, entries_sum, images_seen, stops = distributed.all_sum(
                [loss.item() * entries, entries, float(images.shape[0]), float(self.stop_signal is not None)],
                self.context,
                self.device,
            )
            loss = loss * (entries * self.context.world_size / max(entries_sum, 1.0))
            total_loss = torch.tensor(loss_sum / max(entries_sum, 1.0))
            stop = stops > 0
        if not torch.isfinite(total_loss):
            raise NonFiniteLossError(f"loss became {total_loss.item()}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config.optim.grad_clip_norm:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optim.grad_clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(total_loss.item()), int(images_seen), stop

    def train_one_epoch(self, epoch: int, bar: tqdm | None) -> dict[str, float]:
        """Train one epoch, or the rest of the interrupted epoch stored in `self.partial_epoch`.

        Continuing an interrupted epoch is exact with `num_workers=0`. With worker processes the
        batches are the same, but each worker restarts its augmentation random stream.
        """
        config = self.config
        partial = self.partial_epoch if self.partial_epoch and self.partial_epoch["epoch"] == epoch else None
        self.partial_epoch = None
        if partial is None:
            seed_everything(rank_seed(epoch_seed(config.seed, epoch), self.context.rank))
            partial = {"epoch": epoch, "step": 0, "loss_sum": 0.0, "seen": 0, "timer_total": 0.0, "timer_count": 0, "seconds": 0.0}
        loader = self._train_loader(epoch, skip_batches=partial["step"])
        self.train_model.train()
        timer = BatchTimer(self.device)
        timer.total, timer.count = partial["timer_total"], partial["timer_count"]
        loss_sum, seen = partial["loss_sum"], partial["seen"]
        epoch_start = time.perf_counter() - partial["seconds"]
        timer.start()
        for step, (images, targets, _) in enumerate(loader, start=partial["step"] + 1):
            images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
            targets = training_targets(targets, config.difficult_as).to(self.device)
            try:
                loss, batch_images, stop = self.train_step(images, targets)
            except NonFiniteLossError as error:
                raise NonFiniteLossError(
                    f"{error} at epoch {epoch}, step {step}; the last good checkpoint is "
                    f"{self.last_path}. Lower the learning rate or check the data."
                ) from None
            timer.stop()
            loss_sum += loss * batch_images
            seen += batch_images
            if bar is not None:
                rate = seen / (time.perf_counter() - epoch_start)
                bar.set_postfix(epoch=epoch, loss=f"{loss:.4f}", img_s=f"{rate:.1f}")
                bar.update(1)
            _pause_for_tests("MSDGCN_TEST_STEP_DELAY")
            if stop or (self.stop_signal is not None and not self.context.enabled):
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
        """Write `last.pt` in the middle of an epoch and raise TrainingInterrupted on every rank."""
        payload = self._payload()
        payload["partial_epoch"] = partial
        if self.context.enabled:
            # all_gather_object cannot unpickle tensors in torch 2.14, so they travel as numpy arrays.
            states = distributed.gather_objects(_convert_tensors(_rng_state(), to_numpy=True), self.context)
            payload["rng_ranks"] = [_convert_tensors(state, to_numpy=False) for state in states]
        self._save(self.last_path, payload)
        # Under torchrun a rank may stop because another rank received the signal.
        signal_number = self.stop_signal or signal.SIGTERM
        name = signal.Signals(signal_number).name
        message = (
            f"{name} received: stopped at epoch {partial['epoch']}, step {partial['step']}, and wrote "
            f"{self.last_path}. Run the same command again to continue from there."
        )
        if self.context.is_main:
            logger.warning(message)
        raise TrainingInterrupted(message, signal_number)

    def _request_stop(self, signal_number: int, frame: Any) -> None:
        # NOTE: the request is acted on after a training step only. A signal that arrives during
        # an evaluation waits for it, and under torchrun that can outlast --shutdown-timeout.
        self.stop_signal = signal_number

    def evaluate(self) -> tuple[dict[str, Any], np.ndarray]:
        """Score the validation set and compute its metrics; under torchrun, on every rank.

        Each rank scores a contiguous shard of the images, and the gathered scores hold exactly
        one row per image, in dataset order.
        """
        config = self.config
        if not self.context.enabled:
            return evaluate(self.eval_model, self.val_loader, self.device, self.memory_format, config.precision)
        distributed.broadcast_buffers(self.model, self.context)
        local = np.zeros((0, len(self.val_set.class_names)))
        if len(self.val_shard):
            loader = make_loader(
                torch.utils.data.Subset(self.val_set, self.val_shard),
                config.batch_size,
                train=False,
                num_workers=config.num_workers,
            )
            local = predict(self.eval_model, loader, self.device, self.memory_format, config.precision)
        rows = torch.from_numpy(local).to(self.device)
        scores = distributed.gather_rows(rows, len(self.val_set), self.context).cpu().numpy()
        metrics = multilabel_metrics(scores, self.val_set.targets, self.val_set.class_names)
        return metrics, scores

    def fit(self, on_epoch_end: Callable[[dict[str, Any]], None] | None = None) -> TrainState:
        """Train until `config.epochs`, evaluating on the validation set after every epoch."""
        config = self.config
        steps_per_epoch = len(self._train_loader(epoch=1, num_workers=0))
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
                metrics, _ = self.evaluate()
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
                    self._save(self.best_path, payload)
                self._save(self.last_path, payload)
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


def rank_seed(seed: int, rank: int) -> int:
    """Return the augmentation seed of one rank: `seed` itself on rank 0, a distinct one elsewhere."""
    if rank == 0:
        return seed
    return (seed * 1_000_033 + 7919 * rank) % (2**31)

