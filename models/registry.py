"""Backbone registry: built-in specs, the build manifest, and validation of user ONNX models.

Conventions shared with :mod:`engine.backbone` (the runtime):

* Every backbone is an ONNX graph with one float32 input ``[B, channels, H, W]`` and one output
  that is flattened to ``[B, dim]``.
* The runtime turns uint8 ``[N,h,w]`` grayscale images into that input as follows:
  resize ``(h,w) -> spec.input_size`` with ``spec.resize`` ("bilinear" = PIL bilinear,
  antialiased when shrinking; "area" = PIL box filter, exact block mean for integer factors;
  "none" = fed at native size, the graph has dynamic H,W), then
  ``(value - mean[c]) / std[c]`` for each of ``channels`` replicated channels, values in 0..255.
* Built-in graphs are built by :func:`models.build.build_all` into ``models/onnx/`` (or
  ``$IMPRINT_MODELS_DIR``) with a ``manifest.json`` holding each file's size and sha256; the
  registry only reads those files and raises ``ImprintError`` when one is missing or stale.

Built-in backbones
------------------
``effnet-lite0``
    EfficientNet-Lite0 pretrained on ImageNet (TF checkpoint, ported weights), 224x224 input
    (bilinear upsampling from 128x128), grey replicated to 3 channels, ``(v-127)/128``;
    output: the 1280-d global-average-pooled feature before the classifier. ~3.4M parameters.
``effnet-lite0-128``
    The same network and weights exported for 128x128 input (the corpus' native size, no
    resampling; TF-SAME pads recomputed for 128): ~3x cheaper, objects appear smaller than in
    ImageNet training.
``fingerprint``
    Training-free generator-trace features (182-d, see :mod:`models.graphs`), native size.
``pixel``
    32x32 area thumbnail, per-image zero-mean unit-norm (1024-d); cosine = correlation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from imprint.engine.errors import ImprintError

__all__ = [
    "BackboneSpec",
    "BUILTIN",
    "MANIFEST_NAME",
    "default_models_dir",
    "list_backbones",
    "resolve",
    "describe_lines",
    "file_sha256",
    "read_manifest",
]

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
RESIZE_METHODS = ("bilinear", "area", "none")
MIN_OPSET = 7


@dataclass(frozen=True)
class BackboneSpec:
    """Everything needed to run one backbone.

    Attributes
    ----------
    name : str
        Registry name (``"pixel"``...) or ``"onnx:<file stem>"`` for a user model.
    version : str
        Built-ins: version of the graph definition (bumped when the computation changes).
        User models: first 12 hex digits of the sha256.
    onnx_path : str or None
        Absolute path of the ONNX file; None for a built-in that is not built yet.
    sha256 : str or None
        Hex sha256 of the ONNX file (None when not built).
    input_size : tuple of int
        ``(H, W)`` the graph expects (nominal size when ``resize == "none"``).
    channels : int
        Number of input channels (grey is replicated).
    mean, std : tuple of float
        Per-channel normalisation applied by the runtime to 0..255 values.
    dim : int
        Output dimension after flattening.
    pretrained : bool or None
        True for learned ImageNet weights, False for fixed/training-free graphs, None if unknown.
    description : str
        One-line human description.
    resize : {"bilinear", "area", "none"}
        How the runtime maps images to ``input_size``.
    input_name, output_name : str
        Graph tensor names (output = first graph output).
    opset : int
        Default-domain opset of the graph (0 if unknown/not built).
    size_bytes : int
        ONNX file size (0 when not built).
    """

    name: str
    version: str
    onnx_path: str | None
    sha256: str | None
    input_size: tuple[int, int]
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dim: int
    pretrained: bool | None
    description: str
    resize: str = "bilinear"
    input_name: str = "image"
    output_name: str = "embedding"
    opset: int = 0
    size_bytes: int = 0

    @property
    def built(self) -> bool:
        """Whether the ONNX file is available."""
        return self.onnx_path is not None

    def to_json(self) -> dict:
        """JSON-able dict of all fields."""
        d = dataclasses.asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d


def _builtin(name, version, input_size, channels, mean, std, dim, pretrained, description, resize,
             output_name):
    return BackboneSpec(name=name, version=version, onnx_path=None, sha256=None,
                        input_size=input_size, channels=channels, mean=mean, std=std, dim=dim,
                        pretrained=pretrained, description=description, resize=resize,
                        input_name="image", output_name=output_name)


#: Built-in specs before building (no path / sha256). Order = listing order.
BUILTIN: dict[str, BackboneSpec] = {
    s.name: s
    for s in (
        _builtin("effnet-lite0", "1", (224, 224), 3, (127.0,) * 3, (128.0,) * 3, 1280, True,
                 "EfficientNet-Lite0 ImageNet, 1280-d pooled features, grey->RGB, 128->224 bilinear",
                 "bilinear", "embedding"),
        _builtin("effnet-lite0-128", "1", (128, 128), 3, (127.0,) * 3, (128.0,) * 3, 1280, True,
                 "EfficientNet-Lite0 ImageNet at native 128x128 (no resampling, ~3x faster)",
                 "bilinear", "embedding"),
        _builtin("effnet-lite0-fp16", "1", (224, 224), 3, (127.0,) * 3, (128.0,) * 3, 1280, True,
                 "effnet-lite0 with float16 weights and arithmetic (float32 in/out) for GPUs; "
                 "cosine >= 0.9999 to float32", "bilinear", "embedding"),
        _builtin("effnet-lite0-128-fp16", "1", (128, 128), 3, (127.0,) * 3, (128.0,) * 3, 1280, True,
                 "effnet-lite0-128 with float16 weights and arithmetic (float32 in/out) for GPUs",
                 "bilinear", "embedding"),
        _builtin("fingerprint", "1", (128, 128), 1, (0.0,), (1.0,), 182, False,
                 "generator-trace features: high-pass residual stats, polyphase, block-DCT spectrum",
                 "none", "features"),
        _builtin("pixel", "1", (128, 128), 1, (0.0,), (1.0,), 1024, False,
                 "32x32 area thumbnail, zero-mean unit-norm (cosine = correlation)",
                 "area", "embedding"),
    )
}


def default_models_dir() -> Path:
    """``$IMPRINT_MODELS_DIR`` if set, else the ``models/onnx`` folder next to this file."""
    env = os.environ.get("IMPRINT_MODELS_DIR")
    return Path(env) if env else Path(__file__).resolve().parent / "onnx"


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path) -> str:
    """Hex sha256 of a file (cached by path, size and mtime)."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def read_manifest(models_dir=None) -> dict:
    """The ``manifest.json`` of a models directory as a dict (empty entries if absent)."""
    d = Path(models_dir) if models_dir is not None else default_models_dir()
    p = d / MANIFEST_NAME
    if not p.is_file():
        return {"format": MANIFEST_FORMAT, "backbones": {}}
    try:
        m = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise ImprintError(f"cannot read backbone manifest {p}: {exc}; run `imprint models build --force`") from None
    if not isinstance(m, dict) or not isinstance(m.get("backbones"), dict):
        raise ImprintError(f"backbone manifest {p} is malformed; run `imprint models build --force`")
    return m


