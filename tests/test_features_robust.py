"""Attribution that survives release post-processing (issue 19): JPEG re-encoding and resizing.

The synthetic "generators" differ in a trace that survives processing (a period-8 texture, which JPEG at
quality >= 50 and resizing by >= 0.5 keep), on top of content and white noise that processing changes a lot.
Half of every model's images are JPEG-processed, which (as the planted-confound checks show) is what the
features see first without the processing invariance.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score as ari
from threadpoolctl import threadpool_limits

from conftest import ct_like
from imprint.engine import attribution as A
from imprint.engine import features as F
from imprint.engine import ingest
from imprint.engine import processing as P


def _model(rng, n, textured, size=64):
    x = ct_like(rng, n, size).astype(np.float32) + rng.normal(0, 3, (n, size, size))
    if textured:
        yy, xx = np.mgrid[0:size, 0:size]
        for i in range(n):
            p = rng.uniform(0, 2 * np.pi, 2)
            x[i] += 6 * (np.cos(2 * np.pi * xx / 8 + p[0]) + np.cos(2 * np.pi * yy / 8 + p[1]))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _half_jpeg(x, q=60):
    y = x.copy()
    y[1::2] = np.stack([P.jpeg_roundtrip(v, q) for v in x[1::2]])
    return y


@pytest.fixture(scope="module")
def two_models():
    rng = np.random.default_rng(7)
    n = 60
    a, b = _model(rng, n, False), _model(rng, n, True)
    X = np.concatenate([_half_jpeg(a), _half_jpeg(b)])
    return X, np.repeat([0, 1], n), np.tile([0, 1], n)


# ------------------------------------------------------------------------------ NuisanceProjection
def test_nuisance_projection_removes_a_planted_processing_direction():
    rng = np.random.default_rng(0)
    n, f = 300, 12
    cls = np.repeat([0, 1], n // 2)
    proc = rng.permutation(np.tile([0, 1], n // 2))
    u = np.zeros(f)
    u[1:6] = rng.normal(size=5)
    u /= np.linalg.norm(u)
    X = rng.normal(size=(n, f))
    X[:, 0] += 4.0 * cls  # the model trace (group a)
    X[:, 6] += 4.0 * cls  # and again in group b
    X += 6.0 * proc[:, None] * u[None, :]  # half the images processed: a large shift along u
    Xp = X + 6.0 * rng.uniform(0.5, 1.0, (n, 1)) * u[None, :] + rng.normal(0, 0.05, (n, f))
    masks = {"a": np.arange(f) < 6, "b": np.arange(f) >= 6}
    nap = F.NuisanceProjection.fit(X, Xp, masks)
    assert nap.removed["a"] >= 1 and nap.removed["b"] == 0
    T = nap.transform(X)
    Z = (X - X.mean(0)) / X.std(0)
    # the planted confound dominates the raw features, and is gone after the projection
    with threadpool_limits(1):
        raw = KMeans(2, n_init=10, random_state=0).fit_predict(Z)
        lab = KMeans(2, n_init=10, random_state=0).fit_predict(T)
    assert ari(proc, raw) > 0.9
    assert ari(cls, lab) > 0.9 and abs(ari(proc, lab)) < 0.1
    v = u / X.std(0)
    v /= np.linalg.norm(v)  # the processing direction in standardised units
    assert np.var(T @ v) < 0.01 * np.var(Z @ v)
    # the model trace is kept
    t = (T[cls == 1, 0].mean() - T[cls == 0, 0].mean()) / T[:, 0].std()
    assert t > 1.5
    d = nap.describe()
    assert d["removed"]["a"] == nap.removed["a"] and "top_share" in d


def test_nuisance_projection_rejects_mismatched_shapes():
    with pytest.raises(Exception, match="differ"):
        F.NuisanceProjection.fit(np.zeros((5, 3)), np.zeros((4, 3)), {"g": np.ones(3, bool)})


# ------------------------------------------------------------------------------ attribution
def test_two_models_half_processed_follow_the_models(two_models):
    X, ym, yp = two_models
    plain = A.attribute(X, 2, backbones=(), processing_invariant=False)
    assert ari(yp, plain.labels) > 0.9  # planted: without the invariance the JPEG history decides
    r = A.attribute(X, 2, backbones=())
    assert ari(ym, r.labels) >= 0.95
    assert r.info["processing_invariance"]["removed"]


def test_two_models_half_processed_k_auto(two_models):
    """A strict xfail until the seventh round of issue 19.  The one trace of these two synthetic models is the amplitude
    of a random-phase period-8 texture, a feature resizing rescales; the processing projection removes most of it and
    the two-way test scores 0.83 < 0.90.  The k = 2 pair route (on by default since the seventh round, its floor at
    the one-model threshold) finds them: the k = 2 consensus partition passes the labelled test and the floor."""
    X, ym, yp = two_models
    ra = A.attribute(X, None, backbones=(), k_max=4, stability_resamples=0)
    assert A.K2_PAIR_ROUTE and A.K2_FLOOR_STRICT
    assert ra.k == 2 and ari(ym, ra.labels) >= 0.95
    assert ra.info["one_model_test"]["separation"] < ra.info["one_model_test"]["threshold"]  # the route found it


def test_one_model_half_processed_is_not_split_by_processing(two_models):
    X, ym, yp = two_models
    one, tag = X[ym == 0], yp[ym == 0]
    plain = A.attribute(one, None, backbones=(), k_max=4, processing_invariant=False)
    assert plain.k >= 2 and ari(tag, plain.labels) > 0.9  # planted: the JPEG half forms its own cluster
    r = A.attribute(one, None, backbones=(), k_max=4)
    # k = 1 cannot be answered by the current k scan (issue 16); the split it makes must not be the JPEG one
    assert r.k == 1 or ari(tag, r.labels) < 0.5


def test_processing_invariance_keeps_unprocessed_models_apart(rng):
    a, b = _model(rng, 50, False), _model(rng, 50, True)
    X = np.concatenate([a, b])
    r = A.attribute(X, 2, backbones=())
    assert ari(np.repeat([0, 1], 50), r.labels) == 1.0


# ------------------------------------------------------------------------------ simulation / detection
def test_augment_is_seeded_and_changes_images(rng):
    x = _model(rng, 6, True)
    a1, a2 = P.augment(x, 3), P.augment(x, 3)
    assert a1.dtype == np.uint8 and a1.shape == x.shape
    assert np.array_equal(a1, a2)
    assert all(not np.array_equal(a1[i], x[i]) for i in range(len(x)))


@pytest.mark.parametrize("q", [30, 50, 75, 90, 95])
def test_jpeg_quality_from_tables_matches_the_encoder(rng, q):
    buf = io.BytesIO()
    Image.fromarray(_model(rng, 1, False)[0]).save(buf, format="JPEG", quality=q)
    buf.seek(0)
    with Image.open(buf) as im:
        assert P.jpeg_quality_from_tables(im.quantization) == q
    assert P.jpeg_quality_from_tables(None) is None


def test_jpeg_ghost_finds_planted_jpeg_in_decoded_pixels(rng):
    clean = np.concatenate([_model(rng, 15, False), _model(rng, 15, True)])
    qs = rng.integers(60, 96, len(clean))
    jp = np.stack([P.jpeg_roundtrip(v, q) for v, q in zip(clean, qs)])
    d0, d1 = P.detect(clean), P.detect(jp)
    assert sum(d0["jpeg"]) == 0 and set(d0["processing"]) == {"none"}
    assert sum(d1["jpeg"]) == len(jp) and set(d1["jpeg_source"]) == {"pixels"}
    assert all(abs(e - q) <= 10 for e, q in zip(d1["jpeg_quality"], qs))
    # a JPEG file's own table wins and is reported as such
    d2 = P.detect(clean[:2], jpeg_quality=[80, None])
    assert d2["jpeg"] == [True, False] and d2["jpeg_quality"][0] == 80 and d2["jpeg_source"][0] == "file"
    with pytest.raises(ValueError):
        P.detect(clean[:2], jpeg_quality=[None])


def test_ingest_reads_jpeg_and_webp(tmp_path, rng):
    x = _model(rng, 3, True, size=128)
    Image.fromarray(x[0]).save(tmp_path / "a.png")
    Image.fromarray(x[1]).save(tmp_path / "b.jpg", quality=85)
    Image.fromarray(x[2]).save(tmp_path / "c.webp", lossless=True)
    Image.fromarray(x[2]).convert("RGB").save(tmp_path / "d.webp", quality=80)
    (tmp_path / "e.webp").write_bytes(b"RIFF\x10\x00\x00\x00WEBPVP8 garbage")
    s = ingest.load_folder(tmp_path)
    assert s.paths == ["a.png", "b.jpg", "c.webp", "d.webp"]
    assert [k.path for k in s.skipped] == ["e.webp"]
    assert np.array_equal(s.images[0], x[0]) and np.array_equal(s.images[2], x[2])
    assert np.abs(s.images[1].astype(int) - x[1]).mean() < 3
    assert np.abs(s.images[3].astype(int) - x[2]).mean() < 4
    assert ingest.jpeg_quality_of(tmp_path / "b.jpg") == 85
    assert ingest.jpeg_quality_of(tmp_path / "a.png") is None
    assert ingest.jpeg_quality_of(tmp_path / "e.webp") is None
    assert ingest.jpeg_quality_of(tmp_path / "missing.jpg") is None


def test_attribution_run_reports_processing_per_cluster(tmp_path, rng):
    from imprint.engine.pipeline import run_attribution

    d = tmp_path / "imgs"
    d.mkdir()
    a, b = _model(rng, 12, False), _model(rng, 12, True)
    for i in range(12):
        Image.fromarray(a[i]).save(d / f"a{i:02d}.jpg", quality=80)  # JPEG files
        Image.fromarray(P.jpeg_roundtrip(b[i], 70) if i % 2 else b[i]).save(d / f"b{i:02d}.png")  # half JPEG'd
    out = tmp_path / "c.csv"
    s = run_attribution(images_dir=str(d), k=2, out=str(out), policy=ingest.IngestPolicy(size=(64, 64)),
                        report_dir=str(tmp_path / "rep"))
    proc = s["processing"]
    assert proc["n_jpeg"] == 18 and sum(p["n"] for p in proc["per_cluster"]) == 24
    assert sorted(p["jpeg_files"] for p in proc["per_cluster"]) == [0, 12]
    assert sum(p["jpeg_in_pixels"] for p in proc["per_cluster"]) == 6
    rows = (tmp_path / "c.processing.csv").read_text().splitlines()
    assert rows[0] == ("image,cluster,processing,jpeg_quality,jpeg_source,jpeg_ghost,resized,resize_evidence,"
                       "copied_lines,resize_z")
    assert len(rows) == 25
    assert sum(p["resized"] for p in proc["per_cluster"]) == proc["n_resized"]
    assert any(r.startswith("a00.jpg,") and ",jpeg,80,file," in r for r in rows)
    html = (tmp_path / "rep" / "index.html").read_text()
    assert "Detected processing per cluster" in html and "<th>resized</th>" in html
    assert "<th>resized: copied lines</th>" in html and "<th>untouched</th>" in html
    untouched = sum(r.split(",")[2] == "none" for r in rows[1:])
    assert sum(p["untouched"] for p in proc["per_cluster"]) == proc["n_untouched"] == untouched <= 6
    assert "processing detected: JPEG 18, resized" in s["summary"]


def test_processing_report_per_cluster_sees_whole_clusters_processed(tmp_path, rng):
    """Issue 19 deliverable 3, planted: three clusters processed as a whole (box resize 0.75 and back, JPEG q 75 saved
    as PNG, untouched).  The group-relative detectors have nothing to compare with in such a cluster; the report's
    per-image copied lines and JPEG ghost must still name each cluster's processing."""
    from types import SimpleNamespace

    from imprint.engine.pipeline import _processing_detected

    n = 20
    box = np.stack([P.resize_roundtrip(v, 0.75, "box") for v in _noisy_model(rng, n)])
    jpg = np.stack([P.jpeg_roundtrip(v, 75) for v in _noisy_model(rng, n)])
    raw = _noisy_model(rng, n)
    images = np.concatenate([box, jpg, raw])
    paths = [f"i{i:03d}.png" for i in range(3 * n)]
    for p, v in zip(paths, images):
        Image.fromarray(v).save(tmp_path / p)
    labels = np.repeat([0, 1, 2], n)
    summ, rows = _processing_detected(SimpleNamespace(root=str(tmp_path), paths=paths, images=images), labels, 3,
                                      str(tmp_path / "o.csv"))
    c_box, c_jpg, c_raw = summ["per_cluster"]
    # the box-resized cluster: every image resized, found by its copied lines, none taken for JPEG
    assert c_box["resized"] == c_box["resized_copied"] == n and c_box["resized_share"] == 1.0
    assert c_box["jpeg"] == 0 and c_box["untouched"] == 0
    # the JPEG cluster: every image JPEG (ghost in the pixels, quality near 75), no copied lines
    assert c_jpg["jpeg"] == c_jpg["jpeg_in_pixels"] == n and c_jpg["jpeg_share"] == 1.0
    assert abs(c_jpg["median_jpeg_quality"] - 75) <= 5 and c_jpg["resized_copied"] == 0
    # the untouched cluster: untouched.  Only the group-relative periodicity test has false alarms (1.5 % of 400
    # untouched images of this kind, 20 groups of 20, /tmp measurement in benchmarks/RESULTS.md; 3 of these 20)
    assert c_raw["jpeg"] == 0 and c_raw["resized_copied"] == c_raw["resized_band_limit"] == 0
    assert c_raw["untouched"] >= n - 3 and c_raw["untouched_share"] >= 0.85
    assert c_raw["untouched_share"] == round(c_raw["untouched"] / n, 4)
    # rows: the copied-line count and the evidence per image; only the file name identifies an image
    by = {r[0]: r for r in rows}
    assert by["i000.png"][2] == "resized" and by["i000.png"][7].startswith("copied") and by["i000.png"][8] >= 4
    assert by[paths[n]][2] == "jpeg" and by[paths[n]][8] == 0
    assert len(rows) == 3 * n and all(len(r) == 10 for r in rows)
    # the old group-median detector alone misses the whole-cluster box resize (why the copied lines are needed)
    assert P.detect_resampling(box, np.zeros(n, np.int64))[0].sum() <= 2


