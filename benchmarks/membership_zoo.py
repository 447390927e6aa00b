"""Membership zoo: simulated memorising generators built from any folder of real images.

For every (transform, strength) scenario a simulated generator's output is built as follows.

1. The real images (``--real``, default: the dev corpus' real images, byte-duplicates dropped; with the dev
   fillers, only those no dev generator was trained on, see ``--draw``) are split at random, per scenario, into *members* (the generator's training images that appear
   among the candidates), *non-members* (candidates never used) and a disjoint *reference* (known
   non-members, the null; what ``--reference`` passes).
2. Generated images = one transformed copy of every member (the transform at the chosen strength,
   random sign / magnitude in ``[strength/2, strength]``, plus light Gaussian noise sigma 2 grey levels)
   mixed with non-copies up to ``--n-gen`` images: images of other patients from ``--fillers``
   (default: the dev corpus' gen_a and gen_b generated sets, which do not memorise) or, with
   ``--fillers none``, smooth resyntheses (the average of two real images outside the candidates and
   the reference, re-noised).
3. ``audit_membership(generated, candidates, reference=reference)`` (no dev sets: the zoo's real
   images are the dev corpus' real images, so dev sets would overlap the candidates) scores the
   candidates.  Metrics: ROC AUC, TPR at 1% FPR, recall and the non-members' flag rate at the
   default decision ``fpr:0.01``, each with a bootstrap 95% interval over the candidates (``--boot``
   resamples); also recall and false flags of ``fdr:0.1`` and the F1 of ``f1`` on the same scores and null
   (point values; for the scenario with no member, the share of candidates ``f1`` flags).
   ``--setting unsupervised`` passes no reference (the same draws, the reference left unused): the audit's
   real-to-real null of the candidates themselves, members half of them (issue 13, branch uns9).

``--draw clean`` (the default since the thirteenth wave): with the dev corpus' real images *and* the dev fillers
(gen_a + gen_b generated), the real images gen_a or gen_b was trained on (``gen_a/real/used``, ``gen_b/real/used``,
400 images) are left out of the draw. They are not non-members of the simulated generator: its output contains
gen_a's and gen_b's images, and a generator's images sit nearer its own training images than chance (gen_b's 300:
median best whole-image correlation to a filler 0.861 against 0.851 for the 300 unused). Branch comb13 found the
reference row that set the ``fpr:0.01`` threshold of elastic 4 px at seeds 2 and 3 to be one gen_b training image
(closest filler: a gen_b image at correlation 0.929). 520 images remain (gen_a / gen_b unused, gen_e used and
unused), enough for 60 + 60 candidates and 300 reference. ``--draw all`` is the draw of every table before that
(every real image); the draws differ, so compare a table only with one of the same draw. With ``--real DIR`` or
other fillers nothing is left out: the user must not mix in real images the fillers' generators were trained on.
The scripts that replay the zoo's draws (augment_diag, elastic_candidates, membership_null_diag, shortlist_recall,
partial_copy_diag, membership_unsupervised, membership_combine_diag, membership_uns_diag capture) take the same
``--draw`` (:func:`add_draw_flag` / :func:`add_draw_args`); before the fourteenth wave they had none and drew
``clean``, so their tables from the old draw are redrawn only with ``--draw all``.

This is a measurement, not a tuning set: nothing in engine/ was chosen on it.

Usage::

    python benchmarks/membership_zoo.py --quick                 # a few minutes
    python benchmarks/membership_zoo.py [--real DIR] [--fillers DIR|none] [--n-members 60] [--n-gen 1000]
    python benchmarks/membership_zoo.py --recall shift,augment:1 --real OTHER_DIR --seed 1   # search diagnostic
    python benchmarks/membership_zoo.py --recall "resynth 3 +,shift" --shortlist-only --seed 7  # candidates only
    python benchmarks/membership_zoo.py --lowpass-queries-cost --repeat 2   # cost of the rotated low-pass queries
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image
from scipy import ndimage as ndi
from sklearn import metrics as skm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from imprint.engine.membership import audit_membership  # noqa: E402
from imprint.engine.membership.decide import f1_decision, fdr_decision  # noqa: E402

from _membership_knobs import add_membership_knobs, apply_membership_knobs  # noqa: E402

DEV = "/work/shared/corpus/dev"


# ----------------------------------------------------------------------------------------- data
def load_folder(folder: str, size: int | None = None) -> np.ndarray:
    files = sorted(glob.glob(os.path.join(folder, "**", "*.png"), recursive=True))
    out = []
    for f in files:
        im = Image.open(f).convert("L")
        if size is not None and im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR)
        out.append(np.array(im))
    if not out:
        raise SystemExit(f"no PNG images under {folder}")
    return np.stack(out)


def dedupe(x: np.ndarray) -> np.ndarray:
    seen, keep = set(), []
    for i, a in enumerate(x):
        h = hashlib.sha1(a.tobytes()).hexdigest()
        if h not in seen:
            seen.add(h)
            keep.append(i)
    return x[keep]


# ----------------------------------------------------------------------------------------- transforms
def _u(rng, s):
    """Magnitude uniform in [s/2, s] with a random sign."""
    return float(rng.choice([-1, 1]) * rng.uniform(s / 2, s))


def t_flip(x, s, rng):
    y = x[:, ::-1]
    return ndi.shift(y, (rng.uniform(-2, 2), rng.uniform(-2, 2)), order=1, mode="nearest")


def t_shift(x, s, rng):
    h = x.shape[0]
    ang = rng.uniform(0, 2 * np.pi)
    m = rng.uniform(s / 2, s) * h
    return ndi.shift(x, (m * np.sin(ang), m * np.cos(ang)), order=1, mode="nearest")


def t_rotate(x, s, rng):
    return ndi.rotate(x, _u(rng, s), reshape=False, order=1, mode="nearest")


def t_scale(x, s, rng):
    f = 1.0 + _u(rng, s)
    h, w = x.shape
    c = np.array([(h - 1) / 2, (w - 1) / 2])
    return ndi.affine_transform(x, np.eye(2) / f, offset=c - c / f, order=1, mode="nearest")


def t_gamma(x, s, rng):
    g = float(np.exp(_u(rng, s)))          # s = |log gamma|
    y = 255.0 * (x / 255.0) ** g
    lo, hi = rng.uniform(0, 20), rng.uniform(235, 255)   # a window change on top
    return lo + y * (hi - lo) / 255.0


def t_lowres(x, s, rng):
    f = int(s)
    h, w = x.shape
    small = np.asarray(Image.fromarray(x.astype(np.float32)).resize((w // f, h // f), Image.BOX))
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))


def t_noise(x, s, rng):
    return x + rng.normal(0, s, x.shape)


def make_resynth(donors):
    def t_resynth(x, s, rng):
        """Copied anatomy, re-synthesised texture: the image's low frequencies (Gaussian sigma ``s``)
        plus another patient's high frequencies.  The donor is drawn from ``t_resynth.donors`` when
        :func:`build_scenario` set it (the real images outside the candidates and the reference: a
        donor among them would have its texture copied, i.e. be a partial member), else ``donors``."""
        pool = getattr(t_resynth, "donors", None)
        pool = donors if pool is None else pool
        d = pool[rng.integers(len(pool))].astype(np.float64)
        return ndi.gaussian_filter(x, s) + (d - ndi.gaussian_filter(d, s))
    t_resynth.uses_donors = True
    return t_resynth


def t_augment(x, s, rng):
    """Typical training augmentation: random flip, shift, rotation, scale and gamma together."""
    if rng.random() < 0.5:
        x = x[:, ::-1]
    x = t_scale(t_rotate(x, 10 * s, rng), 0.1 * s, rng)
    x = t_shift(x, 0.1 * s, rng)
    return t_gamma(x, 0.3 * s, rng)


def t_geom(x, s, rng):
    """The geometric part of :func:`t_augment` (random flip, rotation, scale, shift; no intensity change)."""
    if rng.random() < 0.5:
        x = x[:, ::-1]
    x = t_scale(t_rotate(x, 10 * s, rng), 0.1 * s, rng)
    return t_shift(x, 0.1 * s, rng)


def make_resynth_then(resynth, sigma, geo, geo_scale=1.0):
    """Copied anatomy with re-synthesised texture (``resynth`` at Gaussian ``sigma``), then the geometric
    transform ``geo`` at the scenario's strength times ``geo_scale``: a latent generator that re-synthesises
    texture and whose training images were augmented (issue 13, branch resyn6).  Texture donors are those
    :func:`build_scenario` gives ``resynth`` (never a candidate or a reference image)."""
    def t_resynth_geo(x, s, rng):
        return geo(resynth(x, sigma, rng), s * geo_scale, rng)
    t_resynth_geo.uses_donors = True
    t_resynth_geo.resynth = resynth
    return t_resynth_geo


def t_elastic(x, s, rng):
    """Non-rigid (elastic) deformation, the standard medical-image augmentation: a smooth random displacement
    field (white noise per axis, Gaussian-filtered with sigma drawn in [8, 16] px per 128 px, then scaled so that the
    displacement's RMS length is ``s`` px per 128 px), applied with bilinear ``map_coordinates`` (issue 13, branch
    elas11).  A priori strengths: U-Net (Ronneberger et al. 2015) draws 10 px SD displacements on a coarse 3 x 3
    grid of 572 px tiles (~2.2 px per 128 px per axis); batchgenerators / nnU-Net smooth their field with sigma
    9-13 px; ``s`` = 2 is that setting, 4 twice it."""
    h, w = x.shape
    f = h / 128.0
    sig = rng.uniform(8, 16) * f
    d = np.stack([ndi.gaussian_filter(rng.standard_normal((h, w)), sig, mode="reflect") for _ in range(2)])
    d *= s * f / max(float(np.sqrt((d ** 2).sum(0).mean())), 1e-12)
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    return ndi.map_coordinates(x, [yy + d[0], xx + d[1]], order=1, mode="nearest")


def make_elastic_then(amp, geo):
    """Elastic deformation of RMS ``amp`` px, then the geometric transform ``geo`` at the scenario's strength (an
    augmentation pipeline with both; the strength is the geometric one's, as in the resynth + geom rows)."""
    def t_elastic_geo(x, s, rng):
        return geo(t_elastic(x, amp, rng), s, rng)
    return t_elastic_geo


