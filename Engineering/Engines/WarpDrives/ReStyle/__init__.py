"""ReStyle WarpDrive (Alaluf et al., ICCV 2021) with the noise head of Wu et al. (MIDL 2022): ``network`` (pure
torch) and ``engine``; the generator it inverts comes from a ``stylegan`` run through the registry. Registers
``restyle``.
"""

from __future__ import annotations

from Engineering.config import honour
from Engineering.Engines.registry import CONFIGS, TaskSpec, register

from .engine import RESTYLE_FLAGS, NoiseMapsView, ReStyleEngine, ReStyleModelKeys, StyleMeanView

register(
    TaskSpec(
        name="restyle",
        description="ReStyle encoder (Alaluf et al., ICCV 2021) with a noise head (Wu et al., MIDL "
        "2022): W+ style codes and noise maps of a frozen main_stylegan generator.",
        configyml=str(CONFIGS / "config_restyle.yaml"),
        datajson=str(CONFIGS / "dataNpath_demo_mc.json"),
        defaults={
            "input_shape": [32, 32],
            "interp_fact": 0.5,
            "batch_size": 16,
            "num_epochs": 4,
            "lr": 1e-3,
            "n_train_batches": 25,
            "n_val_batches": 2,
            "norm_range": "symmetric",
        },
        extra_flags=RESTYLE_FLAGS,
        sections={"model": ReStyleModelKeys},
        drive="ReStyle",
        engine=ReStyleEngine,
        # --input_shape must be the generator's image size (the engine refuses another at the start)
        honours=honour.STANDARD - honour.LATENT - honour.EMA - {"is3D"},
        why_not={
            "latent_dim": "its codes have the generator's sizes (W+ and noise maps)",
            "is3D": "it inverts a 2D main_stylegan generator",
        },
        steps=(StyleMeanView(), NoiseMapsView()),
        module=__name__,
        dev_args=("--batch_size", "4", "--interp_fact", "1", "--model§ReStyle§width", "4"),
        upstream={"--generator": "stylegan"},
    )
)
