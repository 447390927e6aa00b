"""Ingestion: find image files, decode them to grayscale uint8 at a common working size, report bad files.

Policy (recorded in every output's metadata, see :func:`IngestPolicy.describe`):

* **Formats**: PNG, JPEG, WebP, TIFF, BMP (by content, not only by extension); DICOM and NIfTI through
  :mod:`engine.clinical` (modality LUT to Hounsfield units, windows, one image per frame/slice, addressed as
  ``file#N`` when a file holds several). A JPEG file's quality is read from its quantisation table by
  :func:`jpeg_quality_of` (header only) for the processing report.
* **Mode**: 8-bit grayscale is used as is. RGB/RGBA/palette/LA images are converted to luminance
  (ITU-R 601-2, Pillow's ``convert("L")``; alpha is dropped). 16-bit and 32-bit integer or float images are
  scaled linearly from their actual min..max range to 0..255, or through a DICOM-style window
  ``(center, width)`` when the user gives one.
* **Size**: images whose size differs from the working size are resized to it (Pillow's area-averaging
  ``Image.resize(..., reducing_gap=None, resample=BOX)`` when shrinking, bilinear when enlarging);
  ``size_policy="error"`` skips them instead.
* **Limits**: an image declaring more than ``max_pixels`` pixels is skipped *before* its pixels are decoded
  (decompression-bomb guard). Empty files, non-images, truncated files and unreadable files are skipped.
* **Symlinks**: followed only when their target lies inside the input folder; loops are detected.

Nothing is ever unpickled; files are only read.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from . import clinical
from .errors import ImprintError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".jfif", ".webp", ".tif", ".tiff", ".bmp")
DEFAULT_SIZE = (128, 128)
DEFAULT_MAX_PIXELS = 8192 * 8192


def env_memory_bytes() -> int | None:
    """$IMPRINT_MAX_MEMORY_GB in bytes, or None when unset (one clear error when it is not a number)."""
    env = os.environ.get("IMPRINT_MAX_MEMORY_GB")
    if not env:
        return None
    try:
        return int(float(env) * 2**30)
    except ValueError:
        raise ImprintError(f"IMPRINT_MAX_MEMORY_GB must be a number (got {env!r})") from None


def _default_max_memory() -> int:
    """Bytes of decoded images one run may hold in memory: $IMPRINT_MAX_MEMORY_GB, else half of the RAM."""
    env = env_memory_bytes()
    if env is not None:
        return env
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2)
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 8 * 2**30

# Never decode partially written files silently.
ImageFile.LOAD_TRUNCATED_IMAGES = False


@dataclass(frozen=True)
class IngestPolicy:
    """How files become uint8 ``[H, W]`` arrays."""

    size: tuple[int, int] = DEFAULT_SIZE
    size_policy: str = "resize"  # "resize" or "error"
    window: tuple[float, float] | None = None  # (center, width) for >8-bit images
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_memory: int | None = None  # bytes of decoded images held at once; None = $IMPRINT_MAX_MEMORY_GB or RAM/2

    def memory_limit(self) -> int:
        return int(self.max_memory) if self.max_memory is not None else _default_max_memory()

    def describe(self) -> dict:
        return {
            "size": list(self.size),
            "size_policy": self.size_policy,
            "mode_policy": "grayscale luminance; >8-bit scaled by "
            + (f"window center={self.window[0]} width={self.window[1]}" if self.window else "actual min..max range"),
            "max_pixels": self.max_pixels,
            "max_memory_bytes": self.memory_limit(),
        }


@dataclass
class Skip:
    """One file that could not be used, and why."""

    path: str
    reason: str


@dataclass
class ImageSet:
    """Decoded images of one folder.

    Attributes
    ----------
    images : uint8 ndarray, shape (N, H, W)
    paths : list of str, length N
        Paths relative to the folder, ``/``-separated, sorted.
    hashes : list of str, length N
        sha256 of each file's bytes (hex).
    skipped : list of Skip
    root : str
    """

    images: np.ndarray
    paths: list[str]
    hashes: list[str]
    skipped: list[Skip] = field(default_factory=list)
    root: str = ""

    def __len__(self) -> int:
        return len(self.paths)


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def discover(root: str | os.PathLike, *, recursive: bool = True) -> tuple[list[str], list[Skip]]:
    """List image files under ``root``.

    Returns
    -------
    rel_paths : list of str
        Sorted ``/``-separated paths relative to ``root``.
    skipped : list of Skip
        Symlinks leaving the folder, symlink loops and unreadable folders.
    """
    root_path = Path(root)
    if not root_path.exists():
        raise ImprintError(f"folder not found: {root}")
    if not root_path.is_dir():
        raise ImprintError(f"not a folder: {root}")
    real_root = os.path.realpath(root_path)
    found: list[str] = []
    skipped: list[Skip] = []
    seen_dirs: set[str] = set()

    def inside(p: str) -> bool:
        return p == real_root or p.startswith(real_root + os.sep)

    stack = [str(root_path)]
    while stack:
        d = stack.pop()
        rd = os.path.realpath(d)
        if rd in seen_dirs:
            skipped.append(Skip(_rel(d, root_path), "symlink loop"))
            continue
        seen_dirs.add(rd)
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as exc:
            skipped.append(Skip(_rel(d, root_path) or ".", f"unreadable folder ({exc.strerror or exc})"))
            continue
        for e in entries:
            rel = _rel(e.path, root_path)
            try:
                is_link = e.is_symlink()
                if is_link:
                    target = os.path.realpath(e.path)
                    if not inside(target):
                        if _is_image_name(e.name) or clinical.kind_of_name(e.name) or os.path.isdir(e.path):
                            skipped.append(Skip(rel, "symlink points outside the input folder"))
                        continue
                    if not os.path.exists(target):
                        skipped.append(Skip(rel, "broken symlink"))
                        continue
                if e.is_dir(follow_symlinks=True):
                    if recursive:
                        stack.append(e.path)
                elif _is_image_name(e.name):
                    found.append(rel)
                elif clinical.sniff(e.path):
                    found.append(rel)
            except OSError as exc:
                skipped.append(Skip(rel, f"cannot stat ({exc.strerror or exc})"))
    found.sort()
    return _expand_frames(root_path, found, skipped), skipped


def _expand_frames(root: Path, found: list[str], skipped: list[Skip]) -> list[str]:
    """Replace each multi-image clinical file (multi-frame DICOM, NIfTI volume) by its ``file#N`` images."""
    out: list[str] = []
    for rel in found:
        kind = None if _is_image_name(rel) else clinical.sniff(root / rel)
        if kind is None:
            out.append(rel)
            continue
        try:
            n = clinical.frame_count(root / rel, kind)
        except ValueError as exc:
            skipped.append(Skip(rel, str(exc)))
            continue
        out.extend([rel] if n == 1 else [f"{rel}{clinical.FRAME_SEP}{k}" for k in range(n)])
    return out