def _other_member(x, rng):
    """A member image other than ``x`` (``build_scenario`` sets ``_other_member.members`` to the members)."""
    pool = _other_member.members
    while True:
        o = pool[rng.integers(len(pool))]
        if len(pool) < 2 or not np.array_equal(o, x):
            return o.astype(np.float64)


def t_blend(x, s, rng):
    """A two-image blend, as diffusion models emit: ``alpha x + (1 - alpha) o`` with ``alpha`` in [s, s + 0.2] on the
    member and ``o`` another *member* (both images were trained on, so both are members; the member's own weight is
    the larger one)."""
    a = rng.uniform(s, s + 0.2)
    return a * x + (1 - a) * _other_member(x, rng)


t_blend.uses_members = True


def make_patch_mix(donors):
    def t_patch(x, s, rng):
        """A patch mix (stitched parts of training images): the upper or the left part of the member, a share in
        [s, s + 0.2] of the rows / columns, and the rest from a *donor outside the candidates and the reference*
        (as for ``t_resynth``): a candidate whose smaller part were copied would be a partial member, so only the
        image whose anatomy fills most of the copy is labelled a member and every other candidate stays a clean
        non-member."""
        pool = getattr(t_patch, "donors", None)
        pool = donors if pool is None else pool
        d = pool[rng.integers(len(pool))].astype(np.float64)
        y = d.copy()
        if rng.random() < 0.5:
            k = int(round(rng.uniform(s, s + 0.2) * x.shape[0]))
            y[:k] = x[:k]
        else:
            k = int(round(rng.uniform(s, s + 0.2) * x.shape[1]))
            y[:, :k] = x[:, :k]
        return y
    t_patch.uses_donors = True
    return t_patch


def make_patch_of_moved(patch, geo):
    """A transformed partial copy (issue 13, branch patch12): the member is moved by ``geo`` at the scenario's
    strength (a flip half the time, rotation, scale, shift), then ``patch`` (share in [0.5, 0.7], a priori as the patch
    mix row) stitches its upper / left part onto a donor.  The transform is applied to the copied part, not to the
    whole mix: moving the whole mix keeps member part and donor rigidly together (a whole-image registration undoes it,
    as for ``augment``); moving the part alone is what a model that stitches augmented training crops emits."""
    def t_patch_moved(x, s, rng):
        return patch(geo(x, s, rng), 0.5, rng)
    t_patch_moved.uses_donors = True
    t_patch_moved.resynth = patch   # build_scenario gives the donors to `fn.resynth` (the patch mix draws them)
    return t_patch_moved


def t_smooth(x, s, rng):
    """An over-smoothing denoiser: Gaussian blur with sigma in [s/2, s] px."""
    return ndi.gaussian_filter(x, rng.uniform(s / 2, s))


