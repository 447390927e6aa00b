"""``imprint doctor``: what imprint will run on here.

Facts gathered (each probe is isolated: a failing probe reports its error and the others still run):

* versions of imprint, Python and the libraries it uses;
* the onnxruntime execution providers that *really* run: a trial session on a tiny ONNX graph per available
  provider, which counts only when onnxruntime kept that provider in the session and the graph ran;
* FAISS: build flavour and GPU count; Numba CUDA availability (and whether the CUDA simulator is on);
* GPU name and memory (``nvidia-smi``, else Numba's CUDA context); CPU count (visible, usable, cgroup quota);
  memory (physical, cgroup limit, imprint's decoded-image budget);
* the ONNX backbones: models folder, and per backbone whether it is built and its sha256 matches the manifest.
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
import warnings
from importlib import metadata
from pathlib import Path

#: distribution names reported in ``versions`` (the first installed of each group).
VERSION_DISTS = {
    "imprint": ("imprint",),
    "numpy": ("numpy",),
    "numba": ("numba",),
    "onnxruntime": ("onnxruntime-gpu", "onnxruntime"),
    "faiss": ("faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu11", "faiss-cpu"),
    "pyarrow": ("pyarrow",),
    "scikit-learn": ("scikit-learn",),
    "pydicom": ("pydicom",),
    "nibabel": ("nibabel",),
    "ray": ("ray",),
    "python-gdcm": ("python-gdcm",),
    "pylibjpeg-openjpeg": ("pylibjpeg-openjpeg",),
}


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for key, dists in VERSION_DISTS.items():
        out[key] = None
        for d in dists:
            try:
                v = metadata.version(d)
            except metadata.PackageNotFoundError:
                continue
            out[key] = v if d == dists[-1] or len(dists) == 1 else f"{v} ({d})"
            break
    return out


def _tiny_onnx() -> bytes:
    """A 1x4 float graph ``y = x + x`` (opset 13), serialised."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    g = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "doctor", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], producer_name="imprint-doctor")
    m.ir_version = min(m.ir_version, 8)
    return m.SerializeToString()


def probe_onnxruntime() -> dict:
    """Available providers, and for each a trial session: ``{"ok": bool, "detail": str, "seconds": float}``."""
    import numpy as np

    try:
        import onnxruntime as ort
    except Exception as exc:  # noqa: BLE001
        return {"error": f"onnxruntime not importable ({type(exc).__name__}: {exc})"}
    model = _tiny_onnx()
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    trials = {}
    available = list(ort.get_available_providers())
    for p in available:
        t0 = time.perf_counter()
        try:
            so = ort.SessionOptions()
            so.log_severity_level = 4  # the trial reports failures itself
            with warnings.catch_warnings():  # the fallback warning: the trial reports it itself
                warnings.simplefilter("ignore")
                sess = ort.InferenceSession(model, so, providers=[p])
            got = sess.run(None, {"x": x})[0]
            active = list(sess.get_providers())
            ok = p in active and np.array_equal(got, x + x)
            detail = "ran" if ok else f"fell back to {', '.join(active)}"
        except Exception as exc:  # noqa: BLE001 - a provider whose libraries are missing fails here
            ok, detail = False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        trials[p] = {"ok": bool(ok), "detail": detail, "seconds": round(time.perf_counter() - t0, 3)}
    return {"version": ort.__version__, "device": ort.get_device(), "available": available,
            "working": [p for p, t in trials.items() if t["ok"]], "trials": trials}


