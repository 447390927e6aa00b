"""Generator-trace feature extraction for attribution (numpy; uses ``kernels`` when available).

Every function takes a uint8 stack ``[N,H,W]`` and returns ``float64[N,F]`` plus, via
:func:`feature_names`, one name per column.  The features describe *how* an image was rendered
(noise residual spectra, periodic up-sampling peaks, texture and intensity statistics) rather than
*what* anatomy it shows, so that images of one generator group together.

Feature groups (see :data:`FEATURE_GROUPS`):

``hist``
    Intensity histogram statistics: 16-bin normalised histogram (sqrt), quantiles, moments,
    fraction of pure black / white / distinct grey levels.
``resid``
    Statistics of the high-pass noise residual ``x - mean3x3(x)`` (std, mean |r|, kurtosis,
    quantiles, fraction of zero residual, horizontal/vertical neighbour correlation).
``rspec``
    Radial log-power spectrum of the residual (``N_RADIAL`` bins), azimuthal (directional) energy
    split, and log-power at the up-sampling / checkerboard peak frequencies (Nyquist/2, Nyquist/4).
``ispec``
    Radial log-power spectrum of the image itself (captures blur / band-limit of the generator).
``lbp``
    Uniform LBP (P=8, R=1) histograms of the image and of the residual.
``fingerprint``
    ``kernels.fingerprint_features`` when the kernels module provides it (skipped otherwise).

Processing invariance (issue 19): :class:`NuisanceProjection` removes, per group, the feature directions that
JPEG re-encoding and resizing move images along, learned from pairs (image, image processed again at random).
"""

from __future__ import annotations

import numpy as np

from imprint.engine.errors import ImprintError

N_RADIAL = 24
FEATURE_GROUPS = ("hist", "resid", "rspec", "ispec", "lbp")
OPTIONAL_GROUPS = ("fingerprint",)

__all__ = [
    "FEATURE_GROUPS",
    "N_RADIAL",
    "NUISANCE_KEEP",
    "NUISANCE_TAU",
    "NuisanceProjection",
    "check_images",
    "kernels_available",
    "noise_residuals",
    "radial_profile",
    "extract",
    "residual_radial_spectrum",
]


def check_images(images, name="images"):
    """Validate a uint8 ``[N,H,W]`` stack (N >= 1, H, W >= 8) and return it C-contiguous."""
    a = np.asarray(images)
    if a.dtype != np.uint8:
        raise ImprintError(f"{name} must be uint8, got {a.dtype}")
    if a.ndim != 3:
        raise ImprintError(f"{name} must have shape [N,H,W], got {a.shape}")
    if a.shape[0] < 1 or a.shape[1] < 8 or a.shape[2] < 8:
        raise ImprintError(f"{name} must hold at least one image of at least 8x8 pixels, got {a.shape}")
    return np.ascontiguousarray(a)


def kernels_available(name):
    """True when ``kernels`` imports and provides ``name``."""
    return _kernels_attr(name) is not None


def _kernels_attr(name):
    try:
        import imprint.kernels as kernels  # noqa: WPS433
    except Exception:  # pragma: no cover - kernels import failure
        return None
    return getattr(kernels, name, None)


def _box3(x):
    """3x3 mean with edge replication, ``x`` float ``[N,H,W]``."""
    p = np.pad(x, ((0, 0), (1, 1), (1, 1)), mode="edge")
    s = p[:, :-2, :] + p[:, 1:-1, :] + p[:, 2:, :]
    s = s[:, :, :-2] + s[:, :, 1:-1] + s[:, :, 2:]
    return s / 9.0


def noise_residuals(images):
    """High-pass noise residual ``x - mean3x3(x)`` of each image.

    Parameters
    ----------
    images : uint8 ndarray [N,H,W]

    Returns
    -------
    float32 ndarray [N,H,W]
    """
    x = images.astype(np.float32)
    return (x - _box3(x)).astype(np.float32)


def _radial_index(h, w, nbins):
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[None, :]
    r = np.sqrt(fy * fy + fx * fx) / 0.5  # 0 at DC, 1 at axis Nyquist, sqrt(2) at corner
    idx = np.minimum((r * nbins).astype(np.int64), nbins)  # bin nbins collects the corners
    return idx, fy, fx