def scenarios(quick: bool, donors):
    rs = make_resynth(donors)
    full = [("none (non-memorising)", None, 0), ("identity", lambda x, s, r: x, 0),
            ("flip", t_flip, 1), ("shift", t_shift, 0.05), ("shift", t_shift, 0.10),
            ("rotate deg", t_rotate, 5), ("rotate deg", t_rotate, 10),
            ("scale", t_scale, 0.05), ("scale", t_scale, 0.10),
            ("gamma |log g|", t_gamma, 0.2), ("gamma |log g|", t_gamma, 0.4),
            ("lowres factor", t_lowres, 2), ("lowres factor", t_lowres, 4),
            ("noise sigma", t_noise, 8), ("noise sigma", t_noise, 16),
            ("resynth sigma", rs, 1.5), ("resynth sigma", rs, 3.0),
            ("augment (all)", t_augment, 0.5), ("augment (all)", t_augment, 1.0),
            # re-synthesised texture, then a geometric transform (branch resyn6); appended last, so every scenario
            # above keeps its draw for a given seed.  Strength = the geometric transform's, as in its own row.
            ("resynth 3 + flip", make_resynth_then(rs, 3.0, t_flip), 1),
            ("resynth 3 + shift", make_resynth_then(rs, 3.0, t_shift), 0.10),
            ("resynth 3 + rotate deg", make_resynth_then(rs, 3.0, t_rotate), 10),
            ("resynth 3 + scale", make_resynth_then(rs, 3.0, t_scale), 0.10),
            ("resynth 1.5 + geom (all)", make_resynth_then(rs, 1.5, t_geom), 1.0),
            ("resynth 3 + geom (all)", make_resynth_then(rs, 3.0, t_geom), 0.5),
            ("resynth 3 + geom (all)", make_resynth_then(rs, 3.0, t_geom), 1.0),
            # ways of copying outside the transforms above (issue 13, branch elas11); appended last, as above.
            ("elastic rms px", t_elastic, 2), ("elastic rms px", t_elastic, 4),
            ("elastic 2 + geom (all)", make_elastic_then(2, t_geom), 0.5),
            ("blend 2 members, alpha", t_blend, 0.5), ("patch mix, member share", make_patch_mix(donors), 0.5),
            ("smooth sigma", t_smooth, 2),
            # a transformed partial copy (issue 13, branch patch12); appended last, as above
            ("patch mix + geom (all) on the part", make_patch_of_moved(make_patch_mix(donors), t_geom), 0.5)]
    if quick:
        keep = {("none (non-memorising)", 0), ("flip", 1), ("shift", 0.10), ("rotate deg", 10), ("scale", 0.10),
                ("gamma |log g|", 0.4), ("lowres factor", 4), ("noise sigma", 16), ("resynth sigma", 3.0),
                ("augment (all)", 1.0), ("resynth 3 + shift", 0.10), ("resynth 3 + geom (all)", 1.0)}
        full = [s for s in full if (s[0], s[2]) in keep]
    return full


# ----------------------------------------------------------------------------------------- metrics
def tpr_at(y, s, fpr=0.01):
    f, t, _ = skm.roc_curve(y, s)
    return float(np.max(t[f <= fpr])) if np.any(f <= fpr) else 0.0


def boot(y, s, used, n_boot, rng):
    def m(idx):
        yy, ss, uu = y[idx], s[idx], used[idx]
        if yy.min() == yy.max():
            return None
        return (skm.roc_auc_score(yy, ss), tpr_at(yy, ss), uu[yy == 1].mean(), uu[yy == 0].mean())
    point = m(np.arange(len(y))) if y.min() < y.max() else (np.nan, np.nan, np.nan, used[y == 0].mean())
    reps = []
    for _ in range(n_boot):
        r = m(rng.integers(0, len(y), len(y)))
        if r is not None:
            reps.append(r)
    reps = np.array(reps) if reps else np.full((1, 4), np.nan)
    lo, hi = np.nanpercentile(reps, 2.5, 0), np.nanpercentile(reps, 97.5, 0)
    return point, lo, hi


DRAW = "clean"  # module docstring; ``--draw`` (:func:`add_draw_flag`) sets it in the zoo and every script drawing from it
DRAW_HELP = ("clean: with the dev reals and dev fillers, leave out the reals gen_a / gen_b were trained on (membership_zoo's "
             "docstring); all: every dev real (the draw of the tables before the thirteenth wave)")


class _SetDraw(argparse.Action):
    """``--draw``: sets :data:`DRAW` when given, so every draw of this process (the zoo's own and any script's that
    calls :func:`load_real_and_fillers`, :func:`run` or :func:`dev_real_folders`) follows it."""

    def __call__(self, parser, namespace, values, option_string=None):
        global DRAW
        DRAW = values
        setattr(namespace, self.dest, values)


def add_draw_flag(ap) -> None:
    """Add ``--draw clean|all`` to ``ap`` (an argparse parser or sub-parser); the value lands in :data:`DRAW`."""
    ap.add_argument("--draw", default="clean", choices=("clean", "all"), action=_SetDraw, help=DRAW_HELP)


def add_draw_args(ap, *, real: str = DEV, fillers: str = "dev", size: int | None = 128, n_members: int | None = 60,
                  n_reference: int | None = 300, n_gen: int | None = 1000, boot: int | None = 500,
                  seed: int = 0) -> None:
    """The zoo's draw arguments, one definition for the zoo and the scripts that replay its draws: ``--real``,
    ``--fillers``, ``--draw``, ``--size``, ``--n-members``, ``--n-reference``, ``--n-gen``, ``--boot`` (its random
    stream is the draws', so a replay needs the same value), ``--seed``.  A keyword set to None leaves that
    argument out (the script does not use it)."""
    ap.add_argument("--real", default=real, help="folder of real PNGs (default: the dev corpus' real images)")
    ap.add_argument("--fillers", default=fillers,
                    help="folder of non-copy generated PNGs, 'dev' (gen_a+gen_b) or 'none'")
    add_draw_flag(ap)
    for flag, value, text in (("--size", size, "images are resized to size x size"),
                              ("--n-members", n_members, "members (and as many non-members) per scenario"),
                              ("--n-reference", n_reference, "reference (known non-member) images per scenario"),
                              ("--n-gen", n_gen, "generated images per scenario"),
                              ("--boot", boot, "bootstrap resamples (they share the draws' random stream)")):
        if value is not None:
            ap.add_argument(flag, type=int, default=value, help=text)
    ap.add_argument("--seed", type=int, default=seed)


