"""Elastically deformed copies (issue 13, branch elas11): the opt-in piecewise-rigid registered anatomy NCC.

A generator trained with elastic (non-rigid) deformation, the standard medical-image augmentation, emits copies
whose anatomy is displaced by a smooth random field; one rigid transform cannot register them.  Copies are PLANTED
(a member deformed by a smooth field of RMS 2 px at 64 px, i.e. the zoo's 4 px at 128) among look-alikes and must
be found; :func:`anatomy.local_ncc` is checked against a brute force built with numpy's ``corrcoef``.
"""

import numpy as np
from scipy import ndimage

from imprint.engine.membership import anatomy as A
from test_membership_evidence_anatomy import family, u8


def _elastic(x, rms, rng):
    """The zoo's ``t_elastic`` at 64 px: white noise per axis smoothed with sigma 4-8 px (8-16 per 128), scaled to an
    RMS displacement length of ``rms`` px, bilinear."""
    h, w = x.shape
    sig = rng.uniform(4, 8)
    d = np.stack([ndimage.gaussian_filter(rng.standard_normal((h, w)), sig) for _ in range(2)])
    d *= rms / np.sqrt((d ** 2).sum(0).mean())
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    return ndimage.map_coordinates(x.astype(np.float64), [yy + d[0], xx + d[1]], order=1, mode="nearest")


def planted_elastic_case(seed=61, n=20):
    """``n`` members, each elastically deformed (RMS 2 px at 64 px) among 5 look-alike candidates, and ``n``
    non-members with 6 look-alikes each: (low-pass grids of the pool (members first), of the generated images (the
    copies first), candidates int [2 n, 6], n)."""
    rng = np.random.default_rng(seed)
    P = family(2 * n, seed + 1)                                # members first, then non-members
    G = family(3 * n, seed + 2)
    for i in range(n):
        G[i] = u8(_elastic(P[i], 2.0, rng) + rng.normal(0, 2, P[i].shape))
    cand = np.stack([rng.permutation(np.r_[[i] if i < n else [],
                                           rng.choice(np.arange(n, 3 * n), 6 if i >= n else 5, replace=False)])
                     for i in range(2 * n)]).astype(np.int64)
    return A._lowpass_rows(P), A._lowpass_rows(G), cand, n


def planted_elastic_rates(monkeypatch, module, flag):
    """:func:`planted_elastic_case` registered with ``module.flag`` off (rigid) and on: per setting, the share of the
    members whose copy is the best match, the share whose best NCC beats every non-member's, the true pairs' NCC and
    the non-members' best NCC."""
    lowP, lowG, cand, n = planted_elastic_case()
    out = []
    for on in (False, True):
        monkeypatch.setattr(module, flag, on)
        r = A.registered_anatomy(lowP, lowG, cand)
        true = A.registered_anatomy(lowP[:n], lowG, np.arange(n)[:, None])["ncc"]
        out.append(((r["match"][:n] == np.arange(n)).mean(), (r["ncc"][:n] > r["ncc"][n:].max()).mean(), true,
                    r["ncc"][n:]))
    return out


def _brute_local(r, b, m, tiles, s):
    """Per tile, the whole-pixel shift of ``r`` (zero fill, unshifted first, strictly better wins, half the tile
    valid) with the highest ``corrcoef`` on the tile; the assembled grid's ``corrcoef`` with ``b`` on its mask."""
    h = r.shape[0]
    th = h // tiles
    comp, cm = np.zeros_like(r), np.zeros_like(m)
    shifts = [(0, 0)] + [(dy, dx) for dy in range(-s, s + 1) for dx in range(-s, s + 1) if (dy, dx) != (0, 0)]
    for ty in range(tiles):
        for tx in range(tiles):
            sl = (slice(ty * th, (ty + 1) * th), slice(tx * th, (tx + 1) * th))
            best, pick = -np.inf, None
            for dy, dx in shifts:
                rr, vv = np.zeros_like(r), np.zeros_like(m)
                for y in range(h):
                    for x in range(h):
                        if 0 <= y - dy < h and 0 <= x - dx < h:
                            rr[y, x], vv[y, x] = r[y - dy, x - dx], m[y - dy, x - dx]
                v = vv[sl]
                if v.sum() < th * th / 2 or rr[sl][v].std() == 0 or b[sl][v].std() == 0:
                    continue
                c = np.corrcoef(rr[sl][v], b[sl][v])[0, 1]
                if c > best + 1e-6:
                    best, pick = c, (rr[sl], v)
            if pick is not None:
                comp[sl], cm[sl] = pick
    return np.corrcoef(comp[cm], b[cm])[0, 1]


def test_local_ncc_equals_a_brute_force_and_is_the_rigid_ncc_without_shifts():
    rng = np.random.default_rng(3)
    base = ndimage.gaussian_filter(rng.normal(size=(5, 20, 20)), (0, 1.5, 1.5)).astype(np.float32)
    a = base[:, 1:17, 2:18]
    b = base[:, 2:18, 1:17] + 0.01 * rng.normal(size=(5, 16, 16)).astype(np.float32)   # moved by one pixel
    m = np.ones((5, 16, 16), bool)
    m[:, :, :2] = False
    m[2, 5:9, 5:9] = False
    got = A.local_ncc(a, b, m, tiles=4, shift=1)
    want = [_brute_local(a[i], b[i], m[i], 4, 1) for i in range(5)]
    np.testing.assert_allclose(got, want, atol=1e-5)
    rigid = A._masked_ncc(a, b, m)
    assert (got > rigid + 0.05).all()                          # the one-pixel move is undone tile by tile
    np.testing.assert_allclose(A.local_ncc(a, b, m, shift=0), rigid, atol=1e-6)


def test_planted_elastic_copies_are_found_by_the_piecewise_rigid_ncc(monkeypatch):
    """20 members, each elastically deformed (RMS 2 px at 64 px) among 5 look-alike candidates, and 20 non-members
    with 6 look-alikes each: with the rigid NCC the copy is the best match of 85% of the members and a member's best
    NCC beats every non-member's for 35%; with :data:`anatomy.NCC_LOCAL` 100% and 100% (scratch seeds 0 / 1 of
    this construction: 0.85 -> 1.00 / 0.35 -> 1.00, 0.70 -> 0.95 / 0.40 -> 0.85)."""
    (hit0, above0, true0, _), (hit1, above1, true1, _) = planted_elastic_rates(monkeypatch, A, "NCC_LOCAL")
    assert above0 <= 0.5                                        # the rigid NCC misses most (what is planted)
    assert hit1 >= 0.9 and above1 >= 0.8, (hit1, above1)
    assert hit1 >= hit0 and above1 >= above0 + 0.3
    assert (true1 >= true0).all() and np.median(1 - true1) < 0.8 * np.median(1 - true0)


def test_ncc_local_rekeys_the_checkpoints(monkeypatch):
    ev, pn = A.checkpoint_tag(True, form="evidence"), A.checkpoint_tag(True, form="pairnull")
    assert "local" not in ev and "anatomy_local" not in pn["_anatomy"]      # off by default: main's keys
    monkeypatch.setattr(A, "NCC_LOCAL", True)
    assert A.checkpoint_tag(True, form="evidence") == ev + f"+local{A.LOCAL_TILES}s{A.LOCAL_SHIFT}"
    assert A.checkpoint_tag(True, form="pairnull")["_anatomy"]["anatomy_local"] == [A.LOCAL_TILES, A.LOCAL_SHIFT]
