"""Clinical inputs: DICOM (pydicom) and NIfTI (nibabel) volumes as uint8 slices.

Policy (see also :mod:`engine.ingest`):

* **Recognition**: DICOM by its ``DICM`` preamble (any file name) or a ``.dcm``/``.dicom``/``.dic`` extension;
  NIfTI by ``.nii``/``.nii.gz`` or the NIfTI-1/2 magic. DICOM files without pixel data (DICOMDIR, reports) are
  skipped with the reason.
* **Frames**: one image per slice. A multi-frame DICOM file or a NIfTI volume ``vol.nii.gz`` of N slices becomes
  the images ``vol.nii.gz#0`` .. ``vol.nii.gz#N-1`` (0-based; NIfTI slices from inferior to superior, after
  reorientation to the closest LPS axes so each slice is shown as a radiologist sees an axial DICOM slice).
  A single-frame file keeps its plain path. A series folder is a folder of single-frame files.
* **Intensities**: DICOM stored values go through the modality LUT (RescaleSlope/RescaleIntercept, per frame
  for enhanced multi-frame files) to Hounsfield units for CT; NIfTI values are read with their scl_slope/inter.
  Then, in order of precedence: the user's window ``(center, width)`` (``--window C,W`` or a preset of
  :data:`WINDOW_PRESETS`), the file's own VOI LUT (table) or WindowCenter/WindowWidth (NIfTI: cal_min/cal_max),
  else the file's min..max range. A window maps ``center - width/2 .. center + width/2`` linearly onto 0..255
  (clipped, rounded). MONOCHROME1 is inverted; colour DICOM is converted to luminance.
* **Compressed DICOM**: whatever pydicom can decode here (uncompressed, deflate and RLE natively; JPEG baseline
  and JPEG 2000 through Pillow; with the ``clinical`` extra, python-gdcm adds JPEG lossless/extended, JPEG-LS,
  and pylibjpeg-openjpeg adds HTJ2K). Any other transfer syntax is a per-file skip naming the syntax.
* **Privacy**: no DICOM or NIfTI header value (patient name, ID, birth date, or any other) is ever returned,
  logged or put into an error message: skip reasons are fixed phrases, and pydicom's warnings are silenced
  while reading because they can quote element values.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import threading
import warnings
from typing import Callable

import numpy as np

DICOM_EXTENSIONS = (".dcm", ".dicom", ".dic")
NIFTI_EXTENSIONS = (".nii", ".nii.gz")
CLINICAL_EXTENSIONS = DICOM_EXTENSIONS + NIFTI_EXTENSIONS

#: Named CT windows ``(center, width)`` in Hounsfield units.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (40.0, 400.0),
    "bone": (400.0, 1800.0),
}

FRAME_SEP = "#"

# pydicom can log element values (e.g. "Invalid value for VR PN: ..."); keep its log out of ours.
logging.getLogger("pydicom").setLevel(logging.CRITICAL)


# ---------------------------------------------------------------------------------------------- recognition
def kind_of_name(name: str) -> str | None:
    """``"dicom"``, ``"nifti"`` or None from a file name's extension."""
    low = name.lower()
    if low.endswith(DICOM_EXTENSIONS):
        return "dicom"
    if low.endswith(NIFTI_EXTENSIONS):
        return "nifti"
    return None


def kind_of_bytes(head: bytes) -> str | None:
    """``"dicom"``, ``"nifti"`` or None from a file's first 352 bytes (DICM preamble, NIfTI-1/2 magic)."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return "nifti"
    if len(head) >= 8 and head[4:8] in (b"n+2\x00", b"ni2\x00"):
        return "nifti"
    return None


def sniff(path: str | os.PathLike) -> str | None:
    """Clinical kind of a file by content first, then by extension; None for anything else."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(352)
    except OSError:
        head = b""
    k = kind_of_bytes(head)
    if k is None and head[:2] == b"\x1f\x8b" and str(path).lower().endswith(".nii.gz"):
        k = "nifti"
    return k or kind_of_name(os.fspath(path))


def split_frame(path: str) -> tuple[str, int | None]:
    """``"dir/vol.nii.gz#12"`` -> ``("dir/vol.nii.gz", 12)``; a path without a frame suffix -> ``(path, None)``."""
    base, sep, tail = path.rpartition(FRAME_SEP)
    if sep and tail.isdigit() and base:
        return base, int(tail)
    return path, None


