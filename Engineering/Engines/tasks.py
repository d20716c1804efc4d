"""What each executor contributes: default files, flag defaults and task-only flags."""
from __future__ import annotations

from pathlib import Path

from Engineering.config.flags import DIFFAE_FLAGS, LATENTCLS_FLAGS, RECON_FLAGS
from Engineering.config.loader import Task


def diffae_task(configs: Path) -> Task:
    return Task(
        name="diffAE", description="Diffusion Autoencoder (Preechakul et al., CVPR 2022), 2D and 3D.",
        configyml=str(configs / "config_diffAE.yaml"), datajson=str(configs / "dataNpath_demo.json"),
        # demo-sized defaults: a first look on a laptop CPU in a few minutes; real runs set their own
        defaults={"input_shape": [32, 32], "interp_fact": 0.5, "latent_dim": 32, "batch_size": 16, "num_epochs": 8,
                  "lr": 1e-3, "n_train_batches": 50, "n_val_batches": 4, "norm_range": "symmetric",
                  "model§drive": "DiffAE", "model§tag": "DiffAE"},
        extra_flags=DIFFAE_FLAGS,
    )


def recon_task(configs: Path) -> Task:
    return Task(
        name="recon", description="pythae autoencoders and VAEs (Chadebec et al., NeurIPS 2022), 2D and 3D.",
        configyml=str(configs / "config_recon.yaml"), datajson=str(configs / "dataNpath_demo.json"),
        defaults={"input_shape": [64, 64], "latent_dim": 16, "batch_size": 32, "num_epochs": 3, "lr": 1e-3,
                  "model§drive": "pythae", "model§tag": "recon"},
        extra_flags=RECON_FLAGS,
    )


def latentcls_task(configs: Path) -> Task:
    return Task(
        name="latentcls", description="Linear and MLP predictors of phenotypes from a run's latents "
                                      "(regression and classification, several targets at once).",
        configyml=str(configs / "config_latentcls.yaml"), datajson=str(configs / "dataNpath_demo.json"),
        defaults={"batch_size": 64, "num_epochs": 100, "lr": 1e-2, "early_stopping_patience": 20,
                  "model§drive": "LatentPredictor",
                  "model§tag": "LtCls"},
        extra_flags=LATENTCLS_FLAGS,
    )
