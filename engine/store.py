"""Embedding stores: sharded Arrow IPC files plus a JSON manifest, read back memory-mapped and zero-copy.

Layout of a store folder::

    STORE/manifest.json          # the commit point: lists finished shards and the backbone that made them
    STORE/shard-000000.arrow     # Arrow IPC *file* format, uncompressed (so it can be memory-mapped)
    STORE/shard-000001.arrow
    ...

Schema of every shard (readable by pyarrow, pandas, polars and DuckDB without imprint)::

    path    string                       # image path relative to the embedded folder, '/'-separated
    sha256  string                       # sha256 of the image file's bytes (hex)
    vector  fixed_size_list<float32>[d]  # the embedding (uint8 [H*W] in a pixel store, engine.pixelstore)
    size    int64                        # file size in bytes when embedded (-1: unknown; absent in old shards)
    mtime_ns int64                       # file modification time (ns) when embedded (-1: unknown or too recent)

Incremental runs append new shards and never rewrite the committed ones; a file whose size and mtime equal
the stored ones is taken as unchanged without being read (as git and rsync do; an mtime within
``RACY_MTIME_S`` of the write is not trusted, so a file rewritten in the same clock tick is re-hashed).
Reading several shards is vectorised (Arrow dictionary encoding + NumPy gathers, no per-row Python).

The schema metadata and the manifest both record the backbone (name, version, sha256 of its ONNX file,
preprocessing) and the ingestion policy. A store refuses rows from any other backbone.

Crash safety: a shard is written to a temporary name, fsync'ed and atomically renamed; only then is the
manifest rewritten (temporary name, fsync, rename). A shard that is on disk but not in the manifest (a run
killed between the two renames) is ignored and removed on the next open, so its rows are redone exactly once.
When the same ``path`` appears in several shards (an image changed between runs), the row of the newest
shard wins.
"""
from __future__ import annotations

import contextlib
import json
import mmap
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa

from .errors import ImprintError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
#: an mtime this close (seconds) to the moment a row is written is not trusted for skipping (racy-git rule)
RACY_MTIME_S = 2.0
_DTYPES = {"float32": (np.float32, pa.float32()), "uint8": (np.uint8, pa.uint8())}


def tmp_name(path: str | os.PathLike) -> Path:
    """A temporary name next to ``path`` that records this process: ``.NAME.PID.RANDOM.tmp``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")


def remove_stale_tmp(path: str | os.PathLike) -> None:
    """Delete temporary files for ``path`` left by processes that no longer exist (e.g. a SIGKILLed run)."""
    path = Path(path)
    for p in path.parent.glob(f".{path.name}.*.tmp"):
        parts = p.name[len(path.name) + 2:].split(".")
        try:
            pid = int(parts[0])
        except (ValueError, IndexError):
            continue
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            try:
                p.unlink()
            except OSError:
                pass
        except PermissionError:
            pass


@contextlib.contextmanager
def atomic_replace(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block ends without error the file written there is
    fsync'ed and renamed onto ``path`` (and the folder fsync'ed), else it is removed. A reader sees the complete
    file or none; stale temporaries of dead processes are removed first."""
    path = Path(path)
    remove_stale_tmp(path)
    tmp = tmp_name(path)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temporary file in the same folder, fsync, rename."""
    with atomic_replace(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """UTF-8; file names that are not valid UTF-8 (decoded by Python with surrogate escapes) are written back
    as their original bytes, so a path in an output CSV always names the file it came from."""
    atomic_write_bytes(path, text.encode("utf-8", "surrogateescape"))


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# Arrow strings must be valid UTF-8, but a POSIX file name is any bytes: Python hands undecodable bytes over as lone
# surrogates (PEP 383), which pyarrow refuses.  Such a path is stored as NUL + the hex of its bytes (NUL can never
# occur in a path, so the form cannot collide with a real name) and decoded back when read: every other path is
# stored as it is.
_RAW_PATH = "\x00"


def _path_to_store(p: str) -> str:
    if p.isascii():
        return p
    try:
        p.encode("utf-8")
        return p
    except UnicodeEncodeError:
        return _RAW_PATH + os.fsencode(p).hex()


def _path_from_store(s: str) -> str:
    return os.fsdecode(bytes.fromhex(s[1:])) if s[:1] == _RAW_PATH else s


def _paths_to_store(paths) -> list:
    return [_path_to_store(p) for p in paths]


def _paths_from_store(col) -> list:
    """The path column (pa.Array / ChunkedArray) as Python paths."""
    out = col.to_pylist()
    if any(s[:1] == _RAW_PATH for s in out):
        out = [_path_from_store(s) for s in out]
    return out


@dataclass
class StoreView:
    """Vectors and keys of a store.

    Attributes
    ----------
    vectors : float32 ndarray (N, d)
        Zero-copy view of the memory-mapped shard when the store has one shard; otherwise one copy.
    paths, hashes : list of str, length N
    """

    vectors: np.ndarray
    paths: list[str]
    hashes: list[str]


def file_stats(root: str | os.PathLike, rel_paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(size, mtime_ns)`` int64 [N] of ``root/rel`` for every path (-1 where it cannot be stat'ed)."""
    size = np.full(len(rel_paths), -1, np.int64)
    mtime = np.full(len(rel_paths), -1, np.int64)
    for i, rel in enumerate(rel_paths):
        try:
            st = os.stat(os.path.join(root, rel))
        except OSError:
            continue
        size[i], mtime[i] = st.st_size, st.st_mtime_ns
    return size, mtime


