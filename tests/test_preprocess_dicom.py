"""dicom_to_h5: real pydicom / pydicom-data files, UK Biobank-named zips, specs, failures."""

from __future__ import annotations

import json
import os
import subprocess
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from Engineering.data.dicom_series import file_info, phase_to_radians, plane_of
from Engineering.data.layout import DATASET_ATTRS, GROUP_ATTRS, parse_key
from preprocess.series_spec import assign_keys
from tests.conftest import run_main, run_tool

SERIES_DIR = Path(pydicom.data.__file__).parent / "test_files" / "dicomdirtests" / "98892003"


def dicom_file(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} needs the pydicom-data package")
    return Path(path)


def make_zip(path: Path, files: dict[str, bytes | Path]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, content in files.items():
            zf.writestr(name, content.read_bytes() if isinstance(content, Path) else content)
    return path


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """Four UK Biobank-named zips, the second one corrupt, converted by the CLI."""
    tmp = tmp_path_factory.mktemp("ukbb")
    series = {f"{p.parent.name}/{p.name}": p for p in sorted(SERIES_DIR.glob("MR[12]/*"))}
    make_zip(tmp / "1000001_20208_2_0.zip", {**series, "manifest.csv": b"not,dicom\n"})
    (tmp / "1000002_20208_2_0.zip").write_bytes(b"PK\x03\x04 this is not really a zip")
    make_zip(tmp / "1000003_20208_2_0.zip", {"emri.dcm": dicom_file("emri_small.dcm")})
    make_zip(tmp / "1000004_20208_2_0.zip", {"us.dcm": dicom_file("OBXXXX1A_2frame.dcm")})
    out = tmp / "data.h5"
    return out, run_tool("dicom_to_h5", tmp, "--out", out)


def test_corrupt_zip_in_batch_is_skipped_and_rest_converted(batch):
    out, proc = batch
    assert proc.returncode == 0, proc.stderr
    assert "skipped" in proc.stderr and "1000002_20208_2_0.zip" in proc.stderr
    assert "converted 3 of 4 inputs, 1 failed" in proc.stdout
    with h5py.File(out, "r") as h5:
        assert sorted(h5) == ["1000001", "1000003", "1000004"]
        assert not any(name.startswith(".") for name in os.listdir(out.parent) if name.endswith(".tmp"))


def test_multiframe_mr_becomes_time_axis(batch):
    out, _ = batch
    ds = pydicom.dcmread(dicom_file("emri_small.dcm"))
    with h5py.File(out, "r") as h5:
        data = h5["1000003/20208/2/primary"]
        assert data.shape == (1, 10, 1, 64, 64)
        np.testing.assert_array_equal(data[0, :, 0], ds.pixel_array)
        assert data.attrs["min_val"] == ds.pixel_array.min() and data.attrs["max_val"] == ds.pixel_array.max()
        assert data.attrs["seriesID"] == ds.SeriesInstanceUID


def test_frames_as_slices_on_request(tmp_path):
    out = tmp_path / "d.h5"
    assert run_main("dicom_to_h5", dicom_file("emri_small.dcm"), "--out", out, "--frames-as", "slice") == 0
    with h5py.File(out, "r") as h5:
        (patient,) = h5
        assert h5[f"{patient}/0/0/primary"].shape == (1, 1, 10, 64, 64)


def test_multiframe_palette_ultrasound_gives_rgb_channels(batch):
    out, _ = batch
    with h5py.File(out, "r") as h5:
        data = h5["1000004/20208/2/primary"]
        assert data.shape == (3, 2, 1, 600, 800)
        assert h5["1000004/20208/2"].attrs["n_series"] == 1


def test_attributes_and_header_without_private_groups(batch):
    out, _ = batch
    with h5py.File(out, "r") as h5:
        group = h5["1000001/20208/2"]
        assert set(GROUP_ATTRS) <= set(group.attrs)
        assert group.attrs["patientDICOMID"] == "98890234"
        for key, ds in group.items():
            assert parse_key(key) is not None and ds.ndim == 5
            assert set(DATASET_ATTRS) <= set(ds.attrs)
            header = json.loads(ds.attrs["DICOMHeader"])
            assert header["00100020"]["Value"] == ["98890234"]
            assert not [tag for tag in header if int(tag[:4], 16) % 2], "private groups must be dropped"
            assert "7FE00010" not in header


def test_no_spec_stores_every_series_as_numbered_primary_with_planes(batch):
    out, _ = batch
    with h5py.File(out, "r") as h5:
        keys = sorted(h5["1000001/20208/2"])
    # 4 localisers + the sagittal images of 2 tri-plane pilots, then 2 coronal, 2 transverse.
    assert keys == sorted(
        [f"primary_sagittal_{i}" for i in range(6)]
        + ["primary_coronal_0", "primary_coronal_1", "primary_transverse_0", "primary_transverse_1"]
    )


def _spec(tmp: Path, repeat: bool) -> Path:
    spec = tmp / "spec.yaml"
    spec.write_text(
        "'*':\n"
        "  primary_data: ['FAST LOCALIZER']\n"
        "  auxiliary_data: ['T/S/C RF*']\n"
        "  auxiliary_data_tags: [pilot]\n"
        "  default_plane: sagittal\n"
        f"  repeat_acq: {str(repeat).lower()}\n"
    )
    return spec


def test_spec_folder_input_ids_from_tags_plane_and_repeats(tmp_path):
    out = tmp_path / "d.h5"
    assert run_main("dicom_to_h5", SERIES_DIR, "--out", out, "--spec", _spec(tmp_path, True), "--field", "scout") == 0
    with h5py.File(out, "r") as h5:
        studies = h5["98890234/scout"]
        assert sorted(studies) == ["0", "1", "2"]  # three studies of one patient, in date/time order
        descs = {studies[i].attrs["studyDesc"] for i in studies}
        assert descs == {"Brain", "Brain-MRA", "Carotids"}
        carotids = next(studies[i] for i in studies if studies[i].attrs["studyDesc"] == "Carotids")
        assert sorted(carotids) == ["primary_0", "primary_1"]  # two localisers, sagittal = default plane
        brain = next(studies[i] for i in studies if studies[i].attrs["studyDesc"] == "Brain")
        assert sorted(brain) == [
            "auxiliary_pilot_0",
            "auxiliary_pilot_coronal_0",
            "auxiliary_pilot_transverse_0",
            "primary_0",
        ]


def test_without_repeat_acq_a_repeated_key_is_reported_and_ignored(tmp_path, capsys):
    out = tmp_path / "d.h5"
    assert run_main("dicom_to_h5", SERIES_DIR, "--out", out, "--spec", _spec(tmp_path, False), "--field", "scout") == 0
    with h5py.File(out, "r") as h5:
        carotids = next(g for g in h5["98890234/scout"].values() if g.attrs["studyDesc"] == "Carotids")
        assert list(carotids) == ["primary"]
    assert "repeated acquisitions ignored: 1" in capsys.readouterr().out


def _truncated_series(tmp: Path) -> Path:
    """A real MR file made into a second series whose pixel data is cut short."""
    ds = pydicom.dcmread(dicom_file("MR_small.dcm"))
    ds.SeriesInstanceUID, ds.SeriesNumber = generate_uid(), 99
    path = tmp / "broken.dcm"
    ds.save_as(path)
    path.write_bytes(path.read_bytes()[:-3000])
    return path


def test_failing_series_removes_partial_group_and_batch_goes_on(tmp_path, capsys):
    good = make_zip(tmp_path / "1000001_20209_2_0.zip", {"ct.dcm": dicom_file("CT_small.dcm")})
    bad = make_zip(
        tmp_path / "1000002_20209_2_0.zip",
        {"mr.dcm": dicom_file("MR_small.dcm"), "broken.dcm": _truncated_series(tmp_path)},
    )
    out = tmp_path / "d.h5"
    assert run_main("dicom_to_h5", bad, good, "--out", out) == 0
    printed = capsys.readouterr()
    assert "broken.dcm" in printed.out and "1 failed" in printed.out and "skipped" in printed.err
    with h5py.File(out, "r") as h5:
        assert list(h5) == ["1000001"]  # the MR written before the failure is gone too
        ct = h5["1000001/20209/2/primary_transverse"]
        assert ct.dtype == np.float32 and ct.attrs["min_val"] < 0  # CT rescale intercept applied


def test_complex_from_magnitude_and_phase_pair(tmp_path):
    mag = pydicom.dcmread(dicom_file("MR_small.dcm"))
    mag.SeriesDescription = "flow_MAG"
    phase = pydicom.dcmread(dicom_file("MR_small.dcm"))
    phase.SeriesDescription, phase.SeriesInstanceUID, phase.SeriesNumber = "flow_P", generate_uid(), 2
    phase.PixelRepresentation, phase.BitsStored = 0, 12
    raw = (np.arange(64 * 64).reshape(64, 64) % 4096).astype(np.uint16)
    phase.PixelData = raw.tobytes()
    mag.save_as(tmp_path / "mag.dcm")
    phase.save_as(tmp_path / "phase.dcm")
    make_zip(tmp_path / "1000001_20213_2_0.zip", {"m.dcm": tmp_path / "mag.dcm", "p.dcm": tmp_path / "phase.dcm"})
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "20213": {
                    "auxiliary_data": [{"magnitude": "flow_MAG", "phase": "flow_P"}],
                    "auxiliary_data_tags": ["flow"],
                    "default_plane": "transverse",
                }
            }
        )
    )
    out = tmp_path / "d.h5"
    assert run_main("dicom_to_h5", tmp_path / "1000001_20213_2_0.zip", "--out", out, "--spec", spec) == 0
    with h5py.File(out, "r") as h5:
        data = h5["1000001/20213/2/auxiliary_flow"]
        assert list(h5["1000001/20213/2"]) == ["auxiliary_flow"] and np.iscomplexobj(data[()])
        z = data[0, 0, 0]
        np.testing.assert_allclose(np.abs(z), mag.pixel_array, rtol=1e-5)
        expected = raw / 4095 * 2 * np.pi - np.pi
        np.testing.assert_allclose(np.angle(z * np.exp(-1j * expected)), 0, atol=1e-5)  # equal modulo 2 pi
        assert data.attrs["max_val"] == pytest.approx(mag.pixel_array.max())


