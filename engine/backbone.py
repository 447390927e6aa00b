"""onnxruntime inference for the registered backbones: sessions, preprocessing and batching.

Pipeline of :func:`embed`: a producer thread slices the uint8 ``[N,H,W]`` images into batches and
preprocesses the *next* batch (resize to ``spec.input_size`` with ``spec.resize``, then
``(v - mean[c]) / std[c]`` replicated to ``spec.channels``; see :mod:`models.registry`) while the
main thread runs the ONNX session on the current one; a bounded queue (2 batches) caps memory.
onnxruntime releases the GIL during ``run``, so the two overlap.

Resizing happens here, in the runtime (PIL on float32 images, no rounding back to uint8):
``bilinear`` (effnet-lite0: 128 -> 224), ``area`` (pixel: box filter to 128x128 when the images
are another size; the graph then pools 4x4), ``none`` (fingerprint: native size, never
resampled, because resampling would wipe out the generator traces).

Execution providers: ``CUDAExecutionProvider`` then CPU when the process-wide device choice
(:mod:`engine.device`, ``--device``) puts onnxruntime on CUDA -- decided by a trial session that really runs on
CUDA, never by ``get_available_providers()`` alone -- else CPU; override with ``providers=`` (list of provider
names, or the shorthands ``"cpu"`` / ``"cuda"``) or the ``IMPRINT_PROVIDERS`` environment variable
(comma-separated).  When CUDA is asked for and the session does not run on it (missing CUDA/cuDNN
libraries: onnxruntime would silently fall back to the CPU), loading fails with an :class:`ImprintError`.
CPU sessions use one intra-op thread per available core (``IMPRINT_THREADS`` overrides).
"""

from __future__ import annotations

import os
import queue
import threading
from collections import OrderedDict

import numpy as np

from imprint.engine.errors import ImprintError

__all__ = [
    "Backbone",
    "load_backbone",
    "embed",
    "default_providers",
    "preprocess",
    "auto_batch_size",
    "preload_cuda_libraries",
]

_PROVIDER_ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                     "gpu": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
_CACHE_MAX = 8
_SESSIONS: "OrderedDict[tuple, Backbone]" = OrderedDict()
_LOCK = threading.Lock()


def _ort():
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - hard dependency
        raise ImprintError(f"onnxruntime is not installed: {exc}") from None
    return ort


_PRELOADED: dict = {}


def preload_cuda_libraries(ort=None) -> str:
    """Load the CUDA and cuDNN libraries that onnxruntime-gpu's CUDA provider needs, once per process.

    On Linux the CUDA provider (``libonnxruntime_providers_cuda.so``) has no run path: it finds ``libcudart``,
    ``libcublas`` and cuDNN only on the loader's path, so with the pip ``nvidia-*`` wheels of the ``gpu`` extra
    and no ``LD_LIBRARY_PATH`` every CUDA session silently falls back to the CPU.  onnxruntime >= 1.21 ships
    ``onnxruntime.preload_dlls()``, which loads them from the nvidia packages beside it.  Called before every
    CUDA session (and by :func:`engine.device.onnx_cuda_trial`); a no-op when
    the build has no CUDA provider or no ``preload_dlls``.  Its messages (it prints) are kept, not shown.

    Returns
    -------
    str
        ``""`` when the libraries were preloaded (or nothing needed doing), else what ``preload_dlls`` said.
    """
    if "done" in _PRELOADED:
        return _PRELOADED["done"]
    ort = _ort() if ort is None else ort
    said = ""
    fn = getattr(ort, "preload_dlls", None)
    if fn is not None and "CUDAExecutionProvider" in ort.get_available_providers():
        import contextlib
        import io

        buf = io.StringIO()
        try:
            with contextlib.redirect_stdout(buf):
                fn(cuda=True, cudnn=True)
        except Exception as exc:  # noqa: BLE001 - a failed preload only means the session may fall back
            buf.write(f"preload_dlls failed: {type(exc).__name__}: {exc}")
        said = " ".join(buf.getvalue().split())[:300]
    _PRELOADED["done"] = said
    return said


