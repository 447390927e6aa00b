"""Issue 15 (scale10): the real-to-real pair null's cost on large real folders, and refine's chunk from the budget.

- :func:`calibrate._knn_rows` (the neighbour lists of some rows of a set among its other rows) against brute force;
- with ``max_images`` below the folder size, the per-image searches run for the sampled images only
  (``calibrate.QUERY_ONLY``) and give the null of the all-rows search (a planted series is still left out);
- the audit's anatomy-only call (``base=False``) reuses the registered call's pixel lists and gives the same values;
- ``register.refine``'s chunk follows the memory budget and the registration's values do not depend on it.
"""

import numpy as np
import pytest

from conftest import ct_like
from imprint.engine.membership import calibrate
from imprint.engine.membership import register as reg
from imprint.engine.membership.calibrate import PAIR_FEATURES, _knn_rows, real_pair_null
from imprint.engine.membership.evidence import _zrows, memory_budget


def _brute(F, rows, k):
    D = ((F[rows, None, :].astype(np.float64) - F[None, :, :]) ** 2).sum(-1)
    D[np.arange(len(rows)), rows] = np.inf                 # never the row itself
    o = np.argsort(D, 1, kind="stable")[:, :k]
    return np.take_along_axis(D, o, 1), o


@pytest.mark.parametrize("block", [7, 16, 200])
def test_knn_rows_matches_brute_force(block):
    rng = np.random.default_rng(1)
    F = rng.normal(size=(70, 12)).astype(np.float32)
    rows = np.sort(rng.choice(70, 23, replace=False))
    d, i = _knn_rows(lambda r: F[np.asarray(r)], 70, rows, 6, block)
    bd, bi = _brute(F, rows, 6)
    np.testing.assert_array_equal(i, bi)
    np.testing.assert_allclose(d, bd, rtol=1e-4, atol=1e-4)
    assert not (i == rows[:, None]).any()


def _folder(n=40, size=32, seed=3):
    rng = np.random.default_rng(seed)
    real = ct_like(rng, n, size)
    for j in (1, 2):                                       # a planted series: two near-identical slices of image 0
        real[j] = np.clip(real[0].astype(np.int16) + rng.integers(-2, 3, real[0].shape), 0, 255).astype(np.uint8)
    return real


def test_subset_queries_give_the_all_rows_null(monkeypatch):
    """``max_images`` < R: the sampled images' lists searched alone (QUERY_ONLY) equal the all-rows search's."""
    real = _folder()
    kw = dict(splits=(0.25, 0.75), repeats=2, random_state=2, max_images=15, k=8)
    calls = []
    orig = calibrate._knn_rows
    monkeypatch.setattr(calibrate, "_knn_rows", lambda *a, **k: calls.append(len(a[2])) or orig(*a, **k))
    new = real_pair_null(real, 80, **kw)
    assert calls and all(c == 15 for c in calls)          # only the 15 sampled images were searched
    assert new["_groups"][1] == new["_groups"][0] == new["_groups"][2]   # the series was found ...
    monkeypatch.setattr(calibrate, "QUERY_ONLY", False)
    old = real_pair_null(real, 80, **kw)
    np.testing.assert_array_equal(new["_images"], old["_images"])
    assert len(np.unique(new["_images"])) == 15
    for n in PAIR_FEATURES:
        assert np.isfinite(new[n]).all()
        np.testing.assert_allclose(new[n], old[n], rtol=1e-6, atol=1e-9, err_msg=n)
        assert new["_theta"][n] == pytest.approx(old["_theta"][n], rel=1e-6, abs=1e-12)


def test_series_left_out_of_subset_lists():
    """... and left out of the sampled images' lists: image 0's pixel ratio is that of other patients."""
    real = _folder()
    d, i = _knn_rows(_zrows(real), len(real), np.array([0]), 5, 16)
    assert set(i[0, :2].tolist()) == {1, 2}                # its own series is nearest
    groups = np.zeros(len(real), np.int64)
    groups[3:] = np.arange(1, len(real) - 2)
    dd, ii = calibrate._without_own_series(d, i, groups, 3, rows=np.array([0]))
    assert not np.isin(ii, [0, 1, 2]).any() and np.all(np.diff(dd[0]) >= 0)


