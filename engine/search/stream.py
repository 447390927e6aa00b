"""k-NN entry points: :func:`knn_stream` (per query batch), :func:`knn` and :func:`knn_to_parquet`."""

from __future__ import annotations

import json
import os
from typing import Any, Iterator, Sequence

import numpy as np

from imprint.engine.errors import ImprintError

from . import gpu as G
from .block import _search_block, _sort_rows
from .common import (DEFAULT_MEMORY_BUDGET, KnnBatch, _as_matrix, _check_metric, _check_pos_int, _hash_codes,
                     _index_kind, _normalised, _require_faiss, _set_param, _get_param, _set_threads)
from .index import _prepare


def _validate_knn(base, queries, k, metric, exclude_self, base_hashes, query_hashes, batch_size,
                  nprobe, target_recall, index):
    metric = _check_metric(metric)
    k = _check_pos_int("k", k)
    batch_size = _check_pos_int("batch_size", batch_size)
    if nprobe is not None:
        nprobe = _check_pos_int("nprobe", nprobe)
    if not (0.0 < float(target_recall) <= 1.0):
        raise ImprintError(f"target_recall must be in (0, 1], got {target_recall!r}")
    b = _as_matrix("base", base, check_finite=isinstance(index, str))
    same = queries is base
    q = b if same else _as_matrix("queries", queries)
    if same and not isinstance(index, str):
        _as_matrix("queries", q)
    if q.shape[1] != b.shape[1]:
        raise ImprintError(f"dimension mismatch: base has d={b.shape[1]}, queries have d={q.shape[1]}")
    if exclude_self and q.shape[0] != b.shape[0]:
        raise ImprintError(f"exclude_self=True needs queries to be the base rows ({q.shape[0]} != {b.shape[0]})")
    codes = None
    if base_hashes is not None or query_hashes is not None:
        if base_hashes is None:
            raise ImprintError("query_hashes given without base_hashes")
        if query_hashes is None:
            if not exclude_self:
                raise ImprintError("query_hashes is required unless exclude_self=True")
            query_hashes = base_hashes
        codes = _hash_codes(base_hashes, query_hashes, b.shape[0], q.shape[0])
    return metric, k, batch_size, nprobe, b, q, same, codes