def dev_real_folders(fillers: str, draw: str | None = None) -> list[str]:
    """The dev corpus' real-image folders the zoo draws from: all six, or with the dev fillers and the ``clean``
    draw, the four that neither filler generator (gen_a, gen_b) was trained on."""
    draw = DRAW if draw is None else draw
    if draw not in ("clean", "all"):
        raise ValueError(f"draw must be 'clean' or 'all', not {draw!r}")
    parts = [(g, p) for g in ("gen_a", "gen_b", "gen_e") for p in ("used", "unused")]
    if draw == "clean" and fillers == "dev":
        parts = [(g, p) for g, p in parts if not (g in ("gen_a", "gen_b") and p == "used")]
    return [f"{DEV}/membership/{g}/real/{p}" for g, p in parts]


def load_real_and_fillers(real_dir: str, fillers: str, size: int, draw: str | None = None):
    """(distinct real images uint8 [N, H, W], filler images uint8 [F, H, W] or None): ``real_dir`` (the dev
    corpus' real images when it is :data:`DEV`, see :func:`dev_real_folders` and ``draw``) and ``fillers``
    ('dev' = gen_a + gen_b, 'none', or a folder)."""
    if real_dir == DEV:
        real = np.concatenate([load_folder(d, size) for d in dev_real_folders(fillers, draw)])
    else:
        real = load_folder(real_dir, size)
    real = dedupe(real)
    fill_imgs = None
    if fillers != "none":
        dirs = ([f"{DEV}/membership/gen_a/generated", f"{DEV}/membership/gen_b/generated"]
                if fillers == "dev" else [fillers])
        fill_imgs = np.concatenate([load_folder(d, real.shape[1]) for d in dirs])
    return real, fill_imgs


def load_inputs(args):
    """(distinct real images uint8 [N, H, W], filler images uint8 [F, H, W] or None) of the arguments, checked
    to be enough for the scenario sizes."""
    real, fill_imgs = load_real_and_fillers(args.real, args.fillers, args.size)
    need = 2 * args.n_members + args.n_reference + 20
    if len(real) < need:
        raise SystemExit(f"need at least {need} distinct real images, found {len(real)}")
    return real, fill_imgs


def scenario_wanted(name: str, strength: float, only) -> bool:
    """Is scenario ``(name, strength)`` selected by ``only``, a list of ``NAME_PREFIX[:STRENGTH]``?"""
    for w in only:
        prefix, _, st = w.partition(":")
        if name.startswith(prefix) and (not st or float(st) == strength):
            return True
    return False


def build_scenario(real, fn, strength, fill_imgs, nm, nref, n_gen, rng):
    """One simulated generator (module docstring, steps 1-2).

    Returns (generated uint8 [n_gen, H, W], candidates uint8 [2 nm, H, W] (members first), reference
    uint8 [nref, H, W], labels int [2 nm], copy int64 [nm]: index into generated of each member's copy,
    -1 when ``fn`` is None)."""
    perm = rng.permutation(len(real))
    mem, non, ref, rest = perm[:nm], perm[nm:2 * nm], perm[2 * nm:2 * nm + nref], perm[2 * nm + nref:]
    copies = []
    if getattr(fn, "uses_donors", False):   # texture donors: never a candidate or a reference image
        getattr(fn, "resynth", fn).donors = real[rest]
    if getattr(fn, "uses_members", False):  # blend partners: the other members
        _other_member.members = real[mem]
    if fn is not None:
        for i in mem:
            y = fn(real[i].astype(np.float64), strength, rng)
            copies.append(np.clip(np.rint(y + rng.normal(0, 2, y.shape)), 0, 255).astype(np.uint8))
    n_fill = n_gen - len(copies)
    if fill_imgs is not None:
        fill = fill_imgs[rng.choice(len(fill_imgs), n_fill, replace=n_fill > len(fill_imgs))]
    else:
        a = real[rng.choice(rest, n_fill)].astype(np.float64)
        b = real[rng.choice(rest, n_fill)].astype(np.float64)
        fill = np.clip(np.rint(0.5 * (a + b) + rng.normal(0, 3, a.shape)), 0, 255).astype(np.uint8)
    gen = np.concatenate([np.stack(copies), fill]) if copies else fill
    order = rng.permutation(len(gen))
    gen = gen[order]
    copy = np.argsort(order)[:len(copies)] if copies else np.full(nm, -1, np.int64)
    cand = np.concatenate([real[mem], real[non]])
    y = np.r_[np.ones(nm, int), np.zeros(nm, int)]
    return gen, cand, real[ref], y, copy


def run(args) -> list[dict]:
    rng = np.random.default_rng(args.seed)
    real, fill_imgs = load_inputs(args)
    nm, nref = args.n_members, args.n_reference
    rows = []
    for name, fn, strength in scenarios(args.quick, real):
        gen, cand, ref, y, _ = build_scenario(real, fn, strength, fill_imgs, nm, nref, args.n_gen, rng)
        if args.only and not scenario_wanted(name, strength, args.only.split(",")):
            for _ in range(args.boot):     # the bootstrap's draws, so the next scenarios get a plain run's draws
                rng.integers(0, len(y), len(y))
            continue
        rules = ("tail", "max") if args.compare else (None,)
        with tempfile.TemporaryDirectory() as tmp:
            cache = args.cache_dir or tmp
            for rule in rules:
                kw = {} if rule is None else dict(combine=rule, cache_dir=cache)
                t0 = time.perf_counter()
                res = audit_membership(gen, cand, reference=None if getattr(args, "setting", "reference") ==
                                       "unsupervised" else ref, **kw)
                dt = time.perf_counter() - t0
                # the main stream's bootstrap draws stay those of a plain run; the second rule gets its own stream
                brng = rng if rule in (None, "tail") else np.random.default_rng([args.seed, len(rows)])
                row = score_row(name, strength, fn, y, res, args.boot, brng, dt)
                if rule is not None:
                    row["transform"] = f"{name} [{rule}]"
                rows.append(row)
                print(fmt(row), flush=True)
    return rows


def score_row(name, strength, fn, y, res, n_boot, rng, dt):
    """Metrics of one audit (module docstring)."""
    point, lo, hi = boot(y if fn is not None else np.zeros_like(y), res.score, res.used.astype(float),
                         n_boot, rng)
    # fdr:0.1 on the same scores and null (what decision="fdr:0.1" does with this evidence)
    fdr_used, _ = fdr_decision(res.score, res.null_scores, 0.1)
    yy = y if fn is not None else np.zeros_like(y)
    row = {"transform": name, "strength": strength, "auc": point[0], "auc_ci": (lo[0], hi[0]),
           "tpr1": point[1], "tpr1_ci": (lo[1], hi[1]), "recall": point[2], "recall_ci": (lo[2], hi[2]),
           "fpr": point[3], "fpr_ci": (lo[3], hi[3]), "seconds": dt,
           "fdr_recall": float(fdr_used[yy == 1].mean()) if yy.max() > 0 else float("nan"),
           "fdr_false": int(fdr_used[yy == 0].sum()), "n_non": int((yy == 0).sum()),
           "threshold": float(res.threshold), "null_max": float(np.max(res.null_scores))}
    # decision f1 on the same scores and null (its F1; with no member, the share of candidates it flags)
    f1_used, _ = f1_decision(res.score, res.null_scores)
    row["f1"] = (float(skm.f1_score(yy, f1_used, zero_division=0)) if yy.max() > 0 else float(f1_used.mean()))
    if fn is None:   # no copies: every candidate is a non-member
        row["fpr"] = float(res.used.mean())
    return row



