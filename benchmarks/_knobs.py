"""Per-run settings of ``imprint.engine.attribution`` that the attribution benchmarks take as flags: one table, so the
five scripts that set them (bench_attribution, bench_attribution_processing, attribution_newfamily, attribution_lomo,
attribution_floor_price) add and apply them the same way.

Usage::

    add_knobs(ap, "sample_rule", "k_lookahead")      # before ap.parse_args
    a = ap.parse_args(argv)
    apply_knobs(ap, a, A, "sample_rule", "k_lookahead")  # A = the measured checkout's engine.attribution

A flag left out (None) keeps the checkout's own value.  A flag given for a checkout (``--code``) that has no such
setting is a one-line error, not a silent no-op: the run would otherwise measure something other than it says.
"""
from __future__ import annotations

#: name -> (flag, engine.attribution attribute, add_argument keywords, value -> attribute value, help)
KNOBS = {
    "sample_rule": ("--sample-rule", "PROCESSING_SAMPLE_RULE",
                    dict(choices=("random", "stratified", "balanced")), str,
                    "issue 19, tenth round; default: the code's"),
    "processing_sample": ("--processing-sample", "PROCESSING_SAMPLE", dict(type=int), int,
                          "issue 19, ninth round; default: the code's, 300"),
    "k_lookahead": ("--k-lookahead", "K_SCAN_LOOKAHEAD", dict(type=int), int,
                    "issue 19, twelfth round; 0: stop the k scan at the first failing k >= 3"),
    "open_set_space": ("--open-set-space", "OPEN_SET_SPACE", dict(choices=("features", "floor")), str,
                       "issue 19, branch name12; default: the code's"),
    "floor_waiver": ("--floor-waiver", "FLOOR_WAIVER", dict(choices=("on", "off")), lambda v: v == "on",
                     "issue 19, sixth round; default: the code's"),
    "history_min_share": ("--history-min-share", "HISTORY_MIN_SHARE", dict(type=float), float,
                          "issue 19, branch attr15; default: the code's, None = off"),
    "processing_filters": ("--processing-filters", "PROCESSING_FILTERS", dict(choices=("four", "all")), str,
                           "issue 19, branch attr16; default: the code's, four"),
    "nuisance_rule": ("--nuisance-rule", "NUISANCE_RULE", dict(choices=("share", "geneig")), str,
                      "issue 19, branch attr16; default: the code's, share"),
    "nuisance_max_share": ("--nuisance-max-share", "NUISANCE_MAX_SHARE", dict(type=float), float,
                           "issue 19, branch attr16; default: the code's, 1/3"),
    "projected_scale": ("--projected-scale", "PROJECTED_SCALE", dict(choices=("after", "before")), str,
                        "issue 19, fourth round; default: the code's"),
}


def add_knobs(ap, *names: str) -> None:
    """Add the flags of ``names`` (keys of :data:`KNOBS`) to the argparse parser ``ap``, each defaulting to None."""
    for name in names:
        flag, attr, kw, _, note = KNOBS[name]
        ap.add_argument(flag, default=None, help=f"engine.attribution.{attr} for this run ({note})", **kw)


def apply_knobs(ap, args, A, *names: str) -> None:
    """Set every flag of ``names`` that was given on the module ``A`` (the measured checkout's
    ``engine.attribution``); ``ap.error`` when that checkout has no such setting."""
    for name in names:
        value = getattr(args, name)
        if value is None:
            continue
        flag, attr, _, convert, _ = KNOBS[name]
        if not hasattr(A, attr):
            ap.error(f"{flag}: this checkout has no engine.attribution.{attr}")
        setattr(A, attr, convert(value))
