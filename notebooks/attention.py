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
# # Attention maps and graphs
#
# ADD-GCN, and MSD-GCN after it, classifies an image in two steps. SAM computes one
# activation map $M_c$ per class and pools the transformed feature map under $\sigma(M_c)$
# into a category representation $v_c$ (eq. 1). D-GCN then passes messages between the
# category representations, first over a static graph $A_s$ learned once for the dataset, then
# over a dynamic graph $A_d = \sigma(W_A H')$ estimated for each image (eq. 2). This notebook
# shows those tensors for a trained model on real validation images: the attention map of every
# predicted class, and the image's $A_d$ next to $A_s$ over its predicted and true classes. It
# ends by asking which class pairs the dynamic graph links most across the validation split,
# and whether those are the pairs that co-occur in the training labels.
#
# Every map and matrix shown is a tensor returned by `model.forward_details`, not recomputed.
# For a model without SAM (the GAP baseline), the notebook shows class activation maps, the
# classifier applied at every position of the feature map, and has no graph to show.

# %% tags=["parameters"]
checkpoint = "../results/cpu/coco-subset/head-e/checkpoints/best.pt"  # relative to this notebook's folder
data_root = None  # None reads the images from the data_root stored in the checkpoint's run parameters
image_ids = None  # validation image ids to show; None: the first num_images with 2+ labels and a predicted class
num_images = 4
threshold = 0.5  # probability from which a class counts as predicted
max_classes = 6  # at most this many predicted classes per image, the most probable
top_pairs = 15  # rows of the table of most strongly linked class pairs
output_dir = "../results/scratch/attention"  # where the PNG figures go; the report passes results/<profile>/attention

# %% [markdown]
# The checkpoint stores the run's parameters, so the model is rebuilt as it was trained
# (`run.build_run_model`) and the images pass through the run's own evaluation transform
# (`run.build_run_data`): a resize of the whole image to a square, no crop. A missing
# checkpoint stops here with the command that trains it.

# %%
import logging
from pathlib import Path

import numpy as np
from IPython.display import display

from msdgcn import attention, figures

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True)
figures.set_style()
figure_dir = Path(output_dir)
figure_dir.mkdir(parents=True, exist_ok=True)

run = attention.load_trained_run(checkpoint)
train_set, val_set = attention.load_run_data(run.config, data_root)
caption = f"Run: {run.describe()}; {len(train_set)} training and {len(val_set)} validation images."
print(caption)

# %% [markdown]
# One pass of `forward_details` over the whole validation split gives the probabilities, the
# activation maps and, for the ADD-GCN head, $A_d$ of every image and the learned $A_s$.
# The analysis at the end uses all of them. The figures show `image_ids` when given, and
# otherwise the first `num_images` validation images that have at least two true labels and at
# least one predicted class.

# %%
details = attention.compute_details(run.model, val_set)
rows = attention.select_images(val_set, details, image_ids, num_images, threshold)
shapes = {"probabilities": details.probabilities.shape, "activation maps": details.activation_maps.shape}
if details.dynamic_adjacency is not None:
    shapes.update({"A_d": details.dynamic_adjacency.shape, "A_s": details.static_adjacency.shape})
print(f"head: {run.head}; shapes: {shapes}")
print("images shown:", [val_set.image_ids[row] for row in rows])

# %% [markdown]
# ## Attention of each predicted class
#
# For each image, the first panel shows the photograph with its true labels. Each further panel
# overlays the attention map of one predicted class, upsampled bilinearly from the feature
# map's resolution to the image. For the ADD-GCN head that map is $\sigma(M_c)$, the weight
# SAM gives each position when it forms $v_c$, on a shared scale from 0 to 1. For the GAP head
# it is the class activation map in logit units, scaled per panel.

# %%
overlay_counts = {}
for row in rows:
    image_id = val_set.image_ids[row]
    true_names = [run.class_names[c] for c in np.flatnonzero(val_set.targets[row] == 1)]
    overlays = attention.attention_overlays(details, row, run.class_names, threshold, max_classes)
    overlay_counts[image_id] = len(overlays)
    title = f"image {image_id}\ntrue: {', '.join(true_names) or 'none'}"
    figure_caption = (
        f"Image {image_id} of the {val_set.split} split; classes with p >= {threshold} "
        f"(at most {max_classes}). {caption}"
    )
    fig = attention.plot_attention_grid(
        val_set.read_image(row), overlays, title, figure_caption, run.head, figure_dir / f"attention_{image_id}.png"
    )
