"""Issue 34's second hostile campaign, the library and executor side (preprocess tools: test_preprocess_hostile.py).

Every case is one line ``error: ...`` naming the culprit, exit code 2 (through the executors' own ``run_cli``),
and nothing written or allocated:

- unbounded memory: one read budget (``Engineering/io/read_budget``), checked from the declared shape and dtype
  before each reader reads (declared-huge chunked datasets cost no disk; tracemalloc shows nothing was allocated);
- silent acceptances: a one-class training split, fold files whose splits share patients, fractional or text
  indices and latents in latent tables, numeric flags without a lower bound (every flag table is walked);
- tracebacks on malformed files and values: DeepSpeed configs, fsdp on CPU, tuned.json, .lock, checkpoints,
  point clouds, group values, MinCLR grids, save paths, metrics.csv, main_benchmark --out.
"""

from __future__ import annotations

import json
import os
import tracemalloc

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from Engineering.Engines import registry
from Engineering.Engines.MainEngine import run
from Engineering.errors import UserError, run_cli
from tests.conftest import tiny_args

DIFFAE = registry.get("diffAE")
HUGE = 10**6  # a 10^6 x 10^6 plane: terabytes declared, a few bytes on disk (chunked, never written)

pytestmark = pytest.mark.usefixtures("one_thread")


def _one_line(capsys, code, *words):
    err = capsys.readouterr().err.strip()
    lines = [ln for ln in err.splitlines() if not ln.startswith("warning:")]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def _main(capsys, argv, task=DIFFAE, *words):
    return _one_line(capsys, run_cli(lambda a: run(a, task), argv), *words)


def _call(capsys, fn, *words):
    """``fn()`` through run_cli, with tracemalloc watching that the refusal allocated (almost) nothing."""
    tracemalloc.start()
    try:
        code = run_cli(lambda a: fn(), [])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MiB allocated before the refusal"
    return _one_line(capsys, code, *words)


# ---------------------------------------------------------------- class 4: one read budget before every read


def _huge(path, name, shape, dtype=np.float32):
    with h5py.File(path, "a") as h5:
        h5.create_dataset(name, shape=shape, dtype=dtype, chunks=tuple(min(s, 64) for s in shape))
    return path


def test_huge_emb_h5_is_refused_before_reading(tmp_path, capsys):
    from Engineering.io.latents import read_latents

    emb = _huge(tmp_path / "emb.h5", "1/2/3/primary_cine_0", (1, HUGE, HUGE, 8))
    _call(capsys, lambda: read_latents(emb), "emb.h5", "primary_cine_0", "GiB, more than", "IMLATENT_MAX_READ_GB")


def test_latent_predictor_on_a_huge_emb_h5(tmp_path, capsys):
    emb = _huge(tmp_path / "emb.h5", "1/2/3/primary_cine_0", (1, HUGE, HUGE, 8))
    (tmp_path / "pheno.tsv").write_text("FID\ty\n1\t0.5\n")
    _main(
        capsys,
        [
            "--latents",
            str(emb),
            "--json§DS_phenotypes§path",
            str(tmp_path / "pheno.tsv"),
            "--json§datadir",
            str(tmp_path),
            "--json§save_path",
            str(tmp_path / "s"),
            "--fulltrainID",
            "p",
        ],
        registry.get("latentcls"),
        "emb.h5",
        "GiB, more than",
    )
    assert not (tmp_path / "s" / "p").exists()


def test_huge_pixel_dataset_is_refused_before_reading(tmp_path, capsys):
    from Engineering.Eval.pixels import read_pixels

    data = _huge(tmp_path / "data.h5", "1/2/3/primary_cine_0", (1, 1, 1, HUGE, HUGE), np.int16)
    rows = pd.DataFrame([dict(patientID="1", fieldID="2", instanceID="3", key="primary_cine_0", c=0, t=0, s=0)])
    _call(capsys, lambda: read_pixels(data, rows), "pixels data.h5:1/2/3/primary_cine_0", "int16", "GiB, more than")


