"""Membership audit: wires evidence, calibration and decisions into :func:`audit_membership`."""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from imprint.engine.errors import ImprintError

from .common import COMBINED_FEATURES, DEFAULT_WEIGHTS, DevSet, MAX_FEATURES, MembershipResult, _MIN_NULL, _check_stack, _hashes  # noqa: F401
from .common import ALWAYS_MAX_FEATURES, _ALWAYS_MAX_FLOOR
from . import _threads
from .evidence import _evidence  # noqa: F401
from .calibrate import (NEAR_DUP_CORR, PAIR_FEATURES, _combine, _feature_matrix, exchangeability_check,  # noqa: F401
                        empirical_null, fit_weights, near_duplicates, nuisance_statistics, real_pair_null, robust_calibrate)
from .calibrate import COMBINE_RULES, combined_scores
from .calibrate import PAIR_REG_FEATURES, pair_null_matrix, pair_null_scores, real_pair_null_cached
from .calibrate import PAIR_ANAT_FEATURES
from .decide import f1_decision, fdr_decision, null_threshold, parse_decision  # noqa: F401

def _dev_pool(dev: DevSet, reference: np.ndarray | None, others_unused: list[np.ndarray]):
    """A dev set's evidence pool: (used, unused, pool uint8 [P, H, W]; candidates first, then the reference part
    with the candidates' identical and near-duplicate images removed), or None without both used and unused."""
    used = _check_stack(dev.used, f"dev set {dev.name!r} used", 0)
    unused = _check_stack(dev.unused, f"dev set {dev.name!r} unused", 0)
    cand = np.concatenate([used, unused])
    if len(used) == 0 or len(unused) == 0:
        return None
    cand_h = set(_hashes(cand))
    refs = [r for r in ([reference] if reference is not None else []) + others_unused if r is not None and len(r)]
    ref_list, seen = [], set()
    for r in refs:
        for x, h in zip(r, _hashes(r)):
            if h not in cand_h and h not in seen:
                seen.add(h)
                ref_list.append(x)
    ref = np.stack(ref_list) if ref_list else np.zeros((0,) + cand.shape[1:], np.uint8)
    if len(ref):
        ref = ref[~near_duplicates(ref, cand)[0]]
    return used, unused, np.concatenate([cand, ref])


def _dev_rows(prep, ev: dict, names: Sequence[str]):
    """The dev set's training rows (calibrated features [n_cand, len(names)], labels) from its pool's evidence."""
    used, unused, pool = prep
    nc = len(used) + len(unused)
    null_mask = np.zeros(len(pool), bool)
    if len(pool) - nc >= _MIN_NULL:
        null_mask[nc:] = True
    else:
        null_mask[:nc] = True
    Z = _feature_matrix(ev, null_mask, names)[:nc]
    y = np.r_[np.ones(len(used)), np.zeros(len(unused))]
    return Z, y


def _dev_training_rows(dev: DevSet, reference: np.ndarray | None, others_unused: list[np.ndarray],
                       names: Sequence[str], kw: dict):
    prep = _dev_pool(dev, reference, others_unused)
    if prep is None:
        return None
    ev, _, _ = _evidence(dev.generated, prep[2], **kw)
    return _dev_rows(prep, ev, names)


#: Evidence pools (the target's and every dev set's) computed at once, on threads (issue 13, branch spd8): the
#: pools are independent, and while one runs single-threaded numpy / Python the other keeps the second core busy.
#: 1 = one after the other (the order before).  The outputs do not depend on it (every pool's evidence is the same
#: whichever pool filled the shared per-image / per-pair memo first: tests/test_register_speed.py).
POOL_THREADS = 2
#: Largest pool (generated + pool images, times pixels per image) run beside another one: above it the pools run
#: one after the other, so that two pools' working memory never sit side by side for a large audit (issue 15).
POOL_THREADS_MAX_PIXELS = 64 * 2**20