def test_append_keeps_earlier_groups(batch, tmp_path):
    out = tmp_path / "d.h5"
    assert run_main("dicom_to_h5", dicom_file("MR_small.dcm"), "--out", out, "--field", "a") == 0
    assert run_main("dicom_to_h5", dicom_file("CT_small.dcm"), "--out", out, "--append", "--field", "b") == 0
    with h5py.File(out, "r") as h5:
        assert sorted(h5) == ["1CT1", "4MR1"]


def test_bad_inputs_give_one_line_error_and_exit_2(tmp_path, capsys):
    proc = run_tool("dicom_to_h5", tmp_path / "missing.zip", "--out", tmp_path / "d.h5")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: input not found: {tmp_path / 'missing.zip'}"
    ]
    spec = tmp_path / "spec.yaml"
    spec.write_text("'20208':\n  primary_data: [a, b]\n  multi_primary: true\n  primary_data_tags: [x]\n")
    assert run_main("dicom_to_h5", dicom_file("MR_small.dcm"), "--out", tmp_path / "d.h5", "--spec", spec) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: spec") and "primary_data_tags" in err
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"nothing")
    proc = run_tool("dicom_to_h5", junk, "--out", tmp_path / "d.h5")
    assert proc.returncode == 2 and "error: no input could be converted" in proc.stderr
    assert not (tmp_path / "d.h5").exists()


