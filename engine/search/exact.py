"""Exact float64 distances (squared L2, cosine) of candidate pairs, compiled (Numba).

``engine.search`` re-ranks FAISS's candidates by exact float64 distances.  Gathering the candidate rows as float64
copies and reducing them with ``einsum`` moved 8 bytes per dimension per candidate through memory and dominated
the membership pixel searches (16,384 dimensions, ~2.8 s of ~6.9 s for 1,000 x 1,024 images both ways); this
kernel reads the float32 rows once and accumulates ``(float64(q) - float64(b))**2`` in float64.  Imported lazily
(``import imprint`` stays light).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(inline="always", fastmath={"reassoc", "contract"})
def _sq_l2(qi, b):  # pragma: no cover - numba
    acc = 0.0
    for t in range(qi.shape[0]):
        v = np.float64(qi[t]) - np.float64(b[t])
        acc += v * v
    return acc


@njit(inline="always", fastmath={"reassoc", "contract"})
def _cos_dist(qi, b):  # pragma: no cover - numba
    bb = 0.0
    qb = 0.0
    for t in range(qi.shape[0]):
        v = np.float64(b[t])
        bb += v * v
        qb += v * np.float64(qi[t])
    nb = np.sqrt(bb)
    if nb == 0.0:
        nb = 1.0
    return min(max(1.0 - qb / nb, 0.0), 2.0)


@njit(parallel=True, cache=True, fastmath={"reassoc", "contract"}, nogil=True)
def _pairs(base, q, idx, cosine, out):  # pragma: no cover - numba
    """``out[i, j]`` = distance of ``q[i]`` and ``base[idx[i, j]]`` (squared L2, or cosine when ``cosine``)."""
    n, kk = idx.shape
    for i in prange(n):
        qi = q[i]
        for j in range(kk):
            r = idx[i, j]
            if r < 0:
                out[i, j] = np.inf
            elif cosine:
                out[i, j] = _cos_dist(qi, base[r])
            else:
                out[i, j] = _sq_l2(qi, base[r])


def cosine_pairs(base: np.ndarray, q: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Exact cosine distances ``1 - cos(q[i], base[idx[i, j]])`` for unit-norm ``q`` (float64, clipped to [0, 2];
    zero base rows give 1); shapes as :func:`l2_pairs`."""
    base, q, idx, out = _prep(base, q, idx)
    if idx.size:
        _pairs(base, q, idx, True, out)
    return out


def _prep(base, q, idx):
    dt = np.float64 if (base.dtype == np.float64 or q.dtype == np.float64) else np.float32
    idx = np.ascontiguousarray(idx, np.int64)
    return (np.ascontiguousarray(base, dt), np.ascontiguousarray(q, dt), idx, np.empty(idx.shape, np.float64))


