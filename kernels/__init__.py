"""imprint kernels: Numba-compiled image similarity, texture and fingerprint kernels.

Pure array-in / array-out functions, no I/O.  Every public function validates
its inputs and raises :class:`ValueError` on bad shapes, dtypes, NaN/inf,
too-small images or bad pair indices.  Kernels are compiled with
``cache=True`` (first call in a fresh environment compiles, later processes
load the cache) and ``parallel=True`` over pairs / images; the thread count
follows ``numba.set_num_threads`` / ``NUMBA_NUM_THREADS``.

Public API
----------
ssim(a, b, data_range=255.0) -> float
ssim_pairs(A, B, pairs, data_range=255.0) -> float32[P]
ssim_mse_pairs(A, B, pairs, data_range=255.0) -> (float32[P], float32[P])
mse_pairs(A, B, pairs) -> float32[P]
psnr_pairs(A, B, pairs, data_range=255.0) -> float32[P]
lbp(image, P=8, R=1.0, method="uniform") -> float64[H, W]
lbp_histograms(images, P=8, R=1.0, method="uniform") -> float32[N, bins]
noise_residuals(images) -> float32[N, H, W]
fingerprint_features(images) -> float32[N, F]
FINGERPRINT_FEATURE_NAMES : list[str] (length F)
"""

from .fingerprint import FINGERPRINT_FEATURE_NAMES, fingerprint_features, noise_residuals
from .similarity import mse_pairs, psnr_pairs, ssim, ssim_mse_pairs, ssim_pairs
from .texture import lbp, lbp_histograms, lbp_n_bins

__all__ = [
    "ssim",
    "ssim_pairs",
    "ssim_mse_pairs",
    "mse_pairs",
    "psnr_pairs",
    "lbp",
    "lbp_histograms",
    "lbp_n_bins",
    "noise_residuals",
    "fingerprint_features",
    "FINGERPRINT_FEATURE_NAMES",
]
