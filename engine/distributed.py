"""Compatibility shim: the executors moved to :mod:`engine.executors` (``base``, ``local``, ``ray``, ``merge``).

Import from :mod:`imprint.engine.executors` in new code. The process-global ``executor_scope`` is gone: pass an
executor object to the stages instead (``executor=RayExecutor(...)``, or ``executor="ray"`` to the Python API).
"""
from __future__ import annotations

from .executors import EXECUTORS, ShardedIndex, check_executor, merge_topk, ray_available  # noqa: F401

__all__ = ["EXECUTORS", "RayExecutor", "ShardedIndex", "check_executor", "merge_topk", "ray_available"]


def __getattr__(name: str):
    if name == "RayExecutor":
        from .executors.ray import RayExecutor

        return RayExecutor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
