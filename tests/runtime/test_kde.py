"""The torch KDE against scipy.stats.gaussian_kde at the same (Scott) bandwidth: within 1e-3
of the peak, on both evaluation paths, in float32 and float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import gaussian_kde

from dropwire.runtime.kde import density_grid, scott_bandwidth

TOLERANCE = 1e-3


def worst_error(samples: np.ndarray, grid: torch.Tensor, density: torch.Tensor) -> float:
    """Largest difference from scipy on our grid, as a fraction of the density's peak."""
    worst = 0.0
    for row in range(samples.shape[0]):
        scipy_kde = gaussian_kde(samples[row])
        points = grid[row].double().numpy()
        # The peak, found on a fine grid: a coarse grid may miss it (or hold only tails).
        peak = scipy_kde(np.linspace(points[0], points[-1], 801)).max()
        worst = max(worst, float(np.abs(scipy_kde(points) - density[row].double().numpy()).max() / peak))
    return worst


def families(rng: np.random.Generator, rows: int, n: int) -> dict[str, np.ndarray]:
    return {
        "normal": rng.normal(3.0, 2.0, size=(rows, n)),
        "student-t(2)": rng.standard_t(2, size=(rows, n)),
        "bimodal": np.concatenate([rng.normal(-5, 1, (rows, n // 2)), rng.normal(5, 0.3, (rows, n - n // 2))], axis=1),
        "lognormal": rng.lognormal(0.0, 1.0, size=(rows, n)),
    }


@pytest.mark.parametrize("method", ["binned", "direct", "auto"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_scipy_on_the_benchmark_shape(method: str, dtype: torch.dtype) -> None:
    rng = np.random.default_rng(0)
    for name, samples in families(rng, 2, 1000).items():
        grid, density = density_grid(torch.tensor(samples, dtype=dtype), 256, method=method)  # type: ignore[arg-type]
        assert grid.shape == density.shape == (2, 256)
        assert worst_error(samples, grid, density) < TOLERANCE, name


def test_bandwidth_is_scotts_rule_as_scipy_computes_it() -> None:
    samples = np.random.default_rng(1).normal(size=(3, 500))
    ours = scott_bandwidth(torch.tensor(samples)).numpy()
    theirs = [gaussian_kde(row).factor * row.std(ddof=1) for row in samples]
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    data=st.lists(
        st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False), min_size=2, max_size=300
    ).filter(lambda xs: np.std(xs) > 1e-6 * max(1.0, max(abs(x) for x in xs))),
    method=st.sampled_from(["binned", "direct", "auto"]),
    grid_points=st.integers(min_value=2, max_value=300),
)
def test_matches_scipy_for_any_sample_set(data: list[float], method: str, grid_points: int) -> None:
    samples = np.asarray([data])
    grid, density = density_grid(torch.tensor(samples), grid_points, method=method)  # type: ignore[arg-type]
    assert worst_error(samples, grid, density) < TOLERANCE


def test_rows_are_independent_and_batched() -> None:
    """Each row has its own bandwidth and grid: a batch equals its rows one by one."""
    rng = np.random.default_rng(2)
    samples = torch.tensor(np.concatenate([rng.normal(0, 1, (1, 800)), rng.normal(100, 30, (1, 800))]))
    grid, density = density_grid(samples, 128)
    for row in range(2):
        one_grid, one_density = density_grid(samples[row : row + 1], 128)
        torch.testing.assert_close(grid[row], one_grid[0])
        torch.testing.assert_close(density[row], one_density[0], atol=1e-12, rtol=1e-6)


def test_affine_rescaling_is_exact() -> None:
    """The pipeline estimates in standardized space and unscales afterwards; that equals
    estimating on the unscaled samples."""
    z = torch.tensor(np.random.default_rng(3).normal(size=(2, 600)))
    loc, scale = 1234.5, 0.037
    grid_z, density_z = density_grid(z, 100)
    grid_x, density_x = density_grid(loc + scale * z, 100)
    torch.testing.assert_close(loc + scale * grid_z, grid_x)
    torch.testing.assert_close(density_z / scale, density_x, rtol=1e-6, atol=1e-9)


def test_identical_samples_give_a_finite_spike() -> None:
    grid, density = density_grid(torch.full((1, 50), 7.0), 33)
    assert torch.isfinite(density).all()
    assert grid[0, 16].item() == pytest.approx(7.0)
    assert density[0].argmax().item() == 16


def test_rejects_unusable_shapes() -> None:
    with pytest.raises(ValueError, match="samples must be"):
        density_grid(torch.zeros(3), 10)
    with pytest.raises(ValueError, match="grid_points"):
        density_grid(torch.zeros(1, 5), 1)


def test_a_sample_holding_nan_is_refused_naming_its_row() -> None:
    samples = torch.randn(3, 50, dtype=torch.float64)
    samples[2, 7] = float("nan")
    with pytest.raises(ValueError, match="samples row 2 holds NaN"):
        density_grid(samples, 64)
