"""Which device each GPU-capable stage runs on, decided by trials that really run there.

Three stages can use a GPU: ONNX inference (onnxruntime's ``CUDAExecutionProvider``), FAISS search
(faiss-gpu) and the SSIM/MSE pair kernels (Numba CUDA, :mod:`kernels.cuda_similarity`).  Listing a provider is
not proof: ``onnxruntime.get_available_providers()`` names CUDA even when its libraries are missing, and a
session then silently falls back to the CPU.  So each stage gets a *trial*:

* onnxruntime: a session on a one-node graph with ``[CUDAExecutionProvider, CPUExecutionProvider]``; CUDA
  counts only if ``session.get_providers()[0] == "CUDAExecutionProvider"`` and one run succeeds;
* FAISS: ``faiss.get_num_gpus() > 0``, then a four-vector GPU search in a child process (a faiss-gpu build
  without kernels for this GPU aborts the whole process on its first search -- the PyPI faiss-gpu-cu12 1.14.1
  wheel on an H200: "CUDA error 209 no kernel image is available for execution on the device", SIGABRT,
  2026-11-30 -- so the job must not be the one to find out), then the same search in this process with its
  single ``StandardGpuResources`` (kept and reused by :mod:`engine.search` -- one resources object per process);
* Numba CUDA: ``numba.cuda.is_available()`` and a one-thread kernel compiles and runs.

``--device`` (job commands) / :func:`set_device`:

* ``cpu``  -- every stage on the CPU;
* ``cuda`` -- every stage on the GPU; a stage whose trial fails is a one-line :class:`ImprintError` naming it
  and the reason (no silent CPU fallback);
* ``auto`` -- each stage on the GPU exactly when its trial passes.

The choice is process-wide (the job commands run one job per process): ``backbone.default_providers``,
``search``'s ``use_gpu="auto"`` and :func:`ssim_mse_pairs` follow it, and :func:`describe` is what the
summaries and ``--json`` report.  Trials are cached per process.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

import numpy as np

from .errors import ImprintError

__all__ = ["DEVICES", "Device", "set_device", "active", "describe", "onnx_cuda_trial", "faiss_gpu_trial",
           "numba_cuda_trial", "gpu_resources", "ssim_mse_pairs", "ssim_pairs", "mse_pairs", "lbp_histograms",
           "pair_scorer", "reset"]

DEVICES = ("auto", "cpu", "cuda")
_STAGES = ("onnxruntime", "faiss", "pair_kernels")
_LOCK = threading.Lock()
_TRIALS: dict = {}
_ACTIVE: "Device | None" = None


@dataclass(frozen=True)
class Device:
    """The resolved device of each stage.

    Attributes
    ----------
    requested : str
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    onnxruntime, faiss, pair_kernels : str
        ``"cuda"`` or ``"cpu"``.
    reasons : dict
        Why a stage is on the CPU under ``auto`` (trial error), by stage name.
    """

    requested: str = "auto"
    onnxruntime: str = "cpu"
    faiss: str = "cpu"
    pair_kernels: str = "cpu"
    reasons: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        """``"cuda"`` (all stages on the GPU), ``"cpu"`` (none) or ``"mixed"``."""
        on = {getattr(self, s) for s in _STAGES}
        return on.pop() if len(on) == 1 else "mixed"

    def as_dict(self) -> dict:
        """JSON-able description (``--json`` output and reports)."""
        d = {"requested": self.requested, "used": self.name, **{s: getattr(self, s) for s in _STAGES}}
        if self.reasons:
            d["cpu_because"] = dict(self.reasons)
        return d

    def line(self) -> str:
        """One-line description for the human summary."""
        if self.name != "mixed":
            return f"device {self.name}"
        return "device " + ", ".join(f"{s}={getattr(self, s)}" for s in _STAGES)


def _short(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return (msg[0] if msg else type(exc).__name__)[:200]


def _cached(key, fn):
    with _LOCK:
        if key in _TRIALS:
            return _TRIALS[key]
    res = fn()
    with _LOCK:
        _TRIALS.setdefault(key, res)
        return _TRIALS[key]


def _tiny_onnx() -> bytes:
    """A one-node ONNX graph (y = x + x, float32 [1, 4])."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "trial", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def onnx_cuda_trial() -> tuple[bool, str]:
    """Does an onnxruntime session really run on CUDA here?

    Returns
    -------
    (ok, reason) : (bool, str)
        ``reason`` says why not (empty when ok).
    """
    def run():
        try:
            import onnxruntime as ort
        except ImportError as exc:
            return False, f"onnxruntime is not installed ({exc})"
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return False, "this onnxruntime build has no CUDAExecutionProvider (install the `gpu` extra)"
        from imprint.engine.backbone import preload_cuda_libraries

        said = preload_cuda_libraries(ort)
        try:
            so = ort.SessionOptions()
            so.log_severity_level = 4
            sess = ort.InferenceSession(_tiny_onnx(), so,
                                        providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
            if sess.get_providers()[:1] != ["CUDAExecutionProvider"]:
                return False, ("onnxruntime lists CUDA but the session fell back to the CPU (CUDA/cuDNN "
                               "libraries missing or no GPU" + (f"; preload_dlls: {said[:160]}" if said else "")
                               + ")")
            y = sess.run(None, {"x": np.ones((1, 4), np.float32)})[0]
            if not np.array_equal(y, np.full((1, 4), 2, np.float32)):
                return False, "the CUDA trial session returned a wrong result"
        except Exception as exc:  # noqa: BLE001 - any failure means "not usable"
            return False, f"onnxruntime CUDA session failed: {_short(exc)}"
        return True, ""

    return _cached("onnx", run)


def gpu_resources():
    """The process's ``faiss.StandardGpuResources`` for GPU 0 (the same object :mod:`engine.search` uses;
    created on first use; None without faiss-gpu)."""
    import faiss

    if not hasattr(faiss, "StandardGpuResources"):
        return None
    from .search.gpu import resources

    res = resources(1)
    return res[0] if res else None


def faiss_gpu_trial() -> tuple[bool, str]:
    """Can FAISS build GPU indexes here?  Returns ``(ok, reason)``."""
    def run():
        try:
            import faiss
        except ImportError as exc:
            return False, f"faiss is not installed ({exc})"
        fn = getattr(faiss, "get_num_gpus", None)
        if fn is None or not hasattr(faiss, "StandardGpuResources"):
            return False, "this faiss build has no GPU support (install the `gpu` extra: faiss-gpu-cu12)"
        try:
            if int(fn()) < 1:
                return False, "faiss-gpu sees no GPU"
            ok, why = _faiss_gpu_child_trial()
            if not ok:
                return False, why
            res = gpu_resources()
            idx = faiss.GpuIndexFlatL2(res, 4)
            idx.add(np.eye(4, dtype=np.float32))
            _, i = idx.search(np.eye(4, dtype=np.float32)[:1], 1)
            if int(i[0, 0]) != 0:
                return False, "the FAISS GPU trial search returned a wrong result"
        except Exception as exc:  # noqa: BLE001
            return False, f"FAISS GPU trial failed: {_short(exc)}"
        return True, ""

    return _cached("faiss", run)


#: what the child process runs (a module constant so that a test can plant an abort)
_FAISS_CHILD_CODE = (
    "import numpy as np, faiss\n"
    "res = faiss.StandardGpuResources()\n"
    "idx = faiss.GpuIndexFlatL2(res, 4)\n"
    "idx.add(np.eye(4, dtype=np.float32))\n"
    "_, i = idx.search(np.eye(4, dtype=np.float32)[:1], 1)\n"
    "print('imprint-faiss-trial', int(i[0, 0]))\n")
FAISS_CHILD_TIMEOUT_S = 120.0


def _faiss_gpu_child_trial() -> tuple[bool, str]:
    """The FAISS GPU trial search in a child process: ``(ok, reason)``; an abort or a hang there is a reason."""
    import subprocess
    import sys

    try:
        r = subprocess.run([sys.executable, "-c", _FAISS_CHILD_CODE], capture_output=True, text=True,
                           timeout=FAISS_CHILD_TIMEOUT_S, env=os.environ.copy())
    except subprocess.TimeoutExpired:
        return False, f"FAISS GPU trial search did not finish in {FAISS_CHILD_TIMEOUT_S:.0f} s (child process)"
    except OSError as exc:
        return False, f"FAISS GPU trial could not start a child process: {_short(exc)}"
    if r.returncode == 0 and "imprint-faiss-trial 0" in r.stdout:
        return True, ""
    lines = [ln.strip() for ln in (r.stderr or "").splitlines() if ln.strip()]
    hint = next((ln for ln in reversed(lines) if "error" in ln.lower() or "assert" in ln.lower()),
                lines[-1] if lines else "")
    if "no kernel image" in hint:
        hint = ("this faiss-gpu build has no kernels for this GPU's architecture (" +
                hint[hint.find("CUDA error"):][:120] + ")" if "CUDA error" in hint else hint)
    how = ("wrong result" if r.returncode == 0 else f"exit status {r.returncode}" if r.returncode > 0
           else f"killed by signal {-r.returncode}")
    return False, f"FAISS GPU trial search failed in a child process ({how}): {hint[:200]}".rstrip(": ")


def numba_cuda_trial() -> tuple[bool, str]:
    """Can Numba compile and run a CUDA kernel here (a GPU, or the simulator)?  Returns ``(ok, reason)``."""
    def run():
        try:
            from imprint.kernels.cuda_similarity import cuda_available

            if not cuda_available():
                return False, "Numba sees no CUDA device (GPU, driver or numba-cuda missing)"
            from numba import cuda

            @cuda.jit
            def _one(a):
                a[0] = a[0] + 1.0

            arr = cuda.to_device(np.zeros(1, np.float64))
            _one[1, 1](arr)
            if float(arr.copy_to_host()[0]) != 1.0:
                return False, "the Numba CUDA trial kernel returned a wrong result"
        except Exception as exc:  # noqa: BLE001
            return False, f"Numba CUDA trial failed: {_short(exc)}"
        return True, ""

    return _cached("numba", run)


_TRIAL_OF = {"onnxruntime": onnx_cuda_trial, "faiss": faiss_gpu_trial, "pair_kernels": numba_cuda_trial}


def resolve(device: str = "auto") -> Device:
    """Run the trials for ``device`` and return the per-stage choice (does not activate it).

    Raises
    ------
    ImprintError
        Unknown device, or ``cuda`` with a stage that cannot run on the GPU (one line naming each).
    """
    if device not in DEVICES:
        raise ImprintError(f"--device must be one of {', '.join(DEVICES)} (got {device!r})")
    if device == "cpu":
        return Device("cpu")
    got = {s: _TRIAL_OF[s]() for s in _STAGES}
    if device == "cuda":
        bad = [f"{s}: {why}" for s, (ok, why) in got.items() if not ok]
        if bad:
            raise ImprintError("--device cuda cannot run here: " + "; ".join(bad))
        return Device("cuda", "cuda", "cuda", "cuda")
    return Device("auto", **{s: "cuda" if ok else "cpu" for s, (ok, _) in got.items()},
                  reasons={s: why for s, (ok, why) in got.items() if not ok})


def set_device(device: str = "auto") -> Device:
    """Resolve ``device`` (see :func:`resolve`) and make it the process-wide choice."""
    global _ACTIVE
    dev = resolve(device)
    _ACTIVE = dev
    return dev


def active() -> Device:
    """The process-wide choice; resolved as ``$IMPRINT_DEVICE`` (default ``auto``) on first use."""
    global _ACTIVE
    if _ACTIVE is None:
        _ACTIVE = resolve(os.environ.get("IMPRINT_DEVICE", "auto").strip() or "auto")
    return _ACTIVE


def describe() -> dict:
    """``active().as_dict()``: what the summaries and ``--json`` report."""
    return active().as_dict()


def reset() -> None:
    """Forget the active choice and the cached trials (tests)."""
    global _ACTIVE
    with _LOCK:
        _ACTIVE = None
        _TRIALS.clear()


# ----------------------------------------------------------------------------- pair kernels by device
def ssim_mse_pairs(A, B, pairs, data_range: float = 255.0, *, device: str | None = None,
                   scorer=None) -> tuple[np.ndarray, np.ndarray]:
    """SSIM and MSE of each ``(A[i], B[j])`` pair on the active device's pair kernels.

    Parameters
    ----------
    A : ndarray uint8/float32/float64 [N, H, W]
        Streamed side (real images).
    B : ndarray uint8/float32/float64 [M, H, W]
        Resident side (generated images).
    pairs : ndarray integer [P, 2]
        ``(index into A, index into B)``.
    data_range : float
    device : {"cpu", "cuda"} or None
        Override the active choice (None: ``active().pair_kernels``).
    scorer : kernels.cuda_similarity.CudaPairScorer or None
        A scorer already holding ``B`` on the GPU (reused across batches); CUDA only.

    Returns
    -------
    ssim, mse : float32 [P]
        Same values on either device (within 1e-5).
    """
    dev = device or active().pair_kernels
    if dev == "cuda":
        from imprint.kernels.cuda_similarity import CudaPairScorer, ssim_mse_pairs_cuda

        if scorer is not None:
            if not isinstance(scorer, CudaPairScorer):
                raise ImprintError("scorer must be a kernels.cuda_similarity.CudaPairScorer")
            return scorer.score(A, pairs)
        return ssim_mse_pairs_cuda(A, B, pairs, data_range)
    if dev != "cpu":
        raise ImprintError(f"device must be 'cpu' or 'cuda', got {dev!r}")
    import imprint.kernels as kernels

    return kernels.ssim_pairs(A, B, pairs, data_range), kernels.mse_pairs(A, B, pairs)


def ssim_pairs(A, B, pairs, data_range: float = 255.0, **kw) -> np.ndarray:
    """SSIM per pair on the active device (see :func:`ssim_mse_pairs`); float32 [P]."""
    return ssim_mse_pairs(A, B, pairs, data_range, **kw)[0]


def mse_pairs(A, B, pairs, **kw) -> np.ndarray:
    """MSE per pair on the active device (see :func:`ssim_mse_pairs`); float32 [P]."""
    return ssim_mse_pairs(A, B, pairs, **kw)[1]


def pair_scorer(B, data_range: float = 255.0):
    """A :class:`~kernels.cuda_similarity.CudaPairScorer` holding ``B`` when pair kernels run on CUDA, else None."""
    if active().pair_kernels != "cuda":
        return None
    from imprint.kernels.cuda_similarity import CudaPairScorer

    return CudaPairScorer(B, data_range)


def lbp_histograms(images, P: int = 8, R: float = 1.0, method: str = "uniform", *,
                   device: str | None = None) -> np.ndarray:
    """LBP histograms on the active device's kernels (bit-equal on either; float32 [N, bins]).

    Settings the CUDA kernel does not cover (``P > 16`` or more than 2048 bins) run on the CPU kernel.
    """
    import imprint.kernels as kernels

    dev = device or active().pair_kernels
    if dev == "cuda":
        from imprint.kernels.cuda_texture import MAX_GPU_BINS, lbp_histograms_cuda

        if P <= 16 and kernels.lbp_n_bins(int(P), str(method).lower()) <= MAX_GPU_BINS:
            return lbp_histograms_cuda(images, P, R, method)
    elif dev != "cpu":
        raise ImprintError(f"device must be 'cpu' or 'cuda', got {dev!r}")
    return kernels.lbp_histograms(images, P, R, method)
