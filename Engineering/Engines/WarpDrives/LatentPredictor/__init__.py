"""Latent predictor WarpDrive: heads on saved latents (``engine``), their run (``lifecycle``) and the latent
manipulation step (``manipulate``). Registers ``latentcls``.
"""

from __future__ import annotations

from Engineering.config import honour
from Engineering.Engines.registry import CONFIGS, TaskSpec, register

from .engine import LATENTCLS_FLAGS, LatentPredictorEngine, PredictorEvalKeys
from .lifecycle import PredictorRun
from .manipulate import ManipulationStep

register(
    TaskSpec(
        name="latentcls",
        description="Linear and MLP predictors of phenotypes from a run's latents "
        "(regression and classification, several targets at once).",
        configyml=str(CONFIGS / "config_latentcls.yaml"),
        datajson=str(CONFIGS / "dataNpath_demo.json"),
        defaults={"batch_size": 64, "num_epochs": 100, "lr": 1e-2, "early_stopping_patience": 20, "model§tag": "LtCls"},
        extra_flags=LATENTCLS_FLAGS,
        sections={"eval": PredictorEvalKeys},
        drive="LatentPredictor",
        engine=LatentPredictorEngine,
        # latents and phenotypes in memory: none of the image pipeline's or the output writer's flags
        honours=(
            (honour.LIFECYCLE - {"compile_model"})
            | honour.OPTIMISER
            | honour.ACCUMULATION
            | honour.CLIPPING
            | honour.EMA
            | honour.PHENOTYPES
        ),
        conditions=honour.EMA_WITH_USE_EMA,
        lifecycle=PredictorRun,
        steps=(ManipulationStep,),
        module=__name__,
        # a dev run's latents (its test patients alone: split anew with foldCSV 0)
        dev_args=("--batch_size", "8", "--json§foldCSV", "0"),
        upstream={"--latents": "diffAE"},
    )
)
