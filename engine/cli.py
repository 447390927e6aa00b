"""``imprint``: a thin click layer over the Python API (engine.membership, engine.attribution, ...).

Conventions: one command per verb; the same option names everywhere; ``--json`` prints a machine-readable
summary on stdout; progress and skip lines go to stderr; user errors print one line ``error: ...`` and exit
with status 2; unexpected errors print one line and the path of a log file holding the traceback.
"""
from __future__ import annotations

if __name__ == "__main__":  # python -m imprint.engine.cli: stop requests are held from here until main() can catch
    from . import interrupts as _interrupts

    _interrupts.install(hold=True)

import json
import logging
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import click

from .errors import ImprintError

log = logging.getLogger("imprint")


# ---------------------------------------------------------------------------------------------- helpers
class Reporter:
    """Progress bars and one-line messages on stderr (quiet with --json)."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet

    def line(self, msg: str) -> None:
        if not self.quiet:
            click.echo(msg, err=True)

    def progress(self, total: int, desc: str):
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=desc, unit="img", disable=None if not self.quiet else True,
                   file=sys.stderr, leave=False, dynamic_ncols=True)
        return bar


def _policy(size: int, size_policy: str, window: str | None):
    from .ingest import IngestPolicy

    from .clinical import parse_window

    win = None
    if window:
        try:
            win = parse_window(window)
        except ValueError as exc:
            raise ImprintError(str(exc)) from None
    if size < 16 or size > 4096:
        raise ImprintError(f"--size must be between 16 and 4096 (got {size})")
    return IngestPolicy(size=(size, size), size_policy=size_policy, window=win)


def _set_device(ctx, param, value):
    """``--device`` callback: run the device trials now (``cuda`` that cannot run is a one-line error)."""
    from . import device as device_mod

    ctx.meta["imprint.device"] = device_mod.set_device(value)
    return value


def _finish(summary: dict, as_json: bool, line: str) -> None:
    ctx = click.get_current_context(silent=True)
    dev = ctx.meta.get("imprint.device") if ctx is not None else None
    if dev is not None and isinstance(summary, dict):  # job commands: say where each stage ran
        summary.setdefault("device", dev.as_dict())
        line = f"{line}\n{dev.line()}"
    if as_json:
        click.echo(json.dumps(summary, indent=2, sort_keys=True, default=_json_default))
    else:
        click.echo(line)


def _json_default(o):
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


common_input = [
    click.option("--size", type=int, default=128, show_default=True,
                 help="Working size: every image is converted to SIZE x SIZE grayscale."),
    click.option("--size-policy", type=click.Choice(["resize", "error"]), default="resize", show_default=True,
                 help="Images of another size are resized, or skipped ('error')."),
    click.option("--window", default=None, metavar="CENTER,WIDTH|lung|mediastinum|bone",
                 help="Intensity window for DICOM/NIfTI (in Hounsfield units for CT) and 16-bit images; presets "
                      "lung -600,1500, mediastinum 40,400, bone 400,1800 (default: the DICOM file's own VOI "
                      "LUT/window, else each file's min..max range)."),
    click.option("--strict", is_flag=True, help="Any skipped input file is an error (exit status 2)."),
    click.option("--seed", type=int, default=0, show_default=True, help="Random seed (results are deterministic)."),
    click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout."),
    click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                 expose_value=False, callback=_set_device,
                 help="Where ONNX inference, FAISS search and the pair kernels run: 'cuda' (all on the GPU, "
                      "else an error), 'cpu', or 'auto' (each on the GPU only when a trial run there works)."),
]


def _options(opts: list):
    """A decorator applying click options ``opts`` in the order listed (as if stacked in that order)."""
    def apply(f):
        for opt in reversed(opts):
            f = opt(f)
        return f

    return apply


with_common = _options(common_input)


executor_opts = [
    click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                 help="Run embedding/search/re-ranking here, or on a Ray cluster (extra 'distributed')."),
    click.option("--address", default=None, metavar="ADDR",
                 help="Ray cluster address (HOST:6379, ray://HOST:10001 or auto); default $RAY_ADDRESS, "
                      "else a Ray instance on this machine (127.0.0.1 only)."),
]


with_executor = _options(executor_opts)


# ---------------------------------------------------------------------------------------------- the group
@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="imprint", prog_name="imprint")
@click.option("-v", "--verbose", is_flag=True, help="Log details to stderr.")
def cli(verbose: bool) -> None:
    """imprint: audit synthetic medical images for training-data membership and generator attribution."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")


