"""Tile-wise registered anatomy NCC over the best-matching share of tiles: partial copies (issue 13, branch patch12).

Diffusion models emit stitched parts of training images (Somepalli et al., CVPR 2023; Carlini et al., 2023): a
generated image whose upper / left half or more is a training image, the rest another image, and the copied part
possibly moved (flipped, shifted, rotated, rescaled).  The registered anatomy NCC (:func:`.anatomy.registered_ncc`)
compares the whole overlap of the registered low-pass grids, so the foreign part pulls a partial copy's NCC down to
a look-alike's.  Here the registered grid is cut into ``TILES x TILES`` tiles, every tile is registered by its own
whole-pixel shift in ``[-TILE_SHIFT, TILE_SHIFT]^2`` (its NCC with the window of the other grid it lands on), and the
value is the Pearson correlation over the best-matching ``TILE_SHARE`` of the tiles (each at its own shift): a member
contributes at least about half of the image, so the best half of the tiles are the copied part.

Wiring (:data:`NCC_TILES`, opt-in): :func:`.anatomy.registered_ncc` returns the better of its rigid value and
:func:`tile_ncc`, so every registered low-pass pair - generated candidates, the control, the reference rows and the
real-to-real pair null - is scored the same way, and :func:`.anatomy.checkpoint_tag` re-keys the checkpoints.

Constants, all a priori (none chosen on a zoo seed or on dev): ``TILES = 4`` (8 x 8 grid pixels = 32 image pixels at
128 px, the size elas11's piecewise-rigid NCC uses; a quarter of the image side, so a 50-70% copy covers whole
tiles), ``TILE_SHIFT = 1`` (one grid pixel = one sigma of the low-pass = 4 px at 128 px: what is left of a part's
misregistration when the whole-image registration also fits the other part), ``TILE_SHARE = 0.5`` (the smallest
member share the zoo and the literature's stitched copies have), ``TILE_MIN_STD = 1`` grey level (a tile flatter than
that on either side - air, table - has no anatomy to match: its NCC is noise, so it is never selected).
"""

from __future__ import annotations

import numpy as np

#: Whether :func:`.anatomy.registered_ncc` takes the better of the rigid NCC and :func:`tile_ncc` (off: main's
#: values bit for bit, checked on one audit's 62 output arrays).  A value != False re-keys the checkpoints
#: (:func:`.anatomy.checkpoint_tag`).  **Opt-in (off)**: on zoo seed 2 (full size, same session as main) it costs
#: resynth sigma 3 (``fpr:0.01`` recall 0.517 -> 0.067, TPR@1% 0.933 -> 0.733) and resynth 3 + geom 1, because the
#: best half of the tiles lifts look-alikes' and the null's registered NCC too (scratch seed 11: innocent rows' best
#: 1 - NCC median 0.020 -> 0.009 against the members' 0.005 -> 0.003); the patch mixes' copy is a registration
#: candidate for only 0.68 (moved part: 0.28) of the members, which caps any pair value (RESULTS.md, patch12).
NCC_TILES = False
#: Tiles per side, largest per-tile shift (grid pixels), share of the tiles kept, and the flat-tile floor (grey levels
#: of low-pass standard deviation); see the module docstring (a priori).
TILES = 4
TILE_SHIFT = 1
TILE_SHARE = 0.5
TILE_MIN_STD = 1.0
#: Pairs per block (memory only: ~(2 s + 1)^2 x h x w float32 windows per pair in flight; values are per pair).
_BLOCK = 512


def tag() -> str:
    """The checkpoint fragment of the current settings (``""`` when off)."""
    if not NCC_TILES:
        return ""
    return f"+tiles{TILES}s{TILE_SHIFT}q{TILE_SHARE:g}f{TILE_MIN_STD:g}"


def _offsets(shift: int):
    """Shifts in search order: (0, 0) first, then row-major; a later shift wins only if strictly better."""
    return [(0, 0)] + [(dy, dx) for dy in range(-shift, shift + 1) for dx in range(-shift, shift + 1)
                       if (dy, dx) != (0, 0)]


