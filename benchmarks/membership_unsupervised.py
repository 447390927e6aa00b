"""Unsupervised membership (no --dev, no --reference) on zoo-like simulated memorising generators.

Built with ``benchmarks/membership_zoo.py``'s builders (its transforms, scenarios, filler images), but
with no reference: per scenario the real images are split at random into members and as many
non-members (members = half the candidates, the case the unsupervised null must handle), generated =
one transformed copy of every member (+ noise sigma 2) mixed with non-copies (``--fillers``: the dev
corpus' gen_a / gen_b images by default) up to ``--n-gen`` images.  ``audit_membership(generated,
candidates)`` is run in two configurations on the same evidence (shared ``cache_dir``), each at
``fpr:0.01`` and ``fdr:0.1``:

* ``before``: ``pair_anatomy=False`` - the unsupervised mode before branch uns6 (the anatomy evidence
  ``anat_ratio`` has no real-to-real null, so it is left out);
* ``after``: the defaults - the anatomy evidence gets its real-to-real null too;
* ``channel``: the defaults with ``empirical="channel"`` (the per-channel empirical null, opt-in).

``--configs uns5`` runs branch uns5's pair instead (before: ``pair_register=False, combine="max"``; after: its
defaults, i.e. ``pair_anatomy=False`` now).

Reported: ROC AUC and TPR at 1% FPR of each, recall and non-members flagged per decision; point values
(no bootstrap: 60 + 60 candidates per scenario give intervals of about +-0.12 on recall).

This is a measurement, not a tuning set: nothing in engine/ was chosen on it.

Usage::

    python benchmarks/membership_unsupervised.py --quick          # 10 scenarios, 40 + 40 candidates, 400 generated
    python benchmarks/membership_unsupervised.py --quick --n-members 60   # 120 candidates: the empirical null applies
    python benchmarks/membership_unsupervised.py --quick --n-members 60 --cache-dir /tmp/unsz --only flip,shift
    python benchmarks/membership_unsupervised.py [--real DIR] [--fillers DIR|dev|none] [--n-members 60] [--n-gen 1000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
from sklearn import metrics as skm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from membership_zoo import add_draw_args, build_scenario, load_real_and_fillers, scenarios, tpr_at  # noqa: E402

from imprint.engine.membership import audit_membership  # noqa: E402

DECISIONS = ("fpr:0.01", "fdr:0.1")
#: the unsupervised mode before branch uns6 (main: no anatomy evidence in the real-to-real null) and now, plus the
#: per-channel empirical null (``empirical="channel"``, opt-in) as an extra column
CONFIGS = {"before": dict(pair_anatomy=False), "after": {}, "channel": dict(empirical="channel")}
#: the configurations before branch uns6 (branch uns5's before / after), ``--configs uns5``
CONFIGS_UNS5 = {"before": dict(pair_register=False, combine="max"), "after": dict(pair_anatomy=False)}


def build(args):
    return load_real_and_fillers(args.real, args.fillers, args.size)


def run(args) -> list[dict]:
    rng = np.random.default_rng(args.seed)
    real, fill_imgs = build(args)
    nm = args.n_members
    if len(real) < 2 * nm + 20:
        raise SystemExit(f"need at least {2 * nm + 20} distinct real images, found {len(real)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache_dir or tmp
        for name, fn, strength in scenarios(args.quick, real):
            if args.only and not any(o in name for o in args.only.split(",")):
                build_scenario(real, fn, strength, fill_imgs, nm, 0, args.n_gen, rng)   # same draws as a full run
                continue
            # the zoo's builder (no reference: nref 0), so texture donors never come from the candidates
            gen, cand, _, y, _ = build_scenario(real, fn, strength, fill_imgs, nm, 0, args.n_gen, rng)
            if fn is None:
                y = np.zeros(2 * nm, int)   # a non-memorising generator: no candidate is a member
            row = {"transform": name, "strength": strength}
            for conf, ckw in (CONFIGS_UNS5 if args.configs == "uns5" else CONFIGS).items():
                for dec in DECISIONS:
                    t0 = time.perf_counter()
                    res = audit_membership(gen, cand, decision=dec, cache_dir=cache, **ckw)
                    used = np.asarray(res.used, int)
                    if args.dump and dec == DECISIONS[0]:
                        os.makedirs(args.dump, exist_ok=True)
                        np.savez(os.path.join(args.dump, f"{len(rows):02d}-{conf}.npz"), score=res.score, y=y,
                                 null=res.null_scores)
                    row[conf + "_" + dec] = {"recall": float(used[y == 1].mean()) if y.any() else float("nan"),
                                             "nonmem_flagged": int(used[y == 0].sum()),
                                             "n_nonmem": int((y == 0).sum()), "seconds": time.perf_counter() - t0}
                    if conf == "after" and res.info.get("empirical_null"):
                        e = res.info["empirical_null"]
                        row["emp_fit"] = (e["loc"], e["scale"], e["pi0"])
                    row[conf + "_auc"] = float(skm.roc_auc_score(y, res.score)) if y.any() else float("nan")
                    row[conf + "_tpr1"] = tpr_at(y, res.score) if y.any() else float("nan")
            rows.append(row)
            print(fmt(row), flush=True)
    return rows


def fmt(r) -> str:
    def cell(k):
        v = r[k]
        rec = "n/a" if not np.isfinite(v["recall"]) else f"{v['recall']:.2f}"
        return f"{rec} / {v['nonmem_flagged']}/{v['n_nonmem']}"
    def num(k, f):
        return "n/a" if not np.isfinite(r[k]) else format(r[k], f)
    fit = r.get("emp_fit")
    fit = f"{fit[0]:+.2f} / {fit[1]:.2f} / {fit[2]:.2f}" if fit else "-"
    extra = ""
    if "channel_auc" in r:
        extra = (f" {num('channel_auc', '.3f')} / {num('channel_tpr1', '.2f')} | {cell('channel_fpr:0.01')} | "
                 f"{cell('channel_fdr:0.1')} |")
    return (f"| {r['transform']} | {r['strength']:g} | {num('before_auc', '.3f')} / {num('after_auc', '.3f')} | "
            f"{num('before_tpr1', '.2f')} / {num('after_tpr1', '.2f')} | " + " | ".join(
                cell(k) for k in ("before_fpr:0.01", "after_fpr:0.01", "before_fdr:0.1", "after_fdr:0.1"))
            + f" | {fit} |" + extra)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_draw_args(ap, n_members=None, n_reference=None, n_gen=None, boot=None)
    ap.add_argument("--n-members", type=int, default=None, help="default 60 (--quick: 40)")
    ap.add_argument("--n-gen", type=int, default=None, help="default 1000 (--quick: 400)")
    ap.add_argument("--quick", action="store_true", help="10 scenarios, 40 members + 40 non-members, 400 generated")
    ap.add_argument("--dump", default=None, help="folder: save each scenario's scores, labels and real-pair null (.npz)")
    ap.add_argument("--cache-dir", default=None, help="keep the evidence / real-to-real null checkpoints here")
    ap.add_argument("--configs", default="uns6", choices=("uns6", "uns5"),
                    help="uns6: before = main before branch uns6 (no anatomy pair null), after = defaults, + the "
                         "per-channel empirical null; uns5: branch uns5's before / after")
    ap.add_argument("--only", default=None, help="comma list: run only scenarios whose name contains one of these")
    a = ap.parse_args(argv)
    for k, v in dict(n_members=(40, 60), n_gen=(400, 1000)).items():   # explicitly given values win
        if getattr(a, k) is None:
            setattr(a, k, v[0] if a.quick else v[1])
    print(f"# unsupervised membership zoo: real={a.real} fillers={a.fillers} members={a.n_members} "
          f"(+ as many non-members) reference=none generated={a.n_gen} seed={a.seed}")
    print("| transform | strength | AUC before / after | TPR@1%FPR before / after | fpr:0.01 before: recall / "
          "non-members flagged | fpr:0.01 after | fdr:0.1 before | fdr:0.1 after | after: empirical loc / scale / pi0 |"
          + (" channel: AUC / TPR@1% | channel fpr:0.01 | channel fdr:0.1 |" if a.configs == "uns6" else ""))
    print("|---|---|---|---|---|---|---|---|---|" + ("---|---|---|" if a.configs == "uns6" else ""))
    run(a)


if __name__ == "__main__":
    main()
