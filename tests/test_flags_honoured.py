"""Every registered task x every common flag (and common key): honoured or refused, no third state.

For each task the run is started as the executor starts it (``MainEngine.run``: config, checks, folders, data
module and engine) and stopped where training would begin; what it built is observed: the run and output folders
and checkpoints picked, the engine's weights and settings, its optimisers and schedules, the Trainer (accumulation,
clipping, precision, devices, callbacks, loggers), the first training batch and its loader, the test step's record
and the output writer's choices. A flag the task declares honoured must change that observation against the same
start without it (given its prerequisites to both); a flag it does not declare must be refused with one line naming
the flag and the task. A declared flag that is refused, or an undeclared one that is accepted, fails.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException

from Engineering.config import honour
from Engineering.config.flags import FLAGS
from Engineering.data.cells import CellSpec, write_cells
from Engineering.Engines import MainEngine, registry, trainer_factory
from Engineering.errors import UserError
from tests.conftest import TINY_DIFFAE

pytestmark = pytest.mark.usefixtures("one_thread")

# The flags whose effect a start cannot show, each with the test that shows it. Kept short: everything else is
# observed here.
ELSEWHERE = {
    "auto_bs": "tests/test_hostile_round2.py (the Tuner runs inside the locked run, after the start)",
    "auto_lr": "tests/test_hostile_round2.py (the Tuner runs inside the locked run, after the start)",
    "hf_weights": "tests/test_diffae_published.py (read only for a published layout)",
}

# Flags whose other value acts by a refusal of what it forbids: on a CPU-only machine the other --accelerator is a
# GPU (the check that refuses it shows the flag is read); --no-croppad refuses samples of another shape.
# --data_mask_mode reads the masks file, which the demo cohort does not have.
# Weights & Biases is not installed here: the W&B flags ask for it.
MACHINE = {
    "accelerator": "no CUDA GPU is visible",
    "croppad": "use --croppad true",
    "data_mask_mode": "meta_mask.h5",
    "wnbactive": "needs the wandb package",
    "wnbproject": "needs the wandb package",
    "input_shape": "as the generator's run did",
}  # (main_restyle: the size is its generator's)
# Read by the Trainer alone (trainer_factory.build_trainer, the same for every task): observed on the config with the
# start's engine. Clipping and accumulation are not among them: manual optimisation does them in the engine.
TRAINER_ONLY = {
    "non_deter",
    "dev_run",
    "ndevices",
    "nnodes",
    "training_strategy",
    "deepspeed_config",
    "sync_batchnorm",
    "ampmode",
    "num_epochs",
    "n_train_batches",
    "early_stopping_patience",
    "tbactive",
    "tb_image_every",
    "wnbactive",
    "wnbproject",
    "profiler",
    "check_anomalies",
    "progress_bar",
}

TINY_RECON = [
    "--input_shape",
    "32,32",
    "--latent_dim",
    "8",
    "--batch_size",
    "4",
    "--model§pythae§n_features",
    "4",
    "--n_train_batches",
    "2",
    "--n_val_batches",
    "2",
    "--no-progress_bar",
    "--no-tbactive",
]
TINY_SSL = [
    "--batch_size",
    "8",
    "--model§SSL§width",
    "4",
    "--model§SSL§proj_hidden",
    "16",
    "--model§SSL§proj_dim",
    "8",
    "--no-progress_bar",
    "--no-tbactive",
]
TINY_GAN = [
    "--batch_size",
    "4",
    "--no-progress_bar",
    "--no-tbactive",
    "--input_shape",
    "32,32",
    "--model§StyleGAN2§style_dim",
    "16",
    "--model§StyleGAN2§n_mlp",
    "2",
    "--model§StyleGAN2§channel_max",
    "8",
    "--model§StyleGAN2§n_samples",
    "4",
]


def _digest(x) -> str:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    if isinstance(x, np.ndarray):
        return hashlib.sha1(np.ascontiguousarray(x.astype(np.float64)).round(6).tobytes()).hexdigest()[:12] + str(
            x.shape
        )
    return repr(x)


def _complex_copy(demo: Path) -> Path:
    """The demo cohort with complex-valued images (the real part as written, an imaginary part beside it)."""
    import shutil

    import h5py

    out = demo.parent / f"{demo.name}_complex"
    if not out.exists():
        shutil.copytree(demo, out)
        with h5py.File(out / "data.h5", "r+") as h5:
            names = []
            h5.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
            for n in names:
                data, attrs = h5[n][()], dict(h5[n].attrs)
                del h5[n]
                h5.create_dataset(n, data=(data + 1j * data[..., ::-1]).astype(np.complex64)).attrs.update(attrs)
        for cache in out.glob("*index*"):
            cache.unlink()
    return out


def _shuffled_table(src: Path, dst: Path, seed: int) -> Path:
    """The same table with every non-ID column's values permuted: a different phenotype/covariate table."""
    df = pd.read_csv(src, sep="\t", dtype={"FID": str})
    rng = np.random.default_rng(seed)
    for col in df.columns[1:]:
        df[col] = df[col].to_numpy()[rng.permutation(len(df))]
    dst.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(dst, sep="\t", index=False)
    return dst


