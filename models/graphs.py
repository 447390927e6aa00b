"""Training-free ONNX graphs built with ``onnx.helper``: ``pixel`` and ``fingerprint``.

Both graphs take one input ``image``: float32 ``[B,1,H,W]`` holding raw grey levels in 0..255
(the runtime only converts uint8 -> float32 and, for ``pixel``, area-resizes to 128x128 when the
images are another size). Everything else, including the /255 scaling, happens inside the graph,
so a numpy re-implementation of the documented formulas reproduces the output exactly (to float32
rounding); see ``tests/test_models.py``.

pixel (dim 1024)
    4x4 average pooling 128x128 -> 32x32 (area resize), flatten, subtract the per-image mean, divide
    by the per-image L2 norm (+1e-12). The cosine similarity of two vectors is then the Pearson
    correlation of the two 32x32 thumbnails: a near-copy detector insensitive to global
    brightness/contrast changes.

fingerprint (dim 182, input any H,W >= 16; fed at native size, never resampled)
    Generator-trace features of ``x = image / 255``. A fixed bank of eight high-pass filters
    (5x5 support, "valid" convolution, so no border padding enters the statistics) gives residuals
    ``R_k`` (computed as integer kernels on the 0..255 values, then scaled, which makes them exact
    in float32):

    ====  ==========  ===========================================================
    k     name        kernel
    ====  ==========  ===========================================================
    0     hp          x - mean_3x3(x)
    1     d2h         [1, -2, 1] (horizontal second derivative)
    2     d2v         [1, -2, 1]^T (vertical second derivative)
    3     d2xy        [[1,0,-1],[0,0,0],[-1,0,1]] / 4 (mixed derivative)
    4     kb          SRM "KB" [[-1,2,-1],[2,-4,2],[-1,2,-1]] / 4
    5     kv          SRM "KV" 5x5 / 12
    6     d2d         diag(1, -2, 1) (second derivative along the main diagonal)
    7     d2a         anti-diagonal second derivative
    ====  ==========  ===========================================================

    Features, in order (``FINGERPRINT_FEATURE_NAMES``):

    * ``res_logE2_k`` (8): ``log(mean R_k^2 + 1e-10)`` residual energy (noise level / sharpness).
    * ``res_logE1_k`` (8): ``log(mean |R_k| + 1e-10)``.
    * ``res_logkurt_k`` (8): ``log(mean R_k^4 + 1e-20) - 2 log(mean R_k^2 + 1e-10)``, tail weight
      of the residual (heavy-tailed = structured artefacts, Gaussian-like = sensor-like noise).
    * ``res_k_pool{s}_logE2`` (24): ``log(mean (avgpool_s R_k)^2 + 1e-10)`` for s in 2, 4, 8
      (non-overlapping pooling): how much residual energy sits at coarser frequencies, i.e. the
      residual's spectral slope per filter.
    * ``phase4_{hp,kb}_mean_{p}`` (32): mean of R_hp / R_kb over the pixels with
      ``(i mod 4, j mod 4) == p`` (indices of the valid residual grid, i.e. image pixel i+2;
      row-major p = 4*(i%4)+j%4; trailing incomplete 4x4 cells dropped). A stable periodic
      pattern of period 2 or 4 (transposed-convolution / upsampling checkerboards) shows up as a
      consistent non-zero signature here.
    * ``phase4_{hp,kb}_logratio_{p}`` (32): ``log(mean_p R^2 + 1e-10) - log(mean R^2 + 1e-10)``:
      the same per phase for the residual *variance* (periodic noise modulation).
    * ``dct8_logE_{u}{v}`` (64): ``log(mean over aligned 8x8 blocks of C_uv^2 + 1e-10)`` where
      ``C`` is the orthonormal 2-D DCT-II of each block of ``x`` (blocks at multiples of 8 from the
      top-left, incomplete trailing blocks dropped). A block power spectrum: spectral peaks and
      high-frequency roll-off of the generator's decoder.
    * ``haar2_{lh,hl,hh}_mean`` (3) and ``haar2_{lh,hl,hh}_logE`` (3): stride-2 2x2 orthonormal
      Haar detail responses (``HAAR2``; ``hh = (x[2i,2j] - x[2i,2j+1] - x[2i+1,2j] +
      x[2i+1,2j+1]) / 2`` is the checkerboard response): signed mean (phase-locked period-2
      pattern) and ``log(mean c^2 + 1e-10)`` (energy near the Nyquist frequencies).

    All features are raw (not standardised): consumers should z-score them on a reference set.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "OPSET",
    "PIXEL_SIZE",
    "PIXEL_POOL",
    "FINGERPRINT_FILTERS",
    "FINGERPRINT_FILTER_NAMES",
    "FINGERPRINT_FEATURE_NAMES",
    "FINGERPRINT_MIN_SIZE",
    "HAAR2",
    "dct_basis",
    "build_pixel_model",
    "build_fingerprint_model",
]

OPSET = 17
PIXEL_SIZE = 128
PIXEL_POOL = 4
FINGERPRINT_MIN_SIZE = 16
EPS = 1e-10
EPS4 = 1e-20


def _filters() -> np.ndarray:
    """The eight 5x5 residual kernels, float64 ``[8,5,5]`` (3x3 kernels centred)."""
    f = np.zeros((8, 5, 5))
    hp = -np.ones((3, 3)) / 9.0
    hp[1, 1] += 1.0
    f[0, 1:4, 1:4] = hp
    f[1, 2, 1:4] = [1.0, -2.0, 1.0]
    f[2, 1:4, 2] = [1.0, -2.0, 1.0]
    f[3, 1:4, 1:4] = np.array([[1.0, 0.0, -1.0], [0.0, 0.0, 0.0], [-1.0, 0.0, 1.0]]) / 4.0
    f[4, 1:4, 1:4] = np.array([[-1.0, 2.0, -1.0], [2.0, -4.0, 2.0], [-1.0, 2.0, -1.0]]) / 4.0
    f[5] = np.array(
        [
            [-1, 2, -2, 2, -1],
            [2, -6, 8, -6, 2],
            [-2, 8, -12, 8, -2],
            [2, -6, 8, -6, 2],
            [-1, 2, -2, 2, -1],
        ],
        dtype=np.float64,
    ) / 12.0
    f[6, 1:4, 1:4] = np.diag([1.0, -2.0, 1.0])
    f[7, 1:4, 1:4] = np.fliplr(np.diag([1.0, -2.0, 1.0]))
    return f


FINGERPRINT_FILTERS = _filters()
_FILTER_DEN = np.array([9.0, 1.0, 1.0, 4.0, 4.0, 12.0, 1.0, 1.0])  # FINGERPRINT_FILTERS * den is integer
assert np.allclose(FINGERPRINT_FILTERS * _FILTER_DEN[:, None, None],
                   (FINGERPRINT_FILTERS * _FILTER_DEN[:, None, None]).round())
FINGERPRINT_FILTER_NAMES = ("hp", "d2h", "d2v", "d2xy", "kb", "kv", "d2d", "d2a")
NF = len(FINGERPRINT_FILTER_NAMES)
_PHASE_CH = (0, 4)  # hp, kb
_POOLS = (2, 4, 8)


#: 2x2 orthonormal Haar kernels [4,2,2]: LL, LH (horizontal detail), HL (vertical detail), HH
HAAR2 = np.array([[[1, 1], [1, 1]], [[1, -1], [1, -1]], [[1, 1], [-1, -1]], [[1, -1], [-1, 1]]],
                 dtype=np.float64) / 2.0


def dct_basis(n: int = 8) -> np.ndarray:
    """Orthonormal 2-D DCT-II basis, float64 ``[n*n, n, n]``; index ``u*n+v`` (u vertical)."""
    k = np.arange(n)
    c = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n))
    c[0] /= np.sqrt(2.0)
    return np.einsum("ui,vj->uvij", c, c).reshape(n * n, n, n)


def _feature_names() -> tuple[str, ...]:
    names = []
    fn = FINGERPRINT_FILTER_NAMES
    names += [f"res_logE2_{n}" for n in fn]
    names += [f"res_logE1_{n}" for n in fn]
    names += [f"res_logkurt_{n}" for n in fn]
    names += [f"res_{n}_pool{s}_logE2" for s in _POOLS for n in fn]
    names += [f"phase4_{fn[c]}_mean_{p}" for c in _PHASE_CH for p in range(16)]
    names += [f"phase4_{fn[c]}_logratio_{p}" for c in _PHASE_CH for p in range(16)]
    names += [f"dct8_logE_{u}{v}" for u in range(8) for v in range(8)]
    names += [f"haar2_{b}_mean" for b in ("lh", "hl", "hh")]
    names += [f"haar2_{b}_logE" for b in ("lh", "hl", "hh")]
    return tuple(names)


FINGERPRINT_FEATURE_NAMES = _feature_names()


class _G:
    """Tiny graph-building helper: unique names, initializers, nodes."""

    def __init__(self):
        self.nodes = []
        self.inits = []
        self._n = 0

    def name(self, base):
        self._n += 1
        return f"{base}_{self._n}"

    def const(self, arr, base="c", dtype=np.float32):
        n = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(arr, dtype=dtype), n))
        return n

    def op(self, op_type, inputs, base=None, exact=False, **attrs):
        out = base if exact else self.name(base or op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def model(self, inp, out, out_dim, doc, in_shape):
        graph = helper.make_graph(
            self.nodes,
            "imprint",
            [helper.make_tensor_value_info(inp, TensorProto.FLOAT, in_shape)],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", out_dim])],
            self.inits,
        )
        m = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name="imprint",
            doc_string=doc,
        )
        m.ir_version = 8
        onnx.checker.check_model(m, full_check=True)
        return m


def build_pixel_model() -> onnx.ModelProto:
    """ONNX graph ``image float32[B,1,128,128] (0..255) -> embedding float32[B,1024]``."""
    g = _G()
    x = "image"
    p = g.op("AveragePool", [x], kernel_shape=[PIXEL_POOL, PIXEL_POOL], strides=[PIXEL_POOL, PIXEL_POOL])
    f = g.op("Flatten", [p], axis=1)
    mu = g.op("ReduceMean", [f], axes=[1], keepdims=1)
    c = g.op("Sub", [f, mu])
    ss = g.op("ReduceSumSquare", [c], axes=[1], keepdims=1)
    nrm = g.op("Sqrt", [g.op("Add", [ss, g.const(1e-12)])])
    out = g.op("Div", [c, nrm], base="embedding", exact=True)
    dim = (PIXEL_SIZE // PIXEL_POOL) ** 2
    return g.model(x, out, dim, "imprint pixel backbone: 32x32 area thumbnail, zero-mean unit-norm",
                   ["batch", 1, PIXEL_SIZE, PIXEL_SIZE])


def build_fingerprint_model() -> onnx.ModelProto:
    """ONNX graph ``image float32[B,1,H,W] (0..255) -> features float32[B,182]`` (see module doc)."""
    g = _G()
    x = g.op("Mul", ["image", g.const(1.0 / 255.0)], base="x01")

    def gap(t):  # [B,C,h,w] -> [B,C]
        return g.op("Flatten", [g.op("GlobalAveragePool", [t])], axis=1)

    def log_eps(t, eps=EPS):
        return g.op("Log", [g.op("Add", [t, g.const(eps)])])

    # residuals: integer kernels on the raw 0..255 grey levels (exact in float32 whatever the
    # summation order, hence batch-size invariant), then one per-channel scale 1/(255*den)
    w_int = (FINGERPRINT_FILTERS * _FILTER_DEN[:, None, None]).round()[:, None].astype(np.float32)
    r_int = g.op("Conv", ["image", g.const(w_int, "filters_int")], kernel_shape=[5, 5])
    scale = (1.0 / (255.0 * _FILTER_DEN)).reshape(1, NF, 1, 1)
    r = g.op("Mul", [r_int, g.const(scale, "filter_scale")], base="residual")
    r2 = g.op("Mul", [r, r])
    e2 = gap(r2)
    e1 = gap(g.op("Abs", [r]))
    e4 = gap(g.op("Mul", [r2, r2]))
    log_e2 = log_eps(e2)
    feats = [log_e2, log_eps(e1)]
    feats.append(g.op("Sub", [log_eps(e4, EPS4), g.op("Mul", [log_e2, g.const(2.0)])]))
    for s in _POOLS:
        ps = g.op("AveragePool", [r], kernel_shape=[s, s], strides=[s, s])
        feats.append(log_eps(gap(g.op("Mul", [ps, ps]))))
    # polyphase (period 4) selectors for the hp and kb residuals: [32,2,4,4] one-hot on the
    # gathered channels [R_hp, R_kb, R_hp^2, R_kb^2] (grouped conv: 2 groups of 2 channels)
    npc = len(_PHASE_CH)
    sel = np.zeros((16 * npc, npc, 4, 4), np.float32)
    for ci in range(npc):
        for p in range(16):
            sel[ci * 16 + p, ci, p // 4, p % 4] = 1.0
    chans = g.const(np.array(_PHASE_CH, np.int64), "phase_ch", np.int64)
    rsel = g.op("Gather", [r, chans], axis=1)
    both = g.op("Concat", [rsel, g.op("Mul", [rsel, rsel])], axis=1)
    ph = gap(g.op("Conv", [both, g.const(np.concatenate([sel, sel]), "phase_sel")],
                  kernel_shape=[4, 4], strides=[4, 4], group=2))
    ph_mean = g.op("Slice", [ph, g.const([0], "s0", np.int64), g.const([16 * npc], "s1", np.int64),
                             g.const([1], "ax", np.int64)])
    ph_e2 = g.op("Slice", [ph, g.const([16 * npc], "s2", np.int64), g.const([32 * npc], "s3", np.int64),
                           g.const([1], "ax", np.int64)])
    feats.append(ph_mean)
    # total energy of the selected channels, repeated 16x: gather columns of log_e2
    idx = np.repeat(np.array(_PHASE_CH, np.int64), 16)
    tot = g.op("Gather", [log_e2, g.const(idx, "phase_idx", np.int64)], axis=1)
    feats.append(g.op("Sub", [log_eps(ph_e2), tot]))
    # block DCT power spectrum
    d = dct_basis(8)[:, None].astype(np.float32)
    cd = g.op("Conv", [x, g.const(d, "dct8")], kernel_shape=[8, 8], strides=[8, 8])
    feats.append(log_eps(gap(g.op("Mul", [cd, cd]))))
    # stride-2 Haar subbands (LL, LH, HL, HH = checkerboard); 4 channels keep the pooled
    # reductions batch-size invariant in onnxruntime's vectorised kernels
    hw = g.const(HAAR2[:, None].astype(np.float32), "haar2")
    hb = g.op("Conv", [x, hw], kernel_shape=[2, 2], strides=[2, 2])
    sub = g.const(np.array([1, 2, 3], np.int64), "haar_sub", np.int64)
    feats.append(g.op("Gather", [gap(hb), sub], axis=1))
    feats.append(g.op("Gather", [log_eps(gap(g.op("Mul", [hb, hb]))), sub], axis=1))
    out = g.op("Concat", feats, base="features", exact=True, axis=1)
    return g.model("image", out, len(FINGERPRINT_FEATURE_NAMES),
                   "imprint fingerprint backbone: fixed high-pass residual statistics, "
                   "polyphase, block-DCT and checkerboard energies",
                   ["batch", 1, "height", "width"])
