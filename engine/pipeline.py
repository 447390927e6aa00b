"""The jobs behind the CLI commands: validate arguments, read inputs, call the library, write outputs.

Each ``run_*`` function validates every argument *before* any work starts (one-line ImprintError), reads
images with per-file skip reports, calls the Python API (``engine.membership``, ``engine.attribution``,
``engine.backbone``, ``engine.store``) and writes its outputs atomically. It returns a JSON-able summary
whose ``"summary"`` entry is the one line the CLI prints.
"""
from __future__ import annotations

import os
import shutil
import signal
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import ImprintError
from .ingest import IngestPolicy
from .outputs import write_csv, write_json


@contextmanager
def _sigterm_as_interrupt():
    """Turn SIGTERM into KeyboardInterrupt so a terminated job stops like Ctrl-C (outputs stay atomic)."""
    def handler(signum, frame):  # pragma: no cover - exercised by subprocess tests
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not in the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _check_dir(path: str, what: str) -> None:
    p = Path(path)
    if not p.exists():
        raise ImprintError(f"{what}: folder not found: {path}")
    if not p.is_dir():
        raise ImprintError(f"{what}: not a folder: {path}")


def _check_out(out: str, what: str = "--out") -> None:
    p = Path(out)
    parent = p.resolve().parent
    if not parent.is_dir():
        raise ImprintError(f"{what}: folder {parent} does not exist")
    if p.is_dir():
        raise ImprintError(f"{what}: {out} is a folder, expected a file path")
    if not os.access(parent, os.W_OK):
        raise ImprintError(f"{what}: folder {parent} is not writable")


def _check_report_dir(report_dir: str) -> None:
    p = Path(report_dir)
    if p.exists() and not p.is_dir():
        raise ImprintError(f"--report: {report_dir} exists and is not a folder")
    parent = p.resolve().parent
    if not parent.is_dir():
        raise ImprintError(f"--report: folder {parent} does not exist")


def parse_decision(decision: str) -> str:
    """The normalised ``--decision`` string (``"f1"`` or ``"fpr:ALPHA"``); one-line error when invalid."""
    from .membership import parse_decision as parse

    mode, alpha = parse(decision, "--decision")
    return "f1" if mode == "f1" else f"fpr:{alpha:g}"


def _load(folder, policy, label, rep, skips, exclude=()):
    from .ingest import load_folder

    bar = rep.progress(None, f"reading {label}")
    try:
        s = load_folder(folder, policy, progress=bar.update, exclude=exclude, label=label)
    finally:
        bar.close()
    skips.extend((str(folder), k.path, k.reason) for k in s.skipped)
    return s


def _skip_report(out: str, skips: list, rep) -> str | None:
    path = str(Path(out).with_suffix("")) + ".skipped.csv"
    if not skips:
        if os.path.exists(path):
            os.unlink(path)
        return None
    for folder, p, reason in skips:
        rep.line(f"skipped {folder.rstrip('/')}/{p}: {reason}")
    write_csv(path, ["folder", "path", "reason"], skips)
    return path


def _strict(strict: bool, skips: list) -> None:
    if strict and skips:
        folder, p, reason = skips[0]
        raise ImprintError(f"--strict: {len(skips)} input file(s) skipped (first: {folder.rstrip('/')}/{p}: {reason})")


