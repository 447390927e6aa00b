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


# ----------------------------------------------------------------------------------------- tail-calibrated max
#: share of the null whose upper tail is modelled by a generalised Pareto distribution (a priori: the usual
#: peaks-over-threshold choice; 60 exceedances for a 300-image null)
TAIL_FRACTION = 0.2
#: fewest null values for the tail model; below it :func:`calibrated_max` falls back to :func:`_combine`
TAIL_MIN_NULL = 50
_P_FLOOR = 1e-300


def gpd_fit(exceedances: np.ndarray) -> tuple[float, float]:
    """Generalised Pareto fit of positive exceedances (Zhang & Stephens 2009, the estimator used by
    Pareto-smoothed importance sampling): fast, vectorised and stable for small samples.

    Parameters
    ----------
    exceedances : float [n]  values above the tail threshold minus the threshold (> 0), ``n >= 5``

    Returns
    -------
    (xi, sigma) : shape (> 0: heavy tail) and scale of ``S(y) = (1 + xi y / sigma) ** (-1 / xi)``.
    """
    x = np.sort(np.asarray(exceedances, np.float64))
    x = x[x > 0]
    n = len(x)
    if n < 5:
        return 0.0, float(max(x.mean(), 1e-12)) if n else 1.0
    m = 30 + int(np.sqrt(n))
    bs = 1.0 - np.sqrt(m / (np.arange(1, m + 1) - 0.5))
    bs /= 3.0 * x[max(int(n / 4 + 0.5) - 1, 0)]
    bs += 1.0 / x[-1]
    ks = np.log1p(-bs[:, None] * x[None, :]).mean(1)
    L = n * (np.log(-(bs / ks)) - ks - 1.0)
    w = 1.0 / np.exp(L[None, :] - L[:, None]).sum(1)
    b = float(np.sum(bs * w / w.sum()))
    xi = float(np.mean(np.log1p(-b * x)))
    sigma = -xi / b if b != 0 else float(x.mean())
    if not (np.isfinite(xi) and np.isfinite(sigma) and sigma > 0):
        return 0.0, float(max(x.mean(), 1e-12))
    return xi, float(sigma)


def tail_pvalues(values: np.ndarray, null: np.ndarray, *, frac: float = TAIL_FRACTION,
                 _info: dict | None = None) -> np.ndarray:
    """Upper-tail p-values of ``values`` against one evidence channel's null: conformal below the
    null's ``1 - frac`` quantile ``u``, a generalised Pareto tail above it.

    ``p(x) = (1 + #{null >= x}) / (K + 1)`` for ``x <= u``; ``p(x) = p(u) * S(x - u)`` above, with ``S``
    the :func:`gpd_fit` survival of the null's exceedances over ``u``, its shape floored at 0 (an
    exponential tail is the lightest assumed: a Gaussian-like channel does not get a finite end point).
    A heavy-tailed channel (one whose null has outliers) thus gives its outliers moderate p-values, and a
    light-tailed one gives values far beyond its null tiny ones: the channels are put on one scale.

    Parameters
    ----------
    values : float [N]
    null : float [K]   the channel's values on known non-members
    frac : float in (0, 1)

    Returns
    -------
    float64 [N] in [1e-300, 1]
    """
    ns = np.sort(np.asarray(null, np.float64)[np.isfinite(null)])
    return _tail_p_sorted(np.asarray(values, np.float64), ns, frac, _info)


def _tail_p_sorted(v: np.ndarray, ns: np.ndarray, frac: float, _info: dict | None = None) -> np.ndarray:
    """:func:`tail_pvalues` with the finite null already sorted ascending."""
    K = len(ns)
    if K == 0:
        return np.ones(len(v))
    p = (1.0 + K - np.searchsorted(ns, v, side="left")) / (K + 1.0)
    u = float(ns[min(K - 1, max(0, int(np.floor((1.0 - frac) * K))))])
    exc = ns[np.searchsorted(ns, u, side="right"):] - u
    if len(exc) >= 5:
        xi, sigma = gpd_fit(exc)
        if xi <= 0:
            xi, sigma = 0.0, float(exc.mean())
        if _info is not None:
            _info.update(u=u, xi=xi, sigma=sigma)
        p_u = (1.0 + K - np.searchsorted(ns, u, side="left")) / (K + 1.0)
        hi = v > u
        y = v[hi] - u
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            logs = -y / sigma if xi == 0 else -np.log1p(xi * y / sigma) / xi
        p[hi] = np.minimum(p[hi], p_u * np.exp(logs))
    return np.clip(np.nan_to_num(p, nan=1.0), _P_FLOOR, 1.0)


