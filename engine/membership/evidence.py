"""Membership evidence: per-image comparisons of the real pool with the generated images (see the package docstring)."""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from imprint.engine.errors import ImprintError

from .common import _EPS, _check_stack, _hashes  # noqa: F401

# ----------------------------------------------------------------------------------------- memory budget
# The generated set is processed in chunks sized from a memory budget, so the evidence's working memory does
# not grow with the number of generated images (issue 15). Every per-chunk computation is independent per image
# and the k-NN results are merged exactly (distance, then index), so the evidence does not depend on the chunk
# size (tests/test_streaming.py).
import contextlib
import contextvars
import os

_BUDGET: contextvars.ContextVar = contextvars.ContextVar("imprint_memory_budget", default=None)
DEFAULT_MEMORY_BUDGET = 2 * 2**30
_BYTES_PER_PIXEL_IN_FLIGHT = 32  # float32 z-scores + their temporaries + the FAISS copy + masks, per pixel


@contextlib.contextmanager
def memory_budget(nbytes: int | None):
    """Within this block, size the evidence's generated-image chunks for ``nbytes`` of memory (None: default)."""
    tok = _BUDGET.set(None if nbytes is None else int(nbytes))
    try:
        yield
    finally:
        _BUDGET.reset(tok)


def _memory_budget() -> int:
    b = _BUDGET.get()
    if b is not None:
        return int(b)
    env = os.environ.get("IMPRINT_MAX_MEMORY_GB")
    if env:
        try:
            return int(float(env) * 2**30)
        except ValueError:
            raise ImprintError(f"IMPRINT_MAX_MEMORY_GB must be a number (got {env!r})") from None
    return DEFAULT_MEMORY_BUDGET