def _pool_pixel_neighbours(gen, cand, ref):
    """The registration's inputs for a scenario: the pool ``P`` (candidates then reference) and the 10 pixel
    neighbours (z-scored L2) of every generated image among ``P`` (``iG``) and of every pool image among the others
    (``iR``), as the audit computes them."""
    from imprint.engine.membership.evidence import _knn, zscore_images

    P = np.concatenate([cand, ref])
    zP = zscore_images(P).reshape(len(P), -1)
    zG = zscore_images(gen).reshape(len(gen), -1)
    _, iG = _knn(zG, zP, 10)
    _, iR = _knn(zP, zP, 10, exclude_self=True)
    return P, iG, iR

def recall_diag(args) -> None:
    """Search diagnostic: for every member of a simulated generator, is its true copy among the
    registration candidates (:func:`register.shortlists`), where does each search source rank it, is it
    the registered best match, and what NCC does the registration give the true pair?  Run it with a
    different ``--seed`` and ``--real`` folder than the zoo's measurement."""
    from imprint.engine.membership import register as reg

    rng = np.random.default_rng(args.seed)
    real, fill_imgs = load_inputs(args)
    nm, nref = args.n_members, args.n_reference
    want = [w for w in args.recall.split(",") if w]
    if args.shortlist_only:
        print("| transform | strength | copy in registration shortlist | low-pass frame / spectrum / both "
              "| in the anatomy candidates (union) | candidates per image | s |")
        print("|---|---|---|---|---|---|---|")
    else:
        print("| transform | strength | in shortlist | rank desc / spec / pix (median, 90%) | best = copy "
              "| NCC true pair (median, 10%) | NCC best / control (members, median) | s |")
        print("|---|---|---|---|---|---|---|---|")
    for name, fn, strength in scenarios(False, real):
        if fn is None or not any(name.startswith(w.split(":")[0]) and (":" not in w or float(w.split(":")[1]) == strength)
                                 for w in want):
            continue
        gen, cand, ref, y, copy = build_scenario(real, fn, strength, fill_imgs, nm, nref, args.n_gen, rng)
        t0 = time.perf_counter()
        P, iG, iR = _pool_pixel_neighbours(gen, cand, ref)
        cg, fcg, cr, fcr = reg.shortlists(gen, P, iG, iR)
        m = np.arange(nm)
        ins = (cg[m] == copy[:, None]).any(1)
        # the anatomy evidence's candidates: the shortlist and the low-pass source (branch short7)
        lg = reg.lowpass_candidates(gen, P[:nm])[0]
        lpf = (lg[:, :reg.LP_K_FRAME] == copy[:, None]).any(1)
        lps = (lg[:, reg.LP_K_FRAME:] == copy[:, None]).any(1)
        if args.shortlist_only:
            print(f"| {name} | {strength:g} | {ins.mean():.2f} | {lpf.mean():.2f} / {lps.mean():.2f} / "
                  f"{(lpf | lps).mean():.2f} | **{(ins | lpf | lps).mean():.2f}** | {cg.shape[1]} + {lg.shape[1]} | "
                  f"{time.perf_counter() - t0:.0f} |", flush=True)
            continue
        # ranks of the true copy under each search source (brute force over all generated images)
        dG, dP = reg.shortlist_descriptors(gen), reg.shortlist_descriptors(P[:nm])
        fd = dG.reshape(len(gen), -1)
        fdm = dG[:, :, ::-1].reshape(len(gen), -1)
        q = dP.reshape(nm, -1)
        dd = np.minimum(((q[:, None] - fd[None]) ** 2).sum(-1), ((q[:, None] - fdm[None]) ** 2).sum(-1))
        sG, sP = reg.spectrum_descriptors(gen), reg.spectrum_descriptors(P[:nm])
        ds = ((sP[:, None] - sG[None]) ** 2).sum(-1)
        dpx = ((zP[:nm, None] - zG[None]) ** 2).sum(-1)

        def rank(d):
            return (d < d[m, copy][:, None]).sum(1)
        ranks = [rank(d) for d in (dd, ds, dpx)]
        best, rg = reg._best_registered(P, gen, cg, fcg)
        _, rr = reg._best_registered(P, P, cr, fcr)
        true = reg.register_pairs(P, gen, np.stack([m, copy], 1))
        hit = best[m] == copy
        rk = " / ".join(f"{np.median(r):.0f}, {np.percentile(r, 90):.0f}" for r in ranks)
        print(f"| {name} | {strength:g} | {ins.mean():.2f} | {rk} | {hit.mean():.2f} | "
              f"{np.median(true['ncc']):.3f}, {np.percentile(true['ncc'], 10):.3f} | "
              f"{np.median(rg['ncc'][m]):.3f} / {np.median(rr['ncc'][m]):.3f} | {time.perf_counter() - t0:.0f} |",
              flush=True)
        # single registered evidence: AUC members vs non-members, TPR at the reference's 99th percentile
        ev, _ = reg.registered_evidence(gen, P, iG, iR)
        cells = []
        for k in ("reg_ratio", "reg_lo_ratio", "reg_lp_ratio"):
            v = ev[k]
            thr = np.quantile(v[2 * nm:], 0.99)
            cells.append(f"{k} {skm.roc_auc_score(y, v[:2 * nm]):.3f} / {np.mean(v[:nm] > thr):.2f}")
        print("    single evidence AUC / TPR@ref-99%: " + "; ".join(cells), flush=True)
        if args.verbose:
            for j in np.flatnonzero(~hit):
                print(f"    miss {j}: in shortlist {ins[j]}, ranks {[int(r[j]) for r in ranks]}, "
                      f"picked ncc {rg['ncc'][j]:.3f} coarse {rg['coarse'][j]:.3f}; true ncc {true['ncc'][j]:.3f} "
                      f"coarse {true['coarse'][j]:.3f} flip {true['flip'][j]} ang {true['angle'][j]:.1f} "
                      f"sc {true['scale'][j]:.3f} shift {true['dy'][j]:.1f},{true['dx'][j]:.1f}; "
                      f"control ncc {rr['ncc'][j]:.3f}")


