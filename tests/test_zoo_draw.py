"""benchmarks/membership_zoo.py's ``--draw``: one flag, shared by the zoo and every script that replays its draws, that
sets the draw rule (``clean`` leaves out the reals the dev filler generators were trained on; ``all`` is the draw of
the tables before the thirteenth wave).  Before, the diagnostic scripts had no such flag and always drew ``clean``."""
import argparse
import glob
import os
import re
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCH)
import membership_zoo as mz  # noqa: E402


@pytest.fixture
def keep_draw(monkeypatch):
    monkeypatch.setattr(mz, "DRAW", mz.DRAW)   # restored after the test


def test_draw_flag_sets_the_rule_every_draw_follows(keep_draw):
    ap = argparse.ArgumentParser()
    mz.add_draw_flag(ap)
    assert ap.parse_args([]).draw == "clean" and mz.DRAW == "clean"
    clean = mz.dev_real_folders("dev")
    assert len(clean) == 4 and not any(("gen_a/real/used" in f or "gen_b/real/used" in f) for f in clean)
    assert ap.parse_args(["--draw", "all"]).draw == "all" and mz.DRAW == "all"
    every = mz.dev_real_folders("dev")
    assert len(every) == 6 and set(clean) < set(every)
    assert len(mz.dev_real_folders("none")) == 6                  # no dev fillers: nothing to leave out
    with pytest.raises(SystemExit):
        ap.parse_args(["--draw", "some"])


def test_draw_args_keep_each_scripts_defaults_and_leave_out_unused(keep_draw):
    ap = argparse.ArgumentParser()
    mz.add_draw_args(ap, n_members=40, n_reference=150, n_gen=400, boot=None, seed=1)
    a = ap.parse_args([])
    assert (a.real, a.fillers, a.draw, a.size, a.n_members, a.n_reference, a.n_gen, a.seed) == (
        mz.DEV, "dev", "clean", 128, 40, 150, 400, 1)
    assert not hasattr(a, "boot")
    assert ap.parse_args(["--draw", "all", "--seed", "3"]).seed == 3 and mz.DRAW == "all"


def test_zoo_main_resets_the_draw_when_not_given(keep_draw, monkeypatch):
    seen = []
    monkeypatch.setattr(mz, "run", lambda a: seen.append(mz.DRAW) or [])
    monkeypatch.setattr(mz, "print_table", lambda *a, **k: None, raising=False)
    for argv in (["--draw", "all"], []):
        try:
            mz.main(argv)
        except Exception:
            pass          # only the draw rule in force when run() is reached matters here
    assert seen == ["all", "clean"]


def test_every_script_that_draws_from_the_zoo_takes_the_flag():
    draws = re.compile(r"\b(load_real_and_fillers|build_scenario|dev_real_folders)\b|\b(mz|z|zoo)\.run\(")
    missing = []
    for path in sorted(glob.glob(os.path.join(BENCH, "*.py"))):
        src = open(path, encoding="utf-8").read()
        name = os.path.basename(path)
        if name == "membership_zoo.py" or not draws.search(src):
            continue
        fillers_none_only = re.findall(r"load_real_and_fillers\([^)]*\)", src) and all(
            '"none"' in c for c in re.findall(r"load_real_and_fillers\([^)]*\)", src)) and not re.search(
            r"build_scenario|\.run\(", src)
        if fillers_none_only:
            continue      # no dev fillers: both rules draw the same reals (bench_deform)
        if "add_draw_flag(" not in src and "add_draw_args(" not in src:
            missing.append(name)
    assert missing == []
