"""Non-rigid (elastic) refinement of the registered anatomy NCC (issue 13, branch elas12; opt-in).

A generator trained with elastic deformation, the standard medical-image augmentation, emits copies whose anatomy is
displaced by a smooth random field; one rigid transform cannot register them, and at RMS 4 px per 128 px the rigid
registered low-pass NCC of the true pair is no closer than a look-alike's (RESULTS.md, elas11).  With
:data:`NCC_FLOW` on, :func:`.anatomy.registered_ncc` - through which every registered low-pass pair goes: generated
candidates, the control, the reference rows and the real-to-real pair null - returns the better of the rigid NCC and
:func:`flow_registered_ncc`: the NCC after a smooth, bounded non-rigid registration of the rigidly registered grid
(:func:`imprint.kernels.deform.flow_warp`, coarse-to-fine iterative Lucas-Kanade on the 32 x 32 grids).

Constants, a priori (not tuned on any zoo seed or dev data); the grid samples every ``side / 32`` px, so one grid
pixel is 4 px at 128 px:

* :data:`FLOW_RADIUS` 2 grid px: a box window of radius 2 applied twice is a Gaussian window of SD 2 grid px = 8 px
  at 128 px, the smoothing sigma at the stiff end of typical elastic augmentation (batchgenerators / nnU-Net draw
  sigma 9-13 px at their patch sizes; the zoo's ``t_elastic`` 8-16 px per 128 px): the field cannot bend on a
  smaller scale than the augmentation's own.
* :data:`FLOW_MAX_DISP` 2 grid px = 8 px at 128 px: the displacement length of a strong elastic field (RMS 4 px, twice
  the U-Net paper's ~2.2 px per 128 px; a Gaussian field of RMS length 4 px has its 95th percentile at ~6.9 px).
* :data:`FLOW_LEVELS` 2 (16 x 16, then 32 x 32) and :data:`FLOW_ITERS` 3 steps per level: cost (~0.2 ms per pair).
"""

from __future__ import annotations

import numpy as np

#: Whether :func:`.anatomy.registered_ncc` is the better of the rigid NCC and :func:`flow_registered_ncc`.  Every
#: registered pair goes through it, so the calibration holds.  A value != False re-keys the checkpoints
#: (:func:`.anatomy.checkpoint_tag`).  **Opt-in (off)**: on zoo seed 2 (full size, same session as main) it raised
#: elastic 2 + geom 0.5 (AUC 0.947 -> 0.965, TPR@1% 0.733 -> 0.883, ``fpr:0.01`` recall 0.433 -> 0.683) and elastic
#: RMS 4 px a little (AUC 0.870 -> 0.894, TPR@1% 0.367 -> 0.400, ``fpr:0.01`` recall 0.083 -> 0.067), but lowered resynth
#: sigma 3 (TPR@1% 0.933 -> 0.683, ``fpr:0.01`` recall 0.517 -> 0.200) and resynth 3 + geom 1 (AUC 0.909 -> 0.855): inside
#: the one ``anat_ratio`` the control and the null gain ~3x in ``1 - NCC`` while a re-synthesised copy, already
#: registered, gains ~2x, so its ratio falls.  The flow belongs in a channel of its own (RESULTS.md, elas12).  It
#: adds ~0.24 ms CPU per registered pair, ~5 CPU-s (~7%) to the judged speed case.
NCC_FLOW = False
#: See the module docstring (a priori).
FLOW_RADIUS = 2
FLOW_MAX_DISP = 2.0
FLOW_LEVELS = 2
FLOW_ITERS = 3


