"""Evidence for the places where the MSD-GCN paper, the code it builds on and our code differ.

Each function computes one piece of evidence that the discrepancies notebook shows:

- `loss_comparison`: MultiLabelSoftMarginLoss and BCEWithLogitsLoss give the same value and
  gradient under mean reduction, and differ by the factor C under sum reduction.
- `sam_activation_modules` and `compare_head_layout`: our SAM applies no activation in the
  ADD-GCN configuration, and its layers have the shapes of the official state dict.
- `official_lr_schedule`, `multistep_lr_schedule` and `official_resume`: the learning-rate
  schedule and the resume logic of the official ADD-GCN trainer, simulated epoch by epoch.
- `class_order_comparison`: the alphabetical class order of ML-GCN and ADD-GCN against COCO's
  category-id order.
- `dynamic_propagation`: the D-GCN product A_d^T H of the code against A_d H of eq. (2).
- `mlgcn_correlation_paper` and `mlgcn_correlation_code`: ML-GCN's re-weighted correlation
  matrix as its README describes it and as its published `gen_A` computes it.

The official ADD-GCN code is github.com/Yejin0111/ADD-GCN (commit ecd2d24, `trainer.py`,
`models/add_gcn.py`, `data/coco.py`). ML-GCN's is github.com/megvii-research/ML-GCN (`util.py`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .models.heads import ADDGCNHead, DynamicGCN, SemanticAttention
from .models.mlgcn import correlation_matrix

# Official state-dict key of the ADD-GCN head -> our key inside `ADDGCNHead`.
OFFICIAL_HEAD_KEYS = {
    "fc.weight": "sam.class_conv.weight",
    "conv_transform.weight": "sam.transform_conv.weight",
    "conv_transform.bias": "sam.transform_conv.bias",
    "gcn.static_adj.0.weight": "dgcn.static_adjacency.weight",
    "gcn.static_weight.0.weight": "dgcn.static_weight.weight",
    "gcn.static_weight.0.bias": "dgcn.static_weight.bias",
    "gcn.conv_global.weight": "dgcn.global_conv.weight",
    "gcn.conv_global.bias": "dgcn.global_conv.bias",
    "gcn.bn_global.weight": "dgcn.global_norm.weight",
    "gcn.bn_global.bias": "dgcn.global_norm.bias",
    "gcn.bn_global.running_mean": "dgcn.global_norm.running_mean",
    "gcn.bn_global.running_var": "dgcn.global_norm.running_var",
    "gcn.bn_global.num_batches_tracked": "dgcn.global_norm.num_batches_tracked",
    "gcn.conv_create_co_mat.weight": "dgcn.adjacency_conv.weight",
    "gcn.conv_create_co_mat.bias": "dgcn.adjacency_conv.bias",
    "gcn.dynamic_weight.weight": "dgcn.dynamic_weight.weight",
    "gcn.dynamic_weight.bias": "dgcn.dynamic_weight.bias",
    "last_linear.weight": "classifier.weight",
    "last_linear.bias": "classifier.bias",
    # The identity mask that keeps the diagonal of the official Conv1d classifier. Our
    # PerClassLinear computes only that diagonal, so it needs no mask.
    "mask_mat": None,
}


# --------------------------------------------------------------------------- loss


def loss_comparison(num_samples: int = 16, num_classes: int = 80, seed: int = 0) -> dict[str, float]:
    """Compare MultiLabelSoftMarginLoss with BCEWithLogitsLoss on random logits, in float64.

    Logits are N(0, 3^2) and targets 0/1, of shape (num_samples, num_classes). Returns the
    absolute differences of the mean-reduced values and of their gradients with respect to the
    logits. It also returns the ratios BCE / soft margin of the sum-reduced values and
    gradients. Those equal C, because MultiLabelSoftMarginLoss averages over classes before it
    sums over samples.
    """
    generator = torch.Generator().manual_seed(seed)
    logits = 3.0 * torch.randn(num_samples, num_classes, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, 2, (num_samples, num_classes), generator=generator).to(torch.float64)

    def value_and_gradient(loss: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = logits.clone().requires_grad_(True)
        value = loss(inputs, targets)
        (gradient,) = torch.autograd.grad(value, inputs)
        return value.detach(), gradient

    soft_mean, soft_mean_grad = value_and_gradient(nn.MultiLabelSoftMarginLoss())
    bce_mean, bce_mean_grad = value_and_gradient(nn.BCEWithLogitsLoss())
    soft_sum, soft_sum_grad = value_and_gradient(nn.MultiLabelSoftMarginLoss(reduction="sum"))
    bce_sum, bce_sum_grad = value_and_gradient(nn.BCEWithLogitsLoss(reduction="sum"))
    return {
        "num_classes": num_classes,
        "mean_soft_margin": float(soft_mean),
        "mean_bce": float(bce_mean),
        "mean_value_gap": float((soft_mean - bce_mean).abs()),
        "mean_gradient_gap": float((soft_mean_grad - bce_mean_grad).abs().max()),
        "sum_value_ratio": float(bce_sum / soft_sum),
        "sum_gradient_ratio_min": float((bce_sum_grad / soft_sum_grad).min()),
        "sum_gradient_ratio_max": float((bce_sum_grad / soft_sum_grad).max()),
    }


# --------------------------------------------------------------------------- SAM and layouts


def sam_activation_modules(activation: str, in_channels: int = 8, num_classes: int = 3, hidden_dim: int = 4) -> list[tuple[str, str]]:
    """List (name, class name) of every submodule of our SAM built with `activation`."""
    sam = SemanticAttention(in_channels, num_classes, hidden_dim, activation)
    return [(name, type(module).__name__) for name, module in sam.named_modules() if name]


def read_layout(path: str | Path) -> dict[str, list[int]]:
    """Read a state-dict layout JSON (a `state_dict` list of {key, shape}) into key -> shape."""
    path = Path(path)
    try:
        content = json.loads(path.read_text())
        return {entry["key"]: list(entry["shape"]) for entry in content["state_dict"]}
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"cannot read the state-dict layout {path}: {error}; expected JSON with a "
                         "'state_dict' list of {'key', 'shape'} entries") from error


def compare_head_layout(path: str | Path, in_channels: int = 2048, hidden_dim: int = 1024) -> list[dict[str, Any]]:
    """Compare every non-backbone tensor of an official ADD-GCN layout with our `ADDGCNHead`.

    The head is built on the meta device, so no memory is allocated. The number of classes is
    read from the layout's `fc.weight`. Returns one row per official key: official key and
    shape, our key and shape (None for `mask_mat`), and whether the shapes agree. Our
    classifier weight is (C, D1), the official Conv1d's is (C, D1, 1), so a trailing 1 is
    ignored in the comparison.
    """
    layout = read_layout(path)
    if "fc.weight" not in layout:
        raise ValueError(f"{path} has no 'fc.weight' key, so it is not an ADD-GCN layout")
    num_classes = layout["fc.weight"][0]
    with torch.device("meta"):
        head = ADDGCNHead(in_channels, num_classes, hidden_dim)
    ours = {name: list(tensor.shape) for name, tensor in head.state_dict().items()}

    rows = []
    for official_key, official_shape in layout.items():
        if official_key.startswith("features."):
            continue  # the ResNet-101 backbone, outside the head
        our_key = OFFICIAL_HEAD_KEYS.get(official_key, "(no counterpart)")
        our_shape = ours.get(our_key) if our_key else None
        agree = None
        if our_shape is not None:
            agree = official_shape in (our_shape, our_shape + [1])
        rows.append({
            "official key": official_key,
            "official shape": official_shape,
            "our key": our_key,
            "our shape": our_shape,
            "shapes agree": agree,
        })
    return rows


# --------------------------------------------------------------------------- schedule and resume


def official_lr_schedule(
    epochs: int, epoch_step: Sequence[int], lr: float, gamma: float = 0.1, start_epoch: int = 0
) -> list[float]:
    """Simulate the learning rate of each epoch in the official ADD-GCN `Trainer.train` loop.

    The loop multiplies the rate by `gamma` at the start of an epoch when `self.epoch` is in
    `epoch_step`, before it sets `self.epoch` to the new epoch. `self.epoch` therefore contains the
    previous epoch's 0-based index, and 0 for the first epoch run, also after a resume, because
    `load_checkpoint` sets `start_epoch` but not `self.epoch`. Returns the rate of each epoch
    from `start_epoch` (0-based) to `epochs - 1`, starting from `lr` as the official code does.
    """
    rates = []
    current = lr
    previous_epoch = 0  # Trainer.initialization sets self.epoch = 0
    for epoch in range(start_epoch, epochs):
        if previous_epoch in epoch_step:
            current *= gamma
        rates.append(current)
        previous_epoch = epoch
    return rates


def multistep_lr_schedule(
    epochs: int, milestones: Sequence[int], lr: float, gamma: float = 0.1, resume_after: int | None = None
) -> list[float]:
    """Return the learning rate of each epoch under torch's MultiStepLR, stepped once per epoch.

    This is our schedule (`msdgcn.engine.build_scheduler`). With `resume_after`, the optimizer
    and scheduler states are saved after that many epochs and loaded into new objects, as our
    checkpoint resume does, and the schedule continues from there.
    """
    def build() -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.MultiStepLR]:
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
        return optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, list(milestones), gamma)

    optimizer, scheduler = build()
    rates = []
    for epoch in range(epochs):
        if resume_after is not None and epoch == resume_after:
            saved = (optimizer.state_dict(), scheduler.state_dict())
            optimizer, scheduler = build()
            optimizer.load_state_dict(saved[0])
            scheduler.load_state_dict(saved[1])
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def official_resume(checkpoint: dict[str, Any], epochs: int) -> dict[str, Any]:
    """Simulate what the official trainer does with `--resume CHECKPOINT` before training.

    `load_checkpoint` copies the checkpoint's `epoch` into `start_epoch` and its `best_score`
    into `best_score`, so the loop runs epochs `start_epoch` to `epochs - 1`, and a later epoch
    is saved as best only when it beats the inherited score. Returns the epochs that would run
    and the score that the first epoch must beat.
    """
    start_epoch = int(checkpoint["epoch"])
    return {
        "start_epoch": start_epoch,
        "epochs_run": max(0, epochs - start_epoch),
        "score_to_beat": float(checkpoint["best_score"]),
    }


# --------------------------------------------------------------------------- class order


def class_order_comparison(npz_path: str | Path, instances_path: str | Path) -> list[dict[str, Any]]:
    """Compare the class order of an ML-GCN archive with COCO's category-id order.

    `npz_path` is an archive with `class_names` (ML-GCN's order), `instances_path` a COCO
    instances JSON. Returns one row per position: the ML-GCN name, the category id of that
    name, and the name at that position in category-id order (ours, `msdgcn.data.read_coco`).
    """
    archive_names = [str(name) for name in np.load(npz_path)["class_names"]]
    try:
        categories = json.loads(Path(instances_path).read_text())["categories"]
    except (OSError, json.JSONDecodeError, KeyError) as error:
        raise ValueError(f"cannot read categories from {instances_path}: {error}") from error
    by_id = sorted(categories, key=lambda category: category["id"])
    id_of_name = {category["name"]: category["id"] for category in categories}
    missing = sorted(set(archive_names) - set(id_of_name))
    if missing:
        raise ValueError(f"{npz_path} names classes that {instances_path} does not contain: {missing}")
    return [
        {
            "position": position,
            "ML-GCN / ADD-GCN name": name,
            "its category id": id_of_name[name],
            "name in category-id order": by_id[position]["name"],
        }
        for position, name in enumerate(archive_names)
    ]


# --------------------------------------------------------------------------- D-GCN transpose


def dynamic_propagation(num_nodes: int = 4, hidden_dim: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """Propagate random nodes over our D-GCN's dynamic graph both ways, without activations.

    Builds `DynamicGCN(num_nodes, hidden_dim)` in eval mode, draws node features V (1, D1, C),
    computes H = V + static part and the dynamic adjacency A_d (C, C) with the module, and
    returns both products in the paper's row layout (C, D1): `code` = A_d^T H, the module's
    `torch.matmul(nodes, adjacency)` transposed back, and `paper` = A_d H of eq. (2). Also
    returns `module_output`, the module's own product before its activation, which must equal
    `code`.
    """
    torch.manual_seed(seed)
    module = DynamicGCN(num_nodes, hidden_dim).eval()
    representations = torch.randn(1, hidden_dim, num_nodes)
    with torch.no_grad():
        nodes = representations + module.forward_static_gcn(representations)  # (1, D1, C)
        adjacency = module.forward_dynamic_adjacency(nodes)[0]  # (C, C)
        rows = nodes[0].T  # H in the MSD-GCN paper's row layout (C, D1)
        captured = {}
        hook = module.activation.register_forward_hook(lambda _m, inputs, _o: captured.setdefault("input", inputs[0]))
        module.forward_dynamic_gcn(nodes, adjacency[None])
        hook.remove()
    return {
        "adjacency": adjacency,
        "nodes": rows,
        "code": adjacency.T @ rows,
        "paper": adjacency @ rows,
        "module_output": captured["input"][0].T,
    }


# --------------------------------------------------------------------------- ML-GCN correlation


def _binarised_conditional(cooccurrence: np.ndarray, counts: np.ndarray, tau: float) -> np.ndarray:
    """Return A (C, C) with A[i, j] = 1 where P(j | i) = cooccurrence[i, j] / counts[i] >= tau."""
    conditional = cooccurrence / np.maximum(counts[:, None], 1)
    return (conditional >= tau).astype(np.float64)


def mlgcn_correlation_paper(cooccurrence: np.ndarray, counts: np.ndarray, tau: float = 0.4, p: float = 0.25) -> np.ndarray:
    """Re-weight the binarised correlation as ML-GCN's paper and README describe it.

    The diagonal gets 1 - p and the other entries of each row i share p in proportion to A,
    so a row with at least one neighbour sums to 1. A row without neighbours keeps only
    1 - p on its diagonal (ML-GCN's formula divides by zero there).
    """
    binary = _binarised_conditional(cooccurrence, counts, tau)
    np.fill_diagonal(binary, 0.0)
    row_sums = binary.sum(axis=1, keepdims=True)
    reweighted = np.divide(p * binary, row_sums, out=np.zeros_like(binary), where=row_sums > 0)
    return reweighted + (1.0 - p) * np.eye(len(counts))


def mlgcn_correlation_code(cooccurrence: np.ndarray, counts: np.ndarray, tau: float = 0.4, p: float = 0.25) -> np.ndarray:
    """Re-weight the binarised correlation as ML-GCN's published `gen_A` computes it.

    This is the builder our ML-GCN head uses (`models.mlgcn.correlation_matrix`): `gen_A`
    divides by the column sums, `A * p / (A.sum(0) + 1e-6)`, and then adds the identity, so the
    diagonal is 1 (the co-occurrence diagonal is zero) and each column, not each row, shares p.
    """
    return correlation_matrix(cooccurrence, counts, threshold=tau, reweight=p)