@pytest.fixture(scope="module")
def world(tiny_demo, tiny_demo_mc, tmp_path_factory):
    """Per task: the arguments of a tiny start on bundled-style data."""
    root = tmp_path_factory.mktemp("honoured")
    cells = write_cells(root / "cells", CellSpec(n_cells=8, n_puncta=4, n_points=24))
    latents = root / "latents"
    latents.mkdir()
    rng = np.random.default_rng(0)
    pids = [str(5000 + i) for i in range(40)]
    table = pd.DataFrame(
        {
            "patientID": pids,
            "fieldID": "f",
            "instanceID": "0",
            "key": "primary",
            "c": 0,
            "t": 0,
            "s": 0,
            **{f"Z{j}": rng.normal(size=40) for j in range(4)},
        }
    )
    table.to_parquet(latents / "emb.parquet", index=False)
    pd.DataFrame({"FID": pids, "y": rng.normal(size=40), "cls": np.where(rng.normal(size=40) > 0, "a", "b")}).to_csv(
        latents / "pheno.tsv", sep="\t", index=False
    )
    pd.DataFrame(
        [
            {"train": str(pids[:28]), "val": str(pids[28:34]), "test": str(pids[34:])},
            {"train": str(pids[12:]), "val": str(pids[6:12]), "test": str(pids[:6])},
        ]
    ).to_csv(latents / "folds.csv", index=False)
    # a main_stylegan generator for main_restyle, written as training writes its checkpoint
    gan = root / "gan"
    cap = _start(
        registry.get("stylegan"),
        [*TINY_GAN, "--json§datadir", str(tiny_demo_mc), "--json§save_path", str(gan), "--fulltrainID", "g"],
    )
    _write_checkpoint(cap, cap["ckpt_dir"] / "last.ckpt")

    def data(demo):
        return ["--json§datadir", str(demo)]

    return {
        "diffAE": [*TINY_DIFFAE, "--interp_fact", "1", *data(tiny_demo)],
        "recon": [*TINY_RECON, *data(tiny_demo)],
        "rotinv": [
            "--no-is3D",
            "--input_shape",
            "32,32",
            "--latent_dim",
            "8",
            "--batch_size",
            "4",
            "--model§RotInv§width",
            "2",
            "--model§RotInv§depth",
            "2",
            "--datajson_path",
            "Configs/dataNpath_demo.json",
            "--no-progress_bar",
            "--no-tbactive",
            *data(tiny_demo),
        ],
        "ssl": [*TINY_SSL, "--interp_fact", "1", *data(tiny_demo)],
        "erm": [
            "--batch_size",
            "8",
            "--model§ERM§width",
            "4",
            "--interp_fact",
            "1",
            "--no-progress_bar",
            "--no-tbactive",
            *data(tiny_demo),
        ],
        "iid": ["--batch_size", "8", "--interp_fact", "1", "--no-progress_bar", "--no-tbactive", *data(tiny_demo_mc)],
        "stylegan": [*TINY_GAN, "--interp_fact", "1", *data(tiny_demo_mc)],
        "restyle": [
            "--batch_size",
            "4",
            "--model§ReStyle§width",
            "4",
            "--no-progress_bar",
            "--no-tbactive",
            "--generator",
            str(gan / "g"),
            *data(tiny_demo_mc),
        ],
        "pointcloud": [
            "--batch_size",
            "4",
            "--latent_dim",
            "8",
            "--model§PointCloud§width",
            "4",
            "--model§PointCloud§k",
            "8",
            "--model§PointCloud§grid",
            "6",
            "--no-progress_bar",
            "--no-tbactive",
            *data(cells),
        ],
        "latentcls": [
            "--latents",
            str(latents / "emb.parquet"),
            "--json§DS_phenotypes§path",
            str(latents / "pheno.tsv"),
            "--json§foldCSV",
            str(latents / "folds.csv"),
            "--batch_size",
            "8",
            "--no-progress_bar",
            "--no-tbactive",
            *data(latents),
        ],
        "_root": root,
        "_demo": tiny_demo,
        "_demo_mc": tiny_demo_mc,
        "_latents": latents,
    }


