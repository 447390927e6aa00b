"""Atomic output writers (temporary file in the same folder, fsync, rename): a reader sees a complete file or none."""
from __future__ import annotations

import csv
import io
import json
import os
from typing import Iterable, Sequence

from .store import atomic_write_bytes, atomic_write_text

__all__ = ["write_csv", "write_json", "atomic_write_bytes", "atomic_write_text"]


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    """Write a CSV atomically (UTF-8, ``\\n`` line ends, floats with full precision)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow([_fmt(v) for v in r])
    atomic_write_text(path, buf.getvalue())


def write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_default) + "\n")


def _fmt(v):
    if isinstance(v, float):
        return repr(v)
    try:
        import numpy as np

        if isinstance(v, np.floating):
            return repr(float(v))
        if isinstance(v, np.integer):
            return int(v)
    except ImportError:  # pragma: no cover
        pass
    return v


def _default(o):
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
