"""Membership decisions: null thresholds, p-values, share estimates and the decision modes."""

from __future__ import annotations

import functools
import hashlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from imprint.engine.errors import ImprintError

from .calibrate import _robust_loc_scale  # noqa: F401

def min_null_size(alpha: float, confidence: float = 0.95) -> int:
    """Smallest null size ``K`` for which an order-statistic threshold guarantees a false-positive
    rate ``<= alpha`` with the given confidence: the smallest ``K`` with ``(1 - alpha)**K <= 1 - confidence``
    (the null's maximum as threshold).  ``alpha=0.01`` at 95% needs 299, ``0.05`` needs 59."""
    return int(math.ceil(math.log(1.0 - confidence) / math.log1p(-alpha) - 1e-9))


@functools.lru_cache(maxsize=4096)
def _allowed_exceedances(K: int, alpha: float, confidence: float) -> int:
    """Largest ``j < K`` with ``P(Binomial(K, alpha) <= j) <= 1 - confidence``; -1 when none."""
    from scipy.stats import binom

    if K < min_null_size(alpha, confidence):
        return -1
    j = int(binom.ppf(1.0 - confidence, K, alpha))      # smallest j with cdf(j) >= 1 - confidence
    while j >= 0 and binom.cdf(j, K, alpha) > 1.0 - confidence:
        j -= 1
    return min(j, K - 1)


