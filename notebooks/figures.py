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
# # Activation and loss figures
#
# Section 3.2 of Luo and Lin's paper, "Multi-Label Image Recognition Based on Attention and
# Multi-Scale Dynamic Graph Convolutional Network" (MSD-GCN), makes two changes to how SAM and
# D-GCN pass category representations. It replaces ADD-GCN's Leaky ReLU by GELU, and it replaces
# MultiLabelSoftMarginLoss by BCEWithLogitsLoss (the paper also swaps SGD for Adam, a training
# setting that is not drawn here). This notebook redraws the paper's Figures 3 to 5 from the
# equations, measures how close the two GELU approximations are to the exact form, and checks
# numerically whether the loss change alters the loss value at all. All curves are computed in
# float64 by `msdgcn.figures`.

# %% tags=["parameters"]
output_dir = "../results/scratch/figures"  # relative to this notebook's folder; the report passes ../results/figures

# %% [markdown]
# The book's seaborn theme comes from `msdgcn.figures.set_style`, so every notebook uses the
# same palette. The figures go to `output_dir`, which is created when missing.

# %%
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from msdgcn import figures

figures.set_style()
figure_dir = Path(output_dir)
figure_dir.mkdir(parents=True, exist_ok=True)
print(f"figures are written to {figure_dir} (relative to the notebooks folder)")

# %% [markdown]
# ## Leaky ReLU and GELU
#
# The paper states that ADD-GCN applies Leaky ReLU, eq. (5), in SAM and D-GCN. The official ADD-GCN
# code (github.com/Yejin0111/ADD-GCN, `models/add_gcn.py`) applies it in D-GCN only, with negative
# slope $a = 0.2$:
#
# $$\mathrm{LReLU}(x) = \begin{cases} x & x > 0 \\ a x & x \le 0 \end{cases} \qquad (5)$$
#
# With $a = 0.2$, the function maps $-1$ to $-0.2$ and leaves positive inputs unchanged.

# %%
slope_check = {x: float(figures.leaky_relu(x)) for x in (-1.0, 0.0, 2.0)}
print(slope_check)
assert math.isclose(slope_check[-1.0], -figures.LEAKY_RELU_SLOPE, rel_tol=0, abs_tol=1e-15)
assert slope_check[-1.0] == -0.2
assert slope_check[0.0] == 0.0
assert slope_check[2.0] == 2.0

# %% [markdown]
# The paper replaces it by GELU, the input times the standard normal CDF
# ($\mu = 0$, $\sigma = 1$ in eq. 6), which equals $\tfrac{x}{2}\left(1 + \operatorname{erf}(x/\sqrt{2})\right)$:
#
# $$\mathrm{GELU}(x) = x\,P(X \le x) = x \int_{-\infty}^{x} \frac{e^{-\frac{(X-\mu)^2}{2\sigma^2}}}{\sqrt{2\pi}\,\sigma}\,dX \qquad (6)$$
#
# The figure below draws eq. (5) and eq. (6) side by side, as the paper's Figures 3 and 4 do.
# Both axes are unitless.

# %%
fig = figures.plot_activations(figure_dir / "leaky_relu_gelu.png")

# %% [markdown]
# ## Approximations of GELU
#
# The paper gives two closed forms for GELU, the tanh form (7) and the sigmoid form (8):
#
# $$\mathrm{GELU}(x) \approx 0.5\,x \left(1 + \tanh\left(\sqrt{2/\pi}\,\left(x + 0.044715\,x^3\right)\right)\right) \qquad (7)$$
#
# $$\mathrm{GELU}(x) \approx x\,\sigma(1.702\,x) \qquad (8)$$
#
# The left panel overlays both forms on the exact curve. The right panel shows their absolute
# error against eq. (6) on a log scale, with each maximum marked.

# %%
fig = figures.plot_gelu_approximations(figure_dir / "gelu_approximations.png")

# %% [markdown]
# Over $[-6, 6]$, on a grid with step $10^{-4}$, the tanh form (7) stays within $4.8 \times 10^{-4}$
# of the exact value, with the maximum $4.73 \times 10^{-4}$ at $|x| \approx 2.70$. The sigmoid
# form (8) is about 43 times coarser, with the maximum $0.0203$ at $|x| \approx 2.27$. Every form
# satisfies $f(x) - f(-x) = x$, so each error is even in $x$ and the maximum occurs at both signs.
# The cell below measures these values and asserts them.

# %%
errors = figures.approximation_errors(lo=-6.0, hi=6.0, num=120001)
error_table = pd.DataFrame(
    {
        "form": ["tanh, eq. (7)", "sigmoid, eq. (8)"],
        "max |approximation - exact|": [errors["tanh"]["max_abs_error"], errors["sigmoid"]["max_abs_error"]],
        "at |x|": [abs(errors["tanh"]["x_at_max"]), abs(errors["sigmoid"]["x_at_max"])],
        "sign of error there": [
            "+" if errors["tanh"]["signed_error_at_max"] > 0 else "-",
            "+" if errors["sigmoid"]["signed_error_at_max"] > 0 else "-",
        ],
    }
)
print(f"grid: {errors['num']} points on [{errors['lo']}, {errors['hi']}], step {errors['step']:.1e}")
for key, equation in (("tanh", "(7)"), ("sigmoid", "(8)")):
    print(f"max |eq. {equation} - x Phi(x)| on [-6, 6] = {errors[key]['max_abs_error']:.3e} at |x| = {abs(errors[key]['x_at_max']):.3f}")