# ---------------------------------------------------------------------------------------------- membership
@cli.command()
@click.option("--generated", "gen_dir", required=True, metavar="DIR", help="Folder of the generator's images.")
@click.option("--real", "real_dir", required=True, metavar="DIR", help="Folder of real images to score (searched recursively).")
@click.option("--out", required=True, metavar="FILE", help="Output CSV: image,score,used.")
@click.option("--dev", "dev_dirs", multiple=True, metavar="DIR",
              help="Labelled dev set DIR with generated/, real/used/, real/unused/ (repeatable).")
@click.option("--reference", "ref_dirs", multiple=True, metavar="DIR",
              help="Folder of real images known NOT to be training data (repeatable); the null distribution.")
@click.option("--decision", default="fpr:0.01", metavar="fpr:ALPHA|fdr:Q|f1", show_default=True,
              help="'fpr:ALPHA' (a non-member is flagged with probability <= ALPHA, at 95% confidence), "
                   "'fdr:Q' (Benjamini-Hochberg: expected share of false flags <= Q; use it when a flag is an "
                   "accusation) or 'f1' (maximise expected F1).")
@click.option("--report", "report_dir", default=None, metavar="DIR", help="Write an HTML report into this folder.")
@click.option("--memory-budget", "memory_budget", type=float, default=None, metavar="GB",
              help="Memory for the generated- and real-image blocks of the evidence (default $IMPRINT_MAX_MEMORY_GB, "
                   "else 2); changes no result.")
@click.option("--store-dir", "store_dir", default=None, metavar="DIR",
              help="Keep the decoded generated and real images in pixel stores here; later runs decode only new files.")
@with_executor
@with_common
def membership(gen_dir, real_dir, out, dev_dirs, ref_dirs, decision, report_dir, memory_budget, store_dir, executor,
               address, size, size_policy, window, strict, seed, as_json):
    """Score real images: were they used to train the generator of GEN?"""
    from .pipeline import run_membership

    rep = Reporter(quiet=as_json)
    summary = run_membership(gen_dir=gen_dir, real_dir=real_dir, out=out, dev_dirs=dev_dirs, ref_dirs=ref_dirs,
                             decision=decision, policy=_policy(size, size_policy, window), strict=strict,
                             seed=seed, rep=rep, report_dir=report_dir, executor=executor, address=address,
                             memory_budget_gb=memory_budget, store_dir=store_dir)
    _finish(summary, as_json, summary["summary"])


# ---------------------------------------------------------------------------------------------- attribution
def _parse_k(value: str) -> int | None:
    if str(value).lower() == "auto":
        return None
    try:
        k = int(value)
    except ValueError:
        raise ImprintError(f"--k must be a positive integer or 'auto' (got {value!r})") from None
    if k < 1:
        raise ImprintError(f"--k must be at least 1 (got {k})")
    return k


@cli.command()
@click.option("--images", "images_dir", required=True, metavar="DIR", help="Folder of generated images (searched recursively).")
@click.option("--k", "k", required=True, metavar="K|auto", help="Number of generators, or 'auto' to estimate it.")
@click.option("--out", required=True, metavar="FILE", help="Output CSV: image,cluster.")
@click.option("--dev", "dev_dir", default=None, metavar="DIR", help="Folder with one labelled subfolder per known model.")
@click.option("--report", "report_dir", default=None, metavar="DIR", help="Write an HTML report into this folder.")
@with_executor
@with_common
def attribute(images_dir, k, out, dev_dir, report_dir, executor, address, size, size_policy, window, strict, seed,
              as_json):
    """Group generated images by the model that made them."""
    from .pipeline import run_attribution

    rep = Reporter(quiet=as_json)
    summary = run_attribution(images_dir=images_dir, k=_parse_k(k), out=out, dev_dir=dev_dir,
                              policy=_policy(size, size_policy, window), strict=strict, seed=seed, rep=rep,
                              report_dir=report_dir, executor=executor, address=address)
    _finish(summary, as_json, summary["summary"])


