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
# not grow with the number of generated images (issue 15); the real pool is walked in blocks sized the same way
# (its z-scores, tiles and masks are made per block or kept compact, the R x R searches go block by block). Every per-chunk computation is independent per image
# and the k-NN results are merged exactly (distance, then index), so the evidence does not depend on the chunk
# size (tests/test_streaming.py).
import contextlib
import contextvars

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
    from imprint.engine.ingest import env_memory_bytes

    env = env_memory_bytes()
    return DEFAULT_MEMORY_BUDGET if env is None else env


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


def _knn_chunked(G, query_feats, k, feat, chunk, metric="l2", executor=None, qblock=None):
    """k-NN of ``query_feats`` among ``feat(G[c0:c1])`` over chunks of G, merged exactly.

    ``query_feats`` is an array, or a callable ``rows -> features`` with ``qblock`` rows per call (the queries
    are then never held whole: a large real set's features are made per block)."""
    if callable(query_feats):
        nq = int(qblock[1])
        qb = int(max(1, qblock[0]))
        qf, blocks = query_feats, [(b0, min(nq, b0 + qb)) for b0 in range(0, nq, qb)]
    else:
        nq = len(query_feats)
        qf, blocks = (lambda r: query_feats[r[0]:r[-1] + 1]), [(0, nq)]
    bd = np.full((nq, k), np.inf, np.float32)
    bi = np.full((nq, k), -1, np.int64)
    one = len(blocks) == 1
    fq0 = qf(np.arange(0, nq)) if one and nq else None
    for c0 in range(0, len(G), chunk):
        f = feat(np.asarray(G[c0:c0 + chunk]))
        for b0, b1 in blocks:
            fq = fq0 if one else qf(np.arange(b0, b1))
            d, i = _knn(f, fq, min(k, len(f)), metric=metric, executor=executor)
            bd[b0:b1], bi[b0:b1] = _merge_topk(bd[b0:b1], bi[b0:b1], d, np.where(i >= 0, i + c0, -1), k)
        _release(G)
    return bd, bi


def _release(*arrays) -> None:
    """Drop the resident pages of memory-mapped (pixel store) arrays after a pass over them."""
    from imprint.engine.pixelstore import release_pages

    for a in arrays:
        release_pages(a)


def _zrows(X):
    """``rows -> z-scored pixels of X[rows]`` (float32 [len(rows), H*W]): features made per block, not held."""
    def f(rows):
        rows = np.asarray(rows, np.int64)
        if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and np.all(np.diff(rows) == 1):
            x = np.asarray(X[rows[0]:rows[-1] + 1])
        else:
            x = np.asarray(X[rows])
        return zscore_images(x).reshape(len(rows), -1)
    return f


def _knn_self(feats, n: int, k: int, block: int, *, metric: str = "l2", executor=None):
    """k-NN of every row among the *other* rows of one set whose features come per block (``feats(rows)``):
    the search of :func:`_knn` with ``exclude_self=True``, over blocks of ``block`` rows, merged exactly (the
    set's features are never held whole)."""
    k = int(min(k, n - 1))
    if n <= block:
        f = feats(np.arange(n))
        return _knn(f, f, k, exclude_self=True, metric=metric, executor=executor)
    bd = np.full((n, k), np.inf, np.float32)
    bi = np.full((n, k), -1, np.int64)
    for q0 in range(0, n, block):
        q1 = min(n, q0 + block)
        fq = feats(np.arange(q0, q1))
        for b0 in range(0, n, block):
            b1 = min(n, b0 + block)
            fb = fq if b0 == q0 else feats(np.arange(b0, b1))
            d, i = _knn(fb, fq, min(k, b1 - b0 - (b0 == q0)), exclude_self=b0 == q0, metric=metric,
                        executor=executor)
            bd[q0:q1], bi[q0:q1] = _merge_topk(bd[q0:q1], bi[q0:q1], d, np.where(i >= 0, i + b0, -1), k)
    return bd, bi


