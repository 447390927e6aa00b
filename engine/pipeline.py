"""The jobs behind the CLI commands: validate arguments, read inputs, call the library, write outputs.

Each ``run_*`` function validates every argument *before* any work starts (one-line ImprintError), reads
images with per-file skip reports, calls the Python API (``engine.api``, the code behind
``imprint.audit_membership`` / ``imprint.attribute``; ``engine.backbone``, ``engine.store``) and writes its
outputs atomically. It returns a JSON-able summary whose ``"summary"`` entry is the one line the CLI prints.
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
    """Turn SIGTERM into KeyboardInterrupt so a terminated job stops like Ctrl-C (outputs stay atomic).

    Under the CLI (``engine.interrupts`` installed) its once-only, safe-point handler is kept; otherwise (a job run
    in-process from the main thread) SIGTERM raises KeyboardInterrupt once and later ones are ignored, so the
    cleanup of the first is never cut short."""
    from . import interrupts

    if interrupts.installed():
        yield
        interrupts.check()
        return
    fired = []

    def handler(signum, frame):  # pragma: no cover - exercised by subprocess tests
        if fired:
            return
        fired.append(signum)
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


def _outputs_together():
    """A stop request (SIGTERM, Ctrl-C) that arrives while a job writes its set of outputs waits for the set."""
    from . import interrupts

    return interrupts.deferred()


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


def _check_new_dir(path: str, what: str) -> None:
    """An output folder that may not exist yet (``--report``, ``--store-dir``): one-line error when the path is a
    file or its parent folder is missing."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ImprintError(f"{what}: {path} exists and is not a folder")
    parent = p.resolve().parent
    if not parent.is_dir():
        raise ImprintError(f"{what}: folder {parent} does not exist")


def _check_report_dir(report_dir: str) -> None:
    _check_new_dir(report_dir, "--report")


def parse_decision(decision: str) -> str:
    """The normalised ``--decision`` string (``"f1"``, ``"fpr:ALPHA"`` or ``"fdr:Q"``); one-line error when invalid."""
    from .membership import parse_decision as parse

    mode, alpha = parse(decision, "--decision")
    return "f1" if mode == "f1" else f"{mode}:{alpha:g}"


def _load(folder, policy, label, rep, skips, exclude=()):
    from .ingest import load_folder

    bar = rep.progress(None, f"reading {label}")
    try:
        s = load_folder(folder, policy, progress=bar.update, exclude=exclude, label=label)
    finally:
        bar.close()
    skips.extend((str(folder), k.path, k.reason) for k in s.skipped)
    return s


def _memory_budget_bytes(memory_budget_gb: float | None) -> int:
    """``--memory-budget`` in bytes; default ``$IMPRINT_MAX_MEMORY_GB``, else 2 GiB (engine.membership.evidence)."""
    from .membership.evidence import _memory_budget

    if memory_budget_gb is None:
        return _memory_budget()
    try:
        gb = float(memory_budget_gb)
    except (TypeError, ValueError):
        raise ImprintError(f"--memory-budget must be a number of GB (got {memory_budget_gb!r})") from None
    if not gb > 0:
        raise ImprintError(f"--memory-budget must be positive (got {memory_budget_gb!r})")
    return int(gb * 2**30)


def _chunk_for(budget: int, n_gen: int, policy) -> int:
    """Generated images per evidence chunk under ``budget`` (as engine.membership.evidence sizes them)."""
    from .membership.evidence import generated_chunk, memory_budget

    with memory_budget(budget):
        return generated_chunk(n_gen, policy.size[0] * policy.size[1])