def test_processing_report_does_not_take_jpeg_for_resizing(tmp_path, rng):
    """A cluster with a third of its images JPEG'd (q 70-95) and none resized: the report judges the band limit and
    the periodic traces against images of the same JPEG state, so JPEG is not reported as resizing.  Judged against
    the whole cluster (before), the JPEG'd images' 8x8 grid and lost high band flag many of them (54 of 200 in a
    5-seed /tmp check, 7 of 200 stratified; benchmarks/RESULTS.md, ninth round)."""
    from types import SimpleNamespace

    from imprint.engine.pipeline import _processing_detected

    n = 40
    x = _noisy_model(rng, n, size=128)
    jp = np.arange(n) % 3 == 0
    y = np.stack([P.jpeg_roundtrip(v, int(q)) if j else v for v, j, q in zip(x, jp, rng.integers(70, 96, n))])
    paths = [f"i{i:03d}.png" for i in range(n)]
    summ, rows = _processing_detected(SimpleNamespace(root=str(tmp_path), paths=paths, images=y),
                                      np.zeros(n, np.int64), 1, str(tmp_path / "o.csv"))
    (c,) = summ["per_cluster"]
    assert c["jpeg"] == int(jp.sum()) and c["resized_copied"] == 0
    assert c["resized"] <= 3  # the stratified detectors' false alarms (~3.5 % measured)
    assert c["untouched"] == n - c["jpeg"] - sum(r[6] for r, j in zip(rows, jp) if not j)
    # the same images judged against the whole cluster: the defect this guards against is present in the data
    assert P.detect_resampling_kinds(y, np.zeros(n, np.int64))["resized"][jp].sum() >= 4


