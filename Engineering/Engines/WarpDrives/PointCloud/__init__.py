"""Point-cloud autoencoder WarpDrive: ``network`` (pure torch) and ``engine``. Registers ``pointcloud``."""

from __future__ import annotations

from Engineering.config import honour
from Engineering.Engines.registry import CONFIGS, TaskSpec, register

from .engine import PointCloudEngine, PointCloudModelKeys, PointCloudRun

register(
    TaskSpec(
        name="pointcloud",
        description="Point-cloud autoencoders (seed 003): DGCNN or SO(3)-invariant Vector Neuron "
        "encoder, FoldingNet decoder, Chamfer or Earth Mover's loss.",
        configyml=str(CONFIGS / "config_pointcloud.yaml"),
        datajson=str(CONFIGS / "dataNpath_cells_points.json"),
        defaults={"latent_dim": 16, "batch_size": 8, "num_epochs": 5, "lr": 2e-3, "test_emb_only": True},
        sections={"model": PointCloudModelKeys},
        drive="PointCloud",
        engine=PointCloudEngine,
        lifecycle=PointCloudRun,
        # point clouds: none of the image pipeline's flags, no group-pure batches, no EMA, embeddings only
        honours=(
            honour.LIFECYCLE
            | honour.LOADERS
            | honour.OPTIMISER
            | honour.ACCUMULATION
            | honour.CLIPPING
            | honour.LATENT
            | honour.OUTPUTS
            | {"load_hf"}
        ),
        fixed={"test_emb_only": (True, "a reconstructed cloud is no image for recon.h5's metrics")},
        module=__name__,
        run_name_parts=lambda cfg: [f"encoder-{cfg.model.PointCloud.encoder}"],
        dims=(3,),
        dev_args=(
            "--latent_dim",
            "8",
            "--batch_size",
            "4",
            "--model§PointCloud§width",
            "4",
            "--model§PointCloud§k",
            "8",
            "--model§PointCloud§grid",
            "6",
        ),
    )
)
