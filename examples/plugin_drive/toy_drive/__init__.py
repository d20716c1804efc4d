"""A model family from outside the repository: a tiny convolutional autoencoder registered as the task ``toy``.

PYTHONPATH=examples/plugin_drive python Executors/main.py --plugins toy_drive --task toy

The same shape as a built-in family (``Engineering/Engines/WarpDrives/<Family>/``): ``network/`` (pure torch),
``engine.py`` (the LightningModule, its keys and flags), its YAML defaults file (``toy.yaml``) and, here, the one
call to ``register`` that makes it a task.
"""

from __future__ import annotations

from pathlib import Path

from Engineering.Engines.registry import CONFIGS, TaskSpec, register

from .engine import TOY_FLAGS, ToyEngine, ToyModelKeys

HERE = Path(__file__).resolve().parent

register(
    TaskSpec(
        name="toy",
        description="A tiny convolutional autoencoder (the plug-in example).",
        configyml=str(HERE / "toy.yaml"),
        datajson=str(CONFIGS / "dataNpath_demo.json"),
        defaults={
            "input_shape": [32, 32],
            "interp_fact": 0.5,
            "latent_dim": 8,
            "batch_size": 16,
            "num_epochs": 2,
            "lr": 1e-3,
        },
        extra_flags=TOY_FLAGS,
        sections={"model": ToyModelKeys},
        drive="toy",
        engine=ToyEngine,
        module=__name__,
    )
)
