"""The lower-bound-pruned exact pixel search (issue 15, scale6) and the blocked registration shortlist search.

``knn_l2_both_bound`` must return exactly the float64 brute-force k-NN (distance, then index) in both directions,
the lists ``knn_l2_both`` returns, with planted copies and exact ties; ``register._desc_knn`` searched in base
blocks must equal the single search it replaces wherever that search is exact.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest

from conftest import ct_like
from imprint.engine.membership.evidence import zscore_images
from imprint.engine.search.exact import l2_pairs, l2_rows
from imprint.engine.search.pairwise import block_project, knn_l2_both, knn_l2_both_bound


def _brute(fa, fb, k):
    """Exact float64 k-NN of the rows of ``fa`` among ``fb``: (distance, index) order."""
    a, b = fa.astype(np.float64), fb.astype(np.float64)
    D = np.stack([((b - x) ** 2).sum(1) for x in a])
    order = np.lexsort((np.broadcast_to(np.arange(len(b)), D.shape), D), axis=1)[:, :k]
    return np.take_along_axis(D, order, 1), order


@functools.lru_cache(maxsize=None)
def _sets(seed=0, n_a=100, n_b=300, side=32):
    rng = np.random.default_rng(seed)
    P = ct_like(rng, n_a, side)
    G = ct_like(rng, n_b, side)
    G[::25] = P[: len(G[::25])]                      # planted exact copies: distance 0, must come first
    G[7] = G[8]                                      # an exact tie between two generated images
    if n_b > 30 and n_a > 3:                         # a noisy copy
        G[30] = np.clip(P[3].astype(int) + rng.integers(-2, 3, P[3].shape), 0, 255)
    fa = zscore_images(P).reshape(n_a, -1)
    fb = zscore_images(G).reshape(n_b, -1)
    return fa, fb


@pytest.mark.parametrize("b_block,a_block,factor,ka,kb", [
    (300, 2048, 2, 10, 2), (64, 50, 2, 10, 2), (33, 2048, 4, 7, 3), (300, 17, 8, 1, 1)])
def test_bound_search_equals_brute_force(b_block, a_block, factor, ka, kb):
    fa, fb = _sets()
    st: dict = {}
    dA, iA, dB, iB = knn_l2_both_bound(lambda r: fa[r], len(fa), lambda r: fb[r], len(fb), ka, kb,
                                       shape=(32, 32), b_block=b_block, a_block=a_block, factor=factor, stats=st)
    DA, IA = _brute(fa, fb, ka)
    DB, IB = _brute(fb, fa, kb)
    np.testing.assert_array_equal(iA, IA)
    np.testing.assert_array_equal(iB, IB)
    np.testing.assert_allclose(dA, DA, rtol=1e-6, atol=1e-3)
    np.testing.assert_allclose(dB, DB, rtol=1e-6, atol=1e-3)
    # the planted copies are found at distance 0, and the pruning skipped most pairs
    for j in range(0, len(fb), 25):
        assert iB[j, 0] == j // 25 and dB[j, 0] == 0.0
    assert iA[3, 0] == 30 or dA[3, 0] == 0.0
    assert st["exact"] < st["pairs"]
    # identical to the plain both-way product (same exact kernel, same order)
    ref = knn_l2_both(lambda r: fa[r], len(fa), lambda r: fb[r], len(fb), ka, kb, a_block=64, b_block=128)
    for x, y in zip(ref, (dA, iA, dB, iB)):
        np.testing.assert_array_equal(x, y)


def test_bound_search_more_neighbours_than_rows():
    fa, fb = _sets(1, n_a=3, n_b=9, side=16)
    dA, iA, dB, iB = knn_l2_both_bound(lambda r: fa[r], 3, lambda r: fb[r], 9, 20, 5, shape=(16, 16), b_block=4)
    assert iA.shape == (3, 9) and iB.shape == (9, 3)
    np.testing.assert_array_equal(iA, _brute(fa, fb, 9)[1])
    np.testing.assert_array_equal(iB, _brute(fb, fa, 3)[1])


def test_block_projection_is_an_orthogonal_projection():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 24 * 16)).astype(np.float32)
    p = block_project(x, (24, 16), 4)
    ref = x.reshape(6, 6, 4, 4, 4).sum((2, 4)) / 4
    np.testing.assert_allclose(p, ref.reshape(6, -1), rtol=1e-5, atol=1e-5)
    # the coordinates are those of an orthonormal basis: projecting a basis image back is the identity
    back = np.repeat(np.repeat(p.reshape(6, 6, 4), 4, 1), 4, 2).reshape(6, -1) / 4
    np.testing.assert_allclose(block_project(back, (24, 16), 4), p, rtol=1e-5, atol=1e-5)
    # ||Px - Py|| <= ||x - y|| for every pair (the lower bound the search prunes with)
    d = ((x[:, None] - x[None]) ** 2).sum(2)
    dl = ((p[:, None] - p[None]) ** 2).sum(2)
    assert (dl <= d + 1e-3).all() and (dl < 0.5 * d + 1e-3).any()


def test_l2_rows_equals_l2_pairs_bitwise():
    rng = np.random.default_rng(3)
    base = rng.standard_normal((50, 1000)).astype(np.float32)
    q = rng.standard_normal((20, 1000)).astype(np.float32)
    rows = np.array([3, 0, 19, 3])
    idx = rng.integers(-1, 50, (4, 7))
    np.testing.assert_array_equal(l2_rows(base, q, rows, idx), l2_pairs(base, q[rows], idx))


@pytest.mark.parametrize("variants", [False, True])
def test_desc_knn_blocks_equal_the_single_search(monkeypatch, variants):
    from imprint.engine.membership import register

    rng = np.random.default_rng(4)
    base = rng.standard_normal((90, 6, 6)).astype(np.float32)
    base[10] = base[11][:, ::-1]                    # a mirrored duplicate: must be found with its flip
    q = base[:30] + 0.01 * rng.standard_normal((30, 6, 6)).astype(np.float32)
    if variants:
        q = np.stack([q, np.roll(q, 1, 2), np.roll(q, -1, 1)], 1)
    one = register._desc_knn(base, q, 5)
    self_one = register._desc_knn(base, base, 4, exclude_self=True)
    monkeypatch.setattr(register, "_DESC_BLOCK", 16)
    blk = register._desc_knn(base, q, 5)
    self_blk = register._desc_knn(base, base, 4, exclude_self=True)
    for a, b in zip(one + self_one, blk + self_blk):
        np.testing.assert_array_equal(a, b)
    assert (blk[0][:30, 0] == np.arange(30)).all()  # every query's own noisy copy comes first
    assert self_blk[0][11, 0] == 10 and self_blk[1][11, 0] == 1


def test_gpd_fit_rows_in_blocks_equals_one_block():
    """calibrate._gpd_fit_rows fits row blocks (bounded memory, issue 15): the same fits as one block."""
    from imprint.engine.membership import calibrate

    rng = np.random.default_rng(5)
    X = np.sort(rng.exponential(1.0, (300, 2000)), 1) + 1e-3      # 300 x 75 x 2000 float64 > 32 MB: blocked
    xi, sigma = calibrate._gpd_fit_rows(X)
    xi1, sigma1 = calibrate._gpd_fit_block(X)
    np.testing.assert_array_equal(xi, xi1)
    np.testing.assert_array_equal(sigma, sigma1)
    assert np.all(np.abs(xi) < 0.3) and np.all(np.abs(sigma - 1) < 0.3)   # exponential tails: xi ~ 0, sigma ~ 1


@pytest.mark.parametrize("b_block,ka", [(300, 1), (41, 2), (3, 5)])
def test_bound_search_one_direction_equals_brute_force(b_block, ka):
    """k_b = 0 (issue 15, scale7: the shape-mask search needs only real -> generated): the A lists equal brute
    force and the two-way search's, and fewer exact distances are computed than with k_b = 2."""
    fa, fb = _sets()
    st0: dict = {}
    st2: dict = {}
    dA, iA, dB, iB = knn_l2_both_bound(lambda r: fa[r], len(fa), lambda r: fb[r], len(fb), ka, 0,
                                       shape=(32, 32), b_block=b_block, stats=st0)
    two = knn_l2_both_bound(lambda r: fa[r], len(fa), lambda r: fb[r], len(fb), ka, 2, shape=(32, 32),
                            b_block=b_block, stats=st2)
    DA, IA = _brute(fa, fb, ka)
    np.testing.assert_array_equal(iA, IA)
    np.testing.assert_allclose(dA, DA, rtol=1e-6, atol=1e-3)
    np.testing.assert_array_equal(dA, two[0])
    np.testing.assert_array_equal(iA, two[1])
    assert dB.shape == (len(fb), 0) and iB.shape == (len(fb), 0)
    assert (dA[:12, 0] == 0).all() and (iA[:12, 0] == 25 * np.arange(12)).all()   # planted copies G[::25] = P[:12]
    # fewer exact distances one way (with blocks narrower than k every pair is computed either way)
    assert st0["exact"] < st2["exact"] or (b_block <= ka and st0["exact"] == st0["pairs"])