def _built_spec(name: str, models_dir, verify: bool) -> BackboneSpec:
    base = BUILTIN[name]
    d = Path(models_dir) if models_dir is not None else default_models_dir()
    entry = read_manifest(d)["backbones"].get(name)
    hint = "run `imprint models build`"
    if entry is None:
        raise ImprintError(f"backbone {name} is not built; {hint}")
    path = d / entry.get("file", f"{name}.onnx")
    if not path.is_file():
        raise ImprintError(f"backbone {name} is not built ({path} missing); {hint}")
    if str(entry.get("version")) != base.version:
        raise ImprintError(f"backbone {name} is out of date (built v{entry.get('version')}, "
                           f"code v{base.version}); run `imprint models build --force`")
    sha = entry.get("sha256")
    if verify:
        actual = file_sha256(path)
        if actual != sha:
            raise ImprintError(f"backbone {name} file {path} does not match its manifest sha256; "
                               "run `imprint models build --force`")
    return dataclasses.replace(base, onnx_path=str(path.resolve()), sha256=sha,
                               opset=int(entry.get("opset", 0)),
                               size_bytes=int(entry.get("size_bytes", path.stat().st_size)))


def list_backbones(models_dir=None) -> list[BackboneSpec]:
    """All built-in backbones; built ones carry ``onnx_path``/``sha256``, others have None.

    Parameters
    ----------
    models_dir : path-like, optional
        Directory holding the built ONNX files and ``manifest.json`` (default
        :func:`default_models_dir`).
    """
    out = []
    for name, base in BUILTIN.items():
        try:
            out.append(_built_spec(name, models_dir, verify=False))
        except ImprintError:
            out.append(base)
    return out


