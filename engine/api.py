"""imprint's Python API: :func:`audit_membership` and :func:`attribute` on folders or uint8 arrays.

These are the functions behind ``imprint membership`` and ``imprint attribute`` (the CLI's ``run_*`` jobs in
:mod:`engine.pipeline` only validate arguments, read folders with progress bars, write the files and print);
called from Python they return result objects instead of writing files::

    import imprint

    audit = imprint.audit_membership("gen/", "real/", dev=["dev_a/"], decision="fpr:0.01")
    audit.table        # pyarrow.Table image,score,used  (the CLI's scores.csv)
    audit.summary      # the CLI's --json summary (dict)
    audit.to_csv("scores.csv")

Inputs are folders (``str`` / ``os.PathLike``; read recursively, bad files skipped and listed in
``.skipped``, images converted to ``size`` x ``size`` grayscale) or uint8 arrays ``[N, H, W]`` (used as they
are; image ``i`` is named ``f"{i:06d}"``). The executor (``executor="local"`` / ``"ray"`` / an
:class:`~engine.executors.Executor` object) decides where the heavy stages run, never the result.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, Union

import numpy as np

from .errors import ImprintError

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

    from .attribution import AttributionResult
    from .executors import Executor
    from .ingest import ImageSet, IngestPolicy
    from .membership import MembershipResult

__all__ = ["Attribution", "MembershipAudit", "attribute", "audit_membership"]

#: a folder of images, or a uint8 array [N, H, W]
Images = Union[str, "os.PathLike[str]", np.ndarray]

SCORE_COLUMNS = ("image", "score", "used")
CLUSTER_COLUMNS = ("image", "cluster")


# ---------------------------------------------------------------------------------------------- results
def _names_for_arrow(names: Sequence[str]) -> list[str]:
    # file names that are not valid UTF-8 are kept as surrogate escapes (written to the CSVs as their original
    # bytes); Arrow strings must be UTF-8, so the table shows those bytes as \xNN escapes
    out = []
    for n in names:
        try:
            n.encode("utf-8")
        except UnicodeEncodeError:
            n = n.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        out.append(n)
    return out


@dataclass
class MembershipAudit:
    """Result of :func:`audit_membership`: one score and one decision per real image.

    Attributes
    ----------
    images : list of str, length R
        Real image names: paths relative to the real folder (``/``-separated, sorted), or ``"000000"``... for
        an array input.
    score : float64 ndarray [R]
        Higher = more likely used to train the generator (calibrated against the null).
    used : int64 ndarray [R]
        The decision, 0/1.
    evidence : dict[str, float64 ndarray [R]]
        Every piece of evidence per image (see :mod:`engine.membership`).
    nearest_generated : list of str, length R
        Name of each real image's best-matching generated image (``""`` when none).
    registered_generated : list of str, length R
        The generated image matched by the transform-invariant registration (evidence ``reg_match``); empty
        when registration was off.
    summary : dict
        The CLI's ``--json`` summary (``out``/``evidence_out``/``skip_report`` are None here).
    result : MembershipResult
        The engine's result (threshold, ``info``, nearest indices), expanded to every real image.
    skipped : list of (folder, path, reason)
        Input files that could not be used.
    """

    images: list
    score: np.ndarray
    used: np.ndarray
    evidence: dict
    nearest_generated: list
    summary: dict
    result: "MembershipResult"
    skipped: list = field(default_factory=list)
    registered_generated: list = field(default_factory=list)

    @property
    def threshold(self) -> float:
        """Score threshold of the decision (float)."""
        return float(self.result.threshold)

    @property
    def table(self) -> "pa.Table":
        """``pyarrow.Table`` with the CLI CSV's columns ``image`` (string), ``score`` (float64), ``used`` (int64)."""
        import pyarrow as pa

        return pa.table({"image": pa.array(_names_for_arrow(self.images), pa.string()),
                         "score": pa.array(np.asarray(self.score, np.float64), pa.float64()),
                         "used": pa.array(np.asarray(self.used, np.int64), pa.int64())})

    def _evidence_header(self) -> list[str]:
        return (["image"] + sorted(self.evidence) + (["nearest_generated"] if self.nearest_generated else [])
                + (["registered_generated"] if self.registered_generated else []))

    def _evidence_rows(self):
        names = sorted(self.evidence)
        for i, p in enumerate(self.images):
            row = [p] + [float(self.evidence[n][i]) for n in names]
            if self.nearest_generated:
                row.append(self.nearest_generated[i])
            if self.registered_generated:
                row.append(self.registered_generated[i])
            yield row

    @property
    def evidence_table(self) -> "pa.Table":
        """``pyarrow.Table`` of the CLI's ``*.evidence.csv``: ``image``, one float64 column per evidence (sorted
        by name), ``nearest_generated``."""
        import pyarrow as pa

        cols: dict = {"image": pa.array(_names_for_arrow(self.images), pa.string())}
        for n in sorted(self.evidence):
            cols[n] = pa.array(np.asarray(self.evidence[n], np.float64), pa.float64())
        if self.nearest_generated:
            cols["nearest_generated"] = pa.array(_names_for_arrow(self.nearest_generated), pa.string())
        if self.registered_generated:
            cols["registered_generated"] = pa.array(_names_for_arrow(self.registered_generated), pa.string())
        return pa.table(cols)

    def to_csv(self, path: str | os.PathLike) -> None:
        """Write ``image,score,used`` atomically: the same bytes as the CLI's ``--out`` CSV."""
        from .outputs import write_csv

        write_csv(path, list(SCORE_COLUMNS), zip(self.images, np.asarray(self.score, np.float64).tolist(),
                                                 np.asarray(self.used).astype(int).tolist()))

    def evidence_to_csv(self, path: str | os.PathLike) -> None:
        """Write the evidence table atomically: the same bytes as the CLI's ``*.evidence.csv``."""
        from .outputs import write_csv

        write_csv(path, self._evidence_header(), self._evidence_rows())


