"""The stand-in generator families of benchmarks/standin_families.py (issue 19): each is deterministic for a seed and
leaves the trace its docstring claims, measured on synthetic CT-like inputs (no dev data)."""

import os
import sys

import numpy as np
import pytest

from conftest import ct_like

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
import standin_families as SF  # noqa: E402


@pytest.fixture(scope="module")
def real():
    return ct_like(np.random.default_rng(5), 24, size=64)


@pytest.fixture(scope="module")
def made(real):
    return {f: SF.family_images(f, real, 16, 31) for f in SF.FAMILIES}


@pytest.mark.parametrize("family", sorted(SF.FAMILIES))
def test_family_is_deterministic_for_a_seed(real, made, family):
    again = SF.family_images(family, real, 16, 31)
    assert again.dtype == np.uint8 and again.shape == (16, 64, 64)
    assert np.array_equal(again, made[family])
    other = SF.family_images(family, real, 16, 32)
    assert not np.array_equal(other, made[family])
    # the output follows its input (the same anatomy), not noise: correlation with the input image it was made from
    idx = np.sort(np.random.default_rng(31).choice(len(real), 16, replace=False))
    r = [np.corrcoef(made[family][i].ravel(), real[j].ravel())[0, 1] for i, j in enumerate(idx)]
    assert np.median(r) > 0.8


def test_families_leave_the_traces_they_claim(real, made):
    peak = {f: SF.periodic_peak(v) for f, v in made.items()}
    hf = {f: SF.high_freq_fraction(v) for f, v in made.items()}
    peak_real, hf_real = SF.periodic_peak(real), SF.high_freq_fraction(real)
    # rdec's transposed convolution: a strong period-2 peak, far above the inputs' and every other family's
    assert peak["rdec"] > peak_real + 1.5
    assert peak["rdec"] > max(peak[f] for f in ("nnconv", "diff", "vae")) + 1.0
    # nearest-neighbour resize-convolution, the diffusion-like sampler and the VAE-like decoder: no strong period-2
    # peak (nnconv's is weak on 128 px CT, ~0 here), all within 0.75 log10 units of the inputs' (rdec: > 1.5 above)
    for f in ("nnconv", "diff", "vae"):
        assert abs(peak[f] - peak_real) < 0.75, f
    # nnconv's trace is a spectral deficit: far less energy above half Nyquist than its inputs
    assert hf["nnconv"] < 0.25 * hf_real
    # the VAE-like decoder is the blurriest; the others keep less high-frequency energy than their inputs
    assert hf["vae"] < 0.25 * hf_real and hf["vae"] < min(hf[f] for f in ("rdec", "nnconv", "diff"))
    assert hf["diff"] < hf_real and hf["nnconv"] < hf_real


def test_vae_intensity_curve_is_monotone_and_not_the_identity():
    vae = SF.BlurryVAE()
    u = np.linspace(0, 1, 257)
    c = vae.curve(u)
    assert np.all(np.diff(c) > 0) and c[0] == 0 and abs(c[-1] - 1) < 1e-12
    assert np.abs(c - u).max() > 0.03


def test_trace_measures_see_a_planted_period_two_pattern(real):
    """periodic_peak finds a planted +-3 grey-level checkerboard that the inputs lack; high_freq_fraction falls under a
    blur."""
    yy, xx = np.mgrid[0:64, 0:64]
    planted = np.clip(real.astype(int) + 3 * (-1) ** (yy + xx), 0, 255).astype(np.uint8)
    assert SF.periodic_peak(planted) > SF.periodic_peak(real) + 1.0
    from scipy import ndimage
    blurred = ndimage.gaussian_filter(real.astype(float), (0, 1.5, 1.5))
    assert SF.high_freq_fraction(blurred) < 0.5 * SF.high_freq_fraction(real)
