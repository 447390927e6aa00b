"""Training-data membership audit: which real images did a generator see?

Given a generator's images ``G`` and real images ``R`` this module scores every real image
(higher = more likely in the generator's training set) and decides used / unused.

Pipeline
--------
1. **Pool.**  The candidates ``R`` and the known non-members ``reference`` form one real pool.
   Every piece of evidence is computed identically for every pool image against the *same*
   ``G``, so the reference images give the null distribution of each statistic.
2. **Shortlist.**  Per-image z-scored pixels (so a global brightness / contrast change does not
   hide a copy) are searched exactly with :func:`engine.search.knn`: the ``k_gen`` nearest
   generated images and the ``k_real`` nearest other real images of every pool image, and the
   nearest pool image of every generated image.
3. **Evidence** (:func:`compute_evidence`; every value is *scale free* and oriented so that
   higher means "more member-like"):

   ``pixel_nn_ratio``      ``-log(d_G1 / d_R1)``: nearest-generated over nearest-real squared
                           distance of z-scored pixels (calibration by the real population:
                           a typical image is close to ``G`` *and* to other reals).
   ``pixel_knn_ratio``     ``-log(d_G1 / mean(d_R1..5))``, a smoother real-density estimate.
   ``mse_ratio``           same ratio with raw-intensity MSE (``kernels.mse_pairs``) re-ranked on
                           the shortlists (an unnormalised exact copy).
   ``ssim_ratio``          ``-log((1-SSIM_G) / (1-SSIM_R))``, best SSIM (``kernels.ssim_pairs``,
                           on z-scored images) over the shortlists.
   ``tile_ratio``          4x4 tiles: per tile the nearest shortlisted generated tile over the
                           nearest shortlisted real tile; mean of the 3 most copied tiles, so a
                           partial copy counts.
   ``share``               ``log1p`` of the number of generated images closer than ``x``'s
                           nearest real (density ratio within a radius).
   ``hub``                 ``log1p`` of the number of generated images whose nearest real is
                           ``x`` (a memorising generator emits many near-copies of a training
                           image).
   ``distinct``            over the generated images whose nearest real is ``x``: the largest
                           ``log(d_2nd-nearest-real / d_nearest-real)``.
   ``embed_ratio``         ``-log`` ratio of cosine distances in a pretrained backbone embedding
                           (``engine.backbone.embed``), when the backbone is available.
   ``lbp_ratio``           same with uniform-LBP histograms (``kernels.lbp_histograms``).
   ``shape_ratio``         anatomy shape: ``-log`` ratio of nearest-generated over nearest-real
                           distance between multi-level "air inside the body" masks
                           (:func:`anatomy_masks`: Otsu body, dark regions at 1/4..1 of the Otsu
                           level, 64x64).  A memorising generator that blurs or re-invents texture
                           still reproduces the patient's body outline and lung / airway shapes.

   Raw distances (``pixel_nn_dist``, ``real_nn_dist``, ``mse_nn``, ``ssim_nn``) are reported too.
4. **Calibration.**  Each evidence value is turned into a robust z-score against the null
   (reference images; without a reference, the real-to-real null of step 6):
   ``(e - median_null) / (1.4826 MAD_null)``.
5. **Combination.**  ``score = sum_j w_j z_j / ||w||``, re-standardised on the null.  ``w``
   starts from a fixed prior (``DEFAULT_WEIGHTS``).  With labelled dev sets the same evidence is
   computed for each dev generator (its reference = the non-members not among its candidates) and
   ``w`` is fitted by a non-negative logistic regression pulled towards the prior
   (:func:`fit_weights`), so that dev sets without signal leave the prior unchanged.
   With a reference null of >= 50 images the weighted sum and each evidence that may decide alone get a
   p-value against their own null values (conformal, generalised-Pareto upper tail, leave-one-out for the
   null's own values: :func:`calibrate.calibrated_max`), and the score is the probit of their weighted min-p
   (half the level on the weighted sum, the rest shared by the single channels: ``combine="tail-split"``), so a
   channel whose null has a heavy tail cannot lift the threshold above copies seen by another channel, and
   noise in ~10 single channels does not outrank copies that the weighted sum carries.
6. **Null.**  The reference images, minus near-duplicates of candidates (z-pixel correlation > 0.98, also
   mirrored: :func:`near_duplicates`), checked for exchangeability with the candidates on nuisance statistics
   (:func:`exchangeability_check`).  With fewer than 20 of them (or none) the null is built from pairs of
   different patients in the real folder (:func:`real_pair_null`), whatever the share of members; the registered
   evidence gets such a null too (each real image registered onto its shortlisted other reals), and the same
   tail-calibrated rule combines the channels against it (:func:`calibrate.pair_null_scores`), then the empirical
   null (:func:`empirical_null`): ``fpr:ALPHA`` then bounds the expected share of non-members flagged.
7. **Decision.**  ``fpr:ALPHA`` flags a candidate only when its score exceeds an exact order statistic of the
   null scores (:func:`null_threshold`: P(a non-member is flagged) <= ALPHA at 95% confidence; a null smaller
   than :func:`min_null_size` falls back to its maximum and states the rate that holds).  ``fdr:Q`` applies
   Benjamini-Hochberg to conformal p-values (:func:`fdr_decision`).  ``f1`` estimates the share of used images
   from the null-calibrated p-values (a one-standard-error lower bound on Storey's), the posterior member
   probabilities from the isotonic candidate-versus-null density ratio, and picks the cut that maximises the
   expected F1; without significant evidence it flags only what ``fpr:0.01`` would (before branch f17 it flagged
   every image: F1 = 2p/(1+p) for an unknown share ``p``, but an accusation of every image when none was used).  ``info["guarantee"]`` states which null and guarantee
   applied.
"""

from __future__ import annotations

from .common import DEFAULT_WEIGHTS, COMBINED_FEATURES, MAX_FEATURES, DevSet, MembershipResult  # noqa: F401
from .evidence import zscore_images, anatomy_masks, compute_evidence  # noqa: F401
from .calibrate import (robust_calibrate, fit_weights, near_duplicates, nuisance_statistics,  # noqa: F401
                        exchangeability_check, real_pair_null, empirical_null)
from .decide import (null_threshold, min_null_size, estimate_used_share, f1_decision, fdr_decision,  # noqa: F401
                     conformal_pvalues, parse_decision)
from .audit import audit_membership  # noqa: F401

__all__ = [
    "DevSet",
    "MembershipResult",
    "DEFAULT_WEIGHTS",
    "COMBINED_FEATURES",
    "audit_membership",
    "compute_evidence",
    "anatomy_masks",
    "zscore_images",
    "robust_calibrate",
    "fit_weights",
    "null_threshold",
    "estimate_used_share",
    "f1_decision",
    "fdr_decision",
    "conformal_pvalues",
    "min_null_size",
    "near_duplicates",
    "nuisance_statistics",
    "exchangeability_check",
    "real_pair_null",
    "empirical_null",
]

from . import common, evidence, calibrate, decide, audit  # noqa: F401,E402