@dataclass
class Attribution:
    """Result of :func:`attribute`: one cluster per generated image.

    Attributes
    ----------
    images : list of str, length N
        Image names (relative paths, or ``"000000"``... for an array input).
    cluster : int64 ndarray [N]
        Cluster ``0..k-1`` of each image (0 is the largest).
    confidence : float64 ndarray [N]
        Mean co-association of the image with its cluster, in [0, 1].
    k : int
        Number of clusters (the estimate when ``k=None`` was given).
    summary : dict
        The CLI's ``--json`` summary (``out``/``details_out``/``skip_report`` are None here).
    result : AttributionResult
        The engine's result (``info``, standardised features).
    skipped : list of (folder, path, reason)
    dev_model : list of str, length N
        The dev model whose distribution the image's cluster matches, ``""`` for a model not among the dev
        models (all ``""`` without dev models).
    """

    images: list
    cluster: np.ndarray
    confidence: np.ndarray
    k: int
    summary: dict
    result: "AttributionResult"
    skipped: list = field(default_factory=list)
    dev_model: list = field(default_factory=list)

    @property
    def table(self) -> "pa.Table":
        """``pyarrow.Table`` with the CLI CSV's columns ``image`` (string), ``cluster`` (int64)."""
        import pyarrow as pa

        return pa.table({"image": pa.array(_names_for_arrow(self.images), pa.string()),
                         "cluster": pa.array(np.asarray(self.cluster, np.int64), pa.int64())})

    @property
    def details(self) -> "pa.Table":
        """``pyarrow.Table`` of the CLI's ``*.details.csv``: ``image``, ``cluster``, ``confidence`` (float64),
        ``dev_model`` (string, empty for a new model)."""
        import pyarrow as pa

        t = self.table.append_column("confidence", pa.array(np.asarray(self.confidence, np.float64)))
        return t.append_column("dev_model", pa.array(self._dev_model_column(), pa.string()))

    def _dev_model_column(self) -> list:
        return list(self.dev_model) if len(self.dev_model) == len(self.images) else [""] * len(self.images)

    def to_csv(self, path: str | os.PathLike) -> None:
        """Write ``image,cluster`` atomically: the same bytes as the CLI's ``--out`` CSV."""
        from .outputs import write_csv

        write_csv(path, list(CLUSTER_COLUMNS), zip(self.images, np.asarray(self.cluster).astype(int).tolist()))

    def details_to_csv(self, path: str | os.PathLike) -> None:
        """Write ``image,cluster,confidence,dev_model`` atomically: the same bytes as the CLI's
        ``*.details.csv``."""
        from .outputs import write_csv

        write_csv(path, ["image", "cluster", "confidence", "dev_model"],
                  zip(self.images, np.asarray(self.cluster).astype(int).tolist(),
                      np.asarray(self.confidence, dtype=float).tolist(), self._dev_model_column()))


