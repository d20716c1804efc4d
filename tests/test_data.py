"""The 5D HDF5 data layer: selection, axis swaps, splits, transforms, folds, cache, bad input."""

from __future__ import annotations

import json
import os
import time

import h5py
import numpy as np
import pytest
import torch

from Engineering.config.loader import Task, resolve
from Engineering.data import transforms as T
from Engineering.data.datamodule import H5DataModule
from Engineering.data.folds import read_fold
from Engineering.data.index import Selection, load_records
from Engineering.data.layout import parse_key
from Engineering.errors import UserError


def write_ancestor_file(path, n_pat=3, shape=(2, 5, 3, 12, 10), nan=False, minmax=True, dtype=np.int16):
    """A file in the ancestor's layout: LAX keys with plane and repeat suffixes, group/dataset attributes."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as h5:
        for p in range(n_pat):
            g = h5.create_group(f"{5000 + p}/20208/2")
            g.attrs.update(
                {
                    "patientDICOMID": f"P{p}",
                    "studyDICOMID": "1.2.3",
                    "studyDesc": "CARDIAC",
                    "aet": "AET",
                    "host": "h",
                    "date": "20200101",
                    "n_series": 2,
                }
            )
            data = rng.integers(0, 1000, size=shape).astype(dtype)
            if nan:
                data = data.astype(np.float32)
                data[0, 0, 0, 0, 0] = np.nan
            for key in ("primary_LAX_4Ch_transverse_0", "primary_LAX_4Ch_transverse_1", "auxiliary_seg"):
                ds = g.create_dataset(key, data=data)
                ds.attrs.update({"seriesID": "s1", "DICOMHeader": "{}", "seriesDesc": "CINE"})
                if minmax:
                    ds.attrs.update({"min_val": float(np.nanmin(data)), "max_val": float(np.nanmax(data))})
        h5.create_group("5000/20209/2").create_dataset("notakey", data=np.zeros(3))
    return path


def make_cfg(tmp_path, *args, folds=None, **json_over):
    js = {"datadir": str(tmp_path), "datafile": "data.h5", "foldCSV": "", **json_over}
    if folds is not None:
        (tmp_path / "folds.csv").write_text(folds)
        js["foldCSV"] = "folds.csv"
    (tmp_path / "dn.json").write_text(json.dumps(js))
    return resolve(["--datajson_path", str(tmp_path / "dn.json"), *args], Task("t", "test")).cfg


def test_key_grammar():
    k = parse_key("primary_LAX_4Ch_transverse_0")
    assert (k.kind, k.tag, k.plane, k.repeat, k.base, k.stem) == (
        "primary",
        "LAX_4Ch",
        "transverse",
        0,
        "primary_LAX_4Ch",
        "primary_LAX_4Ch_transverse",
    )
    assert parse_key("primary_2").repeat == 2 and parse_key("primary_2").tag is None
    assert parse_key("auxiliary") is None and parse_key("other") is None
    assert parse_key("auxiliary_T1map_sagittal").plane == "sagittal"


def test_selection_repeats_and_auxiliaries(tmp_path):
    write_ancestor_file(tmp_path / "data.h5")
    # the default reads the first acquisition only, as the ancestor did
    dm = H5DataModule(make_cfg(tmp_path, "--input_shape", "12,10"))
    assert {r.key for r in dm.records} == {"primary_LAX_4Ch_transverse_0"}
    dm = H5DataModule(make_cfg(tmp_path, "--input_shape", "12,10", DS_include_repeatAcq=True))
    assert {r.key for r in dm.records} == {"primary_LAX_4Ch_transverse_0", "primary_LAX_4Ch_transverse_1"}
    dm = H5DataModule(
        make_cfg(
            tmp_path, "--input_shape", "12,10", DS_include_repeatAcq=False, DS_selected_auxiliaries=["auxiliary_seg"]
        )
    )
    assert {r.key for r in dm.records} == {"primary_LAX_4Ch_transverse_0", "auxiliary_seg"}
    dm = H5DataModule(
        make_cfg(
            tmp_path,
            "--input_shape",
            "12,10",
            DS_selected_primaries="primary_LAX_4Ch_transverse_1",
            DS_include_repeatAcq=True,
        )
    )
    assert {r.key for r in dm.records} == {"primary_LAX_4Ch_transverse_1"}
    assert dm.records[0].min_val is not None
    # the ancestor's spelling: no kind prefix, plane included, _0 implied; auxiliaries likewise
    for entry in ("LAX_4Ch_transverse", "LAX_4Ch", "primary_LAX_4Ch_transverse"):
        dm = H5DataModule(make_cfg(tmp_path, "--input_shape", "12,10", DS_selected_primaries=[entry]))
        assert {r.key for r in dm.records} == {"primary_LAX_4Ch_transverse_0"}, entry
    dm = H5DataModule(
        make_cfg(
            tmp_path,
            "--input_shape",
            "12,10",
            DS_selected_primaries=["LAX_4Ch_transverse"],
            DS_selected_auxiliaries=["seg"],
        )
    )
    assert {r.key for r in dm.records} == {"primary_LAX_4Ch_transverse_0", "auxiliary_seg"}
    # an entry that names nothing: one error naming the closest keys of the file
    with pytest.raises(UserError, match=r"'LAX_4Ch_transvers' \(closest keys in the file: primary_LAX_4Ch_transverse"):
        H5DataModule(make_cfg(tmp_path, "--input_shape", "12,10", DS_selected_primaries=["LAX_4Ch_transvers"]))


def test_2d_split_flags_and_channel_folding(tmp_path):
    write_ancestor_file(tmp_path / "data.h5", n_pat=1)  # (C=2, T=5, S=3, 12, 10), 2 primary keys
    make = lambda *a, **j: make_cfg(tmp_path, *a, DS_include_repeatAcq=True, **j)  # noqa: E731
    ds = H5DataModule(make("--input_shape", "12,10")).dataset("test")
    assert len(ds) == 2 * 5 * 3 and ds.sample(0)["inp"].shape == (2, 12, 10)  # one sample per (t, s), channels kept
    ds = H5DataModule(make("--input_shape", "12,10", DS_multi_channel=False)).dataset("test")
    assert len(ds) == 2 * 2 * 5 * 3 and ds.sample(0)["inp"].shape == (1, 12, 10)
    ds = H5DataModule(make("--input_shape", "12,10", DS_split_time=False)).dataset("test")
    assert len(ds) == 2 * 3 and ds.sample(0)["inp"].shape == (10, 12, 10)  # frames folded into channels


def test_3d_and_axis_swaps(tmp_path):
    path = write_ancestor_file(tmp_path / "data.h5", n_pat=1)
    make = lambda *a, **j: make_cfg(tmp_path, *a, DS_include_repeatAcq=True, **j)  # noqa: E731  (2 primary keys)
    with h5py.File(path) as h5:
        raw = h5["5000/20208/2/primary_LAX_4Ch_transverse_0"][()]
    ds = H5DataModule(make("--is3D", "--input_shape", "3,12,10", "--norm_type", "none")).dataset("test")
    assert len(ds) == 2 * 5 and ds.sample(0)["inp"].shape == (2, 3, 12, 10)
    np.testing.assert_array_equal(ds.sample(1)["inp"].numpy(), raw[:, 1].astype(np.float32))  # t=1, all slices
    # DS_slice_dim 1: cine time becomes the volume axis, 5 frames -> a 5 x X x Y volume per slice
    ds = H5DataModule(make("--is3D", "--input_shape", "5,12,10", "--norm_type", "none", DS_slice_dim=1)).dataset("test")
    assert len(ds) == 2 * 3 and ds.sample(0)["inp"].shape == (2, 5, 12, 10)
    np.testing.assert_array_equal(ds.sample(2)["inp"].numpy(), raw[:, :, 2].astype(np.float32))
    assert ds.describe(2)["t"] == 2  # logical axis 1 is now the raw slice axis
    # DS_channel_dim 2: raw slices become channels
    ds = H5DataModule(
        make("--input_shape", "12,10", "--norm_type", "none", DS_channel_dim=2, DS_multi_channel=True)
    ).dataset("test")
    assert ds.sample(0)["inp"].shape == (3, 12, 10)
    np.testing.assert_array_equal(ds.sample(0)["inp"].numpy(), raw[0, 0].astype(np.float32))


def _apply(x: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The (C, 2) affine applied as the loader does (normalise_batch, on a batch of one)."""
    return T.normalise_batch(torch.from_numpy(x)[None], torch.from_numpy(affine.astype(np.float32))[None])[0].numpy()


