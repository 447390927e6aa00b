"""Clinical inputs: DICOM (modality LUT to HU, windows, VOI LUT, multi-frame, series folders, compressed transfer
syntaxes), NIfTI volumes sliced axially, and patient metadata never reaching an output."""
import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import copying_generator, ct_like, save_png

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import (CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless,  # noqa: E402
                         generate_uid)

from imprint.engine import clinical  # noqa: E402
from imprint.engine.ingest import IngestPolicy, decode_bytes, decode_file, discover, load_folder  # noqa: E402

LUNG = clinical.WINDOW_PRESETS["lung"]
SECRET = {"PatientName": "Zyxwvut^Qopmarrow", "PatientID": "PID-8472-QX", "PatientBirthDate": "19310417",
          "InstitutionName": "Hospital-Kvlbrtz", "StudyDescription": "Study-Wqplmz"}


def v_to_hu(v: np.ndarray, window=LUNG) -> np.ndarray:
    """PNG value 0..255 -> HU (int16) such that the window (center, width) maps it back to the same value."""
    c, w = window
    return np.rint(v.astype(np.float64) * w / 255.0 + (c - w / 2.0)).astype(np.int16)


def write_dicom(path, hu, *, intercept=-1024.0, slope=1.0, window=None, voi_lut=None, photometric="MONOCHROME2",
                syntax=ExplicitVRLittleEndian, secret=SECRET, preamble=True):
    """Write a CT DICOM of HU values ``hu`` ([H,W] or [F,H,W]) stored as int16 with the rescale given."""
    hu = np.asarray(hu)
    frames = hu[None] if hu.ndim == 2 else hu
    stored = np.rint((frames.astype(np.float64) - intercept) / slope).astype(np.int16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, meta.MediaStorageSOPInstanceUID, "CT"
    for k, v in secret.items():
        setattr(ds, k, v)
    ds.Rows, ds.Columns = stored.shape[1:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = f"{intercept:g}", f"{slope:g}", "HU"
    if len(frames) > 1:
        ds.NumberOfFrames = len(frames)
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = f"{window[0]:g}", f"{window[1]:g}"
    if voi_lut is not None:
        item = Dataset()
        first, lut = voi_lut
        item.add_new(0x00283002, "SS", [len(lut), first, 16])   # LUTDescriptor; first mapped value may be < 0
        item.add_new(0x00283006, "OW", np.asarray(lut, dtype="<u2").tobytes())  # LUTData
        ds.VOILUTSequence = [item]
    ds.PixelData = stored.tobytes()
    if syntax != ExplicitVRLittleEndian:
        ds.compress(syntax)
    ds.save_as(path, enforce_file_format=preamble)
    return path


@pytest.fixture
def slices(rng):
    return ct_like(rng, 4, size=64)


def test_hu_roundtrip_with_window_and_presets(tmp_path, slices):
    pol = IngestPolicy(size=(64, 64), window=LUNG)
    p = write_dicom(tmp_path / "a.dcm", v_to_hu(slices[0]))
    img, digest = decode_file(p, pol)
    np.testing.assert_array_equal(img, slices[0])  # the modality LUT is applied: stored + (-1024) = HU
    assert digest == __import__("hashlib").sha256(p.read_bytes()).hexdigest()
    # a slope of 2 stores half the values: the same HU after the modality LUT
    p2 = write_dicom(tmp_path / "b.dcm", v_to_hu(slices[0]) // 2 * 2, slope=2.0, intercept=-1000)
    hu = v_to_hu(slices[0]) // 2 * 2
    np.testing.assert_array_equal(decode_file(p2, pol)[0], clinical.window_to_uint8(hu, -1350.0, 150.0))
    # presets are the documented windows; mediastinum puts lungs (< -160 HU) at 0 and bone (> 240) at 255
    assert clinical.parse_window("lung") == (-600.0, 1500.0)
    assert clinical.parse_window("Mediastinum") == (40.0, 400.0)
    assert clinical.parse_window("bone") == (400.0, 1800.0)
    assert clinical.parse_window("-600,1500") == (-600.0, 1500.0)
    for bad in ("lungs", "1", "a,b", "10,0", "10,-5", "nan,10"):
        with pytest.raises(ValueError, match="--window"):
            clinical.parse_window(bad)
    med = decode_file(p, IngestPolicy(size=(64, 64), window=clinical.WINDOW_PRESETS["mediastinum"]))[0]
    hu0 = v_to_hu(slices[0])
    assert (med[hu0 <= -160] == 0).all() and (med[hu0 >= 240] == 255).all()


def test_file_window_voi_lut_and_min_max_defaults(tmp_path, slices):
    hu = v_to_hu(slices[1])
    pol = IngestPolicy(size=(64, 64))
    # the file's own WindowCenter/Width is used when no window is given; the user's window wins over it
    p = write_dicom(tmp_path / "w.dcm", hu, window=(40, 400))
    np.testing.assert_array_equal(decode_file(p, pol)[0], clinical.window_to_uint8(hu, -160.0, 240.0))
    np.testing.assert_array_equal(decode_file(p, IngestPolicy(size=(64, 64), window=LUNG))[0], slices[1])
    # no window in the file: the file's min..max
    p = write_dicom(tmp_path / "n.dcm", hu)
    np.testing.assert_array_equal(decode_file(p, pol)[0],
                                  clinical.window_to_uint8(hu, float(hu.min()), float(hu.max())))
    # a VOI LUT table: output = LUT[HU - first], scaled from the table's range to 0..255
    first = int(hu.min())
    lut = np.arange(int(hu.max()) - first + 1) // 8 % 200
    p = write_dicom(tmp_path / "l.dcm", hu, voi_lut=(first, lut))
    want = clinical.window_to_uint8(lut[hu.astype(int) - first].astype(float), float(lut.min()), float(lut.max()))
    np.testing.assert_array_equal(decode_file(p, pol)[0], want)
    # MONOCHROME1 is shown inverted
    p = write_dicom(tmp_path / "m1.dcm", hu, photometric="MONOCHROME1")
    np.testing.assert_array_equal(decode_file(p, IngestPolicy(size=(64, 64), window=LUNG))[0], 255 - slices[1])


def test_multiframe_series_folder_and_recognition_by_content(tmp_path, slices):
    d = tmp_path / "in"
    (d / "series").mkdir(parents=True)
    write_dicom(d / "series" / "multi.dcm", v_to_hu(slices[:3]))
    write_dicom(d / "series" / "IM0001", v_to_hu(slices[3]))      # no extension: found by its DICM preamble
    write_dicom(d / "noext_nopreamble", v_to_hu(slices[3]), preamble=False)  # neither: not an image, ignored
    (d / "notes.txt").write_text("not an image")
    save_png(d / "plain.png", slices[0])
    rel, skipped = discover(d)
    assert rel == ["plain.png", "series/IM0001", "series/multi.dcm#0", "series/multi.dcm#1", "series/multi.dcm#2"]
    assert skipped == []
    s = load_folder(d, IngestPolicy(size=(64, 64), window=LUNG))
    assert s.paths == rel
    np.testing.assert_array_equal(s.images[2:], slices[:3])
    np.testing.assert_array_equal(s.images[1], slices[3])
    assert len(set(s.hashes)) == len(s.hashes)  # frames of one file are distinct images
    # a DICOM with a .png name is still read as DICOM (content wins)
    blob = (d / "series" / "IM0001").read_bytes()
    np.testing.assert_array_equal(decode_bytes(blob, IngestPolicy(size=(64, 64), window=LUNG)), slices[3])
    with pytest.raises(ValueError, match="out of range"):
        decode_file(str(d / "series" / "multi.dcm") + "#7", IngestPolicy(size=(64, 64)))
    # other sizes are resized like PNGs
    big = np.kron(slices[0], np.ones((2, 2), dtype=np.uint8))
    write_dicom(d / "big.dcm", v_to_hu(big))
    got = decode_file(d / "big.dcm", IngestPolicy(size=(64, 64), window=LUNG))[0]
    np.testing.assert_array_equal(got, slices[0])


def test_enhanced_multiframe_per_frame_rescale(tmp_path, slices):
    p = write_dicom(tmp_path / "e.dcm", v_to_hu(slices[:2]))
    ds = pydicom.dcmread(p)
    del ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType
    frames = ds.pixel_array.astype(np.int32)
    groups = []
    for i, inter in enumerate((-1024, -2048)):   # frame 1 stored with another intercept
        g, t = Dataset(), Dataset()
        t.RescaleSlope, t.RescaleIntercept, t.RescaleType = "1", str(inter), "HU"
        g.PixelValueTransformationSequence = [t]
        groups.append(g)
        frames[i] = v_to_hu(slices[i]).astype(np.int32) - inter
    ds.PerFrameFunctionalGroupsSequence = groups
    ds.PixelData = frames.astype(np.int16).tobytes()
    ds.save_as(p)
    s = load_folder(tmp_path, IngestPolicy(size=(64, 64), window=LUNG))
    np.testing.assert_array_equal(s.images, slices[:2])


def test_compressed_transfer_syntaxes_and_unsupported_skip(tmp_path, slices):
    hu = v_to_hu(slices[2])
    pol = IngestPolicy(size=(64, 64), window=LUNG)
    write_dicom(tmp_path / "rle.dcm", hu, syntax=RLELossless)  # pydicom's native RLE codec: always available
    np.testing.assert_array_equal(decode_file(tmp_path / "rle.dcm", pol)[0], slices[2])
    from pydicom.pixels import get_encoder

    if get_encoder(JPEG2000Lossless).is_available:   # the 'clinical' extra (pylibjpeg-openjpeg)
        write_dicom(tmp_path / "j2k.dcm", hu, syntax=JPEG2000Lossless)
        np.testing.assert_array_equal(decode_file(tmp_path / "j2k.dcm", pol)[0], slices[2])
    # a compressed transfer syntax no installed decoder handles is a per-file skip naming it, never a crash
    from pydicom.encaps import encapsulate
    from pydicom.pixels import get_decoder

    def undecodable(ts):
        try:
            return not get_decoder(ts).is_available
        except NotImplementedError:
            return True

    ts = next(t for t in pydicom.uid.AllTransferSyntaxes if t.is_compressed and undecodable(t))
    p = write_dicom(tmp_path / "jxl.dcm", hu)
    ds = pydicom.dcmread(p)
    ds.file_meta.TransferSyntaxUID = ts
    ds.PixelData = encapsulate([b"\xff\x0a" + b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    ds.save_as(p, enforce_file_format=True)
    s = load_folder(tmp_path, pol)
    reasons = {k.path: k.reason for k in s.skipped}
    assert "jxl.dcm" in reasons and str(ts) in reasons["jxl.dcm"]
    assert "decoder" in reasons["jxl.dcm"]
    assert "rle.dcm" in s.paths


def test_bad_dicoms_are_skipped_without_leaking(tmp_path, slices):
    p = write_dicom(tmp_path / "ok.dcm", v_to_hu(slices[0]))
    data = p.read_bytes()
    (tmp_path / "trunc.dcm").write_bytes(data[: len(data) - 3000])
    (tmp_path / "header_only.dcm").write_bytes(data[:400])
    (tmp_path / "garbage.dcm").write_bytes(b"\x00" * 128 + b"DICM" + os.urandom(300))
    (tmp_path / "empty.dcm").write_bytes(b"")
    ds = pydicom.dcmread(p)
    del ds.PixelData, ds.Rows, ds.Columns
    ds.save_as(tmp_path / "report.dcm")   # e.g. a structured report: no image
    s = load_folder(tmp_path, IngestPolicy(size=(64, 64), window=LUNG))
    assert s.paths == ["ok.dcm"]
    reasons = {k.path: k.reason for k in s.skipped}
    assert set(reasons) == {"trunc.dcm", "header_only.dcm", "garbage.dcm", "empty.dcm", "report.dcm"}
    for r in reasons.values():
        assert "\n" not in r and not any(v in r for v in SECRET.values()), r


def _nifti(path, vol, affine, **hdr):
    img = nib.Nifti1Image(vol, affine)
    for k, v in hdr.items():
        img.header[k] = v
    nib.save(img, str(path))
    return path


def test_nifti_axial_slices_in_display_orientation(tmp_path, slices):
    hu = v_to_hu(slices[:3]).astype(np.int16)           # [k, row, col] as shown
    # LPS-stored volume: i = column (towards patient left), j = row (towards posterior), k = slice (superior)
    lps = np.ascontiguousarray(hu.transpose(2, 1, 0))
    aff_lps = np.diag([-1.0, -1.0, 1.0, 1.0])           # RAS+ affine of LPS voxel axes
    _nifti(tmp_path / "lps.nii", lps, aff_lps)
    # the same anatomy stored RAS (both in-plane axes flipped) and gzip-compressed
    ras = lps[::-1, ::-1, :].copy()
    _nifti(tmp_path / "ras.nii.gz", ras, np.eye(4))
    # and stored with the slice axis first (sagittal-major storage), still sliced axially
    _nifti(tmp_path / "perm.nii.gz", np.ascontiguousarray(lps.transpose(2, 0, 1)),
           np.array([[0, -1.0, 0, 0], [0, 0, -1.0, 0], [1.0, 0, 0, 0], [0, 0, 0, 1]]))
    pol = IngestPolicy(size=(64, 64), window=LUNG)
    s = load_folder(tmp_path, pol)
    assert s.paths == [f"{n}#{k}" for n in ("lps.nii", "perm.nii.gz", "ras.nii.gz") for k in range(3)]
    for b in range(3):
        np.testing.assert_array_equal(s.images[3 * b: 3 * b + 3], slices[:3])
    # without a window: cal_min/cal_max when set, else the volume's min..max
    p = _nifti(tmp_path / "cal.nii", lps, aff_lps, cal_min=-1350.0, cal_max=150.0)
    np.testing.assert_array_equal(decode_file(str(p) + "#1", IngestPolicy(size=(64, 64)))[0], slices[1])
    (tmp_path / "bad.nii.gz").write_bytes(b"\x1f\x8b" + os.urandom(200))
    rel, skipped = discover(tmp_path)
    assert [k.path for k in skipped] == ["bad.nii.gz"]


def _membership_set(root, rng, n_real=24, n_gen=40):
    reals = ct_like(rng, n_real)
    used = reals[: n_real // 3]
    gen = copying_generator(rng, used, n_gen)
    (root / "gen").mkdir(parents=True)
    for i, g in enumerate(gen):
        save_png(root / "gen" / f"g{i:03d}.png", g)
    return reals


def _scores(path):
    with open(path, newline="") as fh:
        return {r["image"]: (float(r["score"]), int(r["used"])) for r in csv.DictReader(fh)}


def test_dicom_membership_scores_like_the_png_originals(tmp_path):
    """Target: real images written as int16 HU DICOM (intercept -1024) and read with the lung window score the
    same as the PNG originals (max |difference| <= 0.05, identical decisions)."""
    from imprint.engine.pipeline import run_membership

    rng = np.random.default_rng(5)
    reals = _membership_set(tmp_path, rng)     # the first 8 of 24 are copied (noisily) by the generator
    refs = ct_like(rng, 24)                    # known non-members: the null
    for name in ("png", "dcm", "ref_png", "ref_dcm"):
        (tmp_path / name).mkdir()
    for i, r in enumerate(reals):
        save_png(tmp_path / "png" / f"r{i:03d}.png", r)
        write_dicom(tmp_path / "dcm" / f"r{i:03d}.dcm", v_to_hu(r))
    for i, r in enumerate(refs):
        save_png(tmp_path / "ref_png" / f"n{i:03d}.png", r)
        write_dicom(tmp_path / "ref_dcm" / f"n{i:03d}.dcm", v_to_hu(r))
    pol = IngestPolicy(size=(64, 64), window=clinical.parse_window("-600,1500"))
    for name in ("png", "dcm"):
        run_membership(gen_dir=str(tmp_path / "gen"), real_dir=str(tmp_path / name),
                       ref_dirs=[str(tmp_path / f"ref_{name}")], out=str(tmp_path / f"{name}.csv"), policy=pol)
    a, b = _scores(tmp_path / "png.csv"), _scores(tmp_path / "dcm.csv")
    assert len(a) == len(b) == len(reals)
    pairs = [(a[k], b[k.replace(".png", ".dcm")]) for k in sorted(a)]
    assert max(abs(x[0] - y[0]) for x, y in pairs) <= 0.05
    assert [x[1] for x, y in pairs] == [y[1] for x, y in pairs]
    # the decisions compared are informative: the planted copies are found, and not everything is flagged
    flagged = [x[1] for x, _ in pairs]
    assert sum(flagged[:8]) >= 6 and sum(flagged) < len(flagged)


@pytest.fixture(scope="module")
def pixel_models(tmp_path_factory):
    from imprint.models.build import build_all

    d = tmp_path_factory.mktemp("models")
    assert build_all(d, only=["pixel"])["pixel"] == "built"
    return d


def test_patient_metadata_never_reaches_outputs(tmp_path, monkeypatch, pixel_models):
    """DICOMs with distinctive patient strings go through membership (with report), embed and pairs; no output
    file, log or printed line contains any of them."""
    from click.testing import CliRunner

    from imprint.engine.cli import cli

    rng = np.random.default_rng(9)
    reals = _membership_set(tmp_path, rng, n_real=12, n_gen=16)
    real = tmp_path / "real"
    (real / "series").mkdir(parents=True)
    for i, r in enumerate(reals[:8]):
        write_dicom(real / "series" / f"IM{i:04d}", v_to_hu(r))
    write_dicom(real / "multi.dcm", v_to_hu(reals[8:]), window=(40, 400))
    (real / "broken.dcm").write_bytes((real / "multi.dcm").read_bytes()[:1500])  # skip report path
    out = tmp_path / "out"
    out.mkdir()
    logs = tmp_path / "logs"
    monkeypatch.setenv("IMPRINT_LOG_DIR", str(logs))
    monkeypatch.setenv("IMPRINT_MODELS_DIR", str(pixel_models))
    runner = CliRunner()
    printed = []
    for args in (
        ["-v", "membership", "--generated", str(tmp_path / "gen"), "--real", str(real), "--out",
         str(out / "scores.csv"), "--size", "64", "--window", "lung", "--report", str(out / "report")],
        ["-v", "embed", str(real), "--store", str(out / "store"), "--size", "64", "--window", "lung", "--json"],
        ["pairs", "--real", str(real), "--generated", str(tmp_path / "gen"), "--k", "2", "--out",
         str(out / "pairs.parquet"), "--size", "64", "--store-dir", str(out / "stores")],
    ):
        r = runner.invoke(cli, args, catch_exceptions=False)
        assert r.exit_code == 0, r.output
        printed.append(r.output)
    rows = _scores(out / "scores.csv")
    assert len(rows) == 12 and "multi.dcm#3" in rows and "series/IM0000" in rows
    files = [p for p in out.rglob("*") if p.is_file()] + ([p for p in logs.rglob("*") if p.is_file()]
                                                          if logs.exists() else [])
    assert any(p.suffix == ".arrow" for p in files) and (out / "report" / "index.html").exists()
    assert (out / "scores.skipped.csv").exists()
    needles = [v.encode() for v in SECRET.values()] + [v.replace("^", " ").encode() for v in SECRET.values()]
    for p in files:
        blob = p.read_bytes()
        for n in needles:
            assert n not in blob, (p, n)
    for text in printed:
        for n in needles:
            assert n.decode() not in text
    # the needles are really in the inputs (the check above could otherwise pass vacuously)
    assert needles[0] in (real / "multi.dcm").read_bytes()


def test_window_option_errors_are_one_line(tmp_path):
    from click.testing import CliRunner

    from imprint.engine.cli import main

    import click

    @click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    @click.pass_context
    def wrapper(ctx):
        main(list(ctx.args))

    (tmp_path / "d").mkdir()
    for bad in ("lungs", "-600", "40,0"):
        r = CliRunner().invoke(wrapper, ["embed", str(tmp_path / "d"), "--store", str(tmp_path / "s"),
                                         "--window", bad])
        assert r.exit_code == 2 and r.output.startswith("error: --window") and r.output.count("\n") == 1, r.output


def test_nifti_4d_is_skipped_and_2d_is_one_image(tmp_path, slices):
    _nifti(tmp_path / "fmri.nii", np.zeros((8, 8, 4, 3), np.int16), np.eye(4))
    _nifti(tmp_path / "one.nii", np.ascontiguousarray(v_to_hu(slices[0]).T[::-1, ::-1]), np.eye(4))
    s = load_folder(tmp_path, IngestPolicy(size=(64, 64), window=LUNG))
    assert s.paths == ["one.nii"]
    np.testing.assert_array_equal(s.images[0], slices[0])
    assert [(k.path, "dimensions" in k.reason) for k in s.skipped] == [("fmri.nii", True)]
