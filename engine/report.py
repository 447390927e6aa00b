"""Static HTML audit reports (no server, no internet): plots as PNG files next to ``index.html`` plus the same
facts as JSON (``report.json``) and per-item tables (CSV) for other tools.

Membership: score histogram (by label when truth is given) over the null distribution it is judged against,
with the threshold; the evidence breakdown of every flagged image; ROC and precision-recall
curves, the top-scoring real images side by side with their nearest generated images (SSIM, MSE, embedding
distance per pair, difference map), and the run facts.
Attribution: a 2-D map of the images (t-SNE of the attribution features, PCA when there are few images),
coloured by cluster and by true model, the confusion matrix, a montage per cluster and the mean residual
spectrum per cluster.
"""
from __future__ import annotations

import html
import json
import os
import platform
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .outputs import atomic_write_text, write_json


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 100, "font.size": 9, "svg.hashsalt": "imprint"})
    return plt


def _save(fig, path: Path) -> str:
    fig.savefig(path, bbox_inches="tight", metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path.name


def _versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("imprint", "numpy", "numba", "onnxruntime", "faiss-cpu", "pyarrow", "scikit-learn", "click"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    for dist in ("onnxruntime-gpu", "faiss-gpu-cu12", "numba-cuda"):  # the `gpu` extra, listed when installed
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _table(d: Mapping, keys: Sequence[str] | None = None) -> str:
    rows = []
    for k in keys or sorted(d):
        v = d[k]
        if isinstance(v, float):
            v = f"{v:.4g}"
        elif isinstance(v, (dict, list)):
            v = json.dumps(v, default=str)[:400]
        rows.append(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;margin-top:2em}
table{border-collapse:collapse;font-size:0.85em}th,td{border:1px solid #ddd;padding:3px 8px;text-align:left}
img{max-width:100%}.row{display:flex;flex-wrap:wrap;gap:12px}.note{color:#555;font-size:0.9em}"""


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n")


def write_report(kind: str, report_dir: str, **kw) -> str:
    """Write the report of ``kind`` ('membership' or 'attribution') and return the path of index.html."""
    d = Path(report_dir)
    d.mkdir(parents=True, exist_ok=True)
    if kind == "membership":
        return _membership(d, **kw)
    if kind == "attribution":
        return _attribution(d, **kw)
    raise ValueError(f"unknown report kind {kind}")


# ---------------------------------------------------------------------------------------------- membership
def _membership(d: Path, *, summary: dict, result, real, gen, truth: Mapping[str, int] | None = None,
                top: int = 8) -> str:
    plt = _plt()
    from sklearn import metrics as skm

    score = np.asarray(result.score, dtype=float)
    used = np.asarray(result.used).astype(int)
    thr = float(result.threshold)
    y = None
    if truth:
        y = np.array([truth.get(p, -1) for p in real.paths])
        if (y < 0).any() or len(set(y.tolist())) < 2:
            y = None
    parts = [f"<p>{html.escape(summary.get('summary', '').splitlines()[0])}</p>"]
    facts_json = {"summary": {k: v for k, v in summary.items() if k != "report"}, "versions": _versions()}

    info = getattr(result, "info", {}) or {}
    null = getattr(result, "null_scores", None)
    null = None if null is None else np.asarray(null, dtype=float)
    null = null[np.isfinite(null)] if null is not None else None
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    finite = np.isfinite(score)
    both = np.concatenate([score[finite]] + ([null] if null is not None and null.size else []))
    bins = np.histogram_bin_edges(both, bins=40) if both.size else 10
    if null is not None and null.size:
        # the null drawn under the candidates, scaled to the candidates' count so the shapes compare
        wts = np.full(null.size, finite.sum() / null.size)
        ax.hist(null, bins=bins, weights=wts, color="0.75", label=f"null: {_null_label(info, null.size)}")
        ax.hist(null, bins=bins, weights=wts, histtype="step", color="0.35", lw=1)
    if y is not None:
        ax.hist(score[(y == 0) & finite], bins=bins, alpha=0.6, label="candidates not used (truth)")
        ax.hist(score[(y == 1) & finite], bins=bins, alpha=0.6, label="candidates used (truth)")
    else:
        ax.hist(score[finite], bins=bins, alpha=0.7, label=f"candidates (n={int(finite.sum())})")
    if np.isfinite(thr):
        ax.axvline(thr, color="k", ls="--", label=f"threshold {thr:.3g}")
    ax.set_xlabel("membership score (higher = more likely used)")
    ax.set_ylabel("images")
    ax.legend(fontsize=7)
    parts.append("<h2>Scores and decision</h2>")
    parts.append(f'<img src="{_save(fig, d / "score_histogram.png")}" alt="score histogram">')
    if null is not None and null.size:
        parts.append(f"<p class=note>Grey: the null distribution the scores are judged against "
                     f"({html.escape(_null_label(info, null.size))}), scaled to the number of candidates. "
                     f"Candidates far to the right of it carry evidence of membership.</p>")
        facts_json["null_scores"] = {"n": int(null.size), "median": float(np.median(null)),
                                     "q99": float(np.quantile(null, 0.99)), "max": float(null.max())}
    ser = (info.get("pair_null") or {}).get("series") if isinstance(info.get("pair_null"), dict) else None
    if ser and not ser.get("reason"):        # issue 13 (uns7): series found in the real folder, left out of the null
        facts_json["series"] = {k: ser[k] for k in ("n_series", "n_grouped", "largest", "factor", "alpha")}
        parts.append(f"<p class=note>Series (several slices of one patient) found in the real folder from the images "
                     f"alone: {int(ser['n_series'])} ({int(ser['n_grouped'])} images); each image's own series is "
                     f"left out of its real-to-real null.</p>")
    parts.append(f"<p class=note>Decision: {html.escape(str(summary.get('decision')))}; "
                 f"{int(used.sum())} of {len(used)} images flagged. "
                 f"{html.escape(str(getattr(result, 'summary', '')))}</p>")
    parts.append(_table({k: v for k, v in info.items() if not isinstance(v, (list, dict))}))
    parts.extend(_evidence_breakdown(d, plt, result, real, score, used, facts_json))

    if y is not None:
        fpr, tpr, _ = skm.roc_curve(y, score)
        prec, rec, _ = skm.precision_recall_curve(y, score)
        auc = skm.roc_auc_score(y, score)
        m = {"roc_auc": float(auc), "f1": float(skm.f1_score(y, used, zero_division=0)),
             "tpr_at_1pct_fpr": float(tpr[fpr <= 0.01].max()) if (fpr <= 0.01).any() else 0.0,
             "average_precision": float(skm.average_precision_score(y, score))}
        facts_json["metrics"] = m
        fig, axs = plt.subplots(1, 2, figsize=(8, 3.5))
        axs[0].plot(fpr, tpr)
        axs[0].plot([0, 1], [0, 1], "k:", lw=0.8)
        axs[0].set_xscale("symlog", linthresh=0.01)
        axs[0].set_xlabel("false-positive rate")
        axs[0].set_ylabel("true-positive rate")
        axs[0].set_title(f"ROC (AUC {auc:.3f})")
        axs[1].plot(rec, prec)
        axs[1].set_xlabel("recall")
        axs[1].set_ylabel("precision")
        axs[1].set_title(f"precision-recall (AP {m['average_precision']:.3f})")
        parts.append("<h2>ROC and precision-recall</h2>")
        parts.append(f'<img src="{_save(fig, d / "roc_pr.png")}" alt="ROC and PR curves">')
        parts.append(_table(m))

    # top-scoring real images with their nearest generated images
    nearest = np.asarray(getattr(result, "nearest", np.empty((0, 0))))
    if nearest.ndim == 1:
        nearest = nearest[:, None]
    order = np.argsort(-np.where(np.isfinite(score), score, -np.inf), kind="stable")[:top]
    if nearest.size and len(order):
        import imprint.kernels as kernels

        ncol = min(3, nearest.shape[1])
        rows_out = []
        fig, axs = plt.subplots(len(order), 1 + 2 * ncol, figsize=(2 * (1 + 2 * ncol), 2.4 * len(order)),
                                squeeze=False)
        for r, i in enumerate(order):
            axs[r, 0].imshow(real.images[i], cmap="gray", vmin=0, vmax=255)
            axs[r, 0].set_title(f"real {real.paths[i]}\nscore {score[i]:.3g}", fontsize=7)
            for c in range(ncol):
                j = int(nearest[i, c])
                if c == 0 and "reg_match" in (getattr(result, "evidence", None) or {}):
                    j = int(np.asarray(result.evidence["reg_match"])[i])   # the registered best match
                ax_img, ax_diff = axs[r, 1 + 2 * c], axs[r, 2 + 2 * c]
                if j < 0:
                    ax_img.axis("off"); ax_diff.axis("off")
                    continue
                pair = np.array([[i, j]], dtype=np.int64)
                s = float(kernels.ssim_pairs(real.images, gen.images, pair)[0])
                e = float(kernels.mse_pairs(real.images, gen.images, pair)[0])
                ax_img.imshow(gen.images[j], cmap="gray", vmin=0, vmax=255)
                ax_img.set_title(f"gen {gen.paths[j]}\nSSIM {s:.3f} MSE {e:.0f}", fontsize=7)
                diff = np.abs(real.images[i].astype(np.int16) - gen.images[j].astype(np.int16))
                dlabel = "|difference|"
                reg = _registered_match(result, real.images, gen.images, i, j) if c == 0 else None
                if reg is not None:   # the registered match: real image transformed onto the generated one
                    diff, dlabel = reg
                ax_diff.imshow(diff, cmap="magma", vmin=0, vmax=128)
                ax_diff.set_title(dlabel, fontsize=7)
                rows_out.append({"real": real.paths[i], "generated": gen.paths[j], "rank": c, "ssim": s,
                                 "mse": e, "score": float(score[i]),
                                 **({"registered": dlabel} if reg is not None else {})})
        for ax in axs.ravel():
            ax.set_xticks([]); ax.set_yticks([])
        parts.append(f"<h2>Top {len(order)} real images and their nearest generated images</h2>")
        parts.append(f'<img src="{_save(fig, d / "top_matches.png")}" alt="top matches">')
        facts_json["top_matches"] = rows_out


    parts.append("<h2>Run facts</h2>")
    flat = {k: v for k, v in summary.items() if k not in ("summary", "info", "report")}
    parts.append(_table(flat))
    parts.append(_table(facts_json["versions"]))
    write_json(d / "report.json", facts_json)
    from .outputs import write_csv

    write_csv(d / "scores.csv", ["image", "score", "used"], zip(real.paths, score.tolist(), used.tolist()))
    atomic_write_text(d / "index.html", _page("imprint membership audit", "".join(parts)))
    return str(d / "index.html")


def _null_label(info: Mapping, n: int) -> str:
    kind = str(info.get("null", ""))
    if kind.startswith("reference"):
        return f"known non-members, n={n}"
    return f"the candidates themselves (no reference given), n={n}"


def _contributions(result, rows: np.ndarray):
    """Per image, each combined evidence's calibrated z, weight and share of the combined score.

    Returns (names, z [n, F], contribution [n, F] = w_j z_j / ||w||, decisive [n] (name of the single evidence
    that set the score through the max rule, or "" when the weighted sum did)) or None when unavailable.
    """
    cal = getattr(result, "calibrated", None)
    weights = (getattr(result, "info", {}) or {}).get("weights") or {}
    if not cal or not weights:
        return None
    from .membership.common import MAX_FEATURES

    names = [n for n in weights if n in cal]
    if not names:
        return None
    w = np.array([float(weights[n]) for n in names])
    nrm = float(np.linalg.norm(w))
    if nrm <= 0:
        return None
    z = np.stack([np.asarray(cal[n], dtype=float)[rows] for n in names], 1)
    contrib = z * (w / nrm)
    total = contrib.sum(1)
    mx = np.array([n in MAX_FEATURES for n in names]) & (w > 0)
    decisive = np.array([""] * len(rows), dtype=object)
    if mx.any():
        zm = np.where(mx, z, -np.inf)
        best = zm.argmax(1)
        for i, b in enumerate(best):
            if zm[i, b] > total[i]:
                decisive[i] = names[b]
    return names, z, contrib, decisive


def _evidence_breakdown(d: Path, plt, result, real, score, used, facts_json, max_charts: int = 12,
                        max_rows: int = 200) -> list[str]:
    """The evidence behind each flagged image: a bar chart per image (top ``max_charts``) and a table."""
    flagged = np.flatnonzero(used == 1)
    title = "Evidence behind each flagged image"
    if not len(flagged):
        flagged = np.argsort(-np.where(np.isfinite(score), score, -np.inf), kind="stable")[:3]
        title = "No image flagged: evidence behind the highest-scoring images"
    flagged = flagged[np.argsort(-score[flagged], kind="stable")]
    got = _contributions(result, flagged)
    out = [f"<h2>{title}</h2>"]
    if got is None:
        out.append("<p class=note>No calibrated evidence recorded for this run.</p>")
        return out
    names, z, contrib, decisive = got
    ncharts = min(max_charts, len(flagged))
    ncol = min(4, ncharts)
    nrow = -(-ncharts // ncol)
    fig, axs = plt.subplots(nrow, ncol, figsize=(3.1 * ncol, nrow * (0.17 * len(names) + 0.8)),
                            squeeze=False, sharex=True, layout="constrained")
    lim = max(1.0, float(np.nanmax(np.abs(contrib[:ncharts]))) if ncharts else 1.0)
    for k in range(nrow * ncol):
        ax = axs[k // ncol, k % ncol]
        if k >= ncharts:
            ax.axis("off")
            continue
        i = flagged[k]
        colors = ["#c0392b" if decisive[k] == n else ("#2e86c1" if c >= 0 else "#aab7b8")
                  for n, c in zip(names, contrib[k])]
        ax.barh(range(len(names)), contrib[k], color=colors)
        ax.axvline(0, color="k", lw=0.6)
        ax.set_yticks(range(len(names)), names if k % ncol == 0 else [""] * len(names), fontsize=6)
        ax.invert_yaxis()
        ax.set_xlim(-lim * 0.3, lim * 1.05)
        ax.set_title(f"{real.paths[i]}\nscore {score[i]:.3g}" + (f" (set by {decisive[k]})" if decisive[k] else ""),
                     fontsize=6.5)
        ax.tick_params(axis="x", labelsize=6)
    fig.supxlabel("weighted calibrated evidence (z against the null x weight / |w|)", fontsize=7)
    out.append(f'<img src="{_save(fig, d / "evidence_breakdown.png")}" alt="evidence breakdown of flagged images">')
    out.append("<p class=note>Each bar is one kind of evidence: its robust z-score against the null, times its "
               "weight. The score is their sum, or the strongest single copy evidence when that is larger "
               "(red bar). Blue: evidence for membership; grey: against.</p>")
    rows_html, rows_json = [], []
    for k, i in enumerate(flagged[:max_rows]):
        order = np.argsort(-contrib[k], kind="stable")[:3]
        drivers = ", ".join(f"{names[j]} z={z[k, j]:.1f}" for j in order if contrib[k, j] > 0) or "none positive"
        rows_html.append(f"<tr><td>{html.escape(real.paths[i])}</td><td>{score[i]:.3g}</td>"
                         f"<td>{html.escape(decisive[k] or 'weighted sum')}</td><td>{html.escape(drivers)}</td></tr>")
        rows_json.append({"image": real.paths[i], "score": float(score[i]), "set_by": decisive[k] or "weighted sum",
                          "z": {n: float(z[k, j]) for j, n in enumerate(names)},
                          "contribution": {n: float(contrib[k, j]) for j, n in enumerate(names)}})
    out.append("<table><tr><th>image</th><th>score</th><th>score set by</th><th>main evidence (calibrated z)</th>"
               "</tr>" + "".join(rows_html) + "</table>")
    if len(flagged) > max_rows:
        out.append(f"<p class=note>{len(flagged) - max_rows} more in evidence_breakdown.csv.</p>")
    from .outputs import write_csv

    write_csv(d / "evidence_breakdown.csv", ["image", "score", "set_by"] + [f"z_{n}" for n in names],
              [[real.paths[i], float(score[i]), decisive[k] or "weighted sum"] + z[k].tolist()
               for k, i in enumerate(flagged)])
    facts_json["evidence_breakdown"] = rows_json
    return out


def _registered_match(result, real_images, gen_images, i: int, j: int):
    """|generated - registered real| and a caption with the transform of the best registered match
    (evidence ``reg_*``); None when the result has no registration."""
    ev = getattr(result, "evidence", None) or {}
    keys = ("reg_flip", "reg_angle", "reg_scale", "reg_dy", "reg_dx", "reg_gain", "reg_ncc")
    if not all(k in ev for k in keys):
        return None
    from .membership.register import warp

    p = {k: float(np.asarray(ev[k])[i]) for k in keys}
    src = real_images[i:i + 1].astype(np.float32)
    out, valid = warp(src, [0], int(p["reg_flip"] > 0.5), p["reg_angle"], p["reg_scale"], p["reg_dy"], p["reg_dx"])
    g = gen_images[j].astype(np.float32)
    m = valid[0] > 0
    a = out[0]
    if m.sum() > 1 and a[m].std() > 0:   # the intensity fit the NCC allows: least squares gain and offset
        gain = float(np.cov(a[m], g[m])[0, 1] / a[m].var())
        a = gain * (a - a[m].mean()) + g[m].mean()
    diff = np.where(m, np.abs(a - g), 0.0)
    label = (f"registered: {'flip, ' if p['reg_flip'] > 0.5 else ''}{p['reg_angle']:+.0f} deg, x{p['reg_scale']:.2f}, "
             f"shift ({p['reg_dy']:+.1f},{p['reg_dx']:+.1f}) px,\n gain {p['reg_gain']:.2f}; NCC {p['reg_ncc']:.3f}")
    return diff, label


# ---------------------------------------------------------------------------------------------- attribution
def open_set_floor_note(cluster: dict, floor: dict | None) -> str:
    """The open set at the processing floor (issue 19, branch name12) for one cluster of the report: its ratio to the
    floor's nearest dev model against the floor threshold, and whether it was named there; "" when the run had no
    floor open set (``attribution.OPEN_SET_SPACE = "features"``, or the floor step was skipped)."""
    fr = cluster.get("floor_ratio")
    if fr is None or not floor:
        return ""
    txt = (f"; at the processing floor (resize 0.5 + JPEG 50) ratio to {cluster.get('floor_nearest')}: {fr:.3g} "
           f"(threshold {floor.get('threshold', float('nan')):.3g})")
    if cluster.get("named_in") == "floor":
        txt += ", named there: processed images, the same nearest model, and a detected processing history"
    return txt


def _attribution(d: Path, *, summary: dict, result, images, truth: Mapping[str, str] | None = None) -> str:
    plt = _plt()
    import imprint.kernels as kernels
    from sklearn import metrics as skm
    from sklearn.decomposition import PCA

    labels = np.asarray(result.labels).astype(int)
    k = int(result.k)
    X = np.asarray(images.images)
    feats = getattr(result, "features", None)
    if feats is None:
        feats = kernels.fingerprint_features(X)
    feats = np.asarray(feats, dtype=np.float64)
    feats = (feats - feats.mean(0)) / (feats.std(0) + 1e-9)
    n = len(labels)
    if n >= 30:
        from sklearn.manifold import TSNE

        sub = np.arange(n) if n <= 3000 else np.random.default_rng(0).choice(n, 3000, replace=False)
        p = PCA(n_components=min(30, feats.shape[1], len(sub) - 1), random_state=0).fit_transform(feats[sub])
        emb = TSNE(n_components=2, perplexity=min(30, (len(sub) - 1) / 3), init="pca", random_state=0).fit_transform(p)
        method = "t-SNE"
    else:
        sub = np.arange(n)
        emb = PCA(n_components=2, random_state=0).fit_transform(feats)
        method = "PCA"
    y = None
    if truth:
        yl = [truth.get(p) for p in images.paths]
        if all(v is not None for v in yl):
            y = np.array(yl)
    parts = [f"<p>{html.escape(summary.get('summary', '').splitlines()[0])}</p>"]
    facts = {"summary": {k_: v for k_, v in summary.items() if k_ != "report"}, "versions": _versions()}

    ncols = 2 if y is not None else 1
    fig, axs = plt.subplots(1, ncols, figsize=(5 * ncols, 4.2), squeeze=False)
    sc = axs[0, 0].scatter(emb[:, 0], emb[:, 1], c=labels[sub], cmap="tab10", s=8, vmin=0, vmax=9)
    axs[0, 0].set_title(f"{method} of attribution features, by cluster")
    if y is not None:
        names = sorted(set(y.tolist()))
        codes = np.array([names.index(v) for v in y])
        axs[0, 1].scatter(emb[:, 0], emb[:, 1], c=codes[sub], cmap="tab10", s=8, vmin=0, vmax=9)
        axs[0, 1].set_title("by true model")
    for ax in axs.ravel():
        ax.set_xticks([]); ax.set_yticks([])
    parts.append("<h2>Map of the images</h2>")
    parts.append(f'<img src="{_save(fig, d / "map.png")}" alt="2-D map">')

    if y is not None:
        names = sorted(set(y.tolist()))
        cm = np.zeros((len(names), k), dtype=int)
        for t, c in zip(y, labels):
            cm[names.index(t), c] += 1
        ari = skm.adjusted_rand_score(y, labels)
        nmi = skm.normalized_mutual_info_score(y, labels)
        facts["metrics"] = {"ari": float(ari), "nmi": float(nmi), "confusion": cm.tolist(), "models": names}
        fig, ax = plt.subplots(figsize=(1.2 + 0.6 * k, 1 + 0.5 * len(names)))
        ax.imshow(cm, cmap="Blues")
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8)
        ax.set_yticks(range(len(names)), names)
        ax.set_xticks(range(k), [f"c{j}" for j in range(k)])
        ax.set_title(f"ARI {ari:.3f}  NMI {nmi:.3f}")
        parts.append("<h2>Confusion matrix</h2>")
        parts.append(f'<img src="{_save(fig, d / "confusion.png")}" alt="confusion matrix">')

    # montage per cluster and mean residual spectrum per cluster
    per = 6
    fig, axs = plt.subplots(k, per, figsize=(1.4 * per, 1.5 * k), squeeze=False)
    conf = np.asarray(getattr(result, "confidence", np.ones(n)), dtype=float)
    for c in range(k):
        idx = np.where(labels == c)[0]
        idx = idx[np.argsort(-conf[idx], kind="stable")][:per]
        for j in range(per):
            ax = axs[c, j]
            ax.set_xticks([]); ax.set_yticks([])
            if j < len(idx):
                ax.imshow(X[idx[j]], cmap="gray", vmin=0, vmax=255)
            if j == 0:
                ax.set_ylabel(f"cluster {c}\n(n={int((labels == c).sum())})", fontsize=7)
    parts.append("<h2>Representative images per cluster</h2>")
    parts.append(f'<img src="{_save(fig, d / "montage.png")}" alt="montage per cluster">')

    res = kernels.noise_residuals(X).astype(np.float64)
    power = np.abs(np.fft.fftshift(np.fft.fft2(res), axes=(-2, -1))) ** 2
    fig, axs = plt.subplots(1, k, figsize=(2.2 * k, 2.4), squeeze=False)
    spectra = {}
    for c in range(k):
        m = np.log10(power[labels == c].mean(0) + 1e-6) if (labels == c).any() else np.zeros(power.shape[1:])
        axs[0, c].imshow(m, cmap="viridis")
        axs[0, c].set_title(f"cluster {c}", fontsize=8)
        axs[0, c].set_xticks([]); axs[0, c].set_yticks([])
        spectra[c] = m
    parts.append("<h2>Mean residual spectrum per cluster (the generator's fingerprint)</h2>")
    parts.append(f'<img src="{_save(fig, d / "spectra.png")}" alt="mean residual spectra">')
    parts.append("<p class=note>log10 power of the noise residual (image minus its denoised version), "
                 "centred on zero frequency. Periodic peaks are upsampling artefacts of the generator.</p>")

    # models: known (matched to a dev model) and new, confidence and bootstrap stability per cluster
    def _fmt(v):
        return "n/a" if v is None or not np.isfinite(v) else f"{v:.2f}"

    cdev = list(getattr(result, "cluster_dev_model", None) or [None] * k)
    info = getattr(result, "info", {}) or {}
    stab = info.get("stability", {}) or {}
    ccon = info.get("cluster_confidence", [None] * k)
    jac = stab.get("cluster_jaccard", [None] * k)
    oc = {c["cluster"]: c for c in (info.get("open_set", {}) or {}).get("clusters", [])}
    rows = {}
    for c in range(k):
        name = cdev[c] if cdev[c] else ("new model" if oc else "-")
        ratio = oc.get(c, {}).get("ratio")
        rows[f"cluster {c}"] = (f"{int((labels == c).sum())} images; model: {name}; confidence "
                                f"{_fmt(ccon[c] if c < len(ccon) else None)}; stability (Jaccard) "
                                f"{_fmt(jac[c] if c < len(jac) else None)}"
                                + (f"; distance ratio to nearest dev model {oc[c].get('nearest')}: {ratio:.3g}"
                                   if ratio is not None else "")
                                + open_set_floor_note(oc.get(c, {}), (info.get("open_set", {}) or {}).get("floor")))
    parts.append("<h2>Models: known and new</h2>")
    t1 = info.get("one_model_test", {}) or {}
    mean_ari = stab.get("mean_ari")
    head = (f"Bootstrap stability: mean ARI {_fmt(mean_ari)} over {stab.get('n_resamples', 0)} resamples of "
            f"{stab.get('resample_size', 0)} images.")
    if t1.get("separation") is not None:
        head += (f" One-model test: held-out separation {t1['separation']:.3f} (one model below "
                 f"{t1.get('threshold')}).")
        if t1.get("error_rate"):
            head += f" Stated error rate: {t1['error_rate']}."
    if oc:
        removed = sum((info.get("dev_overlap_removed") or {}).values())
        head += (f" Known models: {', '.join(info.get('known_models') or []) or 'none'}; new model clusters: "
                 f"{info.get('new_clusters') or 'none'}. Threshold on the distance ratio "
                 f"{info['open_set'].get('threshold', float('nan')):.3g}; {removed} dev image(s) that are also "
                 "among the images were left out of dev.")
    parts.append(f"<p>{html.escape(head)}</p>")
    parts.append(_table(rows, list(rows)))
    facts["models"] = {"cluster_dev_model": cdev, "cluster_confidence": ccon, "stability": stab}

    proc = summary.get("processing")
    if proc and proc.get("per_cluster"):  # issue 19: the processing each cluster's images went through
        facts["processing"] = proc

        def pct(p, key):
            return f"{p.get(key, 0)} ({100.0 * p.get(key, 0) / max(p['n'], 1):.0f}%)"

        rows = "".join(
            f"<tr><td>{p['cluster']}</td><td>{p['n']}</td><td>{pct(p, 'jpeg')}</td><td>{p['jpeg_files']}</td>"
            f"<td>{p['jpeg_in_pixels']}</td>"
            f"<td>{'' if p['median_jpeg_quality'] is None else round(p['median_jpeg_quality'])}</td>"
            f"<td>{pct(p, 'resized')}</td><td>{p.get('resized_copied', 0)}</td><td>{p.get('resized_band_limit', 0)}"
            f"</td><td>{p.get('resized_periodic', 0)}</td><td>{pct(p, 'untouched')}</td></tr>"
            for p in proc["per_cluster"])
        parts.append("<h2>Detected processing per cluster</h2>")
        parts.append("<table><tr><th>cluster</th><th>images</th><th>JPEG</th><th>JPEG files</th>"
                     "<th>JPEG traces in pixels</th><th>median JPEG quality</th><th>resized</th>"
                     "<th>resized: copied lines</th><th>resized: band limit</th><th>resized: periodic traces</th>"
                     f"<th>untouched</th></tr>{rows}</table>")
        parts.append(f"<p class=note>{html.escape(str(proc.get('note', '')))}. Attribution discounts JPEG and "
                     "resizing whether or not they were detected; a cluster made only of processed images "
                     "deserves a second look.</p>")
    parts.append("<h2>Run facts</h2>")
    parts.append(_table({k_: v for k_, v in summary.items() if k_ not in ("summary", "info", "report")}))
    parts.append(_table(facts["versions"]))
    write_json(d / "report.json", facts)
    from .outputs import write_csv

    write_csv(d / "clusters.csv", ["image", "cluster", "confidence", "dev_model"],
              zip(images.paths, labels.tolist(), conf.tolist(), [cdev[c] or "" for c in labels.tolist()]))
    atomic_write_text(d / "index.html", _page("imprint attribution audit", "".join(parts)))
    return str(d / "index.html")
