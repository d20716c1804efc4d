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
    raw[addr:addr + 40] = b"\xde\xad\xbe\xef" * 10
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


@pytest.mark.parametrize("tool,args", [("make_folds", ["--out", "{out}/folds.csv", "--n-folds", "2"]),
                                       ("crop_h5", ["--out", "{out}/c.h5", "--size", "4", "4"]),
                                       ("make_masks", ["--out", "{out}/m.h5"])])
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
