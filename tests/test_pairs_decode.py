"""The libpng fast path of PNG decoding (engine.ingest._fast_png, used by `imprint pairs` and every folder read):
the same pixels and the same skip reasons as Pillow, on good, odd and damaged files."""
import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import ct_like
from imprint.engine import ingest
from imprint.engine.ingest import IngestPolicy, decode_bytes

pytest.importorskip("imagecodecs")  # the cpu extra installs it; without it Pillow decodes everything

POL = IngestPolicy(size=(48, 48))


def _png(arr, **kw):
    b = io.BytesIO()
    Image.fromarray(arr).save(b, format="PNG", **kw)
    return b.getvalue()


def _outcome(data, policy, monkeypatch, fast: bool):
    """decode_bytes' result (array) or its ValueError message, with the fast path on or off."""
    if not fast:
        monkeypatch.setattr(ingest, "_png_decode", False)
    try:
        return decode_bytes(data, policy)
    except ValueError as exc:
        return str(exc)
    finally:
        monkeypatch.setattr(ingest, "_png_decode", None)


def test_fast_path_decodes_gray8_pngs_like_pillow(monkeypatch):
    rng = np.random.default_rng(3)
    imgs = list(ct_like(rng, 4, 48)) + [np.zeros((48, 48), np.uint8), np.full((48, 48), 255, np.uint8),
                                       rng.integers(0, 256, (48, 48)).astype(np.uint8)]
    for level in (0, 1, 9):
        for im in imgs:
            data = _png(im, compress_level=level)
            fast = ingest._fast_png(data, POL)
            assert fast is not None  # the planted case is really taken by libpng
            assert fast.dtype == np.uint8 and fast.shape == (48, 48) and fast.flags.c_contiguous
            np.testing.assert_array_equal(fast, im)
            np.testing.assert_array_equal(decode_bytes(data, POL), im)
            np.testing.assert_array_equal(_outcome(data, POL, monkeypatch, fast=False), im)


def test_other_pngs_go_to_pillow(monkeypatch):
    """Every PNG flavour the fast path does not claim returns None there and decodes exactly as Pillow does."""
    rng = np.random.default_rng(4)
    im = ct_like(rng, 1, 48)[0]
    pal, jpg, lace = io.BytesIO(), io.BytesIO(), io.BytesIO()
    Image.fromarray(im).convert("P").save(pal, format="PNG")
    Image.fromarray(im).save(jpg, format="JPEG")
    Image.fromarray(im).save(lace, format="PNG", interlace=1)
    others = {
        "other size": _png(ct_like(rng, 1, 40)[0]),
        "rgb": _png(np.stack([im] * 3, -1)),
        "palette": pal.getvalue(),
        "16-bit": _png(im.astype(np.uint16) * 200),
        "gray + tRNS": _png(im, transparency=0),
        "jpeg": jpg.getvalue(),
        "interlaced (if Pillow wrote Adam7)": lace.getvalue() if lace.getvalue()[28] == 1 else None,
    }
    for name, data in others.items():
        if data is None:
            continue
        if name != "gray + tRNS":
            assert ingest._fast_png(data, POL) is None, name
        a = _outcome(data, POL, monkeypatch, fast=True)
        p = _outcome(data, POL, monkeypatch, fast=False)
        assert isinstance(a, np.ndarray), name
        np.testing.assert_array_equal(a, p, err_msg=name)


def test_without_imagecodecs_pillow_decodes(monkeypatch):
    im = ct_like(np.random.default_rng(5), 1, 48)[0]
    monkeypatch.setattr(ingest, "_png_decode", False)
    assert ingest._fast_png(_png(im), POL) is None
    np.testing.assert_array_equal(decode_bytes(_png(im), POL), im)


SEED = _png(ct_like(np.random.default_rng(0), 1, 32)[0])


@settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, len(SEED) - 1), st.integers(0, 255)), max_size=6),
       st.integers(1, len(SEED)))
def test_damaged_pngs_same_outcome_with_and_without_fast_path(monkeypatch, mutations, cut):
    """Truncated and mutated PNG bytes: the fast path gives the same pixels, or the same skip reason, as Pillow
    alone (libpng's complaints fall back to Pillow, which words the reason)."""
    data = bytearray(SEED[:cut])
    for pos, val in mutations:
        if pos < len(data):
            data[pos] = val
    pol = IngestPolicy(size=(32, 32))
    a = _outcome(bytes(data), pol, monkeypatch, fast=True)
    p = _outcome(bytes(data), pol, monkeypatch, fast=False)
    if isinstance(p, str):
        assert a == p
    else:
        assert isinstance(a, np.ndarray)
        np.testing.assert_array_equal(a, p)
