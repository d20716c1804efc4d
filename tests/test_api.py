"""Engineering.api and Executors/embed.py: the latents of load(...).embed(...) are those of --run_mode 2."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import subprocess
import sys

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from Engineering import api
from Engineering.Engines import registry
from Engineering.Engines.MainEngine import run
from Engineering.Engines.saved_runs import describe_saved
from Engineering.errors import UserError
from Engineering.io.export import export_run
from tests.conftest import REPO, run_executor, tiny_args

pytestmark = pytest.mark.usefixtures("one_thread")


def _embed_cli(*args: str) -> subprocess.CompletedProcess:
    """Executors/embed.py in-process (a subprocess costs seconds of imports); its exit code and output."""
    from Engineering.errors import run_cli

    spec = importlib.util.spec_from_file_location("embed_cli", REPO / "Executors" / "embed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_cli(module.main, list(args))
    return subprocess.CompletedProcess(["embed.py", *args], code, out.getvalue(), err.getvalue())


KEYS = ["patientID", "fieldID", "instanceID", "key", "c", "t", "s"]
TINY_VAE = [
    "--input_shape",
    "16,16",
    "--interp_fact",
    "0.5",
    "--latent_dim",
    "4",
    "--batch_size",
    "8",
    "--model§pythae§n_features",
    "8",
    "--model§pythae§n_levels",
    "2",
    "--num_epochs",
    "1",
    "--n_train_batches",
    "2",
    "--n_val_batches",
    "2",
    "--no-progress_bar",
    "--no-tbactive",
]


def _emb_tsv(run_dir):
    return pd.read_csv(run_dir / "Output" / "emb.tsv", sep="\t", dtype={k: str for k in KEYS[:4]})


def _same_rows(got: pd.DataFrame, want: pd.DataFrame) -> float:
    """Max |difference| of the latents over want's rows (every one of which must be in got)."""
    z = [c for c in want.columns if c.startswith("Z")]
    both = want.merge(got, on=KEYS, how="left", suffixes=("", "_api"), validate="one_to_one")
    assert both[[f"{c}_api" for c in z]].notna().all().all(), "a sample of emb.tsv is missing from the API's table"
    return float(np.abs(both[z].values - both[[f"{c}_api" for c in z]].values).max())


@pytest.fixture(scope="module")
def diffae_run(tiny_demo, tmp_path_factory):
    save = tmp_path_factory.mktemp("api_diffae")
    task = registry.get("diffAE")
    run(tiny_args(tiny_demo, save, "--fulltrainID", "d", "--run_mode", "1"), task)
    run(
        tiny_args(
            tiny_demo, save, "--fulltrainID", "d", "--run_mode", "2", "--resume", "--load_best", "--test_emb_only"
        ),
        task,
    )
    return save / "d"


@pytest.fixture(scope="module")
def vae_run(tiny_demo, tmp_path_factory):
    save = tmp_path_factory.mktemp("api_vae")
    task = registry.get("recon")
    common = [*TINY_VAE, "--json§datadir", str(tiny_demo), "--json§save_path", str(save), "--fulltrainID", "v"]
    run([*common, "--run_mode", "1"], task)
    run([*common, "--run_mode", "2", "--resume", "--load_best", "--test_emb_only"], task)
    return save / "v"


@pytest.fixture(scope="module")
def ssl_run(tiny_demo, tmp_path_factory):
    save = tmp_path_factory.mktemp("api_ssl")
    task = registry.get("ssl")
    common = [
        "--batch_size",
        "8",
        "--num_epochs",
        "1",
        "--n_train_batches",
        "2",
        "--model§SSL§width",
        "4",
        "--model§SSL§proj_hidden",
        "16",
        "--model§SSL§proj_dim",
        "8",
        "--no-progress_bar",
        "--no-tbactive",
        "--json§datadir",
        str(tiny_demo),
        "--json§save_path",
        str(save),
        "--fulltrainID",
        "s",
    ]
    run([*common, "--run_mode", "1"], task)
    run([*common, "--run_mode", "2", "--resume", "--load_best"], task)
    return save / "s"


