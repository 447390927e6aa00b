"""The executor interface: where imprint's heavy stages run.

An executor is an object with the methods below; the stages (:func:`engine.membership.compute_evidence`,
:func:`engine.attribution.attribute`, :func:`engine.pairs.run_pairs`, ``imprint embed``) take it as an
``executor=`` argument and call ``executor.knn(...)``, ``executor.embed(...)`` and so on, the way
scikit-learn estimators take ``n_jobs`` / a joblib backend. Nothing is swapped at module level, so two audits
in one process can run on different executors, and a reader sees at every call site where it runs.

Every method returns exactly what the corresponding library function returns; an executor changes *where*
the work runs, never the numbers (see :mod:`engine.executors.ray` for the one documented exception:
approximate FAISS factories are trained per shard on Ray).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import ImprintError

__all__ = ["EXECUTORS", "Executor", "check_executor", "ray_available"]

#: executor names accepted by ``--executor`` and by the ``executor=`` argument of the Python API
EXECUTORS = ("local", "ray")


def ray_available() -> bool:
    """True when the optional ``ray`` package can be imported."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def check_executor(executor: Any, address: str | None = None) -> str:
    """Validate ``--executor`` / ``--address`` before any work starts; returns the executor name.

    Parameters
    ----------
    executor : str or Executor
        ``"local"``, ``"ray"`` or an :class:`Executor` object (returned as its ``name``).
    address : str or None
        Ray cluster address (only with ``"ray"``).

    Raises
    ------
    ImprintError
        Unknown executor, ``--address`` without ``--executor ray``, or Ray not installed.
    """
    if isinstance(executor, Executor):
        if address:
            raise ImprintError("--address applies to --executor ray given by name, not to an executor object")
        return executor.name
    ex = str(executor).strip().lower()
    if ex not in EXECUTORS:
        raise ImprintError(f"--executor must be one of {', '.join(EXECUTORS)} (got {executor!r})")
    if ex == "local":
        if address:
            raise ImprintError("--address needs --executor ray")
        return ex
    if not ray_available():
        raise ImprintError("--executor ray needs Ray: pip install 'imprint[distributed]'")
    if address is not None and not str(address).strip():
        raise ImprintError("--address must not be empty")
    return ex


class Executor(ABC):
    """Base class of the executors (:class:`~engine.executors.local.LocalExecutor`,
    :class:`~engine.executors.ray.RayExecutor`).

    Subclasses must implement every stage method (they are abstract: a subclass that misses one cannot be
    instantiated, so a stage can never reach a missing method mid-job); the base class gives the context-manager protocol
    (``with RayExecutor() as ex: ...`` starts and releases resources) and a per-stage timing dict ``stats``.
    """

    #: short name ("local", "ray") reported in summaries
    name = "executor"

    def __init__(self) -> None:
        self.stats: dict[str, float] = {}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "Executor":
        """Acquire resources (idempotent). The local executor has none."""
        return self

    def close(self) -> None:
        """Release resources. The local executor has none."""

    def __enter__(self) -> "Executor":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    # ------------------------------------------------------------------ stages
    @abstractmethod
    def embed(self, images: np.ndarray, backbone: Any = "pixel", *, batch_size: int | None = None,
              progress: Callable[[int], Any] | None = None, **kwargs) -> np.ndarray:
        """:func:`engine.backbone.embed`: uint8 ``[N,H,W]`` -> float32 ``[N,d]``."""

    @abstractmethod
    def embed_files(self, folder: str, rel_paths: Sequence[str], backbone: Any, *, policy=None,
                    shard_size: int = 4096, batch_size: int | None = None,
                    on_skip: Callable | None = None) -> Iterator[tuple[np.ndarray, list, list]]:
        """Decode and embed files; yields ``(vectors float32[b,d], paths, hashes)`` per shard, in order."""

    @abstractmethod
    def build_index(self, vectors: Any, *, metric: str = "l2", index: str = "auto", random_state: int = 0,
                    n_queries: int | None = None, k: int = 10, return_info: bool = False, **kwargs):
        """:func:`engine.search.build_index` (an index object this executor's :meth:`knn` accepts)."""

    @abstractmethod
    def knn(self, base: Any, queries: Any, k: int, *, metric: str = "l2", index: Any = "auto",
            exclude_self: bool = False, **kwargs):
        """:func:`engine.search.knn`: ``(dist float32[N,k], idx int64[N,k])``."""

    @abstractmethod
    def ssim_pairs(self, A: np.ndarray, B: np.ndarray, pairs: np.ndarray, data_range: float = 255.0) -> np.ndarray:
        """``kernels.ssim_pairs``: float32 ``[P]``."""

    @abstractmethod
    def mse_pairs(self, A: np.ndarray, B: np.ndarray, pairs: np.ndarray) -> np.ndarray:
        """``kernels.mse_pairs``: float32 ``[P]``."""

    @abstractmethod
    def extract_features(self, images: np.ndarray, groups: Sequence[str] | None = None, *,
                         batch: int = 512) -> tuple[np.ndarray, list]:
        """:func:`engine.features.extract`: ``(features float64[N,F], names)``."""
