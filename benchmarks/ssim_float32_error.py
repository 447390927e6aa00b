"""Why the CUDA ``rows`` pair kernel filters the SSIM cross term in float64 (issue 14): the error of doing it in
float32 instead, against the float64 computation, on CT-like phantoms and on images with flat regions far from
the image mean.

    python benchmarks/ssim_float32_error.py

The CPU and CUDA kernels centre each image on its rounded mean, so the centred products ``(x - m_x)(y - m_y)``
are exact integers, but in a flat region far from the mean they are large (up to 255^2) and every output pixel
there repeats the same float32 rounding of the 11 + 11 taps: the error does not average out over the map.  The
emulation below uses numpy float32 operations in the kernel's order (no FMA); the float64 path is checked
against :func:`kernels.similarity.ssim_pairs` first.  Accuracy check only (no timing).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from imprint.kernels import ssim_pairs  # noqa: E402
from imprint.kernels.constants import SSIM_RADIUS, gaussian_window, ssim_c1_c2  # noqa: E402


def separable(p: np.ndarray, dtype) -> np.ndarray:
    """Valid 11-tap Gaussian filter of ``p`` [H, W] (vertical then horizontal, symmetric pairs summed first, as
    the kernels), every operation rounded to ``dtype``; returns [H-10, W-10]."""
    w = gaussian_window().astype(dtype)
    p = p.astype(dtype)
    r = SSIM_RADIUS

    def one(a, axis):
        n = a.shape[axis] - 2 * r

        def s(k):
            return np.take(a, np.arange(k, k + n), axis=axis)

        out = w[r] * s(r)
        for k in range(r - 1, -1, -1):
            out = out + w[k] * (s(k) + s(2 * r - k))
        return out

    return one(one(p, 0), 1)


def ssim(x: np.ndarray, y: np.ndarray, cross_dtype) -> float:
    """Mean SSIM (the kernels' definition) with only the cross term filtered in ``cross_dtype``."""
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    mx, my = np.round(x.mean()), np.round(y.mean())
    xc, yc = x - mx, y - my
    ux, uy = separable(xc, np.float64), separable(yc, np.float64)
    vx = separable(xc * xc, np.float64) - ux * ux
    vy = separable(yc * yc, np.float64) - uy * uy
    cov = separable(xc * yc, cross_dtype).astype(np.float64) - ux * uy
    c1, c2 = ssim_c1_c2(255.0)
    UX, UY = ux + mx, uy + my
    return float((((2 * UX * UY + c1) * (2 * cov + c2)) / ((UX**2 + UY**2 + c1) * (vx + vy + c2))).mean())


def main() -> None:
    from conftest import ct_like

    rng = np.random.default_rng(0)
    X, Y = ct_like(rng, 40, 128), ct_like(rng, 40, 128)
    ref = ssim_pairs(X, Y, np.stack([np.arange(40)] * 2, 1)).astype(np.float64)  # (float32 output)
    check = max(abs(ssim(X[i], Y[i], np.float64) - ref[i]) for i in range(40))
    print(f"float64 emulation vs the CPU kernel (40 CT-like 128^2 pairs, its float32 output): max |dSSIM| {check:.1e}")
    d = max(abs(ssim(X[i], Y[i], np.float32) - ssim(X[i], Y[i], np.float64)) for i in range(40))
    d_same = max(abs(ssim(X[i], X[i], np.float32) - ssim(X[i], X[i], np.float64)) for i in range(40))
    print(f"float32 cross term, CT-like pairs: max |dSSIM| {d:.1e}; identical pairs {d_same:.1e}")
    half = np.zeros((128, 128), np.uint8)
    half[:, 64:] = 255
    half2 = half.copy()
    half2[60:70, 60:70] = 128
    band = np.zeros((128, 128), np.uint8)
    band[:, :16] = 255
    band2 = band.copy()
    band2[:, :16] = 250
    for name, a, b in (("half black / half white", half, half2), ("dark with a bright band", band, band2)):
        e = abs(ssim(a, b, np.float32) - ssim(a, b, np.float64))
        print(f"float32 cross term, {name}: |dSSIM| {e:.1e} (contract: <= 1e-5)")


if __name__ == "__main__":
    main()
