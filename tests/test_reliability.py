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


MESSAGE = "interrupted; re-run the same command to resume"


def _assert_clean_interrupt(rc, err, sig, out, ref):
    """Exit 130 with exactly the one line (or, for SIGTERM only, killed before any handler with no output at all);
    no traceback; the output absent or complete; no temporary file beside it."""
    if sig == signal.SIGTERM and rc == -signal.SIGTERM:  # the interpreter had not reached imprint's code yet
        assert err == "" and not out.exists()
    else:
        assert rc == 130, (rc, err)
        assert err.strip() == MESSAGE, err  # one line: no traceback, no "Exception ignored", no blank line
    if out.exists():
        assert out.read_bytes() == ref.read_bytes()
        ev = Path(str(out.with_suffix("")) + ".evidence.csv")
        assert ev.read_bytes() == Path(str(ref.with_suffix("")) + ".evidence.csv").read_bytes()
    assert not [f for f in os.listdir(out.parent) if f.endswith(".tmp")]


@pytest.fixture(scope="module")
def membership_ref(sets, tmp_path_factory):
    ref = tmp_path_factory.mktemp("ref") / "ref.csv"
    p = _spawn(_cmd("membership", sets, ref))
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    return ref


@pytest.mark.parametrize("delay", [0.3, 1.5, 3.0])
def test_sigterm_is_a_clean_interrupt(sets, tmp_path, membership_ref, delay):
    """SIGTERM at a few wall-clock delays (the old flaky test was one delay of 2.5 s)."""
    out = tmp_path / "s.csv"
    p = _spawn(_cmd("membership", sets, out))
    time.sleep(delay)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    if p.returncode != 0:  # 0: finished before the signal
        _assert_clean_interrupt(p.returncode, err, signal.SIGTERM, out, membership_ref)


# Runs the CLI like ``python -m imprint.engine.cli`` and sends the signal to itself at a chosen point:
#   startup - while cli.py imports click (before main() exists), import - while numba is first imported,
#   stage - between reading the two image folders, compute - while the first pairwise SSIM kernel runs (Numba),
#   write - as the first output file is written, exit - from an atexit callback, after the job.
# Shared by the launchers: ``fire_at_import(name)`` sends the signal (``fire``) when module ``name`` is first imported.
_FIRE_AT_IMPORT = r"""
import importlib.abc, os, runpy, signal, sys, threading
def fire_at_import(module):
    class Hook(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == module:
                sys.meta_path.remove(self)
                fire()
            return None
    sys.meta_path.insert(0, Hook())
"""

_LAUNCHER = _FIRE_AT_IMPORT + r"""
root, sig, at = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sys.path.insert(0, root)
sys.argv = ["imprint"] + sys.argv[4:]
fire = lambda: os.kill(os.getpid(), sig)
if at in ("startup", "import"):
    fire_at_import({"startup": "click", "import": "numba"}[at])
elif at != "exit":
    import imprint.engine.membership.evidence as ev, imprint.engine.outputs as outputs, imprint.engine.pipeline as pipeline
    mod, name = {"stage": (pipeline, "_load_stored"),  # 2nd call: the real folder, read after the generated one
                  "compute": (ev, "_pair_ssim"), "write": (outputs, "write_csv")}[at]
    orig, calls = getattr(mod, name), []
    def wrapped(*a, **k):
        calls.append(1)
        if at == "compute" and len(calls) == 1:
            t = threading.Timer(0.02, fire)
            t.daemon = True
            t.start()
        elif (at == "stage" and len(calls) == 2) or (at == "write" and len(calls) == 1):
            fire()
        return orig(*a, **k)
if at == "exit":  # after the job, while the interpreter shuts down
    import atexit, time
    def late():
        fire()
        end = time.monotonic() + 0.2
        while time.monotonic() < end:
            pass
    atexit.register(late)
if at not in ("startup", "import", "exit"):
    setattr(mod, name, wrapped)
runpy.run_module("imprint.engine.cli", run_name="__main__", alter_sys=True)
"""


_POINTS = [(signal.SIGTERM, "startup"), (signal.SIGTERM, "import"), (signal.SIGTERM, "stage"),
           (signal.SIGTERM, "compute"), (signal.SIGTERM, "write"), (signal.SIGINT, "startup"), (signal.SIGINT, "import"),
           (signal.SIGINT, "compute"), (signal.SIGINT, "write")]