def _gpd_fit_rows(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`gpd_fit` of every row of ``X`` (float [B, n], rows sorted ascending, positive, ``n >= 5``) at once,
    in blocks of rows whose ``[b, m, n]`` float64 temporaries stay near 32 MB (every row is fitted on its own, so
    the result does not depend on the blocks; issue 15: one block of 2,400 exceedances took ~7 GB)."""
    B, n = X.shape
    m = 30 + int(np.sqrt(n))
    step = int(max(1, (32 << 20) // (8 * m * max(n, 1))))
    if B > step:
        parts = [_gpd_fit_block(X[b0:b0 + step]) for b0 in range(0, B, step)]
        return np.concatenate([a for a, _ in parts]), np.concatenate([b for _, b in parts])
    return _gpd_fit_block(X)


def _gpd_fit_block(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    B, n = X.shape
    m = 30 + int(np.sqrt(n))
    bs = (1.0 - np.sqrt(m / (np.arange(1, m + 1) - 0.5)))[None, :] / (3.0 * X[:, max(int(n / 4 + 0.5) - 1, 0)])[:, None]
    bs = bs + (1.0 / X[:, -1])[:, None]                                   # [B, m]
    ks = np.log1p(-bs[:, :, None] * X[:, None, :]).mean(2)                # [B, m]
    L = n * (np.log(-(bs / ks)) - ks - 1.0)
    w = 1.0 / np.exp(L[:, None, :] - L[:, :, None]).sum(2)                # [B, m]
    b = (bs * w).sum(1) / w.sum(1)
    xi = np.log1p(-b[:, None] * X).mean(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma = np.where(b != 0, -xi / b, X.mean(1))
    bad = ~(np.isfinite(xi) & np.isfinite(sigma) & (sigma > 0))
    xi = np.where(bad, 0.0, xi)
    sigma = np.where(bad, np.maximum(X.mean(1), 1e-12), sigma)
    return xi, sigma


def _loo_tail_p(srt: np.ndarray, frac: float) -> np.ndarray:
    """Leave-one-out :func:`tail_pvalues` of every value of a sorted null (float [K], ascending): value ``r``
    against the other ``K - 1`` with a candidate's denominator ``K + 1`` (``K / (K + 1)`` times
    ``tail_pvalues(srt[r:r+1], np.delete(srt, r))``, batched).

    The ``K + 1`` counts the candidate being tested as one more value below: a candidate just above a channel's
    null maximum then ties (``1 / (K + 1)``) with the null value that is that channel's maximum instead of beating
    it (``1 / K``), as in full conformal inference where the null value would be compared with the candidate too.
    Every difference from the full-conformal scores (the candidate left out of the null values' counts and tail
    fits) makes the null values more extreme, i.e. the decisions more conservative."""
    K = len(srt)
    p = (K - np.searchsorted(srt, srt, side="left")) / (K + 1.0)          # (1 + #{others >= x}) / (K + 1)
    q = int(np.floor((1.0 - frac) * (K - 1)))
    # a value above srt[q] leaves the others' tail threshold at srt[q]; its exceedances are the others above it
    u = float(srt[q])
    e0 = int(np.searchsorted(srt, u, side="right"))
    E = srt[e0:] - u
    n = len(E)
    if n - 1 < 5:
        for r in range(e0, K):
            p[r] = _tail_p_sorted(srt[r:r + 1], np.delete(srt, r), frac)[0] * K / (K + 1.0)
        return np.clip(p, _P_FLOOR, 1.0)
    X = np.broadcast_to(E, (n, n))[~np.eye(n, dtype=bool)].reshape(n, n - 1)
    xi, sigma = _gpd_fit_rows(X)
    light = xi <= 0
    xi = np.where(light, 0.0, xi)
    sigma = np.where(light, X.mean(1), sigma)
    p_u = (K - np.searchsorted(srt, u, side="left")) / (K + 1.0)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        logs = np.where(light, -E / sigma, -np.log1p(xi * E / sigma) / np.where(light, 1.0, xi))
    p[e0:] = np.minimum(p[e0:], p_u * np.exp(logs))
    return np.clip(np.nan_to_num(p, nan=1.0), _P_FLOOR, 1.0)


#: a-priori share of the ``"tail-split"`` rule's level on the weighted sum (the dense alternative: a copy seen by many
#: channels at once, as an in-place copier's is); the max-rule channels (the sparse alternatives: one kind of copy)
#: share the rest equally.  Equal prior mass on the two alternatives, not tuned on data (benchmarks/RESULTS.md,
#: "comb8"); ``None`` gives every channel the same share (the ``"tail"`` rule, branch dec4).
SUM_SHARE = 0.5
#: level at which :func:`channel_enrichment` counts small p-values (the default decision's level, ``fpr:0.01``; a
#: priori, not tuned); ``None`` switches the enrichment off (shares = the a-priori split)
ENRICH_LEVEL = 0.01


#: opt-in (``None``: off, comb8's shares) - how the ``"tail-split"`` rule credits a channel whose rows sit past its null
#: tail more often than chance says (branch comb13).  ``"local"``: every channel's p-values are first divided by that
#: channel's enrichment AT THE ROW'S OWN LEVEL (:func:`local_enrichment_pvalues`, a per-channel tail-area false
#: discovery estimate), then combined by :func:`split_pvalue` with the a-priori split (:data:`SUM_SHARE`); the one-level
#: count of :func:`channel_enrichment` is not used.  A channel that many rows pass by a little (elastic copies in
#: ``anat_flow_ratio``) then counts at the level where its rows are, not at 0.01 only, and a channel nobody passes keeps
#: its a-priori share instead of losing it to another channel's enrichment.  Still a symmetric function of all rows.
ENRICH_MODE: str | None = None
#: values of :data:`ENRICH_MODE`
ENRICH_MODES = (None, "local")
#: highest p-value level at which ``"local"`` counts a channel's enrichment (the ``fdr:0.1`` decision's level; a
#: priori, not tuned): above it a row's p-value is its own
LOCAL_ENRICH_MAX = 0.1


def local_enrichment_pvalues(P: np.ndarray, max_level: float = LOCAL_ENRICH_MAX) -> np.ndarray:
    """Every channel's p-values divided by the channel's enrichment at the row's own level (``ENRICH_MODE="local"``).

    For channel ``c`` and a row with ``p = p_c`` (``p <= max_level``), ``E_c(p) = #{rows: p_c <= p} / (1 + n p)``
    (observed over one plus expected, all ``n`` rows unlabelled), and ``q = p / max(1, E_c(p))``, made non-decreasing
    in ``p`` by a running minimum from the largest p down (as Benjamini-Hochberg's adjusted p-values are; so ties get
    one value and the order within a channel is kept).  ``q`` is, up to the ``+1``, the channel's tail-area false
    discovery estimate ``n p / #{p_c <= p}`` where that is below ``p``.  A channel with no excess (``E <= 1``) keeps
    its p-values; a lone extreme row is not credited (``E = 1 / (1 + n p) <= 1``).

    A symmetric function of the rows (the same for any order), so scoring every row with it treats a null row and a
    non-member candidate alike; the decisions calibrate the combined score on the null rows.

    Parameters
    ----------
    P : float [n, C]   per-channel p-values (:func:`channel_pvalues`)
    max_level : float  :data:`LOCAL_ENRICH_MAX`

    Returns
    -------
    float64 [n, C] in [1e-300, 1], ``<= P``
    """
    P = np.asarray(P, np.float64)
    n = len(P)
    if n == 0:
        return P.copy()
    o = np.argsort(P, axis=0, kind="stable")
    ps = np.take_along_axis(P, o, 0)
    rank = np.arange(1, n + 1, dtype=np.float64)[:, None]
    E = np.where(ps <= max_level, np.maximum(1.0, rank / (1.0 + n * ps)), 1.0)
    q = np.minimum.accumulate((ps / E)[::-1], axis=0)[::-1]
    out = np.empty_like(P)
    np.put_along_axis(out, o, q, 0)
    return np.clip(out, _P_FLOOR, 1.0)


def channel_pvalues(Z: np.ndarray, w: np.ndarray, use_max: np.ndarray, null_mask: np.ndarray, *,
                    frac: float = TAIL_FRACTION) -> tuple[np.ndarray, list, list]:
    """Upper-tail p-value of every channel of the tail-calibrated rules, for every row.

    The channels are the weighted sum ``Z w / ||w||`` and every max-rule column (``use_max`` with positive weight).
    A candidate row's p-value is :func:`tail_pvalues` against the channel's null rows; a null row's is the
    leave-one-out value (:func:`_loo_tail_p`: its tail model fitted without it, denominator ``K + 1``), so null rows
    are scored by tail models they did not shape, as candidates are (else the null's outliers shape their own
    heavier tail, score lower than a candidate at the same value would, and the threshold is too low; simulated in
    tests/test_membership_decide.py: FPR violations 9.7% instead of <= 5% at K = 300).

    Parameters
    ----------
    Z : float [P, F]          calibrated evidence of the pool (candidates and null)
    w : float [F]             weights (>= 0)
    use_max : bool [F]        channels that may decide alone
    null_mask : bool [P]      rows that are the null
    frac : float              :data:`TAIL_FRACTION`

    Returns
    -------
    P : float64 [P, C]        p-values in [1e-300, 1]; column 0 is the weighted sum
    channels : list [C]       ``"sum"``, then the column indices of the max-rule channels
    xi : list [C]             each channel's fitted tail shape (0: exponential)
    """
    Z = np.asarray(Z, np.float64)
    null_mask = np.asarray(null_mask, bool)
    nrm = float(np.linalg.norm(w))
    cols = [("sum", Z @ (w / nrm) if nrm > 0 else np.zeros(len(Z)))]
    m = np.asarray(use_max, bool) & (np.asarray(w) > 0)
    cols += [(int(j), Z[:, j]) for j in np.flatnonzero(m)]
    nidx = np.flatnonzero(null_mask)
    K = len(nidx)
    P = np.ones((len(Z), len(cols)))
    names, xis = [], []
    for k, (name, c) in enumerate(cols):
        tail: dict = {}
        cn = c[nidx]
        p = tail_pvalues(c, cn, frac=frac, _info=tail)
        if K >= 2:
            order = np.argsort(cn, kind="stable")
            p[nidx[order]] = _loo_tail_p(cn[order], frac)
        P[:, k] = p
        names.append(name)
        xis.append(float(tail.get("xi", 0.0)))
    return P, names, xis


def channel_enrichment(P: np.ndarray, level: float = ENRICH_LEVEL) -> np.ndarray:
    """How much more often each channel's p-value is small than chance says, over ALL rows (candidates and null alike,
    unlabelled): ``E_c = (1 + #{rows: p_c <= level}) / (1 + n level)``.

    A symmetric function of the rows, so scoring every row with shares built from it treats a null row and a
    non-member candidate alike (the decisions' exchangeability).  Under no members ``E_c ~ 1`` in every channel; the
    channels that carry the members' copies (the weighted sum for an in-place copier, a registered or anatomy channel
    for transformed copies) are enriched by the members.

    Parameters
    ----------
    P : float [n, C]   per-channel p-values (:func:`channel_pvalues`)
    level : float in (0, 1)

    Returns
    -------
    float64 [C]  (> 0)
    """
    P = np.asarray(P, np.float64)
    return (1.0 + (P <= level).sum(0)) / (1.0 + len(P) * float(level))


def split_shares(P: np.ndarray, sum_share: float = SUM_SHARE, level: float | None = ENRICH_LEVEL) -> np.ndarray:
    """Shares of the level for :func:`split_pvalue`: the a-priori split (``sum_share`` on the weighted sum, column 0;
    the rest equally on the ``C - 1`` single channels) times ``max(1, E_c)`` (:func:`channel_enrichment`, ``level``
    None: 1), normalised to sum 1.  A channel whose p-values are no more often small than chance keeps its a-priori
    share relative to the others; one that carries copies gets proportionally more.

    Parameters
    ----------
    P : float [n, C]; sum_share : float in (0, 1); level : float or None

    Returns
    -------
    float64 [C], positive, summing to 1
    """
    C = P.shape[1]
    if C == 1:
        return np.ones(1)
    if not 0.0 < float(sum_share) < 1.0:
        raise ImprintError(f"sum_share must be in (0, 1) (got {sum_share!r})")
    v = np.r_[float(sum_share), np.full(C - 1, (1.0 - float(sum_share)) / (C - 1))]
    if level is not None:
        v = v * np.maximum(1.0, channel_enrichment(P, level))
    return v / v.sum()


def split_pvalue(P: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """Weighted min-p of every row: ``t = min_c p_c / v_c``, returned as ``1 - prod_c (1 - min(1, v_c t))``.

    ``t`` is the weighted Bonferroni statistic (``P(t <= x) <= x`` for valid ``p_c`` under any dependence); the
    product form is a monotone, continuous map of it (exact under independent channels, ``~ t`` in the tail), so the
    score has no point mass at 1 where several channels are unremarkable.  The decisions calibrate the score on the
    null rows' own joint distribution, so neither the Bonferroni bound nor independence is relied on.

    Parameters
    ----------
    P : float [N, C]       per-channel p-values (:func:`channel_pvalues`)
    shares : float [C]     positive shares of the level, summing to 1

    Returns
    -------
    float64 [N] in [1e-300, 1]
    """
    P = np.asarray(P, np.float64)
    v = np.asarray(shares, np.float64)
    t = (P / v).min(1)
    with np.errstate(divide="ignore"):
        lg = np.log1p(-np.minimum(1.0, np.outer(t, v))).sum(1)
    return np.clip(-np.expm1(lg), _P_FLOOR, 1.0)


def calibrated_max(Z: np.ndarray, w: np.ndarray, use_max: np.ndarray, null_mask: np.ndarray, *,
                   frac: float = TAIL_FRACTION, sum_share: float | None = None,
                   enrich_level: float | None = ENRICH_LEVEL) -> tuple[np.ndarray, dict]:
    """Combined score with every channel on its own null's scale (the per-evidence calibrated max rule).

    :func:`_combine` takes the larger of the weighted sum and the strongest single evidence on robust
    z-scores; a channel with a heavy-tailed null (count evidence in the sum, a rare close anatomy match)
    then puts one null image far above every other, and with a 300-image null that one image is the
    ``fpr:0.01`` threshold (benchmarks/RESULTS.md, "Decision gap").  Here the weighted sum and each
    max-rule channel (``use_max`` with positive weight) get :func:`tail_pvalues` against their own null
    values (:func:`channel_pvalues`), and the score is the probit of a combined p-value:

    * ``sum_share=None`` (the ``"tail"`` rule): the smallest, ``-Phi^-1(min_c p_c)``: every channel the same share;
    * ``sum_share=a`` (the ``"tail-split"`` rule): :func:`split_pvalue` with the shares of :func:`split_shares`:
      a priori ``a`` on the weighted sum and ``(1 - a) / m`` on each of the ``m`` max-rule channels, each times its
      enrichment in small p-values over all rows (``enrich_level``; a symmetric function of the rows, so null rows
      and candidates are scored by the same function).  With equal shares the min-p rule ranks a candidate carried
      by the sum (several channels moderately strong, as an in-place copier's members are) below non-members whose
      smallest of ~10 noisy channels is smaller by chance (multiplicity in the bulk: dev gen_e AUC 0.96 -> 0.935,
      benchmarks/RESULTS.md "comb8"); the a-priori split alone would in turn cost transformed copies carried by
      one registered / anatomy channel, which the enrichment gives back their share; a channel far beyond its null
      still decides alone.

    The decision rules calibrate this score on its own null (the reference), so the guarantees keep their form;
    multiplicity over the channels is in that null.

    Parameters
    ----------
    Z : float [P, F]          calibrated evidence of the pool (candidates and null)
    w : float [F]             weights (>= 0)
    use_max : bool [F]        channels that may decide alone
    null_mask : bool [P]      rows that are the null
    frac : float              :data:`TAIL_FRACTION`
    sum_share : float in (0, 1) or None
    enrich_level : float or None   :data:`ENRICH_LEVEL` (with ``sum_share``; unused with :data:`ENRICH_MODE` ``"local"``,
                                   which takes the a-priori split and :func:`local_enrichment_pvalues` instead)

    Returns
    -------
    score : float64 [P]       ``-Phi^-1(p)``, at most ~37 (p floored at 1e-300)
    info : dict               ``channels`` (names: "sum" or column indices), per-channel tail shape ``xi``,
                              ``shares`` (the level's share of each channel)
    """
    from scipy.special import ndtri

    P, names, xis = channel_pvalues(Z, w, use_max, null_mask, frac=frac)
    C = P.shape[1]
    if sum_share is None or C == 1:
        shares = np.full(C, 1.0 / C)
        p = P.min(1)
    elif ENRICH_MODE == "local":
        shares = split_shares(P, sum_share, None)
        p = split_pvalue(local_enrichment_pvalues(P), shares)
    elif ENRICH_MODE is None:
        shares = split_shares(P, sum_share, enrich_level)
        p = split_pvalue(P, shares)
    else:
        raise ImprintError(f"calibrate.ENRICH_MODE must be one of {ENRICH_MODES} (got {ENRICH_MODE!r})")
    score = -ndtri(np.clip(p, _P_FLOOR, 1.0 - 1e-12))
    info = {"channels": names, "xi": xis, "shares": [float(v) for v in shares]}
    return np.asarray(score, np.float64), info


# ----------------------------------------------------------------------------------------- decisions
# ----------------------------------------------------------------------------------------- the null
#: z-scored pixel correlation above which a reference image counts as a near-duplicate of a candidate
NEAR_DUP_CORR = 0.98
#: family-wise false-alarm rate of the exchangeability warning (Bonferroni over the nuisance statistics)
EXCHANGE_ALPHA = 0.01
#: evidence with a real-to-real analogue (:func:`real_pair_null`), used when there is no labelled null
PAIR_FEATURES = ("pixel_nn_ratio", "mse_ratio", "shape_ratio")
#: the transform-invariant (registered) evidence's real-to-real analogue (:func:`real_pair_null` with
#: ``register=True``): each real image registered onto its shortlisted other reals, as if they were generated
PAIR_REG_FEATURES = ("reg_ratio", "reg_lo_ratio", "reg_lp_ratio")
#: the anatomy evidence's real-to-real analogue (:func:`real_pair_null` with ``anatomy=True``): the best Gaussian
#: low-pass NCC (in place or mirrored, and registered on the low-pass grids over the shortlisted candidates,
#: :func:`.anatomy.anatomy_pair_values`) of a real image with part A over that with part B
#: (``anat_flow_ratio``, the flow channel, only with :data:`.deform.FLOW_CHANNEL` and the anatomy null registered;
#: branch elas13; ``ptile_ratio``, the partial-copy channel, only with :data:`.ptiles.PTILE_CHANNEL`; branch part13)
PAIR_ANAT_FEATURES = ("anat_ratio", "anat_flow_ratio", "ptile_ratio")
#: most real images that play the non-member in :func:`real_pair_null` (a random subset above it): bounds the
#: registered null's cost (~8 refined registrations per image) on large folders; 6 rows each = 12,000 null rows
#: (a priori: ample for an fpr:0.01 order statistic and the tail fits; no dev folder reaches it)
PAIR_NULL_MAX_IMAGES = 2000


def near_duplicates(null_images: np.ndarray, candidates: np.ndarray, *, corr: float = NEAR_DUP_CORR,
                    mirror: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Which null (reference) images are near-duplicates of a candidate.

    A null image is a near-duplicate when the Pearson correlation of its pixels with those of some
    candidate exceeds ``corr`` (per-image z-scored pixels, so brightness / contrast changes do not
    hide it), also after a left-right flip when ``mirror``.  With ``z`` z-scored (population std),
    ``corr = 1 - mean((z_a - z_b)**2) / 2``, so the search is an exact nearest-neighbour search.

    Parameters
    ----------
    null_images : uint8 [K, H, W]
    candidates : uint8 [N, H, W]
    corr : float in (0, 1)
    mirror : bool

    Returns
    -------
    dup : bool [K]              True = near-duplicate (remove it from the null)
    best_corr : float64 [K]     highest correlation with any candidate (either orientation)
    """
    from .evidence import _knn, zscore_images

    K = len(null_images)
    if K == 0 or len(candidates) == 0:
        return np.zeros(K, bool), np.full(K, -1.0)
    from .evidence import generated_chunk

    zn = zscore_images(null_images)
    npix = float(zn.shape[1] * zn.shape[2])
    best = np.full(K, np.inf)
    views = [zn, zn[:, :, ::-1]] if mirror else [zn]
    views = [np.ascontiguousarray(v.reshape(K, -1)) for v in views]
    step = generated_chunk(len(candidates), zn.shape[1] * zn.shape[2])   # candidates by blocks (issue 15)
    for c0 in range(0, len(candidates), step):
        zc = zscore_images(np.asarray(candidates[c0:c0 + step])).reshape(-1, zn.shape[1] * zn.shape[2])
        for v in views:
            d, _ = _knn(zc, v, 1)
            best = np.minimum(best, d[:, 0].astype(np.float64) / npix)
    c = 1.0 - best / 2.0
    return c > corr, c


def nuisance_statistics(images: np.ndarray) -> dict:
    """Per-image nuisance statistics that membership must not depend on.

    Parameters
    ----------
    images : uint8 [N, H, W]

    Returns
    -------
    dict[str, float64 [N]]: ``brightness`` (mean grey level), ``contrast`` (grey-level std),
    ``body_fraction`` (share of pixels above the image's Otsu threshold).
    """
    from .evidence import _otsu_thresholds

    x = np.asarray(images)
    if len(x) > 4096:   # by blocks: no float64 copy of a large (memory-mapped) set (issue 15)
        parts = [nuisance_statistics(x[s:s + 4096]) for s in range(0, len(x), 4096)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    f = x.reshape(len(x), -1)
    t = _otsu_thresholds(x) if len(x) else np.zeros(0)
    return {"brightness": f.mean(1, dtype=np.float64), "contrast": f.std(1, dtype=np.float64),
            "body_fraction": (f > t[:, None]).mean(1) if len(x) else np.zeros(0)}


def exchangeability_check(null_stats: dict, cand_stats: dict, *, alpha: float = EXCHANGE_ALPHA) -> dict:
    """Two-sample Kolmogorov-Smirnov tests of the null against the candidates on nuisance statistics.

    The null's guarantees assume its images are exchangeable with the unused candidates.  Membership
    does not change a candidate's brightness, contrast, body size or nearest-real distance, so a
    significant difference on these means the null is drawn from another population (scanner,
    window, patients) and the stated error rates may not hold.  ``warn`` is raised when any
    Bonferroni-corrected p-value is below ``alpha``: for an exchangeable null the false-alarm rate is
    at most ``alpha``.

    Parameters
    ----------
    null_stats, cand_stats : dict[str, float [K] / float [N]]  same keys
    alpha : float  family-wise false-alarm rate

    Returns
    -------
    dict: ``warn`` (bool), ``alpha``, ``tests`` (name -> ``ks``, ``pvalue``, ``p_bonferroni``,
    ``null_median``, ``candidate_median``), ``worst`` (name of the smallest p-value), ``message``.
    """
    from scipy.stats import ks_2samp

    tests = {}
    names = [n for n in null_stats if n in cand_stats]
    m = max(1, len(names))
    for n in names:
        a = np.asarray(null_stats[n], np.float64)
        b = np.asarray(cand_stats[n], np.float64)
        a, b = a[np.isfinite(a)], b[np.isfinite(b)]
        if len(a) < 2 or len(b) < 2:
            continue
        r = ks_2samp(a, b)
        tests[n] = {"ks": float(r.statistic), "pvalue": float(r.pvalue), "p_bonferroni": float(min(1.0, m * r.pvalue)),
                    "null_median": float(np.median(a)), "candidate_median": float(np.median(b))}
    out = {"alpha": float(alpha), "tests": tests, "warn": False, "worst": None, "message": ""}
    if tests:
        worst = min(tests, key=lambda n: tests[n]["pvalue"])
        t = tests[worst]
        out["worst"] = worst
        out["warn"] = bool(t["p_bonferroni"] < alpha)
        if out["warn"]:
            out["message"] = (f"WARNING: the null is not exchangeable with the candidates on {worst} "
                              f"(KS {t['ks']:.2f}, p={t['p_bonferroni']:.1e} after Bonferroni over {m}; median "
                              f"{t['null_median']:.3g} vs {t['candidate_median']:.3g}); the stated error rates may not hold.")
    return out


#: reference neighbour rank of :func:`series_groups`: a pair is "too close to be two patients" against each
#: image's ``SERIES_K``-th nearest other real (so series of up to ``SERIES_K - 1`` slices leave that reference
#: among other patients; longer series still chain through their adjacent slices).  A priori.
SERIES_K = 10
#: probability, under the locally uniform model of :func:`series_groups`, that a real folder of distinct patients
#: holds ANY false link (a union bound over its images).  A priori; checked by simulation in
#: tests/test_membership_unsupervised.py and on the dev corpus (benchmarks/RESULTS.md, uns7).
SERIES_ALPHA = 0.05


def series_groups(d: np.ndarray, idx: np.ndarray, *, k: int = SERIES_K, alpha: float = SERIES_ALPHA
                  ) -> tuple[np.ndarray, dict]:
    """Group a real folder into series (several slices of one patient) from the images alone, no metadata.

    Model (the one behind :func:`real_pair_null`'s size correction): around an image, the other patients are
    locally uniform in a space of intrinsic dimension ``m``, so the volumes ``V_j ~ D_j ** a`` (``D_j`` the
    squared distance to the ``j``-th nearest other image, ``a = m / 2``) are the arrival times of a Poisson
    process.  Then ``V_k / V_2k ~ Beta(k, k)``, whose median is 1/2, so ``a`` is measured from the folder as
    ``log 2 / median_i log(D_i,2k / D_i,k)`` (ranks ``k..2k`` lie beyond any series shorter than ``k``, and the
    median over images resists the rest); and ``(D_1 / D_k) ** a ~ Beta(1, k - 1)``, so an image of distinct
    patients has a neighbour closer than ``f * D_k`` with probability ``u = 1 - (1 - f ** a) ** (k - 1)``.
    ``u = alpha / R`` fixes ``f``; a link joins ``i`` and ``j`` when ``j`` is among ``i``'s ``k - 1`` nearest and
    ``D_ij < f * D_i,k`` (``i`` sees ``j`` as too close to be another patient).  By the union bound over the
    images a folder of distinct patients holds any link with probability <= ``alpha``.  Series are the
    connected components of the links (single linkage: adjacent slices chain a longer series).

    Parameters
    ----------
    d : float [R, K]     squared distances to each image's ``K >= 2k`` nearest other images, ascending per row
                         (z-scored pixels: proportional to ``1 - correlation``)
    idx : int [R, K]     their indices (into the same folder)
    k : int              reference rank (:data:`SERIES_K`)
    alpha : float        probability of any false link in a folder of distinct patients (:data:`SERIES_ALPHA`)

    Returns
    -------
    groups : int64 [R]   series label of every image (``0..G-1``; an image alone is its own series)
    info : dict          ``n_series`` (series of >= 2 images), ``n_grouped`` (images in them), ``largest``,
                         ``n_links``, ``exponent`` (``a``; None when not measured), ``factor`` (``f``), ``k``,
                         ``alpha``, ``reason`` (why nothing was grouped, else "")
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    d = np.asarray(d, np.float64)
    idx = np.asarray(idx, np.int64)
    R = len(d)
    info = {"n_series": 0, "n_grouped": 0, "largest": 1 if R else 0, "n_links": 0, "exponent": None,
            "factor": 0.0, "k": int(k), "alpha": float(alpha), "reason": ""}
    groups = np.arange(R, dtype=np.int64)
    if R < 2 * k + 1 or d.shape[1] < 2 * k:
        info["reason"] = f"{R} images, {d.shape[1] if d.ndim == 2 else 0} neighbours: fewer than {2 * k + 1} / {2 * k}"
        return groups, info
    o = np.argsort(d, 1, kind="stable")
    d, idx = np.take_along_axis(d, o, 1), np.take_along_axis(idx, o, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        lr = np.log(d[:, 2 * k - 1] / d[:, k - 1])
    lr = lr[np.isfinite(lr)]
    med = float(np.median(lr)) if len(lr) else 0.0
    if not med > 0:
        info["reason"] = "the neighbour distances do not grow with rank (ties)"
        return groups, info
    a = math.log(2.0) / med
    u = -math.expm1(math.log1p(-alpha / R) / (k - 1))
    f = u ** (1.0 / a)
    ref = d[:, k - 1]
    near = d[:, :k - 1]
    nb = idx[:, :k - 1]
    ok = (nb >= 0) & (near < f * ref[:, None])
    i, j = np.nonzero(ok)
    info.update(exponent=float(a), factor=float(f))
    if len(i):
        g = coo_matrix((np.ones(len(i)), (i, nb[i, j])), shape=(R, R))
        _, groups = connected_components(g, directed=False)
        groups = groups.astype(np.int64)
        size = np.bincount(groups)
        info.update(n_series=int((size > 1).sum()), n_grouped=int(size[size > 1].sum()), largest=int(size.max()),
                    n_links=int(len({(min(p, q), max(p, q)) for p, q in zip(i.tolist(), nb[i, j].tolist())})))
    return groups, info


def real_series_groups(real: np.ndarray, **kw) -> tuple[np.ndarray, dict]:
    """:func:`series_groups` of a real folder (uint8 [R, H, W]) from its exact z-scored pixel neighbours (in place,
    the ``2 k`` nearest other images).  Returns ``groups`` int64 [R] and ``info`` as there."""
    from .evidence import _knn_self, _zrows, generated_chunk

    R = len(real)
    k = int(kw.get("k", SERIES_K))
    if R < 2 * k + 1:
        return series_groups(np.zeros((R, 0)), np.zeros((R, 0), np.int64), **kw)
    d, idx = _knn_self(_zrows(real), R, 2 * k, generated_chunk(R, real.shape[1] * real.shape[2]))
    return series_groups(d, idx, **kw)


def _without_own_series(d: np.ndarray, idx: np.ndarray, groups: np.ndarray | None, k: int,
                        rows: np.ndarray | None = None):
    """Each row's neighbour list (ascending ``d`` [R, K], ``idx`` [R, K]) without its own series' images,
    cut to ``k`` columns (``K >= k`` + the largest series - 1 keeps ``k`` others).  ``groups`` None: cut only.
    ``rows`` (int [R] or None): the image of each list (None: list ``i`` is image ``i``)."""
    if groups is None:
        return d[:, :k], idx[:, :k]
    own = groups[np.maximum(idx, 0)] == groups[slice(None) if rows is None else np.asarray(rows)][:, None]
    o = np.argsort(own, 1, kind="stable")                  # others first, in their order
    return np.take_along_axis(d, o, 1)[:, :k], np.take_along_axis(idx, o, 1)[:, :k]


#: issue 15 (scale10): with more real images than play the non-member (``max_images``), the pair null's per-image
#: searches (the z-pixel and shape-mask neighbours, the raw-MSE pairs) run for those images only, against every real
#: image, instead of for every real image (the other rows were computed, then dropped).  Same lists and values as
#: the all-rows search up to float32 rounding in the search's distances (tests/test_pair_null_scale.py); False:
#: every row, as before (the tests' reference).
QUERY_ONLY = True


def _knn_rows(feats, n: int, rows: np.ndarray, k: int, block: int):
    """:func:`.evidence._knn_self` for the query ``rows`` only: the ``k`` nearest OTHER rows of a set of ``n``
    (features per block, ``feats(rows) -> float32 [len(rows), D]``), searched one base block of ``block`` rows at
    a time and merged exactly by (distance, index).  The row itself is dropped from its own list (``k + 1`` are
    searched in the block that holds it).

    Returns float32 [len(rows), k] squared distances (ascending) and int64 [len(rows), k] indices (-1 / inf padded).
    """
    from .evidence import _knn, _merge_topk

    rows = np.asarray(rows, np.int64)
    k = int(min(k, n - 1))
    nq = len(rows)
    bd = np.full((nq, k), np.inf, np.float32)
    bi = np.full((nq, k), -1, np.int64)
    for q0 in range(0, nq, block):
        r = rows[q0:q0 + block]
        fq = feats(r)
        for b0 in range(0, n, block):
            b1 = min(n, b0 + block)
            fb = feats(np.arange(b0, b1))
            inside = (r >= b0) & (r < b1)
            kk = min(k + int(inside.any()), b1 - b0)
            d, i = _knn(fb, fq, kk)
            i = np.where(i >= 0, i + b0, -1)
            own = i == r[:, None]                      # the row itself: pushed past the list's end, then cut
            d = np.where(own, np.inf, d)
            i = np.where(own, -1, i)
            bd[q0:q0 + len(r)], bi[q0:q0 + len(r)] = _merge_topk(bd[q0:q0 + len(r)], bi[q0:q0 + len(r)], d, i, k)
    return bd, bi


def _pixel_knn_memo(real: np.ndarray, cache: dict | None, q: np.ndarray, kx: int, kk: int,
                    groups: np.ndarray | None):
    """The pair null's z-pixel neighbour lists memoised in ``cache`` (issue 15, scale10): the audit's two
    :func:`real_pair_null` calls (registered, then anatomy) search the same lists.  Returns None without a cache,
    else ``(hit or None, store, key)``; the key hashes the images' content keys, the query rows, ``kx``, ``kk`` and
    the series labels."""
    if cache is None:
        return None
    import hashlib

    from .common import _hashes

    h = hashlib.sha1(repr((len(real), tuple(real.shape[1:]), int(kx), int(kk))).encode())
    h.update("\0".join(map(str, _hashes(real))).encode())
    h.update(np.ascontiguousarray(q, np.int64).tobytes())
    if groups is not None:
        h.update(np.ascontiguousarray(groups, np.int64).tobytes())
    store = cache.setdefault("pair_null_pixel_knn", {})
    key = h.hexdigest()
    return store.get(key), store, key


def _pair_reg_candidates(real: np.ndarray, idx: np.ndarray, keys: list, cache: dict, *, k_reg: int, n_pix: int,
                         k_spec: int, share: float, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Registration candidates of every real image among the OTHER real images, built by the evidence's own
    :func:`.register.shortlists` (moment-frame descriptors with shifted queries, z-pixel neighbours, spectra),
    each source enlarged by ``1 / share`` so that the part of a split holding a share ``share`` of the other
    reals still gets about as many candidates as the evidence's shortlist among the generated images.

    ``rows`` (or None: all): the images whose candidates are searched (issue 15, spd11: the sampled images, the
    only ones registered); the other rows are -1.

    Returns ``cand`` int64 [R, C] (indices into ``real``, -1 = none, never the row itself) and ``flip`` [R, C]."""
    from .register import shortlists

    grow = 1.0 / max(min(share, 1.0), 1e-3)
    R = len(real)
    kr = int(min(R - 1, math.ceil(k_reg * grow)))
    ks = int(min(R - 1, math.ceil(k_spec * grow)))
    npx = int(min(idx.shape[1], math.ceil(n_pix * grow)))
    _, _, cr, fcr = shortlists(real, real, idx, idx, k_reg=kr, n_pix=npx, k_spec=ks, keys_gen=keys,
                               keys_pool=keys, cache=cache, rows=rows, control_only=True)
    return cr, fcr


def _pair_reg_values(real: np.ndarray, cand: np.ndarray, cflip: np.ndarray, inA: np.ndarray, keys: list,
                     cache: dict, eps: float = 1e-3, only: np.ndarray | None = None) -> dict:
    """One split's registered null values: every real image registered (:func:`.register._best_registered`,
    the evidence's own rule: the coarse-best candidates refined, the best NCC kept) onto its candidates in
    part A (playing the generated images) and in part B (the other reals); ``-log((1 - ncc_A + eps) /
    (1 - ncc_B + eps))`` at full resolution, ~32 px and ~16 px, as in
    :func:`.register.registered_evidence`.  NaN where a part holds no candidate.  Registrations are
    memoised in ``cache`` (content keys), so the splits share them with each other and with the evidence.
    ``only`` (bool [R] or None): register only these images (the others' values are NaN)."""
    from .register import _best_registered

    R = len(real)
    best = {}
    for part in (True, False):
        c = np.where((cand >= 0) & (inA[np.maximum(cand, 0)] == part), cand, -1)
        has = (c >= 0).any(1) if only is None else ((c >= 0).any(1) & only)
        rows = np.flatnonzero(has)
        v = {k: np.full(R, np.nan) for k in ("ncc", "ncc_lo", "ncc_lp")}
        if len(rows):
            _, out = _best_registered(real[rows], real, c[rows], cflip[rows], keys_a=[keys[r] for r in rows],
                                      keys_b=keys, cache=cache)
            for k in v:
                v[k][rows] = out[k]
        best[part] = v
    a, b = best[True], best[False]
    with np.errstate(invalid="ignore"):
        return {"reg_ratio": -np.log((1 - a["ncc"] + eps) / (1 - b["ncc"] + eps)),
                "reg_lo_ratio": -np.log((1 - a["ncc_lo"] + eps) / (1 - b["ncc_lo"] + eps)),
                "reg_lp_ratio": -np.log((1 - a["ncc_lp"] + eps) / (1 - b["ncc_lp"] + eps))}


def real_pair_null(real: np.ndarray, n_generated: int, *, k: int = 32, splits: Sequence[float] = (0.25, 0.5, 0.75),
                   repeats: int = 2, random_state: int = 0, cache: dict | None = None, register: bool = False,
                   k_reg: int = 6, n_pix: int = 3, k_spec: int = 4,
                   max_images: int | None = None, anatomy: bool = False,
                   anatomy_register: bool | None = None, series: bool = True,
                   groups: np.ndarray | None = None, anatomy_lowpass: bool | None = None,
                   base: bool = True) -> dict:
    """Null evidence from pairs of different patients in the real folder (no labelled null needed).

    Each real image ``x`` plays a non-member: the other real images are split at random into a
    "generated" part ``A`` (a share ``p`` of them) and a "real" part ``B``, and the null value is
    ``-log(d_A1 / d_B1)`` (nearest in ``A`` over nearest in ``B``), the same formula as the evidence
    ``-log(d_G1 / d_R1)`` for a generator that makes new patients.  Only distances between distinct
    patients enter, so the null does not depend on how many candidates are members.

    Size correction: for locally uniform data of intrinsic dimension ``m`` (squared distances) the
    value is ``theta * (log(|A| / |B|) + Logistic)`` with ``theta = 2 / m``; the evidence has
    ``log(M / (R - 1))`` in place of ``log(|A| / |B|)``.  ``theta`` is measured, not assumed: it is the
    slope of the (10%-trimmed) mean null value against ``log(p / (1 - p))`` over the splits; every null value is
    then shifted by ``theta * (log(M / (R - 1)) - log(p / (1 - p)))``.

    Parameters
    ----------
    real : uint8 [R, H, W]  (R >= 5)
    n_generated : int       ``M``, the number of generated images
    k : int                 nearest other reals kept per image and metric (the nearest of each part is
                            searched among them; the raw-MSE pairs are the z-pixel shortlist)
    splits : shares ``p`` of the other reals playing the generated part
    repeats : random splits per share
    random_state : int
    cache : dict or None    memo shared with the evidence (anatomy masks, registrations)
    register : bool         also the transform-invariant evidence (:data:`PAIR_REG_FEATURES`): every real image
                            registered onto its shortlisted other reals (:func:`_pair_reg_candidates`, the
                            evidence's shortlists and registration), the best of part A over the best of part B
    k_reg, n_pix, k_spec : int   the evidence's registration shortlist sizes (:func:`.register.registered_evidence`)
    anatomy : bool          also the anatomy evidence (:data:`PAIR_ANAT_FEATURES`): the best low-pass NCC with part A
                            over the best with part B, among each image's ``k`` nearest other reals in anatomy
                            (:func:`.anatomy.anatomy_pair_values`, exhaustive over each part)
    anatomy_register : bool or None   the anatomy null also registers each image on the low-pass grids over its
                            shortlisted other reals (:func:`_pair_reg_candidates`), as the evidence does with
                            :data:`.anatomy.REGISTERED` (None: follow that flag)
    series : bool           exclude each image's own series (several slices of one patient, found from the images
                            by :func:`series_groups`) from every neighbour list, registration candidate list and the
                            anatomy search, so the null measures how close two DIFFERENT patients get (default
                            True; with no series found the null is the one before, bit for bit)
    groups : int [R] or None  series labels to use instead of :func:`series_groups` (``series`` must be True)
    anatomy_lowpass : bool or None  the anatomy null's part A also searches the low-pass candidates
                            (:func:`.register.lowpass_pair_candidates`), as the evidence does with the same flag;
                            None follows ``anatomy.LOWPASS_CANDIDATES``
    base : bool             also the plain features (:data:`PAIR_FEATURES`; default True).  False: only the
                            registered / anatomy features asked for (the audit's anatomy-only call, whose plain
                            features were computed and dropped; issue 15, scale10)
    max_images : int or None     at most this many real images play the non-member (a seeded random subset; the
                            splits and neighbours still range over every real image), so the registered null's cost
                            is bounded on large folders (default :data:`PAIR_NULL_MAX_IMAGES`; None: that default)

    Returns
    -------
    dict[str, float64 [R' * len(splits) * repeats]] (``R' = min(R, max_images)``) for every name in
    :data:`PAIR_FEATURES` (and :data:`PAIR_REG_FEATURES` with ``register``, :data:`PAIR_ANAT_FEATURES` with
    ``anatomy``), ``"_images"`` (int [rows]: the real
    image of every row); the rows
    of one split are consecutive; row ``r`` of a split is real image ``r % R``), ``"_theta"`` and
    ``"_shift"`` (name -> float: the slope and the mean shift applied), ``"_groups"`` (int64 [R]: the series
    label of every real image; every image its own when ``series`` is False).
    """
    from scipy.stats import trim_mean

    from .common import _EPS
    from .evidence import _cached_mask_counts, _knn_self, _pair_mse, _zrows, generated_chunk

    R = len(real)
    if R < 5:
        raise ImprintError(f"without a reference of >= 20 known non-members the null comes from pairs of real images, "
                           f"which needs at least 5 real images (got {R}); pass --reference")
    kk = int(min(max(2, k), R - 1))
    npix = float(real.shape[1] * real.shape[2])
    block = generated_chunk(R, real.shape[1] * real.shape[2])   # issue 15: the R x R searches go by blocks
    ks = SERIES_K
    grp_info = None
    if series and groups is None:
        d, idx = _knn_self(_zrows(real), R, max(kk, min(2 * ks, R - 1)), block)
        groups, grp_info = series_groups(d, idx, k=ks)
    groups = None if groups is None else np.asarray(groups, np.int64)
    if groups is not None and len(groups) != R:
        raise ImprintError(f"groups must label every real image ({len(groups)} labels for {R} images)")
    gmax = int(np.bincount(np.unique(groups, return_inverse=True)[1]).max()) if groups is not None else 1
    if gmax == 1:
        groups = None                                      # no series: the lists as before
    kx = int(min(kk + gmax - 1, R - 1))                    # room for the own series' images, then dropped
    cap = PAIR_NULL_MAX_IMAGES if max_images is None else int(max_images)
    only = None
    if R > cap:
        only = np.zeros(R, bool)
        only[np.random.default_rng([random_state, 1]).choice(R, cap, replace=False)] = True
    # the rows whose lists are searched: the images that play the non-member (issue 15, scale10: QUERY_ONLY)
    q = np.arange(R) if only is None or not QUERY_ONLY else np.flatnonzero(only)
    if anatomy_register is None:
        from . import anatomy as _anatomy_mod

        anatomy_register = _anatomy_mod.REGISTERED
    need_pix = base or register or (anatomy and anatomy_register)
    if need_pix:
        memo = _pixel_knn_memo(real, cache, q, kx, kk, groups)
        if memo is not None and memo[0] is not None:
            d, idx = memo[0]
        else:
            if grp_info is not None and d.shape[1] >= kx:
                d, idx = d[q], idx[q]
            elif len(q) == R:
                d, idx = _knn_self(_zrows(real), R, kx, block)
            else:
                d, idx = _knn_rows(_zrows(real), R, q, kx, block)
            d, idx = _without_own_series(d, idx, groups, kk, rows=q)
            if memo is not None:
                memo[1][memo[2]] = (d, idx)
    dist = {}
    if base:
        dist["pixel_nn_ratio"] = (d.astype(np.float64) / npix + _EPS, idx)
        pairs = np.stack([np.repeat(q, kk), idx.ravel()], 1).astype(np.int64)
        mse = _pair_mse(real, real, pairs).reshape(len(q), kk) + _EPS
        o = np.argsort(mse, 1, kind="stable")
        dist["mse_ratio"] = (np.take_along_axis(mse, o, 1), np.take_along_axis(idx, o, 1))
        counts, mscale = _cached_mask_counts(real, cache)
        cfeat = lambda r: counts[np.asarray(r)] * mscale  # noqa: E731
        sk = _knn_self(cfeat, R, kx, block) if len(q) == R else _knn_rows(cfeat, R, q, kx, block)
        a, ia = _without_own_series(*sk, groups, kk, rows=q)
        dim = float(counts.shape[1])
        dist["shape_ratio"] = (np.clip(a.astype(np.float64), 0, None) / dim + 1.0 / dim, ia)
    if need_pix and len(q) < R:                            # every row's list for the candidates (-1: not searched)
        full = np.full((R, idx.shape[1]), -1, np.int64)
        full[q] = idx
        idx = full

    from . import deform as _deform

    from . import ptiles as _ptiles

    anat_flow = bool(anatomy and anatomy_register and _deform.FLOW_CHANNEL)       # the flow channel (elas13)
    ptile = bool(anatomy and _ptiles.PTILE_CHANNEL)                # the partial-copy channel (part13)
    anat_on = {"anat_ratio": anatomy, "anat_flow_ratio": anat_flow, "ptile_ratio": ptile}
    feats = ((PAIR_FEATURES if base else ()) + (PAIR_REG_FEATURES if register else ())
             + tuple(n for n in PAIR_ANAT_FEATURES if anat_on[n]))
    if register or (anatomy and anatomy_register):
        from .common import _hashes

        cache = cache if cache is not None else {}
        keys = _hashes(real)
        share = min(min(splits), 1.0 - max(splits))
        cand, cflip = _pair_reg_candidates(real, idx, keys, cache, k_reg=k_reg, n_pix=n_pix, k_spec=k_spec,
                                           share=share, rows=q if len(q) < R else None)
        if groups is not None:                             # never a slice of the image's own series
            cand = np.where((cand >= 0) & (groups[np.maximum(cand, 0)] == groups[:, None]), -1, cand)
    rng = np.random.default_rng(random_state)
    inAs = [rng.random(R) < p for p in splits for _ in range(int(repeats))]      # the splits, in their old order
    if anatomy:
        # the evidence's own anat_ratio (anatomy.anatomy_pair_values: the best in-place / mirrored low-pass NCC
        # over each part, and with anatomy.REGISTERED the low-pass registration over the part's shortlisted
        # candidates), every split at once (the split-independent work shared)
        from .anatomy import anatomy_pair_values_splits

        from . import anatomy as _anatomy_lp

        acand, a_only, anat_force = (cand if anatomy_register else None), 0, None
        if anatomy_register and _anatomy_lp.lowpass_on(anatomy_lowpass):
            # the evidence's low-pass source too (short7), as the evidence uses it: in part A (playing the
            # generated images) only, not in the control part
            from .register import lowpass_pair_candidates

            lp = lowpass_pair_candidates(real, keys, cache, share=share)
            if groups is not None:                         # never a slice of the image's own series (uns7)
                lp = np.where((lp >= 0) & (groups[np.maximum(lp, 0)] == groups[:, None]), -1, lp)
            acand, a_only = np.concatenate([cand, lp], 1), lp.shape[1]
            from . import register as _reg

            if _reg.LP_K_COARSE and _reg.LP_COARSE_FORCE:   # the coarse source's columns, the last (elsrc13)
                anat_force = _reg.coarse_columns(acand.shape[1], _reg.lowpass_pair_ks(R, share)[2])
        anat_vals = anatomy_pair_values_splits(real, inAs, acand, only=only, a_only=a_only,
                                               **({} if groups is None else {"groups": groups}),
                                               **({"flow": True} if anat_flow else {}),
                                               **({} if anat_force is None else {"force": anat_force}))
        if anat_flow:
            anat_vals, flow_vals = anat_vals
        if ptile:
            ptile_vals = _ptiles.ptile_pair_values_splits(real, inAs, only=only, groups=groups)
    vals = {n: [] for n in feats}
    logit = []
    rows = np.arange(R)
    shares = [p for p in splits for _ in range(int(repeats))]
    for si, (p, inA) in enumerate(zip(shares, inAs)):
        if anatomy:
            vals["anat_ratio"].append(anat_vals[si])
        if anat_flow:
            vals["anat_flow_ratio"].append(flow_vals[si])
        if ptile:
            vals["ptile_ratio"].append(ptile_vals[si])
        if register:
            for n, v in _pair_reg_values(real, cand, cflip, inA, keys, cache, only=only).items():
                vals[n].append(v)
        for n, (dd, ii) in dist.items():
            a_mask = inA[ii]                                       # [len(q), kk]: neighbour in part A
            ja = np.where(a_mask.any(1), a_mask.argmax(1), -1)
            jb = np.where((~a_mask).any(1), (~a_mask).argmax(1), -1)
            v = np.full(R, np.nan)
            ok = (ja >= 0) & (jb >= 0)
            rq = rows[:len(q)]
            v[q[ok]] = -np.log(dd[rq[ok], ja[ok]] / dd[rq[ok], jb[ok]])
            vals[n].append(v)
        logit.append(np.full(R, math.log(p / (1.0 - p))))
    keep = np.tile(np.ones(R, bool) if only is None else only, len(logit))
    logit = np.concatenate(logit)[keep]
    target = math.log(max(int(n_generated), 1) / (R - 1.0))
    out: dict = {"_theta": {}, "_shift": {}, "_images": np.tile(np.arange(R), len(keep) // R)[keep],
                 "_groups": np.arange(R, dtype=np.int64) if groups is None else groups}
    for n in feats:
        v = np.concatenate(vals[n])[keep]
        ok = np.isfinite(v)
        lv = np.unique(logit)
        med = np.array([trim_mean(v[ok & (logit == l)], 0.1) for l in lv])
        theta = float(np.polyfit(lv, med, 1)[0]) if len(lv) > 1 else 0.0
        theta = max(theta, 0.0)
        shift = theta * (target - logit)
        v = np.where(ok, v + shift, np.nanmedian(v + shift))
        out[n] = v
        out["_theta"][n] = theta
        out["_shift"][n] = float(np.mean(shift))
    return out


#: candidate quantiles whose scores fix the empirical null's location and scale (:func:`empirical_null`): the
#: candidates' lower quarter.  Chosen a priori from the assumption "at most half the candidates are members and
#: members score above non-members": candidate quantile ``q <= 0.25`` then lies between the non-members' ``q`` and
#: ``2q <= 0.5`` quantiles, i.e. in the non-members' lower half.  (The window (0.1, 0.5) was also tried on dev gen_e.)
EMPIRICAL_NULL_QUANTILES = (0.05, 0.25)
#: fewest candidates for which the empirical null is estimated (below: the proxy null is used as it is): the
#: window then holds >= 20 candidates (a priori; a 40-candidate phantom scene gave 5/30 false flags at fdr:0.1)
EMPIRICAL_NULL_MIN = 100
#: smallest scale of the empirical null relative to the real-to-real null: the fit may move the null and widen
#: it, never narrow it.  Set after a measurement: allowing any scale (e.g. 0.75 on dev gen_e, whose unsupervised
#: recall it raised from 0.28 / 0.33 to 0.42 / 0.62 at fpr:0.01 / fdr:0.1) fitted 0.20 on the zoo's noise-16
#: scenario, whose non-members have a compressed lower tail, and flagged 13 of 60 non-members at fdr:0.1
#: (benchmarks/membership_unsupervised.py); the lower tail does not tell the upper tail's spread.
EMPIRICAL_NULL_MIN_SCALE = 1.0
#: fixed-point iterations of (pi0, loc, scale) in :func:`empirical_null`
_PI0_ITER = 3
#: opt-in (issue 13, branch uns13; default off): :func:`empirical_null`'s ``pi0`` is also bounded by one minus a
#: LOWER confidence bound on the members' share read from the candidates' UPPER tail (:func:`_pi1_lower`), each bound
#: at 97.5% (Bonferroni: the smaller of the two is still a 95% upper bound on ``pi0``).  Why: with the location too
#: high (a combined score whose lower tail is compressed, RESULTS.md uns13) every non-member lies below the fitted
#: null's median, Storey's bound reads ~1 and maps the window to the null's lowest quantiles, which keeps the location
#: high (a fixed point: the zoo's identity row fits pi0 1.00 with half the candidates at z +9).  The upper-tail bound
#: does not depend on that median; a location that is too high only makes it smaller (conservative).
EMPIRICAL_NULL_PI1_BOUND = False
#: opt-in (issue 13, branch uns14; default off): the unsupervised mode's empirical null (:func:`pair_null_scores`) reads
#: a lower-window slope below 1 as the compression of the non-members' LOWER half and anchors the location at the
#: proxy null's median: the null becomes ``loc + S`` with ``loc`` the fitted line's value at the null's median (slope
#: kept down to :data:`ANCHOR_MIN_SLOPE`), instead of the line of slope 1 through the window (which puts the location
#: too high by ``(1 - slope)`` times the window's distance below the median: the combined score
#: ``-Phi^-1(min_c p_c)`` of a non-member lower in every channel has a compressed lower tail, RESULTS.md uns13).  The
#: upper half keeps the proxy's shape (scale 1: never narrowed, so the noise-16 failure of a fitted scale, see
#: :data:`EMPIRICAL_NULL_MIN_SCALE`, cannot recur); a slope >= 1 is used as before.  Off because that upper-half
#: assumption fails when every channel of a non-member moves down alike: the min-p combination then STRETCHES the
#: upper half (tests/test_membership_unsupervised.py 'further' case: its FPR / fdr simulations fail with this on),
#: and on dev gen_b it flags 6 instead of 5 of 300 unused at fpr:0.01 (RESULTS.md uns14).
EMPIRICAL_NULL_ANCHOR = False
#: smallest lower-half slope of :data:`EMPIRICAL_NULL_ANCHOR` (a priori, the same bound as
#: :data:`CHANNEL_NULL_MIN_SCALE`: the lower half may be compressed to half the proxy's spread, no further)
ANCHOR_MIN_SLOPE = 0.5
#: null exceedance levels of :func:`_pi1_lower` (a priori: a tenth and a hundredth)
PI1_LEVELS = (0.1, 0.01)
#: fixed-point iterations with :data:`EMPIRICAL_NULL_PI1_BOUND` on
_PI1_ITER = 5


def _lower_tail_fit(s: np.ndarray, nu_sorted: np.ndarray, qq: np.ndarray, pi0: float,
                    min_scale: float, anchor: float | None = None) -> tuple[float, float]:
    """Least-squares ``(loc, scale)`` through (null quantile at ``qq / pi0``, candidate quantile at ``qq``);
    a slope below ``min_scale`` is replaced by ``min_scale`` with ``loc`` the median offset at that slope.

    ``anchor`` (:data:`EMPIRICAL_NULL_ANCHOR`'s smallest slope, ``min_scale`` 1): a slope below 1 is the lower half's
    compression: the slope clipped to ``[anchor, 1]``, the line through the window at that slope (median offset),
    and ``(loc, 1)`` with ``loc + median(null)`` that line's value at the null's median."""
    xq = np.quantile(nu_sorted, np.clip(qq / pi0, 0.0, 1.0))
    yq = np.quantile(s, qq)
    scale = 0.0
    if float(np.ptp(xq)) > 1e-12 and float(np.ptp(yq)) > 1e-12:
        scale, loc = np.polyfit(xq, yq, 1)
    if anchor is not None and scale < 1.0:
        a = float(min(max(scale, anchor), 1.0))
        med = float(np.quantile(nu_sorted, 0.5))
        return float(np.median(yq - a * xq) + (a - 1.0) * med), 1.0
    if scale < min_scale:
        scale = max(min_scale, 1e-3)
        loc = float(np.median(yq - scale * xq))
    return float(loc), float(scale)


def _pi0_upper(x: np.ndarray, null: np.ndarray, confidence: float = 0.95) -> float:
    """Upper confidence bound on the share of non-members: Storey's ``2 #{p > 0.5} / N`` (``p`` the conformal
    p-values against ``null``, i.e. twice the share of candidates at or below the null's median) raised by
    ``z`` binomial standard errors (``z`` the one-sided ``confidence`` quantile); kept in ``[0.5, 1]``.

    Larger levels than the median were tried (the minimum of the bound over the fitted null's 50-99%
    quantiles, Bonferroni): on a phantom scene whose proxy null has a heavier upper tail than the non-members
    it drove ``pi0`` to 0.5 and 17 of 30 non-members were flagged at fdr:0.1; not kept."""
    from scipy.special import ndtri

    n = len(x)
    share = float(np.mean(x <= np.median(null)))
    se = math.sqrt(max(share * (1.0 - share), 1.0 / n) / n)
    return float(np.clip(2.0 * (share + float(ndtri(confidence)) * se), 0.5, 1.0))


def _pi1_lower(x: np.ndarray, null: np.ndarray, confidence: float = 0.975,
               levels: Sequence[float] = PI1_LEVELS) -> float:
    """Lower confidence bound on the share of members among the candidates ``x`` from the upper tail: at the null's
    ``1 - a`` quantile ``t`` the candidates above ``t`` are at least the members above it plus the non-members' share
    ``pi0 a <= a``, so ``pi1 >= #{x > t} / N - a``; minus ``z`` binomial standard errors, ``z`` Bonferroni over
    ``levels`` at ``confidence``; the largest over the levels, at least 0.  Valid when ``null`` is no lighter in its
    upper tail than the non-members (the same assumption as the decisions)."""
    from scipy.special import ndtri

    n = len(x)
    if n == 0:
        return 0.0
    z = float(ndtri(1.0 - (1.0 - confidence) / len(levels)))
    best = 0.0
    for a in levels:
        c = float(np.mean(x > np.quantile(null, 1.0 - a)))
        best = max(best, c - a - z * math.sqrt(max(c * (1.0 - c), 1.0 / n) / n))
    return best


def empirical_null(candidate_scores: np.ndarray, null_scores: np.ndarray, *,
                   quantiles: tuple[float, float] = EMPIRICAL_NULL_QUANTILES, n_points: int = 9,
                   min_candidates: int = EMPIRICAL_NULL_MIN, min_scale: float = EMPIRICAL_NULL_MIN_SCALE,
                   anchor: float | None = None) -> dict:
    """Efron-style empirical null: the proxy null's shape, the candidates' own location and scale.

    A proxy null (the real-to-real pairs of :func:`real_pair_null`) says how a non-member's score is
    distributed only up to how close the generator's non-copies come to patients, which differs from one
    generator to the next: a generator whose new patients are further from every patient than patients are
    from each other gives non-members lower scores than the proxy (conservative), a closer one higher
    (anti-conservative).  The non-members' scores are modelled as ``loc + scale * S`` with ``S`` distributed
    as the proxy null.  With ``pi0`` the share of non-members, the candidates' lower tail is
    ``F_c(t) = pi0 * F_0(t)`` where no member scores, so the candidate quantile at ``q`` is the non-members'
    quantile at ``q / pi0``: ``loc``, ``scale`` are the least-squares line through (proxy quantile at
    ``q / pi0``, candidate quantile at ``q``) for ``n_points`` levels ``q`` evenly spaced in ``quantiles``
    (Efron 2004, "Large-scale simultaneous hypothesis testing: the choice of a null hypothesis", matched on the
    lower tail instead of the centre because members sit in the upper tail).  ``pi0`` is a 95% upper
    confidence bound on Storey's estimate (:func:`_pi0_upper`) against the fitted null, iterated from
    ``pi0 = 1`` three times and kept in ``[0.5, 1]`` (a noisy ``pi0`` below the truth would map the window to
    too high null levels: anti-conservative).  The point estimate is used: its sampling noise makes the stated rates hold
    on average rather than at 95% confidence (an upper bootstrap bound on the null's 99% quantile was tried and
    cut the power by half on dev gen_e: not kept).

    Assumptions: (i) at most half the candidates are members and members do not score below non-members
    (stochastic order); contamination of the window by members then raises the candidate quantiles, more so
    at the upper end of the window, and overestimates ``pi0``: both raise ``loc`` / ``scale``, i.e. err on
    the conservative side.  (ii) The non-members' scores have the proxy null's shape up to location and
    scale (the extrapolation from the lower quarter to the upper tail rests on it), with a spread no smaller
    than the proxy's (``scale >= min_scale``, default 1: the null may move and widen, never narrow).  The decisions' stated
    rates are approximate; they are checked by simulation in ``tests/test_membership_decide.py``.

    Parameters
    ----------
    candidate_scores : float [N]   scores of the candidates (members and non-members mixed)
    null_scores : float [K]        proxy-null scores (same units)
    quantiles : (float, float)     window of candidate levels, ``0 < lo < hi < 1``
    n_points : int                 levels in the window
    min_candidates : int           below this ``N`` nothing is estimated (``applied`` False, ``loc`` 0, ``scale`` 1)
    min_scale : float              smallest ``scale`` (:data:`EMPIRICAL_NULL_MIN_SCALE`; a fitted slope below it is
                                   replaced by it, ``loc`` then the median offset over the window)
    anchor : float or None         opt-in (:data:`EMPIRICAL_NULL_ANCHOR`, the smallest slope): a slope below 1 is
                                   read as the non-members' compressed lower half, and the location is anchored at
                                   the null's median (``scale`` 1; see :func:`_lower_tail_fit`); None: as described

    Returns
    -------
    dict
        ``loc``, ``scale`` (float; apply as ``loc + scale * null_scores``), ``pi0`` (share of non-members
        used), ``applied`` (bool),
        ``quantiles``, ``n_candidates``, ``reason`` (why not applied, else "").
    """
    from .decide import conformal_pvalues

    s = np.asarray(candidate_scores, np.float64)
    s = s[np.isfinite(s)]
    nu = np.sort(np.asarray(null_scores, np.float64)[np.isfinite(null_scores)])
    lo, hi = float(quantiles[0]), float(quantiles[1])
    out = {"loc": 0.0, "scale": 1.0, "pi0": 1.0, "applied": False,
           "quantiles": [lo, hi], "n_candidates": int(len(s)), "reason": ""}
    if not 0.0 < lo < hi < 1.0:
        raise ImprintError(f"empirical null: quantiles must satisfy 0 < lo < hi < 1 (got {quantiles})")
    if len(s) < min_candidates or len(nu) < min_candidates:
        out["reason"] = (f"{len(s)} candidates / {len(nu)} null values: fewer than {min_candidates}, "
                         "the proxy null is used as it is")
        return out
    qq = np.linspace(lo, hi, int(n_points))

    def fit(x):
        pi0 = 1.0
        if EMPIRICAL_NULL_PI1_BOUND:                   # opt-in (uns13): also the upper tail's bound
            for _ in range(_PI1_ITER):
                loc, scale = _lower_tail_fit(x, nu, qq, pi0, min_scale, anchor)
                f = loc + scale * nu
                pi0 = max(0.5, min(_pi0_upper(x, f, 0.975), 1.0 - _pi1_lower(x, f)))
            loc, scale = _lower_tail_fit(x, nu, qq, pi0, min_scale, anchor)
            return loc, scale, pi0
        for _ in range(_PI0_ITER):
            loc, scale = _lower_tail_fit(x, nu, qq, pi0, min_scale, anchor)
            pi0 = _pi0_upper(x, loc + scale * nu)
        loc, scale = _lower_tail_fit(x, nu, qq, pi0, min_scale, anchor)
        return loc, scale, pi0

    loc, scale, pi0 = fit(s)
    out.update(loc=loc, scale=scale, pi0=pi0, applied=True)
    return out


# ----------------------------------------------------------------------------------------- unsupervised scores
def pair_null_matrix(evidence: dict, pair_null: dict, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Evidence matrix of the candidates stacked over the real-to-real null rows, every channel as a robust
    z-score against its own real-to-real null (:func:`real_pair_null`).

    Parameters
    ----------
    evidence : dict[str, float [N]]       the candidates' evidence
    pair_null : dict[str, float [K]]      :func:`real_pair_null` output
    names : sequence of str               channels (each in both dicts)

    Returns
    -------
    Z : float64 [N + K, F]     candidates first, then the null rows
    null_mask : bool [N + K]   True on the null rows
    """
    Zc, Zn = [], []
    for n in names:
        Zc.append(robust_calibrate(evidence[n], pair_null[n]))
        Zn.append(robust_calibrate(pair_null[n], pair_null[n]))
    N = len(Zc[0]) if Zc else 0
    K = len(Zn[0]) if Zn else 0
    Z = np.concatenate([np.stack(Zc, 1), np.stack(Zn, 1)]) if names else np.zeros((N + K, 0))
    return Z, np.r_[np.zeros(N, bool), np.ones(K, bool)]


def _intraclass_correlation(values: np.ndarray, groups: np.ndarray) -> float:
    """One-way ANOVA intraclass correlation of ``values`` grouped by ``groups`` (equal group sizes assumed
    for the estimator, clipped to [0, 1]; NaN when not estimable)."""
    v = np.asarray(values, np.float64)
    g = np.asarray(groups)
    ok = np.isfinite(v)
    v, g = v[ok], g[ok]
    ug, inv = np.unique(g, return_inverse=True)
    if len(ug) < 2 or len(v) <= len(ug):
        return float("nan")
    m = len(v) / len(ug)
    means = np.bincount(inv, v) / np.bincount(inv)
    msb = m * np.sum((means - v.mean()) ** 2) / (len(ug) - 1)
    msw = np.sum((v - means[inv]) ** 2) / (len(v) - len(ug))
    den = msb + (m - 1) * msw
    return float(np.clip((msb - msw) / den, 0.0, 1.0)) if den > 0 else float("nan")



#: values of ``combine`` (:func:`combined_scores`, ``audit_membership``): ``"tail-split"`` (default, branch comb8),
#: ``"tail"`` (branch dec4: every channel the same share) and ``"max"`` (the rule before dec4)
COMBINE_RULES = ("tail-split", "tail", "max")


def combined_scores(Z: np.ndarray, w: np.ndarray, use_max: np.ndarray, null_mask: np.ndarray,
                    combine: str = "tail-split") -> tuple[np.ndarray, str]:
    """The combination rule, then the robust z-score against the null rows (the null shared by every mode).

    ``combine="tail-split"`` (:func:`calibrated_max` with ``sum_share=SUM_SHARE``) and ``"tail"`` (equal shares)
    apply when the null has at least ``TAIL_MIN_NULL`` rows, else (and with ``"max"``) the weighted sum / max rule
    :func:`_combine`.  Candidates and null rows go through the same function of their channels (exchangeability).

    Parameters
    ----------
    Z : float [P, F]; w : float [F]; use_max : bool [F]; null_mask : bool [P]; combine : one of COMBINE_RULES

    Returns
    -------
    score : float64 [P]   every row's score (null rows included)
    used : str            the rule applied, ``"tail-split"``, ``"tail"`` or ``"max"``
    """
    if combine not in COMBINE_RULES:
        raise ImprintError(f"combine must be one of {', '.join(COMBINE_RULES)} (got {combine!r})")
    if combine in ("tail", "tail-split") and int(null_mask.sum()) >= TAIL_MIN_NULL:
        raw, _ = calibrated_max(Z, w, use_max, null_mask, sum_share=SUM_SHARE if combine == "tail-split" else None)
        used = combine
    else:
        raw = _combine(Z, w, use_max=use_max)
        used = "max"
    return robust_calibrate(raw, raw[null_mask]), used

#: smallest per-channel scale of :func:`channel_null` relative to the real-to-real null (the channel's null may
#: narrow to half its spread, no further).  Chosen a priori, not on data: a bound on how far the lower-window fit
#: may extrapolate; the simulation in tests/test_membership_unsupervised.py (a "narrower" generator at 0.6)
#: checks the rates inside it.
CHANNEL_NULL_MIN_SCALE = 0.5
#: candidate quantiles of :func:`channel_null`'s fit (see there)
CHANNEL_NULL_QUANTILES = (0.1, 0.4)
#: values of ``empirical`` in :func:`pair_null_scores` / ``audit_membership``
EMPIRICAL_MODES = ("channel", "widen", "none")


def channel_null(Zc: np.ndarray, Zn: np.ndarray, *, fit_rows: np.ndarray | None = None,
                 min_scale: float = CHANNEL_NULL_MIN_SCALE,
                 quantiles: tuple[float, float] = CHANNEL_NULL_QUANTILES) -> tuple[np.ndarray, dict]:
    """Per-channel empirical null: every evidence channel of the candidates re-expressed on the real-to-real
    null's scale after its own location and scale (the null may move, widen and narrow).

    How close a generator's non-copies come to patients differs from one generator to the next and from one
    channel to the next (a generator whose new patients are alike sits further from every patient in pixels
    than in anatomy, say).  The model: a non-member's channel ``j`` is ``loc_j + scale_j * S_j`` with ``S_j``
    distributed as channel ``j`` of a real-to-real null row (the channels' dependence unchanged).  Each
    ``(loc_j, scale_j)`` is :func:`empirical_null`'s lower-window fit on channel ``j`` alone (the candidates'
    5-25% quantiles against the null's quantiles at those levels over ``pi0``, ``pi0`` a 95% upper bound; with
    at most half the candidates members and members not scoring below non-members, the window lies in the
    non-members' lower half), with ``scale_j >= min_scale``.  The candidates' channels become
    ``(Z - loc_j) / scale_j``, which under the model are distributed as the null rows' channels, so the
    combination rule (:func:`calibrated_max`) and its calibration against the null rows apply unchanged.

    Why per channel and before the combination: the combined score ``-Phi^-1(min_c p_c)`` is not a location /
    scale family in the channels' shifts.  A generator further from patients in every channel compresses the
    combined score's lower tail more than its upper tail, so a combined-score fit from the lower tail is
    anti-conservative there (benchmarks/RESULTS.md, memuns: the zoo's noise-16 row fitted 0.20 and flagged 13
    of 60 non-members); on one channel the location / scale model is what a change of distance scale does to
    a log distance ratio.

    Parameters
    ----------
    Zc : float [N, F]            candidates' channels (robust z-scores against the null rows)
    Zn : float [K, F]            the real-to-real null rows' channels
    fit_rows : bool [N] or None  candidates that fit the null (default all); every row is transformed
    min_scale : float            :data:`CHANNEL_NULL_MIN_SCALE`

    Returns
    -------
    Zc' : float64 [N, F]         ``(Zc - loc) / scale`` per channel (unchanged where the fit does not apply)
    info : dict                  ``loc``, ``scale``, ``pi0`` (lists, one per channel), ``applied`` (bool),
                                 ``reason``
    """
    Zc = np.asarray(Zc, np.float64)
    Zn = np.asarray(Zn, np.float64)
    fit = np.ones(len(Zc), bool) if fit_rows is None else np.asarray(fit_rows, bool)
    out = Zc.copy()
    info: dict = {"loc": [], "scale": [], "pi0": [], "applied": False, "reason": ""}
    for j in range(Zc.shape[1]):
        e = empirical_null(Zc[fit, j], Zn[:, j], min_scale=min_scale, quantiles=quantiles)
        if not e["applied"]:
            info["reason"] = e["reason"]
            return Zc.copy(), dict(info, loc=[0.0] * Zc.shape[1], scale=[1.0] * Zc.shape[1],
                                   pi0=[1.0] * Zc.shape[1])
        out[:, j] = (Zc[:, j] - e["loc"]) / e["scale"]
        info["loc"].append(float(e["loc"]))
        info["scale"].append(float(e["scale"]))
        info["pi0"].append(float(e["pi0"]))
    info["applied"] = True
    return np.clip(out, -_Z_CAP, _Z_CAP), info


def pair_null_scores(Z: np.ndarray, null_mask: np.ndarray, w: np.ndarray, use_max: np.ndarray, *,
                     combine: str = "tail", empirical: bool | str = True, fit_rows: np.ndarray | None = None,
                     null_groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Scores of the unsupervised mode (no labelled null): candidates and real-to-real null rows combined by
    the same rule as with a reference, then the empirical null.

    0. ``empirical="channel"``: :func:`channel_null` first puts every candidate channel on
       the null rows' scale after its own location and scale (which may narrow).
    1. ``combine="tail"`` (default; the audit uses it here also when asked for ``"tail-split"``, see
       ``audit_membership``) or ``"tail-split"`` (with at least :data:`TAIL_MIN_NULL` null rows):
       :func:`calibrated_max`, every channel (the weighted sum and each max-rule channel, the registered ones
       included) on its own real-to-real null's scale; ``"max"``: :func:`_combine` (the rule before).
    2. The combined score as a robust z-score against the null rows.
    3. ``"widen"`` (default, ``True``) or ``"channel"``: :func:`empirical_null` on the candidates'
       combined scores (``fit_rows``, default every candidate row) moves / widens the null scores (never
       narrows; after step 0 it only corrects what the per-channel model missed).  ``"none"`` / ``False``:
       the real-to-real null as it is.

    Parameters
    ----------
    Z : float [P, F]            :func:`pair_null_matrix` (or any candidates + null stack)
    null_mask : bool [P]        the null rows
    w : float [F]               weights (>= 0)
    use_max : bool [F]          channels that may decide alone
    combine : one of :data:`COMBINE_RULES`
    empirical : bool or str     "widen" (= True), "channel" or "none" (= False), see above
    fit_rows : bool [P] or None  rows whose scores fit the empirical null (default: every non-null row); the
                                 other non-null rows are scored without shaping it (used by the simulation)
    null_groups : int [K] or None  the real image of every null row: only for ``info["null_icc"]``

    Returns
    -------
    score : float64 [P - K]     the non-null rows' scores, in order
    null_scores : float64 [K]   the null's scores after the empirical null (what the decisions compare with)
    info : dict                 ``combine`` (the rule used), ``empirical_null`` (:func:`empirical_null` output or
                                None), ``channel_null`` (:func:`channel_null` info or None), ``null_icc``
                                (intraclass correlation of the null scores within a real image)
    """
    mode = ("widen" if empirical else "none") if isinstance(empirical, (bool, np.bool_)) else empirical
    if mode not in EMPIRICAL_MODES:
        raise ImprintError(f"empirical must be True, False or one of {', '.join(EMPIRICAL_MODES)} (got {empirical!r})")
    Z = np.asarray(Z, np.float64)
    null_mask = np.asarray(null_mask, bool)
    fit = ~null_mask if fit_rows is None else (np.asarray(fit_rows, bool) & ~null_mask)
    chan = None
    if mode == "channel":
        Z = Z.copy()
        cand = ~null_mask
        Z[cand], chan = channel_null(Z[cand], Z[null_mask], fit_rows=fit[cand])
    sa, used = combined_scores(Z, w, use_max, null_mask, combine)
    null_scores = sa[null_mask]
    emp = None
    if mode != "none":
        emp = empirical_null(sa[fit], null_scores,
                             anchor=ANCHOR_MIN_SLOPE if EMPIRICAL_NULL_ANCHOR else None)   # opt-in (uns14)
        null_scores = emp["loc"] + emp["scale"] * null_scores
    icc = _intraclass_correlation(sa[null_mask], null_groups) if null_groups is not None else float("nan")
    return sa[~null_mask], np.asarray(null_scores, np.float64), {"combine": used, "empirical_null": emp,
                                                                 "channel_null": chan, "null_icc": icc}


def _series_groups_cached(real: np.ndarray, cache_dir: str | None) -> tuple[np.ndarray, dict]:
    """:func:`real_series_groups`, checkpointed in ``cache_dir`` (``series-<hash>.npz`` keyed by the images and the
    constants; read with ``allow_pickle=False``, written atomically) so repeated audits of one folder search once."""
    if cache_dir is None:
        return real_series_groups(real)
    import hashlib
    import io
    import json
    from pathlib import Path

    from ..store import atomic_write_bytes

    a = np.ascontiguousarray(real)
    h = hashlib.sha256(f"series-v1 {SERIES_K} {SERIES_ALPHA} {a.dtype}{a.shape}".encode())
    h.update(memoryview(a).cast("B"))
    path = Path(cache_dir) / f"series-{h.hexdigest()[:40]}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                return np.array(z["groups"], np.int64), json.loads(str(z["info"]))
        except (OSError, ValueError, KeyError):
            pass  # unreadable checkpoint: recompute
    groups, info = real_series_groups(real)
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, groups=groups, info=np.array(json.dumps(info)))
    atomic_write_bytes(path, buf.getvalue())
    return groups, info


def real_pair_null_cached(real: np.ndarray, n_generated: int, *, cache_dir: str | None = None, **kw) -> dict:
    """:func:`real_pair_null`, checkpointed in ``cache_dir`` (when given) under a hash of its inputs (``.npz``,
    read back with ``allow_pickle=False``; written atomically), so repeated audits of one real folder (every
    decision mode, an interrupted run) compute the registered null once.

    The series (:func:`real_series_groups`, with ``series`` True, the default) are found first; when there is none
    the null equals the one before series were excluded, and so does its checkpoint's key (version 3), so
    checkpoints of folders without series stay valid.  ``out["_groups"]`` holds the labels, ``out["_series"]``
    the grouping's info (None when not searched)."""
    ginfo = None
    if kw.get("series", True) and kw.get("groups") is None:
        groups, ginfo = _series_groups_cached(real, cache_dir)
        kw = dict(kw, groups=groups)
    if kw.get("groups") is not None and len(np.unique(kw["groups"])) == len(real):
        kw = {k_: v for k_, v in kw.items() if k_ not in ("groups", "series")}
        kw["series"] = False                               # nothing to exclude: the null before, bit for bit
    if cache_dir is None:
        out = real_pair_null(real, n_generated, **kw)
        out["_series"] = ginfo
        return out
    import hashlib
    import io
    import json
    from pathlib import Path

    from ..store import atomic_write_bytes

    key = {k_: v for k_, v in kw.items() if k_ not in ("cache", "series", "groups", "anatomy_lowpass")}
    key.update(n_generated=int(n_generated), version=3)  # 3: the anatomy null registered
    from . import anatomy as _anatomy_lp

    tag = _anatomy_lp.checkpoint_tag(kw.get("anatomy_lowpass"), form="pairnull")   # short7, geo9; geo8, geo10
    anat_tag = tag.pop("_anatomy")
    key.update(tag)
    if kw.get("anatomy"):
        key.update(anat_tag)
    if kw.get("groups") is not None:                       # each image's own series excluded (uns7)
        key.update(series_excluded=True, groups=np.asarray(kw["groups"]).tolist())
    h = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode())
    a = np.ascontiguousarray(real)
    h.update(f"{a.dtype}{a.shape}".encode())
    h.update(memoryview(a).cast("B"))
    path = Path(cache_dir) / f"pairnull-{h.hexdigest()[:40]}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                out = {n[2:]: np.array(z[n]) for n in z.files if n.startswith("v_")}
                out.update(json.loads(str(z["meta"])))
                out["_groups"] = (np.asarray(kw["groups"], np.int64) if kw.get("groups") is not None
                                  else np.arange(len(real), dtype=np.int64))
                out["_series"] = ginfo
                return out
        except (OSError, ValueError, KeyError):
            pass  # unreadable checkpoint: recompute
    out = real_pair_null(real, n_generated, **kw)
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, meta=np.array(json.dumps({k_: v for k_, v in out.items() if k_ in ("_theta", "_shift")})),
             **{f"v_{k_}": np.asarray(v) for k_, v in out.items() if k_ not in ("_theta", "_shift", "_groups")})
    atomic_write_bytes(path, buf.getvalue())
    out["_series"] = ginfo
    return out