# ---------------------------------------------------------------------------------------------- membership
def run_membership(*, gen_dir: str, real_dir: str, out: str, dev_dirs: Sequence[str] = (),
                   ref_dirs: Sequence[str] = (), decision: str = "fpr:0.01",
                   policy: IngestPolicy = IngestPolicy(), strict: bool = False, seed: int = 0, rep=None,
                   report_dir: str | None = None, truth: dict | None = None, executor: str = "local",
                   address: str | None = None) -> dict:
    """``truth`` (optional, image -> 0/1) only adds truth-based plots to the report.

    ``executor="ray"`` runs the embedding, search and pair stages on Ray (``address``; engine.distributed)."""
    from .distributed import check_executor, executor_scope
    from .membership import DevSet, audit_membership

    check_executor(executor, address)

    rep = rep or _NullReporter()
    t_start = time.perf_counter()
    _check_dir(gen_dir, "--generated")
    _check_dir(real_dir, "--real")
    _check_out(out)
    for d in dev_dirs:
        _check_dir(d, "--dev")
        for sub in ("generated", "real/used", "real/unused"):
            if not (Path(d) / sub).is_dir():
                raise ImprintError(f"--dev {d}: missing subfolder {sub}/ (expected generated/, real/used/, real/unused/)")
    for r in ref_dirs:
        _check_dir(r, "--reference")
    decision = parse_decision(decision)
    if report_dir is not None:
        _check_report_dir(report_dir)

    skips: list = []
    timings: dict[str, float] = {}
    with _sigterm_as_interrupt():
        t0 = time.perf_counter()
        gen = _load(gen_dir, policy, "generated", rep, skips)
        real = _load(real_dir, policy, "real", rep, skips)
        devs = []
        refs = []
        for d in dev_dirs:
            g = _load(os.path.join(d, "generated"), policy, f"dev generated", rep, skips)
            u = _load(os.path.join(d, "real", "used"), policy, f"dev used", rep, skips)
            n = _load(os.path.join(d, "real", "unused"), policy, f"dev unused", rep, skips)
            devs.append(DevSet(name=Path(d).name or str(d), generated=g.images, used=u.images, unused=n.images))
            refs.append(n)
        for r in ref_dirs:
            refs.append(_load(r, policy, "reference", rep, skips))
        timings["read_s"] = time.perf_counter() - t0
        _strict(strict, skips)

        # Reference images must be non-members of *this* real set: drop any that also appear in it.
        real_hashes = set(real.hashes)
        ref_imgs = []
        seen: set[str] = set()
        for s in refs:
            keep = [i for i, h in enumerate(s.hashes) if h not in real_hashes and h not in seen]
            seen.update(s.hashes[i] for i in keep)
            if keep:
                ref_imgs.append(s.images[keep])
        reference = np.concatenate(ref_imgs) if ref_imgs else None

        # Byte-identical duplicates in the real folder are scored once and share the result: otherwise each copy
        # would be the other's "nearest real image" and hide a memorised patient.
        first: dict[str, int] = {}
        inverse = np.array([first.setdefault(h, len(first)) for h in real.hashes], dtype=np.int64)
        uniq_rows = np.unique(inverse, return_index=True)[1]
        n_dups = len(real) - len(uniq_rows)

        # Checkpoints of finished stages (each dev set's evidence, the target's) live next to the output until it
        # is written, so a killed run resumes from them; they are keyed by their inputs, never trusted otherwise.
        cache_dir = Path(out).with_name(f".{Path(out).name}.checkpoints")
        t0 = time.perf_counter()
        bar = rep.progress(None, "membership")
        try:
            with executor_scope(executor, address):
                res = audit_membership(gen.images, real.images[uniq_rows], dev_sets=devs, reference=reference,
                                       decision=decision, random_state=seed, progress=bar.update,
                                       cache_dir=str(cache_dir))
        finally:
            bar.close()
        timings["audit_s"] = time.perf_counter() - t0

        score = np.asarray(res.score, dtype=np.float64)[inverse]
        used = np.asarray(res.used).astype(int)[inverse]
        res.evidence = {k_: np.asarray(v)[inverse] for k_, v in res.evidence.items()}
        if getattr(res, "nearest", None) is not None and np.asarray(res.nearest).size:
            res.nearest = np.asarray(res.nearest)[inverse]
        res.score, res.used = score, used
        write_csv(out, ["image", "score", "used"], zip(real.paths, score.tolist(), used.tolist()))
        ev_path = str(Path(out).with_suffix("")) + ".evidence.csv"
        ev_names = sorted(res.evidence)
        nearest = np.asarray(res.nearest) if getattr(res, "nearest", None) is not None else None
        header = ["image"] + ev_names + (["nearest_generated"] if nearest is not None and nearest.size else [])
        rows = []
        for i, p in enumerate(real.paths):
            row = [p] + [float(res.evidence[n][i]) for n in ev_names]
            if nearest is not None and nearest.size:
                j = int(nearest[i, 0]) if nearest.ndim == 2 else int(nearest[i])
                row.append(gen.paths[j] if 0 <= j < len(gen.paths) else "")
            rows.append(row)
        write_csv(ev_path, header, rows)
        skip_path = _skip_report(out, skips, rep)
        shutil.rmtree(cache_dir, ignore_errors=True)

    timings["total_s"] = time.perf_counter() - t_start
    n_used = int(used.sum())
    summary = {
        "command": "membership",
        "out": out,
        "evidence_out": ev_path,
        "skip_report": skip_path,
        "n_generated": len(gen),
        "n_real": len(real),
        "n_reference": 0 if reference is None else int(len(reference)),
        "n_dev_sets": len(devs),
        "n_skipped": len(skips),
        "n_duplicate_real": int(n_dups),
        "n_flagged": n_used,
        "decision": decision,
        "threshold": float(res.threshold),
        "timings": timings,
        "info": res.info,
        "ingest_policy": policy.describe(),
    }
    summary["summary"] = (f"membership: {n_used}/{len(real)} real images flagged as used ({decision}); "
                          f"{len(gen)} generated, {len(skips)} skipped; {timings['total_s']:.1f}s -> {out}"
                          + (f"\n{res.summary}" if getattr(res, "summary", "") else ""))
    if report_dir is not None:
        summary["report"] = _report("membership", report_dir, summary=summary, result=res, real=real, gen=gen,
                                    truth=truth)
    return summary