def null_threshold(null_scores: np.ndarray, alpha: float, *, confidence: float = 0.95,
                   parametric: bool = True) -> dict:
    """Threshold with a distribution-free false-positive-rate guarantee (exact order statistic).

    With ``K`` null scores sorted ``s_(1) <= ... <= s_(K)`` and threshold ``t = s_(K-j)`` (``j`` null
    scores above it), the probability that a new exchangeable non-member scores above ``t`` is
    ``1 - F(t)`` with ``F(t) ~ Beta(K - j, j + 1)``, so ``P(1 - F(t) > alpha) = P(Binomial(K, alpha) <= j)``.
    ``j`` is the largest count with ``P(Binomial(K, alpha) <= j) <= 1 - confidence`` (any continuous
    null distribution, every ``K``).  When even ``j = 0`` (the null's maximum) fails, i.e.
    ``K < min_null_size(alpha, confidence)``, no order statistic gives the guarantee: ``exact`` is
    False, ``threshold`` is ``+inf`` and ``fallback`` holds the null's maximum with the rate it does
    guarantee, ``fallback_alpha = 1 - (1 - confidence)**(1/K)``.

    With ``parametric=True`` the threshold is raised (never lowered) to the Gaussian ``1 - alpha``
    quantile of the robust null fit, its scale widened to the null's 90/95/97.5% quantiles when
    those are further out (a second, conservative check on a right-skewed null).

    Parameters
    ----------
    null_scores : float [K]
    alpha : float in (0, 0.5)
    confidence : float in (0, 1)
    parametric : bool

    Returns
    -------
    dict with ``threshold`` (float; ``+inf`` when not ``exact``), ``exact`` (bool), ``empirical``,
    ``gaussian``, ``allowed_exceedances`` (``j``), ``n_null``, ``min_null`` (``min_null_size``),
    ``confidence``, ``fallback`` and ``fallback_alpha`` (the null's maximum and its guaranteed rate).
    """
    from scipy.special import ndtri

    s = np.sort(np.asarray(null_scores, np.float64)[np.isfinite(null_scores)])
    K = len(s)
    gauss = -np.inf
    if parametric:
        med, sc = _robust_loc_scale(s)
        if K >= 10:  # tail-adaptive scale: a right-skewed null widens the Gaussian part
            for q in (0.9, 0.95, 0.975):
                if K * (1 - q) >= 2:
                    sc = max(sc, (float(np.quantile(s, q)) - med) / float(ndtri(q)))
        gauss = med + float(ndtri(1.0 - alpha)) * sc
    out = {"n_null": int(K), "min_null": min_null_size(alpha, confidence), "confidence": float(confidence),
           "gaussian": float(gauss) if parametric else None}
    if K == 0:
        out.update(threshold=float("inf"), exact=False, empirical=None, allowed_exceedances=0,
                   fallback=float("inf"), fallback_alpha=1.0)
        return out
    # j = largest count with P(Binomial(K, alpha) <= j) <= 1 - confidence (-1: none)
    fb_alpha = float(-np.expm1(np.log(1.0 - confidence) / K))
    out.update(fallback=float(s[-1]) if not parametric else float(max(s[-1], gauss)), fallback_alpha=fb_alpha)
    j = _allowed_exceedances(K, float(alpha), float(confidence))
    if j < 0:
        out.update(threshold=float("inf"), exact=False, empirical=None, allowed_exceedances=0)
        return out
    j = min(j, K - 1)
    emp = float(s[K - 1 - j])
    thr = max(emp, gauss) if parametric else emp
    out.update(threshold=float(thr), exact=True, empirical=emp, allowed_exceedances=j)
    return out


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, ..., 11th, 12th, 13th, 21st."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def threshold_headroom(null_scores: np.ndarray, scores: np.ndarray, th: dict, alpha: float) -> dict | None:
    """How much one null image decides an exact ``fpr:ALPHA`` threshold (:func:`null_threshold`'s ``th``).

    The 95% order statistic of a null of ``K`` images is ``s_(K-j)``; the next one down, ``s_(K-j-1)``, would be
    allowed from a null of ``null_size_for_next`` images (the smallest ``K'`` with ``j + 1`` allowed exceedances).
    ``n_between`` real images score in ``(s_(K-j-1), threshold]``: flagged by that one-step-lower threshold, not by
    this one. Reported, never acted on (a threshold lowered after looking at the null would lose the guarantee).

    Returns ``None`` when ``th`` is not exact or the null has no lower order statistic; else a dict with
    ``threshold``, ``next`` (``s_(K-j-1)``), ``allowed_exceedances`` (``j``), ``n_between``, ``n_null`` and
    ``null_size_for_next``."""
    if not th.get("exact"):
        return None
    s = np.sort(np.asarray(null_scores, np.float64)[np.isfinite(null_scores)])
    K, j = len(s), int(th["allowed_exceedances"])
    if K - 2 - j < 0:
        return None
    nxt, thr = float(s[K - 2 - j]), float(th["threshold"])
    sc = np.asarray(scores, np.float64)
    n_between = int(((sc > nxt) & (sc <= thr)).sum())
    conf = float(th.get("confidence") or 0.95)

    def enough(k):                          # non-decreasing in k: P(Binomial(k, alpha) <= j + 1) falls as k grows
        return _allowed_exceedances(k, float(alpha), conf) >= j + 1

    if enough(K):                           # (a th of another rule than null_threshold's at this confidence)
        lo = hi = K
    else:                                   # double, then bisect (lo, hi]
        lo, hi = K, 2 * K
    while not enough(hi):
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid, hi)
    return {"threshold": thr, "next": nxt, "allowed_exceedances": j, "n_between": n_between, "n_null": K,
            "null_size_for_next": int(hi)}


#: the ``fpr:ALPHA`` threshold of the unsupervised mode (no labelled null: the real-to-real pairs with the empirical
#: null's location and scale): ``"exact"`` (default) the 95% order statistic of :func:`null_threshold`, as with a
#: reference; ``"conformal"`` (opt-in, issue 13, branch uns13) :func:`conformal_threshold`, whose guarantee
#: (EXPECTED share of non-members flagged <= ALPHA) is the one the unsupervised summary states, since its location and
#: scale are estimated anyway.  Read by ``audit_membership`` at call time.
PAIR_NULL_FPR = "exact"
PAIR_NULL_FPR_RULES = ("exact", "conformal")


