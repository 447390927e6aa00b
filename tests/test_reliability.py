"""Reliability of the long commands: SIGKILL at random points never leaves a partial output and a re-run equals
an uninterrupted run; duplicates and non-UTF-8 names are handled."""
import csv
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ct_like, save_png

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    rng = np.random.default_rng(21)
    d = tmp_path_factory.mktemp("rel")
    real = ct_like(rng, 24)
    gen = ct_like(rng, 40)
    gen[:12] = np.clip(real[:12].astype(int) + rng.integers(-3, 4, real[:12].shape), 0, 255)
    for sub in ("real", "gen"):
        (d / sub).mkdir()
    for i, im in enumerate(real):
        save_png(d / "real" / f"{i:03d}.png", im)
    for i, im in enumerate(gen):
        save_png(d / "gen" / f"{i:03d}.png", im)
    return d


def _cmd(name, d, out):
    common = ["--size", "64", "--seed", "3"]
    if name == "membership":
        return ["membership", "--generated", str(d / "gen"), "--real", str(d / "real"), "--out", str(out)] + common
    if name == "attribute":
        return ["attribute", "--images", str(d / "gen"), "--k", "2", "--out", str(out)] + common
    return ["pairs", "--real", str(d / "real"), "--generated", str(d / "gen"), "--k", "3", "--out", str(out)] + common