def generated_chunk(n: int, hw: int) -> int:
    """Generated images per chunk: a quarter of the memory budget over the working bytes of one image."""
    per = _BYTES_PER_PIXEL_IN_FLIGHT * int(hw)
    return int(max(64, min(max(1, n), (_memory_budget() // 4) // per)))


def _merge_topk(best_d, best_i, d, i, k):
    """Merge two k-NN lists (rows aligned) into the k best by (distance, index); -1 padding last."""
    if best_d is None:
        D, I = d, i
    else:
        D, I = np.concatenate([best_d, d], 1), np.concatenate([best_i, i], 1)
    key = np.where(I < 0, np.iinfo(np.int64).max, I)
    order = np.lexsort((key, D), axis=-1)[:, :k]
    return np.take_along_axis(D, order, 1), np.take_along_axis(I, order, 1)


def _knn_chunked(G, query_feats, k, feat, chunk, metric="l2", executor=None):
    """k-NN of ``query_feats`` among ``feat(G[c0:c1])`` over chunks of G, merged exactly."""
    bd = bi = None
    for c0 in range(0, len(G), chunk):
        f = feat(np.asarray(G[c0:c0 + chunk]))
        d, i = _knn(f, query_feats, min(k, len(f)), metric=metric, executor=executor)
        bd, bi = _merge_topk(bd, bi, d, np.where(i >= 0, i + c0, -1), k)
    return bd, bi

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
         metric: str = "l2", executor=None):
    """k-NN through :func:`engine.search.knn` (``index="auto"``: exact below its size threshold, a
    recall-calibrated IVF index above it, so membership scales to large real/generated sets)."""
    from imprint.engine.executors import LOCAL

    executor = executor or LOCAL
    k = int(min(k, len(base) - (1 if exclude_self else 0)))
    if k < 1:
        return (np.full((len(queries), 0), np.inf, np.float32), np.zeros((len(queries), 0), np.int64))
    d, i = executor.knn(base, queries, k, metric=metric, index="auto", exclude_self=exclude_self, use_gpu="auto")
    return np.asarray(d, np.float32), np.asarray(i, np.int64)


def _pair_mse(A, B, pairs, executor=None):
    from imprint.engine.executors import LOCAL

    return np.asarray((executor or LOCAL).mse_pairs(A, B, pairs), np.float64)


def _pair_ssim(A, B, pairs, data_range, executor=None):
    from imprint.engine.executors import LOCAL

    return np.asarray((executor or LOCAL).ssim_pairs(A, B, pairs, data_range=data_range), np.float64)


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

    from ..store import atomic_write_bytes

    key = {k_: v for k_, v in kw.items() if k_ not in ("progress", "_cache", "executor")}
    key.setdefault("anatomy", True)   # checkpoints written before the anatomy evidence existed are not reused
    h = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode())
    for a in (generated, pool):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))  # no copy of a memory-mapped generated set
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
                     shape: bool = True, register: bool = True, k_reg: int = 6,
                     density: str | None = None, store_dir: str | None = None,
                     _cache: dict | None = None, executor=None,
                     anatomy: bool = True) -> tuple[dict, np.ndarray, dict]:
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
    register : bool
        Compute the transform-invariant evidence (``reg_*``, :func:`.register.registered_evidence`:
        flip / shift / rotation / scale / intensity registration of shortlisted pairs, with the same
        registration applied to the real-vs-real control).
    k_reg : int
        Descriptor shortlist size per image for the registration.
    density : str or None
        Feature space of the DOMIAS-style kNN density ratio ``density_<space>`` (:mod:`.density`:
        ``"pixels"`` or a backbone name); reported, not combined (no space helped on the dev corpus,
        see benchmarks/RESULTS.md).
    store_dir : path or None
        Embedding stores for ``density`` (reused across runs).
    progress : callable or None
        Called with an increment after each stage.
    executor : Executor or None
        Where the k-NN searches, pair kernels and embeddings run (:mod:`engine.executors`; default local).
    anatomy : bool
        Compute ``anat_ratio`` (:func:`.anatomy.anatomy_evidence`: NCC of Gaussian low-passed images,
        in place or mirrored: copied anatomy under re-synthesised texture).

    Returns
    -------
    evidence : dict[str, float64 [P]]
        Oriented evidence (higher = more member-like) plus raw distances (see module docstring).
    nearest : int64 [P, k_gen]
        Indices into ``generated`` of the shortlisted generated images, best (z-pixel) first (the
        registered best match is ``evidence["reg_match"]``).
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

    zP = zscore_images(P)
    npix = float(zP.shape[1] * zP.shape[2])
    fP = zP.reshape(nP, -1)
    chunk = generated_chunk(nG, P.shape[1] * P.shape[2])
    info["generated_chunk"] = chunk

    # pool -> generated (merged over chunks of G) and generated -> pool (independent per generated image)
    dG = iG = None
    dGP = np.empty((nG, min(2, nP)), np.float32)
    iGP = np.empty((nG, min(2, nP)), np.int64)
    for c0 in range(0, nG, chunk):
        fGc = zscore_images(np.asarray(G[c0:c0 + chunk])).reshape(-1, fP.shape[1])
        d, i = _knn(fGc, fP, min(k_gen, len(fGc)), executor=executor)
        dG, iG = _merge_topk(dG, iG, d, np.where(i >= 0, i + c0, -1), k_gen)
        dGP[c0:c0 + len(fGc)], iGP[c0:c0 + len(fGc)] = _knn(fP, fGc, min(2, nP), executor=executor)
        del fGc
    dR, iR = _knn(fP, fP, k_real, exclude_self=True, executor=executor)    # pool -> other pool
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
    data_range = 6.0  # z-scored images: ~ +-3 standard deviations
    # generated partners are gathered per block of pool images (only the shortlisted ones, uint8 then z-scored)
    mse_g = np.empty(nP)
    ssim_g = np.empty(nP)
    pblock = max(1, chunk // k_gen)
    for b0 in range(0, nP, pblock):
        b1 = min(nP, b0 + pblock)
        ug, loc = np.unique(iG[b0:b1], return_inverse=True)
        Gb = np.asarray(G[ug])
        pb = np.stack([np.repeat(np.arange(b1 - b0), k_gen), loc.ravel()], 1).astype(np.int64)
        mse_g[b0:b1] = _pair_mse(P[b0:b1], Gb, pb, executor).reshape(-1, k_gen).min(1)
        ssim_g[b0:b1] = _pair_ssim(zP[b0:b1], zscore_images(Gb), pb, data_range, executor).reshape(-1, k_gen).max(1)
    mse_r = _pair_mse(P, P, pr, executor).reshape(nP, k_real).min(1)
    ev["mse_nn"] = mse_g
    ev["mse_ratio"] = _neg_log_ratio(mse_g, mse_r)
    ssim_r = _pair_ssim(zP, zP, pr, data_range, executor).reshape(nP, k_real).max(1)
    ev["ssim_nn"] = ssim_g
    ev["ssim_ratio"] = _neg_log_ratio(np.clip(1 - ssim_g, 0, None), np.clip(1 - ssim_r, 0, None))
    info["timings"]["rerank_s"] = time.perf_counter() - t1
    tick(1)

    # tile-wise (partial copies): every tile is z-scored on its own, so a copied region matches
    # exactly even when the rest of the image (and hence the global normalisation) differs
    t1 = time.perf_counter()
    tP = _tiles(P.astype(np.float32), tiles)            # [P, T, D]
    content = tP.std(2) > 4.0                           # not flat background (8-bit grey levels)

    def _tz(t):
        mu = t.mean(2, keepdims=True)
        sd = t.std(2, keepdims=True)
        return (t - mu) / np.maximum(sd, 4.0)

    tP = _tz(tP)
    best_g = np.full((nP, tP.shape[1]), np.inf)
    best_r = np.full((nP, tP.shape[1]), np.inf)
    for b0 in range(0, nP, pblock):                     # tiles of the shortlisted generated images only
        b1 = min(nP, b0 + pblock)
        ug, loc = np.unique(iG[b0:b1], return_inverse=True)
        tGb = _tz(_tiles(np.asarray(G[ug]).astype(np.float32), tiles))
        loc = loc.reshape(b1 - b0, k_gen)
        for j in range(k_gen):
            best_g[b0:b1] = np.minimum(best_g[b0:b1], ((tP[b0:b1] - tGb[loc[:, j]]) ** 2).mean(2))
        del tGb
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
        mP = _cached_masks(P, _cache)
        # generated masks per chunk, not cached (the cache would hold every generated image's masks)
        a, _ = _knn_chunked(G, mP, 1, anatomy_masks, chunk, executor=executor)
        b, _ = _knn(mP, mP, 1, exclude_self=True, executor=executor)
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
            from imprint.engine.executors import LOCAL
            ex_ = executor or LOCAL
            eP = np.asarray(ex_.embed(P, backbone), np.float32)
            a, _ = _knn_chunked(G, eP, 1, lambda g: np.asarray(ex_.embed(g, backbone), np.float32), chunk,
                                metric="cosine", executor=executor)
        except Exception as exc:  # backbone missing / not built: report and go on
            info["skipped"]["embed_ratio"] = f"{type(exc).__name__}: {exc}"[:200]
        else:
            b, _ = _knn(eP, eP, 1, metric="cosine", exclude_self=True, executor=executor)
            ev["embed_nn_dist"] = a[:, 0].astype(np.float64)
            ev["embed_ratio"] = _neg_log_ratio(np.clip(a[:, 0], 0, None), np.clip(b[:, 0], 0, None))
        info["timings"]["embed_s"] = time.perf_counter() - t1
    else:
        info["skipped"]["embed_ratio"] = "no backbone requested"
    tick(1)

    if use_lbp:
        import imprint.kernels as kernels

        hP = np.sqrt(np.asarray(kernels.lbp_histograms(P), np.float32))
        a, _ = _knn_chunked(G, hP, 1, lambda g: np.sqrt(np.asarray(kernels.lbp_histograms(g), np.float32)),
                            chunk, executor=executor)
        b, _ = _knn(hP, hP, 1, exclude_self=True, executor=executor)
        ev["lbp_ratio"] = _neg_log_ratio(np.clip(a[:, 0], 0, None), np.clip(b[:, 0], 0, None))
    nearest = iG.astype(np.int64)
    if register:
        t1 = time.perf_counter()
        from .register import registered_evidence

        rev, best = registered_evidence(G, P, iG, iR, k_reg=k_reg, cache=_cache)
        ev.update(rev)
        ev["reg_match"] = best.astype(np.float64)       # index into generated of the registered best match
        info["timings"]["register_s"] = time.perf_counter() - t1
    else:
        info["skipped"]["reg_ratio"] = "registration not requested"
    if anatomy:
        t1 = time.perf_counter()
        from .anatomy import anatomy_evidence

        ev.update(anatomy_evidence(G, P, chunk=chunk, executor=executor))
        info["timings"]["anatomy_s"] = time.perf_counter() - t1
    else:
        info["skipped"]["anat_ratio"] = "anatomy evidence not requested"
    if density:
        t1 = time.perf_counter()
        try:
            from .density import density_ratio, embed_cached

            fG = embed_cached(G, density, store_dir)
            fP = embed_cached(P, density, store_dir)
        except Exception as exc:  # backbone missing / not built: report and go on
            info["skipped"][f"density_{density}"] = f"{type(exc).__name__}: {exc}"[:200]
        else:
            ev[f"density_{density}"] = density_ratio(fG, fP, 5, metric="l2" if density == "pixels" else "cosine")
        info["timings"]["density_s"] = time.perf_counter() - t1
    info["timings"]["evidence_s"] = time.perf_counter() - t0
    return ev, nearest, info


# ----------------------------------------------------------------------------------------- calibration
