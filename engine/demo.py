"""``imprint demo``: both tasks end to end on the embedded sample, with their metrics."""
from __future__ import annotations

import os
import time
from pathlib import Path

from .errors import ImprintError
from .evaluate import (attribution_metrics, join_truth, membership_metrics, parse_used_label, read_csv,
                       truth_from_csv)
from .outputs import write_json

DEMO_DATA = Path(__file__).parent / "data" / "demo"


def run_demo(out_dir: str = "out/demo", data_dir: str | None = None, report: bool = False, rep=None) -> dict:
    from .pipeline import run_attribution, run_membership

    data = Path(data_dir) if data_dir else DEMO_DATA
    if not (data / "membership" / "target").is_dir() or not (data / "attribution" / "images").is_dir():
        raise ImprintError(f"demo data not found in {data} (expected membership/target and attribution/images)")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImprintError(f"cannot create output folder {out}: {exc.strerror or exc}") from None
    t0 = time.perf_counter()
    tgt = data / "membership" / "target"
    mtruth = {k: parse_used_label(v, "truth.csv") for k, v in truth_from_csv(tgt / "truth.csv").items()}
    att_dir = data / "attribution"
    atruth = truth_from_csv(att_dir / "truth.csv")
    mem = run_membership(gen_dir=str(tgt / "generated"), real_dir=str(tgt / "real"),
                         out=str(out / "scores.csv"), dev_dirs=[str(data / "membership" / "dev_a")],
                         ref_dirs=[str(data / "membership" / "reference")] if (data / "membership" / "reference").is_dir() else (),
                         decision="f1", rep=rep, report_dir=str(out / "report_membership") if report else None,
                         truth=mtruth)
    rows = read_csv(out / "scores.csv", ["image", "score", "used"])
    pred = {r["image"]: r for r in rows}
    names, labels = join_truth(pred, mtruth)
    m = membership_metrics(labels, [int(pred[n]["used"]) for n in names], [float(pred[n]["score"]) for n in names])

    att = run_attribution(images_dir=str(att_dir / "images"), k=3, out=str(out / "clusters.csv"),
                          dev_dir=str(att_dir / "dev"), rep=rep,
                          report_dir=str(out / "report_attribution") if report else None,
                          truth=atruth)
    crows = read_csv(out / "clusters.csv", ["image", "cluster"])
    cpred = {r["image"]: r["cluster"] for r in crows}
    cn, cl = join_truth(cpred, atruth)
    a = attribution_metrics(cl, [cpred[n] for n in cn])

    dt = time.perf_counter() - t0
    summary = {"membership": {"metrics": m, "run": {k: v for k, v in mem.items() if k != "summary"}},
               "attribution": {"metrics": a, "run": {k: v for k, v in att.items() if k != "summary"}},
               "seconds": dt, "out_dir": str(out)}
    write_json(out / "metrics.json", summary)
    summary["summary"] = (
        f"membership (decision f1): F1 {m['f1']:.3f}  accuracy {m['accuracy']:.3f}  precision {m['precision']:.3f}  "
        f"recall {m['recall']:.3f}  specificity {m['specificity']:.3f}  ROC AUC {m['roc_auc']:.3f}  "
        f"TPR@1%FPR {m['tpr_at_1pct_fpr']:.3f}\n"
        f"attribution (k=3): ARI {a['ari']:.3f}  NMI {a['nmi']:.3f}\n"
        f"demo finished in {dt:.1f}s; outputs in {out}{os.sep} (scores.csv, clusters.csv, metrics.json)"
    )
    return summary
