"""Issue 15 (spd11): the registration shortlists searched for some pool images only.

The real-to-real pair null registers only its sampled images (``PAIR_NULL_MAX_IMAGES``), so its shortlists among
the other reals (:func:`calibrate._pair_reg_candidates` -> :func:`register.shortlists` with ``rows`` and
``control_only``) are searched for those images only, and only among the other reals (the "generated" half was
discarded).  The searched rows' lists must be those of a call over every row, bit for bit, and the null
must not change.
"""

import numpy as np

from conftest import ct_like
from imprint.engine.membership import calibrate
from imprint.engine.membership import register as reg
from imprint.engine.membership.calibrate import PAIR_REG_FEATURES, real_pair_null


def _set(n=48, size=64, seed=4):
    rng = np.random.default_rng(seed)
    x = ct_like(rng, n, size)
    # planted: image 7 is a flipped, shifted copy of image 3 (a candidate the shortlist must find for row 3)
    x[7] = np.roll(x[3][:, ::-1], (2, -3), (0, 1))
    return x


def test_shortlists_for_some_rows_equal_the_all_rows_lists():
    P = _set()
    R = len(P)
    rng = np.random.default_rng(0)
    pix = (np.arange(R)[:, None] + rng.integers(1, R, (R, 5))) % R
    rows = np.array([0, 3, 5, 11, 20, 21, 40, 47])
    kw = dict(k_reg=6, n_pix=3, k_spec=4, n_lp=2)
    full = reg.shortlists(P, P, pix, pix, **kw)
    sub = reg.shortlists(P, P, pix, pix, rows=rows, **kw)
    rest = np.setdiff1d(np.arange(R), rows)
    for i, (f, s) in enumerate(zip(full, sub)):
        assert s.shape == f.shape and s.dtype == f.dtype
        np.testing.assert_array_equal(s[rows], f[rows])
        assert (s[rest] == (-1 if i % 2 == 0 else 0)).all()      # candidates -1, flips 0
    # the control's lists alone (what the pair null uses): the same arrays, no generated-side columns
    for r in (None, rows):
        ctl = reg.shortlists(P, P, pix, pix, rows=r, control_only=True, **kw)
        ref = full if r is None else sub
        assert ctl[0].shape == ctl[1].shape == (R, 0)
        np.testing.assert_array_equal(ctl[2], ref[2])
        np.testing.assert_array_equal(ctl[3], ref[3])
    cr = sub[2]
    assert not (cr[rows] == rows[:, None]).any()                  # never the row itself in the control
    assert 7 in cr[3]                                             # the planted copy is shortlisted
    # a shared cache: the memoised result of the all-rows call is not returned for the subset, and vice versa
    cache, keys = {}, [f"k{i}" for i in range(R)]
    a = reg.shortlists(P, P, pix, pix, keys_gen=keys, keys_pool=keys, cache=cache, **kw)
    b = reg.shortlists(P, P, pix, pix, keys_gen=keys, keys_pool=keys, cache=cache, rows=rows, **kw)
    assert (b[0][rest] == -1).all() and (a[0][rest] >= 0).any()
    np.testing.assert_array_equal(b[2][rows], a[2][rows])


def test_pair_null_registered_values_unchanged_by_the_subset_shortlists(monkeypatch):
    """``max_images`` < R: the registered null channels equal those of the all-rows shortlists (QUERY_ONLY off,
    the path before this change), and the shortlists were searched for the sampled images only."""
    real = _set(n=40, seed=9)
    kw = dict(splits=(0.25, 0.75), repeats=1, random_state=3, max_images=12, k=6, register=True, base=False)
    seen = []
    orig = reg.shortlists
    monkeypatch.setattr(reg, "shortlists",
                        lambda *a, **k: seen.append(None if k.get("rows") is None else len(k["rows"])) or orig(*a, **k))
    new = real_pair_null(real, 60, **kw)
    assert seen == [12]
    monkeypatch.setattr(calibrate, "QUERY_ONLY", False)
    old = real_pair_null(real, 60, **kw)
    assert seen == [12, None]
    np.testing.assert_array_equal(new["_images"], old["_images"])
    for n in PAIR_REG_FEATURES:
        assert np.isfinite(new[n]).any()
        np.testing.assert_array_equal(new[n], old[n], err_msg=n)