print("predicted classes shown per image:", overlay_counts)

# %% [markdown]
# ## Dynamic and static adjacency of each image
#
# The heat maps restrict the graphs to the image's predicted and true classes, in the same
# order on both axes. Rows are the receiving class and columns the sending class: in D-GCN,
# class $i$ receives $\sum_j A_s[i, j]\, v_j$ from the static graph, while class $j$ receives
# $\sum_i A_d[i, j]\, h_i$ from the dynamic graph (as in the ADD-GCN reference code), so the
# left map shows $A_d$ transposed and the right map $A_s$ as stored. $A_d$ is a sigmoid
# output and is coloured on a log scale; $A_s$ is an unconstrained weight.

# %%
if details.dynamic_adjacency is None:
    print(f"the {run.head} head has no graph; this section and the next apply to the ADD-GCN head only")
else:
    for row in rows:
        image_id = val_set.image_ids[row]
        true_classes = np.flatnonzero(val_set.targets[row] == 1).tolist()
        view = attention.adjacency_view(details, row, true_classes, run.class_names, threshold, max_classes)
        fig = attention.plot_adjacency(
            view, f"image {image_id}", f"Image {image_id}. {caption}", figure_dir / f"adjacency_{image_id}.png"
        )

# %% [markdown]
# ## Which class pairs does the dynamic graph link?
#
# Averaging $A_d$ over the validation images gives one weight per ordered class pair. The table
# takes each unordered pair $\{a, b\}$, averages its two directions into "mean A_d" and lists the
# pairs with the largest value, with the number of training images labelled with both classes.
# Spearman's rank correlation between mean $A_d$ and that co-occurrence count, over all pairs,
# measures whether the dynamic graph links the classes that appear together in the labels.
# ML-GCN builds its graph from exactly that statistic; ADD-GCN learns $A_d$ without it. The
# p-value treats the pairs as independent, which they are not (each class is in $C - 1$ pairs),
# so it is a rough guide only. The two lists after it average $A_d$ over the other classes:
# what each class receives (a column of $A_d$) and what it sends (a row).

# %%
if details.dynamic_adjacency is not None:
    mean_dynamic = details.dynamic_adjacency.mean(axis=0)
    cooccurrence = attention.label_cooccurrence(train_set.targets)
    pairs = attention.linked_pairs(mean_dynamic, cooccurrence, run.class_names)
    correlation = attention.rank_correlation(pairs)
    off_diagonal = mean_dynamic[~np.eye(len(run.class_names), dtype=bool)]
    print(
        f"mean A_d over {len(val_set)} validation images and {correlation['pairs']} class pairs: "
        f"off-diagonal mean {off_diagonal.mean():.2e}, median {np.median(off_diagonal):.2e}, "
        f"max {off_diagonal.max():.2e}"
    )
    print(
        f"Spearman rank correlation between mean A_d and training co-occurrence: "
        f"rho = {correlation['rho']:.3f} (p = {correlation['p_value']:.2g}, {correlation['pairs']} pairs, "
        f"{int((pairs['co-occurrence'] > 0).sum())} of them co-occur at least once)"
    )
    strengths = attention.node_strengths(mean_dynamic, run.class_names)
    print("classes that receive the most (mean A_d into them):", ", ".join(
        f"{name} {value:.1e}" for name, value in strengths["received"].head(3).items()))
    print("classes that send the most (mean A_d out of them):", ", ".join(
        f"{name} {value:.1e}" for name, value in strengths["sent"].sort_values(ascending=False).head(3).items()))
    display_pairs = pairs.head(top_pairs).copy()
    for column in ("mean A_d", "A_d a to b", "A_d b to a"):
        display_pairs[column] = display_pairs[column].map("{:.2e}".format)
    display(display_pairs)

# %% [markdown]
# A small $A_d$ everywhere means the dynamic graph passes little between category
# representations, and D-GCN's output then rests on SAM's $v_c$ and the static graph. Whether
# that happens depends on the run. The statistics printed above belong to this checkpoint at
# this run's scale. They show nothing about MSD-GCN as published, which trains depth-101
# backbones for 50 epochs on the full MS-COCO 2014 and PASCAL VOC 2007.
