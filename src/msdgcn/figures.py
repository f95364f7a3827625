"""Activation and loss curves of section 3.2 of the MSD-GCN paper, their checks, and plots.

In "Multi-Label Image Recognition Based on Attention and Multi-Scale Dynamic Graph
Convolutional Network", Luo and Lin replace ADD-GCN's Leaky ReLU (eq. 5) by GELU (eq. 6,
with the approximations of eqs. 7 and 8), and MultiLabelSoftMarginLoss by BCEWithLogitsLoss
(eq. 15). This module
computes those curves in float64, measures how far each GELU approximation is from the exact
form, measures the gap between the two PyTorch losses, and draws the figures of the book.

The curve functions accept a numpy array, a Python scalar or a torch tensor. A tensor input
returns a tensor of the same dtype, and any other input returns a float64 numpy array.

``PALETTE`` and ``set_style`` are the colour palette and seaborn theme for every figure of
the book, so that all notebooks share one look.
"""

from __future__ import annotations

import math
from os import PathLike
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch
from matplotlib.figure import Figure

__all__ = [
    "GELU_SIGMOID_SCALE",
    "GELU_TANH_CUBIC",
    "LEAKY_RELU_SLOPE",
    "PALETTE",
    "SAVE_DPI",
    "approximation_errors",
    "bce_with_logits",
    "gelu_exact",
    "gelu_sigmoid",
    "gelu_tanh",
    "leaky_relu",
    "loss_gradient_gap",
    "loss_identity_gap",
    "plot_activations",
    "plot_bce_loss",
    "plot_gelu_approximations",
    "save_figure",
    "set_style",
]

# One seaborn palette for the whole book. Any name that seaborn.color_palette accepts works.
PALETTE = "colorblind"
SEABORN_STYLE = "whitegrid"
SAVE_DPI = 150

# Negative slope `a` of eq. (5). The official ADD-GCN code (github.com/Yejin0111/ADD-GCN,
# models/add_gcn.py) applies nn.LeakyReLU(0.2) in D-GCN. Its SAM defines one but never calls it.
LEAKY_RELU_SLOPE = 0.2
# Constants of the GELU approximations in eq. (7) and eq. (8).
GELU_TANH_CUBIC = 0.044715
GELU_SIGMOID_SCALE = 1.702

# Interval over which the GELU approximation errors are reported.
ERROR_INTERVAL = (-6.0, 6.0)

AXIS_NOTE = "(unitless)"


# --------------------------------------------------------------------------- curves


def _as_tensor(x: Any) -> tuple[torch.Tensor, bool]:
    """Convert ``x`` to a floating tensor, with a flag that is True when ``x`` was a tensor."""
    if isinstance(x, torch.Tensor):
        return (x if x.is_floating_point() else x.to(torch.float64)), True
    return torch.as_tensor(np.asarray(x, dtype=np.float64)), False


def _restore(result: torch.Tensor, was_tensor: bool) -> torch.Tensor | np.ndarray:
    return result if was_tensor else result.numpy()


def leaky_relu(x: Any, slope: float = LEAKY_RELU_SLOPE) -> torch.Tensor | np.ndarray:
    """Apply Leaky ReLU, eq. (5): ``x`` for x > 0 and ``slope * x`` for x <= 0."""
    t, was_tensor = _as_tensor(x)
    return _restore(torch.where(t > 0, t, slope * t), was_tensor)


def gelu_exact(x: Any) -> torch.Tensor | np.ndarray:
    """Apply exact GELU, eq. (6): ``x * Phi(x)`` with Phi the standard normal CDF.

    Eq. (6) writes a normal CDF with mean mu and standard deviation sigma; GELU uses mu = 0
    and sigma = 1, so ``Phi(x) = 0.5 * (1 + erf(x / sqrt(2)))``.
    """
    t, was_tensor = _as_tensor(x)
    return _restore(0.5 * t * (1.0 + torch.erf(t / math.sqrt(2.0))), was_tensor)


def gelu_tanh(x: Any) -> torch.Tensor | np.ndarray:
    """Apply the tanh approximation of GELU, eq. (7).

    ``0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x**3)))``, the same formula as
    ``torch.nn.functional.gelu(x, approximate="tanh")``.
    """
    t, was_tensor = _as_tensor(x)
    inner = math.sqrt(2.0 / math.pi) * (t + GELU_TANH_CUBIC * t**3)
    return _restore(0.5 * t * (1.0 + torch.tanh(inner)), was_tensor)


