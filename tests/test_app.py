"""The web page's functions (Engineering/webapp.py) without a browser, and ImLatentModel.manipulate: an upload's
latents are embed()'s, a bad upload is the CLI's one line, manipulate is deterministic and DiffAE-only."""

from __future__ import annotations

import zipfile

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from Engineering import api, webapp
from Engineering.errors import UserError
from tests.test_api import diffae_run, vae_run  # noqa: F401  (module fixtures: tiny trained runs)

pytestmark = pytest.mark.usefixtures("one_thread")
KEYS = ["patientID", "fieldID", "instanceID", "key", "c", "t", "s"]


@pytest.fixture(scope="module")
def diffae(diffae_run):  # noqa: F811
    return api.load(diffae_run)


@pytest.fixture(scope="module")
def cine(tiny_demo):
    """The first dataset of the tiny demo (5D C x T x S x X x Y) and its key."""
    with h5py.File(tiny_demo / "data.h5") as h5:
        path = []
        h5.visititems(lambda name, obj: path.append(name) if isinstance(obj, h5py.Dataset) and not path else None)
        return h5[path[0]][()], path[0]


def write_nifti(x: np.ndarray, path) -> None:
    """C x T x S x X x Y -> NIfTI (i, j, k, t), the layout api.read_nifti reads back."""
    nib.save(nib.Nifti1Image(np.transpose(x[0], (2, 3, 1, 0)), np.eye(4)), str(path))


def z_of(table: pd.DataFrame) -> np.ndarray:
    return table.sort_values(["c", "t", "s"])[[c for c in table.columns if c.startswith("Z")]].to_numpy()


def test_nifti_upload_gives_embeds_latents_and_a_tsv(diffae, cine, tmp_path):
    nii = tmp_path / "S7_20208_2_cine.nii.gz"
    write_nifti(cine[0], nii)
    res = webapp.embed_upload(diffae, nii, tmp_path / "work")
    assert not res.status.startswith("error"), res.status
    assert res.status.endswith("IDs S7/20208/2/primary") and len(res.table) == cine[0].shape[1]
    grid = diffae.embed(nii)  # (n_c, n_t, n_s, L): the demo's samples are cine frames
    want = np.stack([grid[r.c, r.t, 0] for r in res.table.sort_values(["c", "t", "s"]).itertuples()])
    assert np.abs(z_of(res.table) - want).max() < 1e-5
    tsv = pd.read_csv(res.tsv, sep="\t", dtype={k: str for k in KEYS[:4]})
    assert list(tsv.columns[:7]) == KEYS and np.abs(z_of(tsv) - want).max() < 1e-5
    assert len(res.images) == cine[0].shape[1] and res.images[0][0].dtype == np.uint8
    assert res.images[0][0].shape == tuple(diffae.cfg.model.input_shape)


def test_hdf5_upload_is_embeds_table(diffae, tiny_demo, tmp_path):
    res = webapp.embed_upload(diffae, tiny_demo / "data.h5", tmp_path)
    want = diffae.embed(tiny_demo / "data.h5")
    n = len(want[KEYS[:4]].drop_duplicates())
    assert res.status.endswith(f" and {n - 1} more dataset(s)") and n > 1, res.status
    both = want.merge(res.table, on=KEYS, suffixes=("", "_page"), validate="one_to_one")
    z = [c for c in want.columns if c.startswith("Z")]
    assert len(both) == len(want) == len(res.table)
    assert np.abs(both[z].to_numpy() - both[[f"{c}_page" for c in z]].to_numpy()).max() < 1e-5
    status, recon = webapp.reconstruct_upload(diffae, res.upload)  # the API reconstructs NIfTI files and arrays
    assert status.startswith("error: ") and "reconstruct reads NIfTI files and arrays" in status and recon == []