def knn_stream(base: Any, queries: Any, k: int, *, metric: str = "l2", index: Any = "auto",
               exclude_self: bool = False, base_hashes: Sequence | None = None,
               query_hashes: Sequence | None = None, use_gpu: Any = "auto", batch_size: int = 65536,
               nprobe: int | None = None, ef_search: int | None = None, random_state: int = 0,
               target_recall: float = 0.95, memory_budget: float = DEFAULT_MEMORY_BUDGET,
               exact_distances: bool = True, n_threads: int | None = None,
               info: dict | None = None, float16: bool = False) -> Iterator[KnnBatch]:
    """k nearest neighbours, yielded per query batch of ``batch_size`` rows.

    Inputs are validated and the index is built when this function is called;
    the returned iterator then searches one batch per step, so peak memory is
    the index plus O(batch_size * k) (plus the inputs themselves).

    Parameters
    ----------
    base : array-like float [M, d]
        Vectors searched in.
    queries : array-like float [N, d]
        Query vectors (may be ``base`` itself).
    k : int
        Neighbours per query (>= 1).  Rows are padded (idx -1, dist inf) when
        fewer than ``k`` neighbours exist.
    metric : {"l2", "cosine"}
        Squared L2, or ``1 - cos`` on normalised copies (inner-product index).
    index : "auto", str or faiss.Index
        ``"auto"`` (:func:`choose_index`), a FAISS factory string, or an index
        from :func:`build_index` built on this ``base`` with the same metric.
    exclude_self : bool
        Within-store search (``queries`` are the base rows): drop neighbour
        ``i`` from row ``i``, and every base row whose hash equals the query's
        hash when hashes are given.
    base_hashes, query_hashes : sequence of hashable or None
        Content hashes (``len M`` / ``len N``).  When given, base rows with the
        same hash as the query are excluded (exact duplicates).  With
        ``exclude_self=True`` ``query_hashes`` defaults to ``base_hashes``.
    use_gpu : "auto" or bool
    batch_size : int
        Queries per FAISS call / yielded batch.
    nprobe, ef_search : int or None
        Override the calibrated IVF ``nprobe`` / HNSW ``efSearch``.
    random_state : int
        Seeds the training and calibration samples.
    target_recall : float
        Recall@k the calibration aims for (measured on a query sample).
    memory_budget : float
        Bytes for index codes before "auto" compresses (SQ8/PQ).
    exact_distances : bool
        Recompute the returned distances exactly in float64 (default True).
    n_threads : int or None
        FAISS threads (default: ``$IMPRINT_THREADS``, ``$OMP_NUM_THREADS`` or CPU affinity).
    info : dict or None
        If given, filled with a JSON-able description of the index used.
    float16 : bool
        Store the indexed vectors in float16 (see :func:`build_index`).

    Yields
    ------
    KnnBatch
        ``(start, dist float32[b, k], idx int64[b, k])`` in query order.
    """
    _require_faiss()
    metric, k, batch_size, nprobe, b, q, same, codes = _validate_knn(
        base, queries, k, metric, exclude_self, base_hashes, query_hashes, batch_size, nprobe,
        target_recall, index)
    if ef_search is not None:
        ef_search = _check_pos_int("ef_search", ef_search)
    _set_threads(n_threads)
    m, n = b.shape[0], q.shape[0]
    prep = _prepare(b, metric, index, use_gpu, int(random_state), n, memory_budget, float(target_recall),
                    None if (exclude_self or same) else q, k, bool(float16))
    kind = prep.info.get("index_kind") or _index_kind(prep.index)
    prep.info["index_kind"] = kind
    if nprobe is not None and kind == "ivf":
        if prep.on_gpu and nprobe > G.GPU_MAX_NPROBE:  # GPU IVF rejects larger values
            prep.info["nprobe_capped_from"] = nprobe
            nprobe = G.GPU_MAX_NPROBE
        _set_param(prep.index, "nprobe", nprobe, prep.on_gpu)
        prep.info["nprobe"] = nprobe
    if ef_search is not None and kind == "hnsw":
        _set_param(prep.index, "efSearch", ef_search, prep.on_gpu)
        prep.info["efSearch"] = ef_search
    key = {"ivf": "nprobe", "hnsw": "efSearch"}.get(kind)
    if key is not None and key not in prep.info:
        val = _get_param(prep.index, kind)
        if val is not None:
            prep.info[key] = val
    if prep.on_gpu and min(m, k * prep.refine) > G.GPU_MAX_K:
        prep.info["k_over_gpu_limit"] = (f"k*refine={k * prep.refine} > {G.GPU_MAX_K}: searched on a CPU copy "
                                         "of the index")
    if info is not None:
        info.update(prep.info)
    # how many extra candidates the exclusions can eat
    if codes is not None:
        bc, qc = codes
        counts = np.bincount(bc, minlength=1) if bc.size else np.zeros(1, dtype=np.int64)
        dup_per_query = np.where(qc >= 0, counts[np.clip(qc, 0, None)], 0)
    else:
        bc = qc = dup_per_query = None

    def _gen() -> Iterator[KnnBatch]:
        for s in range(0, n, batch_size):
            e = min(n, s + batch_size)
            qb = q[s:e]
            if metric == "cosine":
                qb = _normalised(qb)
            extra = 1 if exclude_self else 0
            if dup_per_query is not None and e > s:
                extra = max(extra, int(dup_per_query[s:e].max()))
            kk = min(max(m, 1), k + extra)
            dist, idx = _search_block(prep, np.ascontiguousarray(qb), kk, exact_distances)
            excl = np.zeros(idx.shape, dtype=bool)
            if exclude_self:
                excl |= idx == np.arange(s, e, dtype=np.int64)[:, None]
            if bc is not None:
                excl |= (idx >= 0) & (bc[np.clip(idx, 0, None)] == qc[s:e, None])
            if excl.any():
                dist = np.where(excl, np.inf, dist)
                idx = np.where(excl, -1, idx)
                dist, idx = _sort_rows(dist, idx)
            if idx.shape[1] < k:
                pad = k - idx.shape[1]
                dist = np.concatenate([dist, np.full((e - s, pad), np.inf)], axis=1)
                idx = np.concatenate([idx, np.full((e - s, pad), -1, dtype=np.int64)], axis=1)
            yield KnnBatch(s, dist[:, :k].astype(np.float32), np.ascontiguousarray(idx[:, :k]))

    return _gen()


def knn(base: Any, queries: Any, k: int, *, metric: str = "l2", index: Any = "auto",
        exclude_self: bool = False, base_hashes: Sequence | None = None,
        query_hashes: Sequence | None = None, use_gpu: Any = "auto", batch_size: int = 65536,
        nprobe: int | None = None, random_state: int = 0, return_info: bool = False,
        **kwargs: Any):
    """k nearest neighbours of each query among ``base``.

    Parameters are those of :func:`knn_stream` (``ef_search``, ``target_recall``,
    ``memory_budget``, ``exact_distances``, ``n_threads`` pass through ``kwargs``).

    Returns
    -------
    dist : float32 [N, k]
        Squared L2 (``metric="l2"``) or ``1 - cos`` (``"cosine"``), ascending per
        row; ``inf`` for padding.
    idx : int64 [N, k]
        Row indices into ``base``; ``-1`` for padding.
    info : dict
        Only with ``return_info=True``: the index used (factory, nprobe, recall calibration).
    """
    info: dict = {}
    it = knn_stream(base, queries, k, metric=metric, index=index, exclude_self=exclude_self,
                    base_hashes=base_hashes, query_hashes=query_hashes, use_gpu=use_gpu,
                    batch_size=batch_size, nprobe=nprobe, random_state=random_state, info=info,
                    **kwargs)
    n = np.asarray(queries).shape[0]
    dist = np.empty((n, k), dtype=np.float32)
    idx = np.empty((n, k), dtype=np.int64)
    for batch in it:
        e = batch.start + batch.idx.shape[0]
        dist[batch.start : e] = batch.dist
        idx[batch.start : e] = batch.idx
    return (dist, idx, info) if return_info else (dist, idx)


