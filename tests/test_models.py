"""Tests of the backbone registry, the ONNX builders and user-ONNX validation (models/)."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from onnx import TensorProto, helper

from imprint.engine.errors import ImprintError
from imprint.models import graphs
from imprint.models.build import build_all
from imprint.models.registry import BUILTIN, describe_lines, list_backbones, resolve

from conftest import HAVE_TORCH


def _session(spec):
    return ort.InferenceSession(spec.onnx_path, providers=["CPUExecutionProvider"])


# ------------------------------------------------------------------------------------------
# build + registry
# ------------------------------------------------------------------------------------------


def test_build_manifest_and_registry(models_dir, tmp_path):
    man = json.loads((models_dir / "manifest.json").read_text())
    for name, e in man["backbones"].items():
        p = models_dir / e["file"]
        assert e["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()
        assert e["size_bytes"] == p.stat().st_size
        spec = resolve(name, models_dir=models_dir)
        assert spec.sha256 == e["sha256"] and spec.dim == BUILTIN[name].dim
        m = onnx.load(spec.onnx_path)
        onnx.checker.check_model(m)
        assert len(m.graph.input) - len(m.graph.initializer) <= 1
    # rebuilding is idempotent (same bytes) and reports up-to-date
    again = build_all(models_dir, only=list(man["backbones"]))
    assert set(again.values()) == {"up-to-date"}
    lines = describe_lines(models_dir)
    assert len(lines) == len(BUILTIN)
    for name, line in zip(BUILTIN, lines):
        assert line.startswith(name)
        if name in man["backbones"]:
            assert man["backbones"][name]["sha256"][:16] in line
    # an empty directory: listed but not built, resolve raises the build hint
    specs = list_backbones(tmp_path)
    assert [s.name for s in specs] == list(BUILTIN) and not any(s.built for s in specs)
    assert all("NOT BUILT" in line for line in describe_lines(tmp_path))
    with pytest.raises(ImprintError, match="not built; run `imprint models build`"):
        resolve("pixel", models_dir=tmp_path)
    with pytest.raises(ImprintError, match="unknown backbone"):
        resolve("no-such-backbone", models_dir=models_dir)


def test_tampered_or_stale_file_is_rejected(models_dir, tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    shutil.copy(models_dir / "pixel.onnx", d / "pixel.onnx")
    man = json.loads((models_dir / "manifest.json").read_text())
    man["backbones"] = {"pixel": man["backbones"]["pixel"]}
    (d / "manifest.json").write_text(json.dumps(man))
    assert resolve("pixel", models_dir=d).sha256 == man["backbones"]["pixel"]["sha256"]
    with open(d / "pixel.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ImprintError, match="does not match its manifest sha256"):
        resolve("pixel", models_dir=d)
    man["backbones"]["pixel"]["version"] = "0"
    (d / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ImprintError, match="out of date"):
        resolve("pixel", models_dir=d)


# ------------------------------------------------------------------------------------------
# pixel and fingerprint graphs vs numpy references
# ------------------------------------------------------------------------------------------


def _pixel_ref(img):
    t = img.astype(np.float64).reshape(32, 4, 32, 4).mean(axis=(1, 3)).ravel()
    t -= t.mean()
    return t / np.sqrt((t**2).sum() + 1e-12)


def test_pixel_graph_matches_numpy(models_dir):
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (5, 128, 128)).astype(np.float32)
    imgs[4] = 77.0  # constant image -> zero vector, no NaN
    y = _session(resolve("pixel", models_dir=models_dir)).run(None, {"image": imgs[:, None]})[0]
    ref = np.stack([_pixel_ref(i) for i in imgs])
    np.testing.assert_allclose(y, ref, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(y[:4], axis=1), 1.0, atol=1e-5)
    assert np.all(y[4] == 0)


def _corr_valid(x, k):
    """2-D cross-correlation, 'valid' (what ONNX Conv computes), float64."""
    kh, kw = k.shape
    return np.einsum("ijkl,kl->ij", sliding_window_view(x, (kh, kw)), k)


def _fingerprint_ref(img):
    """Independent numpy float64 re-implementation of the documented fingerprint features."""
    x = img.astype(np.float64) / 255.0
    log = lambda v, e=1e-10: np.log(v + e)  # noqa: E731
    hp = -np.ones((3, 3)) / 9
    hp[1, 1] += 1
    k3 = {
        "hp": hp,
        "d2h": np.array([[0, 0, 0], [1, -2, 1], [0, 0, 0]], float),
        "d2v": np.array([[0, 1, 0], [0, -2, 0], [0, 1, 0]], float),
        "d2xy": np.array([[1, 0, -1], [0, 0, 0], [-1, 0, 1]], float) / 4,
        "kb": np.array([[-1, 2, -1], [2, -4, 2], [-1, 2, -1]], float) / 4,
    }
    kv = np.array([[-1, 2, -2, 2, -1], [2, -6, 8, -6, 2], [-2, 8, -12, 8, -2],
                   [2, -6, 8, -6, 2], [-1, 2, -2, 2, -1]], float) / 12
    d2d = np.diag([1.0, -2.0, 1.0])
    k3["d2d"], k3["d2a"] = d2d, np.fliplr(d2d)
    # every residual on the same valid grid as a 5x5 kernel (3x3 kernels are centred)
    R = []
    for name in ("hp", "d2h", "d2v", "d2xy", "kb", "kv", "d2d", "d2a"):
        if name == "kv":
            R.append(_corr_valid(x, kv))
        else:
            R.append(_corr_valid(x, k3[name])[1:-1, 1:-1])
    R = np.stack(R)
    e2 = (R**2).mean(axis=(1, 2))
    f = [log(e2), log(np.abs(R).mean(axis=(1, 2))), log((R**4).mean(axis=(1, 2)), 1e-20) - 2 * log(e2)]
    h, w = R.shape[1:]
    for s in (2, 4, 8):
        P = R[:, : h // s * s, : w // s * s].reshape(8, h // s, s, w // s, s).mean(axis=(2, 4))
        f.append(log((P**2).mean(axis=(1, 2))))
    hc, wc = h // 4 * 4, w // 4 * 4
    means, ratios = [], []
    for c in (0, 4):
        for p in range(16):
            ph = R[c, p // 4 : hc : 4, p % 4 : wc : 4]
            means.append(ph.mean())
            ratios.append(log((ph**2).mean()) - log(e2[c]))
    f += [np.array(means), np.array(ratios)]
    n = 8
    kk = np.arange(n)
    C = np.sqrt(2 / n) * np.cos(np.pi * (2 * kk[None] + 1) * kk[:, None] / (2 * n))
    C[0] /= np.sqrt(2)
    H, W = x.shape
    B = x[: H // 8 * 8, : W // 8 * 8].reshape(H // 8, 8, W // 8, 8).transpose(0, 2, 1, 3)
    coef = np.einsum("ui,abij,vj->abuv", C, B, C)
    f.append(log((coef**2).mean(axis=(0, 1)).ravel()))
    a = x[0 : H // 2 * 2 : 2, 0 : W // 2 * 2 : 2]
    b = x[0 : H // 2 * 2 : 2, 1 : W // 2 * 2 : 2]
    c = x[1 : H // 2 * 2 : 2, 0 : W // 2 * 2 : 2]
    d = x[1 : H // 2 * 2 : 2, 1 : W // 2 * 2 : 2]
    sub = [(a - b + c - d) / 2, (a + b - c - d) / 2, (a - b - c + d) / 2]  # lh, hl, hh
    f.append(np.array([s_.mean() for s_ in sub]))
    f.append(log(np.array([(s_**2).mean() for s_ in sub])))
    return np.concatenate([np.ravel(v) for v in f])


def _smooth_images(rng, n, h, w):
    """Natural-ish images: blurred noise blobs plus a little pixel noise, uint8."""
    from scipy.ndimage import gaussian_filter

    out = np.empty((n, h, w), np.uint8)
    for i in range(n):
        base = gaussian_filter(rng.normal(size=(h, w)), 3.0)
        base = (base - base.min()) / (np.ptp(base) + 1e-9) * 200 + 20
        out[i] = np.clip(base + rng.normal(0, 2, (h, w)), 0, 255).astype(np.uint8)
    return out


@pytest.mark.parametrize("shape", [(128, 128), (45, 38)])
def test_fingerprint_graph_matches_numpy(models_dir, shape):
    rng = np.random.default_rng(2)
    imgs = np.concatenate([rng.integers(0, 256, (2,) + shape).astype(np.uint8),
                           _smooth_images(rng, 2, *shape)])
    spec = resolve("fingerprint", models_dir=models_dir)
    y = _session(spec).run(None, {"image": imgs[:, None].astype(np.float32)})[0]
    ref = np.stack([_fingerprint_ref(i) for i in imgs])
    assert y.shape == (4, spec.dim) == (4, len(graphs.FINGERPRINT_FEATURE_NAMES))
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=2e-5)


def test_fingerprint_sees_periodic_artefact(models_dir):
    """A faint period-2 checkerboard (amplitude 2 grey levels) must move the phase features."""
    rng = np.random.default_rng(3)
    imgs = _smooth_images(rng, 3, 128, 128)
    cb = np.where((np.add.outer(np.arange(128), np.arange(128)) % 2) == 0, 2, -2)
    art = np.clip(imgs.astype(int) + cb, 0, 255).astype(np.uint8)
    sess = _session(resolve("fingerprint", models_dir=models_dir))
    f0 = sess.run(None, {"image": imgs[:, None].astype(np.float32)})[0]
    f1 = sess.run(None, {"image": art[:, None].astype(np.float32)})[0]
    names = list(graphs.FINGERPRINT_FEATURE_NAMES)
    hh = names.index("haar2_hh_mean")
    assert np.all(np.abs(f1[:, hh]) > 10 * np.abs(f0[:, hh]).max())
    ph = [names.index(f"phase4_hp_mean_{p}") for p in range(16)]
    assert np.all(np.ptp(f1[:, ph], axis=1) > 5 * np.ptp(f0[:, ph], axis=1))


# ------------------------------------------------------------------------------------------
# EfficientNet-Lite0 (needs torch)
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def effnet():
    torch = pytest.importorskip("torch")
    from imprint.models.effnet_lite import load_pretrained

    torch.manual_seed(0)
    return load_pretrained()


def test_effnet_export_parity(models_dir, effnet):
    torch = pytest.importorskip("torch")
    # effnet-lite0-128 runs the same export code with image_size=128; it is not rebuilt here to
    # keep the suite fast (benchmarks/bench_backbones.py checks its parity on the corpus)
    spec = resolve("effnet-lite0", models_dir=models_dir)
    assert spec.dim == 1280 and spec.input_size == (224, 224) and spec.channels == 3
    rng = np.random.default_rng(4)
    x = ((rng.integers(0, 256, (2, 3, 224, 224)) - 127.0) / 128.0).astype(np.float32)
    y = _session(spec).run(None, {"image": x})[0]
    with torch.no_grad():
        ref = effnet.features(torch.from_numpy(x)).numpy()
    assert y.shape == (2, 1280)
    np.testing.assert_allclose(y, ref, atol=1e-4, rtol=1e-4)


def test_fp16_variant_matches_fp32(models_dir, tmp_path):
    """The float16 export (for GPUs) keeps float32 I/O and stays within cosine 0.9999 of float32."""
    pytest.importorskip("torch")
    from imprint.models.build import convert_fp16

    spec = resolve("effnet-lite0", models_dir=models_dir)
    convert_fp16(spec.onnx_path, tmp_path / "fp16.onnx")
    m = onnx.load(str(tmp_path / "fp16.onnx"))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in m.graph.initializer)
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    rng = np.random.default_rng(5)
    x = ((rng.integers(0, 256, (3, 3, 224, 224)) - 127.0) / 128.0).astype(np.float32)
    a = _session(spec).run(None, {"image": x})[0]
    import onnxruntime as ort

    b = ort.InferenceSession(str(tmp_path / "fp16.onnx"), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    assert b.dtype == np.float32 and b.shape == a.shape
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.9999
    assert not np.array_equal(a, b)  # it really is a different (float16) computation


def test_effnet_weights_and_natural_images(effnet):
    """strict state-dict load, eval-mode BN (batch-independent), sensible ImageNet predictions."""
    torch = pytest.importorskip("torch")
    skdata = pytest.importorskip("skimage.data")
    from PIL import Image

    from imprint.models.effnet_lite import default_weights_path

    state = torch.load(default_weights_path(), map_location="cpu", weights_only=True)
    assert set(state) == set(effnet.state_dict())
    assert not effnet.training
    # BN running statistics are in use: a 1-image batch gives the same features as in a batch of 3
    assert torch.equal(effnet._bn0.running_var, state["_bn0.running_var"])

    def prep(a):
        im = Image.fromarray(a)
        w, h = im.size
        s = min(w, h)
        im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((224, 224))
        return (np.asarray(im, np.float32).transpose(2, 0, 1) - 127.0) / 128.0

    x = torch.from_numpy(np.stack([prep(skdata.chelsea()), prep(skdata.coffee())]))
    with torch.no_grad():
        logits = effnet(x)
        single = effnet(x[:1])
    torch.testing.assert_close(single, logits[:1], atol=1e-4, rtol=1e-4)
    top = logits.argmax(1).tolist()
    assert top[0] in (281, 282, 285)  # tabby / tiger cat / Egyptian cat
    assert top[1] in (967, 968, 504)  # espresso / cup / coffee mug
    assert torch.softmax(logits, 1).max(1).values.min() > 0.3


# ------------------------------------------------------------------------------------------
# user ONNX models
# ------------------------------------------------------------------------------------------


def _save(model, path):
    onnx.save(model, str(path))
    return path


def make_gap_model(path, shape=("B", 3, 16, 16), elem=TensorProto.FLOAT, opset=17, two_inputs=False,
                   rank2_out=True):
    """Tiny ONNX: global average pool -> [B,C] (or [B,C,1,1] when rank2_out is False)."""
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["p"])]
    if rank2_out:
        nodes.append(helper.make_node("Flatten", ["p"], ["y"], axis=1))
        out_shape = [shape[0], shape[1]]
    else:
        nodes.append(helper.make_node("Identity", ["p"], ["y"]))
        out_shape = [shape[0], shape[1], 1, 1]
    inputs = [helper.make_tensor_value_info("x", elem, list(shape))]
    if two_inputs:
        inputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1]))
    g = helper.make_graph(nodes, "gap", inputs, [helper.make_tensor_value_info("y", elem, out_shape)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return _save(m, path)


def test_user_onnx_resolve(tmp_path):
    p = make_gap_model(tmp_path / "gap.onnx")
    spec = resolve(str(p))
    assert spec.name == "onnx:gap" and spec.dim == 3 and spec.channels == 3
    assert spec.input_size == (16, 16) and spec.pretrained is None
    assert spec.sha256 == hashlib.sha256(p.read_bytes()).hexdigest()
    assert spec.version == spec.sha256[:12]
    assert spec.mean == (123.675, 116.28, 103.53)
    spec2 = resolve(p, mean=0, std=(1, 2, 4), resize="area")
    assert spec2.mean == (0.0,) * 3 and spec2.std == (1.0, 2.0, 4.0) and spec2.resize == "area"
    # [B,C,1,1] outputs are flattened; dynamic H,W need an input size
    p4 = make_gap_model(tmp_path / "gap4.onnx", shape=("B", 1, "H", "W"), rank2_out=False)
    with pytest.raises(ImprintError, match="dynamic"):
        resolve(p4)
    s4 = resolve(p4, input_size=32)
    assert s4.input_size == (32, 32) and s4.dim == 1 and s4.channels == 1
    with pytest.raises(ImprintError, match="not 8x8"):
        resolve(p, input_size=8)
    with pytest.raises(ImprintError, match="channels"):
        resolve(p, channels=1)


@pytest.mark.parametrize("case, match", [
    ("garbage", "not a valid ONNX model"),
    ("missing", "does not exist"),
    ("rank3", "must be 4-D"),
    ("two_inputs", "exactly one image input"),
    ("uint8", "must be float32"),
    ("opset", "opset"),
    ("scalar_out", "output"),
])
def test_user_onnx_rejected(tmp_path, case, match):
    p = tmp_path / f"{case}.onnx"
    if case == "garbage":
        p.write_bytes(np.random.default_rng(5).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif case == "rank3":
        g = helper.make_graph([helper.make_node("ReduceMean", ["x"], ["y"], axes=[2])], "r3",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 3])])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        _save(m, p)
    elif case == "two_inputs":
        make_gap_model(p, two_inputs=True)
    elif case == "uint8":
        make_gap_model(p, elem=TensorProto.UINT8)
    elif case == "opset":
        make_gap_model(p, opset=5)
    elif case == "scalar_out":
        g = helper.make_graph([helper.make_node("ReduceMean", ["x"], ["y"], keepdims=0)], "s",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        _save(m, p)
    with pytest.raises(ImprintError, match=match) as ei:
        resolve(str(p))
    assert "\n" not in str(ei.value)
