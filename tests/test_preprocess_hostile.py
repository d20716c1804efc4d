"""preprocess/ tools on damaged files and folders they cannot write: one line, exit 2, no traceback."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from tests.conftest import run_main


def _corrupt_header(path, name):
    """Overwrite the object header of dataset ``name`` (the file's signature and other objects stay intact)."""
    with h5py.File(path, "r") as h5:
        addr = h5py.h5o.get_info(h5[name].id).addr
    raw = bytearray(path.read_bytes())
    raw[addr : addr + 40] = b"\xde\xad\xbe\xef" * 10
    path.write_bytes(bytes(raw))


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as h5:
        for pid in ("1", "7", "8", "9"):
            for key in ("primary_cine_0", "primary_other_0"):
                ds = h5.create_dataset(f"{pid}/2/3/{key}", data=np.ones((1, 2, 1, 8, 8), np.int16))
                ds.attrs.update({"min_val": 1, "max_val": 1})
    return path


def _last_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err)
    return err[-1]


def test_validate_reports_string_min_val_and_damaged_headers(data, capsys):
    with h5py.File(data, "a") as h5:
        h5["1/2/3/primary_cine_0"].attrs["min_val"] = "low"
    assert run_main("validate_h5", data) == 2
    out = capsys.readouterr()
    assert "min_val='low' is not a finite number" in out.err + out.out
    _corrupt_header(data, "1/2/3/primary_other_0")
    assert run_main("validate_h5", data) == 2
    out = capsys.readouterr()
    assert "1/2/3/primary_other_0: cannot be read" in out.err + out.out and "Traceback" not in out.err


def test_make_masks_on_damaged_and_truncated_files(data, tmp_path, capsys):
    _corrupt_header(data, "1/2/3/primary_other_0")
    assert run_main("make_masks", data) == 2
    assert "primary_other_0 cannot be read" in _last_line(capsys)  # not skipped without a word
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data.read_bytes()[:3000])
    assert run_main("make_masks", cut) == 2
    assert "truncated or damaged" in _last_line(capsys)


def test_the_data_index_names_a_damaged_dataset(data):
    from Engineering.data.index import Selection, scan
    from Engineering.errors import UserError

    _corrupt_header(data, "1/2/3/primary_other_0")
    with pytest.raises(UserError, match="primary_other_0 cannot be read .*validate_h5"):
        scan(data, Selection())


@pytest.mark.parametrize(
    "tool,args",
    [
        ("make_folds", ["--out", "{out}/folds.csv", "--n-folds", "2"]),
        ("crop_h5", ["--out", "{out}/c.h5", "--size", "4", "4"]),
        ("make_masks", ["--out", "{out}/m.h5"]),
    ],
)
def test_unwritable_output_is_one_line(data, tmp_path, capsys, monkeypatch, tool, args):
    """(Tests run as root, for whom permission bits do not apply: the refusal is simulated where files are made.)"""
    import tempfile

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied", str(tmp_path / "ro"))

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    code = run_main(tool, data, *[a.format(out=tmp_path / "ro") for a in args])
    assert code == 2
    assert "permission denied" in _last_line(capsys)


def test_dicom_to_h5_into_an_unwritable_folder(tmp_path, capsys, monkeypatch):
    import tempfile

    from tests.test_preprocess_dicom import dicom_file

    src = dicom_file("emri_small.dcm")
    (tmp_path / "ro").mkdir()

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied", str(tmp_path / "ro"))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    assert run_main("dicom_to_h5", src, "--out", tmp_path / "ro" / "d.h5") == 2
    assert "permission denied" in _last_line(capsys)
    assert not (tmp_path / "ro" / "d.h5").exists()


# ---------------------------------------------------------------- issue 34, second campaign (preprocess side)
# Declared-huge datasets (chunked: terabytes declared, nothing on disk), size flags asking for huge outputs, an
# --out that is a folder, numeric flags out of their domain and IDs that are not group names: one line, exit 2,
# nothing allocated and nothing written (the library side: tests/test_hostile_round2.py).

HUGE = 10**6


def _huge(path, shape, dtype=np.int16):
    with h5py.File(path, "w") as h5:
        ds = h5.create_dataset(
            "1/2/3/primary_cine_0", shape=shape, dtype=dtype, chunks=tuple(min(s, 64) for s in shape)
        )
        ds.attrs.update({"min_val": 0, "max_val": 1})
    return path


def _refused(capsys, code, *words):
    assert code == 2
    line = _last_line(capsys)
    assert line.startswith("error: "), line
    for w in words:
        assert w in line, (w, line)


@pytest.mark.parametrize(
    "tool,shape,args,words",
    [
        (
            "crop_h5",
            (1, 1, 1, HUGE, HUGE),
            ["--out", "{out}/c.h5", "--size", "4", "4", "--no-mask"],
            ["cropping", "1/2/3/primary_cine_0", "GiB, more than"],
        ),
        (
            "crop_h5",
            (1, 1, 1, 8, 8),
            ["--out", "{out}/c.h5", "--size", str(HUGE), str(HUGE), "--no-mask"],
            ["--size", "GiB, more than"],
        ),
        (
            "make_point_clouds",
            (1, 1, HUGE, HUGE, 8),
            ["--out", "{out}/p.h5"],
            ["sampling 2048 points", "1/2/3/primary_cine_0", "GiB, more than"],
        ),
        (
            "make_masks",
            (1, 1, 1, HUGE, HUGE),
            ["--out", "{out}/m.h5"],
            ["masking", "1/2/3/primary_cine_0", "GiB, more"],
        ),
        (
            "make_point_clouds",
            (1, 1, 4, 8, 8),
            ["--out", "{out}/p.h5", "--n_points", str(10**12)],
            ["--n_points 1000000000000", "GiB, more than"],
        ),
    ],
)
def test_huge_datasets_and_size_flags_are_refused_before_allocation(tmp_path, capsys, tool, shape, args, words):
    import tracemalloc

    data = _huge(tmp_path / "data.h5", shape)
    tracemalloc.start()
    try:
        code = run_main(tool, data, *[a.format(out=tmp_path) for a in args])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    _refused(capsys, code, *words)
    assert peak < 64 * 2**20
    assert not list(tmp_path.glob("[cpm].h5")) and not list(tmp_path.glob(".*.tmp"))


