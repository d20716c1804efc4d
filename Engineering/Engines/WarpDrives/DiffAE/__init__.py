"""DiffAE WarpDrive: Diffusion Autoencoders (Preechakul et al., CVPR 2022), 2D and 3D.

``network``: ``DiffAEConfig`` + ``DiffAE`` (pure torch) and ``load_published_state`` (the published ImLatent
checkpoints); ``engine``: the LightningModule. This module registers the ``diffAE`` task.
"""

from __future__ import annotations

from Engineering.config import honour
from Engineering.Engines.registry import CONFIGS, TaskSpec, register

from .engine import DIFFAE_FLAGS, DiffAEEngine, DiffAEEvalKeys, DiffAEModelKeys
from .published_hub import published_diffae

register(
    TaskSpec(
        name="diffAE",
        description="Diffusion Autoencoder (Preechakul et al., CVPR 2022), 2D and 3D.",
        configyml=str(CONFIGS / "config_diffAE.yaml"),
        datajson=str(CONFIGS / "dataNpath_demo.json"),
        # demo-sized defaults: a first look on a laptop CPU in a few minutes; real runs set their own
        defaults={
            "input_shape": [32, 32],
            "interp_fact": 0.5,
            "latent_dim": 32,
            "batch_size": 16,
            "num_epochs": 8,
            "lr": 1e-3,
            "n_train_batches": 50,
            "n_val_batches": 4,
            "norm_range": "symmetric",
        },
        extra_flags=DIFFAE_FLAGS,
        sections={"model": DiffAEModelKeys, "eval": DiffAEEvalKeys},
        drive="DiffAE",
        engine=DiffAEEngine,
        published=published_diffae,
        module=__name__,
        honours=honour.STANDARD | honour.BN_EVAL | honour.CHECKPOINTED | {"hf_weights"},
        conditions=(
            (
                "bn_eval_mode",
                lambda c: (
                    None
                    if c.model.DiffAE.latent_norm == "batch"
                    else "sets BatchNorm statistics; the DiffAE has BatchNorm only with model§DiffAE§latent_norm batch"
                ),
            ),
        ),
        # its one-batch dev run (tests/test_every_task.py): a tiny UNet, 3 diffusion steps
        dims=(2, 3),
        dev_args=(
            "--latent_dim",
            "8",
            "--batch_size",
            "4",
            "--interp_fact",
            "1",
            "--model§DiffAE§net_ch",
            "8",
            "--model§DiffAE§ch_mult",
            "[1,2]",
            "--model§DiffAE§enc_ch_mult",
            "[1,2]",
            "--model§DiffAE§num_res_blocks",
            "1",
            "--model§DiffAE§enc_num_res_blocks",
            "1",
            "--model§DiffAE§attn_res",
            "[8]",
            "--model§DiffAE§T_eval",
            "3",
            "--model§DiffAE§T_inv",
            "3",
            "--model§DiffAE§T_step",
            "3",
        ),
    )
)