def gelu_sigmoid(x: Any) -> torch.Tensor | np.ndarray:
    """Apply the sigmoid approximation of GELU, eq. (8): ``x * sigmoid(1.702 * x)``."""
    t, was_tensor = _as_tensor(x)
    return _restore(t * torch.sigmoid(GELU_SIGMOID_SCALE * t), was_tensor)


def bce_with_logits(x: Any, y: Any) -> torch.Tensor | np.ndarray:
    """Compute the element-wise binary cross-entropy of eq. (15) from logits, without reduction.

    Eq. (15) is ``-[y log sigmoid(x) + (1 - y) log(1 - sigmoid(x))]``. Evaluated as written it
    returns inf once sigmoid(x) rounds to 0 or 1, so this uses the equal form
    ``max(x, 0) - x * y + log1p(exp(-|x|))``, which stays finite for every finite ``x``.
    The output is in nats (natural logarithm). ``y`` is the target in [0, 1] and broadcasts
    against ``x``; the return type follows ``x``.
    """
    logits, was_tensor = _as_tensor(x)
    targets = torch.as_tensor(y, dtype=logits.dtype, device=logits.device)
    loss = torch.clamp(logits, min=0) - logits * targets + torch.log1p(torch.exp(-logits.abs()))
    return _restore(loss, was_tensor)


# --------------------------------------------------------------------------- numerical checks


def _max_error_summary(x: np.ndarray, error: np.ndarray) -> dict[str, float]:
    index = int(np.argmax(np.abs(error)))
    return {
        "max_abs_error": float(abs(error[index])),
        "x_at_max": float(x[index]),
        "signed_error_at_max": float(error[index]),
    }


def approximation_errors(
    lo: float = ERROR_INTERVAL[0], hi: float = ERROR_INTERVAL[1], num: int = 120001
) -> dict[str, Any]:
    """Measure the maximum absolute error of GELU forms (7) and (8) against the exact form (6).

    The errors are evaluated in float64 on ``num`` evenly spaced points of [lo, hi]
    (grid step 1e-4 with the defaults). Returns a dict with the grid (``lo``, ``hi``, ``num``,
    ``step``) and, under ``"tanh"`` for eq. (7) and ``"sigmoid"`` for eq. (8), the keys
    ``max_abs_error``, ``x_at_max`` and ``signed_error_at_max`` (approximation minus exact).

    Every form satisfies f(x) - f(-x) = x, so each error is an even function of x. On a
    symmetric interval the maximum is reached at both +x and -x, and ``x_at_max`` reports
    whichever of the two is larger after rounding (usually the negative one).
    """
    if num < 2:
        raise ValueError(f"num must be at least 2 grid points, got {num}")
    if not hi > lo:
        raise ValueError(f"invalid interval [{lo}, {hi}]: hi must be greater than lo")

    x = np.linspace(lo, hi, num, dtype=np.float64)
    exact = gelu_exact(x)
    return {
        "lo": float(lo),
        "hi": float(hi),
        "num": int(num),
        "step": float((hi - lo) / (num - 1)),
        "tanh": _max_error_summary(x, gelu_tanh(x) - exact),
        "sigmoid": _max_error_summary(x, gelu_sigmoid(x) - exact),
    }