# ---------------------------------------------------------------------------------------------- attribution
def _processing_detected(imgs, labels: np.ndarray, k: int, out: str) -> dict:
    """Issue 19: per-image detected processing (``<out>.processing.csv``) and a per-cluster summary.

    JPEG files report their quantisation-table quality; other files are checked for JPEG traces in their
    pixels (engine.processing.jpeg_ghost).  Resampling is not detected.
    """
    from .ingest import jpeg_quality_of
    from .processing import detect

    q = [jpeg_quality_of(os.path.join(imgs.root, p)) for p in imgs.paths]
    det = detect(imgs.images, q)
    path = str(Path(out).with_suffix("")) + ".processing.csv"
    write_csv(path, ["image", "cluster", "processing", "jpeg_quality", "jpeg_source", "jpeg_ghost"],
              zip(imgs.paths, labels.tolist(), det["processing"],
                  ["" if v is None else v for v in det["jpeg_quality"]], det["jpeg_source"], det["jpeg_ghost"]))
    per = []
    for c in range(k):
        sel = np.flatnonzero(labels == c)
        qs = [det["jpeg_quality"][i] for i in sel if det["jpeg_quality"][i] is not None]
        per.append({"cluster": c, "n": int(sel.size),
                    "jpeg": int(sum(det["jpeg"][i] for i in sel)),
                    "jpeg_files": int(sum(det["jpeg_source"][i] == "file" for i in sel)),
                    "jpeg_in_pixels": int(sum(det["jpeg_source"][i] == "pixels" for i in sel)),
                    "median_jpeg_quality": float(np.median(qs)) if qs else None})
    return {"per_cluster": per, "out": path, "n_jpeg": int(sum(det["jpeg"])),
            "note": "JPEG: file quantisation tables, else JPEG ghost in the pixels; resampling is not detected"}


