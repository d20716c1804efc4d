"""--ampmode bf16-mixed on CPU trains a DiffAE under bfloat16 autocast on the trajectory of float32: the same seed
gives every logged loss (training steps, epoch means, validation) within 1 % of the fp32 run, the weights, the EMA
and the timestep embedding stay float32, and the head that writes the latent runs in float32 under autocast.
The published shape's trajectory is measured by ``benchmarks/bench_diffae.py --trajectory`` (speed.md)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from Engineering.Engines import registry
from Engineering.Engines.MainEngine import run
from Engineering.Engines.WarpDrives.DiffAE.network import DiffAE, DiffAEConfig
from Engineering.io.checkpoints import read_checkpoint
from tests.conftest import tiny_args

LOSSES = ["train_loss_step", "train_loss_epoch", "val_loss"]
# measured on the tiny demo: the largest relative gap is ~1e-4; bf16 rounding alone moves a loss by ~0.4 %
TOLERANCE = 1e-2


def _train(demo, save, name, amp, *extra):
    run(
        tiny_args(
            demo,
            save,
            "--num_epochs",
            "3",
            "--n_train_batches",
            "5",
            "--run_mode",
            "1",
            "--ampmode",
            amp,
            "--fulltrainID",
            name,
            *extra,
        ),
        registry.get("diffAE"),
    )
    return pd.read_csv(save / name / "csv_logs" / "metrics.csv")


@pytest.mark.parametrize("dims", [pytest.param(2), pytest.param(3, marks=pytest.mark.slow)])
def test_bf16_mixed_follows_the_fp32_loss_trajectory(tiny_demo, tmp_path, dims):
    extra = ["--is3D", "1", "--input_shape", "4,32,32", "--json§DS_slice_dim", "1"] if dims == 3 else []
    logs = {amp: _train(tiny_demo, tmp_path, amp, amp, *extra) for amp in ("32", "bf16-mixed")}
    for term in LOSSES:
        fp32, bf16 = (logs[a][term].dropna().to_numpy() for a in ("32", "bf16-mixed"))
        # one value per epoch; the steps are logged every 5 (a 3D epoch of the tiny demo has 2 batches)
        assert len(fp32) >= (1 if term == "train_loss_step" else 3) and len(fp32) == len(bf16), term
        assert np.isfinite(fp32).all() and np.isfinite(bf16).all(), term
        np.testing.assert_allclose(bf16, fp32, rtol=TOLERANCE, err_msg=term)
    assert not np.array_equal(logs["32"]["train_loss_step"].dropna(), logs["bf16-mixed"]["train_loss_step"].dropna())
    # both trajectories fall: the first epoch's mean above the last's
    for amp in logs:
        epochs = logs[amp]["train_loss_epoch"].dropna().to_numpy()
        assert epochs[-1] < epochs[0], (amp, epochs)
    state = read_checkpoint(tmp_path / "bf16-mixed" / "Checkpoints" / "last.ckpt")["state_dict"]
    assert any(k.startswith("ema_net.") for k in state)
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float32}


def test_timestep_embedding_and_latent_head_run_in_float32_under_autocast():
    """The layers kept out of bf16: the timestep MLP (adjacent timesteps round together in bf16) and the encoder's
    head (a code of large mean and small spread loses its signal), while the convolutions run in bf16."""
    net = DiffAE(
        DiffAEConfig(
            is3D=False,
            in_channels=1,
            input_shape=(16, 16),
            latent_dim=8,
            net_ch=8,
            ch_mult=(1, 2),
            enc_ch_mult=(1, 2),
            num_res_blocks=1,
            enc_num_res_blocks=1,
            attn_res=(8,),
        )
    )
    seen = {}

    def record(name):
        def hook(mod, inp, out):
            seen.setdefault(name, out.dtype)  # (a hook's return value would replace the output)

        return hook

    net.time_embed.time_embed[-1].register_forward_hook(record("time_mlp"))
    net.encoder.out[3].register_forward_hook(record("latent_projection"))
    net.encoder.input_blocks[0][0].register_forward_hook(record("first_conv"))
    x = torch.randn(2, 1, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = net.encode(x)
        eps = net(x, torch.tensor([3, 400]), z)
    assert seen == {"first_conv": torch.bfloat16, "latent_projection": torch.float32, "time_mlp": torch.float32}
    assert z.dtype == eps.dtype == torch.float32
    # the timestep embedding under autocast is the float32 one, bit for bit
    t = torch.arange(500, 503)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb = net.time_embed(t)
    assert torch.equal(emb, net.time_embed(t))