def radial_profile(power, nbins=N_RADIAL):
    """Mean of ``power [N,H,W]`` (unshifted FFT layout) over radial frequency rings.

    Returns float64 ``[N, nbins]``; ring ``i`` covers normalised radius ``[i/nbins, (i+1)/nbins)``
    with radius 1 at the axis Nyquist frequency (the DC term is excluded).
    """
    n, h, w = power.shape
    idx, _, _ = _radial_index(h, w, nbins)
    flat = idx.ravel()
    keep = flat < nbins
    keep[0] = False  # DC
    counts = np.bincount(flat[keep], minlength=nbins).astype(np.float64)
    p = power.reshape(n, -1)[:, keep].astype(np.float64)
    onehot = np.zeros((keep.sum(), nbins))
    onehot[np.arange(keep.sum()), flat[keep]] = 1.0
    return (p @ onehot) / np.maximum(counts, 1.0)


def _power(x):
    f = np.fft.fft2(x - x.mean(axis=(1, 2), keepdims=True), axes=(1, 2))
    return (f.real * f.real + f.imag * f.imag) / (x.shape[1] * x.shape[2])


def residual_radial_spectrum(images, nbins=N_RADIAL):
    """Radial log10-power spectrum of the noise residual, float64 ``[N, nbins]``."""
    images = check_images(images)
    r = noise_residuals(images)
    return np.log10(radial_profile(_power(r), nbins) + 1e-6)


def _rowwise_bincount(codes, nbins):
    """Histogram of each row of the non-negative int array ``codes [N,P]`` -> float64 ``[N,nbins]``."""
    n = codes.shape[0]
    off = (np.arange(n, dtype=np.int64) * nbins)[:, None]
    return np.bincount((codes + off).ravel(), minlength=n * nbins).reshape(n, nbins).astype(np.float64)


def _hist_quantiles(counts, qs):
    """Quantiles (lower, ``inverted_cdf``) of integer-valued rows from their histograms ``[N,B]``."""
    cdf = np.cumsum(counts, axis=1)
    tot = cdf[:, -1:]
    out = np.empty((counts.shape[0], len(qs)))
    for j, q in enumerate(qs):
        out[:, j] = (cdf < q * tot).sum(axis=1)
    return out


def _hist_features(x):
    n = x.shape[0]
    flat = x.reshape(n, -1)
    names, cols = [], []
    c256 = _rowwise_bincount(flat.astype(np.int64), 256)
    p = c256 / flat.shape[1]
    h = p.reshape(n, 16, 16).sum(axis=2)
    cols.append(np.sqrt(h))
    names += [f"hist.bin{i:02d}" for i in range(16)]
    qs = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
    cols.append(_hist_quantiles(c256, qs) / 255.0)
    names += [f"hist.q{int(round(q * 100))}" for q in qs]
    v = np.arange(256, dtype=np.float64)
    mu = p @ v
    var = p @ (v * v) - mu * mu
    sd = np.sqrt(np.maximum(var, 0.0))
    z = (v[None, :] - mu[:, None]) / np.maximum(sd[:, None], 1e-6)
    skew = (p * z**3).sum(1)
    kurt = (p * z**4).sum(1)
    cols.append(np.stack([mu / 255.0, sd / 255.0, skew, np.log(kurt + 1e-6)], 1))
    names += ["hist.mean", "hist.std", "hist.skew", "hist.logkurt"]
    levels = (c256 > 0).sum(1) / 256.0
    cols.append(np.stack([p[:, 0], p[:, 255], levels], 1))
    names += ["hist.frac0", "hist.frac255", "hist.levels"]
    return np.concatenate(cols, 1), names