def run_attribution(*, images_dir: str, k: int | None, out: str, dev_dir: str | None = None,
                    policy: IngestPolicy = IngestPolicy(), strict: bool = False, seed: int = 0, rep=None,
                    report_dir: str | None = None, truth: dict | None = None, executor: str = "local",
                    address: str | None = None) -> dict:
    """``truth`` (optional, image -> model name) only adds truth-based plots to the report.

    ``executor="ray"`` extracts the features on Ray (``address``; engine.distributed); clustering stays here."""
    from .attribution import attribute
    from .distributed import check_executor, executor_scope

    check_executor(executor, address)

    rep = rep or _NullReporter()
    t_start = time.perf_counter()
    _check_dir(images_dir, "--images")
    _check_out(out)
    if k is not None and k < 1:
        raise ImprintError(f"--k must be at least 1 (got {k})")
    dev_models: list[str] = []
    if dev_dir is not None:
        _check_dir(dev_dir, "--dev")
        dev_models = sorted(e.name for e in os.scandir(dev_dir) if e.is_dir() and not e.name.startswith("."))
        if not dev_models:
            raise ImprintError(f"--dev {dev_dir}: no model subfolders (expected one folder of images per known model)")
    if report_dir is not None:
        _check_report_dir(report_dir)

    skips: list = []
    timings: dict[str, float] = {}
    with _sigterm_as_interrupt():
        t0 = time.perf_counter()
        imgs = _load(images_dir, policy, "images", rep, skips)
        dev_sets = {}
        for m in dev_models:
            s = _load(os.path.join(dev_dir, m), policy, f"dev {m}", rep, skips)
            dev_sets[m] = s.images
        timings["read_s"] = time.perf_counter() - t0
        _strict(strict, skips)
        if k is not None and k > len(imgs):
            raise ImprintError(f"--k {k} is larger than the number of readable images ({len(imgs)})")

        cache_dir = Path(out).with_name(f".{Path(out).name}.checkpoints")  # finished feature extractions
        t0 = time.perf_counter()
        with executor_scope(executor, address):
            res = attribute(imgs.images, k, dev_sets=dev_sets or None, random_state=seed, cache_dir=str(cache_dir))
        timings["cluster_s"] = time.perf_counter() - t0
        labels = np.asarray(res.labels).astype(int)
        write_csv(out, ["image", "cluster"], zip(imgs.paths, labels.tolist()))
        det_path = str(Path(out).with_suffix("")) + ".details.csv"
        conf = np.asarray(res.confidence, dtype=float)
        write_csv(det_path, ["image", "cluster", "confidence"], zip(imgs.paths, labels.tolist(), conf.tolist()))
        skip_path = _skip_report(out, skips, rep)
        shutil.rmtree(cache_dir, ignore_errors=True)
        t0 = time.perf_counter()
        processing = _processing_detected(imgs, labels, int(res.k), out)
        timings["processing_s"] = time.perf_counter() - t0

    timings["total_s"] = time.perf_counter() - t_start
    sizes = np.bincount(labels, minlength=int(res.k)).tolist()
    summary = {
        "command": "attribute",
        "out": out,
        "details_out": det_path,
        "skip_report": skip_path,
        "n_images": len(imgs),
        "n_skipped": len(skips),
        "k": int(res.k),
        "k_given": k,
        "cluster_sizes": sizes,
        "dev_models": dev_models,
        "timings": timings,
        "info": res.info,
        "ingest_policy": policy.describe(),
        "processing": processing,
    }
    summary["summary"] = (f"attribute: {len(imgs)} images in {res.k} clusters (sizes {sizes})"
                          f"{' (k estimated)' if k is None else ''}; {len(skips)} skipped; "
                          f"{timings['total_s']:.1f}s -> {out}")
    if report_dir is not None:
        summary["report"] = _report("attribution", report_dir, summary=summary, result=res, images=imgs,
                                    truth=truth)
    return summary


