"""CLI contracts: commands, CSV columns, exit statuses, one-line errors, skip reports."""
import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import copying_generator, ct_like, save_png
from imprint.engine.cli import cli, main

DEMO = Path(__file__).resolve().parents[1] / "engine" / "data" / "demo"


def run(args, expect=0):
    """Invoke through main() so error mapping (exit status 2, one line, no traceback) is exercised."""
    r = CliRunner().invoke(_main_wrapper, args, catch_exceptions=False)
    assert r.exit_code == expect, (r.exit_code, r.output)
    assert "Traceback" not in r.output
    return r


import click


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def _main_wrapper(ctx):
    main(list(ctx.args))


def read_rows(p):
    with open(p, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def small_membership(tmp_path_factory):
    """A generator that copies (noisily) 10 of 20 real images; a dev set built the same way."""
    rng = np.random.default_rng(7)
    root = tmp_path_factory.mktemp("mem")
    def build(d, n_real=20, n_gen=60):
        reals = ct_like(rng, n_real)
        used = reals[: n_real // 2]
        gen = copying_generator(rng, used, n_gen)
        for sub in ("generated", "real/used", "real/unused"):
            (d / sub).mkdir(parents=True)
        for i, g in enumerate(gen):
            save_png(d / "generated" / f"{i:03d}.png", g)
        for i, r in enumerate(used):
            save_png(d / "real/used" / f"{i:03d}.png", r)
        for i, r in enumerate(reals[n_real // 2:]):
            save_png(d / "real/unused" / f"{i:03d}.png", r)
    build(root / "target")
    build(root / "dev")
    return root


def test_membership_contract_and_evaluate(small_membership, tmp_path):
    t = small_membership / "target"
    out = tmp_path / "scores.csv"
    r = run(["membership", "--generated", str(t / "generated"), "--real", str(t / "real"), "--out", str(out),
             "--dev", str(small_membership / "dev"), "--size", "64", "--decision", "f1"])
    rows = read_rows(out)
    assert list(rows[0]) == ["image", "score", "used"]
    assert len(rows) == 20
    assert {r["image"].split("/")[0] for r in rows} == {"used", "unused"}
    assert all(r["used"] in ("0", "1") for r in rows)
    for r_ in rows:
        float(r_["score"])
    assert (tmp_path / "scores.evidence.csv").exists()
    ev = run(["evaluate", "membership", "--scores", str(out), "--truth-from-folders", "--json"])
    m = json.loads(ev.output)
    for key in ("f1", "accuracy", "precision", "recall", "specificity", "roc_auc", "tpr_at_1pct_fpr"):
        assert key in m
    # noisy copies of used images are found
    assert m["roc_auc"] > 0.9


def test_membership_without_dev_runs(small_membership, tmp_path):
    t = small_membership / "target"
    out = tmp_path / "s.csv"
    r = run(["membership", "--generated", str(t / "generated"), "--real", str(t / "real"), "--out", str(out),
             "--size", "64", "--json"])
    summary = json.loads(r.output)
    assert summary["n_real"] == 20 and summary["n_generated"] == 60
    assert len(read_rows(out)) == 20


@pytest.mark.parametrize("args,msg", [
    (["--generated", "/nonexistent", "--real", "{real}", "--out", "{out}"], "folder not found"),
    (["--generated", "{gen}", "--real", "{real}", "--out", "/nonexistent/dir/s.csv"], "does not exist"),
    (["--generated", "{gen}", "--real", "{real}", "--out", "{out}", "--dev", "{real}"], "missing subfolder"),
    (["--generated", "{gen}", "--real", "{real}", "--out", "{out}", "--decision", "coin"], "--decision"),
    (["--generated", "{gen}", "--real", "{real}", "--out", "{out}", "--decision", "fpr:2"], "ALPHA"),
])
def test_membership_bad_arguments_exit_2(small_membership, tmp_path, args, msg):
    t = small_membership / "target"
    fill = {"gen": str(t / "generated"), "real": str(t / "real"), "out": str(tmp_path / "s.csv")}
    r = run(["membership"] + [a.format(**fill) for a in args], expect=2)
    assert msg in r.output
    assert len([l for l in r.output.splitlines() if l.strip()]) == 1
    assert not (tmp_path / "s.csv").exists()


def test_skip_report_and_strict(small_membership, tmp_path):
    t = tmp_path / "real"
    shutil.copytree(small_membership / "target" / "real", t)
    (t / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    (t / "empty.png").write_bytes(b"")
    out = tmp_path / "s.csv"
    r = run(["membership", "--generated", str(small_membership / "target" / "generated"), "--real", str(t),
             "--out", str(out), "--size", "64"])
    assert "skipped" in r.output and "broken.png" in r.output
    rep = read_rows(tmp_path / "s.skipped.csv")
    assert {x["path"] for x in rep} == {"broken.png", "empty.png"}
    assert len(read_rows(out)) == 20
    out.unlink()
    r = run(["membership", "--generated", str(small_membership / "target" / "generated"), "--real", str(t),
             "--out", str(out), "--size", "64", "--strict"], expect=2)
    assert "--strict" in r.output and not out.exists()


def test_attribute_contract(tmp_path):
    rng = np.random.default_rng(3)
    d = tmp_path / "imgs"
    d.mkdir()
    truth = {}
    for m in range(3):
        base = ct_like(rng, 20)
        for i, im in enumerate(base):
            x = im.astype(np.float32)
            if m == 1:
                x[::2, ::2] += 12  # periodic upsampling artefact
            elif m == 2:
                x = np.repeat(np.repeat(x[::2, ::2], 2, 0), 2, 1)  # nearest-neighbour upsampling
            name = f"m{m}_{i:02d}.png"
            save_png(d / name, np.clip(x, 0, 255).astype(np.uint8))
            truth[name] = f"model{m}"
    with open(tmp_path / "truth.csv", "w") as fh:
        fh.write("image,label\n" + "".join(f"{k},{v}\n" for k, v in truth.items()))
    out = tmp_path / "c.csv"
    run(["attribute", "--images", str(d), "--k", "3", "--out", str(out), "--size", "64"])
    rows = read_rows(out)
    assert list(rows[0]) == ["image", "cluster"] and len(rows) == 60
    assert {int(r["cluster"]) for r in rows} <= {0, 1, 2}
    ev = json.loads(run(["evaluate", "attribution", "--clusters", str(out), "--truth", str(tmp_path / "truth.csv"),
                         "--json"]).output)
    assert ev["ari"] > 0.9
    run(["attribute", "--images", str(d), "--k", "0", "--out", str(out)], expect=2)
    run(["attribute", "--images", str(d), "--k", "1000", "--out", str(out), "--size", "64"], expect=2)
    run(["attribute", "--images", str(tmp_path / "nope"), "--k", "2", "--out", str(out)], expect=2)


def test_empty_folder_is_one_line_error(tmp_path):
    (tmp_path / "g").mkdir(); (tmp_path / "r").mkdir()
    r = run(["membership", "--generated", str(tmp_path / "g"), "--real", str(tmp_path / "r"),
             "--out", str(tmp_path / "s.csv")], expect=2)
    assert "no readable images" in r.output


def test_demo_end_to_end_with_report(tmp_path):
    r = run(["demo", "--out", str(tmp_path / "demo"), "--report", "--json"])
    s = json.loads(r.output)
    assert s["membership"]["metrics"]["n"] == 60
    assert s["attribution"]["metrics"]["n"] == 120
    for f in ("scores.csv", "clusters.csv", "metrics.json"):
        assert (tmp_path / "demo" / f).exists()
    # every file an HTML report references exists, and the HTML parses
    from html.parser import HTMLParser

    class Refs(HTMLParser):
        def __init__(self):
            super().__init__()
            self.refs, self.tags = [], []

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            for k, v in attrs:
                if k in ("src", "href") and v:
                    self.refs.append(v)

    for kind in ("report_membership", "report_attribution"):
        index = tmp_path / "demo" / kind / "index.html"
        assert index.exists()
        p = Refs()
        p.feed(index.read_text("utf-8"))
        p.close()
        assert "html" in p.tags and "img" in p.tags
        assert p.refs, "report references no plot"
        for ref in p.refs:
            assert "://" not in ref, f"report must be self-contained: {ref}"
            assert (index.parent / ref).is_file(), ref
        assert json.loads((index.parent / "report.json").read_text())["versions"]["numpy"] != "not installed"


def test_bench_small_sizes():
    r = run(["bench", "all", "--n", "3000", "--queries", "50", "--real", "20", "--generated", "20", "--size", "32",
             "--window", "0.05", "--repeats", "1", "--json"])
    s = json.loads(r.output)
    assert s["search"]["recall_at_k"] == pytest.approx(1.0)  # exact index below the IVF threshold
    assert s["pairs"]["pairs"] == 200 and s["pairs"]["ssim_pairs_per_s"] > 0
    assert s["embed"]["images_per_s"] > 0
    run(["bench", "search", "--n", "0"], expect=2)
