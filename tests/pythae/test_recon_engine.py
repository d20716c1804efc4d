"""Every pythae model through our Lightning engine on the (tiny) demo data: parameters change, loss goes down.

Multi-optimiser models run Lightning's manual optimisation in ReconEngine, with gradient accumulation
and clipping; single-optimiser models the automatic path.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch

from Engineering.config.loader import resolve
from Engineering.data.datamodule import H5DataModule
from Engineering.Engines import registry
from Engineering.Engines.MainEngine import run
from Engineering.Engines.WarpDrives.pythaeDrive.engine import ReconEngine
from Engineering.Engines.WarpDrives.pythaeDrive.network import get_spec, model_names
from Engineering.errors import UserError

TASK = registry.get("recon")


pytestmark = pytest.mark.usefixtures("one_thread")


def _args(demo, *extra):
    return [
        "--json§datadir",
        str(demo),
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
        "--no-progress_bar",
        "--no-tbactive",
        *extra,
    ]


def _probe_loss(engine, batch) -> float:
    torch.manual_seed(123)  # the same sampling noise before and after training
    ctx = torch.enable_grad() if engine.needs_grad_in_eval else torch.no_grad()
    with ctx:
        if engine.drive_cfg.model == "vaegan":
            # its recon term compares discriminator outputs, which the discriminator itself keeps moving
            engine.net.eval()
            x = batch["inp"]
            loss = float(((engine.net.reconstruct(x) - x) ** 2).mean())
            engine.net.train()
            return loss
        out = engine.net(batch, epoch=0, dataset_size=100)
    # adversarial totals mix in the discriminator's game: judge the reconstruction term where there is one
    return float(out.losses.get("recon_loss", out.loss))


# complex models need a complex cohort (tests/test_complex_models.py), ivaes the confounder table
# (tests/pythae/test_ultra_models.py runs it through main_recon)
ENGINE_MODELS = [n for n in model_names() if get_spec(n).networks is None and "aux_u" not in get_spec(n).aux_inputs]


@pytest.mark.parametrize("name", ENGINE_MODELS)
def test_every_model_trains_through_the_engine(tiny_demo, name):
    extra = ["--effective_batch_size", "16", "--grad_clip_val", "5.0"]  # accumulation + clipping on every path
    cfg = resolve(_args(tiny_demo, "--pythae_model", name, "--lr", "3e-3", *extra), TASK).cfg
    L.seed_everything(0, verbose=False)
    dm = H5DataModule(cfg, merge_train_val=True)
    ds = dm.dataset("train")
    engine = ReconEngine(cfg, 1)
    engine.has_val = False
    batch = {"inp": torch.stack([ds.sample(i)["inp"] for i in range(min(16, len(ds)))])}
    before_params = {k: v.detach().clone() for k, v in engine.net.named_parameters() if v.requires_grad}
    before = _probe_loss(engine, batch)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=30 if engine.automatic_optimization else 60,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        inference_mode=not engine.needs_grad_in_eval,
        accumulate_grad_batches=2 if engine.automatic_optimization else 1,
        gradient_clip_val=5.0 if engine.automatic_optimization else None,
    )
    trainer.fit(engine, datamodule=dm)
    changed = [
        k for k, v in engine.net.named_parameters() if k in before_params and not torch.equal(v, before_params[k])
    ]
    assert len(changed) == len(before_params), f"{name}: unchanged {set(before_params) - set(changed)}"
    after = _probe_loss(engine, batch)
    assert after < before, f"{name}: loss {before:.4g} -> {after:.4g}"


def test_main_recon_end_to_end_and_unknown_model(tiny_demo, tmp_path):
    res = run(
        _args(
            tiny_demo,
            "--json§save_path",
            str(tmp_path),
            "--fulltrainID",
            "vae",
            "--num_epochs",
            "1",
            "--n_train_batches",
            "3",
            "--n_val_batches",
            "2",
        ),
        TASK,
    )
    out = tmp_path / "vae" / "Output"
    assert res["out_dir"] == str(out)
    for f in ("emb.h5", "emb.tsv", "emb.parquet", "metrics.csv", "recon.h5"):
        assert (out / f).is_file()
    import h5py

    with h5py.File(out / "emb.h5") as h5:
        assert bool(h5.attrs["ema"]) is False  # pythae keeps no EMA: the latents are the trained weights'

    run(
        _args(
            tiny_demo,
            "--json§save_path",
            str(tmp_path),
            "--fulltrainID",
            "vae",
            "--resume",
            "--load_best",
            "--run_mode",
            "2",
            "--output_suffix",
            "again",
            "--test_emb_only",
        ),
        TASK,
    )
    assert (tmp_path / "vae" / "Output_again" / "emb.h5").is_file()
    with pytest.raises(UserError, match="unknown pythae model 'vea'.*vae"):
        run(_args(tiny_demo, "--pythae_model", "vea", "--json§save_path", str(tmp_path)), TASK)
    with pytest.raises(UserError, match="unknown vae parameter 'bta'"):
        run(_args(tiny_demo, "--model§pythae§models§vae§bta", "2", "--json§save_path", str(tmp_path)), TASK)


def test_manual_clipping_under_16_mixed_clips_the_true_gradient(tiny_demo):
    """factor_vae (manual optimisation) under 16-mixed with a GradScaler: the gradients each optimiser steps
    with have the true clipped norm (clipping the still-scaled gradients would leave ~1/65536 of it)."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    clip = 0.5
    cfg = resolve(_args(tiny_demo, "--pythae_model", "factor_vae", "--grad_clip_val", str(clip)), TASK).cfg
    L.seed_everything(0, verbose=False)
    dm = H5DataModule(cfg, merge_train_val=True)
    engine = ReconEngine(cfg, 1)
    engine.has_val = False
    assert not engine.automatic_optimization
    norms: list[float] = []
    build = engine.configure_optimizers

    def configure():
        opts = build()
        for opt in opts if isinstance(opts, (list, tuple)) else [opts]:
            inner = opt.step

            def step(*a, _inner=inner, _opt=opt, **k):  # called by the GradScaler after unscale + clipping
                grads = [p.grad for g in _opt.param_groups for p in g["params"] if p.grad is not None]
                norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
                return _inner(*a, **k)

            opt.step = step
        return opts

    engine.configure_optimizers = configure
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=6,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        plugins=[MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu", init_scale=2.0**16))],
    )
    trainer.fit(engine, datamodule=dm)
    assert norms and max(norms) <= clip * (1 + 1e-3)
    # the gradients were large enough to be clipped: the clipped norm is the threshold itself, not 1/scale of it
    assert max(norms) > clip * 0.5, norms