def test_assign_keys_rules():
    items = [("primary", "sagittal"), ("primary", "sagittal"), ("auxiliary_t1", "transverse"), ("primary", None)]
    assert assign_keys(items, "sagittal", repeat_acq=False) == ["primary", None, "auxiliary_t1_transverse", None]
    assert assign_keys(items, None, repeat_acq=True) == [
        "primary_sagittal_0",
        "primary_sagittal_1",
        "auxiliary_t1_transverse_0",
        "primary_0",
    ]
    assert assign_keys(items[:3], None, False, number_when_several=True) == [
        "primary_sagittal_0",
        "primary_sagittal_1",
        "auxiliary_t1_transverse",
    ]
    assert assign_keys([("primary", None)], None, True, taken={"primary_0"}) == ["primary_1"]


def test_plane_from_orientation_and_phase_scaling():
    assert plane_of([1, 0, 0, 0, 1, 0])[0] == "transverse"
    assert plane_of([0, 1, 0, 0, 0, -1])[0] == "sagittal"
    assert plane_of([1, 0, 0, 0, 0, -1])[0] == "coronal"
    assert plane_of(None) == (None, None)
    ds = pydicom.Dataset()
    ds.BitsStored, ds.PixelRepresentation, ds.RescaleSlope, ds.RescaleIntercept = 12, 0, 2, -4096
    np.testing.assert_allclose(phase_to_radians(np.array([-4096.0, 4094.0]), ds), [-np.pi, np.pi], atol=1e-6)
    info = file_info("x", pydicom.dcmread(dicom_file("MR_small.dcm"), stop_before_pixels=True))
    assert info.plane == "transverse" and info.position is not None
