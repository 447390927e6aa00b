"""Pixel stores: every image of a folder decoded once, kept as compact uint8 rows in memory-mapped Arrow shards.

A pixel store is an :class:`engine.store.EmbeddingStore` whose ``vector`` column holds the decoded image
(``fixed_size_list<uint8>[H*W]``, row-major) instead of an embedding: the same folder layout, manifest commit
point, atomic shard writes, crash recovery, append-only incremental runs and size/mtime skipping. Its
"backbone" is the ingestion policy (working size, mode and window policy), so a store made with another
``--size`` or ``--window`` is refused rather than mixed.

Re-ranking and membership read the images from it memory-mapped (:meth:`PixelStore.images`): the driver holds
uint8 pages of the images it touches, not a float copy of the set, and a second run over the same folder only
decodes new or changed files.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import ImprintError
from .ingest import IngestPolicy, Skip, discover
from .store import EmbeddingStore, file_stats


class PixelStore(EmbeddingStore):
    """A folder of Arrow shards holding one uint8 ``[H, W]`` image per file (see the module docstring)."""

    FORMAT = "imprint-pixel-store"
    DTYPE = "uint8"

    @staticmethod
    def policy_key(policy: IngestPolicy) -> dict:
        """The store's identity: the parts of the ingestion policy that change the decoded pixels."""
        d = policy.describe()
        keep = {k: d[k] for k in ("size", "size_policy", "mode_policy")}
        digest = hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()
        return {"name": "pixels", "version": "1", "sha256": digest, **keep}

    @classmethod
    def for_policy(cls, root: str | os.PathLike, policy: IngestPolicy) -> "PixelStore":
        """Open (or create) the pixel store at ``root`` for ``policy``; refuses one made with another policy."""
        h, w = policy.size
        st = cls.open_or_create(root, backbone=cls.policy_key(policy), dim=h * w, policy=policy.describe())
        if not isinstance(st, cls):  # pragma: no cover - open_or_create is a classmethod
            raise ImprintError(f"not a pixel store: {root}")
        return st

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of the stored images."""
        s = self.manifest["backbone"]["size"]
        return int(s[0]), int(s[1])

    def images(self, paths: Sequence[str] | None = None) -> tuple[np.ndarray, list[str], list[str]]:
        """The images (uint8 [N, H, W]), their paths and sha256.

        With one shard and no selection (the usual case after :func:`ingest_folder`) the array is a read-only
        zero-copy view of the memory-mapped shard: pages are read from disk when touched and can be dropped
        by the OS, so a large set costs page cache, not process memory. Otherwise one uint8 copy is gathered.
        """
        v = self.read(paths)
        h, w = self.shape
        return v.vectors.reshape(len(v.paths), h, w), v.paths, v.hashes


def ingest_folder(folder: str | os.PathLike, store: str | os.PathLike, policy: IngestPolicy = IngestPolicy(), *,
                  exclude: Sequence[str] = (), shard_size: int = 2048,
                  progress: Callable[[int], object] | None = None, compact: bool = True
                  ) -> tuple[PixelStore, list[str], list[Skip]]:
    """Decode the new or changed images of ``folder`` into the pixel store ``store`` (resumable, bounded memory).

    Files whose size and mtime equal the stored ones are not read; others are hashed and decoded on the thread
    pool (:func:`engine.ingest.decode_files`) in shards of ``shard_size`` images, each committed atomically.
    With ``compact`` and more than one shard, the store is rewritten once as a single shard so that
    :meth:`PixelStore.images` is a zero-copy memory map (only after a run that added rows).

    Parameters
    ----------
    folder : path
    store : path
        The pixel store's folder (created when absent).
    policy : IngestPolicy
    exclude : sequence of str
        Sub-folders of ``folder`` to leave out.
    shard_size : int
        Images per committed shard (memory: ``shard_size * H * W`` bytes).
    progress : callable or None
        Called with the number of files handled.
    compact : bool

    Returns
    -------
    store : PixelStore
    paths : list of str
        The readable images of ``folder`` (sorted relative paths), all present in the store.
    skipped : list of Skip
    """
    from .ingest import iter_batches

    rel, skipped = discover(folder)
    excl = tuple(e.rstrip("/") + "/" for e in exclude)
    if excl:
        rel = [p for p in rel if not p.startswith(excl)]
    st = PixelStore.for_policy(store, policy)
    size, mtime = file_stats(folder, rel)
    have = st.stats()
    todo, todo_i = [], []
    for i, p in enumerate(rel):
        got = have.get(p)
        if got is not None and got[1] == size[i] and got[2] == mtime[i] and got[2] >= 0:
            continue  # unchanged by size and mtime: not read at all
        if got is not None:
            try:
                with open(os.path.join(folder, p), "rb") as fh:
                    if hashlib.sha256(fh.read()).hexdigest() == got[0]:
                        continue
            except OSError:
                pass
        todo.append(p)
        todo_i.append(i)
    if progress is not None and len(rel) > len(todo):
        progress(len(rel) - len(todo))
    pos = dict(zip(todo, todo_i))
    h, w = policy.size
    bad: set[str] = set()

    def on_skip(s: Skip) -> None:
        skipped.append(s)
        bad.add(s.path)

    added = 0
    for imgs, paths, hashes in iter_batches(folder, todo, shard_size, policy, on_skip=on_skip):
        ii = np.array([pos[p] for p in paths], np.int64)
        st.append(paths, hashes, imgs.reshape(len(paths), h * w), stats=(size[ii], mtime[ii]))
        added += len(paths)
        if progress is not None:
            progress(len(paths))
    if progress is not None and bad:
        progress(len(bad))
    if compact and (added or not st.is_zero_copy()):
        # one shard of one record batch in path order: images() is then a zero-copy memory map (a store compacted
        # before issue 15's seventh pass, in record batches of 4,096 rows, is rewritten once)
        st.compact(sort_paths=True)
    ok = [p for p in rel if p not in bad]
    return st, ok, skipped


def load_images(folder: str | os.PathLike, store: str | os.PathLike, policy: IngestPolicy = IngestPolicy(), *,
                exclude: Sequence[str] = (), progress: Callable[[int], object] | None = None,
                label: str = "input"):
    """:func:`ingest_folder`, then the folder's images as an :class:`engine.ingest.ImageSet` whose ``images``
    is a memory-mapped uint8 view of the store (no decoded copy in process memory)."""
    from .ingest import ImageSet

    st, paths, skipped = ingest_folder(folder, store, policy, exclude=exclude, progress=progress)
    if not paths:
        why = f" ({len(skipped)} files skipped)" if skipped else ""
        raise ImprintError(f"no readable images in {label} folder {folder}{why}")
    imgs, paths, hashes = st.images(paths if len(st) != len(paths) else None)
    if list(paths) != sorted(paths):  # store order differs from the folder's sorted order: select explicitly
        imgs, paths, hashes = st.images(sorted(paths))
    return ImageSet(imgs, list(paths), list(hashes), skipped, str(folder))


def default_store_dir(folder: str | os.PathLike) -> Path:
    """Where ``--pixel-store auto`` keeps the pixel store of ``folder``: ``$IMPRINT_CACHE_DIR`` (default
    ``~/.cache/imprint``)/pixels/<sha256 of the folder's absolute path>."""
    base = Path(os.environ.get("IMPRINT_CACHE_DIR") or Path.home() / ".cache" / "imprint")
    key = hashlib.sha256(os.path.abspath(folder).encode("utf-8", "surrogateescape")).hexdigest()[:24]
    return base / "pixels" / key