def _start(spec, argv) -> dict:
    """MainEngine.run up to the start of training: what it built (no fit, no test, nothing written by them)."""
    captured = {}

    def stop(life, resolved, dm, model, run_dir, ckpt_dir, out_dir, test_ckpt, resume_from):
        captured.update(
            life=life,
            resolved=resolved,
            dm=dm,
            model=model,
            run_dir=run_dir,
            ckpt_dir=ckpt_dir,
            out_dir=out_dir,
            test_ckpt=test_ckpt,
            resume_from=resume_from,
            session=torch.get_float32_matmul_precision(),
        )  # global state: read when the start set it
        return {}

    real = MainEngine._run_locked
    MainEngine._run_locked = stop
    try:
        MainEngine.run(list(argv), spec)
    finally:
        MainEngine._run_locked = real
    return captured


def _write_checkpoint(cap, path: Path, shift: float = 0.0) -> Path:
    """last.ckpt as LatentEngine.on_save_checkpoint writes it, with weights moved by ``shift``, and a best
    checkpoint beside it that last.ckpt records (as ModelCheckpoint does)."""
    model = cap["model"]
    path.parent.mkdir(parents=True, exist_ok=True)
    best = path.parent / "best-epoch=000-step=0.ckpt"
    for where, move, extra in (
        (best, 2 * shift, {}),
        (path, shift, {"callbacks": {"ModelCheckpoint{'monitor': 'val_loss'}": {"best_model_path": str(best)}}}),
    ):
        state = {k: (v + move if v.is_floating_point() else v) for k, v in model.state_dict().items()}
        torch.save(
            {
                "state_dict": state,
                "imlatent_config": cap["resolved"].raw,
                "in_channels": model.in_channels,
                "epoch": 0,
                "global_step": 0,
                **extra,
            },
            where,
        )
    return path


def _optimisers(model) -> str:
    got = model.configure_optimizers()
    if isinstance(got, dict):
        got = ([got["optimizer"]], [got.get("lr_scheduler")])
    elif isinstance(got, torch.optim.Optimizer):
        got = ([got], [])
    elif isinstance(got, tuple):
        got = (list(got[0]), list(got[1]))
    else:
        got = (list(got), [])
    opts = [(type(o).__name__, [round(g["lr"], 9) for g in o.param_groups]) for o in got[0]]
    scheds = []
    for s in got[1]:
        s = s["scheduler"] if isinstance(s, dict) else s
        scheds.append((type(s).__name__, {k: v for k, v in vars(s).items() if isinstance(v, (int, float, str))}))
    return repr((opts, scheds))


def _clip_calls(model) -> str:
    """What the engine's own clipping hook does (manual optimisation clips in the engine, not in the Trainer)."""
    calls = []
    model.clip_gradients = lambda opt, gradient_clip_val=None, gradient_clip_algorithm=None: calls.append(
        (gradient_clip_val, gradient_clip_algorithm)
    )
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    model.on_before_optimizer_step(opt)
    del model.clip_gradients
    return repr(calls)


def _trainer(cap) -> str:
    cfg, model = cap["resolved"].cfg, cap["model"]
    trainer = trainer_factory.build_trainer(
        cfg, cap["run_dir"], model.monitor(), model.has_val, model.automatic_optimization
    )
    cbs = sorted(
        f"{type(c).__name__}{getattr(c, 'patience', '')}{getattr(c, 'mode', '')}{getattr(c, 'controls', '')}"
        for c in trainer.callbacks
    )
    loggers = sorted(f"{type(lg).__name__}{getattr(lg, '_project', '')}" for lg in trainer.loggers)
    return repr(
        dict(
            accumulate=trainer.accumulate_grad_batches,
            clip=trainer.gradient_clip_val,
            clip_algo=str(trainer.gradient_clip_algorithm),
            precision=trainer.precision,
            epochs=trainer.max_epochs,
            limit_train=trainer.limit_train_batches,
            limit_val=trainer.limit_val_batches,
            callbacks=cbs,
            loggers=loggers,
            profiler=type(trainer.profiler).__name__,
            dev_run=trainer.fast_dev_run,
            anomaly=trainer._detect_anomaly,
            strategy=type(trainer.strategy).__name__,
            devices=trainer.num_devices,
            nodes=trainer.num_nodes,
            sync_bn=type(getattr(trainer.strategy, "_layer_sync", None)).__name__,
            deterministic=torch.are_deterministic_algorithms_enabled(),
            bar=trainer.progress_bar_callback is not None,
            deepspeed=json.dumps(getattr(trainer.strategy, "config", None), sort_keys=True, default=str),
        )
    )


