"""pythae WarpDrive: every autoencoder/VAE of pythae 0.1.2 (Chadebec et al., NeurIPS 2022), the ancestor's custom
models and the complex models, on 2D and 3D images.

``network``: the drive (pure torch); ``engine``: the LightningModule; ``pythae_json``: pythae's JSON configs
(``configs/``). This module registers the ``recon`` task.
"""

from __future__ import annotations

from Engineering.config import honour
from Engineering.Engines.registry import CONFIGS, TaskSpec, register

from .engine import RECON_FLAGS, CovariatePredictions, PythaeModelKeys, ReconEngine, _anomaly_why, _tables_why
from .network.recon_losses import BUILTIN_CUSTOM_LOSSES
from .pythae_json import merge_pythae_json

register(
    TaskSpec(
        name="recon",
        description="pythae autoencoders and VAEs (Chadebec et al., NeurIPS 2022), 2D and 3D.",
        configyml=str(CONFIGS / "config_recon.yaml"),
        datajson=str(CONFIGS / "dataNpath_demo.json"),
        defaults={
            "input_shape": [64, 64],
            "latent_dim": 16,
            "batch_size": 32,
            "num_epochs": 3,
            "lr": 1e-3,
            "model§tag": "recon",
        },
        extra_flags=RECON_FLAGS,
        sections={"model": PythaeModelKeys},
        flag_layer=merge_pythae_json,
        drive="pythae",
        engine=ReconEngine,
        module=__name__,
        steps=(CovariatePredictions(),),
        code_names={"custom_loss_class": tuple(BUILTIN_CUSTOM_LOSSES)},  # what a downloaded config may name
        honours=honour.STANDARD | honour.PHENOTYPES | honour.CONFOUNDERS,
        conditions=honour.EMA_WITH_USE_EMA
        + (
            ("json§DS_phenotypes", _tables_why(0)),
            ("json§DS_confounders", _tables_why(1)),
            ("anomaly_map", _anomaly_why),
        ),  # (GroupNorm: no BatchNorm to set at evaluation)
        run_name_parts=lambda cfg: [f"pythaemodel-{cfg.model.pythae.model}"],  # the ancestor's run-name part
        dims=(2, 3),
        dev_args=("--latent_dim", "8", "--batch_size", "4", "--model§pythae§n_features", "4"),
    )
)