# ---------------------------------------------------------------------------------------------- inputs
def _policy(size: int, policy: "IngestPolicy | None") -> "IngestPolicy":
    from .ingest import IngestPolicy

    if policy is not None:
        if not isinstance(policy, IngestPolicy):
            raise ImprintError(f"policy must be an IngestPolicy (got {type(policy).__name__})")
        return policy
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 16 <= size <= 4096:
        raise ImprintError(f"size must be an integer between 16 and 4096 (got {size!r})")
    return IngestPolicy(size=(int(size), int(size)))


def _is_folder_arg(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike))


def _check_folder(path: Any, what: str) -> str:
    p = Path(path)
    if not p.exists():
        raise ImprintError(f"{what}: folder not found: {path}")
    if not p.is_dir():
        raise ImprintError(f"{what}: not a folder: {path}")
    return os.fspath(path)


def _array_set(x: Any, what: str, allow_empty: bool = False) -> "ImageSet":
    """An ImageSet of a uint8 [N,H,W] array: names ``000000``..., hashes of each image's bytes."""
    from .ingest import ImageSet

    a = np.asarray(x) if not isinstance(x, np.ndarray) else x
    if a.dtype != np.uint8 or a.ndim != 3:
        raise ImprintError(f"{what}: expected a folder or a uint8 array [N, H, W] (got dtype {a.dtype}, "
                           f"shape {a.shape})")
    if a.shape[0] == 0 and not allow_empty:
        raise ImprintError(f"{what}: the array holds no image")
    a = np.ascontiguousarray(a)
    shape = f"{a.shape[1]}x{a.shape[2]}:".encode()
    hashes = [hashlib.sha256(shape + im.tobytes()).hexdigest() for im in a]
    return ImageSet(a, [f"{i:06d}" for i in range(a.shape[0])], hashes, [], "")


def _image_set(x: Any, what: str, policy: "IngestPolicy", skips: list, allow_empty: bool = False) -> "ImageSet":
    """Folder -> decoded ImageSet (skips appended to ``skips``); array -> :func:`_array_set`."""
    if _is_folder_arg(x):
        from .ingest import load_folder

        folder = _check_folder(x, what)
        s = load_folder(folder, policy, label=what)
        skips.extend((str(folder), k.path, k.reason) for k in s.skipped)
        return s
    return _array_set(x, what, allow_empty)


def _set_device(device: str | None) -> None:
    """``device=`` of the API functions: ``"auto" | "cpu" | "cuda"`` (the CLI's ``--device``); None keeps the
    process-wide choice (``$IMPRINT_DEVICE``, default auto). ``"cuda"`` that cannot run is an ImprintError."""
    if device is None:
        return
    if device not in ("auto", "cpu", "cuda"):
        raise ImprintError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    from . import device as device_mod

    device_mod.set_device(device)


def _budget_bytes() -> int:
    """The memory budget the evidence sizes its generated-image chunks for (see ``memory_budget_gb``)."""
    from .membership.evidence import _memory_budget

    return int(_memory_budget())


def _generated_chunk(n: int, images: Any) -> int:
    from .membership.evidence import generated_chunk

    shape = np.shape(images)
    return int(generated_chunk(n, int(shape[1]) * int(shape[2]) if len(shape) == 3 else 128 * 128))


def _device_summary() -> dict:
    """Where ONNX inference, FAISS and the pair kernels ran (the summary's ``device`` entry)."""
    from . import device as device_mod

    return device_mod.describe()


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ImprintError(f"seed must be an integer (got {seed!r})")
    return int(seed)


def _normalise_decision(decision: str) -> str:
    from .membership import parse_decision

    mode, alpha = parse_decision(decision, "decision")
    return "f1" if mode == "f1" else f"{mode}:{alpha:g}"


def _strict(strict: bool, skips: list) -> None:
    if strict and skips:
        folder, p, reason = skips[0]
        raise ImprintError(f"--strict: {len(skips)} input file(s) skipped (first: {folder.rstrip('/')}/{p}: {reason})")


