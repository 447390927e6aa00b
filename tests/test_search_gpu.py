"""The FAISS GPU code paths of engine.search, exercised with CPU FAISS and fakes where no GPU is present.

Each fix of issue 14 is planted and checked: a sharded index filled in chunks (fails in FAISS) is filled with one
add; a k above the GPU limit (made small here) is served completely from a CPU copy, never truncated; nprobe is
capped at the GPU limit; IVF-PQ code sizes are ones GPU IVF-PQ accepts; one resources object per GPU per
process; float16 storage.
"""

from __future__ import annotations

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

import imprint.engine.search as S  # noqa: E402
from imprint.engine.errors import ImprintError  # noqa: E402
from imprint.engine.search import gpu as G  # noqa: E402
from imprint.engine.search import stream as ST  # noqa: E402
from imprint.engine.search import tune as TU  # noqa: E402


def _brute(base, q, k):
    d = ((q[:, None, :].astype(np.float64) - base[None].astype(np.float64)) ** 2).sum(-1)
    idx = np.lexsort((np.broadcast_to(np.arange(base.shape[0]), d.shape), d), axis=1)[:, :k]
    return np.take_along_axis(d, idx, 1), idx


@pytest.fixture
def data():
    rng = np.random.default_rng(3)
    return rng.normal(size=(600, 16)).astype(np.float32), rng.normal(size=(40, 16)).astype(np.float32)


class FakeGpuIndex:
    """Stands for a GPU index: forwards to a CPU index, records every k and nprobe, enforces the GPU limits."""

    def __init__(self, inner):
        self.inner = inner
        self.ks = []

    def __getattr__(self, name):  # d, ntotal, metric_type, is_trained ...
        return getattr(self.inner, name)

    def add(self, x):
        self.inner.add(x)

    def search(self, q, k):
        self.ks.append(k)
        assert k <= G.GPU_MAX_K, f"GPU search with k={k} above the limit {G.GPU_MAX_K}"
        return self.inner.search(q, k)


@pytest.fixture
def fake_gpu(monkeypatch):
    """Route index placement to FakeGpuIndex; nprobe goes through a recording ParameterSpace."""
    made = []
    copies = []
    nprobes = []

    def to_gpu(cpu, float16=False, n_gpus=None):
        made.append(FakeGpuIndex(cpu))
        return made[-1]

    def cpu_copy(index):
        copies.append(index)
        return index.inner

    def set_param(index, name, value, on_gpu):
        if on_gpu and name == "nprobe":
            assert value <= G.GPU_MAX_NPROBE
            nprobes.append(value)
        faiss.ParameterSpace().set_index_parameter(getattr(index, "inner", index), name, int(value))

    monkeypatch.setattr(G, "_resolve_gpu", lambda use_gpu: True)
    monkeypatch.setattr(G, "to_gpu", to_gpu)
    monkeypatch.setattr(G, "cpu_copy", cpu_copy)
    monkeypatch.setattr(TU, "_set_param", set_param)
    monkeypatch.setattr(ST, "_set_param", set_param)
    return {"made": made, "copies": copies, "nprobes": nprobes}


def test_sharded_index_gets_one_add(data):
    base, q = data
    shards = faiss.IndexShards(16, True, True)  # successive ids, as index_cpu_to_all_gpus(shard=True)
    subs = [faiss.IndexFlatL2(16) for _ in range(3)]
    for s in subs:
        shards.add_shard(s)
    # the bug: FAISS refuses a second add() on a sharded index with successive ids
    shards.add(base[:100])
    with pytest.raises(RuntimeError):
        shards.add(base[100:])
    shards.reset()
    for s in subs:
        s.reset()
    assert G.is_sharded(shards)
    G.fill(shards, base, chunk=64)  # one add, although chunk < M
    assert shards.ntotal == base.shape[0] and sum(s.ntotal for s in subs) == base.shape[0]
    _, idx = shards.search(q, 5)
    np.testing.assert_array_equal(idx, _brute(base, q, 5)[1])
    flat = faiss.IndexFlatL2(16)
    assert not G.is_sharded(flat)
    G.fill(flat, base, chunk=64)
    assert flat.ntotal == base.shape[0]


def test_k_above_gpu_limit_is_complete_not_truncated(data, fake_gpu, monkeypatch):
    base, q = data
    monkeypatch.setattr(G, "GPU_MAX_K", 8)
    dist, idx, info = S.knn(base, q, 20, index="Flat", return_info=True)
    ref_d, ref_i = _brute(base, q, 20)
    assert (idx >= 0).all() and np.isfinite(dist).all()
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_allclose(dist, ref_d, rtol=1e-6)
    gpu = fake_gpu["made"][-1]
    assert info["on_gpu"] and len(fake_gpu["copies"]) == 1
    assert gpu.ks == []  # every k=20 search went to the CPU copy
    assert "CPU copy" in info["k_over_gpu_limit"]
    # within the limit the "GPU" index itself serves the search
    prep = S._prepare(base, "l2", "Flat", True, 0, None, S.DEFAULT_MEMORY_BUDGET, 0.95, None, 5)
    _, i5 = S._search_block(prep, q, 5)
    np.testing.assert_array_equal(i5, ref_i[:, :5])
    assert prep.cpu_copy is None and fake_gpu["made"][-1].ks == [5]
    # exclude_self asks for k+1: still complete
    _, iself = S.knn(base, base[:30], 9, index="Flat", exclude_self=False)
    np.testing.assert_array_equal(iself, _brute(base, base[:30], 9)[1])