def test_the_budget_is_overridable_and_its_variable_checked(tmp_path, capsys, monkeypatch):
    from Engineering.io.latents import read_latents
    from Engineering.io.read_budget import ENV, check_read

    emb = tmp_path / "emb.h5"
    with h5py.File(emb, "w") as h5:
        h5["1/2/3/primary_cine_0"] = np.zeros((1, 4, 1, 8), np.float32)  # 128 bytes
    monkeypatch.setenv(ENV, "1e-7")  # ~107 bytes
    _call(capsys, lambda: read_latents(emb), f"{ENV}=1e-7")
    table = _latents(tmp_path, n=40)  # 40 rows of text, ~1.3 KiB: the text bound is 4x its size
    _call(capsys, lambda: read_latents(table), "emb.tsv", "MiB of text")
    pd.read_csv(table, sep="\t").to_parquet(tmp_path / "emb.parquet")
    _call(capsys, lambda: read_latents(tmp_path / "emb.parquet"), "emb.parquet (40 rows x 9 columns")
    monkeypatch.setenv(ENV, "lots")
    _call(capsys, lambda: check_read((1,), np.uint8, "x"), f"{ENV}='lots' is not a positive number")
    monkeypatch.setenv(ENV, "1")
    assert check_read((1, 4, 1, 8), np.float32, "x") == 128  # under the budget: read


def _clouds(folder, bad=None, dtype=np.float32):
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    with h5py.File(folder / "points.h5", "w") as h5:
        for pid in ("1", "2", "3", "4"):
            h5[f"{pid}/cell/1/primary_cell_0"] = rng.normal(size=(36, 3)).astype(np.float32)
        if bad is not None:
            del h5["1/cell/1/primary_cell_0"]
            if isinstance(bad, tuple):
                h5.create_dataset("1/cell/1/primary_cell_0", shape=bad, dtype=dtype, chunks=(min(bad[0], 1024), 3))
            else:
                h5["1/cell/1/primary_cell_0"] = bad
    return folder


@pytest.mark.parametrize(
    "bad,words",
    [
        ((10**12, 3), ["point cloud", "GiB, more than"]),  # 11 TiB declared
        (np.zeros((0, 3), np.float32), ["has 0 point(s)", "at least 2"]),
        (np.zeros((1, 3), np.float32), ["has 1 point(s)"]),
        (np.array([[b"a", b"b", b"c"]] * 36), ["holds |S1 data", "real numbers"]),
    ],
)
def test_malformed_point_cloud_datasets(tmp_path, capsys, bad, words):
    d = _clouds(tmp_path / "d", bad)
    _main(
        capsys,
        [
            "--json§datadir",
            str(d),
            "--json§save_path",
            str(tmp_path / "s"),
            "--json§foldCSV",
            "0",
            "--fulltrainID",
            "x",
            "--no-progress_bar",
            "--no-tbactive",
        ],
        registry.get("pointcloud"),
        "points.h5:1/cell/1/primary_cell_0",
        *words,
    )
    assert not (tmp_path / "s" / "x").exists()


# ---------------------------------------------------------------- class 3: silent acceptances


def _latents(folder, n=12, **change):
    rows = [
        dict(
            patientID=str(100 + i), fieldID="2", instanceID="0", key="primary", c=0, t=0, s=0, Z0=float(i), Z1=float(-i)
        )
        for i in range(n)
    ]
    df = pd.DataFrame(rows)
    for col, (row, value) in change.items():
        df[col] = df[col].astype(object)
        df.loc[row, col] = value
    df.to_csv(folder / "emb.tsv", sep="\t", index=False)
    return folder / "emb.tsv"


def test_one_class_in_the_training_split_is_refused(tmp_path, capsys):
    emb = _latents(tmp_path)
    ids = [str(100 + i) for i in range(12)]
    pd.DataFrame({"FID": ids, "cls": ["a"] * 6 + ["b", "a", "b", "a", "b", "b"]}).to_csv(
        tmp_path / "pheno.tsv", sep="\t", index=False
    )
    (tmp_path / "folds.csv").write_text(f'train,val,test\n"{ids[:6]}","{ids[6:8]}","{ids[8:]}"\n')
    _main(
        capsys,
        [
            "--latents",
            str(emb),
            "--json§DS_phenotypes§path",
            str(tmp_path / "pheno.tsv"),
            "--json§foldCSV",
            str(tmp_path / "folds.csv"),
            "--json§datadir",
            str(tmp_path),
            "--json§save_path",
            str(tmp_path / "s"),
            "--fulltrainID",
            "p",
        ],
        registry.get("latentcls"),
        "target 'cls' has the single class 'a' among the training patients",
    )
    assert not (tmp_path / "s" / "p").exists()


