"""Partial copies (issue 13, branch patch12): the opt-in tile-wise registered anatomy NCC (engine/membership/tiles.py).

A generator that stitches parts of training images emits a member's upper / left half or more on another image, the
part possibly moved.  Copies are PLANTED (the upper or left 50-70% of a member, flipped half the time and shifted by
3-5 px, pasted onto a donor) among look-alike candidates and must be found; :func:`tiles.tile_ncc` is checked against
a brute force built with numpy's ``corrcoef``.
"""

import numpy as np
from scipy import ndimage

from imprint.engine.membership import anatomy as A
from imprint.engine.membership import tiles as T
from test_membership_evidence_anatomy import lookalike, u8


def _brute_tile_ncc(r, b, m, tiles, s, share, min_std):
    """Per tile, every whole-pixel shift of the window of ``b`` (unshifted first, strictly better wins; half the tile
    compared; both sides' std >= min_std) scored by ``corrcoef``; the best ``share`` of the tiles pooled."""
    h, w = r.shape
    th, tw = h // tiles, w // tiles
    shifts = [(0, 0)] + [(dy, dx) for dy in range(-s, s + 1) for dx in range(-s, s + 1) if (dy, dx) != (0, 0)]
    found = []                                           # (ncc, tile index, a values, b values)
    for ty in range(tiles):
        for tx in range(tiles):
            best = None
            for dy, dx in shifts:
                av, bv = [], []
                for y in range(ty * th, (ty + 1) * th):
                    for x in range(tx * tw, (tx + 1) * tw):
                        if m[y, x] and 0 <= y + dy < h and 0 <= x + dx < w:
                            av.append(r[y, x])
                            bv.append(b[y + dy, x + dx])
                av, bv = np.array(av, np.float64), np.array(bv, np.float64)
                if len(av) < th * tw / 2 or av.std() < min_std or bv.std() < min_std:
                    continue
                c = np.corrcoef(av, bv)[0, 1]
                if best is None or c > best[0] + 1e-9:
                    best = (c, ty * tiles + tx, av, bv)
            if best is not None:
                found.append(best)
    if not found:
        return 0.0
    found.sort(key=lambda t: (-t[0], t[1]))
    kept = found[:int(np.ceil(share * tiles * tiles))]
    return np.corrcoef(np.concatenate([k[2] for k in kept]), np.concatenate([k[3] for k in kept]))[0, 1]


def test_tile_ncc_equals_a_brute_force():
    rng = np.random.default_rng(5)
    base = ndimage.gaussian_filter(rng.normal(size=(4, 22, 22)), (0, 1.5, 1.5)) * 40
    a = base[:, 2:18, 3:19].copy()
    b = base[:, 3:19, 2:18] + 0.5 * rng.normal(size=(4, 16, 16))       # moved by one pixel, noisy
    b[1, 8:, :] = rng.normal(size=(8, 16)) * 20                         # pair 1: the lower half is foreign
    a[2, :, 8:] = 3.0                                                   # pair 2: flat tiles (never selected)
    m = np.ones((4, 16, 16), bool)
    m[:, :, :1] = False
    m[3, 4:9, 5:10] = False
    for share in (0.5, 0.25):
        got = T.tile_ncc(a, b, m, tiles=4, shift=1, share=share, min_std=1.0)
        want = [_brute_tile_ncc(a[i], b[i], m[i], 4, 1, share, 1.0) for i in range(4)]
        np.testing.assert_allclose(got, want, atol=1e-9)
    rigid = A._masked_ncc(a, b, m)
    assert (T.tile_ncc(a, b, m, tiles=4, shift=1) > rigid + 0.05).all()  # the move and the foreign half undone
    # one tile per shift: the tile search's best shift undoes a known one-pixel move
    best, pick = T.tile_search(a[:1], b[:1], m[:1], tiles=4, shift=1)
    offs = T._offsets(1)
    assert np.isfinite(best).all() and all(offs[p] == (-1, 1) for p in pick[0].ravel())


def _organ(rng, h=64):
    """A look-alike slice (same body and lungs) with its own smooth structure at the low-pass scale (organs,
    vessels): a Gaussian random field (sigma 3 px at 64 px) of 50 grey levels inside the body."""
    x = lookalike(rng, h).astype(np.float64)
    f = ndimage.gaussian_filter(rng.normal(size=(h, h)), 3.0)
    return u8(x + 50 * f / f.std() * (x > 20))


def _moved_half(x, donor, rng):
    """The upper or left 50-70% of ``x``, flipped half the time and shifted by 3-5 px per axis, on ``donor``."""
    y = x.astype(np.float64)
    if rng.random() < 0.5:
        y = y[:, ::-1]
    y = ndimage.shift(y, rng.uniform(3, 5, 2) * rng.choice([-1, 1], 2), order=1, mode="nearest")
    d = donor.astype(np.float64).copy()
    k = int(round(rng.uniform(0.5, 0.7) * x.shape[0]))
    if rng.random() < 0.5:
        d[:k] = y[:k]
    else:
        d[:, :k] = y[:, :k]
    return d