#: Whether the flow NCC is a ratio channel of its own, ``anat_flow_ratio`` (branch elas13; opt-in, off): the same
#: registered low-pass pairs as ``anat_ratio`` (:func:`.anatomy.registered_anatomy`, every pool row's polished
#: candidates), and the flow NCC of each row's :data:`FLOW_TOP` best rigidly registered ones, on the generated side,
#: on the control side and in the real-to-real pair null's splits alike, so the channel is calibrated like the others:
#: ``anat_flow_ratio = -log((1 - nccF_G + 1e-3) / (1 - nccF_R + 1e-3))`` with ``nccF`` the better of everything
#: ``anat_ratio`` takes and the flow NCCs.  ``anat_ratio`` stays the rigid one, so a re-synthesised copy (already
#: registered, whose ratio the flow lowered inside one channel: RESULTS.md, elas12) keeps its channel.  A value !=
#: False re-keys the checkpoints and adds the column; False gives elas12's outputs bit for bit.  **Opt-in (off)**: on
#: zoo seed 2 (full size; main's columns are elas12's, the same code) it raised elastic 2 + geom 0.5 (AUC 0.947 ->
#: 0.970, TPR@1% 0.733 -> 0.900, ``fpr:0.01`` recall 0.433 -> 0.583), kept resynth sigma 3 (TPR@1% 0.933 -> 0.917,
#: ``fpr:0.01`` recall 0.517 both; ``NCC_FLOW`` lost it), moved elastic RMS 4 px little (AUC 0.870 -> 0.879, TPR@1%
#: 0.367 -> 0.383) and flagged no non-member of the non-memorising row; resynth 3 + geom 1 ``fdr:0.1`` recall 0.833 ->
#: 0.767.  Seed 3 alike (elastic 2 + geom ``fpr:0.01`` recall 0.533 -> 0.700, elastic 4 TPR@1% 0.200 -> 0.267, resynth
#: sigma 3 one member fewer).  Dev gen_e leave-one-out about unchanged.  ~3.1 CPU-s (~5%) on the judged speed case (RESULTS.md, elas13).
FLOW_CHANNEL = False
#: Polished candidates per row (and per part of a pair-null split) that get the flow, the best by rigid registered
#: NCC (ties: the coarse order).  2: cost (~0.24 ms per pair; all 5 polished candidates added ~7% to the judged speed
#: case, RESULTS.md elas12), chosen a priori, not on zoo or dev data.  5 (all) was measured afterwards on zoo seed 2
#: (elastic 4 AUC 0.879 -> 0.893, TPR@1% 0.383 both; resynth sigma 3 TPR@1% 0.917 -> 0.850): not taken.
FLOW_TOP = 2


def channel_tag() -> str:
    """The checkpoint fragment of the flow channel (``"flowchT2" + flow_tag()``)."""
    return f"flowchT{FLOW_TOP}" + flow_tag() + pick_tag()


def flow_tag() -> str:
    """The checkpoint fragment of the flow's settings (``"flowR2d2L2i3"``)."""
    return f"flowR{FLOW_RADIUS}d{FLOW_MAX_DISP:g}L{FLOW_LEVELS}i{FLOW_ITERS}"


def flow_registered_ncc(reg: np.ndarray, low_b: np.ndarray, m: np.ndarray) -> np.ndarray:
    """NCC of the rigidly registered grids ``reg`` [K, h, w] with ``low_b`` after a smooth non-rigid registration of
    ``reg`` onto ``low_b`` over the mask ``m`` (the overlap minus any frame;
    :func:`imprint.kernels.deform.flow_warp`), over the pixels still valid after the warp; float64 [K], -1 where
    undefined (a constant side), so that ``max`` with the rigid NCC keeps the rigid value there."""
    from imprint.kernels.deform import flow_warp

    from .anatomy import _masked_ncc

    if len(reg) == 0:
        return np.zeros(0)
    warped, valid, _ = flow_warp(reg, low_b, m, levels=FLOW_LEVELS, iters=FLOW_ITERS, radius=FLOW_RADIUS,
                                 max_disp=FLOW_MAX_DISP)
    v = _masked_ncc(warped, low_b, valid)
    return np.where(valid.reshape(len(valid), -1).sum(1) >= 2, v, -1.0)


