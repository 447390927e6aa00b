"""The Python API (imprint.audit_membership / imprint.attribute): the same values as the CLI's CSVs, folders or
arrays, explicit executors (two audits in one process on different executors), light import, one-line errors,
and the README's "Python API" example."""
import csv
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import imprint
from conftest import ct_like, save_png
from imprint.engine.cli import cli
from imprint.engine.errors import ImprintError
from imprint.engine.executors import LocalExecutor

ROOT = Path(__file__).resolve().parents[1]


def _cli(args):
    r = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A generator that memorised 6 of 18 real images (noisy copies), a labelled dev set built the same way, and
    generated images of three 'models' (plain, periodic up-sampling artefact, nearest-neighbour up-sampling)."""
    rng = np.random.default_rng(11)
    root = tmp_path_factory.mktemp("api")

    def generator(reals, n_used, n_gen):
        gen = ct_like(rng, n_gen)
        for i in range(0, n_gen, 3):
            src = reals[(i // 3) % n_used].astype(np.int16) + rng.integers(-3, 4, reals.shape[1:])
            gen[i] = np.clip(src, 0, 255).astype(np.uint8)
        return gen

    def write(folder, imgs):
        folder.mkdir(parents=True)
        for i, im in enumerate(imgs):
            save_png(folder / f"{i:03d}.png", im)

    real = ct_like(rng, 18)
    gen = generator(real, 6, 24)
    write(root / "gen", gen)
    write(root / "real", real)
    dreal = ct_like(rng, 12)
    dgen = generator(dreal, 6, 18)
    write(root / "dev" / "generated", dgen)
    write(root / "dev" / "real" / "used", dreal[:6])
    write(root / "dev" / "real" / "unused", dreal[6:])
    models = []
    for m in range(3):
        x = ct_like(rng, 10).astype(np.float32)
        if m == 1:
            x[:, ::2, ::2] += 12
        elif m == 2:
            x = np.repeat(np.repeat(x[:, ::2, ::2], 2, 1), 2, 2)
        models.append(np.clip(x, 0, 255).astype(np.uint8))
    att = np.concatenate(models)
    write(root / "att", att)
    return root, {"gen": gen, "real": real, "dgen": dgen, "dused": dreal[:6], "dunused": dreal[6:], "att": att}


# ---------------------------------------------------------------------------------------------- same as the CLI
def test_audit_membership_table_equals_the_cli_csv(data, tmp_path):
    root, arr = data
    out = tmp_path / "scores.csv"
    cli_summary = _cli(["membership", "--generated", str(root / "gen"), "--real", str(root / "real"),
                        "--dev", str(root / "dev"), "--out", str(out), "--size", "64", "--json"])
    audit = imprint.audit_membership(root / "gen", str(root / "real"), dev=[root / "dev"], size=64)

    rows = _rows(out)
    assert rows[0] == ["image", "score", "used"] and len(rows) == 19
    t = audit.table
    assert t.column_names == ["image", "score", "used"]
    assert t.column("image").to_pylist() == [r[0] for r in rows[1:]]
    assert t.column("score").to_pylist() == [float(r[1]) for r in rows[1:]]  # exact float equality
    assert t.column("used").to_pylist() == [int(r[2]) for r in rows[1:]]
    sc = [float(r[1]) for r in rows[1:]]  # the planted copies (000-005) score highest: the comparison is not vacuous
    assert min(sc[:6]) > max(sc[6:]), sc

    audit.to_csv(tmp_path / "api.csv")
    assert (tmp_path / "api.csv").read_bytes() == out.read_bytes()
    audit.evidence_to_csv(tmp_path / "api.evidence.csv")
    assert (tmp_path / "api.evidence.csv").read_bytes() == (tmp_path / "scores.evidence.csv").read_bytes()
    ev = audit.evidence_table
    assert ev.column_names == _rows(tmp_path / "scores.evidence.csv")[0]

    s = audit.summary
    assert set(s) == set(cli_summary)  # the --json summary's keys, paths None
    assert s["out"] is None and cli_summary["out"] == str(out) and s["executor"] == "local"
    for key in ("n_generated", "n_real", "n_flagged", "decision", "threshold", "n_reference", "n_dev_sets"):
        assert s[key] == cli_summary[key], key
    assert s["info"]["weights"] == cli_summary["info"]["weights"]

    # the same images as arrays (names 000000...) give the same values; dev as a mapping of arrays
    a = imprint.audit_membership(arr["gen"], arr["real"], size=64,
                                 dev=[{"generated": arr["dgen"], "used": arr["dused"], "unused": arr["dunused"]}])
    assert a.table.column("image").to_pylist() == [f"{i:06d}" for i in range(18)]
    assert a.table.column("score").to_pylist() == t.column("score").to_pylist()
    assert a.table.column("used").to_pylist() == t.column("used").to_pylist()


@pytest.mark.parametrize("decision", ["fdr:0.1", "f1"])
def test_every_decision_mode_is_the_clis(data, tmp_path, decision):
    """The API once rewrote 'fdr:Q' to 'fpr:Q' (a different rule with a different guarantee); every mode must
    reach the audit unchanged and decide exactly as the CLI does."""
    root, _ = data
    out = tmp_path / "scores.csv"
    cli_summary = _cli(["membership", "--generated", str(root / "gen"), "--real", str(root / "real"),
                        "--dev", str(root / "dev"), "--out", str(out), "--size", "64", "--decision", decision,
                        "--json"])
    audit = imprint.audit_membership(root / "gen", root / "real", dev=[root / "dev"], size=64, decision=decision)
    assert audit.summary["decision"] == cli_summary["decision"] == decision
    mode = decision.split(":")[0]
    assert mode in audit.summary["info"] and mode in cli_summary["info"]  # the rule that ran
    assert audit.table.column("used").to_pylist() == [int(r[2]) for r in _rows(out)[1:]]
    assert sum(audit.table.column("used").to_pylist()[:6]) >= 3  # planted copies are flagged: not vacuous


def test_attribute_table_equals_the_cli_csv(data, tmp_path):
    root, arr = data
    out = tmp_path / "clusters.csv"
    cli_summary = _cli(["attribute", "--images", str(root / "att"), "--k", "3", "--out", str(out), "--size", "64",
                        "--seed", "2", "--json"])
    res = imprint.attribute(root / "att", k=3, size=64, seed=2)
    rows = _rows(out)
    assert rows[0] == ["image", "cluster"] and len(rows) == 31
    assert res.table.column_names == ["image", "cluster"]
    assert res.table.column("image").to_pylist() == [r[0] for r in rows[1:]]
    assert res.table.column("cluster").to_pylist() == [int(r[1]) for r in rows[1:]]
    assert len(set(res.table.column("cluster").to_pylist())) == 3
    res.to_csv(tmp_path / "api.csv")
    assert (tmp_path / "api.csv").read_bytes() == out.read_bytes()
    res.details_to_csv(tmp_path / "api.details.csv")
    assert (tmp_path / "api.details.csv").read_bytes() == (tmp_path / "clusters.details.csv").read_bytes()
    assert res.details.column_names == ["image", "cluster", "confidence", "dev_model"]
    assert set(res.summary) == set(cli_summary) and res.summary["cluster_sizes"] == cli_summary["cluster_sizes"]

    b = imprint.attribute(arr["att"], 3, size=64, seed=2)  # arrays: same clusters, names 000000...
    assert b.table.column("cluster").to_pylist() == res.table.column("cluster").to_pylist()
    assert b.table.column("image").to_pylist()[:2] == ["000000", "000001"]


# ---------------------------------------------------------------------------------------------- executors
class Recording(LocalExecutor):
    """A local executor that records which stage ran on which thread."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def _rec(self, what):
        self.calls.append((what, threading.get_ident()))

    def knn(self, *a, **k):
        self._rec("knn")
        return super().knn(*a, **k)

    def ssim_pairs(self, *a, **k):
        self._rec("ssim_pairs")
        return super().ssim_pairs(*a, **k)

    def mse_pairs(self, *a, **k):
        self._rec("mse_pairs")
        return super().mse_pairs(*a, **k)

    def extract_features(self, *a, **k):
        self._rec("extract_features")
        return super().extract_features(*a, **k)