def _random_logits_and_targets(
    num_samples: int, num_classes: int, seed: int, dtype: torch.dtype, logit_scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw logits ``logit_scale * N(0, 1)`` and 0/1 targets, both (num_samples, num_classes)."""
    if num_samples < 1 or num_classes < 1:
        raise ValueError(
            f"num_samples and num_classes must be positive, got {num_samples} and {num_classes}"
        )
    generator = torch.Generator().manual_seed(seed)
    # Drawn in float64 and then cast, so both dtypes see the same values up to rounding.
    logits = logit_scale * torch.randn(num_samples, num_classes, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, 2, (num_samples, num_classes), generator=generator)
    return logits.to(dtype), targets.to(dtype)


def loss_identity_gap(
    num_samples: int = 64,
    num_classes: int = 80,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    logit_scale: float = 3.0,
) -> float:
    """Measure the largest difference between MultiLabelSoftMarginLoss and BCEWithLogitsLoss.

    MultiLabelSoftMarginLoss is, per sample, the mean over classes of the binary
    cross-entropy with logits, so its batch mean equals BCEWithLogitsLoss's mean over all
    elements whenever every sample has the same number of classes and no weights are given.
    This draws logits ``logit_scale * N(0, 1)`` of shape (num_samples, num_classes) and 0/1
    targets, and returns the maximum absolute difference over both the per-sample losses and
    the mean-reduced losses. For logits of order 1 it measured about 1e-16 in float64 and
    1e-7 in float32 (torch 2.14, CPU). The gap grows in proportion to the loss for larger logits.
    """
    logits, targets = _random_logits_and_targets(num_samples, num_classes, seed, dtype, logit_scale)

    soft_margin = torch.nn.MultiLabelSoftMarginLoss(reduction="none")(logits, targets)
    bce = torch.nn.BCEWithLogitsLoss(reduction="none")(logits, targets).mean(dim=1)
    per_sample_gap = (soft_margin - bce).abs().max()

    soft_margin_mean = torch.nn.MultiLabelSoftMarginLoss()(logits, targets)
    bce_mean = torch.nn.BCEWithLogitsLoss()(logits, targets)
    mean_gap = (soft_margin_mean - bce_mean).abs()

    return float(torch.maximum(per_sample_gap, mean_gap))


def loss_gradient_gap(
    num_samples: int = 64,
    num_classes: int = 80,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    logit_scale: float = 3.0,
) -> float:
    """Measure the largest difference between the logit gradients of the two mean-reduced losses.

    Draws the same logits and targets as ``loss_identity_gap`` with the same arguments and
    returns ``max |d MultiLabelSoftMarginLoss / dx - d BCEWithLogitsLoss / dx|`` over all
    elements.
    """
    logits, targets = _random_logits_and_targets(num_samples, num_classes, seed, dtype, logit_scale)
    logits.requires_grad_(True)

    (soft_margin_grad,) = torch.autograd.grad(torch.nn.MultiLabelSoftMarginLoss()(logits, targets), logits)
    (bce_grad,) = torch.autograd.grad(torch.nn.BCEWithLogitsLoss()(logits, targets), logits)
    return float((soft_margin_grad - bce_grad).abs().max())


# --------------------------------------------------------------------------- style and plots


def set_style() -> None:
    """Apply the book's seaborn theme (whitegrid, ``PALETTE``) to matplotlib globally."""
    sns.set_theme(style=SEABORN_STYLE, palette=PALETTE)


def save_figure(figure: Figure, path: str | PathLike[str]) -> Path:
    """Save ``figure`` as PNG at ``SAVE_DPI`` with a tight bounding box, creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=SAVE_DPI, bbox_inches="tight")
    return path


def _finish(figure: Figure, path: str | PathLike[str] | None) -> Figure:
    if path is not None:
        save_figure(figure, path)
    return figure


def _draw_zero_axes(ax: plt.Axes) -> None:
    ax.axhline(0.0, color="0.4", linewidth=0.8, zorder=1)
    ax.axvline(0.0, color="0.4", linewidth=0.8, zorder=1)


def plot_activations(path: str | PathLike[str] | None = None) -> Figure:
    """Draw Leaky ReLU with slope 0.2 (eq. 5) and exact GELU (eq. 6) side by side.

    The two panels correspond to the paper's Figures 3 and 4. Saves a PNG when ``path`` is
    given and returns the figure.
    """
    x = np.linspace(-4.0, 4.0, 801)
    colors = sns.color_palette(PALETTE)
    with sns.axes_style(SEABORN_STYLE):
        figure, axes = plt.subplots(1, 2, figsize=(9.0, 3.8), sharey=True)
        panels = [
            (axes[0], leaky_relu(x), f"Leaky ReLU, a = {LEAKY_RELU_SLOPE} (eq. 5)", colors[0]),
            (axes[1], gelu_exact(x), "GELU, exact form (eq. 6)", colors[1]),
        ]
        for ax, y, title, color in panels:
            _draw_zero_axes(ax)
            ax.plot(x, y, color=color, linewidth=2.0)
            ax.set_title(title)
            ax.set_xlabel(f"input x {AXIS_NOTE}")
        axes[0].set_ylabel(f"output f(x) {AXIS_NOTE}")
        figure.tight_layout()
    return _finish(figure, path)


def plot_gelu_approximations(path: str | PathLike[str] | None = None) -> Figure:
    """Draw exact GELU with its approximations (7) and (8), and their absolute errors.

    The left panel shows the three curves on [-4, 4]. The right panel shows
    ``|approximation - exact|`` on [-6, 6] on a log scale, with each maximum marked.
    Saves a PNG when ``path`` is given and returns the figure.
    """
    x_curves = np.linspace(-4.0, 4.0, 801)
    x_errors = np.linspace(*ERROR_INTERVAL, 2401)
    errors = approximation_errors()
    colors = sns.color_palette(PALETTE)
    forms = [
        ("tanh", "tanh form (eq. 7)", gelu_tanh, colors[1], "--"),
        ("sigmoid", "sigmoid form (eq. 8)", gelu_sigmoid, colors[2], ":"),
    ]

    with sns.axes_style(SEABORN_STYLE):
        figure, (ax_curves, ax_errors) = plt.subplots(1, 2, figsize=(10.0, 4.0))

        _draw_zero_axes(ax_curves)
        ax_curves.plot(x_curves, gelu_exact(x_curves), color=colors[0], linewidth=2.5, label="exact (eq. 6)")
        for _, label, form, color, linestyle in forms:
            ax_curves.plot(x_curves, form(x_curves), color=color, linestyle=linestyle, linewidth=2.0, label=label)
        ax_curves.set_title("GELU and its approximations")
        ax_curves.set_xlabel(f"input x {AXIS_NOTE}")
        ax_curves.set_ylabel(f"output f(x) {AXIS_NOTE}")
        ax_curves.legend(loc="upper left")

        for key, label, form, color, linestyle in forms:
            # The error is exactly 0 at x = 0, so the log axis leaves that point out.
            abs_error = np.abs(form(x_errors) - gelu_exact(x_errors))
            peak_x = abs(errors[key]["x_at_max"])
            peak = errors[key]["max_abs_error"]
            ax_errors.plot(
                x_errors,
                abs_error,
                color=color,
                linestyle=linestyle,
                linewidth=2.0,
                label=f"{label}: max {peak:.1e} at |x| = {peak_x:.2f}",
            )
            ax_errors.plot([-peak_x, peak_x], [peak, peak], "o", color=color, markersize=5)
        ax_errors.set_yscale("log")
        ax_errors.set_ylim(1e-10, 1.0)
        ax_errors.set_title("Absolute error against exact GELU")
        ax_errors.set_xlabel(f"input x {AXIS_NOTE}")
        ax_errors.set_ylabel(f"|approximation - exact| {AXIS_NOTE}")
        # Below the axes, because the error curves dip towards 0 across the whole plot area.
        ax_errors.legend(loc="upper center", bbox_to_anchor=(0.5, -0.17), frameon=False)
        figure.tight_layout()
    return _finish(figure, path)


def plot_bce_loss(path: str | PathLike[str] | None = None) -> Figure:
    """Draw the BCEWithLogits loss (eq. 15) against the logit x for targets y = 0 and y = 1.

    This is the paper's Figure 5. Both curves pass through log 2 at x = 0, which is marked.
    Saves a PNG when ``path`` is given and returns the figure.
    """
    x = np.linspace(-6.0, 6.0, 1201)
    colors = sns.color_palette(PALETTE)
    with sns.axes_style(SEABORN_STYLE):
        figure, ax = plt.subplots(figsize=(5.5, 4.0))
        ax.plot(x, bce_with_logits(x, 1.0), color=colors[0], linewidth=2.0, label="target y = 1")
        ax.plot(x, bce_with_logits(x, 0.0), color=colors[1], linewidth=2.0, linestyle="--", label="target y = 0")
        ax.plot([0.0], [math.log(2.0)], "o", color="0.2", markersize=5, zorder=3)
        ax.annotate(
            "log 2 = 0.693 at x = 0",
            xy=(0.0, math.log(2.0)),
            xytext=(0.0, 2.9),
            textcoords="data",
            ha="center",
            fontsize=9,
            arrowprops={"arrowstyle": "->", "color": "0.2"},
        )
        ax.set_ylim(bottom=0.0)
        ax.set_title("BCEWithLogitsLoss (eq. 15)")
        ax.set_xlabel(f"logit x {AXIS_NOTE}")
        ax.set_ylabel("loss (nats)")
        ax.legend(loc="upper center")
        figure.tight_layout()
    return _finish(figure, path)