def anatomy_diag(args) -> None:
    """``--recall ... --anatomy``: the anatomy evidence's choice among its candidates (issue 13, branch geo8).

    For every member of a simulated generator (run it on a scratch ``--seed``, not a zoo seed): is its copy among
    the anatomy candidates (registration shortlist and low-pass source), where does the coarse low-pass
    registration rank it among them (only the ``anatomy.N_POLISH`` coarse-best are polished), is it the chosen match,
    the registered low-pass NCC of the true pair against the chosen one and the control's, and how the members'
    ``anat_ratio`` (raw and calibrated) and combined scores compare with the reference's (the null) in one
    ``audit_membership`` run with the low-pass source on."""
    from imprint.engine.membership import anatomy as anat
    from imprint.engine.membership import register as reg

    rng = np.random.default_rng(args.seed)
    real, fill_imgs = load_inputs(args)
    nm, nref = args.n_members, args.n_reference
    want = [w for w in args.recall.split(",") if w]
    keep = anat.LOWPASS_CANDIDATES
    for name, fn, strength in scenarios(False, real):
        if fn is None or not scenario_wanted(name, strength, want):
            continue
        gen, cand, ref, y, copy = build_scenario(real, fn, strength, fill_imgs, nm, nref, args.n_gen, rng)
        t0 = time.perf_counter()
        P, iG, iR = _pool_pixel_neighbours(gen, cand, ref)
        cg = reg.shortlists(gen, P, iG, iR)[0][:nm]
        lg = reg.lowpass_candidates(gen, P[:nm])[0]
        un = np.concatenate([cg, lg], 1)
        m = np.arange(nm)
        ins, inl = (cg == copy[:, None]).any(1), (lg == copy[:, None]).any(1)
        lowP, lowG = anat._lowpass_rows(P[:nm]), anat._lowpass_rows(gen)
        # the coarse rank of the copy among the member's distinct candidates
        crank = np.full(nm, -1)
        for i in np.flatnonzero(ins | inl):
            u = np.unique(un[i][un[i] >= 0])
            co = reg.coarse_scores(lowP, lowG, np.stack([np.full(len(u), i), u], 1))["coarse"]
            crank[i] = int((co > co[np.flatnonzero(u == copy[i])[0]]).sum())
        true = anat.registered_anatomy(lowP, lowG, copy[:, None])["ncc"]
        try:
            anat.LOWPASS_CANDIDATES = True
            res = audit_membership(gen, cand, reference=ref)
        finally:
            anat.LOWPASS_CANDIDATES = keep
        ev = res.evidence
        hit = ev["anat_match"][:nm] == copy
        z = res.calibrated["anat_ratio"]
        # the null's anat z-scores: calibrated values of the reference (the audit keeps only the candidates'); the
        # raw anat_ratio of the reference from the same evidence is not returned, so compare the raw members' values
        # with the non-members' (a proxy) and the calibrated members' with the null's combined max
        sc, ns = res.score, res.null_scores
        inu = ins | inl
        print(f"\n## {name} {strength:g} (seed {args.seed}, {nm} members, {nref} reference, {len(gen)} generated; "
              f"{time.perf_counter() - t0:.0f} s)")
        print(f"- copy a candidate: shortlist {ins.mean():.2f}, low-pass {inl.mean():.2f}, union {inu.mean():.2f}")
        print(f"- chosen anatomy match = copy: {hit.mean():.2f} of members, {hit[inu].mean():.2f} of those with the "
              f"copy a candidate; coarse rank of the copy (0 = best) where it is a candidate: "
              f"{np.bincount(np.minimum(crank[inu], 5), minlength=6).tolist()} (ranks 0..4, >=5)")
        miss = inu & ~hit
        if miss.any():
            print(f"- copy a candidate but not chosen ({miss.sum()}): true-pair registered NCC median "
                  f"{np.median(true[miss]):.3f}, chosen {np.median(ev['anat_ncc'][:nm][miss]):.3f}, control "
                  f"{np.median(ev['anat_real_ncc'][:nm][miss]):.3f}; coarse rank of the copy {crank[miss].tolist()}")
            worse = true[miss] < ev["anat_ncc"][:nm][miss]
            print(f"  true pair NCC below the chosen one (registration finds a look-alike closer): {worse.sum()}; "
                  f"above (the copy was not polished: outside the coarse top {anat.N_POLISH}): {(~worse).sum()}")
        print(f"- hit members: NCC {np.median(ev['anat_ncc'][:nm][hit]):.3f} vs control "
              f"{np.median(ev['anat_real_ncc'][:nm][hit]):.3f}; non-members: best {np.median(ev['anat_ncc'][nm:]):.3f} vs "
              f"control {np.median(ev['anat_real_ncc'][nm:]):.3f}")
        a = ev["anat_ratio"]
        thr = res.threshold
        print(f"- AUC anat_ratio alone {skm.roc_auc_score(y, a):.3f}, calibrated anat {skm.roc_auc_score(y, z):.3f}, "
              f"combined {skm.roc_auc_score(y, sc):.3f}; TPR@1% anat {tpr_at(y, a):.2f}, combined {tpr_at(y, sc):.2f}")
        print(f"- members above the fpr:0.01 threshold {thr:.2f}: {(sc[:nm] > thr).mean():.2f} (hit {(sc[:nm][hit] > thr).mean():.2f}, "
              f"miss {(sc[:nm][~hit] > thr).mean() if (~hit).any() else float('nan'):.2f}); null max {ns.max():.2f}, "
              f"non-members above {(sc[nm:] > thr).sum()}")
        print(f"- members' calibrated anat z: hit median {np.median(z[:nm][hit]):.2f}, miss median "
              f"{np.median(z[:nm][~hit]) if (~hit).any() else float('nan'):.2f}; non-members' max {z[nm:].max():.2f}; "
              f"members with anat z > every non-member's: {(z[:nm] > z[nm:].max()).mean():.2f}", flush=True)


def fmt(r):
    def c(k):
        v, (lo, hi) = r[k], r[k + "_ci"]
        return "n/a" if not np.isfinite(v) else f"{v:.3f} [{lo:.2f}, {hi:.2f}]"
    fr = "n/a" if not np.isfinite(r["fdr_recall"]) else f"{r['fdr_recall']:.3f}"
    return (f"| {r['transform']} | {r['strength']:g} | {c('auc')} | {c('tpr1')} | {c('recall')} | "
            f"{r['fpr']:.3f} | {fr} | {r['fdr_false']}/{r['n_non']} | {r['f1']:.3f} | {r['seconds']:.1f} |")


