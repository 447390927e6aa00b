"""The registration's FFT shortcuts (issue 13, judged speed case) return the same values as the full
computations they replace, bit for bit: the inverse transform on the shift window's rows only, and each target's
spectrum computed once for all its variants."""

import numpy as np
import pytest
from scipy import fft as sfft

from imprint.engine.membership import register as R


def _spec(rng, k, h, w):
    a = rng.normal(size=(k, h, w)).astype(np.float32)
    b = rng.normal(size=(k, h, w)).astype(np.float32)
    return np.conj(sfft.rfft2(a)) * sfft.rfft2(b)


@pytest.mark.parametrize("h,w", [(32, 32), (64, 64), (128, 128), (48, 40)])
def test_irfft2_rows_equals_the_full_inverse_transform_bit_for_bit(h, w):
    rng = np.random.default_rng(0)
    spec = _spec(rng, 37, h, w)                     # 37 maps: not a multiple of any SIMD width
    full = sfft.irfft2(spec, s=(h, w))
    idy = np.r_[0:6, -5:0]                           # the coarse stage's window (rows taken mod h)
    got = R._irfft2_rows(spec, h, w, idy)
    assert got.dtype == full.dtype == np.float32 and got.shape == (37, len(idy), w)
    assert np.array_equal(got, full[:, idy % h])
    rows = rng.integers(-h, 2 * h, size=(37, 7))    # per-map rows, wrapping both ways
    got = R._irfft2_rows(spec, h, w, rows)
    assert np.array_equal(got, full[np.arange(37)[:, None], rows % h])


def test_corr_near_and_xcorr_spec_equal_the_full_correlation_where_the_peak_search_reads():
    rng = np.random.default_rng(1)
    K, C, h, w = 9, 5, 64, 64
    A = R._z(rng.normal(size=(K * C, h, w)).astype(np.float32))
    B = R._z(rng.normal(size=(K, h, w)).astype(np.float32))
    full = R._xcorr(A, np.repeat(B, C, axis=0))      # the computation before: B transformed C times
    cy = rng.integers(-6, 7, K * C)
    cx = rng.integers(-6, 7, K * C)
    for radius in (1, 2):
        near = R._xcorr_spec(A, R._spectrum(B), C, cy, radius)
        rows = (cy[:, None] + np.arange(-radius - 1, radius + 2)) % h
        kk = np.arange(K * C)[:, None]
        assert np.array_equal(near[kk, rows], full[kk, rows])
        cen = np.stack([cy, cx], 1)
        for x, y in zip(R._subpixel_peak(near, cen, radius), R._subpixel_peak(full, cen, radius)):
            assert np.array_equal(x, y)