@pytest.mark.parametrize(
    "norm,prenorm",
    [
        ("minmax", "none"),
        ("divbymax", "none"),
        ("minmaxvol", "none"),
        ("divbymaxvol", "none"),
        ("zscore", "none"),
        ("zscore", "255"),
        ("zscore", "minmax"),
        ("zscore", "divbymaxvol"),
        ("none", "none"),
    ],
)
def test_normalisations_and_inverses(norm, prenorm):
    rng = np.random.default_rng(1)
    x = rng.uniform(10, 500, size=(2, 4, 6)).astype(np.float32)
    s, o = T.norm_affine(x, norm, (0.0, 600.0), prenorm)
    aff = np.stack([s, o], 1)
    y = _apply(x, aff)
    if norm == "minmax":
        assert y.min() == pytest.approx(0, abs=1e-6) and y.max() == pytest.approx(1, abs=1e-6)
    if norm == "divbymax":
        assert y.max() == pytest.approx(1, abs=1e-6)
    if norm == "minmaxvol":
        np.testing.assert_allclose(y, x / 600, rtol=1e-5)
    if norm == "zscore":
        np.testing.assert_allclose(y.reshape(2, -1).mean(1), 0, atol=1e-4)
        np.testing.assert_allclose(y.reshape(2, -1).std(1), 1, atol=1e-4)
    np.testing.assert_allclose(T.invert_affine(y, aff), x, rtol=1e-4)