@pytest.mark.filterwarnings("ignore:index 'IVF64,Flat'")
def test_nprobe_capped_on_gpu(fake_gpu, monkeypatch):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(4000, 8)).astype(np.float32)
    monkeypatch.setattr(G, "GPU_MAX_NPROBE", 4)
    _, _, info = S.knn(x, x[:200], 10, index="IVF64,Flat", return_info=True, target_recall=1.0)
    assert fake_gpu["nprobes"] and max(fake_gpu["nprobes"]) == 4
    assert max(p for p, _ in info["calibration"]["curve"]) <= 4
    _, _, info = S.knn(x, x[:50], 10, index="IVF64,Flat", nprobe=32, return_info=True)
    assert info["nprobe"] == 4 and info["nprobe_capped_from"] == 32
    # the candidate lists themselves
    assert max(G.nprobe_candidates(65536, True)) == 4
    monkeypatch.setattr(G, "GPU_MAX_NPROBE", 2048)
    assert max(G.nprobe_candidates(65536, True)) == 2048
    cpu = G.nprobe_candidates(65536, False)
    assert 4096 in cpu and cpu[-1] == 65536
    assert G.nprobe_candidates(100, True)[-1] == 100


def test_ivfpq_code_size_gpu_compatible(fake_gpu):
    for d in (64, 128, 256, 512, 1280, 1024, 96):
        for budget in (1e6, 1e8, 1e12):
            m = S._pq_m(d, 1_000_000, budget, gpu=True)
            assert G.pq_m_ok(m, d), (d, budget, m)
            assert d % m == 0 and (d // m) in G.GPU_PQ_SUBDIM
    assert S._pq_m(256, 1000, 1e12) == 128  # the CPU still goes to d/2
    assert S._pq_m(256, 1000, 1e12, gpu=True) == 32
    assert not G.pq_ok("IVF1024,PQ128", 256)[0]
    assert G.pq_ok("IVF1024,PQ32", 256)[0] and G.pq_ok("IVF1024,Flat", 256)[0]
    f = S.choose_index(10_000_000, 256, memory_budget=2e8, gpu=True)
    assert f.startswith("IVF") and G.pq_ok(f, 256)[0], f
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2000, 40)).astype(np.float32)
    # an IVF-PQ the GPU rejects: an error when the GPU is required, the CPU (with the reason) under auto
    with pytest.raises(ImprintError, match="GPU IVF-PQ"):
        S.build_index(x, index="IVF16,PQ10x4", use_gpu=True)
    _, info = S.build_index(x, index="IVF16,PQ10x4", use_gpu="auto", return_info=True)
    assert not info["on_gpu"] and "GPU IVF-PQ" in info["cpu_because"]


def test_one_gpu_resources_object_per_process(monkeypatch):
    made = []

    class FakeRes:
        def __init__(self):
            made.append(self)

    monkeypatch.setattr(faiss, "StandardGpuResources", FakeRes, raising=False)
    monkeypatch.setattr(G, "_gpu_count", lambda: 2)
    monkeypatch.setattr(G, "_RESOURCES", [])
    a = G.resources()
    b = G.resources()
    c = G.resources(1)
    assert len(made) == 2 and a == b and c == a[:1]
    from imprint.engine.device import gpu_resources

    assert gpu_resources() is a[0] and len(made) == 2  # the device trial shares the same object

    class FakeCo:
        shard = None
        useFloat16 = None

    monkeypatch.setattr(faiss, "GpuMultipleClonerOptions", FakeCo, raising=False)
    co = G.cloner_options(True, shard=True)
    assert co.useFloat16 is True and co.shard is True
    assert G.cloner_options(False, shard=False).useFloat16 is False


def test_float16_storage_cpu_is_sqfp16_and_exact_after_rerank(data):
    base, q = data
    dist, idx, info = S.knn(base, q, 10, index="Flat", float16=True, return_info=True)
    assert info["factory"] == "SQfp16" and info["float16"] is True
    ref_d, ref_i = _brute(base, q, 10)
    assert S.recall_at_k(idx, ref_i) >= 0.99
    np.testing.assert_allclose(dist, ref_d, rtol=1e-6)  # exact float64 distances of the returned rows
    _, info = S.build_index(base, index="IVF8,Flat", float16=True, return_info=True)
    assert info["factory"] == "IVF8,SQfp16"