def _resid_features(r):
    n = r.shape[0]
    flat = r.reshape(n, -1)
    m2 = np.einsum("np,np->n", flat, flat, dtype=np.float64) / flat.shape[1]
    sd = np.sqrt(m2)
    sq = flat * flat
    m4 = np.einsum("np,np->n", sq, sq, dtype=np.float64) / flat.shape[1]
    # the box-filter residual is a multiple of 1/9: exact quantiles of |r| from an integer histogram
    codes = np.minimum(np.rint(np.abs(flat) * 9.0).astype(np.int64), 9 * 255)
    q = _hist_quantiles(_rowwise_bincount(codes, 9 * 255 + 1), (0.5, 0.9, 0.99)) / 9.0
    a = r.astype(np.float32)

    def corr(u, v):
        num = np.einsum("nij,nij->n", u, v, dtype=np.float64) / u[0].size
        uu = np.einsum("nij,nij->n", u, u, dtype=np.float64) / u[0].size
        vv = np.einsum("nij,nij->n", v, v, dtype=np.float64) / u[0].size
        return num / (np.sqrt(uu * vv) + 1e-9)

    ch = corr(a[:, :, :-1], a[:, :, 1:])
    cv = corr(a[:, :-1, :], a[:, 1:, :])
    cd = corr(a[:, :-1, :-1], a[:, 1:, 1:])
    ch2 = corr(a[:, :, :-2], a[:, :, 2:])
    cv2 = corr(a[:, :-2, :], a[:, 2:, :])
    feats = np.stack(
        [
            np.log(sd + 1e-3),
            np.log(np.abs(flat).mean(1, dtype=np.float64) + 1e-3),
            np.log(m4 / np.maximum(m2 * m2, 1e-12) + 1e-6),
            np.log(q[:, 0] + 1e-3),
            np.log(q[:, 1] + 1e-3),
            np.log(q[:, 2] + 1e-3),
            (np.abs(flat) < 1e-3).mean(1),
            ch,
            cv,
            cd,
            ch2,
            cv2,
        ],
        1,
    )
    names = [
        "resid.logstd", "resid.logmad", "resid.logkurt", "resid.logq50", "resid.logq90",
        "resid.logq99", "resid.frac0", "resid.corr_h1", "resid.corr_v1", "resid.corr_d1",
        "resid.corr_h2", "resid.corr_v2",
    ]
    return feats, names


