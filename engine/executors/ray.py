"""The Ray executor: imprint's heavy stages on a Ray cluster (optional extra ``distributed``:
``pip install 'imprint[distributed]'``).

The default install never imports Ray; this module imports it lazily and raises a one-line
:class:`~engine.errors.ImprintError` when it is missing.

What runs where
---------------
- **Embedding** (:meth:`RayExecutor.embed`, :meth:`RayExecutor.embed_files`): a pool of Ray actors, one
  per CPU slot (``cpus_per_worker`` cores each) or one per GPU, each holding one onnxruntime session of the
  backbone (loaded from the same ONNX file, checked by sha256). ``embed_files`` sends *relative paths*: the
  workers read and decode the files themselves (shared filesystem), so decoding scales with the workers.
  Results come back to the driver in submission order; the driver alone appends them to the
  :class:`~engine.store.EmbeddingStore` (the manifest stays the single commit point, so the content-hash
  keyed resume works as in the local executor). A worker process that dies is restarted
  (``max_restarts``) and its shard is re-run (``max_task_retries``); a shard's rows are committed once,
  when its result reaches the driver, so no row is lost or duplicated.
  Chunks are multiples of the backbone's batch size, so every ONNX run sees the same batches as locally.
- **Search** (:meth:`RayExecutor.knn`, :meth:`RayExecutor.build_index`): the base vectors are split in
  contiguous shards, one per worker; every query block is answered by all shards (actor calls running
  :func:`engine.search.knn` on their shard) and merged on the driver into the global top-k by exact float64
  distance, then global index (:func:`engine.executors.merge.merge_topk`). For exact indexes (``Flat``, and
  ``"auto"`` when it resolves to ``Flat``) the merge first keeps the global top candidates by FAISS' own
  float32 scores (then index), exactly as the local search does before its exact re-ranking, so the result
  equals the local executor bit for bit; the only possible difference is an exact float32 tie at the k-th
  candidate, where FAISS' heap order is arbitrary and the merge takes the lower index. Approximate
  factories (IVF/HNSW/PQ) are trained per shard, so their results differ from a single global index.
  Options the sharded search does not implement (``base_hashes``/``query_hashes``, ``ef_search``,
  ``exact_distances=False``, a FAISS index object) are answered by the local search on the driver.
- **Pair re-ranking** (:meth:`RayExecutor.ssim_pairs`, :meth:`RayExecutor.mse_pairs`): chunks of pairs on
  the workers running ``kernels.ssim_pairs`` / ``kernels.mse_pairs`` (per-pair values, so identical).
- **Attribution features** (:meth:`RayExecutor.extract_features`): ``engine.features.extract`` on chunks of
  images aligned to its internal batch (identical values); clustering stays on the driver.

Stages run here only when they are given the executor (``executor=RayExecutor(...)``; the CLI's
``--executor ray``); nothing is swapped at module level, so other code in the process is unaffected.

Why not Ray Data / FAISS ``IndexShards``
----------------------------------------
The worker pool is a :class:`ray.util.ActorPool` of long-lived actors that cache backbone sessions and
shard indexes across calls; ``ray.data.Dataset.map_batches`` with an actor pool would restart that state
per dataset and add Ray Data's streaming executor (and its object-store spilling) for arrays that fit in
memory, without making the code smaller. FAISS' ``IndexShards`` / ``ResultHeap`` merge by FAISS' float32
distances, while the local :func:`engine.search.knn` re-ranks its candidates by exact float64 distance (then
index); :func:`~engine.executors.merge.merge_topk` reproduces that order, which is what keeps Ray results
identical to local ones. Checked on 4,000 x 256 float32 vectors around 1000 +- 100 (3 shards, k=10, 500 queries
near base rows): ``IndexShards`` differed from the local search in 11 of 500 query rows, ``merge_topk`` in none.

Clustering at very large N (not needed at this scale)
-----------------------------------------------------
k-means/consensus run on the driver. For N beyond a few million, fit the clustering on a seeded uniform
sample (e.g. 100k rows, FAISS k-means on the driver) and then *assign* every row to its nearest centroid
with :meth:`RayExecutor.knn` (base = centroids, queries = all rows sharded over the workers); the
assignment is embarrassingly parallel and exact, only the fit sees the sample.

Security
--------
Ray moves arrays and small dicts between the processes of *your* cluster with its own serialisation
(pickle-based). Run it only on a trusted network; imprint never unpickles files. A locally started Ray
instance (no ``--address``) listens on 127.0.0.1 only.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import ImprintError
from .base import Executor
from .merge import ShardedIndex, merge_topk

__all__ = ["RayExecutor", "DEFAULT_OBJECT_STORE"]

#: object store size of a Ray instance started by imprint itself (bytes; $IMPRINT_RAY_OBJECT_STORE_MB)
DEFAULT_OBJECT_STORE = 256 * 1024**2
_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray binds and advertises 127.0.0.1 only


# ---------------------------------------------------------------------------------------------- ray import
def _ray(local_start: bool = False):
    if local_start:
        # Must be in the environment before Ray starts its daemons (they inherit it); the module constant is
        # what the driver reads. Only for an instance imprint starts itself on this machine.
        os.environ.setdefault(_LOOPBACK_ENV, "0")
    try:
        import ray
    except ImportError:
        raise ImprintError("--executor ray needs Ray: pip install 'imprint[distributed]'") from None
    if local_start and os.environ.get(_LOOPBACK_ENV) == "0":
        try:
            from ray._private import ray_constants

            ray_constants.ENABLE_RAY_CLUSTER = False
        except Exception:  # pragma: no cover - Ray internals moved
            pass
    return ray



def _unwrap_ray_error(exc: BaseException) -> BaseException:
    """The user-facing cause of a Ray task error (ImprintError/ValueError raised in a worker)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, (ImprintError, ValueError)):
        return cause
    return exc


