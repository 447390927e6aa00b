"""Partial copies by tiles: a per-tile candidate source and a band-passed tile evidence (issue 13, branch part13).

A generated image may stitch a part of a training image (its upper / left half or more) onto something else, and
move that part (flip, shift, small rotation and rescaling).  Whole-image searches then find the copy as a candidate
for only part of the members (patch12: 0.68 of the plain patch mixes, 0.28 of the moved parts) and whole-image
values mix the two patients.  This channel is built tile by tile, both in where it looks and in what it measures:

1. **Candidate source** (:func:`tile_scores`, :func:`rank_candidates`): the query's anatomy low-pass grid
   (:func:`.anatomy.anatomy_lowpass`, 32 x 32 at 128 px) and its mirror are cut into ``TILES x TILES`` tiles; every
   tile with low-pass std >= ``SRC_MIN_STD`` is z-normalised and compared by NCC with every same-size patch, at every
   grid position, of every searched image's grid (one matrix product per block; flat patches never match).  Each
   tile votes for the image of its best patch among the images allowed; images are ranked by votes, then by summed
   NCC; the first ``TOP`` are the candidates, each tile's best position in each of them is kept.
2. **Evidence** (:func:`pair_values`): the query and each candidate are band-passed (:func:`bandpass`: the image
   minus its Gaussian blur of ``BAND_SIGMA`` px), so what is compared is mostly the patient's texture rather than the
   smooth organ layout; each tile of the query (both orientations) is located in the candidate by NCC over a window
   of +-``WINDOW`` px around the position the source found (so a shifted part is registered tile by tile; a window
   that leaves the image is compared over its inside part when that is half the tile); a tile's value is its peak
   NCC, the pair's value the mean of the best ``SHARE`` of the counted tiles of the better orientation; the row's
   value the best over its candidates.  Edges (body outline, lungs) pass the band too, so look-alikes score ~0.5-0.8:
   the ratio to the control, and the null rows computed alike, carry that.
3. **Ratio** (:func:`ptile_evidence`): ``ptile_ratio = -log((1 - v_G + 1e-3) / (1 - v_R + 1e-3))`` with ``v_G`` the
   value among the generated images and ``v_R`` the same among the other pool images (the channel's own control);
   every pool row (candidates and reference) is computed alike, and the real-to-real pair null
   (:func:`ptile_pair_values_splits`, :func:`.calibrate.real_pair_null`) computes it the same way with part A
   playing the generated images and part B the control, so the calibration holds.

Constants (none chosen on zoo seed 2 or 3, or on dev): ``TILES = 4`` (patch12's size: 32 px at 128 px; a 50-70%
copy covers whole tiles), ``TOP = 3`` (patch12's source put the moved part's copy among its top 3 for half the
members), ``SHARE = 0.5`` (the smallest member share of the zoo and of stitched copies), ``WINDOW = 4`` px and
``SRC_WINDOW = 4`` grid px (the source's position is exact to a grid step, 4 px at 128; a part moved by up to ~16
px from its own place is searched), ``SRC_MIN_STD = 1`` grey level (patch12's floor), ``BP_MIN_STD = 1`` grey level
of band-passed std (a tile with no texture - air - has nothing to match).  ``DOWN = 1``, ``BAND_SIGMA = 1`` px: the
first form averaged 2 x 2 (band 1.5 px there), which made an odd shift of a moved part a half-pixel phase change
that decorrelated its texture (the planted test's shifted copies: 1 of 10 found); full resolution with a 1 px band
was one of the variants of the scratch diagnosis (zoo seed 11), where every variant separated the plain patch mix
and none the moved part (RESULTS.md, part13).
"""

from __future__ import annotations

import numpy as np

#: Whether the audit computes the channel ``ptile_ratio`` (opt-in, off: main's outputs bit for bit, checked on 115
#: output arrays of a reference and an unsupervised audit; the column does not exist, and the evidence's and pair
#: null's checkpoint keys are main's).
PTILE_CHANNEL = False
TILES = 4
TOP = 3
SHARE = 0.5
DOWN = 1
BAND_SIGMA = 1.0
WINDOW = 4
SRC_WINDOW = 4
SRC_MIN_STD = 1.0
BP_MIN_STD = 1.0
#: The channel's fast form (branch ptile14; the same values to float tolerance, RESULTS.md): the source's window
#: maxima by a kernel over one product per tile and block of images (cache-sized blocks of ``FAST_BUDGET`` scores)
#: instead of an ``einsum`` + ``argmax``; the tile peaks from integral images (:func:`.kernels.ptiles.ptile_pair_values_fast`).
#: ``False``: part13's direct form, kept as the reference of the tests and ``benchmarks/bench_ptiles.py``.
FAST = True
FAST_BUDGET = 1 << 20
#: With ``FAST``: pool rows per block of the source's score arrays (``ROW_BLOCK x 2 T^2 x`` images searched, ~6 bytes
#: each), in the evidence and the pair null.
ROW_BLOCK = 128