def test_shape_stage_bound_search_equals_faiss_and_brute_force():
    """The shape stage's bound-pruned mask search (issue 15, scale7) gives bit for bit the distances of the FAISS
    Flat search it replaces (mask values are multiples of 1/4: every float32 sum is exact) and of a float64
    brute force, with a planted copy and an exact duplicate among the real images."""
    from imprint.engine.membership import evidence as E

    rng = np.random.default_rng(6)
    P = ct_like(rng, 40, 128)
    G = ct_like(rng, 90, 128)
    G[5] = P[7]                                    # a generated copy of real 7: mask distance 0
    P[12] = P[13]                                  # duplicated real images: nearest other real at 0
    cP, scale = E._anatomy_counts(P)
    shp = E._mask_shape(P.shape[1:], cP.shape[1])
    assert shp == (256, 64)
    info: dict = {}
    a, b = E._shape_search_bound(G, cP, scale, shp, chunk=32, pchunk=16, info=info)
    mP, mG = cP * scale, E.anatomy_masks(G)
    a_old, _ = E._knn_chunked(G, mP, 1, E.anatomy_masks, 32)
    b_old, _ = E._knn_self(lambda r: mP[np.asarray(r)], len(P), 1, 16)
    np.testing.assert_array_equal(a, a_old)
    np.testing.assert_array_equal(b, b_old)
    np.testing.assert_array_equal(a[:, 0], _brute(mP, mG, 1)[0][:, 0].astype(np.float32))
    D = ((mP[:, None].astype(np.float64) - mP[None]) ** 2).sum(2)
    np.fill_diagonal(D, np.inf)
    np.testing.assert_array_equal(b[:, 0], D.min(1).astype(np.float32))
    assert a[7, 0] == 0.0 and b[12, 0] == 0.0 and b[13, 0] == 0.0 and (b[:12, 0] > 0).all()
    assert info["shape_search"]["generated"]["exact"] < info["shape_search"]["generated"]["pairs"]