def test_volumetric_norm_needs_attributes(tmp_path):
    write_ancestor_file(tmp_path / "data.h5", minmax=False)
    with pytest.raises(UserError, match="min_val/max_val"):
        H5DataModule(make_cfg(tmp_path, "--input_shape", "12,10", "--norm_type", "minmaxvol"))
    H5DataModule(make_cfg(tmp_path, "--input_shape", "12,10", "--norm_type", "minmax"))  # fine without


def test_complex_modes():
    z = (np.arange(8, dtype=np.float32) + 1j * np.arange(8, dtype=np.float32)[::-1]).reshape(1, 2, 4)
    assert T.complex_to_real(z, "magphase").shape == (2, 2, 4)
    np.testing.assert_allclose(T.complex_to_real(z, "realimag")[1], z.imag[0])
    np.testing.assert_allclose(T.complex_to_real(z, "phase"), np.angle(z), rtol=1e-6)
    np.testing.assert_allclose(T.complex_to_real(z, "magnitude"), np.abs(z), rtol=1e-6)


def test_crop_pad_resample_flip():
    x = np.arange(2 * 5 * 7, dtype=np.float32).reshape(2, 5, 7)
    y = T.crop_or_pad(x, (8, 4))
    assert y.shape == (2, 8, 4) and y[:, 0].sum() == 0 and np.array_equal(y[:, 1:6], x[:, :, 1:5])
    assert T.resample(x, 2.0).shape == (2, 10, 14)
    f = T.random_flip(x, (0, 1), 1.0, np.random.default_rng(0))
    np.testing.assert_array_equal(f, x[:, ::-1, ::-1])


def test_mask_multiply_and_pass(tmp_path):
    write_ancestor_file(tmp_path / "data.h5", n_pat=1)
    with h5py.File(tmp_path / "data.h5") as src, h5py.File(tmp_path / "meta_mask.h5", "w") as m:
        for key in ("primary_LAX_4Ch_transverse_0", "primary_LAX_4Ch_transverse_1"):
            mask = np.zeros(src[f"5000/20208/2/{key}"].shape, np.uint8)
            mask[..., 2:6, 3:7] = 1
            m.create_dataset(f"5000/20208/2/{key}", data=mask)
    ds = H5DataModule(make_cfg(tmp_path, "--input_shape", "12,10", "--data_mask_mode", "1")).dataset("test")
    x = ds.sample(0)["inp"].numpy()
    assert (x[..., :2, :] == 0).all() and (x[..., 2:6, 3:7] != 0).any()
    ds = H5DataModule(make_cfg(tmp_path, "--input_shape", "12,10", "--data_mask_mode", "2")).dataset("test")
    assert ds.sample(0)["mask"].sum() == 2 * 4 * 4