@pytest.mark.parametrize(
    "folds,words",
    [
        (
            {"train": ["1", "2", "3"], "val": ["4"], "test": ["3", "5"]},
            ["1 patient(s) are in both 'train' and 'test'", "e.g. 3"],
        ),
        ({"train": ["1", "2"], "val": ["2", "4"], "test": ["5"]}, ["both 'train' and 'val'", "e.g. 2"]),
        ({"train": ["1", "2"], "val": ["4"], "test": ["4", "5"]}, ["both 'val' and 'test'"]),
    ],
)
def test_fold_files_whose_splits_share_patients(tmp_path, capsys, folds, words):
    from Engineering.data.folds import read_fold
    from preprocess.make_folds import write_folds

    for name in ("f.csv", "f.json"):
        path = tmp_path / name
        if name.endswith(".json"):
            path.write_text(json.dumps([folds]))
        else:
            path.write_text("train,val,test\n" + ",".join(f'"{folds[s]}"' for s in ("train", "val", "test")) + "\n")
        _call(capsys, lambda: read_fold(path, 0), name, *words)
    _call(capsys, lambda: write_folds([folds], tmp_path / "out.csv"), "fold 0 for", *words)  # never written
    assert not (tmp_path / "out.csv").exists()


def test_fold_sharing_patients_refused_before_training(tiny_demo, tmp_path, capsys):
    ids = sorted(pd.read_csv(tiny_demo / "phenotypes.tsv", sep="\t", dtype=str)["FID"])
    (tmp_path / "folds.csv").write_text(f'train,val,test\n"{ids[:8]}","{ids[8:10]}","{ids[6:]}"\n')
    _main(
        capsys,
        tiny_args(tiny_demo, tmp_path, "--fulltrainID", "f", "--json§foldCSV", str(tmp_path / "folds.csv")),
        DIFFAE,
        "both 'train' and 'test'",
        ids[6],
    )
    assert not (tmp_path / "f").exists()


@pytest.mark.parametrize(
    "change,words",
    [
        ({"c": (3, 0.5)}, ["column c row 4 is 0.5", "whole number"]),  # was truncated to channel 0
        ({"t": (0, -1)}, ["column t row 1 is -1"]),
        ({"s": (2, "x")}, ["column s row 3 is 'x'"]),
        ({"Z1": (5, "oops")}, ["column Z1 row 6 is 'oops'", "not a number"]),  # was made NaN
        ({"patientID": (1, None)}, ["column patientID row 2", "not an ID"]),  # was the patient 'nan'
    ],
)
def test_latent_tables_with_bad_cells(tmp_path, capsys, change, words):
    from Engineering.io.latents import read_latents

    emb = _latents(tmp_path, **change)
    _call(capsys, lambda: read_latents(emb), "emb.tsv", *words)


@pytest.mark.parametrize(
    "name,content,words",
    [
        ("emb.tsv", bytes(range(256)) * 8, ["cannot read latents"]),
        ("emb.parquet", b"PAR1 not parquet", ["cannot read latents", "emb.parquet"]),
        ("emb.h5", b"\x89HDF\r\n\x1a\n damaged", ["cannot read latents", "emb.h5"]),
        ("emb.tsv", b"", ["cannot read latents"]),
    ],
)
def test_unparseable_latent_tables(tmp_path, capsys, name, content, words):
    from Engineering.io.latents import read_latents

    (tmp_path / name).write_bytes(content)
    _call(capsys, lambda: read_latents(tmp_path / name), *words)


# Numeric flags whose every value is meaningful: documented, not bounded.
UNBOUNDED = {
    "zscore_mean": "a fixed mean subtracted from the data: any finite real number",
}


def _flag_rows():
    from Engineering.config.flags import FLAGS

    rows = [("diffAE", f) for f in FLAGS]
    for name, task in sorted(registry.tasks().items()):
        rows += [(name, f) for f in task.extra_flags]
    return [(t, f) for t, f in rows if f.type in ("int", "float", "num", "optfloat", "ints")]