@pytest.mark.parametrize("factor,region,b_block,ka,kb", [
    (4, 4, 300, 10, 2), (2, 4, 64, 7, 3), (2, 2, 41, 1, 1), (4, 8, 300, 3, 0), (8, 16, 33, 10, 2)])
def test_bound_search_residual_areas_equal_brute_force(factor, region, b_block, ka, kb):
    """The per-area residual bound (issue 15, scale9) keeps the lists exact: brute force, and bit for bit the
    one-residual bound's lists, with planted copies, an exact tie and a noisy copy; it is tighter (fewer exact
    distances than the one-residual bound at the same blocks)."""
    fa, fb = _sets()
    st: dict = {}
    st0: dict = {}
    out = knn_l2_both_bound(lambda r: fa[r], len(fa), lambda r: fb[r], len(fb), ka, kb, shape=(32, 32),
                            b_block=b_block, a_block=37, factor=factor, region=region, stats=st)
    ref = knn_l2_both_bound(lambda r: fa[r], len(fa), lambda r: fb[r], len(fb), ka, kb, shape=(32, 32),
                            b_block=b_block, factor=factor, region=0, stats=st0)
    for x, y in zip(out, ref):
        np.testing.assert_array_equal(x, y)
    dA, iA, dB, iB = out
    DA, IA = _brute(fa, fb, ka)
    np.testing.assert_array_equal(iA, IA)
    np.testing.assert_allclose(dA, DA, rtol=1e-6, atol=1e-3)
    if kb:
        np.testing.assert_array_equal(iB, _brute(fb, fa, kb)[1])
    assert (dA[:12, 0] == 0).all() and (iA[:12, 0] == 25 * np.arange(12)).all()
    assert st["exact"] <= st0["exact"]
    if factor <= 4:   # 8 x 8 blocks of a 32 x 32 image are too coarse to rule out anything: exact everywhere
        assert st["exact"] < st["pairs"]


def test_residual_area_projection_is_a_lower_bound():
    """``block_project_res``: ||u - v||^2 <= ||x - y||^2 for every pair, ||u||^2 = ||x||^2, tighter than the
    one-residual vector, and its first coordinates are :func:`block_project`'s."""
    from imprint.engine.search.pairwise import block_project_res

    rng = np.random.default_rng(7)
    x = rng.standard_normal((8, 24 * 16)).astype(np.float32)
    x[1] = x[0] + 0.01 * rng.standard_normal(x.shape[1]).astype(np.float32)
    u = block_project_res(x, (24, 16), 4, 8).astype(np.float64)
    u0 = block_project_res(x, (24, 16), 4, 0).astype(np.float64)
    assert u.shape == (8, 24 + 6) and u0.shape == (8, 25)
    np.testing.assert_allclose(u[:, :24], block_project(x, (24, 16), 4), rtol=1e-5, atol=1e-5)
    xx = x.astype(np.float64)
    np.testing.assert_allclose((u ** 2).sum(1), (xx ** 2).sum(1), rtol=1e-5)
    d = ((xx[:, None] - xx[None]) ** 2).sum(2)
    du = ((u[:, None] - u[None]) ** 2).sum(2)
    du0 = ((u0[:, None] - u0[None]) ** 2).sum(2)
    assert (du <= d + 1e-3).all() and (du >= du0 - 1e-3).all() and (du > du0 + 1e-2).any()
    with pytest.raises(ValueError):
        block_project_res(x, (24, 16), 4, 6)


def test_col_smallest_equals_sorted_columns():
    from imprint.engine.search.exact import col_smallest

    rng = np.random.default_rng(8)
    L = rng.standard_normal((300, 150)).astype(np.float32)
    for k in (1, 2, 5):
        got = np.sort(col_smallest(L, k), 1)
        ref = np.sort(np.argsort(L, 0, kind="stable")[:k].T, 1)
        np.testing.assert_array_equal(got, ref)