def test_lazy_slicing_reads_only_the_sample(tmp_path, monkeypatch):
    """Reading one 2D sample of a large contiguous dataset touches a small fraction of its bytes."""
    shape = (1, 20, 8, 64, 64)  # 1.3 MB of int16, contiguous
    with h5py.File(tmp_path / "data.h5", "w") as h5:
        h5.create_dataset("1/2/3/primary", data=np.ones(shape, np.int16))
    reads = {"bytes": 0}

    class Counting:
        def __init__(self, path):
            self.fh = open(path, "rb")

        def read(self, n=-1):
            out = self.fh.read(n)
            reads["bytes"] += len(out)
            return out

        def readinto(self, b):
            n = self.fh.readinto(b)
            reads["bytes"] += n
            return n

        def __getattr__(self, name):
            return getattr(self.fh, name)

    real_file = h5py.File
    monkeypatch.setattr("Engineering.data.dataset.h5py.File", lambda path, mode="r": real_file(Counting(path), mode))
    ds = H5DataModule(make_cfg(tmp_path, "--input_shape", "64,64")).dataset("test")
    ds.sample(37)
    total = int(np.prod(shape)) * 2
    assert 0 < reads["bytes"] < total / 20, f"read {reads['bytes']} of {total} bytes for one frame"


def test_fold_parsing_csv_json_and_errors(tmp_path):
    (tmp_path / "f.csv").write_text('train,val,test\n"[\'1\', \'2\']","[\'3\']","[4, \'5\']"\n"[\'9\']","[]","[]"\n')
    f = read_fold(tmp_path / "f.csv", 0)
    assert f.train == ("1", "2") and f.val == ("3",) and f.test == ("4", "5")
    assert read_fold(tmp_path / "f.csv", 1).val == ()
    (tmp_path / "f.json").write_text(json.dumps([{"train": ["a"], "val": ["b"], "test": ["c"]}]))
    assert read_fold(tmp_path / "f.json", 0).test == ("c",)
    with pytest.raises(UserError, match="out of range"):
        read_fold(tmp_path / "f.csv", 5)
    (tmp_path / "evil.csv").write_text('train,val,test\n"__import__(\'os\').system(\'echo hi\')","[]","[]"\n')
    with pytest.raises(UserError, match="cannot read the patient list"):
        read_fold(tmp_path / "evil.csv", 0)
    (tmp_path / "cols.csv").write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="lacks column"):
        read_fold(tmp_path / "cols.csv", 0)
    with pytest.raises(UserError, match="not found"):
        read_fold(tmp_path / "missing.csv", 0)


def test_fold_selects_patients_exactly(tmp_path):
    write_ancestor_file(tmp_path / "data.h5", n_pat=3)
    dm = H5DataModule(
        make_cfg(tmp_path, "--input_shape", "12,10", folds="train,val,test\n\"['5000']\",\"['5001']\",\"['5002']\"\n")
    )
    assert {r.patientID for r in dm.dataset("train").records} == {"5000"}
    assert {r.patientID for r in dm.dataset("test").records} == {"5002"}
    dm = H5DataModule(
        make_cfg(tmp_path, "--input_shape", "12,10", folds="train,val,test\n\"['5000']\",\"['5001']\",\"['5002']\"\n"),
        merge_train_val=True,
    )
    assert {r.patientID for r in dm.dataset("train").records} == {"5000", "5001"}
    # exact matching: '500' is not '5000'
    with pytest.raises(UserError, match="not in"):
        H5DataModule(make_cfg(tmp_path, "--input_shape", "12,10", folds='train,val,test\n"[\'500\']","[]","[]"\n'))
    # whole file when foldCSV is 0
    dm = H5DataModule(
        make_cfg(
            tmp_path, "--input_shape", "12,10", "--json§foldCSV", "0", folds='train,val,test\n"[\'5000\']","[]","[]"\n'
        )
    )
    assert len({r.patientID for r in dm.dataset("test").records}) == 3