# ------------------------------------------------------------------------------ resampling detection
def _noisy_model(rng, n, size=64):
    """Generator-like images: content plus sensor noise up to the Nyquist frequency."""
    x = ct_like(rng, n, size).astype(np.float32) + rng.normal(0, 4, (n, size, size))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("factor,filt", [(0.75, "bilinear"), (0.6, "bicubic"), (0.5, "lanczos")])
def test_resampling_detection_finds_planted_resized_images(rng, factor, filt):
    x = _noisy_model(rng, 40)
    planted = np.zeros(40, bool)
    planted[rng.choice(40, 12, replace=False)] = True  # 30 % of the model's images resized after generation
    y = np.stack([P.resize_roundtrip(v, factor, filt) if p else v for v, p in zip(x, planted)])
    flag, z = P.detect_resampling(y, np.zeros(40, np.int64))
    assert flag[planted].all()  # every resized image is found ...
    # ... and at most one untouched image of 28: the band-limit z alone flagged none; the periodicity test added to
    # detect_resampling (issue 19, second round) flags about 1 % of untouched images (benchmarks/RESULTS.md)
    assert flag[~planted].sum() <= 1
    assert not P.detect_resampling(y, np.zeros(40, np.int64), periodic=False)[0][~planted].any()
    assert z.shape == (40,) and np.all(np.isfinite(z))