def test_anatomy_call_reuses_the_pixel_lists(monkeypatch):
    """The audit's second call (anatomy only, ``base=False``) searches no pixel lists (memoised from the first
    call) and gives the anatomy values of a full call."""
    real = _folder(n=24, size=48, seed=4)
    kw = dict(splits=(0.25, 0.75), repeats=1, random_state=5, max_images=14, k=8, anatomy_register=True,
              anatomy_lowpass=False)
    cache = {}
    first = real_pair_null(real, 50, cache=cache, register=False, anatomy=True, **kw)
    assert len(cache["pair_null_pixel_knn"]) == 1
    searched = []
    with monkeypatch.context() as m:
        m.setattr(calibrate, "_knn_rows", lambda *a, **k: searched.append(1))
        second = real_pair_null(real, 50, cache=cache, anatomy=True, base=False, **kw)
    assert not searched
    assert set(second) >= {"anat_ratio", "_images"} and not set(PAIR_FEATURES) & set(second)
    np.testing.assert_array_equal(second["_images"], first["_images"])
    assert np.isfinite(first["anat_ratio"]).all()
    np.testing.assert_array_equal(second["anat_ratio"], first["anat_ratio"])
    fresh = real_pair_null(real, 50, cache={}, anatomy=True, base=False, **kw)
    np.testing.assert_array_equal(fresh["anat_ratio"], first["anat_ratio"])


