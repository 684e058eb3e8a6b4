"""Gaussian kernel density estimates of many sample sets at once, in torch on any device.

Each row of ``samples`` gets its own Scott bandwidth (scipy.stats.gaussian_kde's default:
``n ** -0.2`` times the unbiased standard deviation) and its own grid of ``grid_points``
from ``min - 3h`` to ``max + 3h``. Two exact-enough evaluations:

- binned: linear binning onto a fine grid that contains the output grid, then one FFT
  convolution with the kernel over the whole fine grid (wrap-around only past 9h);
  the fine spacing is at most h / 16, which bounds the binning error to ~1e-4 of the peak;
- direct: the sum of kernels at every grid point, cheaper when samples x grid is small.

``method="auto"`` picks the cheaper one by a cost estimate.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

# Grid reach beyond the extreme samples, in bandwidths (the density there is ~1% of a lone
# sample's peak).
CUT = 3.0
# Fine-grid spacing in bandwidths; the linear binning error is about (spacing/h)^2 / 8 of a
# lone kernel's peak.
FINE_SPACING = 1.0 / 16.0
# Beyond this many fine points per row the binned path is not worth it.
MAX_FINE_POINTS = 1 << 16
# Elements of one direct-evaluation chunk (rows x grid x samples), to bound memory.
DIRECT_CHUNK_ELEMENTS = 1 << 22
# Kernel reach in bandwidths, for the circular convolution's slack (e^-40.5 beyond).
KERNEL_REACH = 9.0
# Angular frequency x bandwidth past which the kernel's spectrum is below e^-60.
SPECTRUM_REACH = math.sqrt(120.0)
# FFT work counted as this many multiply-adds per point per log2 level, against the direct
# path's one per sample and grid point.
FFT_COST_FACTOR = 6.0

Method = Literal["auto", "binned", "direct"]


def scott_bandwidth(samples: torch.Tensor) -> torch.Tensor:
    """Per-row bandwidth; identical samples get a tiny positive one instead of zero."""
    n = samples.shape[-1]
    centred = samples - samples.mean(dim=-1, keepdim=True)
    std = ((centred * centred).sum(dim=-1) / (n - 1)).sqrt()
    floor = torch.finfo(samples.dtype).eps * samples.abs().amax(dim=-1).clamp_min(1.0) * 16
    return (n ** -0.2) * torch.maximum(std, floor)


def density_grid(
    samples: torch.Tensor,
    grid_points: int,
    *,
    method: Method = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``samples`` [rows, n] -> (grid [rows, grid_points], density [rows, grid_points])."""
    if samples.dim() != 2 or samples.shape[1] < 2:
        raise ValueError(f"samples must be [rows, n >= 2], got {tuple(samples.shape)}")
    if grid_points < 2:
        raise ValueError(f"grid_points must be at least 2, got {grid_points}")
    finite = torch.isfinite(samples).all(dim=1)
    if not finite.all():
        row = int((~finite).nonzero()[0, 0])
        raise ValueError(f"samples row {row} holds NaN or infinite values; a density needs finite samples")
    h = scott_bandwidth(samples)
    lo = samples.amin(dim=1) - CUT * h
    hi = samples.amax(dim=1) + CUT * h
    steps = torch.linspace(0.0, 1.0, grid_points, device=samples.device, dtype=samples.dtype)
    grid = lo[:, None] + (hi - lo)[:, None] * steps
    # Oversampling so the fine spacing is at most FINE_SPACING bandwidths in every row.
    spacing_in_h = ((hi - lo) / (grid_points - 1) / h).amax().item()
    oversample = max(1, math.ceil(spacing_in_h / FINE_SPACING))
    fine_points = (grid_points - 1) * oversample + 1
    if method == "auto":
        method = _cheaper(samples.shape[1], grid_points, fine_points)
    if method == "binned" and fine_points <= MAX_FINE_POINTS:
        density = _binned(samples, h, lo, hi, fine_points)[:, ::oversample]
    else:
        density = _direct(samples, h, grid)
    return grid, density


def _cheaper(n: int, grid_points: int, fine_points: int) -> Literal["binned", "direct"]:
    if fine_points > MAX_FINE_POINTS:
        return "direct"
    fft_size = _fast_size(fine_points + int(KERNEL_REACH / FINE_SPACING))
    binned_cost = 2 * n + FFT_COST_FACTOR * fft_size * math.log2(fft_size)
    return "binned" if binned_cost < n * grid_points else "direct"


def _direct(samples: torch.Tensor, h: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    rows, n = samples.shape
    norm = 1.0 / (n * h * math.sqrt(2 * math.pi))
    chunk = max(1, DIRECT_CHUNK_ELEMENTS // (grid.shape[1] * n))
    parts = []
    for start in range(0, rows, chunk):
        sl = slice(start, start + chunk)
        z = (grid[sl, :, None] - samples[sl, None, :]) / h[sl, None, None]
        parts.append(torch.exp(-0.5 * z * z).sum(dim=2) * norm[sl, None])
    return torch.cat(parts)


def _binned(
    samples: torch.Tensor, h: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, fine_points: int
) -> torch.Tensor:
    rows, n = samples.shape
    delta = (hi - lo) / (fine_points - 1)
    position = (samples - lo[:, None]) / delta[:, None]
    left = position.floor().clamp_(0, fine_points - 2)
    right_weight = position.sub_(left)
    left_index = left.long()
    counts = torch.zeros(rows, fine_points, device=samples.device, dtype=samples.dtype)
    counts.scatter_add_(1, left_index, 1.0 - right_weight)
    counts.scatter_add_(1, left_index + 1, right_weight)
    # Circular convolution with the Gaussian sampled at the fine spacing. Wrap-around only
    # mixes points further apart than the buffer's slack, where the kernel is below e^-40.
    h_in_steps = h / delta
    slack = math.ceil(KERNEL_REACH * h_in_steps.amax().item())
    size = _fast_size(fine_points + slack)
    # The kernel's spectrum in closed form (its aliasing at a spacing of h/16 or less is
    # ~exp(-2 pi^2 16^2), nil), kept only where it exceeds e^-60 of its peak: beyond, the
    # product with the data's spectrum is nil too, and irfft pads it with zeros.
    kept = min(size // 2 + 1, math.ceil(SPECTRUM_REACH * size / (2 * math.pi * h_in_steps.amin().item())) + 1)
    frequency = torch.arange(kept, device=samples.device, dtype=samples.dtype)
    omega_h = (2 * math.pi / size) * frequency[None, :] * h_in_steps[:, None]
    kernel_spectrum = torch.exp(-0.5 * omega_h * omega_h) / (n * delta)[:, None]
    spectrum = torch.fft.rfft(counts, n=size)[:, :kept] * kernel_spectrum
    return torch.fft.irfft(spectrum, n=size)[:, :fine_points]


def _fast_size(minimum: int) -> int:
    """The smallest 2-3-5-smooth length >= minimum (FFTs are fastest on those)."""
    best = 1 << math.ceil(math.log2(minimum))
    power3 = 1
    while power3 < best:
        power35 = power3
        while power35 < best:
            size = power35
            while size < minimum:
                size *= 2
            best = min(best, size)
            power35 *= 5
        power3 *= 3
    return best