def density_dev(args) -> None:
    """Which feature space carries DOMIAS-style density evidence?  Leave-one-generator-out pools of the
    dev corpus (candidates = X's used + unused, reference = the other generators' unused); single
    evidence ``density_<space>`` (k = 1 and 5), robust-z-calibrated on the reference; AUC, TPR@1%FPR."""
    from imprint.engine.membership import robust_calibrate
    from imprint.engine.membership.density import density_ratio, embed_cached

    gens = ("gen_a", "gen_b", "gen_e")
    d = {g: {p: load_folder(f"{DEV}/membership/{g}/{p}", args.size) for p in ("generated", "real/used", "real/unused")}
         for g in gens}
    spaces = ["pixels"] + [b for b in args.density_backbones.split(",") if b]
    print("| space | k | " + " | ".join(f"{g} AUC | {g} TPR@1%" for g in gens) + " | embed s |")
    print("|---|---|" + "---|---|" * len(gens) + "---|")
    for sp in spaces:
        t0 = time.perf_counter()
        feats = {g: {p: embed_cached(v, sp, args.store_dir) for p, v in d[g].items()} for g in gens}
        te = time.perf_counter() - t0
        metric = "l2" if sp == "pixels" else "cosine"
        for k in (1, 5):
            cells = []
            for g in gens:
                others = [o for o in gens if o != g]
                pool = np.concatenate([feats[g]["real/used"], feats[g]["real/unused"]]
                                      + [feats[o]["real/unused"] for o in others])
                nu, nn = len(feats[g]["real/used"]), len(feats[g]["real/unused"])
                nr = nu + nn
                v = density_ratio(feats[g]["generated"], pool, k, metric=metric)
                z = robust_calibrate(v, v[nr:])[:nr]
                y = np.r_[np.ones(nu), np.zeros(nn)]
                cells.append(f"{skm.roc_auc_score(y, z):.3f} | {tpr_at(y, z):.2f}")
            print(f"| {sp} | {k} | " + " | ".join(cells) + f" | {te:.0f} |", flush=True)


def timing(args) -> None:
    """The speed target: 1,000 generated x 300 real with three dev sets (the dev corpus: target = gen_b's
    generated images and 150 used + 150 unused of its reals; dev sets = gen_a, gen_b, gen_e; reference =
    their unused images).  Registration on vs off in the same run (off: ``audit._evidence`` is called with
    ``register=False``), each best of ``--repeat``; no evidence cache between runs."""
    import functools

    from imprint.engine.membership import DevSet
    from imprint.engine.membership import audit as audit_mod

    gens = ("gen_a", "gen_b", "gen_e")
    d = {g: {p: load_folder(f"{DEV}/membership/{g}/{p}", args.size) for p in ("generated", "real/used", "real/unused")}
         for g in gens}
    devs = [DevSet(g, d[g]["generated"], d[g]["real/used"], d[g]["real/unused"]) for g in gens]
    real = np.concatenate([d["gen_b"]["real/used"][:150], d["gen_b"]["real/unused"][:150]])
    ref = np.concatenate([d[g]["real/unused"] for g in gens])
    target = d["gen_b"]["generated"]
    if getattr(args, "fresh_target", False):
        # The target above is a dev set's own generator and its reals overlap the reference, so the audit's
        # per-content memos reuse the target's work in the dev pools; a held-out audit shares nothing with the
        # dev sets.  Rotating the target's images by 90 degrees keeps their statistics and sizes and shares no
        # content with any dev pool or the reference.
        target = np.ascontiguousarray(np.rot90(target, 1, axes=(1, 2)))
        real = np.ascontiguousarray(np.rot90(real, 1, axes=(1, 2)))
    d = {**d, "gen_b": {**d["gen_b"], "generated": target}}
    orig = audit_mod._evidence
    if getattr(args, "lowpass_compare", False):
        lowpass_compare(args, d, devs, real, ref)
        return
    out = {}
    for label, reg in (("registration on", True), ("registration off", False)):
        audit_mod._evidence = functools.partial(orig, register=reg)
        best = np.inf
        try:
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                res = audit_membership(d["gen_b"]["generated"], real, dev_sets=devs, reference=ref)
                best = min(best, time.perf_counter() - t0)
        finally:
            audit_mod._evidence = orig
        out[label] = best
        print(f"{label}: best of {args.repeat}: {best:.1f} s (1000 generated x 300 real, 3 dev sets, "
              f"{len(ref)} reference; register_s of the target {res.info['timings'].get('register_s', 0):.1f} s)",
              flush=True)
    print(f"ratio on/off: {out['registration on'] / out['registration off']:.2f}; load average "
          f"{os.getloadavg()[0]:.1f}")


def lowpass_compare(args, d, devs, real, ref) -> None:
    """``--timing --lowpass-compare``: the judged case with the anatomy evidence's low-pass candidate source
    (``anatomy.LOWPASS_CANDIDATES``, branch short7) off (= the candidates before it) and on, alternating in one
    process, best of ``--repeat`` each (registration on, no evidence cache between runs)."""
    from imprint.engine.membership import anatomy as anat_mod

    best = {False: np.inf, True: np.inf}
    cpu = {False: np.inf, True: np.inf}
    keep = anat_mod.LOWPASS_CANDIDATES
    try:
        for _ in range(args.repeat):
            for on in (False, True):
                anat_mod.LOWPASS_CANDIDATES = on
                t0, c0 = time.perf_counter(), time.process_time()
                res = audit_membership(d["gen_b"]["generated"], real, dev_sets=devs, reference=ref)
                dt, dc = time.perf_counter() - t0, time.process_time() - c0
                best[on] = min(best[on], dt)
                cpu[on] = min(cpu[on], dc)
                print(f"low-pass candidates {'on ' if on else 'off'}: {dt:.1f} s, CPU {dc:.1f} s (anatomy_s of the "
                      f"target {res.info['timings'].get('anatomy_s', 0):.1f} s)", flush=True)
    finally:
        anat_mod.LOWPASS_CANDIDATES = keep
    print(f"best of {args.repeat}: off {best[False]:.1f} s, on {best[True]:.1f} s, ratio on/off "
          f"{best[True] / best[False]:.3f}; CPU (process, all threads) off {cpu[False]:.1f} s, on {cpu[True]:.1f} s, "
          f"ratio {cpu[True] / cpu[False]:.3f}; load average {os.getloadavg()[0]:.1f}")


