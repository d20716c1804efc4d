"""--load_hf: the published DiffAE layout and our own format, offline; export_hf round trip; mismatches."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

from Engineering.Engines import registry
from Engineering.Engines.MainEngine import run
from Engineering.errors import UserError
from tests.conftest import REPO, run_executor, tiny_args

COMPAT = REPO / "tests" / "fixtures" / "compat"
TASK = registry.get("diffAE")


def _tensors(name):
    with safe_open(str(COMPAT / name), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, fh.metadata()


@pytest.fixture(scope="module")
def published_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("published")
    shutil.copy(COMPAT / "diffae3d_ch8.safetensors", d / "model.safetensors")
    return d


@pytest.fixture(scope="module")
def fixture_subject(tmp_path_factory):
    """The fixture input x (2, 1, 8, 32, 32) as one subject: C=1, T=2 (the two volumes), S=8."""
    io, _ = _tensors("diffae3d_ch8_io.safetensors")
    d = tmp_path_factory.mktemp("subject")
    x = io["x"].numpy()
    with h5py.File(d / "data.h5", "w") as h5:
        h5.create_dataset("S1/F1/I1/primary_cine_0", data=np.transpose(x, (1, 0, 2, 3, 4)))
    return d, io


def _emb(out_dir):
    with h5py.File(out_dir / "emb.h5") as h5:
        return h5["S1/F1/I1/primary_cine_0"][()], dict(h5.attrs)


@pytest.mark.parametrize("which,ref", [("ema", "z_sem_ema"), ("net", "z_sem_net")])
def test_published_weights_reproduce_reference_latents(published_dir, fixture_subject, tmp_path, which, ref):
    data, io = fixture_subject
    run(
        [
            "--load_hf",
            str(published_dir),
            "--hf_weights",
            which,
            "--run_mode",
            "2",
            "--test_emb_only",
            "--norm_type",
            "none",
            "--croppad",
            "false",
            "--json§datadir",
            str(data),
            "--json§foldCSV",
            "0",
            "--json§save_path",
            str(tmp_path),
            "--fulltrainID",
            "pub",
            "--no-progress_bar",
            "--no-tbactive",
        ],
        TASK,
    )
    emb, attrs = _emb(tmp_path / "pub" / "Output")
    assert emb.shape == (1, 2, 1, 16)
    np.testing.assert_allclose(emb[0, :, 0], io[ref].numpy(), atol=1e-4)
    assert attrs["checkpoint"] == str(published_dir)


def test_published_without_input_shape_names_the_flag(fixture_subject, tmp_path):
    tensors, meta = _tensors("diffae3d_ch8.safetensors")
    d = tmp_path / "nometa"
    d.mkdir()
    # no metadata, no config.json and no x_T buffer: the shape is unknown
    save_file({k: v for k, v in tensors.items() if k != "x_T"}, str(d / "weights.safetensors"))
    data, _ = fixture_subject
    args = [
        "--load_hf",
        str(d),
        "--run_mode",
        "2",
        "--test_emb_only",
        "--json§datadir",
        str(data),
        "--json§foldCSV",
        "0",
        "--json§save_path",
        str(tmp_path),
        "--no-progress_bar",
    ]
    with pytest.raises(UserError, match="do not determine input_shape: pass --input_shape"):
        run(args, TASK)
    run(args + ["--input_shape", "8,32,32", "--norm_type", "none", "--no-croppad"], TASK)  # with the flag it runs
    # the x_T buffer (sample_size, C, *input_shape) determines it too
    save_file(tensors, str(d / "weights.safetensors"))
    run(args + ["--norm_type", "none", "--no-croppad", "--fulltrainID", "xT"], TASK)
    assert yaml.safe_load((tmp_path / "xT" / "resolved_config.yaml").read_text())["model"]["input_shape"] == [8, 32, 32]


def test_wrong_input_shape_is_one_clear_mismatch(published_dir, fixture_subject, tmp_path):
    data, _ = fixture_subject
    # attention sits where the running resolution is 16: a 64-wide input moves it to another level
    with pytest.raises(UserError, match=r"do not fit the model .*(missing|unexpected)"):
        run(
            [
                "--load_hf",
                str(published_dir),
                "--input_shape",
                "8,64,64",
                "--run_mode",
                "2",
                "--test_emb_only",
                "--json§datadir",
                str(data),
                "--json§foldCSV",
                "0",
                "--json§save_path",
                str(tmp_path),
            ],
            TASK,
        )


def test_offline_hub_cache(published_dir, fixture_subject, tmp_path):
    """A hand-built Hugging Face cache, read with HF_HUB_OFFLINE=1: no network."""
    data, io = fixture_subject
    home = tmp_path / "hf"
    repo = home / "hub" / "models--GlastonburyGroup--Tiny_DiffAE3D"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    shutil.copy(published_dir / "model.safetensors", repo / "snapshots" / commit / "model.safetensors")
    proc = run_executor(
        "main_diffAE.py",
        "--load_hf",
        "GlastonburyGroup/Tiny_DiffAE3D",
        "--run_mode",
        "2",
        "--test_emb_only",
        "--norm_type",
        "none",
        "--croppad",
        "false",
        "--json§datadir",
        str(data),
        "--json§foldCSV",
        "0",
        "--json§save_path",
        str(tmp_path),
        "--fulltrainID",
        "hub",
        "--no-progress_bar",
        env={"HF_HOME": str(home), "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    emb, attrs = _emb(tmp_path / "hub" / "Output")
    np.testing.assert_allclose(emb[0, :, 0], io["z_sem_ema"].numpy(), atol=1e-4)
    assert attrs["load_hf_revision"] == commit
    proc = run_executor(
        "main_diffAE.py",
        "--load_hf",
        "GlastonburyGroup/Absent",
        "--run_mode",
        "2",
        "--json§save_path",
        str(tmp_path),
        env={"HF_HOME": str(home), "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 2 and "not in the local Hugging Face cache" in proc.stderr


def test_export_round_trip_and_push_offline(tiny_demo, tmp_path):
    run(tiny_args(tiny_demo, tmp_path, "--fulltrainID", "exp", "--run_mode", "1"), TASK)
    run(
        tiny_args(
            tiny_demo, tmp_path, "--fulltrainID", "exp", "--run_mode", "2", "--resume", "--load_best", "--test_emb_only"
        ),
        TASK,
    )
    out = tmp_path / "hfexport"
    proc = run_executor(
        "export_hf.py",
        "--run",
        str(tmp_path / "exp"),
        "--out",
        str(out),
        "--push",
        "me/tiny",
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 2 and "the export is complete in" in proc.stderr
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["format"] == "imlatent" and cfg["drive"] == "DiffAE" and cfg["weights"] == "ema"
    assert cfg["input_shape"] == [32, 32] and cfg["latent_dim"] == 8
    card = (out / "README.md").read_text()
    assert "Input contract" in card and "--load_hf" in card and "best val_loss" in card
    # our format needs no architecture flags: the default (demo-sized) YAML architecture is replaced by config.json
    run(
        [
            "--load_hf",
            str(out),
            "--run_mode",
            "2",
            "--test_emb_only",
            "--json§datadir",
            str(tiny_demo),
            "--json§save_path",
            str(tmp_path),
            "--fulltrainID",
            "fromhub",
            "--no-progress_bar",
            "--no-tbactive",
        ],
        TASK,
    )
    a = pd.read_csv(tmp_path / "exp" / "Output" / "emb.tsv", sep="\t")
    b = pd.read_csv(tmp_path / "fromhub" / "Output" / "emb.tsv", sep="\t")
    z = [c for c in a.columns if c.startswith("Z")]
    assert len(a) == len(b) > 0
    np.testing.assert_allclose(a[z].values, b[z].values, atol=1e-5)


def test_drive_mismatch_is_an_error(tiny_demo, tmp_path):
    """Our-format DiffAE weights loaded into a pythae run: one clear error."""
    run(tiny_args(tiny_demo, tmp_path, "--fulltrainID", "d", "--run_mode", "1"), TASK)
    out = tmp_path / "exp"
    proc = run_executor("export_hf.py", "--run", str(tmp_path / "d"), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads((out / "config.json").read_text())
    cfg["drive"] = "pythae"
    cfg["architecture"] = {"model": "vae"}
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="do not fit the model"):
        run(
            [
                "--load_hf",
                str(out),
                "--run_mode",
                "2",
                "--json§datadir",
                str(tiny_demo),
                "--json§save_path",
                str(tmp_path),
            ],
            registry.get("recon"),
        )


def test_export_replaces_the_old_folder_only_once_the_new_one_is_in_place(tmp_path, monkeypatch):
    """export_hf onto an existing folder: a failure while moving the new export in leaves the previous one."""
    from pathlib import Path

    from Engineering.io.atomic import replace_dir

    out, new = tmp_path / "hf_model", tmp_path / ".hf_model.new"
    out.mkdir()
    (out / "config.json").write_text("old")
    new.mkdir()
    (new / "config.json").write_text("new")
    real = Path.replace

    def failing(self, target):
        if self == new:
            raise OSError("disk full")
        return real(self, target)

    monkeypatch.setattr(Path, "replace", failing)
    with pytest.raises(OSError):
        replace_dir(new, out)
    assert (out / "config.json").read_text() == "old"
    monkeypatch.setattr(Path, "replace", real)
    replace_dir(new, out)
    assert (out / "config.json").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["hf_model"]


def _hostile_architecture(marker):
    return {
        "reconstruction_loss": "custom",
        "custom_loss_class": "subprocess.Popen",
        "custom_loss_params": {"args": ["touch", str(marker)]},
    }


def test_downloaded_config_cannot_name_code(tiny_demo, tmp_path):
    """A Hub folder (our format) whose config.json names a callable: refused before anything is built, exit 2."""
    marker = tmp_path / "PWNED"
    d = tmp_path / "hostile"
    d.mkdir()
    save_file({"w": __import__("torch").zeros(1)}, str(d / "model.safetensors"))
    (d / "config.json").write_text(
        json.dumps(
            {
                "format": "imlatent",
                "format_version": 1,
                "drive": "pythae",
                "is3D": False,
                "input_shape": [16, 16],
                "in_channels": 1,
                "latent_dim": 4,
                "architecture": {"model": "vae", **_hostile_architecture(marker)},
            }
        )
    )
    proc = run_executor(
        "main_recon.py",
        "--load_hf",
        str(d),
        "--run_mode",
        "2",
        "--json§datadir",
        str(tiny_demo),
        "--json§save_path",
        str(tmp_path),
    )
    assert proc.returncode == 2 and not marker.exists()
    line = proc.stderr.strip().splitlines()[-1]
    assert "config.json" in line and "custom_loss_class" in line and "subprocess.Popen" in line
    assert "Traceback" not in proc.stderr


def test_checkpoint_config_cannot_name_code(tiny_demo, tmp_path):
    """A checkpoint whose saved imlatent_config names a callable: main_benchmark --run refuses it, exit 2."""
    import torch

    from Engineering.config.loader import resolve

    marker = tmp_path / "PWNED"
    raw = resolve(["--json§datadir", str(tiny_demo)], registry.get("recon")).raw
    raw["model"]["pythae"].update(_hostile_architecture(marker))
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "imlatent_config": raw, "in_channels": 1}, ckpt)
    pd.DataFrame(
        {
            "patientID": ["1000001", "1000002"],
            "fieldID": "20208",
            "instanceID": "2",
            "key": "primary_cine_0",
            "c": 0,
            "t": 0,
            "s": 0,
            "Z0": [0.1, 0.2],
            "Z1": [0.3, 0.1],
        }
    ).to_csv(tmp_path / "emb.tsv", sep="\t", index=False)
    proc = run_executor(
        "main_benchmark.py",
        "--latents",
        f"evil={tmp_path / 'emb.tsv'}",
        "--run",
        f"evil={ckpt}",
        "--out",
        str(tmp_path / "bench"),
        "--n_boot",
        "0",
        "--n_splits",
        "2",
    )
    assert proc.returncode == 2 and not marker.exists(), proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert "evil.ckpt" in line and "custom_loss_class" in line and "subprocess.Popen" in line


def test_export_config_carries_every_setting_of_the_sample_transform(tiny_demo):
    """An export loaded with the task's defaults underneath rebuilds the run's sample transform exactly: every data
    setting at a non-default value survives config.json (augmentation aside: it is training's)."""
    import dataclasses

    from Engineering.config.loader import resolve
    from Engineering.data.datamodule import sample_spec
    from Engineering.io.hub import export_config, layer_from_config

    task = registry.get("diffAE")
    base = ["--json§datadir", str(tiny_demo), "--json§is_complexDS", "true"]
    trained = resolve(
        [
            *base,
            "--norm_type",
            "zscore",
            "--prenorm",
            "255",
            "--zscore_mean",
            "0.2",
            "--zscore_std",
            "0.5",
            "--allow_pad",
            "true",
            "--interp_fact",
            "0.75",
            "--complex_mode",
            "phase",
            "--grey2RGB",
            "true",
        ],
        task,
    ).cfg
    config = json.loads(json.dumps(export_config(trained, 1, "ema")))  # as written to and read from the file
    loaded = resolve(base, task, layer=layer_from_config(config)).cfg
    skip = {"flip_prob", "flip_axes", "mask_mode"}
    want, got = sample_spec(trained), sample_spec(loaded)
    default = sample_spec(resolve(base, task).cfg)
    differs = [f.name for f in dataclasses.fields(want) if getattr(want, f.name) != getattr(default, f.name)]
    assert {
        "norm_type",
        "prenorm",
        "zscore_mean",
        "zscore_std",
        "allow_pad",
        "interp_fact",
        "complex_mode",
        "grey2RGB",
    } <= set(differs)
    for f in dataclasses.fields(want):
        if f.name not in skip:
            assert getattr(got, f.name) == getattr(want, f.name), f.name
    # the min-max family's range too (the DiffAE's default is symmetric), and no crop-or-pad
    unit = resolve([*base, "--norm_range", "unit", "--croppad", "false"], task).cfg
    assert default.norm_range != "unit" and default.croppad
    config = json.loads(json.dumps(export_config(unit, 1, "ema")))
    got = sample_spec(resolve(base, task, layer=layer_from_config(config)).cfg)
    assert got.norm_range == "unit" and not got.croppad