def _batch(dm, loader) -> str:
    if loader is None:
        return "none"
    attrs = (
        loader.batch_size,
        loader.num_workers,
        loader.pin_memory,
        loader.prefetch_factor,
        type(loader.batch_sampler).__name__,
    )
    if loader.num_workers:
        return repr(attrs)
    batch = next(iter(loader))
    if hasattr(dm, "on_after_batch_transfer"):
        batch = dm.on_after_batch_transfer(batch, 0)
    items = sorted(batch.items()) if isinstance(batch, dict) else enumerate(batch)
    return repr((attrs, {k: _digest(v) for k, v in items if isinstance(v, (torch.Tensor, np.ndarray))}))


def _engine_state(model) -> str:
    """The engine's own plain settings and tables (e.g. the kNN monitor's labels), beside its modules."""
    keep = {}
    for k, v in sorted(vars(model).items()):
        if k.startswith("_") or k in ("cfg", "trainer"):
            continue
        if isinstance(v, (int, float, str, bool, tuple, list, dict)) and len(repr(v)) < 20000:
            keep[k] = repr(v)
    return repr(keep)


def _with_moved_ema(model, fn):
    """``fn()`` with the EMA weights apart from the trained ones (so that --test_ema shows), restored after."""
    ema = list(model.ema_net.parameters()) if hasattr(model, "ema_net") else []
    kept = [p.detach().clone() for p in ema]
    model.eval()
    with torch.no_grad():
        for p in ema:
            p.add_(0.01)
        try:
            return fn()
        finally:
            for p, k in zip(ema, kept):
                p.copy_(k)
            model.train()


def observe(cap) -> dict:
    """What a start built, as comparable strings (cheapest first: the comparison stops at the first change)."""
    cfg, model, dm, life = cap["resolved"].cfg, cap["model"], cap["dm"], cap["life"]
    yield (
        "folders",
        repr(
            (
                cap["run_dir"].name,
                str(cap["out_dir"].relative_to(cap["run_dir"])),
                str(cap["test_ckpt"]),
                str(cap["resume_from"]),
            )
        ),
    )
    yield "session", cap["session"]
    yield (
        "weights",
        _digest(
            torch.cat(
                [p.detach().float().flatten() for p in model.state_dict().values() if isinstance(p, torch.Tensor)]
            )
        ),
    )
    yield (
        "engine",
        repr(
            (
                _engine_state(model),
                [getattr(m, "activation_checkpointing", None) for m in model.checkpointable()],
                getattr(getattr(model, "net", None), "_compiled_call_impl", None) is not None,
            )
        ),
    )
    yield "optimisers", _optimisers(model)
    yield "clip_hook", _clip_calls(model)
    yield "trainer", _trainer(cap)
    yield "train_batch", _batch(dm, dm.train_dataloader() if dm is not None else None)
    if life.test.__func__ is MainEngine.ImageRun.test:  # the output contract: the test step and the writer
        from Engineering.Engines.output_writer import OutputWriter

        writer = OutputWriter(cap["out_dir"], {}, cfg.eval.output_chunk)
        writer.start(dm.dataset("test"), cfg.eval)
        yield "writer", repr((sorted(writer.recon_subs), writer.n_preview, writer.chunk))
        loader = dm.test_dataloader()
        batch = dm.on_after_batch_transfer(next(iter(loader)), 0)
        rec = _with_moved_ema(model, lambda: model.test_step(batch, 0))
        yield "test_step", repr({k: _digest(v) for k, v in sorted(rec.items()) if isinstance(v, torch.Tensor)})
    else:
        try:
            loader = dm.test_dataloader()
        except MisconfigurationException:  # (the latent predictors predict from memory)
            loader = None
        yield "test_loader", _batch(dm, loader)
        if hasattr(model, "predict_heads"):  # the latent predictors' test: every sample's predictions
            heads = _with_moved_ema(model, lambda: model.predict_heads(life.data.Z))
            yield "predictions", repr({k: [_digest(np.asarray(a)) for a in v] for k, v in sorted(heads.items())})


