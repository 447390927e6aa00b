"""Tests for engine.search: FAISS k-NN against brute-force numpy references."""

from __future__ import annotations


import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

faiss = pytest.importorskip("faiss")

from imprint.engine import search as S  # noqa: E402
from imprint.engine.errors import ImprintError  # noqa: E402


# ----------------------------------------------------------------- references
def brute_force(base, queries, k, metric="l2", exclude=None):
    """Reference k-NN in float64; ``exclude`` is a bool [N, M] mask of forbidden pairs."""
    b = np.asarray(base, dtype=np.float64)
    q = np.asarray(queries, dtype=np.float64)
    if metric == "l2":
        d = ((q[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    else:
        bn = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-300)
        qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-300)
        d = 1.0 - qn @ bn.T
    if exclude is not None:
        d = np.where(exclude, np.inf, d)
    cols = np.broadcast_to(np.arange(b.shape[0]), d.shape)
    order = np.lexsort((cols, d), axis=-1)[:, :k]
    dist = np.take_along_axis(d, order, axis=1)
    idx = np.where(np.isinf(dist), -1, order)
    if idx.shape[1] < k:
        pad = k - idx.shape[1]
        dist = np.concatenate([dist, np.full((len(q), pad), np.inf)], axis=1)
        idx = np.concatenate([idx, np.full((len(q), pad), -1)], axis=1)
    return dist, idx


def gaussian_mixture(n, d, n_clusters, seed, spread=4.0, sigma=1.0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_clusters, d)) * spread
    lab = rng.integers(0, n_clusters, n)
    return (centers[lab] + sigma * rng.standard_normal((n, d))).astype(np.float32)


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(1)
    return rng.standard_normal((400, 12)).astype(np.float32), rng.standard_normal((37, 12)).astype(np.float32)


@pytest.fixture(scope="module")
def clustered():
    x = gaussian_mixture(6000, 24, 40, seed=2)
    return x


# ----------------------------------------------------------------- exactness
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_exact_matches_bruteforce(small, metric):
    base, q = small
    dist, idx = S.knn(base, q, 7, metric=metric, index="Flat")
    rd, ri = brute_force(base, q, 7, metric)
    assert dist.dtype == np.float32 and idx.dtype == np.int64 and dist.shape == (37, 7)
    np.testing.assert_array_equal(idx, ri)
    np.testing.assert_allclose(dist, rd, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_auto_small_is_exact(small, metric):
    base, q = small
    dist, idx, info = S.knn(base, q, 5, metric=metric, return_info=True)
    assert info["factory"] == "Flat"
    rd, ri = brute_force(base, q, 5, metric)
    np.testing.assert_array_equal(idx, ri)
    np.testing.assert_allclose(dist, rd, rtol=1e-5, atol=1e-5)


def test_cosine_scale_invariant_and_zero_vector(small):
    base, q = small
    d1, i1 = S.knn(base, q, 4, metric="cosine")
    d2, i2 = S.knn(base * 3.5, q * 0.25, 4, metric="cosine")
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(d1, d2, atol=1e-5)
    z = np.zeros((1, base.shape[1]), np.float32)
    dz, _ = S.knn(base, z, 3, metric="cosine")
    np.testing.assert_allclose(dz, 1.0, atol=1e-6)


def test_integer_input_accepted():
    rng = np.random.default_rng(3)
    base = rng.integers(0, 255, (200, 8)).astype(np.uint8)
    q = rng.integers(0, 255, (10, 8)).astype(np.int32)
    dist, idx = S.knn(base, q, 3)
    rd, _ = brute_force(base, q, 3)
    np.testing.assert_allclose(dist, rd, rtol=1e-6)


@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 60), n=st.integers(1, 20), d=st.integers(1, 9), k=st.integers(1, 70),
       seed=st.integers(0, 10_000), metric=st.sampled_from(["l2", "cosine"]))