def test_every_numeric_flag_has_a_lower_bound():
    """Each int/float flag (and list of ints) of the common table and of every registered task refuses -10^12,
    with its bound named (a Flag bound, a choice list or the task's typed key), unless it is in UNBOUNDED."""
    from Engineering.config.loader import resolve

    rows = _flag_rows()
    assert len(rows) > 25
    accepted = []
    for task, flag in rows:
        if flag.name in UNBOUNDED:
            continue
        try:
            value = "-1000000000000" + (",-1000000000000" if flag.type == "ints" else "")
            resolve([f"--{flag.name}", value], registry.get(task))
            accepted.append(f"{task} --{flag.name}")
        except UserError as exc:
            assert "should be" in str(exc) or "invalid choice" in str(exc), (flag.name, str(exc))
    assert not accepted, f"numeric flags without a lower bound: {accepted}"


def _tool_parsers():
    import importlib

    import Executors.main_benchmark as bench

    yield "main_benchmark", bench.build_parser()
    for tool in (
        "crop_h5",
        "make_folds",
        "make_masks",
        "make_point_clouds",
        "validate_h5",
        "make_demo_dataset",
        "nifti_to_h5",
        "dicom_to_h5",
        "batch_report",
    ):
        module = importlib.import_module(f"preprocess.{tool}")
        if hasattr(module, "build_parser"):
            yield tool, module.build_parser()


TOOL_UNBOUNDED = {("crop_h5", "--pad-value"): "the value of padded pixels: any number"}


def test_every_numeric_option_of_the_argparse_tools_is_bounded():
    plain = []
    n = 0
    for tool, parser in _tool_parsers():
        for action in parser._actions:
            flag = action.option_strings[0] if action.option_strings else action.dest
            if action.type in (int, float) and not action.choices:
                if (tool, flag) not in TOOL_UNBOUNDED:
                    plain.append(f"{tool} {flag}")
            elif getattr(action.type, "bounds", None):
                n += 1
    assert not plain, f"numeric options without bounds (use Engineering.config.argtypes.bounded): {plain}"
    assert n >= 20


@pytest.mark.parametrize(
    "argv,words",
    [
        (["--blas_threads", "-5"], ["--blas_threads", "must be >= 0, got -5"]),
        (["--seed", "-1"], ["--seed", "must be >= 0"]),
        (["--n_splits", "1"], ["--n_splits", "must be >= 2"]),
        (["--n_boot", "nan"], ["--n_boot", "not an integer"]),
    ],
)
def test_main_benchmark_numeric_flags(tmp_path, capsys, argv, words):
    import Executors.main_benchmark as bench

    _one_line(
        capsys, run_cli(bench.main, ["--latents", str(tmp_path / "x.tsv"), "--out", str(tmp_path / "o"), *argv]), *words
    )


def test_seed_minus_one(tiny_demo, tmp_path, capsys):
    _main(capsys, tiny_args(tiny_demo, tmp_path, "--fulltrainID", "s", "--seed", "-1"), DIFFAE, "training§seed")
    assert not (tmp_path / "s").exists()


# ---------------------------------------------------------------- class 6: malformed files and values


@pytest.mark.parametrize(
    "content,words",
    [
        ("{not json", ["is not readable JSON"]),
        ("[1, 2]", ["holds a list, not a JSON object"]),
        (json.dumps({"zero_optimization": {"stage": 7}}), ["zero_optimization is not valid", "stage"]),
        (json.dumps({"zero_optimization": 3}), ["zero_optimization is 3, not an object"]),
        (None, ["no such file"]),
    ],
)
def test_malformed_deepspeed_configs(tiny_demo, tmp_path, capsys, content, words):
    cfg = tmp_path / "ds.json"
    if content is not None:
        cfg.write_text(content)
    _main(
        capsys,
        tiny_args(
            tiny_demo,
            tmp_path,
            "--fulltrainID",
            "d",
            "--training_strategy",
            "deepspeed",
            "--accelerator",
            "cpu",
            "--deepspeed_config",
            str(cfg),
        ),
        DIFFAE,
        "--deepspeed_config",
        *words,
    )
    assert not (tmp_path / "d").exists()


def test_fsdp_on_cpu(tiny_demo, tmp_path, capsys):
    _main(
        capsys,
        tiny_args(tiny_demo, tmp_path, "--fulltrainID", "f", "--training_strategy", "fsdp", "--accelerator", "cpu"),
        DIFFAE,
        "--training_strategy fsdp",
        "CPU",
    )
    assert not (tmp_path / "f").exists()