def _alternative(name: str, base_cfg, world: dict, task: str, save: Path) -> tuple[list[str], list[str]]:
    """(the flag's arguments, prerequisites given to both starts) for a value that differs from the base."""

    def cur(n):
        f = next(f for f in FLAGS if f.name == n)
        return getattr(getattr(base_cfg, f.path[0]), f.path[1])

    flag = next(f for f in FLAGS if f.name == name)
    current = cur(name)
    root = world["_root"]
    demo = world["_demo_mc"] if task in ("iid", "stylegan", "restyle") else world["_demo"]
    special = {
        "fulltrainID": (["myrun"], []),
        "shard": (["1/2"], ["--run_mode", "2", "--resume"]),
        "resume": ([], []),
        "load_best": ([], ["--run_mode", "2", "--resume"]),
        "load_model_4test": ([str(root / f"other_{task}")], ["--run_mode", "2", "--resume"]),
        "preweights_path": ([str(root / f"other_{task}" / "Checkpoints" / "last.ckpt")], []),
        "load_hf": ([str(root / f"hub_{task}")], []),
        "accelerator": (["gpu"], []),
        "ndevices": (["2"], []),
        "nnodes": (["2"], []),
        "training_strategy": (["ddp"], []),
        "deepspeed_config": ([str(root / "ds.json")], ["--training_strategy", "deepspeed"]),
        "sync_batchnorm": ([], ["--ndevices", "2"]),
        "ampmode": (["bf16-mixed"], []),
        "matmul_precision": (["medium"], []),
        "num_workers": (["1"], []),
        "prefetch_factor": (["4"], ["--num_workers", "1"]),
        "pin_memory": ([], []),
        "effective_batch_size": (["32"], ["--batch_size", "4"]),
        "lr": (["0.0123"], []),
        "optimiserID": (["SGD"], []),
        "lr_decay_type": (["1"], []),
        "grad_clip_algo": (["value"], ["--grad_clip_val", "1.0"]),
        "grad_clip_val": (["0.5"], []),
        "batch_size": ([str(cur("batch_size") // 2)], []),
        "num_epochs": ([str(cur("num_epochs") + 1)], []),
        "n_train_batches": ([str(cur("n_train_batches") + 1) if isinstance(cur("n_train_batches"), int) else "3"], []),
        "n_val_batches": (["1"], ["--run_mode", "1"]),
        "early_stopping_patience": (["3"], []),
        "input_shape": (["16,16"] if task != "stylegan" else ["64,64"], []),
        "is3D": (
            ["false"]
            if cur("is3D")
            else ["true", "--input_shape", "1,32,32", "--allow_pad"]
            if task != "rotinv"
            else ["true", "--input_shape", "8,8,8", "--interp_fact", "0.25", "--allow_pad"],
            [],
        ),
        "latent_dim": (["5"], []),
        "norm_type": (["zscore"], []),
        "norm_range": (["symmetric" if cur("norm_range") == "unit" else "unit"], []),
        "prenorm": (["255"], ["--norm_type", "zscore", "--zscore_mean", "0.1"]),
        "zscore_prenorm": (["255"], ["--norm_type", "zscore", "--zscore_mean", "0.1"]),
        "zscore_mean": (["0.5"], ["--norm_type", "zscore"]),
        "zscore_std": (["2.0"], ["--norm_type", "zscore"]),
        "allow_pad": ([], ["--interp_fact", "0.25"]),
        "croppad": (["false"], ["--interp_fact", "0.5"]),
        "interp_fact": (["0.5"] if cur("interp_fact") == 1 else ["1.0"], []),
        "complex_mode": (["phase"], ["--json§is_complexDS", "true", "--json§datadir", str(_complex_copy(demo))]),
        "data_mask_mode": (["1"], []),
        "flip_prob": (["1.0"], ["--data§flip_axes", "[1]", "--flip_prob", "0.5"]),
        "batch_groups": (["site"], ["--json§DS_covariates§path", str(demo / "covariates.tsv")]),
        "bn_eval_mode": (
            ["batch"],
            ["--batch_groups", "site", "--json§DS_covariates§path", str(demo / "covariates.tsv")],
        ),
        "bn_controls": (
            ["site=siteA"],
            [
                "--batch_groups",
                "site",
                "--bn_eval_mode",
                "batch",
                "--json§DS_covariates§path",
                str(demo / "covariates.tsv"),
            ],
        ),
        "test_ema": (["false"], ["--use_ema"] if task in ("recon", "latentcls") else []),
        "test_emb_only": (["false" if cur("test_emb_only") else "true"], []),
        "n_save_recon_subs": (
            ["5"],
            ["--no-test_emb_only"] if task in ("recon", "diffAE", "rotinv", "restyle") else [],
        ),
        "save_recon_subs": (["x1,x2"], []),
        "wnbproject": (["other"], ["--wnbactive"]),
        "profiler": (["simple"], []),
        "dev_run": (["1"], []),
        "seed": (["7"], []),
        "trainID": (["other"], []),
        "foldID": (["1"], []),
        "run_mode": (["0"], []),
        "output_suffix": (["sfx"], []),
        "activation_checkpointing": ([], []),
        "compile_model": ([], []),
        "grey2RGB": ([], ["--json§datadir", str(world["_demo"])]),  # (a one-channel cohort)
        "check_anomalies": ([], []),
        "non_deter": ([], []),
        "wnbactive": ([], []),
        "auto_bs": ([], []),
        "auto_lr": ([], []),
        "tbactive": ([], []),
        "progress_bar": ([], []),
        "tb_image_every": (["0"], ["--tbactive"]),
    }
    if name in special:
        args, pre = special[name]
    elif flag.choices:
        args, pre = [str(next(c for c in flag.choices if c != current))], []
    else:
        raise AssertionError(f"no alternative value for --{name}: add one")
    if flag.type == "bool" and not args:
        args = ["false" if current else "true"]
    return [f"--{name}", *args], pre


@pytest.mark.parametrize("task", sorted(t.name for t in registry.builtin_tasks()))
def test_every_flag_is_honoured_or_refused(task, world, tmp_path):
    spec = registry.get(task)
    assert spec.honours is not None and spec.honours <= honour.ALL_NAMES, spec.honours - honour.ALL_NAMES
    base_args = [*world[task], "--json§save_path", str(tmp_path / "runs")]
    if task == "ssl":
        base_args += ["--knn_label", "ef_class"]
    if task == "erm":
        base_args += ["--erm_label", "ef_class"]
    base = _start(spec, [*base_args, "--fulltrainID", "base"])
    again = _start(spec, [*base_args, "--fulltrainID", "base"])
    assert list(observe(base)) == list(observe(again)), "a start must be observed the same twice"
    root = world["_root"]
    # what the checkpoint flags point at: this task's weights moved by a constant, as a run folder, and exported
    other = _start(spec, [*base_args, "--fulltrainID", f"other_{task}", "--json§save_path", str(root)])
    _write_checkpoint(other, other["ckpt_dir"] / "last.ckpt", shift=0.01)
    _write_checkpoint(base, base["ckpt_dir"] / "last.ckpt", shift=0.02)
    (root / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 1}, "train_micro_batch_size_per_gpu": 3}))
    if "load_hf" in spec.honours and not (root / f"hub_{task}").exists():
        from Engineering.Engines.saved_runs import describe_saved
        from Engineering.io.export import export_run

        export_run(other["run_dir"], "last", root / f"hub_{task}", describe_saved)
    refused, honoured, refs, elsewhere = [], [], {}, []
    for flag in FLAGS:
        name = flag.name
        if name in ELSEWHERE and name in spec.honours:  # (where it is not declared, its refusal is tested here)
            elsewhere.append(name)
            continue
        args, pre = _alternative(name, base["resolved"].cfg, world, task, tmp_path)
        named = [] if name in ("trainID", "fulltrainID") else ["--fulltrainID", "base"]  # the composed run name
        key = (*pre, *named)
        if key not in refs:
            try:
                refs[key] = _start(spec, [*base_args, *pre, *named]) if pre or not named else base
            except UserError:  # its prerequisites are refused here (then so is it), or it allows what they ask
                refs[key] = None
        ref = refs[key]
        try:
            if name in TRAINER_ONLY and ref is not None:  # read by the Trainer alone: observed with the start's engine
                resolved = MainEngine.resolve([*base_args, *pre, *named, *args], spec)
                a, b = _trainer(ref), _trainer({**ref, "resolved": resolved})
                changed = "trainer" if a != b else None
            else:
                got = _start(spec, [*base_args, *pre, *named, *args])
                # the Trainer is built at the start of the locked run (before training): its refusals count too
                changed = (
                    "start"
                    if ref is None
                    else next(  # refused without it, started with it; or observed
                        (what for (what, a), (_, b) in zip(observe(ref), observe(got)) if a != b), None
                    )
                )
        except UserError as exc:
            msg = str(exc)
            if name in MACHINE and MACHINE[name] in msg:  # it acted: it asked this machine for what it lacks
                assert name in spec.honours, msg
                honoured.append(f"{name}: asks the machine")
                continue
            fixed = name in spec.fixed and spec.fixed[name][1] in msg  # its value is fixed by the task
            assert fixed or name not in spec.honours, f"{task}: --{name} is declared honoured but refused: {msg}"
            named_flags = [a for a in [*args, *pre] if a.startswith("--")]
            assert "\n" not in msg and repr(task) in msg and any(a in msg for a in named_flags), msg
            refused.append(name)
            continue
        assert name in spec.honours, f"{task}: --{name} {args[1:]} is accepted but not declared honoured"
        assert changed, f"{task}: --{name} {' '.join(args[1:])} is declared honoured but changes nothing observed"
        if name in honour.BN_EVAL:  # the policy callback changes only what BatchNorm layers compute
            from Engineering.Science.batchnorm import batchnorm_layers

            assert batchnorm_layers(got["model"]), f"{task}: --{name} acts on BatchNorm; the engine has none"
        honoured.append(f"{name}: {changed}")
    print(task, "honoured:", "; ".join(honoured), "| refused:", ", ".join(refused))
    assert honoured and len(honoured) + len(refused) + len(elsewhere) == len(FLAGS)


