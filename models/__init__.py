"""imprint models: the ONNX backbone registry and export tooling (no inference loop).

* :mod:`models.registry` - ``BackboneSpec``, ``list_backbones()``, ``resolve(name_or_onnx_path)``,
  ``describe_lines()``; validates user ONNX files.
* :mod:`models.build` - ``build_all(out_dir=None, force=False)`` writes ``models/onnx/*.onnx`` and
  ``manifest.json`` (``imprint models build`` / ``python -m imprint.models.build``).
* :mod:`models.graphs` - the training-free ``pixel`` and ``fingerprint`` graphs (onnx.helper).
* :mod:`models.effnet_lite` - EfficientNet-Lite0 in PyTorch, export-time only (imports torch).

Inference is in :mod:`engine.backbone`.
"""