def _pixel_store_path(folder: str, store_dir: str | None, cache_dir: Path, label: str) -> Path:
    """Pixel store of ``folder``: under ``store_dir`` (kept, reused by later runs) or the checkpoint folder."""
    import hashlib

    if store_dir is None:
        return cache_dir / f"pixels-{label}"
    key = hashlib.sha256(os.path.abspath(folder).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return Path(store_dir) / f"{label}-{key}"


def _load_stored(folder, policy, label, rep, skips, store: Path):
    """Like :func:`_load`, through the pixel store ``store``: images come back memory-mapped (uint8)."""
    from .pixelstore import load_images

    store.parent.mkdir(parents=True, exist_ok=True)
    bar = rep.progress(None, f"reading {label}")
    try:
        s = load_images(folder, store, policy, progress=bar.update, label=label)
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
                   address: str | None = None, memory_budget_gb: float | None = None,
                   store_dir: str | None = None) -> dict:
    """``truth`` (optional, image -> 0/1) only adds truth-based plots to the report.

    The audit itself is :func:`engine.api.audit_loaded` (the Python API's); this job validates the arguments,
    reads the folders with progress bars and writes the outputs. ``executor`` is ``"local"``, ``"ray"``
    (``address``) or an :class:`~engine.executors.Executor` object.

    The generated and real folders are decoded once into uint8 pixel stores (``engine.pixelstore``) and read
    from them memory-mapped; the evidence processes it in chunks sized for ``memory_budget_gb`` (default
    ``$IMPRINT_MAX_MEMORY_GB``, else 2 GiB), so memory does not grow with the generated set. The budget changes
    no result. With ``store_dir`` the pixel store is kept there (``STORE_DIR/generated-<hash of the folder
    path>``) and a later run over the same folder decodes only new or changed files; otherwise it lives in the
    checkpoint folder and is removed with it."""
    from .api import audit_loaded, membership_line
    from .executors import check_executor

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
    budget = _memory_budget_bytes(memory_budget_gb)
    if store_dir is not None:
        _check_new_dir(store_dir, "--store-dir")

    skips: list = []
    timings: dict[str, float] = {}
    with _sigterm_as_interrupt():
        t0 = time.perf_counter()
        cache_dir = Path(out).with_name(f".{Path(out).name}.checkpoints")
        gen = _load_stored(gen_dir, policy, "generated", rep, skips,
                           _pixel_store_path(gen_dir, store_dir, cache_dir, "generated"))
        real = _load_stored(real_dir, policy, "real", rep, skips,  # memory-mapped too (issue 15)
                            _pixel_store_path(real_dir, store_dir, cache_dir, "real"))
        devs = []
        refs = []
        for d in dev_dirs:
            g = _load(os.path.join(d, "generated"), policy, f"dev generated", rep, skips)
            u = _load(os.path.join(d, "real", "used"), policy, f"dev used", rep, skips)
            n = _load(os.path.join(d, "real", "unused"), policy, f"dev unused", rep, skips)
            devs.append((Path(d).name or str(d), g, u, n))
        for r in ref_dirs:
            refs.append(_load(r, policy, "reference", rep, skips))
        timings["read_s"] = time.perf_counter() - t0
        _strict(strict, skips)

        # Checkpoints of finished stages (each dev set's evidence, the target's) live next to the output until it
        # is written, so a killed run resumes from them; they are keyed by their inputs, never trusted otherwise.
        from .membership.evidence import memory_budget

        bar = rep.progress(None, "membership")
        try:
            with memory_budget(budget):
                audit = audit_loaded(gen, real, devs, refs, decision=decision, seed=seed, executor=executor,
                                     address=address, progress=bar.update, cache_dir=str(cache_dir), skips=skips,
                                     ingest_policy=policy.describe())
        finally:
            bar.close()
        timings.update(audit.summary["timings"])
        res = audit.result
        with _outputs_together():
            audit.to_csv(out)
            ev_path = str(Path(out).with_suffix("")) + ".evidence.csv"
            audit.evidence_to_csv(ev_path)
            skip_path = _skip_report(out, skips, rep)
            shutil.rmtree(cache_dir, ignore_errors=True)

    timings["total_s"] = time.perf_counter() - t_start
    summary = dict(audit.summary, out=out, evidence_out=ev_path, skip_report=skip_path, timings=timings,
                   memory_budget_bytes=budget, generated_chunk=_chunk_for(budget, len(gen), policy),
                   pixel_store=str(store_dir) if store_dir is not None else None)
    summary["summary"] = membership_line(summary, getattr(res, "summary", ""), out)
    if report_dir is not None:
        summary["report"] = _report("membership", report_dir, summary=summary, result=res, real=real, gen=gen,
                                    truth=truth)
    return summary


# ---------------------------------------------------------------------------------------------- attribution
_PROCESSING_HEADER = ["image", "cluster", "processing", "jpeg_quality", "jpeg_source", "jpeg_ghost", "resized",
                      "resize_evidence", "copied_lines", "resize_z"]
