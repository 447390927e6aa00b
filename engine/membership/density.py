"""Embedding density-ratio evidence (DOMIAS-style) for the membership audit.

DOMIAS (van Breugel et al., 2023) scores a real image ``x`` by ``p_G(x) / p_R(x)``: the density of the
generated images around ``x`` over the density of real non-member (reference) images around ``x``.  A
generator that memorised ``x`` puts excess density there; a typical-looking patient sits where real
images are dense too, so the ratio stays ordinary.

Densities are k-nearest-neighbour estimates in a feature space (pixels or a backbone embedding):
``p(x) ~ k / (n r_k(x)^d)``, so

    log p_G(x) - log p_R(x) = d (log r_k^R(x) - log r_k^G(x)) + log(n_R / n_G)

The dimension ``d`` and the count term are the same for every image, and the audit calibrates each
evidence by an affine robust z-score against its null, which removes both: the evidence is
``density_<space> = log r_k^R(x) - log r_k^G(x)`` (``R`` = the other real images of the pool, ``x``
itself excluded).

Embeddings are computed with :func:`engine.backbone.embed` and, with ``store_dir``, kept in an
:class:`engine.store.EmbeddingStore` per backbone keyed by the sha256 of the image content, so repeated
runs (dev sets, reference, the same generated folder) embed each image once.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from .evidence import _knn, zscore_images


def _content_keys(images: np.ndarray) -> list[str]:
    h, w = images.shape[1:]
    return [hashlib.sha256(f"{h}x{w}:".encode() + x.tobytes()).hexdigest() for x in images]


def embed_cached(images: np.ndarray, backbone: str, store_dir: str | None = None) -> np.ndarray:
    """Backbone embeddings of ``images``, reusing (and filling) an Arrow store when ``store_dir`` is given.

    Parameters
    ----------
    images : uint8 [N, H, W]
    backbone : str            registry name (``effnet-lite0-128``, ``fingerprint``, ...) or ``"pixels"``
                              (z-scored pixels area-averaged to ~32 px per side; no store)
    store_dir : path or None  folder holding one store per backbone (``STORE_DIR/<backbone>``)

    Returns
    -------
    float32 [N, d]
    """
    X = np.ascontiguousarray(images)
    if backbone == "pixels":
        from .register import downsample

        f = max(1, min(X.shape[1:]) // 32)
        return downsample(zscore_images(X), f).reshape(len(X), -1)
    from imprint.engine.backbone import embed, load_backbone

    if store_dir is None:
        return np.asarray(embed(X, backbone), np.float32)
    from imprint.engine.pipeline import _spec_dict
    from imprint.engine.store import EmbeddingStore

    bb = load_backbone(backbone)
    root = Path(store_dir)
    root.mkdir(parents=True, exist_ok=True)
    st = EmbeddingStore.open_or_create(root / bb.spec.name, backbone=_spec_dict(bb.spec), dim=int(bb.spec.dim),
                                       policy={"source": "membership density (in-memory images)"})
    keys = _content_keys(X)
    have = st.keys()
    todo = sorted({i for i, k in enumerate(keys) if k not in have})
    if todo:
        uniq: dict[str, int] = {}
        for i in todo:
            uniq.setdefault(keys[i], i)
        rows = list(uniq.values())
        vec = np.asarray(embed(X[rows], bb), np.float32)
        st.append([keys[i] for i in rows], [keys[i] for i in rows], vec)
    return np.asarray(st.read(keys).vectors, np.float32)


def density_ratio(gen_feat: np.ndarray, pool_feat: np.ndarray, k: int = 5, *, metric: str = "l2") -> np.ndarray:
    """kNN log density ratio ``log r_k^R(x) - log r_k^G(x)`` of every pool row (see module docstring).

    Parameters
    ----------
    gen_feat : float32 [M, d]   features of the generated images
    pool_feat : float32 [P, d]  features of the real pool (each row is ``x``; the others are ``R``)
    k : int                     neighbour rank (clipped to the set sizes)
    metric : "l2" or "cosine"

    Returns
    -------
    float64 [P]   higher = relatively more generated density around ``x`` (more member-like)
    """
    kg = int(max(1, min(k, len(gen_feat))))
    kr = int(max(1, min(k, len(pool_feat) - 1)))
    dg, _ = _knn(np.ascontiguousarray(gen_feat, np.float32), np.ascontiguousarray(pool_feat, np.float32), kg,
                 metric=metric)
    dr, _ = _knn(np.ascontiguousarray(pool_feat, np.float32), np.ascontiguousarray(pool_feat, np.float32), kr,
                 exclude_self=True, metric=metric)
    eps = 1e-9
    rg = np.sqrt(np.clip(dg[:, kg - 1].astype(np.float64), 0, None)) if metric == "l2" else np.clip(dg[:, kg - 1], 0, None)
    rr = np.sqrt(np.clip(dr[:, kr - 1].astype(np.float64), 0, None)) if metric == "l2" else np.clip(dr[:, kr - 1], 0, None)
    return np.log(rr + eps) - np.log(rg + eps)