def test_two_audits_in_one_process_use_their_own_executors(data):
    import imprint.engine.search as S

    _, arr = data
    knn_before = S.knn
    ex1, ex2 = Recording(), Recording()
    out, idents = {}, {}

    def job(name, ex, gen):
        idents[name] = threading.get_ident()
        out[name] = imprint.audit_membership(gen, arr["real"], executor=ex)

    threads = [threading.Thread(target=job, args=("a", ex1, arr["gen"])),
               threading.Thread(target=job, args=("b", ex2, arr["dgen"]))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert set(out) == {"a", "b"}
    for ex, name in ((ex1, "a"), (ex2, "b")):
        stages = {w for w, _ in ex.calls}
        assert {"knn", "ssim_pairs", "mse_pairs"} <= stages          # every stage went through its executor
        assert {t for _, t in ex.calls} == {idents[name]}           # ... and only its own audit's calls
    assert S.knn is knn_before                                        # nothing was swapped at module level
    # the executor decides where, never what: the default (local) gives the same numbers
    ref = imprint.audit_membership(arr["gen"], arr["real"])
    assert ref.table.equals(out["a"].table)

    ex3 = Recording()
    r = imprint.attribute(arr["att"], 3, executor=ex3)
    # features of the images and of their re-processed sample (processing invariance), all through ex3
    assert {w for w, _ in ex3.calls} == {"extract_features"} and r.summary["executor"] == "local"
    assert r.table.equals(imprint.attribute(arr["att"], 3).table)


# ---------------------------------------------------------------------------------------------- contract
def test_import_imprint_is_light():
    code = ("import sys, imprint; heavy = [m for m in ('numpy', 'faiss', 'onnxruntime', 'numba', 'imprint.engine') "
            "if m in sys.modules]; print(heavy); assert callable(imprint.audit_membership); "
            "assert 'numpy' in sys.modules; print(sorted(n for n in ('audit_membership', 'attribute', "
            "'RayExecutor') if n in dir(imprint)))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0] == "[]"
    assert lines[1] == "['RayExecutor', 'attribute', 'audit_membership']"


@pytest.mark.parametrize("call, msg", [
    (lambda a: imprint.audit_membership(a["gen"].astype(np.float32), a["real"]), "uint8 array"),
    (lambda a: imprint.audit_membership(a["gen"][0], a["real"]), r"\[N, H, W\]"),
    (lambda a: imprint.audit_membership("/nonexistent/imprint-gen", a["real"]), "generated: folder not found"),
    (lambda a: imprint.audit_membership(a["gen"], a["real"], dev=[{"generated": a["dgen"]}]), "missing used, unused"),
    (lambda a: imprint.audit_membership(a["gen"], a["real"], decision="fpr:2"), "decision"),
    (lambda a: imprint.audit_membership(a["gen"], a["real"], executor="spark"), "executor"),
    (lambda a: imprint.audit_membership(a["gen"], a["real"], seed=True), "seed"),
    (lambda a: imprint.audit_membership(a["gen"], a["real"], size=3), "size"),
    (lambda a: imprint.attribute(a["att"], 0), "k must be"),
    (lambda a: imprint.attribute(a["att"], 500), "larger than the number"),
    (lambda a: imprint.attribute(a["att"], 3, dev=[a["att"]]), "dev: expected a folder or a mapping"),
])
def test_bad_arguments_are_one_line_errors(data, call, msg):
    _, arr = data
    with pytest.raises(ImprintError, match=msg) as e:
        call(arr)
    assert "\n" not in str(e.value)


def test_strict_and_skips_from_folders(data, tmp_path):
    root, _ = data
    real = tmp_path / "real"
    real.mkdir()
    for f in sorted((root / "real").iterdir())[:8]:
        (real / f.name).write_bytes(f.read_bytes())
    (real / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    odd = os.fsdecode(b"caf\xe9.png")  # not UTF-8: the CSV keeps the original bytes, the Arrow table an escape
    (real / odd).write_bytes((root / "real" / "010.png").read_bytes())
    a = imprint.audit_membership(root / "gen", real, size=64)
    assert [s[1] for s in a.skipped] == ["broken.png"] and a.summary["n_skipped"] == 1
    assert "broken.png" not in a.table.column("image").to_pylist()
    assert "caf\\xe9.png" in a.table.column("image").to_pylist() and len(a.images) == 9
    a.to_csv(tmp_path / "s.csv")
    assert b"\ncaf\xe9.png," in (tmp_path / "s.csv").read_bytes()
    with pytest.raises(ImprintError, match="--strict: 1 input file"):
        imprint.audit_membership(root / "gen", real, size=64, strict=True)


def test_readme_python_api_example(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)  # noqa: S102 - the project's own README
    audit, groups = ns["audit"], ns["groups"]
    assert audit.table.column_names == ["image", "score", "used"] and audit.table.num_rows > 0
    assert groups.table.column_names == ["image", "cluster"] and groups.table.num_rows > 0
    assert (tmp_path / "scores.csv").exists() and (tmp_path / "clusters.csv").exists()
    # the example shows real results: memorised images are flagged more often than non-members, and the
    # three model folders come out as three clusters
    with open(ROOT / "engine/data/demo/membership/target/truth.csv", newline="") as fh:
        truth = {r["image"]: r["label"] for r in csv.DictReader(fh)}
    flagged = [truth[r["image"]] for r in audit.table.to_pylist() if r["used"] == 1]
    assert flagged.count("used") > flagged.count("unused")
    from sklearn.metrics import adjusted_rand_score

    rows = groups.table.to_pylist()
    assert adjusted_rand_score([r["image"].split("/")[0] for r in rows], [r["cluster"] for r in rows]) > 0.5
