"""Issue 19, requirement 3: JPEG and WebP are read everywhere images are read, through the CLI.

Every folder here holds only lossy JPEG (quality 95) and lossy WebP (quality 90) files, alternating, no PNG:
membership's generated / real / --dev / --reference folders, attribute's images and --dev models, pairs' real and
generated folders, and embed's folder.  Each test plants what the command must find (copies of used images, two
trained-like traces, copied pairs) and requires it to be found, so a format that were silently skipped or misread
would fail it (a folder whose files were all skipped is a one-line error; a count is checked everywhere).
"""
import csv
import json

import click
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import copying_generator, ct_like
from imprint.engine.cli import main


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def _main_wrapper(ctx):
    main(list(ctx.args))


def run(args, expect=0):
    r = CliRunner().invoke(_main_wrapper, args, catch_exceptions=False)
    assert r.exit_code == expect, (r.exit_code, r.output)
    return r


def save_lossy(folder, arrays, prefix=""):
    """Write uint8 [H,W] images alternately as JPEG q95 (.jpg) and lossy WebP q90 (.webp); returns the names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, a in enumerate(arrays):
        im = Image.fromarray(np.asarray(a, np.uint8))
        if i % 2 == 0:
            name = f"{prefix}{i:03d}.jpg"
            im.save(folder / name, format="JPEG", quality=95)
        else:
            name = f"{prefix}{i:03d}.webp"
            im.save(folder / name, format="WEBP", quality=90, lossless=False)
        names.append(name)
    return names


def read_rows(p):
    with open(p, newline="") as fh:
        return list(csv.DictReader(fh))


def test_lossy_fixture_is_lossy_and_both_formats(tmp_path):
    """The fixtures really are JPEG and lossy WebP (decoded pixels differ from the array written)."""
    a = ct_like(np.random.default_rng(0), 2)
    names = save_lossy(tmp_path, a)
    fmts = []
    for n, x in zip(names, a):
        with Image.open(tmp_path / n) as im:
            fmts.append(im.format)
            assert np.any(np.asarray(im.convert("L")) != x)
    assert fmts == ["JPEG", "WEBP"]


def _membership_set(root, rng, n_real=20, n_gen=60):
    reals = ct_like(rng, n_real)
    used = reals[: n_real // 2]
    gen = copying_generator(rng, used, n_gen)
    save_lossy(root / "generated", gen)
    save_lossy(root / "real/used", used)
    save_lossy(root / "real/unused", reals[n_real // 2:])


def test_membership_jpeg_webp_everywhere(tmp_path):
    """generated, real, --dev and --reference all JPEG/WebP: every real file scored, copies of used images found."""
    rng = np.random.default_rng(19)
    _membership_set(tmp_path / "target", rng)
    _membership_set(tmp_path / "dev", rng)
    save_lossy(tmp_path / "ref", ct_like(rng, 20))
    out = tmp_path / "scores.csv"
    t = tmp_path / "target"
    run(["membership", "--generated", str(t / "generated"), "--real", str(t / "real"), "--out", str(out),
         "--dev", str(tmp_path / "dev"), "--reference", str(tmp_path / "ref"), "--size", "64", "--decision", "f1",
         "--strict"])  # --strict: any file that could not be read is an error, not a skip
    rows = read_rows(out)
    assert list(rows[0]) == ["image", "score", "used"] and len(rows) == 20
    assert {r["image"].rsplit(".", 1)[1] for r in rows} == {"jpg", "webp"}
    ev = json.loads(run(["evaluate", "membership", "--scores", str(out), "--truth-from-folders", "--json"]).output)
    assert ev["roc_auc"] > 0.9


def _model_images(rng, m, n):
    out = []
    for im in ct_like(rng, n):
        x = im.astype(np.float32)
        if m == 1:
            x[::2, ::2] += 12  # a periodic up-sampling trace
        elif m == 2:
            x = np.repeat(np.repeat(x[::2, ::2], 2, 0), 2, 1)  # nearest-neighbour up-sampling
        out.append(np.clip(x, 0, 255).astype(np.uint8))
    return out


def test_attribute_jpeg_webp_images_and_dev(tmp_path):
    """attribute on a JPEG/WebP folder with a JPEG/WebP --dev folder: every file clustered, the models found."""
    rng = np.random.default_rng(23)
    d = tmp_path / "imgs"
    truth = {}
    for m in range(3):
        for name in save_lossy(d, _model_images(rng, m, 20), prefix=f"m{m}_"):
            truth[name] = f"model{m}"
    for m in (0, 1):
        save_lossy(tmp_path / "dev" / f"model{m}", _model_images(rng, m, 12))
    with open(tmp_path / "truth.csv", "w") as fh:
        fh.write("image,label\n" + "".join(f"{k},{v}\n" for k, v in truth.items()))
    out = tmp_path / "c.csv"
    s = json.loads(run(["attribute", "--images", str(d), "--k", "3", "--out", str(out), "--size", "64",
                        "--dev", str(tmp_path / "dev"), "--strict", "--json"]).output)
    rows = read_rows(out)
    assert len(rows) == 60 and {r["image"] for r in rows} == set(truth)
    ev = json.loads(run(["evaluate", "attribution", "--clusters", str(out), "--truth", str(tmp_path / "truth.csv"),
                         "--json"]).output)
    assert ev["ari"] > 0.9
    assert isinstance(s, dict)


def test_pairs_and_embed_jpeg_webp(tmp_path):
    """pairs between JPEG/WebP folders finds each planted copy as its real image's nearest; embed stores every file."""
    rng = np.random.default_rng(29)
    real = ct_like(rng, 16)
    gen = ct_like(rng, 24)
    gen[:8] = np.clip(real[:8].astype(int) + rng.integers(-3, 4, real[:8].shape), 0, 255)
    rn = save_lossy(tmp_path / "real", real)
    gn = save_lossy(tmp_path / "gen", gen)
    out = tmp_path / "p.parquet"
    run(["pairs", "--real", str(tmp_path / "real"), "--generated", str(tmp_path / "gen"), "--k", "2", "--out",
         str(out), "--size", "64", "--strict"])
    t = pq.read_table(out).to_pylist()
    assert len(t) == 16 * 2 and {r["real"] for r in t} == set(rn)
    top = {r["real"]: r["generated"] for r in t if r["rank"] == 0}
    assert all(top[rn[i]] == gn[i] for i in range(8))
    s = json.loads(run(["embed", str(tmp_path / "gen"), "--store", str(tmp_path / "store"), "--size", "64",
                        "--strict", "--json"]).output)
    from imprint.engine.store import EmbeddingStore

    v = EmbeddingStore.open(tmp_path / "store").read()
    assert sorted(v.paths) == sorted(gn) and len(v.vectors) == 24
    assert s  # a summary came back
