"""Training-data membership audit: which real images did a generator see?

Given a generator's images ``G`` and real images ``R`` this module scores every real image
(higher = more likely in the generator's training set) and decides used / unused.

Pipeline
--------
1. **Pool.**  The candidates ``R`` and the known non-members ``reference`` form one real pool.
   Every piece of evidence is computed identically for every pool image against the *same*
   ``G``, so the reference images give the null distribution of each statistic.
2. **Shortlist.**  Per-image z-scored pixels (so a global brightness / contrast change does not
   hide a copy) are searched exactly with :func:`engine.search.knn`: the ``k_gen`` nearest
   generated images and the ``k_real`` nearest other real images of every pool image, and the
   nearest pool image of every generated image.
3. **Evidence** (:func:`compute_evidence`; every value is *scale free* and oriented so that
   higher means "more member-like"):

   ``pixel_nn_ratio``      ``-log(d_G1 / d_R1)``: nearest-generated over nearest-real squared
                           distance of z-scored pixels (calibration by the real population:
                           a typical image is close to ``G`` *and* to other reals).
   ``pixel_knn_ratio``     ``-log(d_G1 / mean(d_R1..5))``, a smoother real-density estimate.
   ``mse_ratio``           same ratio with raw-intensity MSE (``kernels.mse_pairs``) re-ranked on
                           the shortlists (an unnormalised exact copy).
   ``ssim_ratio``          ``-log((1-SSIM_G) / (1-SSIM_R))``, best SSIM (``kernels.ssim_pairs``,
                           on z-scored images) over the shortlists.
   ``tile_ratio``          4x4 tiles: per tile the nearest shortlisted generated tile over the
                           nearest shortlisted real tile; mean of the 3 most copied tiles, so a
                           partial copy counts.
   ``share``               ``log1p`` of the number of generated images closer than ``x``'s
                           nearest real (density ratio within a radius).
   ``hub``                 ``log1p`` of the number of generated images whose nearest real is
                           ``x`` (a memorising generator emits many near-copies of a training
                           image).
   ``distinct``            over the generated images whose nearest real is ``x``: the largest
                           ``log(d_2nd-nearest-real / d_nearest-real)``.
   ``embed_ratio``         ``-log`` ratio of cosine distances in a pretrained backbone embedding
                           (``engine.backbone.embed``), when the backbone is available.
   ``lbp_ratio``           same with uniform-LBP histograms (``kernels.lbp_histograms``).
   ``shape_ratio``         anatomy shape: ``-log`` ratio of nearest-generated over nearest-real
                           distance between multi-level "air inside the body" masks
                           (:func:`anatomy_masks`: Otsu body, dark regions at 1/4..1 of the Otsu
                           level, 64x64).  A memorising generator that blurs or re-invents texture
                           still reproduces the patient's body outline and lung / airway shapes.

   Raw distances (``pixel_nn_dist``, ``real_nn_dist``, ``mse_nn``, ``ssim_nn``) are reported too.
4. **Calibration.**  Each evidence value is turned into a robust z-score against the null
   (reference images; without reference, the candidates themselves):
   ``(e - median_null) / (1.4826 MAD_null)``.
5. **Combination.**  ``score = sum_j w_j z_j / ||w||``, re-standardised on the null.  ``w``
   starts from a fixed prior (``DEFAULT_WEIGHTS``).  With labelled dev sets the same evidence is
   computed for each dev generator (its reference = the non-members not among its candidates) and
   ``w`` is fitted by a non-negative logistic regression pulled towards the prior
   (:func:`fit_weights`), so that dev sets without signal leave the prior unchanged.
6. **Decision.**  ``fpr:ALPHA`` flags a candidate only when its score exceeds a conservative
   upper quantile of the null scores (:func:`null_threshold`).  ``f1`` estimates the share of
   used images from the null-calibrated p-values (Storey) and picks the cut that maximises the
   expected F1; without significant evidence it flags every image (with an unknown share ``p`` of
   used images that gives F1 = 2p/(1+p), the best achievable without evidence).

Without reference and without dev sets the rule is unsupervised: the prior combination, calibrated
against the candidate population itself (median / MAD), flags candidates whose calibrated score is an
upper-tail outlier of that population.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from imprint.engine.errors import ImprintError

__all__ = [
    "DevSet",
    "MembershipResult",
    "DEFAULT_WEIGHTS",
    "COMBINED_FEATURES",
    "audit_membership",
    "compute_evidence",
    "anatomy_masks",
    "zscore_images",
    "robust_calibrate",
    "fit_weights",
    "null_threshold",
    "estimate_used_share",
    "f1_decision",
]

#: Evidence columns that enter the combined score, with their prior weights.
DEFAULT_WEIGHTS: dict[str, float] = {
    "pixel_nn_ratio": 1.0,
    "pixel_knn_ratio": 1.0,
    "mse_ratio": 0.5,
    "ssim_ratio": 0.5,
    "tile_ratio": 0.5,
    "share": 0.25,
    "hub": 0.25,
    "distinct": 0.25,
    "embed_ratio": 0.5,
    "lbp_ratio": 0.0,
    "shape_ratio": 2.0,
}
COMBINED_FEATURES = tuple(DEFAULT_WEIGHTS)
#: Continuous copy-strength evidence that may also decide alone (max rule in the combination);
#: count-based evidence (share, hub, distinct) has too coarse a null to be used alone.
MAX_FEATURES = ("pixel_nn_ratio", "pixel_knn_ratio", "mse_ratio", "ssim_ratio", "tile_ratio", "embed_ratio")

_EPS = 1e-6
_MIN_NULL = 20          # fewer reference images than this: calibrate on the candidates instead
_Z_CAP = 50.0           # calibrated evidence is clipped to [-_Z_CAP, _Z_CAP]


# ----------------------------------------------------------------------------------------- data types
@dataclass
class DevSet:
    """A labelled development generator.

    Attributes
    ----------
    name : str
    generated : uint8 [M, H, W]  images produced by the generator
    used : uint8 [U, H, W]       real images in its training set
    unused : uint8 [V, H, W]     real images never used by any generator
    """

    name: str
    generated: np.ndarray
    used: np.ndarray
    unused: np.ndarray


@dataclass
class MembershipResult:
    """Result of :func:`audit_membership`.

    Attributes
    ----------
    score : float64 [R]          combined, null-calibrated score (higher = more likely used)
    used : int8 [R]              1 = flagged as used
    threshold : float            flag when ``score > threshold``
    evidence : dict[str, float64 [R]]  every evidence column (see module docstring)
    nearest : int64 [R, k]       indices into ``generated`` of the best matches, best first
    info : dict                  JSON-able details (weights, null size, estimates, timings)
    summary : str                human-readable conclusion
    """

    score: np.ndarray
    used: np.ndarray
    threshold: float
    evidence: dict
    nearest: np.ndarray
    info: dict = field(default_factory=dict)
    summary: str = ""


# ----------------------------------------------------------------------------------------- helpers
def _check_stack(a, name: str, min_n: int = 1) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != np.uint8:
        raise ImprintError(f"{name} must be uint8 [N,H,W], got dtype {a.dtype}")
    if a.ndim != 3:
        raise ImprintError(f"{name} must have shape [N,H,W], got {a.shape}")
    if a.shape[0] < min_n:
        raise ImprintError(f"{name} needs at least {min_n} image(s), got {a.shape[0]}")
    if a.shape[1] < 16 or a.shape[2] < 16:
        raise ImprintError(f"{name}: images must be at least 16x16, got {a.shape[1]}x{a.shape[2]}")
    return np.ascontiguousarray(a)


def _hashes(a: np.ndarray) -> list[str]:
    return [hashlib.sha1(x.tobytes()).hexdigest() for x in a]


def zscore_images(images: np.ndarray) -> np.ndarray:
    """Per-image intensity normalisation.

    Parameters
    ----------
    images : uint8 or float [N, H, W]

    Returns
    -------
    float32 [N, H, W]
        Each image minus its mean, divided by its standard deviation (constant images stay 0).
    """
    x = np.asarray(images, dtype=np.float32)
    flat = x.reshape(len(x), -1)
    mu = flat.mean(1, dtype=np.float64).astype(np.float32)
    sd = flat.std(1, dtype=np.float64).astype(np.float32)
    sd = np.where(sd > 1e-6, sd, np.float32(1.0))
    return ((x - mu[:, None, None]) / sd[:, None, None]).astype(np.float32)


def _knn(base: np.ndarray, queries: np.ndarray, k: int, *, exclude_self: bool = False,
         metric: str = "l2"):
    """k-NN through :func:`engine.search.knn` (``index="auto"``: exact below its size threshold, a
    recall-calibrated IVF index above it, so membership scales to large real/generated sets)."""
    from imprint.engine.search import knn

    k = int(min(k, len(base) - (1 if exclude_self else 0)))
    if k < 1:
        return (np.full((len(queries), 0), np.inf, np.float32), np.zeros((len(queries), 0), np.int64))
    d, i = knn(base, queries, k, metric=metric, index="auto", exclude_self=exclude_self, use_gpu="auto")
    return np.asarray(d, np.float32), np.asarray(i, np.int64)


def _pair_mse(A, B, pairs):
    import imprint.kernels as kernels

    return np.asarray(kernels.mse_pairs(A, B, pairs), np.float64)


def _pair_ssim(A, B, pairs, data_range):
    import imprint.kernels as kernels

    return np.asarray(kernels.ssim_pairs(A, B, pairs, data_range=data_range), np.float64)


def _neg_log_ratio(num, den):
    return -np.log((np.asarray(num, np.float64) + _EPS) / (np.asarray(den, np.float64) + _EPS))


def _tiles(z: np.ndarray, t: int) -> np.ndarray:
    """[N,H,W] -> [N, t*t, (H//t)*(W//t)] (cropping the remainder)."""
    n, h, w = z.shape
    th, tw = h // t, w // t
    z = z[:, : th * t, : tw * t].reshape(n, t, th, t, tw).transpose(0, 1, 3, 2, 4)
    return z.reshape(n, t * t, th * tw)


def _otsu_thresholds(images: np.ndarray) -> np.ndarray:
    """Per-image Otsu threshold of uint8 images (== ``skimage.filters.threshold_otsu`` on the
    256-bin histogram); float64 [N]."""
    n = len(images)
    flat = images.reshape(n, -1)
    hist = np.zeros((n, 256), np.float64)
    for i in range(n):
        hist[i] = np.bincount(flat[i], minlength=256)
    c = np.arange(256, dtype=np.float64)
    w1 = np.cumsum(hist, 1)                       # weight of the class <= t
    w2 = np.cumsum(hist[:, ::-1], 1)[:, ::-1]     # weight of the class >= t
    m1 = np.cumsum(hist * c, 1) / np.maximum(w1, 1e-12)
    m2 = np.cumsum((hist * c)[:, ::-1], 1)[:, ::-1] / np.maximum(w2, 1e-12)
    var = w1[:, :-1] * w2[:, 1:] * (m1[:, :-1] - m2[:, 1:]) ** 2
    t = np.argmax(var, 1).astype(np.float64)
    const = flat.min(1) == flat.max(1)
    t[const] = flat[const, 0].astype(np.float64)
    return t


def anatomy_masks(images: np.ndarray, levels: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
                  size: int = 64) -> np.ndarray:
    """Multi-level "air inside the body" masks: the patient-specific lung / airway shape.

    For every image: ``t`` = its Otsu threshold; body = the largest connected component of
    ``image > t`` with holes filled; for every level ``l``: mask = body and ``image <= l * t``
    (dark regions inside the body: lungs, airways, at several darkness levels so that no single
    threshold decides).  Each mask is area-averaged down to about ``size`` pixels per side.
    Texture inside the lungs does not enter, only the shape of the dark regions and where they are,
    which is what a generator that memorised a patient reproduces even when it blurs the texture.

    Parameters
    ----------
    images : uint8 [N, H, W]
    levels : sequence of float
        Fractions of the Otsu threshold.
    size : int
        Target side length; the down-sampling factor is ``max(1, min(H, W) // size)``.

    Returns
    -------
    float32 [N, len(levels) * (H // f) * (W // f)]
    """
    from scipy import ndimage as ndi

    X = np.asarray(images)
    n, h, w = X.shape
    f = max(1, min(h, w) // max(1, int(size)))
    hh, ww = h // f, w // f
    T = _otsu_thresholds(X)
    out = np.zeros((n, len(levels), hh, ww), np.float32)
    if n == 0:
        return out.reshape(0, -1)
    # all images at once: a 3-D stack with a purely in-plane (4-connected) structure, padded with an
    # empty slice at both ends so that only each image's own border counts as "outside"
    st = np.zeros((3, 3, 3), bool)
    st[1] = ndi.generate_binary_structure(2, 1)
    for c0 in range(0, n, 512):
        x = X[c0:c0 + 512]
        nc = len(x)
        fg = np.zeros((nc + 2, h, w), bool)
        fg[1:-1] = x > T[c0:c0 + nc, None, None]
        lab, nl = ndi.label(fg, structure=st)
        if nl == 0:
            continue
        sizes = np.bincount(lab.ravel(), minlength=nl + 1)
        sizes[0] = 0
        # slice of every label, then the largest label per slice (first one on ties)
        first = np.zeros(nl + 1, np.int64)
        zz = np.nonzero(lab)[0]
        first[lab[lab > 0]] = zz
        labels = np.arange(1, nl + 1, dtype=np.int64)
        key = sizes[1:].astype(np.int64) * (nl + 1) + (nl - labels)   # larger size, then lower label
        bestkey = np.full(nc + 2, -1, np.int64)
        np.maximum.at(bestkey, first[1:], key)
        has = bestkey >= 0
        keep = np.zeros(nl + 1, bool)
        keep[nl - bestkey[has] % (nl + 1)] = True
        body = keep[lab]
        # fill holes: background components (4-connected, in-plane) that touch no image border
        bl, nb = ndi.label(~body, structure=st)
        border = np.zeros(nb + 1, bool)
        for edge in (bl[:, 0, :], bl[:, -1, :], bl[:, :, 0], bl[:, :, -1]):
            border[np.unique(edge)] = True
        border[0] = True                                   # label 0 = the body itself
        body = (body | ~border[bl])[1:-1]
        for j, lv in enumerate(levels):
            m = body & (x <= lv * T[c0:c0 + nc, None, None])
            acc = np.zeros((nc, hh, ww), np.uint16)
            for dy in range(f):                            # area average by strided sums
                for dx in range(f):
                    acc += m[:, dy: hh * f: f, dx: ww * f: f]
            out[c0:c0 + nc, j] = acc * np.float32(1.0 / (f * f))
    return out.reshape(n, -1)


def _cached_masks(images: np.ndarray, cache: dict | None) -> np.ndarray:
    """:func:`anatomy_masks` of every image, memoised per image content in ``cache``."""
    if cache is None:
        return anatomy_masks(images)
    store = cache.setdefault("anatomy_masks", {})
    keys = _hashes(images)
    todo = [i for i, k in enumerate(keys) if k not in store]
    if todo:
        new = anatomy_masks(images[todo])
        for i, row in zip(todo, new):
            store[keys[i]] = row
    return np.stack([store[k] for k in keys]) if keys else np.zeros((0, 0), np.float32)


# ----------------------------------------------------------------------------------------- evidence
def _evidence(generated: np.ndarray, pool: np.ndarray, *, _cache_dir=None, **kw):
    """:func:`compute_evidence`, checkpointed in ``_cache_dir`` (when given) under a hash of its inputs."""
    if _cache_dir is None:
        return compute_evidence(generated, pool, **kw)
    import hashlib
    import io
    import json
    from pathlib import Path

    from .store import atomic_write_bytes

    key = {k_: v for k_, v in kw.items() if k_ not in ("progress", "_cache")}
    h = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode())
    for a in (generated, pool):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    path = Path(_cache_dir) / f"evidence-{h.hexdigest()[:40]}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                ev = {n[3:]: np.array(z[n]) for n in z.files if n.startswith("ev_")}
                return ev, np.array(z["nearest"]), json.loads(str(z["info"]))
        except (OSError, ValueError, KeyError):
            pass  # unreadable checkpoint: recompute
    ev, nearest, info = compute_evidence(generated, pool, **kw)
    Path(_cache_dir).mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, nearest=np.asarray(nearest), info=np.array(json.dumps(info, default=float)),
             **{f"ev_{n}": np.asarray(v) for n, v in ev.items()})
    atomic_write_bytes(path, buf.getvalue())
    return ev, nearest, info


def compute_evidence(generated: np.ndarray, pool: np.ndarray, *, k_gen: int = 10, k_real: int = 10,
                     tiles: int = 4, backbone: str | None = "effnet-lite0", use_lbp: bool = True,
                     progress: Callable[[int], object] | None = None,
                     shape: bool = True, _cache: dict | None = None) -> tuple[dict, np.ndarray, dict]:
    """Per-image membership evidence of every pool image against one generated set.

    Parameters
    ----------
    generated : uint8 [M, H, W]
    pool : uint8 [P, H, W]
        All real images (candidates and known non-members); each is compared with ``generated``
        and with the *other* pool images.
    k_gen, k_real : int
        Shortlist sizes (nearest generated / nearest other real images) re-ranked by the pixel
        kernels.
    tiles : int
        Tiles per side for ``tile_ratio``.
    backbone : str or None
        Backbone for ``embed_ratio`` (skipped when None or unavailable).
    use_lbp : bool
        Compute ``lbp_ratio`` when ``kernels.lbp_histograms`` is available.
    shape : bool
        Compute ``shape_ratio`` (:func:`anatomy_masks`).
    progress : callable or None
        Called with an increment after each stage.

    Returns
    -------
    evidence : dict[str, float64 [P]]
        Oriented evidence (higher = more member-like) plus raw distances (see module docstring).
    nearest : int64 [P, k_gen]
        Indices into ``generated`` of the shortlisted generated images, best (z-pixel) first.
    info : dict
        ``skipped``: evidence that could not be computed and why; ``timings``.
    """
    G = _check_stack(generated, "generated")
    P = _check_stack(pool, "real pool", min_n=2)
    if G.shape[1:] != P.shape[1:]:
        raise ImprintError(f"generated images are {G.shape[1]}x{G.shape[2]} but real images are "
                           f"{P.shape[1]}x{P.shape[2]}; resize them to a common size")
    tick = progress or (lambda n=1: None)
    info: dict = {"skipped": {}, "timings": {}}
    t0 = time.perf_counter()
    nP, nG = len(P), len(G)
    k_gen = int(max(1, min(k_gen, nG)))
    k_real = int(max(1, min(k_real, nP - 1)))

    zG = zscore_images(G)
    zP = zscore_images(P)
    npix = float(zP.shape[1] * zP.shape[2])
    fG = zG.reshape(nG, -1)
    fP = zP.reshape(nP, -1)

    dG, iG = _knn(fG, fP, k_gen)                       # pool -> generated
    dR, iR = _knn(fP, fP, k_real, exclude_self=True)    # pool -> other pool
    dGP, iGP = _knn(fP, fG, min(2, nP))                 # generated -> pool
    dG = dG.astype(np.float64) / npix
    dR = dR.astype(np.float64) / npix
    dGP = dGP.astype(np.float64) / npix
    info["timings"]["knn_s"] = time.perf_counter() - t0
    tick(1)

    ev: dict[str, np.ndarray] = {}
    ev["pixel_nn_dist"] = dG[:, 0].copy()
    ev["real_nn_dist"] = dR[:, 0].copy()
    ev["pixel_nn_ratio"] = _neg_log_ratio(dG[:, 0], dR[:, 0])
    ev["pixel_knn_ratio"] = _neg_log_ratio(dG[:, 0], dR[:, : min(5, dR.shape[1])].mean(1))
    ev["share"] = np.log1p((dG < dR[:, :1]).sum(1)).astype(np.float64)

    nn_real = iGP[:, 0]
    hub = np.bincount(nn_real, minlength=nP).astype(np.float64)
    ev["hub"] = np.log1p(hub)
    distinct = np.zeros(nP)
    if dGP.shape[1] > 1:
        np.maximum.at(distinct, nn_real, np.log((dGP[:, 1] + _EPS) / (dGP[:, 0] + _EPS)))
    ev["distinct"] = distinct

    # shortlist re-ranking with the pixel kernels
    t1 = time.perf_counter()
    rows = np.repeat(np.arange(nP), k_gen)
    pg = np.stack([rows, iG.ravel()], 1).astype(np.int64)
    rows_r = np.repeat(np.arange(nP), k_real)
    pr = np.stack([rows_r, iR.ravel()], 1).astype(np.int64)
    mse_g = _pair_mse(P, G, pg).reshape(nP, k_gen).min(1)
    mse_r = _pair_mse(P, P, pr).reshape(nP, k_real).min(1)
    ev["mse_nn"] = mse_g
    ev["mse_ratio"] = _neg_log_ratio(mse_g, mse_r)
    data_range = 6.0  # z-scored images: ~ +-3 standard deviations
    ssim_g = _pair_ssim(zP, zG, pg, data_range).reshape(nP, k_gen).max(1)
    ssim_r = _pair_ssim(zP, zP, pr, data_range).reshape(nP, k_real).max(1)
    ev["ssim_nn"] = ssim_g
    ev["ssim_ratio"] = _neg_log_ratio(np.clip(1 - ssim_g, 0, None), np.clip(1 - ssim_r, 0, None))
    info["timings"]["rerank_s"] = time.perf_counter() - t1
    tick(1)

    # tile-wise (partial copies): every tile is z-scored on its own, so a copied region matches
    # exactly even when the rest of the image (and hence the global normalisation) differs
    t1 = time.perf_counter()
    tP = _tiles(P.astype(np.float32), tiles)            # [P, T, D]
    tGall = _tiles(G.astype(np.float32), tiles)
    content = tP.std(2) > 4.0                           # not flat background (8-bit grey levels)

    def _tz(t):
        mu = t.mean(2, keepdims=True)
        sd = t.std(2, keepdims=True)
        return (t - mu) / np.maximum(sd, 4.0)

    tP = _tz(tP)
    tGall = _tz(tGall)
    best_g = np.full((nP, tP.shape[1]), np.inf)
    best_r = np.full((nP, tP.shape[1]), np.inf)
    for j in range(k_gen):
        best_g = np.minimum(best_g, ((tP - tGall[iG[:, j]]) ** 2).mean(2))
    for j in range(k_real):
        best_r = np.minimum(best_r, ((tP - tP[iR[:, j]]) ** 2).mean(2))
    lr = np.log((best_g + 1e-2) / (best_r + 1e-2))
    lr = np.where(content, lr, np.inf)
    m = min(3, lr.shape[1])
    part = np.sort(lr, 1)[:, :m]
    part = np.where(np.isfinite(part), part, 0.0)
    ev["tile_ratio"] = -part.mean(1)
    info["timings"]["tiles_s"] = time.perf_counter() - t1
    tick(1)

    # anatomy shape: multi-level air-inside-body masks (lungs / airways), compared like the pixels
    if shape:
        t1 = time.perf_counter()
        mG = _cached_masks(G, _cache)
        mP = _cached_masks(P, _cache)
        a, _ = _knn(mG, mP, 1)
        b, _ = _knn(mP, mP, 1, exclude_self=True)
        a, b = a.astype(np.float64), b.astype(np.float64)
        dim = float(mP.shape[1])
        ev["shape_nn_dist"] = a[:, 0].astype(np.float64) / dim
        # floor: ~ one down-sampled mask pixel in one level differing completely
        floor = 1.0 / dim
        ev["shape_ratio"] = -np.log((np.clip(a[:, 0], 0, None) / dim + floor)
                                    / (np.clip(b[:, 0], 0, None) / dim + floor))
        info["timings"]["shape_s"] = time.perf_counter() - t1
    else:
        info["skipped"]["shape_ratio"] = "shape evidence not requested"

    # pretrained-backbone embedding
    if backbone:
        t1 = time.perf_counter()
        try:
            from imprint.engine.backbone import embed
            eG = np.asarray(embed(G, backbone), np.float32)
            eP = np.asarray(embed(P, backbone), np.float32)
        except Exception as exc:  # backbone missing / not built: report and go on
            info["skipped"]["embed_ratio"] = f"{type(exc).__name__}: {exc}"[:200]
        else:
            a, _ = _knn(eG, eP, 1, metric="cosine")
            b, _ = _knn(eP, eP, 1, metric="cosine", exclude_self=True)
            ev["embed_nn_dist"] = a[:, 0].astype(np.float64)
            ev["embed_ratio"] = _neg_log_ratio(np.clip(a[:, 0], 0, None), np.clip(b[:, 0], 0, None))
        info["timings"]["embed_s"] = time.perf_counter() - t1
    else:
        info["skipped"]["embed_ratio"] = "no backbone requested"
    tick(1)

    if use_lbp:
        import imprint.kernels as kernels

        hG = np.sqrt(np.asarray(kernels.lbp_histograms(G), np.float32))
        hP = np.sqrt(np.asarray(kernels.lbp_histograms(P), np.float32))
        a, _ = _knn(hG, hP, 1)
        b, _ = _knn(hP, hP, 1, exclude_self=True)
        ev["lbp_ratio"] = _neg_log_ratio(np.clip(a[:, 0], 0, None), np.clip(b[:, 0], 0, None))
    info["timings"]["evidence_s"] = time.perf_counter() - t0
    return ev, iG.astype(np.int64), info


# ----------------------------------------------------------------------------------------- calibration
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


def _dev_training_rows(dev: DevSet, reference: np.ndarray | None, others_unused: list[np.ndarray],
                       names: Sequence[str], kw: dict):
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
    pool = np.concatenate([cand, ref])
    ev, _, _ = _evidence(dev.generated, pool, **kw)
    nc = len(cand)
    null_mask = np.zeros(len(pool), bool)
    if len(ref) >= _MIN_NULL:
        null_mask[nc:] = True
    else:
        null_mask[:nc] = True
    Z = _feature_matrix(ev, null_mask, names)[:nc]
    y = np.r_[np.ones(len(used)), np.zeros(len(unused))]
    return Z, y


def audit_membership(generated, real, *, dev_sets: Sequence[DevSet] = (), reference=None,
                     decision: str = "fpr:0.01", random_state: int = 0,
                     progress: Callable[[int], object] | None = None, backbone: str | None = None,
                     k_gen: int = 10, k_real: int = 10, weights: dict | None = None,
                     cache_dir: str | None = None) -> MembershipResult:
    """Score real images for membership in a generator's training set and decide used / unused.

    Parameters
    ----------
    generated : uint8 [M, H, W]   the generator's images
    real : uint8 [R, H, W]        candidate real images
    dev_sets : sequence of DevSet  labelled dev generators; used to fit the evidence weights
    reference : uint8 [K, H, W] or None   known non-members (give the null distribution)
    decision : "fpr:ALPHA" (default ``fpr:0.01``) or "f1"
    random_state : int            (the method is deterministic; kept for the contract)
    progress : callable or None   called with increments
    backbone : str or None        backbone for ``embed_ratio`` (default None: off; effnet-lite0 costs
                                  ~50-90 ms per image on 2 CPU cores, too slow for the 2-min budget)
    k_gen, k_real : int           shortlist sizes
    weights : dict or None        override the prior weights (name -> weight >= 0)
    cache_dir : path or None      checkpoint folder: the evidence of each stage (every dev set, the target) is
                                  saved there (``.npz``, read back with ``allow_pickle=False``) keyed by a hash of
                                  its inputs, so an interrupted run resumes from the finished stages

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
        reference = reference[keep] if len(keep) else None
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
    kw = dict(k_gen=k_gen, k_real=k_real, backbone=backbone, progress=progress, _cache={}, _cache_dir=cache_dir)

    # ---- target evidence
    nR = len(R)
    pool = R if reference is None or len(reference) == 0 else np.concatenate([R, reference])
    nref = len(pool) - nR
    ev, nearest, ev_info = _evidence(G, pool, **kw)
    null_mask = np.zeros(len(pool), bool)
    if nref >= _MIN_NULL:
        null_mask[nR:] = True
        null_kind = "reference"
    else:
        null_mask[:nR] = True
        null_kind = "candidates (no or too small reference: robust fit on the real population)"
    names = [n for n in COMBINED_FEATURES if n in ev]
    Z = _feature_matrix(ev, null_mask, names)
    w0 = np.array([prior[n] for n in names], np.float64)
    mx = np.array([n in MAX_FEATURES for n in names])

    # ---- dev sets: learn weights
    w = w0.copy()
    dev_info = {}
    if dev_sets:
        Xs, ys, gs = [], [], []
        for gi, d in enumerate(dev_sets):
            others = [np.asarray(o.unused) for o in dev_sets if o is not d]
            rows = _dev_training_rows(d, reference, others, names, kw)
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
    raw = _combine(Z, w, use_max=mx)
    score_all = robust_calibrate(raw, raw[null_mask])
    score = score_all[:nR]
    null_scores = score_all[null_mask]

    # ---- decision
    info: dict = {
        "decision": f"{mode}:{alpha:g}" if mode == "fpr" else "f1",
        "null": null_kind,
        "n_null": int(null_mask.sum()),
        "n_generated": int(len(G)),
        "n_real": int(nR),
        "n_reference": int(nref),
        "weights": {n: float(v) for n, v in zip(names, w)},
        "prior_weights": {n: float(v) for n, v in zip(names, w0)},
        "dev_sets": dev_info,
        "skipped_evidence": ev_info["skipped"],
    }
    if mode == "fpr":
        th = null_threshold(null_scores, alpha)
        thr = th["threshold"]
        used = (score > thr).astype(np.int8)
        info["threshold_detail"] = th
    else:
        used, f1info = f1_decision(score, null_scores)
        thr = float(f1info.get("threshold", -np.inf))
        info["f1"] = f1info
    nflag = int(used.sum())

    # interpretable strength a copy needed: pixel ratio quantile of the null at the same alpha
    pr_null = ev["pixel_nn_ratio"][null_mask]
    need = float(np.exp(-np.quantile(pr_null, 1 - alpha))) if len(pr_null) else float("nan")
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
    else:
        f = info["f1"]
        if f.get("evidence"):
            summary = (f"Estimated share of used images {f['pi1']:.2f} (Storey {f['pi1_storey']:.2f}); "
                       f"flagged the top {nflag}/{nR} maximising expected F1 ({f['expected_f1']:.2f}).")
        else:
            summary = ("No significant evidence of membership; assuming an unknown share of used images, "
                       f"the expected-F1-optimal answer flags all {nR} images.")
    info["timings"] = dict(ev_info["timings"], total_s=time.perf_counter() - t0)
    evidence = {k_: np.asarray(v[:nR], np.float64) for k_, v in ev.items()}
    return MembershipResult(score=np.asarray(score, np.float64), used=used, threshold=float(thr),
                            evidence=evidence, nearest=nearest[:nR], info=info, summary=summary)
