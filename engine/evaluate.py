"""Metrics of the two tasks, computed with scikit-learn.

Membership: F1 (the task's official metric), accuracy, precision, recall, specificity, ROC AUC and the TPR
at 1% FPR (the largest TPR on the ROC curve whose FPR does not exceed 0.01).
Attribution: adjusted Rand index (official) and normalised mutual information.
"""
from __future__ import annotations

import csv
import os
from typing import Mapping, Sequence

import numpy as np
from sklearn import metrics as skm

from .errors import ImprintError

_POS = {"1", "used", "true", "yes", "member", "in"}
_NEG = {"0", "unused", "false", "no", "nonmember", "non-member", "out"}


def tpr_at_fpr(y_true: np.ndarray, score: np.ndarray, max_fpr: float = 0.01) -> float:
    """Largest true-positive rate reachable with a false-positive rate <= ``max_fpr``."""
    fpr, tpr, _ = skm.roc_curve(y_true, score)
    ok = fpr <= max_fpr + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def membership_metrics(y_true: Sequence[int], used: Sequence[int], score: Sequence[float] | None = None) -> dict:
    """All membership metrics for binary truth ``y_true`` (1 = used), decisions ``used`` and ``score``."""
    y = np.asarray(y_true, dtype=int)
    d = np.asarray(used, dtype=int)
    if y.shape != d.shape or y.ndim != 1 or len(y) == 0:
        raise ImprintError("truth and decisions must be non-empty and of equal length")
    tn, fp, fn, tp = skm.confusion_matrix(y, d, labels=[0, 1]).ravel()
    out = {
        "n": int(len(y)),
        "n_used_true": int(y.sum()),
        "n_flagged": int(d.sum()),
        "f1": float(skm.f1_score(y, d, zero_division=0)),
        "accuracy": float(skm.accuracy_score(y, d)),
        "precision": float(skm.precision_score(y, d, zero_division=0)),
        "recall": float(skm.recall_score(y, d, zero_division=0)),
        "specificity": float(tn / (tn + fp)) if (tn + fp) else float("nan"),
    }
    if score is not None and len(set(y.tolist())) == 2:
        s = np.asarray(score, dtype=float)
        out["roc_auc"] = float(skm.roc_auc_score(y, s))
        out["tpr_at_1pct_fpr"] = tpr_at_fpr(y, s, 0.01)
    else:
        out["roc_auc"] = float("nan")
        out["tpr_at_1pct_fpr"] = float("nan")
    return out


def attribution_metrics(labels_true: Sequence, labels_pred: Sequence[int]) -> dict:
    """ARI (official) and NMI of a clustering against true model labels."""
    t = list(labels_true)
    p = list(labels_pred)
    if len(t) != len(p) or not t:
        raise ImprintError("truth and clusters must be non-empty and of equal length")
    return {
        "n": len(t),
        "k_true": len(set(t)),
        "k_pred": len(set(p)),
        "ari": float(skm.adjusted_rand_score(t, p)),
        "nmi": float(skm.normalized_mutual_info_score(t, p)),
    }


# ---------------------------------------------------------------------------------------------- CSV helpers
def read_csv(path: str | os.PathLike, required: Sequence[str]) -> list[dict]:
    try:
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as fh:
            rows = list(csv.DictReader(fh))
    except FileNotFoundError:
        raise ImprintError(f"file not found: {path}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ImprintError(f"cannot read CSV {path}: {exc}") from None
    if not rows:
        raise ImprintError(f"CSV has no rows: {path}")
    missing = [c for c in required if c not in rows[0]]
    if missing:
        raise ImprintError(f"CSV {path} lacks column(s) {', '.join(missing)} (has {', '.join(rows[0])})")
    return rows


def parse_used_label(value: str, where: str) -> int:
    v = str(value).strip().lower()
    if v in _POS:
        return 1
    if v in _NEG:
        return 0
    raise ImprintError(f"unknown membership label {value!r} in {where} (use used/unused or 1/0)")


def truth_from_csv(path: str | os.PathLike) -> dict[str, str]:
    """``image -> label`` from a truth CSV with columns ``image,label`` (or ``path,label``)."""
    rows = read_csv(path, ["label"])
    key = "image" if "image" in rows[0] else "path" if "path" in rows[0] else None
    if key is None:
        raise ImprintError(f"truth CSV {path} needs an 'image' (or 'path') column")
    return {r[key]: r["label"] for r in rows}


def truth_from_folders(images: Sequence[str]) -> dict[str, str]:
    """Labels from the first folder of each relative path (``used/x.png`` -> ``used``)."""
    out = {}
    for im in images:
        if "/" not in im:
            raise ImprintError(f"cannot take a label from the folder of {im!r}: it is not in a subfolder")
        out[im] = im.split("/", 1)[0]
    return out


def join_truth(pred: Mapping[str, object], truth: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """Images present in both mappings; raises when they share none."""
    common = [k for k in pred if k in truth]
    if not common:
        # tolerate truth paths that carry a prefix (e.g. relative to the corpus root)
        suffixes: dict[str, str] = {}
        for t, lab in truth.items():
            parts = t.split("/")
            for i in range(1, len(parts)):
                suffixes.setdefault("/".join(parts[i:]), lab)
        by_suffix = {p: suffixes[p] for p in pred if p in suffixes}
        if by_suffix:
            return list(by_suffix), [by_suffix[k] for k in by_suffix]
        raise ImprintError("no image names in common between the predictions and the truth file")
    return common, [truth[k] for k in common]