# ---------------------------------------------------------------------------------------------- evaluate
@cli.group()
def evaluate() -> None:
    """Score outputs against ground truth."""


@evaluate.command("membership")
@click.option("--scores", required=True, help="CSV written by `imprint membership`.")
@click.option("--truth", default=None, help="CSV with columns image,label (label used/unused or 1/0).")
@click.option("--truth-from-folders", is_flag=True,
              help="Take each image's label from its first folder (used/... or unused/...).")
@click.option("--json", "as_json", is_flag=True)
def evaluate_membership(scores, truth, truth_from_folders, as_json):
    """F1, accuracy, precision, recall, specificity, ROC AUC, TPR at 1% FPR."""
    from .evaluate import (join_truth, membership_metrics, parse_used_label, read_csv, truth_from_csv,
                           truth_from_folders as tff)

    if bool(truth) == bool(truth_from_folders):
        raise ImprintError("give exactly one of --truth or --truth-from-folders")
    rows = read_csv(scores, ["image", "score", "used"])
    pred = {r["image"]: r for r in rows}
    t = tff(list(pred)) if truth_from_folders else truth_from_csv(truth)
    names, labels = join_truth(pred, t)
    y = [parse_used_label(v, truth or "folder names") for v in labels]
    try:
        used = [int(pred[n]["used"]) for n in names]
        score = [float(pred[n]["score"]) for n in names]
    except ValueError as exc:
        raise ImprintError(f"bad value in {scores}: {exc}") from None
    m = membership_metrics(y, used, score)
    m["n_scored_not_in_truth"] = len(pred) - len(names)
    line = ("F1 {f1:.3f}  accuracy {accuracy:.3f}  precision {precision:.3f}  recall {recall:.3f}  "
            "specificity {specificity:.3f}  ROC AUC {roc_auc:.3f}  TPR@1%FPR {tpr_at_1pct_fpr:.3f}  (n={n})").format(**m)
    _finish(m, as_json, line)


@evaluate.command("attribution")
@click.option("--clusters", required=True, help="CSV written by `imprint attribute`.")
@click.option("--truth", default=None, help="CSV with columns image,label (label = model name).")
@click.option("--truth-from-folders", is_flag=True, help="Take each image's model from its first folder.")
@click.option("--json", "as_json", is_flag=True)
def evaluate_attribution(clusters, truth, truth_from_folders, as_json):
    """Adjusted Rand index and NMI."""
    from .evaluate import attribution_metrics, join_truth, read_csv, truth_from_csv, truth_from_folders as tff

    if bool(truth) == bool(truth_from_folders):
        raise ImprintError("give exactly one of --truth or --truth-from-folders")
    rows = read_csv(clusters, ["image", "cluster"])
    pred = {r["image"]: r["cluster"] for r in rows}
    t = tff(list(pred)) if truth_from_folders else truth_from_csv(truth)
    names, labels = join_truth(pred, t)
    m = attribution_metrics(labels, [pred[n] for n in names])
    _finish(m, as_json, "ARI {ari:.3f}  NMI {nmi:.3f}  (n={n}, k_true={k_true}, k_pred={k_pred})".format(**m))