@pytest.mark.parametrize("content", ["{nope", "[1]", '{"batch_size": "x"}', '{"lr": -1}', '{"batch_size": 0}'])
def test_malformed_tuned_json(tiny_demo, tmp_path, capsys, content):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "tuned.json").write_text(content)
    _main(
        capsys,
        tiny_args(tiny_demo, tmp_path, "--fulltrainID", "t", "--auto_bs"),
        DIFFAE,
        "tuned.json is not a Tuner record",
        "delete it",
    )
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["tuned.json"]  # nothing written beside it


@pytest.mark.parametrize("content", ["{nope", '{"pid": "abc", "host": "x"}', '{"pid": null}', "[]"])
def test_malformed_lock_files(tiny_demo, tmp_path, capsys, content):
    (tmp_path / "l").mkdir()
    (tmp_path / "l" / ".lock").write_text(content)
    _main(capsys, tiny_args(tiny_demo, tmp_path, "--fulltrainID", "l"), DIFFAE, ".lock")


@pytest.mark.parametrize(
    "state,words",
    [
        ({"state_dict": [1, 2]}, ["its state_dict is a list"]),
        ({"state_dict": {"a": 1, "b": 2.0}}, ["state_dict entry 'a' is a int, not a tensor"]),
        ({"a": 1}, ["state_dict entry 'a' is a int"]),  # a bare state dict of numbers
        ({"state_dict": {}}, ["do not fit the model", "missing from the weights"]),
    ],
)
def test_malformed_preweights(tiny_demo, tmp_path, capsys, state, words):
    ckpt = tmp_path / "w.ckpt"
    torch.save(state, ckpt)
    _main(
        capsys,
        tiny_args(tiny_demo, tmp_path, "--fulltrainID", "w", "--preweights_path", str(ckpt)),
        DIFFAE,
        "w.ckpt",
        *words,
    )
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "in_channels,config,words",
    [
        (None, {"model": {"drive": "DiffAE"}}, ["holds no imlatent_config/in_channels"]),
        ("three", {"model": {"drive": "DiffAE"}}, ["in_channels is 'three'"]),
        (0, {"model": {"drive": "DiffAE"}}, ["in_channels is 0"]),
        (1, {"model": [1]}, ["model section is a list"]),
        (1, {"model": {"drive": "DiffAE"}, "run": [1]}, ["invalid config", "run"]),
    ],
)
def test_saved_runs_with_bad_in_channels_or_config(tmp_path, capsys, in_channels, config, words):
    from Engineering.Engines.saved_runs import load_run

    ckpt = tmp_path / "r.ckpt"
    torch.save({"state_dict": {}, "imlatent_config": config, "in_channels": in_channels}, ckpt)
    _call(capsys, lambda: load_run(ckpt), "r.ckpt", *words)


def test_empty_group_value_is_refused_before_training(tiny_demo, tmp_path, capsys):
    cov = pd.read_csv(tiny_demo / "covariates.tsv", sep="\t", dtype=str)
    cov.loc[2, "site"] = ""
    cov.to_csv(tmp_path / "cov.tsv", sep="\t", index=False)
    _main(
        capsys,
        tiny_args(
            tiny_demo,
            tmp_path,
            "--fulltrainID",
            "g",
            "--batch_groups",
            "site",
            "--json§DS_covariates§path",
            str(tmp_path / "cov.tsv"),
        ),
        DIFFAE,
        "--batch_groups site",
        "no value in column 'site'",
        f"patient {cov.loc[2, cov.columns[0]]}",
    )
    assert not (tmp_path / "g").exists()


def test_minclr_grid_larger_than_the_image(tiny_demo, tmp_path, capsys):
    _main(
        capsys,
        [
            "--json§datadir",
            str(tiny_demo),
            "--json§save_path",
            str(tmp_path),
            "--fulltrainID",
            "m",
            "--method",
            "minclr",
            "--model§SSL§grid",
            "64",
            "--input_shape",
            "32,32",
            "--no-progress_bar",
            "--no-tbactive",
        ],
        registry.get("ssl"),
        "model§SSL§grid=64",
        "32x32",
    )
    assert not (tmp_path / "m").exists()


