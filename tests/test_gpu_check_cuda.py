"""benchmarks/gpu_check.py, the one prepared device check of issue 14, proven on a CPU machine.

``--simulate`` runs every section's code (Numba's CUDA simulator for the kernels, CPU FAISS and the CPU provider
standing in for their GPU builds, ``imprint pairs`` on a few dozen images) so that the day a GPU is lent, the
script's imports, call signatures, JSON fields and time-budget logic are already known to work.  The budget tests
plant a hung section and require it to be killed with its first figure kept, and the next section to be skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check as GC  # noqa: E402


@pytest.fixture(scope="module")
def pixel_models(tmp_path_factory):
    """Only the ``pixel`` backbone (what ``imprint pairs`` and the simulated onnx section need)."""
    from imprint.models.build import build_all

    d = tmp_path_factory.mktemp("models")
    build_all(d, only=["pixel"])
    return d


def _run(args, tmp_path, env_extra=None, timeout=240):
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env_extra or {}))
    env.pop("NUMBA_ENABLE_CUDASIM", None)  # --simulate sets it itself
    return subprocess.run([sys.executable, "benchmarks/gpu_check.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_cuda_gpu_check_simulated_dry_run_covers_every_section(tmp_path, pixel_models):
    out = tmp_path / "o"
    r = _run(["--simulate", "--out", str(out)], tmp_path, {"IMPRINT_MODELS_DIR": str(pixel_models)})
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads((out / "gpu_check.json").read_text())
    # marked simulated at the top and in every section; never counted as a GPU; no targets claimed
    assert doc["simulated"] is True and doc["mode"] == "simulated" and doc["gpu"] is False
    assert "SIMULATED" in doc["note"] and doc["targets"] == "not evaluated: simulated"
    assert set(doc["sections"]) == set(GC.SECTIONS)
    for name, sec in doc["sections"].items():
        assert sec["simulated"] is True and sec["stand_in"] == GC.STAND_INS[name], name
        assert "error" not in sec and "killed" not in sec, (name, sec.get("error"), sec.get("traceback"))
        assert sec["finished"] is True and sec["seconds"] > 0
    assert doc["total_s"] <= doc["budget_s"]
    assert {"onnxruntime", "faiss", "pair_kernels", "nvidia_smi", "versions", "python"} <= set(doc["facts"])
    # pair kernels: both sizes measured, GPU (simulated) == CPU kernels, LBP bit-equal
    pk = doc["sections"]["pair_kernels"]
    for size in ("12", "14"):
        rec = pk[size]
        for key in ("gpu_ssim_mse_pairs_per_s", "cpu_ssim_plus_mse_pairs_per_s", "speedup", "seconds_for_1e9_pairs",
                    "pairs_per_call", "cpu_pairs_compared", "scorer_build_s", "first_call_s", "probe_pairs_per_s"):
            assert rec[key] > 0, (size, key)
        assert rec["max_abs_diff_ssim"] < 1e-5 and rec["max_rel_diff_mse"] < 1e-6
        # every kernel variant timed in the same run (end to end and kernel-only), each compared with the CPU
        from imprint.kernels.cuda_similarity import DEFAULT_VARIANT, VARIANTS

        assert pk["default_variant"] == DEFAULT_VARIANT and set(rec["variants"]) == set(VARIANTS)
        for v, vr in rec["variants"].items():
            for key in ("gpu_ssim_mse_pairs_per_s", "kernel_only_pairs_per_s", "seconds_for_1e9_pairs",
                        "speedup_vs_cpu", "first_call_s"):
                assert vr[key] > 0, (size, v, key)
            assert vr["max_abs_diff_ssim"] < 1e-5 and vr["max_rel_diff_mse"] < 1e-6, (size, v)
        assert rec["gpu_ssim_mse_pairs_per_s"] == rec["variants"][DEFAULT_VARIANT]["gpu_ssim_mse_pairs_per_s"]
        assert all(rec[f"speedup_vs_{v}"] > 0 for v in VARIANTS if v != DEFAULT_VARIANT)
    assert pk["lbp_8"]["bit_equal"] is True and pk["lbp_8"]["gpu_images_per_s"] > 0
    # FAISS: the exact search over the whole base, and the engine's knn with re-ranking
    kn = doc["sections"]["faiss_knn"]
    assert kn["result"]["complete"] is True and kn["result"]["n_queries"] == kn["result"]["n_base"]
    assert kn["result"]["raw_queries_per_s"] > 0 and kn["engine_knn_exact_rerank"]["queries"] > 0
    # onnx: the built backbone measured on both labels; the unbuilt ones say so instead of failing the section
    on = doc["sections"]["onnx"]
    for key in ("cuda_session_images_per_s", "cuda_embed_images_per_s", "cpu_session_images_per_s",
                "cpu_embed_images_per_s", "session_speedup"):
        assert on["pixel"][key] > 0, key
    assert "not built" in on["effnet-lite0-fp16"].get("skipped", "not built")
    # imprint pairs end to end: the probe, then the larger run sized from it, each saying where it ran
    e2e = doc["sections"]["pairs_e2e"]
    z = GC.SIZES["simulated"]["e2e"]
    assert e2e["probe"]["n_pairs"] == z["probe_real"] * z["k"]
    assert e2e["full"]["n_real"] == z["max_real"] and e2e["full"]["n_pairs"] == z["max_real"] * z["k"]
    assert e2e["full"]["device"]["requested"] == "auto" and e2e["full"]["device"]["pair_kernels"] == "cpu"
    assert not list(out.glob("*.partial.json")) and not list(out.glob("*.tmp"))


def test_cuda_gpu_check_kills_a_hung_section_keeps_its_figures_and_skips_what_no_longer_fits(tmp_path):
    """A section that hangs is killed ``--grace`` after its share; what it recorded before survives in the JSON
    (written after every section), and a section with less than MIN_SECTION_S left is skipped."""
    out = tmp_path / "o"
    budget = 10.0
    t0 = time.time()
    r = _run(["--simulate", "--out", str(out), "--only", "faiss_knn,onnx", "--budget", str(budget),
              "--grace", "1"], tmp_path, {"IMPRINT_GPU_CHECK_HANG": "faiss_knn"}, timeout=120)
    wall = time.time() - t0
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads((out / "gpu_check.json").read_text())
    kn = doc["sections"]["faiss_knn"]
    assert kn["before_hang"] == 1 and "killed" in kn and kn["simulated"] is True
    # its share: 0.2 / (0.2 + 0.15) of what was left after the facts, plus the grace
    assert kn["seconds"] <= budget * 0.2 / 0.35 + 1.0 + 1.0
    assert doc["sections"]["onnx"]["skipped"] == "time budget"
    assert wall < budget + 1.0 + 30  # the whole run is bounded (30 s: interpreter start-up on a loaded machine)
    # the hung section's processes are gone (its process group was killed)
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert f"--partial {out}" not in ps


def test_cuda_gpu_check_budget_shares_and_updates():
    """run_sections: each section's deadline is its share of what is left, a slow section leaves less to the
    next, one with less than MIN_SECTION_S left is skipped, and the JSON callback sees every section."""
    calls, updates = [], []

    def launch(name, until, hard):
        calls.append((name, until, hard))
        if name == "pair_kernels":
            return {"error": "planted"}
        return {"value": 1}

    t0 = time.time()
    out = GC.run_sections(["pair_kernels", "faiss_knn", "onnx"], 100.0, launch, lambda s: updates.append(dict(s)),
                          start=t0)
    assert out["pair_kernels"]["error"] == "planted" and out["faiss_knn"]["value"] == 1 and out["onnx"]["value"] == 1
    assert [len(u) for u in updates] == [1, 2, 3]
    share0 = GC.SHARES["pair_kernels"] / (GC.SHARES["pair_kernels"] + GC.SHARES["faiss_knn"] + GC.SHARES["onnx"])
    assert abs(calls[0][1] - (t0 + share0 * 100.0)) < 1.0 and abs(calls[0][2] - (share0 * 100 + GC.GRACE_S)) < 1.0
    assert abs(calls[2][1] - (t0 + 100.0)) < 1.0  # the last section may use everything left

    def slow(name, until, hard):
        time.sleep(0.3)
        return {}

    out = GC.run_sections(["pair_kernels", "faiss_knn"], GC.MIN_SECTION_S + 0.2, slow)
    assert "skipped" not in out["pair_kernels"] and out["faiss_knn"]["skipped"] == "time budget"


def test_cuda_gpu_check_targets_are_judged_only_on_measured_figures():
    secs = {"pair_kernels": {"128": {"seconds_for_1e9_pairs": 550.0}},
            "faiss_knn": {"result": {"n_base": 300_000, "estimated_s_for_all_queries": 20.0}},
            "onnx": {"effnet-lite0-fp16": {"cuda_session_images_per_s": 4000.0}}}
    t = GC.targets(secs)
    assert t["met"] == {"ssim_1e9_pairs_128_s": True, "knn_1m_s": None, "effnet_fp16_images_per_s": False}


def test_cuda_gpu_device_check_script_runs_the_check_and_keeps_a_log(tmp_path):
    """scripts/gpu_device_check.sh (the device tool's one command) in its simulated form: environment report,
    the check itself, the JSON and the log under $OUT."""
    out = tmp_path / "OUT"
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, PYTHONPATH=str(ROOT))
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    r = subprocess.run(["bash", "scripts/gpu_device_check.sh", "--simulate", "--only", "faiss_knn", "--budget", "60"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-2000:])
    log = (out / "gpu_device_check.log").read_text()
    assert "numpy " in log and "faiss " in log and "== gpu_check exit status 0" in log
    # a --budget among the arguments sets the check's budget and the script's outer limit (budget + 60 s)
    assert "gpu_check budget 60 s, outer limit 120 s" in log
    doc = json.loads((out / "gpu_check.json").read_text())
    assert doc["simulated"] is True and list(doc["sections"]) == ["faiss_knn"] and doc["budget_s"] == 60
    assert doc["sections"]["faiss_knn"]["result"]["complete"] is True


def test_cuda_gpu_check_real_sections_say_what_is_missing(tmp_path):
    """Without the simulator, a section whose GPU library is missing records "skipped" with the reason and what to
    install, instead of failing: so the device run (where faiss-gpu and onnxruntime-gpu cannot be installed) still
    measures the rest and says why these are absent."""
    from imprint.engine import device as D
    from imprint.kernels.cuda_similarity import cuda_available

    if D.onnx_cuda_trial()[0] or D.faiss_gpu_trial()[0] or cuda_available():  # pragma: no cover - a GPU machine
        pytest.skip("a GPU is present")
    fns = {"pair_kernels": GC.sec_pair_kernels, "faiss_knn": GC.sec_faiss_knn, "onnx": GC.sec_onnx}
    for name, fn in fns.items():
        res = fn(GC.Ctx(name, time.time() + 60, False, None, tmp_path))
        assert res["needs"] == GC.NEEDS[name] and "unavailable" in res["skipped"], (name, res)
        assert "simulated" not in res


def test_cuda_gpu_check_stopped_from_outside_keeps_the_running_sections_figures(tmp_path):
    """SIGTERM to the check (an outer timeout) while a section runs: exit 130, the section's process group is
    killed, and the JSON holds what that section had recorded."""
    out = tmp_path / "o"
    env = dict(os.environ, PYTHONPATH=str(ROOT), IMPRINT_GPU_CHECK_HANG="faiss_knn")
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    p = subprocess.Popen([sys.executable, "benchmarks/gpu_check.py", "--simulate", "--out", str(out), "--only",
                          "faiss_knn", "--budget", "120"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    partial = out / "faiss_knn.partial.json"
    end = time.time() + 90
    while time.time() < end and GC.read_json(partial).get("before_hang") != 1:
        time.sleep(0.1)
    p.send_signal(subprocess.signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err[-2000:]
    doc = json.loads((out / "gpu_check.json").read_text())
    assert doc["interrupted"] is True
    kn = doc["sections"]["faiss_knn"]
    assert kn["before_hang"] == 1 and kn["killed"] == "the whole check was interrupted"
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert f"--partial {partial}" not in ps
