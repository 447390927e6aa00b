"""evidence._label_slices (issue 15, scale9): the slice of every label of the shape masks' in-plane labelling,
from the running maximum label per slice instead of a nonzero over the stack; equal to the per-pixel reference,
also when the labels are not in raster order (the fallback), with empty slices."""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from imprint.engine.membership.evidence import _label_slices


def _reference(lab, nl):
    first = np.zeros(nl + 1, np.int64)
    first[lab[lab > 0]] = np.nonzero(lab)[0]
    return first


def test_label_slices_equal_the_per_pixel_reference():
    rng = np.random.default_rng(0)
    fg = rng.random((9, 20, 20)) > 0.6
    fg[0] = fg[-1] = False
    fg[4] = False                                           # an empty slice in the middle
    st = np.zeros((3, 3, 3), bool)
    st[1] = ndi.generate_binary_structure(2, 1)
    lab, nl = ndi.label(fg, structure=st)
    assert nl > 20
    np.testing.assert_array_equal(_label_slices(lab, nl), _reference(lab, nl))
    # labels not in raster order (a permutation): the fallback gives the reference too
    perm = np.concatenate([[0], rng.permutation(nl) + 1]).astype(lab.dtype)
    lab2 = perm[lab]
    np.testing.assert_array_equal(_label_slices(lab2, nl), _reference(lab2, nl))