# ---------------------------------------------------------------------------------------------- membership
_DEV_PARTS = ("generated", "used", "unused")


def _dev_parts(d: Any, i: int) -> tuple[str, dict]:
    """(name, {"generated"|"used"|"unused": folder or array}) of one membership dev set."""
    if _is_folder_arg(d):
        folder = _check_folder(d, "dev")
        for sub in ("generated", "real/used", "real/unused"):
            if not (Path(folder) / sub).is_dir():
                raise ImprintError(f"dev {folder}: missing subfolder {sub}/ (expected generated/, real/used/, "
                                   "real/unused/)")
        return (Path(folder).name or folder, {"generated": os.path.join(folder, "generated"),
                                              "used": os.path.join(folder, "real", "used"),
                                              "unused": os.path.join(folder, "real", "unused")})
    if isinstance(d, Mapping):
        get, name = d.get, d.get("name")
    else:
        get, name = (lambda key: getattr(d, key, None)), getattr(d, "name", None)
    parts = {key: get(key) for key in _DEV_PARTS}
    missing = [key for key, v in parts.items() if v is None]
    if missing:
        raise ImprintError(f"dev set {i}: expected a folder, or a mapping/object with generated, used and unused "
                           f"images (missing {', '.join(missing)})")
    return str(name if name is not None else f"dev{i}"), parts


def audit_membership(generated: Images, real: Images, *, dev: Sequence[Any] = (), reference: Any = (),
                     decision: str = "fpr:0.01", seed: int = 0, size: int = 128,
                     executor: "str | Executor | None" = None, address: str | None = None,
                     policy: "IngestPolicy | None" = None, strict: bool = False,
                     progress: Callable[[int], Any] | None = None,
                     cache_dir: str | os.PathLike | None = None, device: str | None = None,
                     memory_budget_gb: float | None = None) -> MembershipAudit:
    """Score real images for membership in a generator's training set and decide used / not used.

    The Python form of ``imprint membership``: same method, same numbers as the CLI's CSVs.

    Parameters
    ----------
    generated : str, os.PathLike or uint8 ndarray [M, H, W]
        The generator's images (a folder, read recursively, or an array).
    real : str, os.PathLike or uint8 ndarray [R, H, W]
        The real images to score. Byte-identical duplicates are scored once and share the result.
    dev : sequence
        Labelled dev sets, each a folder with ``generated/``, ``real/used/``, ``real/unused/``, or a mapping
        (or object, e.g. :class:`engine.membership.DevSet`) with ``generated``, ``used``, ``unused`` entries
        (folders or uint8 arrays ``[n, H, W]``) and an optional ``name``. Used to fit the evidence weights.
    reference : folder, uint8 ndarray [K, H, W], or a sequence of them
        Real images known *not* to be training data (the null distribution); images also in ``real`` are
        dropped. The dev sets' unused images serve as reference too.
    decision : str
        ``"fpr:ALPHA"`` (a non-member is flagged with probability <= ALPHA, at 95% confidence), ``"fdr:Q"``
        (Benjamini-Hochberg on conformal p-values: expected share of false flags <= Q; use it when a flag is an
        accusation) or ``"f1"`` (maximise expected F1). Same meaning as the CLI's ``--decision``.
    seed : int
        Random seed (the result is deterministic).
    size : int
        Working size for folders: every file becomes ``size`` x ``size`` grayscale (ignored with ``policy``).
        Arrays are used as they are; all images must end up the same size.
    executor : "local", "ray", Executor or None
        Where embedding, search and pair kernels run (:mod:`engine.executors`); ``None`` = local. A name
        creates the executor for this call and releases it afterwards; an object is left open.
    address : str or None
        Ray cluster address for ``executor="ray"``.
    policy : IngestPolicy or None
        Full ingestion policy for folders (window for 16-bit images, size policy, memory limit).
    strict : bool
        Any skipped input file is an error.
    progress : callable(int) or None
        Called with increments as the evidence stages finish.
    cache_dir : path or None
        Checkpoint folder for finished stages (an interrupted call resumes from them).

    memory_budget_gb : float or None
        Memory the evidence may use for generated images in flight (it processes them in chunks); default
        ``$IMPRINT_MAX_MEMORY_GB``, else 2 GiB. Changes no result.
    device : {'auto', 'cpu', 'cuda'} or None
        Where ONNX inference, FAISS search and the pair kernels run (the CLI's ``--device``); None keeps the
        process-wide choice. Reported in ``.summary['device']``.

    Returns
    -------
    MembershipAudit
        ``.table`` (image, score, used), ``.summary`` (the ``--json`` dict), ``.to_csv(path)``, ``.evidence``.

    Raises
    ------
    ImprintError
        One-line message for any bad argument or input, before the work starts.
    """
    _set_device(device)
    from .executors import check_executor

    t_start = time.perf_counter()
    check_executor(executor if executor is not None else "local", address)
    pol = _policy(size, policy)
    decision = _normalise_decision(decision)
    seed = _check_seed(seed)
    for x, what in ((generated, "generated"), (real, "real")):
        if _is_folder_arg(x):
            _check_folder(x, what)
    devs = [_dev_parts(d, i) for i, d in enumerate(_as_list(dev, "dev"))]
    refs_in = _as_list(reference, "reference")
    skips: list = []
    gen = _image_set(generated, "generated", pol, skips)
    real_set = _image_set(real, "real", pol, skips)
    dev_sets = [(name, *(_image_set(p[key], f"dev {key}", pol, skips, allow_empty=True) for key in _DEV_PARTS))
                for name, p in devs]
    refs = [_image_set(r, "reference", pol, skips) for r in refs_in]
    read_s = time.perf_counter() - t_start
    _strict(strict, skips)
    from .membership.evidence import memory_budget

    if memory_budget_gb is not None and not (isinstance(memory_budget_gb, (int, float))
                                             and not isinstance(memory_budget_gb, bool) and memory_budget_gb > 0):
        raise ImprintError(f"memory_budget_gb must be a positive number (got {memory_budget_gb!r})")
    with memory_budget(None if memory_budget_gb is None else int(memory_budget_gb * 2**30)):
        res = audit_loaded(gen, real_set, dev_sets, refs, decision=decision, seed=seed, executor=executor,
                           address=address, progress=progress, cache_dir=cache_dir, skips=skips,
                           ingest_policy=pol.describe())
    res.summary["timings"]["read_s"] = read_s
    res.summary["timings"]["total_s"] = time.perf_counter() - t_start
    res.summary["summary"] = membership_line(res.summary, res.result.summary)
    return res


