"""Membership decisions: null thresholds, p-values, share estimates and the decision modes."""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from imprint.engine.errors import ImprintError

from .calibrate import _robust_loc_scale  # noqa: F401

def null_threshold(null_scores: np.ndarray, alpha: float, *, confidence: float = 0.95) -> dict:
    """Conservative threshold for a target false-positive rate.

    The empirical part allows ``j`` null exceedances where ``j`` is the largest count with
    ``P(Binomial(K, alpha) < j) <= 1 - confidence`` (so the true exceedance probability is below
    ``alpha`` with the given confidence); the parametric part is the Gaussian ``1 - alpha``
    quantile of the robust null fit, with the scale raised to match the null's 90/95/97.5% quantiles
    when those are further out (right-skewed null).  The larger of the two is returned.

    Parameters
    ----------
    null_scores : float [K]
    alpha : float in (0, 0.5)

    Returns
    -------
    dict with ``threshold`` (float), ``empirical``, ``gaussian``, ``allowed_exceedances``.
    """
    from scipy.stats import binom, norm

    s = np.sort(np.asarray(null_scores, np.float64)[np.isfinite(null_scores)])
    K = len(s)
    med, sc = _robust_loc_scale(s)
    if K >= 10:  # tail-adaptive scale: a right-skewed null widens the Gaussian part
        for q in (0.9, 0.95, 0.975):
            if K * (1 - q) >= 2:
                sc = max(sc, (float(np.quantile(s, q)) - med) / float(norm.isf(1 - q)))
    gauss = med + float(norm.isf(alpha)) * sc
    if K == 0:
        return {"threshold": gauss, "empirical": None, "gaussian": gauss, "allowed_exceedances": 0}
    j = 0
    while j + 1 <= K and binom.cdf(j, K, alpha) <= 1 - confidence:  # P(X < j+1) = cdf(j)
        j += 1
    emp = float(s[K - 1 - j]) if j < K else float(s[0])
    thr = max(emp, gauss)
    return {"threshold": float(thr), "empirical": emp, "gaussian": float(gauss), "allowed_exceedances": int(j)}


def _pvalues(scores: np.ndarray, null: np.ndarray) -> np.ndarray:
    """Empirical upper-tail p-values ``(1 + #{null >= s}) / (K + 1)``."""
    ns = np.sort(np.asarray(null, np.float64))
    ge = len(ns) - np.searchsorted(ns, scores, side="left")
    return (1.0 + ge) / (len(ns) + 1.0)


def estimate_used_share(p: np.ndarray, lam: float = 0.5) -> float:
    """Storey's estimate of the share of non-nulls: ``1 - #{p > lam} / ((1 - lam) N)``, in [0, 1]."""
    p = np.asarray(p, np.float64)
    if p.size == 0:
        return 0.0
    pi0 = float(np.mean(p > lam)) / (1.0 - lam)
    return float(np.clip(1.0 - pi0, 0.0, 1.0))


def f1_decision(scores: np.ndarray, null: np.ndarray, *, alpha_evidence: float = 0.01,
                min_hits: int = 3, evidence_p: float = 1e-3) -> tuple[np.ndarray, dict]:
    """Expected-F1-optimal flags from null-calibrated scores.

    1. Evidence test: ``h`` candidates above the ``alpha_evidence`` null threshold; evidence when
       ``h >= min_hits`` and ``P(Binomial(N, alpha_evidence) >= h) < evidence_p``.
    2. Without evidence: flag all (expected-F1 optimal for any unknown share of used images).
    3. With evidence: posterior ``q_i = 1 - pi0 / f(p_i)`` from a monotone (isotonic) density of
       the candidates' p-values and Storey's ``pi0``; choose the top-``k`` set maximising
       ``2 sum_{i<=k} q_i / (k + sum_i q_i)``.

    Returns
    -------
    used : int8 [N], info : dict (``pi1``, ``evidence``, ``expected_f1``, ``k``, ``threshold``)
    """
    from scipy.stats import binom
    from sklearn.isotonic import IsotonicRegression

    s = np.asarray(scores, np.float64)
    N = len(s)
    thr = null_threshold(null, alpha_evidence)["threshold"]
    h = int((s > thr).sum())
    p_ev = float(binom.sf(h - 1, N, alpha_evidence)) if h > 0 else 1.0
    p = _pvalues(s, null)
    pi1 = estimate_used_share(p)
    info = {"evidence_hits": h, "evidence_pvalue": p_ev, "pi1_storey": pi1}
    if h < min_hits or p_ev >= evidence_p:
        info.update(evidence=False, k=N, rule="flag all: no significant evidence of membership "
                    "(expected-F1-optimal for an unknown share of used images)")
        return np.ones(N, np.int8), info
    # monotone decreasing density of p-values: isotonic fit of the ECDF slope on a grid
    order = np.argsort(p, kind="stable")
    ps = p[order]
    nb = max(10, int(np.sqrt(N)))
    edges = np.quantile(ps, np.linspace(0, 1, nb + 1))
    edges[0], edges[-1] = 0.0, 1.0
    edges = np.unique(edges)
    cnt, _ = np.histogram(ps, bins=edges)
    width = np.diff(edges)
    dens = cnt / N / np.maximum(width, 1e-9)
    mids = 0.5 * (edges[1:] + edges[:-1])
    iso = IsotonicRegression(increasing=False, y_min=1e-9, out_of_bounds="clip").fit(mids, dens, sample_weight=np.maximum(width, 1e-9))
    fp = iso.predict(p)
    pi0 = float(np.clip(1.0 - pi1, 1e-3, 1.0))
    q = np.clip(1.0 - pi0 / np.maximum(fp, 1e-9), 0.0, 1.0)
    # expected F1 for each top-k by score
    o = np.argsort(-s, kind="stable")
    cq = np.cumsum(q[o])
    k = np.arange(1, N + 1)
    ef1 = 2 * cq / (k + q.sum())
    kbest = int(np.argmax(ef1)) + 1
    used = np.zeros(N, np.int8)
    used[o[:kbest]] = 1
    info.update(evidence=True, k=kbest, expected_f1=float(ef1[kbest - 1]), pi1=float(q.sum() / N),
                rule="two-group model on null-calibrated p-values, top-k maximising expected F1",
                threshold=float(s[o[kbest - 1]]))
    return used, info


# ----------------------------------------------------------------------------------------- main entry
def parse_decision(decision: str, what: str = "decision") -> tuple[str, float]:
    """``"f1"`` -> ``("f1", 0.01)``; ``"fpr:ALPHA"`` -> ``("fpr", ALPHA)`` with 0 < ALPHA < 0.5.

    ``what`` names the argument in the one-line error (the CLI passes ``"--decision"``)."""
    d = str(decision).strip().lower()
    if d == "f1":
        return "f1", 0.01
    if d.startswith("fpr:"):
        try:
            a = float(d[4:])
        except ValueError:
            raise ImprintError(f"{what} fpr:ALPHA needs a number (got {decision!r})") from None
        if not 0.0 < a < 0.5:
            raise ImprintError(f"{what} fpr:ALPHA needs 0 < ALPHA < 0.5 (got {a})")
        return "fpr", a
    raise ImprintError(f"{what} must be 'fpr:ALPHA' or 'f1' (got {decision!r})")