def _pool_threads(jobs, executor) -> int:
    """Threads for the evidence pools: :data:`POOL_THREADS` on the local executor with a thread-safe Numba
    threading layer (omp / tbb; the workqueue layer aborts on concurrent parallel launches) and pools below
    :data:`POOL_THREADS_MAX_PIXELS`; else 1."""
    if POOL_THREADS <= 1 or len(jobs) < 2:
        return 1
    from imprint.engine.executors import LocalExecutor

    if executor is not None and type(executor) is not LocalExecutor:
        return 1
    if max((len(g) + len(p)) * int(np.prod(np.shape(p)[1:])) for _, g, p in jobs) > POOL_THREADS_MAX_PIXELS:
        return 1
    try:
        from .register import _z

        _z(np.zeros((1, 2, 2), np.float32))       # a parallel kernel has run, so the layer is chosen
        import numba

        if numba.threading_layer() not in ("omp", "tbb"):
            return 1
    except Exception:
        return 1
    return int(POOL_THREADS)


def _pool_evidence(jobs, kw: dict, executor) -> list:
    """``_evidence(generated, pool, **kw)`` of every job ``(name, generated, pool)``, in the jobs' order.

    With more than one thread (:func:`_pool_threads`) the pools run on a thread pool, the first job (the target)
    first and the jobs whose generated set is the first job's last (their pairs with the target's pool images are
    then in the shared memo).  On an error or an interrupt in one pool, the pools already running finish (and
    write their checkpoints with ``cache_dir``, so a re-run resumes from them), those not started are cancelled,
    and the error is raised."""
    nt = _pool_threads(jobs, executor)
    if nt <= 1:
        return [_evidence(g, p, **kw) for _, g, p in jobs]
    import threading
    from concurrent.futures import ThreadPoolExecutor

    lock = threading.Lock()
    user_tick = kw.get("progress")

    def tick(n=1):
        if user_tick is not None:
            with lock:
                user_tick(n)

    kw = dict(kw, progress=tick)
    g0 = np.asarray(jobs[0][1])

    def same_gen(g):
        g = np.asarray(g)
        return g.shape == g0.shape and np.array_equal(g, g0)

    order = [0] + sorted(range(1, len(jobs)), key=lambda i: (same_gen(jobs[i][1]), i))
    out: list = [None] * len(jobs)
    # issue 13, spd9: with _threads.SHARES (off by default) each pool's share of the threads for its Numba kernels
    # and FFTs (not 2 x 2 threads on 2 cores); the same values either way (_threads' notes)
    _threads.start_pools(len(jobs), nt, _threads.total_threads())

    def run(g, p):
        with _threads.pool_share():
            return _evidence(g, p, **kw)

    ex = ThreadPoolExecutor(max_workers=nt, thread_name_prefix="imprint-pool")
    try:
        futs = {i: ex.submit(run, jobs[i][1], jobs[i][2]) for i in order}
        for i in order:
            out[i] = futs[i].result()
    except BaseException:
        ex.shutdown(wait=True, cancel_futures=True)
        raise
    ex.shutdown(wait=True)
    return out


