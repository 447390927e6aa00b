"""Ingestion: find image files, decode them to grayscale uint8 at a common working size, report bad files.

Policy (recorded in every output's metadata, see :func:`IngestPolicy.describe`):

* **Formats**: PNG, JPEG, WebP, TIFF, BMP (by content, not only by extension). A JPEG file's quality is read
  from its quantisation table by :func:`jpeg_quality_of` (header only) for the processing report.
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

from .errors import ImprintError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".jfif", ".webp", ".tif", ".tiff", ".bmp")
DEFAULT_SIZE = (128, 128)
DEFAULT_MAX_PIXELS = 8192 * 8192


def _default_max_memory() -> int:
    """Bytes of decoded images one run may hold in memory: $IMPRINT_MAX_MEMORY_GB, else half of the RAM."""
    env = os.environ.get("IMPRINT_MAX_MEMORY_GB")
    if env:
        try:
            return int(float(env) * 2**30)
        except ValueError:
            raise ImprintError(f"IMPRINT_MAX_MEMORY_GB must be a number (got {env!r})") from None
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
                        if _is_image_name(e.name) or os.path.isdir(e.path):
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
            except OSError as exc:
                skipped.append(Skip(rel, f"cannot stat ({exc.strerror or exc})"))
    found.sort()
    return found, skipped


def _rel(path: str | os.PathLike, root: Path) -> str:
    rel = os.path.relpath(path, root)
    return "" if rel == "." else rel.replace(os.sep, "/")


def _to_uint8(im: Image.Image, window: tuple[float, float] | None) -> np.ndarray:
    mode = im.mode
    if mode == "L":
        return np.asarray(im, dtype=np.uint8)
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
    digest = hashlib.sha256(data).hexdigest()
    return decode_bytes(data, policy), digest


def decode_bytes(data: bytes, policy: IngestPolicy = IngestPolicy()) -> np.ndarray:
    """Decode encoded image bytes to uint8 ``[H, W]`` at the policy's size (see :func:`decode_file`)."""
    import io

    if not data:
        raise ValueError("empty file")
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
    for rel in rel_paths:
        try:
            arr, digest = decode_file(root / rel, policy)
        except ValueError as exc:
            if on_skip is not None:
                on_skip(Skip(rel, str(exc)))
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
            f"(IMPRINT_MAX_MEMORY_GB); use a smaller --size, `imprint pairs` (streams the real images) or "
            f"--executor ray")
    images: list[np.ndarray] = []
    paths: list[str] = []
    hashes: list[str] = []
    for batch, bp, bh in iter_batches(root, rel_paths, 512, policy, on_skip=skipped.append):
        images.append(batch)
        paths.extend(bp)
        hashes.extend(bh)
        if progress is not None:
            progress(len(bp))
    if require_images and not paths:
        why = f" ({len(skipped)} files skipped)" if skipped else ""
        raise ImprintError(f"no readable images in {label} folder {root}{why}")
    h, w = policy.size
    arr = np.concatenate(images) if images else np.empty((0, h, w), dtype=np.uint8)
    return ImageSet(arr, paths, hashes, skipped, str(root))
