"""Device choice (engine.device, --device), the GPU install check and the prepared GPU benchmark script.

No GPU is needed: CUDA is planted as "listed but not working" (the silent-fallback case of issue 14) through
the real CPU onnxruntime, and the `gpu` extra's resolution is checked on the cached pip report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from imprint.engine import device as D
from imprint.engine.errors import ImprintError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import check_gpu_extra as CG  # noqa: E402


@pytest.fixture(autouse=True)
def fresh_device():
    D.reset()
    yield
    D.reset()


# ----------------------------------------------------------------------------- the `gpu` extra
def _report(pkgs):
    return {"install": [{"metadata": {"name": n, "version": v}} for n, v in pkgs]}


def test_gpu_extra_cached_resolution_has_no_cpu_twin_and_one_cuda_major():
    cached = json.loads((ROOT / "tests/data/gpu_extra_resolution.json").read_text())
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    assert cached["gpu_extra"] == extra, ("pyproject's gpu extra changed: refresh the cache with "
                                          "scripts/check_gpu_extra.py --save tests/data/gpu_extra_resolution.json")
    assert CG.check_report(cached) == []
    pkgs = CG.packages(cached)
    assert "onnxruntime" not in pkgs and "faiss-cpu" not in pkgs
    assert set(CG.cuda_majors(pkgs)) == {12}
    base = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not any(d.startswith(("onnxruntime", "faiss")) for d in base)  # runtimes live in cpu / gpu extras


def test_gpu_extra_check_detects_planted_problems():
    good = [("onnxruntime-gpu", "1.26.0"), ("faiss-gpu-cu12", "1.14.1"), ("nvidia-cuda-runtime-cu12", "12.9.79"),
            ("nvidia-cudnn-cu12", "9.1.0"), ("cuda-toolkit", "12.9.2")]
    assert CG.check_report(_report(good)) == []
    # what issue 14 found: both twins, and onnxruntime-gpu 1.31 (CUDA 13) beside faiss-gpu-cu12
    bad = good + [("onnxruntime", "1.32.0"), ("faiss-cpu", "1.15.1"), ("nvidia-cuda-runtime", "13.5.37"),
                  ("nvidia-cudnn-cu13", "9.28")]
    probs = " | ".join(CG.check_report(_report(bad)))
    assert "onnxruntime 1.32.0" in probs and "faiss-cpu" in probs and "more than one CUDA major" in probs
    no_libs = [("onnxruntime-gpu", "1.26.0"), ("faiss-gpu-cu12", "1.14.1")]
    probs = " | ".join(CG.check_report(_report(no_libs)))
    assert "CUDA runtime" in probs and "cuDNN" in probs
    assert CG.main([str(ROOT / "tests/data/gpu_extra_resolution.json")]) == 0


# ----------------------------------------------------------------------------- trials and --device
def test_cpu_device_puts_every_stage_on_the_cpu():
    dev = D.set_device("cpu")
    assert dev.name == "cpu" and dev.as_dict()["used"] == "cpu"
    from imprint.engine.backbone import default_providers

    assert default_providers() == ["CPUExecutionProvider"]
    with pytest.raises(ImprintError, match="--device"):
        D.set_device("gpu0")


def _fake_cuda_listed(monkeypatch):
    """onnxruntime lists CUDA (as onnxruntime-gpu does without its libraries) but cannot run on it."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():  # pragma: no cover - a real GPU build
        pytest.skip("this onnxruntime has a CUDA provider")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])


def test_listed_but_broken_cuda_is_detected_not_silently_used(monkeypatch):
    _fake_cuda_listed(monkeypatch)
    ok, why = D.onnx_cuda_trial()
    assert not ok and "fell back" in why
    dev = D.resolve("auto")
    assert dev.onnxruntime == "cpu" and "fell back" in dev.reasons["onnxruntime"]
    with pytest.raises(ImprintError) as ei:
        D.resolve("cuda")
    msg = str(ei.value)
    assert "\n" not in msg and "onnxruntime" in msg and "fell back" in msg


