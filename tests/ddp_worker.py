"""A training process for tests/test_distributed.py, run under torchrun or imported by the test.

Under torchrun each rank trains one run with the Trainer, evaluates it, writes the result files
from rank 0, and saves what the test checks into the output folder: its gathered validation
scores and the paths it wrote.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from msdgcn import engine, run
from msdgcn.data import build_test_transform
from msdgcn.distributed import SINGLE_PROCESS, destroy_process_group, init_process_group
from msdgcn.engine import Trainer
from msdgcn.profiles import RunConfig


def build_trainer(config: RunConfig, checkpoint_dir: Path, context=SINGLE_PROCESS) -> Trainer:
    """Build a Trainer whose training images skip the random crop and flip.

    Each rank draws its own augmentations, so with them one process and two processes would train
    on different pixels. Without them, both train on the same tensors.
    """
    torch.manual_seed(config.seed)
    train_set, val_set = run.build_run_data(config)
    mean, std = run.normalisation(config.model)
    train_set = train_set.with_transform(build_test_transform(config.image_size, mean, std))
    model = run.build_run_model(config, train_set.class_names)
    return Trainer(config, model, train_set, val_set, checkpoint_dir, progress=False, context=context)


def record_writes(written: list[str]) -> None:
    """Append the path of every checkpoint and result file this process writes to `written`."""
    save_checkpoint = engine.save_checkpoint
    write_result_files = run._write_result_files

    def save_and_record(path, payload):
        written.append(str(path))
        save_checkpoint(path, payload)

    def write_and_record(run_dir, *args):
        written.append(str(run_dir))
        write_result_files(run_dir, *args)

    engine.save_checkpoint = save_and_record
    run._write_result_files = write_and_record


def main(output: Path) -> None:
    config = RunConfig.from_dict(json.loads((output / "config.json").read_text()))
    context = init_process_group(config.device)
    written: list[str] = []
    record_writes(written)
    trainer = build_trainer(config, output / "run" / "checkpoints", context)
    trainer.fit()
    run.finish_run(config, trainer, output / "run", wall_seconds=0.0)
    _, scores = trainer.evaluate()
    np.save(output / f"scores_rank{context.rank}.npy", scores)
    (output / f"written_rank{context.rank}.json").write_text(json.dumps(written))
    destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
