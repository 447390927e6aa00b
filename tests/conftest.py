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
