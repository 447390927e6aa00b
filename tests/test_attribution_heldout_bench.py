"""benchmarks/attribution_heldout.py (issue 19, branch attr15): every processing condition does what its name says
(tags, the codec and the filter really applied), and two weight seeds of one stand-in family are two models."""
import os
import sys

import numpy as np
import pytest

from conftest import ct_like

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
import attribution_heldout as H  # noqa: E402


@pytest.fixture(scope="module")
def imgs():
    return ct_like(np.random.default_rng(3), 30, size=64)


@pytest.mark.parametrize("cond", H.CONDITIONS)
def test_condition_tags_and_pixels(imgs, cond):
    out, tags = H.process(imgs, cond, 7)
    assert out.shape == imgs.shape and out.dtype == np.uint8 and len(tags) == len(imgs)
    again, tags2 = H.process(imgs, cond, 7)
    assert np.array_equal(out, again) and list(tags) == list(tags2)  # seeded
    touched = np.array([t != "none" for t in tags])
    assert np.array_equal(out[~touched], imgs[~touched])  # untouched images are byte-identical
    diff = np.abs(out.astype(int) - imgs).reshape(len(imgs), -1).max(axis=1)
    assert (diff[touched] > 0).all()  # every processed image changed
    if cond == "none":
        assert not touched.any()
    elif cond.startswith("release-"):
        assert {"none", "resize", "both"} <= {t.split(":")[0] for t in tags}
        assert ("webp" if cond == "release-webp" else "jpeg") in set(tags)
    elif cond == "webp":
        assert set(tags) == {"webp"}


def test_release_filters_differ(imgs):
    """The release mix with each Pillow filter: same draws, different filters -> different resized pixels."""
    res = {f: H.process(imgs, f"release-{f}", 7) for f in H.ALL_FILTERS}
    tags = res["box"][1]
    resized = np.array([t == "resize" for t in tags])
    assert resized.any()
    for f in H.ALL_FILTERS:
        assert list(res[f][1]) == list(tags)
    outs = [res[f][0][resized] for f in H.ALL_FILTERS]
    for i in range(len(outs)):
        for j in range(i + 1, len(outs)):
            assert not np.array_equal(outs[i], outs[j]), (H.ALL_FILTERS[i], H.ALL_FILTERS[j])


def test_webp_roundtrip_is_lossy_webp(imgs):
    a = imgs[0]
    b = H.webp_roundtrip(a, 60)
    assert b.shape == a.shape and np.any(b != a)


def test_two_weight_seeds_are_two_models(imgs):
    """A stand-in model is deterministic for (weight seed, draw seed); two weight seeds with the same input and the
    same noise stream give different images (the weights differ, not only the draws)."""
    w1, w2 = H.WEIGHT_SEEDS["rdec"]
    a = H.standin("rdec", w1, imgs, 6, 41)
    assert np.array_equal(a, H.standin("rdec", w1, imgs, 6, 41))
    m1, m2 = H.SF.FAMILIES["rdec"](seed=w1), H.SF.FAMILIES["rdec"](seed=w2)
    x1 = m1(imgs[0], np.random.default_rng(0))
    x2 = m2(imgs[0], np.random.default_rng(0))
    assert np.abs(x1.astype(int) - x2).mean() > 1.0


def test_dev_runs_flags():
    """attr17: ``--no-dev`` runs only the cells without dev, ``--no-nodev`` only those with it, default both;
    both flags together are refused before any data is read (the --dev path here does not exist)."""
    assert H.dev_runs() == [True, False]
    assert H.dev_runs(no_nodev=True) == [True]
    assert H.dev_runs(no_dev=True) == [False]
    with pytest.raises(ValueError):
        H.dev_runs(True, True)
    with pytest.raises(SystemExit):
        H.main(["--no-dev", "--no-nodev", "--dev", "/nonexistent/attr17"])
