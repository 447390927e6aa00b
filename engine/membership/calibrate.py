"""Membership calibration: robust z-scores against the null and the combination weights."""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from imprint.engine.errors import ImprintError

from .common import _Z_CAP  # noqa: F401

def _robust_loc_scale(x: np.ndarray) -> tuple[float, float]:
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return 0.0, 1.0
    med = float(np.median(x))
    mad = 1.4826 * float(np.median(np.abs(x - med)))
    if mad <= 1e-12:
        mad = 1.2533 * float(np.mean(np.abs(x - med)))
    if mad <= 1e-12:
        mad = 1.0
    return med, mad


def robust_calibrate(values: np.ndarray, null: np.ndarray) -> np.ndarray:
    """Robust z-score of ``values`` against a null sample.

    Parameters
    ----------
    values : float [N]
    null : float [K]  values of known non-members (``K >= 1``)

    Returns
    -------
    float64 [N]
        ``(values - median(null)) / (1.4826 * MAD(null))`` (mean absolute deviation when the MAD
        is 0, scale 1 when the null is constant), clipped to +-50.
    """
    med, sc = _robust_loc_scale(null)
    z = (np.asarray(values, np.float64) - med) / sc
    return np.clip(np.nan_to_num(z, nan=0.0, posinf=_Z_CAP, neginf=-_Z_CAP), -_Z_CAP, _Z_CAP)


def _feature_matrix(ev: dict, null_mask: np.ndarray, names: Sequence[str]) -> np.ndarray:
    cols = []
    for n in names:
        v = ev[n]
        cols.append(robust_calibrate(v, v[null_mask]))
    return np.stack(cols, 1) if cols else np.zeros((len(null_mask), 0))


def fit_weights(X: np.ndarray, y: np.ndarray, prior: np.ndarray, *, strength: float = 0.2,
                groups: np.ndarray | None = None) -> np.ndarray:
    """Non-negative logistic regression pulled towards prior weights.

    Minimises ``mean_g logloss_g(y, b + X w) + strength * ||w - prior||^2`` over ``w >= 0``
    (``logloss_g``: the mean over the rows of group ``g``, so every dev generator counts once).

    Parameters
    ----------
    X : float [N, F]  calibrated evidence
    y : int [N]       1 = used, 0 = unused
    prior : float [F] prior weights (>= 0)
    strength : float  pull towards ``prior``
    groups : int [N] or None

    Returns
    -------
    float64 [F]  fitted weights (the intercept is dropped).
    """
    from scipy.optimize import minimize

    X = np.asarray(X, np.float64)
    y = np.asarray(y, np.float64)
    prior = np.asarray(prior, np.float64)
    g = np.zeros(len(y), np.int64) if groups is None else np.asarray(groups)
    ug, ginv = np.unique(g, return_inverse=True)
    wrow = 1.0 / np.bincount(ginv)[ginv] / len(ug)

    def f(theta):
        w, b = theta[:-1], theta[-1]
        s = X @ w + b
        p = 1.0 / (1.0 + np.exp(-s))
        loss = np.sum(wrow * (np.logaddexp(0, s) - y * s))
        r = w - prior
        grad_s = wrow * (p - y)
        gw = X.T @ grad_s + 2 * strength * r
        gb = grad_s.sum()
        return loss + strength * (r @ r), np.r_[gw, gb]

    theta0 = np.r_[prior, 0.0]
    bounds = [(0.0, None)] * len(prior) + [(None, None)]
    res = minimize(f, theta0, jac=True, method="L-BFGS-B", bounds=bounds)
    return np.asarray(res.x[:-1], np.float64)


def _combine(Z: np.ndarray, w: np.ndarray, *, use_max: np.ndarray | None = None) -> np.ndarray:
    """``Z w / ||w||``; with ``use_max`` the larger of that and the strongest single evidence
    (among the columns flagged in the boolean mask ``use_max`` with positive weight), so one decisive kind of copy (e.g. a partial copy
    seen only tile-wise) is not diluted by the others."""
    nrm = float(np.linalg.norm(w))
    if nrm <= 0:
        return np.zeros(len(Z))
    s = Z @ (w / nrm)
    if use_max is not None:
        m = np.asarray(use_max, bool) & (w > 0)
        if np.any(m):
            s = np.maximum(s, Z[:, m].max(1))
    return s


# ----------------------------------------------------------------------------------------- decisions