def _rel(path: str | os.PathLike, root: Path) -> str:
    p, r = os.fspath(path), os.fspath(root)
    if p.startswith(r + os.sep) and os.sep + "." not in p[len(r):] and os.sep * 2 not in p[len(r):]:
        rel = p[len(r) + 1:]  # what relpath gives for paths discover() builds under root, without its cost
    else:  # (os.path.relpath cost ~60 us per file: a second per 20,000 files)
        rel = os.path.relpath(path, root)
    return "" if rel == "." else rel.replace(os.sep, "/")


def _to_uint8(im: Image.Image, window: tuple[float, float] | None) -> np.ndarray:
    mode = im.mode
    if mode == "L":
        # tobytes + frombuffer: the same pixels as np.asarray(im) at a third of its cost (the array interface
        # path costs ~100 us per 128x128 image, more than the copy; benchmarks/bench_pairs.py)
        w, h = im.size
        return np.frombuffer(im.tobytes(), np.uint8).reshape(h, w).copy()
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im).astype(np.float64)
        if window is not None:
            c, w = window
            lo, hi = c - w / 2.0, c + w / 2.0
        else:
            lo, hi = float(arr.min()), float(arr.max())
        if hi <= lo:
            return np.zeros(arr.shape, dtype=np.uint8)
        out = np.clip((arr - lo) * (255.0 / (hi - lo)), 0, 255)
        return np.rint(out).astype(np.uint8)
    if mode in ("1", "P", "PA", "RGB", "RGBA", "RGBX", "LA", "La", "CMYK", "YCbCr", "LAB", "HSV"):
        if mode in ("P", "PA"):
            im = im.convert("RGBA")
        return np.asarray(im.convert("L"), dtype=np.uint8)
    raise ValueError(f"unsupported image mode {mode}")


