"""Anatomy evidence: agreement of the low spatial frequencies, discounting texture (issue 13).

A generator can copy a training patient's anatomy (body outline, lungs, mediastinum, large vessels) and
re-synthesise the texture on top: its output is then the member's low-pass image plus another patient's
high frequencies.  Pixel NCC / SSIM / MSE on the full band are dominated by that foreign texture, so such a
copy matches its member hardly better than a look-alike patient does (benchmarks/RESULTS.md, branch reg4:
8 of 40 true copies registered below a look-alike).  Here both images are Gaussian low-passed first and
compared by Pearson correlation (NCC), which removes the texture and keeps the anatomy.

Scale (a priori, not fitted): latent generators (VAE / latent diffusion) work on a grid 8x smaller than the
image, so what they can copy of a patient lies below that grid's Nyquist frequency, ``1 / 16`` cycles per
pixel at 128 px; texture above it is theirs.  The low-pass is a Gaussian of sigma = half the latent cell,
``side / 32`` (4 px at 128 px; its transfer is 0.29 at ``1 / 16`` cycles/px and 0.007 at ``1 / 8``), and the
low-passed image is sampled every ``sigma`` pixels (32 x 32 values at any size; the aliasing left is < 1%).

The evidence is a ratio like the other ``*_ratio`` columns: the best low-pass NCC with a generated image
over the best with another real image (the control), each searched exhaustively (exact k-NN, or the
recall-calibrated index of :mod:`engine.search` at scale) in place and mirrored:

    anat_ratio = -log((1 - ncc_G + 1e-3) / (1 - ncc_R + 1e-3))

Copies that are also flipped, shifted, rotated or rescaled (a generator that re-synthesises texture *and*
was trained with augmentation; branch resyn6): besides the exhaustive in-place / mirrored search, every pool
image's registration shortlist (:func:`.register.shortlists`, the candidates the transform-invariant evidence
registers, among the generated images and, for the control, among the other pool images) is registered on the
low-pass grids themselves (:func:`registered_anatomy`: the coarse flip x angle x scale x shift search of
:func:`.register.coarse_scores` and the polish of :func:`.register.polish_lo`, both on the 32 x 32 low-pass
grids, so texture never decides the transform), and the NCC of the registered low-pass images on their
overlap competes with the in-place value.  ``ncc_G`` and ``ncc_R`` are each the best of both, so the control
gets exactly the same search and the ratio stays calibrated against reference images, which go through the
same computation (they are pool images).
"""

from __future__ import annotations

import functools

import numpy as np

from . import deform as _deform
from . import tiles as _tiles

#: Low-pass scale as a fraction of the image side (sigma = side / 32: 4 px at 128 px), see the module docstring.
SIGMA_FRACTION = 1.0 / 32.0
#: Floor of ``1 - ncc`` in the ratio (the same as the registered ratios').
_EPS_NCC = 1e-3


def lowpass_sigma(h: int, w: int) -> float:
    """Gaussian sigma (pixels) of the anatomy low-pass for ``h x w`` images: ``min(h, w) * SIGMA_FRACTION``."""
    return float(min(h, w) * SIGMA_FRACTION)


@functools.lru_cache(maxsize=8)
def _sampled_gaussian(h: int, w: int):
    """Row / column operators of the anatomy low-pass: ``K [n_out, n]`` with ``K @ v`` equal to
    ``scipy.ndimage.gaussian_filter1d(v, sigma, mode="nearest")[o::step]`` (float32)."""
    from scipy import ndimage as ndi

    s = lowpass_sigma(h, w)
    step = max(1, int(round(s)))
    o = step // 2
    out = []
    for m in (h, w):
        # column j of the filtered identity = the response to a unit impulse at j
        K = ndi.gaussian_filter1d(np.eye(m, dtype=np.float64), s, axis=0, mode="nearest")[o::step]
        out.append(np.ascontiguousarray(K, np.float32))
    return out[0], out[1]


def anatomy_lowpass(images: np.ndarray, *, mirror: bool = False) -> np.ndarray:
    """The anatomy low-pass grids: Gaussian-filtered (sigma :func:`lowpass_sigma`, ``mode="nearest"``) and
    sampled every ``step = max(1, round(sigma))`` pixels from ``step // 2``.

    Parameters
    ----------
    images : uint8 or float [N, H, W]
    mirror : bool   grids of the horizontally mirrored images

    Returns
    -------
    float32 [N, ceil((H - step//2) / step), ceil((W - step//2) / step)]   (32 x 32 at 64, 96 or 128 px)
    """
    x = np.asarray(images, np.float32)
    n, h, w = x.shape
    Kh, Kw = _sampled_gaussian(h, w)
    if mirror:
        Kw = Kw[:, ::-1]
    # separable filter and sampling as two matrix products per image (== gaussian_filter(...)[:, o::step, o::step]).
    # Stacked matmul runs one small GEMM per image, so an image's features do not depend on how many images share
    # the call (one GEMM over the whole batch did: float32 blocking changed the last bits with the batch size, and
    # streamed / chunked runs must write the same outputs as whole ones).  On one BLAS thread (issue 15, scale8; also geo8):
    # the threaded library split every 128 x 128 x 32 product over its threads, ~15x the CPU time on 2 cores (and
    # more under load), and its last bits depended on the number of threads, i.e. on the machine.
    with _one_blas_thread():
        return Kh @ (x @ Kw.T)                                           # [n, h', w']


@functools.lru_cache(maxsize=1)
def _blas_controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _one_blas_thread():
    """Context in which the BLAS runs one thread (the small per-image products of :func:`anatomy_lowpass`)."""
    return _blas_controller().limit(limits=1, user_api="blas")


def anatomy_features(images: np.ndarray, *, mirror: bool = False, rows=None, chunk: int = 4096) -> np.ndarray:
    """Unit-norm, zero-mean low-pass images (the anatomy), for Pearson correlation by a dot product.

    Every image is Gaussian-filtered (sigma :func:`lowpass_sigma`, ``mode="nearest"``), sampled every
    ``step = max(1, round(sigma))`` pixels starting at ``step // 2``, centred and scaled to unit norm, so
    the dot product of two rows is the NCC of the two low-passed images on that grid.

    Parameters
    ----------
    images : uint8 or float [N, H, W]
    mirror : bool
        Features of the horizontally mirrored images (``x[:, :, ::-1]``).
    rows, chunk : int array or None, int
        Only ``images[rows]`` (default all), low-passed ``chunk`` images at a time (:func:`_lowpass_rows`: a
        memory-mapped set is never converted whole; every row is per image, so the values do not depend on it).

    Returns
    -------
    float32 [N, ceil((H - step//2) / step) * ceil((W - step//2) / step)]
        A constant image (low-pass standard deviation < 1e-3 grey levels) gives a zero row.
    """
    return _unit_rows(_lowpass_rows(images, rows, chunk, mirror=mirror))


def _unit_rows(low: np.ndarray) -> np.ndarray:
    """Low-pass grids [n, h', w'] -> centred unit-norm rows (:func:`anatomy_features`), float32 [n, h' * w']."""
    n = len(low)
    f = low.reshape(n, -1).astype(np.float64)
    f -= f.mean(1, keepdims=True)
    nrm = np.linalg.norm(f, axis=1, keepdims=True)
    # a low-pass image whose standard deviation is below 1e-3 grey levels is constant (float32 rounding only)
    f = np.where(nrm > 1e-3 * np.sqrt(f.shape[1]), f / np.maximum(nrm, 1e-12), 0.0)
    return np.ascontiguousarray(f, np.float32)


def _best_ncc(base_chunks, queries: np.ndarray, *, exclude=None, executor=None):
    """Highest dot product of every query row with the base rows (searched by L2 on unit vectors, then
    recomputed by the caller); ``exclude`` [Q] = a base row never returned for that query (-1: none).
    Returns the index of the nearest base row, int64 [Q] (-1: none)."""
    from .evidence import _knn, _merge_topk

    Q = len(queries)
    k = 2 if exclude is not None else 1
    bd = bi = None
    for c0, fb in base_chunks:
        d, i = _knn(fb, queries, min(k, len(fb)), executor=executor)
        bd, bi = _merge_topk(bd, bi, d, np.where(i >= 0, i + c0, -1), k)
    best = np.full(Q, -1, np.int64)
    if bi is not None:
        cand = bi.copy()
        if exclude is not None:
            cand[cand == np.asarray(exclude)[:, None]] = -1
        first = np.argmax(cand >= 0, axis=1)
        best = np.where((cand >= 0).any(1), cand[np.arange(Q), first], -1)
    return best


#: Block side of the lower-bound projection that prunes the exact search of every pool image's nearest generated
#: low-pass grid (:func:`_nearest_generated`; 0 = FAISS Flat per chunk, the search before issue 15's scale8).
BOUND_FACTOR = 2


