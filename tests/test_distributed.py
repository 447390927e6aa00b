"""Executors (engine.executors): the Ray executor gives the same results as the local executor, a worker crash
during embedding loses or duplicates no row, and executors are passed explicitly (no module-level swapping).

The Ray tests start a real two-node Ray cluster on 127.0.0.1 (a head plus one worker node, one CPU and 100 MB of
object store each) once for the module, and skip cleanly when Ray is not installed.
"""
import csv
import os
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import ct_like, save_png
from imprint.engine.executors import LOCAL, LocalExecutor, check_executor, merge_topk, open_executor, resolve_executor
from imprint.engine.errors import ImprintError
from imprint.engine.ingest import IngestPolicy

POL = IngestPolicy(size=(64, 64))


# ---------------------------------------------------------------------------------------------- no Ray needed
def _brute(base, q, k, exclude_self=False):
    d = ((q[:, None, :].astype(np.float64) - base[None].astype(np.float64)) ** 2).sum(-1)
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    order = np.lexsort((np.broadcast_to(np.arange(base.shape[0]), d.shape), d), axis=-1)[:, :k]
    return np.take_along_axis(d, order, 1), order


@pytest.mark.parametrize("exclude_self", [False, True])
def test_merge_topk_equals_brute_force(exclude_self):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 4, (60, 3)).astype(np.float32)  # many exact ties: order must be (dist, index)
    q = base if exclude_self else rng.integers(0, 4, (25, 3)).astype(np.float32)
    k = 6
    bounds = [0, 17, 18, 44, 60]
    dists, idxs = [], []
    for a, b in zip(bounds[:-1], bounds[1:]):
        d, i = _brute(base[a:b], q, base[a:b].shape[0])  # every row of the shard, sorted
        kk = min(k + 1, b - a)
        dists.append(d[:, :kk]); idxs.append(i[:, :kk] + a)
    rows = np.arange(q.shape[0]) if exclude_self else None
    d, i = merge_topk(dists, idxs, k, exclude_rows=rows)
    d0, i0 = _brute(base, q, k, exclude_self=exclude_self)
    np.testing.assert_array_equal(i, i0)
    np.testing.assert_array_equal(d, d0)


def test_merge_topk_select_keeps_the_candidates_of_the_selection_scores():
    # shard 0 offers rows 0, 1; shard 1 offers row 7. Exact order: 7 < 1 < 0; selection order: 0 < 1 < 7.
    d = [np.array([[3.0, 2.0]]), np.array([[1.0]])]
    i = [np.array([[0, 1]]), np.array([[7]])]
    sel = [np.array([[0.1, 0.2]]), np.array([[0.3]])]
    dd, ii = merge_topk(d, i, 2, select=sel, n_select=2)   # keep {0, 1} by selection, order them exactly
    assert ii.tolist() == [[1, 0]] and dd.tolist() == [[2.0, 3.0]]
    assert merge_topk(d, i, 2)[1].tolist() == [[7, 1]]     # without selection: exact global top-2


def test_merge_topk_pads_short_lists():
    d, i = merge_topk([np.array([[1.0, np.inf]])], [np.array([[4, -1]])], 3)
    assert i.tolist() == [[4, -1, -1]] and d[0, 0] == 1.0 and np.isinf(d[0, 1:]).all()


def test_check_executor_validates():
    assert check_executor("local") == "local"
    with pytest.raises(ImprintError, match="--executor"):
        check_executor("spark")
    with pytest.raises(ImprintError, match="--address needs --executor ray"):
        check_executor("local", "127.0.0.1:6379")


def test_resolve_executor_names_objects_and_ownership():
    assert resolve_executor(None) == (LOCAL, False) and resolve_executor("local") == (LOCAL, False)
    mine = LocalExecutor()
    assert resolve_executor(mine) == (mine, False)  # an object passed in stays its owner's
    assert check_executor(mine) == "local"
    with pytest.raises(ImprintError, match="executor must be"):
        resolve_executor(3)
    with open_executor("local") as ex:
        assert ex is LOCAL


def test_no_process_global_executor_scope():
    import imprint.engine.distributed as D  # the compatibility shim keeps the data names only
    import imprint.engine.executors as E

    for mod in (D, E):
        for name in ("executor_scope", "_install", "_uninstall", "_ORIGINALS"):
            assert not hasattr(mod, name), (mod.__name__, name)
    assert D.merge_topk is merge_topk and D.check_executor is check_executor


def test_local_executor_is_the_library():
    import imprint.kernels as kernels
    from imprint.engine import features as F
    from imprint.engine.search import knn

    rng = np.random.default_rng(4)
    base = rng.normal(size=(50, 8)).astype(np.float32)
    q = rng.normal(size=(9, 8)).astype(np.float32)
    for a, b in zip(LOCAL.knn(base, q, 4, metric="cosine"), knn(base, q, 4, metric="cosine")):
        np.testing.assert_array_equal(a, b)
    A = ct_like(rng, 6)
    pairs = np.array([[0, 1], [2, 3], [5, 5]], np.int64)
    np.testing.assert_array_equal(LOCAL.ssim_pairs(A, A, pairs), kernels.ssim_pairs(A, A, pairs))
    np.testing.assert_array_equal(LOCAL.mse_pairs(A, A, pairs), kernels.mse_pairs(A, A, pairs))
    f0, n0 = F.extract(A, ("hist", "lbp"))
    f1, n1 = LOCAL.extract_features(A, ("hist", "lbp"))
    assert n1 == n0
    np.testing.assert_array_equal(f1, f0)


