"""Is the unsupervised real-to-real null's heavy upper tail made of same-patient (near-duplicate) pairs?

Issue 13, branch uns7.  Without ``--dev`` / ``--reference`` the null of :func:`audit_membership` comes from pairs
of real images (``calibrate.real_pair_null``).  On dev gen_e that null has a heavier upper tail than gen_e's
non-members (benchmarks/RESULTS.md, uns6: "Why gen_e's unsupervised recall stays at 0.28").  The hypothesis
tested here: the tail is pairs of slices of ONE patient in the real folder (adjacent slices are much closer than
two patients), which a generator's non-copies do not reproduce; a null without such pairs would be lighter.

The corpus gives no patient ids (its README: one image per patient, file names are sequence numbers), so the
check is on the images themselves, per dev generator's real folder (used + unused):

1. **Are there pairs much closer than the rest?**  Z-scored pixel correlation of every real image with every
   other (in place and mirrored, the best of the two): the nearest other real's correlation (quantiles, the 5
   largest distinct values), the number of pairs above 0.9 / 0.95, and how many images have a neighbour closer (in ``1 - corr``)
   than ``f`` times their own ``k``-th neighbour (the a priori "too close to be another patient" rules a
   series-grouping null would use).
2. **Where does the null's upper tail come from?**  The unsupervised audit (defaults) is run; its null rows
   (``null_scores``, after the empirical null) are attributed to their real image (``real_pair_null``'s
   ``_images``): how many images hold the top 5% of rows, and the Spearman correlation of each image's largest
   null score with its nearest other real's correlation.
3. **Upper bound of a same-patient exclusion:** the rows of the images with the closest other real (the top
   5 / 10 / 20 / 40% by nearest correlation) are dropped from the null and the ``fpr:0.01`` threshold
   (``decide.null_threshold``) re-taken on the rest: recall and unused flagged.  (A diagnosis: the candidates'
   scores and the empirical null's fit are not recomputed.)
4. Per evidence channel: the null rows' robust z quantiles against the unused and used candidates', and which
   channel is the largest in the top 5% of null rows.

``--series-seeds``: the same mechanism where it does exist, on simulated folders (not dev): 40 CT-like phantom
patients (tests/test_membership_evidence.py's ``phantom``, 64 px) x 3 slices each (the patient's image shifted by
~0.5 px with new 1.5 px-smooth texture and noise: slice-to-slice correlation ~0.98 against ~0.8 between
patients); every slice of half the patients copied in place (noise sd 3) among 150 new phantoms; no reference.
The folders come from the tests' builder (tests/conftest.py ``series_folder``, also the planted series test's):
since ci10 the copied half is a random half of the patients, not the even-numbered ones, so the uns7 rows in
benchmarks/RESULTS.md (drawn with the former copy of the builder) are not reproduced bit for bit.
Reported: the share of the null's top-5% rows whose image had a same-patient slice in part A (against all rows),
and the default audit's recall / others flagged at ``fpr:0.01`` and ``fdr:0.1``.

Usage::

    python benchmarks/pair_null_same_patient.py [--corpus /work/shared/corpus/dev] [--gens gen_e,gen_a,gen_b]
        [--cache-dir /tmp/uns7/cache] [--series-seeds 0,1]

Dev rows are in-sample for every constant chosen on dev; nothing in engine/ is chosen here.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from membership_loo import load  # noqa: E402

from imprint.engine.membership import audit_membership  # noqa: E402
from imprint.engine.membership.calibrate import pair_null_matrix, real_pair_null_cached  # noqa: E402
from imprint.engine.membership.decide import null_threshold  # noqa: E402
from imprint.engine.membership.evidence import zscore_images  # noqa: E402


def pair_correlations(real: np.ndarray) -> np.ndarray:
    """float64 [R, R]: best of in-place and mirrored z-pixel correlation, -inf on the diagonal."""
    n = real.shape[1] * real.shape[2]
    z = zscore_images(real).reshape(len(real), -1).astype(np.float64)
    zm = zscore_images(np.ascontiguousarray(real[:, :, ::-1])).reshape(len(real), -1).astype(np.float64)
    c = np.maximum(z @ z.T, z @ zm.T) / n
    np.fill_diagonal(c, -np.inf)
    return c


def run_one(g: str, root: str, cache: str) -> None:
    used, unused = load(f"{root}/{g}/real/used"), load(f"{root}/{g}/real/unused")
    gen = load(f"{root}/{g}/generated")
    real = np.concatenate([used, unused])
    y = np.r_[np.ones(len(used), bool), np.zeros(len(unused), bool)]
    R = len(real)
    c = pair_correlations(real)
    s = np.sort(c, 1)[:, ::-1]                       # each image's neighbours, nearest first
    up = c[np.triu_indices(R, 1)]
    print(f"\n## {g}: {R} real images ({len(used)} used + {len(unused)} unused), {len(gen)} generated")
    print(f"1. nearest other real's correlation: q50 {np.quantile(s[:, 0], .5):.3f}, q90 {np.quantile(s[:, 0], .9):.3f}, "
          f"q99 {np.quantile(s[:, 0], .99):.3f}; 5 largest distinct {np.unique(np.round(s[:, 0], 3))[::-1][:5].tolist()}; "
          f"pairs > 0.9: {int((up > 0.9).sum())}, > 0.95: {int((up > 0.95).sum())} of {len(up)}")
    for k in (2, 5, 10):
        cnt = [int(((1 - s[:, 0]) < f * (1 - s[:, k - 1])).sum()) for f in (0.5, 0.67)]
        print(f"   images with a neighbour closer than 0.5 / 0.67 x their {k}-th neighbour's distance: "
              f"{cnt[0]} / {cnt[1]} of {R}")
    res = audit_membership(gen, real, decision="fpr:0.01", cache_dir=cache)
    pn = real_pair_null_cached(real, len(gen), cache_dir=cache, register=True)
    img = pn["_images"]
    ns = res.null_scores
    sc = res.score
    top = ns >= np.quantile(ns, 0.95)
    per_img = np.bincount(img[top], minlength=R)
    mx = np.array([ns[img == i].max() for i in range(R)])
    rho = spearmanr(mx, s[:, 0])
    print(f"2. null rows {len(ns)}: q50 {np.quantile(ns, .5):+.2f}, q99 {np.quantile(ns, .99):+.2f}, max {ns.max():+.2f}; "
          f"unused candidates q50 {np.quantile(sc[~y], .5):+.2f}, q99 {np.quantile(sc[~y], .99):+.2f}, max {sc[~y].max():+.2f}")
    print(f"   top 5% null rows ({int(top.sum())}) come from {int((per_img > 0).sum())} of {R} images, at most "
          f"{int(per_img.max())} rows each; Spearman(image's largest null score, its nearest real's correlation) "
          f"{rho.statistic:.2f} (p {rho.pvalue:.1e})")
    t0 = null_threshold(ns, 0.01)["threshold"]
    print(f"3. fpr:0.01 with the whole null: threshold {t0:+.2f}, recall {(sc[y] > t0).mean():.2f}, "
          f"unused flagged {int((sc[~y] > t0).sum())}/{int((~y).sum())}")
    for drop in (0.05, 0.1, 0.2, 0.4):
        keep = s[img, 0] < np.quantile(s[:, 0], 1 - drop)
        t = null_threshold(ns[keep], 0.01)["threshold"]
        print(f"   without the rows of the {int(drop * 100)}% images with the closest other real "
              f"({int((~keep).sum())} rows, {int((~keep & top).sum())} of the top-5% rows): threshold {t:+.2f}, "
              f"recall {(sc[y] > t).mean():.2f}, unused flagged {int((sc[~y] > t).sum())}/{int((~y).sum())}")
    names = list(res.info["weights"])
    pa = real_pair_null_cached(real, len(gen), cache_dir=cache, anatomy=True) if "anat_ratio" in names else {}
    pn = dict(pn, **{n: pa[n] for n in names if n in pa and n not in pn})
    Z, nm = pair_null_matrix({n: res.evidence[n] for n in names}, pn, names)
    Zc, Zn = Z[~nm], Z[nm]
    print("4. | channel | weight | null q95 / q99 | unused q50 / q95 / max | used q50 | largest in top-5% null rows |")
    for j, n in enumerate(names):
        print(f"   | {n} | {res.info['weights'][n]:.2f} | {np.quantile(Zn[:, j], .95):+.2f} / {np.quantile(Zn[:, j], .99):+.2f} | "
              f"{np.quantile(Zc[~y, j], .5):+.2f} / {np.quantile(Zc[~y, j], .95):+.2f} / {Zc[~y, j].max():+.2f} | "
              f"{np.median(Zc[y, j]):+.2f} | {np.mean(Zn[top].argmax(1) == j):.2f} |")


def series_folder(seed: int, n_pat: int = 40, per: int = 3, h: int = 64, share: float = 0.5):
    """Real folder of series and a generator copying every slice of a share of the patients (see the module doc):
    the tests' builder (tests/conftest.py ``series_folder``) with 150 new patients.

    Returns real uint8 [n_pat * per, h, h], patient int [n], member int [n], generated uint8 [150 + copies, h, h]."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
    from conftest import series_folder as build

    return build(seed, n_pat=n_pat, per=per, h=h, n_new=150, share=share)