def _nearest_generated(gen_rows, n_gen: int, q: np.ndarray, grid: tuple, *, chunk: int, executor=None,
                       factor: int | None = None, stats: dict | None = None) -> np.ndarray:
    """Nearest generated row of every query under L2 on the unit anatomy features (= the highest NCC), the
    R x G search of :func:`anatomy_evidence` (issue 15, scale8).

    On the local executor / CPU it is the exact search pruned by a lower bound of
    :func:`engine.search.pairwise.knn_l2_both_bound` (one direction, ``k_b = 0``): a float32 product in the
    ``factor x factor`` block projection of the grids bounds every distance from below, and exact float64
    distances are computed only for the pairs the bound does not rule out, so the result is the exact nearest row
    in (float64 distance, index) order (tests/test_membership_evidence_anatomy.py, against brute force).
    Elsewhere (another executor, a GPU, a grid not divisible by ``factor``, ``factor`` 0) it is the FAISS search
    per chunk it was (:func:`_best_ncc`).  The low-pass grids are smooth, so 2 x 2 blocks keep almost all of
    their energy and few pairs need an exact distance (``stats``: ``pairs``, ``exact``).

    Parameters
    ----------
    gen_rows : callable ``(c0, c1) -> float32 [c1 - c0, D]``   features of generated rows ``c0..c1-1``, asked for
        once each, in order, in blocks of ``chunk``
    n_gen : int
    q : float32 [Q, D]      query features (``D = grid[0] * grid[1]``)
    grid : (h, w)           the low-pass grid's shape
    chunk : int             generated rows per block
    factor : int or None    block side of the bound (default :data:`BOUND_FACTOR`)
    stats : dict or None    filled with ``pairs`` and ``exact`` (exact distances computed) on the pruned path

    Returns
    -------
    int64 [Q]   index of the nearest generated row (-1: none)
    """
    factor = BOUND_FACTOR if factor is None else int(factor)
    h, w = (int(v) for v in grid)
    Q = len(q)
    if n_gen == 0 or Q == 0:
        return np.full(Q, -1, np.int64)
    from .evidence import _both_way_local

    if factor and h % factor == 0 and w % factor == 0 and _both_way_local(executor):
        from imprint.engine.search.pairwise import knn_l2_both_bound

        qa = np.ascontiguousarray(q, np.float32)
        st: dict = {}
        _, i, _, _ = knn_l2_both_bound(lambda r: qa[r[0]:r[-1] + 1], Q,
                                       lambda r: gen_rows(int(r[0]), int(r[-1]) + 1), n_gen, 1, 0,
                                       shape=(h, w), b_block=int(chunk), a_block=4096, factor=factor, stats=st)
        if stats is not None:
            stats.update(st)
        return np.asarray(i[:, 0], np.int64)
    return _best_ncc(((c0, gen_rows(c0, min(n_gen, c0 + chunk))) for c0 in range(0, n_gen, chunk)), q,
                     executor=executor)


#: Whether :func:`.evidence.compute_evidence` registers the registration shortlists on the low-pass grids (with
#: ``register=True``); False gives the in-place / mirrored channel of branch resyn5 (benchmarks compare the two).
REGISTERED = True
#: Whether the anatomy evidence's candidates (with :data:`REGISTERED`) are the registration shortlist *and* the
#: low-pass source :func:`.register.lowpass_candidates` (branch short7: a copy whose texture was re-synthesised and
#: which was also shifted or rotated is often missing from the registration shortlist); the real-to-real null
#: (:func:`.calibrate.real_pair_null`) unions the same source (:func:`.register.lowpass_pair_candidates`).
#: False: the candidates of branch resyn6.  It was off by default after the seventh wave (the judged speed case,
#: ``membership_zoo.py --timing --lowpass-compare --repeat 2``, quiet, same run: 61.7 -> 69.2 s, 1.12x).  **On again
#: since branch geo8**: the registered pairs are memoised across the audit's pools (:func:`registered_anatomy`) and
#: the source's unused control search is gone, and the same command measured 1.02x CPU on / off (heavy load; see
#: RESULTS.md, geo8); the lead decides on a quiet measurement.  It is used only with a reference either way
#: (:func:`.audit.audit_membership`).
LOWPASS_CANDIDATES = True


def lowpass_on(flag: bool | None) -> bool:
    """Whether the low-pass candidate source is used: ``flag``, or :data:`LOWPASS_CANDIDATES` when it is None (the
    ``anatomy_lowpass`` argument of :func:`.evidence.compute_evidence` and :func:`.calibrate.real_pair_null`)."""
    return LOWPASS_CANDIDATES if flag is None else bool(flag)
#: Coarse-best shortlist candidates per pool image that get the low-pass polish and the registered NCC
#: (:func:`registered_anatomy`).  Was 2, as :data:`.register.N_REFINE` (a priori).  5 since branch geo8: on a scratch
#: draw (``membership_zoo.py --recall "resynth 3 + geom (all):1" --anatomy --seed 11``, not a zoo seed) every member
#: whose copy was a candidate but not the chosen match (5 of 54) had the copy at coarse rank 3-5 (a rotation / scale
#: between the coarse grid's points), and its registered NCC, once polished, beat the chosen look-alike's.  The
#: control and the reference rows get the same number (calibration); a changed value re-keys the checkpoints.
N_POLISH = 5
#: Polish rounds on the low-pass grids (steps 4 deg / 0.04, then 2 deg / 0.02: :func:`.register.polish_lo`'s).
POLISH_ROUNDS = 2