def _as_list(x: Any, what: str) -> list:
    """``()``/None -> [], one folder or array -> [it], a sequence -> list."""
    if x is None:
        return []
    if _is_folder_arg(x) or isinstance(x, (np.ndarray, Mapping)) or hasattr(x, "generated"):
        return [x]
    try:
        return list(x)
    except TypeError:
        raise ImprintError(f"{what}: expected a folder, an array or a sequence of them "
                           f"(got {type(x).__name__})") from None


def membership_line(summary: dict, detail: str = "", out: str | None = None) -> str:
    """The human summary of a membership ``summary`` dict: one line, then ``detail`` (the engine's explanation)
    when given (``out``: the CSV path, CLI only)."""
    t = summary["timings"].get("total_s", 0.0)
    line = (f"membership: {summary['n_flagged']}/{summary['n_real']} real images flagged as used "
            f"({summary['decision']}); {summary['n_generated']} generated, {summary['n_skipped']} skipped; "
            f"{t:.1f}s" + (f" -> {out}" if out is not None else ""))
    return line + (f"\n{detail}" if detail else "")


def audit_loaded(gen: "ImageSet", real: "ImageSet", dev_sets: Sequence[tuple], refs: Sequence["ImageSet"], *,
                 decision: str, seed: int, executor: Any = None, address: str | None = None,
                 progress: Callable[[int], Any] | None = None, cache_dir: Any = None, skips: list | None = None,
                 ingest_policy: dict | None = None) -> MembershipAudit:
    """The audit on decoded images (the step shared by :func:`audit_membership` and ``imprint membership``).

    Parameters
    ----------
    gen, real : ImageSet
        Decoded generated and real images (uint8 ``[n, H, W]`` with names and content hashes).
    dev_sets : sequence of (name, generated ImageSet, used ImageSet, unused ImageSet)
    refs : sequence of ImageSet
        Known non-members given as reference.
    decision : str
        Normalised decision (``"f1"``, ``"fpr:ALPHA"`` or ``"fdr:Q"``).
    seed : int
    executor, address
        As in :func:`audit_membership`.
    progress, cache_dir
        Passed to :func:`engine.membership.audit_membership`.
    skips : list or None
        Skipped files of the reading step (counted in the summary).
    ingest_policy : dict or None
        ``IngestPolicy.describe()`` of the reading step (recorded in the summary).

    Returns
    -------
    MembershipAudit
        Its ``summary["timings"]`` holds ``audit_s``; the caller adds ``read_s`` and ``total_s``.
    """
    from .executors import open_executor
    from .membership import DevSet
    from .membership import audit_membership as _audit

    skips = list(skips or [])
    devs = []
    all_refs = []
    for name, g, u, n in dev_sets:
        devs.append(DevSet(name=name, generated=g.images, used=u.images, unused=n.images))
        all_refs.append(n)
    all_refs.extend(refs)

    # Reference images must be non-members of *this* real set: drop any that also appear in it.
    real_hashes = set(real.hashes)
    ref_imgs = []
    seen: set[str] = set()
    for s in all_refs:
        keep = [i for i, h in enumerate(s.hashes) if h not in real_hashes and h not in seen]
        seen.update(s.hashes[i] for i in keep)
        if keep:
            ref_imgs.append(s.images[keep])
    reference = np.concatenate(ref_imgs) if ref_imgs else None

    # Byte-identical duplicates in the real folder are scored once and share the result: otherwise each copy
    # would be the other's "nearest real image" and hide a memorised patient.
    first: dict[str, int] = {}
    inverse = np.array([first.setdefault(h, len(first)) for h in real.hashes], dtype=np.int64)
    uniq_rows = np.unique(inverse, return_index=True)[1]
    n_dups = len(real) - len(uniq_rows)

    t0 = time.perf_counter()
    with open_executor(executor, address) as ex:
        res = _audit(gen.images, real.images if n_dups == 0 else real.images[uniq_rows], dev_sets=devs, reference=reference, decision=decision,
                     random_state=seed, progress=progress, cache_dir=None if cache_dir is None else str(cache_dir),
                     executor=ex)
        ex_name = ex.name
    audit_s = time.perf_counter() - t0

    score = np.asarray(res.score, dtype=np.float64)[inverse]
    used = np.asarray(res.used).astype(int)[inverse]
    res.evidence = {k_: np.asarray(v)[inverse] for k_, v in res.evidence.items()}
    if getattr(res, "calibrated", None):
        res.calibrated = {k_: np.asarray(v)[inverse] for k_, v in res.calibrated.items()}
    if getattr(res, "nearest", None) is not None and np.asarray(res.nearest).size:
        res.nearest = np.asarray(res.nearest)[inverse]
    res.score, res.used = score, used
    nearest_names: list = []
    nearest = np.asarray(res.nearest) if getattr(res, "nearest", None) is not None else None
    if nearest is not None and nearest.size:
        for i in range(len(real)):
            j = int(nearest[i, 0]) if nearest.ndim == 2 else int(nearest[i])
            nearest_names.append(gen.paths[j] if 0 <= j < len(gen.paths) else "")
    reg_names: list = []
    reg_match = res.evidence.get("reg_match")   # registered best match (transform-invariant evidence)
    if reg_match is not None:
        for i in range(len(real)):
            j = int(reg_match[i]) if np.isfinite(reg_match[i]) else -1
            reg_names.append(gen.paths[j] if 0 <= j < len(gen.paths) else "")
    n_used = int(used.sum())
    summary = {
        "device": _device_summary(),
        "command": "membership",
        "out": None,
        "evidence_out": None,
        "skip_report": None,
        "n_generated": len(gen),
        "n_real": len(real),
        "n_reference": 0 if reference is None else int(len(reference)),
        "n_dev_sets": len(devs),
        "n_skipped": len(skips),
        "n_duplicate_real": int(n_dups),
        "n_flagged": n_used,
        "decision": decision,
        "threshold": float(res.threshold),
        "timings": {"audit_s": audit_s},
        "executor": ex_name,
        "memory_budget_bytes": _budget_bytes(),
        "generated_chunk": _generated_chunk(len(gen), gen.images),
        "pixel_store": None,
        "info": res.info,
        "ingest_policy": ingest_policy,
    }
    summary["summary"] = membership_line(summary, getattr(res, "summary", ""))
    return MembershipAudit(images=list(real.paths), score=score, used=used.astype(np.int64), evidence=res.evidence,
                           nearest_generated=nearest_names, summary=summary, result=res, skipped=skips,
                           registered_generated=reg_names)


