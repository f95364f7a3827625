# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Training one variant
#
# This notebook trains one row of the paper's ablation (Table 3) or one baseline, evaluates it on
# the validation split after every epoch, and writes the result files that the tables read. The
# batch command (`python -m msdgcn batch`) runs it once per variant with papermill and keeps the
# executed copy beside the results; opened in Jupyter, it trains the default variant below.

# %% tags=["parameters"]
variant = "head-e"  # Table 3 row a-e, "gap", "gmp", "ml-gcn", or a head-check row such as "head-e"
profile = "cpu"  # "paper" (GPUs), "cpu" (this machine), "smoke" (tests)
dataset = "coco-subset"  # "coco-subset", "coco-subset-voc20", "coco2014", "voc2007"
data_root = "../../shared/data/coco-subset"  # relative to this notebook's folder
results_root = "../results/scratch"  # the batch command passes ../results
image_size = None  # None keeps the profile's value for this and every parameter below
epochs = None
batch_size = None
learning_rate = None  # head learning rate; the backbone gets it times backbone_lr_mult
seed = None
device = None  # "cpu", "cuda", "cuda:1", ...
num_workers = None
threads = None  # torch intra-op threads (the batch command sets cores / jobs)
channels_last = None  # NHWC memory format for the backbone
precision = None  # "fp32", or autocast to "bf16" or "fp16" (with loss scaling)
compile = None  # True compiles the model with torch.compile
concurrent_runs = None  # runs sharing this machine, recorded because batch times depend on it
max_train_images = None
max_val_images = None
init_weights = None  # weights-only start for fine-tuning (for example VOC from a COCO model)
skip_unreadable_images = None  # True drops training images that fail to decode, listed in the results
deterministic = None  # True allows deterministic GPU kernels only
resume = True  # continue from checkpoints/last.pt when it exists
nproc_per_node = 1  # 1 trains in this kernel; N > 1 launches N processes under torchrun (one per GPU)
progress = True  # one progress bar over all batches of the run

# %% [markdown]
# The library logs one line per epoch; the imports below are the shared `msdgcn` module that every
# notebook and the batch command use.

# %%
import logging
import time
from pathlib import Path

import pandas as pd
import torch

from msdgcn.engine import Trainer
from msdgcn.profiles import resolve_run
from msdgcn.run import build_run_data, build_run_model, finish_run, launch_torchrun, run_dir_for

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True)
pd.set_option("display.max_rows", 100)  # the per-class table lists up to 80 classes
notebook_start = time.perf_counter()

# %% [markdown]
# ## Parameters of the run
#
# The profile fixes the scale, the variant switches the paper's modules on, and any parameter set
# above overrides both. The table lists the resolved values, which the results file stores too.

# %%
config = resolve_run(
    profile,
    variant,
    dataset,
    data_root,
    overrides=dict(
        image_size=image_size,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        device=device,
        num_workers=num_workers,
        threads=threads,
        channels_last=channels_last,
        precision=precision,
        compile=compile,
        concurrent_runs=concurrent_runs,
        max_train_images=max_train_images,
        max_val_images=max_val_images,
        init_weights=init_weights,
        skip_unreadable_images=skip_unreadable_images,
        deterministic=deterministic,
        optim=dict(lr=learning_rate),
    ),
)
run_dir = run_dir_for(results_root, config)
torch.manual_seed(config.seed)
print(config.description)
pd.json_normalize(config.to_dict()).T.rename(columns={0: "value"})

# %% [markdown]
# ## Data
#
# Both splits are read with classes in the dataset's own order (COCO category ids, VOC's
# alphabetical list). Training images go through the official multi-scale crop and flip,
# validation images through a square resize.

# %%
train_set, val_set = build_run_data(config)
pd.DataFrame(
    {
        "images": [len(train_set), len(val_set)],
        "classes": [len(train_set.class_names), len(val_set.class_names)],
        "labels per image": [
            float((train_set.targets == 1).sum(1).mean()),
            float((val_set.targets == 1).sum(1).mean()),
        ],
    },
    index=[config.train_split, config.val_split],
)

# %% [markdown]
# ## Model
#
# The backbone's last-stage feature map feeds the head: SAM and D-GCN for ADD-GCN variants, global
# pooling and a linear layer for the GAP and GMP baselines, and for ML-GCN global max pooling with
# classifiers from a GCN over label embeddings, whose correlation matrix counts the training labels.

# %%
model = build_run_model(config, train_set.class_names, train_set.targets, results_root)
pd.DataFrame(
    {
        "parameters": [
            sum(p.numel() for p in model.backbone.parameters()),
            sum(p.numel() for p in model.head.parameters()),
        ]
    },
    index=[f"backbone ({config.model['backbone']})", f"head ({config.model['head']})"],
)

# %% [markdown]
# ## Training
#
# Each epoch ends with an evaluation on the validation split and writes `checkpoints/last.pt`
# (and `best.pt` when the mAP improves), so a stopped run continues where it left off. With
# `nproc_per_node` > 1 the same steps run under torchrun, in one DistributedDataParallel process
# per GPU that each take an equal slice of the global batch of `batch_size` images; this notebook
# then reads back the result files that process 0 wrote.

# %%
if nproc_per_node == 1:
    trainer = Trainer(config, model, train_set, val_set, run_dir / "checkpoints", progress=progress)
    if resume and trainer.resume():
        print(f"resumed after epoch {trainer.state.epoch}")
    history = pd.DataFrame(trainer.fit().history).set_index("epoch")
else:
    result = launch_torchrun(config, results_root, nproc_per_node, resume=resume)
    history = pd.read_csv(run_dir / "history.csv").set_index("epoch")
history[["train_loss", "batch_time", "mAP", "CF1", "OF1"]]

# %% [markdown]
# ## Result of the best epoch
#
# The best checkpoint is evaluated once more and the result files are written (under torchrun,
# that already happened in the launched processes). Metrics are fractions in the files and
# percent here.

# %%
if nproc_per_node == 1:
    result = finish_run(config, trainer, run_dir, time.perf_counter() - notebook_start)
summary = {key: result["table3"][key] for key in ("mAP", "CF1", "OF1")}
summary = {key: round(100 * value, 1) for key, value in summary.items()}
summary.update(
    best_epoch=result["table3"]["best_epoch"],
    batch_time_s=round(result["table3"]["batch_time"] or float("nan"), 3),
    average_loss=round(result["table3"]["average_loss"], 4),
    seed=config.seed,
)
pd.Series(summary, name=f"{config.profile} / {config.dataset} / {config.variant}", dtype=object).to_frame()

# %% [markdown]
# Per-class average precision of the best epoch; classes without a positive in the validation
# split have none and are left out of the mAP.

# %%
per_class = pd.Series(result["metrics"]["per_class_AP"], name="AP", dtype=float).mul(100).round(1)
print(f"classes without positives: {result['metrics']['classes_without_positives']}")
per_class.sort_values(ascending=False).to_frame().rename_axis("class")
