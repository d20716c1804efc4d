"""Rotation-invariant autoencoder WarpDrive: ``network`` (pure torch) and ``engine``. Registers ``rotinv``."""

from __future__ import annotations

from Engineering.config import honour
from Engineering.Engines.registry import CONFIGS, TaskSpec, register

from .engine import RotInvEngine, RotInvModelKeys

register(
    TaskSpec(
        name="rotinv",
        description="Rotation-invariant autoencoder (group convolutions; seed 003): an invariant code and "
        "an equivariant pose, 2D (C4) or 3D (octahedral).",
        configyml=str(CONFIGS / "config_rotinv.yaml"),
        datajson=str(CONFIGS / "dataNpath_cells.json"),
        # the bundled 3D cell cohort (@cells), demo-sized: a first look on a laptop CPU in a few minutes
        defaults={
            "is3D": True,
            "input_shape": [32, 32, 32],
            "latent_dim": 16,
            "batch_size": 8,
            "num_epochs": 3,
            "lr": 2e-3,
        },
        sections={"model": RotInvModelKeys},
        drive="RotInv",
        engine=RotInvEngine,
        module=__name__,
        honours=(honour.STANDARD - honour.EMA) | honour.BN_EVAL,
        dims=(2, 3),
        dev_args=("--latent_dim", "8", "--batch_size", "4", "--model§RotInv§width", "2", "--model§RotInv§depth", "2"),
    )
)
