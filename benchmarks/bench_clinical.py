"""Ingest throughput of clinical inputs against PNG, measured in the same run.

The same N synthetic 512x512 CT slices are written as: 8-bit PNG (the reference), single-frame int16 DICOM in HU
(RescaleIntercept -1024), one multi-frame DICOM, and one NIfTI volume (.nii.gz); each folder is read with
``load_folder`` (discovery + decode + lung window + area resize to 128x128), best of ``--repeat``, each timing
window at least 1 s (the folder is re-read until it is).

    python benchmarks/bench_clinical.py [--n 200] [--repeat 3]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from conftest import ct_like, save_png  # noqa: E402
from test_clinical import v_to_hu, write_dicom  # noqa: E402

from imprint.engine import clinical  # noqa: E402
from imprint.engine.clinical import WINDOW_PRESETS  # noqa: E402
from imprint.engine.ingest import IngestPolicy, load_folder  # noqa: E402


def timed(folder: Path, policy: IngestPolicy, repeat: int) -> tuple[float, int]:
    best = float("inf")
    n = 0
    for _ in range(repeat):
        t0, k = time.perf_counter(), 0
        while True:
            clinical._cache.key = None   # no reuse of the last decoded volume across timed reads
            n = len(load_folder(folder, policy))
            k += 1
            if time.perf_counter() - t0 >= 1.0:
                break
        best = min(best, (time.perf_counter() - t0) / k)
    return best, n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    import nibabel as nib

    rng = np.random.default_rng(0)
    small = ct_like(rng, a.n, size=128)
    imgs = np.kron(small, np.ones((4, 4), dtype=np.uint8))   # 512x512, the size scanners write
    hu = v_to_hu(imgs)
    tmp = Path(tempfile.mkdtemp(prefix="bench-clinical-"))
    for sub in ("png", "dcm", "multi", "nifti"):
        (tmp / sub).mkdir()
    for i in range(a.n):
        save_png(tmp / "png" / f"{i:04d}.png", imgs[i])
        write_dicom(tmp / "dcm" / f"{i:04d}.dcm", hu[i])
    write_dicom(tmp / "multi" / "series.dcm", hu)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(hu.transpose(2, 1, 0)), np.diag([-1.0, -1.0, 1.0, 1.0])),
             str(tmp / "nifti" / "volume.nii.gz"))
    pol_png = IngestPolicy(size=(128, 128))
    pol_ct = IngestPolicy(size=(128, 128), window=WINDOW_PRESETS["lung"])
    ref_s, n_ref = timed(tmp / "png", pol_png, a.repeat)
    out = {"n": a.n, "size": "512x512 -> 128x128", "png_images_per_s": n_ref / ref_s}
    ref_imgs = load_folder(tmp / "png", pol_png).images
    for name in ("dcm", "multi", "nifti"):
        s, n = timed(tmp / name, pol_ct, a.repeat)
        got = load_folder(tmp / name, pol_ct).images
        out[f"{name}_images_per_s"] = n / s
        out[f"{name}_vs_png"] = (n / s) / (n_ref / ref_s)
        out[f"{name}_identical_to_png"] = bool(n == n_ref and np.array_equal(got, ref_imgs))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