# --- the reproduced bugs of issue 33 item 1 and issue 34 item 7, each as a user typed it ------------------------


def _cli(capsys, script: str, *argv: str):
    from Engineering.Engines import cli
    from Engineering.errors import run_cli

    code = run_cli(lambda a: cli.main(a, task=script), list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _gan_args(demo, save, name, *extra):
    return [
        *TINY_GAN,
        "--interp_fact",
        "1",
        "--json§datadir",
        str(demo),
        "--json§save_path",
        str(save),
        "--fulltrainID",
        name,
        "--n_train_batches",
        "2",
        "--run_mode",
        "0",
        "--num_epochs",
        "2",
        "--optimiserID",
        "SGD",
        "--model§StyleGAN2§r1_gamma",
        "0",
        "--model§StyleGAN2§pl_weight",
        "0",
        *extra,
    ]


def _gan_run(demo, save, name, *extra):
    MainEngine.run(_gan_args(demo, save, name, *extra), registry.get("stylegan"))
    return torch.load(save / name / "Checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


def test_stylegan_steps_the_optimiser_schedule_and_clipping_it_is_given(tiny_demo_mc, tmp_path, capsys):
    """main_stylegan --effective_batch_size 16 --grad_clip_val 1e-6 --optimiserID SGD --lr_decay_type 1 trained
    with Adam, no clipping, no schedule and one update per batch; now each acts or is refused."""
    code, _, err = _cli(
        capsys,
        "stylegan",
        "--effective_batch_size",
        "16",
        "--grad_clip_val",
        "1e-6",
        "--optimiserID",
        "SGD",
        "--lr_decay_type",
        "1",
        "--print_config",
    )
    assert code == 2 and err.startswith("error: --effective_batch_size is not honoured by task 'stylegan'")
    start = _start(registry.get("stylegan"), _gan_args(tiny_demo_mc, tmp_path, "s"))  # the same seed: the same init
    initial = {
        k: v.detach().clone() for k, v in start["model"].named_parameters() if k.startswith(("net.", "disc."))
    }  # the trained weights (not w_avg, the EMA or noise buffers)
    free = _gan_run(tiny_demo_mc, tmp_path, "free", "--lr_decay_type", "1", "--training§LRDecay§type1§decay_every", "1")
    clipped = _gan_run(tiny_demo_mc, tmp_path, "clipped", "--grad_clip_val", "1e-9")
    for ckpt in (free, clipped):
        assert [o["param_groups"][0].get("momentum") for o in ckpt["optimizer_states"]] == [0, 0]  # SGD, not Adam
    # StepLR(decay_every 1, rate 0.1) stepped after each of the 2 epochs, on both optimisers
    assert [s["_last_lr"][0] for s in free["lr_schedulers"]] == pytest.approx([2e-3 * 0.01] * 2)

    def moved(ckpt):
        return max(float((ckpt["state_dict"][k] - v).abs().max()) for k, v in initial.items())

    # clipped to a norm of 1e-9, four SGD steps of lr 2e-3 move no weight by more than 1e-11; unclipped they move
    assert moved(clipped) < 1e-10 < 1e-6 < moved(free)


def test_a_flag_that_would_do_nothing_is_refused_before_anything_runs(capsys):
    code, _, err = _cli(capsys, "diffAE", "--flip_prob", "0.5", "--print_config")
    assert (
        code == 2 and "--flip_prob 0.5 is not honoured by task 'diffAE': it flips nothing without data§flip_axes" in err
    )
    code, out, _ = _cli(capsys, "diffAE", "--flip_prob", "0.5", "--data§flip_axes", "[1]", "--print_config")
    assert code == 0 and yaml_load(out)["data"]["flip_axes"] == [1]
    code, _, err = _cli(capsys, "ssl", "--bn_eval_mode", "batch", "--print_config")
    assert code == 2 and "--bn_eval_mode batch is not honoured by task 'ssl'" in err and "--batch_groups" in err
    for args, flag in (
        (["--grad_clip_algo", "value"], "--grad_clip_algo"),
        (["--zscore_mean", "0.5"], "--zscore_mean"),
        (["--json§DS_confounders§path", "c.tsv"], "--json§DS_confounders§path"),
        (["--test_ema", "false"], "--test_ema"),
    ):  # (recon keeps no EMA without --use_ema)
        code, _, err = _cli(capsys, "recon", *args, "--print_config")
        assert code == 2 and err.startswith(f"error: {flag}") and len(err.strip().splitlines()) == 1, err


def test_a_refusal_the_config_decides_comes_before_training(tiny_demo, tmp_path, capsys):
    """main_ssl --no-test_emb_only trained the whole budget, then refused at the test."""
    code, _, err = _cli(
        capsys,
        "ssl",
        *TINY_SSL,
        "--json§datadir",
        str(tiny_demo),
        "--json§save_path",
        str(tmp_path),
        "--no-test_emb_only",
    )
    assert code == 2 and "--test_emb_only False is not honoured by task 'ssl': the SSL task learns no decoder" in err
    assert not tmp_path.exists() or not any(tmp_path.iterdir())  # nothing was built, trained or written


def test_an_unknown_bare_flag_never_takes_the_next_flag_as_its_value(capsys):
    """main_ssl --print_config --method ipirm --X --no-keep_cont gave X: '--no-keep_cont' and keep_cont true."""
    code, out, err = _cli(capsys, "ssl", "--print_config", "--method", "ipirm", "--brand_new_switch", "--no-keep_cont")
    cfg = yaml_load(out)
    assert code == 0 and cfg["brand_new_switch"] is True and cfg["model"]["IPIRM"]["keep_cont"] is False
    code, out, _ = _cli(capsys, "ssl", "--brand_new_switch", "--print_config")
    assert code == 0 and yaml_load(out)["brand_new_switch"] is True  # printed, not trained
    code, _, err = _cli(capsys, "ssl", "--num_epoch", "1", "--print_config")
    assert code == 2 and "unknown flag --num_epoch (did you mean --num_epochs?)" in err


def yaml_load(text: str):
    import yaml

    return yaml.safe_load(text)


KEY_VALUES = {
    "training§LRDecay§type1§decay_every": "7",
    "training§ema_decay": "0.99",
    "training§ema_warmup": "false",
    "data§flip_axes": "[1]",
    "eval§n_preview": "2",
    "eval§output_chunk": "8",
    "model§tag": "x",
    "json§DS_covariates§path": "c.tsv",
    "json§DS_phenotypes§path": "p.tsv",
    "json§DS_confounders§path": "f.tsv",
}


@pytest.mark.parametrize("task", sorted(t.name for t in registry.builtin_tasks()))
def test_every_common_key_is_declared_or_refused(task):
    """The common YAML keys beside the flags follow the same declaration: an override of one the task does not
    honour is one error line naming it and the task (what the honoured ones change is each key's own test)."""
    from Engineering.config.loader import resolve

    spec = registry.get(task)
    keys = {k for k in honour.KEYS if k.startswith(("training", "data", "eval", "model")) and k != "training§LRDecay"}
    assert set(KEY_VALUES) >= keys | {"json§DS_covariates§path", "json§DS_phenotypes§path"}
    # what each key needs to act (so that a declared key is not refused by a condition)
    needs = {
        "training§LRDecay§type1§decay_every": ["--lr_decay_type", "1"],
        "data§flip_axes": ["--flip_prob", "0.5"],
        "training§ema_decay": ["--use_ema"],
        "training§ema_warmup": ["--use_ema"],
    }
    if task == "recon":  # main_recon reads the tables for the models that use them
        needs["json§DS_phenotypes§path"] = [
            "--pythae_model",
            "ultra_vae",
            "--model§pythae§models§ultra_vae§learn_phenotypes",
            "true",
        ]
        needs["json§DS_confounders§path"] = [
            "--pythae_model",
            "ultra_vae",
            "--model§pythae§models§ultra_vae§anti_confounders_strategy",
            "2",
        ]
    for key, value in KEY_VALUES.items():
        name = honour.name_of(tuple(key.split("§")))
        extra = [a for a in needs.get(key, []) if a != "--use_ema" or task in ("recon", "latentcls")]
        if "--flip_prob" in extra and "flip_prob" not in spec.honours:
            extra = []
        try:
            resolve([f"--{key}", value, *extra], spec)
        except UserError as exc:
            assert name not in spec.honours, f"{task}: {key} is declared honoured but refused: {exc}"
            assert f"--{key}" in str(exc) and repr(task) in str(exc) and "\n" not in str(exc)
            continue
        assert name in spec.honours, f"{task}: {key} is accepted but not declared"
