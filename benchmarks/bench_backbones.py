"""Backbone throughput: onnxruntime (engine.backbone.embed) vs PyTorch eager vs PNG decoding.

All in one run, on the same images and the same CPU threads:

* ``decode``  - PIL decode of the PNG files to uint8 arrays (upper bound for an end-to-end pass)
* ``ort``     - ``engine.backbone.embed`` (runtime preprocessing + resize + onnxruntime, pipelined)
* ``torch``   - the same network in PyTorch eager (same preprocessing done by
                ``engine.backbone.preprocess``; effnet = models.effnet_lite, pixel/fingerprint =
                hand-written torch ops equal to the ONNX graphs; the max abs difference to the ORT
                output is printed as a check)

Usage::

    python benchmarks/bench_backbones.py [--corpus DIR] [--n 512] [--n-effnet 128] [--threads T]

Prints images/s and ratios (ort / torch, ort / decode) measured in this run. Needs torch (the
``export`` extra) for the torch column and a built models/onnx (``imprint models build``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imprint.engine.backbone import embed, load_backbone, preprocess  # noqa: E402
from imprint.models import graphs  # noqa: E402
from imprint.models.registry import resolve  # noqa: E402


def _files(corpus: Path, n: int) -> list[Path]:
    files = sorted(corpus.rglob("*.png"))
    if not files:
        raise SystemExit(f"no PNG files under {corpus}")
    rng = np.random.default_rng(0)
    idx = rng.choice(len(files), size=min(n, len(files)), replace=False)
    return [files[i] for i in sorted(idx)]


def _decode(files):
    from PIL import Image

    out = []
    for f in files:
        with Image.open(f) as im:
            out.append(np.asarray(im.convert("L")))
    return np.stack(out)


def _torch_models():
    import torch
    import torch.nn.functional as F

    def pixel(x):
        p = F.avg_pool2d(x, 4).flatten(1)
        c = p - p.mean(1, keepdim=True)
        return c / torch.sqrt((c * c).sum(1, keepdim=True) + 1e-12)

    den = torch.tensor([9.0, 1, 1, 4, 4, 12, 1, 1])
    w_int = torch.from_numpy((graphs.FINGERPRINT_FILTERS * den.numpy()[:, None, None]).round()[:, None]).float()
    scale = (1.0 / (255.0 * den)).view(1, -1, 1, 1)
    sel = torch.zeros(32, 8, 4, 4)
    for ci, c in enumerate((0, 4)):
        for p in range(16):
            sel[ci * 16 + p, c, p // 4, p % 4] = 1
    dct = torch.from_numpy(graphs.dct_basis(8)[:, None]).float()
    haar = torch.from_numpy(graphs.HAAR2[:, None]).float()

    def fingerprint(img):
        x = img / 255.0
        r = F.conv2d(img, w_int) * scale
        r2 = r * r
        gap = lambda t: t.mean((2, 3))  # noqa: E731
        lg = lambda t, e=1e-10: torch.log(t + e)  # noqa: E731
        le2 = lg(gap(r2))
        f = [le2, lg(gap(r.abs())), lg(gap(r2 * r2), 1e-20) - 2 * le2]
        for s in (2, 4, 8):
            f.append(lg(gap(F.avg_pool2d(r, s) ** 2)))
        f.append(gap(F.conv2d(r, sel, stride=4)))
        f.append(lg(gap(F.conv2d(r2, sel, stride=4))) - le2[:, [0] * 16 + [4] * 16])
        f.append(lg(gap(F.conv2d(x, dct, stride=8) ** 2)))
        hb = F.conv2d(x, haar, stride=2)
        f.append(gap(hb)[:, 1:])
        f.append(lg(gap(hb * hb))[:, 1:])
        return torch.cat(f, 1)

    models = {"pixel": pixel, "fingerprint": fingerprint}
    try:
        from imprint.models.effnet_lite import load_pretrained

        models["effnet-lite0"] = load_pretrained(image_size=224).features
        models["effnet-lite0-128"] = load_pretrained(image_size=128).features
    except ImportError:
        pass
    return models


def _rate(fn, n, repeat):
    """Images/s: best of ``repeat`` windows of >= 1 s each (the call is repeated within a window), the same
    timing for every column (engine.bench.best_time)."""
    from imprint.engine.bench import best_time

    sec, _ = best_time(fn, min_window=1.0, repeats=repeat)
    return n / sec


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default="/work/shared/corpus/dev")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--n-effnet", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--backbones", nargs="*", default=["pixel", "fingerprint", "effnet-lite0-128", "effnet-lite0"])
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    ap.add_argument("--write-results", default=None, metavar="RESULTS.md",
                    help="replace this script's table block in RESULTS.md (benchmarks/RESULTS.md)")
    a = ap.parse_args(argv)

    threads = a.threads or len(os.sched_getaffinity(0))
    files = _files(Path(a.corpus), a.n)
    _decode(files[:8])
    dec_rate = _rate(lambda: _decode(files), len(files), a.repeat)
    images = _decode(files)
    print(f"{len(files)} PNGs {images.shape[1]}x{images.shape[2]}, threads={threads}")
    print(f"decode (PIL): {dec_rate:9.1f} img/s")
    from imprint.engine.ingest import IngestPolicy, decode_file, decode_files

    pol = IngestPolicy(size=images.shape[1:])
    rel = [str(f) for f in files]
    ser_rate = _rate(lambda: [decode_file(f, pol) for f in rel], len(rel), a.repeat)
    thr_rate = _rate(lambda: list(decode_files("/", rel, pol, workers=threads)), len(rel), a.repeat)
    print(f"imprint decode (read+sha256+decode): serial {ser_rate:.1f} img/s, {threads} threads {thr_rate:.1f} img/s "
          f"(x{thr_rate / ser_rate:.2f})")

    try:
        import torch

        torch.set_num_threads(threads)
        tmodels = _torch_models()
    except ImportError:
        torch, tmodels = None, {}

    results = {"n_images": len(files), "threads": threads, "decode_img_s": dec_rate,
               "imprint_decode_serial_img_s": ser_rate, "imprint_decode_threaded_img_s": thr_rate, "backbones": {}}
    print(f"{'backbone':<14}{'n':>6}{'ort img/s':>12}{'torch img/s':>13}{'ort/torch':>11}"
          f"{'ort/decode':>12}{'max|ort-torch|':>16}")
    for name in a.backbones:
        spec = resolve(name)
        n = min(a.n_effnet, len(images)) if name.startswith("effnet") else len(images)
        imgs = images[:n]
        bb = load_backbone(name, threads=threads)
        embed(imgs[: min(16, n)], bb)  # warm-up
        ort_rate = _rate(lambda: embed(imgs, bb), n, a.repeat)
        row = {"n": n, "ort_img_s": ort_rate, "dim": spec.dim, "sha256": spec.sha256,
               "size_bytes": spec.size_bytes, "providers": bb.providers}
        t_rate, diff = float("nan"), float("nan")
        if name in tmodels:
            f = tmodels[name]
            bs = bb.default_batch_size

            def run_torch():
                outs = []
                with torch.inference_mode():
                    for s in range(0, n, bs):
                        x = torch.from_numpy(preprocess(imgs[s:s + bs], spec))
                        outs.append(f(x).numpy())
                return np.concatenate(outs)

            ref = run_torch()
            diff = float(np.abs(ref - embed(imgs, bb)).max())
            t_rate = _rate(run_torch, n, a.repeat)
            row.update(torch_img_s=t_rate, max_abs_diff=diff)
        results["backbones"][name] = row
        print(f"{name:<14}{n:>6}{ort_rate:>12.1f}{t_rate:>13.1f}{ort_rate / t_rate:>11.2f}"
              f"{ort_rate / dec_rate:>12.3f}{diff:>16.2e}")
    for name, r in results["backbones"].items():
        print(f"  {name}: {r['size_bytes']} bytes sha256 {r['sha256']}")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    if a.write_results:
        from imprint.engine.bench import load_note, md_table, write_results_block

        rows = [{"backbone": k, "images": r["n"], "ort img/s": r["ort_img_s"],
                 "torch img/s": r.get("torch_img_s", float("nan")),
                 "ort / torch": r["ort_img_s"] / r.get("torch_img_s", float("nan")),
                 "ort / PNG decode": r["ort_img_s"] / dec_rate,
                 "max abs diff": f"{r.get('max_abs_diff', float('nan')):.1e}"} for k, r in results["backbones"].items()]
        cmd = "python benchmarks/bench_backbones.py " + " ".join(argv if argv is not None else sys.argv[1:])
        write_results_block(a.write_results, "backbones", (
            "### Backbones: onnxruntime vs PyTorch eager (same images, same threads, same run)\n\n"
            f"Command: `{cmd}`. {threads} threads; PNG decode (PIL, serial) {dec_rate:.0f} img/s; imprint's "
            f"ingestion (read + sha256 + decode) serial {ser_rate:.0f} img/s vs thread pool "
            f"(`engine.ingest.decode_files`, {threads} threads) {thr_rate:.0f} img/s = x{thr_rate / ser_rate:.2f}, "
            f"same files, same run. Every column is "
            f"the best of {a.repeat} timing windows of at least 1 s each.\n{load_note()}\n\n"
            + md_table(rows, list(rows[0]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