# ---------------------------------------------------------------------------------------------- embed
@cli.command()
@click.argument("folder")
@click.option("--store", required=True, metavar="DIR", help="Store folder (created if absent; resumed if present).")
@click.option("--backbone", default="pixel", show_default=True, help="Backbone name or path to an ONNX file.")
@click.option("--batch-size", type=int, default=None, help="Inference batch size (default: automatic).")
@click.option("--shard-size", type=int, default=4096, show_default=True, help="Rows per Arrow shard.")
@click.option("--input-size", type=int, default=None, help="User ONNX only: model input size (square).")
@click.option("--mean", default=None, help="User ONNX only: per-channel mean on the 0..255 scale, e.g. 123.7,116.3,103.5")
@click.option("--std", default=None, help="User ONNX only: per-channel std on the 0..255 scale.")
@click.option("--channels", type=click.Choice(["1", "3"]), default=None, help="User ONNX only: input channels.")
@with_executor
@with_common
def embed(folder, store, backbone, batch_size, shard_size, input_size, mean, std, channels, executor, address, size,
          size_policy, window, strict, seed, as_json):
    """Embed every image of FOLDER into an Arrow store (resumable; only new or changed images are embedded)."""
    from .pipeline import run_embed

    rep = Reporter(quiet=as_json)
    opts = {}
    if input_size is not None:
        opts["input_size"] = input_size
    for key, val in (("mean", mean), ("std", std)):
        if val is not None:
            try:
                opts[key] = tuple(float(x) for x in val.split(","))
            except ValueError:
                raise ImprintError(f"--{key} must be comma-separated numbers (got {val!r})") from None
    if channels is not None:
        opts["channels"] = int(channels)
    summary = run_embed(folder=folder, store=store, backbone=backbone, batch_size=batch_size,
                        shard_size=shard_size, policy=_policy(size, size_policy, window), strict=strict, rep=rep,
                        onnx_options=opts, executor=executor, address=address)
    _finish(summary, as_json, summary["summary"])


# ---------------------------------------------------------------------------------------------- pairs
@cli.command()
@click.option("--real", "real_dir", required=True, metavar="DIR", help="Folder of real images (searched recursively).")
@click.option("--generated", "gen_dir", required=True, metavar="DIR", help="Folder of generated images.")
@click.option("--k", type=int, default=10, show_default=True, help="Nearest generated images per real image.")
@click.option("--out", required=True, metavar="FILE", help="Output Parquet: real,generated,rank,distance,ssim,mse.")
@click.option("--backbone", default="pixel", show_default=True, help="Backbone for the k-NN shortlist.")
@click.option("--metric", type=click.Choice(["cosine", "l2"]), default="cosine", show_default=True)
@click.option("--index", default="auto", show_default=True, help="'auto' or a FAISS index-factory string.")
@click.option("--batch", type=int, default=4096, show_default=True, help="Real images per streamed batch.")
@click.option("--no-rerank", is_flag=True, help="Skip the SSIM/MSE re-scoring of the pairs.")
@click.option("--store-dir", default=None, metavar="DIR",
              help="Keep the embeddings in Arrow stores DIR/generated and DIR/real and reuse them on later runs.")
@with_executor
@with_common
def pairs(real_dir, gen_dir, k, out, backbone, metric, index, batch, no_rerank, store_dir, executor, address, size,
          size_policy, window, strict, seed, as_json):
    """Nearest generated images of every real image, with embedding distance, SSIM and MSE per pair."""
    from .pairs import run_pairs

    rep = Reporter(quiet=as_json)
    summary = run_pairs(real_dir=real_dir, gen_dir=gen_dir, k=k, out=out, backbone=backbone, metric=metric,
                        index=index, batch=batch, policy=_policy(size, size_policy, window), strict=strict, rep=rep,
                        rerank=not no_rerank, executor=executor, address=address, store_dir=store_dir)
    _finish(summary, as_json, summary["summary"])


# ---------------------------------------------------------------------------------------------- bench
@cli.command()
@click.argument("what", type=click.Choice(["search", "pairs", "embed", "all"]), default="all")
@click.option("--n", type=int, default=200_000, show_default=True, help="search: vectors in the base.")
@click.option("--d", type=int, default=128, show_default=True, help="search: dimension.")
@click.option("--queries", type=int, default=1000, show_default=True, help="search: queries.")
@click.option("--index", default="auto", show_default=True, help="search: FAISS factory string or 'auto'.")
@click.option("--real", "n_real", type=int, default=500, show_default=True, help="pairs: real images.")
@click.option("--generated", "n_gen", type=int, default=500, show_default=True, help="pairs: generated images.")
@click.option("--k", type=int, default=10, show_default=True, help="neighbours per query / pairs per real image.")
@click.option("--size", type=int, default=128, show_default=True, help="pairs/embed: image size.")
@click.option("--backbone", default="pixel", show_default=True, help="embed: backbone.")
@click.option("--window", "min_window", type=float, default=1.0, show_default=True,
              help="Shortest timing window in seconds (calls are repeated until it is reached).")