def test_vqvae_every_loss_term_falls(tiny_demo, tmp_path):
    """The VQ-VAE under the defaults: reconstruction, quantiser and validation losses all fall epoch to epoch's end
    (pythae's gradient-learned codebook let the quantiser loss grow 24x on the demo; the EMA codebook follows)."""
    import pandas as pd

    run(
        _args(
            tiny_demo,
            "--pythae_model",
            "vqvae",
            "--json§save_path",
            str(tmp_path),
            "--fulltrainID",
            "vq",
            "--num_epochs",
            "4",
            "--run_mode",
            "1",
        ),
        TASK,
    )
    m = pd.read_csv(tmp_path / "vq" / "csv_logs" / "metrics.csv").groupby("epoch").mean(numeric_only=True)
    for term in ("train_recon_loss_epoch", "train_vq_loss_epoch", "val_loss"):
        curve = m[term].dropna().to_numpy()
        assert len(curve) == 4 and curve[-1] < curve[0] and curve.max() <= curve[0] * 1.5, (term, curve)


@pytest.mark.parametrize("name", ["vae", "factor_vae"])  # automatic and manual optimisation
def test_use_ema_averages_every_optimiser_step(tiny_demo, name):
    """--use_ema: after each optimiser step the EMA moves toward the trained weights by 1 - ema_decay_at(n),
    recomputed here from the weights the steps left; the latents are the EMA's."""
    from Engineering.Engines.latent_engine import ema_decay_at

    cfg = resolve(_args(tiny_demo, "--pythae_model", name, "--use_ema", "--lr", "3e-3"), TASK).cfg
    L.seed_everything(0, verbose=False)
    dm = H5DataModule(cfg, merge_train_val=True)
    engine = ReconEngine(cfg, 1)
    engine.has_val = False
    key = next(k for k, p in engine.net.named_parameters() if p.requires_grad)
    expected = dict(engine.net.named_parameters())[key].detach().clone()
    steps: list[torch.Tensor] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, module, *args):
            steps.append(dict(module.net.named_parameters())[key].detach().clone())

    # max_steps counts every optimiser's steps (factor_vae has two): 6 batches either way
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=6 * len(engine.net.optimiser_specs()),
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Record()],
    )
    trainer.fit(engine, datamodule=dm)
    for n, p in enumerate(steps):  # one update per batch, whatever the number of optimisers
        decay = ema_decay_at(n, cfg.training.ema_decay, cfg.training.ema_warmup)
        expected = decay * expected + (1 - decay) * p
    ema = dict(engine.ema_net.named_parameters())[key]
    assert len(steps) == 6
    torch.testing.assert_close(ema, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(ema, steps[-1])  # an average, not the last weights
    x = torch.stack([dm.dataset("train").sample(i)["inp"] for i in range(4)])
    engine.eval()
    with torch.no_grad():
        torch.testing.assert_close(engine.embed(x, True), engine.ema_net.embed(x))
        assert not torch.allclose(engine.embed(x, True), engine.embed(x, False))


def test_use_ema_end_to_end_and_rhvae_refused(tiny_demo, tmp_path):
    """main_recon --use_ema writes the EMA's latents (recorded in emb.h5) and a reload embeds the same;
    rhvae, whose metric is state outside its weights, refuses it with one line."""
    import h5py
    import pandas as pd

    common = [
        "--json§save_path",
        str(tmp_path),
        "--fulltrainID",
        "ema",
        "--n_train_batches",
        "3",
        "--n_val_batches",
        "2",
    ]
    run(_args(tiny_demo, *common, "--use_ema", "--num_epochs", "2"), TASK)
    with h5py.File(tmp_path / "ema" / "Output" / "emb.h5") as h5:
        assert bool(h5.attrs["ema"]) is True
    run(
        _args(
            tiny_demo,
            *common,
            "--use_ema",
            "--resume",
            "--load_best",
            "--run_mode",
            "2",
            "--output_suffix",
            "again",
            "--test_emb_only",
        ),
        TASK,
    )
    first, again = (pd.read_csv(tmp_path / "ema" / d / "emb.tsv", sep="\t") for d in ("Output", "Output_again"))
    z = [c for c in first.columns if c.startswith("Z")]
    assert len(first) > 0
    pd.testing.assert_frame_equal(first[z], again[z], rtol=1e-5)
    with pytest.raises(UserError, match="--use_ema: rhvae"):
        run(_args(tiny_demo, "--pythae_model", "rhvae", "--use_ema", "--json§save_path", str(tmp_path)), TASK)