def test_resampling_detection_false_rate_on_untouched_models(rng):
    # false rate: untouched images of three different "generators" (different noise levels), judged per cluster;
    # the detector's threshold (robust z > 3.5) flags about 0.02 % of a Gaussian's draws: allow 1 % here
    imgs, groups = [], []
    for g, sd in enumerate((2.0, 5.0, 9.0)):
        x = ct_like(rng, 100, 64).astype(np.float32) + rng.normal(0, sd, (100, 64, 64))
        imgs.append(np.clip(np.rint(x), 0, 255).astype(np.uint8))
        groups.append(np.full(100, g))
    flag, _ = P.detect_resampling(np.concatenate(imgs), np.concatenate(groups))
    assert flag.mean() <= 0.01
    # groups too small to judge flag nothing, and shapes are checked
    f2, z2 = P.detect_resampling(imgs[0][:5], np.zeros(5, np.int64))
    assert not f2.any() and np.isnan(z2).all()
    with pytest.raises(ValueError):
        P.detect_resampling(imgs[0][:5], np.zeros(4, np.int64))


def test_band_limit_score_follows_the_resize_factor(rng):
    x = _noisy_model(rng, 8)
    s0 = P.band_limit_score(x)
    s9 = P.band_limit_score(np.stack([P.resize_roundtrip(v, 0.9, "lanczos") for v in x]))
    s5 = P.band_limit_score(np.stack([P.resize_roundtrip(v, 0.5, "lanczos") for v in x]))
    assert np.all(s9 > s0) and np.all(s5 > s0)
    assert P.band_limit_score(x[0]).shape == (1,)