def describe_lines(models_dir=None) -> list[str]:
    """One line per built-in backbone (for ``imprint models list``).

    Columns: name, version, input size and resize policy, channels, output dim,
    pretrained/fixed, file size and full sha256 (or ``NOT BUILT``).
    """
    lines = []
    for s in list_backbones(models_dir):
        h, w = s.input_size
        size = f"{h}x{w}" + (" (native)" if s.resize == "none" else f" ({s.resize})")
        kind = "pretrained" if s.pretrained else "fixed"
        if s.built:
            mb = s.size_bytes / 1e6
            fsize = f"{mb:.1f} MB" if mb >= 0.1 else f"{s.size_bytes / 1e3:.1f} kB"
            state = f"{fsize:>8}  sha256 {s.sha256}"
        else:
            state = "NOT BUILT (run `imprint models build`)"
        lines.append(f"{s.name:<17} v{s.version}  in {size:<18} ch {s.channels}  dim {s.dim:<5} "
                     f"{kind:<10} {state}")
    return lines


# --------------------------------------------------------------------------------------------
# user ONNX models
# --------------------------------------------------------------------------------------------

_USER_CACHE: dict[tuple, BackboneSpec] = {}
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def _as_tuple(v, channels, what):
    if v is None:
        return None
    if isinstance(v, (int, float)):
        return (float(v),) * channels
    t = tuple(float(x) for x in v)
    if len(t) == 1:
        return t * channels
    if len(t) != channels:
        raise ImprintError(f"{what} has {len(t)} values but the model takes {channels} channels")
    return t


def _dim_value(d):
    return d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None


