"""Sharded search bookkeeping: the global top-k merge of per-shard neighbour lists, and the handle of a base
split over workers. Pure numpy (no Ray), so the merge is tested against brute force without a cluster."""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from ..errors import ImprintError

__all__ = ["ShardedIndex", "merge_topk"]


def merge_topk(dists: Sequence[np.ndarray], idxs: Sequence[np.ndarray], k: int, *,
               exclude_rows: np.ndarray | None = None, select: Sequence[np.ndarray] | None = None,
               n_select: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard neighbour lists into the global top-``k``.

    Parameters
    ----------
    dists : sequence of float64 ndarray [n, k_s]
        Per-shard distances (``inf`` for padding).
    idxs : sequence of int64 ndarray [n, k_s]
        Per-shard *global* base indices (``-1`` for padding).
    k : int
        Neighbours kept per query.
    exclude_rows : int64 ndarray [n] or None
        Global base row to drop from each query's list (within-store search, ``exclude_self``).
    select : sequence of ndarray [n, k_s] or None
        Per-shard *candidate-selection* scores (FAISS' own float32 distances). When given, only the
        ``n_select`` best candidates by (score, global index) are kept before the exact ordering -- what the
        local search does with one global index (FAISS top-kk, then exact re-ranking), so the merged result
        equals it even when FAISS' float32 ranking and the exact one disagree at the k-th neighbour.
    n_select : int or None
        Candidates kept by ``select`` (default ``k``; ``k + 1`` for ``exclude_self``).

    Returns
    -------
    dist : float64 ndarray [n, k]
    idx : int64 ndarray [n, k]
        Sorted by (distance, global index), padded with (``inf``, ``-1``): the order of
        :func:`engine.search.knn`.
    """
    if len(dists) != len(idxs) or not dists:
        raise ImprintError("merge_topk: need the same, non-zero number of distance and index blocks")
    d = np.concatenate([np.asarray(x, np.float64) for x in dists], axis=1)
    i = np.concatenate([np.asarray(x, np.int64) for x in idxs], axis=1)
    if d.shape != i.shape:
        raise ImprintError(f"merge_topk: distance shape {d.shape} != index shape {i.shape}")
    if select is not None:
        sc = np.concatenate([np.asarray(x, np.float64) for x in select], axis=1)
        if sc.shape != i.shape:
            raise ImprintError(f"merge_topk: select shape {sc.shape} != index shape {i.shape}")
        sc = np.where(i < 0, np.inf, sc)
        ikey = np.where(i < 0, np.iinfo(np.int64).max, i)
        keep = np.lexsort((ikey, sc), axis=-1)[:, : int(n_select or k)]
        d = np.take_along_axis(d, keep, axis=1)
        i = np.take_along_axis(i, keep, axis=1)
    if exclude_rows is not None:
        ex = (i == np.asarray(exclude_rows, np.int64)[:, None]) & (i >= 0)
        if ex.any():
            d = np.where(ex, np.inf, d)
            i = np.where(ex, -1, i)
    d = np.where(i < 0, np.inf, d)
    ikey = np.where(i < 0, np.iinfo(np.int64).max, i)
    order = np.lexsort((ikey, d), axis=-1)[:, :k]
    d = np.take_along_axis(d, order, axis=1)
    i = np.take_along_axis(i, order, axis=1)
    if i.shape[1] < k:
        n, pad = i.shape[0], k - i.shape[1]
        d = np.concatenate([d, np.full((n, pad), np.inf)], axis=1)
        i = np.concatenate([i, np.full((n, pad), -1, np.int64)], axis=1)
    return d, i


@dataclasses.dataclass
class ShardedIndex:
    """Base vectors split over the cluster (returned by :meth:`RayExecutor.build_index`).

    Attributes
    ----------
    n, d : int
        Base rows and dimension.
    metric : str
    factory : str
        Resolved FAISS factory string (``"Flat"`` = exact).
    offsets : list of int
        First global row of each shard.
    shard_refs, index_refs : list of ray.ObjectRef
        Shard vectors and (approximate factories only) their serialised trained indexes.
    info : dict
    """

    n: int
    d: int
    metric: str
    factory: str
    offsets: list
    sizes: list
    shard_refs: list
    index_refs: list
    info: dict
    key: int = 0
    ntotal: int = 0