# ---------------------------------------------------------------------------------------------- resident pages
_MADV_DONTNEED = 4


def _readonly_file_mapping(start: int, end: int) -> bool:
    """True when ``[start, end)`` lies inside one read-only, file-backed mapping of this process (Linux)."""
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                parts = line.split(None, 5)
                lo, hi = (int(v, 16) for v in parts[0].split("-"))
                if lo <= start and end <= hi:
                    path = parts[5].strip() if len(parts) > 5 else ""
                    return parts[1][1] == "-" and parts[4] != "0" and path.startswith("/")
    except (OSError, ValueError, IndexError):
        return False
    return False


def release_pages(images) -> bool:
    """Drop this process's resident pages of a read-only memory-mapped image array (e.g. :meth:`PixelStore.images`).

    Pages of a read-only file mapping that were touched count in the resident set (and the peak RSS) until the
    OS reclaims them; ``madvise(MADV_DONTNEED)`` unmaps them at once (they stay in the page cache, and the next
    access reads them back), so a pass over a large memory-mapped set costs no resident memory.  Anything else
    (an in-memory array, a writeable or anonymous mapping, another OS) is left alone.

    Parameters
    ----------
    images : numpy array or None

    Returns
    -------
    bool
        Whether pages were released.
    """
    import ctypes
    import mmap
    import sys

    a = images
    if not isinstance(a, np.ndarray) or a.size == 0 or a.flags.writeable or a.flags.owndata \
            or not sys.platform.startswith("linux"):
        return False
    start = a.__array_interface__["data"][0]
    end = start + a.nbytes
    page = mmap.PAGESIZE
    lo, hi = start - start % page, -(-end // page) * page
    if not _readonly_file_mapping(lo, hi):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), _MADV_DONTNEED) == 0
    except (OSError, AttributeError):  # pragma: no cover - no libc madvise
        return False