def _masked_ncc(a: np.ndarray, b: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Pearson correlation of ``a`` and ``b`` [K, h, w] over the mask ``m`` (nonzero = inside); float64 [K]
    (0 where either side is constant on the mask)."""
    k = len(a)
    a = np.asarray(a, np.float64).reshape(k, -1)
    b = np.asarray(b, np.float64).reshape(k, -1)
    w = (np.asarray(m).reshape(k, -1) != 0).astype(np.float64)
    cnt = np.maximum(w.sum(1, keepdims=True), 1.0)
    da = (a - (a * w).sum(1, keepdims=True) / cnt) * w
    db = (b - (b * w).sum(1, keepdims=True) / cnt) * w
    saa, sbb, sab = (da * da).sum(1), (db * db).sum(1), (da * db).sum(1)
    return np.where((saa > 1e-12) & (sbb > 1e-12), sab / np.sqrt(np.maximum(saa * sbb, 1e-24)), 0.0)


#: Width (low-pass grid pixels) of the grid's outer frame left out of the registered NCC (:func:`registered_ncc`;
#: 0: the whole overlap, the NCC before branch geo10).  A priori, not tuned: the grid is sampled every
#: ``round(sigma)`` pixels, so one grid pixel is one sigma of the low-pass Gaussian, and within about one sigma of the
#: image frame a grid value is made of the filter's padding (``mode="nearest"``: the frame's pixels repeated).  Where
#: registration moved the other image's *interior* there (a shifted / rotated / rescaled copy), the two values
#: differ although the anatomy agrees: on two scratch draws (``membership_zoo`` seeds 11 and 13, not zoo seeds),
#: resynth 3 + geom (all) 1, the true pairs' low tail (1 - NCC at the 90th percentile) came from it (RESULTS.md, geo10).
#: Every registered pair - generated candidates, the control, the reference rows, the real-to-real null - is
#: compared on the same interior, so the calibration holds.  **Opt-in (0) for now**: with 1, zoo seed 2 (full size)
#: resynth 3 + geom (all) 1 rose (AUC 0.936 -> 0.943, ``fpr:0.01`` recall 0.500 -> 0.633) and the flip row's TPR@1%
#: 0.55 -> 0.65, but ``--quick`` seed 0's resynth sigma 3 ``fpr:0.01`` recall fell 0.700 -> 0.375 (its threshold is
#: the maximum of 150 reference scores; AUC and TPR@1% unchanged) and geom 0.5's TPR@1% 0.800 -> 0.767: the lead
#: decides on a quiet, larger measurement (RESULTS.md, geo10).  A value != 0 re-keys the checkpoints.
NCC_FRAME = 0


def _ncc_mask(valid: np.ndarray, frame: int | None = None) -> np.ndarray:
    """Where a registered NCC is taken: ``valid`` minus the outer ``frame`` grid pixels (None: :data:`NCC_FRAME`;
    clipped so that at least the centre pixel stays); bool [K, h, w]."""
    frame = NCC_FRAME if frame is None else int(frame)
    m = np.asarray(valid) != 0
    if frame > 0 and m.ndim == 3:
        h, w = m.shape[1:]
        fy, fx = min(frame, (h - 1) // 2), min(frame, (w - 1) // 2)
        inner = np.zeros((h, w), bool)
        inner[fy:h - fy, fx:w - fx] = True
        m = m & inner[None]
    return m


def registered_ncc(reg: np.ndarray, low_b: np.ndarray, valid: np.ndarray, frame: int | None = None) -> np.ndarray:
    """NCC of registered low-pass grids on their overlap, the outer ``frame`` grid pixels left out.

    Parameters
    ----------
    reg : float32 [K, h, w]     the transformed grids (:func:`.register.warp` of :func:`anatomy_lowpass` grids)
    low_b : float32 [K, h, w]   the grids they were registered onto
    valid : uint8 or bool [K, h, w]   1 where ``reg`` came from inside its source grid (the overlap)
    frame : int or None         width of the left-out frame (None: :data:`NCC_FRAME`; clipped so that at least the
                                centre pixel stays)

    Returns
    -------
    float64 [K]   Pearson correlation over ``valid`` minus the frame (0 where either side is constant there)
    """
    m = _ncc_mask(valid, frame)
    if _tiles.NCC_TILES:                                # tile-wise, best half of the tiles (branch patch12), opt-in
        return np.maximum(_masked_ncc(reg, low_b, m), _tiles.tile_ncc(reg, low_b, m))
    if NCC_LOCAL:                                       # piecewise-rigid (branch elas11), opt-in
        return np.maximum(_masked_ncc(reg, low_b, m), local_ncc(reg, low_b, m))
    if _deform.NCC_FLOW:                                # smooth non-rigid (branch elas12), opt-in
        return np.maximum(_masked_ncc(reg, low_b, m), _deform.flow_registered_ncc(reg, low_b, m))
    return _masked_ncc(reg, low_b, m)


#: Whether the registered low-pass NCC (:func:`registered_ncc`) is the better of the rigid value and the
#: piecewise-rigid one (:func:`local_ncc`: every tile of the registered grid moved by its own small shift), for copies
#: that were deformed non-rigidly (elastic deformation, the standard medical augmentation; issue 13, branch elas11).
#: Every registered pair goes through it - generated candidates, the control, the reference rows, the real-to-real
#: pair null - so the calibration holds.  A value != False re-keys the checkpoints.  **Opt-in (off)**: on zoo seed 2
#: (full size, same session as main) it left elastic RMS 4 px unchanged (AUC 0.870, TPR@1% 0.367), raised elastic 2 +
#: geom 0.5 (AUC 0.947 -> 0.955, TPR@1% 0.733 -> 0.783) and resynth 3 + geom 1 (``fpr:0.01`` recall 0.400 -> 0.483),
#: but lowered resynth sigma 3 (TPR@1% 0.933 -> 0.867, ``fpr:0.01`` recall 0.517 -> 0.183: look-alikes and the null
#: gain too), and it adds ~3.3 CPU-s (~4%) to the judged speed case (RESULTS.md, elas11).
NCC_LOCAL = False
#: Tiles per side of :func:`local_ncc` (4: 8 x 8 grid pixels = 32 image pixels at 128 px, two to four times the
#: smoothing sigma of typical elastic fields, 8-16 px per 128 px) and the largest per-tile shift (grid pixels; 1 =
#: sigma of the low-pass = 4 px at 128 px, the RMS of a strong elastic field).  A priori, not tuned.
LOCAL_TILES = 4
LOCAL_SHIFT = 1


def local_ncc(reg: np.ndarray, low_b: np.ndarray, m: np.ndarray, tiles: int | None = None,
              shift: int | None = None) -> np.ndarray:
    """Piecewise-rigid NCC of registered low-pass grids: a piecewise-rigid approximation of a smooth deformation.

    The grid is cut into ``tiles x tiles`` tiles; every tile of ``reg`` is moved by the whole-pixel shift in
    ``[-shift, shift]^2`` that maximises its own NCC with ``low_b`` over the mask (the unshifted tile first; a shift
    wins only if strictly better; a tile needs half its pixels inside the mask; rows / columns past the last whole
    tile stay unshifted), and the Pearson correlation of the assembled grid with ``low_b`` over the assembled mask is
    returned (float64 [K]; the rigid NCC's scale).  Cost: ~0.16 ms CPU per 32 x 32 pair (numpy), ~8x the rigid NCC.

    Parameters
    ----------
    reg, low_b : float [K, h, w]   registered grid and the grid it was registered onto
    m : bool [K, h, w]             where ``reg`` is valid (the overlap, minus any left-out frame)
    tiles, shift : int or None     None: :data:`LOCAL_TILES`, :data:`LOCAL_SHIFT`
    """
    tiles = LOCAL_TILES if tiles is None else int(tiles)
    shift = LOCAL_SHIFT if shift is None else int(shift)
    reg = np.asarray(reg, np.float32)
    b = np.asarray(low_b, np.float32)
    m = np.asarray(m, bool)
    K, h, w = reg.shape
    th, tw = h // tiles, w // tiles
    if K == 0 or th < 2 or tw < 2:
        return _masked_ncc(reg, b, m)
    H, W = th * tiles, tw * tiles

    def tiled(x):                                       # [K, tiles, tiles, th * tw] (the grid's remainder dropped)
        return x[:, :H, :W].reshape(K, tiles, th, tiles, tw).transpose(0, 1, 3, 2, 4).reshape(K, tiles, tiles, -1)

    bt = tiled(b)
    shifts = [(0, 0)] + [(dy, dx) for dy in range(-shift, shift + 1) for dx in range(-shift, shift + 1)
                         if (dy, dx) != (0, 0)]
    best = np.full((K, tiles, tiles), -np.inf, np.float32)
    pick = np.zeros((K, tiles, tiles), np.int64)
    moved = []
    for si, (dy, dx) in enumerate(shifts):
        r = np.zeros_like(reg)
        v = np.zeros_like(m)
        ys, yd = slice(max(0, -dy), h - max(0, dy)), slice(max(0, dy), h - max(0, -dy))
        xs, xd = slice(max(0, -dx), w - max(0, dx)), slice(max(0, dx), w - max(0, -dx))
        r[:, yd, xd] = reg[:, ys, xs]
        v[:, yd, xd] = m[:, ys, xs]
        moved.append((r, v))
        wt = tiled(v).astype(np.float32)
        n = wt.sum(-1)
        rt = tiled(r) * wt
        bw = bt * wt
        nn = np.maximum(n, 1.0)
        ma, mb = rt.sum(-1) / nn, bw.sum(-1) / nn
        sab = (rt * bt).sum(-1) - n * ma * mb
        saa = (rt * rt).sum(-1) - n * ma * ma
        sbb = (bw * bt).sum(-1) - n * mb * mb
        ok = (n >= th * tw / 2) & (saa > 1e-6) & (sbb > 1e-6)
        c = np.where(ok, sab / np.sqrt(np.maximum(saa * sbb, 1e-12)), -np.inf)
        better = c > best
        best = np.where(better, c, best)
        pick = np.where(better, si, pick)
    # assemble: every tile from its chosen shift
    pk = np.repeat(np.repeat(pick, th, 1), tw, 2)
    comp = np.zeros((K, h, w), np.float32)
    cm = np.zeros((K, h, w), bool)
    for si, (r, v) in enumerate(moved):
        sel = np.zeros((K, h, w), bool)
        sel[:, :H, :W] = pk == si
        if si == 0:
            sel[:, H:, :] = True
            sel[:, :, W:] = True
        comp = np.where(sel, r, comp)
        cm = np.where(sel, v, cm)
    return _masked_ncc(comp, b, cm)


def checkpoint_tag(lowpass: bool | None, *, form: str):
    """The anatomy evidence's version fragments of a checkpoint key: one place for every key that holds them.

    An anatomy change that alters its values adds its fragment here once; the target / dev-pool evidence
    (:func:`.evidence._evidence`) and the real-to-real pair null (:func:`.calibrate.real_pair_null_cached`) both take
    their fragments from this function, in the forms their keys had before it existed, so checkpoints of an
    unchanged version keep their keys (tests/test_membership_evidence_anatomy.py checks them against the old
    builders).

    Parameters
    ----------
    lowpass : bool or None   the ``anatomy_lowpass`` flag (None: :data:`LOWPASS_CANDIDATES`)
    form : {"evidence", "pairnull"}
        "evidence": the string of the evidence key's ``anatomy`` entry when the anatomy evidence is computed
        (``"registered-lowpass"``, then ``+lowpass-candidates``, ``+rot...``, ``+polishN``, ``+frameN``);
        "pairnull": a dict of the entries of the pair null's key (``version`` 4 and ``lowpass_frame_angles`` from
        the low-pass source) with, under ``"_anatomy"``, those its anatomy values add (``anatomy_polish``,
        ``anatomy_frame``; the caller adds them only with ``anatomy=True``)

    Returns
    -------
    str or dict
    """
    from .register import LP_FRAME_ANGLES, LP_K_COARSE, coarse_tag

    lp = lowpass_on(lowpass)
    if form == "evidence":
        tag = "registered-lowpass"                      # registered on the shortlist (branch resyn6)
        if lp:
            tag += "+lowpass-candidates"                # its low-pass candidate source (short7)
            if LP_FRAME_ANGLES:                         # its rotated frame queries (geo9)
                tag += "+rot" + ",".join(f"{a:g}" for a in LP_FRAME_ANGLES)
            tag += coarse_tag()                         # its coarse source, opt-in (elsrc13; "" when off)
        if N_POLISH != 2:                               # polished over more coarse-best candidates (geo8)
            tag += f"+polish{N_POLISH}"
        if NCC_FRAME:                                   # the registered NCC without the grid's frame (geo10)
            tag += f"+frame{NCC_FRAME}"
        if NCC_LOCAL:                                   # piecewise-rigid NCC (elas11)
            tag += f"+local{LOCAL_TILES}s{LOCAL_SHIFT}"
        if _deform.NCC_FLOW:                            # smooth non-rigid NCC (elas12)
            tag += "+" + _deform.flow_tag()
        if _deform.FLOW_CHANNEL:                        # ... as a channel of its own (elas13)
            tag += "+" + _deform.channel_tag()
        from . import ptiles as _ptiles

        return tag + _tiles.tag() + _ptiles.tag()       # tile-wise NCC (patch12); the partial-copy channel (part13)
    if form == "pairnull":
        out: dict = {}
        if lp:
            out["version"] = 4                          # over the low-pass candidate source too (short7)
            if LP_FRAME_ANGLES:                         # its rotated frame queries (geo9)
                out["lowpass_frame_angles"] = list(LP_FRAME_ANGLES)
            if LP_K_COARSE:                             # its coarse source, opt-in (elsrc13)
                out["lowpass_coarse"] = coarse_tag()
        anat: dict = {}
        if N_POLISH != 2:                               # geo8
            anat["anatomy_polish"] = N_POLISH
        if NCC_FRAME:                                   # geo10
            anat["anatomy_frame"] = NCC_FRAME
        if NCC_LOCAL:                                   # elas11
            anat["anatomy_local"] = [LOCAL_TILES, LOCAL_SHIFT]
        if _deform.NCC_FLOW:                            # elas12
            anat["anatomy_flow"] = _deform.flow_tag()
        if _tiles.NCC_TILES:                            # patch12
            anat["anatomy_tiles"] = _tiles.tag()
        if _deform.FLOW_CHANNEL:                        # elas13
            anat["anatomy_flow_channel"] = _deform.channel_tag()
        from . import ptiles as _ptiles

        if _ptiles.PTILE_CHANNEL:                       # part13
            anat["anatomy_ptile_channel"] = _ptiles.tag()
        out["_anatomy"] = anat
        return out
    raise ValueError(f"form must be 'evidence' or 'pairnull' (got {form!r})")


_CO_KEYS = ("coarse", "flip", "angle", "scale", "dy", "dx", "coarse_alt", "angle_alt", "scale_alt", "dy_alt", "dx_alt")
_PO_KEYS = ("ncc", "flip", "angle", "scale", "dy", "dx")


# Most pairs per block of the anatomy polish and its registered NCC (issue 15; memory only, the values are per pair);
# fewer under a small memory budget (:func:`polish_block`).
POLISH_BLOCK = 4096
#: Bytes in flight per polished pair and low-pass grid pixel (:func:`_polished_pairs`: the warped grid and its
#: validity mask, the partner's gathered grid, the masked NCC's float64 copies and temporaries, polish_lo's own
#: chunk).  Issue 15, mem11: tracemalloc peaks of one block of 512 and 2,048 pairs of 32 x 32 grids, 250 and 122
#: bytes per pair and pixel: ~79 per pair and pixel plus ~90 MB; 96 covers the fixed part at the default's block.
_POLISH_BYTES_PER_PX = 96


def polish_block(hw: int) -> int:
    """Pairs per block of :func:`_polished_pairs`: 1/8 of the memory budget (:func:`.evidence.memory_budget`) over
    :data:`_POLISH_BYTES_PER_PX` per grid pixel, at least 64, at most :data:`POLISH_BLOCK` (2,730 pairs of 32 x 32
    grids at the 2 GiB default, ~0.3 GB in flight).  Every pair is polished on its own: the values do not depend on
    it (tests/test_pair_null_scale.py)."""
    from .evidence import _memory_budget

    return int(min(POLISH_BLOCK, max(64, (_memory_budget() // 8) // (_POLISH_BYTES_PER_PX * max(1, int(hw))))))


#: Bytes in flight per pair of 32 x 32 grids in :func:`.register.coarse_scores`: its chunk's cross-spectra (18 variants
#: x 32 x 17 complex128, ~157 kB) and correlation rows (~78 kB), rounded up (issue 15, mem11).
_COARSE_BYTES_PER_PAIR_PX = 256


def _coarse_in_blocks(lowA: np.ndarray, lowB: np.ndarray, pairs: np.ndarray) -> dict:
    """:func:`.register.coarse_scores` of ``pairs`` (sorted by their ``lowA`` row) in blocks of pairs, with its chunk,
    both sized from the memory budget: 1/16 of it over :data:`_COARSE_BYTES_PER_PAIR_PX` per grid pixel and pair
    (the pair null's splits at 10k real images: ~100k pairs, whose 1,024-image variant blocks and 1,024-pair chunks
    held ~0.6 GB; issue 15, mem11).  Every pair is scored on its own: the same values as one call."""
    from .evidence import _memory_budget
    from .register import coarse_scores

    hw = int(np.prod(lowA.shape[1:]))
    chunk = int(max(16, min(1024, (_memory_budget() // 16) // (_COARSE_BYTES_PER_PAIR_PX * max(1, hw)))))
    step = 8 * chunk
    if len(pairs) <= step:
        return coarse_scores(lowA, lowB, pairs, chunk=chunk)
    parts = [coarse_scores(lowA, lowB, pairs[s0:s0 + step], chunk=chunk) for s0 in range(0, len(pairs), step)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _polished_pairs(lowA: np.ndarray, lowB: np.ndarray, pairs: np.ndarray, co: dict, sel: np.ndarray,
                    rounds: int) -> dict:
    """The polish (:func:`.register.polish_lo`), the registered grid (:func:`.register.warp`) and its NCC
    (:func:`registered_ncc`) of ``pairs[sel]`` from their coarse values ``co`` (arrays over ``pairs``), in blocks of
    :func:`polish_block` pairs, so the registered grids, their masks and the NCC's float64 temporaries are held for
    one block (issue 15: at 10k real images the whole set's were a ~1.6 GB spike in the evidence, and in the
    real-to-real pair null's splits, mem11).  Returns ``polish_lo``'s keys and ``ncc``, float [len(sel)]."""
    from .register import polish_lo, warp

    sel = np.asarray(sel, np.int64)
    step = polish_block(int(np.prod(lowA.shape[1:])))
    parts = []
    for s0 in range(0, max(len(sel), 1), step):
        t = sel[s0:s0 + step]
        pp = pairs[t]
        po = polish_lo(lowA, lowB, pp, {k: np.asarray(v)[t] for k, v in co.items()}, rounds=rounds)
        reg, valid = warp(lowA, pp[:, 0], po["flip"], po["angle"], po["scale"], po["dy"], po["dx"])
        parts.append(dict(po, ncc=registered_ncc(reg, lowB[pp[:, 1]], valid)))
        del reg, valid
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}


def _warped_values(lowA: np.ndarray, lowB: np.ndarray, pairs: np.ndarray, tr: dict, fn) -> np.ndarray:
    """``fn(registered grids, lowB grids, mask)`` of ``pairs`` [K, 2], each ``lowA`` grid warped by its transform
    ``tr`` (``flip``, ``angle``, ``scale``, ``dy``, ``dx`` [K]) and masked as :func:`registered_ncc` does, in blocks of
    :func:`polish_block` pairs (every pair on its own); float64 [K] (-1 where not computed)."""
    from .register import warp

    step = polish_block(int(np.prod(lowA.shape[1:])))
    out = np.full(len(pairs), -1.0)
    for s0 in range(0, len(pairs), step):
        pp = pairs[s0:s0 + step]
        p = {k: np.asarray(tr[k])[s0:s0 + step] for k in ("flip", "angle", "scale", "dy", "dx")}
        reg, valid = warp(lowA, pp[:, 0], p["flip"], p["angle"], p["scale"], p["dy"], p["dx"])
        out[s0:s0 + step] = fn(reg, lowB[pp[:, 1]], _ncc_mask(valid))
    return out


def _flow_pairs(lowA: np.ndarray, lowB: np.ndarray, pairs: np.ndarray, po: dict) -> dict:
    """The flow NCC (:func:`.deform.flow_registered_ncc`, on :func:`registered_ncc`'s mask) of ``pairs`` [K, 2] warped
    by their polished transforms ``po`` (:func:`_warped_values`); ``{"flow": float64 [K]}`` (-1 where undefined)."""
    return {"flow": _warped_values(lowA, lowB, pairs, po, _deform.flow_registered_ncc)}


def _cheap_pairs(lowA: np.ndarray, lowB: np.ndarray, pairs: np.ndarray, co: dict) -> dict:
    """The cheap non-rigid score (:func:`.deform.cheap_flow_ncc`, on :func:`registered_ncc`'s mask) of ``pairs``
    [K, 2] warped by their **coarse** transforms ``co`` (no polish; :func:`_warped_values`); ``{"cflow": float64
    [K]}`` (-1 where undefined).  :data:`.deform.FLOW_PICK` (branch elas14)."""
    return {"cflow": _warped_values(lowA, lowB, pairs, co, _deform.cheap_flow_ncc)}


def _pick_k(c: int) -> int:
    """Coarse-best candidates per row scored by the cheap flow (:data:`.deform.FLOW_PICK_K`, at most ``c``)."""
    return int(max(1, min(int(_deform.FLOW_PICK_K), c)))


def _flow_picks(ncc_m: np.ndarray) -> np.ndarray:
    """Which polished candidates get the flow (:data:`.deform.FLOW_TOP` per row): ``ncc_m`` [n, m] is every row's
    polished candidates' registered NCC in coarse order (-inf: none); bool [n, m], the best by NCC, ties to the
    earlier column."""
    top = np.argsort(-ncc_m, axis=1, kind="stable")[:, :max(0, int(_deform.FLOW_TOP))]
    sel = np.zeros(ncc_m.shape, bool)
    np.put_along_axis(sel, top, True, 1)
    return sel & np.isfinite(ncc_m)


def _coarse_top(score: np.ndarray, pos: np.ndarray, k: int, fcol: np.ndarray | None):
    """Each row's ``k`` best columns of the coarse ``score`` [n, c] (stable order, so the forced column, raised by
    :func:`_force_top`, comes first): their pair indices from ``pos`` [n, c] (-1 where the score is not finite),
    int64 [n, k], and which of them is the forced column ``fcol`` [n] (-1: none), bool [n, k] or None without
    ``fcol``.  The one selection of :func:`registered_anatomy`'s and :func:`anatomy_pair_values_splits`' polished
    candidates and of their :data:`.deform.FLOW_PICK` candidates."""
    top = np.argsort(-score, axis=1, kind="stable")[:, :k]
    fin = np.isfinite(np.take_along_axis(score, top, 1))
    p = np.where(fin, np.take_along_axis(pos, top, 1), -1)
    fz = None if fcol is None else (top == fcol[:, None]) & (fcol[:, None] >= 0) & fin
    return p, fz


def _memo_pairs(fn, pairs: np.ndarray, keys_a, keys_b, cache: dict | None, name: str, fields) -> dict:
    """``fn(sel) -> dict of arrays [len(sel)]`` (``sel``: indices into ``pairs`` [K, 2]) memoised per pair of image
    contents (``(keys_a[i], keys_b[j])``) in ``cache[name]`` (float64 columns), so pools that share images (the target
    and the dev sets' pools share the reference, and a dev set may be the target's generator) register each pair
    once; the per-pair computations
    (:func:`.register.coarse_scores`, :func:`.register.polish_lo`, the masked NCC) do not depend on which other
    pairs share the call, so the values are those of an uncached call."""
    from .register import _RowMemo

    if cache is None or keys_a is None or keys_b is None or len(pairs) == 0:
        return fn(np.arange(len(pairs)))
    # float64 columns per field (register._RowMemo), not a tuple of Python floats per pair: ~5x less resident
    # memory for the audit's lifetime (the G-side pairs at 10k real images are hundreds of thousands); same values
    store = cache.setdefault(name, _RowMemo())
    kk = [(keys_a[a], keys_b[b]) for a, b in pairs]
    miss = store.missing(kk)
    if miss:
        r = fn(np.asarray(miss, np.int64))
        store.add([kk[t] for t in miss], {f: r[f] for f in fields})
    got = store.get(kk)
    return {f: got[f] for f in fields}


#: The coarse score given to a forced candidate (:func:`_force_cols`): above any coarse NCC, finite.
_FORCED = 1e9


def _force_cols(key: np.ndarray, cand: np.ndarray, elig: np.ndarray) -> np.ndarray:
    """Per row, the column of ``key`` [R, C] (deduplicated candidates, -1 = none) that holds the candidate of the first
    ``elig`` [R, C] column of ``cand`` (the candidates before deduplication, the excluded ones -1; ``elig``: the coarse
    source's usable columns, branch elsrc13), -1 where none: int64 [R].  A candidate found by an earlier source too is
    scored in its first column, so that column is forced."""
    R = len(cand)
    if R == 0 or cand.shape[1] == 0:
        return np.full(R, -1, np.int64)
    has = elig.any(1)
    v = cand[np.arange(R), np.argmax(elig, 1)]
    hit = (key == v[:, None]) & (key >= 0)
    return np.where(has & hit.any(1), np.argmax(hit, 1), -1).astype(np.int64)


def _force_top(score: np.ndarray, key: np.ndarray, cand: np.ndarray, elig: np.ndarray) -> np.ndarray:
    """:func:`_force_cols` where that column's coarse ``score`` [R, C] is finite (-1 elsewhere), and that score raised
    to :data:`_FORCED` in place, so the column sorts first among the polished: int64 [R].  The one rule of
    :func:`registered_anatomy` and :func:`anatomy_pair_values_splits` (branch elsrc13)."""
    fcol = _force_cols(key, cand, elig)
    fcol = np.where((fcol >= 0) & np.isfinite(score[np.arange(len(score)), np.maximum(fcol, 0)]), fcol, -1)
    rr = np.flatnonzero(fcol >= 0)
    score[rr, fcol[rr]] = _FORCED
    return fcol


def registered_anatomy(lowA: np.ndarray, lowB: np.ndarray, cand: np.ndarray, *, exclude=None,
                       n_polish: int | None = None, rounds: int = POLISH_ROUNDS, keys_a=None, keys_b=None,
                       cache: dict | None = None, force: np.ndarray | None = None) -> dict:
    """Best registered low-pass NCC of every ``lowA`` grid with its candidates in ``lowB``.

    Every (row, candidate) pair is registered on the low-pass grids themselves: the coarse flip x angle x scale
    grid with an FFT shift search (:func:`.register.coarse_scores`; at 32 x 32 it works on the grids as given),
    then the ``n_polish`` coarse-best candidates of the row get ``rounds`` rounds of the multi-start
    angle / scale polish with sub-pixel shifts (:func:`.register.polish_lo`), and the registered ``lowA`` grid
    (bilinear, :func:`.register.warp`) is compared with the candidate's on their overlap (Pearson NCC).  The
    low-pass grids hold no texture, so texture never decides the transform or the candidate.

    Parameters
    ----------
    lowA : float32 [R, h, w]       low-pass grids (:func:`anatomy_lowpass`) of the images to transform
    lowB : float32 [M, h, w]       low-pass grids of the candidates' images
    cand : int [R, C]              candidate indices into ``lowB`` per row (-1 = none; duplicates scored once)
    exclude : int [R] or None      a ``lowB`` row never used for that row (the image itself, for the control)
    n_polish, rounds : int         see above (``n_polish`` None: :data:`N_POLISH`)
    keys_a, keys_b : list or None  content keys of the ``lowA`` / ``lowB`` rows' images; with ``cache`` every pair's
                                   coarse and polished values are memoised there (same result, branch geo8)
    cache : dict or None
    force : bool [C] or None       columns of the coarse source (:data:`.register.LP_K_COARSE`, branch elsrc13): the
                                   row's first usable one (:func:`_force_cols`) is always polished, besides the
                                   ``n_polish`` coarse-best of the others, and always gets the flow (with
                                   :data:`.deform.FLOW_CHANNEL`); None or all False: the rule above, unchanged

    Returns
    -------
    dict[str, float64 [R]]
        ``ncc`` (-1 where the row has no candidate), ``match`` (index into ``lowB``, -1: none), ``flip``,
        ``angle`` (degrees), ``scale``, ``dy``, ``dx`` (grid pixels) of the best registered candidate; with
        :data:`.deform.FLOW_CHANNEL` also ``flow_ncc``: the best of ``max(rigid, flow NCC)`` over the row's
        :data:`.deform.FLOW_TOP` best polished candidates (:func:`_flow_picks`; -1: none).
    """
    n_polish = N_POLISH if n_polish is None else n_polish
    cand = np.asarray(cand, np.int64)
    R, c = cand.shape if cand.ndim == 2 else (len(lowA), 0)
    out = {"ncc": np.full(R, -1.0), "match": np.full(R, -1.0)}
    out.update({k: np.zeros(R) for k in ("flip", "angle", "scale", "dy", "dx")})
    if _deform.FLOW_CHANNEL:
        out["flow_ncc"] = np.full(R, -1.0)
    if R == 0 or c == 0:
        return out
    key = cand.copy()
    if exclude is not None:
        key[key == np.asarray(exclude, np.int64)[:, None]] = -1
    key0 = key.copy()                                       # before deduplication (the forced column, elsrc13)
    for t in range(1, c):                                   # a candidate found by several sources: scored once
        key[:, t] = np.where((key[:, :t] == key[:, t:t + 1]).any(1), -1, key[:, t])
    ok = (key >= 0).ravel()
    if not ok.any():
        return out
    pairs = np.stack([np.repeat(np.arange(R), c)[ok], key.ravel()[ok]], 1)
    lowA = np.ascontiguousarray(lowA, np.float32)
    lowB = np.ascontiguousarray(lowB, np.float32)
    # the coarse search on the 32 x 32 grids themselves (a 16 x 16 search was cheaper but its 1-px shift error is
    # 2 grid px, outside the polish's +-1 px peak window: on a scratch draw, seed 11, true copy matched 0.62 vs 0.75)
    # in budget-sized blocks, as the pair null's splits (at 10k real x 100k generated the one call was the run's
    # 4.0 GB peak, lead 2026-11-30); every pair is scored on its own, so the values are the one call's
    co = _memo_pairs(lambda t: _coarse_in_blocks(lowA, lowB, pairs[t]), pairs, keys_a, keys_b, cache, "anat_coarse",
                     _CO_KEYS)
    score = np.full(R * c, -np.inf)
    score[ok] = co["coarse"]
    score = score.reshape(R, c)
    pos = np.full(R * c, -1, np.int64)
    pos[ok] = np.arange(len(pairs))
    m = int(max(1, min(n_polish, c)))
    fcol = None
    if force is not None and np.asarray(force, bool).any():   # the coarse source's best: polished and flowed (elsrc13)
        fcol = _force_top(score, key, key0, (key0 >= 0) & np.asarray(force, bool)[None, :])
        m = int(min(m + 1, c))
    top = np.argsort(-score, axis=1, kind="stable")[:, :m]
    fin = np.isfinite(score[np.arange(R)[:, None], top]).ravel()
    pidx = pos[(np.arange(R)[:, None] * c + top).ravel()][fin]

    pa, pb = pairs[pidx, 0], pairs[pidx, 1]
    po = _memo_pairs(lambda t: _polished_pairs(lowA, lowB, pairs, co, pidx[t], rounds), pairs[pidx], keys_a, keys_b,
                     cache, f"anat_polish{rounds}", _PO_KEYS)
    ncc = po["ncc"]
    # per row: the polished candidate with the highest registered NCC (first on ties)
    order = np.lexsort((-ncc, pa))
    first = order[np.r_[True, pa[order][1:] != pa[order][:-1]]]
    r = pa[first]
    out["ncc"][r] = ncc[first]
    out["match"][r] = pb[first]
    for k in ("flip", "angle", "scale", "dy", "dx"):
        out[k][r] = np.asarray(po[k], np.float64)[first]
    if _deform.FLOW_CHANNEL and _deform.FLOW_PICK:   # elas14: picked by a cheap non-rigid score, not the rigid NCC
        kk = _pick_k(c)
        cidx, fz = _coarse_top(score, pos.reshape(R, c), kk, fcol)      # coarse order (the forced column first)
        fink = cidx >= 0
        cid = cidx[fink]
        cv = _memo_pairs(lambda t: _cheap_pairs(lowA, lowB, pairs[cid[t]], {k: np.asarray(co[k])[cid[t]]
                                                                              for k in _CO_KEYS}),
                         pairs[cid], keys_a, keys_b, cache, "anat_cflow" + _deform.flow_tag(), ("cflow",))["cflow"]
        cm = np.full((R, kk), -np.inf)
        cm[fink] = cv
        pk = _flow_picks(cm)
        if fz is not None:                   # the forced candidate gets the flow too (elsrc13)
            pk |= fz
        fp = cidx[pk]                                                   # indices into pairs
        pf = _memo_pairs(lambda t: _polished_pairs(lowA, lowB, pairs, co, fp[t], rounds), pairs[fp], keys_a, keys_b,
                         cache, f"anat_polish{rounds}", _PO_KEYS)
        fv = _memo_pairs(lambda t: _flow_pairs(lowA, lowB, pairs[fp[t]], {k: np.asarray(pf[k])[t] for k in _PO_KEYS}),
                         pairs[fp], keys_a, keys_b, cache, "anat_flow" + _deform.flow_tag(), ("flow",))["flow"]
        np.maximum.at(out["flow_ncc"], pairs[fp, 0], np.maximum(np.asarray(fv, np.float64),
                                                               np.asarray(pf["ncc"], np.float64)))
    elif _deform.FLOW_CHANNEL:               # the flow channel (elas13): the row's FLOW_TOP best polished candidates
        nm = np.full(R * m, -np.inf)
        nm[fin] = ncc
        at = np.full(R * m, -1, np.int64)
        at[fin] = np.arange(len(pidx))
        pk = _flow_picks(nm.reshape(R, m))
        if fcol is not None:                 # the forced candidate gets the flow too (elsrc13)
            pk |= (top == fcol[:, None]) & (fcol[:, None] >= 0) & np.isfinite(nm.reshape(R, m))
        fs = at.reshape(R, m)[pk]                                     # indices into pidx
        fv = _memo_pairs(lambda t: _flow_pairs(lowA, lowB, pairs[pidx[fs[t]]],
                                               {k: np.asarray(po[k])[fs[t]] for k in _PO_KEYS}),
                         pairs[pidx[fs]], keys_a, keys_b, cache, "anat_flow" + _deform.flow_tag(), ("flow",))["flow"]
        np.maximum.at(out["flow_ncc"], pa[fs], np.maximum(np.asarray(fv, np.float64), ncc[fs]))
    return out


def _lowpass_rows(X: np.ndarray, rows=None, chunk: int = 4096, *, mirror: bool = False) -> np.ndarray:
    """:func:`anatomy_lowpass` of ``X[rows]`` (default every row) in blocks of ``chunk`` (a memory-mapped set is
    never converted whole; the grids are per image, so the same values as one call)."""
    idx = np.arange(len(X)) if rows is None else np.asarray(rows, np.int64)
    if len(idx) == 0:
        return np.zeros((0,) + anatomy_lowpass(np.zeros((1,) + X.shape[1:], np.uint8)).shape[1:], np.float32)
    return np.concatenate([anatomy_lowpass(np.asarray(X[idx[b:b + chunk]]), mirror=mirror)
                           for b in range(0, len(idx), chunk)])


def _anat_ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``-log((1 - a + 1e-3) / (1 - b + 1e-3))`` (``1 - ncc`` clipped at 0): the anatomy ratios' form."""
    return -np.log((np.clip(1.0 - a, 0, None) + _EPS_NCC) / (np.clip(1.0 - b, 0, None) + _EPS_NCC))


def anatomy_evidence(G: np.ndarray, P: np.ndarray, *, chunk: int = 4096, executor=None,
                     shortlist: tuple | None = None, keys_gen=None, keys_pool=None, cache: dict | None = None,
                     force: np.ndarray | None = None) -> dict:
    """Anatomy (low-pass) evidence of every pool image against the generated images.

    Parameters
    ----------
    G : uint8 [M, H, W]   generated images (may be memory-mapped; processed in chunks of ``chunk``)
    P : uint8 [N, H, W]   the real pool (candidates and reference), ``N >= 2``
    chunk : int           generated images per chunk
    executor : Executor or None   where the k-NN searches run (default local)
    shortlist : (int [N, C], int [N, C']) or None
        Registration candidates of every pool image among ``G`` and (the control) among the other pool images,
        as :func:`.register.shortlists` returns them; with it, each is also registered on the low-pass grids
        (:func:`registered_anatomy`) and the registered NCC competes with the in-place one on both sides.

    Returns
    -------
    dict[str, float64 [N]]
        ``anat_ratio`` (see the module docstring), ``anat_ncc`` (best low-pass NCC with a generated image,
        in place, mirrored or registered), ``anat_real_ncc`` (the same with another pool image), ``anat_match``
        (index into ``G`` of the best generated image) and ``anat_flip`` (1 where the mirrored pool image
        matched); with ``shortlist`` also ``anat_reg_ncc`` / ``anat_real_reg_ncc`` (the registered values alone)
        and the best match's transform ``anat_angle``, ``anat_scale``, ``anat_dy``, ``anat_dx`` (full-resolution
        pixels; 0 / 1 / 0 / 0 where the in-place search won); with ``shortlist`` and :data:`.deform.FLOW_CHANNEL`
        also ``anat_flow_ratio`` (the same ratio with each side's NCC the better of the above and the flow NCC of
        :func:`registered_anatomy`'s ``flow_ncc``) and ``anat_flow_ncc`` / ``anat_real_flow_ncc`` (those alone).

    force : bool [C] or None
        The generated candidates' columns of the coarse low-pass source (branch elsrc13): see
        :func:`registered_anatomy` (the control's candidates have none).
    keys_gen, keys_pool : list or None, and cache : dict or None
        Content keys of ``G`` and ``P`` and a memo shared across calls: the registered pairs' values are memoised
        per pair of images (:func:`registered_anatomy`), so pools that share images register them once (the same
        values as without it).
    """
    n = len(P)
    lowP = _lowpass_rows(P, chunk=chunk)
    fP = _unit_rows(lowP)
    fPm = anatomy_features(P, mirror=True, chunk=chunk)
    q = np.concatenate([fP, fPm])                                  # [2N, D]: in place, then mirrored
    if shortlist is not None:
        cg, cr = (np.asarray(a, np.int64) for a in shortlist)
        ug, inv = np.unique(cg[cg >= 0], return_inverse=True)     # only the shortlisted generated images' grids
        lowG = np.zeros((len(ug),) + lowP.shape[1:], np.float32)
    else:
        ug = np.zeros(0, np.int64)

    from imprint.engine.pixelstore import release_pages

    def gen_rows(c0, c1):
        low = anatomy_lowpass(np.asarray(G[c0:c1]))
        release_pages(G)   # issue 15, scale8: a pass over the memory-mapped set left 1.6 GB resident at 100k
        a, b = np.searchsorted(ug, [c0, c0 + len(low)])
        if b > a:   # keep the grids of the shortlisted ones (the registered search below)
            lowG[a:b] = low[ug[a:b] - c0]
        return _unit_rows(low)

    ig = _nearest_generated(gen_rows, len(G), q, lowP.shape[1:], chunk=chunk, executor=executor)
    self_ = np.r_[np.arange(n), np.arange(n)]
    ir = _best_ncc(iter([(0, fP)]), q, exclude=self_, executor=executor)

    def ncc_of(idx, base_fn):
        out = np.full(2 * n, -1.0)
        ok = idx >= 0
        if ok.any():
            rows = np.flatnonzero(ok)
            uniq, inv = np.unique(idx[ok], return_inverse=True)
            fb = base_fn(uniq)
            out[rows] = np.einsum("ij,ij->i", q[rows].astype(np.float64), fb[inv].astype(np.float64))
        return out

    def gen_features(u):   # the matched generated images, in blocks (bounded memory for a large pool)
        return anatomy_features(G, rows=u, chunk=chunk)

    ncc_g2 = ncc_of(ig, gen_features)
    ncc_r2 = ncc_of(ir, lambda u: fP[u])
    flip = (ncc_g2[n:] > ncc_g2[:n]).astype(np.int64)
    ncc_g = np.maximum(ncc_g2[:n], ncc_g2[n:])
    ncc_r = np.maximum(ncc_r2[:n], ncc_r2[n:])
    match = np.where(flip == 1, ig[n:], ig[:n])
    ev: dict = {}
    if shortlist is not None:
        cgl = np.full(cg.shape, -1, np.int64)
        cgl[cg >= 0] = inv
        kg = None if keys_gen is None else [keys_gen[int(u)] for u in ug]
        rg = registered_anatomy(lowP, lowG, cgl, keys_a=keys_pool, keys_b=kg, cache=cache,
                                **({} if force is None else {"force": force}))
        rr = registered_anatomy(lowP, lowP, cr, exclude=np.arange(n), keys_a=keys_pool, keys_b=keys_pool, cache=cache)
        step = max(1, int(round(lowpass_sigma(*P.shape[1:]))))
        win = rg["ncc"] > ncc_g
        ncc_g = np.where(win, rg["ncc"], ncc_g)
        match = np.where(win, ug[np.maximum(rg["match"], 0).astype(np.int64)], match)
        flip = np.where(win, rg["flip"], flip).astype(np.int64)
        ncc_r = np.maximum(ncc_r, rr["ncc"])
        if _deform.FLOW_CHANNEL:             # its own channel (elas13): everything above, or the flow NCC
            ev["anat_flow_ratio"] = _anat_ratio(np.maximum(ncc_g, rg["flow_ncc"]), np.maximum(ncc_r, rr["flow_ncc"]))
            ev["anat_flow_ncc"], ev["anat_real_flow_ncc"] = rg["flow_ncc"], rr["flow_ncc"]
        ev.update({"anat_reg_ncc": rg["ncc"], "anat_real_reg_ncc": rr["ncc"],
              "anat_angle": np.where(win, rg["angle"], 0.0), "anat_scale": np.where(win, rg["scale"], 1.0),
              "anat_dy": np.where(win, rg["dy"] * step, 0.0), "anat_dx": np.where(win, rg["dx"] * step, 0.0)})
    ratio = _anat_ratio(ncc_g, ncc_r)
    return {"anat_ratio": ratio, "anat_ncc": ncc_g, "anat_real_ncc": ncc_r,
            "anat_match": match.astype(np.float64), "anat_flip": flip.astype(np.float64), **ev}


def anatomy_pair_values(real: np.ndarray, inA: np.ndarray, cand: np.ndarray | None = None, *,
                        only: np.ndarray | None = None, block: int = 512, a_only: int = 0) -> np.ndarray:
    """``anat_ratio`` of a real-to-real split, for a null made of pairs of real images (the unsupervised mode).

    Every real image ``x`` plays a non-member: the other real images in part ``A`` (``inA``) play the generated
    images and those in part ``B`` the other pool images, and the value is :func:`anatomy_evidence`'s
    ``-log((1 - ncc_A + 1e-3) / (1 - ncc_B + 1e-3))``, with ``ncc_A`` (``ncc_B``) the best low-pass NCC of
    ``x`` with an image of the part: searched exhaustively in place and mirrored, and, with ``cand``,
    registered on the low-pass grids over ``x``'s candidates in that part (:func:`registered_anatomy`), as
    the evidence does over the registration shortlists.  So a null built from these values is computed the
    same way as the evidence it calibrates (:mod:`.calibrate`'s real-pair null uses
    :func:`anatomy_pair_values_splits`, of which this is one split).

    Parameters
    ----------
    real : uint8 [R, H, W]
    inA : bool [R]                  part A (the rest is part B); ``x`` itself is never its own partner
    cand : int [R, C] or None       registration candidates of every image among the real images (-1: none),
                                    e.g. :func:`.register.shortlists`' control candidates; None: in place only
    only : bool [R] or None         compute these rows only (the others are NaN)
    block : int                     rows of the R x R similarity computed at once (memory)
    a_only : int                    the last ``a_only`` columns of ``cand`` are candidates in part A only (the
                                    evidence's low-pass candidates among the generated images, which its
                                    control does not get; branch short7)

    Returns
    -------
    float64 [R]   NaN where a part holds no other image (or outside ``only``)
    """
    return anatomy_pair_values_splits(real, [inA], cand, only=only, block=block, a_only=a_only)[0]


def anatomy_pair_values_splits(real: np.ndarray, inAs, cand: np.ndarray | None = None, *,
                               only: np.ndarray | None = None, block: int = 512, a_only: int = 0,
                               groups: np.ndarray | None = None, flow: bool = False,
                               force: np.ndarray | None = None):
    """:func:`anatomy_pair_values` for several splits of one real folder, sharing the work that does not depend
    on the split: the low-pass grids, each block of the R x R low-pass similarities, every (image, candidate)
    pair's coarse registration, and the polish and registered NCC of every pair any split needs.  Each split
    follows :func:`registered_anatomy`'s rule (the same candidates in each part, the same coarse-best
    ``N_POLISH`` per part, ties to the earlier candidate; equal bit for bit to it in a check when this was
    written, and tested against :func:`anatomy_evidence`), at about one split's cost.

    Parameters
    ----------
    real : uint8 [R, H, W]
    inAs : sequence of bool [R]     part A of each split
    cand, only, block, a_only : as in :func:`anatomy_pair_values`
    groups : int [R] or None        series labels (:func:`.calibrate.series_groups`): an image's own series is
                                    never searched, like the image itself (``cand`` must exclude it too)

    flow : bool                     also the flow channel's values (``anat_flow_ratio``, :data:`.deform.FLOW_CHANNEL`;
                                    needs ``cand``)
    force : bool [C] or None        the columns of ``cand`` from the coarse low-pass source (branch elsrc13): per split
                                    and part, the first one usable in the part is always polished and flowed, as
                                    :func:`registered_anatomy`'s ``force``

    Returns
    -------
    list of float64 [R], one per split (NaN where a part holds no other image, or outside ``only``); with ``flow``
    a pair of such lists, ``anat_ratio``'s and ``anat_flow_ratio``'s
    """

    inAs = [np.asarray(a, bool) for a in inAs]
    S = len(inAs)
    R = len(real)
    rows = np.arange(R) if only is None else np.flatnonzero(np.asarray(only, bool))
    # by blocks of the evidence's chunk (issue 15, mem11: the whole folder's float32 copy, ~0.8 GB at 10k images of
    # 128 x 128, was converted at once for the mirrored grids); per image, so the same values
    from .evidence import generated_chunk

    lp_chunk = generated_chunk(R, int(np.prod(real.shape[1:])))
    low = _lowpass_rows(real, chunk=lp_chunk)
    f = _unit_rows(low)
    fm = anatomy_features(real, mirror=True, chunk=lp_chunk)
    best = [{True: np.full(R, -np.inf), False: np.full(R, -np.inf)} for _ in range(S)]
    fT = f.T.astype(np.float64)      # once, not twice per block (mem11: 2 x 80 MB per block at 10k real images)
    for b0 in range(0, len(rows), block):
        r = rows[b0:b0 + block]
        s = np.maximum(f[r].astype(np.float64) @ fT, fm[r].astype(np.float64) @ fT)
        s[np.arange(len(r)), r] = -np.inf                      # never the image itself
        if groups is not None:                                 # nor its own series
            s[np.asarray(groups)[r][:, None] == np.asarray(groups)[None, :]] = -np.inf
        for si, inA in enumerate(inAs):
            for part in (True, False):
                best[si][part][r] = np.where(inA[None, :] == part, s, -np.inf).max(1)
    bestF = best                              # the flow channel's (flow): the rigid values where no pair is registered
    if cand is not None and len(rows):
        for bs in best:                       # registered_anatomy's NCC of a row without candidates is -1
            for part in (True, False):
                bs[part][rows] = np.maximum(bs[part][rows], -1.0)
        cand = np.asarray(cand, np.int64)[rows]
        c = cand.shape[1]
        # registered_anatomy's candidate key: the image itself never, a candidate found twice scored once (first)
        key = cand.copy()
        key[key == rows[:, None]] = -1
        key0 = key.copy()                                          # before deduplication (elsrc13)
        for t in range(1, c):
            key[:, t] = np.where((key[:, :t] == key[:, t:t + 1]).any(1), -1, key[:, t])
        ok = key >= 0
        pr, pc = np.nonzero(ok)
        pairs = np.stack([rows[pr], key[pr, pc]], 1)
        if len(pairs):
            lowf = np.ascontiguousarray(low, np.float32)
            co = _coarse_in_blocks(lowf, lowf, pairs)             # split-independent
            score = np.full((len(rows), c), -np.inf)
            score[pr, pc] = co["coarse"]
            pos = np.full((len(rows), c), -1, np.int64)
            pos[pr, pc] = np.arange(len(pairs))
            m = int(max(1, min(N_POLISH, c)))
            picks = []                                             # (split, part, top [n, m]) per split and part
            picksK = []                                            # the same over FLOW_PICK_K (elas14)
            need = np.zeros(len(pairs), bool)
            b_ok = np.arange(c) < c - int(a_only)                  # columns a part-B candidate may come from
            fz_on = force is not None and np.asarray(force, bool).any()
            for si, inA in enumerate(inAs):
                for part in (True, False):
                    sc = np.where(ok & (inA[np.maximum(key, 0)] == part) & (part | b_ok[None, :]), score, -np.inf)
                    mm, fcol = m, None
                    if fz_on:                  # the coarse source's best usable in the part (registered_anatomy's force)
                        el = ((key0 >= 0) & (inA[np.maximum(key0, 0)] == part) & (part | b_ok[None, :])
                              & np.asarray(force, bool)[None, :])
                        fcol = _force_top(sc, key, key0, el)
                        mm = int(min(m + 1, c))
                    p, fz = _coarse_top(sc, pos, mm, fcol)
                    need[p[p >= 0]] = True
                    picks.append((si, part, p, fz))
                    if flow and _deform.FLOW_PICK:    # elas14: the part's coarse-best for the cheap flow score
                        picksK.append((si, part) + _coarse_top(sc, pos, _pick_k(c), fcol))
            nid = np.flatnonzero(need)
            ncc_all = np.full(len(pairs), -np.inf)
            # in blocks (issue 15, mem11: the ~100k needed pairs' registered grids and float64 NCC temporaries at
            # once were the 10k x 100k run's peak)
            pol = _polished_pairs(lowf, lowf, pairs, co, nid, POLISH_ROUNDS)
            ncc_all[nid] = pol["ncc"]
            for si, part, p, _ in picks:
                v = np.where(p >= 0, ncc_all[np.maximum(p, 0)], -np.inf).max(1)
                has = (p >= 0).any(1)
                cur = best[si][part]
                cur[rows[has]] = np.maximum(cur[rows[has]], v[has])
            if flow and _deform.FLOW_PICK:
                bestF = _splits_flow_pick(lowf, pairs, co, picksK, best, rows)
            elif flow:
                bestF = _splits_flow(lowf, pairs, nid, pol, ncc_all, picks, best, rows)
    out = [_split_ratio(b, rows, R) for b in best]
    if not flow:
        return out
    return out, [_split_ratio(b, rows, R) for b in bestF]


def _split_ratio(best: dict, rows: np.ndarray, R: int) -> np.ndarray:
    """One split's ratio from its parts' best NCC (:func:`anatomy_pair_values_splits`); NaN where a part has none."""
    o = np.full(R, np.nan)
    a, b = best[True][rows], best[False][rows]
    good = np.isfinite(a) & np.isfinite(b)
    o[rows[good]] = _anat_ratio(a[good], b[good])
    return o


def _splits_flow(lowf: np.ndarray, pairs: np.ndarray, nid: np.ndarray, pol: dict, ncc_all: np.ndarray, picks: list,
                 best: list, rows: np.ndarray) -> list:
    """The flow channel's best NCC per split and part (:func:`anatomy_pair_values_splits` with ``flow``): the rigid
    best (``best``), or the flow NCC of the part's :data:`.deform.FLOW_TOP` best polished candidates
    (:func:`_flow_picks`, as :func:`registered_anatomy` picks them), each pair's flow computed once."""
    at = np.full(len(pairs), -1, np.int64)
    at[nid] = np.arange(len(nid))                              # pair -> row of the polished values
    sels, fid = _split_picks(picks, ncc_all)
    fl = np.full(len(pairs), -np.inf)
    fl[fid] = np.maximum(_flow_pairs(lowf, lowf, pairs[fid], {k: np.asarray(pol[k])[at[fid]] for k in _PO_KEYS})["flow"],
                         ncc_all[fid])
    return _split_best(best, picks, sels, fl, rows)


def _split_picks(picks: list, score: np.ndarray):
    """Per split and part (``picks``: (split, part, pair indices [n, m] or -1, forced bool [n, m] or None)), which
    pairs get the flow: the :data:`.deform.FLOW_TOP` best by ``score`` [pairs] (:func:`_flow_picks`) and the forced
    one (elsrc13); (list of bool [n, m], the pairs needed, sorted)."""
    sels = []
    need = np.zeros(len(score), bool)
    for si, part, p, fz in picks:
        sel = _flow_picks(np.where(p >= 0, score[np.maximum(p, 0)], -np.inf))
        if fz is not None:                                     # the forced candidate gets the flow too (elsrc13)
            sel = sel | fz
        sels.append(sel)
        need[p[sel]] = True
    return sels, np.flatnonzero(need)


def _split_best(best: list, picks: list, sels: list, fl: np.ndarray, rows: np.ndarray) -> list:
    """``best`` (per split, per part: best NCC [R]) raised by the flow values ``fl`` [pairs] of the picked pairs."""
    out = [{k: v.copy() for k, v in b.items()} for b in best]
    for (si, part, p, _), sel in zip(picks, sels):
        v = np.where(sel, fl[np.maximum(p, 0)], -np.inf).max(1)
        cur = out[si][part]
        cur[rows] = np.maximum(cur[rows], v)
    return out


def _splits_flow_pick(lowf: np.ndarray, pairs: np.ndarray, co: dict, picksK: list, best: list,
                      rows: np.ndarray) -> list:
    """:func:`_splits_flow` with :data:`.deform.FLOW_PICK` (branch elas14), :func:`registered_anatomy`'s rule per split
    and part: the part's :data:`.deform.FLOW_PICK_K` coarse-best candidates (``picksK``: pair indices, -1 none, and the
    forced column) get the cheap flow score (:func:`_cheap_pairs`), the :data:`.deform.FLOW_TOP` best by it (ties:
    coarse order) and the forced one are polished and get the full flow; each pair's values computed once."""
    needC = np.zeros(len(pairs), bool)
    for _, _, p, _ in picksK:
        needC[p[p >= 0]] = True
    cid = np.flatnonzero(needC)
    cf = np.full(len(pairs), -np.inf)
    cf[cid] = _cheap_pairs(lowf, lowf, pairs[cid], {k: np.asarray(co[k])[cid] for k in _CO_KEYS})["cflow"]
    sels, fid = _split_picks(picksK, cf)
    fl = np.full(len(pairs), -np.inf)
    if len(fid):
        pol = _polished_pairs(lowf, lowf, pairs, co, fid, POLISH_ROUNDS)
        fl[fid] = np.maximum(_flow_pairs(lowf, lowf, pairs[fid], {k: np.asarray(pol[k]) for k in _PO_KEYS})["flow"],
                             np.asarray(pol["ncc"], np.float64))
    return _split_best(best, picksK, sels, fl, rows)
