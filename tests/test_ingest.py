import io
import os

import numpy as np
import pytest
from PIL import Image

from conftest import ct_like, png_bomb, save_png
from imprint.engine.errors import ImprintError
from imprint.engine.ingest import IngestPolicy, decode_bytes, discover, load_folder

POL = IngestPolicy(size=(64, 64))


def make_bad_folder(root, rng):
    """Good images plus every kind of bad input; returns (good names, expected skip reasons by name)."""
    root.mkdir()
    imgs = ct_like(rng, 4)
    good = []
    for i, im in enumerate(imgs):
        save_png(root / f"good{i}.png", im)
        good.append(f"good{i}.png")
    (root / "sub").mkdir()
    save_png(root / "sub" / "nested.png", imgs[0])
    good.append("sub/nested.png")
    # odd size, RGB, RGBA, palette, 16-bit: converted by policy (kept)
    save_png(root / "odd_size.png", ct_like(rng, 1, size=80)[0])
    Image.fromarray(np.stack([imgs[1]] * 3, -1)).save(root / "rgb.png")
    Image.fromarray(np.dstack([imgs[2]] * 3 + [np.full_like(imgs[2], 255)])).save(root / "rgba.png")
    Image.fromarray(imgs[3]).convert("P").save(root / "palette.png")
    Image.fromarray(imgs[0].astype(np.uint16) * 200).save(root / "deep16.png")
    good += ["odd_size.png", "rgb.png", "rgba.png", "palette.png", "deep16.png"]
    # bad ones
    (root / "empty.png").write_bytes(b"")
    buf = io.BytesIO()
    Image.fromarray(imgs[0]).save(buf, format="PNG")
    (root / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "notimage.png").write_bytes(b"hello, I am text pretending to be a PNG\n" * 10)
    (root / "bomb.png").write_bytes(png_bomb())
    os.symlink("/etc/hostname", root / "outside.png")
    os.symlink(root, root / "sub" / "loop")
    os.symlink(root / "missing.png", root / "broken.png")
    name = os.fsdecode(b"caf\xe9-latin1.png")
    save_png(os.path.join(os.fsencode(root), os.fsencode(name)), imgs[1])
    good.append(name)
    (root / "notes.txt").write_text("ignored: not an image extension")
    return sorted(good)


def test_bad_inputs_are_skipped_with_reasons(tmp_path, rng):
    good = make_bad_folder(tmp_path / "in", rng)
    s = load_folder(tmp_path / "in", POL)
    assert sorted(s.paths) == good
    assert s.images.shape == (len(good), 64, 64) and s.images.dtype == np.uint8
    reasons = {k.path: k.reason for k in s.skipped}
    assert reasons["empty.png"] == "empty file"
    assert "truncated" in reasons["truncated.png"] or "corrupt" in reasons["truncated.png"]
    assert "not an image" in reasons["notimage.png"]
    assert "too large" in reasons["bomb.png"]
    assert "outside" in reasons["outside.png"]
    assert "broken" in reasons["broken.png"]
    assert any("loop" in r for r in reasons.values())


def test_conversions_follow_policy(tmp_path, rng):
    im = ct_like(rng, 1)[0]
    # RGB of a gray image -> same gray
    b = io.BytesIO(); Image.fromarray(np.stack([im] * 3, -1)).save(b, format="PNG")
    np.testing.assert_array_equal(decode_bytes(b.getvalue(), POL), im)
    # 16-bit scaled by its own range
    deep = im.astype(np.uint16) * 100 + 1000
    b = io.BytesIO(); Image.fromarray(deep).save(b, format="PNG")
    got = decode_bytes(b.getvalue(), POL)
    exp = np.rint((deep - deep.min()) * 255.0 / (deep.max() - deep.min())).astype(np.uint8)
    np.testing.assert_array_equal(got, exp)
    # window
    got_w = decode_bytes(b.getvalue(), IngestPolicy(size=(64, 64), window=(float(deep.mean()), 2000.0)))
    assert got_w.dtype == np.uint8 and got_w.max() == 255 and got_w.min() == 0
    # size policy 'error' skips odd sizes
    b = io.BytesIO(); Image.fromarray(ct_like(rng, 1, 80)[0]).save(b, format="PNG")
    with pytest.raises(ValueError, match="differs from working size"):
        decode_bytes(b.getvalue(), IngestPolicy(size=(64, 64), size_policy="error"))
    assert decode_bytes(b.getvalue(), POL).shape == (64, 64)


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImprintError, match="no readable images"):
        load_folder(tmp_path / "empty", POL)
    with pytest.raises(ImprintError, match="not found"):
        load_folder(tmp_path / "nope", POL)
    assert discover(tmp_path / "empty") == ([], [])


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read files without permission bits")
def test_unreadable_file(tmp_path, rng):
    d = tmp_path / "d"; d.mkdir()
    save_png(d / "a.png", ct_like(rng, 1)[0]); save_png(d / "b.png", ct_like(rng, 1)[0])
    os.chmod(d / "b.png", 0)
    s = load_folder(d, POL)
    assert s.paths == ["a.png"] and "permission" in s.skipped[0].reason


def test_permission_denied_is_a_skip(tmp_path, rng, monkeypatch):
    """Works as root too: the open() of one file raises PermissionError."""
    import builtins
    import imprint.engine.ingest as ing

    d = tmp_path / "d"; d.mkdir()
    save_png(d / "a.png", ct_like(rng, 1)[0]); save_png(d / "b.png", ct_like(rng, 1)[0])
    real_open = builtins.open

    def fake_open(path, *a, **k):
        if str(path).endswith("b.png"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *a, **k)

    monkeypatch.setattr(ing, "open", fake_open, raising=False)
    s = load_folder(d, POL)
    assert s.paths == ["a.png"] and s.skipped[0].reason == "permission denied"


from hypothesis import HealthCheck, given, settings, strategies as st


def _seed_png():
    b = io.BytesIO()
    Image.fromarray(ct_like(np.random.default_rng(0), 1, 32)[0]).save(b, format="PNG")
    return b.getvalue()


SEED_PNG = _seed_png()


@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(SEED_PNG) - 1), st.integers(0, 255)), min_size=1, max_size=8),
       st.integers(0, len(SEED_PNG)))
def test_fuzz_mutated_png_never_crashes(mutations, cut):
    """Mutated and truncated PNG bytes either decode to a valid uint8 image or raise ValueError with a reason."""
    data = bytearray(SEED_PNG[:max(cut, 1)])
    for pos, val in mutations:
        if pos < len(data):
            data[pos] = val
    try:
        out = decode_bytes(bytes(data), IngestPolicy(size=(32, 32)))
    except ValueError as exc:
        assert str(exc)
    else:
        assert out.shape == (32, 32) and out.dtype == np.uint8


def test_in_memory_limit_is_enforced_before_decoding(tmp_path, rng, monkeypatch):
    d = tmp_path / "d"; d.mkdir()
    for i, im in enumerate(ct_like(rng, 5)):
        save_png(d / f"{i}.png", im)
    with pytest.raises(ImprintError, match="over the limit"):
        load_folder(d, IngestPolicy(size=(64, 64), max_memory=4 * 64 * 64))
    assert len(load_folder(d, IngestPolicy(size=(64, 64), max_memory=5 * 64 * 64))) == 5
    monkeypatch.setenv("IMPRINT_MAX_MEMORY_GB", "0.00001")
    with pytest.raises(ImprintError, match="IMPRINT_MAX_MEMORY_GB"):
        load_folder(d, IngestPolicy(size=(64, 64)))