def conformal_threshold(null_scores: np.ndarray, alpha: float, *, parametric: bool = True) -> dict:
    """Threshold whose EXPECTED false-positive rate is <= ``alpha`` (split-conformal; no confidence level).

    With ``K`` null scores exchangeable with a non-member's, flagging above the ``j``-th largest (``j =
    floor(alpha (K + 1))``) flags it with probability ``<= j / (K + 1) <= alpha`` (ties and continuous scores alike).
    :func:`null_threshold` takes the order statistic that holds at 95% confidence instead (further in the tail: the
    3rd largest of 720 at ``alpha = 0.01`` where this takes the 7th).  The Gaussian check of :func:`null_threshold`
    (``parametric``) is kept: the threshold is never below it.  ``K + 1 < 1 / alpha``: no order statistic has the
    guarantee; ``exact`` False and the same fallback as :func:`null_threshold` (the null's maximum).

    Returns :func:`null_threshold`'s dict (``confidence`` None, ``allowed_exceedances`` ``j - 1``, ``rule``
    ``"conformal"``)."""
    base = null_threshold(null_scores, alpha, parametric=parametric)
    s = np.sort(np.asarray(null_scores, np.float64)[np.isfinite(null_scores)])
    K = len(s)
    j = int(math.floor(float(alpha) * (K + 1) + 1e-12))
    out = dict(base, confidence=None, rule="conformal", min_null=int(math.ceil(1.0 / float(alpha) - 1e-12)) - 1)
    if j < 1 or K == 0:
        out.update(threshold=float("inf"), exact=False, empirical=None, allowed_exceedances=0)
        return out
    j = min(j, K)
    emp = float(s[K - j])
    gauss = base["gaussian"] if parametric else None
    out.update(threshold=float(max(emp, gauss) if parametric else emp), exact=True, empirical=emp,
               allowed_exceedances=j - 1)
    return out


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


#: Upper null quantiles whose order statistics join the ``f1`` rule's evidence test (besides the
#: ``alpha_evidence`` threshold): counts above the null's 1%, 5% and 10% tails (weighted Bonferroni).
#: Chosen a priori (the levels the brief named), not tuned on data.
EVIDENCE_TAILS = (0.01, 0.05, 0.1)
#: Share of the evidence test's level kept on the ``alpha_evidence`` threshold's count (the test before
#: branch spd6); the tails share the rest (weighted Bonferroni).  A priori: the sparse case's bar moves
#: from p < 1e-3 to p < 8e-4, not tuned on data.
EVIDENCE_FIRST_WEIGHT = 0.8


#: What the ``f1`` rule does when its evidence test finds nothing: ``"fpr"`` flags only the candidates above
#: the ``alpha_evidence`` null threshold (the ``fpr:0.01`` rule: a non-member is flagged with probability
#: <= 0.01 at 95% confidence, so a generator that copied nobody gets few flags); ``"all"`` is the rule before
#: branch f17 (flag every candidate: expected-F1-optimal for an unknown share of used images, but it accuses
#: every candidate when nothing is a member).
NO_EVIDENCE = "fpr"
#: How the ``f1`` rule's top-k step estimates the posterior member probabilities: ``"ratio"`` (branch f17)
#: from the isotonic candidate-versus-null density ratio in the score domain (:func:`member_posterior`);
#: ``"binned"`` the rule before (an isotonic fit of a 10-bin histogram of the candidates' p-values).
POSTERIOR = "ratio"
#: How the ``f1`` rule's top-k step estimates the member share (:func:`member_share`): ``"storey-lcb"`` (branch
#: f17), Storey's estimate at ``lambda = 0.5`` lowered by :data:`SHARE_LCB_Z` standard errors; ``"storey"``
#: the point estimate (the rule before).  Chosen on simulations (tests/test_membership_decide.py): expected F1
#: loses little when the share is underestimated (null-like candidates only get a smaller posterior) and much
#: when it is overestimated (non-members get posterior mass and are flagged), and Storey's estimate from 60
#: candidates has a standard error of about 0.13.
SHARE = "storey-lcb"
#: Standard errors subtracted from Storey's share (``"storey-lcb"``): one, an a-priori round value (a one-sided
#: ~84% lower confidence bound under the normal approximation), not tuned on data.
SHARE_LCB_Z = 1.0