def _one_dataset(tiny_demo, emb: pd.DataFrame):
    """The first dataset of the test split that emb.tsv holds: (5D array, its emb.tsv rows)."""
    first = emb.iloc[0]
    path = "/".join(str(first[k]) for k in KEYS[:4])
    with h5py.File(tiny_demo / "data.h5") as h5:
        x = h5[path][()]
    rows = emb[(emb[KEYS[:4]] == first[KEYS[:4]]).all(axis=1)]
    return x, rows


@pytest.mark.parametrize("which", ["diffae", "vae", "ssl"])
def test_embed_matches_run_mode_2(which, request, tiny_demo, tmp_path):
    run_dir = request.getfixturevalue(f"{which}_run")
    emb = _emb_tsv(run_dir)
    model = api.load(run_dir)
    # the HDF5 file: the same key columns and values as emb.tsv
    assert _same_rows(model.embed(tiny_demo / "data.h5"), emb) < 1e-5
    # an array in the 5D contract, and the same sample as a NIfTI file: the emb.h5 grid of that dataset
    x, rows = _one_dataset(tiny_demo, emb)
    z_cols = [c for c in emb.columns if c.startswith("Z")]
    grid = model.embed(x)
    assert grid.shape == (1, x.shape[1], 1, len(z_cols))  # the demo is split by time (cine frames as samples)
    want = rows.sort_values("t")[z_cols].values
    assert np.abs(grid[0, :, 0] - want).max() < 1e-5
    nii = tmp_path / "S1_20208_2_cine.nii.gz"  # C x T x S x X x Y -> (i, j, k, t)
    nib.save(nib.Nifti1Image(np.transpose(x[0], (2, 3, 1, 0)), np.eye(4)), str(nii))
    assert np.abs(model.embed(nii)[0, :, 0] - want).max() < 1e-5
    # one sample in the model's own layout (C x X x Y): one latent vector
    assert np.abs(model.embed(x[:, 0, 0]) - want[0]).max() < 1e-5
    # the same frames as a DICOM series folder (one file per frame, TriggerTime orders them)
    _write_dicom_series(tmp_path / "series", x[0, :, 0])
    assert np.abs(model.embed(tmp_path / "series")[0, :, 0] - want).max() < 1e-5
    dcm = model.embed_many([tmp_path / "series"])
    assert set(dcm["patientID"]) == {"DCM1"} and np.abs(dcm.sort_values("t")[z_cols].values - want).max() < 1e-5
    # embed_many: IDs of a NIfTI file from its name
    table = model.embed_many([nii])
    assert set(table["patientID"]) == {"S1"} and set(table["fieldID"]) == {"20208"} and len(table) == x.shape[1]
    assert np.abs(table.sort_values("t")[z_cols].values - want).max() < 1e-5


def test_bf16_embedding_is_the_test_phase_bf16(diffae_run, vae_run, tiny_demo):
    """precision="bf16" is --embed_precision bf16 (the DiffAE's bfloat16 encoder copy); other families refuse it."""
    run(
        tiny_args(
            tiny_demo,
            diffae_run.parent,
            "--fulltrainID",
            "d",
            "--run_mode",
            "2",
            "--resume",
            "--load_best",
            "--test_emb_only",
            "--embed_precision",
            "bf16",
            "--output_suffix",
            "bf16",
        ),
        registry.get("diffAE"),
    )
    want = pd.read_csv(diffae_run / "Output_bf16" / "emb.tsv", sep="\t", dtype={k: str for k in KEYS[:4]})
    got = api.load(diffae_run, precision="bf16").embed(tiny_demo / "data.h5", batch_size=4)
    assert _same_rows(got, want) < 1e-5
    assert _same_rows(got, _emb_tsv(diffae_run)) > 1e-4  # really another precision than the fp32 latents
    with pytest.raises(UserError, match="has no --embed_precision"):
        api.load(vae_run, precision="bf16")