@click.option("--repeats", type=int, default=3, show_default=True, help="Timing windows; the best is reported.")
@click.option("--json", "as_json", is_flag=True)
def bench(what, n, d, queries, index, n_real, n_gen, k, size, backbone, min_window, repeats, as_json):
    """Throughput on synthetic data of a chosen size (search, pair kernels, embedding).

    Both sides of every ratio are timed in the same run, best of --repeats windows of at least --window seconds;
    search queries are held-out draws from the base distribution, and the index build time is reported."""
    from . import bench as B

    if min(n, d, queries, n_real, n_gen, k, size, repeats) < 1:
        raise ImprintError("sizes must be positive")
    if not min_window > 0:
        raise ImprintError("--window must be positive")
    tk = dict(min_window=min_window, repeats=repeats)
    out = {}
    if what in ("search", "all"):
        out["search"] = B.bench_search(n=n, d=d, nq=queries, k=k, index=index, **tk)
    if what in ("pairs", "all"):
        out["pairs"] = B.bench_pairs(n_real=n_real, n_gen=n_gen, k=k, size=size, **tk)
    if what in ("embed", "all"):
        out["embed"] = B.bench_embed(backbone=backbone, size=size, **tk)
    lines = []
    if "search" in out:
        s = out["search"]
        lines.append(f"search {s['n']}x{s['d']} {s['index']}: {s['approx_qps']:.0f} q/s vs exact {s['exact_qps']:.0f} q/s "
                     f"(x{s['speedup']:.1f} query only, x{s['speedup_with_build']:.2f} with the "
                     f"{s['build_s']:.1f}s build), recall@{s['k']} {s['recall_at_k']:.3f}; load {s['load']['loadavg']}")
    if "pairs" in out:
        p = out["pairs"]
        lines.append(f"pairs {p['pairs']} at {p['size']}px: SSIM {p['ssim_pairs_per_s']:.0f} pairs/s, "
                     f"MSE {p['mse_pairs_per_s']:.0f} pairs/s (x{p['mse_speedup_vs_numpy']:.1f} numpy)")
    if "embed" in out:
        e = out["embed"]
        lines.append(f"embed {e['backbone']}: {e['images_per_s']:.0f} images/s")
    _finish(out, as_json, "\n".join(lines))


# ---------------------------------------------------------------------------------------------- models
@cli.group()
def models() -> None:
    """Build and list the ONNX backbones."""


@models.command("build")
@click.option("--force", is_flag=True, help="Rebuild even when the files exist.")
@click.option("--out-dir", default=None, help="Where to write the ONNX files (default: the package's models/onnx).")
@click.option("--json", "as_json", is_flag=True, help="Print {name: status} as JSON.")
def models_build(force, out_dir, as_json):
    """Export every backbone to ONNX (needs the 'export' extra for the pretrained one)."""
    from imprint.models.build import build_all

    t0 = time.perf_counter()
    status = build_all(out_dir=out_dir, force=force) or {}
    if as_json:
        click.echo(json.dumps(status, indent=2, sort_keys=True))
        return
    for name, st in status.items():
        click.echo(f"{name:18s} {st}")
    n_built = sum(1 for v in status.values() if v == "built")
    click.echo(f"models: {n_built} built, {sum(1 for v in status.values() if v == 'up-to-date')} up to date, "
               f"{sum(1 for v in status.values() if str(v).startswith('skipped'))} skipped "
               f"in {time.perf_counter() - t0:.1f}s")


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the full specs as JSON.")
def models_list(as_json):
    """One line per backbone: name, input size, output dim, pretrained, sha256."""
    from imprint.models.registry import describe_lines, list_backbones

    if as_json:
        click.echo(json.dumps([s.to_json() for s in list_backbones()], indent=2, sort_keys=True))
        return
    for line in describe_lines():
        click.echo(line)


