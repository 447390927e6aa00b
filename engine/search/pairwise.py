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
    if k == 1:   # one pass instead of a partition (issue 15, scale8: the anatomy search's k = 1)
        return D.argmin(axis=1)[:, None]
    return np.argpartition(D, k - 1, axis=1)[:, :k]


def _col_select(L: np.ndarray, k: int) -> np.ndarray:
    """Row positions of the ``k`` smallest entries of every column of ``L`` [n, m] -> [m, k] (unordered): the
    transposed :func:`_select`, read in ``L``'s row order (:func:`engine.search.exact.col_smallest`)."""
    if L.shape[0] <= k:
        return np.broadcast_to(np.arange(L.shape[0]), (L.shape[1], L.shape[0])).copy()
    from .exact import col_smallest

    return col_smallest(L, k)


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


# ------------------------------------------------------------------------------------------------------------
# Exact both-way k-NN pruned by a lower bound (issue 15, scale6)
def block_project(f: np.ndarray, shape: tuple[int, int], factor: int) -> np.ndarray:
    """Orthogonal projection of flattened images onto the piecewise-constant ``factor x factor`` blocks.

    Coordinates in an orthonormal basis of that subspace (block sum / ``factor``), so for any rows ``x, y``:
    ``||P x - P y|| <= ||x - y||`` and ``||x||^2 = ||P x||^2 + ||x - P^T P x||^2``.

    Parameters
    ----------
    f : float32 [n, H*W]
    shape : (H, W), both divisible by ``factor``
    factor : int

    Returns
    -------
    float32 [n, (H/factor) * (W/factor)]
    """
    from .exact import block_project_rows

    return block_project_rows(f, shape, factor)


def block_project_res(f: np.ndarray, shape: tuple[int, int], factor: int, region: int = 0) -> np.ndarray:
    """:func:`block_project`'s coordinates followed by the norms of the residual ``Q x = x - P^T P x`` over
    ``region x region`` areas (issue 15, scale9).

    For any rows ``x, y`` with augmented vectors ``u, v``: ``||u - v||^2 = ||Px - Py||^2 + sum_r (||Q_r x|| -
    ||Q_r y||)^2 <= ||Px - Py||^2 + ||Qx - Qy||^2 = ||x - y||^2`` (the residual splits over the areas, which are
    unions of blocks, and the reverse triangle inequality holds in every area), and ``||u||^2 = ||x||^2``.
    Smaller areas give a tighter bound for a few more dimensions; ``region = 0`` is one area (the whole image).

    Parameters
    ----------
    f : float32 [n, H*W]
    shape : (H, W)
    factor : int
        Block side of the projection; ``H`` and ``W`` divisible by it.
    region : int
        Side of the residual areas: a multiple of ``factor`` dividing ``H`` and ``W``; 0 for the whole image.

    Returns
    -------
    float32 [n, (H/factor) * (W/factor) + n_areas]
    """
    return _augment(f, shape, factor, region)[0]


def _augment(f, shape, factor, region):
    """:func:`block_project_res` of ``f`` and the squared norms of its rows (float64 [n])."""
    from .exact import block_project_res_rows, block_project_rows

    h, w = shape
    if region and (region % factor or h % region or w % region):
        raise ValueError(f"residual area {region} must be a multiple of {factor} and divide {shape}")
    if region:
        return block_project_res_rows(f, shape, factor, region)
    lp = block_project_rows(f, shape, factor)
    f2 = np.einsum("ij,ij->i", f, f, dtype=np.float64)
    res = np.sqrt(np.maximum(f2 - np.einsum("ij,ij->i", lp, lp, dtype=np.float64), 0.0))
    return np.concatenate([lp, res.astype(np.float32)[:, None]], 1), f2


def _bound_terms(l, f2, dl):
    """Per-row terms of :func:`_lower_bound`: ``||l||^2`` minus the rounding slack (``dl * 2^-22`` relative to the
    squared full norm ``f2``, about 4x the worst-case error bound of a length-``dl`` float32 dot product), float32."""
    nl = np.einsum("ij,ij->i", l, l, dtype=np.float64)
    return (nl - (dl * 2.0 ** -22 + 1e-6) * np.asarray(f2, np.float64)).astype(np.float32)


def _lower_bound(la2, ta, lb, tb):
    """Float32 lower bound [na, nb] of the squared distances of rows whose augmented vectors
    (:func:`block_project_res`) are ``la2 = -2 la`` / ``lb``: ``||la - lb||^2`` minus a rounding slack folded
    into the per-row terms ``ta`` / ``tb`` (:func:`_bound_terms`): one product and two passes."""
    L = la2 @ lb.T
    L += ta[:, None]
    L += tb[None, :]
    return L