def run_series(seed: int, cache: str, share: float = 0.5) -> None:
    from sklearn.metrics import roc_auc_score

    real, pat, y, gen = series_folder(seed, share=share)
    R = len(real)
    c = pair_correlations(real)
    same = (pat[:, None] == pat[None]) & ~np.eye(R, dtype=bool)
    print(f"\n## series, seed {seed}: {R} real images ({len(set(pat))} patients x 3 slices), {len(gen)} generated; "
          f"same-patient correlation median {np.median(c[same]):.3f}, nearest other patient median "
          f"{np.median(np.where(same, -np.inf, c).max(1)):.3f}")
    out = {}
    for dec in ("fpr:0.01", "fdr:0.1"):
        out[dec] = audit_membership(gen, real, decision=dec, cache_dir=cache, pair_series=False)
    for dec in ("fpr:0.01", "fdr:0.1"):                # series-aware null (uns7's fix)
        out[dec + " series-aware"] = audit_membership(gen, real, decision=dec, cache_dir=cache)
    ser = out["fpr:0.01 series-aware"].info["pair_null"]["series"]
    sg = real_pair_null_cached(real, len(gen), cache_dir=cache, register=True)["_groups"]
    same_g = (sg[:, None] == sg[None]) & ~np.eye(R, dtype=bool)
    print(f"   series found: {ser['n_series']} ({ser['n_grouped']} images, factor {ser['factor']:.3f}, exponent "
          f"{ser['exponent']:.2f}); same-patient pairs grouped {int((same_g & same).sum()) // 2} of "
          f"{int(same.sum()) // 2}, pairs of two patients grouped {int((same_g & ~same).sum()) // 2}")
    ns = out["fpr:0.01"].null_scores
    pn = real_pair_null_cached(real, len(gen), cache_dir=cache, register=True, series=False)
    # the splits as real_pair_null draws them (its defaults: random_state 0, shares 0.25 / 0.5 / 0.75, 2 repeats)
    draw = np.random.default_rng(0)
    in_a = np.stack([draw.random(R) < p for p in (0.25, 0.5, 0.75) for _ in range(2)])
    img, split = pn["_images"], np.arange(len(pn["_images"])) // R
    sib_a = np.array([bool((same[i] & in_a[t]).any()) for i, t in zip(img, split)])
    top = ns >= np.quantile(ns, 0.95)
    print(f"   rows whose image has a same-patient slice in part A: {sib_a[top].mean():.2f} of the top-5% null rows, "
          f"{sib_a.mean():.2f} of all rows")
    for dec, r in out.items():
        u = np.asarray(r.used, bool)
        print(f"   {dec}: recall {u[y == 1].mean() if y.any() else float('nan'):.2f}, others flagged {int(u[y == 0].sum())}/{int((y == 0).sum())}, "
              f"AUC {roc_auc_score(y, r.score) if 0 < y.sum() < len(y) else float('nan'):.3f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="/work/shared/corpus/dev")
    ap.add_argument("--gens", default="gen_e,gen_a,gen_b")
    ap.add_argument("--cache-dir", default=None, help="evidence / pair-null checkpoints (shared with membership_loo.py)")
    ap.add_argument("--series-seeds", default="", help="comma list of seeds: the simulated series folders (default none)")
    ap.add_argument("--series-share", type=float, default=0.5, help="share of the series' patients copied (0: none)")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        for g in filter(None, a.gens.split(",")):
            run_one(g, os.path.join(a.corpus, "membership"), a.cache_dir or tmp)
        for sd in filter(None, a.series_seeds.split(",")):
            run_series(int(sd), a.cache_dir or tmp, a.series_share)


if __name__ == "__main__":
    main()