def _spec_features(power, prefix, peaks):
    n, h, w = power.shape
    rad = np.log10(radial_profile(power, N_RADIAL) + 1e-6)
    names = [f"{prefix}.rad{i:02d}" for i in range(N_RADIAL)]
    cols = [rad]
    if peaks:
        _, fy, fx = _radial_index(h, w, N_RADIAL)
        ay, ax = np.abs(fy) + 0 * fx, np.abs(fx) + 0 * fy
        hi = np.sqrt(fy**2 + fx**2) > 0.125
        tot = power.reshape(n, -1).sum(1) + 1e-9

        def band(mask):
            return np.log10(power[:, mask].sum(1) / tot + 1e-9)

        horiz = hi & (ax > 2 * ay)  # energy varying along x (vertical stripes)
        vert = hi & (ay > 2 * ax)
        diag = hi & ~horiz & ~vert
        cols.append(np.stack([band(horiz), band(vert), band(diag)], 1))
        names += [f"{prefix}.dir_h", f"{prefix}.dir_v", f"{prefix}.dir_d"]
        # periodic peaks (up-sampling / checkerboard): log ratio of the peak bin to its ring mean
        pk = []
        lp = np.log10(power + 1e-6)
        rp_log = rad
        for (py, px, tag) in [
            (h // 2, 0, "ny_y"), (0, w // 2, "ny_x"), (h // 2, w // 2, "ny_xy"),
            (h // 4, 0, "q_y"), (0, w // 4, "q_x"), (h // 4, w // 4, "q_xy"),
        ]:
            rr = np.sqrt((py / h) ** 2 + (px / w) ** 2) / 0.5
            ring = np.minimum((rr * N_RADIAL).astype(int), N_RADIAL - 1)
            pk.append(lp[:, py, px] - rp_log[:, ring])
            names.append(f"{prefix}.peak_{tag}")
        cols.append(np.stack(pk, 1))
    return np.concatenate(cols, 1), names


def _lbp_features(x, r):
    fn = _kernels_attr("lbp_histograms")
    names = [f"lbp.img{i}" for i in range(10)] + [f"lbp.res{i}" for i in range(10)]
    rq = np.clip(np.round(r * 8.0 + 128.0), 0, 255).astype(np.uint8)
    if fn is not None:
        try:
            a = np.asarray(fn(x, 8, 1.0, "uniform"), dtype=np.float64)
            b = np.asarray(fn(rq, 8, 1.0, "uniform"), dtype=np.float64)
            return np.sqrt(np.concatenate([a, b], 1)), names
        except Exception:  # pragma: no cover - fall back to the numpy implementation
            pass
    return np.sqrt(np.concatenate([_lbp_uniform_hist(x), _lbp_uniform_hist(rq)], 1)), names


def _lbp_uniform_hist(x):
    """Rotation-invariant uniform LBP (P=8, R=1, integer neighbours) histogram, ``[N,10]``.

    Matches ``skimage.feature.local_binary_pattern(method="uniform")`` up to its bilinear
    interpolation of the diagonal neighbours (here the nearest integer pixel is used).
    """
    n, h, w = x.shape
    p = np.pad(x.astype(np.int16), ((0, 0), (1, 1), (1, 1)), mode="edge")
    c = p[:, 1:-1, 1:-1]
    offs = [(0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1)]
    bits = np.stack([(p[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w] >= c) for dy, dx in offs], 0)
    ones = bits.sum(0)
    trans = (bits != np.roll(bits, 1, axis=0)).sum(0)
    code = np.where(trans <= 2, ones, 9)
    out = np.stack([np.bincount(cc.ravel(), minlength=10) for cc in code]).astype(np.float64)
    return out / (h * w)


def extract(images, groups=FEATURE_GROUPS, *, batch=512):
    """Extract generator-trace features.

    Parameters
    ----------
    images : uint8 ndarray [N,H,W]
    groups : sequence of str
        Feature groups from :data:`FEATURE_GROUPS` (plus ``"fingerprint"`` if ``kernels`` has it).
    batch : int
        Images processed per chunk (bounds memory).

    Returns
    -------
    feats : float64 ndarray [N,F]
    names : list of str, length F
    """
    images = check_images(images)
    groups = tuple(groups)
    bad = [g for g in groups if g not in FEATURE_GROUPS + OPTIONAL_GROUPS]
    if bad:
        raise ImprintError(f"unknown feature group(s): {', '.join(bad)}")
    out, names = [], None
    for s in range(0, images.shape[0], batch):
        x = images[s:s + batch]
        r = noise_residuals(x)
        cols, nm = [], []
        if "hist" in groups:
            f, n_ = _hist_features(x)
            cols.append(f), nm.extend(n_)
        if "resid" in groups:
            f, n_ = _resid_features(r)
            cols.append(f), nm.extend(n_)
        if "rspec" in groups:
            f, n_ = _spec_features(_power(r), "rspec", peaks=True)
            cols.append(f), nm.extend(n_)
        if "ispec" in groups:
            f, n_ = _spec_features(_power(x.astype(np.float32)), "ispec", peaks=False)
            cols.append(f), nm.extend(n_)
        if "lbp" in groups:
            f, n_ = _lbp_features(x, r)
            cols.append(f), nm.extend(n_)
        if "fingerprint" in groups:
            fn = _kernels_attr("fingerprint_features")
            if fn is not None:
                f = np.asarray(fn(x), dtype=np.float64)
                cols.append(f)
                fnames = _kernels_attr("FINGERPRINT_FEATURE_NAMES")
                if fnames is None or len(fnames) != f.shape[1]:
                    fnames = [str(i) for i in range(f.shape[1])]
                nm.extend(f"fp.{x}" for x in fnames)
        out.append(np.concatenate(cols, 1) if cols else np.zeros((x.shape[0], 0)))
        names = nm
    feats = np.concatenate(out, 0)
    feats[~np.isfinite(feats)] = 0.0
    return feats, names


# ------------------------------------------------------------------------------ processing invariance
#: Default share of a feature group's variance above which a processing direction is projected out.
NUISANCE_TAU = 0.02
#: Scale kept along a removed direction (a soft projection: an exact one leaves rank-deficient data, on which
#: LAPACK's divide-and-conquer SVD inside scikit-learn's PCA can fail to converge).
NUISANCE_KEEP = 1e-3
#: Default cap on the share of a feature group's columns a processing projection removes.
NUISANCE_MAX_SHARE = 1.0 / 3.0


def _geneig_block(S, Zg, tau, max_share, keep, proj, idx, removed, share, residual, g):
    """One group of :meth:`NuisanceProjection.fit` with ``rule="geneig"``; writes into ``proj`` / the dicts.

    ``W = C^(-1/2)`` whitens ``C`` = the images' scatter (``Zg``'s covariance) plus the processing scatter ``S`` plus a
    ridge of 1e-6 of the mean eigenvalue (a rank-deficient group stays finite, and every ratio is a share in [0, 1]);
    the eigen-directions ``U`` of the whitened processing scatter ``W S W`` with eigenvalue (processing variance /
    (image + processing variance) along the direction) above ``tau / (1 + tau)`` (processing above ``tau`` times the
    images' variance), at most ``max_share`` of the columns, are removed by ``z -> z W (I - (1 - keep) U U^T) W^-1``
    (row vectors), which sets every row's coordinate along ``v = W u`` to ``keep`` times itself and leaves the
    directions the images vary along otherwise unchanged.
    """
    p = idx.size
    C = np.cov(Zg.T, bias=True) if Zg.shape[0] > 1 else np.eye(p)
    C = np.atleast_2d(C) + S  # images' scatter plus processing's: the ratio is a share in [0, 1]
    ce, cv = np.linalg.eigh(C)
    ridge = 1e-6 * max(float(ce.mean()), 1e-12)
    ce = np.maximum(ce, 0.0) + ridge
    W = (cv / np.sqrt(ce)) @ cv.T          # C^(-1/2), symmetric
    Wi = (cv * np.sqrt(ce)) @ cv.T         # C^(1/2)
    ev, U = np.linalg.eigh(W @ S @ W)
    ev, U = ev[::-1], U[:, ::-1]
    # S > tau C_images  <=>  S / (C_images + S) > tau / (1 + tau)
    r = int(min((ev > tau / (1.0 + tau)).sum(), max(1, int(p * max_share))))
    removed[g] = r
    share[g] = [round(float(v), 4) for v in ev[:3]]
    residual[g] = round(float(ev[r:].sum()) / max(float(p - r), 1e-12), 4)  # mean ratio left
    if r:
        Ur = U[:, :r]
        # row vectors: z -> z (I - (1-keep) W Ur Ur^T Wi)
        proj[np.ix_(idx, idx)] -= (1.0 - keep) * (W @ Ur @ Ur.T @ Wi)
    return r


class NuisanceProjection:
    """Project out the feature directions that release processing (JPEG, resizing) moves images along.

    Nuisance attribute projection (NAP, as in speaker verification): for pairs ``(x, P(x))`` of an image and
    the same image after a random processing ``P`` (:func:`engine.processing.augment`), the scatter of the
    standardised feature differences ``d = (f(P(x)) - f(x)) / sd`` is eigen-decomposed *per feature group*.
    In each group the eigen-directions whose processing variance exceeds ``tau`` times the group's total
    variance (at most a third of the group's columns) are removed by the orthogonal projection
    ``I - (1 - keep) U U^T`` (``keep`` = :data:`NUISANCE_KEEP`).  What is left are combinations of
    features that processing does not move, so an image's
    JPEG or resize history cannot decide its cluster, while the generator's traces that survive
    processing stay.  No labels are used: the pairs come from the images being clustered.

    Attributes
    ----------
    mu, sd : float64 ndarray [F]
        Standardisation of the features (fitted on the reference images).
    proj : float64 ndarray [F,F]
        Block-diagonal projection (one block per group).
    removed : dict of str -> int
        Directions removed per group.
    share : dict of str -> list of float
        Processing variance of the top directions as a share of the group's variance (diagnostics).
    residual : dict of str -> float
        Processing variance left after the projection as a share of the data variance left (diagnostics).
    """

    def __init__(self, mu, sd, proj, removed, share, residual=None):
        self.mu, self.sd, self.proj, self.removed, self.share = mu, sd, proj, removed, share
        self.residual = dict(residual or {})

    @classmethod
    def fit(cls, X, X_processed, masks, tau=NUISANCE_TAU, max_share=NUISANCE_MAX_SHARE, keep=NUISANCE_KEEP,
            rule="share"):
        """Fit from features of images ``X [M,F]`` and of the same images processed ``X_processed [M,F]``.

        Parameters
        ----------
        X, X_processed : float64 ndarray [M,F]
            Row i of both is the same image before / after processing.
        masks : dict of str -> bool ndarray [F]
            Feature groups (columns not in any group are left as they are, standardised).
        tau : float
            Share of the group's total variance above which a processing direction is removed.
        max_share : float
            At most this fraction of a group's columns is removed.
        keep : float
            Scale left along a removed direction (0 = exact projection).
        rule : {"share", "geneig"}
            "share" (default): eigen-directions of the processing scatter whose variance exceeds ``tau`` times the
            group's *total* variance.  "geneig" (issue 19, branch attr16, opt-in): generalized eigen-directions of
            the processing scatter against the images' own scatter (``S_proc v = lam S_data v``, an LDA-style
            nuisance removal); a direction is removed when processing moves images along it by more than ``tau``
            times the images' variance *along that direction* (``lam > tau``, same cap ``max_share``).  A
            direction along which images barely vary but processing moves them (a resize direction as large as
            a small gap between two models) is removed even when it is a small share of the group's variance.

        Returns
        -------
        NuisanceProjection
        """
        if rule not in ("share", "geneig"):
            raise ImprintError(f"rule must be 'share' or 'geneig', not {rule!r}")
        X = np.asarray(X, np.float64)
        Xp = np.asarray(X_processed, np.float64)
        if X.shape != Xp.shape or X.ndim != 2:
            raise ImprintError(f"feature shapes differ: {X.shape} vs {Xp.shape}")
        mu, sd = X.mean(axis=0), X.std(axis=0)
        sd = np.where(sd > 1e-9, sd, 1.0)
        D = (Xp - X) / sd
        Zt = (X - mu) / sd
        F = X.shape[1]
        proj = np.eye(F)
        removed, share, residual = {}, {}, {}
        for g, m in masks.items():
            idx = np.flatnonzero(m)
            if idx.size < 2:
                continue
            Dg = D[:, idx]
            S = Dg.T @ Dg / max(len(Dg), 1)
            if rule == "geneig":
                _geneig_block(S, Zt[:, idx], tau, max_share, keep, proj, idx, removed, share, residual, g)
                continue
            ev, V = np.linalg.eigh(S)
            ev, V = ev[::-1], V[:, ::-1]
            total = float(Zt[:, idx].var(axis=0).sum())
            if total <= 0:
                continue
            frac = ev / total
            r = int(min((frac > tau).sum(), max(1, int(idx.size * max_share))))
            removed[g] = r
            share[g] = [round(float(v), 4) for v in frac[:3]]
            # processing variance left after the projection, as a share of the data variance left
            kept = total - float(np.trace(V[:, :r].T @ np.cov(Zt[:, idx].T, bias=True) @ V[:, :r]))
            residual[g] = round(float(ev[r:].sum()) / max(kept, 1e-12), 4)
            if r:
                U = V[:, :r]
                proj[np.ix_(idx, idx)] -= (1.0 - keep) * (U @ U.T)
        return cls(mu, sd, proj, removed, share, residual)

    def transform(self, X):
        """Standardise ``X [N,F]`` with the fitted statistics and apply the projection (float64 ``[N,F]``)."""
        return ((np.asarray(X, np.float64) - self.mu) / self.sd) @ self.proj

    def describe(self):
        """JSON-able summary: directions removed per group and the top processing shares."""
        return {"method": "nuisance attribute projection of processing directions (JPEG q50-95, resize "
                          "0.5-0.9 and back), per feature group",
                "removed": dict(self.removed), "top_share": dict(self.share),
                "residual_share": dict(self.residual)}
