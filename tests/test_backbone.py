"""Tests of the onnxruntime runtime engine.backbone (batching, preprocessing, providers, errors)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import imprint.engine.backbone as eb
from imprint.engine.backbone import Backbone, auto_batch_size, embed, load_backbone, preprocess
from imprint.engine.errors import ImprintError
from imprint.models.registry import BUILTIN, resolve

from conftest import HAVE_TORCH


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(10)
    return rng.integers(0, 256, (70, 128, 128), dtype=np.uint8)


@pytest.mark.parametrize("name, n", [("pixel", 70), ("fingerprint", 70), ("effnet-lite0", 9)])
def test_batching_invariance(models_dir, images, name, n):
    if name == "effnet-lite0" and not HAVE_TORCH:
        pytest.skip("effnet-lite0 needs torch to be built")
    imgs = images[:n]
    outs = []
    for bs in (1, 7, 64):
        calls = []
        outs.append(embed(imgs, name, batch_size=bs, models_dir=models_dir, progress=calls.append))
        expected = list(range(bs, n, bs)) + [n]
        assert calls == expected
    spec = resolve(name, models_dir=models_dir)
    assert outs[0].shape == (n, spec.dim) and outs[0].dtype == np.float32
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])
    # default batch size and the single-batch Backbone.run give the same vectors
    np.testing.assert_array_equal(embed(imgs, name, models_dir=models_dir), outs[0])
    bb = load_backbone(name, models_dir=models_dir)
    np.testing.assert_array_equal(bb.run(imgs[:3]), outs[0][:3])
    assert load_backbone(name, models_dir=models_dir) is bb  # session cache


def test_pixel_on_other_sizes_uses_area_resize(models_dir):
    """256x256 images are box-filtered to 128 by the runtime: pixel = 8x8 block means."""
    rng = np.random.default_rng(11)
    imgs = rng.integers(0, 256, (4, 256, 256), dtype=np.uint8)
    y = embed(imgs, "pixel", models_dir=models_dir)
    t = imgs.astype(np.float64).reshape(4, 32, 8, 32, 8).mean(axis=(2, 4)).reshape(4, -1)
    t -= t.mean(axis=1, keepdims=True)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    np.testing.assert_allclose(y, t, atol=2e-6)
    # cosine of near-copies: brightness/contrast change keeps the vector
    y2 = embed(np.clip(imgs.astype(int) // 2 + 40, 0, 255).astype(np.uint8), "pixel", models_dir=models_dir)
    assert np.all(np.sum(y * y2, axis=1) > 0.999)


def test_fingerprint_native_size(models_dir):
    """fingerprint is never resampled: other sizes run at native size, tiny images are refused."""
    rng = np.random.default_rng(12)
    imgs = rng.integers(0, 256, (3, 40, 52), dtype=np.uint8)
    y = embed(imgs, "fingerprint", models_dir=models_dir)
    ref = load_backbone("fingerprint", models_dir=models_dir).run_preprocessed(
        imgs[:, None].astype(np.float32))
    np.testing.assert_array_equal(y, ref)
    with pytest.raises(ImprintError, match="at least"):
        embed(imgs[:, :8, :8], "fingerprint", models_dir=models_dir)


def test_preprocess_effnet_convention():
    spec = BUILTIN["effnet-lite0"]
    rng = np.random.default_rng(13)
    imgs = rng.integers(0, 256, (2, 224, 224), dtype=np.uint8)
    x = preprocess(imgs, spec)
    assert x.shape == (2, 3, 224, 224) and x.dtype == np.float32
    for c in range(3):
        np.testing.assert_allclose(x[:, c], (imgs - 127.0) / 128.0, atol=1e-7)
    # 128 -> 224 bilinear upsampling keeps a constant image constant
    const = np.full((1, 128, 128), 200, np.uint8)
    np.testing.assert_allclose(preprocess(const, spec), (200 - 127.0) / 128.0, atol=1e-6)


def test_threaded_preprocessing_is_the_same_array_bit_for_bit(monkeypatch):
    """embed() preprocesses on several threads when the session is on a GPU; the split is per image, so every
    spec's result (bilinear 128 -> 224 with three channels, area resize of odd sizes, native size) is the
    one-thread array exactly, for batches that split evenly, unevenly, and too small to split."""
    rng = np.random.default_rng(21)
    cases = [(BUILTIN["effnet-lite0"], rng.integers(0, 256, (37, 128, 128), dtype=np.uint8)),
             (BUILTIN["pixel"], rng.integers(0, 256, (50, 131, 97), dtype=np.uint8)),
             (BUILTIN["fingerprint"], rng.integers(0, 256, (33, 64, 64), dtype=np.uint8)),
             (BUILTIN["effnet-lite0"], rng.integers(0, 256, (5, 128, 128), dtype=np.uint8))]
    for spec, imgs in cases:
        one = preprocess(imgs, spec)
        for w in (2, 3, 8):
            many = preprocess(imgs, spec, workers=w)
            assert many.dtype == one.dtype and many.shape == one.shape
            assert np.array_equal(many, one), (spec.name, imgs.shape, w)
    # the split really happens (a batch of 37 on 3 workers runs two slices on the pool)
    calls = []
    real = eb._preprocess1
    monkeypatch.setattr(eb, "_preprocess1", lambda b, sp: calls.append(b.shape[0]) or real(b, sp))
    preprocess(cases[0][1], cases[0][0], workers=3)
    assert sorted(calls) == [12, 12, 13]


def test_auto_batch_size():
    assert auto_batch_size(BUILTIN["effnet-lite0"]) == 8
    assert auto_batch_size(BUILTIN["effnet-lite0-128"]) == 32
    assert auto_batch_size(BUILTIN["pixel"]) == 128
    assert auto_batch_size(BUILTIN["effnet-lite0"], on_gpu=True) == 64


def _gap_model(path, shape):
    g = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["y"])],
        "gap", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [shape[0], shape[1]])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def test_user_onnx_embed(tmp_path):
    p = _gap_model(tmp_path / "gap.onnx", ("B", 3, 16, 16))
    rng = np.random.default_rng(14)
    imgs = rng.integers(0, 256, (10, 32, 32), dtype=np.uint8)
    mean, std = (10.0, 20.0, 30.0), (2.0, 4.0, 8.0)
    y = embed(imgs, str(p), mean=mean, std=std, resize="area", batch_size=3)
    m = imgs.astype(np.float64).mean(axis=(1, 2))  # box 2x downsampling preserves the mean
    ref = np.stack([(m - mu) / sd for mu, sd in zip(mean, std)], axis=1)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_embed_input_validation(models_dir, images):
    with pytest.raises(ImprintError, match="uint8"):
        embed(images.astype(np.float32), "pixel", models_dir=models_dir)
    with pytest.raises(ImprintError, match=r"\[N,H,W\]"):
        embed(images[0], "pixel", models_dir=models_dir)
    with pytest.raises(ImprintError, match="numpy"):
        embed(images.tolist(), "pixel", models_dir=models_dir)
    for bad in (0, -1, 2.5):
        with pytest.raises(ImprintError, match="batch_size"):
            embed(images, "pixel", batch_size=bad, models_dir=models_dir)
    out = embed(images[:0], "pixel", models_dir=models_dir)
    assert out.shape == (0, 1024) and out.dtype == np.float32
    with pytest.raises(ImprintError, match="not built"):
        embed(images, "pixel", models_dir=models_dir / "nowhere")


def test_providers(models_dir, images):
    y = embed(images[:5], "pixel", providers="cpu", models_dir=models_dir)
    bb = load_backbone("pixel", providers=["CPUExecutionProvider"], models_dir=models_dir)
    assert bb.providers == ["CPUExecutionProvider"] and not bb.on_gpu
    np.testing.assert_array_equal(y, bb.run(images[:5]))
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ImprintError, match="not available"):
            embed(images[:5], "pixel", providers="cuda", models_dir=models_dir)
    with pytest.raises(ImprintError, match="not available"):
        embed(images[:5], "pixel", providers=["NoSuchExecutionProvider"], models_dir=models_dir)


def test_pipeline_propagates_producer_errors(models_dir, images, monkeypatch):
    real = eb.preprocess
    calls = []

    def flaky(batch, spec, workers=1):
        calls.append(len(batch))
        if len(calls) == 3:
            raise RuntimeError("boom in preprocessing")
        return real(batch, spec, workers=workers)

    monkeypatch.setattr(eb, "preprocess", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        embed(images, "pixel", batch_size=8, models_dir=models_dir)
    monkeypatch.setattr(eb, "preprocess", real)
    # the pipeline still works afterwards, and consumer-side errors stop the producer
    done = []

    def bad_progress(n):
        done.append(n)
        raise ValueError("stop")

    with pytest.raises(ValueError, match="stop"):
        embed(images, "pixel", batch_size=4, models_dir=models_dir, progress=bad_progress)
    assert done == [4]
    assert isinstance(load_backbone("pixel", models_dir=models_dir), Backbone)


def test_io_binding_path_equals_plain_run():
    """The I/O-binding path used on GPU providers gives the same vectors (checked here on the CPU provider)."""
    from imprint.engine.backbone import load_backbone, preprocess

    bb = load_backbone("pixel", providers=["CPUExecutionProvider"])
    imgs = np.random.default_rng(0).integers(0, 256, (5, 128, 128), dtype=np.uint8)
    x = preprocess(imgs, bb.spec)
    np.testing.assert_array_equal(bb._run_bound(x, "cpu"), bb.session.run(None, {bb._in: x})[0])