_RESIZE_KINDS = ("copied", "band_limit", "periodic")  # engine.processing.detect_resampling_kinds, in report order


def _processing_detected(imgs, labels: np.ndarray, k: int, out: str) -> tuple[dict, list]:
    """Issue 19: per-image detected processing (rows of ``<out>.processing.csv``) and a per-cluster summary.

    JPEG files report their quantisation-table quality; other files are checked for JPEG traces in their
    pixels (engine.processing.jpeg_ghost).  Resampling (engine.processing.detect_resampling_kinds): copied lines
    per image on its own (box / nearest resizes, seen in a cluster resized as a whole), the band limit and
    periodic traces against the images of the same cluster and JPEG state.  Per cluster: how many images were
    JPEG'd (median quality), resized (and by which evidence) and untouched (neither).  Returns
    ``(summary, rows)``; the caller writes the rows with its other outputs.  Rows carry the image's file name
    and pixel statistics only (no file metadata).
    """
    from .ingest import jpeg_quality_of
    from .processing import detect, detect_resampling_kinds

    q = [jpeg_quality_of(os.path.join(imgs.root, p)) for p in imgs.paths]
    det = detect(imgs.images, q)
    jpeg = np.asarray(det["jpeg"], bool)
    # judged against the images of the same cluster *and* JPEG state: JPEG cuts the high band and its 8x8 grid makes
    # the p-map periodic, so JPEG'd images judged with untouched ones were taken for resized (ninth round)
    rs = detect_resampling_kinds(imgs.images, 2 * np.asarray(labels, np.int64) + jpeg)
    resized = rs["resized"]
    proc = [("jpeg+resized" if j else "resized") if r else p for p, j, r in zip(det["processing"], jpeg, resized)]
    evidence = ["+".join(kd for kd in _RESIZE_KINDS if rs[kd][i]) for i in range(len(proc))]
    path = str(Path(out).with_suffix("")) + ".processing.csv"
    rows = list(zip(imgs.paths, labels.tolist(), proc,
                    ["" if v is None else v for v in det["jpeg_quality"]], det["jpeg_source"], det["jpeg_ghost"],
                    [int(v) for v in resized], evidence, rs["copied_lines"].tolist(),
                    ["" if not np.isfinite(v) else round(float(v), 3) for v in rs["band_z"]]))
    per = []
    for c in range(k):
        sel = np.flatnonzero(labels == c)
        n = int(sel.size)
        qs = [det["jpeg_quality"][i] for i in sel if det["jpeg_quality"][i] is not None]
        counts = {"jpeg": int(jpeg[sel].sum()), "resized": int(resized[sel].sum()),
                  "untouched": int((~jpeg[sel] & ~resized[sel]).sum())}
        per.append({"cluster": c, "n": n, **counts,
                    **{f"{kk}_share": round(v / n, 4) if n else 0.0 for kk, v in counts.items()},
                    "jpeg_files": int(sum(det["jpeg_source"][i] == "file" for i in sel)),
                    "jpeg_in_pixels": int(sum(det["jpeg_source"][i] == "pixels" for i in sel)),
                    "median_jpeg_quality": float(np.median(qs)) if qs else None,
                    **{f"resized_{kd}": int(rs[kd][sel].sum()) for kd in _RESIZE_KINDS}})
    return {"per_cluster": per, "out": path, "n_jpeg": int(jpeg.sum()), "n_resized": int(resized.sum()),
            "n_untouched": int((~jpeg & ~resized).sum()),
            "note": "JPEG: file quantisation tables, else JPEG ghost in the pixels (quality: the table's, else the "
                    "ghost's estimate); resized: copied adjacent lines, per image (box / nearest-neighbour resizes, "
                    "seen even when a whole cluster was resized), or, judged against the images of its cluster with "
                    "the same JPEG state, energy near the Nyquist frequency far below theirs (robust z > 3.5) or "
                    "periodic interpolation traces above theirs (p-map spectrum); resized counts are a lower bound: "
                    "a cluster resized as a whole with a smooth filter (bilinear, bicubic, Lanczos) shows no "
                    "band-limit or periodic flag, and mild smooth resizes (by 0.75), JPEG'd or not, are mostly "
                    "missed in mixed clusters too; untouched: neither found (so it may include such resizes)"}, rows