def lowpass_queries_cost(args) -> None:
    """``--lowpass-queries-cost``: the cost of the low-pass source's rotated frame queries (branch geo9) in the judged
    case's four pools (the target = gen_b's generated images and 300 of its reals rotated 90 degrees as in
    ``--fresh-target``, and the dev sets gen_a, gen_b, gen_e; each pool = its reals + the 460 reference images):
    :func:`register.lowpass_candidates` over the four pools with one memo (as one audit runs it), with
    ``LP_FRAME_ANGLES = ()`` (the queries before) and the default, alternating, best of ``--repeat`` each (CPU-s of
    the process, all threads, and wall).  The rest of the audit is unchanged by the queries except which
    candidates (the same number) are registered."""
    from imprint.engine.membership import register as reg
    from imprint.engine.membership.common import _hashes

    gens = ("gen_a", "gen_b", "gen_e")
    d = {g: {p: load_folder(f"{DEV}/membership/{g}/{p}", args.size) for p in ("generated", "real/used", "real/unused")}
         for g in gens}
    ref = np.concatenate([d[g]["real/unused"] for g in gens])
    real = np.concatenate([d["gen_b"]["real/used"][:150], d["gen_b"]["real/unused"][:150]])
    pools = [(np.ascontiguousarray(np.rot90(d["gen_b"]["generated"], 1, axes=(1, 2))),
              np.concatenate([np.ascontiguousarray(np.rot90(real, 1, axes=(1, 2))), ref]))]
    pools += [(d[g]["generated"], np.concatenate([d[g]["real/used"], d[g]["real/unused"], ref])) for g in gens]
    keys = [(_hashes(G), _hashes(P)) for G, P in pools]
    keep = reg.LP_FRAME_ANGLES
    best = {}
    try:
        for _ in range(args.repeat):
            for label, angs in (("before (shifted queries)", ()), ("geo9 (+ rotated queries)", keep)):
                reg.LP_FRAME_ANGLES = angs
                cache: dict = {}
                t0, c0 = time.perf_counter(), time.process_time()
                for (G, P), (kG, kP) in zip(pools, keys):
                    reg.lowpass_candidates(G, P, keys_gen=kG, keys_pool=kP, cache=cache, control=False)
                dt, dc = time.perf_counter() - t0, time.process_time() - c0
                b = best.setdefault(label, [np.inf, np.inf])
                b[0], b[1] = min(b[0], dt), min(b[1], dc)
                print(f"{label}: {dt:.2f} s wall, {dc:.2f} CPU-s", flush=True)
    finally:
        reg.LP_FRAME_ANGLES = keep
    (l0, b0), (l1, b1) = best.items()
    print(f"best of {args.repeat}: {l0} {b0[0]:.2f} s / {b0[1]:.2f} CPU-s; {l1} {b1[0]:.2f} s / {b1[1]:.2f} CPU-s; "
          f"extra {b1[1] - b0[1]:+.2f} CPU-s (ratio {b1[1] / b0[1]:.3f}); load average {os.getloadavg()[0]:.1f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_draw_args(ap)
    ap.add_argument("--setting", default="reference", choices=("reference", "unsupervised"),
                    help="unsupervised: no reference (the real-to-real null of the candidates), same draws")
    ap.add_argument("--quick", action="store_true", help="10 scenarios, 40 members, 150 reference, 400 generated")
    ap.add_argument("--cache-dir", default=None,
                    help="--compare: keep the evidence checkpoints here (content-keyed), so a rerun re-decides only")
    ap.add_argument("--only", default=None,
                    help="audit only these scenarios (comma-separated name prefixes, optionally :strength); the others "
                         "are drawn and skipped, so every audited scenario gets the same draw as in a full run")
    add_membership_knobs(ap)
    ap.add_argument("--compare", action="store_true",
                    help="before/after in the same run: every scenario audited with combine='tail' (the default) and "
                         "combine='max' (the rule before) on the same evidence (one evidence computation, cached)")
    ap.add_argument("--density-dev", action="store_true",
                    help="instead: compare feature spaces for the density-ratio evidence on the dev corpus")
    ap.add_argument("--density-backbones", default="fingerprint,effnet-lite0-128")
    ap.add_argument("--store-dir", default=None, help="embedding stores reused across runs (--density-dev)")
    ap.add_argument("--timing", action="store_true", help="instead: the 1000 x 300 with 3 dev sets timing")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--fresh-target", action="store_true",
                    help="--timing: the target's generated and real images rotated by 90 degrees, so that they share "
                         "no content with the dev pools or the reference (as in a held-out audit)")
    ap.add_argument("--lowpass-compare", action="store_true",
                    help="--timing: the low-pass candidate source off vs on (same run, alternating) instead of "
                         "registration on vs off")
    ap.add_argument("--lowpass-queries-cost", action="store_true",
                    help="instead: the low-pass source over the judged case's four pools with and without its rotated "
                         "frame queries (branch geo9), same run, best of --repeat, CPU-s")
    ap.add_argument("--recall", default=None,
                    help="instead: the search diagnostic for these transforms (comma-separated name prefixes)")
    ap.add_argument("--verbose", action="store_true", help="--recall: one line per missed member")
    ap.add_argument("--shortlist-only", action="store_true",
                    help="--recall: only whether the true copy is among the candidates (the registration shortlist, "
                         "the low-pass source, their union), no registration (fast)")
    ap.add_argument("--anatomy", action="store_true",
                    help="--recall: the anatomy evidence's choice among its candidates (is the copy chosen, coarse rank, "
                         "true-pair vs chosen NCC, anat_ratio vs the combined score; one audit per scenario)")
    a = ap.parse_args(argv)
    global DRAW
    DRAW = a.draw  # also when not given: a second main() in one process starts from the default
    knobs_on = apply_membership_knobs(a)
    if a.timing:
        timing(a)
        return
    if a.lowpass_queries_cost:
        lowpass_queries_cost(a)
        return
    if a.density_dev:
        density_dev(a)
        return
    if a.recall and a.anatomy:
        anatomy_diag(a)
        return
    if a.recall:
        recall_diag(a)
        return
    if a.quick:   # smaller defaults; explicitly given values win
        for k, v in dict(n_members=40, n_reference=150, n_gen=400, boot=200).items():
            if getattr(a, k) == ap.get_default(k):
                setattr(a, k, v)
    print(f"# membership zoo: real={a.real} fillers={a.fillers} members={a.n_members} (+ as many non-members) "
          f"reference={a.n_reference} generated={a.n_gen} boot={a.boot} seed={a.seed} draw={a.draw}"
          + "".join(" " + k for k in knobs_on))
    print("| transform | strength | AUC [95% CI] | TPR@1%FPR [95% CI] | recall fpr:0.01 [95% CI] | "
          "non-members flagged | recall fdr:0.1 | false flags fdr:0.1 | F1 (f1; no members: share flagged) | audit s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    run(a)


if __name__ == "__main__":
    main()
