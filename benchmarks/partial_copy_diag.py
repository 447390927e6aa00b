"""Partial copies (issue 13, branch patch12): diagnosis of the registered anatomy evidence and its candidates.

For every selected zoo scenario (``membership_zoo.scenarios``, the zoo's draws for ``--seed``; use a scratch seed,
not a reported one):

1. **Is the copy a candidate?**  Of each member: among the registration shortlist (:func:`register.shortlists`),
   the low-pass source (:func:`register.lowpass_candidates`), their union; and among the top 1 / 3 / 5 of a scratch
   **per-tile nearest-neighbour source** (not in the engine): the member's 32 x 32 low-pass grid cut into 4 x 4 tiles
   of 8 x 8, every tile with low-pass std >= 1 grey level (and the mirrored grid's) z-normalised and searched by NCC
   among every generated grid's 8 x 8 patches at stride ``--stride`` grid px; each tile votes for the generated image
   of its best patch; ranked by votes, then summed NCC.
2. **Registered anatomy over the union**, rigid vs :data:`tiles.NCC_TILES` (and ``--variants``): the copy as the
   match, the true pair's 1 - NCC, members' best vs every innocent row's best (the non-members and the reference
   rows: the rows that make the null), AUC, and the share of members above every innocent row / its 99th percentile.

    python benchmarks/partial_copy_diag.py --only "patch mix,resynth sigma:3" --seed 11 --stride 1 --pixel-tiles
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import membership_zoo as z  # noqa: E402


def _unit(x):
    x = x - x.mean(-1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-9)


def tile_source_rank(low_q: np.ndarray, low_g: np.ndarray, stride: int = 2, tiles: int = 4,
                     min_std: float = 1.0) -> list:
    """The per-tile nearest-neighbour source (module docstring, 1): for every query grid, the generated rows ranked
    by tile votes (a list of int arrays)."""
    from numpy.lib.stride_tricks import sliding_window_view

    h = low_q.shape[1] // tiles
    pg = sliding_window_view(low_g.astype(np.float32), (h, h), axis=(1, 2))[:, ::stride, ::stride]
    n, py, px = pg.shape[:3]
    flat = pg.reshape(-1, h * h)
    base = _unit(flat).astype(np.float32)
    base[flat.std(-1) < min_std] = 0                  # flat patches never match
    owner = np.repeat(np.arange(n), py * px)
    out = []
    for g in low_q.astype(np.float32):
        votes: dict = {}
        for v in (g, g[:, ::-1]):
            t = v[:tiles * h, :tiles * h].reshape(tiles, h, tiles, h).swapaxes(1, 2).reshape(-1, h * h)
            t = t[t.std(-1) >= min_std]
            if not len(t):
                continue
            s = _unit(t) @ base.T
            for j, b in enumerate(s.argmax(1)):
                c, tot = votes.get(owner[b], (0, 0.0))
                votes[owner[b]] = (c + 1, tot + float(s[j, b]))
        out.append(np.array(sorted(votes, key=lambda o: (-votes[o][0], -votes[o][1])), np.int64))
    return out


def pixel_tile_value(x: np.ndarray, g: np.ndarray, tiles: int = 4, share: float = 0.5, min_std: float = 2.0) -> float:
    """Full-resolution tile evidence of one pair (module docstring, 3): every ``side / tiles`` px tile of ``x`` (and of
    its mirror) with std >= ``min_std`` grey levels located in ``g`` by :func:`skimage.feature.match_template`
    (normalised cross-correlation at every position); the mean of the best ``share`` of the tiles' peaks, the better
    orientation (-1 when no tile counts)."""
    from skimage.feature import match_template

    t = x.shape[0] // tiles
    best = -1.0
    for v in (x, x[:, ::-1]):
        peaks = [match_template(g, v[i * t:(i + 1) * t, j * t:(j + 1) * t]).max()
                 for i in range(tiles) for j in range(tiles) if v[i * t:(i + 1) * t, j * t:(j + 1) * t].std() >= min_std]
        if peaks:
            best = max(best, float(np.mean(np.sort(peaks)[::-1][:int(np.ceil(share * tiles * tiles))])))
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", required=True, help="zoo scenarios (comma-separated name prefixes, optionally :strength)")
    ap.add_argument("--seed", type=int, default=11)
    z.add_draw_flag(ap)
    ap.add_argument("--stride", type=int, default=2, help="stride (grid px) of the tile source's generated patches")
    ap.add_argument("--variants", default="1:0.5", help="tiles.NCC_TILES settings SHIFT:SHARE, comma-separated")
    ap.add_argument("--n-members", type=int, default=60)
    ap.add_argument("--pixel-tiles", action="store_true",
                    help="also the full-resolution tile evidence over the tile source's top 3 (3.; ~2 CPU-min a row set)")
    a = ap.parse_args(argv)
    from sklearn.metrics import roc_auc_score

    from imprint.engine.membership import anatomy as A
    from imprint.engine.membership import register as reg
    from imprint.engine.membership import tiles as T

    rng = np.random.default_rng(a.seed)
    real, fill = z.load_real_and_fillers(z.DEV, "dev", 128)
    nm = a.n_members
    variants = [(False, T.TILE_SHIFT, T.TILE_SHARE)] + [(True, int(v.split(":")[0]), float(v.split(":")[1]))
                                                         for v in a.variants.split(",") if v]
    for name, fn, st in z.scenarios(False, real):
        gen, cand, ref, y, copy = z.build_scenario(real, fn, st, fill, nm, 300, 1000, rng)
        if fn is None or not z.scenario_wanted(name, st, a.only.split(",")):
            continue
        P, iG, iR = z._pool_pixel_neighbours(gen, cand, ref)
        cg = reg.shortlists(gen, P, iG, iR)[0]
        lg = reg.lowpass_candidates(gen, P)[0]
        un = np.concatenate([cg, lg], 1)
        lowP, lowG = A._lowpass_rows(P), A._lowpass_rows(gen)
        t0 = time.process_time()
        ranks = tile_source_rank(lowP[:nm], lowG, a.stride)
        ts = {k: np.mean([copy[i] in r[:k] for i, r in enumerate(ranks)]) for k in (1, 3, 5)}
        ins, inl, inu = ((c[:nm] == copy[:, None]).any(1) for c in (cg, lg, un))
        print(f"{name} {st}: copy a candidate: shortlist {ins.mean():.2f} / low-pass {inl.mean():.2f} / union "
              f"{inu.mean():.2f}; tile source (stride {a.stride}) top 1 / 3 / 5: {ts[1]:.2f} / {ts[3]:.2f} / {ts[5]:.2f} "
              f"({time.process_time() - t0:.1f} CPU-s for {nm} members)", flush=True)
        if a.pixel_tiles:
            t0 = time.process_time()
            Pf, Gf = P.astype(np.float32), gen.astype(np.float32)
            top = tile_source_rank(lowP, lowG, a.stride)
            val = np.array([max([pixel_tile_value(Pf[i], Gf[c]) for c in r[:3]], default=-1.0)
                            for i, r in enumerate(top)])
            tv = np.array([pixel_tile_value(Pf[i], Gf[copy[i]]) for i in range(nm)])
            inn = val[nm:]
            print(f"  full-resolution tiles over the tile source's top 3 (copy among them "
                  f"{np.mean([copy[i] in top[i][:3] for i in range(nm)]):.2f}): true pair median {np.median(tv):.3f}; "
                  f"best median members {np.median(val[:nm]):.3f} / innocent {np.median(inn):.3f} (max {inn.max():.3f}); "
                  f"AUC members vs non-members {roc_auc_score(y, val[:2 * nm]):.3f}, vs innocent "
                  f"{roc_auc_score(np.r_[np.ones(nm), np.zeros(len(inn))], val):.3f}; members above every innocent row "
                  f"{(val[:nm] > inn.max()).mean():.2f}; {time.process_time() - t0:.0f} CPU-s", flush=True)
        for on, sh, q in variants:
            T.NCC_TILES, T.TILE_SHIFT, T.TILE_SHARE = on, sh, q
            t0 = time.process_time()
            r = A.registered_anatomy(lowP, lowG, un)
            tr = A.registered_anatomy(lowP[:nm], lowG, copy[:, None])
            hit = r["match"][:nm] == copy
            inn = r["ncc"][nm:]                   # every innocent row's best: the non-members and the reference
            print(f"  {f'tiles s{sh} q{q:g}' if on else 'rigid'}: match=copy {hit.mean():.2f} (of candidates "
                  f"{hit[inu].mean():.2f}); true 1-ncc median {np.median(1 - tr['ncc']):.4f}; best 1-ncc median "
                  f"members {np.median(1 - r['ncc'][:nm]):.4f} / innocent {np.median(1 - inn):.4f}; AUC members vs "
                  f"non-members {roc_auc_score(y, r['ncc'][:2 * nm]):.3f}, vs innocent "
                  f"{roc_auc_score(np.r_[np.ones(nm), np.zeros(len(inn))], r['ncc']):.3f}; members above every "
                  f"innocent row {(r['ncc'][:nm] > inn.max()).mean():.2f}, above its 99th pct "
                  f"{(r['ncc'][:nm] > np.quantile(inn, 0.99)).mean():.2f}; {time.process_time() - t0:.1f} CPU-s",
                  flush=True)
        T.NCC_TILES = False


if __name__ == "__main__":
    main()
