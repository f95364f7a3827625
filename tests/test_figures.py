"""Tests for the activation and loss curves, their numerical checks, and the figure files."""

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import seaborn as sns
import torch
from scipy.optimize import minimize_scalar
from scipy.special import erf
from scipy.stats import norm

from msdgcn import figures

# Maximum |approximation - exact| of GELU over [-6, 6] and where it occurs (|x|), measured in
# float64 by bounded scalar maximisation with scipy (xatol 1e-12). The error is even in x.
TANH_MAX_ERROR = 4.7323552e-4
TANH_ARGMAX = 2.698941
SIGMOID_MAX_ERROR = 2.03348722e-2
SIGMOID_ARGMAX = 2.270398
# The default grid has step 1e-4, so the grid maximum sits within half a step of the true one
# and is lower than it by about 3e-9 relative (measured). MAX_ERROR_RTOL leaves room for that.
GRID_STEP = 1e-4
MAX_ERROR_RTOL = 1e-6


def _exact_gelu_scipy(x: np.ndarray) -> np.ndarray:
    return x * norm.cdf(x)


def _max_error_scipy(form, bracket: tuple[float, float]) -> tuple[float, float]:
    """Maximise |form(x) - x * Phi(x)| on ``bracket`` with scipy, independent of msdgcn's erf."""
    result = minimize_scalar(
        lambda x: -abs(float(form(np.float64(x))) - float(_exact_gelu_scipy(np.float64(x)))),
        bounds=bracket,
        method="bounded",
        options={"xatol": 1e-12},
    )
    return -result.fun, result.x