# ---------------------------------------------------------------------------------------------- worker side
def _spec_fields(spec) -> dict:
    """A BackboneSpec as plain fields (shipped to workers instead of a session)."""
    d = dataclasses.asdict(spec)
    for key in ("input_size", "mean", "std"):
        if d.get(key) is not None:
            d[key] = list(d[key])
    return d


def _spec_from_fields(fields: dict):
    from imprint.models.registry import BackboneSpec

    d = dict(fields)
    for key in ("input_size", "mean", "std"):
        if d.get(key) is not None:
            d[key] = tuple(d[key])
    names = {f.name for f in dataclasses.fields(BackboneSpec)}
    return BackboneSpec(**{k: v for k, v in d.items() if k in names})


def _policy_fields(policy) -> dict:
    return dataclasses.asdict(policy)


def _policy_from_fields(fields: dict):
    from ..ingest import IngestPolicy

    d = dict(fields)
    d["size"] = tuple(d["size"])
    if d.get("window") is not None:
        d["window"] = tuple(d["window"])
    return IngestPolicy(**d)


def _file_sha256(path: str) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class _Worker:
    """One Ray worker process (wrapped with ``ray.remote`` at run time): embedding, shard search, pair kernels
    and feature extraction. Backbone sessions and shard indexes are cached in the process."""

    def __init__(self, threads: int | None, crash_once: str | None = None):
        self.threads = threads
        self.crash_once = crash_once
        self.shards: dict = {}  # key -> (base float32, index or factory); at most _SHARD_CACHE kept

    def _maybe_crash(self) -> None:
        # Fault-injection hook for tests: the first task that claims the flag file kills its process.
        if self.crash_once:
            try:
                os.unlink(self.crash_once)
            except FileNotFoundError:
                return
            os._exit(17)

    def pid(self) -> int:
        return os.getpid()

    def _backbone(self, spec_fields: dict):
        from ..backbone import load_backbone

        spec = _spec_from_fields(spec_fields)
        if spec.onnx_path is None or not os.path.exists(spec.onnx_path):
            raise ImprintError(f"worker on {os.uname().nodename}: ONNX file {spec.onnx_path} not found "
                               "(put the built models on the shared filesystem)")
        key = (spec.onnx_path, spec.sha256)
        checked = getattr(self, "_checked", set())
        if spec.sha256 and key not in checked:
            if _file_sha256(spec.onnx_path) != spec.sha256:
                raise ImprintError(f"worker on {os.uname().nodename}: {spec.onnx_path} differs from the "
                                   f"driver's {spec.name} (sha256 mismatch)")
            checked.add(key)
            self._checked = checked
        return load_backbone(spec, threads=self.threads)

    def embed_array(self, spec_fields: dict, images: np.ndarray, batch_size: int | None) -> np.ndarray:
        from ..backbone import embed

        self._maybe_crash()
        return embed(images, self._backbone(spec_fields), batch_size=batch_size)

    def embed_paths(self, spec_fields: dict, folder: str, rel_paths: list, policy_fields: dict,
                    batch_size: int | None):
        from ..backbone import embed
        from ..ingest import decode_file

        self._maybe_crash()
        bb = self._backbone(spec_fields)
        policy = _policy_from_fields(policy_fields)
        h, w = policy.size
        buf = np.empty((len(rel_paths), h, w), np.uint8)
        paths, hashes, skips = [], [], []
        for rel in rel_paths:
            try:
                arr, digest = decode_file(os.path.join(folder, rel), policy)
            except ValueError as exc:
                skips.append((rel, str(exc)))
                continue
            buf[len(paths)] = arr
            paths.append(rel)
            hashes.append(digest)
        vec = embed(buf[: len(paths)], bb, batch_size=batch_size)
        return vec, paths, hashes, skips

    def _shard(self, key, refs: list):
        """(base, index) of a shard: cached, else fetched from the object store (e.g. after a restart)."""
        hit = self.shards.pop(key, None)
        if hit is None:
            import ray

            shard_ref, index_ref, factory = refs
            base = np.ascontiguousarray(ray.get(shard_ref), np.float32)
            if index_ref is not None:
                import faiss

                index = faiss.deserialize_index(np.asarray(ray.get(index_ref)))
            else:
                index = factory
            hit = (base, index)
        self.shards[key] = hit
        while len(self.shards) > _SHARD_CACHE:
            self.shards.pop(next(iter(self.shards)))
        return hit

    def drop(self, key) -> None:
        self.shards.pop(key, None)

    def search(self, key, refs: list, offset: int, q: np.ndarray, kk: int, metric: str, use_gpu: Any,
               random_state: int, nprobe: int | None):
        """This shard's top-``kk`` of every query: (float64 exact distances, global int64 indices)."""
        from ..search import knn

        base, index = self._shard(key, refs)
        kk = int(min(kk, max(1, base.shape[0])))
        # FAISS' own (float32) order first: the local search keeps FAISS' top-kk and then re-ranks them exactly,
        # so the driver needs both to pick the same candidates (see merge_topk's ``select``)
        dF, idx = knn(base, q, kk, metric=metric, index=index, use_gpu=use_gpu, n_threads=self.threads,
                      random_state=random_state, nprobe=nprobe, batch_size=max(1, q.shape[0]),
                      exact_distances=False)
        d64 = _exact64(base, q, idx, metric)
        gidx = np.where(idx >= 0, idx + int(offset), -1).astype(np.int64)
        return d64, gidx, dF

    def build(self, shard: np.ndarray, metric: str, factory: str, random_state: int, k: int,
              n_queries: int | None):
        return _build_shard_index(shard, metric, factory, random_state, k, self.threads, n_queries)

    def pairs(self, what: str, A: np.ndarray, B: np.ndarray, pairs: np.ndarray, data_range: float):
        return _pairs_chunk(what, A, B, pairs, data_range)

    def extract(self, images: np.ndarray, groups: tuple, batch: int):
        return _extract_chunk(images, groups, batch)