def frame_hash(file_digest: str, frame: int) -> str:
    """The sha256 (hex) identifying one frame of a file: changes whenever the file's bytes change."""
    return hashlib.sha256(f"{file_digest}{FRAME_SEP}{frame}".encode()).hexdigest()


# ---------------------------------------------------------------------------------------------- windows
def window_to_uint8(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map ``lo..hi`` linearly onto 0..255 (clipped, rounded to nearest).

    Parameters
    ----------
    x : float ndarray, any shape
    lo, hi : float
        ``center - width/2`` and ``center + width/2``.

    Returns
    -------
    uint8 ndarray, same shape as ``x``
    """
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros(x.shape, dtype=np.uint8)
    out = np.asarray(x, dtype=np.float64) - lo   # a new array: the in-place steps below never touch ``x``
    out *= 255.0 / (hi - lo)
    np.clip(out, 0, 255, out=out)
    np.rint(out, out=out)
    out[np.isnan(out)] = 0.0
    return out.astype(np.uint8)


def parse_window(text: str) -> tuple[float, float]:
    """``"lung"`` / ``"-600,1500"`` -> ``(center, width)``; ValueError with a one-line reason otherwise."""
    key = text.strip().lower()
    if key in WINDOW_PRESETS:
        return WINDOW_PRESETS[key]
    try:
        c, w = (float(v) for v in key.split(","))
    except ValueError:
        raise ValueError(f"--window must be CENTER,WIDTH or one of {', '.join(WINDOW_PRESETS)} "
                         f"(got {text!r})") from None
    if not (np.isfinite(c) and np.isfinite(w)):
        raise ValueError("--window values must be finite numbers")
    if w <= 0:
        raise ValueError("--window width must be positive")
    return c, w


# ---------------------------------------------------------------------------------------------- DICOM
def _ts_name(ds) -> str:
    try:
        ts = ds.file_meta.TransferSyntaxUID
        return f"{ts.name} ({ts})" if ts.name != str(ts) else str(ts)
    except Exception:  # noqa: BLE001 - missing or odd file meta
        return "unknown transfer syntax"


def _read_dicom(src, *, header_only: bool, force: bool):
    import pydicom
    from pydicom.errors import InvalidDicomError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pydicom.dcmread(src, stop_before_pixels=header_only, force=force)
        except InvalidDicomError:
            raise ValueError("not a DICOM file") from None
        except (EOFError, OSError, ValueError, KeyError, TypeError, AttributeError, IndexError, OverflowError) as exc:
            raise ValueError(f"truncated or corrupt DICOM ({type(exc).__name__})") from None


def _num(ds, name: str, default):
    try:
        v = getattr(ds, name, None)
        if v is None or v == "":
            return default
        if hasattr(v, "__len__") and not isinstance(v, (str, bytes)):
            v = v[0]
        return float(v)
    except (TypeError, ValueError, IndexError):
        return default


def dicom_frame_count(path: str | os.PathLike, *, force: bool = False) -> int:
    """Number of images in a DICOM file (1 for single-frame), read from its header only.

    Raises ValueError (fixed reason, no header values) when the file is not a usable image.
    """
    ds = _read_dicom(path, header_only=True, force=force)
    if "Rows" not in ds or "Columns" not in ds:
        raise ValueError("DICOM file without an image (no Rows/Columns: e.g. DICOMDIR or a report)")
    n = int(_num(ds, "NumberOfFrames", 1) or 1)
    return max(n, 1)


def _frame_item(ds, seq_name: str, i: int, item_name: str):
    """Functional-group item ``item_name`` of frame ``i`` (per-frame first, then shared), or None."""
    for group, idx in (("PerFrameFunctionalGroupsSequence", i), ("SharedFunctionalGroupsSequence", 0)):
        seq = getattr(ds, group, None)
        if seq is None or len(seq) <= idx:
            continue
        inner = getattr(seq[idx], seq_name, None)
        if inner is not None and len(inner) and item_name in inner[0]:
            return inner[0]
    return None


def _rescale(ds, i: int) -> tuple[float, float]:
    item = _frame_item(ds, "PixelValueTransformationSequence", i, "RescaleSlope")
    src = item if item is not None else ds
    return _num(src, "RescaleSlope", 1.0), _num(src, "RescaleIntercept", 0.0)


def _file_window(ds, i: int):
    """The file's own window for frame i: ("lut", lut_values, first_mapped, bits) or ("window", c, w, fn) or None."""
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        return ("lut", None, None, None)
    item = _frame_item(ds, "FrameVOILUTSequence", i, "WindowCenter")
    src = item if item is not None else ds
    c, w = _num(src, "WindowCenter", None), _num(src, "WindowWidth", None)
    if c is not None and w is not None and w > 0:
        fn = str(getattr(src, "VOILUTFunction", "LINEAR") or "LINEAR").upper()
        return ("window", c, w, fn)
    return None


def decode_dicom(src, policy, *, force: bool = False) -> np.ndarray:
    """Decode every frame of a DICOM file to uint8 ``[F, H, W]`` at the policy's size.

    Parameters
    ----------
    src : path or binary file object
    policy : engine.ingest.IngestPolicy
        ``window`` (center, width in Hounsfield units for CT), ``size``, ``size_policy``, ``max_pixels``.

    Raises
    ------
    ValueError
        A fixed, metadata-free reason when the file cannot be used.
    """
    ds = _read_dicom(src, header_only=False, force=force)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ValueError("DICOM file without pixel data")
    rows, cols = int(_num(ds, "Rows", 0)), int(_num(ds, "Columns", 0))
    n = max(int(_num(ds, "NumberOfFrames", 1) or 1), 1)
    spp = int(_num(ds, "SamplesPerPixel", 1))
    if rows <= 0 or cols <= 0:
        raise ValueError("image has no pixels")
    if rows * cols > policy.max_pixels:
        raise ValueError(f"too large ({cols}x{rows} pixels > limit {policy.max_pixels})")
    if n * rows * cols * spp * 8 > policy.memory_limit():
        raise ValueError(f"too large ({n} frames of {cols}x{rows} exceed the memory limit)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            arr = ds.pixel_array
        except NotImplementedError:
            raise ValueError(f"compressed DICOM transfer syntax {_ts_name(ds)} has no decoder installed "
                             f"(pip install 'imprint[clinical]' adds python-gdcm and pylibjpeg)") from None
        except RuntimeError:
            raise ValueError(f"cannot decode DICOM pixel data with transfer syntax {_ts_name(ds)} "
                             f"(missing or failing decoder; pip install 'imprint[clinical]')") from None
        except Exception as exc:  # noqa: BLE001 - hostile bytes: a skip, never a crash or a leak
            raise ValueError(f"truncated or corrupt DICOM pixel data ({type(exc).__name__})") from None
    arr = np.asarray(arr)
    # to [F, rows, cols] or [F, rows, cols, 3]
    if spp == 1:
        arr = arr.reshape((-1, rows, cols)) if arr.size == n * rows * cols else None
    else:
        arr = arr.reshape((-1, rows, cols, spp)) if arr.size == n * rows * cols * spp else None
    if arr is None:
        raise ValueError("DICOM pixel data does not match its declared size")
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if spp != 1:
        return _colour_frames(arr, photometric, ds, policy)
    frames = []
    hu = np.empty((arr.shape[0], rows, cols), dtype=np.float64)
    for i in range(arr.shape[0]):
        slope, inter = _rescale(ds, i)
        hu[i] = arr[i].astype(np.float64) * slope + inter
    if "ModalityLUTSequence" in ds and "PixelValueTransformationSequence" not in ds:
        from pydicom.pixels import apply_modality_lut

        hu = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64).reshape(hu.shape)
    full_range: list = []   # the file's min..max, computed only when a frame needs it

    def file_range() -> tuple[float, float]:
        if not full_range:
            full_range.extend((float(np.nanmin(hu)), float(np.nanmax(hu))) if hu.size else (0.0, 0.0))
        return full_range[0], full_range[1]

    for i in range(hu.shape[0]):
        if policy.window is not None:
            c, w = policy.window
            out = window_to_uint8(hu[i], c - w / 2.0, c + w / 2.0)
        else:
            fw = _file_window(ds, i)
            if fw is None:
                out = window_to_uint8(hu[i], *file_range())
            elif fw[0] == "lut":
                out = _voi_lut(arr[i], ds)
            else:
                _, c, w, fn = fw
                if fn == "SIGMOID":
                    out = np.rint(255.0 / (1.0 + np.exp(-4.0 * (hu[i] - c) / w))).astype(np.uint8)
                else:
                    out = window_to_uint8(hu[i], c - w / 2.0, c + w / 2.0)
        if photometric == "MONOCHROME1":
            out = 255 - out
        frames.append(out)
    return _fit_frames(frames, policy)


def _voi_lut(stored: np.ndarray, ds) -> np.ndarray:
    """Apply the file's first VOI LUT table and scale its output range to 0..255."""
    from pydicom.pixels import apply_voi_lut

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pydicom.pixels import apply_modality_lut

        mod = apply_modality_lut(stored, ds)
        out = np.asarray(apply_voi_lut(mod, ds, index=0, prefer_lut=True), dtype=np.float64)
    item = ds.VOILUTSequence[0]
    try:
        bits = int(item.LUTDescriptor[2])
    except Exception:  # noqa: BLE001
        bits = 16
    raw = getattr(item, "LUTData", None)
    if isinstance(raw, (bytes, bytearray)):
        lut = np.frombuffer(bytes(raw)[: len(raw) // 2 * 2], dtype="<u2").astype(np.float64)
    else:
        lut = np.asarray(raw if raw is not None else [0, 1], dtype=np.float64).ravel()
    lut = lut if lut.size else np.array([0.0, 1.0])
    lo, hi = float(lut.min()), float(lut.max())
    if hi <= lo:
        lo, hi = 0.0, float(2**bits - 1)
    return window_to_uint8(out, lo, hi)


def _colour_frames(arr: np.ndarray, photometric: str, ds, policy) -> np.ndarray:
    from PIL import Image

    if photometric.startswith("YBR"):
        from pydicom.pixels import convert_color_space

        arr = convert_color_space(arr, photometric, "RGB")
    frames = []
    for f in arr:
        if f.dtype != np.uint8:
            f = window_to_uint8(f.astype(np.float64), float(f.min()), float(f.max()))
        frames.append(np.asarray(Image.fromarray(np.ascontiguousarray(f[..., :3]), "RGB").convert("L"),
                                 dtype=np.uint8))
    return _fit_frames(frames, policy)


def _fit_frames(frames: list[np.ndarray], policy) -> np.ndarray:
    from .ingest import _resize

    h, w = policy.size
    out = np.empty((len(frames), h, w), dtype=np.uint8)
    for i, f in enumerate(frames):
        if f.shape != (h, w):
            if policy.size_policy == "error":
                raise ValueError(f"size {f.shape[1]}x{f.shape[0]} differs from working size {w}x{h}")
            f = _resize(np.ascontiguousarray(f), (h, w))
        out[i] = f
    return out


# ---------------------------------------------------------------------------------------------- NIfTI
def _load_nifti(path: str | os.PathLike):
    import nibabel as nib

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return nib.load(os.fspath(path))
        except Exception as exc:  # noqa: BLE001 - ImageFileError, gzip errors, ...
            raise ValueError(f"not a readable NIfTI volume ({type(exc).__name__})") from None


def _spatial_shape(img) -> tuple[int, ...]:
    shape = tuple(int(s) for s in img.shape)
    if len(shape) > 3 and all(s == 1 for s in shape[3:]):
        shape = shape[:3]
    if len(shape) == 2:
        shape = shape + (1,)
    if len(shape) != 3:
        raise ValueError(f"NIfTI volume with {len(shape)} dimensions (only 2-D and 3-D volumes are read)")
    return shape


def nifti_frame_count(path: str | os.PathLike) -> int:
    """Number of axial slices of a NIfTI volume, from its header only."""
    img = _load_nifti(path)
    shape = _spatial_shape(img)
    ornt = _lps_axes(img)
    if ornt is None:
        return shape[2]
    return shape[int(np.flatnonzero(ornt[:, 0] == 2)[0])]


def _lps_axes(img):
    import nibabel as nib

    try:
        return nib.orientations.io_orientation(img.affine)
    except Exception:  # noqa: BLE001 - degenerate affine: keep voxel order
        return None


def decode_nifti(src, policy) -> np.ndarray:
    """Decode a NIfTI volume to its axial slices, uint8 ``[F, H, W]`` at the policy's size.

    ``src`` is a path or a loaded nibabel image.

    The volume is reoriented to the closest LPS axes, so slice ``k`` (inferior to superior) shows the
    patient's anterior at the top and the patient's right on the image's left, like an axial DICOM slice.
    """
    import nibabel as nib

    img = _load_nifti(src) if isinstance(src, (str, os.PathLike)) else src
    shape = _spatial_shape(img)
    if shape[0] * shape[1] > policy.max_pixels and shape[0] * shape[2] > policy.max_pixels:
        raise ValueError(f"too large ({shape} voxels)")
    if int(np.prod(shape)) * 8 > policy.memory_limit():
        raise ValueError(f"too large ({'x'.join(map(str, shape))} voxels exceed the memory limit)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            data = np.asarray(img.dataobj, dtype=np.float64).reshape(shape)
        except Exception as exc:  # noqa: BLE001 - truncated gzip, short file, ...
            raise ValueError(f"truncated or corrupt NIfTI data ({type(exc).__name__})") from None
    ornt = _lps_axes(img)
    if ornt is not None:
        data = nib.orientations.apply_orientation(
            data, nib.orientations.ornt_transform(ornt, nib.orientations.axcodes2ornt(("L", "P", "S"))))
    if data.shape[0] * data.shape[1] > policy.max_pixels:
        raise ValueError(f"too large ({data.shape[0]}x{data.shape[1]} pixels per slice)")
    if policy.window is not None:
        c, w = policy.window
        lo, hi = c - w / 2.0, c + w / 2.0
    else:
        hdr = img.header
        cal = (float(hdr.get("cal_min", 0) or 0), float(hdr.get("cal_max", 0) or 0)) if hasattr(hdr, "get") else (0, 0)
        if cal[1] > cal[0]:
            lo, hi = cal
        else:
            finite = data[np.isfinite(data)]
            lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    frames = [window_to_uint8(data[:, :, k].T, lo, hi) for k in range(data.shape[2])]
    return _fit_frames(frames, policy)


# ---------------------------------------------------------------------------------------------- files
def frame_count(path: str | os.PathLike, kind: str) -> int:
    """Images in a clinical file (header only). ValueError with a metadata-free reason when unusable."""
    if kind == "dicom":
        return dicom_frame_count(path, force=kind_of_name(os.fspath(path)) == "dicom")
    return nifti_frame_count(path)


class _VolumeCache(threading.local):
    """The last decoded volume of this thread, so reading its frames one by one decodes the file once."""

    key: tuple | None = None
    value: tuple[str, np.ndarray] | None = None


_cache = _VolumeCache()


def decode_clinical_file(path: str | os.PathLike, kind: str, policy, frame: int | None,
                         read_bytes: Callable[[str], bytes]) -> tuple[np.ndarray, str]:
    """Decode one image of a clinical file: ``frame`` of a multi-frame file, or the only image.

    Returns
    -------
    image : uint8 ndarray (H, W)
    sha256 : str
        Of the file's bytes for a single image; of the file's digest and the frame number for frames.
    """
    p = os.fspath(path)
    try:
        st = os.stat(p)
        key = (os.path.realpath(p), st.st_mtime_ns, st.st_size, repr(policy))
    except OSError:
        key = None
    if key is not None and _cache.key == key and _cache.value is not None:
        digest, vol = _cache.value
    else:
        data = read_bytes(p)
        digest = hashlib.sha256(data).hexdigest()
        if kind == "dicom":
            vol = decode_dicom(io.BytesIO(data), policy, force=kind_of_name(p) == "dicom")
        else:
            vol = _decode_nifti_bytes(p, data, policy)
        _cache.key, _cache.value = key, (digest, vol)
    if frame is None:
        if len(vol) != 1:
            raise ValueError(f"file holds {len(vol)} images: address them as PATH{FRAME_SEP}N")
        return vol[0], digest
    if not 0 <= frame < len(vol):
        raise ValueError(f"frame {frame} out of range (file holds {len(vol)} images)")
    return vol[frame], frame_hash(digest, frame)


def _decode_nifti_bytes(path: str, data: bytes, policy) -> np.ndarray:
    import nibabel as nib

    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"truncated or corrupt NIfTI data ({type(exc).__name__})") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            klass = nib.Nifti2Image if data[4:8] in (b"n+2\x00", b"ni2\x00") else nib.Nifti1Image
            img = klass.from_bytes(data)
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"not a readable NIfTI volume ({type(exc).__name__})") from None

    return decode_nifti(img, policy)