# --------------------------------------------------------------------------- #
# Parquet output
# --------------------------------------------------------------------------- #
def _check_ids(name: str, ids: Any, n: int) -> np.ndarray | None:
    if ids is None:
        return None
    arr = np.asarray(ids)
    if arr.ndim != 1 or arr.shape[0] != n or arr.dtype.kind not in "iu":
        raise ImprintError(f"{name} must be a 1-D integer array of length {n}")
    return arr.astype(np.int64)


def knn_to_parquet(path: str | os.PathLike, base: Any, queries: Any, k: int, *,
                   query_ids: Any = None, base_ids: Any = None, keep_padding: bool = False,
                   row_group_size: int = 1 << 20, **knn_kwargs: Any) -> dict:
    """Stream the k-NN table of ``queries`` against ``base`` into a Parquet file.

    Columns: ``query_id int64, neighbor_id int64, rank int32, distance float32``;
    ``rank`` is 1 for the nearest neighbour.  Padding entries (fewer than ``k``
    neighbours) are left out unless ``keep_padding``.  The file is written to a
    temporary file in the same folder, fsynced and moved into place with
    ``os.replace`` (readers never see a partial file).  The schema metadata key
    ``b"imprint.knn"`` holds the JSON index description.

    Parameters
    ----------
    path : str or PathLike
        Output ``.parquet`` file.
    base, queries, k
        As in :func:`knn`.
    query_ids, base_ids : int array-like or None
        Ids written instead of the row numbers (length N / M).
    keep_padding : bool
        Also write the ``-1`` / ``inf`` padding rows.
    row_group_size : int
        Maximum rows per Parquet row group.
    **knn_kwargs
        Passed to :func:`knn_stream` (``metric``, ``index``, ``exclude_self``, ``batch_size``...).

    Returns
    -------
    dict
        ``{"path", "rows", "queries", "k", "index": info}``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    row_group_size = _check_pos_int("row_group_size", row_group_size)
    info: dict = {}
    n = np.asarray(queries).shape[0] if np.ndim(queries) == 2 else 0
    m = np.asarray(base).shape[0] if np.ndim(base) == 2 else 0
    qids = _check_ids("query_ids", query_ids, n)
    bids = _check_ids("base_ids", base_ids, m)
    stream = knn_stream(base, queries, k, info=info, **knn_kwargs)
    meta = {"k": int(k), **{kk: v for kk, v in info.items()}}
    schema = pa.schema([("query_id", pa.int64()), ("neighbor_id", pa.int64()), ("rank", pa.int32()),
                        ("distance", pa.float32())],
                       metadata={b"imprint.knn": json.dumps(meta, default=str).encode()})
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ImprintError(f"output folder does not exist: {folder}")
    from ..store import atomic_replace

    rows = 0
    with atomic_replace(path) as tmp, open(tmp, "wb") as fh:
        writer = pq.ParquetWriter(fh, schema)
        try:
            for batch in stream:
                b, kk = batch.idx.shape
                qcol = np.repeat(np.arange(batch.start, batch.start + b, dtype=np.int64), kk)
                ncol = batch.idx.reshape(-1)
                rcol = np.tile(np.arange(1, kk + 1, dtype=np.int32), b)
                dcol = batch.dist.reshape(-1)
                if not keep_padding:
                    keep = ncol >= 0
                    qcol, ncol, rcol, dcol = qcol[keep], ncol[keep], rcol[keep], dcol[keep]
                if qids is not None:
                    qcol = qids[qcol]
                if bids is not None:
                    ncol = np.where(ncol >= 0, bids[np.clip(ncol, 0, None)], -1)
                table = pa.table({"query_id": qcol, "neighbor_id": ncol, "rank": rcol,
                                  "distance": dcol}, schema=schema)
                writer.write_table(table, row_group_size=row_group_size)
                rows += table.num_rows
        finally:
            writer.close()
    return {"path": path, "rows": rows, "queries": n, "k": int(k), "index": info}


# --------------------------------------------------------------------------- #
# cost model