def test_property_exact_distances(m, n, d, k, seed, metric):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((m, d)).astype(np.float32)
    q = rng.standard_normal((n, d)).astype(np.float32)
    dist, idx = S.knn(base, q, k, metric=metric, index="Flat", batch_size=7)
    rd, ri = brute_force(base, q, k, metric)
    np.testing.assert_allclose(dist, rd, rtol=1e-5, atol=1e-5)  # ties may permute ids, not distances
    assert ((idx == -1) == (ri == -1)).all()
    # returned ids are distinct and really have the returned distances
    valid = idx >= 0
    assert valid.sum() == min(k, m) * n
    full, _ = brute_force(base, q, m, metric)  # sorted distances per row
    _, fidx = brute_force(base, q, m, metric)
    dmat = np.empty((n, m))
    np.put_along_axis(dmat, fidx, full, axis=1)
    got = np.take_along_axis(dmat, np.where(valid, idx, 0), axis=1)
    np.testing.assert_allclose(got[valid], dist[valid], rtol=1e-5, atol=1e-5)
    assert all(len(set(r[r >= 0])) == (r >= 0).sum() for r in idx)


# ----------------------------------------------------------------- approximate recall
@pytest.mark.parametrize("factory,metric", [("IVF64,Flat", "l2"), ("IVF64,Flat", "cosine"),
                                            ("HNSW16", "l2"), ("HNSW16", "cosine"),
                                            ("IVF64,SQ8", "l2"), ("IVF64,PQ24x4", "l2")])
def test_approximate_recall(clustered, factory, metric):
    x = clustered
    q = x[::20]
    dist, idx, info = S.knn(x, q, 10, metric=metric, index=factory, return_info=True)
    _, ri = brute_force(x, q, 10, metric)
    rec = S.recall_at_k(idx, ri)
    assert rec >= 0.95, (factory, metric, rec, info)
    assert info["calibration"]["recall"] >= 0.95
    # distances are exact for the ids returned
    b = x.astype(np.float64)
    if metric == "l2":
        ref = ((q[:, None, :].astype(np.float64) - b[idx]) ** 2).sum(-1)
        np.testing.assert_allclose(dist, ref, rtol=1e-5, atol=1e-4)
    assert (np.diff(dist, axis=1) >= 0).all()


def test_nprobe_override_is_applied(clustered):
    x = clustered
    q = x[::20]
    _, ri = brute_force(x, q, 10)
    _, i1, info1 = S.knn(x, q, 10, index="IVF256,Flat", nprobe=1, return_info=True)
    _, i2, info2 = S.knn(x, q, 10, index="IVF256,Flat", return_info=True)
    assert info1["nprobe"] == 1 and info2["nprobe"] > 1
    assert S.recall_at_k(i1, ri) < S.recall_at_k(i2, ri)
    assert S.recall_at_k(i2, ri) >= 0.95


def test_ivf_deterministic(clustered):
    x = clustered[:3000]
    a = S.knn(x, x[:100], 5, index="IVF32,Flat", random_state=7)
    b = S.knn(x, x[:100], 5, index="IVF32,Flat", random_state=7)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0])


def test_prebuilt_index_reused(clustered):
    x = clustered[:3000]
    index, info = S.build_index(x, metric="cosine", index="IVF32,Flat", return_info=True)
    assert info["nprobe"] >= 1 and index.ntotal == 3000
    d1, i1 = S.knn(x, x[:50], 5, metric="cosine", index=index)
    _, ri = brute_force(x, x[:50], 5, "cosine")
    assert S.recall_at_k(i1, ri) >= 0.95
    with pytest.raises(ImprintError):
        S.knn(x, x[:50], 5, metric="l2", index=index)  # metric mismatch
    with pytest.raises(ImprintError):
        S.knn(x[:100], x[:50], 5, metric="cosine", index=index)  # size mismatch


# ----------------------------------------------------------------- exclusions
@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat"])
def test_exclude_self(factory):
    x = gaussian_mixture(1500, 8, 10, seed=5)
    dist, idx = S.knn(x, x, 6, index=factory, exclude_self=True)
    assert not (idx == np.arange(len(x))[:, None]).any()
    rd, ri = brute_force(x, x, 6, exclude=np.eye(len(x), dtype=bool))
    if factory == "Flat":
        np.testing.assert_array_equal(idx, ri)
        np.testing.assert_allclose(dist, rd, rtol=1e-5, atol=1e-5)
    else:
        assert S.recall_at_k(idx, ri) >= 0.95