def audit_membership(generated, real, *, dev_sets: Sequence[DevSet] = (), reference=None,
                     decision: str = "fpr:0.01", random_state: int = 0,
                     progress: Callable[[int], object] | None = None, backbone: str | None = None,
                     k_gen: int = 10, k_real: int = 10, weights: dict | None = None,
                     cache_dir: str | None = None, executor=None, empirical: bool | str = True,
                     combine: str = "tail-split", pair_register: bool = True,
                     pair_anatomy: bool = True, pair_series: bool = True) -> MembershipResult:
    """Score real images for membership in a generator's training set and decide used / unused.

    Parameters
    ----------
    generated : uint8 [M, H, W]   the generator's images
    real : uint8 [R, H, W]        candidate real images
    dev_sets : sequence of DevSet  labelled dev generators; used to fit the evidence weights
    reference : uint8 [K, H, W] or None   known non-members (give the null distribution)
    decision : "fpr:ALPHA" (default ``fpr:0.01``), "fdr:Q" or "f1"
                                  ``fpr:ALPHA``: exact order-statistic threshold, P(non-member flagged) <= ALPHA
                                  at 95% confidence (a null too small for that: its maximum, and the rate it
                                  guarantees is stated); ``fdr:Q``: Benjamini-Hochberg on conformal p-values;
                                  ``f1``: expected-F1-optimal top-k.  The null is the reference (>= 20 images
                                  left after removing near-duplicates of candidates), else real-to-real pairs
                                  of the real folder (:func:`real_pair_null`); ``info["guarantee"]`` says which.
    random_state : int            (the method is deterministic; kept for the contract)
    progress : callable or None   called with increments
    backbone : str or None        backbone for ``embed_ratio`` (default None: off; effnet-lite0 costs
                                  ~50-90 ms per image on 2 CPU cores, too slow for the 2-min budget)
    k_gen, k_real : int           shortlist sizes
    weights : dict or None        override the prior weights (name -> weight >= 0)
    cache_dir : path or None      checkpoint folder: the evidence of each stage (every dev set, the target) is
                                  saved there (``.npz``, read back with ``allow_pickle=False``) keyed by a hash of
                                  its inputs, so an interrupted run resumes from the finished stages
    executor : Executor or None   where the searches, pair kernels and embeddings run (engine.executors; default
                                  local); the results do not depend on it
    empirical : bool or str       without a labelled null (real-to-real pairs): give the null the candidates' own
                                  location and scale (:func:`empirical_null`, which may move and widen it; default
                                  True = "widen"); "channel": first every evidence channel on its own location and
                                  scale, which may also narrow (:func:`calibrate.channel_null`), then "widen";
                                  False / "none" keeps the real-to-real null as it is
    combine : str                 how the evidence channels are combined with a reference null of at least
                                  ``TAIL_MIN_NULL`` images: "tail-split" (default) puts the weighted sum and every
                                  max-rule channel on its own null's scale first (:func:`calibrated_max`: a
                                  channel with a heavy-tailed null no longer sets the threshold) and combines
                                  their p-values by a weighted min-p, half the level on the weighted sum
                                  (:data:`calibrate.SUM_SHARE`; with the real-to-real null "tail", whose
                                  lower quarter the empirical null can read); "tail": the plain min-p (the rule
                                  before branch comb8); "max" is the
                                  max of robust z-scores (:func:`_combine`, the rule before).  Without such a
                                  null "max" is used.  Without a labelled null the real-to-real null rows
                                  (at least ``TAIL_MIN_NULL``) play that null (:func:`pair_null_scores`).
    pair_register : bool          without a labelled null: give the registered evidence (``reg_*``) its own
                                  real-to-real null (:func:`real_pair_null` with ``register=True``) and use it
                                  (default True); False leaves it out, as before
    pair_anatomy : bool           without a labelled null: the same for the anatomy evidence (``anat_ratio``: its
                                  real-to-real null compares each real image's low-pass with its nearest other
                                  reals'; default True); False leaves it out (the state before branch uns6)
    pair_series : bool            without a labelled null: group the real folder into series (several slices of one
                                  patient, from the images alone: :func:`calibrate.series_groups`) and leave each
                                  image's own series out of its real-to-real null (default True); False: every
                                  other real image counts as another patient (the state before branch uns7)

    Returns
    -------
    MembershipResult
    """
    t0 = time.perf_counter()
    G = _check_stack(generated, "generated")
    R = _check_stack(real, "real")
    if G.shape[1:] != R.shape[1:]:
        raise ImprintError(f"generated images are {G.shape[1]}x{G.shape[2]} but real images are "
                           f"{R.shape[1]}x{R.shape[2]}; resize them to a common size")
    mode, alpha = parse_decision(decision)
    if reference is not None:
        reference = _check_stack(reference, "reference", 0)
        if reference.shape[1:] != R.shape[1:]:
            raise ImprintError("reference images must have the same size as the real images")
        rh = set(_hashes(R))
        keep = [i for i, h in enumerate(_hashes(reference)) if h not in rh]
        n_ref_given = len(reference)
        reference = reference[keep] if len(keep) else None
        n_ref_identical = n_ref_given - len(keep)
        n_ref_near = 0
        if reference is not None:
            dup, _ = near_duplicates(reference, R)
            n_ref_near = int(dup.sum())
            reference = reference[~dup] if (~dup).any() else None
    else:
        n_ref_given = n_ref_identical = n_ref_near = 0
    dev_sets = list(dev_sets or ())
    for d in dev_sets:
        if not isinstance(d, DevSet):
            raise ImprintError("dev_sets must hold DevSet(name, generated, used, unused) items")
        for part in (d.generated, d.used, d.unused):
            if np.asarray(part).ndim == 3 and np.asarray(part).shape[1:] != R.shape[1:]:
                raise ImprintError(f"dev set {d.name!r}: images must have the same size as the real images")
    prior = dict(DEFAULT_WEIGHTS)
    if weights:
        for k_, v in weights.items():
            if k_ not in prior or not (float(v) >= 0):
                raise ImprintError(f"weights: unknown evidence {k_!r} or negative weight")
            prior[k_] = float(v)
    kw = dict(k_gen=k_gen, k_real=k_real, backbone=backbone, progress=progress, _cache={}, _cache_dir=cache_dir,
              executor=executor)

    # ---- target evidence
    nR = len(R)
    small_ref = reference is not None and 0 < len(reference) < _MIN_NULL
    use_ref = reference is not None and len(reference) >= _MIN_NULL
    pool = np.concatenate([R, reference]) if use_ref else R
    nref = len(pool) - nR
    # the anatomy evidence's low-pass candidate source (short7) only with a reference: without one, the real-to-real
    # null would need it too, and there it raised the null more than the copies' evidence (the planted re-synthesis
    # of tests/test_membership_unsupervised.py: recall 0.30 with it, >= 0.6 without); the dev sets follow the target
    kw["anatomy_lowpass"] = None if use_ref else False
    # the dev sets' pools, computed with the target's (their evidence does not depend on the target's)
    dev_sets = list(dev_sets)
    dev_preps = [_dev_pool(d, reference, [np.asarray(o.unused) for o in dev_sets if o is not d]) for d in dev_sets]
    jobs = [("target", G, pool)] + [(d.name, d.generated, p[2]) for d, p in zip(dev_sets, dev_preps) if p is not None]
    pool_ev = _pool_evidence(jobs, kw, executor)
    ev, nearest, ev_info = pool_ev[0]
    dev_ev = iter(pool_ev[1:])
    null_mask = np.zeros(len(pool), bool)
    names = [n for n in COMBINED_FEATURES if n in ev]
    if use_ref:
        null_mask[nR:] = True
        null_kind = "reference"
        Z = _feature_matrix(ev, null_mask, names)
    else:
        # no labelled null: pairs of different patients in the real folder (real_pair_null)
        null_kind = "real-pairs"
        # the registered (transform-invariant) evidence gets its real-to-real null too (each real image registered
        # onto its shortlisted other reals), so flipped / shifted / rotated copies are found without a reference
        reg_null = pair_register and any(n in ev for n in PAIR_REG_FEATURES)
        # and the anatomy evidence (each real image's low-pass NCC with its nearest other reals)
        anat_null = pair_anatomy and any(n in ev for n in PAIR_ANAT_FEATURES)
        names = [n for n in names if n in PAIR_FEATURES or (reg_null and n in PAIR_REG_FEATURES)
                 or (anat_null and n in PAIR_ANAT_FEATURES)]
        pn = real_pair_null_cached(R, len(G), cache_dir=cache_dir, cache=kw["_cache"], register=reg_null,
                                   series=pair_series)
        if anat_null:
            # its own (cheap) checkpoint, so the registered null's checkpoint is shared with audits without it; the
            # splits are drawn from the same seed in the same order, so its rows are the same images and splits
            pa = real_pair_null_cached(R, len(G), cache_dir=cache_dir, cache=kw["_cache"], anatomy=True,
                                       anatomy_lowpass=False, base=False,   # its plain features: from pn
                                       series=pair_series, groups=pn.get("_groups") if pair_series else None)
            if not np.array_equal(pa["_images"], pn["_images"]):
                raise ImprintError("internal: the anatomy pair null's rows differ from the registered null's")
            pn = dict(pn, _theta=dict(pn["_theta"]), _shift=dict(pn["_shift"]))
            for n in (n for n in PAIR_ANAT_FEATURES if n in pa):
                pn[n] = pa[n]
                pn["_theta"][n], pn["_shift"][n] = pa["_theta"][n], pa["_shift"][n]
        Z, null_mask = pair_null_matrix({n: ev[n][:nR] for n in names}, pn, names)
    w0 = np.array([prior[n] for n in names], np.float64)
    mx = np.array([n in MAX_FEATURES for n in names])

    # ---- dev sets: learn weights
    w = w0.copy()
    dev_info = {}
    if dev_sets:
        Xs, ys, gs = [], [], []
        for gi, (d, prep) in enumerate(zip(dev_sets, dev_preps)):
            rows = None if prep is None else _dev_rows(prep, next(dev_ev)[0], names)
            if rows is None:
                dev_info[d.name] = "skipped (needs used and unused images)"
                continue
            Xs.append(rows[0])
            ys.append(rows[1])
            gs.append(np.full(len(rows[1]), gi))
        if Xs:
            X = np.concatenate(Xs)
            y = np.concatenate(ys)
            g = np.concatenate(gs)
            w = fit_weights(X, y, w0, groups=g)
            from sklearn.metrics import roc_auc_score
            for gi, (Xg, yg) in enumerate(zip(Xs, ys)):
                dev_info[dev_sets[int(gs[gi][0])].name] = {
                    "auc_prior": float(roc_auc_score(yg, _combine(Xg, w0, use_max=mx))),
                    "auc_fitted": float(roc_auc_score(yg, _combine(Xg, w, use_max=mx))),
                }
    # transform-invariant evidence keeps its place in the max rule (a dev fit without transformed copies
    # would otherwise drop it); its floor weight is negligible in the weighted sum
    w = np.where([n in ALWAYS_MAX_FEATURES and n not in (weights or {}) for n in names],
                 np.maximum(w, _ALWAYS_MAX_FLOOR), w)
    if combine not in COMBINE_RULES:
        raise ImprintError(f"combine must be one of {', '.join(COMBINE_RULES)} (got {combine!r})")
    combine_used = "max"
    emp = None
    if null_kind == "real-pairs":
        # the same combination rule as with a reference, on the real-to-real null (registered channels
        # included); then the empirical null: the candidates' lower quarter gives its location and scale
        # "tail-split" falls back to "tail" here: the empirical null reads the candidates' lower quarter, which under
        # the split rule is the weighted sum's p-value alone, a point mass at 1 for a generator further from patients
        # than patients are from each other (dev gen_a: 78% of candidates; fpr:0.01 flagged 24/100 unused; RESULTS.md comb8)
        score, null_scores, pinfo = pair_null_scores(Z, null_mask, w, mx, empirical=empirical, null_groups=pn["_images"],
                                                     combine="tail" if combine == "tail-split" else combine)
        combine_used, emp = pinfo["combine"], pinfo["empirical_null"]
        chan = pinfo.get("channel_null")
    else:
        score_all, combine_used = combined_scores(Z, w, mx, null_mask, combine)
        score = score_all[:nR]
        null_scores = score_all[null_mask]

    # ---- decision
    info: dict = {
        "decision": "f1" if mode == "f1" else f"{mode}:{alpha:g}",
        "null": null_kind,
        "n_null": int(null_mask.sum()),
        "n_generated": int(len(G)),
        "n_real": int(nR),
        "n_reference": int(nref),
        "reference_removed": {"given": int(n_ref_given), "identical": int(n_ref_identical),
                              "near_duplicate": int(n_ref_near), "near_duplicate_corr": NEAR_DUP_CORR},
        "weights": {n: float(v) for n, v in zip(names, w)},
        "combine": combine_used,
        "prior_weights": {n: float(v) for n, v in zip(names, w0)},
        "dev_sets": dev_info,
        "skipped_evidence": ev_info["skipped"],
    }
    lines: list[str] = []
    if null_kind == "reference":
        info["guarantee"] = (f"null: {nref} reference images (known non-members, near-duplicates of candidates "
                             "removed); the error rates hold if they are exchangeable with the unused candidates")
        # exchangeability of the reference with the candidates on nuisance statistics
        ns_c, ns_n = nuisance_statistics(R), nuisance_statistics(pool[nR:])
        ns_c["real_nn_dist"], ns_n["real_nn_dist"] = ev["real_nn_dist"][:nR], ev["real_nn_dist"][nR:]
        exch = exchangeability_check(ns_n, ns_c)
        info["exchangeability"] = exch
        if exch["warn"]:
            lines.append(exch["message"])
    else:
        info["pair_null"] = {"shift": {n: float(v) for n, v in pn["_shift"].items() if n in names},
                             "theta": {n: float(v) for n, v in pn["_theta"].items() if n in names},
                             "registered": bool(reg_null), "anatomy": bool(anat_null),
                             "icc": float(pinfo["null_icc"]) if np.isfinite(pinfo["null_icc"]) else None,
                             "series": pn.get("_series")}
        ser = pn.get("_series")
        if ser is not None and not ser.get("reason"):
            # series (several slices of one patient) found from the images alone; each image's own series is left
            # out of its null neighbours, so the null measures how close two different patients get
            lines.append(f"Series: {ser['n_series']} groups of near-identical slices ({ser['n_grouped']} of {nR} real "
                         f"images, largest {ser['largest']}) found in the real folder from the images alone (a pair "
                         f"closer than {ser['factor']:.2f}x an image's {ser['k']}th-neighbour distance; P(any false "
                         f"grouping of distinct patients) <= {ser['alpha']:g} under the locally uniform model)"
                         + ("; the null leaves out each image's own series." if ser["n_series"] else "."))
        if emp is not None:
            info["empirical_null"] = emp
        if chan is not None:
            info["channel_null"] = dict(chan, names=list(names))
        info["guarantee"] = (f"null: real-to-real nearest-neighbour pairs of the {nR} real images, {int(null_mask.sum())} "
                             "random splits into pseudo-generated / pseudo-real parts (no labelled null"
                             + (f"; the {len(reference)} reference images are too few (< {_MIN_NULL})" if small_ref else "")
                             + (f"); empirical null: its shape from those pairs, its location {emp['loc']:+.2f} and scale "
                                f"{emp['scale']:.2f} from the candidates' lower quarter; approximate: assumes at most half "
                                "the candidates are members, members score above non-members, and non-members' scores "
                                "have the pairs' shape up to location and scale; under that model fpr:ALPHA keeps the EXPECTED "
                                "share of non-members flagged <= ALPHA (not at 95% confidence: the location and scale are "
                                "estimated) and fdr:Q its FDR (tests/test_membership_unsupervised.py)"
                                if emp is not None and emp["applied"] else
                                "); approximate: assumes a generated image that copied no patient is no closer to a real "
                                "patient than another patient is (corrected for the number of generated images)"
                                + (f" ({emp['reason']})" if emp is not None else ""))
                             + ("; every evidence channel first on its own location and scale from the candidates "
                                "(channel null, scales " + ", ".join(f"{v:.2f}" for v in chan["scale"]) + ")"
                                if chan is not None and chan["applied"] else "")
                             + f", on evidence {', '.join(names)}"
                             + (" (the registered evidence's null: each real image registered onto its nearest other reals)"
                                if reg_null else ""))
    if n_ref_identical or n_ref_near:
        lines.append(f"Removed {n_ref_identical} identical and {n_ref_near} near-duplicate reference images of candidates "
                     f"(z-pixel correlation > {NEAR_DUP_CORR}, also mirrored) from the null.")
    if mode == "fpr":
        from . import decide as _decide
        if _decide.PAIR_NULL_FPR not in _decide.PAIR_NULL_FPR_RULES:
            raise ImprintError(f"decide.PAIR_NULL_FPR must be one of {', '.join(_decide.PAIR_NULL_FPR_RULES)}")
        conformal = null_kind == "real-pairs" and _decide.PAIR_NULL_FPR == "conformal"      # opt-in (uns13)
        th = _decide.conformal_threshold(null_scores, alpha) if conformal else null_threshold(null_scores, alpha)
        info["threshold_detail"] = th
        if th["exact"]:
            thr = th["threshold"]
        else:
            thr = th["fallback"]
            lines.append(f"The null has {th['n_null']} images, fewer than the {th['min_null']} that fpr:{alpha:g} needs "
                         f"for its 95% guarantee; flagged above the null's maximum instead, which guarantees "
                         f"FPR <= {th['fallback_alpha']:.3f} at 95% (use fdr:Q or a larger reference).")
        used = (score > thr).astype(np.int8)
        room = _decide.threshold_headroom(null_scores, score, th, alpha) if null_kind == "reference" else None
        if room is not None:
            info["threshold_headroom"] = room
            if room["n_between"] and th["empirical"] >= th["threshold"]:   # the order statistic, not the Gaussian check, sets it
                lines.append(
                    f"The threshold ({room['threshold']:.2f}) is the null's "
                    + ("largest score" if room["allowed_exceedances"] == 0 else
                       f"{_decide.ordinal(room['allowed_exceedances'] + 1)} largest score")
                    + f" and the next is {room['next']:.2f}: {room['n_between']} more real images score between "
                    f"them. With {room['n_null']} null images the 95% guarantee of fpr:{alpha:g} allows no lower "
                    f"threshold; from {room['null_size_for_next']} null images on (a larger reference) it would "
                    "allow the next. fdr:Q does not hinge on one null image.")
    elif mode == "fdr":
        used, finfo = fdr_decision(score, null_scores, alpha)
        thr = finfo["threshold"]
        info["fdr"] = finfo
    else:
        used, f1info = f1_decision(score, null_scores)
        thr = float(f1info.get("threshold", -np.inf))
        info["f1"] = f1info
    nflag = int(used.sum())

    # interpretable strength a copy needed: pixel ratio quantile of the null at the same alpha
    pr_null = ev["pixel_nn_ratio"][null_mask] if null_kind == "reference" else pn["pixel_nn_ratio"]
    a_q = alpha if mode == "fpr" else 0.01
    need = float(np.exp(-np.quantile(pr_null, 1 - a_q))) if len(pr_null) else float("nan")
    info["null_pixel_ratio_quantile"] = need
    if mode == "fpr":
        if nflag == 0:
            summary = (f"No evidence of membership found: no real image scored above the null's "
                       f"{1 - alpha:.0%} level (threshold {thr:.2f}). To be flagged, an image would "
                       f"roughly have needed its nearest generated image to be closer than {need:.2f}x "
                       f"its nearest real neighbour (z-scored pixels), or equivalent combined evidence.")
        else:
            summary = (f"{nflag}/{nR} real images show membership evidence above the null's "
                       f"{1 - alpha:.0%} level (score > {thr:.2f}; null: {info['null']}, n={info['n_null']}).")
    elif mode == "fdr":
        f = info["fdr"]
        summary = (f"{nflag}/{nR} real images flagged by Benjamini-Hochberg at FDR {alpha:g} on conformal p-values "
                   f"(null: {info['null']}, n={info['n_null']}); expected false flags among them "
                   f"{f['expected_false']:.1f} (at most {f['max_expected_false']:.1f}).")
        if nflag == 0 and f["min_pvalue"] > alpha / max(nR, 1):
            lines.append(f"With {f['n_null']} null images the smallest p-value is {f['min_pvalue']:.3g}; "
                         f"a single flag needs <= {alpha / max(nR, 1):.3g} (null of >= {f['min_null_single_flag']} images).")
    else:
        f = info["f1"]
        if f.get("evidence"):
            summary = (f"Estimated share of used images {f['pi1']:.2f} (Storey {f['pi1_storey']:.2f}); "
                       f"flagged the top {nflag}/{nR} maximising expected F1 ({f['expected_f1']:.2f}).")
        elif f.get("no_evidence") == "fpr":
            summary = (f"No significant evidence of membership (evidence test p = {f['evidence_pvalue']:.2g}); "
                       f"flagged only the {nflag}/{nR} real images above the null's fpr:{f['alpha']:.3g} "
                       "threshold, so a generator that copied nobody gets few flags.")
        else:
            summary = ("No significant evidence of membership; assuming an unknown share of used images, "
                       f"the expected-F1-optimal answer flags all {nR} images.")
    summary = "\n".join([summary, "Guarantee: " + info["guarantee"] + "."] + lines)
    info["warnings"] = lines
    info["timings"] = dict(ev_info["timings"], total_s=time.perf_counter() - t0)
    evidence = {k_: np.asarray(v[:nR], np.float64) for k_, v in ev.items()}
    return MembershipResult(score=np.asarray(score, np.float64), used=used, threshold=float(thr),
                            evidence=evidence, nearest=nearest[:nR], info=info, summary=summary,
                            null_scores=np.asarray(null_scores, np.float64),
                            calibrated={n: np.asarray(Z[:nR, j], np.float64) for j, n in enumerate(names)})