@pytest.mark.parametrize("sig,at", _POINTS, ids=[f"{s.name}-{a}" for s, a in _POINTS])
def test_interrupt_at_each_point_is_clean_and_resumes(sets, tmp_path, membership_ref, sig, at):
    """SIGTERM / Ctrl-C delivered at a chosen point: exit 130 and the one line, no traceback, the output absent or
    complete (complete when it came while the outputs were written), and a re-run equals an uninterrupted run."""
    launcher = tmp_path / "launch.py"
    launcher.write_text(_LAUNCHER)
    out = tmp_path / "s.csv"
    r = subprocess.run([sys.executable, str(launcher), str(ROOT), str(int(sig)), at,
                        *_cmd("membership", sets, out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 130, (r.returncode, r.stderr)  # the launcher's handler-less window is not reachable
    _assert_clean_interrupt(r.returncode, r.stderr, sig, out, membership_ref)
    if at == "write":  # held until the set of outputs is written
        assert out.exists()
    else:
        assert not out.exists()
    p = _spawn(_cmd("membership", sets, out))
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert out.read_bytes() == membership_ref.read_bytes()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_after_the_job_keeps_its_status(sets, tmp_path, membership_ref, sig):
    """A request that arrives once the job is over (interpreter shutdown) has nothing left to stop: status 0, no
    "Exception ignored" traceback, and not the death by signal (-2 / -15) that shutdown's default handlers give."""
    launcher = tmp_path / "launch.py"
    launcher.write_text(_LAUNCHER)
    out = tmp_path / "s.csv"
    r = subprocess.run([sys.executable, str(launcher), str(ROOT), str(int(sig)), "exit",
                        *_cmd("membership", sets, out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr
    assert out.read_bytes() == membership_ref.read_bytes()


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
    # the target's evidence (and, with no reference, its real-to-real null) is checkpointed; the dev set's is not
    assert len(list((tmp_path / ".o.csv.checkpoints").glob("evidence-*.npz"))) == 1
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
    for f in sorted((sets / "real").iterdir())[12:22]:  # not copies of --images (those leave dev, issue 16)
        shutil.copy(f, dev / "m1" / f.name)
    kw = dict(images_dir=str(sets / "gen"), k=2, dev_dir=str(dev), policy=IngestPolicy(size=(64, 64)), seed=3)
    calls = _interrupt_stage(monkeypatch, A, "_extract", at=-1)
    run_attribution(out=str(tmp_path / "ref.csv"), **kw)
    total = calls["n"]  # every extraction of an uninterrupted run (images, their re-processed sample, dev, the
    assert total >= 3   # open set's floor images, ...)
    # the images' features and those of their re-processed sample (processing invariance, issue 19) finish,
    # the dev model's are interrupted
    calls["n"], calls["at"] = 0, 3
    with pytest.raises(KeyboardInterrupt):
        run_attribution(out=str(tmp_path / "o.csv"), **kw)
    assert not (tmp_path / "o.csv").exists()
    calls["n"], calls["at"] = 0, -1
    run_attribution(out=str(tmp_path / "o.csv"), **kw)
    assert calls["n"] == total - 2  # the two finished extractions are read back, not computed again
    assert (tmp_path / "o.csv").read_bytes() == (tmp_path / "ref.csv").read_bytes()
    assert not (tmp_path / ".o.csv.checkpoints").exists()


# ------------------------------------------------------------------------- the console entry (imprint/__main__.py)
# Runs ``python -m imprint`` (the console script's entry, imprint.__main__:main) and signals it at a chosen point:
#   ready - the launcher blocks SIGINT/SIGTERM, tells the test it is up (one byte on stdout) and starts imprint; the
#           test signals 0-30 ms later (the handler must be installed, and the mask lifted, before the heavy imports)
#   imprint.engine.interrupts / click / imprint.engine.cli - when that module is first imported (the first: only the
#           entry's early handler on the builtin _signal is in place)
#   write - when the job's final output (its --out) is written, through engine.store.atomic_replace
_ENTRY_LAUNCHER = _FIRE_AT_IMPORT + r"""
root, sig, at, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
sys.path.insert(0, root)
sys.argv = ["imprint"] + sys.argv[5:]
fire = lambda: os.kill(os.getpid(), sig)
if at == "ready":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    os.write(1, b"R")
elif at == "write":
    import imprint.engine.store as store
    orig = store.atomic_replace
    def wrapped(path, *a, **k):
        if os.path.abspath(os.fspath(path)) == os.path.abspath(out):
            fire()
        return orig(path, *a, **k)
    store.atomic_replace = wrapped
else:
    fire_at_import(at)
runpy.run_module("imprint", run_name="__main__", alter_sys=True)
"""


def _entry(tmp_path, sig, at, name, sets, out, **kw):
    launcher = tmp_path / "entry.py"
    launcher.write_text(_ENTRY_LAUNCHER)
    return subprocess.Popen([sys.executable, str(launcher), str(ROOT), str(int(sig)), at, str(out),
                             *_cmd(name, sets, out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def test_entry_installs_the_handler_before_the_heavy_imports():
    """The console entry routes SIGINT to engine.interrupts before click, numpy or the CLI module are imported."""
    spy = r"""
import runpy, signal, sys
orig = signal.signal
def spy(s, h):
    if s == signal.SIGINT and not getattr(spy, "done", False):
        spy.done = True
        heavy = ("click", "numpy", "numba", "pyarrow", "imprint.engine.cli")
        print("SPY", sorted(m for m in heavy if m in sys.modules), flush=True)
    return orig(s, h)
signal.signal = spy
sys.argv = ["imprint", "--help"]
runpy.run_module("imprint", run_name="__main__", alter_sys=True)
"""
    r = subprocess.run([sys.executable, "-c", spy], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "SPY []", r.stdout[:300]
    assert "Usage: imprint" in r.stdout  # and the CLI still runs
    import tomllib  # the installed console script runs the same entry

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["imprint"] == "imprint.__main__:main"


@pytest.mark.parametrize("sig,delay_ms", [(signal.SIGINT, 0), (signal.SIGINT, 10), (signal.SIGTERM, 20),
                                          (signal.SIGINT, 30)])
def test_signal_0_to_30_ms_after_start_is_the_one_line(sets, tmp_path, sig, delay_ms):
    """Ctrl-C / SIGTERM 0-30 ms after imprint starts (while click, numpy and the CLI load): exit 130 and the one
    line, never a traceback, never the job running on."""
    out = tmp_path / "s.csv"
    p = _entry(tmp_path, sig, "ready", "membership", sets, out)
    assert p.stdout.read(1) == b"R"
    time.sleep(delay_ms / 1000)
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    err = err.decode()
    assert p.returncode == 130, (p.returncode, err)
    assert err.strip() == MESSAGE, err
    assert not out.exists()


@pytest.mark.parametrize("sig,at", [(signal.SIGINT, "imprint.engine.interrupts"), (signal.SIGINT, "click"),
                                    (signal.SIGTERM, "imprint.engine.cli")])
def test_signal_while_the_entry_imports_the_cli_is_the_one_line(sets, tmp_path, sig, at):
    out = tmp_path / "s.csv"
    p = _entry(tmp_path, sig, at, "membership", sets, out)
    _, err = p.communicate(timeout=120)
    err = err.decode()
    assert p.returncode == 130, (p.returncode, err)
    assert err.strip() == MESSAGE, err
    assert not out.exists()


@pytest.mark.parametrize("name,suffix,companions", [("attribute", ".csv", (".details.csv", ".processing.csv")),
                                                    ("pairs", ".parquet", ())])
def test_attribution_and_pairs_finish_their_outputs_before_stopping(sets, tmp_path, name, suffix, companions):
    """As membership: a stop request that arrives while the job writes its outputs waits for the whole set, so the
    job stops with exit 130 and the one line, and leaves the complete outputs (equal to an uninterrupted run's),
    no temporary file and no work folder."""
    ref = tmp_path / "ref" / f"ref{suffix}"
    ref.parent.mkdir()
    r = subprocess.run([sys.executable, "-m", "imprint", *_cmd(name, sets, ref)], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    for sig in (signal.SIGTERM, signal.SIGINT):
        d = tmp_path / sig.name
        d.mkdir()
        out = d / f"o{suffix}"
        p = _entry(tmp_path, sig, "write", name, sets, out)
        _, err = p.communicate(timeout=300)
        err = err.decode()
        assert p.returncode == 130, (p.returncode, err)
        assert err.strip() == MESSAGE, err
        assert out.read_bytes() == ref.read_bytes()
        for c in companions:
            got = Path(str(out.with_suffix("")) + c).read_bytes()
            assert got == Path(str(ref.with_suffix("")) + c).read_bytes(), c
        assert sorted(f for f in os.listdir(d) if f.endswith(".tmp") or f.startswith(".")) == []