def test_refine_chunk_follows_the_budget_and_values_do_not_depend_on_it(monkeypatch):
    hw = 128 * 128
    with memory_budget(2 * 2**30):
        assert reg.refine_chunk(hw) == (2 * 2**30 // 8) // (reg._REFINE_BYTES_PER_PX * hw)
    with memory_budget(64 * 2**20):
        small = reg.refine_chunk(hw)
    with memory_budget(64 * 2**30):
        large = reg.refine_chunk(hw)
    assert small == 16 and large == reg._REFINE_CHUNK
    rng = np.random.default_rng(7)
    real = ct_like(rng, 12, 32)
    cand = np.stack([np.roll(np.arange(12), -s) for s in (1, 2, 3)], 1)
    cflip = np.zeros_like(cand)
    chunks = []
    orig = reg.refine
    monkeypatch.setattr(reg, "refine", lambda *a, **k: chunks.append(k.get("chunk")) or orig(*a, **k))
    monkeypatch.setattr(reg, "_REFINE_BYTES_PER_PX", 40 * 1024)  # so that a small budget gives chunks of 16 pairs
    out = {}
    for b in (2**20, 2**40):
        with memory_budget(b):
            out[b] = reg._best_registered(real, real, cand, cflip, n_refine=2)
    assert chunks[0] == 16 and chunks[-1] == reg._REFINE_CHUNK
    for k in out[2**20][1]:
        np.testing.assert_array_equal(np.asarray(out[2**20][1][k]), np.asarray(out[2**40][1][k]), err_msg=k)
    np.testing.assert_array_equal(out[2**20][0], out[2**40][0])


def test_pair_null_anatomy_polish_in_budget_blocks(monkeypatch):
    """Issue 15 (mem11): the pair null's anatomy splits (:func:`anatomy.anatomy_pair_values_splits`) polish, warp
    and NCC the pairs they need in blocks of :func:`anatomy.polish_block` pairs, sized from the memory budget (at
    10k real images all ~100k pairs at once were the run's peak); a tiny and a huge budget give the same values bit
    for bit, and the tiny one really runs several blocks."""
    from imprint.engine.membership import anatomy

    hw = 32 * 32
    with memory_budget(2 * 2**30):
        assert anatomy.polish_block(hw) == (2 * 2**30 // 8) // (anatomy._POLISH_BYTES_PER_PX * hw)
    with memory_budget(2**20):
        assert anatomy.polish_block(hw) == 64
    with memory_budget(2**40):
        assert anatomy.polish_block(hw) == anatomy.POLISH_BLOCK
    real = _folder(n=60, size=48, seed=6)
    rng = np.random.default_rng(8)
    inAs = [rng.random(60) < p for p in (0.25, 0.5, 0.75)]
    cand = np.stack([rng.permutation(np.delete(np.arange(60), i))[:10] for i in range(60)])
    only = np.zeros(60, bool)
    only[rng.choice(60, 40, replace=False)] = True
    sizes, coarse = [], []
    orig, orig_co = reg.polish_lo, reg.coarse_scores
    monkeypatch.setattr(reg, "polish_lo", lambda A, B, pairs, *a, **k: sizes.append(len(pairs)) or orig(A, B, pairs,
                                                                                                         *a, **k))
    monkeypatch.setattr(reg, "coarse_scores", lambda A, B, pairs, **k: coarse.append(len(pairs)) or orig_co(A, B, pairs,
                                                                                                           **k))
    out = {}
    for b in (2**20, 2**40):
        sizes.clear()
        coarse.clear()
        with memory_budget(b):
            out[b] = anatomy.anatomy_pair_values_splits(real, inAs, cand, only=only, a_only=2)
        out[b, "sizes"], out[b, "coarse"] = list(sizes), list(coarse)
    small, large = out[2**20, "sizes"], out[2**40, "sizes"]
    assert len(large) == 1 and large[0] > 64                  # one block under a large budget ...
    assert len(small) > 1 and max(small) == 64 and sum(small) == large[0]   # ... blocks of 64 under a tiny one
    # the coarse search too: one call, or blocks of 8 chunks of 16 pairs
    assert len(out[2**40, "coarse"]) == 1 and out[2**40, "coarse"][0] == 40 * 10
    assert len(out[2**20, "coarse"]) > 1 and max(out[2**20, "coarse"]) == 128 and sum(out[2**20, "coarse"]) == 400
    for a, b in zip(out[2**20], out[2**40]):
        assert np.isfinite(a[only]).all() and np.isnan(a[~only]).all()
        np.testing.assert_array_equal(a, b)


def test_flip_by_descriptor_in_budget_blocks(monkeypatch):
    """Issue 15 (mem11): the shortlists' flip test (:func:`register._flip_by_descriptor`) runs in blocks of query
    rows sized from the budget; a planted mirrored candidate is called flipped and its unmirrored twin not, and a
    1-row block (tiny budget) gives the one-block values."""
    rng = np.random.default_rng(9)
    real = ct_like(rng, 30, 64)
    d = reg.shortlist_descriptors(np.concatenate([real, real[:, :, ::-1]]))   # rows 30..59: the mirrored images
    cand = np.stack([rng.permutation(np.r_[i, 30 + i, rng.choice(np.delete(np.arange(60), [i, 30 + i]), 6)])
                     for i in range(30)])
    cand[::4, -1] = -1
    blocks = []
    orig = reg._flip_rows
    monkeypatch.setattr(reg, "_flip_rows", lambda q, *a: blocks.append(len(q)) or orig(q, *a))
    with memory_budget(2**40):
        big = reg._flip_by_descriptor(d[:30], d, cand)
    assert blocks == [30]
    with memory_budget(2**10):                                # one query row per block
        small = reg._flip_by_descriptor(d[:30], d, cand)
    assert blocks[1:] == [1] * 30
    np.testing.assert_array_equal(small, big)
    assert (big[cand == np.arange(30)[:, None] + 30] == 1).all()   # the mirrored twin: flipped
    assert (big[cand == np.arange(30)[:, None]] == 0).all()        # the image itself: not


def test_registered_anatomy_coarse_search_in_budget_blocks(monkeypatch):
    """Issue 15 (lead, after mem11): the anatomy evidence's registered shortlist (:func:`anatomy.registered_anatomy`)
    runs its coarse search in budget-sized blocks, as the pair null's splits do (at 10k real x 100k generated its one
    call was the run's 4.0 GB peak); a tiny and a huge budget give the same values bit for bit, memoised or not, and
    the tiny one really runs several blocks."""
    from imprint.engine.membership import anatomy

    real = _folder(n=70, size=48, seed=12)
    low = anatomy._lowpass_rows(real)
    rng = np.random.default_rng(13)
    cand = np.stack([rng.permutation(np.delete(np.arange(70), i))[:6] for i in range(40)])   # 240 pairs
    keys = [f"k{i}" for i in range(70)]
    calls = []
    orig = reg.coarse_scores
    monkeypatch.setattr(reg, "coarse_scores", lambda A, B, pairs, **k: calls.append(len(pairs)) or orig(A, B, pairs,
                                                                                                         **k))
    out = {}
    for b in (2**20, 2**40):
        for memo in (False, True):
            calls.clear()
            kw = dict(keys_a=keys[:40], keys_b=keys, cache={}) if memo else {}
            with memory_budget(b):
                out[b, memo] = anatomy.registered_anatomy(low[:40], low, cand, exclude=np.arange(40), **kw)
            out[b, memo, "calls"] = list(calls)
    assert out[2**40, False, "calls"] == [240]                                  # one call under a large budget
    assert len(out[2**20, False, "calls"]) > 1 and sum(out[2**20, False, "calls"]) == 240   # blocks under a tiny one
    ref = out[2**40, False]
    assert (ref["match"] >= 0).all() and np.isfinite(ref["ncc"]).all()
    for key in [(2**20, False), (2**20, True), (2**40, True)]:
        for k in ref:
            np.testing.assert_array_equal(out[key][k], ref[k], err_msg=f"{key} {k}")