def test_missing_ray_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ImprintError, match=r"pip install 'imprint\[distributed\]'"):
        check_executor("ray")


# ---------------------------------------------------------------------------------------------- the cluster
@pytest.fixture(scope="module")
def cluster():
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only (set before Ray starts)
    ray = pytest.importorskip("ray")
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    ray_constants.ENABLE_RAY_CLUSTER = False
    node = {"num_cpus": 1, "object_store_memory": 100 * 1024**2, "node_ip_address": "127.0.0.1"}
    c = Cluster(initialize_head=True,
                head_node_args={**node, "include_dashboard": False, "dashboard_host": "127.0.0.1"})
    try:
        c.add_node(**node)
        c.wait_for_nodes()
        ray.init(address=c.address, log_to_driver=False, configure_logging=False)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture(scope="class")
def ex(cluster):
    """One started RayExecutor for the executor tests of :class:`TestStartedExecutor` (its actors start once: each
    start imports imprint in both workers).  Closed when the class ends: its actors hold every CPU slot of the
    cluster, which the executors the tests below open need.  Opening and closing executors is exercised there."""
    from imprint.engine.executors import RayExecutor

    e = RayExecutor()  # uses the connection of the test process
    e.start()
    try:
        yield e
    finally:
        e.close()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    rng = np.random.default_rng(5)
    d = tmp_path_factory.mktemp("dist")
    real = ct_like(rng, 36)
    gen = ct_like(rng, 44)
    gen[:8] = np.clip(real[:8].astype(int) + rng.integers(-3, 4, real[:8].shape), 0, 255)  # memorised
    for sub, arr in (("real", real), ("gen", gen)):
        (d / sub).mkdir()
        for i, im in enumerate(arr):
            save_png(d / sub / f"{i:03d}.png", im)
    return d, real, gen.astype(np.uint8)


class TestStartedExecutor:
    """The executor's operations on one started RayExecutor (the class-scoped ``ex``)."""

    def test_cluster_has_two_nodes_and_workers_spread(self, ex, cluster):
        import ray

        pids = ray.get([a.pid.remote() for a in ex.workers()])
        assert ex.num_workers == 2 and len(set(pids)) == 2

    @pytest.mark.parametrize("metric", ["l2", "cosine"])
    def test_knn_equals_local(self, ex, metric):
        from imprint.engine.search import knn

        rng = np.random.default_rng(1)
        base = rng.normal(size=(501, 24)).astype(np.float32)
        q = rng.normal(size=(130, 24)).astype(np.float32)
        d0, i0 = knn(base, q, 9, metric=metric, index="Flat")
        d1, i1 = ex.knn(base, q, 9, metric=metric, index="Flat", batch_size=47)  # several query blocks
        np.testing.assert_array_equal(i1, i0)
        np.testing.assert_array_equal(d1, d0)
        d0, i0 = knn(base, base, 5, metric=metric, index="Flat", exclude_self=True)
        d1, i1 = ex.knn(base, base, 5, metric=metric, index="auto", exclude_self=True, batch_size=200)
        np.testing.assert_array_equal(i1, i0)
        np.testing.assert_array_equal(d1, d0)
        h = ex.build_index(base, metric=metric, index="Flat")
        assert h.info["shards"] == 2
        d1, i1 = ex.knn(base, q[:7], 3, metric=metric, index=h)
        np.testing.assert_array_equal(i1, knn(base, q[:7], 3, metric=metric, index="Flat")[1])

    def test_pair_kernels_and_features_equal_local(self, ex):
        import imprint.kernels as kernels
        from imprint.engine import features as F

        rng = np.random.default_rng(2)
        A = ct_like(rng, 20); B = ct_like(rng, 15)
        pairs = np.stack([rng.integers(0, 20, 300), rng.integers(0, 15, 300)], 1).astype(np.int64)
        chunk, ex.pairs_chunk = ex.pairs_chunk, 64  # several chunks (the executor is the class's: restored below)
        try:
            np.testing.assert_array_equal(ex.ssim_pairs(A, B, pairs), kernels.ssim_pairs(A, B, pairs))
            np.testing.assert_array_equal(ex.mse_pairs(A, B, pairs), kernels.mse_pairs(A, B, pairs))
        finally:
            ex.pairs_chunk = chunk
        f0, n0 = F.extract(A, ("hist", "resid", "lbp"), batch=4)
        f1, n1 = ex.extract_features(A, ("hist", "resid", "lbp"), batch=4)
        assert n1 == n0
        np.testing.assert_array_equal(f1, f0)