def test_index_cache_invalidation(tmp_path):
    path = write_ancestor_file(tmp_path / "data.h5", n_pat=2)
    sel = Selection()
    recs, hit = load_records(path, sel)
    assert not hit and len(recs) == 4
    recs2, hit = load_records(path, sel)
    assert hit and recs2 == recs
    _, hit = load_records(path, Selection(include_repeat=False))  # another selection: its own entry
    assert not hit
    time.sleep(0.01)
    write_ancestor_file(path, n_pat=3)  # the file changes: size/mtime differ
    os.utime(path, ns=(time.time_ns(), time.time_ns()))
    recs3, hit = load_records(path, sel)
    assert not hit and len(recs3) == 6


# --- bad input: each is one clear error naming the culprit
def test_bad_missing_and_corrupt_files(tmp_path):
    with pytest.raises(UserError, match="data file not found"):
        H5DataModule(make_cfg(tmp_path))
    (tmp_path / "data.h5").write_bytes(b"this is not hdf5" * 10)
    with pytest.raises(UserError, match="not a readable HDF5"):
        H5DataModule(make_cfg(tmp_path))


def test_bad_no_match_not_5d_nan_shape(tmp_path):
    write_ancestor_file(tmp_path / "data.h5")
    with pytest.raises(UserError, match="no dataset .* matches the selection"):
        H5DataModule(make_cfg(tmp_path, DS_selected_primaries=["primary_SAX"]))
    with pytest.raises(UserError, match="no dataset"):
        H5DataModule(make_cfg(tmp_path, DS_sanity_filters={"dim1": 50}))
    with h5py.File(tmp_path / "data.h5", "a") as h5:
        h5.create_dataset("5000/20208/2/primary_4d", data=np.zeros((1, 2, 3, 4)))
    with pytest.raises(UserError, match=r"primary_4d has shape \(1, 2, 3, 4\).*5D"):
        H5DataModule(make_cfg(tmp_path))

    sub = tmp_path / "nan"
    sub.mkdir()
    write_ancestor_file(sub / "data.h5", nan=True)
    ds = H5DataModule(make_cfg(sub, "--input_shape", "12,10")).dataset("test")
    with pytest.raises(UserError, match="NaN/Inf"):
        ds.sample(0)
    # checked for every dataset when the data module is built, before anything runs or is written
    with pytest.raises(UserError, match=r"spatial shape \[12, 10\].*input_shape is \[16, 16\]"):
        H5DataModule(make_cfg(sub, "--input_shape", "16,16", "--no-croppad"))


def test_bad_fold_csv(tmp_path):
    write_ancestor_file(tmp_path / "data.h5")
    (tmp_path / "folds.csv").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(UserError, match="fold file .*folds.csv is unreadable"):
        H5DataModule(make_cfg(tmp_path, "--input_shape", "12,10", "--json§foldCSV", "folds.csv"))


def test_val_subset_is_fixed_and_seeded(tmp_path):
    write_ancestor_file(tmp_path / "data.h5", n_pat=3)
    cfg = make_cfg(tmp_path, "--input_shape", "12,10", "--n_val_batches", "0.5", DS_include_repeatAcq=True)
    a = H5DataModule(cfg).val_subset().indices
    b = H5DataModule(cfg).val_subset().indices
    assert a == b and len(a) == round(0.5 * 2 * 3 * 5 * 3)


def test_loader_ships_stored_dtype_and_padding_normalises_to_zero(tmp_path):
    write_ancestor_file(tmp_path / "data.h5", n_pat=1)  # int16
    ds = H5DataModule(make_cfg(tmp_path, "--input_shape", "12,10")).dataset("test")
    assert ds[0]["inp"].dtype == torch.int16  # normalised on the device, per batch
    ds = H5DataModule(make_cfg(tmp_path, "--input_shape", "16,10", "--norm_type", "minmaxvol")).dataset("test")
    x = ds.sample(0)["inp"].numpy()
    assert x.shape == (2, 16, 10) and (x[:, :2] == 0).all() and (x[:, -2:] == 0).all()
    assert 0 <= x.min() and x.max() <= 1