@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat"])
def test_exclude_duplicate_hashes(factory):
    rng = np.random.default_rng(6)
    uniq = rng.standard_normal((500, 6)).astype(np.float32)
    # rows 0..99 get 1-3 extra exact copies each (same content hash)
    src = np.concatenate([np.arange(500), np.repeat(np.arange(100), rng.integers(1, 4, 100))])
    x = uniq[src]
    hashes = [f"h{s}" for s in src]
    dist, idx = S.knn(x, x, 5, index=factory, exclude_self=True, base_hashes=hashes)
    same = src[:, None] == src[None, :]
    assert not same[np.arange(len(x))[:, None], np.where(idx < 0, 0, idx)][idx >= 0].any()
    rd, ri = brute_force(x, x, 5, exclude=same)
    if factory == "Flat":
        np.testing.assert_allclose(dist, rd, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(idx, ri)
    else:
        assert S.recall_at_k(idx, ri) >= 0.95
    # without hashes the copies are the nearest neighbours (distance 0)
    d0, _ = S.knn(x, x, 1, index="Flat", exclude_self=True)
    assert (d0[:100] == 0).all() if factory == "Flat" else True


def test_cross_store_hash_exclusion():
    rng = np.random.default_rng(8)
    base = rng.standard_normal((300, 5)).astype(np.float32)
    q = np.concatenate([base[:20], rng.standard_normal((10, 5)).astype(np.float32)])
    bh = np.arange(300)
    qh = np.concatenate([np.arange(20), 1000 + np.arange(10)])
    dist, idx = S.knn(base, q, 4, base_hashes=bh, query_hashes=qh)
    excl = qh[:, None] == bh[None, :]
    rd, ri = brute_force(base, q, 4, exclude=excl)
    np.testing.assert_array_equal(idx, ri)
    np.testing.assert_allclose(dist, rd, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------- padding
def test_padding_when_k_exceeds_base():
    rng = np.random.default_rng(9)
    base = rng.standard_normal((4, 3)).astype(np.float32)
    q = rng.standard_normal((3, 3)).astype(np.float32)
    dist, idx = S.knn(base, q, 6)
    assert (idx[:, 4:] == -1).all() and np.isinf(dist[:, 4:]).all()
    rd, ri = brute_force(base, q, 6)
    np.testing.assert_array_equal(idx, ri)
    d2, i2 = S.knn(base, base, 6, exclude_self=True)
    assert (i2[:, 3:] == -1).all() and np.isinf(d2[:, 3:]).all()
    assert np.isfinite(d2[:, :3]).all()


def test_single_vector_self_search_all_padding():
    x = np.ones((1, 4), np.float32)
    dist, idx = S.knn(x, x, 2, exclude_self=True)
    assert (idx == -1).all() and np.isinf(dist).all()


# ----------------------------------------------------------------- streaming / parquet
@pytest.mark.parametrize("factory", ["Flat", "IVF32,Flat"])
def test_stream_equals_one_shot(clustered, factory):
    x = clustered[:2500]
    q = clustered[3000:3333]
    d_all, i_all = S.knn(x, q, 8, index=factory, batch_size=100_000)
    batches = list(S.knn_stream(x, q, 8, index=factory, batch_size=50))
    assert [b.start for b in batches] == list(range(0, 333, 50))
    assert all(b.idx.shape[0] <= 50 for b in batches)
    np.testing.assert_array_equal(np.concatenate([b.idx for b in batches]), i_all)
    np.testing.assert_array_equal(np.concatenate([b.dist for b in batches]), d_all)


def test_stream_validates_eagerly():
    with pytest.raises(ImprintError):
        S.knn_stream(np.zeros((5, 3), np.float32), np.zeros((5, 4), np.float32), 2)


def test_knn_to_parquet_roundtrip(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    rng = np.random.default_rng(10)
    base = rng.standard_normal((50, 6)).astype(np.float32)
    out = tmp_path / "nn.parquet"
    res = S.knn_to_parquet(out, base, base, 60, exclude_self=True, batch_size=16)
    dist, idx = S.knn(base, base, 60, exclude_self=True)
    t = pq.read_table(out)
    assert t.column_names == ["query_id", "neighbor_id", "rank", "distance"]
    assert res["rows"] == t.num_rows == 50 * 49  # padding rows dropped
    qid = t["query_id"].to_numpy()
    nid = t["neighbor_id"].to_numpy()
    rank = t["rank"].to_numpy()
    dd = t["distance"].to_numpy()
    np.testing.assert_array_equal(nid, idx[qid, rank - 1])
    np.testing.assert_array_equal(dd, dist[qid, rank - 1])
    assert rank.min() == 1 and rank.max() == 49
    assert [p.name for p in tmp_path.iterdir()] == ["nn.parquet"]  # no temp file left
    assert b"imprint.knn" in t.schema.metadata


def test_knn_to_parquet_ids_and_failure_leaves_nothing(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    rng = np.random.default_rng(11)
    base = rng.standard_normal((30, 4)).astype(np.float32)
    q = rng.standard_normal((7, 4)).astype(np.float32)
    out = tmp_path / "ids.parquet"
    S.knn_to_parquet(out, base, q, 3, query_ids=np.arange(7) + 100, base_ids=np.arange(30) * 2,
                     keep_padding=True)
    _, idx = S.knn(base, q, 3)
    t = pq.read_table(out)
    np.testing.assert_array_equal(t["query_id"].to_numpy(), np.repeat(np.arange(7) + 100, 3))
    np.testing.assert_array_equal(t["neighbor_id"].to_numpy(), (idx * 2).reshape(-1))
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ImprintError):
        S.knn_to_parquet(tmp_path / "bad.parquet", base, q, 3, query_ids=np.arange(3))
    with pytest.raises(ImprintError):
        S.knn_to_parquet(tmp_path / "bad.parquet", base, q[:, :2], 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# ----------------------------------------------------------------- validation
@pytest.mark.parametrize("kwargs", [
    dict(k=0), dict(k=-1), dict(k=True), dict(k=2.5), dict(metric="ip"), dict(batch_size=0),
    dict(index="NotAnIndex"), dict(index=""), dict(use_gpu="yes"), dict(nprobe=0),
    dict(target_recall=1.5),
])
def test_bad_arguments(small, kwargs):
    base, q = small
    args = dict(k=3)
    args.update(kwargs)
    k = args.pop("k")
    with pytest.raises(ImprintError):
        S.knn(base, q, k, **args)


@pytest.mark.parametrize("case", ["dims", "nan_base", "nan_query", "inf", "1d", "strings", "self_len",
                                  "hash_len", "qhash_only", "qhash_needed", "ivf_too_small"])
def test_bad_inputs(small, case):
    base, q = small
    base = base.copy()
    q = q.copy()
    kw = {}
    if case == "dims":
        q = q[:, :5]
    elif case == "nan_base":
        base[3, 2] = np.nan
    elif case == "nan_query":
        q[0, 0] = np.nan
    elif case == "inf":
        q[1, 1] = np.inf
    elif case == "1d":
        q = q[0]
    elif case == "strings":
        q = np.array([["a"] * 12])
    elif case == "self_len":
        kw = dict(exclude_self=True)
    elif case == "hash_len":
        kw = dict(exclude_self=True, base_hashes=list(range(10)))
        q = base
    elif case == "qhash_only":
        kw = dict(query_hashes=list(range(len(q))))
    elif case == "qhash_needed":
        kw = dict(base_hashes=list(range(len(base))))
    elif case == "ivf_too_small":
        kw = dict(index="IVF1024,Flat")
    with pytest.raises(ImprintError):
        S.knn(base, q, 3, **kw)


def test_use_gpu_true_without_gpu(small):
    if faiss.get_num_gpus() > 0:
        pytest.skip("a GPU is present")
    base, q = small
    with pytest.raises(ImprintError):
        S.knn(base, q, 3, use_gpu=True)
    d, i = S.knn(base, q, 3, use_gpu=False)
    assert d.shape == (37, 3)


def test_error_message_is_one_line(small):
    base, q = small
    with pytest.raises(ImprintError) as ei:
        S.knn(base, q, 3, index="NotAnIndex")
    assert "\n" not in str(ei.value)


# ----------------------------------------------------------------- auto choice / cost model
def test_choose_index_rules():
    assert S.choose_index(10_000, 128) == "Flat"
    assert S.choose_index(1_000_000, 128, n_queries=1000) == "Flat"  # brute force is cheap
    f = S.choose_index(1_000_000, 128)
    assert f == f"IVF{round(4 * 1000)},Flat"
    assert S.choose_index(1_000_000, 128, memory_budget=200e6).endswith(",SQ8")
    pq_f = S.choose_index(1_000_000, 128, memory_budget=40e6)
    assert ",PQ" in pq_f and 1_000_000 * int(pq_f.split("PQ")[1]) <= 40e6


def test_threads_respected(small, monkeypatch):
    base, q = small
    monkeypatch.setenv("IMPRINT_THREADS", "1")
    S.knn(base, q, 2)
    assert faiss.omp_get_max_threads() == 1
    monkeypatch.delenv("IMPRINT_THREADS")
    with pytest.raises(ImprintError):
        S.knn(base, q, 2, n_threads=0)
    S.knn(base, q, 2, n_threads=2)
    assert faiss.omp_get_max_threads() == 2


def test_cost_model_text():
    txt = S.cost_model_text()
    assert "IVF" in txt and "Flat" in txt and str(S.AUTO_MIN_M_APPROX)[:2] in txt


def test_exact_l2_kernel_matches_float64_reference():
    """The compiled exact re-ranking distances equal a float64 numpy computation (padding -> inf; float32 and
    float64 inputs; a duplicated base row gives an exact tie)."""
    from imprint.engine.search.exact import l2_pairs

    rng = np.random.default_rng(3)
    base = rng.normal(0, 1, (50, 300)).astype(np.float32)
    base[7] = base[3]
    q = rng.normal(0, 1, (9, 300)).astype(np.float32)
    idx = rng.integers(0, 50, (9, 6))
    idx[2, 5] = -1
    idx[4, :2] = [3, 7]
    for b, qq in ((base, q), (base.astype(np.float64), q)):
        got = l2_pairs(b, qq, idx)
        ref = ((b.astype(np.float64)[np.where(idx < 0, 0, idx)] - qq.astype(np.float64)[:, None]) ** 2).sum(2)
        ref[idx < 0] = np.inf
        np.testing.assert_allclose(got, ref, rtol=1e-12)
        assert np.isinf(got[2, 5]) and got[4, 0] == got[4, 1]


def test_exact_cosine_kernel_matches_float64_reference():
    """Compiled exact cosine distances (unit-norm queries) equal the float64 numpy formula, zero rows included."""
    from imprint.engine.search.exact import cosine_pairs

    rng = np.random.default_rng(4)
    base = rng.normal(0, 1, (40, 64)).astype(np.float32)
    base[9] = 0.0
    q = rng.normal(0, 1, (7, 64)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    idx = rng.integers(0, 40, (7, 5))
    idx[0, :2] = [9, -1]
    got = cosine_pairs(base, q, idx)
    b = base.astype(np.float64)[np.where(idx < 0, 0, idx)]
    nb = np.sqrt((b * b).sum(2))
    nb[nb == 0] = 1.0
    ref = np.clip(1.0 - (b * q.astype(np.float64)[:, None]).sum(2) / nb, 0.0, 2.0)
    ref[idx < 0] = np.inf
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-15)
    assert got[0, 0] == 1.0 and np.isinf(got[0, 1])
