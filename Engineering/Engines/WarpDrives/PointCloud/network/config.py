"""Configuration of the point-cloud autoencoder WarpDrive (seed 003's point-cloud models)."""

from __future__ import annotations

from dataclasses import dataclass

from Engineering.Engines.WarpDrives.described import described, required
from Engineering.Engines.WarpDrives.errors import DriveError, positive_int


class PointCloudConfigError(DriveError):
    """A point-cloud autoencoder configuration value the user can fix."""


ENCODERS = ("dgcnn", "vn")
LOSSES = ("chamfer", "emd")


@dataclass
class PointCloudConfig:
    """A point-cloud autoencoder: an encoder of the cloud and a FoldingNet decoder."""

    encoder: str = described(
        "dgcnn",
        'dgcnn = EdgeConv layers on a k-NN graph (Wang et al., "Dynamic Graph CNN", '
        "TOG 2019), not rotation invariant; vn = Vector Neurons (Deng et al., ICCV "
        "2021): SO(3)-equivariant features whose code is invariant (features in a "
        "predicted canonical frame), the frame being the pose.",
    )
    in_features: int = described(
        3,
        "3 (xyz) or 4 (xyz + intensity; the intensity weights each point's vectors in vn "
        "and is one more feature in dgcnn).",
    )
    k: int = described(16, "neighbours of the k-NN graph.")
    width: int = described(32, "features of the first layer (doubling once).")
    n_layers: int = described(3, "edge convolutions.")
    latent_dim: int = required("size of the code.")
    grid: int = described(
        16, "the FoldingNet decoder folds a grid x grid square into grid**2 points (Yang et al., CVPR 2018)."
    )
    loss: str = described(
        "chamfer",
        "chamfer (Science/chamfer) or emd, the Earth Mover's distance "
        "(Science/transport, geomloss's Sinkhorn divergence; slower, but every point "
        "must be matched). Validation logs both.",
    )

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            raise PointCloudConfigError(f"encoder must be one of {', '.join(ENCODERS)}, got {self.encoder!r}")
        if self.loss not in LOSSES:
            raise PointCloudConfigError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.in_features not in (3, 4):
            raise PointCloudConfigError(f"in_features must be 3 (xyz) or 4 (xyz + intensity), got {self.in_features!r}")
        for name in ("k", "width", "n_layers", "latent_dim", "grid"):
            positive_int(name, getattr(self, name), PointCloudConfigError)
