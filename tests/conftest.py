import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("OMP_NUM_THREADS", "2")


def ct_like(rng, n, size=64):
    """Smooth, CT-like synthetic slices: an elliptical body, lungs, blobs and mild noise (uint8)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    out = np.empty((n, size, size), dtype=np.uint8)
    for i in range(n):
        a, b = rng.uniform(0.35, 0.45), rng.uniform(0.28, 0.4)
        body = ((xx / a) ** 2 + (yy / b) ** 2 < 1).astype(np.float32) * 120
        for sx in (-0.18, 0.18):
            cx, cy = sx + rng.normal(0, 0.02), rng.normal(0, 0.03)
            lung = ((xx - cx) / 0.12) ** 2 + ((yy - cy) / 0.2) ** 2 < 1
            body[lung] = 25
        for _ in range(4):
            cx, cy, r = rng.uniform(-0.3, 0.3), rng.uniform(-0.25, 0.25), rng.uniform(0.02, 0.06)
            body += 90 * np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)))
        body += rng.normal(0, 4, body.shape)
        out[i] = np.clip(body, 0, 255).astype(np.uint8)
    return out


def copying_generator(rng, used, n_gen):
    """Generated images of a generator that copies: even indices are ``used`` images in turn with uniform noise
    in [-3, 3], odd ones fresh ``ct_like`` slices of the same side (uint8 [n_gen, H, W] as a list)."""
    gen = []
    for i in range(n_gen):
        if i % 2 == 0:
            src = used[(i // 2) % len(used)].astype(np.int16) + rng.integers(-3, 4, used.shape[1:])
            gen.append(np.clip(src, 0, 255).astype(np.uint8))
        else:
            gen.append(ct_like(rng, 1, used.shape[-1])[0])
    return gen


def series_folder(seed, *, n_pat=30, per=3, h=64, n_new=60, share=0.5):
    """A real folder of series and a generator that copied some patients' every slice (shared by
    tests/test_membership_unsupervised.py and benchmarks/pair_null_same_patient.py).

    ``n_pat`` CT-like phantom patients (``test_membership_evidence.phantom``) x ``per`` slices (the patient's image
    shifted by ~0.5 px, new 1.5 px-smooth texture and noise: slice-to-slice correlation ~0.97 against ~0.8 between
    patients); the generator copied every slice of a random share ``share`` of the patients in place (noise sd 3)
    among ``n_new`` new patients of its own.

    Returns
    -------
    real : uint8 [n_pat * per, h, h]
    pat : int [n_pat * per]
        The patient of each real image.
    y : int [n_pat * per]
        1 where the real image was copied (a member).
    gen : uint8 [n_new + y.sum(), h, h]
        The generated images, shuffled.
    """
    from scipy import ndimage

    from test_membership_evidence import phantom, u8

    rng = np.random.default_rng(seed)
    real, pat = [], []
    for p in range(n_pat):
        base = phantom(rng, h).astype(np.float64)
        for _ in range(per):
            x = ndimage.shift(base, rng.normal(0, 0.5, 2), order=1, mode="nearest")
            tex = ndimage.gaussian_filter(rng.normal(0, 1, (h, h)), 1.5)
            real.append(u8(x + 4.0 * tex / tex.std() + rng.normal(0, 2, (h, h))))
            pat.append(p)
    real, pat = np.stack(real), np.array(pat)
    y = np.isin(pat, rng.permutation(n_pat)[:int(round(share * n_pat))]).astype(int)
    gen = [phantom(rng, h) for _ in range(n_new)]
    gen += [u8(real[i].astype(np.float64) + rng.normal(0, 3, (h, h))) for i in np.flatnonzero(y)]
    gen = np.stack(gen)
    return real, pat, y, gen[rng.permutation(len(gen))]


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def save_png(path, arr, mode=None):
    Image.fromarray(arr, mode=mode).save(path) if mode else Image.fromarray(arr).save(path)


def write_folders(root, arrays: dict, name="{:03d}.png"):
    """Write each ``{folder: uint8 [N, H, W]}`` as PNGs ``root/folder/000.png, ...``."""
    for folder, imgs in arrays.items():
        (root / folder).mkdir(parents=True)
        for i, a in enumerate(imgs):
            save_png(root / folder / name.format(i), a)


def png_bomb(width=100000, height=100000) -> bytes:
    """A tiny PNG whose header declares width x height pixels."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


try:  # torch is an optional (export-time) dependency
    import torch  # noqa: F401

    HAVE_TORCH = True
except ImportError:  # pragma: no cover
    HAVE_TORCH = False


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    """All built-ins needed by the tests, built once per session into a temporary folder."""
    from imprint.models.build import build_all

    d = tmp_path_factory.getbasetemp() / "imprint_models"
    only = ["effnet-lite0", "fingerprint", "pixel"] if HAVE_TORCH else ["fingerprint", "pixel"]
    status = build_all(d, only=only)
    assert all(not s.startswith("skipped") for s in status.values()), status
    return d