def l2_pairs(base: np.ndarray, q: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Exact squared L2 distances ``||q[i] - base[idx[i, j]]||**2``, float64 accumulation.

    Parameters
    ----------
    base : float32 or float64 [M, d]
    q : float32 or float64 [N, d]
    idx : int [N, k]
        Rows of ``base``; ``-1`` gives ``inf``.

    Returns
    -------
    float64 [N, k]
    """
    base, q, idx, out = _prep(base, q, idx)
    if idx.size:
        _pairs(base, q, idx, False, out)
    return out


@njit(parallel=True, cache=True, fastmath={"reassoc", "contract"}, nogil=True)
def _l2_rows(base, qall, qrows, idx, out):  # pragma: no cover - numba
    """``out[i, j]`` = squared L2 of ``qall[qrows[i]]`` and ``base[idx[i, j]]`` (``inf`` where ``idx < 0``): the
    arithmetic of :func:`_pairs` (same per-pair function), with the query rows read in place, not gathered."""
    n, kk = idx.shape
    for i in prange(n):
        qi = qall[qrows[i]]
        for j in range(kk):
            r = idx[i, j]
            if r < 0:
                out[i, j] = np.inf
            else:
                out[i, j] = _sq_l2(qi, base[r])


def l2_rows(base: np.ndarray, qall: np.ndarray, qrows: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """:func:`l2_pairs` of the queries ``qall[qrows]`` without copying them (bit-identical values).

    Parameters
    ----------
    base : float32 [M, d]
    qall : float32 [N0, d]
    qrows : int [N]    rows of ``qall`` used as queries
    idx : int [N, k]   rows of ``base``; ``-1`` gives ``inf``

    Returns
    -------
    float64 [N, k]
    """
    base = np.ascontiguousarray(base, np.float32)
    qall = np.ascontiguousarray(qall, np.float32)
    idx = np.ascontiguousarray(idx, np.int64)
    out = np.empty(idx.shape, np.float64)
    if idx.size:
        _l2_rows(base, qall, np.ascontiguousarray(qrows, np.int64), idx, out)
    return out


@njit(parallel=True, cache=True, nogil=True)
def _block_proj(x, h, w, f, out):  # pragma: no cover - numba
    n = x.shape[0]
    wl = w // f
    inv = np.float32(1.0) / np.float32(f)
    for i in prange(n):
        o = out[i]
        for t in range(o.shape[0]):
            o[t] = 0.0
        for y in range(h):
            base = (y // f) * wl
            for xx in range(w):
                o[base + xx // f] += x[i, y * w + xx]
        for t in range(o.shape[0]):
            o[t] *= inv


def block_project_rows(x: np.ndarray, shape: tuple[int, int], factor: int) -> np.ndarray:
    """Block sums / ``factor`` of flattened float32 images ``x`` [n, H*W] -> float32 [n, (H/f)*(W/f)]
    (the coordinates of the orthogonal projection onto ``factor x factor`` block-constant images)."""
    h, w = shape
    x = np.ascontiguousarray(x, np.float32)
    out = np.empty((len(x), (h // factor) * (w // factor)), np.float32)
    if len(x):
        _block_proj(x, int(h), int(w), int(factor), out)
    return out


@njit(parallel=True, cache=True, nogil=True)
def _block_proj_res(x, h, w, f, r, out, sq):  # pragma: no cover - numba
    """Per image: block sums / ``f`` (float64 sums) into ``out[:, :nbl]``, the residual norm of every ``r x r``
    region (sqrt of the sum over its ``f x f`` blocks of ``sum x^2 - (sum x)^2 / f^2``, float64, clipped at 0)
    into ``out[:, nbl:]``, and ``sum x^2`` into ``sq``.  One pass over the pixels, row by row."""
    n = x.shape[0]
    wl = w // f
    nbl = (h // f) * wl
    rw = w // r
    g = r // f
    ff = np.float64(f * f)
    for i in prange(n):
        S = np.zeros(nbl)
        Q = np.zeros(nbl)
        for y in range(h):
            base = (y // f) * wl
            row = x[i, y * w:(y + 1) * w]
            for bx in range(wl):
                s_ = 0.0
                q_ = 0.0
                for dx in range(f):
                    v = np.float64(row[bx * f + dx])
                    s_ += v
                    q_ += v * v
                S[base + bx] += s_
                Q[base + bx] += q_
        o = out[i]
        for t in range(nbl, o.shape[0]):
            o[t] = 0.0
        tot = 0.0
        for by in range(h // f):
            for bx in range(wl):
                j = by * wl + bx
                s = S[j]
                o[j] = s / f
                q = Q[j] - s * s / ff
                tot += Q[j]
                if q > 0.0:
                    o[nbl + (by // g) * rw + bx // g] += q
        for t in range(nbl, o.shape[0]):
            o[t] = np.sqrt(o[t])
        sq[i] = tot


def block_project_res_rows(x: np.ndarray, shape: tuple[int, int], factor: int, region: int):
    """Block sums / ``factor`` of flattened float32 images ``x`` [n, H*W], followed by the residual norm of every
    ``region x region`` area -> float32 [n, (H/f)*(W/f) + (H/region)*(W/region)], and the squared norms of the
    rows (float64 [n]) (issue 15, scale9)."""
    h, w = shape
    x = np.ascontiguousarray(x, np.float32)
    nbl = (h // factor) * (w // factor)
    out64 = np.empty((len(x), nbl + (h // region) * (w // region)), np.float64)
    sq = np.empty(len(x), np.float64)
    if len(x):
        _block_proj_res(x, int(h), int(w), int(factor), int(region), out64, sq)
    return out64.astype(np.float32), sq


@njit(parallel=True, cache=True, nogil=True)
def _col_smallest(L, k, out):  # pragma: no cover - numba
    """``out[j]`` = rows of the ``k`` smallest entries of column ``j`` of ``L`` (unordered; ties: any), read row
    by row (C order) over strips of 64 columns."""
    n, m = L.shape
    ns = (m + 63) // 64
    for s in prange(ns):
        c0 = s * 64
        c1 = min(m, c0 + 64)
        bv = np.full((c1 - c0, k), np.inf, np.float32)
        bi = np.zeros((c1 - c0, k), np.int64)
        for t in range(c1 - c0):
            for q in range(k):
                bi[t, q] = q
        for r in range(n):
            for c in range(c0, c1):
                v = L[r, c]
                t = c - c0
                if v < bv[t, k - 1]:
                    q = k - 1
                    while q > 0 and bv[t, q - 1] > v:
                        bv[t, q] = bv[t, q - 1]
                        bi[t, q] = bi[t, q - 1]
                        q -= 1
                    bv[t, q] = v
                    bi[t, q] = r
        for t in range(c1 - c0):
            for q in range(k):
                out[c0 + t, q] = bi[t, q]


def col_smallest(L: np.ndarray, k: int) -> np.ndarray:
    """Rows of the ``k`` smallest entries of every column of a float32 matrix ``L`` [n, m] (n >= k) -> int64
    [m, k], unordered: the column selection of the bound search without a transposed partition (issue 15, scale9)."""
    L = np.ascontiguousarray(L, np.float32)
    out = np.empty((L.shape[1], int(k)), np.int64)
    if L.size and k:
        _col_smallest(L, int(k), out)
    return out
