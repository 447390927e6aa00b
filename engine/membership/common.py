"""Membership: shared constants, result types and input checks."""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from imprint.engine.errors import ImprintError


#: Evidence columns that enter the combined score, with their prior weights.
DEFAULT_WEIGHTS: dict[str, float] = {
    "pixel_nn_ratio": 1.0,
    "pixel_knn_ratio": 1.0,
    "mse_ratio": 0.5,
    "ssim_ratio": 0.5,
    "tile_ratio": 0.5,
    "share": 0.25,
    "hub": 0.25,
    "distinct": 0.25,
    "embed_ratio": 0.5,
    "lbp_ratio": 0.0,
    "shape_ratio": 2.0,
    "reg_ratio": 0.1,
    "reg_lo_ratio": 0.1,
    "reg_lp_ratio": 0.1,
    # anatomy (Gaussian low-pass NCC, in place or mirrored; .anatomy): copied anatomy under re-synthesised
    # texture.  Prior 0.1 and always in the max rule, like the registered ratios (issue 13, branch resyn5)
    "anat_ratio": 0.1,
    # the anatomy NCC after a smooth non-rigid registration, as a channel of its own (elastic copies; branch elas13;
    # only with the opt-in deform.FLOW_CHANNEL): as anat_ratio, prior 0.1 and always in the max rule.  It may decide
    # alone for the reason the other ratios may (a priori): a continuous copy-strength ratio with its own null rows
    # computed the same way; its multiplicity (one more tail-split channel beside ~9-10, each single channel's a-priori
    # share ~0.05 -> ~0.045) is in the null the decisions calibrate on, so it costs power, not the stated FPR
    "anat_flow_ratio": 0.1,
    # partial copies by tiles (branch part13; only with the opt-in ptiles.PTILE_CHANNEL): a per-tile candidate source
    # and a band-passed tile NCC over the best half of the tiles; as the anatomy ratios, prior 0.1 and always in the
    # max rule (a continuous copy-strength ratio whose null rows are computed the same way)
    "ptile_ratio": 0.1,
}
COMBINED_FEATURES = tuple(DEFAULT_WEIGHTS)
#: Continuous copy-strength evidence that may also decide alone (max rule in the combination);
#: count-based evidence (share, hub, distinct) has too coarse a null to be used alone.
MAX_FEATURES = ("pixel_nn_ratio", "pixel_knn_ratio", "mse_ratio", "ssim_ratio", "tile_ratio", "embed_ratio",
                "reg_ratio", "reg_lo_ratio", "reg_lp_ratio", "anat_ratio", "anat_flow_ratio", "ptile_ratio")
#: Evidence that always keeps its place in the max rule, whatever weight the dev fit gives it: the
#: registered (transform-invariant) ratios find flipped / shifted / rotated copies that no other evidence
#: sees, while dev generators that copy in place give them little weight in the sum (prior 0.1: on dev
#: gen_e the in-place pixel and shape evidence carry the weighted sum; see benchmarks/RESULTS.md).
ALWAYS_MAX_FEATURES = ("reg_ratio", "reg_lo_ratio", "reg_lp_ratio", "anat_ratio", "anat_flow_ratio", "ptile_ratio")
_ALWAYS_MAX_FLOOR = 1e-3

_EPS = 1e-6
_MIN_NULL = 20          # fewer reference images than this: calibrate on the candidates instead
_Z_CAP = 50.0           # calibrated evidence is clipped to [-_Z_CAP, _Z_CAP]


# ----------------------------------------------------------------------------------------- data types
@dataclass
class DevSet:
    """A labelled development generator.

    Attributes
    ----------
    name : str
    generated : uint8 [M, H, W]  images produced by the generator
    used : uint8 [U, H, W]       real images in its training set
    unused : uint8 [V, H, W]     real images never used by any generator
    """

    name: str
    generated: np.ndarray
    used: np.ndarray
    unused: np.ndarray


@dataclass
class MembershipResult:
    """Result of :func:`audit_membership`.

    Attributes
    ----------
    score : float64 [R]          combined, null-calibrated score (higher = more likely used)
    used : int8 [R]              1 = flagged as used
    threshold : float            flag when ``score > threshold``
    evidence : dict[str, float64 [R]]  every evidence column (see module docstring)
    nearest : int64 [R, k]       indices into ``generated`` of the best matches, best first
    info : dict                  JSON-able details (weights, null size, estimates, timings)
    summary : str                human-readable conclusion
    null_scores : float64 [K] or None  calibrated combined scores of the null images (the reference, or the
                                 candidates themselves without one): the distribution ``score`` is judged against
    calibrated : dict[str, float64 [R]] or None  each combined evidence as a robust z-score against the null
                                 (the values the weights in ``info["weights"]`` combine)
    """

    score: np.ndarray
    used: np.ndarray
    threshold: float
    evidence: dict
    nearest: np.ndarray
    info: dict = field(default_factory=dict)
    summary: str = ""
    null_scores: np.ndarray | None = None
    calibrated: dict | None = None


# ----------------------------------------------------------------------------------------- helpers
def _check_stack(a, name: str, min_n: int = 1) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != np.uint8:
        raise ImprintError(f"{name} must be uint8 [N,H,W], got dtype {a.dtype}")
    if a.ndim != 3:
        raise ImprintError(f"{name} must have shape [N,H,W], got {a.shape}")
    if a.shape[0] < min_n:
        raise ImprintError(f"{name} needs at least {min_n} image(s), got {a.shape[0]}")
    if a.shape[1] < 16 or a.shape[2] < 16:
        raise ImprintError(f"{name}: images must be at least 16x16, got {a.shape[1]}x{a.shape[2]}")
    return np.ascontiguousarray(a)


def _hashes(a: np.ndarray) -> list[str]:
    from imprint.engine.pixelstore import release_pages

    out: list[str] = []
    for s in range(0, len(a), 4096):   # issue 15, scale8: a memory-mapped set's pages are not left resident
        out += [hashlib.sha1(x.tobytes()).hexdigest() for x in a[s:s + 4096]]
        release_pages(a)
    return out