def _scores(monkeypatch, on, lowP, lowG, cand, y):
    """(copy = best match share, members above every non-member share, AUC, the true pairs' NCC) with the flag."""
    from sklearn.metrics import roc_auc_score

    monkeypatch.setattr(T, "NCC_TILES", on)
    n = int(y.sum())
    ncc, match = (A.registered_anatomy(lowP, lowG, cand)[k] for k in ("ncc", "match"))
    true = A.registered_anatomy(lowP[:n], lowG, np.arange(n)[:, None])["ncc"]
    return (match[:n] == np.arange(n)).mean(), (ncc[:n] > ncc[n:].max()).mean(), roc_auc_score(y, ncc), true


def test_planted_moved_partial_copies_are_found_by_the_tile_ncc(monkeypatch):
    """20 members, each a moved partial copy among 5 look-alike candidates, and 20 non-members with 6 look-alikes:
    with the rigid registered NCC the copy is the best match of 45% of the members and a member's best NCC beats
    every non-member's for 25%, AUC 0.81; with :data:`tiles.NCC_TILES` 80%, 55%, AUC 0.89 (scratch seeds 1 / 2 of
    this construction, 100 + seed for the pools: 0.45 -> 0.75 / 0.05 -> 0.35 / 0.75 -> 0.84 and
    0.35 -> 0.45 / 0.05 -> 0.25 / 0.57 -> 0.65).  The look-alikes gain too (median 1 - NCC of the non-members' best
    0.084 -> 0.018), so what is asserted is that the members gain more: the share above every non-member rises."""
    rng = np.random.default_rng(0)
    n = 20
    pools = [np.random.default_rng(s) for s in (100, 200, 300)]
    P = np.stack([_organ(pools[0]) for _ in range(2 * n)])          # members first, then non-members
    G = np.stack([_organ(pools[1]) for _ in range(3 * n)])
    D = np.stack([_organ(pools[2]) for _ in range(n)])              # donors of the foreign part
    G[:n] = [u8(_moved_half(P[i], D[i], rng) + rng.normal(0, 2, P[i].shape)) for i in range(n)]
    # member i: its copy G[i] and 5 look-alikes; a non-member: 6 look-alikes (all from G[n:])
    cand = np.stack([rng.permutation(np.r_[[i] if i < n else [], rng.choice(np.arange(n, 3 * n), 5 + (i >= n),
                                                                            replace=False)])
                     for i in range(2 * n)]).astype(np.int64)
    y = np.r_[np.ones(n), np.zeros(n)]
    out = {on: _scores(monkeypatch, on, A._lowpass_rows(P), A._lowpass_rows(G), cand, y) for on in (False, True)}
    (hit0, above0, auc0, true0), (hit1, above1, auc1, true1) = out[False], out[True]
    assert above0 <= 0.3                                   # the whole-image NCC misses most (what is planted)
    assert hit1 >= hit0 + 0.2 and above1 >= above0 + 0.2 and auc1 >= auc0 + 0.05, (hit0, hit1, above0, above1)
    assert (true1 >= true0).all() and np.median(1 - true1) < 0.5 * np.median(1 - true0)


def test_ncc_tiles_off_is_the_rigid_ncc_and_rekeys_the_checkpoints(monkeypatch):
    rng = np.random.default_rng(2)
    a = ndimage.gaussian_filter(rng.normal(size=(3, 32, 32)), (0, 2, 2)).astype(np.float32) * 30
    b = a + rng.normal(size=a.shape).astype(np.float32)
    v = np.ones(a.shape, np.uint8)
    assert not T.NCC_TILES                                 # off by default
    np.testing.assert_array_equal(A.registered_ncc(a, b, v), A._masked_ncc(a, b, v != 0))
    ev, pn = A.checkpoint_tag(True, form="evidence"), A.checkpoint_tag(True, form="pairnull")
    assert "tiles" not in ev and "anatomy_tiles" not in pn["_anatomy"]      # off: main's keys
    monkeypatch.setattr(T, "NCC_TILES", True)
    assert A.checkpoint_tag(True, form="evidence") == ev + T.tag() and T.tag().startswith("+tiles4s1")
    assert A.checkpoint_tag(True, form="pairnull")["_anatomy"]["anatomy_tiles"] == T.tag()
    want = np.maximum(A._masked_ncc(a, b, v != 0), T.tile_ncc(a, b, v != 0))
    np.testing.assert_array_equal(A.registered_ncc(a, b, v), want)