def test_validate_reports_a_dataset_too_large_to_scan(tmp_path, capsys):
    data = _huge(tmp_path / "data.h5", (1, 1, 1, HUGE, HUGE))
    assert run_main("validate_h5", data) == 2
    out = capsys.readouterr()
    assert "1/2/3/primary_cine_0: not scanned" in out.err and "GiB, more than" in out.err
    assert "Traceback" not in out.err
    assert run_main("validate_h5", data, "--quick") == 0  # names, shapes and attributes only: fine


@pytest.mark.parametrize(
    "tool,args",
    [
        ("crop_h5", ["--size", "4", "4"]),
        ("make_folds", ["--n-folds", "2"]),
        ("make_masks", []),
        ("make_point_clouds", []),
    ],
)
def test_out_that_is_a_folder(data, tmp_path, capsys, tool, args):
    (tmp_path / "out.h5").mkdir()
    _refused(capsys, run_main(tool, data, "--out", tmp_path / "out.h5", *args), "out.h5 is an existing folder")
    assert list((tmp_path / "out.h5").iterdir()) == []


@pytest.mark.parametrize(
    "tool,args,words",
    [
        ("make_folds", ["--out", "{out}/f.csv", "--n-bins", "0"], ["--n-bins", "must be >= 1, got 0"]),
        ("make_folds", ["--out", "{out}/f.csv", "--seed", "-1"], ["--seed", "must be >= 0"]),
        ("make_folds", ["--out", "{out}/f.csv", "--val-frac", "nan"], ["--val-frac", "not a finite number"]),
        ("make_point_clouds", ["--out", "{out}/p.h5", "--seed", "-1"], ["--seed", "must be >= 0"]),
        ("make_point_clouds", ["--out", "{out}/p.h5", "--channel", "-1"], ["--channel", "must be >= 0"]),
        ("make_point_clouds", ["--out", "{out}/p.h5", "--n_points", "1"], ["--n_points", "must be >= 2"]),
        ("make_masks", ["--out", "{out}/m.h5", "--dilate", "-2"], ["--dilate", "must be >= 0"]),
        ("validate_h5", ["--max-listed", "-1"], ["--max-listed", "must be >= 0"]),
        ("crop_h5", ["--out", "{out}/c.h5", "--size", "4", "x"], ["--size", "'x' is not an integer"]),
    ],
)
def test_numeric_flags_out_of_their_domain(data, tmp_path, capsys, tool, args, words):
    _refused(capsys, run_main(tool, data, *[a.format(out=tmp_path) for a in args]), *words)
    assert not [p for p in tmp_path.iterdir() if p.name != "data.h5"]


@pytest.mark.parametrize(
    "row,words",
    [
        ("a/b,", ["line 2", "patientID 'a/b'"]),
        (",", ["line 2", "patientID ''"]),
        ("..,", ["patientID '..'"]),
        ("p1,x/y", ["fieldID 'x/y'"]),
    ],
)
def test_nifti_ids_that_are_not_group_names(tmp_path, capsys, row, words):
    import shutil

    from tests.test_preprocess_nifti import ANATOMICAL

    shutil.copy(ANATOMICAL, tmp_path / "a.nii")
    pid, fid = row.split(",")
    (tmp_path / "map.csv").write_text(f"path,patientID,fieldID\na.nii,{pid},{fid}\n")
    _refused(capsys, run_main("nifti_to_h5", tmp_path / "map.csv", "--out", tmp_path / "d.h5"), *words)
    _refused(
        capsys,
        run_main("nifti_to_h5", tmp_path / "a.nii", "--field", "2/3", "--out", tmp_path / "d.h5"),
        "--field",
        "'2/3'",
    )
    assert not (tmp_path / "d.h5").exists()


def test_nifti_declaring_a_huge_image_is_skipped_unread(tmp_path, capsys):
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_shape((30000, 30000, 3000))  # 5 TiB of int16 declared by a 352-byte header
    hdr.set_data_dtype(np.int16)
    hdr["vox_offset"] = 352
    (tmp_path / "huge.nii").write_bytes(hdr.binaryblock + b"\0" * 4)
    assert run_main("nifti_to_h5", tmp_path / "huge.nii", "--out", tmp_path / "d.h5") == 2
    err = capsys.readouterr().err
    assert "huge.nii: the image (shape (30000, 30000, 3000), int16) would need" in err and "Traceback" not in err
    assert not (tmp_path / "d.h5").exists()


def test_dicom_series_declaring_huge_frames_is_refused_unread():
    import dataclasses

    import pydicom

    from Engineering.data.dicom_series import Series, SeriesError, assemble, file_info
    from tests.test_preprocess_dicom import dicom_file

    info = file_info("a.dcm", pydicom.dcmread(dicom_file("emri_small.dcm"), stop_before_pixels=True))
    huge = [dataclasses.replace(info, member=f"{i}.dcm", rows=60000, columns=60000) for i in range(300)]

    def never(member):
        raise AssertionError(f"{member} was read")

    with pytest.raises(SeriesError, match=r"series 7 \(300 files, 60000x60000 pixels each\) would need"):
        assemble(Series("1.2", "big", 7, None, huge), never)
