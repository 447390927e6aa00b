"""Searching one block of prepared queries: FAISS candidates, exact float64 distances, (distance, index) order."""

from __future__ import annotations

import numpy as np

from imprint.engine.errors import ImprintError

from . import gpu as G
from .common import _Prepared


# searching
# --------------------------------------------------------------------------- #
def _exact_distances(base: np.ndarray, q: np.ndarray, idx: np.ndarray, metric: str) -> np.ndarray:
    """Exact float64 distances between q[i] and base[idx[i, j]] (inf where idx < 0)."""
    n, kk = idx.shape
    d = base.shape[1]
    if metric in ("l2", "cosine"):  # compiled: no float64 copies of the gathered rows (engine.search.exact)
        from .exact import cosine_pairs, l2_pairs

        out = (l2_pairs if metric == "l2" else cosine_pairs)(base, q, idx)
        if not np.isfinite(out[idx >= 0]).all():
            raise ImprintError("base contains NaN or infinite values")
        return out
    out = np.empty((n, kk), dtype=np.float64)
    step = max(1, (1 << 21) // max(1, kk * d))
    safe = np.where(idx < 0, 0, idx)
    for s in range(0, n, step):
        b = base[safe[s : s + step]].astype(np.float64)  # [b, kk, d]
        qq = q[s : s + step].astype(np.float64)[:, None, :]
        if metric == "l2":
            diff = b - qq
            out[s : s + step] = np.einsum("ijk,ijk->ij", diff, diff)
        else:  # q is unit-norm; normalise the gathered base rows (zero rows stay zero)
            nb = np.sqrt(np.einsum("ijk,ijk->ij", b, b))
            nb[nb == 0] = 1.0
            cos = np.einsum("ijk,ijk->ij", b, qq) / nb
            out[s : s + step] = np.clip(1.0 - cos, 0.0, 2.0)
    if not np.isfinite(out).all():
        raise ImprintError("base contains NaN or infinite values")
    out[idx < 0] = np.inf
    return out


def _sort_rows(dist: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by (distance, index) with padding (-1, inf) last."""
    ikey = np.where(idx < 0, np.iinfo(np.int64).max, idx)
    order = np.lexsort((ikey, dist), axis=-1)
    return np.take_along_axis(dist, order, axis=1), np.take_along_axis(idx, order, axis=1)


def _search_block(prep: _Prepared, q: np.ndarray, kk: int, exact_distances: bool = True
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Search prepared (normalised) queries; returns sorted (float64 dist, int64 idx) [n, kk]."""
    m = prep.base.shape[0]
    n = q.shape[0]
    if m == 0 or n == 0:
        return np.full((n, kk), np.inf), np.full((n, kk), -1, dtype=np.int64)
    k_search = min(m, kk * prep.refine)
    d_raw, i_raw = G.search_k_limited(prep, q, k_search)
    i_raw = i_raw.astype(np.int64, copy=False)
    if exact_distances or prep.refine > 1:
        dist = _exact_distances(prep.base, q, i_raw, prep.metric)
    else:
        dist = d_raw.astype(np.float64)
        dist = np.maximum(dist, 0.0) if prep.metric == "l2" else np.clip(1.0 - dist, 0.0, 2.0)
        dist[i_raw < 0] = np.inf
    dist, idx = _sort_rows(dist, i_raw)
    if k_search < kk:
        dist = np.concatenate([dist, np.full((n, kk - k_search), np.inf)], axis=1)
        idx = np.concatenate([idx, np.full((n, kk - k_search), -1, dtype=np.int64)], axis=1)
    return dist[:, :kk], idx[:, :kk]