def member_share(p: np.ndarray, method: str = "storey", n_null: int | None = None) -> float:
    """Share of members among candidates from their conformal p-values.

    Parameters
    ----------
    p : float [N]
        Conformal p-values against the null (:func:`conformal_pvalues`).
    n_null : int, needed by ``"storey-lcb"``
        Size ``K`` of the null the p-values came from.
    method : {"storey", "storey-lcb", "storey-boot"}
        ``"storey"``: :func:`estimate_used_share` at ``lambda = 0.5``.  ``"storey-lcb"``: that estimate
        ``1 - 2 F`` (``F`` the share of p-values above 0.5) minus :data:`SHARE_LCB_Z` standard errors,
        ``se = sqrt(F (1 - F) / N + (2 F)^2 / (4 K)) / 0.5`` (the candidates' binomial count, plus the null
        median's sampling error through the density ratio ``2 F`` at the median; delta method).
        ``"storey-boot"``: Storey, Taylor &
        Siegmund (2004): ``lambda`` on the grid 0.05, 0.10, ..., 0.95 minimising the bootstrap mean squared
        error (200 resamples, fixed seed) against the smallest ``pi0(lambda)``.

    Returns
    -------
    float in [0, 1]
        Both are lower estimates of the member share (members whose p-values look uniform are not counted).
    """
    p = np.asarray(p, np.float64)
    if p.size == 0:
        return 0.0
    if method == "storey":
        return estimate_used_share(p)
    if method == "storey-lcb":
        if n_null is None:
            raise ValueError("share method 'storey-lcb' needs n_null")
        F = float(np.mean(p > 0.5))
        se = math.sqrt(F * (1.0 - F) / p.size + (2.0 * F) ** 2 * 0.25 / max(int(n_null), 1)) / 0.5
        return float(np.clip(1.0 - 2.0 * F - SHARE_LCB_Z * se, 0.0, 1.0))
    if method != "storey-boot":
        raise ValueError(f"unknown share method {method!r}")
    lams = np.arange(1, 20) * 0.05
    pi0 = np.array([np.mean(p > lam) / (1.0 - lam) for lam in lams])
    rng = np.random.default_rng(0)
    pb = p[rng.integers(0, p.size, (200, p.size))]
    mse = np.array([np.mean(((pb > lam).mean(1) / (1.0 - lam) - pi0.min()) ** 2) for lam in lams])
    return float(np.clip(1.0 - pi0[int(np.argmin(mse))], 0.0, 1.0))