# Block side of the lower-bound projection that prunes the exact pixel search (engine.search.pairwise.
# knn_l2_both_bound; 0 = the plain both-way product).  2: 4x fewer dimensions in the bound's product; on 128x128
# phantoms ~4% of the pairs then need an exact distance (4: ~18%), benchmarks/RESULTS.md "Issue 15, scale6".
PIXEL_BOUND_FACTOR = 2
# Side of the residual areas of that bound (issue 15, scale9): the bound adds, for every area, the norm of the
# image's part orthogonal to the blocks, so it is tighter for a few more dimensions (0: one area, the scale6
# bound).  Where both sides are divisible by 4, 4 x 4 blocks with one residual per block (2 x 1,024 dimensions on
# 128 x 128) replace 2 x 2 blocks with one residual (4,097): half the product and fewer exact distances on the
# scaling phantoms (benchmarks/RESULTS.md "Issue 15, eighth pass").  The lists are exact whatever the choice.
PIXEL_BOUND_REGION = 4


def _bound_params(shape) -> tuple[int, int] | None:
    """``(factor, region)`` of the pruned exact search for images of ``shape`` (H, W), or None where it does not
    apply: ``(PIXEL_BOUND_REGION, PIXEL_BOUND_REGION)`` when both sides are divisible by it, else
    ``(PIXEL_BOUND_FACTOR, 0)`` when they are divisible by that."""
    h, w = int(shape[0]), int(shape[1])
    if not PIXEL_BOUND_FACTOR:
        return None
    r = int(PIXEL_BOUND_REGION)
    if r and r % PIXEL_BOUND_FACTOR == 0 and h % r == 0 and w % r == 0:
        return r, r
    if h % PIXEL_BOUND_FACTOR == 0 and w % PIXEL_BOUND_FACTOR == 0:
        return PIXEL_BOUND_FACTOR, 0
    return None


def _both_way_local(executor) -> bool:
    """Whether the pixel search may run as one both-way product (:func:`engine.search.pairwise.knn_l2_both`):
    on the local executor and the CPU (elsewhere the executor's / GPU's own k-NN is used)."""
    from imprint.engine.executors import LocalExecutor

    if executor is not None and type(executor) is not LocalExecutor:
        return False
    try:
        from imprint.engine.search import gpu as _g

        return not _g._resolve_gpu("auto")
    except Exception:
        return True

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
    a = np.asarray(images)
    if a.dtype == np.uint8 and a.ndim == 3 and a.size and a.shape[1] * a.shape[2] < (1 << 24):
        return _zscore_u8(a)
    x = np.asarray(images, dtype=np.float32)
    flat = x.reshape(len(x), -1)
    mu = flat.mean(1, dtype=np.float64).astype(np.float32)
    sd = flat.std(1, dtype=np.float64).astype(np.float32)
    sd = np.where(sd > 1e-6, sd, np.float32(1.0))
    return ((x - mu[:, None, None]) / sd[:, None, None]).astype(np.float32)


def _zscore_u8(a: np.ndarray) -> np.ndarray:
    """:func:`zscore_images` of uint8 images in one compiled pass per image (issue 15: the streamed real set's
    z-scores are remade per block).  The integer sums are exact, so the mean is numpy's; the variance is the
    exact one, ``(n*sum(x^2) - sum(x)^2) / n^2``, rounded once (numpy's two-pass float64 value differs from it
    by ~1e-16 relative, which the float32 cast of the standard deviation hides except on a rounding boundary);
    the float32 subtraction and division are numpy's (tests/test_streaming.py checks equality on images)."""
    from ._zscore import zscore_u8_into

    n, h, w = a.shape
    out = np.empty((n, h, w), np.float32)
    zscore_u8_into(np.ascontiguousarray(a).reshape(n, h * w), out.reshape(n, h * w))
    return out


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
    counts, scale = _anatomy_counts(images, levels, size)
    return counts * scale