def tag() -> str:
    """Checkpoint fragment of the current settings (``""`` when off)."""
    if not PTILE_CHANNEL:
        return ""
    return f"+ptile{TILES}t{TOP}q{SHARE:g}d{DOWN}b{BAND_SIGMA:g}w{WINDOW}s{SRC_WINDOW}f{SRC_MIN_STD:g},{BP_MIN_STD:g}"


# ------------------------------------------------------------------------------------------ 1. the source
def _unit(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(-1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-9)


def query_tiles(low: np.ndarray, low_m: np.ndarray):
    """Unit tiles of every grid and its mirror: (float32 [N, 2 T^2, h*h], bool valid [N, 2 T^2], int [2 T^2, 2]
    tile origins in grid px); the mirrored grid's tiles are the second half."""
    n, gh, gw = low.shape
    h, w = gh // TILES, gw // TILES
    out, ok = [], []
    for g in (low, low_m):
        t = g[:, :TILES * h, :TILES * w].reshape(n, TILES, h, TILES, w).swapaxes(2, 3).reshape(n, TILES * TILES, h * w)
        out.append(_unit(t.astype(np.float32)))
        ok.append(t.std(-1) >= SRC_MIN_STD)
    org = np.array([(i * h, j * w) for i in range(TILES) for j in range(TILES)] * 2, np.int64)
    return np.concatenate(out, 1).astype(np.float32), np.concatenate(ok, 1), org


def tile_scores(qt: np.ndarray, qok: np.ndarray, low_b: np.ndarray, org: np.ndarray, *, budget: int | None = None):
    """Every query tile's best NCC with a same-size patch of each base grid within ``SRC_WINDOW`` grid px of the
    tile's own origin (``org``, the mirrored tiles' in the mirrored frame), and that patch's position.

    Returns (float32 [Q, K, B] best NCC, -inf for an invalid tile; int16 [Q, K, B] flat position ``y * px + x``, and
    ``px``)."""
    from numpy.lib.stride_tricks import sliding_window_view

    nq, k, d = qt.shape
    if budget is None:
        budget = FAST_BUDGET if FAST else 1 << 24
    nb, gh, gw = low_b.shape
    h, w = gh // TILES, gw // TILES
    py, px = gh - h + 1, gw - w + 1
    S = np.full((nq, k, nb), -np.inf, np.float32)
    Pos = np.zeros((nq, k, nb), np.int16)
    r = int(SRC_WINDOW)
    wins = []
    for oy, ox in org:
        ys = np.arange(max(0, oy - r), min(py, oy + r + 1))
        xs = np.arange(max(0, ox - r), min(px, ox + r + 1))
        wins.append((ys[:, None] * px + xs[None, :]).ravel())
    nw = max(len(v) for v in wins)
    bb = max(1, int(budget // max(1, nq * nw)))
    if FAST:
        from .anatomy import _one_blas_thread

        # on one BLAS thread, as anatomy_lowpass: the audit's pools already run on threads, and a threaded BLAS
        # spins on a loaded machine (part13's source: ~27 CPU-s of the target's job at load 5, 19 on one thread)
        with _one_blas_thread():
            _tile_scores_blocks(qt, low_b, wins, nb, bb, h, w, py, px, S, Pos)
        S[~qok] = -np.inf
        return S, Pos, px
    for b0 in range(0, nb, bb):
        blk = sliding_window_view(low_b[b0:b0 + bb].astype(np.float32), (h, w), axis=(1, 2))
        m = len(blk)
        pat = blk.reshape(m, py * px, h * w)
        base = _unit(pat)
        base[pat.std(-1) < SRC_MIN_STD] = 0               # flat patches never match
        for t, wi in enumerate(wins):
            s = np.einsum("qd,mpd->qmp", qt[:, t], base[:, wi], optimize=True)      # [nq, m, |window|]
            am = s.argmax(-1)
            Pos[:, t, b0:b0 + m] = wi[am]
            S[:, t, b0:b0 + m] = np.take_along_axis(s, am[..., None], -1)[..., 0]
    S[~qok] = -np.inf
    return S, Pos, px


def _tile_scores_blocks(qt, low_b, wins, nb, bb, h, w, py, px, S, Pos):
    """:func:`tile_scores`' loop, fast form: per block of base images, the unit patches by a kernel
    (:func:`.kernels.ptiles.unit_patches`: one pass, where numpy's centring, norm and std took ~5x the product
    itself once the rows are blocked); per tile, one product [m * |window|, nq] (query tiles contiguous) and the
    window's best by a kernel (:func:`.kernels.ptiles.window_argmax`), in blocks of ``FAST_BUDGET`` scores
    (cache-sized) instead of an ``einsum`` and ``argmax`` over [nq, m, |window|]."""
    from imprint.kernels.ptiles import unit_patches, window_argmax

    qts = [np.ascontiguousarray(qt[:, t].T) for t in range(len(wins))]
    for b0 in range(0, nb, bb):
        base = unit_patches(np.ascontiguousarray(low_b[b0:b0 + bb], np.float32), h, w, float(SRC_MIN_STD))
        m = len(base)
        for t, wi in enumerate(wins):
            best, am = window_argmax(base[:, wi].reshape(m * len(wi), -1) @ qts[t], len(wi))   # [m, nq]
            Pos[:, t, b0:b0 + m] = wi[am].T
            S[:, t, b0:b0 + m] = best.T


def rank_candidates(S: np.ndarray, allowed: np.ndarray, top: int | None = None) -> np.ndarray:
    """The source's candidates of one query: ``S [K, B]`` (:func:`tile_scores`), ``allowed`` bool [B]; each valid
    tile votes for its best allowed image; ranked by votes, then summed NCC, then index; int [top] (-1 padded)."""
    top = TOP if top is None else int(top)
    out = np.full(top, -1, np.int64)
    a = np.flatnonzero(allowed)
    if not len(a):
        return out
    s = S[:, a]
    valid = np.isfinite(s[:, 0]) if s.shape[1] else np.zeros(len(s), bool)
    if not valid.any():
        return out
    win = s[valid].argmax(1)
    votes = np.bincount(win, minlength=len(a))
    tot = np.bincount(win, weights=s[valid][np.arange(valid.sum()), win].astype(np.float64), minlength=len(a))
    order = np.lexsort((np.arange(len(a)), -tot, -votes))
    order = order[votes[order] > 0][:top]
    out[:len(order)] = a[order]
    return out


# ------------------------------------------------------------------------------------------ 2. the evidence
def bandpass(X: np.ndarray) -> np.ndarray:
    """float32 [N, H // DOWN, W // DOWN]: the images averaged ``DOWN x DOWN``, minus their Gaussian blur of
    ``BAND_SIGMA`` px (of that grid; ``mode="nearest"``)."""
    from scipy import ndimage as ndi

    x = np.asarray(X, np.float32)
    n, H, W = x.shape
    d = max(1, int(DOWN))
    x = x[:, :H // d * d, :W // d * d].reshape(n, H // d, d, W // d, d).mean((2, 4))
    return x - ndi.gaussian_filter(x, (0, BAND_SIGMA, BAND_SIGMA), mode="nearest")


def pair_values(bq: np.ndarray, bq_m: np.ndarray, bb: np.ndarray, qi: np.ndarray, bi: np.ndarray,
                pos: np.ndarray, px: int, grid_step: float, org: np.ndarray) -> np.ndarray:
    """The evidence of pairs ``(qi[p], bi[p])``: ``bq`` / ``bq_m`` the queries' band-passed images and mirrors, ``bb``
    the bases'; ``pos [P, K]`` each tile's source position in the base's grid (flat, row width ``px``), ``org`` the
    tiles' grid origins, ``grid_step`` image px per grid px at the band-passed scale.  float64 [P] (-1: no tile)."""
    from imprint.kernels.ptiles import ptile_pair_values, ptile_pair_values_fast

    H, W = bb.shape[1:]
    th, tw = H // TILES, W // TILES
    K = org.shape[0]
    half = K // 2
    ty = np.repeat(np.arange(TILES), TILES)
    ty = np.r_[ty, ty] * th
    tx = np.tile(np.arange(TILES), TILES)
    tx = np.r_[tx, tx] * tw
    cy = np.rint((pos // px) * grid_step).astype(np.int64)
    cx = np.rint((pos % px) * grid_step).astype(np.int64)
    kern = ptile_pair_values_fast if FAST else ptile_pair_values
    peaks = kern(np.ascontiguousarray(bq, np.float32), np.ascontiguousarray(bq_m, np.float32),
                              np.ascontiguousarray(bb, np.float32), np.asarray(qi, np.int64), np.asarray(bi, np.int64),
                              ty.astype(np.int64), tx.astype(np.int64), cy, cx, int(th), int(tw), int(WINDOW),
                              int(half), float(BP_MIN_STD))            # [P, K], NaN: tile not counted
    out = np.full(len(qi), -1.0)
    for o in (slice(0, half), slice(half, K)):
        p = peaks[:, o]
        n_ok = np.isfinite(p).sum(1)
        keep = np.ceil(SHARE * n_ok).astype(np.int64)                # the best share of the tiles counted
        srt = np.sort(np.where(np.isfinite(p), p, -np.inf), 1)[:, ::-1]  # best first
        rank = np.arange(p.shape[1])[None, :]
        sel = rank < keep[:, None]
        m = np.where(n_ok > 0, np.where(sel, srt, 0.0).sum(1) / np.maximum(keep, 1), -1.0)
        out = np.maximum(out, m)
    return out


# ------------------------------------------------------------------------------------------ 3. the channel
def _grids(X: np.ndarray):
    from .anatomy import _lowpass_rows

    return _lowpass_rows(X), _lowpass_rows(X, mirror=True)


def _grid_step(shape_img, shape_grid) -> float:
    from .anatomy import lowpass_sigma

    step = max(1, int(round(lowpass_sigma(*shape_img))))
    return step / max(1, int(DOWN))


def _best_values(S, Pos, px, allow_fn, bq, bq_m, bb, org, step, rows):
    """For each query row in ``rows``: the best pair value over its source candidates among ``allow_fn(row)``, and
    the first candidate (-1: none); (float64 [N], float64 [N])."""
    qi, bi, ps = [], [], []
    first = np.full(S.shape[0], -1.0)
    for r in rows:
        c = rank_candidates(S[r], allow_fn(r))
        first[r] = c[0]
        c = c[c >= 0]
        qi += [r] * len(c)
        bi += list(c)
        ps += [Pos[r][:, j] for j in c]
    out = np.full(S.shape[0], -1.0)
    if qi:
        v = pair_values(bq, bq_m, bb, np.array(qi), np.array(bi), np.array(ps, np.int64).reshape(len(qi), -1),
                        px, step, org)
        np.maximum.at(out, np.array(qi), v)
    return out, first


def ratio(v_a: np.ndarray, v_b: np.ndarray) -> np.ndarray:
    """``-log((1 - v_a + 1e-3) / (1 - v_b + 1e-3))`` (``1 - v`` clipped at 0): the anatomy ratios' form, the same
    function (:func:`.anatomy._anat_ratio`)."""
    from .anatomy import _anat_ratio

    return _anat_ratio(v_a, v_b)


def ptile_evidence(G: np.ndarray, P: np.ndarray) -> dict:
    """``ptile_ratio`` of every pool image (module docstring), with ``ptile_val`` (``v_G``), ``ptile_real_val``
    (``v_R``) and ``ptile_match`` (index into ``G`` of the best candidate, -1 none)."""
    lowP, lowPm = _grids(P)
    qt, qok, org = query_tiles(lowP, lowPm)
    bP, bPm = bandpass(P), bandpass(np.asarray(P)[:, :, ::-1])
    step = _grid_step(P.shape[1:], lowP.shape[1:])
    n = len(P)
    rows = np.arange(n)
    lowG = _grids(G)[0]
    bG = bandpass(G)
    if FAST:
        # blocks of ROW_BLOCK pool rows (a row's values are its own): the score arrays are [ROW_BLOCK, 2 T^2, M]
        # instead of [N, 2 T^2, M] (issue 15: ~190 bytes per pool row x generated image)
        vG, match, vR = np.full(n, -1.0), np.full(n, -1.0), np.full(n, -1.0)
        for r0 in range(0, n, ROW_BLOCK):
            rb = rows[r0:r0 + ROW_BLOCK]
            loc = np.arange(len(rb))
            S, Pos, px = tile_scores(qt[rb], qok[rb], lowG, org)
            vG[rb], match[rb] = _best_values(S, Pos, px, lambda r: np.ones(len(G), bool), bP[rb], bPm[rb], bG, org,
                                             step, loc)
            del S, Pos
            Sr, Posr, _ = tile_scores(qt[rb], qok[rb], lowP, org)
            vR[rb] = _best_values(Sr, Posr, px, lambda r, rb=rb: rows != rb[r], bP[rb], bPm[rb], bP, org, step, loc)[0]
            del Sr, Posr
        return {"ptile_ratio": ratio(vG, vR), "ptile_val": vG, "ptile_real_val": vR, "ptile_match": match}
    # part13's form: all rows at once (the score arrays are [N, 2 T^2, M])
    S, Pos, px = tile_scores(qt, qok, lowG, org)
    vG, match = _best_values(S, Pos, px, lambda r: np.ones(len(G), bool), bP, bPm, bG, org, step, rows)
    Sr, Posr, _ = tile_scores(qt, qok, lowP, org)
    vR = _best_values(Sr, Posr, px, lambda r: rows != r, bP, bPm, bP, org, step, rows)[0]
    return {"ptile_ratio": ratio(vG, vR), "ptile_val": vG, "ptile_real_val": vR, "ptile_match": match}


def ptile_pair_values_splits(real: np.ndarray, inAs, *, only=None, groups=None) -> list:
    """``ptile_ratio`` of real-to-real splits (the pair null, :func:`.calibrate.real_pair_null`): every real image
    ``x`` plays a non-member, the other real images in part A (``inAs[s]``) the generated images and those in part B
    the other pool images; the same source, values and ratio as :func:`ptile_evidence`.  An image's own series
    (``groups``) is never searched.  list of float64 [R] (NaN outside ``only`` or where a part is empty)."""
    real = np.asarray(real)
    R = len(real)
    rows = np.arange(R) if only is None else np.flatnonzero(np.asarray(only, bool))
    low, lowm = _grids(real)
    qt, qok, org = query_tiles(low, lowm)
    b, bm = bandpass(real), bandpass(real[:, :, ::-1])
    step = _grid_step(real.shape[1:], low.shape[1:])
    g = np.arange(R) if groups is None else np.asarray(groups)
    # every (row, part) candidate list of every split, then each distinct pair's value once
    need = {}
    lists = [[None] * len(rows) for _ in inAs]
    keys_pos = []
    blk = ROW_BLOCK if FAST else max(1, len(rows))     # FAST: the score arrays by blocks of rows (issue 15)
    for j0 in range(0, len(rows), blk):
        jb = np.arange(j0, min(len(rows), j0 + blk))
        S, Pos, px = tile_scores(qt[rows[jb]], qok[rows[jb]], low, org)
        for si, inA in enumerate(inAs):
            inA = np.asarray(inA, bool)
            for jl, j in enumerate(jb):
                r = rows[j]
                other = g != g[r]
                ca = rank_candidates(S[jl], other & inA)
                cb = rank_candidates(S[jl], other & ~inA)
                lists[si][j] = (ca, cb)
                for c in np.r_[ca, cb]:
                    if c >= 0 and (j, int(c)) not in need:
                        need[(j, int(c))] = len(need)
                        keys_pos.append(Pos[jl, :, int(c)])
        del S, Pos
    val = np.full(len(need), -1.0)
    if need:
        keys = np.array(list(need.keys()), np.int64)
        pos = np.array(keys_pos, np.int64).reshape(len(keys), -1)
        val = pair_values(b[rows], bm[rows], b, keys[:, 0], keys[:, 1], pos, px, step, org)
    inAs = [np.asarray(a, bool) for a in inAs]
    out = []
    for si, per in enumerate(lists):
        o = np.full(R, np.nan)
        for j, r in enumerate(rows):
            ca, cb = per[j]
            other = g != g[r]
            if (other & inAs[si]).any() and (other & ~inAs[si]).any():   # as the evidence: -1 where no candidate
                va = max([val[need[(j, int(c))]] for c in ca if c >= 0], default=-1.0)
                vb = max([val[need[(j, int(c))]] for c in cb if c >= 0], default=-1.0)
                o[r] = ratio(np.float64(va), np.float64(vb))
        out.append(o)
    return out