def member_posterior(scores: np.ndarray, null: np.ndarray, pi0: float) -> np.ndarray:
    """Posterior member probabilities of a two-group model, from the candidate-versus-null density ratio.

    The candidates' score density is ``f = pi0 f0 + (1 - pi0) f1`` with ``f0`` the null's; the posterior of
    candidate ``i`` is ``1 - pi0 f0(s_i) / f(s_i)``.  The ratio ``f / f0`` is estimated without bins: an
    isotonic (increasing, pool-adjacent-violators) regression of the indicator "is a candidate" on the pooled
    null and candidate scores, each sample weighted so the two groups weigh the same, gives
    ``c(s) = f / (f + f0)``, so ``f / f0 = c / (1 - c)``.  Monotone in the score because members score higher
    (a monotone likelihood ratio, the assumption that ranks by score at all); it is the two-sample
    nonparametric maximum-likelihood fit under that constraint (equivalently a Grenander density of the
    candidates' null-quantile transform), with no bins or bandwidth to choose.

    Parameters
    ----------
    scores : float [N]   candidate scores
    null : float [K]     null scores (non-finite values ignored)
    pi0 : float in (0, 1]

    Returns
    -------
    float64 [N] in [0, 1]
    """
    from sklearn.isotonic import IsotonicRegression

    s = np.asarray(scores, np.float64)
    nl = np.asarray(null, np.float64)
    nl = nl[np.isfinite(nl)]
    N, K = len(s), len(nl)
    if N == 0 or K == 0:
        return np.zeros(N)
    sf = np.where(np.isfinite(s), s, np.where(s > 0, np.finfo(np.float64).max, -np.finfo(np.float64).max))
    z = np.r_[nl, sf]
    lab = np.r_[np.zeros(K), np.ones(N)]
    w = np.r_[np.full(K, 0.5 / K), np.full(N, 0.5 / N)]
    c = IsotonicRegression(increasing=True, y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(z, lab, sample_weight=w)
    ci = c.predict(sf)
    ratio = ci / np.maximum(1.0 - ci, 1e-12)
    return np.clip(1.0 - float(pi0) / np.maximum(ratio, 1e-12), 0.0, 1.0)


def _binned_posterior(p: np.ndarray, pi0: float) -> np.ndarray:
    """The top-k step's posterior before branch f17: an isotonic fit of a histogram of the p-values."""
    from sklearn.isotonic import IsotonicRegression

    N = len(p)
    ps = np.sort(p)
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
    return np.clip(1.0 - pi0 / np.maximum(fp, 1e-9), 0.0, 1.0)


def expected_f1_topk(scores: np.ndarray, q: np.ndarray) -> tuple[int, float]:
    """The ``k`` maximising the expected F1 ``2 sum_{i<=k} q_(i) / (k + sum_i q_i)`` of flagging the top-``k`` by score.

    Parameters
    ----------
    scores : float [N]
    q : float [N]   posterior member probabilities

    Returns
    -------
    (k, expected_f1) : (int in [1, N], float)
    """
    o = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    cq = np.cumsum(q[o])
    ef1 = 2 * cq / (np.arange(1, len(q) + 1) + q.sum())
    kbest = int(np.argmax(ef1)) + 1
    return kbest, float(ef1[kbest - 1])


def f1_decision(scores: np.ndarray, null: np.ndarray, *, alpha_evidence: float = 0.01,
                min_hits: int = 3, evidence_p: float = 1e-3,
                tails: Sequence[float] | None = None, share: str | None = None,
                posterior: str | None = None, no_evidence: str | None = None) -> tuple[np.ndarray, dict]:
    """Expected-F1-optimal flags from null-calibrated scores.

    1. Evidence test (:func:`tail_count_evidence`): the candidates above the ``alpha_evidence`` null
       threshold and above the null's upper ``tails`` quantiles (default :data:`EVIDENCE_TAILS`) are
       counted; each count's exact p-value under exchangeability (beta-binomial,
       :func:`evidence_pvalue`) is combined by a weighted Bonferroni (:data:`EVIDENCE_FIRST_WEIGHT` on the
       ``alpha_evidence`` count).  Evidence when the combined p-value is below ``evidence_p`` and the
       count that attains it is at least ``min_hits``.
       ``tails=()`` is the single-threshold test before (branch spd6).
    2. Without evidence (``no_evidence``, default :data:`NO_EVIDENCE`): ``"fpr"`` flags the candidates above
       the ``alpha_evidence`` null threshold (the ``fpr:0.01`` rule; usually none), ``"all"`` flags every
       candidate (expected-F1 optimal for an unknown share, the rule before branch f17).
    3. With evidence: ``pi0 = 1 - member_share(p, share)`` from the conformal p-values (default :data:`SHARE`,
       a lower confidence bound on Storey's share), posterior member
       probabilities ``q`` (``posterior``, default :data:`POSTERIOR`: :func:`member_posterior`, the isotonic
       density ratio; ``"binned"``: the histogram fit before), and the top-``k`` by score maximising the
       expected F1 (:func:`expected_f1_topk`).

    Parameters
    ----------
    scores : float [N]
    null : float [K]
    share : {"storey-lcb", "storey", "storey-boot"} or None   see :func:`member_share` (default :data:`SHARE`)
    posterior : {"ratio", "binned"} or None
    no_evidence : {"fpr", "all"} or None

    Returns
    -------
    used : int8 [N], info : dict (``pi1`` (the posterior's mean), ``pi1_storey``, ``share_method``,
    ``evidence``, ``expected_f1``, ``k``, ``threshold``, ``rule``, the evidence test's counts)
    """
    posterior = POSTERIOR if posterior is None else posterior
    share = SHARE if share is None else share
    no_evidence = NO_EVIDENCE if no_evidence is None else no_evidence
    if posterior not in ("ratio", "binned") or no_evidence not in ("fpr", "all"):
        raise ValueError(f"posterior must be 'ratio' or 'binned', no_evidence 'fpr' or 'all' (got {posterior!r}, {no_evidence!r})")
    s = np.asarray(scores, np.float64)
    N = len(s)
    th = null_threshold(null, alpha_evidence)
    # a null too small for an exact alpha_evidence level: test at the level its maximum guarantees
    thr, a_ev = (th["threshold"], alpha_evidence) if th["exact"] else (th["fallback"], th["fallback_alpha"])
    ev = tail_count_evidence(s, null, thr, EVIDENCE_TAILS if tails is None else tails)
    h, p_ev = ev["hits"], ev["pvalue"]
    p = _pvalues(s, null)
    pi1 = member_share(p, share, n_null=int(np.isfinite(np.asarray(null, np.float64)).sum()))
    info = {"evidence_hits": int((s > thr).sum()), "evidence_pvalue": p_ev, "evidence_alpha": float(a_ev),
            "pi1_storey": estimate_used_share(p), "pi1_share": pi1, "share_method": share,
            "posterior": posterior, "evidence_threshold": ev["threshold"], "evidence_best_hits": h,
            "evidence_counts": ev["counts"],
            "evidence_test": (f"exact beta-binomial counts over {len(ev['counts'])} null threshold(s) "
                              f"(the fpr threshold, weight {EVIDENCE_FIRST_WEIGHT:g}, and the null's upper "
                              + ", ".join(f"{a:g}" for a in (EVIDENCE_TAILS if tails is None else tails))
                              + " quantiles), weighted Bonferroni; exchangeable null")}
    if h < min_hits or p_ev >= evidence_p:
        if no_evidence == "all":
            info.update(evidence=False, k=N, no_evidence="all",
                        rule="flag all: no significant evidence of membership "
                        "(expected-F1-optimal for an unknown share of used images)")
            return np.ones(N, np.int8), info
        used = (s > thr).astype(np.int8)
        info.update(evidence=False, k=int(used.sum()), no_evidence="fpr", alpha=float(a_ev),
                    threshold=float(thr) if np.isfinite(thr) else float("inf"),
                    rule=f"no significant evidence of membership: flagged only the candidates above the null's "
                    f"{1 - a_ev:.1%} threshold (fpr:{a_ev:.3g})")
        return used, info
    pi0 = float(np.clip(1.0 - pi1, 1e-3, 1.0))
    q = member_posterior(s, null, pi0) if posterior == "ratio" else _binned_posterior(p, pi0)
    kbest, ef1 = expected_f1_topk(s, q)
    o = np.argsort(-s, kind="stable")
    used = np.zeros(N, np.int8)
    used[o[:kbest]] = 1
    info.update(evidence=True, k=kbest, expected_f1=ef1, pi1=float(q.sum() / N),
                rule="two-group model on null-calibrated scores, top-k maximising expected F1",
                threshold=float(s[o[kbest - 1]]))
    return used, info


def tail_count_evidence(scores: np.ndarray, null: np.ndarray, threshold: float,
                        tails: Sequence[float] = EVIDENCE_TAILS, first_weight: float = EVIDENCE_FIRST_WEIGHT) -> dict:
    """Exact-level test of "no candidate is a member" from tail counts at several null thresholds.

    The thresholds are ``threshold`` (the ``f1`` rule passes the exact ``fpr:0.01`` one: the null's
    maximum for 299 to ~470 null scores) and, for every ``a`` in ``tails``, the null's order statistic
    with ``floor(a K)`` of the ``K`` null scores above it (its upper ``a`` quantile).  At each threshold
    ``t`` the count of candidates strictly above it has the exact tail p-value ``p_t``
    (:func:`evidence_pvalue`, beta-binomial) when the candidates and the null are exchangeable.  The
    combined p-value is the weighted Bonferroni ``min_t p_t / w_t`` (capped at 1) with ``w = first_weight``
    for ``threshold`` and ``(1 - first_weight) / len(tails)`` for each tail (weights of thresholds that
    coincide add up); since ``sum w = 1`` it is a valid p-value for any dependence between the counts:
    ``P(min_t p_t / w_t <= u) <= sum_t P(p_t <= u w_t) <= u``.  The single threshold (``tails=()``) sees
    only the few extreme members: a large share of members just under an extreme null score went unseen,
    which the 1-10% tails count; ``first_weight`` keeps most of the level on the extreme count, so the
    sparse case (a few members far above every null score) loses little (its bar moves from ``u`` to
    ``first_weight * u``).

    Parameters
    ----------
    scores : float [N]   candidate scores
    null : float [K]     null scores (non-finite values are ignored)
    threshold : float    the first threshold (``+inf`` or NaN: left out, the tails share the weight)
    tails : sequence of float in (0, 1)
    first_weight : float in (0, 1]

    Returns
    -------
    dict
        ``pvalue`` (float in (0, 1]), ``hits`` and ``threshold`` (the count and threshold attaining it),
        ``counts`` (list of ``(threshold, hits, p, weight)`` per threshold; ``p`` uncorrected).
    """
    s = np.asarray(scores, np.float64)
    nl = np.asarray(null, np.float64)
    nl = np.sort(nl[np.isfinite(nl)])
    K, N = len(nl), len(s)
    w: dict[float, float] = {}
    first = bool(np.isfinite(threshold))
    if first:
        w[float(threshold)] = float(first_weight) if len(tails) else 1.0
    wt = (1.0 - w.get(float(threshold), 0.0)) / len(tails) if len(tails) else 0.0
    for a in tails:
        j = int(math.floor(float(a) * K))
        if 0 <= j < K:
            w[float(nl[K - 1 - j])] = w.get(float(nl[K - 1 - j]), 0.0) + wt
    counts = []
    for t in sorted(w, reverse=True):
        h = int((s > t).sum())
        counts.append((t, h, evidence_pvalue(h, N, nl, t), w[t]))
    if not counts:
        return {"pvalue": 1.0, "hits": 0, "threshold": float("inf"), "counts": []}
    b = min(range(len(counts)), key=lambda i: counts[i][2] / counts[i][3])
    return {"pvalue": float(min(1.0, counts[b][2] / counts[b][3])), "hits": counts[b][1],
            "threshold": counts[b][0], "counts": counts}


def evidence_pvalue(hits: int, n_candidates: int, null: np.ndarray, threshold: float) -> float:
    """Exact p-value of ``hits`` candidates above ``threshold`` when no candidate is a member.

    If the ``N`` candidates and the ``K`` null scores are exchangeable (no member among the candidates),
    and ``j`` null scores lie above ``threshold``, the share of the score distribution above the null's
    ``(K - j)``-th order statistic is ``Beta(j + 1, K - j)`` and, given it, the count of candidates above
    is binomial: the count is ``BetaBinomial(N, j + 1, K - j)``.  ``threshold`` at or above that order
    statistic only lowers the count, so ``P(H >= hits)`` under this law is a valid (exact for continuous
    scores at an order statistic) p-value for "no member".  It replaces the earlier ``Binomial(N, alpha)``
    tail, which was valid only when the threshold's own rate held (95% confidence), i.e. at level
    ``0.05 + evidence_p`` overall, and less powerful.

    Parameters
    ----------
    hits : int
        Candidates with a score strictly above ``threshold``.
    n_candidates : int
    null : float [K]
    threshold : float (finite)

    Returns
    -------
    float in (0, 1]
    """
    from scipy.stats import betabinom

    if hits <= 0:
        return 1.0
    nl = np.asarray(null, np.float64)
    nl = nl[np.isfinite(nl)]
    K = len(nl)
    j = int((nl > threshold).sum())
    if K == 0 or j >= K:
        return 1.0
    return float(betabinom.sf(hits - 1, int(n_candidates), j + 1, K - j))


def conformal_pvalues(scores: np.ndarray, null: np.ndarray) -> np.ndarray:
    """Conformal upper-tail p-values against a null sample.

    Parameters
    ----------
    scores : float [N]
    null : float [K]  scores of known non-members, exchangeable with the non-member candidates

    Returns
    -------
    float64 [N]
        ``(1 + #{null >= s}) / (K + 1)``: for an exchangeable non-member ``P(p <= u) <= u`` for every ``u``.
    """
    null = np.asarray(null, np.float64)
    return _pvalues(np.asarray(scores, np.float64), null[np.isfinite(null)])


def fdr_decision(scores: np.ndarray, null: np.ndarray, q: float, *,
                 p_factor: float = 1.0) -> tuple[np.ndarray, dict]:
    """Benjamini-Hochberg at level ``q`` on conformal p-values against the null.

    With exchangeable non-members the conformal p-values are PRDS (Bates et al. 2023, "Testing for
    outliers with conformal p-values"), so BH controls the false-discovery rate:
    ``E[#false flags / max(#flags, 1)] <= q * pi0 <= q``.

    Parameters
    ----------
    scores : float [N]   candidate scores (higher = more member-like)
    null : float [K]     null scores
    q : float in (0, 1)
    p_factor : float >= 1
        Multiplies the p-values before BH (capped at 1): a conservative correction when the null
        sample is a proxy whose tail is ``p_factor`` times lighter (the real-to-real null, see
        :func:`engine.membership.calibrate.real_pair_null`).

    Returns
    -------
    used : int8 [N]
    info : dict
        ``q``, ``k`` (flags), ``p_cut`` (largest flagged p-value), ``threshold`` (lowest flagged score,
        ``+inf`` when none), ``pi0`` (Storey, ``lambda = 0.5``), ``expected_false`` (``pi0 * N * p_cut``,
        the expected number of false flags among the flagged under the null model), ``max_expected_false``
        (``q * k``, the FDR bound as a count), ``min_pvalue`` (the smallest attainable: ``p_factor / (K + 1)``).
    """
    from scipy.stats import false_discovery_control

    s = np.asarray(scores, np.float64)
    N = len(s)
    K = int(np.isfinite(np.asarray(null, np.float64)).sum())
    p = np.minimum(1.0, conformal_pvalues(s, null) * float(p_factor)) if K else np.ones(N)
    used = np.zeros(N, np.int8)
    info: dict = {"q": float(q), "n_null": K, "p_factor": float(p_factor),
                  "min_pvalue": float(min(1.0, p_factor / (K + 1.0)))}
    pi0 = 1.0 - estimate_used_share(p)
    if N:
        adj = false_discovery_control(p, method="bh")
        used = (adj <= q).astype(np.int8)
    k = int(used.sum())
    p_cut = float(p[used == 1].max()) if k else 0.0
    info.update(k=k, p_cut=p_cut, pi0=float(pi0), expected_false=float(pi0 * N * p_cut),
                max_expected_false=float(q * k),
                threshold=float(s[used == 1].min()) if k else float("inf"))
    # one flag alone needs p <= q / N; the smallest attainable p-value is p_factor / (K + 1)
    info["min_null_single_flag"] = int(math.ceil(p_factor * max(N, 1) / q - 1.0))
    return used, info


# ----------------------------------------------------------------------------------------- main entry
def parse_decision(decision: str, what: str = "decision") -> tuple[str, float]:
    """``"f1"`` -> ``("f1", 0.01)``; ``"fpr:ALPHA"`` -> ``("fpr", ALPHA)`` with 0 < ALPHA < 0.5;
    ``"fdr:Q"`` -> ``("fdr", Q)`` with 0 < Q < 1.

    ``what`` names the argument in the one-line error (the CLI passes ``"--decision"``)."""
    d = str(decision).strip().lower()
    if d == "f1":
        return "f1", 0.01
    for mode, hi, name in (("fpr", 0.5, "ALPHA"), ("fdr", 1.0, "Q")):
        if d.startswith(mode + ":"):
            try:
                a = float(d[4:])
            except ValueError:
                raise ImprintError(f"{what} {mode}:{name} needs a number (got {decision!r})") from None
            if not 0.0 < a < hi:
                raise ImprintError(f"{what} {mode}:{name} needs 0 < {name} < {hi:g} (got {a})")
            return mode, a
    raise ImprintError(f"{what} must be 'fpr:ALPHA', 'fdr:Q' or 'f1' (got {decision!r})")