def _spawn(args):
    return subprocess.Popen([sys.executable, "-m", "imprint.engine.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("name,suffix", [("membership", ".csv"), ("attribute", ".csv"), ("pairs", ".parquet")])
def test_sigkill_then_rerun_equals_uninterrupted(sets, tmp_path, name, suffix):
    ref = tmp_path / f"ref{suffix}"
    p = _spawn(_cmd(name, sets, ref))
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    for seed in range(2):
        out = tmp_path / f"out{seed}{suffix}"
        p = _spawn(_cmd(name, sets, out))
        time.sleep(random.Random(seed).uniform(0.5, 2.5))
        p.send_signal(signal.SIGKILL)
        p.communicate(timeout=60)
        # never a partial file under the output name: absent, or complete and identical
        if out.exists():
            assert out.read_bytes() == ref.read_bytes()
        p = _spawn(_cmd(name, sets, out))
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        assert out.read_bytes() == ref.read_bytes()
        # temporary files a killed run left behind are removed by the next run
        assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_sigterm_is_a_clean_interrupt(sets, tmp_path):
    out = tmp_path / "s.csv"
    p = _spawn(_cmd("membership", sets, out))
    time.sleep(2.5)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    if p.returncode == 0:  # finished before the signal
        return
    if p.returncode == -signal.SIGTERM:  # terminated while the interpreter was still starting
        assert err == ""
    else:
        assert p.returncode == 130 and "interrupted" in err and "Traceback" not in err
    assert not out.exists()


def test_duplicates_and_non_utf8_names(sets, tmp_path):
    d = tmp_path / "real"
    shutil.copytree(sets / "real", d)
    shutil.copy(d / "000.png", d / "000_copy.png")  # duplicate of a copied (member) image
    odd = os.path.join(os.fsencode(d), b"caf\xe9.png")
    shutil.copy(d / "013.png", odd)
    out = tmp_path / "s.csv"
    r = subprocess.run([sys.executable, "-m", "imprint.engine.cli", "membership", "--generated", str(sets / "gen"),
                        "--real", str(d), "--out", str(out), "--size", "64", "--json"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    with open(out, newline="", encoding="utf-8", errors="surrogateescape") as fh:
        rows = {row["image"]: row for row in csv.DictReader(fh)}
    assert len(rows) == 26
    # the duplicate gets exactly the score of its original, and is not hidden by its twin
    assert rows["000_copy.png"]["score"] == rows["000.png"]["score"]
    assert float(rows["000.png"]["score"]) > max(float(rows[f"{i:03d}.png"]["score"]) for i in range(12, 24))
    # the non-UTF-8 name round-trips to the file's bytes
    name = os.fsdecode(b"caf\xe9.png")
    assert name in rows and os.path.exists(os.path.join(os.fsencode(d), os.fsencode(name)))
    assert rows[name]["score"] == rows["013.png"]["score"]


def _interrupt_stage(monkeypatch, module, name, at):
    """Wrap ``module.name`` so that its ``at``-th call raises KeyboardInterrupt; returns the call counter."""
    orig = getattr(module, name)
    state = {"n": 0, "at": at}

    def counting(*a, **k):
        state["n"] += 1
        if state["n"] == state["at"]:
            raise KeyboardInterrupt
        return orig(*a, **k)

    monkeypatch.setattr(module, name, counting)
    return state


def test_membership_resumes_from_finished_stages(sets, tmp_path, monkeypatch):
    """Interrupted after the dev sets' evidence, a re-run loads those checkpoints and computes only the rest;
    the output equals an uninterrupted run and the checkpoints are removed afterwards."""
    import imprint.engine.membership.evidence as M  # the stage function lives in the evidence module
    from imprint.engine.ingest import IngestPolicy
    from imprint.engine.pipeline import run_membership

    dev = tmp_path / "dev"
    for sub in ("generated", "real/used", "real/unused"):
        (dev / sub).mkdir(parents=True)
    for i in range(12):
        shutil.copy(sets / "real" / f"{i:03d}.png", dev / "real/used" / f"{i:03d}.png")
    for i in range(12, 24):
        shutil.copy(sets / "real" / f"{i:03d}.png", dev / "real/unused" / f"{i:03d}.png")
    for f in sorted((sets / "gen").iterdir())[:30]:  # another generated set: the dev stage differs from the target
        shutil.copy(f, dev / "generated" / f.name)
    kw = dict(gen_dir=str(sets / "gen"), real_dir=str(sets / "real"), dev_dirs=[str(dev)],
              policy=IngestPolicy(size=(64, 64)))
    run_membership(out=str(tmp_path / "ref.csv"), **kw)

    # the target's evidence finishes, the dev set's is interrupted
    calls = _interrupt_stage(monkeypatch, M, "compute_evidence", at=2)
    with pytest.raises(KeyboardInterrupt):
        run_membership(out=str(tmp_path / "o.csv"), **kw)
    assert not (tmp_path / "o.csv").exists()
    assert len(list((tmp_path / ".o.csv.checkpoints").glob("*.npz"))) == 1
    calls["n"], calls["at"] = 0, -1
    run_membership(out=str(tmp_path / "o.csv"), **kw)
    assert calls["n"] == 1  # only the unfinished stage was computed again
    assert (tmp_path / "o.csv").read_bytes() == (tmp_path / "ref.csv").read_bytes()
    assert not (tmp_path / ".o.csv.checkpoints").exists()


def test_attribution_resumes_from_finished_features(sets, tmp_path, monkeypatch):
    import imprint.engine.attribution as A
    from imprint.engine.ingest import IngestPolicy
    from imprint.engine.pipeline import run_attribution

    dev = tmp_path / "dev"
    (dev / "m1").mkdir(parents=True)
    for f in sorted((sets / "gen").iterdir())[:10]:
        shutil.copy(f, dev / "m1" / f.name)
    kw = dict(images_dir=str(sets / "gen"), k=2, dev_dir=str(dev), policy=IngestPolicy(size=(64, 64)), seed=3)
    run_attribution(out=str(tmp_path / "ref.csv"), **kw)
    # the images' features and those of their re-processed sample (processing invariance, issue 19) finish,
    # the dev model's are interrupted
    calls = _interrupt_stage(monkeypatch, A, "_extract", at=3)
    with pytest.raises(KeyboardInterrupt):
        run_attribution(out=str(tmp_path / "o.csv"), **kw)
    assert not (tmp_path / "o.csv").exists()
    calls["n"], calls["at"] = 0, -1
    run_attribution(out=str(tmp_path / "o.csv"), **kw)
    assert calls["n"] == 1
    assert (tmp_path / "o.csv").read_bytes() == (tmp_path / "ref.csv").read_bytes()
    assert not (tmp_path / ".o.csv.checkpoints").exists()
