"""nifti_to_h5 on nibabel's shipped images: layout, attributes, IDs, a broken file in a batch."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np

from preprocess.nifti_sources import find_nifti, load_5d
from tests.conftest import run_main, run_tool

NIB_DATA = Path(nib.__file__).parent / "tests" / "data"
EXAMPLE4D, ANATOMICAL = NIB_DATA / "example4d.nii.gz", NIB_DATA / "anatomical.nii"


def test_4d_time_to_T_and_volume_to_SXY():
    array, attrs = load_5d(EXAMPLE4D)
    img = nib.load(str(EXAMPLE4D))
    data = np.asanyarray(img.dataobj)  # (i, j, k, t)
    assert array.shape == (1, data.shape[3], data.shape[2], data.shape[0], data.shape[1])
    np.testing.assert_array_equal(array[0, 1, 5], data[:, :, 5, 1])
    np.testing.assert_allclose(attrs["affine"], img.affine)
    np.testing.assert_allclose(attrs["voxel_size"], img.header.get_zooms()[:3])
    assert attrs["time_step"] == img.header.get_zooms()[3]
    assert array.dtype.isnative


def test_batch_with_broken_file_ukbb_names_and_attributes(tmp_path):
    shutil.copy(ANATOMICAL, tmp_path / "1000001_20252_2_0.nii")
    (tmp_path / "1000002_20252_2_0.nii.gz").write_bytes(b"not gzip at all")
    shutil.copy(EXAMPLE4D, tmp_path / "1000003_20252_3_0.nii.gz")
    out = tmp_path / "data.h5"
    proc = run_tool("nifti_to_h5", tmp_path, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "1000002_20252_2_0.nii.gz" in proc.stderr and "converted 2 of 3 inputs, 1 failed" in proc.stdout
    with h5py.File(out, "r") as h5:
        assert sorted(h5) == ["1000001", "1000003"]
        vol = h5["1000001/20252/2/primary"]
        assert vol.shape == (1, 1, 25, 33, 41)
        ref = np.asanyarray(nib.load(str(ANATOMICAL)).dataobj)
        assert vol.attrs["min_val"] == ref.min() and vol.attrs["max_val"] == ref.max()
        assert h5["1000003/20252/3/primary"].shape == (1, 2, 24, 128, 96)
        assert vol.attrs["affine"].shape == (4, 4)


def test_mapping_csv_names_ids_and_keys(tmp_path):
    mapping = tmp_path / "map.csv"
    mapping.write_text(
        f"path,patientID,fieldID,instanceID,key\n{ANATOMICAL},p1,t1,0,primary_T1\n{EXAMPLE4D},p1,fmri,0,\n"
    )
    items = find_nifti([str(mapping)])
    assert [i.ids for i in items] == [("p1", "t1", "0", "primary_T1"), ("p1", "fmri", "0", "primary")]
    out = tmp_path / "d.h5"
    assert run_main("nifti_to_h5", mapping, "--out", out) == 0
    with h5py.File(out, "r") as h5:
        assert sorted(h5["p1"]) == ["fmri", "t1"] and "primary_T1" in h5["p1/t1/0"]


def test_plain_names_use_field_and_instance_options(tmp_path):
    items = find_nifti([str(ANATOMICAL)], field="20252", instance="2", key="auxiliary_t1")
    assert [i.ids for i in items] == [("anatomical", "20252", "2", "auxiliary_t1")]


def test_errors_exit_2_with_one_line(tmp_path, capsys):
    proc = run_tool("nifti_to_h5", tmp_path / "nope.nii", "--out", tmp_path / "d.h5")
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: input not found: {tmp_path / 'nope.nii'}"
    assert run_main("nifti_to_h5", ANATOMICAL, "--out", tmp_path / "d.h5", "--key", "secondary") == 2
    assert capsys.readouterr().err.startswith("error: --key: 'secondary' is not a valid dataset key")
    bad = tmp_path / "bad.nii"
    bad.write_bytes(b"\0" * 10)
    assert run_main("nifti_to_h5", bad, "--out", tmp_path / "d.h5") == 2
    assert "no input could be converted" in capsys.readouterr().err and not (tmp_path / "d.h5").exists()