def test_window_argmax_rows_equals_the_full_map_search():
    rng = np.random.default_rng(2)
    corr = rng.normal(size=(50, 32, 32)).astype(np.float32)
    corr[3, 0, 0] = corr[3, 1, 1] = 9.0               # a tie: the first maximum in row-major window order wins
    idy = np.r_[0:6, -5:0].astype(np.int64)
    # the full-map search, in numpy: argmax over the idy x idy window of each map (row-major, first maximum)
    win = corr[:, idy % 32][:, :, idy % 32].reshape(50, -1)
    flat = win.argmax(1)
    out_full = [win[np.arange(50), flat], flat // len(idy), flat % len(idy)]
    out_rows = [np.empty(50, np.float32), np.empty(50, np.int64), np.empty(50, np.int64)]
    R._window_argmax_rows(np.ascontiguousarray(corr[:, idy % 32]), idy, *out_rows)
    for x, y in zip(out_full, out_rows):
        assert np.array_equal(x, y)
    assert out_rows[1][3] == 0 and out_rows[2][3] == 0


def test_register_pairs_finds_a_planted_transform():
    """End to end after the change: a flipped, rotated, rescaled and shifted copy is registered back."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:128, 0:128]
    img = 40 + 150 * (((yy - 64) / 50.0) ** 2 + ((xx - 60) / 38.0) ** 2 < 1)
    img = img + 60 * (((yy - 50) / 10.0) ** 2 + ((xx - 75) / 14.0) ** 2 < 1) + rng.normal(0, 4, (128, 128))
    A = np.clip(img, 0, 255).astype(np.uint8)[None]
    cp, _ = R.warp(A, [0], 1, 5.0, 1.04, 6.0, -4.0)
    B = np.clip(cp + rng.normal(0, 2, cp.shape), 0, 255).astype(np.uint8)
    r = R.register_pairs(A, B, np.array([[0, 0]]))
    assert r["flip"][0] == 1 and r["ncc"][0] > 0.95
    assert abs(r["angle"][0] - 5.0) < 1.5 and abs(r["scale"][0] - 1.04) < 0.02
    assert abs(r["dy"][0] - 6.0) < 1.0 and abs(r["dx"][0] + 4.0) < 1.0


def _downsample_numpy(images, f):
    """register.downsample before issue 15's spd11 (two numpy sums), the reference for the compiled pass."""
    x = np.asarray(images, np.float32)
    if f <= 1:
        return x.copy()
    n, h, w = x.shape
    hh, ww = h // f, w // f
    y = x[:, : hh * f, : ww * f].reshape(n * hh, f, ww * f).sum(1)
    y = y.reshape(n * hh, ww, f).sum(2)
    return (y * np.float32(1.0 / (f * f))).reshape(n, hh, ww)


def test_downsample_compiled_pass_equals_the_numpy_sums_bit_for_bit():
    """Float inputs of very different magnitudes (where the summation order shows in the last bit), uint8 images,
    odd sizes (cropped remainders), non-contiguous and read-only inputs, every factor 1..9 (8 and 9: numpy's)."""
    rng = np.random.default_rng(3)
    n_diff = 0
    for t in range(45):
        n, h, w, f = int(rng.integers(0, 6)), int(rng.integers(1, 70)), int(rng.integers(1, 70)), 1 + t % 9
        x = (rng.standard_normal((n, h, w)) * 10.0 ** rng.uniform(-3, 4, (n, 1, 1))).astype(np.float32)
        if t % 3 == 0:
            x = rng.integers(0, 256, (n, h, w)).astype(np.uint8)
        if t % 4 == 1 and w > 2:
            x = x[:, :, 1:]                          # not C-contiguous
        if t % 5 == 2:
            x = x.copy()
            x.setflags(write=False)                  # read-only, as a memory-mapped store's
        got, ref = R.downsample(x, f), _downsample_numpy(x, f)
        assert got.dtype == ref.dtype == np.float32 and got.shape == ref.shape
        assert got.tobytes() == ref.tobytes(), (n, h, w, f, x.dtype)
        # a different order (left-to-right over all f*f) would differ somewhere on these inputs: the check has teeth
        if 1 < f < 8 and x.dtype == np.float32 and ref.size:
            h, w = x.shape[1:]
            xx = np.asarray(x, np.float32)[:, : (h // f) * f, : (w // f) * f].reshape(n, h // f, f, w // f, f)
            other = (xx.transpose(0, 1, 3, 2, 4).reshape(n, h // f, w // f, f * f).sum(-1) * np.float32(1 / (f * f)))
            n_diff += int(other.tobytes() != ref.tobytes())
    assert n_diff > 0


def test_z_compiled_normalisation_equals_the_numpy_passes():
    rng = np.random.default_rng(4)
    for shape in ((40, 64, 64), (3, 128, 128), (6, 1, 1)):
        x = (rng.normal(size=shape) * 50 + 100).astype(np.float32)
        x[0] = 7.0                                      # a flat image: unit scale
        flat = x.reshape(len(x), -1)
        mu = flat.mean(1, dtype=np.float64)
        sd = np.sqrt(np.maximum(np.einsum("ij,ij->i", flat, flat, dtype=np.float64) / flat.shape[1] - mu * mu, 0))
        sd = np.where(sd > 1e-6, sd, 1.0)
        ref = (x - mu[:, None, None].astype(np.float32)) * (1.0 / sd)[:, None, None].astype(np.float32)
        got = R._z(x)
        assert got.dtype == np.float32 and np.array_equal(got, ref)


# ---- the evidence pools on threads (issue 13, branch spd8): the same outputs as one pool after the other
def _small_audit_inputs():
    from conftest import copying_generator, ct_like

    rng = np.random.default_rng(5)
    used, unused, ref = ct_like(rng, 14, 48), ct_like(rng, 14, 48), ct_like(rng, 24, 48)   # 48 px: not a power of 2
    gen = np.stack(copying_generator(rng, used, 40))
    from imprint.engine.membership import DevSet

    d_used, d_unused = ct_like(rng, 12, 48), ct_like(rng, 12, 48)
    dev_a = DevSet("a", np.stack(copying_generator(rng, d_used, 30)), d_used, d_unused)
    dev_t = DevSet("t", gen, used[:7], unused[:7])          # shares the target's generated set (memo order)
    return gen, np.concatenate([used, unused]), ref, [dev_a, dev_t]


def _outputs(res):
    out = {"score": res.score, "used": res.used, "null": res.null_scores, "nearest": res.nearest}
    out.update({f"ev_{k}": v for k, v in res.evidence.items()})
    out.update({f"cal_{k}": v for k, v in res.calibrated.items()})
    out["weights"] = np.array(list(res.info["weights"].values()))
    return out


@pytest.mark.parametrize("shares", [False, True])
def test_pools_on_threads_give_the_serial_outputs_bit_for_bit(monkeypatch, shares):
    import numba

    from imprint.engine.membership import _threads
    from imprint.engine.membership import audit as A

    monkeypatch.setattr(_threads, "SHARES", shares)

    gen, real, ref, devs = _small_audit_inputs()
    runs = {}
    orig = A._pool_threads
    for nt in (1, 2):
        monkeypatch.setattr(A, "POOL_THREADS", nt)
        taken = []
        monkeypatch.setattr(A, "_pool_threads", lambda jobs, ex: taken.append(orig(jobs, ex)) or taken[-1])
        ticks = []
        shares = []
        orig_ev = A._evidence

        def recording(g, p, **kw):       # each pool's thread share (branch spd9): Numba threads, FFT workers
            shares.append((numba.get_num_threads(), _threads.fft_workers()))
            return orig_ev(g, p, **kw)

        monkeypatch.setattr(A, "_evidence", recording)
        res = A.audit_membership(gen, real, dev_sets=devs, reference=ref, progress=ticks.append)
        monkeypatch.setattr(A, "_evidence", orig_ev)
        assert taken == [nt] and len(ticks) >= 3 * 4        # every pool ticked through the caller's callback
        if nt == 1 or not _threads.SHARES:
            assert shares == [(numba.get_num_threads(), -1)] * 3
        else:       # two pools side by side share the threads; a pool alone at the end may take them all
            assert len(shares) == 3 and all(f == n and n <= max(1, numba.get_num_threads() // 2) for n, f in shares[:2])
        runs[nt] = _outputs(res)
    assert runs[1].keys() == runs[2].keys()
    for k in runs[1]:
        assert np.array_equal(runs[1][k], runs[2][k], equal_nan=True), k
    assert runs[2]["used"][:14].sum() > runs[2]["used"][14:].sum()   # it is an audit that finds the copies


def test_pool_threads_stop_on_an_error_in_one_pool(monkeypatch):
    from imprint.engine.errors import ImprintError
    from imprint.engine.membership import audit as A

    gen, real, ref, devs = _small_audit_inputs()
    monkeypatch.setattr(A, "POOL_THREADS", 2)
    calls = []
    orig = A._evidence

    def failing(g, p, **kw):
        calls.append(len(p))
        if len(calls) == 2:
            raise ImprintError("planted failure")
        return orig(g, p, **kw)

    monkeypatch.setattr(A, "_evidence", failing)
    with pytest.raises(ImprintError, match="planted failure"):
        A.audit_membership(gen, real, dev_sets=devs, reference=ref)



def test_shortlists_memo_returns_the_computed_lists_and_skips_the_searches(monkeypatch):
    from conftest import ct_like

    from imprint.engine.membership.common import _hashes

    rng = np.random.default_rng(9)
    G, P = ct_like(rng, 30, 40), ct_like(rng, 21, 40)          # odd counts, 40 px
    iG = rng.integers(0, 30, size=(21, 5))
    iR = np.stack([(np.arange(21) + s) % 21 for s in (1, 2, 3, 4, 5)], 1)
    fresh = R.shortlists(G, P, iG, iR)                          # no memo: the full computation
    cache = {}
    kw = dict(keys_gen=_hashes(G), keys_pool=_hashes(P), cache=cache)
    first = R.shortlists(G, P, iG, iR, **kw)
    calls = []
    orig = R._desc_knn
    monkeypatch.setattr(R, "_desc_knn", lambda *a, **k: calls.append(1) or orig(*a, **k))
    second = R.shortlists(G, P, iG, iR, **kw)
    assert calls == []                                          # the searches were not repeated
    for x, y, z in zip(fresh, first, second):
        assert np.array_equal(x, y) and np.array_equal(x, z)
    second[0][:] = -7                                           # a caller's edit does not reach the memo
    assert np.array_equal(R.shortlists(G, P, iG, iR, **kw)[0], fresh[0])
    other = R.shortlists(G, P, iG[:, ::-1].copy(), iR, **kw)    # other pixel neighbours: computed, not the memo
    assert calls and np.array_equal(other[0], R.shortlists(G, P, iG[:, ::-1].copy(), iR)[0])


# ---- branch spd9: the pools' thread shares and polish_lo's shared variants
def test_pool_share_divides_the_threads_between_running_pools_and_restores_them(monkeypatch):
    import threading

    import numba

    from imprint.engine.membership import _threads

    monkeypatch.setattr(_threads, "SHARES", True)

    total = numba.get_num_threads()
    if total < 2:
        pytest.skip("needs 2 Numba threads")
    inside, one_left, seen = threading.Barrier(2), threading.Event(), {}

    _threads.start_pools(2, 2, total)

    def pool(name):
        with _threads.pool_share():
            inside.wait(timeout=30)                  # both pools running: half each
            seen[name, "both"] = (numba.get_num_threads(), _threads.fft_workers())
            inside.wait(timeout=30)
            if name == "b":
                one_left.wait(timeout=30)
                _threads.rebalance()                 # pool a has finished: b takes the threads back
                seen[name, "alone"] = (numba.get_num_threads(), _threads.fft_workers())
        seen[name, "after"] = (numba.get_num_threads(), _threads.fft_workers())
        if name == "a":
            one_left.set()

    ts = [threading.Thread(target=pool, args=(n,)) for n in "ab"]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=60)
    half = total // 2
    assert seen["a", "both"] == (half, half) and seen["b", "both"] == (half, half)
    assert seen["b", "alone"] == (total, total)
    assert seen["a", "after"] == (total, -1) and seen["b", "after"] == (total, -1)
    _threads.rebalance()                             # outside a pool: nothing changes
    assert (numba.get_num_threads(), _threads.fft_workers()) == (total, -1)


def test_polish_lo_computes_shared_variants_once_with_the_per_pair_values(monkeypatch):
    from conftest import ct_like

    rng = np.random.default_rng(3)
    A_, B_ = ct_like(rng, 4, 64), ct_like(rng, 9, 64)
    pairs = np.stack([rng.integers(0, 4, 18), np.arange(18) % 9], 1)       # 4 generated images, 18 pairs
    co = R.coarse_scores(A_, B_, pairs)
    rows = []
    orig = R.warp
    monkeypatch.setattr(R, "warp", lambda im, r, *a, **k: rows.append(len(np.atleast_1d(r))) or orig(im, r, *a, **k))
    got = R.polish_lo(A_, B_, pairs, co)
    assert sum(rows) < 2 * len(pairs) * 5 * R._LO_ROUNDS       # fewer warps than pairs x starts x variants
    monkeypatch.setattr(R, "warp", orig)
    one = [R.polish_lo(A_, B_, pairs[i:i + 1], {k: np.asarray(v)[i:i + 1] for k, v in co.items()})
           for i in range(len(pairs))]                           # pair by pair: no variant shared
    for k in got:
        assert np.array_equal(got[k], np.concatenate([o[k] for o in one])), k


# ---- branch spd10: refine / polish_lo compute every target image once per chunk and keep the centre variant
def _ref_polish_lo(A, B, pairs, co, rounds):
    """polish_lo before spd10 (main 2026-11-30, da2c3d6), one chunk: per-pair target spectra, every variant of
    every round warped (distinct ones once), the reference for the values."""
    from scipy import fft as sfft

    h, w = A.shape[1:]
    f = max(1, min(h, w) // R._LO_SIDE)
    n = len(pairs)
    c = {k: np.asarray(v, np.float64) for k, v in co.items()}
    fl = np.r_[c["flip"], 1 - c["flip"]].astype(np.int64)
    ang, sc = np.r_[c["angle"], c["angle_alt"]], np.r_[c["scale"], c["scale_alt"]]
    dy, dx = np.r_[c["dy"], c["dy_alt"]] / f, np.r_[c["dx"], c["dx_alt"]] / f
    val = np.r_[c["coarse"], c["coarse_alt"]]
    ia, inv_a = np.unique(pairs[:, 0], return_inverse=True)
    Al = R.downsample(A[ia], f)
    Bl = R._z(R.downsample(B[pairs[:, 1]], f))
    ia2 = np.r_[inv_a, inv_a]
    hl, wl = Bl.shape[1:]
    fb = sfft.rfft2(Bl)
    S = 2 * n
    da, ds = 4.0, 0.04
    for _ in range(rounds):
        offs = [(0.0, 0.0), (-da, 0.0), (da, 0.0), (0.0, -ds), (0.0, ds)]
        C = len(offs)
        aa = np.repeat(ang, C) + np.tile([o[0] for o in offs], S)
        ss = np.repeat(sc, C) + np.tile([o[1] for o in offs], S)
        var, _ = R.warp(Al, np.repeat(ia2, C), np.repeat(fl, C), aa, ss)
        fa = sfft.rfft2(R._z(var)).reshape(2, n, C, hl, -1)
        cen = np.stack([np.round(np.repeat(dy, C)), np.round(np.repeat(dx, C))], 1).astype(np.int64)
        v, py, px = R._subpixel_peak(R._corr_near(np.conj(fa) * fb[None, :, None], hl, wl, cen[:, 0], 1), cen, 1)
        v = v.reshape(S, C)
        b = v.argmax(1)
        sel = np.arange(S) * C + b
        ang, sc, dy, dx, val = aa[sel], ss[sel], py[sel], px[sel], v[np.arange(S), b]
        da, ds = da / 2, ds / 2
    k = np.arange(n) + np.where(val[n:] > val[:n], 1, 0) * n
    return {"coarse": val[k], "flip": fl[k], "angle": ang[k], "scale": sc[k], "dy": dy[k] * f, "dx": dx[k] * f}


def _ref_refine_chunk(A, B, pairs, co):
    """register._refine_chunk before spd10 (main da2c3d6): per-pair target levels and spectra, all 5 variants of
    every mid-level round warped and transformed."""
    h, w = A.shape[1:]
    K = len(pairs)
    flip = co["flip"].astype(np.int64)
    ang, sc = co["angle"].astype(np.float64), co["scale"].astype(np.float64)
    dy, dx = co["dy"].astype(np.float64), co["dx"].astype(np.float64)
    fm = max(1, min(h, w) // (2 * R._LO_SIDE))
    ia, inv_a = np.unique(pairs[:, 0], return_inverse=True)
    Am = R.downsample(A[ia], fm)
    fbm = R._spectrum(R._z(R.downsample(B[pairs[:, 1]], fm)))
    da, ds = 4.0, 0.04
    for _ in range(R._MID_ROUNDS):
        offs = [(0.0, 0.0), (-da, 0.0), (da, 0.0), (0.0, -ds), (0.0, ds)]
        C = len(offs)
        aa = np.repeat(ang, C) + np.tile([o[0] for o in offs], K)
        ss = np.repeat(sc, C) + np.tile([o[1] for o in offs], K)
        var, _ = R.warp(Am, np.repeat(inv_a, C), np.repeat(flip, C), aa, ss)
        cen = np.stack([np.round(np.repeat(dy, C) / fm), np.round(np.repeat(dx, C) / fm)], 1).astype(np.int64)
        val, py, px = R._subpixel_peak(R._xcorr_spec(R._z(var), fbm, C, cen[:, 0], 2), cen, 2)
        b = val.reshape(K, C).argmax(1)
        sel = np.arange(K) * C + b
        ang, sc = aa[sel], ss[sel]
        dy, dx = py[sel] * float(fm), px[sel] * float(fm)
        da, ds = da / 2, ds / 2
    Bf = np.asarray(B[pairs[:, 1]], np.float32)
    var, _ = R.warp(A, pairs[:, 0], flip, ang, sc)
    cen = np.stack([np.round(dy), np.round(dx)], 1).astype(np.int64)
    _, dy, dx = R._subpixel_peak(R._xcorr_spec(R._z(var), R._spectrum(R._z(Bf)), 1, cen[:, 0], max(2, fm)), cen,
                                 max(2, fm))
    reg, valid = R.warp(A, pairs[:, 0], flip, ang, sc, dy, dx)
    ncc, gain = R._masked_ncc(reg, Bf, valid)
    f = max(1, min(h, w) // R._LO_SIDE)
    ncc_lo, _ = R._masked_ncc(R.downsample(reg, f), R.downsample(Bf, f),
                              R.downsample(valid.astype(np.float32), f) > 0.999)
    f2 = max(1, min(h, w) // (R._LO_SIDE // 2))
    ncc_lp, _ = R._masked_ncc(R.downsample(reg, f2), R.downsample(Bf, f2),
                              R.downsample(valid.astype(np.float32), f2) > 0.999)
    return {"coarse": co["coarse"], "ncc": ncc, "ncc_lo": ncc_lo, "ncc_lp": ncc_lp, "flip": flip,
            "angle": ang, "scale": sc, "dy": dy, "dx": dx, "gain": gain}


def _shared_pairs(rng, side):
    """Real images A and targets B whose pairs share targets (5 targets for 24 pairs) and real images (4), as a
    pool's candidates do, with a planted transformed copy so that the registration has something to find."""
    from conftest import ct_like

    A_ = ct_like(rng, 4, side)
    cp, _ = R.warp(A_, [2], 1, 6.0, 1.05, 5.0, -3.0)
    B_ = np.concatenate([ct_like(rng, 4, side), np.clip(cp + rng.normal(0, 2, cp.shape), 0, 255).astype(np.uint8)])
    pairs = np.stack([np.arange(24) % 4, rng.integers(0, 5, 24)], 1)
    pairs[:4] = [[2, 4], [2, 4], [0, 4], [2, 1]]          # the copy's pair, repeated; another image on the copy
    return A_, B_, pairs


def _count_variant_spectra(monkeypatch) -> list:
    """Record how many variants every call of register._variant_spectra computes (its ``keep`` rows)."""
    seen = []
    orig = R._variant_spectra

    def rec(X, inv, flip, aa, ss, keep=None):
        seen.append(len(aa) if keep is None else int(np.sum(keep)))
        return orig(X, inv, flip, aa, ss, keep)

    monkeypatch.setattr(R, "_variant_spectra", rec)
    return seen


def test_polish_lo_equals_the_per_pair_computation_before_spd10(monkeypatch):
    rng = np.random.default_rng(11)
    A_, B_, pairs = _shared_pairs(rng, 128)
    co = R.coarse_scores(A_, B_, pairs)
    spectra = _count_variant_spectra(monkeypatch)
    got = R.polish_lo(A_, B_, pairs, co)
    ref = _ref_polish_lo(A_, B_, pairs, co, R._LO_ROUNDS)
    assert set(got) == set(ref)
    for k in ref:
        assert np.array_equal(got[k], ref[k]), k
    S = 2 * len(pairs)
    assert spectra == [S * 5] + [S * 4] * (R._LO_ROUNDS - 1)      # the centre of later rounds is kept, not redone
    assert got["flip"][0] == 1 and got["coarse"][0] > 0.9           # the planted copy is registered
    # the same on the anatomy's 32 x 32 float grids (f = 1)
    lowA, lowB = R.lowpass_grid(A_), R.lowpass_grid(B_)
    co = R.coarse_scores(lowA, lowB, pairs)
    got, ref = R.polish_lo(lowA, lowB, pairs, co), _ref_polish_lo(lowA, lowB, pairs, co, R._LO_ROUNDS)
    for k in ref:
        assert np.array_equal(got[k], ref[k]), k


def test_refine_equals_the_per_pair_computation_before_spd10(monkeypatch):
    rng = np.random.default_rng(12)
    A_, B_, pairs = _shared_pairs(rng, 128)
    co = R.polish_lo(A_, B_, pairs, R.coarse_scores(A_, B_, pairs))
    spectra = _count_variant_spectra(monkeypatch)
    got = R.refine(A_, B_, pairs, co, chunk=10)                     # 3 chunks, the last one short
    ref = {k: [] for k in R._KEYS}
    for s in range(0, len(pairs), 10):
        part = _ref_refine_chunk(A_, B_, pairs[s:s + 10], {k: np.asarray(v)[s:s + 10] for k, v in co.items()})
        for k in R._KEYS:
            ref[k].append(np.asarray(part[k]))
    for k in R._KEYS:
        assert np.array_equal(got[k], np.concatenate(ref[k]).astype(got[k].dtype)), k
    # the mid-level centre of rounds 2.. is the previous pick, kept: 5 then 4 variants per pair and round
    assert spectra == [n * c for n in (10, 10, 4) for c in [5] + [4] * (R._MID_ROUNDS - 1)]
    assert got["flip"][0] == 1 and got["ncc"][0] > 0.95 and abs(got["angle"][0] - 6.0) < 1.5