def run_attribution(*, images_dir: str, k: int | None, out: str, dev_dir: str | None = None,
                    policy: IngestPolicy = IngestPolicy(), strict: bool = False, seed: int = 0, rep=None,
                    report_dir: str | None = None, truth: dict | None = None, executor: str = "local",
                    address: str | None = None) -> dict:
    """``truth`` (optional, image -> model name) only adds truth-based plots to the report.

    The clustering itself is :func:`engine.api.attribute_loaded` (the Python API's); this job validates the
    arguments, reads the folders and writes the outputs. ``executor`` is ``"local"``, ``"ray"`` (``address``;
    the features are extracted there, clustering stays here) or an :class:`~engine.executors.Executor`."""
    from .api import attribute_loaded, attribution_line
    from .executors import check_executor

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

        cache_dir = Path(out).with_name(f".{Path(out).name}.checkpoints")  # finished feature extractions
        att = attribute_loaded(imgs, k, dev_sets, seed=seed, executor=executor, address=address,
                               cache_dir=str(cache_dir), skips=skips, ingest_policy=policy.describe())
        timings.update(att.summary["timings"])
        res = att.result
        t0 = time.perf_counter()
        processing, proc_rows = _processing_detected(imgs, np.asarray(att.cluster, np.int64), int(res.k), out)
        timings["processing_s"] = time.perf_counter() - t0
        with _outputs_together():  # as membership: a stop request waits until the set of outputs is written
            att.to_csv(out)
            det_path = str(Path(out).with_suffix("")) + ".details.csv"
            att.details_to_csv(det_path)
            write_csv(processing["out"], _PROCESSING_HEADER, proc_rows)
            skip_path = _skip_report(out, skips, rep)
            shutil.rmtree(cache_dir, ignore_errors=True)

    timings["total_s"] = time.perf_counter() - t_start
    summary = dict(att.summary, out=out, details_out=det_path, skip_report=skip_path, dev_models=dev_models,
                   timings=timings, processing=processing)
    summary["summary"] = attribution_line(summary, out)
    if processing is not None:  # issue 19: the detected processing, per cluster in the report and processing.csv
        summary["summary"] += (f"; processing detected: JPEG {processing['n_jpeg']}, resized "
                               f"{processing['n_resized']} (per cluster: {processing['out']})")
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

    ``executor="ray"`` decodes and embeds on Ray workers (``address``), or pass an
    :class:`~engine.executors.Executor` object; shards are committed here."""
    import hashlib

    from .backbone import load_backbone
    from .executors import check_executor, open_executor
    from .ingest import discover
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
        from .store import file_stats

        have = st.stats()  # path -> (sha256, size, mtime_ns) of the latest rows
        f_size, f_mtime = file_stats(folder, rel_paths)  # taken before reading: a later change shows next run
        stat_of = {}
        todo = []
        for p, sz, mt in zip(rel_paths, f_size.tolist(), f_mtime.tolist()):
            got = have.get(p)
            if got is not None:
                if mt >= 0 and got[2] == mt and got[1] == sz:
                    continue  # unchanged by size and mtime: not read
                try:
                    with open(os.path.join(folder, p), "rb") as fh:
                        h = hashlib.sha256(fh.read()).hexdigest()
                except OSError:
                    h = None
                if h == got[0]:
                    continue
            todo.append(p)
            stat_of[p] = (sz, mt)
        n_new = 0
        bar = rep.progress(len(todo), "embedding")
        try:
            with open_executor(executor, address) as ex:
                for vec, paths, hashes in ex.embed_files(folder, todo, bb, shard_size=shard_size,
                                                         batch_size=batch_size, policy=policy,
                                                         on_skip=lambda s: skips.append((folder, s.path, s.reason))):
                    stt = np.array([stat_of[p_] for p_ in paths], np.int64).reshape(-1, 2)
                    st.append(paths, hashes, vec, stats=(stt[:, 0], stt[:, 1]))  # a new shard; old ones untouched
                    n_new += len(paths)
                    bar.update(len(paths))
        finally:
            bar.close()
        _strict(strict, skips)
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