def test_export_folder_gives_the_same_latents(diffae_run, tiny_demo, tmp_path):
    out = export_run(diffae_run, "best", tmp_path / "export", describe_saved)
    got = api.load(out).embed(tiny_demo / "data.h5")
    assert _same_rows(got, _emb_tsv(diffae_run)) < 1e-5
    # the run's Checkpoints/ folder and its best checkpoint file (what --load_best tested) load as the run
    best = next(p for p in (diffae_run / "Checkpoints").glob("*.ckpt") if p.name != "last.ckpt")
    for ref in (diffae_run / "Checkpoints", best):
        assert _same_rows(api.load(ref).embed(tiny_demo / "data.h5"), _emb_tsv(diffae_run)) < 1e-5


def test_reconstruct_where_the_family_has_a_decoder(vae_run, tiny_demo):
    emb = _emb_tsv(vae_run)
    x, _ = _one_dataset(tiny_demo, emb)
    rec = api.load(vae_run).reconstruct(x)
    assert rec.shape == (x.shape[1], 1, 16, 16) and np.isfinite(rec).all()


def test_reconstruct_is_one_clear_error_without_a_decoder(ssl_run, tiny_demo):
    x, _ = _one_dataset(tiny_demo, _emb_tsv(ssl_run))
    with pytest.raises(UserError, match="no decoder"):
        api.load(ssl_run).reconstruct(x)


def test_batch_statistics_models_are_refused(ssl_run):
    """--bn_eval_mode batch/group: a latent depends on its batch, which the API does not reproduce."""
    import dataclasses

    run_ = api.load(ssl_run).run
    cfg = run_.cfg.model_copy(deep=True)
    cfg.eval.bn_eval_mode = "batch"
    with pytest.raises(UserError, match="--bn_eval_mode batch"):
        api.ImLatentModel(dataclasses.replace(run_, cfg=cfg), str(ssl_run), run_.engine.device)


@pytest.mark.parametrize(
    "bad,match",
    [
        (np.zeros((32, 32), np.float32), "has 2 axes"),
        (np.zeros((1, 2, 1, 8, 8), np.float32), "padding"),
        (np.full((1, 2, 1, 32, 32), np.nan, np.float32), "NaN/Inf"),
        (np.zeros((3, 32, 32), np.float32), "channel"),
        (np.zeros((1, 1, 1, 32, 32), bool), "dtype bool"),
    ],
)
def test_misfit_inputs_are_one_clear_error(diffae_run, bad, match):
    with pytest.raises(UserError, match=match):
        api.load(diffae_run).embed(bad)


def test_misfit_model_references(tmp_path, diffae_run):
    with pytest.raises(UserError, match="not a run folder"):
        api.load(tmp_path / "missing" / "x")
    with pytest.raises(UserError, match="no such file or folder, and as a Hugging Face id: not in the local"):
        api.load("nobody/no-such-model")
    with pytest.raises(UserError, match="apply to exported or published"):
        api.load(diffae_run, options=["--input_shape", "16,16"])


def test_embed_executor_writes_the_api_table(diffae_run, tiny_demo, tmp_path):
    x, _ = _one_dataset(tiny_demo, _emb_tsv(diffae_run))
    folder = tmp_path / "niftis"
    folder.mkdir()
    for name in ("P1_1_0.nii.gz", "P2_1_0.nii.gz"):
        nib.save(nib.Nifti1Image(np.transpose(x[0], (2, 3, 1, 0)), np.eye(4)), str(folder / name))
    want = api.load(diffae_run).embed_many(sorted(folder.glob("*.nii.gz")))
    for out in ("lat.tsv", "lat.parquet", "emb.h5"):
        args = ["--model", str(diffae_run), "--input", str(folder), "--out", str(tmp_path / out)]
        # the first as users run it (a subprocess), the others in-process
        proc = run_executor("embed.py", *args) if out == "lat.tsv" else _embed_cli(*args)
        assert proc.returncode == 0, proc.stderr
    got = pd.read_csv(tmp_path / "lat.tsv", sep="\t", dtype={k: str for k in KEYS[:4]})
    assert _same_rows(got, want) < 1e-6 and len(got) == len(want) == 2 * x.shape[1]
    assert _same_rows(pd.read_parquet(tmp_path / "lat.parquet"), want) < 1e-6
    with h5py.File(tmp_path / "emb.h5") as h5:
        grid = h5["P2/1/0/primary"][()]
    z = [c for c in want.columns if c.startswith("Z")]
    assert np.abs(grid[0, :, 0] - want[want.patientID == "P2"].sort_values("t")[z].values).max() < 1e-6
    proc = _embed_cli(
        "--model", str(diffae_run), "--input", str(tmp_path / "none*.nii"), "--out", str(tmp_path / "x.tsv")
    )
    assert proc.returncode == 2 and "matches no file" in proc.stderr