def _tanh_form_numpy(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def _sigmoid_form_numpy(x):
    return x / (1.0 + np.exp(-1.702 * x))


# --------------------------------------------------------------------------- curves


def test_leaky_relu_slope():
    values = figures.leaky_relu(np.array([-1.0, -5.0, 0.0, 3.0]))
    assert values[0] == pytest.approx(-0.2, abs=1e-15)
    assert values[1] == pytest.approx(-1.0, abs=1e-15)
    assert values[2] == 0.0
    assert values[3] == 3.0


def test_leaky_relu_matches_torch():
    x = torch.linspace(-5.0, 5.0, 101, dtype=torch.float64)
    expected = torch.nn.functional.leaky_relu(x, negative_slope=0.2)
    torch.testing.assert_close(figures.leaky_relu(x), expected, rtol=0, atol=0)


def test_curves_keep_input_type():
    tensor_out = figures.gelu_exact(torch.zeros(3, dtype=torch.float32))
    assert isinstance(tensor_out, torch.Tensor)
    assert tensor_out.dtype == torch.float32

    array_out = figures.gelu_exact([0.0, 1.0])
    assert isinstance(array_out, np.ndarray)
    assert array_out.dtype == np.float64


def test_gelu_exact_matches_scipy_and_torch():
    x = np.linspace(-8.0, 8.0, 1601)
    expected = 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))
    np.testing.assert_allclose(figures.gelu_exact(x), expected, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(figures.gelu_exact(x), _exact_gelu_scipy(x), rtol=1e-12, atol=1e-15)

    x_torch = torch.from_numpy(x)
    torch.testing.assert_close(
        figures.gelu_exact(x_torch), torch.nn.functional.gelu(x_torch), rtol=1e-14, atol=1e-15
    )


def test_gelu_approximations_match_formulas():
    x = np.linspace(-8.0, 8.0, 1601)
    np.testing.assert_allclose(figures.gelu_tanh(x), _tanh_form_numpy(x), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(figures.gelu_sigmoid(x), _sigmoid_form_numpy(x), rtol=1e-13, atol=1e-15)

    x_torch = torch.from_numpy(x)
    torch.testing.assert_close(
        figures.gelu_tanh(x_torch),
        torch.nn.functional.gelu(x_torch, approximate="tanh"),
        rtol=1e-13,
        atol=1e-15,
    )


# --------------------------------------------------------------------------- approximation errors


def test_approximation_errors_known_values():
    errors = figures.approximation_errors()
    assert errors["step"] == pytest.approx(GRID_STEP)

    assert errors["tanh"]["max_abs_error"] == pytest.approx(TANH_MAX_ERROR, rel=MAX_ERROR_RTOL)
    assert abs(errors["tanh"]["x_at_max"]) == pytest.approx(TANH_ARGMAX, abs=GRID_STEP)
    # The tanh form lies above the exact curve at its worst point, the sigmoid form below.
    assert errors["tanh"]["signed_error_at_max"] > 0

    assert errors["sigmoid"]["max_abs_error"] == pytest.approx(SIGMOID_MAX_ERROR, rel=MAX_ERROR_RTOL)
    assert abs(errors["sigmoid"]["x_at_max"]) == pytest.approx(SIGMOID_ARGMAX, abs=GRID_STEP)
    assert errors["sigmoid"]["signed_error_at_max"] < 0


def test_approximation_errors_match_scipy():
    errors = figures.approximation_errors()
    cases = [
        ("tanh", _tanh_form_numpy, (0.5, 4.0)),
        ("tanh", _tanh_form_numpy, (-4.0, -0.5)),
        ("sigmoid", _sigmoid_form_numpy, (0.5, 4.0)),
        ("sigmoid", _sigmoid_form_numpy, (-4.0, -0.5)),
    ]
    for key, form, bracket in cases:
        scipy_max, scipy_argmax = _max_error_scipy(form, bracket)
        assert errors[key]["max_abs_error"] == pytest.approx(scipy_max, rel=MAX_ERROR_RTOL), (key, bracket)
        assert abs(errors[key]["x_at_max"]) == pytest.approx(abs(scipy_argmax), abs=GRID_STEP), (key, bracket)


def test_approximation_errors_one_sided_interval():
    errors = figures.approximation_errors(lo=0.0, hi=6.0, num=60001)
    assert errors["tanh"]["x_at_max"] == pytest.approx(TANH_ARGMAX, abs=GRID_STEP)
    assert errors["sigmoid"]["x_at_max"] == pytest.approx(SIGMOID_ARGMAX, abs=GRID_STEP)


def test_approximation_errors_rejects_bad_grid():
    with pytest.raises(ValueError, match="num"):
        figures.approximation_errors(num=1)
    with pytest.raises(ValueError, match="interval"):
        figures.approximation_errors(lo=1.0, hi=-1.0)


# --------------------------------------------------------------------------- losses


def test_bce_with_logits_matches_torch_at_extremes():
    x = torch.tensor([-80.0, -30.0, -1.0, 0.0, 1.0, 30.0, 80.0], dtype=torch.float64)
    for target in (0.0, 1.0):
        y = torch.full_like(x, target)
        ours = figures.bce_with_logits(x, y)
        expected = torch.nn.BCEWithLogitsLoss(reduction="none")(x, y)
        assert torch.isfinite(ours).all(), (target, ours)
        # atol 1e-14 because torch 2.14 is off by 1.2e-15 (measured) for the loss of 9.4e-14 at x = -30, y = 0.
        torch.testing.assert_close(ours, expected, rtol=1e-14, atol=1e-14)


def test_bce_with_logits_tiny_loss_accurate():
    # log1p(exp(-30)) in float64 is correct to rounding, a reference independent of torch.
    reference = math.log1p(math.exp(-30.0))
    assert float(figures.bce_with_logits(-30.0, 0.0)) == pytest.approx(reference, rel=1e-15)
    assert float(figures.bce_with_logits(30.0, 1.0)) == pytest.approx(reference, rel=1e-15)


def test_bce_with_logits_large_logits_values():
    # A confident wrong logit costs |x| nats, and a confident right one almost nothing.
    x = np.array([-80.0, 80.0])
    np.testing.assert_allclose(figures.bce_with_logits(x, 1.0), [80.0, 0.0], atol=1e-30, rtol=1e-15)
    np.testing.assert_allclose(figures.bce_with_logits(x, 0.0), [0.0, 80.0], atol=1e-30, rtol=1e-15)


def test_bce_with_logits_float32_extremes():
    x = torch.tensor([-80.0, 80.0])
    y = torch.tensor([1.0, 0.0])
    ours = figures.bce_with_logits(x, y)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, torch.nn.BCEWithLogitsLoss(reduction="none")(x, y))


def test_bce_with_logits_at_zero_is_log2():
    for target in (0.0, 1.0):
        assert float(figures.bce_with_logits(0.0, target)) == pytest.approx(math.log(2.0), rel=1e-15)


def test_loss_identity_float64():
    for logit_scale in (1.0, 3.0, 100.0):
        gap = figures.loss_identity_gap(num_samples=32, num_classes=20, seed=1, logit_scale=logit_scale)
        assert gap < 1e-12, (logit_scale, gap)


def test_loss_identity_float32():
    gap = figures.loss_identity_gap(num_samples=32, num_classes=20, seed=1, dtype=torch.float32)
    assert gap < 1e-5


def test_loss_gradient_gap_float64():
    gap = figures.loss_gradient_gap(num_samples=32, num_classes=20, seed=1, logit_scale=10.0)
    assert gap < 1e-12


def test_loss_identity_detects_weighted_loss(monkeypatch):
    # With class weights on one loss only, the two losses differ, so the gap must show it.
    original = torch.nn.BCEWithLogitsLoss

    def weighted_bce(*args, **kwargs):
        return original(*args, weight=torch.tensor(2.0, dtype=torch.float64), **kwargs)

    monkeypatch.setattr(torch.nn, "BCEWithLogitsLoss", weighted_bce)
    assert figures.loss_identity_gap(num_samples=8, num_classes=5) > 0.1


def test_loss_identity_rejects_empty_batch():
    with pytest.raises(ValueError, match="positive"):
        figures.loss_identity_gap(num_samples=0)


# --------------------------------------------------------------------------- plots


@pytest.mark.parametrize(
    ("plot", "filename"),
    [
        (figures.plot_activations, "leaky_relu_gelu.png"),
        (figures.plot_gelu_approximations, "gelu_approximations.png"),
        (figures.plot_bce_loss, "bce_with_logits.png"),
    ],
)
def test_plot_writes_png(tmp_path, plot, filename):
    path = tmp_path / "nested" / filename
    figure = plot(path)
    try:
        assert path.is_file()
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = plt.imread(path)
        # 150 dpi on figures of at least 5.5 x 3.8 inches gives more than 600 x 400 pixels.
        assert image.shape[1] > 600
        assert image.shape[0] > 400
        # A blank canvas has one colour, and drawn curves add many.
        assert np.unique(image.reshape(-1, image.shape[-1]), axis=0).shape[0] > 10
        for ax in figure.axes:
            assert ax.get_xlabel(), f"missing x label on {ax.get_title()!r}"
            assert "unitless" in ax.get_xlabel()
    finally:
        plt.close(figure)


def test_plot_without_path_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    figure = figures.plot_bce_loss()
    try:
        assert list(tmp_path.iterdir()) == []
        assert figure.axes[0].get_ylabel() == "loss (nats)"
    finally:
        plt.close(figure)


def test_set_style_uses_palette():
    # rc_context restores matplotlib's global settings after the test.
    with matplotlib.rc_context():
        figures.set_style()
        cycle_colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        grid_shown = plt.rcParams["axes.grid"]
    expected = [matplotlib.colors.to_hex(color) for color in sns.color_palette(figures.PALETTE)]
    assert [matplotlib.colors.to_hex(color) for color in cycle_colors[: len(expected)]] == expected
    assert grid_shown