# ---------------------------------------------------------------------------------------------- demo
@cli.command()
@click.option("--out", "out_dir", default="out/demo", show_default=True, help="Output folder.")
@click.option("--data", "data_dir", default=None, help="Demo data folder (default: the embedded sample).")
@click.option("--report", "report", is_flag=True, help="Also write HTML reports.")
@click.option("--json", "as_json", is_flag=True)
def demo(out_dir, data_dir, report, as_json):
    """Run both tasks end to end on the embedded sample data and print their metrics."""
    from .demo import run_demo

    summary = run_demo(out_dir=out_dir, data_dir=data_dir, report=report, rep=Reporter(quiet=as_json))
    _finish(summary, as_json, summary["summary"])


# ---------------------------------------------------------------------------------------------- doctor
@cli.command()
@click.option("--models-dir", default=None, metavar="DIR",
              help="Backbone folder to check (default: $IMPRINT_MODELS_DIR, else the package's models/onnx).")
@click.option("--json", "as_json", is_flag=True, help="Print every fact as JSON.")
def doctor(models_dir, as_json):
    """What imprint will run on: versions, onnxruntime providers that really run, FAISS GPUs, Numba CUDA,
    GPU memory, CPUs, memory limit, and whether each ONNX backbone is built."""
    from .doctor import collect, format_table

    facts = collect(models_dir)
    if as_json:
        click.echo(json.dumps(facts, indent=2, sort_keys=True, default=str))
    else:
        click.echo(format_table(facts))


# ---------------------------------------------------------------------------------------------- entry point
def _log_dir() -> Path:
    d = os.environ.get("IMPRINT_LOG_DIR") or os.path.join(tempfile.gettempdir(), "imprint-logs")
    Path(d).mkdir(parents=True, exist_ok=True)
    return Path(d)


def main(argv=None) -> None:
    """Console entry point: maps errors to one line and an exit status.

    SIGTERM and Ctrl-C (engine.interrupts) stop the job once, at a safe point, and end it with the one line
    ``interrupted; re-run the same command to resume`` and status 130, whatever the job was doing then.
    """
    from . import interrupts

    interrupts.install(hold=True)  # held until the try below can catch it
    try:
        try:
            interrupts.release()
            cli.main(args=argv, prog_name="imprint", standalone_mode=False)
            interrupts.ignore_from_now()  # also through interpreter shutdown, which would turn 0 into -2 / -15
        except BaseException as exc:  # noqa: BLE001 - a stop request outranks what it caused (ImportError, Abort)
            interrupts.ignore_from_now()  # the job is over; from here a signal must not cut the exit short
            if interrupts.requested() is not None or isinstance(exc, (KeyboardInterrupt, interrupts.Interrupted)) or (
                    isinstance(exc, click.exceptions.Abort) and isinstance(exc.__context__, KeyboardInterrupt)):
                interrupts.exit_interrupted()
            _exit_for(exc)
        if interrupts.requested() is not None:  # a request some library swallowed: the job ended, say so
            interrupts.exit_interrupted()
        sys.exit(0)
    except interrupts.Interrupted:  # delivered while the exit was being decided
        interrupts.exit_interrupted()
    finally:
        if argv is not None:  # called in-process (tests, embedding): give the caller its handlers back
            interrupts.uninstall()


def _exit_for(exc: BaseException) -> None:
    """Print the one line for an exception that ended :func:`main` and exit with its status."""
    try:
        raise exc
    except ImprintError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("interrupted; re-run the same command to resume", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - last line of defence: one line plus a log file
        try:
            path = _log_dir() / f"imprint-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
            path.write_text(traceback.format_exc(), encoding="utf-8")
            where = f" (details in {path})"
        except OSError:
            where = ""
        click.echo(f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}{where}",
                   err=True)
        sys.exit(1)
    sys.exit(0)


if __name__ == "__main__":  # pragma: no cover
    main()