def test_embed_executor_resumes_and_shards(diffae_run, tiny_demo, tmp_path):
    """A run stopped after the first file (here: the second is unreadable) keeps it in OUT.partial/; started
    again, it embeds only the rest and writes the same table as the API."""
    x, _ = _one_dataset(tiny_demo, _emb_tsv(diffae_run))
    folder = tmp_path / "in"
    folder.mkdir()
    image = nib.Nifti1Image(np.transpose(x[0], (2, 3, 1, 0)), np.eye(4))
    nib.save(image, str(folder / "P1_1_0.nii.gz"))
    (folder / "P2_1_0.nii.gz").write_bytes(b"not a NIfTI file")
    args = ["--model", str(diffae_run), "--input", str(folder / "*.nii.gz"), "--out", str(tmp_path / "z.tsv")]
    proc = _embed_cli(*args)
    assert proc.returncode == 2 and "cannot read NIfTI" in proc.stderr and not (tmp_path / "z.tsv").exists()
    assert len(list((tmp_path / "z.tsv.partial").glob("*.parquet"))) == 1
    nib.save(image, str(folder / "P2_1_0.nii.gz"))
    proc = _embed_cli(*args)
    assert proc.returncode == 0 and "resumed: 1 of 2 input files" in proc.stdout, proc.stderr
    assert not (tmp_path / "z.tsv.partial").exists()
    want = api.load(diffae_run).embed_many(sorted(folder.glob("*.nii.gz")))
    got = pd.read_csv(tmp_path / "z.tsv", sep="\t", dtype={k: str for k in KEYS[:4]})
    assert len(got) == len(want) and _same_rows(got, want) < 1e-6
    proc = _embed_cli(*args[:-1], str(tmp_path / "s1.tsv"), "--shard", "1/2")
    assert proc.returncode == 0, proc.stderr
    assert set(pd.read_csv(tmp_path / "s1.tsv", sep="\t", dtype=str)["patientID"]) == {"P2"}


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """The published DiffAE layout (tests/fixtures/compat: a 3D DiffAE, input 8 x 32 x 32) and its reference
    latents of two volumes."""
    from safetensors import safe_open

    from tests.test_hub import COMPAT

    folder = tmp_path_factory.mktemp("published")
    (folder / "model.safetensors").write_bytes((COMPAT / "diffae3d_ch8.safetensors").read_bytes())
    with safe_open(str(COMPAT / "diffae3d_ch8_io.safetensors"), framework="pt") as fh:
        io = {k: fh.get_tensor(k).numpy() for k in fh.keys()}
    return folder, io


@pytest.mark.parametrize("which", ["ema", "net"])
def test_published_layout_through_the_api(published, which):
    folder, io = published
    model = api.load(
        folder, options=["--norm_type", "none", "--croppad", "false", "--hf_weights", which], in_channels=1
    )
    x = io["x"]  # (2 volumes, C=1, S=8, 32, 32): one dataset C x T x S x X x Y with the volumes as time
    z = model.embed(np.transpose(x, (1, 0, 2, 3, 4)))
    assert z.shape == (1, 2, 1, 16)
    assert np.abs(z[0, :, 0] - io[f"z_sem_{which}"]).max() < 1e-5
    assert np.abs(model.embed(x[1]) - io[f"z_sem_{which}"][1]).max() < 1e-5  # one sample, C x S x X x Y
    with pytest.raises(UserError, match="a 2D image"):
        model.embed(x[:1, :, :1])  # C x T x S x X x Y with one slice, for a 3D model


