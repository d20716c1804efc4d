"""Writers on a READ-ONLY file system: one line naming the folder, exit 2, no traceback (issue 33, item 7).

A real read-only mount raises OSError(EROFS), not the PermissionError that a chmod or a non-root user gets: the
tests mount a read-only tmpfs (root only; skipped where mount is not permitted) and, everywhere, simulate EROFS
at the os level (os.open / os.mkdir) where the writers create their files.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess

import h5py
import numpy as np
import pytest

from tests.conftest import run_main

TOOLS = [
    ("make_folds", ["--out", "{ro}/folds.csv", "--n-folds", "2"]),
    ("crop_h5", ["--out", "{ro}/c.h5", "--size", "4", "4"]),
    ("make_masks", ["--out", "{ro}/m.h5"]),
    ("make_point_clouds", ["--out", "{ro}/p.h5"]),
]


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as h5:
        for pid in ("1", "7", "8", "9"):
            ds = h5.create_dataset(f"{pid}/2/3/primary_cine_0", data=np.ones((1, 2, 3, 8, 8), np.int16))
            ds.attrs.update({"min_val": 1, "max_val": 1})
    return path


@pytest.fixture(scope="module")
def ro_mount(tmp_path_factory):
    """A real read-only file system (tmpfs mounted ro); skipped where mounting is not permitted."""
    folder = tmp_path_factory.mktemp("ro_mount")
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a read-only tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"mount not permitted here: {done.stderr.decode().strip()}")
    try:
        with pytest.raises(OSError) as exc:
            (folder / "probe").write_text("x")
        assert exc.value.errno == errno.EROFS
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


def _one_line(capsys, folder) -> str:
    out = capsys.readouterr()
    err = [ln for ln in out.err.strip().splitlines() if ln.strip()]
    assert err and "Traceback" not in out.err, out.err
    assert "read-only file system" in err[-1] and str(folder) in err[-1], err[-1]
    return err[-1]


@pytest.fixture
def erofs(monkeypatch, tmp_path):
    """EROFS from the os calls that create files and folders under tmp_path/ro (reading stays possible)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    real_open, real_mkdir = os.open, os.mkdir

    def is_ro(path) -> bool:
        return str(os.fspath(path)).startswith(str(ro))

    def open_(path, flags, *a, **k):
        if is_ro(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
        return real_open(path, flags, *a, **k)

    def mkdir_(path, *a, **k):
        if is_ro(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
        return real_mkdir(path, *a, **k)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "mkdir", mkdir_)
    return ro


@pytest.mark.parametrize("tool,args", TOOLS)
def test_tool_on_a_read_only_mount_is_one_line(data, ro_mount, capsys, tool, args):
    assert run_main(tool, data, *[a.format(ro=ro_mount) for a in args]) == 2
    _one_line(capsys, ro_mount)


@pytest.mark.parametrize("tool,args", TOOLS)
def test_tool_with_simulated_erofs_is_one_line(data, erofs, capsys, tool, args):
    assert run_main(tool, data, *[a.format(ro=erofs) for a in args]) == 2
    _one_line(capsys, erofs)
    assert not any(erofs.iterdir())


def test_dicom_to_h5_on_a_read_only_mount(ro_mount, capsys):
    from tests.test_preprocess_dicom import dicom_file

    assert run_main("dicom_to_h5", dicom_file("emri_small.dcm"), "--out", ro_mount / "d.h5") == 2
    _one_line(capsys, ro_mount)


def test_nifti_to_h5_and_demo_on_a_read_only_mount(ro_mount, capsys):
    from tests.test_preprocess_nifti import EXAMPLE4D

    assert run_main("nifti_to_h5", EXAMPLE4D, "--out", ro_mount / "n.h5") == 2
    _one_line(capsys, ro_mount)
    assert (
        run_main(
            "make_demo_dataset", "--out", ro_mount / "demo", "--n_patients", "2", "--n_frames", "2", "--size", "16"
        )
        == 2
    )
    _one_line(capsys, ro_mount)


def test_training_run_into_a_read_only_save_path(tiny_demo, ro_mount, capsys):
    """An executor's run folder on a read-only mount: the same one line (the generic handler of run_cli)."""
    from Engineering.Engines import MainEngine, registry
    from Engineering.errors import run_cli
    from tests.conftest import tiny_args

    task = registry.get("diffAE")
    code = run_cli(lambda argv: MainEngine.run(argv, task), tiny_args(tiny_demo, ro_mount / "Results"))
    assert code == 2
    _one_line(capsys, ro_mount)