def test_backbone_that_falls_back_from_cuda_is_an_error(monkeypatch, tmp_path):
    _fake_cuda_listed(monkeypatch)
    import onnxruntime as ort

    from imprint.engine.backbone import Backbone

    p = tmp_path / "add.onnx"
    p.write_bytes(D._tiny_onnx())
    sess = ort.InferenceSession(str(p), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert sess.get_providers() == ["CPUExecutionProvider"]  # onnxruntime's silent fallback itself

    class _Spec:
        name, onnx_path, input_size, channels = "tiny", str(p), (1, 4), 1

    with pytest.raises(ImprintError, match="fell back"):
        Backbone(_Spec(), providers=["cuda"])


def test_cuda_request_on_a_cpu_machine_is_one_line_in_the_cli(tmp_path):
    from imprint.kernels.cuda_similarity import cuda_available

    ok, _ = D.onnx_cuda_trial()
    if ok and cuda_available():  # pragma: no cover - a GPU machine
        pytest.skip("a GPU is present")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    gen = tmp_path / "g"
    gen.mkdir()
    r = subprocess.run([sys.executable, "-m", "imprint", "pairs", "--real", str(gen), "--generated", str(gen),
                        "--out", str(tmp_path / "o.parquet"), "--device", "cuda"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --device cuda cannot run here"), r.stderr
    assert "Traceback" not in r.stderr


def test_device_dispatch_pairs_cpu_equals_kernels(rng):
    from conftest import ct_like

    import imprint.kernels as K

    A = ct_like(rng, 4, 32)
    B = ct_like(rng, 5, 32)
    pairs = np.array([[0, 1], [3, 4], [2, 2], [0, 0]])
    D.set_device("cpu")
    s, m = D.ssim_mse_pairs(A, B, pairs)
    np.testing.assert_array_equal(s, K.ssim_pairs(A, B, pairs))
    np.testing.assert_array_equal(m, K.mse_pairs(A, B, pairs))
    np.testing.assert_array_equal(D.ssim_pairs(A, B, pairs), s)
    np.testing.assert_array_equal(D.mse_pairs(A, B, pairs), m)
    np.testing.assert_array_equal(D.lbp_histograms(A), K.lbp_histograms(A))
    assert D.pair_scorer(B) is None
    with pytest.raises(ImprintError, match="device"):
        D.ssim_mse_pairs(A, B, pairs, device="tpu")


def test_pairs_with_cuda_kernels_under_the_simulator(tmp_path):
    """`imprint pairs`'s CUDA re-ranking path (resident generated set, streamed real batches), run by the
    Numba CUDA simulator with ONNX and FAISS on the CPU, gives the CPU kernels' SSIM/MSE."""
    script = f"""
import json, sys
import numpy as np
sys.path.insert(0, "tests")
from conftest import ct_like, save_png
from imprint.engine import device as D
from imprint.engine.pairs import run_pairs
import pyarrow.parquet as pq
from pathlib import Path
rng = np.random.default_rng(4)
t = Path({str(tmp_path)!r})
for sub, n in (("real", 3), ("gen", 2)):
    (t / sub).mkdir()
    for i, im in enumerate(ct_like(rng, n, 16)):
        save_png(t / sub / f"{{i}}.png", im)
from imprint.models.build import build_all
import os
build_all(t / "models", only=["pixel"])
os.environ["IMPRINT_MODELS_DIR"] = str(t / "models")
D._ACTIVE = D.Device("auto", "cpu", "cpu", "cuda")
out = {{}}
for name in ("gpu", "cpu"):
    if name == "cpu":
        D._ACTIVE = D.Device("cpu")
    s = run_pairs(real_dir=str(t / "real"), gen_dir=str(t / "gen"), k=2, out=str(t / f"{{name}}.parquet"),
                  batch=2, policy=__import__("imprint.engine.ingest", fromlist=["x"]).IngestPolicy(size=(16, 16)))
    tab = pq.read_table(t / f"{{name}}.parquet").to_pydict()
    out[name] = {{"ssim": tab["ssim"], "mse": tab["mse"], "device": s["device"]}}
D._ACTIVE = D.Device("auto", "cpu", "cpu", "cuda")
X = ct_like(rng, 2, 16)
out["lbp"] = {{"X": X.tolist(), "h": D.lbp_histograms(X).tolist()}}
print("JSON" + json.dumps(out))
"""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("JSON")][-1][4:])
    from imprint.kernels import lbp_histograms

    X = np.array(res["lbp"]["X"], np.uint8)
    np.testing.assert_array_equal(np.array(res["lbp"]["h"], np.float32), lbp_histograms(X))
    assert res["gpu"]["device"]["pair_kernels"] == "cuda" and res["cpu"]["device"]["pair_kernels"] == "cpu"
    assert len(res["gpu"]["ssim"]) == 6
    np.testing.assert_allclose(res["gpu"]["ssim"], res["cpu"]["ssim"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(res["gpu"]["mse"], res["cpu"]["mse"], rtol=1e-6, atol=1e-5)


# ----------------------------------------------------------------------------- benchmarks/gpu_check.py
def test_gpu_check_on_a_cpu_machine_exits_at_once_with_gpu_false(tmp_path):
    from imprint.kernels.cuda_similarity import cuda_available

    if D.onnx_cuda_trial()[0] or cuda_available():  # pragma: no cover - a GPU machine
        pytest.skip("a GPU is present")
    env = dict(os.environ, PYTHONPATH=str(ROOT), NUMBA_ENABLE_CUDASIM="1")  # the simulator is not a GPU
    r = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--out", str(tmp_path / "o")], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "o" / "gpu_check.json").read_text())
    assert doc["gpu"] is False and "sections" not in doc
    assert not doc["facts"]["pair_kernels"]["ok"] and "simulator" in doc["facts"]["pair_kernels"]["why"]
    assert not doc["facts"]["onnxruntime"]["ok"] and doc["facts"]["onnxruntime"]["why"]


# The section driver, the time budget and the simulated dry run of every section: tests/test_gpu_check_cuda.py


def test_cuda_libraries_preloaded_once_before_a_cuda_session_quietly(monkeypatch, capsys, tmp_path):
    """onnxruntime-gpu's CUDA provider has no run path on Linux: without ``preload_dlls`` (or LD_LIBRARY_PATH)
    a `gpu` extra install silently runs on the CPU.  The trial and every CUDA backbone preload first, once,
    and what ``preload_dlls`` prints (or raises) ends up in the reason, not on stdout."""
    _fake_cuda_listed(monkeypatch)
    import onnxruntime as ort

    from imprint.engine import backbone as B

    calls = []

    def fake_preload(cuda=True, cudnn=True, msvc=True, directory=None):
        calls.append((cuda, cudnn))
        print("Failed to load libcudart.so.13: not found")

    monkeypatch.setattr(ort, "preload_dlls", fake_preload, raising=False)
    monkeypatch.setattr(B, "_PRELOADED", {})
    ok, why = D.onnx_cuda_trial()
    assert not ok and "fell back" in why and "libcudart.so.13" in why
    assert calls == [(True, True)]
    assert "libcudart" not in capsys.readouterr().out
    # once per process: a second call does not preload again
    assert "libcudart.so.13" in B.preload_cuda_libraries(ort) and calls == [(True, True)]

    def raising_preload(**kw):
        raise RuntimeError("Invalid parameter of directory")

    monkeypatch.setattr(ort, "preload_dlls", raising_preload, raising=False)
    monkeypatch.setattr(B, "_PRELOADED", {})
    assert "Invalid parameter" in B.preload_cuda_libraries(ort)
    # a CPU-only request never preloads
    monkeypatch.setattr(B, "_PRELOADED", {})
    monkeypatch.setattr(ort, "preload_dlls", fake_preload, raising=False)
    calls.clear()
    f = tmp_path / "add.onnx"
    f.write_bytes(D._tiny_onnx())

    class _Spec:
        name, onnx_path, input_size, channels = "tiny", str(f), (1, 4), 1

    bb = B.Backbone(_Spec(), providers=["cpu"])
    assert bb.providers == ["CPUExecutionProvider"] and calls == []


def _fake_faiss_gpu(monkeypatch):
    """faiss that says it has GPU support and one GPU (a faiss-gpu build), in this process only."""
    import types

    fake = types.ModuleType("faiss")
    fake.get_num_gpus = lambda: 1
    fake.StandardGpuResources = object
    monkeypatch.setitem(sys.modules, "faiss", fake)


def test_faiss_gpu_build_that_aborts_is_a_reason_not_a_crash(monkeypatch):
    """The PyPI faiss-gpu-cu12 1.14.1 wheel has no kernels for an H200: its first GPU search aborts the process
    (SIGABRT, "CUDA error 209 no kernel image ...", seen on the device 2026-11-30).  The trial search runs in a
    child first, so a job under --device auto puts FAISS on the CPU with the reason, and --device cuda is one
    line; planted here with a child that prints FAISS's message and aborts."""
    _fake_faiss_gpu(monkeypatch)
    monkeypatch.setattr(D, "_FAISS_CHILD_CODE", (
        "import os, sys\n"
        "sys.stderr.write(\"Faiss assertion 'err__ == cudaSuccess' failed in void faiss::gpu::runL2Norm at "
        "L2Norm.cu:257; details: CUDA error 209 no kernel image is available for execution on the device\\n\")\n"
        "sys.stderr.flush()\n"
        "os.abort()\n"))
    ok, why = D.faiss_gpu_trial()
    assert not ok
    assert "no kernels for this GPU" in why and "CUDA error 209" in why and "signal 6" in why and "\n" not in why
    dev = D.resolve("auto")
    assert dev.faiss == "cpu" and "CUDA error 209" in dev.reasons["faiss"]
    with pytest.raises(ImprintError) as ei:
        D.resolve("cuda")
    assert "\n" not in str(ei.value) and "faiss" in str(ei.value).lower()


def test_faiss_gpu_trial_child_that_hangs_times_out(monkeypatch):
    _fake_faiss_gpu(monkeypatch)
    monkeypatch.setattr(D, "_FAISS_CHILD_CODE", "import time\ntime.sleep(60)\n")
    monkeypatch.setattr(D, "FAISS_CHILD_TIMEOUT_S", 2.0)
    ok, why = D.faiss_gpu_trial()
    assert not ok and "did not finish in 2 s" in why
