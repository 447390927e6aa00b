"""CUDA pair and LBP kernels, proven under Numba's CUDA simulator against the CPU kernels and scikit-image.

The simulator must be enabled before ``numba.cuda`` is first imported, so the kernels run in one subprocess
with ``NUMBA_ENABLE_CUDASIM=1`` (small images: the simulator runs every GPU thread in Python) and the tests
compare what it returns.  The cases cover several output tiles per image with partial last tiles, a
non-square size, several streamed batches (double buffering), A images with many partners, identical pairs,
uint8 and float32 inputs, and three LBP methods.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    sys.path.insert(0, "tests")
    from conftest import ct_like
    from numba.core import config
    assert config.ENABLE_CUDASIM
    from imprint.kernels.cuda_similarity import CudaPairScorer, ssim_mse_pairs_cuda
    from imprint.kernels.cuda_texture import lbp_histograms_cuda
    rng = np.random.default_rng(7)
    out = {}
    # uint8, 15x16 (valid 5x6 -> 2x2 tiles of 4, partial last ones), 2 streamed batches of 2 A images
    A = ct_like(rng, 3, 24)[:, 4:19, 3:19].copy()
    B = ct_like(rng, 3, 24)[:, 4:19, 3:19].copy()
    B[2] = A[1]                                  # an identical pair (ssim 1, mse 0)
    pairs = np.array([[1, 2], [0, 1], [2, 0], [0, 0], [1, 1], [0, 2]])
    s, m = ssim_mse_pairs_cuda(A, B, pairs, tile=4, batch_images=2, variant="tiled")
    out["u8"] = dict(A=A.tolist(), B=B.tolist(), pairs=pairs.tolist(), ssim=s.tolist(), mse=m.tolist())
    # float32 (non-integer values, another data range), one tile per image, scorer reused for two calls
    Af = (rng.random((2, 13, 12)) * 3.7).astype(np.float32)
    Bf = (rng.random((2, 13, 12)) * 3.7).astype(np.float32)
    sc = CudaPairScorer(Bf, data_range=4.0, tile=4, variant="tiled")
    pf = np.array([[0, 1], [1, 0], [0, 0]])
    s1, m1 = sc.score(Af, pf)
    s2, _ = sc.score(Af[::-1], pf)
    out["f32"] = dict(A=Af.tolist(), B=Bf.tolist(), pairs=pf.tolist(), ssim=s1.tolist(), mse=m1.tolist(),
                      ssim_rev=s2.tolist())
    # LBP: a flat patch (ties in the interpolation), three methods / radii, one block per image
    X = ct_like(rng, 1, 24)[:, 3:13, 2:13].copy()
    X[0, :5, :5] = 25
    out["lbp"] = dict(X=X.tolist(), h={f"{P},{R},{meth}": lbp_histograms_cuda(X, P, R, meth, tile=16).tolist()
                                       for P, R, meth in ((8, 1.0, "uniform"), (8, 2.0, "default"),
                                                          (6, 1.5, "nri_uniform"))})
    # the "rows" kernel (the default): odd 13x17 images (valid 3x7), blocks of 16 threads -> 2 column strips
    # (and the automatic 32-thread block -> 1 strip), 3 streamed batches, unsorted pairs, a planted identical
    # pair, an A image with many partners
    Ar = ct_like(rng, 5, 24)[:, 4:17, 3:20].copy()
    Br = ct_like(rng, 4, 24)[:, 6:19, 5:22].copy()
    Br[3] = Ar[2]
    pr = np.array([[4, 0], [2, 3], [0, 1], [4, 3], [1, 2], [0, 0], [0, 3], [0, 2]])
    rec = {}
    for name, kw in (("b16", dict(block=16, batch_images=2)), ("auto", dict(batch_images=3))):
        sc = CudaPairScorer(Br, tile=4, **kw)
        s, m = sc.score(Ar, pr)
        rec[name] = dict(ssim=s.tolist(), mse=m.tolist(), variant=sc.variant, block=sc._block,
                         nstrips=sc._nstrips, mub=sc._mub.copy_to_host().tolist(),
                         varb=sc._varb.copy_to_host().tolist())
    out["rows_u8"] = dict(A=Ar.tolist(), B=Br.tolist(), pairs=pr.tolist(), **rec)
    # flat regions far from the image mean (where a float32 cross term would miss 1e-5, see
    # benchmarks/ssim_float32_error.py): half black / half white, and a dark image with a bright band
    F = np.zeros((2, 14, 18), np.uint8)
    F[0, :, 9:] = 255
    F[1, :, :4] = 255
    G = F.copy()
    G[0, 5:9, 7:11] = 128
    G[1, :, :4] = 250
    s, m = ssim_mse_pairs_cuda(F, G, np.array([[0, 0], [1, 1], [0, 1]]))
    out["rows_flat"] = dict(A=F.tolist(), B=G.tolist(), ssim=s.tolist(), mse=m.tolist())
    # float32 on the rows kernel (centres from the host), one scorer reused for two calls
    sc = CudaPairScorer(Bf, data_range=4.0, tile=4, block=16)
    s1, m1 = sc.score(Af, pf)
    s2, _ = sc.score(Af[::-1], pf)
    out["rows_f32"] = dict(ssim=s1.tolist(), mse=m1.tolist(), ssim_rev=s2.tolist(), variant=sc.variant)
    # the device centring of uint8 images against the CPU's: half-to-even means, a constant image (q = 1), a
    # largest deviation of exactly 128 (a power of two: the step's logarithm sits next to an integer)
    from numba import cuda
    from imprint.kernels.cuda_similarity import _row_kernels, centres
    C = ct_like(rng, 6, 24)[:, :17, :22].copy()
    C[0] = 100
    C[0].flat[::2] = 101                               # mean exactly 100.5 -> 100
    C[1] = 102
    C[1].flat[::2] = 101                               # mean exactly 101.5 -> 102
    C[2] = 77                                          # constant: q = 1
    C[3] = 128
    C[3, 0, 0], C[3, 1, 1] = 0, 255                    # mean 128, largest deviation 128
    ck = _row_kernels(16)[0]
    dm, dq = cuda.device_array(6, np.float64), cuda.device_array(6, np.float64)
    ck[6, 16](cuda.to_device(C), dm, dq)
    m_cpu, q_cpu = centres(C)
    out["centres"] = dict(m=dm.copy_to_host().tolist(), q=dq.copy_to_host().tolist(), m_cpu=m_cpu.tolist(),
                          q_cpu=q_cpu.tolist())
    # the kernel-only timing helper runs for both variants (the simulator's rate means nothing)
    out["kernel_rate"] = {v: CudaPairScorer(Br, tile=4, variant=v, block=16).kernel_rate(Ar, pr[:3], 0.0, 1)
                          for v in ("rows", "tiled")}
    print("JSON" + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def sim():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("JSON")][-1]
    return json.loads(line[4:])


def test_cuda_ssim_mse_uint8_equal_cpu_across_tiles_and_batches(sim):
    from imprint.kernels import mse_pairs, ssim_pairs

    c = sim["u8"]
    A = np.array(c["A"], np.uint8)
    B = np.array(c["B"], np.uint8)
    pairs = np.array(c["pairs"])
    ref_s = ssim_pairs(A, B, pairs)
    ref_m = mse_pairs(A, B, pairs)
    np.testing.assert_allclose(c["ssim"], ref_s, rtol=0, atol=1e-5)
    np.testing.assert_allclose(c["mse"], ref_m, rtol=1e-6, atol=1e-5)
    # the planted identical pair is found as identical
    assert abs(c["ssim"][0] - 1.0) < 1e-6 and c["mse"][0] == 0.0
    # the values are not all alike (a constant would not pass the comparison above either)
    assert np.ptp(c["ssim"]) > 0.2


def test_cuda_ssim_equals_skimage(sim):
    from skimage.metrics import mean_squared_error, structural_similarity

    c = sim["u8"]
    A = np.array(c["A"], np.uint8)
    B = np.array(c["B"], np.uint8)
    for (i, j), s, m in list(zip(c["pairs"], c["ssim"], c["mse"]))[:4]:
        ref = structural_similarity(A[i], B[j], data_range=255, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False)
        assert abs(s - ref) < 1e-5
        assert abs(m - mean_squared_error(A[i], B[j])) < 1e-3


def test_cuda_float32_and_resident_scorer_reuse(sim):
    from imprint.kernels import mse_pairs, ssim_pairs

    c = sim["f32"]
    A = np.array(c["A"], np.float32)
    B = np.array(c["B"], np.float32)
    pairs = np.array(c["pairs"])
    np.testing.assert_allclose(c["ssim"], ssim_pairs(A, B, pairs, data_range=4.0), atol=1e-5, rtol=0)
    np.testing.assert_allclose(c["mse"], mse_pairs(A, B, pairs), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(c["ssim_rev"], ssim_pairs(A[::-1], B, pairs, data_range=4.0), atol=1e-5, rtol=0)
    assert not np.allclose(c["ssim"], c["ssim_rev"])


def test_cuda_lbp_histograms_bit_equal_cpu(sim):
    from imprint.kernels import lbp_histograms

    X = np.array(sim["lbp"]["X"], np.uint8)
    for key, h in sim["lbp"]["h"].items():
        P, R, meth = key.split(",")
        ref = lbp_histograms(X, int(P), float(R), meth)
        np.testing.assert_array_equal(np.array(h, np.float32), ref, err_msg=key)


def test_cuda_unavailable_is_a_clear_error_and_bad_params_rejected():
    from imprint.kernels.cuda_similarity import cuda_available
    from imprint.kernels.cuda_texture import lbp_histograms_cuda

    with pytest.raises(ValueError, match="bins"):
        lbp_histograms_cuda(np.zeros((1, 8, 8), np.uint8), P=12, method="default")
    if not cuda_available():  # this process runs without the simulator: no device
        from imprint.kernels.cuda_similarity import CudaPairScorer

        with pytest.raises(RuntimeError, match="no CUDA device"):
            CudaPairScorer(np.zeros((1, 16, 16), np.uint8))


def test_cuda_and_cpu_kernels_read_one_definition():
    """kernels.constants is the one source of the SSIM definition for the CPU and the CUDA kernels: both modules
    use its objects (not copies), the CUDA side centres images with the CPU kernel's own function, no kernel
    source repeats the constants as literals, and the definition is scipy's / skimage's."""
    import ast

    from scipy.ndimage import _filters

    import imprint.kernels.constants as C
    import imprint.kernels.cuda_similarity as CS
    import imprint.kernels.similarity as S

    assert S.gaussian_window is C.gaussian_window and CS.gaussian_window is C.gaussian_window
    assert S.SSIM_WIN is C.SSIM_WIN and CS.SSIM_WIN is C.SSIM_WIN and C.SSIM_WIN == 11 and C.SSIM_HALO == 10
    assert (S._K1, S._K2) == (C.SSIM_K1, C.SSIM_K2) == (0.01, 0.03)
    assert CS._centre is S._centre
    np.testing.assert_array_equal(C.gaussian_window(), _filters._gaussian_kernel1d(1.5, 0, 5)[::-1])
    assert C.ssim_c1_c2(255.0) == ((0.01 * 255) ** 2, (0.03 * 255) ** 2)
    # the numbers live in constants.py only (numeric literals in the kernels' code, docstrings aside)
    for name in ("similarity.py", "cuda_similarity.py", "cuda_texture.py"):
        tree = ast.parse((ROOT / "kernels" / name).read_text())
        nums = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and type(n.value) in (int, float)}
        assert not nums & {0.01, 0.03, 2147483646.0, 2147483646, 1.5, 3.5, 1000.0}, (name, nums)
    # centres() of a batch equals the CPU kernel's per-image centring (uint8 and float32 images)
    rng = np.random.default_rng(0)
    X = (rng.random((5, 13, 14)) * 200).astype(np.float32)
    X[1] = 7.0  # a constant image: q = 1
    for arr in (X, X.astype(np.uint8)):
        m, q = CS.centres(arr)
        for i in range(len(arr)):
            assert (m[i], q[i]) == S._centre(arr[i])
    assert q[1] == 1.0


def test_cuda_rows_kernel_equals_cpu_multi_strip_odd_size_multi_batch(sim):
    """The default ``rows`` pair kernel == the CPU kernels (<= 1e-5: float32 ratios, float64 cross term) on odd
    13x17 images, with two column strips (16-thread blocks) and with one (automatic block), several streamed
    batches and unsorted pairs; the planted identical pair scores 1 and 0."""
    from imprint.kernels import mse_pairs, ssim_pairs

    c = sim["rows_u8"]
    A = np.array(c["A"], np.uint8)
    B = np.array(c["B"], np.uint8)
    pairs = np.array(c["pairs"])
    ref_s = ssim_pairs(A, B, pairs)
    ref_m = mse_pairs(A, B, pairs)
    assert (c["b16"]["block"], c["b16"]["nstrips"]) == (16, 2) and (c["auto"]["block"], c["auto"]["nstrips"]) == (32, 1)
    for name in ("b16", "auto"):
        assert c[name]["variant"] == "rows"
        np.testing.assert_allclose(c[name]["ssim"], ref_s, rtol=0, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(c[name]["mse"], ref_m, rtol=1e-6, atol=1e-5, err_msg=name)
    k = pairs.tolist().index([2, 3])
    assert abs(c["b16"]["ssim"][k] - 1.0) < 1e-6 and c["b16"]["mse"][k] == 0.0
    assert np.ptp(c["b16"]["ssim"]) > 0.2  # real spread: a constant could not match the reference above


def test_cuda_rows_kernel_equals_skimage(sim):
    from skimage.metrics import mean_squared_error, structural_similarity

    c = sim["rows_u8"]
    A = np.array(c["A"], np.uint8)
    B = np.array(c["B"], np.uint8)
    for (i, j), s, m in zip(c["pairs"], c["b16"]["ssim"], c["b16"]["mse"]):
        ref = structural_similarity(A[i], B[j], data_range=255, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False)
        assert abs(s - ref) < 1e-5
        assert abs(m - mean_squared_error(A[i], B[j])) < 1e-3


def test_cuda_rows_kernel_float32_and_scorer_reuse(sim):
    from imprint.kernels import mse_pairs, ssim_pairs

    c, f = sim["rows_f32"], sim["f32"]
    A = np.array(f["A"], np.float32)
    B = np.array(f["B"], np.float32)
    pairs = np.array(f["pairs"])
    assert c["variant"] == "rows"
    np.testing.assert_allclose(c["ssim"], ssim_pairs(A, B, pairs, data_range=4.0), atol=1e-5, rtol=0)
    np.testing.assert_allclose(c["mse"], mse_pairs(A, B, pairs), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(c["ssim_rev"], ssim_pairs(A[::-1], B, pairs, data_range=4.0), atol=1e-5, rtol=0)
    assert not np.allclose(c["ssim"], c["ssim_rev"])


def test_cuda_device_centring_is_the_cpus_bit_for_bit(sim):
    c = sim["centres"]
    assert c["m"] == c["m_cpu"] and c["q"] == c["q_cpu"]
    assert c["m"][:4] == [100.0, 102.0, 77.0, 128.0] and c["q"][2] == 1.0  # the planted edge cases


def test_cuda_variant_selection_and_kernel_rate(sim):
    """``variant=`` picks the kernel (default ``rows``), a bad name or block is a clear error, and the kernel-only
    timing helper runs for both variants."""
    from imprint.kernels import cuda_similarity as CS

    assert CS.DEFAULT_VARIANT == "rows" and set(CS.VARIANTS) == {"rows", "tiled"}
    assert sim["rows_u8"]["auto"]["variant"] == "rows"
    with pytest.raises(ValueError, match="variant"):
        CS.CudaPairScorer(np.zeros((1, 16, 16), np.uint8), variant="fast")
    with pytest.raises(ValueError, match="block"):
        CS._row_block(128, 8)
    assert CS._row_block(128) == 128 and CS._row_block(256) == 256 and CS._row_block(20) == 32
    assert CS._row_block(1000) == 256
    for v, r in sim["kernel_rate"].items():
        assert r["pairs"] == 3 and r["best_per_s"] > 0, v


def test_cuda_rows_statistics_equal_cpu_statistics(sim):
    """The rows statistics kernel stores the CPU kernel's fixed-point means and variances of the resident images
    (two column strips and one)."""
    from imprint.kernels.constants import gaussian_window
    from imprint.kernels.similarity import _centre, _stats_into

    B = np.array(sim["rows_u8"]["B"], np.uint8)
    H, W = B.shape[1:]
    for name in ("b16", "auto"):
        mub = np.array(sim["rows_u8"][name]["mub"], np.int32)
        varb = np.array(sim["rows_u8"][name]["varb"], np.float32)
        for n in range(len(B)):
            m, q = _centre(B[n])
            mu = np.empty((H - 10, W - 10), np.int32)
            var = np.empty((H - 10, W - 10), np.float32)
            _stats_into(B[n], m, q, gaussian_window(), mu, var, np.empty((11, W)), np.empty((11, W)),
                        np.empty(W), np.empty(W))
            np.testing.assert_array_equal(mub[n], mu, err_msg=name)
            np.testing.assert_allclose(varb[n], var, rtol=1e-6, atol=0, err_msg=name)
        assert np.ptp(mub) > 0


_PTX = """
import sys
import numba.cuda.dispatcher as D, types
D.get_current_device = lambda: types.SimpleNamespace(compute_capability=(9, 0))  # no GPU here: compile for sm_90
from numba import cuda, types as T
from imprint.kernels.cuda_similarity import _row_kernels
centre, stats, pair = _row_kernels(128)
a = lambda t, n: T.Array(t, n, "C")
img = a(T.uint8, 3)
f64, i32 = a(T.float64, 1), a(T.int32, 1)
out = [cuda.compile_ptx(centre.py_func, (img, f64, f64), cc=(9, 0))[0],
       cuda.compile_ptx(stats.py_func, (a(T.uint8, 2), T.int64, f64, f64, a(T.int32, 2), a(T.float32, 2)),
                        cc=(9, 0))[0],
       cuda.compile_ptx(pair.py_func, (a(T.uint8, 2), a(T.uint8, 2), T.int64, f64, f64, a(T.int32, 2),
                                       a(T.float32, 2), f64, f64, a(T.int32, 2), a(T.float32, 2), i32, i32,
                                       T.float64, T.float32, a(T.float64, 2), a(T.float64, 2)), cc=(9, 0))[0]]
