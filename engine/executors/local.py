"""The local executor: every stage in this process (the default)."""
from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .base import Executor

__all__ = ["LocalExecutor", "LOCAL"]


class LocalExecutor(Executor):
    """Runs every stage in this process with the library functions themselves.

    Each method is a direct call of :func:`engine.backbone.embed`, :func:`engine.search.knn` /
    :func:`~engine.search.build_index`, :func:`engine.features.extract` or ``kernels.ssim_pairs`` /
    ``kernels.mse_pairs`` with the same arguments, so a stage given ``LocalExecutor()`` computes exactly what
    it computed before executors existed. It holds no state: one instance (:data:`LOCAL`) serves everyone.
    """

    name = "local"

    def embed(self, images: np.ndarray, backbone: Any = "pixel", *, batch_size: int | None = None,
              progress: Callable[[int], Any] | None = None, **kwargs) -> np.ndarray:
        """:func:`engine.backbone.embed` (``kwargs``: ``providers``, ``threads``, registry options)."""
        from ..backbone import embed

        return embed(images, backbone, batch_size=batch_size, progress=progress, **kwargs)

    def embed_files(self, folder: str, rel_paths: Sequence[str], backbone: Any, *, policy=None,
                    shard_size: int = 4096, batch_size: int | None = None,
                    on_skip: Callable | None = None) -> Iterator[tuple[np.ndarray, list, list]]:
        """Decode with :func:`engine.ingest.iter_batches` and embed here; yields ``(vectors, paths, hashes)``.

        Unreadable files go to ``on_skip(Skip)``; the caller commits each shard (``EmbeddingStore.append``).
        """
        from ..backbone import embed
        from ..ingest import IngestPolicy, iter_batches

        for imgs, paths, hashes in iter_batches(folder, rel_paths, shard_size, policy or IngestPolicy(),
                                                on_skip=on_skip):
            yield embed(imgs, backbone, batch_size=batch_size), paths, hashes

    def build_index(self, vectors: Any, **kwargs):
        """:func:`engine.search.build_index` (same keywords)."""
        from ..search import build_index

        return build_index(vectors, **kwargs)

    def knn(self, base: Any, queries: Any, k: int, **kwargs):
        """:func:`engine.search.knn` (same keywords)."""
        from ..search import knn

        return knn(base, queries, k, **kwargs)

    def ssim_pairs(self, A: np.ndarray, B: np.ndarray, pairs: np.ndarray, data_range: float = 255.0) -> np.ndarray:
        """``kernels.ssim_pairs``: float32 ``[P]``."""
        if _pairs_on_cuda():
            from .. import device

            return device.ssim_pairs(A, B, pairs, data_range, device="cuda")
        import imprint.kernels as kernels

        return kernels.ssim_pairs(A, B, pairs, data_range=data_range)

    def mse_pairs(self, A: np.ndarray, B: np.ndarray, pairs: np.ndarray) -> np.ndarray:
        """``kernels.mse_pairs``: float32 ``[P]``."""
        if _pairs_on_cuda():
            from .. import device

            return device.mse_pairs(A, B, pairs, device="cuda")
        import imprint.kernels as kernels

        return kernels.mse_pairs(A, B, pairs)

    def extract_features(self, images: np.ndarray, groups: Sequence[str] | None = None, *,
                         batch: int = 512) -> tuple[np.ndarray, list]:
        """:func:`engine.features.extract`: ``(features float64[N,F], names)``."""
        from .. import features as F

        return F.extract(images, F.FEATURE_GROUPS if groups is None else groups, batch=batch)


#: the shared stateless local executor (the default of every ``executor=`` argument)
LOCAL = LocalExecutor()


def _pairs_on_cuda() -> bool:
    """True when a job chose CUDA pair kernels (``--device``); never triggers a device trial by itself."""
    from .. import device

    dev = device._ACTIVE
    return dev is not None and dev.pair_kernels == "cuda"
