"""SSL WarpDrive (BEN, Lin & Lu, MLCB 2022): a ResNet encoder (``network``) trained by SimCLR, MinCLR or IP-IRM
(``engine``, ``ipirm``: one method table) and the supervised ERM baseline (``erm``). Registers ``ssl`` and
``erm``.
"""

from __future__ import annotations

from Engineering.config import honour
from Engineering.Engines.registry import CONFIGS, TaskSpec, register

from .erm import ERM_FLAGS, ERMEngine, ERMModelKeys, ERMReport
from .ipirm import PartitionTable
from .methods import TASK_FLAGS, SSLModelKeys, ssl_engine

register(
    TaskSpec(
        name="ssl",
        description="Self-supervised ResNet encoders: SimCLR, MinCLR and IP-IRM, with Batch Effects "
        "Normalization (--batch_groups, --bn_eval_mode).",
        configyml=str(CONFIGS / "config_ssl.yaml"),
        datajson=str(CONFIGS / "dataNpath_demo.json"),
        # demo-sized: a first look on a laptop CPU in a few minutes
        defaults={
            "input_shape": [32, 32],
            "interp_fact": 0.5,
            "batch_size": 32,
            "num_epochs": 3,
            "lr": 1e-3,
            "n_train_batches": 20,
            "test_emb_only": True,
        },
        extra_flags=TASK_FLAGS,
        sections={"model": SSLModelKeys},
        drive="SSL",
        engine=ssl_engine,
        module=__name__,
        honours=(honour.STANDARD - honour.LATENT - honour.RECON_OUTPUTS) | honour.BN_EVAL | honour.PHENOTYPES,  # kNN
        fixed={"test_emb_only": (True, "the SSL task learns no decoder: it writes embeddings only")},
        run_name_parts=lambda cfg: [f"method-{cfg.model.SSL.method}"],  # SimCLR after IP-IRM gets its own run folder
        steps=(PartitionTable,),
        dims=(2, 3),  # (ERM in 3D needs a label column of the cells: its dev run is 2D)
        dev_args=(
            "--batch_size",
            "8",
            "--interp_fact",
            "1",
            "--model§SSL§width",
            "4",
            "--model§SSL§proj_hidden",
            "16",
            "--model§SSL§proj_dim",
            "8",
        ),
    )
)

register(
    TaskSpec(
        name="erm",
        description="Supervised ResNet classifier of a phenotype (ERM), with Batch Effects Normalization "
        "(--batch_groups, --bn_eval_mode) and an in/out-of-distribution report.",
        configyml=str(CONFIGS / "config_erm.yaml"),
        datajson=str(CONFIGS / "dataNpath_demo.json"),
        defaults={
            "input_shape": [32, 32],
            "interp_fact": 0.5,
            "batch_size": 32,
            "num_epochs": 3,
            "lr": 1e-3,
            "n_train_batches": 20,
            "test_emb_only": True,
            "lr_decay_type": 3,
            "erm_label": "ef_class",
        },
        extra_flags=ERM_FLAGS,
        sections={"model": ERMModelKeys},
        drive="ERM",
        engine=ERMEngine,
        honours=(honour.STANDARD - honour.LATENT - honour.RECON_OUTPUTS) | honour.BN_EVAL | honour.PHENOTYPES,
        fixed={"test_emb_only": (True, "the ERM classifier learns no decoder: it writes embeddings only")},
        steps=(ERMReport(),),
        module=__name__,
        dev_args=("--batch_size", "8", "--interp_fact", "1", "--model§ERM§width", "4"),
    )
)
