"""Executors: where imprint's heavy stages (embedding, search, pair kernels, features) run.

- :mod:`.base`  - the :class:`Executor` interface, :func:`check_executor`, :data:`EXECUTORS`
- :mod:`.local` - :class:`LocalExecutor`: everything in this process (the default)
- :mod:`.ray`   - :class:`RayExecutor`: worker actors on a Ray cluster (extra ``distributed``)
- :mod:`.merge` - :func:`merge_topk` and :class:`ShardedIndex` (sharded search bookkeeping, no Ray)

Stages take an executor object explicitly (``executor=``); :func:`open_executor` turns a name
(``"local"``/``"ray"``), ``None`` or an object into one, and releases what it created itself.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

from .base import EXECUTORS, Executor, check_executor, ray_available
from .local import LOCAL, LocalExecutor
from .merge import ShardedIndex, merge_topk

__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "LOCAL", "RayExecutor", "ShardedIndex", "check_executor",
           "merge_topk", "open_executor", "ray_available", "resolve_executor"]


def __getattr__(name: str):
    if name == "RayExecutor":  # imported on first use only (it is the only module that talks to Ray)
        from .ray import RayExecutor

        return RayExecutor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def resolve_executor(executor: Any = None, address: str | None = None, **ray_options) -> tuple[Executor, bool]:
    """An :class:`Executor` for ``executor``, and whether the caller owns it (must close it).

    Parameters
    ----------
    executor : None, "local", "ray" or Executor
        ``None`` and ``"local"`` give the shared :data:`LOCAL` executor; ``"ray"`` a new, not yet started
        :class:`RayExecutor` (``address``, ``ray_options``); an :class:`Executor` object is returned as is.
    address : str or None
        Ray cluster address (``"ray"`` only).

    Raises
    ------
    ImprintError
        Unknown name, ``address`` without ``"ray"``, Ray not installed, or not an executor.
    """
    if executor is None:
        executor = "local"
    if isinstance(executor, Executor):
        check_executor(executor, address)
        return executor, False
    if not isinstance(executor, str):
        from ..errors import ImprintError

        raise ImprintError(f"executor must be 'local', 'ray' or an Executor object (got {type(executor).__name__})")
    if check_executor(executor, address) == "local":
        return LOCAL, False
    from .ray import RayExecutor

    return RayExecutor(address, **ray_options), True


@contextlib.contextmanager
def open_executor(executor: Any = None, address: str | None = None, **ray_options) -> Iterator[Executor]:
    """Context manager around :func:`resolve_executor`: yields the executor and closes it on exit when it was
    created here (a Ray instance started for one job is shut down; an executor object passed in is left open
    for its owner)."""
    ex, owned = resolve_executor(executor, address, **ray_options)
    try:
        yield ex
    finally:
        if owned:
            ex.close()
