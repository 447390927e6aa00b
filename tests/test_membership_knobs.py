"""benchmarks/_membership_knobs.py: every opt-in flag of the membership benchmarks sets the setting it names, a flag
left out changes nothing, and a setting the code lacks is a one-line error."""
import argparse
import importlib
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from _membership_knobs import MEMBERSHIP_KNOBS, add_membership_knobs, apply_membership_knobs  # noqa: E402

ARGV = ["--ncc-local", "--ncc-flow", "--ncc-tiles", "--flow-channel", "--flow-top", "5", "--flow-pick", "--enrich-mode", "local",
        "--lowpass-coarse", "--pi1-bound", "--pair-fpr", "conformal", "--null-anchor", "--ptile-channel"]


def _modules():
    return {mod: importlib.import_module(f"imprint.engine.membership.{mod}")
            for _, mod, *_ in MEMBERSHIP_KNOBS.values()}


def test_every_flag_sets_its_setting_and_none_is_left_out(monkeypatch):
    mods = _modules()
    for _, mod, attr, *_ in MEMBERSHIP_KNOBS.values():
        monkeypatch.setattr(mods[mod], attr, getattr(mods[mod], attr))   # restored after the test
    ap = argparse.ArgumentParser()
    add_membership_knobs(ap)
    assert apply_membership_knobs(ap.parse_args([])) == []                 # nothing given: nothing changed
    before = {(m, a): getattr(mods[m], a) for _, m, a, *_ in MEMBERSHIP_KNOBS.values()}
    assert before[("deform", "FLOW_CHANNEL")] is False and before[("ptiles", "PTILE_CHANNEL")] is False
    done = apply_membership_knobs(ap.parse_args(ARGV))
    expect = {("anatomy", "NCC_LOCAL"): True, ("deform", "NCC_FLOW"): True, ("tiles", "NCC_TILES"): True,
              ("deform", "FLOW_CHANNEL"): True, ("deform", "FLOW_TOP"): 5, ("deform", "FLOW_PICK"): True, ("calibrate", "ENRICH_MODE"): "local",
              ("register", "LP_K_COARSE"): mods["register"].LP_K_COARSE_ON,
              ("calibrate", "EMPIRICAL_NULL_PI1_BOUND"): True, ("decide", "PAIR_NULL_FPR"): "conformal",
              ("calibrate", "EMPIRICAL_NULL_ANCHOR"): True, ("ptiles", "PTILE_CHANNEL"): True}
    assert set(expect) == {(m, a) for _, m, a, *_ in MEMBERSHIP_KNOBS.values()}   # the test covers every row
    for (m, a), v in expect.items():
        assert getattr(mods[m], a) == v, (m, a)
        assert getattr(mods[m], a) != before[(m, a)], (m, a)               # each flag changed something
    assert len(done) == len(expect) and "deform.FLOW_TOP=5" in done


def test_a_setting_the_code_lacks_is_an_error(monkeypatch):
    deform = importlib.import_module("imprint.engine.membership.deform")
    monkeypatch.delattr(deform, "FLOW_CHANNEL")
    ap = argparse.ArgumentParser()
    add_membership_knobs(ap)
    with pytest.raises(SystemExit, match="--flow-channel: this checkout has no imprint.engine.membership.deform"):
        apply_membership_knobs(ap.parse_args(["--flow-channel"]))
