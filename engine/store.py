"""Embedding stores: sharded Arrow IPC files plus a JSON manifest, read back memory-mapped and zero-copy.

Layout of a store folder::

    STORE/manifest.json          # the commit point: lists finished shards and the backbone that made them
    STORE/shard-000000.arrow     # Arrow IPC *file* format, uncompressed (so it can be memory-mapped)
    STORE/shard-000001.arrow
    ...

Schema of every shard (readable by pyarrow, pandas, polars and DuckDB without imprint)::

    path    string                       # image path relative to the embedded folder, '/'-separated
    sha256  string                       # sha256 of the image file's bytes (hex)
    vector  fixed_size_list<float32>[d]  # the embedding

The schema metadata and the manifest both record the backbone (name, version, sha256 of its ONNX file,
preprocessing) and the ingestion policy. A store refuses rows from any other backbone.

Crash safety: a shard is written to a temporary name, fsync'ed and atomically renamed; only then is the
manifest rewritten (temporary name, fsync, rename). A shard that is on disk but not in the manifest (a run
killed between the two renames) is ignored and removed on the next open, so its rows are redone exactly once.
When the same ``path`` appears in several shards (an image changed between runs), the row of the newest
shard wins.
"""
from __future__ import annotations

import json
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


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temporary file in the same folder, fsync, rename."""
    path = Path(path)
    remove_stale_tmp(path)
    tmp = tmp_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


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


class EmbeddingStore:
    """A folder of Arrow shards holding one embedding per image.

    Parameters
    ----------
    root : path
        The store folder (created by :meth:`create` or opened by :meth:`open`).
    """

    def __init__(self, root: str | os.PathLike, manifest: dict):
        self.root = Path(root)
        self.manifest = manifest

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
            "format": "imprint-embedding-store",
            "format_version": FORMAT_VERSION,
            "backbone": backbone,
            "dim": int(dim),
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
        if manifest.get("format") != "imprint-embedding-store":
            raise ImprintError(f"not an imprint store manifest: {mpath}")
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
            [("path", pa.string()), ("sha256", pa.string()), ("vector", pa.list_(pa.float32(), self.dim))],
            metadata=meta,
        )

    # ------------------------------------------------------------------ writing
    def append(self, paths: Sequence[str], hashes: Sequence[str], vectors: np.ndarray) -> str:
        """Write one shard atomically and commit it to the manifest. Returns the shard file name."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ImprintError(f"vectors must be (n, {self.dim}); got {vectors.shape}")
        if not (len(paths) == len(hashes) == vectors.shape[0]):
            raise ImprintError("paths, hashes and vectors differ in length")
        flat = pa.array(vectors.reshape(-1), type=pa.float32())
        table = pa.table(
            {
                "path": pa.array(list(paths), type=pa.string()),
                "sha256": pa.array(list(hashes), type=pa.string()),
                "vector": pa.FixedSizeListArray.from_arrays(flat, self.dim),
            },
            schema=self.schema(),
        )
        seq = int(self.manifest["next_shard"])
        name = f"shard-{seq:06d}.arrow"
        sink = pa.BufferOutputStream()
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        atomic_write_bytes(self.root / name, sink.getvalue().to_pybytes())
        self.manifest["shards"].append({"file": name, "rows": int(vectors.shape[0])})
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
        col = table.column("vector")
        if col.num_chunks != 1:
            col = pa.chunked_array([pa.concat_arrays(col.chunks)])
        arr = col.chunk(0)
        dim = arr.type.list_size
        values = arr.values
        if arr.offset:
            values = values.slice(arr.offset * dim, len(arr) * dim)
        flat = values.to_numpy(zero_copy_only=True)
        return flat.reshape(len(arr), dim)

    def iter_shards(self) -> Iterator[tuple[np.ndarray, list[str], list[str]]]:
        """Yield ``(vectors, paths, hashes)`` per shard; vectors are zero-copy views of the memory map."""
        for s in self.manifest["shards"]:
            t = self._open_shard(s["file"])
            yield self._vectors_of(t), t.column("path").to_pylist(), t.column("sha256").to_pylist()

    def keys(self) -> dict[str, str]:
        """Latest ``path -> sha256`` of every row."""
        out: dict[str, str] = {}
        for s in self.manifest["shards"]:
            t = self._open_shard(s["file"]).select(["path", "sha256"])
            out.update(zip(t.column("path").to_pylist(), t.column("sha256").to_pylist()))
        return out

    def __len__(self) -> int:
        return len(self.keys())

    def read(self, paths: Sequence[str] | None = None) -> StoreView:
        """All rows (latest per path), or the rows for ``paths`` in that order.

        With a single shard and no selection this is a zero-copy view of the memory-mapped file.
        """
        shards = list(self.iter_shards())
        if len(shards) == 1 and paths is None:
            v, p, h = shards[0]
            if len(set(p)) == len(p):
                return StoreView(v, p, h)
        where: dict[str, tuple[int, int]] = {}
        for si, (_, p, _) in enumerate(shards):
            for ri, path in enumerate(p):
                where[path] = (si, ri)
        wanted = list(where) if paths is None else list(paths)
        missing = [p for p in wanted if p not in where]
        if missing:
            raise ImprintError(f"{len(missing)} images are not in store {self.root} (first: {missing[0]})")
        out = np.empty((len(wanted), self.dim), dtype=np.float32)
        hashes = []
        for i, path in enumerate(wanted):
            si, ri = where[path]
            out[i] = shards[si][0][ri]
            hashes.append(shards[si][2][ri])
        return StoreView(out, wanted, hashes)

    def compact(self) -> None:
        """Rewrite the store as a single shard (latest row per path), so :meth:`read` is zero-copy."""
        if len(self.manifest["shards"]) <= 1:
            return
        view = self.read()
        old = [s["file"] for s in self.manifest["shards"]]
        # append() writes the new shard, then commits a manifest that lists only it. Killed before that
        # commit, the previous manifest still lists the old, intact shards and the new file is an orphan.
        self.manifest["shards"] = []
        self.append(view.paths, view.hashes, np.array(view.vectors))
        for f in old:
            try:
                (self.root / f).unlink()
            except OSError:
                pass
