"""The kernels' shared definitions: one source for the CPU kernels and their CUDA twins.

:mod:`kernels.similarity` (CPU SSIM) and :mod:`kernels.cuda_similarity` (CUDA SSIM) must compute the same
number to 1e-5, so every constant of the definition lives here and both import it: the Gaussian window, the
SSIM stabilisers and the fixed-point storage of the filtered means.  The LBP side needs no copy: the CUDA kernel
(:mod:`kernels.cuda_texture`) builds its sampling tables and code lookup tables with :mod:`kernels.texture`'s own
functions.

SSIM is skimage's ``structural_similarity(a, b, data_range=R, gaussian_weights=True, sigma=1.5,
use_sample_covariance=False)``: an 11-tap Gaussian (sigma 1.5, truncate 3.5, as ``scipy.ndimage``), ``K1 = 0.01``,
``K2 = 0.03``, the map cropped by the window radius on every side.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SSIM_SIGMA", "SSIM_TRUNCATE", "SSIM_RADIUS", "SSIM_WIN", "SSIM_HALO", "SSIM_K1", "SSIM_K2",
           "FIXED_POINT_MAX", "MAX_STEP_EXPONENT", "gaussian_window", "ssim_c1_c2"]

#: Gaussian window of SSIM: standard deviation and truncation (in standard deviations), as skimage / scipy
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
#: window radius ``int(truncate * sigma + 0.5)`` = 5 and size 11; the SSIM map is cropped by the radius
SSIM_RADIUS = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
SSIM_WIN = 2 * SSIM_RADIUS + 1
#: rows / columns the valid region loses: ``[H, W] -> [H - SSIM_HALO, W - SSIM_HALO]``
SSIM_HALO = SSIM_WIN - 1
#: SSIM stabilisers: ``C1 = (K1 R)^2``, ``C2 = (K2 R)^2`` for a data range R
SSIM_K1 = 0.01
SSIM_K2 = 0.03
#: fixed-point storage of the centred filtered mean: the step q = 2**-k is the largest power of two with
#: ``max|x - m| / q <= FIXED_POINT_MAX`` (int32 with one unit of headroom for the rounding), k capped at
#: ``MAX_STEP_EXPONENT`` so that 1/q stays finite
FIXED_POINT_MAX = 2147483646.0
MAX_STEP_EXPONENT = 1000.0


def gaussian_window(sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE) -> np.ndarray:
    """1-D Gaussian taps exactly as ``scipy.ndimage._gaussian_kernel1d``.

    Returns
    -------
    ndarray, float64, shape [2 * int(truncate * sigma + 0.5) + 1]
        ``exp(-x^2 / (2 sigma^2))`` normalised to sum 1 (``SSIM_WIN`` taps with the defaults).
    """
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * x**2)
    return phi / phi.sum()


def ssim_c1_c2(data_range: float) -> tuple[float, float]:
    """SSIM's stabilisers ``((K1 R)^2, (K2 R)^2)`` for the data range ``R`` (float64)."""
    return (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