# ---------------------------------------------------------------------------------------------- attribution
def attribute(images: Images, k: int | None, *, dev: Any = None, seed: int = 0, size: int = 128,
              executor: "str | Executor | None" = None, address: str | None = None,
              policy: "IngestPolicy | None" = None, strict: bool = False,
              progress: Callable[[str], Any] | None = None,
              cache_dir: str | os.PathLike | None = None, device: str | None = None) -> Attribution:
    """Group generated images by the model that made them.

    The Python form of ``imprint attribute``: same method, same clusters as the CLI's CSV.

    Parameters
    ----------
    images : str, os.PathLike or uint8 ndarray [N, H, W]
        Generated images (a folder, read recursively, or an array).
    k : int or None
        Number of generators; ``None`` estimates it (the CLI's ``--k auto``).
    dev : folder, mapping or None
        Images of known models: a folder with one subfolder per model, or a mapping
        ``model name -> folder or uint8 array [n, H, W]``. Used to weight features only.
    seed : int
        Random seed (the result is deterministic for a seed).
    size : int
        Working size for folders (``size`` x ``size`` grayscale; ignored with ``policy``).
    executor : "local", "ray", Executor or None
        Where the feature extraction runs (:mod:`engine.executors`); clustering runs here.
    address : str or None
        Ray cluster address for ``executor="ray"``.
    policy : IngestPolicy or None
        Full ingestion policy for folders.
    strict : bool
        Any skipped input file is an error.
    progress : callable(str) or None
        Called with short stage messages.
    cache_dir : path or None
        Checkpoint folder for finished feature extractions.

    device : {'auto', 'cpu', 'cuda'} or None
        Where ONNX inference, FAISS search and the pair kernels run (the CLI's ``--device``); None keeps the
        process-wide choice. Reported in ``.summary['device']``.

    Returns
    -------
    Attribution
        ``.table`` (image, cluster), ``.details`` (+ confidence), ``.summary`` (the ``--json`` dict),
        ``.to_csv(path)``.

    Raises
    ------
    ImprintError
        One-line message for any bad argument or input.
    """
    _set_device(device)
    from .executors import check_executor

    t_start = time.perf_counter()
    check_executor(executor if executor is not None else "local", address)
    pol = _policy(size, policy)
    seed = _check_seed(seed)
    if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
        raise ImprintError(f"k must be a positive integer or None (got {k!r})")
    if _is_folder_arg(images):
        _check_folder(images, "images")
    dev_parts: dict = {}
    if dev is not None:
        if _is_folder_arg(dev):
            folder = _check_folder(dev, "dev")
            models = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
            if not models:
                raise ImprintError(f"dev {folder}: no model subfolders (expected one folder of images per known model)")
            dev_parts = {m: os.path.join(folder, m) for m in models}
        elif isinstance(dev, Mapping):
            dev_parts = {str(m): v for m, v in dev.items()}
        else:
            raise ImprintError(f"dev: expected a folder or a mapping model name -> images (got {type(dev).__name__})")
    skips: list = []
    imgs = _image_set(images, "images", pol, skips)
    dev_sets = {m: _image_set(v, f"dev {m}", pol, skips).images for m, v in sorted(dev_parts.items())}
    read_s = time.perf_counter() - t_start
    _strict(strict, skips)
    res = attribute_loaded(imgs, k, dev_sets, seed=seed, executor=executor, address=address, progress=progress,
                           cache_dir=cache_dir, skips=skips, ingest_policy=pol.describe())
    res.summary["timings"]["read_s"] = read_s
    res.summary["timings"]["total_s"] = time.perf_counter() - t_start
    res.summary["summary"] = attribution_line(res.summary)
    return res