def _eval_pairs(fb, FA, r, c):
    """Exact float64 squared L2 of ``FA[r[j]]`` and ``fb[c[j]]`` for every pair ``j`` (``r`` sorted ascending, as
    ``np.nonzero`` returns it; pairs grouped by A row, so every A row is read once), by
    :func:`engine.search.exact.l2_rows`, the kernel :func:`knn_l2_both` re-ranks with (bit-identical values)."""
    from .exact import l2_rows

    if not len(r):
        return np.zeros(0)
    rows, start, cnt = np.unique(r, return_index=True, return_counts=True)
    grp = np.repeat(np.arange(len(rows)), cnt)
    pos = np.arange(len(r)) - np.repeat(start, cnt)
    idx = np.full((len(rows), int(cnt.max())), -1, np.int64)
    idx[grp, pos] = c
    return l2_rows(fb, FA, rows, idx)[grp, pos]


def _topk_sparse(r, c, d, n, k, offset=0):
    """k best (float64 distance, then index) of every row ``0..n-1`` among the sparse entries ``(r, c, d)``:
    float64 [n, k] and int64 [n, k] (``c + offset``), inf / -1 padded.  Issue 15, scale7: the search kept a dense
    float64 matrix of the block's exact distances (NaN where not computed) and made five dense passes over it per
    block; only a few percent of its entries are computed, so they are now kept as a list."""
    D = np.full((n, k), np.inf)
    I = np.full((n, k), -1, np.int64)
    if len(r) and k:
        o = np.lexsort((c, d, r))
        r, c, d = r[o], c[o], d[o]
        rank = np.arange(len(r)) - np.searchsorted(r, r, side="left")
        keep = rank < k
        D[r[keep], rank[keep]] = d[keep]
        I[r[keep], rank[keep]] = c[keep] + offset
    return D, I


def _sort_rows_k(D, I, k):
    from .block import _sort_rows

    d, i = _sort_rows(D, I)
    return d[:, :k], i[:, :k]


