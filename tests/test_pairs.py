"""`imprint pairs`: k-NN shortlist equals brute force; SSIM/MSE per pair equal scikit-image/numpy; batching
does not change the output."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from skimage.metrics import structural_similarity

from conftest import ct_like, save_png
from imprint.engine.backbone import embed
from imprint.engine.pairs import run_pairs
from imprint.engine.ingest import IngestPolicy


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = np.random.default_rng(11)
    d = tmp_path_factory.mktemp("pairs")
    (d / "real").mkdir(); (d / "gen").mkdir()
    real = ct_like(rng, 30)
    gen = ct_like(rng, 40)
    gen[:10] = np.clip(real[:10].astype(int) + rng.integers(-4, 5, real[:10].shape), 0, 255)
    for i, im in enumerate(real):
        save_png(d / "real" / f"{i:03d}.png", im)
    for i, im in enumerate(gen):
        save_png(d / "gen" / f"{i:03d}.png", im)
    return d, real, gen.astype(np.uint8)


def test_pairs_match_brute_force(data, tmp_path):
    d, real, gen = data
    out = tmp_path / "p.parquet"
    pol = IngestPolicy(size=(64, 64))
    s = run_pairs(real_dir=str(d / "real"), gen_dir=str(d / "gen"), k=4, out=str(out), policy=pol, batch=7)
    t = pq.read_table(out).to_pylist()
    assert s["n_pairs"] == 30 * 4 == len(t)
    rv = embed(real, "pixel").astype(np.float64)
    gv = embed(gen, "pixel").astype(np.float64)
    rv /= np.linalg.norm(rv, axis=1, keepdims=True); gv /= np.linalg.norm(gv, axis=1, keepdims=True)
    dist = 1 - rv @ gv.T
    for row in t:
        i, j = int(row["real"][:3]), int(row["generated"][:3])
        assert row["distance"] == pytest.approx(dist[i, j], abs=1e-4)
        nearest = np.sort(dist[i])[: 4]
        assert row["distance"] <= nearest[-1] + 1e-4
        ref = structural_similarity(real[i], gen[j], data_range=255, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False)
        assert abs(row["ssim"] - ref) <= 1e-6  # float32 output of a float64 value within 2e-8 of skimage's
        assert row["mse"] == np.float32(np.mean((real[i].astype(np.int64) - gen[j]) ** 2))  # exact, then float32
    # the same pairs as brute force: each real image's k generated partners are its k nearest (no ties here)
    got = {}
    for row in t:
        got.setdefault(int(row["real"][:3]), set()).add(int(row["generated"][:3]))
    assert got == {i: set(np.argsort(dist[i], kind="stable")[:4].tolist()) for i in range(30)}
    # integer ids: real_id indexes the sorted real files, generated_id the sorted generated images
    tab = pq.read_table(out)
    assert pa.types.is_dictionary(tab.schema.field("real").type)
    assert pa.types.is_dictionary(tab.schema.field("generated").type)
    for row in t:
        assert row["real"] == f"{row['real_id']:03d}.png" and row["generated"] == f"{row['generated_id']:03d}.png"
    # each path is stored once per row group, not once per pair
    assert all(len(c.dictionary) <= 7 for c in tab.column("real").chunks)
    # the noisy copies find their source first
    first = {int(r["real"][:3]): int(r["generated"][:3]) for r in t if r["rank"] == 0}
    assert all(first[i] == i for i in range(10))


def test_batching_does_not_change_output(data, tmp_path):
    d, _, _ = data
    pol = IngestPolicy(size=(64, 64))
    run_pairs(real_dir=str(d / "real"), gen_dir=str(d / "gen"), k=3, out=str(tmp_path / "a.parquet"), policy=pol, batch=1000)
    run_pairs(real_dir=str(d / "real"), gen_dir=str(d / "gen"), k=3, out=str(tmp_path / "b.parquet"), policy=pol, batch=4)
    a = pq.read_table(tmp_path / "a.parquet"); b = pq.read_table(tmp_path / "b.parquet")
    assert a.num_rows == b.num_rows == 30 * 3
    assert a.to_pylist() == b.to_pylist()  # per-row-group dictionaries differ; the decoded rows may not


def test_resume_from_committed_batches(data, tmp_path):
    """A run killed after some batches resumes from them and produces the uninterrupted output."""
    import imprint.engine.pairs as P

    d, _, _ = data
    pol = IngestPolicy(size=(64, 64))
    run_pairs(real_dir=str(d / "real"), gen_dir=str(d / "gen"), k=3, out=str(tmp_path / "ref.parquet"), policy=pol,
              batch=4)
    calls = {"n": 0}

    import imprint.engine.backbone as B
    orig = B.embed

    def dying_embed(images, bb, **kw):
        calls["n"] += 1
        if calls["n"] == 4:  # the generated set, then three real batches succeed
            raise KeyboardInterrupt
        return orig(images, bb, **kw)

    B.embed = dying_embed
    try:
        with pytest.raises(KeyboardInterrupt):
            run_pairs(real_dir=str(d / "real"), gen_dir=str(d / "gen"), k=3, out=str(tmp_path / "o.parquet"),
                      policy=pol, batch=4)
    finally:
        B.embed = orig
    assert not (tmp_path / "o.parquet").exists()
    parts = sorted((tmp_path / ".o.parquet.parts").glob("part-*.parquet"))
    assert len(parts) == 2
    s = run_pairs(real_dir=str(d / "real"), gen_dir=str(d / "gen"), k=3, out=str(tmp_path / "o.parquet"),
                  policy=pol, batch=4)
    assert s["resumed_batches"] == 2
    assert pq.read_table(tmp_path / "o.parquet").equals(pq.read_table(tmp_path / "ref.parquet"))
    assert not (tmp_path / ".o.parquet.parts").exists()
    # a different job (other k) does not reuse the parts
    s2 = run_pairs(real_dir=str(d / "real"), gen_dir=str(d / "gen"), k=2, out=str(tmp_path / "o.parquet"),
                   policy=pol, batch=4)
    assert s2["resumed_batches"] == 0 and s2["n_pairs"] == 60


def test_store_dir_reuses_embeddings_with_identical_output(data, tmp_path):
    d, _, _ = data
    pol = IngestPolicy(size=(64, 64))
    run_pairs(real_dir=str(d / "real"), gen_dir=str(d / "gen"), k=3, out=str(tmp_path / "a.parquet"), policy=pol)
    s1 = run_pairs(real_dir=str(d / "real"), gen_dir=str(d / "gen"), k=3, out=str(tmp_path / "b.parquet"),
                   policy=pol, store_dir=str(tmp_path / "stores"), batch=8)
    assert pq.read_table(tmp_path / "b.parquet").to_pylist() == pq.read_table(tmp_path / "a.parquet").to_pylist()
    from imprint.engine.store import EmbeddingStore

    assert len(EmbeddingStore.open(tmp_path / "stores" / "real")) == 30
    assert len(EmbeddingStore.open(tmp_path / "stores" / "generated")) == 40
    # second run: nothing new to embed (no new shard is written), same output
    before = sorted(p.name for p in (tmp_path / "stores").rglob("shard-*.arrow"))
    s2 = run_pairs(real_dir=str(d / "real"), gen_dir=str(d / "gen"), k=3, out=str(tmp_path / "c.parquet"),
                   policy=pol, store_dir=str(tmp_path / "stores"))
    assert pq.read_table(tmp_path / "c.parquet").to_pylist() == pq.read_table(tmp_path / "a.parquet").to_pylist()
    assert sorted(p.name for p in (tmp_path / "stores").rglob("shard-*.arrow")) == before