def _dicom_series(x: np.ndarray, folder) -> None:
    """One cine slice as a DICOM series: one file per frame (CardiacNumberOfImages, TriggerTime)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir()
    series, n_t = generate_uid(), x.shape[1]
    for t in range(n_t):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"im{t}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = "P42", generate_uid(), series
        ds.Modality, ds.SeriesNumber, ds.SeriesDescription, ds.InstanceNumber = "MR", 1, "cine", t + 1
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 0], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [1, 1], 8
        ds.TriggerTime, ds.CardiacNumberOfImages = 30.0 * t, n_t
        img = x[0, t, 0].astype(np.uint16)
        ds.Rows, ds.Columns = img.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = img.tobytes()
        ds.save_as(folder / f"im{t}.dcm", enforce_file_format=True)


def test_zipped_dicom_upload_gives_embeds_latents(diffae, cine, tmp_path):
    x = np.clip(cine[0], 0, None)
    folder = tmp_path / "series"
    _dicom_series(x, folder)
    zipped = tmp_path / "series.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f"study/series/{f.name}")
        zf.writestr("study/README.txt", "not DICOM")  # skipped, as embed.py skips it
    res = webapp.embed_upload(diffae, zipped, tmp_path / "work")
    assert not res.status.startswith("error"), res.status
    assert set(res.table["patientID"]) == {"P42"}  # the DICOM PatientID, as embed.py takes it
    grid = diffae.embed(folder)
    want = np.stack([grid[r.c, r.t, r.s] for r in res.table.sort_values(["c", "t", "s"]).itertuples()])
    assert len(res.table) == x.shape[1] and np.abs(z_of(res.table) - want).max() < 1e-5
    status, recon = webapp.reconstruct_upload(diffae, res.upload)
    assert status == "reconstruction of 4 sample(s) of series.zip" and len(recon) == 4


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("broken.nii.gz", b"not a nifti image", "broken.nii.gz: cannot read NIfTI"),
        ("notes.txt", b"hello", "notes.txt: the page reads NIfTI (.nii, .nii.gz), HDF5 (.h5, .hdf5) and zipped DICOM"),
        ("series.zip", b"PK not a zip", "series.zip: not a readable zip file"),
    ],
)
def test_a_bad_upload_is_the_clis_one_line(diffae, tmp_path, name, content, message):
    bad = tmp_path / name
    bad.write_bytes(content)
    res = webapp.embed_upload(diffae, bad, tmp_path / "work")
    assert res.status.startswith("error: ") and message in res.status and "\n" not in res.status, res.status
    assert res.table is None and res.tsv is None and res.images == []


def test_an_image_too_small_is_the_apis_message(diffae, tmp_path):
    small = tmp_path / "tiny.nii.gz"
    write_nifti(np.ones((1, 2, 1, 8, 8), np.float32), small)
    with pytest.raises(UserError) as exc:
        diffae.embed(small)
    res = webapp.embed_upload(diffae, small, tmp_path / "work")
    assert res.status == f"error: {exc.value}"


def test_manipulate_shape_determinism_and_scale_zero_is_the_reconstruction(diffae, cine):
    x = cine[0][:, :2]  # two frames: two samples of the 2D model
    d = np.random.default_rng(0).normal(size=diffae.latent_dim)
    one = diffae.manipulate(x, d, 1.5)
    assert one.shape == (2, 1, *diffae.cfg.model.input_shape) and np.isfinite(one).all()
    np.testing.assert_array_equal(one, diffae.manipulate(x, d, 1.5))  # DDIM inversion and sampling: no noise
    many = diffae.manipulate(x, d, [0.0, 1.5])
    assert many.shape == (2, 2, 1, *diffae.cfg.model.input_shape)
    np.testing.assert_allclose(many[:, 1], one, rtol=1e-4, atol=1e-4 * np.abs(one).max())
    rec = diffae.reconstruct(x)
    np.testing.assert_allclose(many[:, 0], rec, rtol=1e-4, atol=1e-4 * np.abs(rec).max())
    assert not np.allclose(many[:, 0], many[:, 1])
    # a direction of a mean/std (a latent predictor's) is scaled by the std: z' = z + scale * std * unit
    lat = api.LatentDirection.from_vector(d)
    scaled = api.LatentDirection(lat.vector, lat.mean, np.full_like(lat.std, 3.0), "x")
    np.testing.assert_allclose(
        diffae.manipulate(x, scaled, 0.5), diffae.manipulate(x, d, 1.5), rtol=1e-4, atol=1e-4 * np.abs(one).max()
    )
    with pytest.raises(UserError, match="the direction has 3 dimensions, the model's latent_dim is 8"):
        diffae.manipulate(x, [1.0, 0.0, 0.0], 1.0)
    with pytest.raises(UserError, match="non-zero vector"):
        diffae.manipulate(x, np.zeros(diffae.latent_dim), 1.0)


def test_manipulate_is_refused_for_a_vae(vae_run, cine):  # noqa: F811
    vae = api.load(vae_run)
    with pytest.raises(UserError, match=r"^manipulate renders with a DiffAE .*the pythae model"):
        vae.manipulate(cine[0], np.ones(vae.latent_dim), 1.0)


def test_page_reconstruction_and_manipulation(diffae, cine, tmp_path):
    nii = tmp_path / "S7_20208_2_cine.nii.gz"
    write_nifti(cine[0][:, :2], nii)
    res = webapp.embed_upload(diffae, nii, tmp_path / "work")
    status, recon = webapp.reconstruct_upload(diffae, res.upload)
    assert status.startswith("reconstruction of 2 sample(s)") and len(recon) == 2
    d = api.LatentDirection.from_vector(np.ones(diffae.latent_dim), "ones")
    status, shown = webapp.manipulate_upload(diffae, res.upload, d, 2.0)
    assert status == "ones: scale +2" and len(shown) == 2
    h5 = webapp.embed_upload(diffae, cine_h5 := tmp_path / "c.h5", tmp_path / "w2")  # not a file: one line
    assert h5.status == f"error: file not found: {cine_h5}"


@pytest.fixture(scope="module")
def latentcls_run(tmp_path_factory):
    """A main_latentcls run (linear head) on planted 8-dimensional latents: 'up' grows along Z0, 'grp' splits
    along Z1."""
    from Engineering.Engines import registry
    from Engineering.Engines.MainEngine import run

    root = tmp_path_factory.mktemp("latentcls")
    rng = np.random.default_rng(3)
    pids = [str(5000 + i) for i in range(24)]
    z = rng.normal(size=(24, 8))
    table = pd.DataFrame(z, columns=[f"Z{j}" for j in range(8)])
    table.insert(0, "patientID", pids)
    for col, value in zip(KEYS[1:], ["20208", "2", "primary", 0, 0, 0]):
        table.insert(KEYS.index(col), col, value)
    table.to_parquet(root / "emb.parquet", index=False)
    pd.DataFrame({"FID": pids, "up": 2 * z[:, 0], "grp": np.where(z[:, 1] > 0, "b", "a")}).to_csv(
        root / "pheno.tsv", sep="\t", index=False
    )
    pd.DataFrame([{"train": str(pids[:16]), "val": str(pids[16:20]), "test": str(pids[20:])}]).to_csv(
        root / "folds.csv", index=False
    )
    run(
        [
            "--latents",
            str(root / "emb.parquet"),
            "--json§DS_phenotypes§path",
            str(root / "pheno.tsv"),
            "--json§datadir",
            str(root),
            "--json§save_path",
            str(root),
            "--no-progress_bar",
            "--no-tbactive",
            "--batch_size",
            "16",
            "--num_epochs",
            "30",
            "--lr",
            "5e-2",
            "--heads",
            "linear",
            "--fulltrainID",
            "lc",
            "--run_mode",
            "0",
        ],
        registry.get("latentcls"),
    )
    return root / "lc"


def test_load_direction_from_a_latent_predictor(latentcls_run, diffae, cine):
    up = api.load_direction(latentcls_run, "up")
    assert up.vector.shape == (8,) and np.linalg.norm(up.vector) == pytest.approx(1.0)
    assert np.argmax(np.abs(up.vector)) == 0 and up.vector[0] > 0 and up.label == "up (increasing)"
    grp = api.load_direction(latentcls_run, "grp:b")
    assert np.argmax(np.abs(grp.vector)) == 1 and grp.vector[1] > 0 and grp.label == "grp (towards class b)"
    assert diffae.manipulate(cine[0][:, :1], up, 1.0).shape == (1, 1, 32, 32)
    with pytest.raises(UserError, match="not a target of"):
        api.load_direction(latentcls_run, "nope")
    with pytest.raises(UserError, match="'c' is not one of a, b"):
        api.load_direction(latentcls_run, "grp:c")


def test_app_refuses_bad_flags_in_one_line(vae_run, latentcls_run, capsys):  # noqa: F811
    import importlib.util

    from Engineering.errors import run_cli
    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("app_cli", REPO / "Executors" / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for argv, message in (
        (["--model", str(vae_run), "--direction", str(latentcls_run)], "--direction and --target go together"),
        (
            ["--model", str(vae_run), "--direction", str(latentcls_run), "--target", "up"],
            "the manipulation slider renders with a DiffAE",
        ),
        (["--model", "no/such_model_here"], "no/such_model_here"),
    ):
        assert run_cli(module.main, argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_app_without_model_serves_the_shipped_demo_model(monkeypatch, capsys):
    import importlib.util

    from Engineering import webapp
    from Engineering.errors import run_cli
    from tests.conftest import REPO

    served = {}
    monkeypatch.setattr(webapp, "serve", lambda page, host, port, on_ready: (served.update(host=host), on_ready()))
    spec = importlib.util.spec_from_file_location("app_cli", REPO / "Executors" / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert run_cli(module.main, []) == 0
    out = capsys.readouterr().out
    assert "examples/demo_model" in out and "DiffAE" in out and served == {"host": "127.0.0.1"}, out


def test_zip_members_stay_in_the_upload_folder(tmp_path):
    zipped = tmp_path / "evil.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("../../outside.dcm", b"x")
        zf.writestr("/etc/abs.dcm", b"y")
    up = webapp.read_upload(zipped, tmp_path / "work")
    assert up.kind == "dicom" and sorted(p.name for p in up.source.iterdir()) == [
        "000000_outside.dcm",
        "000001_abs.dcm",
    ]
    assert not (tmp_path / "outside.dcm").exists() and up.source.parent == tmp_path / "work"


def test_images_of_a_3d_sample_are_its_slices():
    x = np.arange(2 * 1 * 40 * 4 * 4, dtype=np.float32).reshape(2, 1, 40, 4, 4)  # N x C x S x X x Y
    keys = pd.DataFrame([["p", "0", "0", "primary", None, 0, None]] * 2, columns=KEYS)
    shown = webapp.images(x, keys)
    assert len(shown) == 14 and shown[0][1] == "c=- t=0 s=- slice 0" and shown[1][1].endswith("slice 3")
    assert shown[0][0].shape == (4, 4) and shown[0][0].min() == 0 and shown[-1][0].max() == 255


def test_renders_are_drawn_on_the_inputs_grey_scale(diffae, cine, tmp_path):
    """The reconstruction gallery uses the input's window (in its intensity units), as main_latentcls's strips."""
    x = cine[0][:, :2]
    raw, keys = diffae.preprocessed(x, normalised=False)
    norm, _ = diffae.preprocessed(x)
    assert raw.shape == norm.shape == (2, 1, 32, 32) and raw.max() > 100 and norm.max() <= 1.0 + 1e-6
    nii = tmp_path / "S7_20208_2_cine.nii.gz"
    write_nifti(x, nii)
    up = webapp.read_upload(nii, tmp_path)
    _, shown = webapp.reconstruct_upload(diffae, up)
    lo, hi = float(raw[:, 0].min()), float(raw[:, 0].max())
    want = np.round(np.clip((diffae.reconstruct(x)[:, 0] - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    np.testing.assert_allclose(np.stack([s[0] for s in shown]).astype(int), want.astype(int), atol=1)
