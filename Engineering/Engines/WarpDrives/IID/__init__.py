"""IID WarpDrive: the classifier of the IID pipeline (``network`` pure torch, ``engine``); the encoder it reads
comes from a ``restyle`` run through the registry. Registers ``iid``.
"""

from __future__ import annotations

from Engineering.config import honour
from Engineering.Engines.registry import CONFIGS, TaskSpec, register

from .engine import IID_FLAGS, IIDEngine, IIDModelKeys, IIDRun, OODReport

register(
    TaskSpec(
        name="iid",
        description="IID predictor (Wu et al., MIDL 2022): a ResNet classifier with the ReStyle encoder's "
        "noise maps and style codes, evaluated on held-out groups.",
        configyml=str(CONFIGS / "config_iid.yaml"),
        datajson=str(CONFIGS / "dataNpath_demo_mc.json"),
        defaults={
            "input_shape": [32, 32],
            "interp_fact": 0.5,
            "batch_size": 16,
            "num_epochs": 4,
            "lr": 1e-3,
            "n_train_batches": 20,
            "n_val_batches": 4,
            "test_emb_only": True,
            "lr_decay_type": 3,
            "norm_range": "symmetric",
            # the demo cohort's label and sites (the bundled phantom): real runs name their own
            "targets": "wall_class",
            "ood_column": "site",
            "ood_test_groups": "siteC",
            "ood_val_groups": "siteB",
        },
        extra_flags=IID_FLAGS,
        sections={"model": IIDModelKeys},
        drive="IID",
        engine=IIDEngine,
        lifecycle=IIDRun,
        honours=(honour.STANDARD - honour.LATENT - honour.RECON_OUTPUTS - honour.EMA)
        | honour.BN_EVAL
        | honour.PHENOTYPES,
        fixed={"test_emb_only": (True, "the IID predictor is a classifier: it writes embeddings only")},
        steps=(OODReport(),),
        module=__name__,
        dev_args=("--batch_size", "8", "--interp_fact", "1", "--noise", "--style"),
        upstream={"--encoder": "restyle"},  # its noise maps and style codes
    )
)
