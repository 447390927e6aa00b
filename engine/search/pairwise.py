"""Both-way exact k-NN of two large sets from one matrix product per pair of blocks, in bounded memory.

Membership needs, for every real image, its nearest generated images *and*, for every generated image, its
nearest real images, under the same (squared L2) distance.  Two :func:`engine.search.knn` calls compute the
``R x G`` distance matrix twice; :func:`knn_l2_both` computes it once, block by block (float32 BLAS product),
keeps for every row and every column its ``k + margin`` best float32 candidates, and re-ranks the survivors
with exact float64 distances (:func:`engine.search.exact.l2_pairs`), so the result is the exact k-NN in
``(distance, index)`` order, the contract of :func:`engine.search.knn` (distances cast to float32).  It is exact
unless more than ``margin`` rows tie with the k-th within float32 rounding of the product (FAISS's Flat search,
which keeps no margin, is exposed to the same rounding).

Neither set is ever held whole: features come from callables that return the rows asked for (e.g. z-scored
from a memory-mapped uint8 store), so the working memory is a few blocks whatever the set sizes.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

Feats = Callable[[np.ndarray], np.ndarray]


def _select(D: np.ndarray, k: int) -> np.ndarray:
    """Column positions of the ``k`` smallest entries of every row of ``D`` (unordered)."""
    if D.shape[1] <= k:
        return np.broadcast_to(np.arange(D.shape[1]), D.shape).copy()
    return np.argpartition(D, k - 1, axis=1)[:, :k]


def _merge(bd, bi, d, i, k):
    """Keep the ``k`` smallest float32 candidates of two aligned candidate lists (unordered)."""
    if bd is None:
        D, I = d, i
    else:
        D, I = np.concatenate([bd, d], 1), np.concatenate([bi, i], 1)
    if D.shape[1] <= k:
        return D, I
    o = np.argpartition(D, k - 1, axis=1)[:, :k]
    return np.take_along_axis(D, o, 1), np.take_along_axis(I, o, 1)


def _exact(fq: np.ndarray, cand: np.ndarray, feats: Feats | None, k: int, rows_per: int, base=None):
    """Exact float64 re-ranking of ``cand`` [n, c] (rows of the other set) for queries ``fq`` [n, d]: the k best by
    (float64 distance, index), distances cast to float32, as :func:`engine.search.knn` returns them."""
    from .block import _sort_rows
    from .exact import l2_pairs

    n = len(cand)
    dist = np.full((n, k), np.inf, np.float32)
    idx = np.full((n, k), -1, np.int64)
    if base is not None:   # the other set's features are in memory: no gathering
        rows_per = n
    for s in range(0, n, max(1, rows_per)):
        c = cand[s:s + rows_per]
        ok = c >= 0
        if base is not None:
            d64 = l2_pairs(base, fq[s:s + rows_per], np.where(ok, c, -1))
        else:
            u, loc = np.unique(np.where(ok, c, 0), return_inverse=True)
            loc = np.where(ok, loc.reshape(c.shape), -1)
            d64 = l2_pairs(np.ascontiguousarray(feats(u), np.float32), fq[s:s + rows_per], loc)
        d, i = _sort_rows(d64, np.where(ok, c, -1))
        m = min(k, d.shape[1])
        dist[s:s + len(c), :m] = d[:, :m]
        idx[s:s + len(c), :m] = i[:, :m]
    return dist, idx


def knn_l2_both(feats_a: Feats, n_a: int, feats_b: Feats, n_b: int, k_a: int, k_b: int, *, a_block: int,
                b_block: int, margin: int = 8, cache_a: bool = False,
                after_block: Callable[[], object] | None = None):
    """Exact squared-L2 k-NN in both directions between sets A and B, from one product per block pair.

    Parameters
    ----------
    feats_a, feats_b : callable int64 [m] -> float32 [m, d]
        Feature rows of A / B by row index (e.g. z-scored pixels computed on the fly).
    n_a, n_b : int
        Set sizes (both >= 1).
    k_a : int
        Neighbours in B kept for every A row (>= 1).
    k_b : int
        Neighbours in A kept for every B row (>= 1).
    a_block, b_block : int
        Rows of A / B per block: the working memory is about ``4 * d * (a_block + b_block)`` bytes plus the
        ``a_block x b_block`` float32 product.
    margin : int
        Extra float32 candidates per row kept for the exact re-ranking.
    cache_a : bool
        Keep the features of every A block between B blocks (memory ``4 * d * n_a``) instead of recomputing them.
    after_block : callable or None
        Called after every B block (e.g. to release memory-mapped pages).

    Returns
    -------
    dA : float32 [n_a, min(k_a, n_b)]   exact distances to the nearest B rows, ascending (ties: lower index)
    iA : int64 [n_a, min(k_a, n_b)]
    dB : float32 [n_b, min(k_b, n_a)]
    iB : int64 [n_b, min(k_b, n_a)]
    """
    ka, kb = int(min(k_a, n_b)), int(min(k_b, n_a))
    ca, cb = ka + int(margin), kb + int(margin)
    a_block, b_block = int(max(1, a_block)), int(max(1, b_block))
    run_d = run_i = None                            # float32 candidates of every A row [n_a, <=ca]
    dB = np.empty((n_b, kb), np.float32)
    iB = np.empty((n_b, kb), np.int64)
    FA = NA = None
    if cache_a or n_a <= a_block:   # every A feature made once, into one array (also the exact re-ranking's base)
        first = np.ascontiguousarray(feats_a(np.arange(0, min(n_a, a_block))), np.float32)
        FA = np.empty((n_a, first.shape[1]), np.float32)
        FA[:len(first)] = first
        del first
        for s0 in range(a_block, n_a, a_block):
            FA[s0:s0 + a_block] = feats_a(np.arange(s0, min(n_a, s0 + a_block)))
        NA = np.einsum("ij,ij->i", FA, FA, dtype=np.float64).astype(np.float32)

    def a_feats(s, e):
        if FA is not None:
            return FA[s:e], NA[s:e]
        f = np.ascontiguousarray(feats_a(np.arange(s, e)), np.float32)
        return f, np.einsum("ij,ij->i", f, f, dtype=np.float64).astype(np.float32)

    for b0 in range(0, n_b, b_block):
        b1 = min(n_b, b0 + b_block)
        fb = np.ascontiguousarray(feats_b(np.arange(b0, b1)), np.float32)
        nb = np.einsum("ij,ij->i", fb, fb, dtype=np.float64).astype(np.float32)
        cbd = cbi = None                            # candidates of this B block's rows among A
        ad, ai = [], []
        for a0 in range(0, n_a, a_block):
            a1 = min(n_a, a0 + a_block)
            fa, na = a_feats(a0, a1)
            D = fa @ fb.T
            D *= np.float32(-2.0)
            D += na[:, None]
            D += nb[None, :]
            sel = _select(D, ca)                    # A rows: best B columns of this block
            ad.append(np.take_along_axis(D, sel, 1))
            ai.append(sel.astype(np.int64) + b0)
            selb = _select(D.T, cb)                 # B rows: best A rows of this block
            cbd, cbi = _merge(cbd, cbi, np.take_along_axis(D.T, selb, 1), selb.astype(np.int64) + a0, cb)
            del D
        d_new, i_new = np.concatenate(ad), np.concatenate(ai)
        run_d, run_i = _merge(run_d, run_i, d_new, i_new, ca)
        dB[b0:b1], iB[b0:b1] = _exact(fb, cbi, feats_a, kb, max(1, a_block // max(1, cb)), base=FA)
        one_b = fb if n_b <= b_block else None     # a single B block: the A rows' re-ranking reads it directly
        del fb
        if after_block is not None:
            after_block()
    dA = np.empty((n_a, ka), np.float32)
    iA = np.empty((n_a, ka), np.int64)
    for a0 in range(0, n_a, a_block):
        a1 = min(n_a, a0 + a_block)
        fa, _ = a_feats(a0, a1)
        dA[a0:a1], iA[a0:a1] = _exact(fa, run_i[a0:a1], feats_b, ka, max(1, b_block // max(1, ca)), base=one_b)
        if after_block is not None:
            after_block()
    return dA, iA, dB, iB