#: How the flow channel (:data:`FLOW_CHANNEL`) chooses which candidates get the flow (issue 13, branch elas14; opt-in,
#: off).  False: the row's :data:`FLOW_TOP` best polished candidates by the **rigid** registered NCC (elas13).  True:
#: the row's :data:`FLOW_PICK_K` coarse-best candidates (the polished ones and the next ones, by the rigid coarse
#: score) each get a cheap non-rigid score (:func:`cheap_flow_ncc`: the flow NCC at half resolution from the coarse
#: transform, no polish), and the :data:`FLOW_TOP` best by that score are polished (if they were not) and get the
#: full flow.  The rigid scores rank a look-alike patient above an elastically deformed copy (elsrc13: at RMS 4 px
#: the copy is a candidate for ~0.9 of members, among the 5 polished for ~0.7 and among the 2 flowed for ~0.4).  The
#: same rule on every pool (generated side, control, reference rows) and in the real-to-real pair null's splits, so
#: the channel stays calibrated.  A value != False re-keys the checkpoints (:func:`channel_tag`).  **Opt-in (off)**:
#: on the zoo's clean draw (seeds 2 and 3, boot 200) the copy reaches the flow for 0.70 of elastic RMS 4 px members
#: (from 0.40-0.42), the channel alone separates them better (AUC 0.66-0.67 -> 0.74-0.80) and every elastic row's AUC
#: rises (elastic 4 +0.01 to +0.06, elastic 2 + geom +0.01 to +0.03, TPR@1% +17 members at seed 2), but elastic 4's
#: ``fpr:0.01`` recall does not move (the combined null's maximum), and resynth sigma 3 at seed 3 loses 6 members at
#: ``fpr:0.01`` (RESULTS.md, elas14).  Costs ~0.07 ms CPU per candidate scored (the full flow ~0.15 ms), about 10
#: per pool row.
FLOW_PICK = False
#: Coarse-best candidates per row (per part of a pair-null split) scored by :func:`cheap_flow_ncc` (a priori: about
#: twice :data:`.anatomy.N_POLISH`, two thirds of the ~15 candidates a row has on the zoo's elastic rows).
FLOW_PICK_K = 10


def pick_tag() -> str:
    """The checkpoint fragment of :data:`FLOW_PICK` (``""`` when off, else ``"pickK10"``)."""
    return f"pickK{FLOW_PICK_K}" if FLOW_PICK else ""


def _half(x: np.ndarray) -> np.ndarray:
    """2 x 2 area mean of [K, h, w] (odd edges dropped)."""
    k, h, w = x.shape
    h2, w2 = h // 2, w // 2
    return x[:, :2 * h2, :2 * w2].reshape(k, h2, 2, w2, 2).mean((2, 4))


def cheap_flow_ncc(reg: np.ndarray, low_b: np.ndarray, m: np.ndarray) -> np.ndarray:
    """The cheap non-rigid score of :data:`FLOW_PICK`: :func:`flow_registered_ncc` at half resolution (both grids 2 x 2
    area-averaged, the mask where all four pixels are inside), one level of :data:`FLOW_ITERS` steps with the radius
    and largest displacement halved (the first level of the full flow: the same field in the same pixels of the
    image); float64 [K], -1 where undefined."""
    from imprint.kernels.deform import flow_warp

    from .anatomy import _masked_ncc

    if len(reg) == 0:
        return np.zeros(0)
    a = _half(np.asarray(reg, np.float64))
    b = _half(np.asarray(low_b, np.float64))
    mm = _half((np.asarray(m) != 0).astype(np.float64)) > 0.999
    warped, valid, _ = flow_warp(a, b, mm, levels=1, iters=FLOW_ITERS, radius=max(1, FLOW_RADIUS // 2),
                                 max_disp=FLOW_MAX_DISP / 2)
    v = _masked_ncc(warped, b, valid)
    return np.where(valid.reshape(len(valid), -1).sum(1) >= 2, v, -1.0)