# ---------------------------------------------------------------------------------------------- embed
def _spec_dict(spec) -> dict:
    keys = ("name", "version", "sha256", "input_size", "channels", "mean", "std", "dim", "pretrained", "resize",
            "opset")
    out = {}
    for k in keys:
        v = getattr(spec, k, None)
        if isinstance(v, tuple):
            v = list(v)
        if v is not None and not isinstance(v, (str, int, float, bool, list)):
            v = str(v)
        out[k] = v
    return out


def run_embed(*, folder: str, store: str, backbone: str = "pixel", batch_size: int | None = None,
              shard_size: int = 4096, policy: IngestPolicy = IngestPolicy(), strict: bool = False, rep=None,
              onnx_options: dict | None = None, executor: str = "local", address: str | None = None) -> dict:
    """Embed new or changed images of ``folder`` into the Arrow store ``store`` (resumable).

    ``executor="ray"`` decodes and embeds on Ray workers (``address``); shards are committed here."""
    import hashlib

    from .distributed import check_executor, iter_embedded

    from .backbone import embed, load_backbone
    from .ingest import discover, iter_batches
    from .store import EmbeddingStore

    rep = rep or _NullReporter()
    t_start = time.perf_counter()
    _check_dir(folder, "FOLDER")
    check_executor(executor, address)
    if shard_size < 1:
        raise ImprintError("--shard-size must be at least 1")
    if batch_size is not None and batch_size < 1:
        raise ImprintError("--batch-size must be at least 1")
    bb = load_backbone(backbone, **(onnx_options or {}))
    spec = _spec_dict(bb.spec)
    st = EmbeddingStore.open_or_create(store, backbone=spec, dim=int(bb.spec.dim), policy=policy.describe())

    skips: list = []
    with _sigterm_as_interrupt():
        rel_paths, skipped = discover(folder)
        skips.extend((folder, s.path, s.reason) for s in skipped)
        have = st.keys()
        todo = []
        for p in rel_paths:
            if p in have:
                try:
                    with open(os.path.join(folder, p), "rb") as fh:
                        h = hashlib.sha256(fh.read()).hexdigest()
                except OSError:
                    h = None
                if h == have[p]:
                    continue
            todo.append(p)
        n_new = 0
        bar = rep.progress(len(todo), "embedding")
        try:
            for vec, paths, hashes in iter_embedded(folder, todo, bb, shard_size=shard_size, batch_size=batch_size,
                                                    policy=policy, executor=executor, address=address,
                                                    on_skip=lambda s: skips.append((folder, s.path, s.reason))):
                st.append(paths, hashes, vec)
                n_new += len(paths)
                bar.update(len(paths))
        finally:
            bar.close()
        _strict(strict, skips)
        if len(st.manifest["shards"]) > 1:
            st.compact()
    total = len(st)
    dt = time.perf_counter() - t_start
    summary = {
        "command": "embed",
        "store": store,
        "backbone": spec,
        "n_files": len(rel_paths),
        "n_embedded": n_new,
        "n_already": len(rel_paths) - len(todo),
        "n_skipped": len(skips),
        "rows": total,
        "seconds": dt,
        "summary": f"embed: {n_new} new, {len(rel_paths) - len(todo)} already in store, {len(skips)} skipped; "
                   f"store has {total} rows ({spec['name']}, dim {spec['dim']}); {dt:.1f}s -> {store}",
    }
    for folder_, p, reason in skips:
        rep.line(f"skipped {folder_.rstrip('/')}/{p}: {reason}")
    return summary


# ---------------------------------------------------------------------------------------------- report
def _report(kind: str, report_dir: str, **kw) -> str | None:
    try:
        from . import report
    except ImportError:
        return None
    Path(report_dir).mkdir(parents=True, exist_ok=True)
    return report.write_report(kind, report_dir, **kw)


class _NullReporter:
    def line(self, msg: str) -> None:
        pass

    def progress(self, total, desc):
        class _Bar:
            def update(self, n=1):
                pass

            def close(self):
                pass

        return _Bar()


__all__ = ["run_membership", "run_attribution", "run_embed", "parse_decision", "write_json"]