def test_save_paths_that_cannot_hold_a_run(tiny_demo, tmp_path, capsys):
    link = tmp_path / "gone"
    os.symlink(tmp_path / "unmounted", link)
    _main(capsys, tiny_args(tiny_demo, link, "--fulltrainID", "r"), DIFFAE, "json§save_path", "does not exist")
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "r").write_text("a file")
    _main(capsys, tiny_args(tiny_demo, tmp_path / "s", "--fulltrainID", "r"), DIFFAE, "s/r is a file")
    (tmp_path / "s" / "q").mkdir()
    (tmp_path / "s" / "q" / "Checkpoints").write_text("a file")
    _main(capsys, tiny_args(tiny_demo, tmp_path / "s", "--fulltrainID", "q"), DIFFAE, "q/Checkpoints is a file")
    assert sorted(p.name for p in (tmp_path / "s" / "q").iterdir()) == ["Checkpoints"]


@pytest.mark.parametrize(
    "content,words",
    [("SSIM,PSNR\n0.5,abc\n", ["column PSNR row 1 is 'abc'"]), (b"\xff\xfe\x00garbage", ["not a readable table"])],
)
def test_non_numeric_metrics_csv_for_the_model_card(tmp_path, capsys, content, words):
    from Engineering.io.export import _metrics

    (tmp_path / "Output").mkdir()
    metrics = tmp_path / "Output" / "metrics.csv"
    metrics.write_bytes(content if isinstance(content, bytes) else content.encode())
    _call(capsys, lambda: _metrics({}, tmp_path), "metrics.csv", *words)


def test_main_benchmark_out_in_the_way(tmp_path, capsys):
    import Executors.main_benchmark as bench

    (tmp_path / "afile").write_text("x")
    (tmp_path / "o" / "metrics.json").mkdir(parents=True)
    for out, words in (
        (tmp_path / "afile", ["is a file where the benchmark writes its folder"]),
        (tmp_path / "o", ["metrics.json is a folder"]),
    ):
        _one_line(capsys, run_cli(bench.main, ["--latents", str(tmp_path / "x.tsv"), "--out", str(out)]), *words)


@pytest.mark.parametrize(
    "content,words",
    [
        (": : [", ["cannot be read"]),
        ("[1, 2]", ["'list' is not a mapping"]),
        ("model: 5\n", ["'model' is not a mapping"]),
    ],
)
def test_malformed_resolved_config_of_a_run_folder(tiny_demo, tmp_path, capsys, content, words):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "resolved_config.yaml").write_text(content)
    _main(capsys, tiny_args(tiny_demo, tmp_path, "--fulltrainID", "c"), DIFFAE, "resolved_config.yaml", *words)
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["resolved_config.yaml"]


@pytest.mark.parametrize(
    "callbacks,words",
    [
        ([1, 2], ["callbacks state is a list"]),
        ({"ModelCheckpoint{}": {"best_model_path": 5}}, ["best_model_path is 5, not a path"]),
    ],
)
def test_last_checkpoint_with_malformed_callback_state(tiny_demo, tmp_path, capsys, callbacks, words):
    (tmp_path / "b" / "Checkpoints").mkdir(parents=True)
    last = tmp_path / "b" / "Checkpoints" / "last.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "callbacks": callbacks}, last)
    _main(
        capsys,
        tiny_args(tiny_demo, tmp_path, "--fulltrainID", "b", "--resume", "--load_best", "--run_mode", "2"),
        DIFFAE,
        "last.ckpt",
        *words,
    )


def test_pixel_rows_that_add_up_beyond_the_budget(tmp_path, capsys, monkeypatch):
    from Engineering.Eval.pixels import read_pixels
    from Engineering.io.read_budget import ENV

    with h5py.File(tmp_path / "data.h5", "w") as h5:
        h5["1/2/3/primary_cine_0"] = np.zeros((1, 1, 1, 4, 4), np.int16)  # 32 bytes: each read fits
    rows = pd.DataFrame([dict(patientID="1", fieldID="2", instanceID="3", key="primary_cine_0", c=0, t=0, s=0)] * 40)
    monkeypatch.setenv(ENV, str(1024 / 2**30))  # 40 rows x 64 B x 2 copies = 5 KiB > 1 KiB
    _call(capsys, lambda: read_pixels(tmp_path / "data.h5", rows), "pixel vectors of 40 latent rows")
