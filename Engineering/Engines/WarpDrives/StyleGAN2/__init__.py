"""StyleGAN2 WarpDrive (Karras et al., CVPR 2020): ``network`` (pure torch) and ``engine``. Registers ``stylegan``."""

from __future__ import annotations

from Engineering.config import honour
from Engineering.Engines.registry import CONFIGS, TaskSpec, register

from .engine import GANRun, StyleGANEngine, StyleGANModelKeys

register(
    TaskSpec(
        name="stylegan",
        description="StyleGAN2 generator and discriminator (Karras et al., CVPR 2020), any channel "
        "count; the first stage of the IID pipeline (seed 000).",
        configyml=str(CONFIGS / "config_stylegan.yaml"),
        datajson=str(CONFIGS / "dataNpath_demo_mc.json"),
        # demo-sized: a first look on a laptop CPU in a few minutes (the paper's lr 0.002, batch 32 at 1024 px)
        defaults={
            "input_shape": [32, 32],
            "interp_fact": 0.5,
            "batch_size": 16,
            "num_epochs": 4,
            "lr": 2e-3,
            "n_train_batches": 25,
            "n_val_batches": 2,
            "norm_range": "symmetric",
        },
        sections={"model": StyleGANModelKeys},
        drive="StyleGAN2",
        engine=StyleGANEngine,
        lifecycle=GANRun,
        # two optimisers stepped by hand: their optimiser, schedule and clipping are applied here, not accumulation;
        # the test writes samples of the EMA generator (no latents, no reconstructions)
        honours=(
            honour.LIFECYCLE
            | honour.LOADERS
            | honour.OPTIMISER
            | honour.CLIPPING
            | honour.IMAGES
            | honour.GROUPS
            | honour.IMAGE_GRIDS
        )
        - {"auto_lr", "auto_bs", "load_best", "is3D", "deepspeed_config"},
        why_not={
            "load_best": "its validation loss does not measure sample quality: the test, its samples and "
            "main_restyle --generator use the last checkpoint",
            "effective_batch_size": "adversarial training steps the discriminator and the generator once per batch "
            "(gradient accumulation is not implemented for it)",
            "auto_lr": "the Tuner's learning-rate finder steps one optimiser; adversarial training has two",
            "auto_bs": "the Tuner's batch-size search runs the training step, which steps two optimisers by hand",
            "test_ema": "its test always samples the EMA generator",
            "latent_dim": "its latent size is model§StyleGAN2§style_dim",
            "is3D": "it trains on square 2D images",
            "deepspeed_config": "DeepSpeed does not step two optimisers by hand (use --training_strategy ddp)",
            "load_hf": "an export holds the generator alone; training and its test need the discriminator too",
        },
        module=__name__,
        dev_args=(
            "--batch_size",
            "4",
            "--interp_fact",
            "1",
            "--model§StyleGAN2§style_dim",
            "16",
            "--model§StyleGAN2§n_mlp",
            "2",
            "--model§StyleGAN2§channel_max",
            "8",
            "--model§StyleGAN2§n_samples",
            "4",
        ),
    )
)
