"""pythae WarpDrive: every autoencoder/VAE of pythae 0.1.2 on 2D and 3D images.

pythae: Chadebec, Vincent, Allassonnière, "Pythae: Unifying Generative Autoencoders in
Python -- A Benchmarking Use Case", NeurIPS 2022. We use its models and losses as they are
and add encoders/decoders for images and volumes of any size, l1/custom/masked
reconstruction losses, and an optimiser contract for a Lightning engine (see drive.py).

``PythaeDriveConfig`` + ``PythaeDrive`` (pure torch); ``MODELS`` / ``get_spec`` is the model table.
"""

from .config import PythaeDriveConfig, PythaeDriveConfigError, editable_fields, pythae_defaults
from .drive import DriveOutput, OptimiserSpec, PythaeDrive, StepLoss
from .recon_losses import BUILTIN_CUSTOM_LOSSES, MaskedL1, MaskedMSE, ReconTarget
from .registry import MODELS, ModelSpec, OptimiserPlan, get_spec, model_names

__all__ = [
    "PythaeDriveConfig",
    "PythaeDriveConfigError",
    "editable_fields",
    "pythae_defaults",
    "PythaeDrive",
    "DriveOutput",
    "OptimiserSpec",
    "StepLoss",
    "ReconTarget",
    "MaskedMSE",
    "MaskedL1",
    "BUILTIN_CUSTOM_LOSSES",
    "MODELS",
    "ModelSpec",
    "OptimiserPlan",
    "get_spec",
    "model_names",
]
