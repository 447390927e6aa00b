"""Recall measurement and the calibration of IVF ``nprobe`` / HNSW ``efSearch`` for a target recall@k."""

from __future__ import annotations

import warnings

import numpy as np

from imprint.engine.errors import ImprintError

from . import gpu as G
from .block import _search_block
from .common import CALIBRATION_MARGIN, _faiss_metric, _index_kind, _n_lists, _Prepared, _set_param, faiss


def recall_at_k(approx_idx: np.ndarray, exact_idx: np.ndarray) -> float:
    """Mean fraction of the exact neighbours (ignoring -1 padding) that ``approx_idx`` found.

    Parameters
    ----------
    approx_idx, exact_idx : int64 [N, k]

    Returns
    -------
    float
        ``sum_i |A_i ∩ E_i| / sum_i |E_i|`` (1.0 when nothing is expected).
    """
    a = np.asarray(approx_idx)
    e = np.asarray(exact_idx)
    if a.shape[0] != e.shape[0]:
        raise ImprintError("recall_at_k: row counts differ")
    hit = ((a[:, :, None] == e[:, None, :]) & (e[:, None, :] >= 0)).any(axis=1)
    denom = int((e >= 0).sum())
    return 1.0 if denom == 0 else float(hit.sum()) / denom


def _calibrate(prep: _Prepared, cal_q: np.ndarray, self_rows: np.ndarray | None,
               k: int, target: float, gt_base: np.ndarray) -> None:
    """Pick the smallest nprobe/efSearch reaching ``target`` recall@k on ``cal_q``."""
    info = prep.info
    kind = info.get("index_kind") or _index_kind(prep.index)
    info["index_kind"] = kind
    if kind not in ("ivf", "hnsw") or cal_q.shape[0] == 0:
        return
    m = prep.base.shape[0]
    extra = 1 if self_rows is not None else 0
    k_eff = max(1, min(k, m - extra))
    kk = min(k_eff + extra, m)
    _, gt = faiss.knn(cal_q, gt_base, kk, metric=_faiss_metric(prep.metric))
    gt = gt.astype(np.int64)
    if self_rows is not None:
        gt = _drop_self(gt, self_rows)[:, :k_eff]
    if kind == "ivf":
        nlist = int(info.get("nlist") or _n_lists(prep.index))
        cands = G.nprobe_candidates(nlist, prep.on_gpu)
        name = "nprobe"
    else:
        cands = [e for e in (16, 32, 64, 128, 256, 512, 1024, 2048) if e >= kk] or [max(kk, 16)]
        name = "efSearch"
    goal = min(1.0, target + CALIBRATION_MARGIN)
    chosen, rec, curve = cands[-1], float("nan"), []
    for p in cands:
        _set_param(prep.index, name, p, prep.on_gpu)
        _, ai = _search_block(prep, cal_q, kk)
        if self_rows is not None:
            ai = _drop_self(ai, self_rows)
        r = recall_at_k(ai[:, :k_eff], gt)
        curve.append((int(p), round(r, 4)))
        chosen, rec = p, r
        if r >= goal:
            break
    _set_param(prep.index, name, chosen, prep.on_gpu)
    info[name] = int(chosen)
    info["calibration"] = {"k": int(k_eff), "queries": int(cal_q.shape[0]), "recall": float(rec),
                           "target": float(target), "curve": curve}
    if rec < target:
        warnings.warn(f"index {info.get('factory')!r}: calibrated recall@{k_eff} {rec:.3f} "
                      f"< target {target:.2f} at {name}={chosen}", RuntimeWarning, stacklevel=3)


def _drop_self(idx: np.ndarray, self_rows: np.ndarray) -> np.ndarray:
    """Move the self match (idx == self_rows[i]) of each row to the end as -1."""
    mask = idx == self_rows[:, None]
    key = np.where(mask, 1, 0)
    order = np.argsort(key, axis=1, kind="stable")
    out = np.take_along_axis(np.where(mask, -1, idx), order, axis=1)
    return out