# ------------------------------------------------------------------------------ processing never forms a cluster
def test_processing_never_forms_a_cluster_of_its_own(rng):
    # model a: content + white noise, its images half JPEG q 70 and half resized (0.7 and back, bicubic); model b:
    # untouched, with a fixed period-8 texture (a trace that JPEG and resizing keep).  k is estimated.
    n = 60
    a = _noisy_model(rng, n)
    yy, xx = np.mgrid[0:64, 0:64]
    b = ct_like(rng, n, 64).astype(np.float32) + 10 * (np.cos(2 * np.pi * xx / 8) + np.cos(2 * np.pi * yy / 8))[None]
    b = np.clip(np.rint(b + rng.normal(0, 2, b.shape)), 0, 255).astype(np.uint8)
    a = np.stack([P.jpeg_roundtrip(v, 70) if i % 2 else P.resize_roundtrip(v, 0.7, "bicubic") for i, v in enumerate(a)])
    tag = np.arange(n) % 2
    # planted: without the invariance, model a's processing histories form clusters of their own
    plain = A.attribute(a, None, backbones=(), k_max=5, stability_resamples=0, processing_invariant=False)
    assert plain.k >= 2 and ari(tag, plain.labels) > 0.9
    X = np.concatenate([a, b])
    ym = np.repeat([0, 1], n)
    r = A.attribute(X, None, backbones=(), k_max=5, stability_resamples=0)
    assert r.k == 2 and ari(ym, r.labels) >= 0.9
    assert len(set(r.labels[:n].tolist())) == 1  # the JPEG and the resized halves of model a stay together
    assert A.attribute(a, None, backbones=(), k_max=5, stability_resamples=0).k == 1