def _mask_count_dtype(f: int):
    return np.uint8 if f * f <= 255 else np.uint16


def _label_slices(lab: np.ndarray, nl: int) -> np.ndarray:
    """Slice (axis 0) of every label of an in-plane labelling ``lab`` [z, h, w] (labels 1..nl; entry 0 unused):
    int64 [nl + 1].  ``ndimage.label`` numbers components in raster order, so the labels of a slice follow those
    of the slices before it: the slice of label ``l`` is the first whose running maximum label reaches ``l``
    (issue 15, scale9: replaces a ``nonzero`` over the whole stack).  The order is checked (each slice's smallest
    label above the previous slices' largest) and the per-pixel path is used otherwise."""
    flat = lab.reshape(len(lab), -1)
    mx = flat.max(1)
    big = np.iinfo(lab.dtype).max
    mn = np.where(flat > 0, flat, big).min(1)
    cm = np.maximum.accumulate(mx)
    has = mx > 0
    prev = np.concatenate([[0], cm[:-1]])
    if np.all(mn[has] > prev[has]):
        return np.searchsorted(cm, np.arange(nl + 1), side="left").astype(np.int64)
    first = np.zeros(nl + 1, np.int64)
    first[lab[lab > 0]] = np.nonzero(lab)[0]
    return first


