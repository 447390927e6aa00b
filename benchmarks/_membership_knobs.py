"""Opt-in settings of ``imprint.engine.membership`` that the membership benchmarks take as flags: one table, so
``membership_zoo.py`` and ``membership_loo.py`` add and apply them the same way, and a new lever is one row here
instead of three hand-written blocks per script (the blocks every wave's merges collided on).

Usage::

    add_membership_knobs(ap)            # before ap.parse_args
    a = ap.parse_args(argv)
    on = apply_membership_knobs(a)      # ["deform.FLOW_CHANNEL=True", ...]: what this run changed

A flag left out keeps the code's own value. A flag whose setting the imported code lacks is an error (the run would
otherwise measure something other than it says).
"""
from __future__ import annotations

import importlib

#: dest -> (flag, module under imprint.engine.membership, attribute, add_argument keywords,
#:          value -> attribute value (the module passed for values it defines), help)
MEMBERSHIP_KNOBS = {
    "ncc_local": ("--ncc-local", "anatomy", "NCC_LOCAL", dict(action="store_true"), lambda v, m: True,
                  "the piecewise-rigid registered anatomy NCC (branch elas11)"),
    "ncc_flow": ("--ncc-flow", "deform", "NCC_FLOW", dict(action="store_true"), lambda v, m: True,
                 "the non-rigid registered anatomy NCC (branch elas12)"),
    "ncc_tiles": ("--ncc-tiles", "tiles", "NCC_TILES", dict(action="store_true"), lambda v, m: True,
                  "the tile-wise registered anatomy NCC (branch patch12)"),
    "flow_channel": ("--flow-channel", "deform", "FLOW_CHANNEL", dict(action="store_true"), lambda v, m: True,
                     "the flow NCC as its own ratio channel, anat_flow_ratio (branch elas13)"),
    "flow_top": ("--flow-top", "deform", "FLOW_TOP", dict(type=int, default=None), lambda v, m: int(v),
                 "with --flow-channel: polished candidates per row that get the flow"),
    "flow_pick": ("--flow-pick", "deform", "FLOW_PICK", dict(action="store_true"), lambda v, m: True,
                  "with --flow-channel: the flow's candidates picked by a cheap non-rigid score over the "
                  "FLOW_PICK_K coarse-best, not by the rigid NCC (branch elas14)"),
    "enrich_mode": ("--enrich-mode", "calibrate", "ENRICH_MODE", dict(choices=("local",), default=None),
                    lambda v, m: v, "the enrichment of the tail-split rule at each row's own level (branch comb13)"),
    "lowpass_coarse": ("--lowpass-coarse", "register", "LP_K_COARSE", dict(action="store_true"),
                       lambda v, m: m.LP_K_COARSE_ON,
                       "the coarse low-pass candidate source: candidates that survive elastic deformation (branch "
                       "elsrc13)"),
    "pi1_bound": ("--pi1-bound", "calibrate", "EMPIRICAL_NULL_PI1_BOUND", dict(action="store_true"),
                  lambda v, m: True, "the unsupervised mode's empirical null with an upper-tail bound on pi0 (branch "
                                     "uns13)"),
    "pair_fpr": ("--pair-fpr", "decide", "PAIR_NULL_FPR", dict(choices=("exact", "conformal"), default=None),
                 lambda v, m: v, "fpr:ALPHA threshold of the unsupervised mode; 'conformal': the expected-rate "
                                 "threshold (branch uns13)"),
    "null_anchor": ("--null-anchor", "calibrate", "EMPIRICAL_NULL_ANCHOR", dict(action="store_true"),
                    lambda v, m: True, "the unsupervised mode's empirical null located at the proxy null's median, its "
                                       "lower half allowed to be compressed (branch uns14)"),
    "ptile_channel": ("--ptile-channel", "ptiles", "PTILE_CHANNEL", dict(action="store_true"), lambda v, m: True,
                      "the partial-copy channel ptile_ratio (branch part13)"),
}


def add_membership_knobs(ap, names=None) -> None:
    """Add the flags of ``names`` (default: every key of :data:`MEMBERSHIP_KNOBS`) to the argparse parser ``ap``."""
    for dest in names or MEMBERSHIP_KNOBS:
        flag, mod, attr, kw, _, note = MEMBERSHIP_KNOBS[dest]
        ap.add_argument(flag, dest=dest, help=f"opt-in: {note} (membership.{mod}.{attr})", **kw)


def apply_membership_knobs(args, names=None) -> list[str]:
    """Set every given flag's attribute on ``imprint.engine.membership.<module>``; return ``"module.ATTR=value"``
    for each, in table order. ``SystemExit`` with one line when the module lacks the attribute."""
    done = []
    for dest in names or MEMBERSHIP_KNOBS:
        value = getattr(args, dest, None)
        if value is None or value is False:
            continue
        flag, mod, attr, _, convert, _ = MEMBERSHIP_KNOBS[dest]
        m = importlib.import_module(f"imprint.engine.membership.{mod}")
        if not hasattr(m, attr):
            raise SystemExit(f"{flag}: this checkout has no imprint.engine.membership.{mod}.{attr}")
        setattr(m, attr, convert(value, m))
        done.append(f"{mod}.{attr}={getattr(m, attr)}")
    return done
