"""``imprint pairs``: real-vs-generated nearest neighbours in embedding space, re-ranked with pixel kernels.

Stages (each timed and reported as items/second):

1. read the generated images (kept in memory: they are the search base and the re-ranking partners);
2. embed them with the chosen ONNX backbone and build a FAISS index (``engine.search.build_index``);
3. stream the real images in batches: read, embed, k-NN search, and re-score each (real, generated) pair with
   ``kernels.ssim_pairs`` and ``kernels.mse_pairs``;
4. commit each batch as a Parquet part in a hidden work folder next to the output (``.OUT.parts/``; temporary
   name, fsync, rename); a killed run resumes from the committed parts when re-run with the same arguments;
5. assemble the parts in order into the output (temporary name, renamed when complete) and drop the work folder.

Memory is bounded by the generated set (images + index) plus one batch of real images and their pairs.

Output columns: ``real_id`` (int32: position of the real image in the sorted list of REAL's image files),
``generated_id`` (int32: position in the sorted list of GEN's readable images), ``real`` and ``generated`` (their
paths relative to REAL / GEN, dictionary-encoded: each path is stored once per row group, and the columns read
back as strings in pyarrow/polars/DuckDB and as categoricals in pandas), ``rank`` (0 = nearest in embedding
space), ``distance`` (squared L2 or 1-cos of the embeddings), ``ssim``, ``mse``. The columns are built from
integer arrays (no Python object per pair).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from .errors import ImprintError
from .ingest import IngestPolicy


def _prepare_work(work: Path, job: dict) -> None:
    """Create the checkpoint folder for ``job``, or keep it when it belongs to the same job."""
    from .store import atomic_write_text

    spec = work / "job.json"
    if work.exists():
        try:
            same = json.loads(spec.read_text("utf-8")) == json.loads(json.dumps(job))
        except (OSError, ValueError):
            same = False
        if same:
            return
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    atomic_write_text(spec, json.dumps(job, sort_keys=True))


def pairs_schema():
    import pyarrow as pa

    d = pa.dictionary(pa.int32(), pa.string())
    return pa.schema([("real_id", pa.int32()), ("generated_id", pa.int32()), ("real", d), ("generated", d),
                      ("rank", pa.int16()), ("distance", pa.float32()), ("ssim", pa.float32()),
                      ("mse", pa.float32())])


def _dict_column(ids: np.ndarray, names: list[str]):
    """Dictionary-encoded strings for integer ``ids`` into ``names``: the dictionary holds only the ids used."""
    import pyarrow as pa

    used, inv = np.unique(ids, return_inverse=True)
    dictionary = pa.array([names[i] for i in used.tolist()], pa.string())
    return pa.DictionaryArray.from_arrays(pa.array(inv.astype(np.int32), pa.int32()), dictionary)


def run_pairs(*, real_dir: str, gen_dir: str, k: int, out: str, backbone: str = "pixel", metric: str = "cosine",
              index: str = "auto", batch: int = 4096, policy: IngestPolicy = IngestPolicy(), strict: bool = False,
              rep=None, rerank: bool = True, executor: str = "local", address: str | None = None,
              store_dir: str | None = None) -> dict:
    """Run the pairs job (see the module docstring). With ``store_dir``, the embeddings are kept in two Arrow
    stores (``STORE_DIR/generated``, ``STORE_DIR/real``; ``imprint embed`` semantics: only new or changed images
    are embedded), so later runs and other backbones' runs reuse them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .backbone import load_backbone
    from .ingest import discover, iter_batches
    from .pipeline import (_check_dir, _check_new_dir, _check_out, _load, _NullReporter, _outputs_together,
                           _skip_report, _sigterm_as_interrupt, _strict)
    from . import device as device_mod
    from .store import atomic_write_text

    rep = rep or _NullReporter()
    _check_dir(real_dir, "--real")
    _check_dir(gen_dir, "--generated")
    _check_out(out)
    if k < 1:
        raise ImprintError(f"--k must be at least 1 (got {k})")
    if batch < 1:
        raise ImprintError("--batch must be at least 1")
    from .executors import Executor, check_executor, open_executor, resolve_executor

    if not isinstance(executor, Executor) and executor != "local":  # embed/search/re-ranking on Ray (engine.executors)
        check_executor(executor, address)
        with open_executor(executor, address) as ex:
            summary = run_pairs(real_dir=real_dir, gen_dir=gen_dir, k=k, out=out, backbone=backbone, metric=metric,
                                index=index, batch=batch, policy=policy, strict=strict, rep=rep, rerank=rerank,
                                store_dir=store_dir, executor=ex)
        return {**summary, "executor": executor}
    ex, _ = resolve_executor(executor)  # the local executor or the executor object given
    from imprint.kernels import ssim_mse_pairs

    from .executors.local import LocalExecutor

    if store_dir is not None:
        _check_new_dir(store_dir, "--store-dir")
    bb = load_backbone(backbone)
    t = {"read_generated_s": 0.0, "embed_s": 0.0, "index_s": 0.0, "read_real_s": 0.0, "search_s": 0.0,
         "rerank_s": 0.0, "write_s": 0.0}
    skips: list = []
    t_all = time.perf_counter()
    with _sigterm_as_interrupt():
        t0 = time.perf_counter()
        gen = _load(gen_dir, policy, "generated", rep, skips)
        t["read_generated_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        rvec_of = None
        if store_dir is None:
            gvec = ex.embed(gen.images, bb)
        else:
            from .pipeline import run_embed
            from .store import EmbeddingStore

            Path(store_dir).mkdir(exist_ok=True)
            stores = {}
            for which, folder in (("generated", gen_dir), ("real", real_dir)):
                run_embed(folder=folder, store=str(Path(store_dir) / which), backbone=bb.spec, policy=policy, rep=rep,
                          executor=ex)
                view = EmbeddingStore.open(Path(store_dir) / which).read()
                stores[which] = (view, {p_: i for i, p_ in enumerate(view.paths)})
            gview, gpos = stores["generated"]
            gvec = np.ascontiguousarray(gview.vectors[[gpos[p_] for p_ in gen.paths]])
            rview, rpos = stores["real"]

            def rvec_of(paths):
                return np.ascontiguousarray(rview.vectors[[rpos[p_] for p_ in paths]])
        t["embed_s"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        idx = ex.build_index(gvec, metric=metric, index=index)
        t["index_s"] = time.perf_counter() - t0
        kk = min(k, len(gen))
        # --device: with the pair kernels on CUDA the generated images stay on the GPU for every real batch
        scorer = device_mod.pair_scorer(gen.images) if rerank else None

        rel, skipped = discover(real_dir)
        rel_pos = {p_: i for i, p_ in enumerate(rel)}
        skips.extend((real_dir, s.path, s.reason) for s in skipped)
        from .store import atomic_replace

        # Checkpoints: each batch of real images (fixed boundaries over the sorted file list) is committed as
        # one Parquet part in a hidden work folder next to the output; a re-run with the same job skips the
        # committed parts, and the output is always assembled from the parts, so it equals an uninterrupted run.
        job = {"real": os.path.abspath(real_dir), "rel": hashlib.sha256("\n".join(rel).encode("utf-8", "surrogateescape")).hexdigest(),
               "gen": hashlib.sha256("\n".join(gen.hashes).encode()).hexdigest(), "k": kk,
               "backbone": bb.spec.sha256, "metric": metric, "index": str(index), "batch": batch,
               "policy": policy.describe(), "rerank": rerank, "schema": 2}
        work = Path(out).with_name(f".{Path(out).name}.parts")
        _prepare_work(work, job)
        chunks = [rel[i:i + batch] for i in range(0, len(rel), batch)]
        n_real = n_pairs = 0
        bar = rep.progress(len(rel), "pairs")
        n_resumed = 0
        try:
            for c, chunk in enumerate(chunks):
                part = work / f"part-{c:06d}.parquet"
                skip_file = work / f"part-{c:06d}.skips.json"
                if part.exists() and skip_file.exists():
                    meta = pq.read_metadata(part)
                    extra = json.loads(skip_file.read_text("utf-8", "surrogateescape"))
                    skips.extend((real_dir, p_, r_) for p_, r_ in extra["skips"])
                    n_real += int(extra["n_real"])
                    n_pairs += meta.num_rows
                    n_resumed += 1
                    bar.update(len(chunk))
                    continue
                chunk_skips: list = []
                t0 = time.perf_counter()
                got = list(iter_batches(real_dir, chunk, len(chunk), policy, on_skip=chunk_skips.append))
                t["read_real_s"] += time.perf_counter() - t0
                table = pairs_schema().empty_table()
                b = 0
                if got:
                    imgs, paths, _ = got[0]
                    b = len(paths)
                    t0 = time.perf_counter()
                    rvec = ex.embed(imgs, bb) if rvec_of is None else rvec_of(paths)
                    t["embed_s"] += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    dist, nn = ex.knn(gvec, rvec, kk, metric=metric, index=idx)
                    t["search_s"] += time.perf_counter() - t0
                    pairs = np.stack([np.repeat(np.arange(b), kk), nn.reshape(-1)], 1).astype(np.int64)
                    ok = pairs[:, 1] >= 0
                    pairs = pairs[ok]
                    t0 = time.perf_counter()
                    if rerank and len(pairs) and scorer is not None:  # CUDA: generated set resident on the GPU
                        ss, mm = device_mod.ssim_mse_pairs(imgs, gen.images, pairs, scorer=scorer)
                    elif rerank and len(pairs) and isinstance(ex, LocalExecutor):
                        # one pass over the pixels for both scores (kernels.ssim_mse_pairs: the values of
                        # ssim_pairs and mse_pairs)
                        ss, mm = ssim_mse_pairs(imgs, gen.images, pairs)
                    elif rerank and len(pairs):
                        ss = ex.ssim_pairs(imgs, gen.images, pairs)
                        mm = ex.mse_pairs(imgs, gen.images, pairs)
                    else:
                        ss = np.full(len(pairs), np.nan, np.float32)
                        mm = np.full(len(pairs), np.nan, np.float32)
                    t["rerank_s"] += time.perf_counter() - t0
                    ranks = np.tile(np.arange(kk, dtype=np.int16), b)[ok]
                    rid = np.array([rel_pos[p_] for p_ in paths], np.int32)  # one lookup per image, not per pair
                    table = pa.table({
                        "real_id": pa.array(rid[pairs[:, 0]], pa.int32()),
                        "generated_id": pa.array(pairs[:, 1].astype(np.int32), pa.int32()),
                        "real": _dict_column(pairs[:, 0], paths),
                        "generated": _dict_column(pairs[:, 1], gen.paths),
                        "rank": pa.array(ranks, pa.int16()),
                        "distance": pa.array(dist.reshape(-1)[ok].astype(np.float32), pa.float32()),
                        "ssim": pa.array(np.asarray(ss, np.float32), pa.float32()),
                        "mse": pa.array(np.asarray(mm, np.float32), pa.float32()),
                    }, schema=pairs_schema())
                t0 = time.perf_counter()
                atomic_write_text(skip_file, json.dumps({"n_real": b, "skips": [[k_.path, k_.reason] for k_ in chunk_skips]}))
                with atomic_replace(part) as ptmp:  # the rename is the commit point of this batch
                    pq.write_table(table, ptmp)
                t["write_s"] += time.perf_counter() - t0
                skips.extend((real_dir, k_.path, k_.reason) for k_ in chunk_skips)
                n_real += b
                n_pairs += table.num_rows
                bar.update(len(chunk))
        finally:
            bar.close()
        _strict(strict, skips)
        if n_real == 0:
            raise ImprintError(f"no readable images in real folder {real_dir}")
        t0 = time.perf_counter()
        with _outputs_together():  # a stop request waits for the output, its skip report and the parts' removal
            with atomic_replace(out) as tmp, pq.ParquetWriter(str(tmp), pairs_schema()) as writer:
                for c in range(len(chunks)):
                    part_table = pq.read_table(work / f"part-{c:06d}.parquet", schema=pairs_schema())
                    if part_table.num_rows:
                        writer.write_table(part_table)
            shutil.rmtree(work, ignore_errors=True)
            t["write_s"] += time.perf_counter() - t0
            skip_path = _skip_report(out, skips, rep)
    total = time.perf_counter() - t_all
    rates = {
        "embed_img_per_s": (len(gen) + n_real) / t["embed_s"] if t["embed_s"] else None,
        "search_queries_per_s": n_real / t["search_s"] if t["search_s"] else None,
        "rerank_pairs_per_s": n_pairs / t["rerank_s"] if t["rerank_s"] else None,
        "read_img_per_s": (len(gen) + n_real) / (t["read_generated_s"] + t["read_real_s"])
        if (t["read_generated_s"] + t["read_real_s"]) else None,
    }
    bound = max(t, key=t.get)
    return {
        "command": "pairs", "out": out, "skip_report": skip_path, "n_real": n_real, "n_generated": len(gen),
        "k": kk, "n_pairs": n_pairs, "backbone": bb.spec.name, "metric": metric, "timings": t, "rates": rates,
        "bounding_stage": bound, "seconds": total, "resumed_batches": n_resumed,
        "device": device_mod.describe(),
        "summary": (f"pairs: {n_pairs} pairs ({n_real} real x {kk} nearest of {len(gen)} generated) in {total:.1f}s "
                    f"= {n_pairs / total:.0f} pairs/s; slowest stage {bound} ({t[bound]:.1f}s); "
                    f"{len(skips)} skipped -> {out}"),
    }
