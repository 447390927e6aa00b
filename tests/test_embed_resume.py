"""`imprint embed`: store round trip, resume only new/changed images, SIGKILL at random points."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ct_like, save_png
from imprint.engine.store import EmbeddingStore

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(5)
    for i, im in enumerate(ct_like(rng, 300, 128)):
        sub = d / f"p{i % 3}"
        sub.mkdir(exist_ok=True)
        save_png(sub / f"{i:04d}.png", im)
    return d


@pytest.fixture(scope="module", autouse=True)
def built_pixel():
    from imprint.models.build import build_all
    from imprint.models.registry import resolve

    try:
        resolve("pixel")
    except Exception:
        build_all(only=["pixel"])


def _embed(folder, store, *extra, env=None):
    return subprocess.Popen([sys.executable, "-m", "imprint.engine.cli", "embed", str(folder), "--store", str(store),
                             "--backbone", "pixel", "--shard-size", "3", *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def _reference(folder, tmp):
    p = _embed(folder, tmp / "ref")
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    v = EmbeddingStore.open(tmp / "ref").read()
    return dict(zip(v.paths, v.vectors))


def test_resume_after_sigkill_equals_uninterrupted(folder, tmp_path):
    ref = _reference(folder, tmp_path)
    assert len(ref) == 300
    killed_mid_run = 0
    for seed in range(3):
        store = tmp_path / f"s{seed}"
        rnd = random.Random(seed)
        for attempt in range(2):  # kill twice at random points after the first committed shard, then finish
            p = _embed(folder, store)
            t_end = time.time() + 120
            while time.time() < t_end and p.poll() is None:
                try:
                    n = len(json.loads((store / "manifest.json").read_text())["shards"])
                except (OSError, ValueError, KeyError):
                    n = 0
                if n > attempt:
                    break
                time.sleep(0.01)
            time.sleep(rnd.uniform(0.0, 0.15))
            if p.poll() is None:
                killed_mid_run += 1
            p.send_signal(signal.SIGKILL)
            p.communicate(timeout=60)
        p = _embed(folder, store)
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        st = EmbeddingStore.open(store)
        v = st.read()
        assert sorted(v.paths) == sorted(ref) and len(v.paths) == len(set(v.paths)) == 300
        for path, vec in zip(v.paths, v.vectors):
            np.testing.assert_array_equal(vec, ref[path])
        for s_ in st.manifest["shards"]:  # every listed shard opens
            assert (store / s_["file"]).exists()
    assert killed_mid_run >= 1, "no kill landed while the job was running; timings need adjusting"


def test_rerun_embeds_only_changed(folder, tmp_path):
    import shutil

    d = tmp_path / "copy"
    shutil.copytree(folder, d)
    p = _embed(d, tmp_path / "s", "--json"); out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    im = np.asarray(ct_like(np.random.default_rng(99), 1, 128)[0])
    save_png(d / "p0" / "0000.png", im)          # changed
    save_png(d / "p1" / "new.png", im)           # new
    p = _embed(d, tmp_path / "s", "--json"); out, err = p.communicate(timeout=300)
    import json
    s = json.loads(out)
    assert s["n_embedded"] == 2 and s["n_already"] == 299 and s["rows"] == 301
    v = EmbeddingStore.open(tmp_path / "s").read()
    assert len(v.paths) == 301
    # mixing backbones is refused with exit status 2
    p = subprocess.run([sys.executable, "-m", "imprint.engine.cli", "embed", str(d), "--store", str(tmp_path / "s"),
                        "--backbone", "fingerprint"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "refusing to mix" in p.stderr and "Traceback" not in p.stderr