def knn_l2_both_bound(feats_a: Feats, n_a: int, feats_b: Feats, n_b: int, k_a: int, k_b: int, *,
                      shape: tuple[int, int], b_block: int, a_block: int = 2048, factor: int = 2, region: int = 0,
                      after_block: Callable[[], object] | None = None, stats: dict | None = None):
    """:func:`knn_l2_both`'s exact result, with most exact distances skipped by a provable lower bound.

    Every row is an image of ``shape`` (flattened).  With ``P`` the orthogonal projection onto ``factor x factor``
    block-constant images (:func:`block_project`, ``factor**2`` times fewer dimensions) and ``Q = I - P``:
    ``||x - y||^2 = ||P(x-y)||^2 + ||Q(x-y)||^2 >= ||Px - Py||^2 + sum_r (||Q_r x|| - ||Q_r y||)^2`` over
    ``region x region`` areas ``r`` (:func:`block_project_res`; one area, the whole image, with ``region = 0``).
    The bound is computed for every pair from one float32 product in the low dimension (minus a rounding slack);
    the exact float64 distance (the kernel :func:`knn_l2_both` re-ranks with, bit-identical values) is computed
    only for

    1. the ``k`` best pairs by the bound, within each ``B`` block, of every B row and of every A row whose running
       list (over the blocks seen so far) is not yet full, which gives an upper bound ``U`` on every row's k-th
       distance (A rows: their running k-th), then
    2. every pair whose bound is ``<= U``; any other pair is provably farther than the k-th.

    So the result is the exact k-NN in (float64 distance, index) order, as :func:`knn_l2_both` returns it
    (equal to it whenever its float32 candidate margin holds), distances cast to float32, whatever ``factor``,
    ``region`` and the blocks.  All of A's features are held (``4 * d * n_a`` bytes): A's rows are read in place
    by the exact kernel.

    Parameters
    ----------
    feats_a, feats_b, n_a, n_b, k_a, after_block
        As :func:`knn_l2_both`.
    k_b : int
        Neighbours in A kept for every B row; 0 skips that direction (``dB``, ``iB`` are then ``[n_b, 0]``):
        only the pairs that may enter an A row's list get an exact distance.
    shape : (H, W)
        Image shape of a row; both divisible by ``factor``.
    b_block : int
        B rows per block (the bound matrix is ``4 * n_a * b_block`` bytes, plus two boolean masks of that shape).
    a_block : int
        A rows per low-dimensional product.
    factor : int
        Block side of the projection.
    region : int
        Side of the residual areas of the bound (a multiple of ``factor`` dividing both sides; 0: one area).
    stats : dict or None
        Filled with ``pairs`` (R x G), ``exact`` (exact distances computed) and ``low_dim``.

    Returns
    -------
    dA, iA, dB, iB : as :func:`knn_l2_both`
    """
    h, w = shape
    if h % factor or w % factor:
        raise ValueError(f"image shape {shape} is not divisible by {factor}")
    ka, kb = int(min(k_a, n_b)), int(min(k_b, n_a))
    FA = np.empty((n_a, h * w), np.float32)
    for s0 in range(0, n_a, a_block):
        FA[s0:s0 + a_block] = feats_a(np.arange(s0, min(n_a, s0 + a_block)))
    LA, fa2 = _augment(FA, shape, factor, region)
    dl = LA.shape[1]
    ta = _bound_terms(LA, fa2, dl)
    LA *= np.float32(-2.0)                          # exact (a power of two)
    rd = np.full((n_a, ka), np.inf)                 # running exact k best of every A row (float64)
    ri = np.full((n_a, ka), -1, np.int64)
    dB = np.empty((n_b, kb), np.float32)
    iB = np.empty((n_b, kb), np.int64)
    n_exact = 0
    for b0 in range(0, n_b, int(max(1, b_block))):
        b1 = min(n_b, b0 + int(max(1, b_block)))
        fb = np.ascontiguousarray(feats_b(np.arange(b0, b1)), np.float32)
        lb, fb2 = _augment(fb, shape, factor, region)
        tb = _bound_terms(lb, fb2, dl)
        L = np.empty((n_a, b1 - b0), np.float32)
        for a0 in range(0, n_a, a_block):
            a1 = min(n_a, a0 + a_block)
            L[a0:a1] = _lower_bound(LA[a0:a1], ta[a0:a1], lb, tb)
        nb_ = b1 - b0
        # round 1: the ka best by the bound of every A row whose running list is not full (issue 15, scale9:
        # a full list's k-th is already an upper bound, and a block rarely improves it) and every B row's kb best
        open_ = np.flatnonzero(~np.isfinite(rd[:, -1])) if ka else np.zeros(0, np.int64)
        if kb:
            done = np.zeros(L.shape, bool)
            if len(open_):
                sel = _select(L[open_], ka)
                done[np.repeat(open_, sel.shape[1]), sel.ravel()] = True
            np.put_along_axis(done.T, _col_select(L, kb), True, 1)
            r1, c1 = np.nonzero(done)
        else:   # one direction: the pairs straight from the selection (grouped by row, as _eval_pairs needs)
            done = None
            sel = _select(L[open_], ka) if len(open_) else np.zeros((0, 0), np.int64)
            r1 = np.repeat(open_, sel.shape[1])
            c1 = sel.ravel()
        d1_ = _eval_pairs(fb, FA, r1, c1)
        # upper bounds on the k-th distances: A rows with their running lists, B rows within this block
        d1, _ = _topk_sparse(r1, c1, d1_, n_a, ka)
        Ua = _kth_merged(rd, d1, ka)
        # round 2: every pair whose bound does not exceed its row's or its column's upper bound
        M = L <= Ua.astype(np.float32)[:, None]   # L is float32: the same test as in float64, without a copy
        Ub = None
        if kb:
            Ub = _topk_sparse(c1, r1, d1_, nb_, kb)[0][:, -1]
            M |= L <= Ub.astype(np.float32)[None, :]
        if done is not None:
            M &= ~done
        else:
            M[r1, c1] = False
        r2, c2 = np.nonzero(M)
        d2_ = _eval_pairs(fb, FA, r2, c2)
        n_exact += len(r1) + len(r2)
        r_, c_, d_ = np.concatenate([r1, r2]), np.concatenate([c1, c2]), np.concatenate([d1_, d2_])
        # only pairs within a row's (column's) upper bound can enter its list (ties kept: <=)
        ka_ = d_ <= Ua[r_]
        d2, i2 = _topk_sparse(r_[ka_], c_[ka_], d_[ka_], n_a, ka, offset=b0)
        D = np.concatenate([rd, d2], 1)
        I = np.concatenate([ri, i2], 1)
        rd, ri = _sort_rows_k(D, I, ka)
        if kb:
            kb_ = d_ <= Ub[c_]
            db, ib = _topk_sparse(c_[kb_], r_[kb_], d_[kb_], nb_, kb)
            dB[b0:b1], iB[b0:b1] = db.astype(np.float32), ib
        del fb, L, M, done
        if after_block is not None:
            after_block()
    if stats is not None:
        stats.update(pairs=int(n_a) * int(n_b), exact=n_exact, low_dim=dl)
    return rd.astype(np.float32), ri, dB, iB


def _kth_merged(rd, d1, k):
    """k-th smallest of the union of two sorted-ascending float64 lists per row (inf when fewer than k)."""
    D = np.concatenate([rd, d1], 1)
    D.sort(axis=1)
    return D[:, k - 1]