_SHARD_CACHE = 2


def _exact64(base: np.ndarray, q: np.ndarray, idx: np.ndarray, metric: str) -> np.ndarray:
    """Exact float64 distances of the returned neighbours, computed exactly as engine.search does."""
    from .. import search as S

    exact = getattr(S, "_exact_distances", None)
    norm = getattr(S, "_normalised", None)
    if exact is None or norm is None:  # pragma: no cover - engine.search internals changed
        q64 = q.astype(np.float64)
        b = base[np.where(idx < 0, 0, idx)].astype(np.float64)
        if metric == "l2":
            out = ((b - q64[:, None]) ** 2).sum(-1)
        else:
            qn = q64 / np.maximum(np.linalg.norm(q64, axis=1, keepdims=True), 1e-30)
            nb = np.linalg.norm(b, axis=-1)
            nb[nb == 0] = 1.0
            out = np.clip(1.0 - (b * qn[:, None]).sum(-1) / nb, 0.0, 2.0)
        out[idx < 0] = np.inf
        return out
    qq = norm(q) if metric == "cosine" else q
    return exact(base, np.ascontiguousarray(qq, np.float32), idx, metric)


def _build_shard_index(shard: np.ndarray, metric: str, factory: str, random_state: int, k: int,
                       threads: int | None, n_queries: int | None):
    """Train and fill one shard's approximate index; returned serialised (FAISS bytes, not pickle)."""
    import faiss

    from ..search import build_index

    index, info = build_index(shard, metric=metric, index=factory, use_gpu=False, random_state=random_state,
                              k=k, n_threads=threads, n_queries=n_queries, return_info=True)
    return faiss.serialize_index(index), info