def _csv(path):
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def test_pairs_membership_attribution_equal_local(cluster, folders, tmp_path):
    from imprint.engine.pairs import run_pairs
    from imprint.engine.pipeline import run_attribution, run_membership

    d, real, gen = folders
    out = {}
    for exe in ("local", "ray"):
        kw = {"executor": exe}
        run_pairs(real_dir=str(d / "real"), gen_dir=str(d / "gen"), k=3, out=str(tmp_path / f"p-{exe}.parquet"),
                  policy=POL, batch=10, **kw)
        run_membership(gen_dir=str(d / "gen"), real_dir=str(d / "real"), out=str(tmp_path / f"m-{exe}.csv"),
                       policy=POL, seed=3, **kw)
        run_attribution(images_dir=str(d / "gen"), k=2, out=str(tmp_path / f"a-{exe}.csv"), policy=POL, seed=3,
                        **kw)
        out[exe] = (pq.read_table(tmp_path / f"p-{exe}.parquet"), _csv(tmp_path / f"m-{exe}.csv"),
                    _csv(tmp_path / f"m-{exe}.evidence.csv"), _csv(tmp_path / f"a-{exe}.csv"))
    (p0, m0, e0, a0), (p1, m1, e1, a1) = out["local"], out["ray"]
    assert p0.num_rows == 36 * 3 and p1.equals(p0)
    assert len(m0) == 37 and m1 == m0 and e1 == e0  # scores, decisions and every piece of evidence
    assert len(a0) == 45 and a1 == a0

    # the Python API with a RayExecutor object: the same values; the object stays open for its owner
    import imprint
    from imprint.engine.executors import RayExecutor

    with RayExecutor() as ex:
        audit = imprint.audit_membership(d / "gen", d / "real", size=64, seed=3, executor=ex)
        assert ex._ray is not None
        groups = imprint.attribute(gen, 2, seed=3, executor=ex)
    assert [[r["image"], repr(r["score"]), str(r["used"])] for r in audit.table.to_pylist()] == m0[1:]
    assert groups.table.column("cluster").to_pylist() == [int(r[1]) for r in a0[1:]]


def _store_rows(store):
    from imprint.engine.store import EmbeddingStore

    v = EmbeddingStore.open(store).read()
    return v.paths, v.hashes, np.array(v.vectors)


def test_embed_ray_equals_local_and_resumes(cluster, folders, tmp_path):
    from imprint.engine.pipeline import run_embed

    d, _, _ = folders
    s0 = run_embed(folder=str(d / "gen"), store=str(tmp_path / "s0"), policy=POL, shard_size=16)
    s1 = run_embed(folder=str(d / "gen"), store=str(tmp_path / "s1"), policy=POL, shard_size=16, executor="ray")
    assert s0["n_embedded"] == s1["n_embedded"] == 44
    p0, h0, v0 = _store_rows(tmp_path / "s0")
    p1, h1, v1 = _store_rows(tmp_path / "s1")
    assert p1 == p0 and h1 == h0
    np.testing.assert_array_equal(v1, v0)
    again = run_embed(folder=str(d / "gen"), store=str(tmp_path / "s1"), policy=POL, executor="ray")
    assert again["n_embedded"] == 0 and again["rows"] == 44


def test_worker_killed_during_embedding_loses_and_duplicates_nothing(cluster, folders, tmp_path):
    from imprint.engine.backbone import embed
    from imprint.engine.ingest import discover
    from imprint.engine.store import EmbeddingStore

    d, _, gen = folders
    flag = tmp_path / "crash-once"
    flag.write_text("x")
    rel, _ = discover(d / "gen")
    st = EmbeddingStore.open_or_create(tmp_path / "store", backbone={"name": "pixel", "version": "t", "sha256": "t"},
                                       dim=1024)
    n_shards = 0
    with open_executor("ray", _crash_once=str(flag)) as ex:
        for vec, paths, hashes in ex.embed_files(str(d / "gen"), rel, "pixel", shard_size=6, policy=POL):
            st.append(paths, hashes, vec)  # the driver is the single commit point
            n_shards += 1
    assert not flag.exists(), "no worker process was killed"
    assert n_shards == 8  # ceil(44 / 6)
    paths, _, vecs = _store_rows(tmp_path / "store")
    assert len(paths) == len(set(paths)) == 44 and sorted(paths) == sorted(rel)
    order = [rel.index(p) for p in paths]
    np.testing.assert_array_equal(vecs, embed(gen[order], "pixel"))


def test_gpu_workers_get_their_share_of_the_cores():
    from imprint.engine.executors.ray import worker_cpus

    assert worker_cpus({"CPU": 16, "GPU": 1}, 1.0, 1) == 16      # one GPU actor: the whole host
    assert worker_cpus({"CPU": 16, "GPU": 4}, 1.0, 1) == 4       # four GPU actors share the cores
    assert worker_cpus({"CPU": 16, "GPU": 2}, 0.5, 1) == 4       # two actors per GPU
    assert worker_cpus({"CPU": 2, "GPU": 4}, 1.0, 1) == 1        # never below cpus_per_worker
    assert worker_cpus({"CPU": 16}, 0.0, 2) == 2                 # CPU workers: as configured
