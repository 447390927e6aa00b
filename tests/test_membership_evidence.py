"""Transform-invariant membership evidence (engine/membership/register.py and its wiring).

Members are PLANTED: copies of some real CT-like phantoms are flipped, shifted, rotated, rescaled,
gamma-changed or 4x down-sampled among a generator's own samples, and must be found, flagged and their
transform reported.  Reference implementations: scipy.ndimage (rotate / shift / zoom), numpy flips,
sklearn's ROC AUC, and a binomial bound for the non-member flag rate.
"""

import numpy as np
import pytest
from scipy import ndimage, stats
from sklearn.metrics import roc_auc_score

from conftest import write_folders
from imprint.engine.membership import audit_membership, compute_evidence
from imprint.engine.membership.register import (register_pairs, shortlist_descriptors, warp, _desc_knn)

H = 64


def phantom(rng, h=H):
    """One smooth CT-like axial slice (body, two lungs, vessels, texture), uint8 [h, h]."""
    yy, xx = np.mgrid[0:h, 0:h].astype(np.float64) / h
    cy, cx = 0.5 + rng.normal(0, 0.03, 2)
    ay, ax = rng.uniform(0.25, 0.36), rng.uniform(0.33, 0.44)
    body = ((yy - cy) / ay) ** 2 + ((xx - cx) / ax) ** 2 < 1
    img = np.where(body, rng.uniform(150, 200), 5.0)
    for side in (-1, 1):
        ly, lx = cy + rng.normal(0, 0.03), cx + side * rng.uniform(0.12, 0.2)
        by, bx = rng.uniform(0.12, 0.22), rng.uniform(0.07, 0.13)
        lung = ((yy - ly) / by) ** 2 + ((xx - lx) / bx) ** 2 < 1
        img = np.where(lung, rng.uniform(20, 50), img)
    for _ in range(5):                                        # vessels / organs: asymmetric blobs
        py, px, r = cy + rng.uniform(-0.2, 0.2), cx + rng.uniform(-0.3, 0.3), rng.uniform(0.02, 0.05)
        img = img + 70 * np.exp(-((yy - py) ** 2 + (xx - px) ** 2) / (2 * r * r)) * body
    tex = ndimage.gaussian_filter(rng.normal(0, 1, (h, h)), 1.5)
    img = img + 50 * tex / tex.std() * body
    img = ndimage.gaussian_filter(img, 0.7) + rng.normal(0, 2, (h, h))
    return np.clip(img, 0, 255).astype(np.uint8)


def phantoms(n, seed):
    rng = np.random.default_rng(seed)
    return np.stack([phantom(rng) for _ in range(n)])


