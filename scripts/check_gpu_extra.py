"""Check that ``imprint[gpu]`` resolves to GPU builds only, with one CUDA major version.

    .venv/bin/python scripts/check_gpu_extra.py            # resolve now (needs the package index)
    .venv/bin/python scripts/check_gpu_extra.py REPORT.json  # check a saved `pip --report`
    .venv/bin/python scripts/check_gpu_extra.py --save tests/data/gpu_extra_resolution.json  # refresh the cache

``--save`` writes the resolution trimmed to names and versions together with the ``gpu`` extra it was resolved
for; the offline test checks that cache and that it still matches pyproject.toml.

Runs ``pip install --dry-run --ignore-installed --report`` on ``.[gpu]`` (nothing is installed) and fails
(exit 1, one line per problem) when the resolution

* contains a CPU twin that unpacks into the same folder as a GPU package (``onnxruntime``,
  ``faiss-cpu``), or a second ONNX/FAISS GPU build;
* lacks ``onnxruntime-gpu``, ``faiss-gpu-cu*`` or the CUDA runtime / cuDNN wheels;
* mixes CUDA major versions (``nvidia-*-cuNN`` / ``faiss-gpu-cuNN`` suffixes, and the version major of the
  unsuffixed ``nvidia-cuda-runtime``, ``nvidia-cuda-nvrtc``, ``cuda-toolkit``, ``cuda-bindings`` wheels).

The pure function :func:`check_report` is what ``tests/test_device.py`` exercises on saved and planted reports.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile

#: CPU builds that share a package folder with a GPU build
CPU_TWINS = {"onnxruntime": "onnxruntime-gpu", "faiss-cpu": "faiss-gpu-cu*"}
#: unsuffixed CUDA wheels whose version major is the CUDA major
_VERSIONED = {"nvidia-cuda-runtime", "nvidia-cuda-nvrtc", "nvidia-cuda-nvcc", "nvidia-nvjitlink",
              "cuda-toolkit", "cuda-bindings", "nvidia-cuda-cccl"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def packages(report: dict) -> dict[str, str]:
    """``{normalised name: version}`` of a ``pip install --report`` JSON document."""
    return {_norm(i["metadata"]["name"]): str(i["metadata"]["version"]) for i in report.get("install", [])}


def cuda_majors(pkgs: dict[str, str]) -> dict[int, list[str]]:
    """CUDA major version -> packages that imply it."""
    out: dict[int, list[str]] = {}
    for name, ver in sorted(pkgs.items()):
        m = re.search(r"-cu(\d+)$", name)
        if m and (name.startswith("nvidia-") or name.startswith("faiss-gpu") or name.startswith("cupy")):
            major = int(m.group(1))
        elif name in _VERSIONED:
            major = int(ver.split(".")[0])
        else:
            continue
        out.setdefault(major, []).append(name)
    return out


def check_report(report: dict) -> list[str]:
    """Problems of a ``.[gpu]`` resolution (empty list: fine).

    Parameters
    ----------
    report : dict
        ``pip install --dry-run --report`` JSON.

    Returns
    -------
    list of str
        One sentence per problem.
    """
    pkgs = packages(report)
    problems = []
    for cpu, gpu in CPU_TWINS.items():
        if cpu in pkgs:
            problems.append(f"CPU twin {cpu} {pkgs[cpu]} is resolved beside {gpu}: both unpack into one folder")
    if "onnxruntime-gpu" not in pkgs:
        problems.append("onnxruntime-gpu is missing")
    faiss_gpu = [n for n in pkgs if n.startswith("faiss-gpu")]
    if len(faiss_gpu) != 1:
        problems.append(f"expected exactly one faiss-gpu build, got {faiss_gpu or 'none'}")
    if not any(n.startswith("nvidia-cuda-runtime") for n in pkgs):
        problems.append("no CUDA runtime wheel (nvidia-cuda-runtime*): onnxruntime-gpu needs its [cuda] extra")
    if not any(n.startswith("nvidia-cudnn") for n in pkgs):
        problems.append("no cuDNN wheel (nvidia-cudnn*): onnxruntime-gpu needs its [cudnn] extra")
    majors = cuda_majors(pkgs)
    if len(majors) > 1:
        desc = "; ".join(f"CUDA {k}: {', '.join(v)}" for k, v in sorted(majors.items()))
        problems.append(f"more than one CUDA major version ({desc})")
    return problems


def resolve(target: str = ".[gpu]") -> dict:
    """Run pip's resolver on ``target`` without installing; returns the report."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "report.json")
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--disable-pip-version-check", "--report", path, target]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(
            os.path.abspath(__file__))))
        if res.returncode != 0:
            last = (res.stderr.strip().splitlines() or ["?"])[-1]
            raise SystemExit(f"pip could not resolve {target}: {last}")
        with open(path) as fh:
            return json.load(fh)


def gpu_extra(pyproject: str | None = None) -> list[str]:
    """The ``gpu`` extra's requirement strings from pyproject.toml."""
    import tomllib

    pyproject = pyproject or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                          "pyproject.toml")
    with open(pyproject, "rb") as fh:
        return list(tomllib.load(fh)["project"]["optional-dependencies"]["gpu"])


def main(argv: list[str]) -> int:
    save = None
    if argv[:1] == ["--save"]:
        if len(argv) < 2:
            raise SystemExit("usage: check_gpu_extra.py --save OUT.json")
        save, argv = argv[1], argv[2:]
    if argv:
        with open(argv[0]) as fh:
            report = json.load(fh)
    else:
        report = resolve()
    pkgs = packages(report)
    majors = cuda_majors(pkgs)
    problems = check_report(report)
    if save:
        trimmed = {"gpu_extra": gpu_extra(), "install": [
            {"metadata": {"name": i["metadata"]["name"], "version": i["metadata"]["version"]}}
            for i in report.get("install", [])]}
        tmp = save + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(trimmed, fh, indent=1, sort_keys=True)
            fh.write("\n")
        os.replace(tmp, save)
    for name in ("onnxruntime-gpu", "numba-cuda"):
        if name in pkgs:
            print(f"{name} {pkgs[name]}")
    print("faiss:", ", ".join(f"{n} {v}" for n, v in pkgs.items() if n.startswith("faiss")))
    print("CUDA majors:", {k: len(v) for k, v in majors.items()})
    for p in problems:
        print("PROBLEM:", p)
    print("OK" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