print("PTX" + "|".join(str(p.count(k)) for p in out for k in (".local", "bar.sync", "div.rn.f64")))
"""


def test_cuda_rows_kernels_compile_for_sm90():
    """The simulator runs kernels as Python, so it cannot see what Numba's CUDA target refuses to type (two-scalar
    ``min`` was one).  Compile the rows kernels to PTX for sm_90 (NVVM only, no GPU needed): no local memory
    (register arrays spilled), no float64 division in the pair kernel, one barrier per row plus the reduction."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    r = subprocess.run([sys.executable, "-c", _PTX], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if r.returncode != 0 and ("NVVM" in r.stderr or "libnvvm" in r.stderr.lower()):
        pytest.skip("NVVM (the CUDA compiler library) is not installed here")
    assert r.returncode == 0, r.stderr[-3000:]
    c = [int(x) for x in [ln for ln in r.stdout.splitlines() if ln.startswith("PTX")][-1][3:].split("|")]
    local = c[0::3]
    assert local == [0, 0, 0]
    assert c[3 * 2 + 2] == 0  # pair kernel: float32 ratios, no float64 division
    assert c[3 * 1 + 1] == 1 and 1 <= c[3 * 2 + 1] <= 12  # stats: one barrier; pair: one per row + reduction


def test_cuda_batch_gather_into_pinned_buffers_is_exact(monkeypatch):
    """The host copy of a streamed batch (one slice for consecutive ids, chunks on threads when large) gives
    ``A[ids]`` for consecutive and scattered ids, on the threaded path and the single-thread one."""
    from imprint.kernels import cuda_similarity as CS

    rng = np.random.default_rng(2)
    A = rng.integers(0, 256, (50, 13, 11), dtype=np.uint8)
    for threshold in (0, 1 << 40):
        monkeypatch.setattr(CS, "_COPY_PARALLEL_BYTES", threshold)
        for ids in (np.arange(7, 40), np.sort(rng.choice(50, 23, replace=False)), np.array([3])):
            out = np.zeros((ids.size, 13, 11), np.uint8)
            CS._gather(A, ids, out)
            np.testing.assert_array_equal(out, A[ids])


def test_cuda_rows_kernel_flat_regions_far_from_the_mean(sim):
    """Images whose flat regions sit far from their mean (products up to 255^2 repeated over the map): the rows
    kernel keeps the CPU's float64 cross term there, so it still matches the CPU kernel and skimage < 1e-5."""
    from skimage.metrics import structural_similarity

    from imprint.kernels import ssim_pairs

    c = sim["rows_flat"]
    A = np.array(c["A"], np.uint8)
    B = np.array(c["B"], np.uint8)
    pairs = np.array([[0, 0], [1, 1], [0, 1]])
    np.testing.assert_allclose(c["ssim"], ssim_pairs(A, B, pairs), rtol=0, atol=1e-5)
    for (i, j), s in zip(pairs, c["ssim"]):
        ref = structural_similarity(A[i], B[j], data_range=255, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False)
        assert abs(s - ref) < 1e-5
    assert c["ssim"][0] < 0.99 and c["ssim"][1] < 1.0  # the planted differences are seen
