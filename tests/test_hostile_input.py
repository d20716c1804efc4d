"""Hostile-but-honest input: every bad value, file or checkpoint is one line naming the culprit and exit code 2
(run in-process through the executors' own ``run_cli``), nothing is written, nothing is executed."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from Engineering.Engines import registry
from Engineering.Engines.MainEngine import run
from Engineering.errors import run_cli
from tests.conftest import tiny_args

TASK = registry.get("diffAE")


def _exit(capsys, argv) -> tuple[int, str]:
    code = run_cli(lambda a: run(a, TASK), argv)
    err = capsys.readouterr().err.strip()
    return code, err


def _one_clear_line(code, err, *words):
    lines = err.splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.mark.parametrize(
    "args,words",
    [
        (["--lr", "-1"], ["training§lr", "greater than 0"]),
        (["--lr", "nan"], ["training§lr"]),
        (["--batch_size", "0"], ["training§batch_size", "greater than 0"]),
        (["--num_workers", "-1"], ["run§num_workers"]),
        (["--ampmode", "foo"], ["--ampmode", "foo"]),
        (["--n_val_batches", "-3"], ["training§n_val_batches"]),
        (["--num_epochs", "-1"], ["training§num_epochs"]),
        (["--n_train_batches", "0"], ["training§n_train_batches"]),
        (["--model§DiffAE§T_eval", "5000"], ["T_eval=5000", "[1, 1000]"]),
        (["--model§DiffAE§T_inv", "0"], ["T_inv=0", "[1, 1000]"]),
        (["--training§ema_decay", "2"], ["training§ema_decay", "less than 1"]),
        (["--training§ema_decay", "-1"], ["training§ema_decay"]),
    ],
)
def test_bad_values_are_one_line(tiny_demo, tmp_path, capsys, args, words):
    code, err = _exit(capsys, tiny_args(tiny_demo, tmp_path, "--fulltrainID", "bad", *args))
    _one_clear_line(code, err, *words)
    assert not (tmp_path / "bad").exists()


def test_gpu_without_one_and_save_path_a_file(tiny_demo, tmp_path, capsys):
    if not torch.cuda.is_available():
        _one_clear_line(*_exit(capsys, tiny_args(tiny_demo, tmp_path, "--accelerator", "gpu")), "--accelerator gpu")
    (tmp_path / "afile").write_text("x")
    code, err = _exit(capsys, tiny_args(tiny_demo, tmp_path / "afile"))
    _one_clear_line(code, err, "json§save_path", "is a file")


def test_yaml_section_that_is_a_scalar(tiny_demo, tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("model: 5\n")
    code, err = _exit(capsys, tiny_args(tiny_demo, tmp_path, "--configyml_path", str(tmp_path / "c.yaml")))
    _one_clear_line(code, err, "section 'model' must be a mapping")


def _data(tmp_path, shape=(1, 2, 1, 16, 16), **attrs):
    d = tmp_path / "d"
    d.mkdir(exist_ok=True)
    with h5py.File(d / "data.h5", "w") as h5:
        ds = h5.create_dataset("1/2/3/primary_cine_0", data=np.ones(shape, np.int16))
        ds.attrs.update(attrs)
    return d


@pytest.mark.parametrize(
    "shape,attrs,extra,words",
    [
        ((1, 0, 1, 16, 16), {}, [], ["is empty", "zero-length axis"]),
        ((1, 2, 1, 16, 16), {"min_val": "low", "max_val": 10}, ["--norm_type", "minmaxvol"], ["min_val='low'"]),
        ((1, 1, 1, 150_000, 150_000), {}, ["--interp_fact", "1"], ["one sample of", "GiB, more than"]),
    ],
)
def test_bad_data_files(tmp_path, capsys, monkeypatch, shape, attrs, extra, words):
    if shape[-1] == 150_000:  # 84 GiB as float32: declared, never allocated (chunked, empty)
        monkeypatch.setenv("IMLATENT_MAX_READ_GB", "16")  # refused on any machine, however large
        d = tmp_path / "d"
        d.mkdir()
        with h5py.File(d / "data.h5", "w") as h5:
            h5.create_dataset("1/2/3/primary_cine_0", shape=shape, dtype=np.int16, chunks=(1, 1, 1, 64, 64))
    else:
        d = _data(tmp_path, shape, **attrs)
    code, err = _exit(capsys, tiny_args(d, tmp_path, "--json§foldCSV", "0", *extra))
    _one_clear_line(code, err, *words)


@pytest.mark.parametrize("content", ["[1, 2, 3]", "[null]"])
def test_json_fold_files_that_are_not_folds(tmp_path, capsys, content):
    d = _data(tmp_path)
    (d / "folds.json").write_text(content)
    code, err = _exit(
        capsys, tiny_args(d, tmp_path, "--json§foldCSV", "folds.json", "--input_shape", "16,16", "--interp_fact", "1")
    )
    _one_clear_line(code, err, "folds.json", "not an object with train, val and test")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize(
    "content,words",
    [
        (b"", ["0 bytes", "not a checkpoint"]),
        (bytes(range(256)) * 4, ["not a checkpoint"]),
        ("evil", ["Python objects other than tensors", "never unpickled"]),
    ],
)
def test_bad_checkpoints_for_test_and_resume(tiny_demo, tmp_path, capsys, content, words):
    ckpt = tmp_path / "model.ckpt"
    if content == "evil":
        torch.save({"state_dict": {}, "x": _Evil()}, ckpt)  # torch.save pickles the object
    else:
        ckpt.write_bytes(content)
    code, err = _exit(capsys, tiny_args(tiny_demo, tmp_path, "--load_model_4test", str(ckpt), "--run_mode", "2"))
    _one_clear_line(code, err, *words)
    assert "weights_only=False" not in err and "will likely succeed" not in err and "pwned" not in err
    (tmp_path / "r" / "Checkpoints").mkdir(parents=True)
    (tmp_path / "r" / "Checkpoints" / "last.ckpt").write_bytes(ckpt.read_bytes())
    code, err = _exit(capsys, tiny_args(tiny_demo, tmp_path, "--fulltrainID", "r", "--resume"))
    _one_clear_line(code, err, "last.ckpt", *words)


def test_hub_folder_with_bad_config_or_weights(tiny_demo, tmp_path, capsys):
    d = tmp_path / "hub"
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    code, err = _exit(capsys, tiny_args(tiny_demo, tmp_path, "--load_hf", str(d), "--run_mode", "2"))
    _one_clear_line(code, err, "model.safetensors", "not a readable safetensors file")
    from safetensors.torch import save_file

    from Engineering.Engines.WarpDrives.DiffAE.network import DiffAE, DiffAEConfig

    net = DiffAE(DiffAEConfig(is3D=True, input_shape=(4, 32, 32), latent_dim=8, net_ch=8))
    save_file({f"ema_net.{k}": v.contiguous() for k, v in net.state_dict().items()}, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({"input_shape": 50, "is3D": True}))
    code, err = _exit(capsys, tiny_args(tiny_demo, tmp_path, "--load_hf", str(d), "--run_mode", "2"))
    _one_clear_line(code, err, "config.json", "input_shape must be a list of positive integers")


def test_our_format_config_with_wrong_types(tiny_demo, tmp_path, capsys):
    from safetensors.torch import save_file

    d = tmp_path / "ours"
    d.mkdir()
    save_file({"w": torch.zeros(1)}, str(d / "model.safetensors"))
    (d / "config.json").write_text(
        json.dumps({"format": "imlatent", "drive": "DiffAE", "is3D": False, "input_shape": 50, "latent_dim": 8})
    )
    code, err = _exit(capsys, tiny_args(tiny_demo, tmp_path, "--load_hf", str(d), "--run_mode", "2"))
    _one_clear_line(code, err, "config.json", "input_shape must be a list of positive integers")


def test_shape_error_says_the_task_default_resampled_the_file(tmp_path, capsys):
    d = _data(tmp_path, (1, 2, 1, 8, 8))
    # main_diffAE's demo default --interp_fact 0.5 halves 8x8 to 4x4; padding that to 32x32 is refused
    code, err = _exit(capsys, [*tiny_args(d, tmp_path, "--json§foldCSV", "0")])
    _one_clear_line(code, err, "from 4 (after --interp_fact 0.5 resampled it in-plane)", "to the model's 32")


def test_empty_test_split_is_an_error_before_training(tiny_demo, tmp_path, capsys):
    import pandas as pd

    ids = sorted(pd.read_csv(tiny_demo / "phenotypes.tsv", sep="\t", dtype=str)["FID"])
    (tmp_path / "folds.csv").write_text(f'train,val,test\n"{ids[:8]}","{ids[8:]}","[]"\n')
    code, err = _exit(
        capsys, tiny_args(tiny_demo, tmp_path, "--fulltrainID", "e", "--json§foldCSV", str(tmp_path / "folds.csv"))
    )  # run mode 4: train, then test
    _one_clear_line(code, err, "'test' split of fold 0 has no selected datasets")
    assert not (tmp_path / "e").exists()  # nothing trained, nothing written