def test_fixed_zscore_after_prenorm_is_the_ancestors_minus_one_to_one():
    """--norm_type zscore --zscore_prenorm minmax --zscore_mean 0.5 --zscore_std 0.5 (the ancestor's flags for
    the published models) is (minmax(x) - 0.5) / 0.5, the same map as minmax with --norm_range symmetric."""
    x = np.random.default_rng(3).uniform(20, 900, size=(1, 6, 5)).astype(np.float32)
    s, o = T.norm_affine(x, "zscore", prenorm="minmax", zscore_mean=0.5, zscore_std=0.5)
    y = _apply(x, np.stack([s, o], 1))
    want = ((x - x.min()) / (x.max() - x.min()) - 0.5) / 0.5
    np.testing.assert_allclose(y, want, atol=1e-6)
    np.testing.assert_allclose(T.invert_affine(y, np.stack([s, o], 1)), x, rtol=1e-5)
    s2, o2 = T.norm_affine(x, "minmax", norm_range="symmetric")
    np.testing.assert_allclose(np.stack([s, o]), np.stack([s2, o2]), rtol=1e-9, atol=1e-9)
    assert T.normalised_range("zscore", "minmax", 0.5, 0.5) == (-1.0, 1.0)
    assert T.normalised_range("minmax", norm_range="symmetric") == (-1.0, 1.0)
    assert T.normalised_range("minmaxvol") == (0.0, 1.0) and T.normalised_range("zscore") is None
    with pytest.raises(UserError, match="zscore_std must be positive"):
        T.norm_affine(x, "zscore", zscore_mean=0.0, zscore_std=0.0)


def test_statistics_are_those_of_what_the_model_sees(tmp_path):
    """The ancestor normalises after crop-or-pad: a bright border that the crop removes does not set the max."""
    data = np.full((1, 1, 1, 12, 10), 100, np.int16)
    data[0, 0, 0, 4:8, 3:7] = 300
    data[0, 0, 0, 0, 0] = 30000  # outside the central 8 x 8 crop
    with h5py.File(tmp_path / "data.h5", "w") as h5:
        h5.create_dataset("1/2/3/primary", data=data)
    ds = H5DataModule(make_cfg(tmp_path, "--input_shape", "8,8")).dataset("test")
    x = ds.sample(0)["inp"].numpy()
    assert x.max() == pytest.approx(1.0) and x.min() == pytest.approx(0.0)  # 100 -> 0, 300 -> 1
    # padding is zeros in the stored units, inside the statistics (as the ancestor): 0 -> 0, 300 -> 1
    ds = H5DataModule(make_cfg(tmp_path, "--input_shape", "16,10", "--norm_range", "symmetric")).dataset("test")
    x = ds.sample(0)["inp"].numpy()
    assert x.shape == (1, 16, 10) and (x[:, :2] == -1).all() and x.max() == pytest.approx(1.0)


def test_volumetric_attributes_that_do_not_bound_the_data_are_an_error(tmp_path):
    """(found by the property test: min_val 3.4e30 with minmaxvol normalised the sample to -inf)"""
    data = np.full((1, 1, 1, 8, 8), 50, np.int16)
    with h5py.File(tmp_path / "data.h5", "w") as h5:
        ds = h5.create_dataset("1/2/3/primary", data=data)
        ds.attrs.update({"min_val": 3.4e30, "max_val": 60})
    ds = H5DataModule(make_cfg(tmp_path, "--input_shape", "8,8", "--norm_type", "minmaxvol")).dataset("test")
    with pytest.raises(UserError, match=r"min_val/max_val attributes \(3.4e\+30, 60\) do not bound its data"):
        ds.sample(0)
    # padding zeros below a positive min_val are fine: the check is on the stored values
    ok = tmp_path / "ok"
    ok.mkdir()
    with h5py.File(ok / "data.h5", "w") as h5:
        h5.create_dataset("1/2/3/primary", data=data).attrs.update({"min_val": 50, "max_val": 60})
    ds = H5DataModule(make_cfg(ok, "--input_shape", "12,8", "--norm_type", "minmaxvol")).dataset("test")
    assert np.isfinite(ds.sample(0)["inp"].numpy()).all()