def _cores() -> int:
    env = os.environ.get("IMPRINT_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise ImprintError(f"IMPRINT_THREADS must be an integer, got {env!r}") from None
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def default_providers() -> list[str]:
    """Providers used when none are given: ``$IMPRINT_PROVIDERS``, else CUDA+CPU when the device choice
    (:func:`engine.device.active`, a real CUDA trial) puts onnxruntime on CUDA, else CPU."""
    env = os.environ.get("IMPRINT_PROVIDERS")
    if env:
        return _normalise_providers([p.strip() for p in env.split(",") if p.strip()])
    from .device import active

    if active().onnxruntime == "cuda":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _normalise_providers(providers) -> list[str]:
    if isinstance(providers, str):
        providers = [p.strip() for p in providers.split(",") if p.strip()]
    out = [_PROVIDER_ALIASES.get(str(p).lower(), str(p)) for p in providers]
    if not out:
        raise ImprintError("providers must name at least one onnxruntime execution provider")
    avail = _ort().get_available_providers()
    missing = [p for p in out if p not in avail]
    if missing:
        raise ImprintError(f"execution provider(s) {', '.join(missing)} not available "
                           f"(available: {', '.join(avail)})")
    if "CPUExecutionProvider" not in out:
        out.append("CPUExecutionProvider")
    return out


def auto_batch_size(spec, on_gpu: bool = False) -> int:
    """Default batch: a power of two giving ~8 MiB (CPU) / ~64 MiB (GPU) of input, in 1..256."""
    h, w = spec.input_size
    per = 4 * spec.channels * h * w
    target = (64 if on_gpu else 8) << 20
    b = max(1, target // per)
    return int(min(256, 1 << (int(b).bit_length() - 1)))


def _resize(batch: np.ndarray, size: tuple[int, int], method: str) -> np.ndarray:
    """uint8 ``[b,h,w]`` -> float32 ``[b,H,W]`` resized with PIL (float mode, no rounding)."""
    b, h, w = batch.shape
    if method == "none" or (h, w) == tuple(size):
        return batch.astype(np.float32)
    from PIL import Image

    flt = Image.Resampling.BILINEAR if method == "bilinear" else Image.Resampling.BOX
    H, W = size
    out = np.empty((b, H, W), np.float32)
    for i in range(b):
        im = Image.fromarray(batch[i].astype(np.float32), mode="F")
        out[i] = np.asarray(im.resize((W, H), flt), dtype=np.float32)
    return out


_PREP_POOL: dict = {}
#: images per thread below which preprocessing stays on the calling thread
PREP_MIN_PER_WORKER = 8


def preprocess(batch: np.ndarray, spec, workers: int = 1) -> np.ndarray:
    """Runtime preprocessing of one batch: uint8 ``[b,h,w]`` -> float32 ``[b,C,H,W]``.

    Resize to ``spec.input_size`` with ``spec.resize`` (``"none"`` keeps the native size), then
    ``(v - mean[c]) / std[c]`` for each of ``spec.channels`` (grey replicated).

    ``workers`` > 1 splits the batch over that many threads (PIL's resize and numpy release the GIL); every
    step is per image, so the result is the same array bit for bit.  :func:`embed` uses it when the session runs
    on a GPU: there the host's preprocessing, not the network, bounded effnet-lite0 (1,724 images/s end to end
    against 5,975 for the session alone on an H200, one preprocessing thread; RESULTS.md "GPU (issue 14)").
    """
    b = batch.shape[0]
    workers = max(1, min(int(workers), b // PREP_MIN_PER_WORKER))
    if workers > 1:
        from concurrent.futures import ThreadPoolExecutor

        pool = _PREP_POOL.get(workers)
        if pool is None:
            pool = _PREP_POOL.setdefault(workers, ThreadPoolExecutor(workers, thread_name_prefix="imprint-prep"))
        bounds = np.linspace(0, b, workers + 1).astype(int)
        first = _preprocess1(batch[bounds[0]:bounds[1]], spec)
        out = np.empty((b,) + first.shape[1:], np.float32)
        out[bounds[0]:bounds[1]] = first

        def one(i):
            out[bounds[i]:bounds[i + 1]] = _preprocess1(batch[bounds[i]:bounds[i + 1]], spec)

        list(pool.map(one, range(1, workers)))
        return out
    return _preprocess1(batch, spec)


def _preprocess1(batch: np.ndarray, spec) -> np.ndarray:
    x = _resize(batch, spec.input_size, spec.resize)
    mean = np.asarray(spec.mean, np.float32)
    std = np.asarray(spec.std, np.float32)
    if spec.channels == 1 or (np.all(mean == mean[0]) and np.all(std == std[0])):
        y = x if (mean[0] == 0 and std[0] == 1) else (x - mean[0]) / std[0]
        y = y[:, None]
        if spec.channels > 1:
            y = np.repeat(y, spec.channels, axis=1)
        return np.ascontiguousarray(y, dtype=np.float32)
    y = (x[:, None] - mean[None, :, None, None]) / std[None, :, None, None]
    return np.ascontiguousarray(y, dtype=np.float32)


class Backbone:
    """An onnxruntime session for one backbone spec.

    Parameters
    ----------
    spec : models.registry.BackboneSpec
        A built/validated spec (``onnx_path`` set).
    providers : list of str, optional
        onnxruntime providers (default :func:`default_providers`).
    threads : int, optional
        Intra-op threads (default: available cores).

    Attributes
    ----------
    spec : BackboneSpec
    providers : list of str
        Providers the session actually uses.
    on_gpu : bool
    default_batch_size : int
    """

    def __init__(self, spec, providers=None, threads=None):
        ort = _ort()
        if spec.onnx_path is None:
            raise ImprintError(f"backbone {spec.name} is not built; run `imprint models build`")
        self.spec = spec
        provs = default_providers() if providers is None else _normalise_providers(providers)
        if "CUDAExecutionProvider" in provs:
            preload_cuda_libraries(ort)
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads) if threads else _cores()
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(spec.onnx_path, so, providers=provs)
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ImprintError(f"cannot load backbone {spec.name} ({spec.onnx_path}): {msg[:200]}") from None
        self.providers = list(self.session.get_providers())
        lost = [p for p in provs if p != "CPUExecutionProvider" and p not in self.providers]
        if lost:  # onnxruntime falls back to the CPU silently when a provider's libraries are missing
            raise ImprintError(f"cannot load backbone {spec.name} on {', '.join(lost)}: the session fell back to "
                               f"{', '.join(self.providers)} (CUDA/cuDNN libraries missing or no GPU; "
                               f"use --device cpu or install the `gpu` extra)")
        self.on_gpu = any(p != "CPUExecutionProvider" for p in self.providers)
        self.default_batch_size = auto_batch_size(spec, self.on_gpu)
        self._in = self.session.get_inputs()[0].name
        self._out = self.session.get_outputs()[0].name

    def __repr__(self):
        return f"Backbone({self.spec.name!r}, dim={self.spec.dim}, providers={self.providers})"

    def run_preprocessed(self, x: np.ndarray) -> np.ndarray:
        """Run the session on a preprocessed float32 ``[b,C,H,W]`` batch -> float32 ``[b,d]``.

        Plain ``session.run`` on every provider: the batch is preprocessed on the host, so binding it with
        :meth:`_run_bound` would make the same one host->device copy and gain nothing.
        """
        y = self.session.run([self._out], {self._in: x})[0]
        y = np.asarray(y, dtype=np.float32).reshape(x.shape[0], -1)
        if y.shape[1] != self.spec.dim:
            raise ImprintError(f"backbone {self.spec.name} returned dim {y.shape[1]}, expected {self.spec.dim}")
        return y

    def _run_bound(self, x: np.ndarray, device: str | None = None) -> np.ndarray:
        """Run through an onnxruntime I/O binding (output on ``device``).  Not used by :meth:`run_preprocessed`:
        with host-side preprocessing it copies the input host->device exactly like ``session.run``; kept for
        callers that hold device-resident outputs."""
        device = device or ("cuda" if self.on_gpu else "cpu")
        binding = self.session.io_binding()
        binding.bind_cpu_input(self._in, np.ascontiguousarray(x, dtype=np.float32))
        binding.bind_output(self._out, device)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def run(self, batch_uint8: np.ndarray) -> np.ndarray:
        """Embed one batch: uint8 ``[b,H,W]`` -> float32 ``[b,d]`` (no threading)."""
        batch = _check_images(batch_uint8, self.spec)
        if batch.shape[0] == 0:
            return np.zeros((0, self.spec.dim), np.float32)
        return self.run_preprocessed(preprocess(batch, self.spec))


def _check_images(images, spec) -> np.ndarray:
    if not isinstance(images, np.ndarray):
        raise ImprintError(f"images must be a numpy uint8 array [N,H,W], got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise ImprintError(f"images must be uint8, got {images.dtype}")
    if images.ndim != 3:
        raise ImprintError(f"images must be [N,H,W] grayscale, got shape {images.shape}")
    if spec.resize == "none":
        from imprint.models.graphs import FINGERPRINT_MIN_SIZE

        h, w = images.shape[1:]
        if min(h, w) < FINGERPRINT_MIN_SIZE:
            raise ImprintError(f"backbone {spec.name} needs images of at least "
                               f"{FINGERPRINT_MIN_SIZE}x{FINGERPRINT_MIN_SIZE}, got {h}x{w}")
    elif min(images.shape[1:], default=1) < 1:
        raise ImprintError(f"images have an empty spatial size {images.shape[1:]}")
    return images


def load_backbone(name_or_path, *, providers=None, threads=None, **resolve_kwargs) -> Backbone:
    """A (cached) :class:`Backbone` for a registry name, an ``.onnx`` path or a spec.

    ``resolve_kwargs`` go to :func:`models.registry.resolve` (``input_size``, ``mean``, ``std``,
    ``channels``, ``resize``, ``models_dir``). Sessions are cached by file sha256, preprocessing,
    providers and threads (at most 8 kept).
    """
    from imprint.models.registry import resolve

    spec = resolve(name_or_path, **resolve_kwargs)
    provs = None if providers is None else tuple(_normalise_providers(providers))
    key = (spec.sha256, spec.onnx_path, spec.input_size, spec.channels, spec.mean, spec.std,
           spec.resize, provs, threads)
    with _LOCK:
        bb = _SESSIONS.get(key)
        if bb is not None:
            _SESSIONS.move_to_end(key)
            return bb
    bb = Backbone(spec, providers=provs, threads=threads)
    with _LOCK:
        _SESSIONS[key] = bb
        while len(_SESSIONS) > _CACHE_MAX:
            _SESSIONS.popitem(last=False)
    return bb


_DONE = object()


def embed(images: np.ndarray, backbone="pixel", *, batch_size=None, providers=None, progress=None,
          threads=None, **resolve_kwargs) -> np.ndarray:
    """Embed grayscale images with a backbone.

    Parameters
    ----------
    images : uint8 ndarray ``[N, H, W]``
        Grayscale images, all the same size.
    backbone : str, path-like, BackboneSpec or Backbone
        Registry name (``"pixel"``, ``"fingerprint"``, ``"effnet-lite0"``), a user ``.onnx`` path
        (see ``resolve_kwargs``), a spec, or an already loaded :class:`Backbone`.
    batch_size : int, optional
        Images per session run (default :func:`auto_batch_size`). Results do not depend on it.
    providers : list of str or str, optional
        onnxruntime providers (default :func:`default_providers`).
    progress : callable(int), optional
        Called with the cumulative number of embedded images after each batch.
    threads : int, optional
        Intra-op threads (default: available cores).
    **resolve_kwargs
        ``input_size``, ``mean``, ``std``, ``channels``, ``resize``, ``models_dir`` for
        :func:`models.registry.resolve`.

    Returns
    -------
    float32 ndarray ``[N, d]``

    Raises
    ------
    ImprintError
        Bad images, unknown/unbuilt backbone, invalid ONNX model, unavailable provider.
    """
    bb = backbone if isinstance(backbone, Backbone) else load_backbone(
        backbone, providers=providers, threads=threads, **resolve_kwargs)
    spec = bb.spec
    images = _check_images(images, spec)
    n = images.shape[0]
    out = np.empty((n, spec.dim), np.float32)
    if n == 0:
        return out
    if batch_size is None:
        bs = bb.default_batch_size
    else:
        try:
            bs = int(batch_size)
        except (TypeError, ValueError):
            raise ImprintError(f"batch_size must be a positive integer, got {batch_size!r}") from None
        if bs < 1 or bs != batch_size:
            raise ImprintError(f"batch_size must be a positive integer, got {batch_size!r}")
    starts = list(range(0, n, bs))
    # on a GPU the session outruns one preprocessing thread; on the CPU the session has the cores
    prep_workers = _cores() if bb.on_gpu else 1

    if len(starts) == 1:  # no pipeline needed
        out[:] = bb.run_preprocessed(preprocess(images, spec, workers=prep_workers))
        if progress is not None:
            progress(n)
        return out

    q: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def producer():
        try:
            for s in starts:
                if stop.is_set():
                    return
                item = (s, preprocess(images[s:s + bs], spec, workers=prep_workers))
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as exc:  # forwarded to the consumer
            q.put(exc)
            return
        q.put(_DONE)

    t = threading.Thread(target=producer, name="imprint-embed-prep", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            s, x = item
            y = bb.run_preprocessed(x)
            out[s:s + y.shape[0]] = y
            if progress is not None:
                progress(s + y.shape[0])
    finally:
        stop.set()
        while t.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                pass
            t.join(timeout=0.05)
    return out