def tile_search(reg: np.ndarray, low_b: np.ndarray, m: np.ndarray, tiles: int | None = None,
                shift: int | None = None, min_std: float | None = None):
    """Every tile of ``reg`` registered onto ``low_b`` by its own whole-pixel shift.

    Tile ``(i, j)`` covers rows ``i th .. (i+1) th - 1`` and columns ``j tw .. (j+1) tw - 1`` of ``reg`` (``th = h //
    tiles``; rows / columns past the last whole tile are left out); at shift ``(dy, dx)`` it is compared with the
    window of ``low_b`` moved by ``(dy, dx)``, over the pixels valid in ``m`` whose window pixel lies inside the grid.
    A (tile, shift) counts when at least half the tile's pixels are compared and both sides' standard deviation there
    is at least ``min_std``.

    Parameters
    ----------
    reg, low_b : float [K, h, w]   registered grid and the grid it was registered onto
    m : bool [K, h, w]             where ``reg`` is valid (the overlap, minus any left-out frame)
    tiles, shift, min_std          None: :data:`TILES`, :data:`TILE_SHIFT`, :data:`TILE_MIN_STD`

    Returns
    -------
    ncc : float64 [K, tiles, tiles]   the tile's best NCC (-inf where no shift counts)
    pick : int64 [K, tiles, tiles]    its shift, an index into :func:`_offsets` ``(shift)`` (first on ties)
    """
    tiles = TILES if tiles is None else int(tiles)
    shift = TILE_SHIFT if shift is None else int(shift)
    min_std = TILE_MIN_STD if min_std is None else float(min_std)
    a = np.asarray(reg, np.float64)
    K, h, w = a.shape
    th, tw = h // tiles, w // tiles
    s = shift
    bp = np.zeros((K, h + 2 * s, w + 2 * s))
    bp[:, s:s + h, s:s + w] = low_b
    vp = np.zeros((K, h + 2 * s, w + 2 * s))
    vp[:, s:s + h, s:s + w] = 1.0
    H, W = th * tiles, tw * tiles

    def tiled(x):                                   # [K, h, w] -> [K, tiles, tiles, th * tw]
        return x[:, :H, :W].reshape(K, tiles, th, tiles, tw).swapaxes(2, 3).reshape(K, tiles, tiles, th * tw)

    at = tiled(a)
    mt = tiled((np.asarray(m) != 0).astype(np.float64))
    best = np.full((K, tiles, tiles), -np.inf)
    pick = np.zeros((K, tiles, tiles), np.int64)
    for k, (dy, dx) in enumerate(_offsets(s)):
        bt = tiled(bp[:, s + dy:s + dy + h, s + dx:s + dx + w])
        wt = mt * tiled(vp[:, s + dy:s + dy + h, s + dx:s + dx + w])
        n = wt.sum(-1)
        nn = np.maximum(n, 1.0)
        ma, mb = (at * wt).sum(-1) / nn, (bt * wt).sum(-1) / nn
        da, db = (at - ma[..., None]) * wt, (bt - mb[..., None]) * wt
        saa, sbb, sab = (da * da).sum(-1), (db * db).sum(-1), (da * db).sum(-1)
        floor = n * min_std ** 2
        ok = (n >= th * tw / 2) & (saa >= floor) & (sbb >= floor) & (saa > 1e-12) & (sbb > 1e-12)
        c = np.where(ok, sab / np.sqrt(np.maximum(saa * sbb, 1e-24)), -np.inf)
        better = c > best
        best = np.where(better, c, best)
        pick = np.where(better, k, pick)
    return best, pick


def tile_ncc(reg: np.ndarray, low_b: np.ndarray, m: np.ndarray, tiles: int | None = None, shift: int | None = None,
             share: float | None = None, min_std: float | None = None) -> np.ndarray:
    """Pearson correlation over the best-matching share of the tiles, each tile at its own shift (:func:`tile_search`).

    The ``ceil(share * tiles^2)`` tiles with the highest tile NCC (ties to the earlier tile in row-major order; only
    tiles that count) are kept, and the correlation of all their compared (``reg`` pixel, shifted ``low_b`` pixel)
    pairs together is returned: on the registered NCC's scale (between-tile contrast included), not a mean of tile
    NCCs.  0 where no tile counts (so ``max(rigid, tile_ncc)`` is then the rigid value whenever that is >= 0).

    Parameters: as :func:`tile_search`, and ``share`` (None: :data:`TILE_SHARE`).

    Returns
    -------
    float64 [K]
    """
    tiles = TILES if tiles is None else int(tiles)
    shift = TILE_SHIFT if shift is None else int(shift)
    share = TILE_SHARE if share is None else float(share)
    K = len(reg)
    out = np.zeros(K)
    for b0 in range(0, K, _BLOCK):
        sl = slice(b0, b0 + _BLOCK)
        out[sl] = _tile_ncc_block(reg[sl], low_b[sl], m[sl], tiles, shift, share, min_std)
    return out


def _tile_ncc_block(reg, low_b, m, tiles, shift, share, min_std):
    a = np.asarray(reg, np.float64)
    K, h, w = a.shape
    if K == 0 or h // tiles < 2 or w // tiles < 2:
        return np.zeros(K)
    best, pick = tile_search(a, low_b, m, tiles, shift, min_std)
    T2 = tiles * tiles
    keep_n = int(np.ceil(share * T2 - 1e-9))
    flat = best.reshape(K, T2)
    order = np.argsort(-flat, axis=1, kind="stable")[:, :keep_n]
    keep = np.zeros((K, T2), bool)
    np.put_along_axis(keep, order, True, 1)
    keep &= np.isfinite(flat)
    keep = keep.reshape(K, tiles, tiles)
    # the shifted partner of every kept tile's pixels, assembled, and the pooled Pearson correlation
    s = shift
    th, tw = h // tiles, w // tiles
    bp = np.zeros((K, h + 2 * s, w + 2 * s))
    bp[:, s:s + h, s:s + w] = low_b
    vp = np.zeros((K, h + 2 * s, w + 2 * s), bool)
    vp[:, s:s + h, s:s + w] = True
    comp = np.zeros((K, h, w))
    cm = np.zeros((K, h, w), bool)
    pk = np.repeat(np.repeat(np.where(keep, pick, -1), th, 1), tw, 2)      # [K, H, W]
    H, W = th * tiles, tw * tiles
    mm = np.asarray(m)[:, :H, :W] != 0
    for k, (dy, dx) in enumerate(_offsets(s)):
        sel = pk == k
        if sel.any():
            comp[:, :H, :W] = np.where(sel, bp[:, s + dy:s + dy + H, s + dx:s + dx + W], comp[:, :H, :W])
            cm[:, :H, :W] |= sel & mm & vp[:, s + dy:s + dy + H, s + dx:s + dx + W]
    from .anatomy import _masked_ncc

    return _masked_ncc(a, comp, cm)
