"""make_masks and crop_h5: the cine mask method, label masks, windows, padding, CLI round trip."""

from __future__ import annotations

from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

from preprocess.crop_h5 import crop_xy, mask_centre, window_start
from preprocess.make_masks import auto_mask
from tests.conftest import run_main, run_tool

NIB_DATA = Path(nib.__file__).parent / "tests" / "data"


def beating_disk(shape=(1, 12, 2, 64, 80), centre=(40, 25), seed=0) -> np.ndarray:
    """A static bright square plus a disk whose radius pulses over time, with noise."""
    rng = np.random.default_rng(seed)
    c, t, s, x, y = shape
    xx, yy = np.mgrid[:x, :y]
    out = rng.normal(10, 1, shape).astype(np.float32)
    out[..., 5:20, 50:75] += 100  # bright but still: must not be masked
    for ti in range(t):
        r = 6 + 4 * np.sin(2 * np.pi * ti / t)
        out[:, ti, :, (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 < r**2] += 80
    return out


def test_temporal_variance_mask_finds_the_moving_part():
    mask = auto_mask(beating_disk())
    assert mask.shape == (1, 1, 2, 64, 80) and mask.dtype == np.uint8
    assert mask[0, 0, :, 40, 25].all()  # the beating centre
    assert not mask[0, 0, :, 12, 62].any()  # the still bright square
    assert 50 < mask[0, 0, 0].sum() < 400
    cx, cy = mask_centre(mask)
    assert abs(cx - 40) <= 2 and abs(cy - 25) <= 2


def test_static_images_fall_back_to_intensity():
    still = beating_disk()[:, :1]
    mask = auto_mask(still)
    assert mask[0, 0, 0, 12, 62] == 1  # the bright square is now the foreground


def test_window_start_clamps_inside_and_pads_small_images():
    assert window_start(32, 100, 50) == 34
    assert window_start(32, 100, 5) == 0
    assert window_start(32, 100, 98) == 68
    assert window_start(32, 20, 3) == -6
    img = np.arange(20 * 10).reshape(1, 1, 1, 20, 10)
    out = crop_xy(img, -2, 2, (24, 6), pad_value=-1)
    assert out.shape == (1, 1, 1, 24, 6)
    assert (out[..., :2, :] == -1).all() and (out[..., 22:, :] == -1).all()
    np.testing.assert_array_equal(out[..., 2:22, :], img[..., :, 2:8])


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("masks")
    out = tmp / "data.h5"
    assert run_main("nifti_to_h5", NIB_DATA / "anatomical.nii", NIB_DATA / "example4d.nii.gz", "--out", out) == 0
    return out


def test_masks_then_crop_then_validate(converted, tmp_path):
    assert run_main("make_masks", converted) == 0
    masks = converted.parent / "meta_mask.h5"
    with h5py.File(masks, "r") as m, h5py.File(converted, "r") as d:
        for key in ("anatomical/0/0/primary", "example4d/0/0/primary"):
            assert m[key].shape == d[key].shape and m[key].dtype == np.uint8
        np.testing.assert_array_equal(m["example4d/0/0/primary"][0, 0], m["example4d/0/0/primary"][0, 1])
    out = tmp_path / "cropped.h5"
    assert run_main("crop_h5", converted, "--out", out, "--size", 48, 32) == 0
    with h5py.File(out, "r") as h5, h5py.File(converted, "r") as src, h5py.File(tmp_path / "meta_mask.h5", "r") as cm:
        small = h5["anatomical/0/0/primary"]  # 33 x 41 -> padded in X, cut in Y
        assert small.shape == (1, 1, 25, 48, 32)
        x0, y0 = small.attrs["crop_origin"]
        assert x0 == -7 and 0 <= y0 <= 9
        np.testing.assert_array_equal(small[..., 7:40, :], src["anatomical/0/0/primary"][..., :, y0 : y0 + 32])
        data = small[()]
        assert small.attrs["min_val"] == data.min() and small.attrs["max_val"] == data.max()
        assert cm["anatomical/0/0/primary"].shape == (1, 1, 25, 48, 32)
        shifted = small.attrs["affine"] @ np.array([7, 0, 0, 1.0])
        original = src["anatomical/0/0/primary"].attrs["affine"] @ np.array([0, y0, 0, 1.0])
        np.testing.assert_allclose(shifted, original)  # same voxel, same world position
    assert run_main("validate_h5", out) == 0


def test_label_masks_from_nifti(converted, tmp_path):
    img = nib.load(str(NIB_DATA / "anatomical.nii"))
    labels = (np.asanyarray(img.dataobj) > 1000).astype(np.uint8) * 2
    nib.save(nib.Nifti1Image(labels, img.affine), tmp_path / "anatomical.nii.gz")
    out = tmp_path / "labels.h5"
    assert run_main("make_masks", converted, "--labels", tmp_path / "anatomical.nii.gz", "--out", out) == 0
    with h5py.File(out, "r") as m:
        mask = m["anatomical/0/0/primary"][()]
        assert mask.shape == (1, 1, 25, 33, 41)
        np.testing.assert_array_equal(mask[0, 0], labels.transpose(2, 0, 1))
        assert "example4d" not in m  # no label file for it


def test_bad_inputs_exit_2(tmp_path, converted, capsys):
    text = tmp_path / "notes.h5"
    text.write_text("hello")
    proc = run_tool("make_masks", text)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: not an HDF5 file: {text}"
    assert run_main("crop_h5", converted, "--out", tmp_path / "c.h5", "--size", 0, 4) == 2
    assert capsys.readouterr().err.startswith("error: argument --size: must be >= 1, got 0")
    if not (converted.parent / "meta_mask.h5").exists():
        assert run_main("make_masks", converted) == 0
    capsys.readouterr()
    assert run_main("crop_h5", converted, "--out", converted.parent / "c.h5", "--size", 8, 8) == 2
    assert "would overwrite the input masks" in capsys.readouterr().err