def _resize(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    if arr.shape == (h, w):
        return arr
    im = Image.fromarray(arr)
    shrinking = arr.shape[0] >= h and arr.shape[1] >= w
    resample = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
    return np.asarray(im.resize((w, h), resample=resample), dtype=np.uint8)


def decode_file(path: str | os.PathLike, policy: IngestPolicy = IngestPolicy()) -> tuple[np.ndarray, str]:
    """Decode one file to uint8 ``[H, W]`` at the policy's size, and return it with its sha256.

    Raises
    ------
    ValueError
        With a short human-readable reason when the file cannot be used.
    """
    p = os.fspath(path)
    base, frame = clinical.split_frame(p) if not os.path.lexists(p) else (p, None)
    if frame is not None or not _is_image_name(base):
        kind = clinical.sniff(base) if os.path.isfile(base) else None
        if kind is not None:
            return clinical.decode_clinical_file(base, kind, policy, frame, _read_bytes)
    data = _read_bytes(p)
    digest = hashlib.sha256(data).hexdigest()
    return decode_bytes(data, policy), digest


def _read_bytes(path: str | os.PathLike) -> bytes:
    """A file's bytes; ValueError with a short reason when it cannot be read or is empty."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except PermissionError:
        raise ValueError("permission denied") from None
    except IsADirectoryError:
        raise ValueError("is a folder") from None
    except OSError as exc:
        raise ValueError(f"cannot read ({exc.strerror or exc})") from None
    if not data:
        raise ValueError("empty file")
    return data


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_png_decode = None  # imagecodecs.png_decode once looked up; False when imagecodecs is not installed


def _fast_png(data: bytes, policy: IngestPolicy) -> np.ndarray | None:
    """Pixels of an 8-bit grayscale, non-interlaced, still PNG already at the working size, or None.

    Such files (the ImageCLEF images and what generators write) are decoded by libpng through ``imagecodecs``
    (the ``cpu``/``gpu`` extras), which releases the GIL for the whole decode, so the decode thread pool scales
    with the cores; Pillow holds the GIL for its Python-level chunk parsing (~100 us per 128x128 image).  Read
    from the 33-byte header: signature, IHDR, bit depth 8, colour type 0, no interlacing; no animation chunk;
    the size equals the working size and is under ``max_pixels``.  Anything else -- another format or PNG
    flavour, imagecodecs missing, or any complaint of libpng (truncated data, bad CRC, ...) -- returns None
    and Pillow decodes the file as before (same pixels, same skip reasons).
    """
    global _png_decode
    if len(data) < 33 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        return None
    w = int.from_bytes(data[16:20], "big")
    h = int.from_bytes(data[20:24], "big")
    if data[24] != 8 or data[25] != 0 or data[28] != 0 or (h, w) != tuple(policy.size) or w * h > policy.max_pixels:
        return None
    if b"acTL" in data:  # APNG: Pillow's frame-0 rule decides
        return None
    if _png_decode is None:
        try:
            from imagecodecs import png_decode
        except Exception:  # not installed (or broken): Pillow only
            png_decode = False
        _png_decode = png_decode
    if _png_decode is False:
        return None
    try:
        arr = _png_decode(data)
    except Exception:  # libpng's error: Pillow gives the skip reason
        return None
    if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8 or arr.shape != (h, w):
        return None
    return np.ascontiguousarray(arr)


def decode_bytes(data: bytes, policy: IngestPolicy = IngestPolicy()) -> np.ndarray:
    """Decode encoded image bytes to uint8 ``[H, W]`` at the policy's size (see :func:`decode_file`)."""
    import io

    if not data:
        raise ValueError("empty file")
    kind = clinical.kind_of_bytes(data[:352])
    if kind is not None:
        vol = (clinical.decode_dicom(io.BytesIO(data), policy) if kind == "dicom"
               else clinical._decode_nifti_bytes("<bytes>", data, policy))
        if len(vol) != 1:
            raise ValueError(f"file holds {len(vol)} images: read it from its folder (images PATH#N)")
        return vol[0]
    fast = _fast_png(data, policy)
    if fast is not None:
        return fast
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w <= 0 or h <= 0:
                raise ValueError("image has no pixels")
            if w * h > policy.max_pixels:
                raise ValueError(f"too large ({w}x{h} pixels > limit {policy.max_pixels})")
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)
            im.load()
            arr = _to_uint8(im, policy.window)
    except ValueError:
        raise
    except UnidentifiedImageError:
        raise ValueError("not an image (unrecognised format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ValueError("too large (decompression bomb guard)") from None
    except (OSError, SyntaxError, EOFError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "truncated" in msg.lower() or isinstance(exc, EOFError):
            raise ValueError(f"truncated or corrupt ({msg})") from None
        raise ValueError(f"corrupt image ({msg})") from None
    except Exception as exc:  # any other decoder failure on hostile bytes is a skip, never a crash
        raise ValueError(f"cannot decode ({type(exc).__name__})") from None
    if arr.ndim != 2:
        raise ValueError(f"unsupported image layout {arr.shape}")
    if arr.shape != tuple(policy.size):
        if policy.size_policy == "error":
            raise ValueError(f"size {arr.shape[1]}x{arr.shape[0]} differs from working size "
                             f"{policy.size[1]}x{policy.size[0]}")
        arr = _resize(arr, policy.size)
    return np.ascontiguousarray(arr)


def decode_workers() -> int:
    """Threads for :func:`decode_files`: ``$IMPRINT_DECODE_THREADS``, else the CPUs this process may use."""
    env = os.environ.get("IMPRINT_DECODE_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise ImprintError(f"IMPRINT_DECODE_THREADS must be an integer (got {env!r})") from None
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def decode_files(root: str | os.PathLike, rel_paths: Sequence[str], policy: IngestPolicy = IngestPolicy(), *,
                 workers: int | None = None, window: int = 256
                 ) -> Iterator[tuple[str, np.ndarray | None, str | None, str | None]]:
    """Decode files on a thread pool (Pillow's decoders and hashlib release the GIL), in input order.

    At most ``window`` files are in flight, so memory stays bounded whatever the number of files.

    Parameters
    ----------
    root : path
    rel_paths : sequence of str
        Paths relative to ``root``.
    policy : IngestPolicy
    workers : int or None
        Threads (default :func:`decode_workers`); 1 decodes serially in this thread.
    window : int
        Files submitted ahead of the one being yielded.

    Yields
    ------
    rel : str
    image : uint8 ndarray (H, W) or None
        None when the file was skipped.
    sha256 : str or None
    reason : str or None
        Why the file was skipped (None when decoded).
    """
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    root = Path(root)

    def one(rel):
        try:
            arr, digest = decode_file(root / rel, policy)
        except ValueError as exc:
            return rel, None, None, str(exc)
        return rel, arr, digest, None

    workers = decode_workers() if workers is None else max(1, int(workers))
    if workers == 1 or len(rel_paths) < 2:
        for rel in rel_paths:
            yield one(rel)
        return
    # tasks of `chunk` files each (a task per file costs more in scheduling than a small PNG takes to decode)
    chunk = max(1, min(32, len(rel_paths) // (4 * workers)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="imprint-decode") as pool:
        pending: deque = deque()
        try:
            for s in range(0, len(rel_paths), chunk):
                pending.append(pool.submit(lambda rs: [one(r) for r in rs], rel_paths[s:s + chunk]))
                if len(pending) * chunk >= window:
                    yield from pending.popleft().result()
            while pending:
                yield from pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()


def jpeg_quality_of(path: str | os.PathLike) -> int | None:
    """IJG quality (1-100) of a JPEG file from its luminance quantisation table; None for other files.

    Only the header is read (no pixels are decoded); an unreadable file gives None.  See
    :func:`engine.processing.jpeg_quality_from_tables`.
    """
    from .processing import jpeg_quality_from_tables

    try:
        with Image.open(path) as im:
            if im.format != "JPEG":
                return None
            return jpeg_quality_from_tables(getattr(im, "quantization", None))
    except Exception:  # unreadable / hostile file: no quality, never a crash
        return None


def iter_batches(root: str | os.PathLike, rel_paths: Sequence[str], batch_size: int = 256,
                 policy: IngestPolicy = IngestPolicy(),
                 on_skip: Callable[[Skip], None] | None = None) -> Iterator[tuple[np.ndarray, list[str], list[str]]]:
    """Decode files in batches with bounded memory.

    Yields
    ------
    images : uint8 ndarray (b, H, W)
    paths : list of str
    hashes : list of str
    """
    root = Path(root)
    h, w = policy.size
    buf = np.empty((batch_size, h, w), dtype=np.uint8)
    paths: list[str] = []
    hashes: list[str] = []
    for rel, arr, digest, reason in decode_files(root, rel_paths, policy):
        if arr is None:
            if on_skip is not None:
                on_skip(Skip(rel, reason))
            continue
        buf[len(paths)] = arr
        paths.append(rel)
        hashes.append(digest)
        if len(paths) == batch_size:
            yield buf.copy(), paths, hashes
            paths, hashes = [], []
    if paths:
        yield buf[: len(paths)].copy(), paths, hashes


def load_folder(root: str | os.PathLike, policy: IngestPolicy = IngestPolicy(), *, recursive: bool = True,
                progress: Callable[[int], None] | None = None, exclude: Iterable[str] = (),
                require_images: bool = True, label: str = "input") -> ImageSet:
    """Decode every image under ``root`` (recursively).

    Bad files are skipped and listed in ``ImageSet.skipped``. Raises :class:`ImprintError` when the folder
    is missing or (with ``require_images``) holds no readable image.
    """
    rel_paths, skipped = discover(root, recursive=recursive)
    excl = tuple(e.rstrip("/") + "/" for e in exclude)
    if excl:
        rel_paths = [p for p in rel_paths if not p.startswith(excl)]
    need = len(rel_paths) * policy.size[0] * policy.size[1]
    if need > policy.memory_limit():
        raise ImprintError(
            f"{label} folder {root}: {len(rel_paths)} images of {policy.size[1]}x{policy.size[0]} need "
            f"{need / 2**30:.1f} GiB in memory, over the limit of {policy.memory_limit() / 2**30:.1f} GiB "
            f"(IMPRINT_MAX_MEMORY_GB); raise that limit or use a smaller --size (the generated folder of "
            f"`imprint membership` is streamed from a pixel store and `imprint pairs` streams the real images)")
    h, w = policy.size
    arr = np.empty((len(rel_paths), h, w), dtype=np.uint8)  # filled in place: no per-batch copies, no concatenate
    paths: list[str] = []
    hashes: list[str] = []
    done = 0
    for rel, img, digest, reason in decode_files(root, rel_paths, policy):
        done += 1
        if img is None:
            skipped.append(Skip(rel, reason))
        else:
            arr[len(paths)] = img
            paths.append(rel)
            hashes.append(digest)
        if progress is not None and done % 512 == 0:
            progress(512)
    if progress is not None and done % 512:
        progress(done % 512)
    if require_images and not paths:
        why = f" ({len(skipped)} files skipped)" if skipped else ""
        raise ImprintError(f"no readable images in {label} folder {root}{why}")
    if len(paths) < len(rel_paths):
        arr = arr[: len(paths)].copy()  # skipped files: do not keep their rows
    return ImageSet(arr, paths, hashes, skipped, str(root))
