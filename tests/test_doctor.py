"""`imprint doctor`: versions, providers that really run (trial sessions), FAISS/Numba CUDA facts, backbones."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from imprint.engine import doctor
from imprint.engine.cli import cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pixel_only(tmp_path_factory):
    from imprint.models.build import build_all

    d = tmp_path_factory.mktemp("doctor_models")
    assert build_all(d, only=["pixel"])["pixel"] == "built"
    return d


def test_json_reports_providers_gpus_cuda_and_backbones(pixel_only):
    r = CliRunner().invoke(cli, ["doctor", "--json", "--models-dir", str(pixel_only)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    f = json.loads(r.output)
    import faiss
    import numpy
    import onnxruntime as ort

    assert f["versions"]["numpy"] == numpy.__version__ and f["versions"]["python"]
    assert f["versions"]["onnxruntime"].startswith(ort.__version__)
    o = f["onnxruntime"]
    assert o["available"] == ort.get_available_providers()
    assert "CPUExecutionProvider" in o["working"] and o["trials"]["CPUExecutionProvider"]["detail"] == "ran"
    assert f["faiss"]["gpus"] == faiss.get_num_gpus()
    assert isinstance(f["numba_cuda"]["available"], bool) and isinstance(f["numba_cuda"]["simulator"], bool)
    assert isinstance(f["gpus"], list)
    assert f["cpus"]["usable"] >= 1 and f["memory"]["physical_bytes"] > 0 and f["memory"]["imprint_budget_bytes"] > 0
    b = f["backbones"]
    assert b["models_dir"] == str(pixel_only)
    assert b["backbones"]["pixel"]["built"] and b["backbones"]["pixel"]["checksum_ok"]
    assert not b["backbones"]["fingerprint"]["built"]
    assert any("fingerprint" in p for p in f["problems"])


def test_a_provider_that_does_not_really_load_is_reported(monkeypatch):
    """onnxruntime silently falls back to CPU when a requested provider cannot load: the trial must see it."""
    import onnxruntime as ort

    real = ort.get_available_providers()
    fake = "CUDAExecutionProvider" if "CUDAExecutionProvider" not in real else "NoSuchExecutionProvider"
    monkeypatch.setattr(ort, "get_available_providers", lambda: [fake] + real)
    o = doctor.probe_onnxruntime()
    assert o["trials"][fake]["ok"] is False
    assert fake not in o["working"] and "CPUExecutionProvider" in o["working"]


def test_corrupt_backbone_fails_its_checksum(pixel_only, tmp_path):
    import shutil

    d = tmp_path / "m"
    shutil.copytree(pixel_only, d)
    onnx = next(d.glob("pixel*.onnx"))
    data = bytearray(onnx.read_bytes())
    data[-1] ^= 0xFF
    onnx.write_bytes(bytes(data))
    b = doctor.probe_backbones(d)["backbones"]["pixel"]
    assert b["built"] and not b["checksum_ok"] and "sha256" in b["problem"]


def test_human_table_and_cuda_simulator(pixel_only):
    r = CliRunner().invoke(cli, ["doctor", "--models-dir", str(pixel_only)], catch_exceptions=False)
    assert r.exit_code == 0
    keys = [line.split()[0] for line in r.output.splitlines()]
    for k in ("imprint", "python", "libraries", "onnx", "faiss", "numba", "gpus", "cpus", "memory", "backbones",
              "status"):
        assert k in keys, r.output
    assert "CPU ok" in r.output and "pixel ok" in r.output and "fingerprint not built" in r.output
    # with Numba's CUDA simulator switched on, doctor says so (and CUDA counts as available through it)
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    out = subprocess.run([sys.executable, "-c", "import json; from imprint.engine.doctor import probe_numba_cuda;"
                          " print(json.dumps(probe_numba_cuda()))"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    nc = json.loads(out.stdout)
    assert nc["simulator"] is True and nc["available"] is True


def test_every_package_folder_is_installed():
    """A non-editable install (`pip install .`, a wheel) ships exactly the packages listed in pyproject.toml:
    every folder with an __init__.py under the mapped roots must be listed, or it silently goes missing."""
    tomllib = pytest.importorskip("tomllib")
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    mapping = cfg["package-dir"]
    found = set()
    for pkg, folder in mapping.items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            found.add(".".join([pkg, *rel.parts]) if rel.parts else pkg)
    assert found - listed == set(), f"packages missing from pyproject.toml: {sorted(found - listed)}"
    data = cfg["package-data"]["imprint.engine"]
    assert any(p.startswith("data/demo") for p in data) and cfg["include-package-data"] is False