def u8(x):
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# planted transforms: name -> (function of a float image, expected flip, shift (dy, dx) or None)
TRANSFORMS = {
    "flip+shift": (lambda x: ndimage.shift(x[:, ::-1], (3, -4), order=1, mode="nearest"), 1, (3, -4)),
    "shift8": (lambda x: ndimage.shift(x, (0, 8), order=1, mode="nearest"), 0, (0, 8)),
    "rot7": (lambda x: ndimage.rotate(x, 7, reshape=False, order=1, mode="nearest"), 0, (0, 0)),
    "gamma": (lambda x: 255 * (x / 255) ** 0.6, 0, (0, 0)),
    "down4": (lambda x: np.kron(x.reshape(H // 4, 4, H // 4, 4).mean((1, 3)), np.ones((4, 4))), 0, None),
    "scale1.08": (lambda x: ndimage.zoom(x, 1.08, order=1)[2:2 + H, 2:2 + H], 0, None),
}


# ----------------------------------------------------------------------------------------- warp
def test_warp_matches_scipy_and_numpy():
    a = phantoms(1, 3).astype(np.float32)
    inner = (slice(8, -8), slice(8, -8))
    rot, _ = warp(a, [0], 0, 7.0, 1.0)
    ref = ndimage.rotate(a[0], 7, reshape=False, order=1)
    assert np.abs(rot[0] - ref)[inner].max() < 1e-3
    sh, valid = warp(a, [0], 0, 0.0, 1.0, 5.0, -3.0)
    assert np.abs(sh[0] - ndimage.shift(a[0], (5, -3), order=1))[inner].max() < 1e-3
    assert valid[0, :5].sum() == 0 and valid[0, 10:50, 10:50].all()         # shifted in from outside
    fl, _ = warp(a, [0], 1, 0.0, 1.0)
    np.testing.assert_allclose(fl[0], a[0, :, ::-1], atol=1e-4)
    zs, _ = warp(a, [0], 0, 0.0, 1.25)
    c = (H - 1) / 2
    ref = ndimage.affine_transform(a[0], np.eye(2) / 1.25, offset=c - c / 1.25, order=1)
    assert np.abs(zs[0] - ref)[inner].max() < 1e-3


# ----------------------------------------------------------------------------------------- registration
def test_register_recovers_planted_transforms():
    real = phantoms(len(TRANSFORMS) + 1, 10)
    gen = np.stack([u8(f(real[i].astype(np.float64))) for i, (f, _, _) in enumerate(TRANSFORMS.values())])
    n = len(gen)
    true = register_pairs(real, gen, np.stack([np.arange(n), np.arange(n)], 1))
    wrong = register_pairs(real, gen, np.stack([np.arange(n), (np.arange(n) + 1) % n], 1))
    for i, (name, (_, flip, shift)) in enumerate(TRANSFORMS.items()):
        assert true["ncc"][i] > 0.9, (name, true["ncc"][i])
        assert true["ncc_lo"][i] > 0.93, (name, true["ncc_lo"][i])
        assert true["ncc"][i] > wrong["ncc"][i] + 0.1, name
        assert true["flip"][i] == flip, name
        if shift is not None:
            assert abs(true["dy"][i] - shift[0]) <= 1.0 and abs(true["dx"][i] - shift[1]) <= 1.0, name
    names = list(TRANSFORMS)
    assert abs(true["angle"][names.index("rot7")] - 7) <= 2.0
    assert abs(true["scale"][names.index("scale1.08")] - 1.08) <= 0.03
    assert abs(true["gain"][names.index("gamma")] - 1) < 0.3          # a monotone change, fitted linearly


def test_descriptor_shortlist_finds_transformed_copies():
    real = phantoms(len(TRANSFORMS), 20)
    decoys = phantoms(150, 21)
    copies = np.stack([u8(f(real[i].astype(np.float64))) for i, (f, _, _) in enumerate(TRANSFORMS.values())])
    gen = np.concatenate([decoys, copies])
    idx, flip = _desc_knn(shortlist_descriptors(gen), shortlist_descriptors(real), 8)
    for i, name in enumerate(TRANSFORMS):
        j = len(decoys) + i
        assert j in idx[i], name
        assert flip[i][list(idx[i]).index(j)] == TRANSFORMS[name][1], name
    # the mirrored descriptor is the descriptor of the mirrored image (the flip-search rests on it)
    d = shortlist_descriptors(real[:2])
    dm = shortlist_descriptors(np.ascontiguousarray(real[:2, :, ::-1]))
    assert np.abs(d[:, :, ::-1] - dm).mean() < 0.1 * np.abs(d).mean()


# ----------------------------------------------------------------------------------------- audit
@pytest.fixture(scope="module")
def planted():
    """40 candidates (24 members, 16 non-members), 60 reference non-members, a generator whose
    120 images are its own samples plus one transformed copy of each member (light noise added)."""
    rng = np.random.default_rng(5)
    real = phantoms(40, 30)
    reference = phantoms(60, 31)
    fresh = phantoms(120, 32)
    members = np.arange(24)
    kinds = list(TRANSFORMS)
    gen = fresh.copy()
    slots = rng.choice(len(gen), len(members), replace=False)
    planted_kind = {}
    for m, s in zip(members, slots):
        kind = kinds[m % len(kinds)]
        planted_kind[int(m)] = (kind, int(s))
        y = TRANSFORMS[kind][0](real[m].astype(np.float64)) + rng.normal(0, 2, (H, H))
        gen[s] = u8(y)
    y = np.zeros(len(real), int)
    y[members] = 1
    return real, reference, gen, y, planted_kind


def test_planted_transformed_members_outrank_and_are_flagged(planted):
    real, reference, gen, y, planted_kind = planted
    res = audit_membership(gen, real, reference=reference)
    assert roc_auc_score(y, res.score) >= 0.98
    assert res.used[y == 1].mean() >= 0.9, res.used[y == 1]
    assert res.used[y == 0].sum() <= 1
    ev = res.evidence
    # the best registered match is the planted copy, with the right transform
    for m, (kind, slot) in planted_kind.items():
        assert ev["reg_match"][m] == slot, (m, kind)
        assert ev["reg_flip"][m] == TRANSFORMS[kind][1], (m, kind)
        shift = TRANSFORMS[kind][2]
        if shift is not None:
            assert abs(ev["reg_dy"][m] - shift[0]) <= 1 and abs(ev["reg_dx"][m] - shift[1]) <= 1, (m, kind)
        if kind == "rot7":
            assert abs(ev["reg_angle"][m] - 7) <= 2


def test_registered_evidence_alone_separates_members(planted):
    real, reference, gen, y, _ = planted
    pool = np.concatenate([real, reference])
    ev, nearest, info = compute_evidence(gen, pool, backbone=None, shape=False)
    assert "register_s" in info["timings"]
    for name in ("reg_ratio", "reg_lo_ratio"):
        assert roc_auc_score(y, ev[name][: len(real)]) >= 0.97, name
    # the same registration on the real-vs-real control: non-members' ratios centre near the reference's
    ref_med = np.median(ev["reg_ratio"][len(real):])
    assert abs(np.median(ev["reg_ratio"][: len(real)][y == 0]) - ref_med) < 1.0


def test_non_members_flagged_at_most_the_stated_rate():
    """No copies at all: over 4 independent generators x 40 candidates the default ``fpr:0.01`` may flag
    few (P(Binomial(160, 0.01) >= 6) < 0.01).  (memdec's exact order-statistic threshold is verified by
    its own simulation; this checks that the new evidence does not push innocent images over it.)"""
    flagged, total = 0, 0
    for seed in range(4):
        real = phantoms(40, 100 + seed)
        ref = phantoms(60, 200 + seed)
        gen = phantoms(60, 300 + seed)
        res = audit_membership(gen, real, reference=ref)
        flagged += int(res.used.sum())
        total += len(real)
    assert stats.binom.sf(5, total, 0.01) < 0.01
    assert flagged <= 5, flagged


def test_pipeline_writes_the_registered_match(planted, tmp_path):
    """CLI path: scores.csv keeps its contract; the evidence CSV names the planted copy as the registered
    generated image with its transform; the report captions the registered match."""
    import csv
    import json

    from imprint.engine.ingest import IngestPolicy
    from imprint.engine.pipeline import run_membership

    real, reference, gen, y, planted_kind = planted
    write_folders(tmp_path, {"real": real, "gen": gen, "ref": reference})
    out = tmp_path / "scores.csv"
    run_membership(gen_dir=str(tmp_path / "gen"), real_dir=str(tmp_path / "real"), out=str(out),
                   ref_dirs=[str(tmp_path / "ref")], report_dir=str(tmp_path / "rep"),
                   policy=IngestPolicy(size=(H, H)))
    with open(out) as fh:
        assert next(csv.reader(fh)) == ["image", "score", "used"]
    with open(str(out).replace(".csv", ".evidence.csv")) as fh:
        rows = {r["image"]: r for r in csv.DictReader(fh)}
    flips = [m for m, (kind, _) in planted_kind.items() if TRANSFORMS[kind][1] == 1]
    for m in flips:
        r = rows[f"{m:03d}.png"]
        assert float(r["reg_flip"]) == 1.0
        assert r["registered_generated"] == f"{planted_kind[m][1]:03d}.png"
        assert abs(float(r["reg_dy"]) - 3) <= 1 and abs(float(r["reg_dx"]) + 4) <= 1
    top = json.loads((tmp_path / "rep" / "report.json").read_text())["top_matches"]
    first = [t for t in top if t["rank"] == 0]
    assert first and all(t.get("registered", "").startswith("registered:") for t in first)


# ----------------------------------------------------------------------------------------- density ratio
def test_density_ratio_matches_brute_force_and_finds_planted_density():
    from imprint.engine.membership.density import density_ratio

    rng = np.random.default_rng(0)
    pool = rng.normal(0, 1, (80, 6)).astype(np.float32)
    gen = rng.normal(0, 1, (200, 6)).astype(np.float32)
    gen[:12] = pool[3] + rng.normal(0, 0.05, (12, 6))          # a generator piling density on pool row 3
    for k in (1, 5):
        got = density_ratio(gen, pool, k)
        dg = np.sort(np.linalg.norm(pool[:, None] - gen[None], axis=2), 1)[:, k - 1]
        dr = np.linalg.norm(pool[:, None] - pool[None], axis=2)
        np.fill_diagonal(dr, np.inf)
        dr = np.sort(dr, 1)[:, k - 1]
        np.testing.assert_allclose(got, np.log(dr + 1e-9) - np.log(dg + 1e-9), rtol=1e-4, atol=1e-4)
        assert np.argmax(got) == 3


def test_embed_cached_reuses_the_store(models_dir, tmp_path, monkeypatch):
    from imprint.engine.backbone import embed
    from imprint.engine.membership import density
    from imprint.engine.store import EmbeddingStore

    monkeypatch.setenv("IMPRINT_MODELS_DIR", str(models_dir))
    x = phantoms(6, 40)
    a = density.embed_cached(x, "pixel", str(tmp_path / "st"))
    np.testing.assert_allclose(a, embed(x, "pixel"), rtol=1e-6, atol=1e-6)
    calls = []
    monkeypatch.setattr("imprint.engine.backbone.embed", lambda *a_, **k_: calls.append(1) or embed(*a_, **k_))
    b = density.embed_cached(np.concatenate([x[:3], phantoms(2, 41)]), "pixel", str(tmp_path / "st"))
    np.testing.assert_array_equal(b[:3], a[:3])
    assert len(calls) == 1                                             # one embedding call, for the new rows
    assert len(EmbeddingStore.open(tmp_path / "st" / "pixel")) == 8      # only the 2 new images were added


def test_density_evidence_is_reported_when_requested(planted):
    real, reference, gen, y, _ = planted
    ev, _, info = compute_evidence(gen[:60], np.concatenate([real, reference[:20]]), backbone=None, shape=False,
                                   register=False, density="pixels")
    assert ev["density_pixels"].shape == (60,) and np.isfinite(ev["density_pixels"]).all()
    assert "density_s" in info["timings"] and "reg_ratio" not in ev


def test_registration_cache_gives_identical_evidence(planted, monkeypatch):
    from imprint.engine.membership import register as reg

    real, reference, gen, y, _ = planted
    P = np.concatenate([real[:20], reference[:20]])
    pg = np.argsort(((P[:, None].astype(np.float32) - gen[None].astype(np.float32)) ** 2).mean((2, 3)), 1)[:, :3]
    pr = np.stack([(np.arange(len(P)) + k) % len(P) for k in (1, 2, 3)], 1)
    plain, best = reg.registered_evidence(gen, P, pg, pr)
    cache: dict = {}
    first, best1 = reg.registered_evidence(gen, P, pg, pr, cache=cache)
    calls = []
    orig = reg.coarse_scores
    monkeypatch.setattr(reg, "coarse_scores", lambda *a, **k: calls.append(1) or orig(*a, **k))
    again, best2 = reg.registered_evidence(gen, P, pg, pr, cache=cache)
    assert calls == []                                              # every pair came from the cache
    np.testing.assert_array_equal(best, best1)
    np.testing.assert_array_equal(best1, best2)
    for k in plain:
        np.testing.assert_allclose(first[k], plain[k], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(again[k], plain[k], rtol=1e-6, atol=1e-6)


def test_spectrum_descriptor_is_shift_and_flip_invariant():
    from imprint.engine.membership.register import spectrum_descriptors

    x = phantoms(3, 50)
    d = spectrum_descriptors(x)
    rolled = np.roll(x, (8, -12), axis=(1, 2))                 # a circular shift: exactly invariant
    np.testing.assert_allclose(spectrum_descriptors(rolled), d, atol=1e-4)
    np.testing.assert_allclose(spectrum_descriptors(np.ascontiguousarray(x[:, :, ::-1])), d, atol=1e-4)
    assert np.abs(d[0] - d[1]).mean() > 0.1                     # and it still tells patients apart
