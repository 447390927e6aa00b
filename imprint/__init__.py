"""imprint: an embedding and similarity engine that audits synthetic medical images.

The implementation lives in three subpackages, installed only under this namespace:

* :mod:`imprint.engine`  - ingestion, Arrow stores, ONNX backbones, FAISS search, membership, attribution, CLI
* :mod:`imprint.kernels` - Numba kernels (SSIM/MSE/PSNR, LBP, noise-residual fingerprints)
* :mod:`imprint.models`  - the ONNX backbone registry and export tooling

In the source tree they are the top-level folders ``engine/``, ``kernels/`` and ``models/`` (the design card's
layout); ``pyproject.toml`` maps them to ``imprint.engine`` and so on, so a program that embeds imprint never sees
the generic names ``engine``, ``kernels`` or ``models``.
"""

from __future__ import annotations

import os as _os

__version__ = "0.1.0"

# A source checkout imported from its own root (``python -m pytest`` in a git worktree, say) resolves
# ``imprint.engine`` to *this* checkout's ``engine/`` rather than to whichever checkout was installed in editable
# mode. An installed wheel has no such sibling folders and is unaffected.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if all(_os.path.isfile(_os.path.join(_root, p)) for p in ("pyproject.toml", "engine/__init__.py")):
    __path__.append(_root)  # type: ignore[name-defined]  # noqa: F821
del _root

# ------------------------------------------------------------------------------------------------ the Python API
# Re-exported lazily (PEP 562): ``import imprint`` stays light (no numpy, FAISS, onnxruntime or Numba until an API
# name is first used), so programs that embed imprint pay for what they call.
_LAZY = {
    "audit_membership": "imprint.engine.api",
    "attribute": "imprint.engine.api",
    "MembershipAudit": "imprint.engine.api",
    "Attribution": "imprint.engine.api",
    "Executor": "imprint.engine.executors",
    "LocalExecutor": "imprint.engine.executors",
    "RayExecutor": "imprint.engine.executors",
    "DevSet": "imprint.engine.membership",
    "IngestPolicy": "imprint.engine.ingest",
    "ImprintError": "imprint.engine.errors",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'imprint' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: later look-ups skip this function
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(_LAZY))


if False:  # pragma: no cover - for type checkers and IDEs only
    from imprint.engine.api import Attribution, MembershipAudit, attribute, audit_membership  # noqa: F401
    from imprint.engine.errors import ImprintError  # noqa: F401
    from imprint.engine.executors import Executor, LocalExecutor, RayExecutor  # noqa: F401
    from imprint.engine.ingest import IngestPolicy  # noqa: F401
    from imprint.engine.membership import DevSet  # noqa: F401