def probe_faiss() -> dict:
    try:
        import faiss
    except Exception as exc:  # noqa: BLE001
        return {"error": f"faiss not importable ({type(exc).__name__})"}
    out = {"version": getattr(faiss, "__version__", None), "gpus": 0,
           "gpu_build": hasattr(faiss, "StandardGpuResources")}
    try:
        out["gpus"] = int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0
    except Exception as exc:  # noqa: BLE001
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def probe_numba_cuda() -> dict:
    out = {"simulator": os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1", "available": False, "devices": []}
    try:
        from numba import cuda

        out["available"] = bool(cuda.is_available())
        if out["available"]:
            for dev in cuda.list_devices():
                name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
                out["devices"].append({"id": int(dev.id), "name": name,
                                       "compute_capability": list(getattr(dev, "compute_capability", ()))})
    except Exception as exc:  # noqa: BLE001 - no driver, broken toolkit
        out["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    return out


def probe_gpus(numba_cuda: dict | None = None) -> list[dict]:
    """GPUs with total/used memory in MiB: from ``nvidia-smi`` when present, else Numba's CUDA context."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            r = subprocess.run([smi, "--query-gpu=index,name,memory.total,memory.used",
                                "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20)
            gpus = []
            for line in r.stdout.strip().splitlines():
                i, name, total, used = (v.strip() for v in line.split(",")[:4])
                gpus.append({"index": int(i), "name": name, "memory_total_mib": int(float(total)),
                             "memory_used_mib": int(float(used)), "source": "nvidia-smi"})
            if gpus:
                return gpus
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
    if numba_cuda and numba_cuda.get("available") and not numba_cuda.get("simulator"):
        try:
            from numba import cuda

            gpus = []
            for dev in cuda.list_devices():
                with dev:
                    free, total = cuda.current_context().get_memory_info()
                name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
                gpus.append({"index": int(dev.id), "name": name, "memory_total_mib": int(total // 2**20),
                             "memory_used_mib": int((total - free) // 2**20), "source": "numba"})
            return gpus
        except Exception:  # noqa: BLE001
            pass
    return []


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def probe_cpu_memory() -> dict:
    from .ingest import IngestPolicy

    cpus = {"logical": os.cpu_count()}
    try:
        cpus["usable"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus["usable"] = os.cpu_count()
    quota = _read("/sys/fs/cgroup/cpu.max")
    if quota and not quota.startswith("max"):
        try:
            q, period = quota.split()[:2]
            cpus["cgroup_quota"] = round(int(q) / int(period), 2)
        except ValueError:
            pass
    mem = {}
    try:
        mem["physical_bytes"] = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        pass
    lim = _read("/sys/fs/cgroup/memory.max") or _read("/sys/fs/cgroup/memory/memory.limit_in_bytes")
    if lim and lim != "max":
        try:
            v = int(lim)
            if v < 2**60:
                mem["cgroup_limit_bytes"] = v
        except ValueError:
            pass
    try:
        mem["imprint_budget_bytes"] = IngestPolicy().memory_limit()
        mem["imprint_budget_from"] = ("IMPRINT_MAX_MEMORY_GB" if os.environ.get("IMPRINT_MAX_MEMORY_GB")
                                      else "half the physical memory")
    except Exception as exc:  # noqa: BLE001 - e.g. a bad IMPRINT_MAX_MEMORY_GB
        mem["imprint_budget_error"] = str(exc)
    return {"cpus": cpus, "memory": mem}


def probe_backbones(models_dir=None) -> dict:
    from imprint.models import registry

    d = Path(models_dir) if models_dir is not None else registry.default_models_dir()
    out = {"models_dir": str(d), "from": "argument" if models_dir is not None else
           ("IMPRINT_MODELS_DIR" if os.environ.get("IMPRINT_MODELS_DIR") else "package"), "backbones": {}}
    for name in registry.BUILTIN:
        try:
            spec = registry.resolve(name, models_dir=d, verify=True)
            out["backbones"][name] = {"built": True, "checksum_ok": True, "path": spec.onnx_path,
                                      "sha256": spec.sha256}
        except Exception as exc:  # noqa: BLE001 - ImprintError: not built / stale / checksum mismatch
            msg = str(exc)
            out["backbones"][name] = {"built": "not built" not in msg, "checksum_ok": False, "problem": msg}
    return out


def collect(models_dir=None) -> dict:
    """Every fact ``imprint doctor`` reports, as a JSON-able dict (see the module docstring)."""
    facts: dict = {"imprint_path": str(Path(__file__).resolve().parents[1]), "python_executable": sys.executable,
                   "platform": platform.platform()}
    facts["versions"] = _versions()
    facts["onnxruntime"] = probe_onnxruntime()
    facts["faiss"] = probe_faiss()
    facts["numba_cuda"] = probe_numba_cuda()
    facts["gpus"] = probe_gpus(facts["numba_cuda"])
    facts.update(probe_cpu_memory())
    try:
        facts["backbones"] = probe_backbones(models_dir)
    except Exception as exc:  # noqa: BLE001
        facts["backbones"] = {"error": f"{type(exc).__name__}: {exc}"}
    problems = []
    if not facts["onnxruntime"].get("working"):
        problems.append("no onnxruntime execution provider runs")
    bb = facts["backbones"].get("backbones", {})
    unbuilt = [n for n, b in bb.items() if not b.get("checksum_ok")]
    if unbuilt:
        problems.append(f"backbones not ready: {', '.join(unbuilt)} (run `imprint models build`)")
    facts["problems"] = problems
    return facts


def _gib(b) -> str:
    return "-" if b is None else f"{b / 2**30:.1f} GiB"


def format_table(f: dict) -> str:
    """The human-readable ``imprint doctor`` output: a short two-column table."""
    rows: list[tuple[str, str]] = []
    v = f["versions"]
    rows.append(("imprint", f"{v.get('imprint') or '?'}  ({f['imprint_path']})"))
    rows.append(("python", f"{v['python']}  ({f['python_executable']})"))
    libs = [k for k in VERSION_DISTS if k != "imprint"]
    rows.append(("libraries", ", ".join(f"{k} {v.get(k) or 'not installed'}" for k in libs)))
    o = f["onnxruntime"]
    if "error" in o:
        rows.append(("onnxruntime", o["error"]))
    else:
        parts = [f"{p.replace('ExecutionProvider', '')} {'ok' if t['ok'] else 'FAILED (' + t['detail'] + ')'}"
                 for p, t in o["trials"].items()]
        rows.append(("onnx providers", "; ".join(parts) + "  (trial session per provider)"))
    fa = f["faiss"]
    rows.append(("faiss", fa.get("error") or f"{fa.get('version')}, {fa['gpus']} GPU(s)"
                 + ("" if fa.get("gpu_build") else " (CPU build)")))
    nc = f["numba_cuda"]
    rows.append(("numba cuda", ("available" if nc["available"] else "not available")
                 + (f": {', '.join(d['name'] for d in nc['devices'])}" if nc["devices"] else "")
                 + ("  [CUDA simulator ON]" if nc["simulator"] else "")
                 + (f"  ({nc['error']})" if nc.get("error") and not nc["available"] else "")))
    rows.append(("gpus", "; ".join(f"{g['index']}: {g['name']} {g['memory_used_mib']}/{g['memory_total_mib']} MiB"
                                   for g in f["gpus"]) or "none"))
    c, m = f["cpus"], f["memory"]
    rows.append(("cpus", f"{c['usable']} usable of {c['logical']}"
                 + (f", cgroup quota {c['cgroup_quota']}" if "cgroup_quota" in c else "")))
    rows.append(("memory", f"{_gib(m.get('physical_bytes'))} physical"
                 + (f", cgroup limit {_gib(m['cgroup_limit_bytes'])}" if "cgroup_limit_bytes" in m else "")
                 + (f", image budget {_gib(m['imprint_budget_bytes'])} ({m['imprint_budget_from']})"
                    if "imprint_budget_bytes" in m else "")))
    b = f["backbones"]
    if "error" in b:
        rows.append(("backbones", b["error"]))
    else:
        rows.append(("models dir", f"{b['models_dir']}  (from {b['from']})"))
        rows.append(("backbones", ", ".join(
            f"{n} {'ok' if x['checksum_ok'] else ('BAD CHECKSUM/STALE' if x['built'] else 'not built')}"
            for n, x in b["backbones"].items())))
    w = max(len(k) for k, _ in rows)
    lines = [f"{k:<{w}}  {val}" for k, val in rows]
    lines.append("status" .ljust(w) + "  " + ("ok" if not f["problems"] else "; ".join(f["problems"])))
    return "\n".join(lines)