def attribution_line(summary: dict, out: str | None = None) -> str:
    """The one-line human summary of an attribution ``summary`` dict (``out``: the CSV path, CLI only)."""
    t = summary["timings"].get("total_s", 0.0)
    stab = (summary.get("stability") or {}).get("mean_ari")
    named = ""
    if summary.get("dev_models"):
        removed = sum((summary.get("dev_overlap_removed") or {}).values())
        named = (f"; known models {summary.get('known_models') or 'none'}, new model clusters "
                 f"{summary.get('new_clusters') or 'none'}; {removed} dev image(s) also in --images left out of dev")
    conf = [round(c, 2) for c in (summary.get("cluster_confidence") or []) if c is not None]
    return (f"attribute: {summary['n_images']} images in {summary['k']} clusters (sizes {summary['cluster_sizes']})"
            f"{' (k estimated)' if summary['k_given'] is None else ''}; stability (mean ARI over resamples) "
            f"{'n/a' if stab is None else format(stab, '.2f')}, cluster confidence {conf}{named}; "
            f"{summary['n_skipped']} skipped; {t:.1f}s" + (f" -> {out}" if out is not None else ""))


def attribute_loaded(imgs: "ImageSet", k: int | None, dev_sets: Mapping[str, np.ndarray], *, seed: int,
                     executor: Any = None, address: str | None = None, progress: Callable[[str], Any] | None = None,
                     cache_dir: Any = None, skips: list | None = None,
                     ingest_policy: dict | None = None) -> Attribution:
    """Attribution on decoded images (the step shared by :func:`attribute` and ``imprint attribute``).

    Parameters
    ----------
    imgs : ImageSet
        Decoded generated images (uint8 ``[N, H, W]`` with names).
    k : int or None
    dev_sets : mapping model name -> uint8 ndarray [n, H, W]
    seed : int
    executor, address, progress, cache_dir
        As in :func:`attribute`.
    skips : list or None
        Skipped files of the reading step (counted in the summary).
    ingest_policy : dict or None

    Returns
    -------
    Attribution
        Its ``summary["timings"]`` holds ``cluster_s``; the caller adds ``read_s`` and ``total_s``.
    """
    from .attribution import attribute as _attribute
    from .executors import open_executor

    skips = list(skips or [])
    if k is not None and k > len(imgs):
        raise ImprintError(f"--k {k} is larger than the number of readable images ({len(imgs)})")
    t0 = time.perf_counter()
    with open_executor(executor, address) as ex:
        res = _attribute(imgs.images, k, dev_sets=dict(dev_sets) or None, random_state=seed, progress=progress,
                         cache_dir=None if cache_dir is None else str(cache_dir), executor=ex)
        ex_name = ex.name
    cluster_s = time.perf_counter() - t0
    labels = np.asarray(res.labels).astype(np.int64)
    sizes = np.bincount(labels, minlength=int(res.k)).tolist()
    summary = {
        "device": _device_summary(),
        "command": "attribute",
        "out": None,
        "details_out": None,
        "skip_report": None,
        "n_images": len(imgs),
        "n_skipped": len(skips),
        "k": int(res.k),
        "k_given": k,
        "cluster_sizes": sizes,
        "dev_models": sorted(dev_sets),
        "cluster_dev_model": res.info.get("cluster_dev_model", []),
        "known_models": res.info.get("known_models", []),
        "new_clusters": res.info.get("new_clusters", []),
        "dev_overlap_removed": res.info.get("dev_overlap_removed", {}),
        "cluster_confidence": res.info.get("cluster_confidence", []),
        "stability": res.info.get("stability", {}),
        "timings": {"cluster_s": cluster_s},
        "processing": None,  # per-image processing detection reads the files: the CLI job adds it
        "executor": ex_name,
        "info": res.info,
        "ingest_policy": ingest_policy,
    }
    summary["summary"] = attribution_line(summary)
    cdev = list(getattr(res, "cluster_dev_model", None) or [None] * int(res.k))
    dev_col = [cdev[c] or "" for c in labels.tolist()]  # matched dev model, empty for a new model
    return Attribution(images=list(imgs.paths), cluster=labels, confidence=np.asarray(res.confidence, dtype=float),
                       k=int(res.k), summary=summary, result=res, skipped=skips, dev_model=dev_col)
