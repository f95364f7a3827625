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
# # Evaluating an official ADD-GCN checkpoint
#
# Table 1 of the MSD-GCN paper compares its model with ADD-GCN on MS-COCO 2014. The ADD-GCN
# authors trained their model with their own code, so the direct way to place ADD-GCN in our
# evaluation is to take one of their checkpoints, convert it into our model, and score it with our
# metrics. This notebook does those three steps: convert, check, evaluate. The converter maps each
# official tensor onto our ResNet-101 ADD-GCN and reorders the classes from the official
# alphabetical order to COCO's category-id order. The test suite checks that the converted model
# reproduces the official forward pass.
#
# **With the default parameters, no official checkpoint is used.** None is available on this
# machine, so the notebook builds a checkpoint with random values in the official layout and
# evaluates that. The numbers it prints then only show that the path runs end to end, and they
# are no measurement of ADD-GCN.

# %% tags=["parameters"]
official_checkpoint = None  # path of an official ADD-GCN .pth; None builds a random-valued one
layout_file = "../../shared/data/official-layouts/add-gcn-resnet101-80.json"  # used when None above
random_seed = 0  # seed of the random-valued checkpoint
dataset = "coco-subset"  # "coco-subset" or "coco2014" (80 classes); "voc2007" for a VOC checkpoint
data_root = "../../shared/data/coco-subset"  # relative to this notebook's folder
split = "val"  # "val" for the COCO datasets, "test" for voc2007
image_size = 96  # square test size in pixels; None keeps the checkpoint's own 448 px
max_images = None  # evaluate the first N images only; None for the whole split
batch_size = 8
device = "cpu"
work_dir = "../results/scratch/official_checkpoint"  # where the checkpoints are written

# %% [markdown]
# The library logs each step; everything below calls the `msdgcn` package.

# %%
import logging
from pathlib import Path

import pandas as pd
import torch

from msdgcn.convert import convert_checkpoint, write_random_official_checkpoint
from msdgcn.predict import evaluate_checkpoint, load_model_from_checkpoint, table1_row

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True)
torch.manual_seed(random_seed)
work_dir = Path(work_dir)

# %% [markdown]
# ## The official checkpoint
#
# A real checkpoint is used as given. Without one, a checkpoint with the official format and
# every official tensor name and shape is written, filled with random values.

# %%
uses_real_checkpoint = official_checkpoint is not None
if uses_real_checkpoint:
    source = Path(official_checkpoint)
else:
    source = write_random_official_checkpoint(
        layout_file, work_dir / "random_official.pth", seed=random_seed
    )
print("official checkpoint:", source, "(real)" if uses_real_checkpoint else "(random values)")

# %% [markdown]
# ## Conversion
#
# The converter fails on any official tensor it cannot place, on any tensor of our model that
# stays empty, and on any shape mismatch. The converted file records the source file, its SHA-256
# and the official test transform.

# %%
converted_path = work_dir / "converted.pt"
payload = convert_checkpoint(source, converted_path)
pd.Series(
    {
        "source": payload["source"]["path"],
        "source SHA-256": payload["source"]["sha256"],
        "source epoch": payload["source"]["epoch"],
        "official best mAP (from the checkpoint)": payload["source"]["best_score"],
        "backbone": payload["config"]["model"]["backbone"],
        "classes": len(payload["class_names"]),
        "official test transform": "resize to {} x {} px, mean {}, std {}".format(
            *payload["test_transform"]["resize"],
            payload["test_transform"]["mean"],
            payload["test_transform"]["std"],
        ),
    }
).to_frame("value")

# %% [markdown]
# ## Loading through the normal path
#
# The converted file is read the way every checkpoint of ours is read, and the model is rebuilt
# by `build_model`. The table shows the first classes in our order.

# %%
loaded = load_model_from_checkpoint(converted_path, device)
print(f"{type(loaded.model.backbone).__name__} + {type(loaded.model.head).__name__}, "
      f"test size {loaded.image_size} px, mean {loaded.mean}, std {loaded.std}")
pd.DataFrame({"class": loaded.class_names[:10]})

# %% [markdown]
# ## Table 1 row
#
# mAP, then CP, CR, CF1, OP, OR and OF1 over all labels (threshold 0.5) and over each image's
# top-3 labels, in percent, computed by `msdgcn.metrics` on the chosen split.

# %%
metrics, probabilities, data = evaluate_checkpoint(
    loaded, dataset, data_root, split,
    image_size=image_size, max_images=max_images, batch_size=batch_size, device=device,
)  # fmt: skip
size_used = image_size or loaded.image_size
label = "official ADD-GCN checkpoint" if uses_real_checkpoint else "random values (meaningless)"
row = pd.DataFrame([table1_row(metrics)], index=[label]).round(1)
print(
    f"{dataset} {split}: {len(data)} images at {size_used} px; mAP over "
    f"{metrics['protocol']['num_classes_in_mAP']} of {metrics['protocol']['num_classes']} classes "
    "(classes without a positive label are left out)"
)
row

# %% [markdown]
# With the default parameters this row comes from random weights and a reduced image size, so it
# is no measurement of ADD-GCN. With a real checkpoint, `dataset="coco2014"`, `split="val"` and
# `image_size=None` (the official 448 px), the row is comparable to the ADD-GCN row of Table 1.