def test_embed_executor_with_published_weights(published, tmp_path):
    folder, io = published
    with h5py.File(tmp_path / "subject.h5", "w") as h5:
        h5.create_dataset("S1/F1/I1/primary_cine_0", data=np.transpose(io["x"], (1, 0, 2, 3, 4)))
    proc = _embed_cli(
        "--model",
        str(folder),
        "--in_channels",
        "1",
        "--flags",
        "--norm_type none --croppad false",
        "--input",
        str(tmp_path / "subject.h5"),
        "--out",
        str(tmp_path / "pub.tsv"),
    )
    assert proc.returncode == 0, proc.stderr
    got = pd.read_csv(tmp_path / "pub.tsv", sep="\t").sort_values("t")
    assert np.abs(got[[f"Z{j}" for j in range(16)]].values - io["z_sem_ema"]).max() < 1e-5


def test_published_layout_needs_in_channels(published):
    with pytest.raises(UserError, match="in_channels=N"):
        api.load(published[0], options=["--norm_type", "none"])


def _write_dicom_series(folder, frames, patient="DCM1"):
    """A cine series: one file per frame (TriggerTime orders them), int16 pixels, one plane."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir()
    series = generate_uid()
    for t, image in enumerate(frames):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = patient, generate_uid(), series
        ds.SeriesNumber, ds.InstanceNumber, ds.TriggerTime = 1, t + 1, 10.0 * t
        ds.ImageOrientationPatient, ds.ImagePositionPatient = [1, 0, 0, 0, 1, 0], [0, 0, 0]
        ds.Rows, ds.Columns = image.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = np.ascontiguousarray(image, dtype="<i2").tobytes()
        ds.save_as(folder / f"IM{t:04d}.dcm", enforce_file_format=True)


def test_embed_executor_reads_a_dicom_series_folder(diffae_run, tiny_demo, tmp_path):
    emb = _emb_tsv(diffae_run)
    x, rows = _one_dataset(tiny_demo, emb)
    assert x.dtype == np.int16
    _write_dicom_series(tmp_path / "series", x[0, :, 0])  # (T, X, Y) frames of the 5D sample
    (tmp_path / "series" / "notes.txt").write_text("not DICOM")
    proc = _embed_cli(
        "--model", str(diffae_run), "--input", str(tmp_path / "series"), "--out", str(tmp_path / "dcm.tsv")
    )
    assert proc.returncode == 0, proc.stderr
    got = pd.read_csv(tmp_path / "dcm.tsv", sep="\t", dtype={k: str for k in KEYS[:4]})
    assert set(got["patientID"]) == {"DCM1"} and len(got) == x.shape[1]
    z = [c for c in emb.columns if c.startswith("Z")]
    assert np.abs(got.sort_values("t")[z].values - rows.sort_values("t")[z].values).max() < 1e-5
    _write_dicom_series(tmp_path / "two", x[0, :2, 0])
    _write_dicom_series(tmp_path / "two" / "other", x[0, :2, 0])
    proc = _embed_cli("--model", str(diffae_run), "--input", str(tmp_path / "two"), "--out", str(tmp_path / "two.tsv"))
    assert proc.returncode == 2 and "2 DICOM series" in proc.stderr


def test_embed_executor_resumes_after_sigkill(diffae_run, tiny_demo, tmp_path):
    """embed.py killed with SIGKILL (no cleanup runs) while writing its third file's chunk: the rerun keeps the
    two finished files, ignores the torn chunk, embeds the rest and writes the API's table."""
    x, _ = _one_dataset(tiny_demo, _emb_tsv(diffae_run))
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(4):  # four subjects: the frames shifted so that each file has its own latents
        image = np.roll(x[0], i, axis=0)
        nib.save(nib.Nifti1Image(np.transpose(image, (2, 3, 1, 0)), np.eye(4)), str(folder / f"P{i}_1_0.nii.gz"))
    out = tmp_path / "z.tsv"
    argv = ["--model", str(diffae_run), "--input", str(folder), "--out", str(out)]
    # the third chunk's temporary file is written, then the process dies before it is renamed into place
    killer = (
        "import os, runpy, signal, sys\n"
        "import pandas as pd\n"
        "write, calls = pd.DataFrame.to_parquet, []\n"
        "def dying(self, *a, **k):\n"
        "    write(self, *a, **k)\n"
        "    calls.append(1)\n"
        "    if len(calls) == 3:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "pd.DataFrame.to_parquet = dying\n"
        f"sys.argv = ['embed.py', *{argv!r}]\n"
        f"runpy.run_path({str(REPO / 'Executors' / 'embed.py')!r}, run_name='__main__')\n"
    )
    proc = subprocess.run([sys.executable, "-c", killer], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == -9, proc.stderr
    assert not out.exists()
    kept = sorted((tmp_path / "z.tsv.partial").iterdir())
    assert len([p for p in kept if p.suffix == ".parquet"]) == 2 and len(kept) > 3  # + fingerprint + torn file
    proc = _embed_cli(*argv)
    assert proc.returncode == 0 and "resumed: 2 of 4 input files" in proc.stdout, proc.stderr
    assert not (tmp_path / "z.tsv.partial").exists()
    want = api.load(diffae_run).embed_many(sorted(folder.glob("*.nii.gz")))
    got = pd.read_csv(out, sep="\t", dtype={k: str for k in KEYS[:4]})
    assert len(got) == len(want) == 4 * x.shape[1] and _same_rows(got, want) < 1e-6


def test_bf16_encoder_copy_is_for_inference_only(diffae_run):
    """--embed_precision bf16 is a test-phase setting: while a Trainer fits (validation, image grids) the weights move,
    so embed() encodes with them in fp32 rather than with a bfloat16 copy made earlier."""
    from types import SimpleNamespace

    engine = api.load(diffae_run, precision="bf16").run.engine
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        fp32 = engine.ema_net.encode(x)
        engine._trainer = SimpleNamespace(state=SimpleNamespace(fn="test"))
        copy = engine.embed(x, True)
        engine._trainer = SimpleNamespace(state=SimpleNamespace(fn="fit"))
        fitting = engine.embed(x, True)
        engine._trainer = None
    assert not torch.equal(copy, fp32) and torch.equal(fitting, fp32)


def test_embed_executor_never_deletes_a_partial_folder_it_did_not_write(diffae_run, tiny_demo, tmp_path):
    """OUT.partial/ of another run (other inputs) is replaced; a folder of that name holding anything else is
    refused in one line and left as it was."""
    x, _ = _one_dataset(tiny_demo, _emb_tsv(diffae_run))
    nii = tmp_path / "P1_1_0.nii.gz"
    nib.save(nib.Nifti1Image(np.transpose(x[0], (2, 3, 1, 0)), np.eye(4)), str(nii))
    argv = ["--model", str(diffae_run), "--input", str(nii), "--out", str(tmp_path / "z.tsv")]
    mine = tmp_path / "z.tsv.partial"
    mine.mkdir()
    (mine / "notes.txt").write_text("a user's file")
    proc = _embed_cli(*argv)
    assert proc.returncode == 2 and "is not an earlier output of this tool" in proc.stderr, proc.stderr
    assert (mine / "notes.txt").read_text() == "a user's file"
    (mine / "notes.txt").unlink()
    (mine / "fingerprint.json").write_text('{"files": ["another input"]}')  # a stopped run of other inputs
    (mine / "000000_0123456789.parquet").write_bytes(b"stale")
    proc = _embed_cli(*argv)
    assert proc.returncode == 0 and "resumed" not in proc.stdout and not mine.exists(), proc.stderr