assert errors["tanh"]["max_abs_error"] < 4.8e-4
assert errors["tanh"]["max_abs_error"] < 1e-3
assert abs(abs(errors["tanh"]["x_at_max"]) - 2.699) < 0.01
assert 0.020 < errors["sigmoid"]["max_abs_error"] < 0.021
assert errors["sigmoid"]["max_abs_error"] < 0.03
assert abs(abs(errors["sigmoid"]["x_at_max"]) - 2.270) < 0.01
error_table

# %% [markdown]
# ## BCEWithLogitsLoss
#
# The paper's loss for one logit $x_n$ and one target $y_n \in \{0, 1\}$ is the binary
# cross-entropy of the sigmoid output, in nats:
#
# $$\mathrm{Loss} = -\left[y_n \log \sigma(x_n) + (1 - y_n) \log\left(1 - \sigma(x_n)\right)\right] \qquad (15)$$
#
# `msdgcn.figures.bce_with_logits` evaluates it in the equal form
# $\max(x, 0) - x y + \log(1 + e^{-|x|})$, which stays finite for large $|x|$. The figure
# corresponds to the paper's Figure 5.

# %%
fig = figures.plot_bce_loss(figure_dir / "bce_with_logits.png")

# %% [markdown]
# At $x = 0$ the sigmoid output is $1/2$, so both curves pass through $\log 2$ whatever the target.
# For target 1 the loss falls as the logit grows, and for target 0 it rises. A confident wrong
# logit costs about $|x|$ nats, and a confident right one almost nothing.

# %%
loss_at_zero = {y: float(figures.bce_with_logits(0.0, y)) for y in (0.0, 1.0)}
print(loss_at_zero, f"log 2 = {math.log(2.0):.15f}")
for value in loss_at_zero.values():
    assert math.isclose(value, math.log(2.0), rel_tol=1e-15)

logits = np.linspace(-6.0, 6.0, 1201)
loss_positive = figures.bce_with_logits(logits, 1.0)
loss_negative = figures.bce_with_logits(logits, 0.0)
assert (np.diff(loss_positive) < 0).all()
assert (np.diff(loss_negative) > 0).all()
print(f"target 1: loss {loss_positive[0]:.6f} at x = -6 and {loss_positive[-1]:.2e} at x = 6")
assert abs(loss_positive[0] - 6.0) < 0.01
assert loss_positive[-1] < 0.01

# %% [markdown]
# ## MultiLabelSoftMarginLoss and BCEWithLogitsLoss are the same number
#
# For $C$ classes, PyTorch's MultiLabelSoftMarginLoss of one sample is
# $-\frac{1}{C}\sum_{c} \left[y_c \log \sigma(x_c) + (1 - y_c) \log \sigma(-x_c)\right]$, which is
# eq. (15) averaged over the classes. With mean reduction and no class weights, the batch mean of
# that equals BCEWithLogitsLoss's mean over all elements. The cell below compares the two PyTorch
# losses and their gradients with respect to the logits on random logits, at three logit scales,
# in float64 and float32.

# %%
gap_rows = []
for logit_scale in (1.0, 10.0, 100.0):
    for dtype in (torch.float64, torch.float32):
        arguments = {"num_samples": 64, "num_classes": 80, "seed": 0, "dtype": dtype, "logit_scale": logit_scale}
        gap_rows.append(
            {
                "logit scale": logit_scale,
                "dtype": str(dtype),
                "max |loss difference|": figures.loss_identity_gap(**arguments),
                "max |gradient difference|": figures.loss_gradient_gap(**arguments),
            }
        )
gap_table = pd.DataFrame(gap_rows)

float64_rows = gap_table[gap_table["dtype"] == str(torch.float64)]
assert (float64_rows["max |loss difference|"] < 1e-12).all()
assert (float64_rows["max |gradient difference|"] < 1e-12).all()
gap_table

# %% [markdown]
# In float64 the two losses agree to rounding error (about $10^{-16}$ of the loss value), even for
# logits of magnitude 100, and neither overflows. Their gradients agree to about $10^{-19}$.
# The paper's switch from MultiLabelSoftMarginLoss to BCEWithLogitsLoss is therefore numerically a
# no-op: with the same logits and targets it yields the same loss and the same gradients. A
# difference between ADD-GCN's and MSD-GCN's results cannot come from the loss swap, only from the
# other changes (GELU, Adam, Res2Net, CBAM) or from run-to-run noise.