def _anatomy_counts(images: np.ndarray, levels: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
                    size: int = 64) -> tuple[np.ndarray, np.float32]:
    """:func:`anatomy_masks` as integer counts of mask pixels per down-sampled pixel (uint8, or uint16 for a
    factor above 15) and the float32 scale ``1 / f**2``: ``counts * scale`` is :func:`anatomy_masks` bit for
    bit, at a quarter of its memory (the real set's masks are kept in this form)."""
    from scipy import ndimage as ndi

    X = np.asarray(images)
    n, h, w = X.shape
    f = max(1, min(h, w) // max(1, int(size)))
    hh, ww = h // f, w // f
    scale = np.float32(1.0 / (f * f))
    T = _otsu_thresholds(X)
    out = np.zeros((n, len(levels), hh, ww), _mask_count_dtype(f))
    if n == 0:
        return out.reshape(0, -1), scale
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
        first = _label_slices(lab, nl)
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
            out[c0:c0 + nc, j] = acc
    return out.reshape(n, -1), scale


def _cached_masks(images: np.ndarray, cache: dict | None) -> np.ndarray:
    """:func:`anatomy_masks` of every image, memoised per image content in ``cache``."""
    counts, scale = _cached_mask_counts(images, cache)
    return counts * scale if len(counts) else np.zeros((0, 0), np.float32)


def _cached_mask_counts(images: np.ndarray, cache: dict | None) -> tuple[np.ndarray, np.float32]:
    """:func:`_anatomy_counts` of every image (memoised per image content in ``cache``, as compact counts),
    computed in blocks so that a large (memory-mapped) set is never converted whole."""
    n = len(images)
    if cache is None:
        parts = [_anatomy_counts(np.asarray(images[s:s + 512])) for s in range(0, n, 512)]
        if not parts:
            return _anatomy_counts(np.asarray(images))
        return np.concatenate([p[0] for p in parts]), parts[0][1]
    store = cache.setdefault("anatomy_mask_counts", {})
    keys = _hashes(images)
    todo = [i for i, k in enumerate(keys) if k not in store]
    for s in range(0, len(todo), 512):
        sel = todo[s:s + 512]
        new, scale = _anatomy_counts(np.asarray(images[sel]))
        for i, row in zip(sel, new):
            store[keys[i]] = (row, scale)
    if not keys:
        return np.zeros((0, 0), np.uint8), np.float32(1.0)
    return np.stack([store[k][0] for k in keys]), store[keys[0]][1]


def _mask_shape(image_shape, dim: int):
    """The anatomy masks' rows as a 2-D image (levels stacked vertically, ``(levels * H/f, W/f)``) when the
    block-projection bound applies to it (both sides divisible by ``PIXEL_BOUND_FACTOR``), else None."""
    f = max(1, min(image_shape) // 64)                  # anatomy_masks' down-sampling factor (size=64)
    ww = image_shape[1] // f
    if not PIXEL_BOUND_FACTOR or ww == 0 or dim % ww:
        return None
    shp = (dim // ww, ww)
    return shp if shp[0] % PIXEL_BOUND_FACTOR == 0 and shp[1] % PIXEL_BOUND_FACTOR == 0 else None


def _shape_search_bound(G, cP, mscale, mshape, chunk: int, pchunk: int, info: dict):
    """Exact nearest anatomy-mask distances, real -> generated and real -> other real, by
    :func:`engine.search.pairwise.knn_l2_both_bound` (one direction, ``k_b = 0``).

    Mask values are multiples of ``mscale`` (1/4 at 128 px), so every squared distance and every float32 partial
    sum of the old FAISS Flat search is exact: the distances equal the FAISS search's bit for bit; only the pairs
    the bound cannot rule out get an exact distance.

    Returns
    -------
    a : float32 [P, 1]  squared mask distance of every real image to its nearest generated image
    b : float32 [P, 1]  ... to its nearest other real image
    """
    from imprint.engine.search.pairwise import knn_l2_both_bound

    nP, nG = len(cP), len(G)

    def m_rows(r):
        return cP[np.asarray(r)] * mscale

    def g_rows(r):
        return anatomy_masks(np.asarray(G[int(r[0]):int(r[-1]) + 1]))

    fac, reg = _bound_params(mshape)
    st_g: dict = {}
    a, _, _, _ = knn_l2_both_bound(m_rows, nP, g_rows, nG, 1, 0, shape=mshape, b_block=chunk, a_block=pchunk,
                                   factor=fac, region=reg, after_block=lambda: _release(G), stats=st_g)
    st_r: dict = {}
    dr, ir, _, _ = knn_l2_both_bound(m_rows, nP, m_rows, nP, 2, 0, shape=mshape, b_block=chunk, a_block=pchunk,
                                     factor=fac, region=reg, stats=st_r)
    # nearest *other* real image: the first of the two best that is not the row itself (a duplicate ties at 0)
    own = ir[:, 0] == np.arange(nP)
    b = np.where(own, dr[:, 1], dr[:, 0])[:, None].astype(np.float32)
    info["shape_search"] = {"generated": st_g, "real": st_r}
    return a, b


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

    key = {k_: v for k_, v in kw.items() if k_ not in ("progress", "_cache", "executor", "anatomy_lowpass")}
    key.setdefault("anatomy", True)   # checkpoints written before the anatomy evidence existed are not reused
    if key["anatomy"]:                # ... nor those before it was registered on the shortlist (branch resyn6), nor
        from . import anatomy as _anat  # those of an older anatomy version (anatomy.checkpoint_tag, every fragment)
        key["anatomy"] = _anat.checkpoint_tag(kw.get("anatomy_lowpass"), form="evidence")
    h = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode())
    for a in (generated, pool):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        for s0 in range(0, len(a), 4096):  # no copy of a memory-mapped set, and its pages released as read
            h.update(memoryview(np.ascontiguousarray(a[s0:s0 + 4096])).cast("B"))
            _release(a)
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
                     anatomy: bool = True, anatomy_lowpass: bool | None = None) -> tuple[dict, np.ndarray, dict]:
    """Per-image membership evidence of every pool image against one generated set.

    Parameters
    ----------
    generated : uint8 [M, H, W]
    pool : uint8 [P, H, W]
        All real images (candidates and known non-members); each is compared with ``generated``
        and with the *other* pool images.  Like ``generated`` it may be memory-mapped: it is read in blocks of
        ``generated_chunk(P, H*W)`` images (``info["pool_chunk"]``).
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
        in place or mirrored and, with ``register``, registered on the registration's shortlists: copied
        anatomy under re-synthesised texture, also flipped / shifted / rotated / rescaled).
    anatomy_lowpass : bool or None
        Add the low-pass candidate source (:func:`.register.lowpass_candidates`) to the registered anatomy
        search; None follows ``anatomy.LOWPASS_CANDIDATES``.  :func:`.audit.audit_membership` turns it off
        without a reference, because its real-to-real null would have to include it too and that raised the
        null more than the copies (tests/test_membership_unsupervised.py's planted re-synthesis).

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

    hw = P.shape[1] * P.shape[2]
    npix = float(hw)
    chunk = generated_chunk(nG, hw)
    pchunk = generated_chunk(nP, hw)        # real (pool) images per block: the real set is streamed too
    info["generated_chunk"] = chunk
    info["pool_chunk"] = pchunk
    zP_rows, zG_rows = _zrows(P), _zrows(G)

    # pool -> generated (k_gen nearest) and generated -> pool (2 nearest): one distance matrix, block by block
    kq = min(2, nP)
    if _both_way_local(executor):
        from imprint.engine.search.pairwise import knn_l2_both, knn_l2_both_bound

        # the pool's z-scores are kept between generated chunks when they fit half the budget, else remade
        cache_pool = 4 * hw * nP <= _memory_budget() // 2
        bp = _bound_params(P.shape[1:])
        if cache_pool and bp is not None:
            # the same exact lists, most exact distances skipped by a provable lower bound (issue 15, scale6)
            st: dict = {}
            dG, iG, dGP, iGP = knn_l2_both_bound(zP_rows, nP, zG_rows, nG, k_gen, kq, shape=P.shape[1:],
                                                 b_block=chunk, a_block=pchunk, factor=bp[0], region=bp[1],
                                                 after_block=lambda: _release(G, P), stats=st)
            info["pixel_search"] = st
        else:
            dG, iG, dGP, iGP = knn_l2_both(zP_rows, nP, zG_rows, nG, k_gen, kq, a_block=pchunk, b_block=chunk,
                                           cache_a=cache_pool, after_block=lambda: _release(G, P))
    else:  # another executor / the GPU: its own k-NN, both ways, over blocks of both sets
        dG = np.full((nP, k_gen), np.inf, np.float32)
        iG = np.full((nP, k_gen), -1, np.int64)
        dGP = np.empty((nG, kq), np.float32)
        iGP = np.empty((nG, kq), np.int64)
        one = nP <= pchunk
        fP1 = zP_rows(np.arange(nP)) if one else None
        for c0 in range(0, nG, chunk):
            fGc = zG_rows(np.arange(c0, min(nG, c0 + chunk)))
            dq = np.full((len(fGc), kq), np.inf, np.float32)
            iq = np.full((len(fGc), kq), -1, np.int64)
            for b0 in range(0, nP, pchunk):
                b1 = min(nP, b0 + pchunk)
                fPb = fP1 if one else zP_rows(np.arange(b0, b1))
                d, i = _knn(fGc, fPb, min(k_gen, len(fGc)), executor=executor)
                dG[b0:b1], iG[b0:b1] = _merge_topk(dG[b0:b1], iG[b0:b1], d, np.where(i >= 0, i + c0, -1), k_gen)
                d, i = _knn(fPb, fGc, min(kq, len(fPb)), executor=executor)
                dq, iq = _merge_topk(dq, iq, d, np.where(i >= 0, i + b0, -1), kq)
            dGP[c0:c0 + len(fGc)], iGP[c0:c0 + len(fGc)] = dq, iq
            del fGc
            _release(G, P)
    dR, iR = _knn_self(zP_rows, nP, k_real, pchunk, executor=executor)    # pool -> other pool
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
        Pb = np.asarray(P[b0:b1])
        mse_g[b0:b1] = _pair_mse(Pb, Gb, pb, executor).reshape(-1, k_gen).min(1)
        ssim_g[b0:b1] = _pair_ssim(zscore_images(Pb), zscore_images(Gb), pb, data_range, executor).reshape(-1, k_gen).max(1)
        _release(G, P)
    mse_r = _pair_mse(P, P, pr, executor).reshape(nP, k_real).min(1)
    ev["mse_nn"] = mse_g
    ev["mse_ratio"] = _neg_log_ratio(mse_g, mse_r)
    ssim_r = np.empty(nP)
    for b0 in range(0, nP, pchunk):                     # real partners gathered per block of pool images
        b1 = min(nP, b0 + pchunk)
        ur, loc = np.unique(iR[b0:b1], return_inverse=True)
        pb = np.stack([np.repeat(np.arange(b1 - b0), k_real), loc.ravel()], 1).astype(np.int64)
        ssim_r[b0:b1] = _pair_ssim(zP_rows(np.arange(b0, b1)).reshape(-1, *P.shape[1:]),
                                   zP_rows(ur).reshape(-1, *P.shape[1:]), pb, data_range,
                                   executor).reshape(-1, k_real).max(1)
    _release(P)
    ev["ssim_nn"] = ssim_g
    ev["ssim_ratio"] = _neg_log_ratio(np.clip(1 - ssim_g, 0, None), np.clip(1 - ssim_r, 0, None))
    info["timings"]["rerank_s"] = time.perf_counter() - t1
    tick(1)

    # tile-wise (partial copies): every tile is z-scored on its own, so a copied region matches
    # exactly even when the rest of the image (and hence the global normalisation) differs
    t1 = time.perf_counter()
    def _tz(t):
        mu = t.mean(2, keepdims=True)
        sd = t.std(2, keepdims=True)
        return (t - mu) / np.maximum(sd, 4.0)

    def _tiles_of(x):                                   # [n, T, D] raw float tiles of uint8 images
        return _tiles(np.asarray(x).astype(np.float32), tiles)

    nT = tiles * tiles
    content = np.empty((nP, nT), bool)
    best_g = np.full((nP, nT), np.inf)
    best_r = np.full((nP, nT), np.inf)
    tblock = max(1, min(pblock, pchunk))
    # the pool's z-scored tiles are kept when they fit half the budget (each is a partner of ~k_real others),
    # else made per block and the real partners' tiles remade where they are needed
    keep = 4 * hw * nP <= _memory_budget() // 2
    tPall = None
    if keep:
        tPall = np.empty((nP, nT, (P.shape[1] // tiles) * (P.shape[2] // tiles)), np.float32)
        for b0 in range(0, nP, tblock):
            t = _tiles_of(P[b0:b0 + tblock])
            content[b0:b0 + tblock] = t.std(2) > 4.0    # not flat background (8-bit grey levels)
            tPall[b0:b0 + tblock] = _tz(t)
        _release(P)
    for b0 in range(0, nP, tblock):                     # per block of pool images; partners' tiles gathered
        b1 = min(nP, b0 + tblock)
        if keep:
            tPb = tPall[b0:b1]
        else:
            tPb = _tiles_of(P[b0:b1])
            content[b0:b1] = tPb.std(2) > 4.0
            tPb = _tz(tPb)
        ug, loc = np.unique(iG[b0:b1], return_inverse=True)
        tGb = _tz(_tiles_of(G[ug]))                     # tiles of the shortlisted generated images only
        loc = loc.reshape(b1 - b0, k_gen)
        for j in range(k_gen):
            best_g[b0:b1] = np.minimum(best_g[b0:b1], ((tPb - tGb[loc[:, j]]) ** 2).mean(2))
        del tGb
        ur, loc = np.unique(iR[b0:b1], return_inverse=True)
        tRb = tPall[ur] if keep else _tz(_tiles_of(P[ur]))
        loc = loc.reshape(b1 - b0, k_real)
        for j in range(k_real):
            best_r[b0:b1] = np.minimum(best_r[b0:b1], ((tPb - tRb[loc[:, j]]) ** 2).mean(2))
        del tRb, tPb
        _release(G, P)
    del tPall
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
        # the pool's masks are kept as compact counts and expanded per block of pool images
        cP, mscale = _cached_mask_counts(P, _cache)
        mshape = _mask_shape(P.shape[1:], cP.shape[1])
        if mshape is not None and 4 * cP.shape[1] * nP <= _memory_budget() // 2 and _both_way_local(executor):
            # exact search pruned by the block-projection lower bound (issue 15, scale7): the same distances
            a, b = _shape_search_bound(G, cP, mscale, mshape, chunk, pchunk, info)
        else:
            if 4 * cP.shape[1] * nP <= _memory_budget() // 2:   # the float masks fit half the budget: made once
                mP = cP * mscale
                mP_rows, mblock = (lambda r: mP[np.asarray(r)]), nP  # noqa: E731
            else:
                mP_rows, mblock = (lambda r: cP[np.asarray(r)] * mscale), pchunk  # noqa: E731
            # generated masks per chunk, not cached (the cache would hold every generated image's masks)
            a, _ = _knn_chunked(G, mP_rows, 1, anatomy_masks, chunk, executor=executor, qblock=(mblock, nP))
            b, _ = _knn_self(mP_rows, nP, 1, mblock, executor=executor)
            mP = None
        a, b = a.astype(np.float64), b.astype(np.float64)
        dim = float(cP.shape[1])
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

        hP = np.concatenate([np.sqrt(np.asarray(kernels.lbp_histograms(np.asarray(P[s0:s0 + 4096])), np.float32))
                             for s0 in range(0, nP, 4096)])
        _release(P)
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
        from . import anatomy as _anat
        from .anatomy import anatomy_evidence

        sl = force = None
        kG = kP = None
        if register and _anat.REGISTERED:   # the registration's own shortlists (memoised descriptors), registered on the low-pass grids
            from .common import _hashes
            from .register import shortlists

            kG, kP = (_hashes(G), _hashes(P)) if _cache is not None else (None, None)
            cg, _, cr, _ = shortlists(G, P, iG, iR, k_reg=k_reg, keys_gen=kG, keys_pool=kP, cache=_cache)
            if _anat.lowpass_on(anatomy_lowpass):
                # + the low-pass source (issue 13, short7) among the generated images, for every pool image alike
                # (reference images included, so the calibration holds); the control keeps the shortlist: more
                # control candidates raised every member's control NCC among look-alikes and lost in-place copies
                # (tests/test_membership_evidence_anatomy.py's planted re-synthesis: 0.35 flagged instead of >= 0.85)
                from . import register as _reg

                lg = _reg.lowpass_candidates(G, P, keys_gen=kG, keys_pool=kP, cache=_cache, control=False)[0]
                if _reg.LP_K_COARSE and _reg.LP_COARSE_FORCE:   # the coarse source's columns (elsrc13), the last
                    force = _reg.coarse_columns(cg.shape[1] + lg.shape[1], _reg.LP_K_COARSE)
                cg = np.concatenate([cg, lg], 1)
            sl = (cg, cr)
        ev.update(anatomy_evidence(G, P, chunk=chunk, executor=executor, shortlist=sl, keys_gen=kG, keys_pool=kP,
                                   cache=_cache, **({} if force is None else {"force": force})))
        info["timings"]["anatomy_s"] = time.perf_counter() - t1
        from . import ptiles as _ptiles

        if _ptiles.PTILE_CHANNEL:   # partial copies by tiles (part13, opt-in): a channel of its own, ptile_ratio
            t1 = time.perf_counter()
            ev["ptile_ratio"] = _ptiles.ptile_evidence(G, P)["ptile_ratio"]
            info["timings"]["ptile_s"] = time.perf_counter() - t1
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