class EmbeddingStore:
    """A folder of Arrow shards holding one embedding per image.

    Parameters
    ----------
    root : path
        The store folder (created by :meth:`create` or opened by :meth:`open`).
    """

    FORMAT = "imprint-embedding-store"
    DTYPE = "float32"

    def __init__(self, root: str | os.PathLike, manifest: dict):
        self.root = Path(root)
        self.manifest = manifest
        self._cache: tuple | None = None  # (shard list, index) of the last _index() call

    # ------------------------------------------------------------------ creation / opening
    @classmethod
    def open_or_create(cls, root: str | os.PathLike, backbone: dict, dim: int, policy: dict | None = None) -> "EmbeddingStore":
        """Open the store at ``root`` for ``backbone``, creating it when absent.

        Raises :class:`ImprintError` when the store holds vectors of another backbone or dimension.
        """
        root = Path(root)
        if (root / MANIFEST).exists():
            store = cls.open(root)
            store.check_backbone(backbone, dim)
            return store
        if root.exists() and not root.is_dir():
            raise ImprintError(f"store path exists and is not a folder: {root}")
        if not root.parent.exists():
            raise ImprintError(f"folder for the store does not exist: {root.parent}")
        root.mkdir(exist_ok=True)
        manifest = {
            "format": cls.FORMAT,
            "format_version": FORMAT_VERSION,
            "backbone": backbone,
            "dim": int(dim),
            "dtype": cls.DTYPE,
            "ingest_policy": policy or {},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "shards": [],
            "next_shard": 0,
        }
        store = cls(root, manifest)
        store._write_manifest()
        return store

    @classmethod
    def open(cls, root: str | os.PathLike) -> "EmbeddingStore":
        root = Path(root)
        mpath = root / MANIFEST
        if not mpath.exists():
            raise ImprintError(f"not an imprint store (no {MANIFEST}): {root}")
        try:
            manifest = json.loads(mpath.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise ImprintError(f"cannot read store manifest {mpath}: {exc}") from None
        if manifest.get("format") != cls.FORMAT:
            raise ImprintError(f"not an {cls.FORMAT} manifest: {mpath}")
        store = cls(root, manifest)
        store._remove_orphans()
        return store

    def check_backbone(self, backbone: dict, dim: int) -> None:
        mine = self.manifest["backbone"]
        keys = ("name", "version", "sha256")
        if any(mine.get(k) != backbone.get(k) for k in keys) or int(self.manifest["dim"]) != int(dim):
            raise ImprintError(
                f"store {self.root} holds vectors of backbone {mine.get('name')!r} "
                f"(sha256 {str(mine.get('sha256'))[:12]}, dim {self.manifest['dim']}); refusing to mix in "
                f"{backbone.get('name')!r} (sha256 {str(backbone.get('sha256'))[:12]}, dim {dim}); use another --store"
            )

    def _write_manifest(self) -> None:
        atomic_write_text(self.root / MANIFEST, json.dumps(self.manifest, indent=2, sort_keys=True))

    def _remove_orphans(self) -> None:
        listed = {s["file"] for s in self.manifest["shards"]}
        for p in self.root.glob("shard-*.arrow"):
            if p.name not in listed:
                try:
                    p.unlink()
                except OSError:
                    pass
        for p in self.root.glob(".*.tmp"):
            try:
                p.unlink()
            except OSError:
                pass

    # ------------------------------------------------------------------ schema
    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    def schema(self) -> pa.Schema:
        meta = {
            b"imprint.backbone": json.dumps(self.manifest["backbone"], sort_keys=True).encode(),
            b"imprint.ingest_policy": json.dumps(self.manifest.get("ingest_policy", {}), sort_keys=True).encode(),
            b"imprint.format_version": str(FORMAT_VERSION).encode(),
        }
        return pa.schema(
            [("path", pa.string()), ("sha256", pa.string()), ("vector", pa.list_(self._value_type(), self.dim)),
             ("size", pa.int64()), ("mtime_ns", pa.int64())],
            metadata=meta,
        )

    def _value_type(self):
        return _DTYPES[self.manifest.get("dtype", "float32")][1]

    def _np_dtype(self):
        return _DTYPES[self.manifest.get("dtype", "float32")][0]

    # ------------------------------------------------------------------ writing
    def append(self, paths: Sequence[str], hashes: Sequence[str], vectors: np.ndarray,
               stats: tuple[np.ndarray, np.ndarray] | None = None) -> str:
        """Write one shard atomically and commit it to the manifest (committed shards are never rewritten).

        Parameters
        ----------
        paths, hashes : sequence of str, length n
        vectors : array (n, d)
            float32 in an embedding store, uint8 in a pixel store.
        stats : (size int64 [n], mtime_ns int64 [n]) or None
            The files' size and mtime taken *before* they were read (:func:`file_stats`); lets the next run skip
            unchanged files without hashing them. An mtime within ``RACY_MTIME_S`` of now is stored as -1.

        Returns
        -------
        str
            The shard file name.
        """
        vectors = np.ascontiguousarray(vectors, dtype=self._np_dtype())
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ImprintError(f"vectors must be (n, {self.dim}); got {vectors.shape}")
        if not (len(paths) == len(hashes) == vectors.shape[0]):
            raise ImprintError("paths, hashes and vectors differ in length")
        n = vectors.shape[0]
        if stats is None:
            size = mtime = np.full(n, -1, np.int64)
        else:
            size, mtime = (np.asarray(x, np.int64).reshape(-1) for x in stats)
            if len(size) != n or len(mtime) != n:
                raise ImprintError("stats differ in length from the rows")
            mtime = np.where(mtime > time.time_ns() - int(RACY_MTIME_S * 1e9), -1, mtime)
        flat = pa.array(vectors.reshape(-1), type=self._value_type())
        table = pa.table(
            {
                "path": pa.array(_paths_to_store(paths), type=pa.string()),
                "sha256": pa.array(list(hashes), type=pa.string()),
                "vector": pa.FixedSizeListArray.from_arrays(flat, self.dim),
                "size": pa.array(size, pa.int64()),
                "mtime_ns": pa.array(mtime, pa.int64()),
            },
            schema=self.schema(),
        )
        return self._commit_shard([table.to_batches()], int(vectors.shape[0]))

    def _commit_shard(self, batch_groups, rows: int, fill=None) -> str:
        """Stream record batches into a new shard file (temporary name, fsync, rename; no in-memory copy of the
        whole file), then commit it in the manifest. ``fill(tmp)``, when given, edits the written file in place
        before it is fsync'ed and renamed (:meth:`compact`)."""
        seq = int(self.manifest["next_shard"])
        name = f"shard-{seq:06d}.arrow"
        with atomic_replace(self.root / name) as tmp:
            with pa.OSFile(str(tmp), "wb") as fh:
                with pa.ipc.new_file(fh, self.schema()) as writer:
                    for group in batch_groups:
                        for b in group:
                            writer.write_batch(b)
            if fill is not None:
                fill(tmp)
        self.manifest["shards"].append({"file": name, "rows": int(rows)})
        self.manifest["next_shard"] = seq + 1
        self._write_manifest()
        return name

    # ------------------------------------------------------------------ reading
    def _open_shard(self, name: str) -> pa.Table:
        path = self.root / name
        try:
            source = pa.memory_map(str(path), "r")
            return pa.ipc.open_file(source).read_all()
        except (OSError, pa.ArrowInvalid) as exc:
            raise ImprintError(f"corrupt store shard {path}: {exc}") from None

    @staticmethod
    def _vectors_of(table: pa.Table) -> np.ndarray:
        """The vector column as one (n, d) array: a zero-copy view of the memory map when the column is one record
        batch (every shard this store writes since issue 15's seventh pass), else one concatenated copy."""
        parts = EmbeddingStore._vector_chunks(table)
        if len(parts) == 1:
            return parts[0][1]
        if not parts:
            dim = table.schema.field("vector").type.list_size
            return np.zeros((0, dim), table.schema.field("vector").type.value_type.to_pandas_dtype())
        return np.concatenate([v for _, v in parts])

    @staticmethod
    def _vector_chunks(table: pa.Table) -> list[tuple[int, np.ndarray]]:
        """``(first row, zero-copy (m, d) view)`` of every non-empty record batch of the vector column."""
        out, r0 = [], 0
        for arr in table.column("vector").chunks:
            if len(arr) == 0:
                continue
            dim = arr.type.list_size
            values = arr.values
            if arr.offset:
                values = values.slice(arr.offset * dim, len(arr) * dim)
            out.append((r0, values.to_numpy(zero_copy_only=True)[:len(arr) * dim].reshape(len(arr), dim)))
            r0 += len(arr)
        return out

    def _release_shards(self, idx: dict) -> None:
        """Drop the resident pages of every shard's memory-mapped vectors (after a pass over them)."""
        from .pixelstore import release_pages

        for t in idx["tables"]:
            for _, v in self._vector_chunks(t):
                release_pages(v)

    def iter_shards(self) -> Iterator[tuple[np.ndarray, list[str], list[str]]]:
        """Yield ``(vectors, paths, hashes)`` per shard; vectors are zero-copy views of the memory map."""
        for s in self.manifest["shards"]:
            t = self._open_shard(s["file"])
            yield self._vectors_of(t), _paths_from_store(t.column("path")), t.column("sha256").to_pylist()

    def _index(self) -> dict:
        """Latest row of every path, vectorised over all shards (cached until the manifest changes).

        Returns a dict with ``tables`` (one memory-mapped table per shard), ``offsets`` int64 [S+1] (global row
        of each shard's first row), ``unique`` (pa.StringArray of the paths in order of first appearance) and
        ``last`` int64 [U] (global row holding each unique path's latest version).
        """
        key = tuple(s["file"] for s in self.manifest["shards"])
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        tables = [self._open_shard(f) for f in key]
        offsets = np.zeros(len(tables) + 1, np.int64)
        offsets[1:] = np.cumsum([t.num_rows for t in tables])
        if tables:
            allp = pa.chunked_array([c for t in tables for c in t.column("path").chunks], pa.string())
            enc = allp.combine_chunks().dictionary_encode()  # codes in order of first appearance
            codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
            unique = enc.dictionary
        else:
            codes, unique = np.zeros(0, np.int64), pa.array([], pa.string())
        n = len(codes)
        rev_first = np.unique(codes[::-1], return_index=True)[1]  # first in reversed order = latest row
        last = (n - 1 - rev_first).astype(np.int64)
        idx = {"tables": tables, "offsets": offsets, "unique": unique, "last": last, "n_rows": n}
        self._cache = (key, idx)
        return idx

    def _column(self, idx: dict, name: str, rows: np.ndarray, fill=None) -> pa.Array:
        """Column ``name`` at global ``rows`` (``fill`` for shards written before the column existed)."""
        chunks = []
        for t in idx["tables"]:
            if name in t.column_names:
                chunks.extend(t.column(name).chunks)
            else:
                chunks.append(pa.array(np.full(t.num_rows, fill, np.int64), pa.int64()))
        col = pa.chunked_array(chunks) if chunks else pa.array([], pa.string())
        return col.take(pa.array(rows, pa.int64()))

    def _gather(self, idx: dict, rows: np.ndarray) -> np.ndarray:
        """Vectors at global ``rows`` (one NumPy gather per record batch of each shard, no copy of a shard)."""
        out = np.empty((len(rows), self.dim), dtype=self._np_dtype())
        shard = np.searchsorted(idx["offsets"], rows, side="right") - 1
        for si, t in enumerate(idx["tables"]):
            sel = np.nonzero(shard == si)[0]
            if not len(sel):
                continue
            local = rows[sel] - idx["offsets"][si]
            parts = self._vector_chunks(t)
            if len(parts) == 1:
                out[sel] = parts[0][1][local]
                continue
            starts = np.array([r0 for r0, _ in parts], np.int64)
            ci = np.searchsorted(starts, local, side="right") - 1
            for c, (r0, v) in enumerate(parts):
                m = np.nonzero(ci == c)[0]
                if len(m):
                    out[sel[m]] = v[local[m] - r0]
        return out

    def keys(self) -> dict[str, str]:
        """Latest ``path -> sha256`` of every row."""
        idx = self._index()
        return dict(zip(_paths_from_store(idx["unique"]), self._column(idx, "sha256", idx["last"]).to_pylist()))

    def stats(self) -> dict[str, tuple[str, int, int]]:
        """Latest ``path -> (sha256, size, mtime_ns)`` of every row (-1 where unknown)."""
        idx = self._index()
        last = idx["last"]
        return dict(zip(_paths_from_store(idx["unique"]),
                        zip(self._column(idx, "sha256", last).to_pylist(),
                            self._column(idx, "size", last, -1).to_pylist(),
                            self._column(idx, "mtime_ns", last, -1).to_pylist())))

    def __len__(self) -> int:
        return len(self._index()["last"])

    def rows_of(self, paths: Sequence[str]) -> np.ndarray:
        """Global row (int64 [N]) of the latest version of each of ``paths``; ImprintError when one is missing."""
        import pyarrow.compute as pc

        idx = self._index()
        pos = pc.index_in(pa.array(_paths_to_store(paths), pa.string()), value_set=idx["unique"])
        if pos.null_count:
            miss = np.asarray(pos.is_null().to_numpy(zero_copy_only=False))
            first = list(paths)[int(np.argmax(miss))]
            raise ImprintError(f"{int(miss.sum())} images are not in store {self.root} (first: {first})")
        return idx["last"][pos.to_numpy(zero_copy_only=False).astype(np.int64)]

    def read(self, paths: Sequence[str] | None = None) -> StoreView:
        """All rows (latest per path, in order of first appearance), or the rows for ``paths`` in that order.

        With a single shard without repeated paths and no selection this is a zero-copy view of the
        memory-mapped file; otherwise the selected rows are gathered with one vectorised copy per shard.
        """
        idx = self._index()
        if paths is None:
            if len(idx["tables"]) == 1 and len(idx["last"]) == idx["n_rows"]:
                t = idx["tables"][0]
                return StoreView(self._vectors_of(t), _paths_from_store(t.column("path")),
                                 t.column("sha256").to_pylist())
            rows = idx["last"]
            wanted = _paths_from_store(idx["unique"])
        else:
            wanted = list(paths)
            rows = self.rows_of(wanted)
        hashes = self._column(idx, "sha256", rows).to_pylist()
        return StoreView(self._gather(idx, rows), wanted, hashes)

    def is_zero_copy(self) -> bool:
        """Whether :meth:`read` returns a zero-copy memory map: at most one shard, its vectors in one record batch,
        no path repeated."""
        idx = self._index()
        return len(idx["tables"]) <= 1 and len(idx["last"]) == idx["n_rows"] \
            and all(len(self._vector_chunks(t)) <= 1 for t in idx["tables"])

    def compact(self, *, sort_paths: bool = False, block: int = 4096) -> None:
        """Rewrite the store as a single shard of one record batch (latest row per path), so :meth:`read` is a
        zero-copy memory map (a shard of several record batches would be concatenated into one copy on every read).

        Rows are in order of first appearance, or sorted by path with ``sort_paths``. Memory: one block of
        ``block`` rows, whatever the store's size: pyarrow writes the batch with an untouched read-only private
        anonymous mapping standing in for the vector values (its pages read as the kernel's zero page, so they cost
        no resident memory), then the values are written into the file at their offset, ``block`` rows at a time,
        and the source shards' pages are released after each block. The file is fsync'ed and renamed only after
        that, so a reader never sees the placeholder.
        """
        idx = self._index()
        single = self.is_zero_copy()
        if single and not sort_paths:
            return
        rows = idx["last"]
        if sort_paths:
            names = _paths_from_store(idx["unique"])  # the folder's sorted order, so images() is zero-copy
            order = np.array(sorted(range(len(names)), key=names.__getitem__), np.int64)
            if single and np.array_equal(order, np.arange(len(order))):
                return
            rows = rows[order]
        schema = self.schema()
        n, dim = len(rows), self.dim
        item = np.dtype(self._np_dtype()).itemsize
        nbytes = n * dim * item
        if nbytes and hasattr(mmap, "MAP_PRIVATE"):
            holder = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, prot=mmap.PROT_READ)
        else:
            holder = np.zeros(nbytes, np.uint8)
        values = pa.Array.from_buffers(self._value_type(), n * dim, [None, pa.py_buffer(holder)])
        batch = pa.RecordBatch.from_arrays(
            [self._column(idx, "path", rows).combine_chunks(), self._column(idx, "sha256", rows).combine_chunks(),
             pa.FixedSizeListArray.from_arrays(values, dim),
             self._column(idx, "size", rows, -1).combine_chunks(),
             self._column(idx, "mtime_ns", rows, -1).combine_chunks()], schema=schema)
        del values

        def fill(tmp: Path) -> None:
            """Write the real vectors over the placeholder's bytes in the (not yet renamed) file."""
            src = pa.memory_map(str(tmp), "r")
            try:
                base = src.read_buffer(1).address
                src.seek(0)
                col = pa.ipc.open_file(src).get_batch(0).column(2)
                child = col.values
                off = child.buffers()[1].address - base + child.offset * item
                del col, child
            finally:
                src.close()
            fd = os.open(tmp, os.O_WRONLY)
            try:
                for s0 in range(0, n, block):
                    mv = memoryview(np.ascontiguousarray(self._gather(idx, rows[s0:s0 + block]))).cast("B")
                    pos, done = off + s0 * dim * item, 0
                    while done < len(mv):
                        done += os.pwrite(fd, mv[done:], pos + done)
                    self._release_shards(idx)
            finally:
                os.close(fd)

        old_entries = list(self.manifest["shards"])
        old = [s["file"] for s in old_entries]
        # The new shard is written and committed in a manifest that lists only it. Killed before that
        # commit, the previous manifest still lists the old, intact shards and the new file is an orphan.
        self.manifest["shards"] = []
        try:
            self._commit_shard([[batch]], n, fill=fill if nbytes else None)
        except BaseException:
            self.manifest["shards"] = old_entries
            raise
        for f in old:
            try:
                (self.root / f).unlink()
            except OSError:
                pass
        self._cache = None  # unmap the old shards now