def _resolve_onnx(path: Path, input_size, mean, std, channels, resize) -> BackboneSpec:
    import numpy as np
    import onnx

    if not path.is_file():
        raise ImprintError(f"ONNX model {path} does not exist")
    sha = file_sha256(path)
    key = (sha, None if input_size is None else tuple(np.ravel(input_size).tolist()),
           mean if mean is None else tuple(np.ravel(mean)),
           std if std is None else tuple(np.ravel(std)), channels, resize)
    if key in _USER_CACHE:
        return dataclasses.replace(_USER_CACHE[key], onnx_path=str(path.resolve()))
    if resize not in RESIZE_METHODS:
        raise ImprintError(f"resize must be one of {', '.join(RESIZE_METHODS)}, got {resize!r}")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # DecodeError, ValidationError, ...
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ImprintError(f"{path} is not a valid ONNX model: {msg[:200]}") from None
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if not MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise ImprintError(f"{path}: unsupported ONNX opset {opset} "
                           f"(need {MIN_OPSET}..{onnx.defs.onnx_opset_version()})")
    g = model.graph
    inits = {i.name for i in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    if len(inputs) != 1:
        raise ImprintError(f"{path}: model must have exactly one image input, found {len(inputs)}")
    inp = inputs[0]
    tt = inp.type.tensor_type
    if tt.elem_type != onnx.TensorProto.FLOAT:
        raise ImprintError(f"{path}: input '{inp.name}' must be float32, "
                           f"got {onnx.TensorProto.DataType.Name(tt.elem_type)}")
    if not tt.HasField("shape") or len(tt.shape.dim) != 4:
        rank = len(tt.shape.dim) if tt.HasField("shape") else "unknown"
        raise ImprintError(f"{path}: input '{inp.name}' must be 4-D [B,C,H,W], got rank {rank}")
    if len(g.output) < 1:
        raise ImprintError(f"{path}: model has no output")
    out = g.output[0]
    ot = out.type.tensor_type
    if ot.elem_type != onnx.TensorProto.FLOAT:
        raise ImprintError(f"{path}: output '{out.name}' must be float32")
    if ot.HasField("shape") and len(ot.shape.dim) < 2:
        raise ImprintError(f"{path}: output '{out.name}' must be [B,d] (or [B,...] to flatten), "
                           f"got rank {len(ot.shape.dim)}")
    dims = [_dim_value(d) for d in tt.shape.dim]
    c_static = dims[1]
    if channels is None:
        channels = c_static if c_static is not None else 3
    channels = int(channels)
    if c_static is not None and c_static != channels:
        raise ImprintError(f"{path}: model takes {c_static} channels, not {channels}")
    if channels not in (1, 3):
        raise ImprintError(f"{path}: only 1- or 3-channel models are supported, got {channels}")
    hw_static = (dims[2], dims[3])
    if input_size is None:
        if None in hw_static:
            raise ImprintError(f"{path}: input H,W are dynamic; pass an input size (e.g. 224)")
        input_size = hw_static
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    input_size = tuple(int(v) for v in input_size)
    if len(input_size) != 2 or min(input_size) < 1:
        raise ImprintError(f"input size must be (H, W) with positive values, got {input_size}")
    for a, b in zip(hw_static, input_size):
        if a is not None and a != b:
            raise ImprintError(f"{path}: model input is {hw_static[0]}x{hw_static[1]}, "
                               f"not {input_size[0]}x{input_size[1]}")
    if mean is None:
        mean = IMAGENET_MEAN if channels == 3 else (127.5,)
    if std is None:
        std = IMAGENET_STD if channels == 3 else (127.5,)
    mean_t = _as_tuple(mean, channels, "mean")
    std_t = _as_tuple(std, channels, "std")
    if any(s == 0 for s in std_t):
        raise ImprintError("std values must be non-zero")
    # probe run: catches unsupported ops / shape errors before real use, and gives the dim
    try:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        x = np.zeros((1, channels) + input_size, np.float32)
        y = sess.run([out.name], {inp.name: x})[0]
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ImprintError(f"{path}: onnxruntime cannot run the model: {msg[:200]}") from None
    y = np.asarray(y)
    if y.ndim < 2 or y.shape[0] != 1:
        raise ImprintError(f"{path}: output must be [B,d] with B the batch size, got shape {y.shape}")
    if y.dtype != np.float32:
        raise ImprintError(f"{path}: output must be float32, got {y.dtype}")
    dim = int(np.prod(y.shape[1:]))
    spec = BackboneSpec(
        name=f"onnx:{path.stem}", version=sha[:12], onnx_path=str(path.resolve()), sha256=sha,
        input_size=input_size, channels=channels, mean=mean_t, std=std_t, dim=dim,
        pretrained=None, description=f"user ONNX model {path.name}", resize=resize,
        input_name=inp.name, output_name=out.name, opset=opset, size_bytes=path.stat().st_size,
    )
    _USER_CACHE[key] = spec
    return spec


def resolve(name_or_path, *, input_size=None, mean=None, std=None, channels=None,
            resize="bilinear", models_dir=None, verify=True) -> BackboneSpec:
    """Spec of a built-in backbone (by name) or of a user ONNX file (by path), validated.

    Parameters
    ----------
    name_or_path : str, path-like or BackboneSpec
        A name from :data:`BUILTIN`, or a path to a ``.onnx`` file. A spec is returned unchanged.
    input_size : int or (int, int), optional
        User models only: ``(H, W)`` fed to the model; required when the graph's H,W are dynamic.
    mean, std : float or sequence of float, optional
        User models only: per-channel normalisation on the 0..255 scale
        (default ImageNet ``(123.675, 116.28, 103.53) / (58.395, 57.12, 57.375)`` for 3 channels,
        ``127.5 / 127.5`` for 1 channel).
    channels : {1, 3}, optional
        User models only: number of input channels (default: from the graph, else 3).
    resize : {"bilinear", "area", "none"}
        User models only: how images are mapped to ``input_size``.
    models_dir : path-like, optional
        Where built-ins are built (default :func:`default_models_dir`).
    verify : bool
        Built-ins: check the file's sha256 against the manifest (cached per file mtime).

    Returns
    -------
    BackboneSpec

    Raises
    ------
    ImprintError
        Unknown name, built-in not built / stale, or an invalid user ONNX model (not ONNX,
        unsupported opset, not exactly one 4-D float input, output rank < 2, cannot run).
    """
    if isinstance(name_or_path, BackboneSpec):
        return name_or_path
    s = os.fspath(name_or_path) if not isinstance(name_or_path, str) else name_or_path
    if s in BUILTIN:
        return _built_spec(s, models_dir, verify)
    if s.lower().endswith(".onnx") or os.path.sep in s or Path(s).exists():
        return _resolve_onnx(Path(s).expanduser(), input_size, mean, std, channels, resize)
    raise ImprintError(f"unknown backbone {s!r}; choose one of {', '.join(BUILTIN)} or a path to an .onnx file")