def _pairs_chunk(what: str, A: np.ndarray, B: np.ndarray, pairs: np.ndarray, data_range: float):
    import imprint.kernels as kernels

    fn = getattr(kernels, what)
    if what == "ssim_pairs":
        return np.asarray(fn(A, B, pairs, data_range=data_range), np.float32)
    return np.asarray(fn(A, B, pairs), np.float32)


def _extract_chunk(images: np.ndarray, groups: tuple, batch: int):
    from .. import features

    return features.extract(images, groups, batch=batch)




# ---------------------------------------------------------------------------------------------- executor
def worker_cpus(resources: dict, gpus_per_worker: float, cpus_per_worker: int) -> int:
    """CPU cores reserved for (and used as threads by) each worker actor.

    A CPU worker gets ``cpus_per_worker``. A GPU worker also decodes, preprocesses and re-ranks on the host, so it
    gets its share of the node's cores: ``max(cpus_per_worker, CPU // GPU-workers)`` (one core per GPU actor would
    starve the GPU).
    """
    if not gpus_per_worker:
        return int(cpus_per_worker)
    n_gpu_workers = max(1, int(resources.get("GPU", 0) / gpus_per_worker))
    return max(int(cpus_per_worker), int(resources.get("CPU", 0)) // n_gpu_workers)


class RayExecutor(Executor):
    """Runs imprint's heavy stages on a Ray cluster.

    One pool of long-lived worker actors (one per CPU slot of ``cpus_per_worker`` cores, or one per GPU)
    does the embedding, the shard searches, the pair kernels and the feature extraction, so worker
    processes (and their onnxruntime sessions, Numba caches and shard indexes) are started once per job.

    Parameters
    ----------
    address : str or None
        Ray cluster (``"auto"``, ``"HOST:6379"``, ``"ray://HOST:10001"``). ``None``: ``$RAY_ADDRESS``
        when set, else a Ray instance started on this machine (loopback only, ``object_store_memory``).
        When the process is already connected (``ray.is_initialized()``), that connection is used.
    num_workers : int or None
        Worker actors = search shards (default: cluster CPUs // ``cpus_per_worker``, or the GPU count);
        capped by the slots the cluster has.
    cpus_per_worker : int
        CPU cores per worker (onnxruntime, FAISS and Numba threads).
    gpus_per_worker : float or None
        GPUs per worker; ``None``: 1 when the cluster has GPUs, else 0.
    object_store_memory : int or None
        Bytes for a locally started instance (default ``$IMPRINT_RAY_OBJECT_STORE_MB`` or 256 MiB).
    max_restarts, max_task_retries : int
        Actor restarts / call re-runs after a worker process dies.
    pairs_chunk : int
        Pairs per re-ranking call.
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, num_workers: int | None = None, cpus_per_worker: int = 1,
                 gpus_per_worker: float | None = None, object_store_memory: int | None = None,
                 max_restarts: int = 3, max_task_retries: int = 3, pairs_chunk: int = 8192,
                 _crash_once: str | None = None):
        if num_workers is not None and (isinstance(num_workers, bool) or not isinstance(num_workers, int)
                                        or num_workers < 1):
            raise ImprintError(f"num_workers must be a positive integer (got {num_workers!r})")
        if isinstance(cpus_per_worker, bool) or not isinstance(cpus_per_worker, int) or cpus_per_worker < 1:
            raise ImprintError(f"cpus_per_worker must be a positive integer (got {cpus_per_worker!r})")
        if pairs_chunk < 1:
            raise ImprintError("pairs_chunk must be at least 1")
        super().__init__()
        self.address = address
        self._num_workers = num_workers
        self.cpus_per_worker = int(cpus_per_worker)
        self.gpus_per_worker = gpus_per_worker
        env_mb = os.environ.get("IMPRINT_RAY_OBJECT_STORE_MB")
        self.object_store_memory = int(object_store_memory or (int(env_mb) << 20 if env_mb else DEFAULT_OBJECT_STORE))
        self.max_restarts = int(max_restarts)
        self.max_task_retries = int(max_task_retries)
        self.pairs_chunk = int(pairs_chunk)
        self._crash_once = _crash_once
        self._ray = None
        self._owns = False
        self._actors: list = []
        self._seq = 0
        self.stats = {}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "RayExecutor":
        """Connect to (or start) Ray. Idempotent; the worker actors start on first use."""
        if self._ray is not None:
            return self
        address = self.address or os.environ.get("RAY_ADDRESS") or None
        ray = _ray(local_start=address is None)
        if ray.is_initialized():
            self._ray, self._owns = ray, False
            return self
        kw: dict = {"log_to_driver": False, "configure_logging": False}
        try:
            if address is None:
                ray.init(num_cpus=_cpus_here(), object_store_memory=self.object_store_memory,
                         include_dashboard=False, **kw)
            else:
                ray.init(address=address, **kw)
        except Exception as exc:  # connection refused, bad address, ...
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ImprintError(f"cannot start/connect Ray ({address or 'local'}): {msg[:200]}") from None
        self._ray, self._owns = ray, True
        return self

    def release_workers(self) -> None:
        """Kill the worker actors (they hold their CPU/GPU slots until then); they restart on next use."""
        for a in self._actors:
            try:
                self._ray.kill(a)
            except Exception:
                pass
        self._actors = []

    def close(self) -> None:
        """Kill the worker actors; shut Ray down when this executor started/connected it."""
        ray = self._ray
        if ray is None:
            return
        self.release_workers()
        if self._owns:
            ray.shutdown()
        self._ray = None

    def __repr__(self) -> str:
        return f"RayExecutor(address={self.address!r}, num_workers={self._num_workers!r})"

    @property
    def ray(self):
        if self._ray is None:
            self.start()
        return self._ray

    def _gpus(self, res: dict) -> float:
        if self.gpus_per_worker is not None:
            return float(self.gpus_per_worker)
        return 1.0 if res.get("GPU", 0) >= 1 else 0.0

    def _slots(self, res: dict | None = None) -> int:
        """Worker slots (CPU // cpus_per_worker, or GPU // gpus_per_worker) in ``res`` (default: the cluster)."""
        ray = self.ray
        gpus = self._gpus(dict(ray.cluster_resources()))
        res = dict(ray.cluster_resources()) if res is None else res
        if gpus:
            return int(res.get("GPU", 0) / gpus)
        return int(res.get("CPU", 0)) // self.cpus_per_worker

    def _free_slots(self, want: int, wait_s: float = 10.0) -> int:
        """Slots free now; waits up to ``wait_s`` for ``want`` of them (resources of killed actors come back
        asynchronously)."""
        t_end = time.monotonic() + wait_s
        while True:
            free = self._slots(dict(self.ray.available_resources()))
            if free >= want or time.monotonic() > t_end:
                return free
            time.sleep(0.2)

    @property
    def num_workers(self) -> int:
        """Worker actors (= search shards) this executor uses."""
        if self._actors:
            return len(self._actors)
        slots = self._slots()
        if slots < 1:
            raise ImprintError("the Ray cluster has no worker slot "
                               f"({self.cpus_per_worker} CPU{'s' if self.cpus_per_worker > 1 else ''} each)")
        want = slots if self._num_workers is None else min(self._num_workers, slots)
        # on a busy cluster take the free slots (at least one; its start waits for resources)
        return max(1, min(want, self._free_slots(want)))

    def workers(self) -> list:
        """The worker actor handles (started on first call)."""
        if not self._actors:
            ray = self.ray
            res = dict(ray.cluster_resources())
            gpus = self._gpus(res)
            cpus = worker_cpus(res, gpus, self.cpus_per_worker)
            cls = ray.remote(_Worker).options(num_cpus=cpus, num_gpus=gpus,
                                               max_restarts=self.max_restarts,
                                               max_task_retries=self.max_task_retries)
            n = self.num_workers
            actors = [cls.remote(cpus, self._crash_once) for _ in range(n)]
            timeout = float(os.environ.get("IMPRINT_RAY_START_TIMEOUT", "300"))
            try:
                ray.get([a.pid.remote() for a in actors], timeout=timeout)
            except Exception as exc:
                for a in actors:
                    ray.kill(a)
                if type(exc).__name__ == "GetTimeoutError":
                    raise ImprintError(f"Ray could not start {n} worker(s) within {timeout:.0f}s "
                                       "($IMPRINT_RAY_START_TIMEOUT)") from None
                self._raise(exc)
            self._actors = actors
        return self._actors

    def _map(self, call: Callable, items: Sequence) -> Iterator:
        """``call(actor, item)`` over the workers, load-balanced; results in item order."""
        from ray.util import ActorPool

        try:
            yield from ActorPool(self.workers()).map(call, items)
        except GeneratorExit:
            raise
        except Exception as exc:
            self._raise(exc)

    def _get(self, refs):
        try:
            return self.ray.get(refs)
        except Exception as exc:
            self._raise(exc)

    def _raise(self, exc: BaseException):
        if isinstance(exc, ImprintError):
            raise exc
        cause = _unwrap_ray_error(exc)
        if cause is not exc:
            raise cause from None
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ImprintError(f"Ray job failed: {type(exc).__name__}: {msg[:300]}") from None

    def _tick(self, name: str, t0: float) -> None:
        self.stats[name] = self.stats.get(name, 0.0) + time.perf_counter() - t0

    # ------------------------------------------------------------------ embedding
    @staticmethod
    def _resolve_spec(backbone, resolve_kwargs: dict):
        from ..backbone import Backbone

        if isinstance(backbone, Backbone):
            return backbone.spec, backbone.default_batch_size
        from imprint.models.registry import resolve

        from ..backbone import auto_batch_size

        spec = resolve(backbone, **resolve_kwargs)
        if spec.onnx_path is None:
            raise ImprintError(f"backbone {spec.name} is not built; run `imprint models build`")
        return spec, auto_batch_size(spec, on_gpu=False)

    def embed(self, images: np.ndarray, backbone="pixel", *, batch_size: int | None = None,
              progress: Callable[[int], Any] | None = None, providers=None, threads=None,
              **resolve_kwargs) -> np.ndarray:
        """:func:`engine.backbone.embed` on the workers.

        Parameters
        ----------
        images : uint8 ndarray [N, H, W]
        backbone : str, path, BackboneSpec or Backbone
        batch_size : int or None
            Images per session run (default: the backbone's automatic batch).
        progress : callable(int) or None
            Called with the cumulative number of embedded images.
        providers, threads
            Accepted for the signature of :func:`engine.backbone.embed` and ignored: each worker's session
            uses its ``cpus_per_worker`` threads and the worker's providers.

        Returns
        -------
        float32 ndarray [N, d]
            Equal to the local :func:`engine.backbone.embed` (chunks are multiples of the batch).
        """
        from ..backbone import _check_images

        spec, bs = self._resolve_spec(backbone, resolve_kwargs)
        images = _check_images(images, spec)
        bs = int(batch_size or bs)
        n = images.shape[0]
        out = np.empty((n, spec.dim), np.float32)
        if n == 0:
            return out
        fields = _spec_fields(spec)
        # chunks: multiples of the batch, about two per worker (load balance), at most 64 batches
        per = max(1, min(64, math.ceil(n / (2 * len(self.workers()) * bs)))) * bs
        starts = list(range(0, n, per))
        t0 = time.perf_counter()
        done = 0
        for s, vec in zip(starts, self._map(lambda a, s: a.embed_array.remote(fields, images[s:s + per], bs),
                                            starts)):
            out[s:s + vec.shape[0]] = vec
            done += vec.shape[0]
            if progress is not None:
                progress(done)
        self._tick("embed_s", t0)
        return out

    def embed_files(self, folder: str, rel_paths: Sequence[str], backbone, *, policy=None,
                    shard_size: int = 4096, batch_size: int | None = None,
                    on_skip: Callable | None = None) -> Iterator[tuple[np.ndarray, list, list]]:
        """Decode and embed files on the workers; yield ``(vectors, paths, hashes)`` per shard, in order.

        ``folder`` must be readable at the same path on every worker (shared filesystem). Unreadable files
        are reported through ``on_skip(Skip)`` and left out. Shards hold ``shard_size`` *paths* (fewer rows
        when some are skipped); the caller commits each yielded shard (e.g. ``EmbeddingStore.append``), so a
        shard whose worker died is re-run by Ray and still committed exactly once.
        """
        from ..ingest import IngestPolicy, Skip

        policy = policy or IngestPolicy()
        if shard_size < 1:
            raise ImprintError("shard_size must be at least 1")
        spec, bs = self._resolve_spec(backbone, {})
        bs = int(batch_size or bs)
        folder = os.path.abspath(folder)
        chunks = [list(rel_paths[s:s + shard_size]) for s in range(0, len(rel_paths), shard_size)]
        fields = _spec_fields(spec)
        pf = _policy_fields(policy)
        for vec, paths, hashes, skips in self._map(
                lambda a, c: a.embed_paths.remote(fields, folder, c, pf, bs), chunks):
            for p, reason in skips:
                if on_skip is not None:
                    on_skip(Skip(p, reason))
            if paths:
                yield vec, paths, hashes

    # ------------------------------------------------------------------ search
    def build_index(self, vectors: Any, *, metric: str = "l2", index: str = "auto", random_state: int = 0,
                    n_queries: int | None = None, k: int = 10, return_info: bool = False, **_ignored):
        """Split ``vectors`` over the workers (one FAISS index per shard); returns a :class:`ShardedIndex`.

        ``"Flat"`` (and ``"auto"`` when it resolves to ``Flat`` for the whole base) is exact; other factory
        strings are trained per shard (``"auto"``: :func:`engine.search.choose_index` of the shard size).
        """
        from .. import search as S

        if metric not in ("l2", "cosine"):
            raise ImprintError(f"metric must be 'l2' or 'cosine', got {metric!r}")
        if not isinstance(index, str) or not index.strip():
            raise ImprintError("index must be 'auto' or a FAISS factory string")
        base = _as_f32("vectors", vectors)
        m, d = base.shape
        factory = S.choose_index(m, d, n_queries) if index == "auto" else index
        exact = factory.replace(" ", "").lower() == "flat"
        n_sh = max(1, min(len(self.workers()), m))
        bounds = np.linspace(0, m, n_sh + 1).round().astype(np.int64)
        offsets = bounds[:-1].tolist()
        sizes = np.diff(bounds).tolist()
        t0 = time.perf_counter()
        shard_refs = [self.ray.put(np.ascontiguousarray(base[a:b])) for a, b in zip(bounds[:-1], bounds[1:])]
        index_refs: list = [None] * n_sh
        info = {"factory": factory, "n_base": m, "d": d, "metric": metric, "shards": n_sh, "executor": "ray",
                "exact": exact}
        if not exact:
            acts = self.workers()
            refs = [acts[j % len(acts)].build.remote(shard_refs[j],
                                                     metric, index if index != "auto" else
                                                     S.choose_index(sizes[j], d, n_queries),
                                                     int(random_state), int(k), n_queries)
                    for j in range(n_sh)]
            built = self._get(refs)
            index_refs = [self.ray.put(b[0]) for b in built]
            info["shard_info"] = [b[1] for b in built]
        self._seq += 1
        h = ShardedIndex(m, d, metric, factory, offsets, sizes, shard_refs, index_refs, info, self._seq, m)
        self._tick("index_s", t0)
        return (h, info) if return_info else h

    def knn(self, base: Any, queries: Any, k: int, *, metric: str = "l2", index: Any = "auto",
            exclude_self: bool = False, batch_size: int = 65536, random_state: int = 0, use_gpu: Any = "auto",
            nprobe: int | None = None, return_info: bool = False, **kwargs):
        """:func:`engine.search.knn` with the base sharded over the workers and an exact global merge.

        Parameters are those of :func:`engine.search.knn` (``index`` may also be a :class:`ShardedIndex`
        from :meth:`build_index` on this ``base``). Returns ``(dist float32[N,k], idx int64[N,k])`` (plus
        an info dict with ``return_info``), sorted by (distance, index) like the local search.
        """
        if (kwargs.get("base_hashes") is not None or kwargs.get("query_hashes") is not None
                or kwargs.get("ef_search") is not None or kwargs.get("exact_distances", True) is False
                or not isinstance(index, (str, ShardedIndex))):
            # what the sharded search does not implement is answered by the local search on the driver
            from ..search import knn as local_knn

            return local_knn(base, queries, k, metric=metric, index=index, exclude_self=exclude_self,
                             batch_size=batch_size, random_state=random_state, use_gpu=use_gpu, nprobe=nprobe,
                             return_info=return_info, **kwargs)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ImprintError(f"k must be an integer >= 1, got {k!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ImprintError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        k, batch_size = int(k), int(batch_size)
        same = queries is base
        own = not isinstance(index, ShardedIndex)
        if not own:
            h = index
            if metric != h.metric:
                raise ImprintError(f"index metric {h.metric!r} does not match metric={metric!r}")
            if base is not None and np.asarray(base).shape[0] != h.n:
                raise ImprintError(f"index holds {h.n} vectors but base has {np.asarray(base).shape[0]}")
        else:
            h = self.build_index(base, metric=metric, index=index, random_state=random_state,
                                 n_queries=None if same else np.asarray(queries).shape[0], k=k)
        q = _as_f32("queries", queries)
        if q.shape[1] != h.d:
            raise ImprintError(f"dimension mismatch: base has d={h.d}, queries have d={q.shape[1]}")
        if exclude_self and q.shape[0] != h.n:
            raise ImprintError(f"exclude_self=True needs queries to be the base rows ({q.shape[0]} != {h.n})")
        n = q.shape[0]
        kk = k + (1 if exclude_self else 0)
        acts = self.workers()
        dist = np.empty((n, k), np.float32)
        idx = np.empty((n, k), np.int64)
        t0 = time.perf_counter()

        def submit(s):
            qref = self.ray.put(q[s:s + batch_size])
            return s, [acts[j % len(acts)].search.remote((h.key, j), [h.shard_refs[j], h.index_refs[j], h.factory],
                                                          h.offsets[j], qref, kk, h.metric, use_gpu,
                                                          int(random_state), nprobe)
                       for j in range(len(h.offsets))]

        blocks = iter(range(0, n, batch_size))
        window = [submit(s) for _, s in zip(range(2), blocks)]  # two query blocks in flight (range first!)
        while window:
            s, refs = window.pop(0)
            nxt = next(blocks, None)
            if nxt is not None:
                window.append(submit(nxt))
            parts = self._get(refs)
            e = min(n, s + batch_size)
            rows = np.arange(s, e, dtype=np.int64) if exclude_self else None
            d64, ii = merge_topk([p[0] for p in parts], [p[1] for p in parts], k, exclude_rows=rows,
                                 select=[p[2] for p in parts] if h.info.get("exact") else None, n_select=kk)
            dist[s:e] = d64.astype(np.float32)
            idx[s:e] = ii
        if own:  # free the workers' copies of a base built for this call only
            for j in range(len(h.offsets)):
                acts[j % len(acts)].drop.remote((h.key, j))
        self._tick("search_s", t0)
        return (dist, idx, dict(h.info)) if return_info else (dist, idx)

    # ------------------------------------------------------------------ pair kernels / features
    def _pairs(self, what: str, A: np.ndarray, B: np.ndarray, pairs: np.ndarray, data_range: float = 255.0):
        pairs = np.asarray(pairs)
        if pairs.ndim != 2 or pairs.shape[1:] != (2,):
            raise ValueError(f"pairs must be an int64 array [P, 2], got shape {pairs.shape}")
        P = pairs.shape[0]
        if P == 0:
            return _pairs_chunk(what, A, B, pairs, data_range)
        t0 = time.perf_counter()
        a_ref = self.ray.put(A)
        b_ref = a_ref if B is A else self.ray.put(B)
        n_chunks = max(len(self.workers()), math.ceil(P / self.pairs_chunk))
        bounds = np.linspace(0, P, n_chunks + 1).round().astype(np.int64)
        spans = [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        parts = list(self._map(lambda w, ab: w.pairs.remote(what, a_ref, b_ref, pairs[ab[0]:ab[1]],
                                                            float(data_range)), spans))
        self._tick("rerank_s", t0)
        return np.concatenate(parts)

    def ssim_pairs(self, A, B, pairs, data_range: float = 255.0) -> np.ndarray:
        """``kernels.ssim_pairs`` over chunks of pairs on the workers (identical values)."""
        return self._pairs("ssim_pairs", A, B, pairs, data_range)

    def mse_pairs(self, A, B, pairs) -> np.ndarray:
        """``kernels.mse_pairs`` over chunks of pairs on the workers (identical values)."""
        return self._pairs("mse_pairs", A, B, pairs)

    def extract_features(self, images: np.ndarray, groups=None, *, batch: int = 512):
        """``engine.features.extract`` on the workers; returns ``(feats float64[N,F], names)``.

        Chunks are multiples of ``batch`` (the function's internal batch), so every chunk computes exactly
        what the local call computes.
        """
        from .. import features as F

        groups = tuple(F.FEATURE_GROUPS if groups is None else groups)
        images = F.check_images(images)
        n = images.shape[0]
        batch = max(1, int(batch))
        per = max(1, math.ceil(n / (2 * len(self.workers()) * batch))) * batch
        t0 = time.perf_counter()
        parts = list(self._map(lambda w, s: w.extract.remote(images[s:s + per], groups, batch),
                               list(range(0, n, per)) or [0]))
        self._tick("features_s", t0)
        return np.concatenate([p[0] for p in parts], 0), parts[0][1]


def _cpus_here() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover
        return max(1, os.cpu_count() or 1)


def _as_f32(name: str, x: Any) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ImprintError(f"{name} must be a 2-D array [n, d], got shape {arr.shape}")
    if arr.dtype.kind not in "fiub":
        raise ImprintError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ImprintError(f"{name} contains NaN or infinite values")
    return arr
