"""Input validation shared by the public kernel wrappers.

All checks raise :class:`ValueError` with a one-line message.  Nothing here is
compiled; the Numba kernels assume validated, C-contiguous inputs.
"""

from __future__ import annotations

import math

import numpy as np

#: dtypes accepted for image inputs.
IMAGE_DTYPES = (np.uint8, np.float32, np.float64)


def as_images(x, name: str, ndim: int, min_hw: tuple[int, int] = (1, 1)) -> np.ndarray:
    """Return ``x`` as a C-contiguous uint8/float32/float64 array of ``ndim`` dims.

    Raises ValueError on wrong rank, unsupported dtype, NaN/inf values, empty
    arrays or spatial size smaller than ``min_hw``.
    """
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except Exception as exc:  # pragma: no cover - defensive
            raise ValueError(f"{name}: cannot convert to an array ({exc})") from None
    if x.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {x.shape}")
    if x.dtype not in [np.dtype(d) for d in IMAGE_DTYPES]:
        raise ValueError(f"{name}: dtype must be uint8, float32 or float64, got {x.dtype}")
    if x.size == 0 and ndim == 2:
        raise ValueError(f"{name}: empty image, shape {x.shape}")
    h, w = x.shape[-2], x.shape[-1]
    if h < min_hw[0] or w < min_hw[1]:
        raise ValueError(
            f"{name}: images must be at least {min_hw[0]}x{min_hw[1]}, got {h}x{w}"
        )
    if x.dtype.kind == "f" and x.size and not np.isfinite(x).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return np.ascontiguousarray(x)


def as_pairs(pairs, n_a: int, n_b: int) -> np.ndarray:
    """Validate ``pairs`` (integer ``[P, 2]``) against the sizes of A and B."""
    p = np.asarray(pairs)
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"pairs: expected shape [P, 2], got {p.shape}")
    if p.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if p.dtype.kind not in "iu":
        raise ValueError(f"pairs: dtype must be integer, got {p.dtype}")
    p = np.ascontiguousarray(p, dtype=np.int64)
    if p[:, 0].min() < 0 or p[:, 0].max() >= n_a:
        raise ValueError(f"pairs: first column must index A (0..{n_a - 1})")
    if p[:, 1].min() < 0 or p[:, 1].max() >= n_b:
        raise ValueError(f"pairs: second column must index B (0..{n_b - 1})")
    return p


def check_data_range(data_range) -> float:
    """Return ``data_range`` as a positive finite float."""
    try:
        r = float(data_range)
    except (TypeError, ValueError):
        raise ValueError(f"data_range must be a number, got {data_range!r}") from None
    if not math.isfinite(r) or r <= 0:
        raise ValueError(f"data_range must be positive and finite, got {data_range!r}")
    return r


def same_hw(a: np.ndarray, b: np.ndarray, na: str, nb: str) -> None:
    """Raise ValueError unless the last two dimensions of ``a`` and ``b`` agree."""
    if a.shape[-2:] != b.shape[-2:]:
        raise ValueError(
            f"{na} and {nb} must have the same image shape, got {a.shape[-2:]} and {b.shape[-2:]}"
        )


def common_dtype(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bring a pair of image stacks to one kernel dtype (uint8 pair or float32 pair)."""
    if a.dtype == np.uint8 and b.dtype == np.uint8:
        return a, b
    return (np.ascontiguousarray(a, dtype=np.float32), np.ascontiguousarray(b, dtype=np.float32))
